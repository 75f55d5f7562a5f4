"""The GPU device stage: exact against the CPU stage, dense path, slots, copies, failures.

Every device call here needs a GPU and CuPy; on CI those tests show as skipped with the
reason. Their setup does not skip: the models and rows are built at import (a model that
fails validation fails collection on CI), and :func:`test_setup_builds_without_a_gpu`
checks them. Where a behaviour exists on the CPU stage too (stale gap rows, eviction
across threads, the exception path, random block sizes), the same test body runs on the
CPU stage on CI (``BACKENDS``).
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.backends.gpu_stage import kernel_arguments, slot_count
from engine.backends.stage import BlockResult, CpuStage, StageCache, StageSettings
from engine.io.device import upload_geometry, waited_on_error
from engine.models.artifact import Preprocess, ScoringModel, finalize, load_model, save_model
from kernels.score_rows import MAX_SHARED_BYTES, fits_shared_memory, score_rows

gpu = pytest.mark.gpu
BACKENDS = ["cpu", pytest.param("gpu", marks=gpu)]


def make_model(k: int, n_features: int, seed: int = 0) -> ScoringModel:
    rng = np.random.default_rng(seed)
    names = tuple(f"f{j}" for j in range(n_features))

    def pre() -> Preprocess:
        return Preprocess(rng.normal(1.0, 1.0, n_features), rng.normal(1.0, 1.0, n_features),
                          rng.uniform(0.5, 2.0, n_features))

    return finalize(ScoringModel(
        features=names, feature_types=("double",) * n_features, segmenter=pre(),
        centroids=rng.normal(size=(k, n_features)), propensity=pre(),
        coef=rng.normal(size=n_features) / np.sqrt(n_features), intercept=-0.2,
    ))


def make_rows(n: int, n_features: int, seed: int = 1) -> np.ndarray:
    """Rows with NaN, ±inf, all-missing rows, a mostly-null and an all-null column."""
    rng = np.random.default_rng(seed)
    X = rng.normal(1.0, 2.0, size=(n, n_features))
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < 0.003] = np.inf
    X[rng.random(X.shape) < 0.003] = -np.inf
    X[::101] = np.nan                         # all-missing rows
    X[rng.random(n) < 0.95, min(2, n_features - 1)] = np.nan
    X[:, n_features - 1] = np.nan
    return X


# Built at import, on every machine: a broken fixture fails collection on CI instead of skipping.
SMALL = make_model(8, 21)                 # the default shape: fused, 48 KiB is plenty
WIDE = make_model(64, 100, seed=2)        # 57.6 KB of parameters: fused with the shared-memory opt-in
DENSE = make_model(96, 300, seed=3)       # over any GPU's opt-in limit: cuBLAS path
SMALL_B = make_model(5, 21, seed=7)       # a second model over the same features (stage eviction)
ROWS = make_rows(10_001, 21)
WIDE_ROWS = make_rows(6_001, 100, seed=4)
DENSE_ROWS = make_rows(3_001, 300, seed=5)


def test_setup_builds_without_a_gpu(tmp_path: Path) -> None:
    """The GPU tests' models validate and round-trip; the data has what the tests rely on."""
    for i, model in enumerate((SMALL, WIDE, DENSE, SMALL_B)):
        save_model(model, tmp_path / f"m{i}")
        assert load_model(tmp_path / f"m{i}").content_hash == model.content_hash
    assert fits_shared_memory(SMALL.k, SMALL.n_features, 8)
    assert not fits_shared_memory(WIDE.k, WIDE.n_features, 8)  # needs the opt-in
    assert fits_shared_memory(WIDE.k, WIDE.n_features, 8, 227 * 1024)
    assert not fits_shared_memory(DENSE.k, DENSE.n_features, 8, 227 * 1024)
    for X in (ROWS, WIDE_ROWS, DENSE_ROWS):
        assert np.isnan(X).all(axis=1).any() and np.isinf(X).any() and np.isnan(X[:, -1]).all()
    # The CPU stage (the reference of the exact tests) equals the NumPy twin on these rows.
    got = score_blocks(CpuStage(SMALL, block_rows=4_096), ROWS)
    want = score_rows(ROWS, **kernel_arguments(SMALL), xp=np, flags=True)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b.astype(a.dtype))
    assert MAX_SHARED_BYTES == 48 * 1024
    assert slot_count(2, 16) == 16 and slot_count(4, 3) == 8


def test_upload_geometry_moves_exactly_the_block() -> None:
    """The 2-D copy's width x height is n x F x 8 bytes, with the slot's pitch on both sides."""
    rows, f = 65_536, 21
    for n in (0, 1, 1_000, rows):
        pitch, width, height = upload_geometry(rows, n, f)
        assert pitch == rows * 8 and height == f and width * height == n * f * 8
        assert width <= pitch  # cudaMemcpy2D's own precondition


