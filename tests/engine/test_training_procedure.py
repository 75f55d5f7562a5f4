"""The training procedure: every labelled row in the final model, C chosen by cross-validation,
drivers in standardised space, segment descriptions, and progress that never goes quiet."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.cluster import KMeans
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import Result

from engine.config import Settings
from engine.jobs.heartbeat import Heartbeat
from engine.jobs.train import TrainOptions, split_indices, train
from engine.models.artifact import Preprocess, ScoringModel, load_model, save_model
from engine.models.explain import drivers, segment_descriptions
from engine.models.tuning import L1_MIN_GAIN, search_logistic
from engine.privacy import bounded_mean, bounded_std, clip_bounds

Cli = Callable[..., Result]


def _sk(C: float, penalty: str, seed: int) -> LogisticRegression:
    if penalty == "l1":
        return LogisticRegression(C=C, l1_ratio=1.0, solver="saga", max_iter=5000, random_state=seed)
    return LogisticRegression(C=C, max_iter=1000, random_state=seed)


def _standardised(frame: pd.DataFrame, features: list[str], model: ScoringModel | None = None,
                  levels: bool = True) -> np.ndarray:
    """Standardised numeric features, then (for a model with categorical columns) their one-hot blocks.

    With a model: by its own stored fill, centre and scale (bounded statistics, engine.privacy),
    so a reference fit sees exactly the engine's design matrix; without: plain mean and SD."""
    X = frame[features].to_numpy(dtype=np.float64)
    if model is not None:
        pre = model.segmenter
        Z = (np.where(np.isfinite(X), X, pre.fill) - pre.mean) / pre.scale
        return _with_levels(Z, frame, model) if levels else Z
    fill = np.nanmean(X, axis=0)
    X = np.where(np.isnan(X), fill, X)
    std = X.std(axis=0)
    return (X - fill) / np.where(std > 0, std, 1.0)


def _with_levels(Z: np.ndarray, frame: pd.DataFrame, model: ScoringModel) -> np.ndarray:
    for cat in model.categoricals or ():
        idx = [cat.levels.index(v) if v in cat.levels else cat.other for v in frame[cat.name].astype(object)]
        Z = np.hstack([Z, np.eye(cat.n_levels)[idx]])
    return Z


def _all_coef(m: ScoringModel) -> np.ndarray:
    return np.concatenate([m.coef, m.cat_coef]) if m.categoricals else m.coef


# -- 1. every labelled row in the final model ---------------------------------------------------


def test_final_model_is_a_fit_on_every_row_with_the_chosen_C(model_dir: Path, dataset_frame: pd.DataFrame) -> None:
    """The shared model (6,000 rows, so CV metrics): its coefficients are a fit on all rows at its C."""
    m = load_model(model_dir)
    lg = m.params["logistic"]
    assert lg["selected_by"] == "cv" and lg["folds"] == 5 and lg["search_rows"] == 6_000
    assert m.metrics["evaluation"] == {"kind": "cv", "rows": 6_000, "folds": 5}
    assert m.params["final_fit_rows"] == 6_000 and m.profile["rows"] == 6_000
    Z = _standardised(dataset_frame, list(m.features), m)
    y = dataset_frame["churned"].to_numpy()
    ref = _sk(lg["C"], lg["penalty"], m.params["seed"]).fit(Z, y)
    tol = 1e-3 if lg["penalty"] == "l1" else 1e-4
    np.testing.assert_allclose(_all_coef(m), ref.coef_.ravel(), rtol=tol, atol=tol)
    assert m.intercept == pytest.approx(ref.intercept_[0], abs=tol)
    # The chosen C has the lowest out-of-fold log loss of its penalty's curve.
    curve = [p for p in lg["curve"] if p["penalty"] == lg["penalty"]]
    assert min(p["log_loss"] for p in curve) == next(p["log_loss"] for p in curve if p["C"] == lg["C"])


