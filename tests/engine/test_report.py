"""The training report and the run report: content, self-containment, and a real browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.config import load_settings
from engine.jobs.generate import TARGET, generate
from engine.jobs.score import ScoreOptions, score
from engine.models.artifact import load_model
from engine.report import SCORE_REPORT, TRAIN_REPORT, gains_table
from engine.report.html import read_report_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMG = re.compile(r'<img [^>]*src="data:image/(png);base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    generate(4000, 2, root / "data", seed=3)
    result = CliRunner().invoke(app, ["train", "--input", str(root / "data"), "--target", TARGET,
                                      "--output", str(root / "model"), "--k", "4", "--backend", "cpu"])
    assert result.exit_code == 0, result.output
    score(ScoreOptions(input=str(root / "data"), model=str(root / "model"), output=str(root / "scores"),
                       backend="cpu", progress="quiet"), load_settings())
    return {"root": root, "model": root / "model", "scores": root / "scores", "train_stdout": result.output}


def _self_contained(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>")
    for external in ('src="http', "src='http", 'href="http', "<link", "@import", "url(", 'src="//'):
        assert external not in text, f"the report refers to an external resource: {external}"
    images = IMG.findall(text)
    assert len(images) == text.count("<img ")
    for _kind, data in images:  # one chart library for both reports: matplotlib PNGs
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_writes_report_beside_model_and_prints_path(run: dict[str, Path]) -> None:
    report = run["model"] / TRAIN_REPORT
    assert f"report: {report}" in run["train_stdout"]
    load_model(run["model"])  # the extra file leaves the content hash valid
    text = report.read_text()
    _self_contained(text)
    # ROC, calibration, gains+lift, drivers, CV curve, segment sizes, projection, heatmap
    assert text.count("<img ") >= 8
    for alt in ("ROC curve", "calibration plot", "gains and lift chart", "propensity drivers",
                "cross-validation curve", "segment sizes", "2-D projection by segment", "centroid heatmap"):
        assert f'alt="{alt}"' in text
    for table_id in ("metrics", "deciles", "segment-descriptions", "segment-profiles"):
        assert f'id="{table_id}"' in text
    data = read_report_data(text)
    # 4,000 rows: the metrics are cross-validated (out-of-fold) over every row, and the
    # final model, its segments included, is fitted on every row.
    assert data["evaluated_on"] == "cv"
    assert len(data["deciles"]) == 10 and sum(d["customers"] for d in data["deciles"]) == 4000
    assert data["deciles"][0]["actual_rate"] > data["base_rate"]  # the synthetic target is learnable
    assert data["deciles"][-1]["cumulative_gain"] == pytest.approx(1.0)
    assert len(data["segments"]) == 4 and sum(s["customers"] for s in data["segments"]) == 4000
    model = load_model(run["model"])
    assert [d["feature"] for d in data["drivers"]] == [d["feature"] for d in model.metadata()["drivers"]]
    assert data["logistic"]["C"] == model.params["logistic"]["C"] and len(data["logistic"]["curve"]) >= 13
    for s, described in zip(data["segments"], model.metadata()["segments"]):
        assert s["description"] == described["description"] and s["description"] in text


def test_gains_table_ranks_highest_first() -> None:
    y = [1, 0, 1, 0, 0, 0, 0, 0, 1, 0]
    p = [0.9, 0.1, 0.8, 0.2, 0.3, 0.05, 0.15, 0.25, 0.7, 0.01]
    rows = gains_table(y, p, n_bins=5)
    assert [r["customers"] for r in rows] == [2] * 5
    assert rows[0]["actual_rate"] == 1.0 and rows[0]["lift"] == pytest.approx(1 / 0.3)
    assert rows[1]["cumulative_gain"] == pytest.approx(1.0)


def test_score_writes_run_report_that_dataset_discovery_skips(run: dict[str, Path]) -> None:
    out = run["scores"]
    report = out / SCORE_REPORT
    assert report.is_file() and (out / "_SUCCESS").is_file()
    assert ds.dataset(out, format="parquet").count_rows() == 4000
    text = report.read_text()
    _self_contained(text)
    for alt in ("propensity distribution", "segment shares"):
        assert f'alt="{alt}"' in text
    # Drawn every night without a plotting library: inline SVG, labelled for screen readers.
    assert 'aria-label="PSI and missing values per feature"' in text and "<svg " in text
    data = read_report_data(text)
    assert data["level"] == "ok" and data["totals"]["rows_in"] == 4000
    for table_id in ("totals", "psi", "features", "segments", "actions", "partitions"):
        assert f'id="{table_id}"' in text
    # Nothing is shown as drifted below the warning level.
    assert data["drifted"] == [] and 'id="no-drifted"' in text
    assert "distribution of drifted features" not in text


def _images_loaded_in_chromium(report: Path, tmp: Path) -> tuple[int, int]:
    """(loaded, total) images as headless Chromium sees them once the page has loaded."""
    probe = """<script>
