"""Nightly drift: PSI per feature, propensity and segment shares; alerts; --fail-on-drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine.cli import _drift_lines, app
from engine.config import load_settings
from engine.errors import DriftAlert, UsageError
from engine.jobs.generate import TARGET, generate
from engine.jobs.score import ScoreOptions, score
from engine.jobs.train import TrainOptions, train
from engine.models.profile import PSI_EPS, drift_level, psi
from engine.report import SCORE_REPORT
from engine.report.html import read_report_data

ROWS = 3000


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drift")
    generate(ROWS, 2, root / "data", seed=11)
    train(TrainOptions(input=str(root / "data"), target=TARGET, output=str(root / "model"), k=4,
                       backend="cpu", report=False))
    # Tonight's customers: spend tripled and everyone 200 days less recent.
    shifted = root / "shifted"
    shifted.mkdir()
    for f in sorted((root / "data").glob("*.parquet")):
        t = pq.read_table(f)
        for name, fn in (("monetary_12m", lambda c: pc.multiply(c, 3)),
                         ("recency_days", lambda c: pc.add(c, 200))):
            i = t.schema.get_field_index(name)
            t = t.set_column(i, t.schema.field(i), fn(t.column(i)).cast(t.schema.field(i).type))
        pq.write_table(t, shifted / f.name)
    return {"root": root, "data": root / "data", "model": root / "model", "shifted": shifted}


def test_psi_is_zero_on_the_reference_and_finite_with_empty_bins() -> None:
    expected = [0.1] * 10
    assert psi(expected, [100] * 10) == pytest.approx(0.0)
    value = psi(expected, [1000] + [0] * 9)  # nine empty bins: smoothed to eps, not infinite
    assert np.isfinite(value) and value > 0.25
    manual = sum((a - 0.1) * np.log(a / 0.1) for a in [1.0] + [PSI_EPS] * 9)
    assert value == pytest.approx(manual)
    assert (drift_level(0.05), drift_level(0.15), drift_level(0.3)) == ("ok", "warning", "alert")


def test_same_data_shows_no_drift(trained: dict[str, Path], tmp_path: Path) -> None:
    manifest = score(ScoreOptions(input=str(trained["data"]), model=str(trained["model"]),
                                  output=str(tmp_path / "out"), backend="cpu", progress="quiet"), load_settings())
    drift = manifest["drift"]
    assert drift["alerts"] == [] and drift["warnings"] == []
    assert drift["thresholds"] == {"warning": 0.10, "alert": 0.25, "eps": PSI_EPS,
                                   "null_warning": 0.05, "null_alert": 0.20,
                                   "unseen_warning": 0.05, "unseen_alert": 0.20}
    assert all(d["psi"] < 0.01 for d in drift["features"].values())
    assert drift["propensity"]["psi"] < 0.01 and drift["segments"]["psi"] < 0.01
    assert len(drift["propensity"]["fractions"]) == len(drift["propensity"]["training_fractions"])
    on_disk = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert on_disk["drift"]["alerts"] == [] and on_disk["report"] == SCORE_REPORT
    assert read_report_data((tmp_path / "out" / SCORE_REPORT).read_text())["level"] == "ok"


def test_shifted_data_alerts_and_fail_on_drift_exits_9_after_publishing(
        trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["score", "--input", str(trained["shifted"]), "--model", str(trained["model"]),
                                      "--output", str(out), "--backend", "cpu", "--progress", "quiet",
                                      "--fail-on-drift"])
    assert result.exit_code == DriftAlert.exit_code == 9, result.output
    # Published all the same: complete, readable scores, manifest and report.
    assert (out / "_SUCCESS").is_file()
    assert ds.dataset(out, format="parquet").count_rows() == ROWS
    manifest = json.loads((out / "_manifest.json").read_text())
    drift = manifest["drift"]
    assert {"monetary_12m", "recency_days"} <= set(drift["alerts"])
    assert drift["features"]["monetary_12m"]["psi"] > 0.25 and drift["features"]["recency_days"]["psi"] > 0.25
    assert drift["features"]["age"]["level"] == "ok"
    # The terminal says which distributions alert, with their PSI, and the error names them.
    # Diagnostics on stderr, the summary line alone on stdout.
    assert "drift ALERT (PSI > 0.25 or null share off by > 0.20): " in result.stderr
    assert "monetary_12m PSI " in result.stderr
    assert result.stdout.startswith("scored ") and "drift" not in result.stdout
    assert "error (drift alert (scores were published))" in result.output
    data = read_report_data((out / SCORE_REPORT).read_text())
    assert data["level"] == "alert" and "recency_days" in data["drift"]["alerts"]


def test_library_raises_drift_alert_carrying_the_published_manifest(
        trained: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DriftAlert) as info:
        score(ScoreOptions(input=str(trained["shifted"]), model=str(trained["model"]), output=str(tmp_path / "out"),
                           backend="cpu", progress="quiet", fail_on_drift=True), load_settings())
    assert "monetary_12m" in str(info.value) and SCORE_REPORT in str(info.value)
    assert "monetary_12m" in info.value.manifest["drift"]["alerts"]
    assert (tmp_path / "out" / "_SUCCESS").is_file()


def test_terminal_lines_separate_alerts_and_warnings() -> None:
    drift = {"features": {"a": {"psi": 0.4, "level": "alert"}, "b": {"psi": 0.12, "level": "warning"},
                          "c": {"psi": 0.01, "level": "ok"}},
             "propensity": {"psi": 0.3, "level": "alert"}, "segments": {"psi": 0.02, "level": "ok"},
             "thresholds": {"warning": 0.10, "alert": 0.25}, "alerts": ["a", "propensity"], "warnings": ["b"]}
    assert _drift_lines(drift, quiet=False) == ["drift ALERT (PSI > 0.25): a 0.400, propensity 0.300",
                                                "drift warning (PSI > 0.10): b 0.120"]
    assert _drift_lines(drift, quiet=True) == ["drift ALERT (PSI > 0.25): a 0.400, propensity 0.300"]
    calm = {**drift, "alerts": [], "warnings": []}
    assert _drift_lines(calm, quiet=False)[0].startswith("drift ok (every PSI <= 0.10; highest feature a 0.400")


def _with_nulls(src: Path, dst: Path, column: str, share: float, seed: int = 0) -> None:
    """A copy of ``src`` where ``share`` of ``column``'s values are null (the rest untouched)."""
    dst.mkdir()
    rng = np.random.default_rng(seed)
    for f in sorted(src.glob("*.parquet")):
        t = pq.read_table(f)
        i = t.schema.get_field_index(column)
        mask = pa.array(rng.random(t.num_rows) < share)
        col = pc.if_else(mask, pa.scalar(None, type=t.schema.field(i).type), t.column(i))
        t = t.set_column(i, t.schema.field(i), col)
        pq.write_table(t, dst / f.name)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_a_feature_gone_90_percent_null_alerts_by_name_and_fails_after_publishing(
        trained: dict[str, Path], tmp_path: Path, backend: str) -> None:
    nulls = tmp_path / "nulls"
    _with_nulls(trained["data"], nulls, "monetary_12m", 0.9)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["score", "--input", str(nulls), "--model", str(trained["model"]),
                                      "--output", str(out), "--backend", backend, "--progress", "quiet",
                                      "--fail-on-drift"])
    assert result.exit_code == DriftAlert.exit_code, result.output
    # Published: the scores, manifest and report are all there.
    assert (out / "_SUCCESS").is_file() and ds.dataset(out, format="parquet").count_rows() == ROWS
    drift = json.loads((out / "_manifest.json").read_text())["drift"]
    feature = drift["features"]["monetary_12m"]
    # Imputation keeps the value histogram in place: PSI alone would not see it.
    assert feature["psi_level"] == "ok"
    assert feature["null_share"] == pytest.approx(0.9, abs=0.03)
    assert feature["null_level"] == "alert" and feature["level"] == "alert"
    assert drift["alerts"] == ["monetary_12m"] or "monetary_12m" in drift["alerts"]
    assert drift["features"]["age"]["null_level"] == "ok"
    reason = drift["reasons"]["monetary_12m"]
    assert reason.startswith("null share 0.9") and "monetary_12m" not in reason and "in training" in reason
    # The terminal names the feature and why; so does the exit-9 error and the report.
    assert "drift ALERT" in result.stderr and "monetary_12m null share 0.9" in result.stderr
    assert "error (drift alert (scores were published))" in result.stderr
    data = read_report_data((out / SCORE_REPORT).read_text())
    assert data["level"] == "alert" and "monetary_12m" in data["drifted"]
    assert data["features"]["monetary_12m"]["null_share"] == pytest.approx(feature["null_share"])


