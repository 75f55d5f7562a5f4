"""The scoring benchmark of issue 3: engine vs the I/O floor vs pandas + scikit-learn.

One command, one generated dataset, one model::

    python -m bench.score_bench                      # 8M rows x 21 features in 16 files
    python -m bench.score_bench --rows 200000 --files 4 --out /tmp/bench-smoke   # smoke
    # issue 17's target: 16M rows x 20 features in 32 files, engine alternating with the
    # floor (2 files at a time), 3 times, no pandas
    python -m bench.score_bench --rows 16000000 --features 20 --files 32 --floor-pools 2 \
        --skip-pandas --repeat 3

Each method runs in its own fresh subprocess on the same (warm page cache) input, in turn,
``--repeat`` times (interleaved, so drifting background load hits every method alike):

* ``floor``: pyarrow alone reads the id and feature columns and writes the four output
  columns (see :mod:`bench.methods`), measured with 1, 2 and one-per-core files at a
  time (``--floor-pools``); the fastest is *the* floor.
* ``engine``: ``engine score --backend cpu --quiet --overwrite`` with default settings
  (ENGINE_* variables removed from its environment), plus ``engine-threads-N`` for each
  ``--threads N`` asked for (the CPU task thread-seconds at 2 threads against 1 thread
  show whether per-task compute stays flat as threads grow).
* ``pandas+sklearn``: per file ``pandas.read_parquet`` → fitted scikit-learn pipelines
  → ``to_parquet``.

Throughput is rows / wall seconds of the whole subprocess (``rows_per_s``: start-up and
imports included, what a nightly job pays); ``inner_rows_per_s`` is over each method's own
loop, and ``thread_seconds`` splits its task threads' time into read / compute / write. Peak RSS is per subprocess tree (see :mod:`bench._harness`).
Where a GPU is usable, ``engine-gpu`` runs the same with ``--backend gpu``. Results: a table
on stdout and JSON in ``--out`` (``score-<rows>-<time>.json`` and ``score-latest.json``),
the methods also under ``end_to_end.{io_floor, engine_cpu, engine_gpu}`` as in
:mod:`bench.gpu_bench` (``engine_gpu`` says why it was skipped where no GPU is usable).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import _harness as h
from bench.methods import FLOOR_WRITE_OPTIONS

TARGET_FLOOR_RATIO = 0.9
TARGET_THREAD_SCALING = 1.2
TARGET_PANDAS_RATIO = 4.0
TARGET_ENGINE_RSS_GIB = 1.5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.score_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8_000_000, help="Customers in the dataset (default 8M).")
    p.add_argument("--files", type=int, default=16, help="Parquet files in the dataset (default 16).")
    p.add_argument("--features", type=int, default=None,
                   help="Model features: the first N of the dataset's 21 numeric columns (default all); "
                        "the floor reads and the engine scores the same columns.")
    p.add_argument("--seed", type=int, default=h.DEFAULT_SEED, help="Generator seed (default 42).")
    p.add_argument("--sample-rows", type=int, default=h.DEFAULT_SAMPLE_ROWS,
                   help="Rows the model is trained on (default 200000).")
    p.add_argument("--workdir", type=Path, default=h.REPO / "bench" / "data",
                   help="Dataset, model, outputs and logs (git-ignored; default bench/data).")
    p.add_argument("--out", type=Path, default=h.REPO / "bench" / "results", help="Where the JSON goes.")
    p.add_argument("--repeat", type=int, default=1, help="Runs of each method; the median is reported.")
    p.add_argument("--keep-data", action="store_true",
                   help="Keep what this run generated (dataset, model, every method's output); "
                        "by default outputs are removed, and a dataset/model only if this run created it.")
    p.add_argument("--floor-values", choices=["random", "zeros"], default="random",
                   help="Values the floor writes (default random: real scores' encoding cost).")
    p.add_argument("--skip-pandas", action="store_true", help="Leave out pandas + scikit-learn (slowest).")
    p.add_argument("--threads", default="",
                   help="Comma list of extra engine thread counts, each run as engine-threads-N "
                        "(e.g. 1,2: the thread-seconds check); the default engine run is always made.")
    p.add_argument("--floor-pools", default="",
                   help="Comma list of the floor's files-at-a-time (default 1, 2 and one per core).")
    p.add_argument("--engine-arg", action="append", default=[],
                   help="Extra flag for every engine run, e.g. --engine-arg=--batch-rows=65536 (repeatable).")
    p.add_argument("--timeout", type=float, default=3600.0, help="Seconds before a method is killed.")
    args = p.parse_args(argv)
    if args.rows < 1 or args.files < 1 or args.files > args.rows or args.repeat < 1:
        p.error("need rows >= files >= 1 and repeat >= 1")
    try:
        args.thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
        cores = h.machine()["cores_usable"]
        args.pools = sorted({int(t) for t in args.floor_pools.split(",") if t.strip()} or {1, 2, cores})
    except ValueError:
        p.error("--threads and --floor-pools take comma lists of integers")
    if any(t < 1 for t in args.thread_counts + args.pools):
        p.error("thread counts and pools must be at least 1")
    return args


def _methods(args: argparse.Namespace, data: Path, model: Path, outs: Path, results: Path
             ) -> list[tuple[str, list[str], Path, Path]]:
    """(name, argv, output dir, result file) of every method, in the order they run."""
    py = [sys.executable, "-m", "bench.methods"]
    common = ["--input", str(data), "--model", str(model)]
    methods = []
    for pool in args.pools:
        name = f"floor-pool{pool}"
        methods.append((name, [*py, "floor", *common, "--output", str(outs / name), "--pool", str(pool),
                               "--values", args.floor_values, "--result", str(results / f"{name}.json")],
                        outs / name, results / f"{name}.json"))
    for threads in [None, *args.thread_counts]:
        name = "engine" if threads is None else f"engine-threads-{threads}"
        extra = [] if threads is None else ["--threads-per-worker", str(threads)]
        methods.append((name, [*h.engine_argv(), "score", *common, "--output", str(outs / name),
                               "--backend", "cpu", "--quiet", "--overwrite", *extra, *args.engine_arg],
                        outs / name, outs / name / "_manifest.json"))
    if args.gpu_reason is None:
        methods.append(("engine-gpu", [*h.engine_argv(), "score", *common, "--output", str(outs / "engine-gpu"),
                                       "--backend", "gpu", "--quiet", "--overwrite", *args.engine_arg],
                        outs / "engine-gpu", outs / "engine-gpu" / "_manifest.json"))
    if not args.skip_pandas:
        methods.append(("pandas+sklearn", [*py, "pandas-sklearn", *common, "--output", str(outs / "pandas"),
                                           "--result", str(results / "pandas.json")],
                        outs / "pandas", results / "pandas.json"))
    return methods


def _inner(name: str, out_dir: Path, result_file: Path) -> dict[str, Any]:
    """What the method itself reports: its loop seconds and per-step seconds."""
    if name.startswith("engine"):
        summary = h.engine_manifest_summary(out_dir)
        return {"inner_s": summary["seconds"]["total"], "rows": summary["totals"]["rows_in"],
                "thread_seconds": h.thread_seconds(summary["task_seconds_summed"]),
                "thread_cpu_seconds": h.thread_seconds(summary["task_cpu_seconds_summed"]), "engine": summary}
    data = json.loads(result_file.read_text())
    return {"inner_s": data["loop_s"], "rows": data["rows"],
            "thread_seconds": h.thread_seconds(data.get("step_seconds_summed", {})), "method": data}


def sanity_check(data_files: list[str], engine_out: Path, pandas_out: Path, id_column: str) -> dict[str, Any]:
    """On the first input file: do pandas + scikit-learn and the engine give the same scores?"""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    first = Path(data_files[0])
    theirs = pq.read_table(pandas_out / f"part-{first.stem}.parquet").sort_by(id_column)
    ids = theirs.column(id_column)
    lo, hi = pc.min(ids).as_py(), pc.max(ids).as_py()
    ours = ds.dataset(engine_out, format="parquet").to_table(
        filter=(ds.field(id_column) >= lo) & (ds.field(id_column) <= hi)).sort_by(id_column)
    same_ids = ours.num_rows == theirs.num_rows and ours.column(id_column).equals(ids)
    out: dict[str, Any] = {"file": first.name, "rows": theirs.num_rows, "same_ids": bool(same_ids)}
    if same_ids:
        seg_a = ours.column("segment").to_numpy()
        seg_b = theirs.column("segment").to_numpy()
        diff = {c: float(np.max(np.abs(ours.column(c).to_numpy().astype(np.float64)
                                        - theirs.column(c).to_numpy().astype(np.float64))))
                for c in ("propensity", "segment_distance")}
        out |= {"segment_mismatches": int((seg_a != seg_b).sum()),
                "max_abs_diff_propensity": diff["propensity"],
                "max_abs_diff_segment_distance": diff["segment_distance"]}
        out["segments_equal"] = out["segment_mismatches"] == 0
    else:
        out["segments_equal"] = False
    return out


def _summarise(name: str, runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    inners = [r["inner_s"] for r in runs]
    wall = statistics.median(walls)
    inner = statistics.median(inners)
    return {
        "method": name,
        "rows": rows,
        "wall_s": wall,
        "wall_s_min": min(walls),
        "rows_per_s": rows / wall,
        "inner_s": inner,
        "inner_rows_per_s": rows / inner,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "thread_seconds": h.thread_seconds({k: statistics.median(r["thread_seconds"][k] for r in runs)
                                            for k in ("read", "compute", "write")}),
        "peak_rss_tree_mib": max(r["peak_rss_tree_mib"] for r in runs),
        "maxrss_single_mib": max(r["maxrss_single_mib"] for r in runs),
        "max_processes": max(r["max_processes"] for r in runs),
        "runs": runs,
    }


def end_to_end(summary: dict[str, dict[str, Any]], floor_name: str, gpu_reason: str | None) -> dict[str, Any]:
    """The methods under the names ``bench.gpu_bench`` uses (read independently of either script).

    ``io_floor`` is the fastest floor, ``engine_cpu`` the default engine run and
    ``engine_gpu`` the same with ``--backend gpu``, or why it was skipped. Each carries
    ``rows_per_s``, ``inner_rows_per_s``, ``peak_rss_mib`` and ``thread_seconds``; the
    individual runs stay under ``results``.
    """
    def view(name: str) -> dict[str, Any]:
        return {k: v for k, v in summary[name].items() if k != "runs"}

    gpu = view("engine-gpu") if "engine-gpu" in summary else {"skipped": True, "reason": gpu_reason}
    return {"io_floor": view(floor_name), "engine_cpu": view("engine"), "engine_gpu": gpu}


def print_table(rows: int, summary: dict[str, dict[str, Any]], floor_name: str) -> None:
    floor_rate = summary[floor_name]["rows_per_s"]
    print()
    print(f"scoring {rows:,} rows; floor = {floor_name}; wall = whole subprocess, inner = its own loop")
    head = (f"{'method':<18} {'rows/s':>12} {'wall s':>8} {'inner s':>8} {'peak RSS MiB':>13} {'x floor':>8}"
            f"  {'thread-s read/compute/write':>28}")
    print(head)
    print("-" * len(head))
    for name, s in summary.items():
        mark = " *" if name == floor_name else ""
        ts = s["thread_seconds"]
        print(f"{name + mark:<18} {s['rows_per_s']:>12,.0f} {s['wall_s']:>8.2f} {s['inner_s']:>8.2f} "
              f"{s['peak_rss_mib']:>13,.0f} {s['rows_per_s'] / floor_rate:>8.2f}"
              f"  {ts['read']:>8.2f} /{ts['compute']:>7.2f} /{ts['write']:>7.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = h.now_utc()
    machine = h.machine(workdir)
    data, files, data_created = h.ensure_dataset(workdir, args.rows, args.files, args.seed)
    model, model_created = h.ensure_model(workdir, data, args.sample_rows, args.seed, features=args.features)
    from engine.models.artifact import load_model

    scoring_model = load_model(model)
    run_dir = workdir / f"run-score-{data.name}"
    outs, results, logs = run_dir / "out", run_dir / "results", run_dir / "logs"
    h.remove(run_dir)
    results.mkdir(parents=True)
    from bench.gpu_bench import gpu_unusable_reason

    args.gpu_reason = gpu_unusable_reason()
    methods = _methods(args, data, model, outs, results)
    h.warm_cache(files)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in methods}
    for rep in range(args.repeat):
        for name, argv_, out_dir, result_file in methods:
            h.remove(out_dir)
            h.settle()
            print(f"[{rep + 1}/{args.repeat}] {name} ...", flush=True)
            m = h.run_measured(f"{name}-{rep}", argv_, logs,
                               env=h.clean_env() if name.startswith("engine") else None, timeout_s=args.timeout)
            h.require_ok(m)
            inner = _inner(name, out_dir, result_file)
            if inner["rows"] != args.rows:
                raise SystemExit(f"{name} processed {inner['rows']:,} rows, expected {args.rows:,}")
            runs[name].append(m.to_dict() | inner)
            print(f"    {m.wall_s:.2f}s wall, {inner['inner_s']:.2f}s inner, "
                  f"peak RSS {m.peak_rss_mib:,.0f} MiB", flush=True)

    summary = {name: _summarise(name, r, args.rows) for name, r in runs.items()}
    floor_name = min((n for n in summary if n.startswith("floor-")), key=lambda n: summary[n]["wall_s"])
    floor = summary[floor_name]
    for s in summary.values():
        s["ratio_to_floor"] = s["rows_per_s"] / floor["rows_per_s"]
        s["inner_ratio_to_floor"] = s["inner_rows_per_s"] / floor["inner_rows_per_s"]
    eng = summary["engine"]
    checks: dict[str, Any] = {
        "engine_vs_floor": eng["ratio_to_floor"],
        "engine_ge_target_floor": eng["ratio_to_floor"] >= TARGET_FLOOR_RATIO,
        "engine_peak_rss_gib": eng["peak_rss_mib"] / 1024,
        "engine_peak_rss_le_1_5_gib": eng["peak_rss_mib"] / 1024 <= TARGET_ENGINE_RSS_GIB,
        "engine_inner_vs_floor_inner": eng["inner_ratio_to_floor"],
    }
    if {"engine-threads-1", "engine-threads-2"} <= summary.keys():
        # The same work at 2 threads should cost about the same task thread-seconds as at 1.
        one, two = (summary[f"engine-threads-{t}"]["thread_seconds"] for t in (1, 2))
        checks["compute_thread_s_2_over_1"] = two["compute"] / max(one["compute"], 1e-9)
        checks["task_thread_s_2_over_1"] = two["total"] / max(one["total"], 1e-9)
        checks["task_thread_s_2_within_1_2x_of_1"] = checks["task_thread_s_2_over_1"] <= TARGET_THREAD_SCALING
        # The same in thread CPU time: waiting for a core (other processes, the start-up's
        # own threads) inflates wall thread-seconds but not these.
        one_cpu, two_cpu = (statistics.median(r["thread_cpu_seconds"]["total"]
                                              for r in runs[f"engine-threads-{t}"]) for t in (1, 2))
        checks["task_thread_cpu_s_2_over_1"] = two_cpu / max(one_cpu, 1e-9)
    sanity = None
    if "pandas+sklearn" in summary:
        pdk = summary["pandas+sklearn"]
        checks["engine_vs_pandas_sklearn"] = eng["rows_per_s"] / pdk["rows_per_s"]
        checks["engine_ge_4x_pandas_sklearn"] = checks["engine_vs_pandas_sklearn"] >= TARGET_PANDAS_RATIO
        sanity = sanity_check(files, outs / "engine", outs / "pandas", scoring_model.id_column)

    print_table(args.rows, summary, floor_name)
    print()
    print(f"engine / floor      {checks['engine_vs_floor']:.3f}  (target >= {TARGET_FLOOR_RATIO}: "
          f"{'met' if checks['engine_ge_target_floor'] else 'NOT met'})")
    if "task_thread_s_2_over_1" in checks:
        print(f"task thread-s 2/1   {checks['task_thread_s_2_over_1']:.2f}   (compute alone "
              f"{checks['compute_thread_s_2_over_1']:.2f}; target <= {TARGET_THREAD_SCALING}: "
              f"{'met' if checks['task_thread_s_2_within_1_2x_of_1'] else 'NOT met'}; in thread CPU time "
              f"{checks['task_thread_cpu_s_2_over_1']:.2f})")
    if "engine_vs_pandas_sklearn" in checks:
        print(f"engine / pandas+skl {checks['engine_vs_pandas_sklearn']:.2f}   (target >= {TARGET_PANDAS_RATIO:g}: "
              f"{'met' if checks['engine_ge_4x_pandas_sklearn'] else 'NOT met'})")
    print(f"engine peak RSS     {checks['engine_peak_rss_gib']:.2f} GiB (target <= {TARGET_ENGINE_RSS_GIB}: "
          f"{'met' if checks['engine_peak_rss_le_1_5_gib'] else 'NOT met'})")
    if sanity is not None:
        print(f"sanity ({sanity['file']}, {sanity['rows']:,} rows): segments equal to the engine's: "
              f"{sanity['segments_equal']} ({sanity.get('segment_mismatches', '?')} mismatches), "
              f"max |d propensity| {sanity.get('max_abs_diff_propensity', float('nan')):.2e}, "
              f"max |d distance| {sanity.get('max_abs_diff_segment_distance', float('nan')):.2e}")

    machine["loadavg_at_end"] = __import__("os").getloadavg()
    payload = {
        "benchmark": "score",
        "started_at": started,
        "finished_at": h.now_utc(),
        "machine": machine,
        "parameters": {
            "rows": args.rows, "files": args.files, "seed": args.seed, "sample_rows": args.sample_rows,
            "features": len(scoring_model.features), "k": scoring_model.k, "repeat": args.repeat,
            "floor_values": args.floor_values, "floor_write_options": FLOOR_WRITE_OPTIONS, "dataset": str(data), "model": str(model),
            "model_hash": scoring_model.content_hash, "page_cache": "warm (every input file read once before)",
            "throughput_basis": "rows / wall seconds of the whole subprocess, median over repeats",
            "peak_rss_basis": "max over repeats of max(polled RSS sum over the process tree at ~20 Hz, "
                              "ru_maxrss of the largest process)",
            "engine_command": next(m[1] for m in methods if m[0] == "engine"),
            "cores": machine["cores_usable"],
        },
        "floor": {"method": floor_name,
                  "why": f"the fastest of {', '.join(f'{p} file(s) at a time' for p in args.pools)}"},
        "results": summary,
        "end_to_end": end_to_end(summary, floor_name, args.gpu_reason),
        "targets": checks,
        "sanity_check": sanity,
    }
    stamped, latest = h.write_results(args.out, "score", args.rows, payload)
    print(f"\nwrote {stamped} and {latest}")

    if not args.keep_data:
        h.remove(run_dir)
        h.discard_created(workdir, [data] if data_created else [], model, model_created)
    else:
        print(f"kept dataset {data}, model {model}, outputs and logs under {run_dir}")
    return payload


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - t0:.0f}s")
