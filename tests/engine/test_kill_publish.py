"""SIGKILL a real ``engine score`` process at several moments; nothing is ever half published.

Each case starts from a previous complete output (another model, with ``--keep
region``, so any mixture would show), runs ``python -m engine score --overwrite
--resume`` and kills it with SIGKILL early (staging just prepared, no part yet),
mid-way (some parts in ``.out.engine/staging/_parts/``) or while publishing (manifest and
``_SUCCESS`` written, held right before the swap by the ``ENGINE_TEST_PAUSE_BEFORE_SWAP``
test hook). Then: the previous output is intact and readable, nothing partial is visible
in the output directory, and a rerun with ``--resume`` publishes exactly the rows of a
clean run, reusing (and reporting) the parts the killed run had finished.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from engine.config import Settings
from engine.io.commit import TEST_PAUSE_AFTER_PART, TEST_PAUSE_BEFORE_SWAP
from engine.jobs.generate import generate
from engine.jobs.score import ScoreOptions, score
from engine.jobs.train import TrainOptions, train
from engine.models.artifact import load_model, save_model

ROWS, FILES, PARTITION_ROWS = 12_000, 4, 500
PARTS = ROWS // PARTITION_ROWS  # 3,000-row files of 500-row row groups: 6 parts per file
WAIT_S = 240.0  # generous: the machine is shared


@pytest.fixture(scope="module")
def kill_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Data, model, the clean scores, and a previous output made with another model."""
    root = tmp_path_factory.mktemp("kill")
    data = root / "data"
    generate(ROWS, FILES, data, seed=23, row_group_rows=PARTITION_ROWS)
    model = root / "model"
    train(TrainOptions(input=str(data), target="churned", output=str(model), k=4, seed=1,
                       backend="cpu", sample_rows=2_000))
    m = load_model(model)
    old_model = root / "model-old"
    save_model(replace(m, intercept=m.intercept - 0.7, centroids=m.centroids[::-1].copy(), content_hash=""),
               old_model)
    settings = Settings(partition_rows=PARTITION_ROWS)
    score(ScoreOptions(input=str(data), model=str(model), output=str(root / "clean"), backend="cpu",
                       progress="quiet"), settings)
    score(ScoreOptions(input=str(data), model=str(old_model), output=str(root / "previous"), backend="cpu",
                       keep=("region",), progress="quiet"), settings)
    return {"root": root, "data": data, "model": model, "clean": read_scores(root / "clean"),
            "previous": root / "previous"}


def read_scores(out: Path) -> pa.Table:
    return ds.dataset(out, format="parquet").to_table().sort_by("customer_id")


def listing(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


def engine_score(out: Path, env: dict[str, Any], hooks: dict[str, str] | None = None,
                 log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m engine score`` in its own process (the nightly-run flags)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    environ.update(hooks or {})
    cmd = [sys.executable, "-m", "engine", "score", "--input", str(env["data"]), "--model", str(env["model"]),
           "--output", str(out), "--backend", "cpu", "--partition-rows", str(PARTITION_ROWS),
           "--overwrite", "--resume", "--progress", "log"]
    if log is None:
        return subprocess.Popen(cmd, cwd=out.parent, env=environ, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
    with open(log, "wb") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=out.parent, env=environ, stdout=sink, stderr=subprocess.STDOUT)


def wait_for(what: str, condition: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"engine score exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.01)


def sidecars(staging: Path) -> list[Path]:
    return sorted((staging / "_parts").glob("part-*.json")) if (staging / "_parts").is_dir() else []


def assert_previous_intact(out: Path, previous: Path) -> None:
    """Byte for byte the previous output: same files and sizes, same manifest, same rows."""
    assert listing(out) == listing(previous)
    assert (out / "_SUCCESS").exists()
    assert (json.loads((out / "_manifest.json").read_text())["run_id"]
            == json.loads((previous / "_manifest.json").read_text())["run_id"])
    got, want = read_scores(out), read_scores(previous)
    assert got.column_names == ["customer_id", "segment", "segment_distance", "propensity", "region"]
    assert got.equals(want)


@pytest.mark.parametrize("moment", ["early", "mid-way", "publishing"])
def test_sigkill_leaves_previous_output_and_resume_completes(moment: str, kill_env: dict[str, Any],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "scores"
    workspace = tmp_path / ".scores.engine"  # lock, staging and sidecars: the engine's one directory
    staging, aside = workspace / "staging", workspace / "parts"
    shutil.copytree(kill_env["previous"], out)
    log = tmp_path / "killed.log"
    hooks = {TEST_PAUSE_AFTER_PART: "0.25"}  # keeps the run several seconds long on any machine
    if moment == "publishing":
        hooks[TEST_PAUSE_BEFORE_SWAP] = "120"
    proc = engine_score(out, kill_env, hooks, log)

    if moment == "early":
        wait_for("the staging directory", staging.is_dir, proc, log)
    elif moment == "mid-way":
        wait_for("3 finished parts", lambda: len(sidecars(staging)) >= 3, proc, log)
    else:
        wait_for("the publish window", lambda: (staging / "_SUCCESS").exists(), proc, log)
        # A second run on the same output while the first holds it: refused at once.
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "engine", "score", "--input", str(kill_env["data"]), "--model",
             str(kill_env["model"]), "--output", str(out), "--backend", "cpu", "--overwrite", "-q"],
            cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S)
        assert second.returncode == 6, second.stderr
        assert f"another engine run (pid {proc.pid}) is writing {out}" in second.stderr
        assert time.monotonic() - t0 < 90  # did not wait for the lock (the holder sleeps 120 s)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL
    # While publishing, the sidecars wait beside the staging directory until the swap is done.
    finished = len(sidecars(staging)) if moment != "publishing" else len(list(aside.glob("part-*.json")))

    # The previous output is untouched and readable; the run's files are all hidden siblings.
    assert_previous_intact(out, kill_env["previous"])
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith(".scores.")} == {workspace.name}
    if moment == "early":
        assert finished == 0
    elif moment == "mid-way":
        assert 3 <= finished < PARTS
    else:
        assert finished == PARTS
        assert (staging / "_manifest.json").exists() and not (staging / "_parts").exists()

    # The rerun takes the lock the killed run held (the kernel freed it) and resumes.
    log2 = tmp_path / "resume.log"
    rerun = engine_score(out, kill_env, log=log2)
    assert rerun.wait(timeout=WAIT_S) == 0, log2.read_text()
    manifest = json.loads((out / "_manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["parts"] == PARTS
    assert totals["parts_reused"] == finished
    assert sum(1 for p in manifest["partitions"] if p.get("reused")) == finished
    assert totals["rows_in"] == totals["rows_out"] + totals["rows_rejected"] == ROWS
    got, want = read_scores(out), kill_env["clean"]
    assert got.column_names == ["customer_id", "segment", "segment_distance", "propensity"]
    for name in got.column_names:
        np.testing.assert_array_equal(got.column(name).to_numpy(), want.column(name).to_numpy(), err_msg=name)
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith(".scores.")} == set()
