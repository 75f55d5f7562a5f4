"""``engine demo`` talks from its first second: every stage reports, never quiet past the interval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 1.0
# Reading a line is not instant on a loaded 2-core machine: a small allowance for scheduling.
SLACK = 1.0


def _timed_lines(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, list[tuple[float, str]], str]:
    proc = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = time.monotonic()
    lines = []
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        lines.append((time.monotonic() - start, line.rstrip("\n")))
    out = proc.stdout.read()
    return proc.wait(timeout=600), lines, out


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_demo_is_never_silent_longer_than_the_interval(log_format: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update(PYTHONPATH=str(REPO), ENGINE_PROGRESS_INTERVAL_S=str(INTERVAL))
    code, lines, out = _timed_lines(["demo", "--rows", "4000", "--files", "2", "--workdir", "demo",
                                     "--progress", "log", "--log-format", log_format], tmp_path, env)
    assert code == 0, "\n".join(t for _, t in lines)
    assert "demo: 4,000 customers" in out
    texts = [t if log_format == "text" else json.loads(t)["message"] for _, t in lines]
    for stage in ("[demo] generate", "[train] ", "[score] ", "[demo] score"):
        assert any(t.startswith(stage) for t in texts), stage
    # The first line comes before the heavy imports; after it, no gap beyond the interval.
    times = [t for t, _ in lines]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= INTERVAL + SLACK, max(gaps)
    if log_format == "json":
        events = [json.loads(t)["event"] for _, t in lines]
        assert {"demo.step", "train.step", "score.progress"} <= set(events)


def test_demo_quiet_says_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update(PYTHONPATH=str(REPO))
    code, lines, out = _timed_lines(["demo", "--rows", "2000", "--files", "1", "--workdir", "demo", "--quiet"],
                                    tmp_path, env)
    assert code == 0 and lines == [] and "demo: 2,000 customers" in out
