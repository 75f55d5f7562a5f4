"""Ta Feng grocery as offers: hit rate at 5 on February purchases, engine vs popularity vs scikit-learn OvR.

Features per customer from November–January purchases: recency (days before 1 February),
frequency (purchase days), monetary (spend); per subclass family (the subclass code // 100,
the 20 families most customers bought from) the purchase days; age group and postal area
(PIN code) as categorical columns. Targets: "bought subclass s in February", for the 50
subclasses with the most February buyers and for every subclass with >= 100 February
buyers. Customers with Nov–Jan purchases are split 70/30 (seeded); hit rate at 5 = share of
held-out customers who bought any target subclass in February whose top 5 holds one of them.
Offers have value 1 and cost 0 (ranking by calibrated propensity) and ``exclude_owned =
false`` (the targets are future purchases, not holdings).

    PYTHONPATH=. python3 bench/tafeng_offers.py [--heads 50,274] [--search-rows 5000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import machine, now_utc, write_results  # noqa: E402
from bench.public_data import load_ta_feng  # noqa: E402

SEED = 11
FAMILIES = 20
OUT = Path(__file__).resolve().parent / "results"


def features() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-customer features (Nov–Jan) and the February (customer, subclass) pairs."""
    t = load_ta_feng()
    cut = pd.Timestamp("2001-02-01")
    past, feb = t[cut > t.TRANSACTION_DT], t[cut <= t.TRANSACTION_DT]
    g = past.groupby("CUSTOMER_ID")
    f = pd.DataFrame({
        "recency_days": (cut - g.TRANSACTION_DT.max()).dt.days.astype(float),
        "frequency_days": g.TRANSACTION_DT.nunique().astype(float),
        "monetary": g.SALES_PRICE.sum().astype(float),
        "age_group": g.AGE_GROUP.agg(lambda s: s.dropna().iloc[0] if s.notna().any() else None),
        "area": g.PIN_CODE.first(),
    })
    fam = past.assign(family=past.PRODUCT_SUBCLASS // 100)
    top = fam.groupby("family").CUSTOMER_ID.nunique().nlargest(FAMILIES).index
    days = (fam[fam.family.isin(top)].groupby(["CUSTOMER_ID", "family"]).TRANSACTION_DT.nunique()
            .unstack(fill_value=0).astype(float))
    days.columns = [f"fam_{c}_days" for c in days.columns]
    f = f.join(days).fillna({c: 0.0 for c in days.columns})
    f.index.name = "customer_id"
    pairs = feb[feb.CUSTOMER_ID.isin(f.index)][["CUSTOMER_ID", "PRODUCT_SUBCLASS"]].drop_duplicates()
    return f.reset_index(), pairs


def hit_rate(top5: np.ndarray, bought: np.ndarray) -> float:
    """Share of customers with any target purchase whose top 5 (column indices) holds one."""
    any_bought = bought.any(axis=1)
    hits = np.take_along_axis(bought, np.maximum(top5, 0), axis=1) & (top5 >= 0)
    return float(hits.any(axis=1)[any_bought].mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", default="50,274")
    parser.add_argument("--search-rows", type=int, default=5_000)
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from engine.jobs.train import TrainOptions, train
    from engine.models.artifact import load_model

    t0 = time.perf_counter()
    f, pairs = features()
    prep_s = time.perf_counter() - t0
    counts = pairs.groupby("PRODUCT_SUBCLASS").CUSTOMER_ID.nunique().sort_values(ascending=False, kind="stable")
    eligible = counts[counts >= 100]
    rng = np.random.default_rng(SEED)
    test = rng.random(len(f)) < 0.3
    numeric = [c for c in f.columns if c not in ("customer_id", "age_group", "area")]
    results = []
    for T in [int(h) for h in args.heads.split(",")]:
        subclasses = list(eligible.index[:T])
        Y = np.zeros((len(f), len(subclasses)), np.int8)
        pos = {s: j for j, s in enumerate(subclasses)}
        row = {c: i for i, c in enumerate(f.customer_id)}
        for c, s in pairs[pairs.PRODUCT_SUBCLASS.isin(pos)].itertuples(index=False):
            Y[row[c], pos[s]] = 1
        frame = f.copy()
        for j, s in enumerate(subclasses):
            frame[f"feb_{s}"] = Y[:, j]
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "train").mkdir()
            pq.write_table(pa.Table.from_pandas(frame[~test], preserve_index=False), root / "train" / "t.parquet")
            (root / "offers.toml").write_text("top = 5\n" + "".join(
                f'[[offer]]\nid = "s{s}"\ntarget = "feb_{s}"\nexclude_owned = false\n' for s in subclasses))
            t1 = time.perf_counter()
            train(TrainOptions(input=str(root / "train"), target=None, offers=str(root / "offers.toml"),
                               output=str(root / "model"), features=[*numeric, "age_group", "area"], k=4,
                               report=False, backend="cpu", seed=SEED, search_rows=args.search_rows,
                               progress="quiet"))
            train_s = time.perf_counter() - t1
            import engine

            model = engine.Model(load_model(root / "model"))
            test_frame = frame[test].reset_index(drop=True)
            t1 = time.perf_counter()
            rec = model.recommend(pa.Table.from_pandas(test_frame[["customer_id", *numeric, "age_group", "area"]],
                                                       preserve_index=False), top=5).to_pandas()
            rec_s = time.perf_counter() - t1
        top5 = np.full((len(test_frame), 5), -1)
        rpos = {c: i for i, c in enumerate(test_frame.customer_id)}
        code = {f"s{s}": j for j, s in enumerate(subclasses)}
        top5[rec.customer_id.map(rpos).to_numpy(), rec["rank"].to_numpy().astype(int) - 1] = \
            rec.offer.astype(str).map(code).to_numpy()
        bought = Y[test].astype(bool)
        popular = np.argsort(-Y[~test].sum(axis=0), kind="stable")[:5]
        X_tr = pd.get_dummies(frame[~test][[*numeric, "age_group", "area"]], columns=["age_group", "area"], dtype=float)
        X_te = pd.get_dummies(test_frame[[*numeric, "age_group", "area"]], columns=["age_group", "area"],
                              dtype=float).reindex(columns=X_tr.columns, fill_value=0.0)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ovr = OneVsRestClassifier(LogisticRegression(), n_jobs=1).fit(X_tr.to_numpy(), Y[~test])
        sk_fit_s = time.perf_counter() - t1
        sk_top5 = np.argsort(-ovr.predict_proba(X_te.to_numpy()), axis=1, kind="stable")[:, :5]
        entry = {"T": len(subclasses), "train_customers": int((~test).sum()), "test_customers": int(test.sum()),
                 "test_customers_with_a_target_purchase": int(bought.any(axis=1).sum()),
                 "hit_rate_at_5": {"engine": hit_rate(top5, bought),
                                   "popularity": hit_rate(np.tile(popular, (len(test_frame), 1)), bought),
                                   "sklearn_ovr_logistic_default": hit_rate(sk_top5, bought)},
                 "seconds": {"engine_train": train_s, "engine_recommend_test": rec_s, "sklearn_ovr_fit": sk_fit_s},
                 "search_rows": args.search_rows, "loadavg": os.getloadavg()}
        results.append(entry)
        print(entry, flush=True)
    payload = {"benchmark": "Ta Feng offers: hit rate at 5 on February purchases", "when": now_utc(),
               "machine": machine(), "note": "loaded shared 2-core machine", "seed": SEED,
               "features": f"recency, frequency, monetary, purchase days in the {FAMILIES} most-bought subclass "
                           "families (Nov-Jan), age group and area (categorical)",
               "subclasses_with_100_february_buyers": int(len(eligible)), "prepare_seconds": prep_s,
               "runs": results}
    print("->", write_results(OUT, "tafeng-offers", None, payload)[0])


if __name__ == "__main__":
    main()
