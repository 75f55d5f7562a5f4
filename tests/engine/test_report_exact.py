"""Run reports an analyst cannot misread: exact medians and shares of whole-number features,
propensity bins that resolve the action thresholds, no empty chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine.models.profile import MIN_CUSTOMERS, discrete_summary


@pytest.fixture(scope="module")
def flagged(dataset_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The shared customers plus a 0/1 flag (int8), a 0/1 flag stored as float with nulls."""
    frame = dataset_frame.copy()
    rng = np.random.default_rng(5)
    frame["has_app"] = (rng.random(len(frame)) < 0.62).astype("int8")
    opted = (rng.random(len(frame)) < 0.3).astype("float64")
    opted[::50] = np.nan
    frame["opted_in"] = opted
    data = tmp_path_factory.mktemp("flags") / "data"
    data.mkdir()
    half = len(frame) // 2
    for i, part in enumerate((frame.iloc[:half], frame.iloc[half:])):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), data / f"part-{i}.parquet")
    return data, frame


FEATURES = ["has_app", "opted_in", "household_size", "support_tickets_12m", "monetary_12m", "tenure_months"]


def test_medians_of_flags_and_small_integers_are_exact(flagged: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    data, frame = flagged
    engine.train(str(data), "churned", str(tmp_path / "m"), k=3, C=1.0, report=False, backend="cpu",
                 features=FEATURES)
    summary = engine.score(str(data), str(tmp_path / "m"), str(tmp_path / "s"), backend="cpu")
    feats = summary.manifest["drift"]["features"]
    for name in ("has_app", "opted_in", "household_size", "support_tickets_12m"):
        values = frame[name].dropna().to_numpy(dtype=np.float64)
        lower_median = float(np.quantile(values, 0.5, method="inverted_cdf"))
        d = feats[name]
        # Same data as training: both medians are the same exact value of the data.
        assert d["median_exact"] is True, name
        assert d["median"] == lower_median == d["training_median"], (name, d["median"], d["training_median"])
        assert float(d["median"]).is_integer()
    for name in ("has_app", "opted_in"):
        share = float(frame[name].dropna().mean())
        assert feats[name]["share_of_1"] == pytest.approx(share, abs=1e-12)
        assert feats[name]["training_share_of_1"] == pytest.approx(share, abs=1e-12)
    assert "share_of_1" not in feats["household_size"]
    assert feats["monetary_12m"]["median_exact"] is False   # continuous: interpolated, and marked so
    assert frame["tenure_months"].nunique() > 64 and feats["tenure_months"]["median_exact"] is False
    html = (tmp_path / "s" / "_report.html").read_text()
    share = float(frame["has_app"].mean())
    assert f"share of 1: {share:.2f} vs {share:.2f}" in html
    assert "≈ " in html and "0.3778" not in html
    assert 'id="no-missing"' not in html   # opted_in has nulls: the missing-values chart is drawn


def test_propensity_bins_have_the_thresholds_as_edges(flagged: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    data, frame = flagged
    engine.train(str(data), "churned", str(tmp_path / "m"), k=3, C=1.0, report=False, backend="cpu",
                 features=["household_size", "monetary_12m", "tenure_months"])
    import os

    os.environ["ENGINE_ACTION_THRESHOLDS"] = "0.33,0.8"
    try:
        summary = engine.score(str(data), str(tmp_path / "m"), str(tmp_path / "s"), backend="cpu")
    finally:
        del os.environ["ENGINE_ACTION_THRESHOLDS"]
    hist = summary.manifest["propensity"]["histogram"]
    edges = hist["edges"]
    assert edges[0] == 0.0 and edges[-1] == 1.0 and 0.33 in edges and 0.8 in edges
    scores = pd.read_parquet(tmp_path / "s")
    prop = scores["propensity"].to_numpy()
    # engine.privacy: a bin of fewer than 20 customers is published as null (and said so);
    # every other bin is exact.
    exact = np.bincount(np.searchsorted(np.asarray(edges[1:-1], dtype=np.float32), prop, side="right"),
                        minlength=len(edges) - 1)
    assert max(np.diff(edges)) <= 0.05 + 1e-9
    assert all(c is None or c == e for c, e in zip(hist["counts"], exact))
    assert all(e < 20 or c is not None for c, e in zip(hist["counts"], exact))
    assert (None in hist["counts"]) == any("histogram" in s for s in summary.manifest["privacy"]["suppressed"])
    # No feature has a missing value here: a sentence instead of an empty chart.
    html = (tmp_path / "s" / "_report.html").read_text()
    assert 'id="no-missing"' in html and "share of rows missing" not in html


def test_no_median_from_fewer_than_twenty_customers() -> None:
    few = {0.0: 5, 1.0: MIN_CUSTOMERS - 6}
    assert discrete_summary(few, {"quantiles": {}, "bin_edges": [0.0], "mean": 0.5}, MIN_CUSTOMERS - 1) == {}
    enough = {0.0: 5, 1.0: 20}
    out = discrete_summary(enough, {"quantiles": {"0.5": 1.0}, "bin_edges": [0.0], "mean": 0.7}, 25)
    assert out == {"median": 1.0, "median_exact": True, "share_of_1": 0.8, "training_share_of_1": 0.7}
    # a median value held by fewer than 20 customers is theirs: no exact median (engine.privacy)
    lone = {0.0: 12, 1.0: 1, 2.0: 12}
    assert discrete_summary(lone, {"quantiles": {}, "bin_edges": [0.0], "mean": 1.0}, 25) == {}
    # counts that do not cover every sampled value (an older part) give no exact median
    assert discrete_summary(enough, {"quantiles": {}, "bin_edges": [0.0], "mean": 0.7}, 26) == {}
