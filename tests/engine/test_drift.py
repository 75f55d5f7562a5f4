"""Nightly drift: PSI per feature, propensity and segment shares; alerts; --fail-on-drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine.cli import _drift_lines, app
from engine.config import load_settings
from engine.errors import DriftAlert
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
    assert drift["thresholds"] == {"warning": 0.10, "alert": 0.25, "eps": PSI_EPS}
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
    assert "drift ALERT (PSI > 0.25): " in result.output and "monetary_12m" in result.output
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