def test_holdout_evaluates_then_the_model_refits_on_every_row(dataset_dir: Path, dataset_frame: pd.DataFrame,
                                                               tmp_path: Path) -> None:
    result = train(TrainOptions(input=str(dataset_dir), target="churned", output=str(tmp_path / "m"), k=3,
                                holdout=0.25, seed=11, backend="cpu", report=False, C=0.3))
    m = result.model
    assert result.rows_train == 6_000 and result.rows_holdout == 1_500
    assert m.metrics["evaluation"] == {"kind": "holdout", "rows": 1_500, "share": 0.25}
    Z = _standardised(dataset_frame, list(m.features), m)
    y = dataset_frame["churned"].to_numpy()
    ref = _sk(0.3, "l2", 11).fit(Z, y)
    np.testing.assert_allclose(_all_coef(m), ref.coef_.ravel(), rtol=1e-4, atol=1e-4)
    # The holdout metrics are those of a fit on the other 4,500 rows only, with their own scaling.
    tr, ho = split_indices(6_000, 0.25, 11)
    X = dataset_frame[list(m.features)].to_numpy(dtype=np.float64)
    # The training side's own bounded fill and scale (engine.privacy), as the engine computes them.
    present = [X[tr, j][np.isfinite(X[tr, j])] for j in range(X.shape[1])]
    fill = np.array([bounded_mean(v) for v in present])
    scale = np.array([bounded_std(v) or 1.0 for v in present])

    def side(rows: np.ndarray) -> np.ndarray:
        Z = (np.where(np.isfinite(X[rows]), X[rows], fill) - fill) / scale
        return _with_levels(Z, dataset_frame.iloc[rows], m)

    ev = _sk(0.3, "l2", 11).fit(side(tr), y[tr])
    Zho = side(ho)
    assert m.metrics["holdout"]["log_loss"] == pytest.approx(log_loss(y[ho], ev.predict_proba(Zho)[:, 1]), abs=1e-4)
    assert m.params["logistic"]["selected_by"] == "fixed" and m.params["logistic"]["C"] == 0.3
    assert not (tmp_path / "m" / "report.html").exists()  # report=False, as --no-report


# -- 2. C chosen by cross-validation --------------------------------------------------------------


def _noisy(n: int, noise: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two weak signals among many pure-noise features: regularisation clearly pays."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2 + noise))
    logit = 0.6 * X[:, 0] - 0.5 * X[:, 1] - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return X, y


def test_cv_chooses_a_small_C_where_it_clearly_wins() -> None:
    X, y = _noisy(400, 80, 5)
    grid = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
    found = search_logistic(X, y, 0, xp=np, grid=grid, folds=5)
    assert found.selected_by == "cv" and found.folds == 5 and found.rows == 400 and not found.sampled
    assert found.C <= 0.1, found.curve
    curve = {(p["penalty"], p["C"]): p["log_loss"] for p in found.curve}
    assert set(curve) == {(p, c) for p in ("l2", "l1") for c in grid}  # L1 searched on small data
    best = curve[(found.penalty, found.C)]
    assert best == min(v for (p, _), v in curve.items() if p == found.penalty)
    assert curve[("l2", 100.0)] - best > 0.05  # the unregularised end is clearly worse
    if found.penalty == "l1":  # L1 only wins by a margin
        assert best < min(v for (p, _), v in curve.items() if p == "l2") * (1 - L1_MIN_GAIN)
    # The out-of-fold predictions at the choice reproduce its curve point.
    assert found.oof is not None and log_loss(y, found.oof) == pytest.approx(best, rel=1e-9)
    # And the choice generalises: on fresh rows it beats the unregularised fit.
    Xn, yn = _noisy(4_000, 80, 6)
    chosen = _sk(found.C, found.penalty, 0).fit(X, y)
    loose = _sk(100.0, "l2", 0).fit(X, y)
    assert log_loss(yn, chosen.predict_proba(Xn)[:, 1]) < log_loss(yn, loose.predict_proba(Xn)[:, 1]) - 0.05


def test_train_records_the_search_and_uses_the_grid(tmp_path: Path) -> None:
    X, y = _noisy(600, 60, 8)
    names = [f"x{j}" for j in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=names).assign(customer_id=np.arange(600), bought=y.astype("int8"))
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "data" / "c.parquet")
    grid = [0.003, 0.03, 0.3, 3.0, 30.0]
    m = train(TrainOptions(input=str(tmp_path / "data"), target="bought", output=str(tmp_path / "m"), k=2,
                           c_grid=[30.0, 0.3, *grid], cv_folds=4, backend="cpu")).model  # repeats: searched once
    lg = m.params["logistic"]
    assert lg["selected_by"] == "cv" and lg["folds"] == 4 and lg["C"] in grid and lg["C"] <= 0.3
    assert [p["C"] for p in lg["curve"] if p["penalty"] == "l2"] == grid
    assert m.metrics["evaluation"] == {"kind": "cv", "rows": 600, "folds": 4}
    ref = _sk(lg["C"], lg["penalty"], 42).fit(_standardised(frame, names, m), y)
    tol = 1e-3 if lg["penalty"] == "l1" else 1e-4
    np.testing.assert_allclose(m.coef, ref.coef_.ravel(), rtol=tol, atol=tol)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["params"]["logistic"]["curve"] == lg["curve"]


