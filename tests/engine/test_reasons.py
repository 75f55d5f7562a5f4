"""Reason codes: the compiled kernel against its NumPy reference, the scored columns against
a direct computation of ``coef_j * z_j``, and CPU/GPU identity through the shared code."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import Result

from engine.config import Settings
from engine.io.dataset import discover, plan_fragments, read_fragment
from engine.jobs.partition import PartitionTask, _score_blocks
from engine.jobs.score import ScoreOptions, score
from engine.models.artifact import load_model
from engine.models.reasons import (
    ReasonWeights,
    contributions,
    reason_arrays,
    reason_columns,
    top_reasons,
    top_reasons_reference,
)


def _toy(f: int, seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        n_features=f, features=tuple(f"f{j}" for j in range(f)), coef=rng.normal(size=f),
        propensity=SimpleNamespace(scale=rng.uniform(0.5, 3.0, f), mean=rng.normal(size=f),
                                   fill=rng.normal(size=f)),
    )


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("permuted", [False, True])
def test_kernel_equals_reference(layout: str, permuted: bool) -> None:
    rng = np.random.default_rng(1)
    f = 13
    model = _toy(f, 2)
    X = rng.normal(size=(3_001, f)) * 2
    X[rng.random(X.shape) < 0.1] = np.nan
    X[5, 3], X[6, 4], X[7, :] = np.inf, -np.inf, np.nan
    X = np.asarray(X, order=layout)
    order = rng.permutation(f) if permuted else None
    w = ReasonWeights.of(model, order)
    Xb = X[:, order] if permuted else X
    Xb = np.asarray(Xb, order=layout)
    for n in (0, 1, 3, f):
        got = top_reasons(Xb, w, n)
        ref = top_reasons_reference(Xb, w, n, xp=np)
        assert got.shape == (X.shape[0], n) and got.dtype == np.int32
        assert np.array_equal(got, ref), n


def test_ties_go_to_the_lower_feature_index_whatever_the_column_order() -> None:
    f = 6
    model = SimpleNamespace(n_features=f, features=tuple("abcdef"), coef=np.ones(f),
                            propensity=SimpleNamespace(scale=np.ones(f), mean=np.zeros(f), fill=np.zeros(f)))
    X = np.array([[1.0, 2.0, 2.0, 1.0, -1.0, 0.0]])
    order = np.array([5, 3, 1, 4, 2, 0])
    for o in (None, order):
        w = ReasonWeights.of(model, o)
        Xb = X if o is None else X[:, o]
        # 2 (b) and 2 (c) tie: b first; then 1 (a) and 1 (d) tie: a first; -1 and 0 are not reasons.
        assert top_reasons(Xb, w, 6).tolist() == [[1, 2, 0, 3, -1, -1]]
        assert top_reasons_reference(Xb, w, 6, xp=np).tolist() == [[1, 2, 0, 3, -1, -1]]


def test_missing_and_infinite_values_are_imputed_like_scoring() -> None:
    model = SimpleNamespace(n_features=2, features=("a", "b"), coef=np.array([1.0, 1.0]),
                            propensity=SimpleNamespace(scale=np.ones(2), mean=np.array([0.0, 0.25]),
                                                       fill=np.array([5.0, 0.5])))
    w = ReasonWeights.of(model)
    X = np.array([[np.nan, 1.0], [np.inf, 1.0], [-np.inf, 9.0], [0.0, np.nan]])
    C = contributions(X, w, xp=np)
    np.testing.assert_array_equal(C, [[5.0, 0.75], [5.0, 0.75], [5.0, 8.75], [0.0, 0.25]])
    assert top_reasons(X, w, 2).tolist() == [[0, 1], [0, 1], [1, 0], [1, -1]]


def test_reason_columns_are_dictionary_encoded_with_nulls() -> None:
    cols = reason_arrays(np.array([[2, -1], [0, 1], [-1, -1]], dtype=np.int32), ["a", "b", "c"])
    assert reason_columns(2) == ["reason_1", "reason_2"]
    assert all(pa.types.is_dictionary(c.type) for c in cols)
    assert cols[0].to_pylist() == ["c", "a", None] and cols[1].to_pylist() == [None, "b", None]
    assert cols[0].null_count == 1 and cols[1].null_count == 2


def _direct(frame: pd.DataFrame, model) -> tuple[np.ndarray, np.ndarray]:
    """``coef_j * z_j`` straight from the definition: z of the imputed raw value, 0 at the training mean;
    a categorical column contributes its level's coefficient less the training-share-weighted mean one.
    Returns the contributions and, per row and column, the name a reason gives (``region=north``)."""
    p = model.propensity
    X = frame[list(model.features)].to_numpy(dtype=np.float64)
    X = np.where(np.isfinite(X), X, p.fill)
    C = model.coef * ((X - p.mean) / p.scale)
    names = np.tile(np.asarray(model.features, dtype=object), (len(frame), 1))
    base = 0
    for cat in model.categoricals:
        share = np.asarray(model.profile["categoricals"][cat.name]["shares"])
        w = model.cat_coef[base:base + cat.n_levels]
        idx = np.asarray([cat.levels.index(v) if v in cat.levels else (cat.missing if v is None else cat.other)
                          for v in frame[cat.name].astype(object)])
        C = np.hstack([C, (w[idx] - w @ share / share.sum())[:, None]])
        names = np.hstack([names, np.asarray([f"{cat.name}={cat.label(i)}" for i in idx], dtype=object)[:, None]])
        base += cat.n_levels
    return C, names


def _feature_of(labels: pd.Series) -> pd.Series:
    """``tenure_months:low`` -> ``tenure_months`` (nulls stay null)."""
    return pd.Series([v.rsplit(":", 1)[0] if isinstance(v, str) else None for v in labels.astype(object)],
                     index=labels.index, dtype=object)


def _check_directions(merged: pd.DataFrame, model, n: int) -> None:
    """Each reason's direction is the side of the average customer its (imputed) value lies on,
    so that ``coef * (x - baseline)`` is positive: ``high`` above it, ``low`` below."""
    p = model.propensity
    X = merged[list(model.features)].to_numpy(dtype=np.float64)
    X = np.where(np.isfinite(X), X, p.fill)
    for i in range(n):
        labels = merged[f"reason_{i + 1}"].astype(object)
        for r in np.flatnonzero(labels.notna().to_numpy()):
            if ":" not in labels.iloc[r]:  # a categorical level (region=north): the level is the direction
                column, level = labels.iloc[r].split("=", 1)
                assert column in [c.name for c in model.categoricals], labels.iloc[r]
                assert str(merged[column].iloc[r]) == level, (r, labels.iloc[r])
                continue
            feature, direction = labels.iloc[r].rsplit(":", 1)
            j = model.features.index(feature)
            assert direction in ("high", "low")
            assert model.coef[j] * (X[r, j] - p.mean[j]) > 0, (r, labels.iloc[r])
            assert (X[r, j] > p.mean[j]) == (direction == "high"), (r, labels.iloc[r], X[r, j], p.mean[j])


def _check_against_direct(scores: pd.DataFrame, frame: pd.DataFrame, model, n: int) -> None:
    merged = scores.merge(frame, on="customer_id", how="left", validate="one_to_one")
    C, names = _direct(merged, model)
    order = np.argsort(-C, axis=1, kind="stable")
    _check_directions(merged, model, n)
    for i in range(n):
        if f"reason_{i + 1}_contribution" in merged:
            got = merged[f"reason_{i + 1}_contribution"].to_numpy(dtype=np.float64)
            expected_value = np.take_along_axis(C, order[:, i:i + 1], axis=1)[:, 0]
            present = ~np.isnan(got)
            assert np.array_equal(present, expected_value > 0)
            np.testing.assert_allclose(got[present], expected_value[present], rtol=1e-6, atol=1e-6)
        col = _feature_of(merged[f"reason_{i + 1}"]).to_numpy()
        value = np.take_along_axis(C, order[:, i:i + 1], axis=1)[:, 0]
        expected = np.where(value > 0, np.take_along_axis(names, order[:, i:i + 1], axis=1)[:, 0], None)
        differ = np.flatnonzero(col != expected)
        # Only exact (to rounding) ties may order differently from this stable sort.
        for r in differ:
            assert col[r] is not None and expected[r] is not None, (r, col[r], expected[r])
            got_value = C[r, list(names[r]).index(col[r])]
            assert got_value == pytest.approx(value[r], rel=1e-12), (r, col[r], expected[r])
        # A null slot means fewer than i + 1 features raise the propensity.
        assert np.array_equal(pd.isna(merged[f"reason_{i + 1}"]).to_numpy(), (C > 0).sum(axis=1) <= i)


def test_scored_reasons_equal_a_direct_computation(score_cli: Callable[..., Result], dataset_dir: Path,
                                                   model_dir: Path, dataset_frame: pd.DataFrame,
                                                   scores_of: Callable[..., pd.DataFrame], tmp_path: Path) -> None:
    model = load_model(model_dir)
    n = model.n_features  # every slot: later ones are null where few features raise the propensity
    result = score_cli(dataset_dir, model_dir, tmp_path / "scores", "--reasons", n, "--reason-contributions")
    assert result.exit_code == 0, result.output
    scores = scores_of(tmp_path / "scores")
    assert list(scores.columns[:4]) == ["customer_id", "segment", "segment_distance", "propensity"]
    assert list(scores.columns[4:]) == reason_columns(n) + [f"{c}_contribution" for c in reason_columns(n)]
    table = ds.dataset(tmp_path / "scores", format="parquet").to_table()
    assert all(pa.types.is_dictionary(table.schema.field(c).type) for c in reason_columns(n))
    assert scores["reason_1"].notna().mean() > 0.9 and scores[f"reason_{n}"].isna().any()
    _check_against_direct(scores, dataset_frame, model, n)
    manifest = __import__("json").loads((tmp_path / "scores" / "_manifest.json").read_text())
    assert manifest["output"]["columns"][3:] == reason_columns(n) + [f"{c}_contribution" for c in reason_columns(n)]
    # Opt-in: without the flag the output has no reason columns, and the scores are the same.
    plain = tmp_path / "plain"
    assert score_cli(dataset_dir, model_dir, plain).exit_code == 0
    base = scores_of(plain)
    assert list(base.columns) == ["customer_id", "segment", "segment_distance", "propensity"]
    pd.testing.assert_frame_equal(base, scores[base.columns])


def test_reasons_of_rows_with_bad_values(score_cli: Callable[..., Result], dataset_dir: Path, model_dir: Path,
                                         dataset_frame: pd.DataFrame, scores_of: Callable[..., pd.DataFrame],
                                         tmp_path: Path) -> None:
    """±inf is imputed like scoring imputes it; rejected rows leave the other rows' reasons aligned."""
    model = load_model(model_dir)
    frame = dataset_frame.copy()
    strongest = model.features[int(np.argmax(model.coef))]
    frame[strongest] = frame[strongest].astype("float64")
    frame.loc[[3, 10], strongest] = np.inf
    frame.loc[[4], strongest] = np.nan
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data / "part.parquet")
    for policy, rows in (("impute", len(frame)), ("reject", len(frame) - 2)):
        out = tmp_path / policy
        result = score_cli(data, model_dir, out, "--reasons", 3, "--on-bad-rows", policy)
        assert result.exit_code == 0, result.output
        scores = scores_of(out)
        assert len(scores) == rows
        _check_against_direct(scores, frame, model, 3)
        ids = frame["customer_id"].iloc[[3, 4]].tolist()
        got = scores.set_index("customer_id").loc[[i for i in ids if i in set(scores["customer_id"])]]
        # An imputed value sits at the training mean: it is never a reason.
        assert not got[reason_columns(3)].apply(_feature_of).eq(strongest).any().any()


