"""`engine model import-sklearn`: scikit-learn pipelines scored by the engine give the
pipelines' own answers, on data with nulls; anything the engine cannot reproduce is refused."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from typer.testing import Result

from engine.jobs.generate import NULL_COLUMNS
from engine.models.artifact import load_model

TARGET = "churned"
EXTRA_NULL_RATE = 0.04  # on top of the generator's 0.5%, in most feature columns


@pytest.fixture(scope="module")
def features(dataset_frame: pd.DataFrame) -> list[str]:
    return [c for c in dataset_frame.columns
            if c not in ("customer_id", TARGET) and pd.api.types.is_numeric_dtype(dataset_frame[c])]


@pytest.fixture(scope="module")
def train_frame(dataset_frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The shared dataset's features (with their nulls) as the DataFrame the pipelines see."""
    return dataset_frame[features].astype(np.float64)


@pytest.fixture(scope="module")
def null_data(dataset_dir: Path, features: list[str],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The shared dataset with ~4% more nulls in most feature columns (types kept), as 2
    Parquet files; and the same rows as a DataFrame for scikit-learn."""
    table = ds.dataset(dataset_dir, format="parquet").to_table()
    rng = np.random.default_rng(123)
    for name in features[::2] + list(NULL_COLUMNS):
        col = table.column(name).combine_chunks()
        values = col.to_numpy(zero_copy_only=False)
        mask = rng.random(len(col)) < EXTRA_NULL_RATE
        mask |= np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        filled = np.where(mask, 0, values).astype(col.type.to_pandas_dtype())
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(filled, type=col.type, mask=mask))
    out = tmp_path_factory.mktemp("nulls") / "data"
    out.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), out / "a.parquet")
    pq.write_table(table.slice(half), out / "b.parquet")
    frame = table.to_pandas()
    assert frame[features].isna().any(axis=1).mean() > 0.2
    return out, frame


def _fit(pipeline: Any, X: pd.DataFrame, y: Any = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pipeline.fit(X, y)


def _km(k: int = 5) -> KMeans:
    return KMeans(n_clusters=k, n_init=2, random_state=0)


def _lr(C: float = 1.0) -> LogisticRegression:
    # newton-cholesky converges in a few steps even on unscaled features.
    return LogisticRegression(C=C, solver="newton-cholesky", max_iter=100)


def _import(cli: Callable[..., Result], tmp_path: Path, seg: Any, prop: Any,
            *flags: str) -> tuple[Result, Path]:
    """Dump the pipelines (or take their files as they are) and run import-sklearn."""
    paths = []
    for obj, name in ((seg, "seg.joblib"), (prop, "prop.joblib")):
        if isinstance(obj, Path):
            paths.append(obj)
        else:
            paths.append(tmp_path / name)
            joblib.dump(obj, paths[-1])
    model = tmp_path / "model"
    result = cli("model", "import-sklearn", "--segmenter", paths[0], "--propensity", paths[1],
                 "--output", model, *flags)
    return result, model


def _check_scores(scores: pd.DataFrame, frame: pd.DataFrame, features: list[str], seg: Any,
                  prop: Any) -> None:
    """Engine output joined on customer_id against the pipelines' predictions, row by row."""
    merged = frame[["customer_id", *features]].merge(scores, on="customer_id", how="inner",
                                                    validate="one_to_one")
    assert len(merged) == len(frame) == len(scores)
    X = merged[features].astype(np.float64)
    expected_segment = seg.predict(X)
    np.testing.assert_array_equal(merged["segment"].to_numpy(), expected_segment)
    expected_p = prop.predict_proba(X)[:, 1]
    np.testing.assert_allclose(merged["propensity"].to_numpy(np.float64), expected_p, rtol=0, atol=1e-6)
    # The distance is the one to the predicted centroid in the segmenter's scaled space.
    if isinstance(seg, Pipeline):
        kmeans = seg[-1]
        Z = seg[:-1].transform(X) if len(seg) > 1 else X.to_numpy()
    else:
        kmeans, Z = seg, X.to_numpy()
    expected_d = np.linalg.norm(Z - kmeans.cluster_centers_[expected_segment], axis=1)
    np.testing.assert_allclose(merged["segment_distance"].to_numpy(np.float64), expected_d,
                               rtol=1e-5, atol=1e-5)


VARIANTS: dict[str, Callable[[], tuple[Pipeline, Pipeline]]] = {
    "mean-imputer-and-scaler": lambda: (
        Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler()), ("kmeans", _km(5))]),
        Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler()), ("logit", _lr())]),
    ),
    "median-vs-constant-imputers": lambda: (
        Pipeline([("impute", SimpleImputer(strategy="median")), ("skip", "passthrough"),
                  ("scale", StandardScaler()), ("kmeans", _km(6))]),
        Pipeline([("impute", SimpleImputer(strategy="constant", fill_value=-1.5)),
                  ("scale", StandardScaler()), ("logit", _lr(C=0.1))]),
    ),
    "no-scaler": lambda: (
        Pipeline([("impute", SimpleImputer(strategy="mean")), ("kmeans", _km(3))]),
        Pipeline([("impute", SimpleImputer(strategy="median")), ("logit", _lr())]),
    ),
    "scaler-in-one-only": lambda: (
        Pipeline([("impute", SimpleImputer(strategy="most_frequent")), ("kmeans", _km(4))]),
        Pipeline([("impute", SimpleImputer(strategy="constant", fill_value=0.0)),
                  ("scale", StandardScaler(with_mean=False)), ("logit", _lr())]),
    ),
    "scaler-without-mean-or-std": lambda: (
        Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler(with_std=False)),
                  ("kmeans", _km(5))]),
        Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler(with_mean=False)),
                  ("logit", _lr())]),
    ),
}


