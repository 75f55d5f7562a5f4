"""The privacy rule (issue 16, finding 6): no statistic in the model, its report or a run's
manifest describes fewer than 20 customers or is one customer's value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from guard_helpers import engine, one_line

from engine.errors import InputError, UsageError
from engine.jobs.generate import draw_customers
from engine.privacy import MIN_CUSTOMERS, min_customers, private_quantiles, winsor_bounds

ROWS = 1_500


def customers(tmp_path: Path, column: str, values: np.ndarray) -> Path:
    table = draw_customers(ROWS, 1, np.random.default_rng(5))
    arr = pa.array(values, type=pa.float64(), from_pandas=True)
    table = table.set_column(table.schema.get_field_index(column), column, arr)
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "part-0.parquet")
    return tmp_path / "data"


def train(data: Path, out: Path, *flags: object) -> object:
    return engine("train", "--input", data, "--target", "churned", "--output", out, "--backend", "cpu",
                  "--k", 4, "--seed", 1, *flags, cwd=out.parent)


def every_number(obj: object) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in every_number(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in every_number(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_the_minimum_may_be_raised_never_lowered() -> None:
    assert min_customers() == MIN_CUSTOMERS == 20 and min_customers(50) == 50
    with pytest.raises(UsageError, match="never lowered"):
        min_customers(5)


def test_private_quantiles_are_never_a_lone_value() -> None:
    values = np.arange(100, dtype=np.float64) + 0.5  # every value distinct: each is one customer's
    for q, v in private_quantiles(values, (0.1, 0.25, 0.5, 0.75, 0.9), need_tails=False).items():
        assert v not in set(values), q
    assert private_quantiles(values[:19], (0.5,)) == {}
    low, high = winsor_bounds(np.append(np.full(60, 50.0), 987654.5))  # type: ignore[misc]
    assert high < 987654.5 and low == 50.0


def test_a_feature_with_fewer_than_20_values_is_refused(tmp_path: Path) -> None:
    values = np.full(ROWS, np.nan)
    values[:8] = np.linspace(1, 8, 8)
    data = customers(tmp_path, "satisfaction_score", values)
    r = train(data, tmp_path / "model")
    assert r.exit_code == InputError.exit_code, r.output
    msg = one_line(r.stderr)
    assert "satisfaction_score (8)" in msg and "fewer than 40 non-null values" in msg and "--features" in msg
    assert not (tmp_path / "model").exists()


def test_no_stored_statistic_is_one_customers_value(tmp_path: Path) -> None:
    values = np.full(ROWS, np.nan)
    values[:45] = np.round(np.random.default_rng(1).normal(50, 5, 45), 3)
    values[3] = 4242.125  # the only customer with this value
    data = customers(tmp_path, "satisfaction_score", values)
    model = tmp_path / "model"
    r = train(data, model)
    assert r.exit_code == 0, r.output
    meta = json.loads((model / "model.json").read_text())
    stored = every_number(meta["profile"]["features"]["satisfaction_score"])
    lone = {float(v) for v in values[np.isfinite(values)]}
    assert not lone & set(stored), lone & set(stored)
    with np.load(model / "arrays.npz") as npz:
        assert not lone & {float(x) for name in npz.files for x in np.ravel(npz[name])}
    shown = engine("model", "show", model, cwd=tmp_path)
    assert "4242.125" not in shown.stdout and "4242.125" not in (model / "report.html").read_text()
    out = tmp_path / "scores"
    r = engine("score", "--input", data, "--model", model, "--output", out, "--backend", "cpu", "-q", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    for name in ("_manifest.json", "_report.html"):
        assert "4242.125" not in (out / name).read_text(), name


def test_no_segment_is_made_of_one_extreme_customer(tmp_path: Path) -> None:
    values = np.random.default_rng(2).normal(50, 5, ROWS).round(2)
    values[7] = 987654.5
    data = customers(tmp_path, "avg_order_value", values)
    model = tmp_path / "model"
    r = train(data, model)
    assert r.exit_code == 0, r.output
    meta = json.loads((model / "model.json").read_text())
    shares = np.asarray(meta["profile"]["segment_shares"]) * meta["profile"]["rows"]
    assert (np.round(shares) >= MIN_CUSTOMERS).all(), shares
    report = (model / "report.html").read_text()
    assert "987654" not in report and "987,654" not in report
