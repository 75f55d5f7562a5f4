"""The model artifact: round trip, content hash, format version, no pickle, training profile."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from typer.testing import Result

from engine import __version__
from engine.errors import ModelError, OutputError
from engine.io.dataset import table_to_matrix
from engine.jobs.train import split_indices
from engine.models.artifact import (
    ARRAYS_FILE,
    FORMAT_VERSION,
    METADATA_FILE,
    Preprocess,
    ScoringModel,
    load_model,
    save_model,
)
from engine.models.profile import QUANTILES
from engine.privacy import bounded_mean, private_quantiles


def _random_model(rng: np.random.Generator, f: int = 5, k: int = 3) -> ScoringModel:
    def pre() -> Preprocess:
        return Preprocess(fill=rng.normal(size=f), mean=rng.normal(size=f), scale=rng.uniform(0.5, 2, f))

    return ScoringModel(
        features=tuple(f"f{i}" for i in range(f)),
        feature_types=("double", "int32", "float", "int64", "int8")[:f],
        segmenter=pre(), centroids=rng.normal(size=(k, f)), propensity=pre(),
        coef=rng.normal(size=f), intercept=float(rng.normal()),
        id_column="cid", target="y",
        metrics={"auc": 0.75, "nested": {"n": [1, 2, 3]}},
        profile={"rows": 10}, params={"k": k, "note": "unit test"},
    )


def _assert_same_model(a: ScoringModel, b: ScoringModel) -> None:
    assert a.content_hash == b.content_hash
    assert a.metadata() == b.metadata()
    for name, arr in a.arrays().items():
        np.testing.assert_array_equal(arr, b.arrays()[name], err_msg=name)
        assert arr.dtype == b.arrays()[name].dtype == np.float64
    assert a.intercept == b.intercept


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def _show(cli: Callable[..., Result], model: Path) -> Result:
    return cli("model", "show", model)


def test_round_trip_of_a_constructed_model(tmp_path: Path) -> None:
    model = _random_model(np.random.default_rng(0))
    saved = save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    _assert_same_model(saved, loaded)
    assert loaded.features == model.features and loaded.feature_types == model.feature_types
    assert loaded.id_column == "cid" and loaded.target == "y"
    assert loaded.metrics == model.metrics and loaded.params == model.params
    assert loaded.format_version == FORMAT_VERSION and loaded.engine_version == __version__
    np.testing.assert_array_equal(loaded.centroids, model.centroids)
    np.testing.assert_array_equal(loaded.segmenter.fill, model.segmenter.fill)
    np.testing.assert_array_equal(loaded.propensity.scale, model.propensity.scale)
    assert loaded.content_hash.startswith("sha256:") and len(loaded.content_hash) == 7 + 64
    # Saving the loaded model again (same created_at) gives the same hash: it is content-only.
    again = save_model(loaded, tmp_path / "m2")
    assert again.content_hash == loaded.content_hash
    # ... and replacing an existing model directory works.
    other = save_model(replace(model, intercept=model.intercept + 1.0, created_at=saved.created_at), tmp_path / "m",
                       overwrite=True)
    assert other.content_hash != saved.content_hash
    assert load_model(tmp_path / "m").content_hash == other.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m2"]


def test_round_trip_of_a_trained_model(model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(model_dir)
    resaved = save_model(loaded, tmp_path / "again")
    _assert_same_model(loaded, resaved)
    _assert_same_model(loaded, load_model(tmp_path / "again"))
    assert json.loads((model_dir / METADATA_FILE).read_text())["content_hash"] == loaded.content_hash


def test_the_hash_covers_every_array_and_the_metadata(tmp_path: Path) -> None:
    base = save_model(_random_model(np.random.default_rng(1)), tmp_path / "m")
    hashes = {base.content_hash}
    for name in ("fill", "mean", "scale"):
        for head in ("segmenter", "propensity"):
            pre = getattr(base, head)
            changed = replace(pre, **{name: getattr(pre, name) * 1.0000001})
            hashes.add(save_model(replace(base, **{head: changed}), tmp_path / "x", overwrite=True).content_hash)
    hashes.add(save_model(replace(base, centroids=base.centroids + 1e-12), tmp_path / "x", overwrite=True).content_hash)
    hashes.add(save_model(replace(base, coef=base.coef[::-1].copy()), tmp_path / "x", overwrite=True).content_hash)
    hashes.add(save_model(replace(base, metrics={"auc": 0.76}), tmp_path / "x", overwrite=True).content_hash)
    hashes.add(save_model(replace(base, features=("a", "b", "c", "d", "e")), tmp_path / "x", overwrite=True).content_hash)
    assert len(hashes) == 1 + 6 + 4


def test_tampered_arrays_are_refused_with_exit_5(model_dir: Path, tmp_path: Path,
                                                 cli: Callable[..., Result],
                                                 score_cli: Callable[..., Result],
                                                 dataset_dir: Path) -> None:
    model = _copy(model_dir, tmp_path)
    with np.load(model / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name].copy() for name in npz.files}
    arrays["coef"][2] += 0.001
    np.savez(model / ARRAYS_FILE, **arrays)
    with pytest.raises(ModelError, match="content hash mismatch"):
        load_model(model)
    result = _show(cli, model)
    assert result.exit_code == 5
    assert "content hash mismatch" in result.stderr and str(model) in result.stderr
    scored = score_cli(dataset_dir, model, tmp_path / "scores")
    assert scored.exit_code == 5 and "hash mismatch" in scored.stderr
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize("where", ["metrics", "profile", "params"])
def test_tampered_metadata_is_refused_with_exit_5(model_dir: Path, tmp_path: Path,
                                                  cli: Callable[..., Result], where: str) -> None:
    model = _copy(model_dir, tmp_path)
    text = (model / METADATA_FILE).read_text()
    meta = json.loads(text)
    if where == "metrics":
        old = json.dumps(meta["metrics"]["cv"]["auc"])
        new = json.dumps(meta["metrics"]["cv"]["auc"] + 0.01)
    elif where == "profile":
        old = json.dumps(meta["profile"]["features"]["age"]["quantiles"]["0.5"])
        new = json.dumps(meta["profile"]["features"]["age"]["quantiles"]["0.5"] + 1)
    else:
        old, new = f'"seed": {meta["params"]["seed"]}', f'"seed": {meta["params"]["seed"] + 1}'
    assert old in text
    (model / METADATA_FILE).write_text(text.replace(old, new, 1))
    result = _show(cli, model)
    assert result.exit_code == 5
    assert "content hash mismatch" in result.stderr


@pytest.mark.parametrize("version", [99, 0, "1", None])
def test_unknown_format_version_is_refused_clearly(model_dir: Path, tmp_path: Path,
                                                   cli: Callable[..., Result],
                                                   version: object) -> None:
    model = _copy(model_dir, tmp_path)
    meta = json.loads((model / METADATA_FILE).read_text())
    meta["format_version"] = version
    (model / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    with pytest.raises(ModelError) as info:
        load_model(model)
    msg = str(info.value)
    assert f"format version {version!r} is not supported" in msg
    assert f"reads format version {FORMAT_VERSION}" in msg
    result = _show(cli, model)
    assert result.exit_code == 5 and "format version" in result.stderr


def test_broken_artifacts_are_model_errors(model_dir: Path, tmp_path: Path,
                                           cli: Callable[..., Result]) -> None:
    assert _show(cli, tmp_path / "nowhere").exit_code == 5
    (tmp_path / "empty").mkdir()
    result = _show(cli, tmp_path / "empty")
    assert result.exit_code == 5 and "not a model directory" in result.stderr

    model = _copy(model_dir, tmp_path)
    (model / ARRAYS_FILE).unlink()
    result = _show(cli, model)
    assert result.exit_code == 5 and "missing" in result.stderr

    (model / ARRAYS_FILE).write_bytes(b"not a zip file")
    result = _show(cli, model)
    assert result.exit_code == 5 and "cannot be read" in result.stderr

    (model / METADATA_FILE).write_text("{not json")
    result = _show(cli, model)
    assert result.exit_code == 5 and "not valid JSON" in result.stderr

    (model / METADATA_FILE).write_text(json.dumps({"format": "something-else"}))
    result = _show(cli, model)
    assert result.exit_code == 5 and "not a customer-scoring-engine model" in result.stderr


def test_invalid_models_are_not_saved(tmp_path: Path) -> None:
    model = _random_model(np.random.default_rng(2))
    with pytest.raises(ModelError, match="NaN"):
        save_model(replace(model, coef=np.array([1.0, np.nan, 0, 0, 0])), tmp_path / "a")
    with pytest.raises(ModelError, match="shape"):
        save_model(replace(model, centroids=np.zeros((3, 4))), tmp_path / "b")
    with pytest.raises(ModelError, match="zero scale"):
        save_model(replace(model, segmenter=replace(model.segmenter, scale=np.zeros(5))), tmp_path / "c")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "important.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not an engine model"):
        save_model(model, tmp_path / "data", overwrite=True)
    assert (tmp_path / "data" / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_artifact_holds_no_pickle(model_dir: Path) -> None:
    names = {p.name for p in model_dir.rglob("*")}
    assert {ARRAYS_FILE, METADATA_FILE} <= names
    # Other files (a human-readable report) may sit beside them, never a pickle.
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib", ".npy"))]
    with np.load(model_dir / ARRAYS_FILE, allow_pickle=False) as npz:
        for name in npz.files:
            arr = npz[name]
            assert arr.dtype == np.float64, name
    with zipfile.ZipFile(model_dir / ARRAYS_FILE) as zf:
        assert all(n.endswith(".npy") for n in zf.namelist())
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    assert meta["format"] == "customer-scoring-engine/model"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["engine_version"] == __version__
    assert meta["content_hash"].startswith("sha256:")
    assert meta["id_column"] == "customer_id" and meta["target"] == "churned"
    assert meta["segmenter"]["k"] == 4
    assert {"name": "recency_days", "type": "int32"} in meta["features"]


def test_the_training_profile_has_quantiles_and_null_rates(model_dir: Path, dataset_dir: Path) -> None:
    model = load_model(model_dir)
    profile = model.profile
    features = list(model.features)
    assert set(profile["features"]) == set(features)
    # The profile describes exactly the training rows: same file order, same split.
    table = ds.dataset(dataset_dir, format="parquet").to_table(columns=features)
    X = table_to_matrix(table, features)
    train_idx, _ = split_indices(X.shape[0], model.params["holdout"], model.params["seed"])
    X = X[train_idx]
    assert profile["rows"] == train_idx.size
    for j, name in enumerate(features):
        entry = profile["features"][name]
        col = X[:, j]
        assert entry["null_rate"] == pytest.approx(np.isnan(col).mean(), abs=1e-12), name
        qs = entry["quantiles"]
        assert list(qs) == [str(q) for q in QUANTILES]
        values = [qs[str(q)] for q in QUANTILES]
        assert values == sorted(values)
        # Each quantile is the mean of the 20 values around it (engine.privacy), never one value;
        # whole-number features (counts, flags) take the value of the data where 20+ customers hold it.
        finite = col[np.isfinite(col)]
        expected = private_quantiles(finite, QUANTILES)
        if np.all(finite == np.round(finite)):
            exact = np.quantile(finite, QUANTILES, method="inverted_cdf")
            expected = {q: float(e) if np.count_nonzero(finite == e) >= 20 else expected[q]
                        for q, e in zip(QUANTILES, exact)}
        np.testing.assert_allclose(values, [expected[q] for q in QUANTILES], rtol=1e-12, atol=1e-12)
        # Clipped and coarsened against differencing (engine.privacy), close to the plain mean.
        assert entry["mean"] == bounded_mean(col) and entry["mean"] == pytest.approx(np.nanmean(col), rel=0.02)
        assert sum(entry["bin_fractions"]) == pytest.approx(1.0)
        assert len(entry["bin_fractions"]) == len(entry["bin_edges"]) + 1
    nulls = {n for n in features if profile["features"][n]["null_rate"] > 0}
    assert {"age", "email_open_rate", "satisfaction_score"} <= nulls
    assert profile["features"]["recency_days"]["null_rate"] == 0.0
    assert sum(profile["segment_shares"]) == pytest.approx(1.0) and len(profile["segment_shares"]) == 4
    assert "propensity" in profile