def test_large_data_is_searched_on_a_bounded_sample() -> None:
    X, y = _noisy(3_000, 3, 9)
    found = search_logistic(X, y, 1, xp=np, grid=(0.1, 1.0), folds=3, max_rows=1_000)
    assert found.sampled and found.rows == 1_000 and found.index is not None and found.index.size == 1_000
    assert {p["penalty"] for p in found.curve} == {"l2", "l1"}  # 1,000 rows: still small enough for L1


@pytest.mark.parametrize("flags, message", [
    (["--C", "0"], "--C must be a positive number"),
    (["--C", "-1"], "--C must be a positive number"),
    (["--c-grid", "0.1,abc"], "--c-grid must be a comma list of numbers"),
    (["--c-grid", "0.1,-2"], "--c-grid must list positive numbers"),
    (["--C", "1", "--c-grid", "0.1,1"], "give one of them"),
    (["--cv-folds", "1"], "--cv-folds must be between 2 and 20"),
])
def test_bad_search_flags_are_usage_errors(cli: Cli, dataset_dir: Path, tmp_path: Path, flags: list[str],
                                           message: str) -> None:
    result = cli("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m",
                 "--backend", "cpu", "--quiet", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "m").exists()


# -- 3. drivers in standardised space, segment descriptions -------------------------------------


def _hand_model(coef: list[float], scale: list[float], centroids: list[list[float]],
                features: tuple[str, ...]) -> ScoringModel:
    f = len(features)
    pre = Preprocess(fill=np.zeros(f), mean=np.zeros(f), scale=np.asarray(scale, dtype=np.float64))
    return ScoringModel(features=features, feature_types=("double",) * f, segmenter=pre,
                        centroids=np.asarray(centroids, dtype=np.float64), propensity=pre,
                        coef=np.asarray(coef, dtype=np.float64), intercept=-1.0)


def test_a_tiny_raw_coefficient_with_a_huge_scale_ranks_first(cli: Cli, tmp_path: Path) -> None:
    # balance_cents moves the log-odds by 2.0 per SD, but its SD is 1e6 cents: 2e-6 per cent.
    model = _hand_model([0.5, 2.0, -1.0], [1.0, 1e6, 3.0], [[0.0, 0.0, 0.0]],
                        ("visits", "balance_cents", "tenure_years"))
    raw = model.coef / model.propensity.scale
    assert abs(raw[1]) < min(abs(raw[0]), abs(raw[2]))  # the raw-unit ranking would put it last
    found = drivers(model)
    assert [d["feature"] for d in found] == ["balance_cents", "tenure_years", "visits"]
    assert [d["log_odds_per_sd"] for d in found] == [2.0, -1.0, 0.5]
    assert [d["direction"] for d in found] == ["raises", "lowers", "raises"]
    save_model(model, tmp_path / "m")
    out = cli("model", "show", tmp_path / "m").stdout.splitlines()
    head = out.index("  strongest propensity drivers (change in log-odds per standard deviation):")
    assert [line.split()[:2] for line in out[head + 1:head + 4]] == [
        ["balance_cents", "+2.0000"], ["tenure_years", "-1.0000"], ["visits", "+0.5000"]]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert [d["feature"] for d in meta["drivers"]] == ["balance_cents", "tenure_years", "visits"]


