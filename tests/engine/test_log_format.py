"""``--log-format json``: every stderr line is one JSON event, and the last one says how the run ended.

Real ``engine`` processes (``python -m engine``), so that what other code writes to
descriptor 2 (typer's usage errors, warnings, Dask) is checked too, for a success of each
job and for every failure exit code.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import EXIT_CODES
from engine.io.commit import TEST_PAUSE_AFTER_PART

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def engine(*args: object, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env or _env(), timeout=300)


def events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as an event; fails the test on a line that is not one."""
    found = []
    for line in stderr.splitlines():
        obj = json.loads(line)   # raises on a line that is not JSON
        assert isinstance(obj, dict), line
        assert {"ts", "level", "event"} <= obj.keys(), line
        ts = dt.datetime.fromisoformat(obj["ts"].replace("Z", "+00:00"))
        assert ts.utcoffset() == dt.timedelta(0), line
        assert obj["level"] in ("debug", "info", "warning", "error"), line
        found.append(obj)
    assert found, "no stderr line at all"
    return found


def test_a_score_run_ends_with_score_finished(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    r = engine("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "s",
               "--backend", "cpu", "--log-format", "json", "--progress", "log", "--partition-rows", 1000,
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    found = events(r.stderr)
    last = found[-1]
    assert last["event"] == "score.finished" and last["exit_code"] == 0
    assert last["rows_in"] == 6_000 and last["rows_scored"] == 6_000 and last["rows_rejected"] == 0
    assert isinstance(last["seconds"], float) and last["seconds"] > 0
    kinds = {e["event"] for e in found}
    assert "score.progress" in kinds and {"drift.ok", "drift.warning", "drift.alert"} & kinds
    progress = [e for e in found if e["event"] == "score.progress"]
    assert progress[-1]["done"] == progress[-1]["total"] and progress[-1]["rows"] == 6_000
    # stdout keeps the result line for a person
    assert r.stdout.startswith("scored 6,000 of 6,000 rows")


def test_the_environment_variable_selects_json(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    r = engine("model", "show", model_dir, cwd=tmp_path, env=_env(ENGINE_LOG_FORMAT="json"))
    assert r.returncode == 0 and r.stderr == ""
    r = engine("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "s", "-q",
               "--backend", "cpu", cwd=tmp_path, env=_env(ENGINE_LOG_FORMAT="json"))
    assert r.returncode == 0, r.stderr
    assert events(r.stderr)[-1]["event"] == "score.finished"
    # text stays the default: no JSON without the flag or the variable
    r = engine("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "t",
               "--backend", "cpu", cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr.lstrip().startswith("{")
    r = engine("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "u",
               cwd=tmp_path, env=_env(ENGINE_LOG_FORMAT="yaml"))
    assert r.returncode == 2 and "ENGINE_LOG_FORMAT" in r.stderr


def test_a_train_run_ends_with_train_finished(dataset_dir: Path, tmp_path: Path) -> None:
    r = engine("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m", "--k", 3,
               "--C", 1, "--no-report", "--backend", "cpu", "--log-format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    found = events(r.stderr)
    assert found[-1]["event"] == "train.finished" and found[-1]["exit_code"] == 0
    assert found[-1]["rows_train"] == 6_000
    assert any(e["event"] == "train.step" for e in found)


@pytest.fixture(scope="module")
def cases(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs that fail: rows with ±inf beyond tolerance, and drifted data."""
    root = tmp_path_factory.mktemp("json-cases")
    bad, drifted = root / "bad", root / "drifted"
    bad.mkdir()
    drifted.mkdir()
    for source in sorted(dataset_dir.glob("*.parquet")):
        table = pq.read_table(source)
        i = table.schema.get_field_index("monetary_12m")
        values = table.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
        values[::10] = np.inf
        pq.write_table(table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type)),
                       bad / source.name)
        j = table.schema.get_field_index("recency_days")
        shifted = pa.compute.multiply(table.column(j).cast(pa.float64()), 25.0).cast(table.schema.field(j).type,
                                                                                      safe=False)
        pq.write_table(table.set_column(j, table.schema.field(j), shifted), drifted / source.name)
    return {"bad": bad, "drifted": drifted}


@pytest.mark.parametrize("code, how", [
    (2, "flag"), (2, "reasons"), (3, "input"), (4, "rows"), (5, "model"), (6, "output"), (7, "gpu"),
    (8, "cluster"), (9, "drift"),
])
def test_a_failed_run_ends_with_an_error_event(code: int, how: str, cases: dict[str, Path], dataset_dir: Path,
                                               model_dir: Path, tmp_path: Path) -> None:
    data, model, out = dataset_dir, model_dir, tmp_path / "s"
    extra: list[object] = []
    if how == "flag":
        extra = ["--no-such-flag"]
    elif how == "reasons":
        extra = ["--reasons", 999]
    elif how == "input":
        data = tmp_path / "nowhere"
    elif how == "rows":
        data = cases["bad"]
    elif how == "model":
        model = tmp_path / "no-model"
    elif how == "output":
        out.mkdir()
        (out / "notes.txt").write_text("someone else's")
    elif how == "gpu":
        extra = ["--backend", "gpu"]
    elif how == "cluster":
        extra = ["--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", 1]
    elif how == "drift":
        data, extra = cases["drifted"], ["--fail-on-drift"]
    backend = [] if how == "gpu" else ["--backend", "cpu"]
    r = engine("score", "--input", data, "--model", model, "--output", out, *backend, "--log-format", "json",
               *extra, cwd=tmp_path)
    if how == "gpu" and r.returncode == 0:
        pytest.skip("a GPU is usable here: --backend gpu does not fail")
    assert r.returncode == code, r.stderr
    found = events(r.stderr)
    last = found[-1]
    assert last["event"] == "error" and last["exit_code"] == code and last["level"] == "error", last
    assert last["message"] and code in EXIT_CODES
    assert sum(e["event"] == "error" for e in found) == 1
    if how == "drift":
        assert any(e["event"] == "drift.alert" and "recency_days" in e["features"] for e in found)
    if how == "rows":
        # the failure names files, columns and rows; never a customer's id or value
        ids = pq.read_table(sorted(cases["bad"].glob("*.parquet"))[0], columns=["customer_id"]).column(0)
        for line in r.stderr.splitlines():
            text = json.dumps({k: v for k, v in json.loads(line).items() if k != "ts"})
            assert not re.search(rf"\b{ids[0].as_py()}\b", text), line
            assert not re.search(r"\b-?inf\b|Infinity", text), line


def _score_paused_after_a_part(dataset_dir: Path, model_dir: Path, tmp_path: Path,
                               **env: str) -> tuple[subprocess.Popen[str], Path]:
    """A json-mode score run started and waited on until its first part is staged (workers pause
    after each part); returns the process and the staged parts' directory."""
    cmd = [sys.executable, "-m", "engine", "score", "--input", str(dataset_dir), "--model", str(model_dir),
           "--output", str(tmp_path / "s"), "--backend", "cpu", "--partition-rows", "500", "--log-format", "json"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parts = tmp_path / ".s.engine" / "staging" / "_parts"
    deadline = time.monotonic() + 240
    while not list(parts.glob("part-*.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no part was ever committed"
        time.sleep(0.02)
    return proc, parts


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_ends_with_an_error_event(signum: int, code: int, dataset_dir: Path, model_dir: Path,
                                                     tmp_path: Path) -> None:
    proc, _parts = _score_paused_after_a_part(dataset_dir, model_dir, tmp_path, **{TEST_PAUSE_AFTER_PART: "1.0"})
    proc.send_signal(signum)
    _stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == code, stderr
    last = events(stderr)[-1]
    assert last["event"] == "error" and last["exit_code"] == code and "--resume" in last["message"]


def test_a_run_that_does_not_stop_after_the_signal_is_ended_at_once(dataset_dir: Path, model_dir: Path,
                                                                     tmp_path: Path) -> None:
    """Issue 24, item 17: a run stuck after Ctrl-C (a KeyboardInterrupt inside an import lock left
    worker threads waiting forever) is ended once the grace period is over, with the error event
    and nothing published. Grace 0 here: the workers are still paused when it ends."""
    proc, parts = _score_paused_after_a_part(dataset_dir, model_dir, tmp_path, **{
        TEST_PAUSE_AFTER_PART: "5.0", "ENGINE_STOP_GRACE_SECONDS": "0"})
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - started < 4.0   # not after the paused workers
    last = events(stderr)[-1]
    assert last["event"] == "error" and last["exit_code"] == 130 and "ended at once" in last["message"]
    assert not (tmp_path / "s").exists() and list(parts.glob("part-*.json"))