def gpu_stage(model: ScoringModel, **kwargs: Any) -> Any:
    from engine.backends.gpu_stage import GpuStage

    kwargs.setdefault("block_rows", 4_096)
    kwargs.setdefault("concurrent", 2)
    return GpuStage(model, **kwargs)


def make_stage(backend: str, model: ScoringModel, block_rows: int = 4_096, **kwargs: Any) -> Any:
    if backend == "gpu":
        return gpu_stage(model, block_rows=block_rows, **kwargs)
    return CpuStage(model, block_rows=block_rows)


def score_blocks(stage: Any, X: np.ndarray, sizes: list[int] | None = None,
                 delay: random.Random | None = None) -> tuple[np.ndarray, ...]:
    """Score ``X`` lease by lease as the pipeline does (block sizes ``sizes``, default full)."""
    parts: list[BlockResult] = []
    start = 0
    sizes = list(sizes) if sizes is not None else []
    while start < X.shape[0] or sizes:
        n = sizes.pop(0) if sizes else min(stage.block_rows, X.shape[0] - start)
        with stage.lease() as lease:
            lease.X[:n] = X[start:start + n]
            if delay is not None:
                time.sleep(delay.uniform(0, 0.003))
            parts.append(lease.score(n))
        start += n
    nulls = sum((p.nulls for p in parts), np.zeros(X.shape[1], np.int64))
    cat = [np.concatenate([getattr(p, f) for p in parts]) for f in ("segment", "distance", "propensity", "inf_col")]
    return (*cat, nulls)


