"""Caravan (CoIL 2000) as an offer catalogue: per-head held-out AUC, engine vs scikit-learn's default.

The 21 product-ownership columns ``A*`` (owned when > 0) are the offer targets. As the
issue asks, each head is trained without its own product's ``P*``/``A*`` columns and with
every other column: the 43 socio-demographic ``M*`` columns, the other 20 products' ``P*``
and ``A*`` columns and the caravan policy (``Purchase``, as 0/1); 84 features per head.
In the engine that is the catalogue's ``exclude_features = ["P<product>", "A<product>"]``
per offer (weights held at 0 in its fit). Split: 70 % train / 30 % held out (seeded, by
customer). Engine: ``engine train --offers`` (C per head by 5-fold CV, Platt, rare heads
shrunk); reference: ``sklearn.linear_model.LogisticRegression()`` at its defaults, one per
product, on the same 84 columns. Heads with fewer than 20 positive customers in the
training split are refused by the engine (privacy rule) and listed as such.

    PYTHONPATH=. python3 bench/caravan_offers.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import machine, now_utc, write_results  # noqa: E402
from bench.public_data import load_caravan  # noqa: E402

SEED = 7
OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    import engine
    from engine.offers.recommend import expected_values, prepare

    frame = load_caravan()
    products = [c for c in frame.columns if c.startswith("A")]
    frame["purchase"] = (frame["Purchase"] == "Yes").astype("int8")
    features = [c for c in frame.columns if c[0] in "MPA" and c != "Purchase"] + ["purchase"]

    def own(p: str) -> list[str]:
        return ["P" + p[1:], p]

    for p in products:
        frame[f"owns_{p}"] = (frame[p] > 0).astype("int8")
    rng = np.random.default_rng(SEED)
    test = rng.random(len(frame)) < 0.3
    train_df, test_df = frame[~test], frame[test]
    kept = [p for p in products if train_df[f"owns_{p}"].sum() >= 20 and (frame.shape[0] - train_df[f"owns_{p}"].sum()) >= 20]
    refused = [p for p in products if p not in kept]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cols = ["customer_id", *features, *(f"owns_{p}" for p in products)]
        (root / "train").mkdir()
        pq.write_table(pa.Table.from_pandas(train_df[cols], preserve_index=False), root / "train" / "t.parquet")
        lines = ["top = 3"]
        for p in kept:
            lines += ["[[offer]]", f'id = "{p}"', f'target = "owns_{p}"',
                      "exclude_features = [" + ", ".join(f'"{c}"' for c in own(p)) + "]"]
        (root / "offers.toml").write_text("\n".join(lines) + "\n")
        t0 = time.perf_counter()
        model = engine.train(str(root / "train"), None, str(root / "model"), offers=str(root / "offers.toml"),
                             features=features, k=4, report=False, backend="cpu", seed=SEED)
        train_s = time.perf_counter() - t0
    plan = prepare(model.artifact)
    plan = replace(plan, value=np.ones(plan.n_offers), cost=np.zeros(plan.n_offers), min_ev=-np.inf)
    test_table = pa.Table.from_pandas(test_df[["customer_id", *features, *(f"owns_{p}" for p in products)]],
                                      preserve_index=False)
    probs, _ = expected_values(test_table, model.artifact, plan)
    rows = []
    t0 = time.perf_counter()
    for t, p in enumerate(kept):
        y_tr, y_te = train_df[f"owns_{p}"].to_numpy(), test_df[f"owns_{p}"].to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cols_p = [c for c in features if c not in own(p)]
            ref = LogisticRegression().fit(train_df[cols_p].to_numpy(float), y_tr)
        p_ref = ref.predict_proba(test_df[cols_p].to_numpy(float))[:, 1]
        both = 0 < y_te.sum() < y_te.size
        head = model.artifact.offers[t]
        assert head["exclude_features"] == own(p)
        F = list(model.artifact.features)
        assert all(model.artifact.head_coef[t, F.index(c)] == 0 for c in own(p))
        rows.append({"product": p, "train_positives": int(y_tr.sum()), "test_positives": int(y_te.sum()),
                     "engine_auc": float(roc_auc_score(y_te, probs[:, t])) if both else None,
                     "sklearn_default_auc": float(roc_auc_score(y_te, p_ref)) if both else None,
                     "engine_C": head["C"], "engine_shrink": head["shrink"],
                     "engine_cv_ece": head["cv"]["ece"]})
    sk_s = time.perf_counter() - t0
    good = [r for r in rows if r["engine_auc"] is not None and r["test_positives"] >= 20]
    payload = {
        "benchmark": "caravan offers: per-head held-out AUC", "when": now_utc(), "machine": machine(),
        "loadavg": os.getloadavg(), "note": "loaded shared machine (2 cores, 4 engineers)",
        "split": {"seed": SEED, "train_rows": int((~test).sum()), "test_rows": int(test.sum())},
        "features": "per head: all 85 columns (43 M*, 21 P*, 21 A*, Purchase as 0/1) less the product's own "
                    "P*/A* pair (engine: exclude_features; sklearn: the same 84 columns)",
        "refused_by_engine": refused,
        "engine_train_seconds_all_heads": train_s, "sklearn_fit_seconds_all_products": sk_s,
        "heads": rows,
        "mean_auc_heads_with_20_test_positives": {
            "n": len(good), "engine": float(np.mean([r["engine_auc"] for r in good])),
            "sklearn_default": float(np.mean([r["sklearn_default_auc"] for r in good]))},
    }
    stamped, _ = write_results(OUT, "caravan-offers", None, payload)
    for r in rows:
        print(f"{r['product']:<9} train+ {r['train_positives']:>5} test+ {r['test_positives']:>4}  engine AUC "
              f"{r['engine_auc'] if r['engine_auc'] is None else round(r['engine_auc'], 4)}  sklearn "
              f"{r['sklearn_default_auc'] if r['sklearn_default_auc'] is None else round(r['sklearn_default_auc'], 4)}")
    print("refused:", refused, "| mean (heads with >= 20 test positives):", payload["mean_auc_heads_with_20_test_positives"])
    print("engine train", round(train_s, 1), "s; sklearn", round(sk_s, 1), "s ->", stamped)


if __name__ == "__main__":
    main()
