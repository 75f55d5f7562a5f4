"""Budgets against the linear programme: ``engine recommend``'s achieved value vs SciPy HiGHS's optimum.

Two instances of N customers x 10 offers (top 3, 6 budgets), a model trained by
``engine train --offers`` on 4,000 others: *continuous* features, and *tied* ones (a few
distinct values per feature, string ids: hundreds of customers share every expected value,
so every budget binds inside a tie). Each is priced from every row and from a 10 % sample
(``--budget-sample-rows``; ``--samples`` other shares). The LP is the issue's: maximise the sum of EV over eligible,
not-owned pairs with EV >= the minimum, at most ``top`` per customer and ``budget`` per
offer, ``0 <= x <= 1``, solved by HiGHS on the engine's own expected values.

    PYTHONPATH=. python3 bench/budgets_lp.py [--rows 50000] [--samples 1,0.1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import machine, now_utc, write_results  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
T, TOP = 10, 3
BUDGETS = {0: 800, 2: 1500, 3: 3000, 5: 400, 7: 2000, 8: 6000}


def lp_optimum(ev: np.ndarray, ok: np.ndarray, top: int, budgets: dict[int, int]) -> float:
    """The LP optimum: max sum EV x over the ``ok`` pairs, at most ``top`` per row and ``budgets[j]`` per offer."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, vstack

    rows, cols = np.nonzero(ok)
    n, T = ev.shape
    v = rows.size
    per_customer = csr_matrix((np.ones(v), (rows, np.arange(v))), shape=(n, v))
    per_offer = csr_matrix((np.ones(v), (cols, np.arange(v))), shape=(T, v))
    keep = sorted(budgets)
    A = vstack([per_customer, per_offer[keep]])
    b = np.concatenate([np.full(n, top), [budgets[j] for j in keep]])
    res = linprog(-ev[rows, cols], A_ub=A, b_ub=b, bounds=(0, 1), method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS did not solve the LP: {res.message}")
    return float(-res.fun)


def customers(n: int, seed: int, tied: bool, first_id: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 3))
    region = rng.choice(["north", "east", "south", "west"], n)
    if tied:
        Z = np.sign(np.round(Z))
    ids = np.arange(first_id, first_id + n)
    cols: dict[str, object] = {"customer_id": [f"c-{i}" for i in ids] if tied else ids,
                               "f1": Z[:, 0], "f2": Z[:, 1], "f3": Z[:, 2], "region": region}
    for t in range(T):
        logit = -1.6 + (0.8 + 0.15 * t) * Z[:, t % 3] - 0.4 * Z[:, (t + 1) % 3] + 0.5 * (region == "north") * (t % 2)
        cols[f"owns_{t}"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pa.table(cols)


def catalogue(path: Path) -> Path:
    lines = [f"top = {TOP}"]
    for t in range(T):
        lines += ["[[offer]]", f'id = "offer_{t}"', f'target = "owns_{t}"', f"value = {10.0 + 7.0 * t}",
                  f"cost = {0.5 * (t % 3)}"] + ([f"budget = {BUDGETS[t]}"] if t in BUDGETS else [])
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--samples", default="1,0.1", help="sampled shares of the rows to price from (comma list)")
    args = parser.parse_args()
    shares = [float(x) for x in args.samples.split(",")]

    import engine
    from engine.models.artifact import load_model
    from engine.offers.catalogue import load_catalogue
    from engine.offers.recommend import expected_values, prepare

    runs = []
    with tempfile.TemporaryDirectory(prefix="budgets-lp-") as tmp:
        root = Path(tmp)
        offers = catalogue(root / "offers.toml")
        for kind in ("continuous", "tied"):
            train, data = root / kind / "train", root / kind / "data"
            train.mkdir(parents=True)
            data.mkdir(parents=True)
            pq.write_table(customers(4_000, 5, kind == "tied"), train / "p.parquet")
            table = customers(args.rows, 6, kind == "tied", first_id=10_000)
            step = -(-args.rows // 4)
            for i in range(4):
                pq.write_table(table.slice(i * step, step), data / f"part{i}.parquet")
            model_dir = root / kind / "model"
            engine.train(str(train), None, str(model_dir), offers=str(offers), k=2, report=False, backend="cpu")
            model = load_model(model_dir)
            EV, ok = expected_values(table, model, prepare(model, load_catalogue(str(offers)), None))
            t0 = time.perf_counter()
            optimum = lp_optimum(EV, ok, TOP, BUDGETS)
            lp_s = time.perf_counter() - t0
            for sample in (max(1, int(round(args.rows * share))) for share in shares):
                out = root / kind / f"out{sample}"
                t0 = time.perf_counter()
                manifest = engine.recommend(str(data), str(model_dir), str(out), budget_sample_rows=sample,
                                            backend="cpu")
                seconds = time.perf_counter() - t0
                frame = ds.dataset(out).to_table(columns=["offer"]).column("offer").to_pandas().astype(str)
                counts = frame.value_counts()
                b = manifest["budgets"]
                runs.append({
                    "instance": kind, "rows": args.rows, "sample_rows": sample, "passes": b["passes"],
                    "passes_counting_only": b["passes_counting_only"],
                    "achieved_over_optimum": b["achieved_value"] / optimum, "gap_to_dual_bound": b["gap"],
                    "lp_optimum": optimum, "achieved_value": b["achieved_value"], "dual_bound": b["dual_bound"],
                    "cut_offers": b["cut_offers"], "seconds": seconds, "lp_seconds": lp_s,
                    "budgets": {f"offer_{j}": {"budget": B, "customers": int(counts.get(f"offer_{j}", 0))}
                                for j, B in BUDGETS.items()},
                    "exceeded": [f"offer_{j}" for j, B in BUDGETS.items() if counts.get(f"offer_{j}", 0) > B],
                })
                print(f"{kind:<10} sample {sample:>7,}: {b['passes']} pass(es) ({b['passes_counting_only']} counting only), "
                      f"achieved/optimum "
                      f"{b['achieved_value'] / optimum:.5f}, cut {b['cut_offers']}, "
                      + ", ".join(f"{k} {v['customers']}/{v['budget']}" for k, v in runs[-1]["budgets"].items()))
    payload = {"benchmark": "budgets-lp", "when": now_utc(), "machine": machine(), "runs": runs}
    paths = write_results(OUT, "budgets-lp", args.rows, payload)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
