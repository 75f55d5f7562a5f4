"""Does ``engine score`` stay in bounded memory and linear time as the dataset grows?

::

    python -m bench.scaling --rows-small 4000000 --rows-large 32000000
    python -m bench.scaling --rows-small 100000 --rows-large 800000 --out /tmp/scaling-smoke  # smoke

Scores two generated datasets (same seed, same generator) with the same model (trained
once on a sample of the small one), each run in a fresh process with default settings,
and checks the issue's targets: peak RSS differs by less than 15%, and wall time grows
at most 8.5/8 times as fast as the rows (8x rows -> <= 8.5x time).

File layout (``--layout``):

* ``ratio`` (default): the same rows per file at both sizes (``--rows-per-file``, default
  500,000, as in the 8M-row / 16-file benchmark), so the larger dataset is only *more*
  files of the same shape: what a growing nightly table looks like, and the fair test
  of "memory does not grow with the dataset".
* ``fixed``: the same number of files (``--files``) at both sizes, so the larger files
  are 8x bigger and the engine must split them (``partition_rows``) to stay bounded;
  a harder test of item 3 (a big fragment is split, never read whole).

JSON: ``scaling-latest.json`` (and a time-stamped copy) under ``--out``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench import _harness as h

RSS_TOLERANCE = 0.15
TIME_SLACK = 8.5 / 8.0


def _files_for(rows: int, args: argparse.Namespace) -> int:
    if args.layout == "fixed":
        return min(args.files, rows)
    return max(1, min(rows, round(rows / args.rows_per_file)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows-small", type=int, default=4_000_000)
    p.add_argument("--rows-large", type=int, default=32_000_000)
    p.add_argument("--layout", choices=["ratio", "fixed"], default="ratio",
                   help="ratio: same rows per file at both sizes (default); fixed: same file count.")
    p.add_argument("--rows-per-file", type=int, default=500_000, help="ratio layout (default 500000).")
    p.add_argument("--files", type=int, default=16, help="fixed layout: files at both sizes (default 16).")
    h.add_common_args(p, "Runs per size; medians are reported.")
    args = p.parse_args(argv)
    if not 1 <= args.rows_small < args.rows_large or args.repeat < 1:
        p.error("need 1 <= --rows-small < --rows-large and --repeat >= 1")

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = h.now_utc()
    machine = h.machine(workdir)
    sizes = {"small": args.rows_small, "large": args.rows_large}
    datasets: dict[str, tuple[Path, list[str], bool]] = {}
    for label, rows in sizes.items():
        datasets[label] = h.ensure_dataset(workdir, rows, _files_for(rows, args), args.seed)
    model, model_created = h.ensure_model(workdir, datasets["small"][0], args.sample_rows, args.seed)
    run_dir = workdir / "run-scaling"
    h.remove(run_dir)

    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in sizes}
    for rep in range(args.repeat):
        for label in sizes:
            data, files, _ = datasets[label]
            h.warm_cache(files)
            print(f"[{rep + 1}/{args.repeat}] engine score, {label}: {sizes[label]:,} rows "
                  f"in {len(files)} files ...", flush=True)
            r = h.measure_engine(f"engine-{label}-{rep}", data, model, run_dir / "out", run_dir / "logs",
                                 timeout_s=args.timeout)
            runs[label].append(r)
            print(f"    {r['wall_s']:.2f}s wall ({r['rows_per_s']:,.0f} rows/s), {r['inner_s']:.2f}s inner, "
                  f"peak RSS {r['peak_rss_mib']:,.0f} MiB, {r['engine']['totals']['parts']} parts", flush=True)

    result = {label: h.median_run(r) | {"files": len(datasets[label][1])} for label, r in runs.items()}
    small, large = result["small"], result["large"]
    rows_ratio = large["rows"] / small["rows"]
    rss_diff = abs(large["peak_rss_mib"] - small["peak_rss_mib"]) / small["peak_rss_mib"]
    time_ratio = large["wall_s"] / small["wall_s"]
    inner_ratio = large["inner_s"] / small["inner_s"]
    checks = {
        "rows_ratio": rows_ratio,
        "peak_rss_relative_difference": rss_diff,
        "peak_rss_within_15_percent": rss_diff < RSS_TOLERANCE,
        "wall_time_ratio": time_ratio,
        "wall_time_ratio_limit": rows_ratio * TIME_SLACK,
        "wall_time_linear": time_ratio <= rows_ratio * TIME_SLACK,
        "inner_time_ratio": inner_ratio,
        "inner_time_linear": inner_ratio <= rows_ratio * TIME_SLACK,
        "peak_rss_le_1_5_gib": max(small["peak_rss_mib"], large["peak_rss_mib"]) <= 1.5 * 1024,
    }

    print()
    head = f"{'size':<6} {'rows':>12} {'files':>6} {'parts':>6} {'wall s':>8} {'inner s':>8} {'rows/s':>12} {'peak RSS MiB':>13}"
    print(head)
    print("-" * len(head))
    for label, s in result.items():
        print(f"{label:<6} {s['rows']:>12,} {s['files']:>6} {s['parts']:>6} {s['wall_s']:>8.2f} "
              f"{s['inner_s']:>8.2f} {s['rows_per_s']:>12,.0f} {s['peak_rss_mib']:>13,.0f}")
    print()
    print(f"peak RSS differs by {rss_diff:.1%} (target < 15%: {'met' if checks['peak_rss_within_15_percent'] else 'NOT met'})")
    print(f"{rows_ratio:g}x rows -> {time_ratio:.2f}x wall time, {inner_ratio:.2f}x inner time "
          f"(target <= {rows_ratio * TIME_SLACK:.2f}x: {'met' if checks['wall_time_linear'] else 'NOT met'})")

    machine["loadavg_at_end"] = os.getloadavg()
    payload = {
        "benchmark": "scaling",
        "started_at": started,
        "finished_at": h.now_utc(),
        "machine": machine,
        "parameters": {
            "rows_small": args.rows_small, "rows_large": args.rows_large, "layout": args.layout,
            "rows_per_file": args.rows_per_file if args.layout == "ratio" else None,
            "files": args.files if args.layout == "fixed" else None, "seed": args.seed,
            "sample_rows": args.sample_rows, "repeat": args.repeat, "model": str(model),
            "datasets": {label: str(d[0]) for label, d in datasets.items()},
            "engine_command": h.engine_score_argv(Path("DATA"), model, Path("OUT")),
            "page_cache": "warm (each dataset read once before its run)",
        },
        "results": result,
        "targets": checks,
    }
    stamped, latest = h.write_results(args.out, "scaling", args.rows_large, payload)
    print(f"\nwrote {stamped} and {latest}")

    h.remove(run_dir)
    if not args.keep_data:
        h.discard_created(workdir, [data for data, _, created in datasets.values() if created], model,
                          model_created)
    return payload


if __name__ == "__main__":
    main()
