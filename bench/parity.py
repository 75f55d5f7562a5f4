"""GPU vs CPU vs scikit-learn: the same model scores the same customers alike.

``python -m bench.parity [--rows 4000000] [--files 16] [--out DIR]``

Generates (or reuses) a dataset, trains one model on a sample, scores every row with
``engine score`` on the CPU backend and, where a GPU is usable, on the GPU backend,
and scores the same rows with the model as fitted scikit-learn pipelines
(``bench.methods.sklearn_pipelines``). It reports, per pair, the share of identical
segments, the largest propensity and distance differences, and whether they meet the
engine's promises (segments identical, propensity within 1e-6 of scikit-learn, CPU and
GPU within 1e-5). Writes ``parity-latest.json`` (and a stamped copy) with the machine.
A GPU that is not usable here is reported as not run, with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from bench import _harness as h

PROPENSITY_VS_SKLEARN = 1e-6
PROPENSITY_CPU_VS_GPU = 1e-5


def _scores(output: Path, id_column: str) -> dict[str, np.ndarray]:
    table = ds.dataset(str(output), format="parquet").to_table(
        columns=[id_column, "segment", "segment_distance", "propensity"])
    order = np.argsort(table.column(id_column).to_numpy(), kind="stable")
    return {name: table.column(name).to_numpy()[order] for name in table.column_names}


def _sklearn_scores(data: Path, model: Any) -> dict[str, np.ndarray]:
    """Per file: pandas → the two fitted pipelines (predict, transform, predict_proba)."""
    import pandas as pd

    from bench.methods import input_files, sklearn_pipelines

    segmenter, propensity = sklearn_pipelines(model)
    names = list(model.features)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (model.id_column, "segment",
                                                          "segment_distance", "propensity")}
    for path in input_files(str(data)):
        frame = pd.read_parquet(path, columns=[model.id_column, *names])
        X = frame[names].astype("float64")
        seg = segmenter.predict(X)
        dist = segmenter.transform(X)[np.arange(len(seg)), seg]
        parts[model.id_column].append(frame[model.id_column].to_numpy())
        parts["segment"].append(seg.astype(np.int32))
        parts["segment_distance"].append(dist.astype(np.float32))
        parts["propensity"].append(propensity.predict_proba(X)[:, 1].astype(np.float32))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(out[model.id_column], kind="stable")
    return {k: v[order] for k, v in out.items()}


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray], id_column: str,
            propensity_tol: float) -> dict[str, Any]:
    """Segment agreement and largest differences between two sets of scores of the same ids."""
    same_ids = bool(np.array_equal(a[id_column], b[id_column]))
    seg_equal = float(np.mean(a["segment"] == b["segment"])) if same_ids else 0.0
    dprop = float(np.max(np.abs(a["propensity"].astype(np.float64) - b["propensity"]))) if same_ids else None
    same = a["segment"] == b["segment"]
    ddist = float(np.max(np.abs(a["segment_distance"][same].astype(np.float64)
                                - b["segment_distance"][same]))) if same_ids and same.any() else None
    bitwise = same_ids and all(np.array_equal(a[c], b[c]) for c in ("segment", "segment_distance", "propensity"))
    return {"rows": int(a[id_column].size), "same_ids": same_ids, "segments_identical_share": seg_equal,
            "bit_identical": bool(bitwise),
            "segments_differing": int((~same).sum()) if same_ids else None,
            "max_abs_propensity_diff": dprop, "max_abs_distance_diff_same_segment": ddist,
            "propensity_tolerance": propensity_tol,
            "ok": bool(same_ids and seg_equal == 1.0 and dprop is not None and dprop <= propensity_tol)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=16)
    h.add_common_args(parser, "unused (one run)")
    args = parser.parse_args(argv)

    from engine.backends import detect
    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, score
    from engine.models.artifact import load_model

    args.workdir.mkdir(parents=True, exist_ok=True)
    data, _, data_created = h.ensure_dataset(args.workdir, args.rows, args.files, args.seed)
    # The default numeric features only: scikit-learn's pipelines (bench.methods.sklearn_pipelines)
    # hold no categorical terms, so a model with `region` as a categorical column (what training on
    # every column gives) differed from them by its level terms on every row (max |dp| 0.014, NOT
    # ok, since categorical columns were learned). Categorical scoring on the GPU is checked by the
    # GPU tests of the level tables (and under memcheck), not here.
    from engine.io.dataset import discover
    from engine.io.validate import default_features

    numeric = len(default_features(discover(data), ["customer_id", "churned"]))
    model_dir, model_created = h.ensure_model(args.workdir, data, args.sample_rows, args.seed, features=numeric)
    model = load_model(model_dir)
    settings = load_settings()
    status = detect()
    backends = ["cpu"] + (["gpu"] if status.gpu_usable else [])
    runs: dict[str, Any] = {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for backend in backends:
        out = args.workdir / f"parity-{backend}"
        h.remove(out)
        t0 = time.perf_counter()
        manifest = score(ScoreOptions(input=str(data), model=str(model_dir), output=str(out),
                                      backend=backend, progress="quiet"), settings)
        runs[backend] = {"seconds": time.perf_counter() - t0, "rows": manifest["totals"]["rows_out"],
                         "backend": manifest["backend"]}
        scores[backend] = _scores(out, model.id_column)
        h.remove(out)
    t0 = time.perf_counter()
    scores["sklearn"] = _sklearn_scores(data, model)
    runs["sklearn"] = {"seconds": time.perf_counter() - t0, "rows": int(scores["sklearn"]["segment"].size)}
    checks = {"cpu_vs_sklearn": compare(scores["cpu"], scores["sklearn"], model.id_column, PROPENSITY_VS_SKLEARN)}
    if "gpu" in scores:
        checks["gpu_vs_sklearn"] = compare(scores["gpu"], scores["sklearn"], model.id_column, PROPENSITY_VS_SKLEARN)
        checks["gpu_vs_cpu"] = compare(scores["gpu"], scores["cpu"], model.id_column, PROPENSITY_CPU_VS_GPU)
        # Issue 17: both kernels round alike (no FMA contraction), so the fused GPU path is
        # expected to give the CPU's bits; reported, the tolerance above stays the promise.
        print(f"gpu vs cpu bit-identical: {checks['gpu_vs_cpu']['bit_identical']}")
    payload = {
        "benchmark": "parity", "when": h.now_utc(), "rows": args.rows, "files": args.files,
        "model": {"k": model.k, "features": model.n_features, "content_hash": model.content_hash},
        "gpu": {"run": "gpu" in scores, "reason": None if status.gpu_usable else status.gpu_reason,
                "devices": status.gpu_devices},
        "runs": runs, "checks": checks, "all_ok": all(c["ok"] for c in checks.values()),
        "machine": h.machine(args.workdir),
    }
    stamped, latest = h.write_results(args.out, "parity", args.rows, payload)
    for name, c in checks.items():
        print(f"{name:<16} segments identical {c['segments_identical_share']:.6%}  max |Δ propensity| "
              f"{c['max_abs_propensity_diff']}  {'ok' if c['ok'] else 'NOT ok'}")
    if "gpu" not in scores:
        print(f"gpu: not run ({status.gpu_reason})")
    print(f"wrote {stamped} and {latest}")
    if not args.keep_data:
        h.discard_created(args.workdir, [data] if data_created else [], model_dir, model_created)
    return payload


if __name__ == "__main__":
    sys.exit(0 if main()["all_ok"] else 1)
