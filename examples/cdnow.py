"""CDNOW: will a customer buy again? RFM and tenure features from real CD purchases.

The data is the CDNOW master file shipped in ``lifetimes==0.11.3``: 69,659 purchases
by 23,570 customers who first bought in 1997-Q1, followed to 1998-06-30. Features are
computed from the purchases up to a cut-off date; the target is whether the customer
bought again after it. The model is trained (default flags) on 80% of the customers of
the snapshot at ``CUTOFF``; the other 20% test it against scikit-learn's default
pipeline fitted on the same rows. The
"nightly" run scores the snapshot at ``SCORE_CUTOFF``, six months later, as a real
scoring job would: the customers have aged, so the run report shows genuine drift.

    python -m examples.cdnow --workdir /tmp/cdnow
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from examples._common import comparison_line, engine_vs_sklearn, fresh_dir, main, package_file

CUTOFF = pd.Timestamp("1997-09-30")
SCORE_CUTOFF = pd.Timestamp("1998-03-31")
END = pd.Timestamp("1998-06-30")
FEATURES = ("recency_days", "frequency", "monetary_total", "avg_order_value", "cds_total", "tenure_days",
            "purchases_90d")
TARGET = "bought_again"
K = 4


def load_purchases() -> pd.DataFrame:
    """Every purchase: customer_id (int), date, number_of_cds, dollar_value."""
    path = package_file("lifetimes", "lifetimes/datasets/CDNOW_master.txt")
    df = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": "int64", "date": "str"})
    df["date"] = pd.to_datetime(df["date"], format="%Y%m%d")
    return df


def rfm_features(purchases: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """One row per customer with a purchase up to ``cutoff``: RFM, tenure and the target."""
    before = purchases[purchases["date"] <= cutoff]
    g = before.groupby("customer_id")
    first, last = g["date"].min(), g["date"].max()
    out = pd.DataFrame({
        "recency_days": (cutoff - last).dt.days.astype("float64"),
        "frequency": g["date"].nunique().astype("float64"),
        "monetary_total": g["dollar_value"].sum(),
        "avg_order_value": g["dollar_value"].mean(),
        "cds_total": g["number_of_cds"].sum().astype("float64"),
        "tenure_days": (cutoff - first).dt.days.astype("float64"),
    })
    recent = before[before["date"] > cutoff - pd.Timedelta(days=90)].groupby("customer_id")["date"].nunique()
    out["purchases_90d"] = recent.reindex(out.index, fill_value=0).astype("float64")
    later = purchases[(purchases["date"] > cutoff) & (purchases["date"] <= END)]["customer_id"].unique()
    out[TARGET] = out.index.isin(later).astype("int8")
    return out.reset_index()


def write_parquet(df: pd.DataFrame, directory: Path, files: int = 2) -> None:
    """The table as ``files`` Parquet files (the engine plans one task per file)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(df)), files)):
        pq.write_table(pa.Table.from_pandas(df.iloc[chunk], preserve_index=False), directory / f"part-{i}.parquet")


def run(workdir: str, progress: str = "auto") -> dict[str, Any]:
    """Train on 80% of the cut-off snapshot's customers, test on the rest against scikit-learn,
    then score the later snapshot; returns a summary."""
    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, score
    from engine.jobs.train import split_indices

    root = fresh_dir(Path(workdir))
    purchases = load_purchases()
    train_df = rfm_features(purchases, CUTOFF)
    night_df = rfm_features(purchases, SCORE_CUTOFF)
    tr, te = split_indices(len(train_df), 0.2, 42)
    compared = engine_vs_sklearn(root / "compare", train_df.iloc[tr], train_df.iloc[te], list(FEATURES), TARGET,
                                 "customer_id", K, progress)
    trained = compared["train"]
    write_parquet(night_df, root / "nightly")
    manifest = score(ScoreOptions(input=str(root / "nightly"), model=str(root / "compare" / "model"),
                                  output=str(root / "scores"), backend="cpu", progress=progress, reasons=3),
                     load_settings())
    report = trained.report or {}
    top = report["deciles"][0]
    ev = trained.model.metrics["evaluation"]
    drift = manifest["drift"]
    lines = [
        f"CDNOW: {len(purchases):,} purchases, {len(train_df):,} customers; cut-off {CUTOFF.date()}, "
        f"target: bought again by {END.date()}",
        comparison_line("CDNOW", compared),
        f"{ev['kind']} metrics of the training rows: AUC {trained.model.metrics[ev['kind']]['auc']:.4f}, "
        f"base rate {report['base_rate']:.3f}, top-decile rate {top['actual_rate']:.3f} (lift {top['lift']:.2f})",
        f"training report: {trained.report_path}",
        f"scored the {SCORE_CUTOFF.date()} snapshot: {manifest['totals']['rows_out']:,} customers; drift alerts: "
        f"{', '.join(drift['alerts']) or 'none'}; warnings: {', '.join(drift['warnings']) or 'none'}",
        f"run report: {root / 'scores' / manifest['report']}" if manifest.get("report") else "run report: not written",
    ]
    return {"workdir": str(root), "train": trained, "manifest": manifest, "top_decile": top,
            "base_rate": report["base_rate"], "engine_auc": compared["engine_auc"],
            "sklearn_auc": compared["sklearn_auc"], "lines": lines}


if __name__ == "__main__":
    raise SystemExit(main(__doc__.splitlines()[0], run))
