"""engine/backends/stage: per-process device stages that every task of a process shares.

The CPU stage runs everywhere; the GPU stage's test body is the same and runs wherever
a GPU is lent (skipped with its reason elsewhere).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.backends.stage import CpuStage, StageCache, StageSettings, get_stage, model_params
from engine.config import Settings
from engine.io.dataset import discover, plan_fragments, read_fragment, table_to_matrix
from engine.models.artifact import load_model
from kernels.score_rows import score_rows

BACKENDS = ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)]


def _block(model_dir: Path, dataset_dir: Path, rows: int) -> np.ndarray:
    return _block_and_levels(model_dir, dataset_dir, rows)[0]


def _block_and_levels(model_dir: Path, dataset_dir: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A block of the shared data (with ±inf and NaN put in) and its categorical level indices."""
    from engine.models.categorical import level_matrix

    model = load_model(model_dir)
    table = read_fragment(plan_fragments(discover(dataset_dir))[0], list(model.columns))
    X = np.asfortranarray(table_to_matrix(table, model.features)[:rows])
    X[3, 0] = np.inf
    X[5, [1, 2]] = [-np.inf, np.nan]
    return X, level_matrix(table.slice(0, rows), model.categoricals)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lease_scores_like_the_twin(backend: str, model_dir: Path, dataset_dir: Path) -> None:
    model = load_model(model_dir)
    stage = StageCache().get(model, backend, StageSettings(block_rows=512, gpu_block_rows=512))
    assert stage.backend == backend and stage.block_rows == 512
    X, levels = _block_and_levels(model_dir, dataset_dir, 300)
    assert levels.shape == (300, 1)  # the shared model's categorical column: region
    with stage.lease() as lease:
        assert lease.X.shape == (512, model.n_features) and lease.X.flags.f_contiguous
        assert lease.X.dtype == np.float64
        lease.X[:300] = X
        with pytest.raises(ValueError, match="categorical"):
            lease.score(300)
        result = lease.score(300, levels)
        np.testing.assert_array_equal(lease.X[:300], X)  # the stage does not touch X
    params, intercept = model_params(model)
    from engine.backends.stage import level_inputs

    cat_logit, cat_dist = level_inputs(model)
    seg, dist, prop = score_rows(np.where(np.isinf(X), np.nan, X), *params, intercept, xp=np, levels=levels,
                                 cat_logit=cat_logit, cat_dist=cat_dist)
    np.testing.assert_array_equal(result.segment, seg)
    np.testing.assert_allclose(result.distance, dist, rtol=1e-6)
    np.testing.assert_allclose(result.propensity, prop, rtol=0, atol=1e-6)
    assert result.segment.dtype == np.int32 and result.distance.dtype == np.float32
    assert result.inf_col.dtype == np.int32 and result.nulls.dtype == np.int64
    expected_inf = np.full(300, -1)
    expected_inf[3], expected_inf[5] = 0, 1
    np.testing.assert_array_equal(result.inf_col, expected_inf)
    np.testing.assert_array_equal(result.nulls, np.isnan(X).sum(axis=0))


def test_one_stage_per_model_backend_and_settings(model_dir: Path) -> None:
    model = load_model(model_dir)
    cache = StageCache(size=2)
    a = cache.get(model, "cpu", StageSettings(block_rows=256))
    # Another copy of the same model (as each Dask task unpickles its own) gets the same stage.
    assert cache.get(load_model(model_dir), "cpu", StageSettings(block_rows=256)) is a
    # The engine's Settings work too: only the stage's fields count.
    assert cache.get(model, "cpu", Settings(block_rows=256, partition_rows=7)) is a
    b = cache.get(model, "cpu", StageSettings(block_rows=512))
    assert b is not a and len(cache) == 2
    other = replace(model, intercept=model.intercept + 1.0, content_hash="another-model")
    c = cache.get(other, "cpu", StageSettings(block_rows=256))
    assert c is not a and len(cache) == 2  # the least recently used stage was dropped
    assert cache.get(model, "cpu", StageSettings(block_rows=512)) is b
    with pytest.raises(ValueError, match="backend"):
        cache.get(model, "tpu", StageSettings())


def test_concurrent_first_requests_build_one_stage(model_dir: Path) -> None:
    model = load_model(model_dir)
    cache = StageCache()
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(model, "cpu", StageSettings(block_rows=64))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(s is got[0] for s in got)


def test_leases_are_bounded_and_reused(model_dir: Path) -> None:
    stage = CpuStage(load_model(model_dir), block_rows=32, leases=2)
    first, second = stage.lease(), stage.lease()
    assert first.X is not second.X
    waited = threading.Event()
    third: list[object] = []

    def borrow() -> None:
        third.append(stage.lease())
        waited.set()

    t = threading.Thread(target=borrow)
    t.start()
    assert not waited.wait(0.3)  # both blocks are lent: the third lease waits
    with first:
        pass
    assert waited.wait(10)
    t.join()
    assert third[0].X is first.X  # the returned block, not a new one
    assert stage._made == 2


def test_process_registry_is_shared(model_dir: Path) -> None:
    model = load_model(model_dir)
    spec = StageSettings(block_rows=1_000)
    assert get_stage(model, "cpu", spec) is get_stage(load_model(model_dir), "cpu", spec)
