"""Categorical level inputs of the fused scoring kernels: numba and CUDA against the NumPy twin.

The reference is the expanded one-hot computation (what the level tables stand for):
each categorical column becomes a one-hot block appended to the scaled numeric row, the
centroids and coefficients get matching entries, and the twin's dense arithmetic is
checked against it; the compiled kernels are then checked against the twin.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.score_rows import score_rows, score_rows_cuda, score_rows_dense
from kernels.score_rows_cpu import score_rows_cpu

DTYPES = (np.float32, np.float64)
TOL = {np.float32: 2e-5, np.float64: 1e-9}


def make_problem(n: int, f: int, k: int, blocks: tuple[int, ...], dtype: type, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    X = rng.normal(1.0, 2.0, size=(n, f))
    X[rng.random(X.shape) < 0.05] = np.nan
    a = rng.uniform(0.3, 1.0, f)
    mean = rng.normal(size=f)
    offsets = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int32)
    n_levels = int(sum(blocks))
    local = np.stack([rng.integers(0, m, n) for m in blocks], axis=1).astype(np.int32)
    onehot_c = rng.uniform(0.0, 1.0, size=(k, n_levels))       # centroid entries of the one-hot blocks
    onehot_w = rng.normal(size=n_levels)                        # coefficients of the levels
    cat_dist = np.empty((k, n_levels))
    for o, m in zip(offsets, blocks):
        block = onehot_c[:, o:o + m]
        cat_dist[:, o:o + m] = 1.0 - 2.0 * block + (block * block).sum(axis=1, keepdims=True)
    params = {"fill_s": mean, "a_s": a, "d_s": -mean * a, "centroids": rng.normal(size=(k, f)),
              "fill_p": mean, "a_p": a, "d_p": -mean * a, "coef": rng.normal(size=f) / 3, "intercept": 0.2}
    cast = {key: (np.asarray(v, dtype=dtype) if key != "intercept" else dtype(v)) for key, v in params.items()}
    return {"X": np.asarray(X, dtype=dtype, order="F"), "params": cast, "levels": local + offsets,
            "cat_logit": onehot_w.astype(dtype), "cat_dist": cat_dist.astype(dtype),
            "onehot_c": onehot_c, "onehot_w": onehot_w, "n_levels": n_levels}


def expanded_reference(p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments, distances and propensities from the explicit one-hot expansion, in float64."""
    X = p["X"].astype(np.float64)
    q = {key: np.asarray(v, dtype=np.float64) for key, v in p["params"].items()}
    z = np.where(np.isfinite(X), X, q["fill_s"]) * q["a_s"] + q["d_s"]
    onehot = np.zeros((X.shape[0], p["n_levels"]))
    for col in p["levels"].T:
        onehot[np.arange(X.shape[0]), col] = 1.0
    Z = np.hstack([z, onehot])
    C = np.hstack([q["centroids"], p["onehot_c"]])
    d2 = ((Z[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    logit = Z @ np.concatenate([q["coef"], p["onehot_w"]]) + float(q["intercept"])
    return d2.argmin(axis=1), np.sqrt(d2.min(axis=1)), 1.0 / (1.0 + np.exp(-logit))


def _kwargs(p: dict) -> dict:
    return {"levels": p["levels"], "cat_logit": p["cat_logit"], "cat_dist": p["cat_dist"]}


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_equals_the_one_hot_expansion(dtype: type) -> None:
    p = make_problem(3000, 6, 5, (4, 7, 2), dtype)
    seg, dist, prop = score_rows(p["X"], **p["params"], xp=np, **_kwargs(p))
    ref_seg, ref_dist, ref_prop = expanded_reference(p)
    assert (seg == ref_seg).mean() > 0.999  # float32 rounding may flip a near tie
    np.testing.assert_allclose(prop, ref_prop, rtol=0, atol=max(TOL[dtype] * 10, 1e-6))
    np.testing.assert_allclose(dist[seg == ref_seg], ref_dist[seg == ref_seg], rtol=1e-4)
    if dtype is np.float64:
        np.testing.assert_array_equal(seg, ref_seg)
        np.testing.assert_allclose(prop, ref_prop, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_kernel_equals_twin_with_levels(dtype: type) -> None:
    p = make_problem(1000, 5, 9, (3, 50, 1, 6), dtype, seed=3)  # k > 8, a one-level column
    seg, dist, prop, inf_col, nulls = score_rows(p["X"], **p["params"], xp=np, flags=True, **_kwargs(p))
    s2, d2, p2, i2, n2 = score_rows_cpu(p["X"], **p["params"], **_kwargs(p))
    np.testing.assert_array_equal(s2, seg)
    np.testing.assert_allclose(d2, dist, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(p2, prop, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(i2, inf_col)
    np.testing.assert_array_equal(n2, nulls.astype(np.int64))


def test_dense_path_equals_twin_with_levels() -> None:
    p = make_problem(500, 4, 3, (5, 5), np.float64, seed=5)
    seg, dist, prop = score_rows(p["X"], **p["params"], xp=np, **_kwargs(p))
    s2, d2, p2, _, _ = score_rows_dense(p["X"], **p["params"], xp=np, **_kwargs(p))
    np.testing.assert_array_equal(s2, seg)
    np.testing.assert_allclose(p2, prop, atol=1e-7)
    np.testing.assert_allclose(d2, dist, rtol=1e-6, atol=1e-6)


def test_level_outside_the_tables_is_refused() -> None:
    p = make_problem(10, 2, 2, (3,), np.float64)
    p["levels"][4, 0] = 3
    with pytest.raises(ValueError, match="levels must lie in"):
        score_rows(p["X"], **p["params"], xp=np, **_kwargs(p))
    with pytest.raises(ValueError, match="levels must lie in"):
        score_rows_cpu(p["X"], **p["params"], **_kwargs(p))


# The problems are built here on every machine; only the device call needs a GPU.
GPU_CASES = [make_problem(4000, 7, k, (4, 50, 3), dtype, seed=k) for dtype in DTYPES for k in (3, 12)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(GPU_CASES)))
def test_cuda_kernel_equals_twin_with_levels(case: int) -> None:
    import cupy as cp

    p = GPU_CASES[case]
    dtype = p["X"].dtype.type
    seg, dist, prop, inf_col, nulls = score_rows(p["X"], **p["params"], xp=np, flags=True, **_kwargs(p))
    out = score_rows_cuda(cp.asarray(p["X"]), **p["params"], flags=True, levels=cp.asarray(p["levels"]),
                          cat_logit=p["cat_logit"], cat_dist=p["cat_dist"])
    s2, d2, p2, i2, n2 = (cp.asnumpy(a) for a in out)
    assert (s2 == seg).mean() > 0.999
    same = s2 == seg
    np.testing.assert_allclose(d2[same], dist[same], rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)
    np.testing.assert_allclose(p2, prop, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)
    np.testing.assert_array_equal(i2, inf_col)
    np.testing.assert_array_equal(n2, nulls)