def assert_equal(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    for name, a, b in zip(("segment", "distance", "propensity", "inf_col", "nulls"), got, want, strict=True):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def assert_close_to_twin(model: ScoringModel, X: np.ndarray, got: tuple[np.ndarray, ...]) -> None:
    """The dense (GEMM) path: the twin's outputs up to rounding of the expanded distance."""
    want = score_rows(X, **kernel_arguments(model), xp=np, flags=True)
    same = got[0] == want[0]
    assert same.mean() > 0.999  # rounding may flip exact near-ties only
    np.testing.assert_allclose(got[1][same], want[1][same], rtol=2.5e-7, atol=1e-6)
    np.testing.assert_allclose(got[2], want[2], rtol=2.5e-7, atol=1e-7)
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_array_equal(got[4], want[4].astype(np.int64))


# ---------------------------------------------------------------- exact GPU = CPU


@gpu
@pytest.mark.parametrize(("model", "X"), [(SMALL, ROWS), (WIDE, WIDE_ROWS)], ids=["k8-F21", "k64-F100"])
def test_fused_stage_equals_cpu_stage_exactly(model: ScoringModel, X: np.ndarray) -> None:
    """Built without FMA contraction, the fused kernel gives the CPU stage's bits, all-NaN rows included."""
    import cupy as cp

    from kernels import _loader

    stage = gpu_stage(model)
    assert stage.fused  # k = 64 over 100 features too, through the shared-memory opt-in
    # The constructor loaded the kernel: no task pays for it.
    assert ("score_rows", "engine_score_rows_f64", cp.cuda.runtime.getDevice()) in _loader._kernels
    assert_equal(score_blocks(stage, X), score_blocks(CpuStage(model, block_rows=4_096), X))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_block_sizes_and_delays_across_threads(backend: str) -> None:
    """Blocks of 0, 1, full and short rows, random pauses between fill and score, 8 threads."""
    stage = make_stage(backend, SMALL, block_rows=1_024, concurrent=1)
    reference = CpuStage(SMALL, block_rows=1_024)
    failures: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(12):
                sizes = [rng.choice([0, 1, stage.block_rows, rng.randrange(2, stage.block_rows)]) for _ in range(3)]
                start = rng.randrange(0, ROWS.shape[0] - sum(sizes))
                X = ROWS[start:start + sum(sizes)]
                got = score_blocks(stage, X, sizes, delay=rng)
                assert_equal(got, score_blocks(reference, X, sizes))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stale_gap_rows_change_nothing(backend: str) -> None:
    """Rows >= n of a leased block hold whatever the last lease left: NaN and inf there are not scored or counted."""
    stage = make_stage(backend, SMALL, block_rows=1_024)
    X = ROWS[:700]
    clean = score_blocks(CpuStage(SMALL, block_rows=1_024), X)
    for filler in (np.nan, np.inf, -np.inf):
        with stage.lease() as lease:
            lease.X[...] = filler
            lease.X[:700] = X
            r = lease.score(700)
        assert_equal((r.segment, r.distance, r.propensity, r.inf_col, r.nulls), clean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_eviction_with_two_models_across_threads(backend: str) -> None:
    """A one-stage cache and two models asked for in turn by 6 threads: every block scores with its own model."""
    cache = StageCache(size=1)
    spec = StageSettings(block_rows=512, gpu_block_rows=512, gpu_tasks=1)
    want = {m.content_hash: score_blocks(CpuStage(m, block_rows=512), ROWS[:3_000]) for m in (SMALL, SMALL_B)}
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for r in range(4):
                model = (SMALL, SMALL_B)[(i + r) % 2]
                assert_equal(score_blocks(cache.get(model, backend, spec), ROWS[:3_000]), want[model.content_hash])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    assert len(cache) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_score_returns_a_usable_block(backend: str) -> None:
    """An error inside ``score`` gives the block back; the next lease of it scores correctly."""
    stage = make_stage(backend, SMALL, block_rows=1_024, concurrent=1)
    X = ROWS[:1_000]
    want = score_blocks(CpuStage(SMALL, block_rows=1_024), X)
    with pytest.raises(ValueError), stage.lease() as lease:
        lease.X[:1_000] = X
        lease.score(stage.block_rows + 1)
    assert_equal(score_blocks(stage, X), want)


class _Slot:
    """Only what waited_on_error reads of a staging slot: its wait (which may itself fail)."""

    def __init__(self, fails: bool = False) -> None:
        self.waits, self.fails = 0, fails

    def wait(self) -> None:
        self.waits += 1
        if self.fails:
            raise RuntimeError("the stream is gone too")


def test_device_work_is_waited_for_on_error_only() -> None:
    """Both GPU stages (score's and recommend's) wrap a slot's queued work in waited_on_error: an
    error waits for the slot's stream before it propagates (unchanged, even when the wait fails);
    success adds no wait of its own."""
    slot = _Slot()
    with waited_on_error(slot):
        pass
    assert slot.waits == 0
    with pytest.raises(ValueError, match="launch"), waited_on_error(slot):
        raise ValueError("launch failed")
    assert slot.waits == 1
    broken = _Slot(fails=True)
    with pytest.raises(KeyboardInterrupt), waited_on_error(broken):
        raise KeyboardInterrupt
    assert broken.waits == 1


@gpu
def test_failure_after_the_upload_waits_for_the_copy() -> None:
    """The launch fails after the upload is queued: the slot comes back only once its copy is done,
    and the next lease of that same slot scores correctly."""
    from kernels.score_rows import KernelParams

    stage = gpu_stage(SMALL, block_rows=65_536, concurrent=1, slots=2)
    good = stage._params
    # A parameter set the launch rejects (shared memory over any limit), as a kernel error would.
    stage._params = KernelParams(good.dtype, 10**6, good.n_features, *(getattr(good, f) for f in (
        "fill_s", "a_s", "d_s", "centroids", "fill_p", "a_p", "d_p", "coef", "intercept")))
    X = make_rows(65_536, 21, seed=11)
    with pytest.raises(ValueError, match="shared"), stage.lease() as lease:
        failed = lease.slot
        lease.X[:] = X
        lease.score(65_536)
    stage._params = good
    held = []
    while True:  # lease until the failed slot comes round again
        lease = stage.lease()
        if lease.slot is failed:
            break
        held.append(lease)
    with lease:
        lease.X[:] = X
        r = lease.score(65_536)
    for other in held:
        other.__exit__(None, None, None)
    assert_equal((r.segment, r.distance, r.propensity, r.inf_col, r.nulls),
                 score_blocks(CpuStage(SMALL, block_rows=65_536), X))


# ---------------------------------------------------------------- copies and slots


@gpu
def test_upload_moves_n_times_f_times_8_bytes() -> None:
    """Per block the host-to-device bytes are the block's: gap rows are neither sent nor overwritten."""
    import cupy as cp

    stage = gpu_stage(SMALL, block_rows=8_192, concurrent=1, slots=2)
    for n in (1, 777, 8_192):
        with stage.lease() as lease:
            slot = lease.slot
            slot.device_X.fill(cp.float64(-7.0))  # sentinel in the device buffer (legacy stream)
            cp.cuda.Device().synchronize()        # the slot's stream does not wait for that one
            lease.X[...] = 3.0
            before = slot.h2d_bytes
            lease.score(n)
            assert slot.h2d_bytes - before == n * 21 * 8
            dev = cp.asnumpy(slot.device_X).reshape(21, slot.rows).T
            assert (dev[:n] == 3.0).all()
            assert (dev[n:] == -7.0).all()  # rows past n never moved


@gpu
def test_pageable_fallback_scores_the_same_and_warns_once() -> None:
    import cupy as cp

    from engine.io import device

    stage = gpu_stage(SMALL, pin=False)
    assert not any(s.pinned for s in stage.slots)
    assert_equal(score_blocks(stage, ROWS), score_blocks(CpuStage(SMALL, block_rows=4_096), ROWS))
    # A real refusal: pages registered twice (cudaErrorHostMemoryAlreadyRegistered).
    a, b = np.zeros(1 << 20), np.zeros(1 << 20)  # 8 MB each: their own pages
    for arr in (a, b):
        cp.cuda.runtime.hostRegister(arr.ctypes.data, arr.nbytes, 0)
    device._warned = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert device._register(cp, a) is False
            assert device._register(cp, b) is False
        assert sum("page-lock" in str(w.message) for w in caught) == 1
    finally:
        for arr in (a, b):
            cp.cuda.runtime.hostUnregister(arr.ctypes.data)


@gpu
def test_stage_is_shared_by_threads_without_allocating() -> None:
    """16 threads through one stage: exact results, no pinned or device allocation per lease."""
    import cupy as cp

    stage = gpu_stage(SMALL, block_rows=2_048, concurrent=2, slots=16)
    score_blocks(stage, ROWS[:2_048])  # warm the pools
    pinned_before = cp.get_default_pinned_memory_pool().n_free_blocks()
    used_before = cp.get_default_memory_pool().used_bytes()
    results: dict[int, tuple[np.ndarray, ...]] = {}
    chunks = np.array_split(np.arange(ROWS.shape[0]), 16)

    def work(i: int) -> None:
        results[i] = score_blocks(stage, ROWS[chunks[i]])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = tuple(np.concatenate([results[i][c] for i in range(16)]) for c in range(4))
    nulls = sum(results[i][4] for i in range(16))
    assert_equal((*got, nulls), score_blocks(CpuStage(SMALL, block_rows=4_096), ROWS))
    assert cp.get_default_pinned_memory_pool().n_free_blocks() == pinned_before
    assert cp.get_default_memory_pool().used_bytes() == used_before


# ---------------------------------------------------------------- the dense (cuBLAS) path


@gpu
@pytest.mark.parametrize("concurrent", [1, 4])
def test_dense_path_under_16_threads(concurrent: int) -> None:
    """The cuBLAS path from 16 threads, each slot's work on its own stream: the twin's results."""
    stage = gpu_stage(SMALL, block_rows=1_024, concurrent=concurrent, slots=16, fused=False)
    assert not stage.fused
    results: dict[int, tuple[np.ndarray, ...]] = {}
    chunks = np.array_split(np.arange(ROWS.shape[0]), 16)

    def work(i: int) -> None:
        results[i] = score_blocks(stage, ROWS[chunks[i]])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = tuple(np.concatenate([results[i][c] for i in range(16)]) for c in range(4))
    assert_close_to_twin(SMALL, ROWS, (*got, sum(results[i][4] for i in range(16))))


@gpu
def test_dense_model_parity_with_the_cpu_stage() -> None:
    """A model over any GPU's shared memory takes cuBLAS; its scores agree with the CPU stage's."""
    stage = gpu_stage(DENSE, block_rows=1_024)
    assert not stage.fused
    got = score_blocks(stage, DENSE_ROWS)
    cpu = score_blocks(CpuStage(DENSE, block_rows=1_024), DENSE_ROWS)
    assert_close_to_twin(DENSE, DENSE_ROWS, got)
    assert (got[0] == cpu[0]).mean() > 0.999
    np.testing.assert_array_equal(got[3], cpu[3])
    np.testing.assert_array_equal(got[4], cpu[4])


@gpu
def test_cublas_handle_runs_on_the_slot_stream() -> None:
    """The GEMMs of a block are queued on its slot's stream, not the legacy default stream."""
    import cupy as cp
    from cupy_backends.cuda.libs import cublas

    stage = gpu_stage(SMALL, block_rows=1_024, concurrent=2, fused=False)
    for _ in range(3):
        with stage.lease() as lease:
            lease.X[:500] = ROWS[:500]
            lease.score(500)
            handle = cp.cuda.device.get_cublas_handle()
            assert cublas.getStream(handle) == lease.slot.stream.ptr != 0


@gpu
def test_empty_block_and_bad_n() -> None:
    stage = gpu_stage(make_model(3, 4), block_rows=1_024, concurrent=1)
    with stage.lease() as lease:
        r = lease.score(0)
        assert r.segment.shape == (0,) and r.nulls.tolist() == [0, 0, 0, 0]
        with pytest.raises(ValueError):
            lease.score(stage.block_rows + 1)