def test_segments_are_described_by_their_largest_departures(cli: Cli, tmp_path: Path) -> None:
    model = _hand_model([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0],
                        [[0.1, -1.5, 2.0, 0.05], [0.0, 0.3, -0.25, 0.3]], ("a", "b", "c", "d"))
    found = segment_descriptions(model)
    assert found == [
        {"segment": 0, "description": "c +2.0 sd, b -1.5 sd, a +0.1 sd", "top": [["c", 2.0], ["b", -1.5], ["a", 0.1]]},
        {"segment": 1, "description": "b +0.3 sd, d +0.3 sd, c -0.2 sd",  # a tie: the lower index first
         "top": [["b", 0.3], ["d", 0.3], ["c", -0.25]]},
    ]
    save_model(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["segments"] == found
    out = cli("model", "show", tmp_path / "m").stdout
    assert "      0: c +2.0 sd, b -1.5 sd, a +0.1 sd" in out and "      1: b +0.3 sd, d +0.3 sd, c -0.2 sd" in out


def test_trained_segments_describe_centroid_departures(model_dir: Path, dataset_frame: pd.DataFrame) -> None:
    """On a trained model: each described value is the segment mean's distance from the overall
    mean in standard deviations, computed from the customers of that segment."""
    m = load_model(model_dir)
    Z = _standardised(dataset_frame, list(m.features), m, levels=False)
    seg = ((Z[:, None, :] - m.centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    # K-means is fitted on columns clipped at the 20th smallest and largest value (engine.privacy).
    bounds = np.array([clip_bounds(Z[:, j]) for j in range(Z.shape[1])])
    Zc = np.clip(Z, bounds[:, 0], bounds[:, 1])
    for entry in json.loads((model_dir / "model.json").read_text())["segments"]:
        members = Zc[seg == entry["segment"]]
        for name, sd in entry["top"]:
            j = m.features.index(name)
            assert sd == pytest.approx(members[:, j].mean(), abs=0.05)  # a K-means centroid is its members' mean
        values = np.abs(m.centroids[entry["segment"]])
        assert abs(entry["top"][0][1]) == pytest.approx(values.max(), abs=1e-4)


def test_imported_models_get_drivers_and_descriptions(cli: Cli, dataset_frame: pd.DataFrame, tmp_path: Path) -> None:
    features = ["recency_days", "tenure_months", "email_open_rate", "age"]
    X = dataset_frame[features].astype(np.float64)
    y = dataset_frame["churned"].to_numpy()
    seg = Pipeline([("i", SimpleImputer()), ("s", StandardScaler()), ("k", KMeans(3, n_init=2, random_state=0))]).fit(X)
    prop = Pipeline([("i", SimpleImputer()), ("s", StandardScaler()), ("l", LogisticRegression())]).fit(X, y)
    joblib.dump(seg, tmp_path / "seg.joblib")
    joblib.dump(prop, tmp_path / "prop.joblib")
    result = cli("model", "import-sklearn", "--segmenter", tmp_path / "seg.joblib", "--propensity",
                 tmp_path / "prop.joblib", "--output", tmp_path / "m")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    coef = prop[-1].coef_.ravel()
    assert [d["feature"] for d in meta["drivers"]] == [features[j] for j in np.argsort(-np.abs(coef), kind="stable")]
    centres = seg[-1].cluster_centers_
    for entry in meta["segments"]:
        j = int(np.argmax(np.abs(centres[entry["segment"]])))
        assert entry["top"][0] == [features[j], round(float(centres[entry["segment"], j]), 4)]
    out = cli("model", "show", tmp_path / "m").stdout
    assert "strongest propensity drivers (change in log-odds per standard deviation):" in out
    assert meta["segments"][0]["description"] in out


# -- 5. progress never silent --------------------------------------------------------------------


def test_heartbeat_repeats_a_long_step() -> None:
    lines: list[str] = []
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            lines.append(msg)

    with Heartbeat(say, 0.1) as beat:
        beat.step("K-means init 1 of 3")
        time.sleep(0.45)
        beat.step("final fit")
        time.sleep(0.25)
    assert lines[0] == "K-means init 1 of 3"
    first = [x for x in lines if x.startswith("K-means init 1 of 3: still running")]
    assert len(first) >= 2
    assert lines.index("final fit") > lines.index(first[-1])
    assert any(x.startswith("final fit: still running") for x in lines)
    n = len(lines)
    time.sleep(0.25)
    assert len(lines) == n  # closed: quiet


def test_train_names_each_step_and_never_goes_quiet(dataset_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []
    train(TrainOptions(input=str(dataset_dir), target="churned", output=str(tmp_path / "m"), k=3,
                       backend="cpu", report=True),
          on_step=lambda msg: seen.append((time.perf_counter(), msg)), settings=Settings(progress_interval_s=0.2))
    text = [m for _, m in seen]
    for expected in ("reading 6,000 rows from 3 file(s)", "reading: file 3 of 3 done",
                     "logistic CV (L2): fold 1 of 5", "logistic CV (L2): fold 5 of 5",
                     "logistic CV (L1): fold 5 of 5", "K-means init 1 of 3",
                     "K-means init 3 of 3", "writing the training report"):
        assert expected in text, (expected, text)
    assert any(m.startswith("final fit: logistic") for m in text)
    order = [next(i for i, m in enumerate(text) if m.startswith(p)) for p in
             ("reading", "reading: file 3 of 3 done", "preparing 6,000 rows x", "logistic CV (L2): fold 1",
              "K-means init 1", "final fit", "writing the training report")]
    assert order == sorted(order)
    # A repeated line names the step that is running, never one that has ended (found by QA:
    # "reading: file 3 of 3 done: still running" while the features were being prepared).
    current = None
    for m in text:
        if ": still running" in m:
            assert m.split(": still running")[0] == current, (m, current)
        else:
            current = m
    gaps = np.diff([t for t, _ in seen])
    assert gaps.max() < 0.2 + 1.5, gaps.max()  # generous: the machine may be loaded


def test_no_report_flag_skips_the_report(cli: Cli, dataset_dir: Path, tmp_path: Path) -> None:
    result = cli("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m", "--k", 2,
                 "--backend", "cpu", "--no-report", "--progress", "log")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "m" / "report.html").exists() and "report:" not in result.output
    # Progress lines are diagnostics: stderr (issue 13), the results stay on stdout.
    assert "[train] K-means init 2 of 3" in result.stderr and "[train] logistic CV (L2): fold 3 of 5" in result.stderr
    assert "[train]" not in result.stdout
    load_model(tmp_path / "m")


@pytest.mark.parametrize("flags, shown", [(["--C", "0.05"], "L2 penalty, C=0.05, fixed with --C."),
                                           (["--c-grid", "0.001,7"], "chosen by 3-fold cross-validation")])
def test_report_text_names_the_regularisation(cli: Cli, dataset_dir: Path, tmp_path: Path, flags: list[str],
                                              shown: str) -> None:
    """The chosen C is in the report's words, not only in a chart's legend (found by QA)."""
    import html
    import re

    result = cli("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m", "--k", 2,
                 "--backend", "cpu", "--cv-folds", 3, "--quiet", *flags)
    assert result.exit_code == 0, result.output
    logistic = json.loads((tmp_path / "m" / "model.json").read_text())["params"]["logistic"]
    assert logistic["folds"] == 3 and logistic["selected_by"] == ("fixed" if "--C" in flags else "cv")
    page = (tmp_path / "m" / "report.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)))
    assert shown in text
    assert f"C={logistic['C']:.4g}, " in text


@pytest.mark.gpu
@pytest.mark.cuml
def test_cuml_search_agrees_with_scikit_learn() -> None:
    import cupy

    X, y = _noisy(2_000, 20, 4)
    grid = (0.01, 0.1, 1.0)
    gpu = search_logistic(cupy.asarray(X), y, 0, xp=cupy, grid=grid, folds=3)
    cpu = search_logistic(X, y, 0, xp=np, grid=grid, folds=3)
    assert gpu.C == cpu.C and gpu.penalty == cpu.penalty
    for a, b in zip(gpu.curve, cpu.curve):
        assert a["log_loss"] == pytest.approx(b["log_loss"], abs=2e-3)


# -- the new model.json fields are checked at load ------------------------------------------------


def _rehash(model: Path, edit: Callable[[dict], None]) -> None:
    from engine.models.artifact import ARRAYS_FILE, METADATA_FILE, compute_hash

    meta = json.loads((model / METADATA_FILE).read_text())
    edit(meta)
    with np.load(model / ARRAYS_FILE) as npz:
        arrays = {n: np.array(npz[n]) for n in npz.files}
    meta["content_hash"] = compute_hash(meta, arrays)
    (model / METADATA_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["drivers"].reverse(), "'drivers' does not match the model's arrays"),
    (lambda m: m["segments"][0].update(description="loyal big spenders"), "'segments' does not match"),
    (lambda m: m["params"]["logistic"].update(C=-1.0), "params.logistic.C must be a positive number"),
    (lambda m: m["params"]["logistic"].update(penalty="l3"), "field 'params.logistic.penalty' must be one of 'l1', 'l2'"),
    (lambda m: m["metrics"]["evaluation"].update(kind="oracle"), "field 'metrics.evaluation.kind' must be"),
])
def test_edited_training_record_is_refused(model_dir: Path, tmp_path: Path, cli: Cli, edit: Callable[[dict], None],
                                           message: str) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    _rehash(model, edit)  # a consistent hash: only the invariants can catch it
    result = cli("model", "show", model)
    assert result.exit_code == 5, result.output
    assert message in result.stderr and "model.json" in result.stderr


def test_old_models_without_the_new_fields_still_load(model_dir: Path, tmp_path: Path, cli: Cli) -> None:
    """A model written before drivers/segments existed: they are computed at load."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    _rehash(model, lambda m: [m.pop("drivers"), m.pop("segments"), m["params"].pop("logistic"),
                              m["metrics"].pop("evaluation")])
    result = cli("model", "show", model)
    assert result.exit_code == 0, result.output
    assert "strongest propensity drivers (change in log-odds per standard deviation" in result.stdout
    assert "segments (centroid vs the average customer):" in result.stdout


def test_the_bar_names_the_current_step() -> None:
    import io

    from engine.jobs.progress import Progress

    for mode, shown in (("bar", True), ("log", False), ("quiet", False)):
        buf = io.StringIO()
        p = Progress("train", 3, unit="steps", mode=mode, stream=buf)
        p.note("K-means init 2 of 3")
        p.advance(3)
        p.close()
        assert ("train: K-means init 2 of 3" in buf.getvalue()) == shown, mode


def test_a_small_demo_reports_its_cross_validated_auc(cli: Cli, tmp_path: Path) -> None:
    result = cli("demo", "--rows", 3_000, "--workdir", tmp_path / "demo", "--backend", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    auc = load_model(tmp_path / "demo" / "model").metrics["cv"]["auc"]
    assert f"  cross-validated AUC {auc:.4f}" in result.stdout
