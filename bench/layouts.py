"""``engine score`` under alternative Dask layouts and partition sizes, side by side.

::

    python -m bench.layouts --rows 4000000
    python -m bench.layouts --rows 200000 --files 4 --out /tmp/layouts-smoke      # smoke

Every layout runs in a fresh process on the same dataset and model, through the
engine's own flags, and is reported with rows/s (whole process and the engine's own
total), peak RSS summed over the process tree (worker processes included), and the
number of parts the engine planned:

* ``default``: the embedded default (one in-process worker, one thread per core);
* ``threads-1`` / ``threads-2``: the in-process worker with 1 or 2 threads;
* ``procs-2x1``: ``--workers 2 --threads-per-worker 1`` (two worker processes);
* ``procs-1x2``: ``--workers 1 --threads-per-worker 2`` (one worker process);
* ``rows-N``: the default layout with ``--partition-rows N``.

By default the dataset has 500,000 rows per file, as in the main benchmark, so that the
results carry over to it; partition sizes at or above the file size then plan the same
one part per file (the ``parts`` column shows it). Use ``--files`` for bigger files.

JSON: ``layouts-latest.json`` (and a time-stamped copy) under ``--out``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench import _harness as h

PARTITION_ROWS = (131_072, 262_144, 524_288, 1_048_576, 4_194_304)
LAYOUTS: dict[str, list[str]] = {
    "default": [],
    "threads-1": ["--threads-per-worker", "1"],
    "threads-2": ["--threads-per-worker", "2"],
    "procs-2x1": ["--workers", "2", "--threads-per-worker", "1"],
    "procs-1x2": ["--workers", "1", "--threads-per-worker", "2"],
    **{f"rows-{n}": ["--partition-rows", str(n)] for n in PARTITION_ROWS},
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.layouts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--files", type=int, default=None, help="Default: one file per 500,000 rows.")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help=f"Comma list, run in this order (default all: {','.join(LAYOUTS)}).")
    h.add_common_args(p, "Runs per layout (interleaved); medians reported.")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.layouts.split(",") if n.strip()]
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        p.error(f"unknown layout(s) {', '.join(unknown)}; known: {', '.join(LAYOUTS)}")
    files = args.files or max(1, round(args.rows / 500_000))
    if not 1 <= files <= args.rows or args.repeat < 1:
        p.error("need 1 <= files <= rows and repeat >= 1")

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = h.now_utc()
    machine = h.machine(workdir)
    data, paths, data_created = h.ensure_dataset(workdir, args.rows, files, args.seed)
    model, model_created = h.ensure_model(workdir, data, args.sample_rows, args.seed)
    run_dir = workdir / f"run-layouts-{data.name}"
    h.remove(run_dir)
    h.warm_cache(paths)

    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(args.repeat):
        for name in names:
            print(f"[{rep + 1}/{args.repeat}] {name}: engine score {' '.join(LAYOUTS[name])} ...", flush=True)
            r = h.measure_engine(f"{name}-{rep}", data, model, run_dir / "out", run_dir / "logs",
                                 LAYOUTS[name], timeout_s=args.timeout)
            runs[name].append(r)
            print(f"    {r['wall_s']:.2f}s wall, {r['inner_s']:.2f}s inner, peak RSS {r['peak_rss_mib']:,.0f} MiB",
                  flush=True)

    result = {n: h.median_run(r) | {"flags": LAYOUTS[n]} for n, r in runs.items()}
    best = max(result, key=lambda n: result[n]["rows_per_s"])
    print()
    print(f"engine score over {args.rows:,} rows in {files} files; peak RSS summed over the process tree")
    head = f"{'layout':<14} {'parts':>6} {'procs':>6} {'wall s':>8} {'rows/s':>12} {'inner rows/s':>13} {'peak RSS MiB':>13}"
    print(head)
    print("-" * len(head))
    for n, s in result.items():
        print(f"{n + (' *' if n == best else ''):<14} {s['parts']:>6} {s['max_processes']:>6} {s['wall_s']:>8.2f} "
              f"{s['rows_per_s']:>12,.0f} {s['inner_rows_per_s']:>13,.0f} {s['peak_rss_mib']:>13,.0f}")
    print("* fastest by whole-process rows/s")

    machine["loadavg_at_end"] = os.getloadavg()
    payload = {
        "benchmark": "layouts",
        "started_at": started,
        "finished_at": h.now_utc(),
        "machine": machine,
        "parameters": {"rows": args.rows, "files": files, "seed": args.seed, "sample_rows": args.sample_rows,
                       "repeat": args.repeat, "layouts": {n: LAYOUTS[n] for n in names},
                       "dataset": str(data), "model": str(model),
                       "engine_command": h.engine_score_argv(Path("DATA"), model, Path("OUT")),
                       "page_cache": "warm (every input file read once before)"},
        "fastest": best,
        "results": result,
    }
    stamped, latest = h.write_results(args.out, "layouts", args.rows, payload)
    print(f"\nwrote {stamped} and {latest}")

    h.remove(run_dir)
    if not args.keep_data:
        h.discard_created(workdir, [data] if data_created else [], model, model_created)
    return payload


if __name__ == "__main__":
    main()
