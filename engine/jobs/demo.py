"""The demo: generate customers, train, score, and summarise, all on the embedded default."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from engine.config import Settings
from engine.io.guard import (
    check_replaceable,
    check_writable,
    output_errors,
    read_json_marker,
    resolve_output,
)
from engine.jobs.generate import TARGET, generate
from engine.jobs.heartbeat import Heartbeat
from engine.jobs.progress import resolve_mode
from engine.jobs.score import ScoreOptions, score
from engine.jobs.train import TrainOptions, train


@dataclass
class DemoResult:
    workdir: str
    data: str
    model: str
    scores: str
    rows: int
    steps: dict[str, float]
    segments: list[dict[str, Any]]
    holdout_auc: float | None   # the evaluation's AUC: holdout, or cross-validated (small demos)
    manifest: dict[str, Any]
    evaluation: str = "holdout"  # which: "holdout" or "cv" (see metrics.evaluation)


DEMO_MARKER = "_engine_demo.json"


def claim_workdir(workdir: Path) -> None:
    """Make ``workdir`` the demo's own: new, empty, or a previous demo's (it has the marker).

    The demo replaces its ``data``, ``model`` and ``scores`` without asking, so it must
    never do so in a directory it did not create: anything else is refused (exit 6).
    """
    real = resolve_output(workdir, flag="--workdir")
    exists = check_replaceable(real, flag="--workdir", what="a demo working directory", markers=(DEMO_MARKER,),
                               overwrite=True, shown=workdir, owned=_owned_demo_names)
    check_writable(real, flag="--workdir", shown=workdir)
    with output_errors(real, "create the demo working directory"):
        if not exists:
            real.parent.mkdir(parents=True, exist_ok=True)
            real.mkdir()  # fails on a name that appeared since the check
        if read_json_marker(real / DEMO_MARKER, ("created_by",)) is None:
            # Created exclusively, never through a link: an existing name is not ours.
            fd = os.open(real / DEMO_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            with open(fd, "w") as fh:
                fh.write(json.dumps({"created_by": "engine demo"}) + "\n")


def _owned_demo_names(real: Path) -> set[str] | None:
    """None if the marker is not a demo's; else every name there: the demo replaces only its
    ``data``, ``model`` and ``scores``, each through its own guard, and leaves the rest alone."""
    marker = read_json_marker(real / DEMO_MARKER, ("created_by",))
    if marker is None or marker["created_by"] != "engine demo":
        return None
    return set(os.listdir(real))


def demo(rows: int, workdir: str, settings: Settings, *, files: int = 8, seed: int = 42,
         backend: str = "auto", progress: str = "auto", say: Callable[[str], None] | None = None) -> DemoResult:
    """Run the whole pipeline in ``workdir`` (its ``data``, ``model`` and ``scores`` are replaced).

    ``workdir`` must be new, empty, or a previous demo's (:func:`claim_workdir`). ``say``
    receives a line as each stage starts, its steps, and (from a heartbeat) a line at
    least every ``settings.progress_interval_s`` seconds while a stage runs, so a first
    run is never silent while it generates and trains; ``progress`` is the training and
    scoring progress mode (``quiet`` says nothing).
    """
    mode = resolve_mode(progress)
    tell = say if (say is not None and mode != "quiet") else (lambda _m: None)
    root = Path(workdir)
    claim_workdir(root)
    data, model_dir, scores = root / "data", root / "model", root / "scores"
    steps: dict[str, float] = {}
    interval = settings.progress_interval_s
    files = min(files, rows)
    with Heartbeat(lambda m: tell(f"[demo] {m}"), interval) as beat:
        t0 = time.perf_counter()
        beat.step(f"generate: {rows:,} synthetic customers in {files} file(s) under {data}")
        written = [0, 0]
        lock = threading.Lock()

        def file_done(n: int) -> None:
            with lock:
                written[0] += 1
                written[1] += n
                beat.step(f"generate: file {written[0]} of {files} written ({written[1]:,} rows)")

        generate(rows, files, data, seed=seed, overwrite=True, on_file=file_done)
        steps["generate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        beat.step(f"train: segments and propensity on {rows:,} customers -> {model_dir}")
        # Training names its own steps and repeats them while they run: the demo's beat waits.
        beat.pause()
        trained = train(TrainOptions(input=str(data), target=TARGET, output=str(model_dir), seed=seed,
                                     backend=backend, overwrite=True, progress=mode),
                        on_step=(lambda m: tell(f"[train] {m}")) if mode == "log" else None, settings=settings)
        steps["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        beat.step(f"score: {rows:,} customers -> {scores}")
        manifest = score(ScoreOptions(input=str(data), model=str(model_dir), output=str(scores), backend=backend,
                                      overwrite=True, progress=mode, keep=()), settings,
                         say=tell if mode != "quiet" else None)
        steps["score"] = time.perf_counter() - t0
    table = ds.dataset(scores, format="parquet").to_table(columns=["segment", "propensity"])
    seg = table.column("segment").to_numpy()
    prop = table.column("propensity").to_numpy().astype(np.float64)
    counts = np.bincount(seg, minlength=trained.model.k)
    sums = np.bincount(seg, weights=prop, minlength=trained.model.k)
    segments = [
        {"segment": i, "customers": int(c), "share": float(c / max(1, seg.size)),
         "mean_propensity": float(sums[i] / c) if c else None}
        for i, c in enumerate(counts)
    ]
    metrics = trained.model.metrics
    kind = "holdout" if "holdout" in metrics else "cv"
    auc = (metrics.get(kind) or {}).get("auc")
    return DemoResult(str(root), str(data), str(model_dir), str(scores), rows, steps, segments, auc, manifest, kind)