function check(){var im=Array.prototype.slice.call(document.images);
 if(im.every(function(i){return i.complete;})){
  document.body.setAttribute('data-images', im.filter(function(i){return i.naturalWidth>0;}).length+'/'+im.length);
 } else { setTimeout(check, 50); }}
window.addEventListener('load', check);
</script>"""
    page = tmp / f"probe-{report.name.lstrip('_')}"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert found, f"the page did not finish loading its images; DOM head: {dom[:300]!r}"
    return int(found.group(1)), int(found.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("which", ["train", "score"])
def test_reports_render_in_headless_chromium(run: dict[str, Path], which: str, tmp_path: Path) -> None:
    report = run["model"] / TRAIN_REPORT if which == "train" else run["scores"] / SCORE_REPORT
    loaded, total = _images_loaded_in_chromium(report, tmp_path)
    assert total == report.read_text().count("<img ") and total >= 2   # the rest are inline SVG
    assert loaded == total


def test_run_report_counts_are_exact_and_segments_carry_mean_propensity(run: dict[str, Path]) -> None:
    manifest = json.loads((run["scores"] / "_manifest.json").read_text())
    scores = ds.dataset(run["scores"], format="parquet").to_table(columns=["segment", "propensity"]).to_pandas()
    actions = manifest["propensity"]["action_thresholds"]
    assert [a["threshold"] for a in actions] == [0.5, 0.8]  # [report] action_thresholds default
    for a in actions:
        assert a["customers"] == int((scores["propensity"] >= np.float32(a["threshold"])).sum())
    seg = manifest["drift"]["segments"]
    by_segment = scores.groupby("segment")["propensity"]
    assert seg["customers"] == [int(by_segment.size().get(i, 0)) for i in range(4)]
    for i, mean in enumerate(seg["mean_propensity"]):
        # engine.privacy: rounded to 1 / customers (one customer's whole influence on the mean).
        size = int(by_segment.size()[i])
        assert mean == pytest.approx(float(by_segment.mean()[i]), abs=0.5 / size + 1e-7)
    # Stored at train time: the training mean propensity per segment, for comparison.
    model = load_model(run["model"])
    assert seg["training_mean_propensity"] == model.profile["segment_mean_propensity"]
    assert all(0.0 <= v <= 1.0 for v in seg["training_mean_propensity"])
    assert manifest["propensity"]["mean"] == pytest.approx(float(scores["propensity"].mean()),
                                                           abs=0.5 / len(scores) + 1e-7)
    data = read_report_data((run["scores"] / SCORE_REPORT).read_text())
    assert data["action_thresholds"] == actions


def test_model_without_segment_means_still_scores_and_reports(run: dict[str, Path], tmp_path: Path) -> None:
    """Models trained before the per-segment mean propensity was profiled still score."""
    from dataclasses import replace

    from engine.models.artifact import save_model

    model = load_model(run["model"])
    profile = {k: v for k, v in model.profile.items() if k != "segment_mean_propensity"}
    old = tmp_path / "old-model"
    save_model(replace(model, profile=profile), old)
    manifest = score(ScoreOptions(input=str(run["root"] / "data"), model=str(old), output=str(tmp_path / "s"),
                                  backend="cpu", progress="quiet"), load_settings())
    assert "training_mean_propensity" not in manifest["drift"]["segments"]
    assert "<td class=\"\">–</td>" in (tmp_path / "s" / SCORE_REPORT).read_text()


def test_report_draws_twenty_features_quickly(run: dict[str, Path]) -> None:
    """The run report is drawn every night: a fixed handful of figures whatever the features."""
    import time

    from engine.report.drift import render_score_report

    manifest = json.loads((run["scores"] / "_manifest.json").read_text())
    render_score_report(manifest)  # matplotlib's first import is not the report's cost
    t0 = time.perf_counter()
    text, _ = render_score_report(manifest)
    seconds = time.perf_counter() - t0
    assert len(manifest["drift"]["features"]) >= 20
    # 2 s is the budget on an idle machine; the margin is for a loaded CI box.
    assert seconds < 6.0, f"the run report took {seconds:.2f}s"
    assert text.count("<img ") <= 4 + 1


@pytest.mark.parametrize("top, expected", [
    (0.11, ["0%", "2.5%", "5%", "7.5%", "10%"]),    # was labelled 0%, 2%, 5%, 8%, 10%
    (0.0045, ["0%", "0.1%", "0.2%", "0.3%", "0.4%"]),
    (0.55, ["0%", "20%", "40%"]),
])
def test_share_axis_ticks_say_exactly_where_they_are(top: float, expected: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.report.drift import _readable_share_axis

    fig, ax = plt.subplots()
    try:
        ax.set_ylim(0, top)
        _readable_share_axis(ax)
        fig.canvas.draw()
        shown = [t.get_text() for t in ax.get_yticklabels() if 0 <= t.get_position()[1] <= top]
        assert shown == expected
        # Each label is the tick's own value, not a rounding of it.
        for tick, text in zip([v for v in ax.get_yticks() if 0 <= v <= top], shown):
            assert float(text.rstrip("%")) == pytest.approx(tick * 100)
    finally:
        plt.close(fig)
