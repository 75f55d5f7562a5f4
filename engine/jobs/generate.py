"""Synthetic customers with hidden archetypes and a churn target from a known logistic model.

Each file is drawn from its own child of ``SeedSequence(seed)``, so a dataset is
reproducible per (seed, rows, files) and files can be generated independently.
Every draw is vectorised over the file's rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.cluster import default_threads
from engine.errors import UsageError
from engine.io.guard import (
    output_errors,
)

ID_BASE = 10_000_001
ROW_GROUP_ROWS = 131_072
REGIONS = np.array(["north", "south", "east", "west", "central"])

# name, weight, and one value per feature-generating parameter (see _draw_file).
ARCHETYPES = (
    "loyal_high_value", "regular", "bargain_hunter", "new_customer",
    "lapsing", "dormant", "digital_native", "complainer",
)
_WEIGHT = np.array([0.10, 0.22, 0.15, 0.12, 0.13, 0.10, 0.10, 0.08])
_P = {  # per-archetype parameters, indexed by archetype number
    "recency": np.array([8, 25, 40, 15, 120, 330, 12, 55.0]),
    "frequency": np.array([26, 11, 9, 3, 3, 0.4, 15, 6.0]),
    "order_value": np.array([140, 60, 32, 50, 55, 45, 75, 65.0]),
    "basket": np.array([7, 4, 6, 3, 3, 2, 3, 4.0]),
    "tenure": np.array([72, 40, 30, 3, 44, 52, 18, 30.0]),
    "age": np.array([49, 42, 37, 31, 46, 53, 27, 44.0]),
    "return_rate": np.array([0.04, 0.06, 0.14, 0.08, 0.10, 0.05, 0.07, 0.28]),
    "web": np.array([12, 6, 11, 8, 2, 0.4, 26, 7.0]),
    "app": np.array([9, 3, 5, 4, 1, 0.2, 32, 3.0]),
    "open_rate": np.array([0.48, 0.30, 0.52, 0.36, 0.14, 0.04, 0.24, 0.20]),
    "click_share": np.array([0.32, 0.20, 0.42, 0.22, 0.10, 0.05, 0.30, 0.10]),
    "discount": np.array([0.08, 0.18, 0.72, 0.20, 0.30, 0.30, 0.22, 0.26]),
    "tickets": np.array([0.4, 0.5, 0.8, 0.7, 1.0, 0.2, 0.6, 5.5]),
    "satisfaction": np.array([8.6, 7.6, 7.0, 7.6, 6.0, 5.8, 7.6, 3.4]),
    "points_rate": np.array([2.0, 1.0, 0.5, 0.5, 0.8, 0.8, 1.0, 1.0]),
    "login": np.array([4, 14, 8, 6, 45, 220, 1.5, 20.0]),
    "categories": np.array([0.50, 0.30, 0.35, 0.15, 0.20, 0.08, 0.30, 0.25]),
    "household": np.array([1.5, 1.2, 1.8, 0.8, 1.1, 1.0, 0.6, 1.3]),
}

# The known churn model: logit = intercept + sum(coef * feature), on the drawn features.
CHURN_INTERCEPT = -1.3
CHURN_COEF = {
    "recency_days": 0.010,
    "frequency_12m": -0.06,
    "tenure_months": -0.012,
    "discount_share": 1.0,
    "support_tickets_12m": 0.22,
    "satisfaction_score": -0.22,
    "email_open_rate": -1.6,
    "days_since_last_login": 0.004,
    "app_sessions_30d": -0.02,
}
NULL_COLUMNS = ("age", "email_open_rate", "satisfaction_score", "avg_days_between_orders")
NULL_RATE = 0.005
TARGET = "churned"
STRING_COLUMN = "region"


@dataclass(frozen=True)
class GenerateResult:
    out: str
    rows: int
    files: int
    paths: tuple[str, ...]


def _beta(rng: np.random.Generator, mean: np.ndarray, strength: float = 12.0) -> np.ndarray:
    return rng.beta(mean * strength, (1.0 - mean) * strength)


def draw_customers(rows: int, first_id: int, rng: np.random.Generator) -> pa.Table:
    """``rows`` customers with ids from ``first_id``: features, region, hidden archetype effects, target."""
    a = rng.choice(len(ARCHETYPES), size=rows, p=_WEIGHT)
    p = {name: values[a] for name, values in _P.items()}
    frequency = rng.poisson(p["frequency"])
    order_value = p["order_value"] * rng.lognormal(0.0, 0.35, rows)
    monetary = frequency * order_value * rng.lognormal(0.0, 0.1, rows)
    returns = rng.poisson(frequency * p["return_rate"])
    open_rate = _beta(rng, p["open_rate"])
    tenure = np.where(a == 3, rng.integers(0, 7, rows), rng.gamma(4.0, p["tenure"] / 4.0))
    cols: dict[str, np.ndarray] = {
        "customer_id": np.arange(first_id, first_id + rows, dtype=np.int64),
        "recency_days": np.minimum(rng.exponential(p["recency"]), 1095).astype(np.int32),
        "frequency_12m": frequency.astype(np.int32),
        "monetary_12m": np.round(monetary, 2),
        "avg_order_value": np.round(order_value, 2),
        "basket_size_items": (1 + rng.gamma(2.0, p["basket"] / 2.0)).astype(np.float32),
        "tenure_months": tenure.astype(np.int32),
        "age": np.clip(rng.normal(p["age"], 10.0), 18, 90).astype(np.int16),
        "returns_12m": returns.astype(np.int32),
        "return_rate": (returns / np.maximum(frequency, 1)).astype(np.float32),
        "web_visits_30d": rng.poisson(p["web"]).astype(np.int32),
        "app_sessions_30d": rng.poisson(p["app"]).astype(np.int32),
        "email_open_rate": open_rate.astype(np.float32),
        "email_click_rate": (open_rate * _beta(rng, p["click_share"])).astype(np.float32),
        "discount_share": _beta(rng, p["discount"]).astype(np.float32),
        "support_tickets_12m": rng.poisson(p["tickets"]).astype(np.int16),
        "satisfaction_score": np.clip(rng.normal(p["satisfaction"], 1.0), 0, 10).astype(np.float32),
        "loyalty_points": (monetary * p["points_rate"] + rng.integers(0, 50, rows)).astype(np.int64),
        "days_since_last_login": np.minimum(rng.exponential(p["login"]), 3650).astype(np.int32),
        "categories_bought": rng.binomial(12, p["categories"]).astype(np.int16),
        "household_size": (1 + rng.poisson(p["household"])).astype(np.int8),
        "avg_days_between_orders": np.round(365.0 / (frequency + 1) * rng.lognormal(0, 0.2, rows), 1),
    }
    logit = CHURN_INTERCEPT + sum(c * cols[name].astype(np.float64) for name, c in CHURN_COEF.items())
    churned = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    arrays = {}
    for name, values in cols.items():
        mask = rng.random(rows) < NULL_RATE if name in NULL_COLUMNS else None
        arrays[name] = pa.array(values, mask=mask)
    arrays[STRING_COLUMN] = pa.array(REGIONS[rng.integers(0, len(REGIONS), rows)])
    arrays[TARGET] = pa.array(churned)
    return pa.table(arrays)


GENERATED_MARKER = "_generated.json"  # a `_` name: dataset discovery skips it


def _owned_generated(read: Any) -> set[str] | None:
    """The files an earlier ``engine generate`` wrote there, from its marker; None if the marker is not ours."""
    from engine.io.publish import json_marker

    marker = json_marker(read(GENERATED_MARKER), ("generator", "files"))
    if marker is None or marker["generator"] != "engine generate" or not isinstance(marker["files"], int):
        return None
    return {GENERATED_MARKER} | set(_file_names(marker["files"]))


def generated_kind() -> Any:
    """Generated data as :mod:`engine.io.publish` publishes it: ``_generated.json`` last."""
    from engine.io.publish import ArtifactKind

    return ArtifactKind(what="data written by `engine generate`", marker=GENERATED_MARKER, owned=_owned_generated)


def check_generate_output(out: str | os.PathLike[str], overwrite: bool) -> Any:
    """Before any work: where the data may go; its real path or store Location (see :mod:`engine.io.publish`).

    An existing directory is replaced only if empty, or if it holds this generator's
    marker and ``overwrite`` is given.
    """
    from engine.io.publish import check_target

    return check_target(out, generated_kind(), overwrite=overwrite)


def _file_names(files: int) -> list[str]:
    return [f"customers-{i:05d}.parquet" for i in range(files)]


def generate(rows: int, files: int, out: str | os.PathLike[str], seed: int = 42,
             overwrite: bool = False, row_group_rows: int = ROW_GROUP_ROWS,
             on_file: Callable[[int], None] | None = None) -> GenerateResult:
    """Write ``rows`` synthetic customers as ``files`` Parquet files under ``out``.

    The files appear at once (written to a temporary sibling directory, then swapped in).
    ``out`` gets a ``_generated.json`` marker, which is what lets ``overwrite`` replace it.
    """
    if rows < 1 or files < 1:
        raise UsageError("--rows and --files must be at least 1")
    if row_group_rows < 1:
        raise UsageError("--row-group-rows must be at least 1")
    if files > rows:
        raise UsageError(f"--files ({files}) cannot exceed --rows ({rows})")
    target = check_generate_output(out, overwrite)
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    children = np.random.SeedSequence(seed).spawn(files)
    names = _file_names(files)

    def write(tmp: Path) -> None:
        def write_file(i: int) -> None:
            # Each file has its own child seed, so the data does not depend on which thread
            # draws it; NumPy's generators and Parquet encoding run without the GIL.
            n = int(bounds[i + 1] - bounds[i])
            table = draw_customers(n, ID_BASE + int(bounds[i]), np.random.default_rng(children[i]))
            pq.write_table(table, tmp / names[i], row_group_size=row_group_rows)
            if on_file is not None:
                on_file(n)

        with output_errors(target, "write generated data to"):
            with ThreadPoolExecutor(max_workers=min(files, default_threads())) as pool:
                list(pool.map(write_file, range(files)))
            (tmp / GENERATED_MARKER).write_text(json.dumps(
                {"generator": "engine generate", "rows": rows, "files": files, "seed": seed}) + "\n")

    from engine.io.publish import publish

    publish(out, write, generated_kind(), overwrite=overwrite)
    if not isinstance(target, Path):
        base = str(target)
        return GenerateResult(base, rows, files, tuple(f"{base}/{n}" for n in names))
    shown = Path(out)
    return GenerateResult(str(shown), rows, files, tuple(str(shown / n) for n in names))
