"""Progress of train and score: a bar on a terminal, a plain line every few seconds
otherwise (cron, Airflow), nothing with --quiet, and a summary line in every mode."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

from typer.testing import Result

from engine.jobs.progress import Progress

LOG_LINE = re.compile(r"^\[(score|train)\] (\d+)/(\d+) (partitions|steps), [\d,]+ rows, [\d,]+ rows/s, "
                      r"elapsed \d+:\d\d, ETA (\d+:\d\d|\?)$", re.M)


def test_log_mode_prints_done_total_rate_and_eta() -> None:
    out = io.StringIO()
    p = Progress("score", 3, mode="log", total_rows=300, stream=out, interval=0.0)
    for _ in range(3):
        p.advance(1, rows=100)
    p.close()
    lines = LOG_LINE.findall(out.getvalue())
    assert [(d, t) for _, d, t, _, _ in lines] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert lines[-1][4] == "0:00"  # nothing left


def test_log_mode_throttles_to_the_interval() -> None:
    out = io.StringIO()
    p = Progress("score", 100, mode="log", stream=out, interval=3600.0)
    for _ in range(99):
        p.advance(1, rows=10)
    assert out.getvalue() == ""  # inside the interval: silent
    p.advance(1, rows=10)
    assert len(LOG_LINE.findall(out.getvalue())) == 1  # the last one always prints


def test_quiet_mode_prints_nothing() -> None:
    out = io.StringIO()
    p = Progress("score", 2, mode="quiet", stream=out, interval=0.0)
    p.advance(2, rows=5)
    p.close()
    assert out.getvalue() == ""


def test_bar_mode_draws_a_bar_with_counts() -> None:
    out = io.StringIO()
    p = Progress("score", 4, mode="bar", total_rows=40, stream=out)
    for _ in range(4):
        p.advance(1, rows=10)
    p.close()
    text = out.getvalue()
    assert "4/4" in text and "partitions" in text and "rows/s" in text


def test_auto_is_log_when_not_a_terminal() -> None:
    assert Progress("score", 1, mode="auto", stream=io.StringIO()).mode == "log"


def _progress_lines(result: Result, label: str) -> list[tuple[str, ...]]:
    return [m for m in LOG_LINE.findall(result.output) if m[0] == label]


def test_score_and_train_log_progress_off_a_terminal(cli: Callable[..., Result], dataset_dir: Path,
                                                     tmp_path: Path) -> None:
    r = cli("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m", "--k", "3")
    assert r.exit_code == 0, r.output
    steps = _progress_lines(r, "train")
    assert steps and steps[-1][1] == steps[-1][2]  # ends at n/n
    assert "trained on" in r.output  # the summary line
    r = cli("score", "--input", dataset_dir, "--model", tmp_path / "m", "--output", tmp_path / "s",
            "--partition-rows", "1000")
    assert r.exit_code == 0, r.output
    parts = _progress_lines(r, "score")
    assert parts and parts[-1][1] == parts[-1][2] == "3"  # 3 files, each one streamed row group
    assert re.search(r"^scored 6,000 of 6,000 rows", r.output, re.M)


def test_quiet_leaves_only_the_summary_line(cli: Callable[..., Result], dataset_dir: Path,
                                            model_dir: Path, tmp_path: Path) -> None:
    r = cli("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "s", "--quiet")
    assert r.exit_code == 0, r.output
    assert not LOG_LINE.search(r.output)
    assert [line for line in r.output.splitlines() if line.strip()] == \
        [line for line in r.output.splitlines() if line.startswith("scored ")]
    r = cli("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m", "--quiet")
    assert r.exit_code == 0, r.output
    assert not LOG_LINE.search(r.output) and "[train]" not in r.output
    assert "trained on" in r.output