@pytest.fixture(scope="module")
def good(train_frame: pd.DataFrame, dataset_frame: pd.DataFrame,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A valid segmenter and propensity pipeline, fitted once and dumped to joblib files."""
    seg, prop = VARIANTS["mean-imputer-and-scaler"]()
    _fit(seg, train_frame)
    _fit(prop, train_frame, dataset_frame[TARGET])
    root = tmp_path_factory.mktemp("good")
    joblib.dump(seg, root / "good-seg.joblib")
    joblib.dump(prop, root / "good-prop.joblib")
    return root / "good-seg.joblib", root / "good-prop.joblib"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_imported_pipelines_score_exactly_like_scikit_learn(
        variant: str, tmp_path: Path, cli: Callable[..., Result], score_cli: Callable[..., Result],
        scores_of: Callable[..., pd.DataFrame], train_frame: pd.DataFrame, dataset_frame: pd.DataFrame,
        features: list[str], null_data: tuple[Path, pd.DataFrame]) -> None:
    seg, prop = VARIANTS[variant]()
    _fit(seg, train_frame)
    y = dataset_frame[TARGET]
    if variant == "scaler-without-mean-or-std":
        y = y.map({0: "stays", 1: "churns"})  # string classes: predict_proba[:, 1] is "stays"
    _fit(prop, train_frame, y)
    result, model = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 0, result.output
    k = seg[-1].n_clusters
    assert f"imported k={k} segmenter" in result.stdout and f"over {len(features)} features" in result.stdout
    loaded = load_model(model)
    assert loaded.features == tuple(features) and loaded.k == k
    positive = prop[-1].classes_[1]
    assert loaded.params["positive_class"] == (positive.item() if hasattr(positive, "item") else positive)

    data, frame = null_data
    scored = score_cli(data, model, tmp_path / "scores")
    assert scored.exit_code == 0, scored.output
    manifest = json.loads((tmp_path / "scores" / "_manifest.json").read_text())
    assert manifest["totals"]["rows_rejected"] == 0
    assert manifest["totals"]["nulls_imputed"] == int(frame[features].isna().sum().sum())
    _check_scores(scores_of(tmp_path / "scores"), frame, features, seg, prop)


def test_pipeline_without_imputer_imputes_with_the_scaler_mean(
        tmp_path: Path, cli: Callable[..., Result], score_cli: Callable[..., Result],
        scores_of: Callable[..., pd.DataFrame], train_frame: pd.DataFrame, dataset_frame: pd.DataFrame,
        features: list[str], null_data: tuple[Path, pd.DataFrame]) -> None:
    # StandardScaler ignores NaN when fitting; scikit-learn cannot predict rows with nulls,
    # the engine imputes them with the scaler's mean (z = 0), as documented.
    complete = train_frame.fillna(train_frame.mean())
    seg = _fit(Pipeline([("scale", StandardScaler()), ("kmeans", _km(4))]), complete)
    prop = _fit(Pipeline([("scale", StandardScaler()), ("logit", _lr())]), complete, dataset_frame[TARGET])
    result, model = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 0, result.output
    data, frame = null_data
    assert score_cli(data, model, tmp_path / "scores").exit_code == 0
    scores = scores_of(tmp_path / "scores")
    merged = frame[["customer_id", *features]].merge(scores, on="customer_id", validate="one_to_one")
    X = merged[features].astype(np.float64)
    np.testing.assert_array_equal(merged["segment"], seg.predict(X.fillna(pd.Series(seg[0].mean_, features))))
    np.testing.assert_allclose(merged["propensity"].to_numpy(np.float64),
                               prop.predict_proba(X.fillna(pd.Series(prop[0].mean_, features)))[:, 1],
                               rtol=0, atol=1e-6)


def test_bare_estimators_score_like_scikit_learn(
        tmp_path: Path, cli: Callable[..., Result], score_cli: Callable[..., Result],
        scores_of: Callable[..., pd.DataFrame], dataset_frame: pd.DataFrame, features: list[str]) -> None:
    complete = dataset_frame.dropna(subset=features).reset_index(drop=True)
    X = complete[features].astype(np.float64)
    seg = _fit(_km(3), X)
    prop = _fit(_lr(), X, complete[TARGET])
    result, model = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 0, result.output
    data = tmp_path / "complete.parquet"
    pq.write_table(pa.Table.from_pandas(complete, preserve_index=False), data)
    assert score_cli(data, model, tmp_path / "scores").exit_code == 0
    _check_scores(scores_of(tmp_path / "scores"), complete, features, seg, prop)


def test_imported_model_keeps_its_id_column_and_shows_its_source(
        tmp_path: Path, cli: Callable[..., Result], good: tuple[Path, Path]) -> None:
    result, model = _import(cli, tmp_path, *good, "--id-column", "account")
    seg, prop = joblib.load(good[0]), joblib.load(good[1])
    assert result.exit_code == 0, result.output
    loaded = load_model(model)
    assert loaded.id_column == "account" and loaded.metrics == {}
    assert loaded.params["source"] == "engine model import-sklearn"
    assert loaded.params["segmenter_sha256"].startswith("sha256:")
    np.testing.assert_array_equal(loaded.centroids, seg[-1].cluster_centers_)
    np.testing.assert_array_equal(loaded.segmenter.fill, seg[0].statistics_)
    np.testing.assert_array_equal(loaded.propensity.scale, prop[1].scale_)
    shown = cli("model", "show", model)
    assert shown.exit_code == 0
    assert "source: engine model import-sklearn" in shown.stdout
    assert "no metrics (imported model)" in shown.stdout
    assert "id column 'account'" in shown.stdout


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("which, step, named", [
    ("segmenter", ("reduce", PCA(n_components=3)), ["'reduce'", "PCA"]),
    ("propensity", ("minmax", MinMaxScaler()), ["'minmax'", "MinMaxScaler"]),
])
def test_unsupported_step_is_refused_by_name(
        which: str, step: tuple[str, Any], named: list[str], tmp_path: Path, cli: Callable[..., Result], good: tuple[Path, Path],
        train_frame: pd.DataFrame, dataset_frame: pd.DataFrame) -> None:
    seg, prop = good
    if which == "segmenter":
        seg = _fit(Pipeline([("impute", SimpleImputer()), step, ("kmeans", _km(3))]), train_frame)
    else:
        prop = _fit(Pipeline([("impute", SimpleImputer()), step, ("logit", _lr())]),
                    train_frame, dataset_frame[TARGET])
    result, model = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 5
    for text in named:
        assert text in result.stderr
    assert {"segmenter": "seg.joblib", "propensity": "prop.joblib"}[which] in result.stderr
    assert "is not supported" in result.stderr
    assert not model.exists()


def test_different_features_are_named(tmp_path: Path, cli: Callable[..., Result], good: tuple[Path, Path],
                                      train_frame: pd.DataFrame, dataset_frame: pd.DataFrame) -> None:
    seg = good[0]
    other = train_frame.drop(columns=["age", "household_size"]).assign(lifetime_value=1.0)
    prop = _fit(Pipeline([("impute", SimpleImputer()), ("logit", _lr())]), other, dataset_frame[TARGET])
    result, model = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 5
    assert "only in the segmenter: age, household_size" in result.stderr
    assert "only in the propensity model: lifetime_value" in result.stderr
    assert not model.exists()


def test_same_features_in_another_order_are_refused(tmp_path: Path, cli: Callable[..., Result], good: tuple[Path, Path],
                                                    train_frame: pd.DataFrame,
                                                    dataset_frame: pd.DataFrame) -> None:
    seg = good[0]
    cols = list(train_frame.columns)
    swapped = train_frame[[cols[1], cols[0], *cols[2:]]]
    prop = _fit(Pipeline([("impute", SimpleImputer()), ("logit", _lr())]), swapped, dataset_frame[TARGET])
    result, _ = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 5
    assert "different order" in result.stderr and f"position 0 is {cols[0]!r}" in result.stderr


def test_multiclass_logistic_regression_is_refused(tmp_path: Path, cli: Callable[..., Result], good: tuple[Path, Path],
                                                   train_frame: pd.DataFrame,
                                                   dataset_frame: pd.DataFrame) -> None:
    seg = good[0]
    y3 = dataset_frame["region"].map({"north": 0, "south": 1}).fillna(2).astype(int)
    prop = _fit(Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()), ("logit", _lr())]),
                train_frame, y3)
    result, _ = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 5
    assert "must be binary, it has 3 classes" in result.stderr


def test_pipeline_fitted_on_a_numpy_array_is_refused(tmp_path: Path, cli: Callable[..., Result], good: tuple[Path, Path],
                                                     train_frame: pd.DataFrame,
                                                     dataset_frame: pd.DataFrame) -> None:
    prop = good[1]
    seg = _fit(Pipeline([("impute", SimpleImputer()), ("kmeans", _km(3))]), train_frame.to_numpy())
    result, _ = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 5
    assert "no feature_names_in_" in result.stderr and "DataFrame" in result.stderr


@pytest.mark.parametrize("problem, message", [
    ("swapped-roles", "the last step must be a fitted KMeans, found LogisticRegression"),
    ("imputer-after-scaler", "must come first"),
    ("add-indicator", "add_indicator=True"),
    ("missing-values-zero", "only NaN is supported"),
])
def test_other_unreproducible_pipelines_are_refused(
        problem: str, message: str, tmp_path: Path, cli: Callable[..., Result], good: tuple[Path, Path],
        train_frame: pd.DataFrame, dataset_frame: pd.DataFrame) -> None:
    y = dataset_frame[TARGET]
    seg, prop = good
    if problem == "swapped-roles":
        seg = prop
    elif problem == "imputer-after-scaler":
        seg = _fit(Pipeline([("scale", StandardScaler()), ("impute", SimpleImputer()), ("km", _km(3))]),
                   train_frame)
    elif problem == "add-indicator":
        prop = _fit(Pipeline([("impute", SimpleImputer(add_indicator=True)), ("logit", _lr())]), train_frame, y)
    else:
        seg = _fit(Pipeline([("impute", SimpleImputer(missing_values=0.0)), ("km", _km(3))]),
                   train_frame.fillna(1.0))
    result, _ = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 5, result.output
    assert message in result.stderr


def test_missing_or_unreadable_files(tmp_path: Path, cli: Callable[..., Result], good: tuple[Path, Path],
                                     train_frame: pd.DataFrame, dataset_frame: pd.DataFrame) -> None:
    seg = good[0]
    result = cli("model", "import-sklearn", "--segmenter", seg,
                 "--propensity", tmp_path / "absent.joblib", "--output", tmp_path / "m")
    assert result.exit_code == 2 and "absent.joblib" in result.stderr and "does not exist" in result.stderr
    (tmp_path / "junk.joblib").write_bytes(b"definitely not a joblib file")
    result = cli("model", "import-sklearn", "--segmenter", tmp_path / "junk.joblib",
                 "--propensity", seg, "--output", tmp_path / "m")
    assert result.exit_code == 5 and "cannot be loaded with joblib" in result.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("variant", ["mean-imputer-and-scaler", "no-scaler", "bare"])
def test_reasons_of_imported_heads_start_from_the_average_customer(
        variant: str, tmp_path: Path, cli: Callable[..., Result], score_cli: Callable[..., Result],
        scores_of: Callable[..., pd.DataFrame], dataset_frame: pd.DataFrame, features: list[str]) -> None:
    """``--reasons`` of an imported head: ``coef * (x - baseline)``, the baseline being the
    scaler's mean, else the imputer's fill; a head with neither is refused (exit 2).

    Found by QA: a head without a scaler measured from the all-zero customer, so the
    features with large raw values (age) were every customer's first reason.
    """
    complete = dataset_frame.dropna(subset=features).reset_index(drop=True)
    X = complete[features].astype(np.float64)
    if variant == "bare":
        seg, prop = _km(3), _lr()
    else:
        seg, prop = VARIANTS[variant]()
    _fit(seg, X)
    _fit(prop, X, complete[TARGET])
    result, model = _import(cli, tmp_path, seg, prop)
    assert result.exit_code == 0, result.output
    data = tmp_path / "complete.parquet"
    pq.write_table(pa.Table.from_pandas(complete, preserve_index=False), data)
    scored = score_cli(data, model, tmp_path / "scores", "--reasons", 3)
    if variant == "bare":
        assert scored.exit_code == 2 and "--reasons needs the average training customer" in scored.output
        assert not (tmp_path / "scores").exists()
        return
    assert scored.exit_code == 0, scored.output
    logit = prop[-1]
    if "scale" in prop.named_steps:
        Z = prop[:-1].transform(X)  # centred by the scaler: the average customer is 0
    else:
        Z = X.to_numpy() - prop.named_steps["impute"].statistics_
    contrib = Z * logit.coef_[0]
    scores = scores_of(tmp_path / "scores").merge(complete[["customer_id"]].assign(row=range(len(complete))),
                                                  on="customer_id")
    contrib = contrib[scores["row"].to_numpy()]
    order = np.argsort(-contrib, axis=1, kind="stable")
    for i in range(3):
        value = np.take_along_axis(contrib, order[:, i:i + 1], axis=1)[:, 0]
        expected = np.where(value > 0, np.asarray(features, dtype=object)[order[:, i]], None)
        # Reason values are ``feature:high|low``: the feature is the part before the last colon.
        got = np.asarray([v.rsplit(":", 1)[0] if isinstance(v, str) else None
                          for v in scores[f"reason_{i + 1}"].astype(object)], dtype=object)
        assert (got == expected).mean() > 0.999, (i, (got != expected).sum())
    # No single feature is everyone's first reason (it was, measured from zero).
    assert scores["reason_1"].value_counts(normalize=True).iloc[0] < 0.6