@pytest.mark.parametrize("value", [-1, 10_000])
def test_reasons_out_of_range_is_a_usage_error(score_cli: Callable[..., Result], dataset_dir: Path,
                                               model_dir: Path, tmp_path: Path, value: int) -> None:
    result = score_cli(dataset_dir, model_dir, tmp_path / "out", "--reasons", value)
    assert result.exit_code == 2
    assert "--reasons must be between 0 and the model's" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_keep_may_not_shadow_a_reason_column(score_cli: Callable[..., Result], dataset_dir: Path,
                                             model_dir: Path, tmp_path: Path) -> None:
    result = score_cli(dataset_dir, model_dir, tmp_path / "out", "--reasons", 2, "--keep", "reason_2")
    assert result.exit_code == 2 and "reason_2" in result.stderr


def _block_reasons(backend: str, model_dir: Path, dataset_dir: Path, block_rows: int) -> np.ndarray:
    model = load_model(model_dir)
    frag = plan_fragments(discover(str(dataset_dir)))[0]
    table = read_fragment(frag, ["customer_id", *model.columns])
    task = PartitionTask(fragment=frag, model=model, backend=backend, part_path="", rejected_path="",
                         sidecar_path="", id_column="customer_id", block_rows=block_rows, reasons=4)
    scores = _score_blocks(task, table, table.column("customer_id"))
    assert scores.reasons is not None
    return scores.reasons


