"""engine/jobs/run_report.py: the run report drawn in the background is the report."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest

from engine.config import Settings
from engine.jobs.run_report import ReportDrawer
from engine.jobs.score import ScoreOptions, score
from engine.report import SCORE_REPORT
from engine.report.drift import draw_drift_charts, render_score_report


@pytest.fixture(scope="module")
def manifest(dataset_dir: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("run-report") / "scores"
    score(ScoreOptions(input=str(dataset_dir), model=str(model_dir), output=str(out), backend="cpu",
                       progress="quiet"), Settings())
    data = json.loads((out / "_manifest.json").read_text())
    assert data["report"] == SCORE_REPORT and (out / SCORE_REPORT).is_file()
    return data


def _drifted(manifest: dict) -> dict:
    """The manifest with two features pushed over the alert level, so every chart is drawn."""
    m = copy.deepcopy(manifest)
    for name in list(m["drift"]["features"])[:2]:
        m["drift"]["features"][name].update(level="alert", psi_level="alert", psi=0.9)
    return m


@pytest.mark.parametrize("drifted", [False, True])
def test_charts_drawn_early_give_the_same_page(manifest: dict, drifted: bool) -> None:
    m = _drifted(manifest) if drifted else manifest
    thresholds = [a["threshold"] for a in m["propensity"]["action_thresholds"]]
    charts = draw_drift_charts(m["drift"], thresholds)
    assert charts["psi_and_nulls"] and "propensity" not in charts  # drawn from the exact summaries
    assert bool(charts["feature_panels"]) is drifted
    assert render_score_report(m, charts) == render_score_report(m)


@pytest.mark.parametrize("stale", [False, True])
def test_drawer_draws_on_its_own_thread_and_writes_the_page(manifest: dict, tmp_path: Path, stale: bool) -> None:
    """Charts drawn early are the page's; a chart drawn from data the manifest no longer holds is redrawn."""
    m = _drifted(manifest)
    thresholds = [a["threshold"] for a in m["propensity"]["action_thresholds"]]
    with ReportDrawer() as drawer:
        drift = copy.deepcopy(m["drift"])
        if stale:
            drift["features"][next(iter(drift["features"]))]["psi"] = 0.5
            drift["segments"]["customers"] = [1] * len(drift["segments"]["counts"])
        drawer.drift_known(drift, thresholds)
        drawer.segments_known(drift["segments"])
        drift["segments"]["customers"] = None  # the caller goes on with its own copy
        assert drawer._charts is not None and drawer._segments is not None
        drawn_by = drawer._pool.submit(threading.current_thread).result()
        assert drawn_by is not threading.current_thread()
        assert drawer.finish(m, tmp_path / SCORE_REPORT, SCORE_REPORT) == SCORE_REPORT
    assert (tmp_path / SCORE_REPORT).read_text(encoding="utf-8") == render_score_report(m)[0]


def test_a_report_that_cannot_be_drawn_costs_nothing_but_the_report(manifest: dict, tmp_path: Path) -> None:
    broken = copy.deepcopy(manifest)
    broken["drift"]["segments"]["counts"] = "not a list"
    broken["drift"]["segments"].pop("customers", None)
    with ReportDrawer() as drawer, pytest.warns(RuntimeWarning, match="could not be written"):
        assert drawer.finish(broken, tmp_path / SCORE_REPORT, SCORE_REPORT) is None
    assert "report_error" in broken and not (tmp_path / SCORE_REPORT).exists()
