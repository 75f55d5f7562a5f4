"""``engine recommend`` on its runners: threads of the process (main's loop vs. this branch's
tasks through ``open_runner``) and a local Dask cluster (``--workers 2``), with and without budgets.

Each run is ``python -m engine recommend`` in a fresh process, timed on the wall clock
(start-up, planning, the budgets' sample, every pass, publish). ``--code`` names the source
trees to compare (``PYTHONPATH`` of each run); the data and the model (T offers, F = 20,
top 5; synthetic heads, as bench/recommend_bench.py) are shared. Every run's long output is
checked to hold the same rows as the first run of its kind (sorted by id and rank).
The machine load is recorded with every figure.

    PYTHONPATH=. python3 bench/recommend_cluster_bench.py --rows 1000000 --code /work/main .
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import machine, now_utc, write_results  # noqa: E402
from bench.recommend_bench import base_model, make_data, model_with_heads  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"


def catalogue(path: Path, model: Path, budgets: dict[int, int]) -> Path:
    """The model's own offers (same values), with ``budgets`` on some."""
    m = json.loads((model / "model.json").read_text())
    lines = ["top = 5"]
    for t, o in enumerate(m["offers"]):
        lines += ["[[offer]]", f'id = "{o["id"]}"', f'target = "{o["target"]}"', f"value = {o['value']!r}",
                  "exclude_owned = false"] + ([f"budget = {budgets[t]}"] if t in budgets else [])
    path.write_text("\n".join(lines) + "\n")
    return path


def run(code: Path, data: Path, model: Path, offers: Path, out: Path, *flags: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code.resolve())}
    load = os.getloadavg()
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine", "recommend", "--model", str(model), "--input", str(data),
                           "--output", str(out), "--offers", str(offers), "-q", *flags], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{code} {flags}: exit {done.returncode}\n{done.stderr}")
    m = json.loads((out / "_manifest.json").read_text())
    b = m.get("budgets") or {}
    return {"wall_s": wall, "rows_out": m["totals"]["rows_out"], "passes": b.get("passes"),
            "achieved_value": b.get("achieved_value"), "seconds": m["seconds"], "loadavg_before": load,
            "loadavg_after": os.getloadavg()}


def rows_of(out: Path) -> object:
    return ds.dataset(out, format="parquet").to_table().sort_by([("customer_id", "ascending"), ("rank", "ascending")])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--offers", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--code", nargs="+", default=["."])
    ap.add_argument("--kinds", nargs="+", default=["no budgets", "budgets"])
    ap.add_argument("--runners", nargs="+", default=["threads", "--workers 2"])
    args = ap.parse_args()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rec-cluster-bench-") as tmp:
        root = Path(tmp)
        data = make_data(root, args.rows, args.files)
        model = model_with_heads(base_model(root), args.offers, root / "model")
        rng = np.random.default_rng(7)
        budgets = {int(t): int(args.rows // 40) for t in rng.choice(args.offers, 8, replace=False)}
        kinds = {"no budgets": catalogue(root / "plain.toml", model, {}),
                 "budgets": catalogue(root / "budgets.toml", model, budgets)}
        first: dict[str, object] = {}
        n = 0
        for _ in range(args.repeat):
            for kind, offers in ((k, kinds[k]) for k in args.kinds):
                for code in args.code:
                    for runner, flags in (("threads", ()), ("--workers 2", ("--workers", "2"))):
                        if runner not in args.runners:
                            continue
                        if runner != "threads" and Path(code).resolve() != Path(".").resolve():
                            continue   # the cluster flags are this branch's
                        n += 1
                        out = root / f"out{n}"
                        r = run(Path(code), data, model, offers, out, *flags)
                        got = rows_of(out)
                        same = first.setdefault(kind, got).equals(got)
                        results.append({"code": str(Path(code).resolve()), "runner": runner, "kind": kind,
                                        "same_rows_as_first": same, **r})
                        print(json.dumps(results[-1]), flush=True)
                        import shutil

                        shutil.rmtree(out)
    write_results(OUT, "recommend-cluster", args.rows, {
        "when": now_utc(), "machine": machine(), "rows": args.rows, "files": args.files, "offers": args.offers,
        "features": 20, "top": 5, "budgets": budgets,
        "note": "wall seconds of `python -m engine recommend` in a fresh process each; shared 2-core machine "
                "(loaded: see loadavg per run)", "runs": results})


if __name__ == "__main__":
    main()