def test_block_size_does_not_change_reasons(model_dir: Path, dataset_dir: Path) -> None:
    ref = _block_reasons("cpu", model_dir, dataset_dir, 1 << 20)
    for block_rows in (1, 777, 4096):
        assert np.array_equal(_block_reasons("cpu", model_dir, dataset_dir, block_rows), ref)


@pytest.mark.gpu
def test_gpu_reasons_identical_to_cpu(model_dir: Path, dataset_dir: Path, tmp_path: Path) -> None:
    """The same shared host code runs on both backends: identical codes, block by block and end to end."""
    cpu = _block_reasons("cpu", model_dir, dataset_dir, 4096)
    for block_rows in (997, 1 << 22):
        assert np.array_equal(_block_reasons("gpu", model_dir, dataset_dir, block_rows), cpu)
    out = {}
    for backend in ("cpu", "gpu"):
        score(ScoreOptions(input=str(dataset_dir), model=str(model_dir), output=str(tmp_path / backend),
                           backend=backend, progress="quiet", reasons=3), Settings())
        t = ds.dataset(tmp_path / backend, format="parquet").to_table().sort_by("customer_id")
        out[backend] = {c: t.column(c).to_pylist() for c in ["customer_id", *reason_columns(3)]}
    assert out["cpu"] == out["gpu"]
    shutil.rmtree(tmp_path / "gpu", ignore_errors=True)


