"""The CPU scoring kernel alone: nanoseconds a row on one core, in this thread's CPU time.

CPU time (``time.thread_time``) rather than wall time, so that a machine loaded by
others still gives a fair figure of the kernel's own cost (a loaded core stretches the
wall clock, not the CPU seconds; cache contention with neighbours can still add some).
Blocks of ``--block-rows`` rows, Fortran-ordered float64, as the CPU stage leases them;
k centroids, F numeric features, optionally Q categorical columns. Each run also checks
that the compiled kernel equals the NumPy twin bit for bit (segment, distance, propensity).

    python -m bench.kernel_bench --k 8 --features 20 --rows 2000000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._harness import machine, now_utc, write_results

RESULTS = Path(__file__).resolve().parent / "results"


def _model(rng: np.random.Generator, k: int, f: int, q: int, levels_per: int) -> dict[str, Any]:
    p: dict[str, Any] = {
        "fill_s": rng.normal(size=f), "a_s": rng.uniform(0.5, 2, f), "d_s": rng.normal(size=f),
        "centroids": rng.normal(size=(k, f)), "fill_p": rng.normal(size=f), "a_p": rng.uniform(0.5, 2, f),
        "d_p": rng.normal(size=f), "coef": rng.normal(size=f) * 0.3, "intercept": 0.1,
    }
    if q:
        n_levels = q * levels_per
        p["cat_logit"] = rng.normal(size=n_levels)
        p["cat_dist"] = rng.uniform(0, 2, size=(k, n_levels))
    return p


def measure(k: int, f: int, rows: int, block_rows: int, q: int = 0, repeat: int = 3, seed: int = 5,
            tally: bool = False) -> dict[str, Any]:
    from engine.jobs.summary import ScoreTally
    from kernels.score_rows import score_rows
    from kernels.score_rows_cpu import prepare_params, score_block, warm

    rng = np.random.default_rng(seed)
    p = _model(rng, k, f, q, 6)
    X = np.asfortranarray(rng.normal(size=(block_rows, f)))
    X[rng.random(X.shape) < 0.01] = np.nan
    levels = (rng.integers(0, 6, size=(block_rows, q)) + np.arange(q) * 6).astype(np.int32) if q else None
    warm()
    params, b = prepare_params(X, p["fill_s"], p["a_s"], p["d_s"], p["centroids"], p["fill_p"], p["a_p"],
                               p["d_p"], p["coef"], p["intercept"])
    cats = (levels, p["cat_logit"], p["cat_dist"]) if q else None
    # The score summaries in the same pass (two action thresholds, the report's histogram).
    tallied = ScoreTally.empty(k, (0.5, 0.8)).kernel_arrays() if tally else None
    seg = np.empty(block_rows, np.int32)
    dist = np.empty(block_rows, np.float32)
    prop = np.empty(block_rows, np.float32)
    inf_col = np.empty(block_rows, np.int32)
    nulls = np.zeros(f, np.int64)
    score_block(X, block_rows, params, b, seg, dist, prop, inf_col, nulls, cats, tallied)  # compile / load
    # Bit-identity against the NumPy twin on this block.
    extra = {"levels": levels, "cat_logit": p["cat_logit"], "cat_dist": p["cat_dist"]} if q else {}
    tw = score_rows(X, p["fill_s"], p["a_s"], p["d_s"], p["centroids"], p["fill_p"], p["a_p"], p["d_p"],
                    p["coef"], p["intercept"], xp=np, **extra)
    identical = bool(np.array_equal(tw[0], seg) and np.array_equal(tw[1], dist) and np.array_equal(tw[2], prop))
    blocks = max(1, rows // block_rows)
    runs = []
    for _ in range(repeat):
        c0, t0 = time.thread_time(), time.perf_counter()
        for _b in range(blocks):
            score_block(X, block_rows, params, b, seg, dist, prop, inf_col, nulls, cats, tallied)
        c1, t1 = time.thread_time(), time.perf_counter()
        runs.append({"cpu_ns_per_row": (c1 - c0) / (blocks * block_rows) * 1e9,
                     "wall_ns_per_row": (t1 - t0) / (blocks * block_rows) * 1e9})
    best = min(r["cpu_ns_per_row"] for r in runs)
    return {"k": k, "features": f, "categorical_columns": q, "tally": tally, "block_rows": block_rows,
            "rows": blocks * block_rows, "runs": runs, "cpu_ns_per_row_best": best,
            "cpu_ns_per_row_median": float(np.median([r["cpu_ns_per_row"] for r in runs])),
            "identical_to_numpy_twin": identical, "load_avg": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[8])
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--categorical", type=int, nargs="+", default=[0, 5])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--block-rows", type=int, default=16_384)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = list(os.getloadavg())
    cases = [measure(k, args.features, args.rows, args.block_rows, q, args.repeat, tally=t)
             for k in args.k for q in args.categorical for t in (False, True)]
    for c in cases:
        print(f"k={c['k']} F={c['features']} Q={c['categorical_columns']} tally={c['tally']}: "
              f"{c['cpu_ns_per_row_best']:.1f} ns/row "
              f"(CPU, best of {len(c['runs'])}; median {c['cpu_ns_per_row_median']:.1f}); "
              f"identical to the twin: {c['identical_to_numpy_twin']}; load {c['load_avg'][0]:.1f}")
    payload = {"benchmark": "kernel", "label": args.label, "created": now_utc(), "machine": machine(),
               "load_avg_before": load_before, "note": "CPU time of one thread; machine shared and loaded "
               "(see load_avg): wall figures unreliable, CPU-time figures less so", "cases": cases}
    paths = write_results(args.out, "kernel", args.rows, payload)
    print(f"wrote {paths[0]}")


if __name__ == "__main__":
    main()
