"""What reason codes cost: ``engine score`` with and without ``--reasons N`` on the same data.

::

    python -m bench.reasons_bench --rows 2000000 --repeat 3
    python -m bench.reasons_bench --rows 200000 --files 2 --out /tmp/reasons-smoke      # smoke

Both variants run in fresh processes, alternating (without, with, without, with, ...),
on the same generated dataset and model, through the engine's own flags; each is
reported with whole-process rows/s (what a user waits for, numba's import and cached
kernel load included) and the engine's own rows/s (its ``seconds.total``), medians over
``--repeat`` runs. The target: with ``--reasons 3`` throughput within 15% of without.

JSON: ``reasons-latest.json`` (and a time-stamped copy) under ``--out``, with the machine
description (load average at start and end included: on a shared machine the numbers
move with the neighbours' load).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench import _harness as h

TARGET_SLOWDOWN = 0.15


def _steady_state(data: Path, model: Path, out: Path, reasons: int, repeat: int) -> dict[str, Any]:
    """Both variants again, alternating, inside this one process after a warm-up run of each:
    what a long-lived worker (``dask worker``) pays per run once numba's start-up (import and
    cached-kernel load, about 0.5 s, paid once per process) is behind it. Engine seconds only."""
    import statistics

    from engine.config import Settings
    from engine.jobs.score import ScoreOptions, score

    times: dict[int, list[float]] = {0: [], reasons: []}
    rows = 0
    for rep in range(repeat + 1):
        for n in (0, reasons):
            h.remove(out)
            m = score(ScoreOptions(input=str(data), model=str(model), output=str(out), backend="cpu",
                                   progress="quiet", reasons=n), Settings())
            rows = m["totals"]["rows_in"]
            if rep:  # the first round warms up both variants
                times[n].append(m["seconds"]["total"])
    h.remove(out)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {"rows": rows, "inner_s_without": med[0], "inner_s_with": med[reasons], "ratio": med[0] / med[reasons],
            "runs": {"without": times[0], "with": times[reasons]}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--files", type=int, default=None, help="Parquet files (default: one per 500,000 rows).")
    p.add_argument("--reasons", type=int, default=3)
    h.add_common_args(p, "Runs of each variant (the median is reported).")
    args = p.parse_args(argv)
    files = args.files or max(1, args.rows // 500_000)
    if not 1 <= files <= args.rows or args.repeat < 1 or args.reasons < 1:
        p.error("need 1 <= files <= rows, repeat >= 1 and reasons >= 1")

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = h.now_utc()
    machine = h.machine(workdir)
    data, paths, data_created = h.ensure_dataset(workdir, args.rows, files, args.seed)
    model, model_created = h.ensure_model(workdir, data, args.sample_rows, args.seed)
    run_dir = workdir / f"run-reasons-{data.name}"
    h.remove(run_dir)
    h.warm_cache(paths)

    variants = {"without": [], f"reasons-{args.reasons}": ["--reasons", str(args.reasons)]}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in variants}
    for rep in range(args.repeat):
        for name, flags in variants.items():
            r = h.measure_engine(f"{name}-{rep}", data, model, run_dir / "out", run_dir / "logs", flags,
                                 timeout_s=args.timeout)
            runs[name].append(r)
            print(f"[{rep + 1}/{args.repeat}] {name:<10} {r['wall_s']:.2f}s wall ({r['rows_per_s']:,.0f} rows/s), "
                  f"{r['inner_s']:.2f}s inner ({r['inner_rows_per_s']:,.0f} rows/s)", flush=True)

    result = {n: h.median_run(r) | {"flags": variants[n]} for n, r in runs.items()}
    base, with_r = result["without"], result[f"reasons-{args.reasons}"]
    steady = _steady_state(data, model, run_dir / "steady", args.reasons, args.repeat)
    ratio = {"wall": with_r["rows_per_s"] / base["rows_per_s"],
             "inner": with_r["inner_rows_per_s"] / base["inner_rows_per_s"],
             "steady_state": steady["ratio"]}
    print(f"\nwith --reasons {args.reasons}: {ratio['wall']:.1%} of the throughput without (whole process), "
          f"{ratio['inner']:.1%} (engine's own time), {ratio['steady_state']:.1%} in a process that has the "
          f"kernel loaded already; target >= {1 - TARGET_SLOWDOWN:.0%}")

    machine["loadavg_at_end"] = os.getloadavg()
    payload = {
        "benchmark": "reasons",
        "started_at": started,
        "finished_at": h.now_utc(),
        "machine": machine,
        "parameters": {"rows": args.rows, "files": files, "seed": args.seed, "sample_rows": args.sample_rows,
                       "repeat": args.repeat, "reasons": args.reasons, "dataset": str(data), "model": str(model),
                       "engine_command": h.engine_score_argv(Path("DATA"), model, Path("OUT")),
                       "page_cache": "warm (every input file read once before)"},
        "throughput_ratio": ratio,
        "target_ratio": 1 - TARGET_SLOWDOWN,
        "meets_target": {k: v >= 1 - TARGET_SLOWDOWN for k, v in ratio.items()},
        "results": result,
        "steady_state": steady,
    }
    stamped, latest = h.write_results(args.out, "reasons", args.rows, payload)
    print(f"wrote {stamped} and {latest}")

    h.remove(run_dir)
    if not args.keep_data:
        h.discard_created(workdir, [data] if data_created else [], model, model_created)
    return payload


if __name__ == "__main__":
    main()