def test_null_levels_come_from_the_settings(trained: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    nulls = tmp_path / "nulls"
    _with_nulls(trained["data"], nulls, "age", 0.12, seed=1)
    options = dict(input=str(nulls), model=str(trained["model"]), backend="cpu", progress="quiet")
    drift = score(ScoreOptions(output=str(tmp_path / "a"), **options), load_settings())["drift"]
    assert "age" in drift["warnings"] and drift["features"]["age"]["null_level"] == "warning"
    config = tmp_path / "engine.toml"
    config.write_text("[drift]\nnull_warning = 0.15\nnull_alert = 0.5\n")
    settings = load_settings(str(config))
    assert settings.source("null_warning") == "file" and settings.source("psi_alert") == "default"
    manifest = score(ScoreOptions(output=str(tmp_path / "b"), **options), settings)
    assert manifest["drift"]["features"]["age"]["null_level"] == "ok" and "age" not in manifest["drift"]["warnings"]
    assert manifest["drift"]["thresholds"]["null_warning"] == 0.15
    assert manifest["config_file"] == str(config) and manifest["settings_sources"]["null_alert"] == "file"
    monkeypatch.setenv("ENGINE_NULL_WARNING", "0.01")
    assert load_settings(str(config)).resolved()["null_warning"] == {"value": 0.01, "source": "env"}
    monkeypatch.setenv("ENGINE_NULL_WARNING", "0.9")
    with pytest.raises(UsageError, match="null_warning"):
        load_settings(str(config))  # warning above alert


def test_report_bins_are_in_the_features_units_and_only_drifted_features_are_drawn(
        trained: dict[str, Path], tmp_path: Path) -> None:
    from engine.models.artifact import load_model
    from engine.report.drift import edge_label

    out = tmp_path / "out"
    score(ScoreOptions(input=str(trained["shifted"]), model=str(trained["model"]), output=str(out),
                       backend="cpu", progress="quiet"), load_settings())
    profile = load_model(trained["model"]).profile["features"]
    text = (out / SCORE_REPORT).read_text()
    data = read_report_data(text)
    bins = data["features"]["monetary_12m"]["bins"]
    edges = profile["monetary_12m"]["bin_edges"]
    # Each bin is bounded by the training deciles in the feature's own units (open at the ends).
    assert [b["high"] for b in bins[:-1]] == edges and [b["low"] for b in bins[1:]] == edges
    assert bins[0]["low"] is None and bins[-1]["high"] is None
    assert sum(b["share"] for b in bins) == pytest.approx(1.0)
    assert max(edges) > 100  # spend in currency units, not bin numbers 0-9
    assert ", ".join(edge_label(e) for e in edges) in text  # the features table prints them
    # Training and tonight's medians: tripled spend moves tonight's median well above training's.
    feature = data["features"]["monetary_12m"]
    assert feature["training_median"] == profile["monetary_12m"]["quantiles"]["0.5"]
    assert feature["median"] > 1.5 * feature["training_median"]
    assert data["features"]["age"]["median"] == pytest.approx(feature_median(trained["data"], "age"), rel=0.1)
    # Panels only for features at warning level or above, most drifted first.
    assert set(data["drifted"]) == {n for n, f in data["features"].items() if f["level"] != "ok"}
    assert "age" not in data["drifted"] and data["drifted"][0] in ("monetary_12m", "recency_days")
    assert 'alt="distribution of drifted features per reference bin"' in text


def feature_median(data: Path, column: str) -> float:
    return float(np.nanmedian(ds.dataset(data, format="parquet").to_table(columns=[column])
                              .column(0).to_numpy(zero_copy_only=False).astype(float)))


def test_edge_labels_are_short_and_in_units() -> None:
    from engine.report.drift import edge_label

    assert [edge_label(v) for v in (0.35, 12.0, 1250.0, 3_400_000.0, -2500.0)] == \
        ["0.35", "12", "1.25k", "3.4M", "-2.5k"]