def test_a_feature_stored_as_arrow_null_type_is_imputed(score_cli: Callable[..., Result], cli: Callable[..., Result],
                                                         dataset_dir: Path, model_dir: Path,
                                                         dataset_frame: pd.DataFrame,
                                                         scores_of: Callable[..., pd.DataFrame],
                                                         tmp_path: Path) -> None:
    """pandas writes an all-None column with Arrow's null type: all missing, not "non-numeric" (found by QA).

    Scoring imputes it (counted, and its null share alerts as drift); training, which
    needs values, still refuses it (exit 3).
    """
    model = load_model(model_dir)
    feature = model.features[int(np.argmax(np.abs(model.coef)))]
    data = tmp_path / "data"
    data.mkdir()
    half = len(dataset_frame) // 2
    table = pa.Table.from_pandas(dataset_frame, preserve_index=False)
    first = table.slice(0, half)
    first = first.set_column(first.schema.get_field_index(feature), feature, pa.nulls(half))
    assert pa.types.is_null(first.schema.field(feature).type)
    pq.write_table(first, data / "a.parquet")
    pq.write_table(table.slice(half), data / "b.parquet")  # the other file has the values
    out = tmp_path / "scores"
    result = score_cli(data, model_dir, out, "--reasons", 3, "--on-bad-rows", "impute")
    assert result.exit_code == 0, result.output
    scores = scores_of(out)
    assert len(scores) == len(dataset_frame)
    frame = dataset_frame.copy()
    frame[feature] = frame[feature].astype("float64")
    frame.loc[: half - 1, feature] = np.nan
    _check_against_direct(scores, frame, model, 3)
    manifest = __import__("json").loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["nulls_imputed"] >= half
    assert feature in manifest["drift"]["reasons"]  # its null share went from training's to 50%
    refused = cli("train", "--input", data / "a.parquet", "--target", "churned", "--output", tmp_path / "m",
                  "--features", feature, "--quiet", "--no-report")
    assert refused.exit_code == 3 and "non-numeric type null" in refused.output


def test_directions_on_known_rows(tmp_path: Path) -> None:
    """Hand-made rows: a feature with a negative coefficient is a reason when low, a positive one when high."""
    import engine
    from engine.models.artifact import Preprocess, ScoringModel, finalize

    pre = Preprocess(fill=np.array([10.0, 5.0]), mean=np.array([10.0, 5.0]), scale=np.array([2.0, 1.0]))
    model = finalize(ScoringModel(features=("tenure_months", "complaints"), feature_types=("int64", "int64"),
                                  segmenter=pre, centroids=np.zeros((1, 2)), propensity=pre,
                                  coef=np.array([-1.5, 0.8]), intercept=0.0))
    table = pa.table({"tenure_months": pa.array([2, 30, 10, None], pa.int64()),
                      "complaints": pa.array([9, 1, 5, 8], pa.int64())})
    out = engine.Model(model).score(table, reasons=2, reason_contributions=True)
    assert out.column("reason_1").to_pylist() == ["tenure_months:low", None, None, "complaints:high"]
    assert out.column("reason_2").to_pylist() == ["complaints:high", None, None, None]
    # contribution = coef * (x - fill) / scale: -1.5 * (2 - 10) / 2 = 6.0, 0.8 * (9 - 5) = 3.2
    np.testing.assert_allclose(out.column("reason_1_contribution").to_pylist()[:1], [6.0], rtol=1e-6)
    np.testing.assert_allclose(out.column("reason_2_contribution").to_pylist()[:1], [3.2], rtol=1e-6)
    assert out.column("reason_1_contribution").to_pylist()[3] == pytest.approx(0.8 * 3, rel=1e-6)
    for row, labels in enumerate(zip(out.column("reason_1").to_pylist(), out.column("reason_2").to_pylist())):
        for label in filter(None, labels):
            feature, direction = label.split(":")
            j = model.features.index(feature)
            x = table.column(feature)[row].as_py()
            x = model.propensity.fill[j] if x is None else x
            sign = np.sign(model.coef[j] * (x - model.propensity.fill[j]))
            assert sign > 0 and (direction == "high") == (x > model.propensity.fill[j])
