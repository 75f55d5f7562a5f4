"""The GPU backend against the CPU backend, and the shared artifact that makes them agree.

Tests marked ``gpu`` need CuPy and a device; tests marked ``cuml`` need cuML. Both show
as skipped, with their reason, on machines without them (CI). The unmarked tests run
everywhere: they check, on the CPU, the pieces the GPU path shares or mirrors.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from engine.config import Settings
from engine.io.dataset import discover, plan_fragments, read_fragment, table_to_matrix
from engine.jobs.generate import TARGET, generate
from engine.jobs.partition import PartitionTask, _score_blocks
from engine.jobs.score import ScoreOptions, score
from engine.jobs.train import TrainOptions, train
from engine.models.artifact import load_model
from engine.models.scorer import fold, score_matrix
from kernels.score_rows import score_rows


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("gpu_backend")
    data = root / "data"
    generate(30_000, 3, data, seed=7)
    # The numeric columns only: these tests call the numeric kernel twin (categorical level
    # inputs have their own twin tests in tests/kernels/test_score_rows_levels.py).
    schema = discover(str(data)).files[0].schema
    numeric = [f.name for f in schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)
               if f.name not in ("customer_id", TARGET)]
    train(TrainOptions(input=str(data), target=TARGET, output=str(root / "model"), backend="cpu", seed=7,
                       features=numeric))
    return {"root": str(root), "data": str(data), "model": str(root / "model")}


def _scores(path: str) -> dict[str, np.ndarray]:
    t = ds.dataset(path, format="parquet").to_table().sort_by("customer_id")
    return {c: t.column(c).to_numpy() for c in ("customer_id", "segment", "segment_distance", "propensity")}


def test_fused_kernel_twin_agrees_with_cpu_scorer(small: dict[str, str]) -> None:
    """The GPU kernel's NumPy twin and the CPU scorer compute the same scores from one artifact."""
    model = load_model(small["model"])
    dataset = discover(small["data"])
    table = read_fragment(plan_fragments(dataset)[0], list(model.features))
    X = table_to_matrix(table, model.features)
    seg, dist, prop = score_matrix(X, fold(model, xp=np), xp=np)
    s, p = model.segmenter, model.propensity
    k_seg, k_dist, k_prop = score_rows(
        X, s.fill, 1.0 / s.scale, -s.mean / s.scale, model.centroids,
        p.fill, 1.0 / p.scale, -p.mean / p.scale, model.coef, model.intercept, xp=np,
    )
    assert np.array_equal(seg, k_seg)
    np.testing.assert_allclose(prop, k_prop, atol=1e-6)
    np.testing.assert_allclose(dist, k_dist, rtol=1e-5, atol=1e-5)


def test_block_size_does_not_change_scores(small: dict[str, str]) -> None:
    """CPU blocks of any size (and the GPU's large slices) give identical scores."""
    model = load_model(small["model"])
    frag = plan_fragments(discover(small["data"]))[0]
    table = read_fragment(frag, ["customer_id", *model.features])
    results = []
    for block_rows in (1, 1000, 4096, 1 << 22):
        task = PartitionTask(fragment=frag, model=model, backend="cpu", part_path="", rejected_path="",
                             sidecar_path="", id_column="customer_id", block_rows=block_rows)
        results.append(_score_blocks(task, table, table.column("customer_id")))
    for other in results[1:]:
        assert np.array_equal(results[0].segment, other.segment)
        assert np.array_equal(results[0].propensity, other.propensity)
        np.testing.assert_allclose(results[0].distance, other.distance, rtol=1e-6)
        assert results[0].drift["segments"] == other.drift["segments"]


@pytest.mark.gpu
def test_gpu_scores_equal_cpu_scores(small: dict[str, str], tmp_path) -> None:
    settings = Settings()
    for backend in ("cpu", "gpu"):
        score(ScoreOptions(input=small["data"], model=small["model"], output=str(tmp_path / backend),
                           backend=backend, progress="quiet"), settings)
    cpu, gpu = _scores(str(tmp_path / "cpu")), _scores(str(tmp_path / "gpu"))
    assert np.array_equal(cpu["customer_id"], gpu["customer_id"])
    assert np.array_equal(cpu["segment"], gpu["segment"])
    np.testing.assert_allclose(cpu["propensity"], gpu["propensity"], atol=1e-5)
    np.testing.assert_allclose(cpu["segment_distance"], gpu["segment_distance"], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gpu_slices_match_whole_partition(small: dict[str, str]) -> None:
    """A partition bigger than the device slice is scored in slices with the same result."""
    model = load_model(small["model"])
    frag = plan_fragments(discover(small["data"]))[0]
    table = read_fragment(frag, ["customer_id", *model.features])
    out = []
    for block_rows in (997, 1 << 22):
        task = PartitionTask(fragment=frag, model=model, backend="gpu", part_path="", rejected_path="",
                             sidecar_path="", id_column="customer_id", block_rows=block_rows)
        out.append(_score_blocks(task, table, table.column("customer_id")))
    assert np.array_equal(out[0].segment, out[1].segment)
    np.testing.assert_allclose(out[0].propensity, out[1].propensity, atol=1e-7)


@pytest.mark.gpu
def test_model_trained_on_gpu_scores_on_cpu(small: dict[str, str], tmp_path) -> None:
    """Portability: a GPU-trained artifact scores on the CPU as on the GPU."""
    import importlib.util
    import warnings

    from engine.models.fit import FitFallbackWarning

    model_dir = tmp_path / "gpu-model"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(TrainOptions(input=small["data"], target=TARGET, output=str(model_dir), backend="gpu", seed=7))
    fell_back = any(issubclass(w.category, FitFallbackWarning) for w in caught)
    assert fell_back == (importlib.util.find_spec("cuml") is None)
    settings = Settings()
    for backend in ("cpu", "gpu"):
        score(ScoreOptions(input=small["data"], model=str(model_dir), output=str(tmp_path / backend),
                           backend=backend, progress="quiet"), settings)
    cpu, gpu = _scores(str(tmp_path / "cpu")), _scores(str(tmp_path / "gpu"))
    assert np.array_equal(cpu["segment"], gpu["segment"])
    np.testing.assert_allclose(cpu["propensity"], gpu["propensity"], atol=1e-5)
    assert load_model(model_dir).params["backend"] == "gpu"


@pytest.mark.gpu
@pytest.mark.cuml
def test_cuml_fits_match_sklearn_quality(small: dict[str, str]) -> None:
    """cuML K-means inertia within 2% and logistic AUC within 0.01 of scikit-learn's."""
    import cupy
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from engine.models.fit import fit_kmeans, fit_logistic

    model = load_model(small["model"])
    table = ds.dataset(small["data"]).to_table(columns=[*model.features, TARGET])
    X = table_to_matrix(table, model.features)
    pre = model.segmenter
    Z = (np.where(np.isnan(X), pre.fill, X) - pre.mean) / pre.scale
    y = table.column(TARGET).to_numpy().astype(np.float64)
    centroids, inertia = fit_kmeans(cupy.asarray(Z), 8, 0, xp=cupy)
    ref = KMeans(8, random_state=0, n_init=3).fit(Z)
    assert inertia <= ref.inertia_ * 1.02
    coef, intercept = fit_logistic(cupy.asarray(Z), cupy.asarray(y), 0, xp=cupy)
    auc = roc_auc_score(y, Z @ coef + intercept)
    ref_auc = roc_auc_score(y, LogisticRegression(max_iter=1000).fit(Z, y).decision_function(Z))
    assert abs(auc - ref_auc) <= 0.01
