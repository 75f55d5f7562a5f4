"""kernels/standardize: the xp twin against a plain reference, and CUDA against the twin."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kernels.standardize import (
    column_moments,
    minmax_scale,
    minmax_scale_cuda,
    standardize,
    standardize_cuda,
)

DTYPES = (np.float32, np.float64)
# Tolerance per dtype; the twin and the kernel do the same operations in the same
# order, so in practice they agree exactly.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def make_data(
    n: int, n_features: int, dtype: type, order: str = "F", seed: int = 0, nan_frac: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(3.0, 2.0, size=(n, n_features))
    X[rng.random(X.shape) < nan_frac] = np.nan
    X = np.asarray(X, dtype=dtype, order=order)
    fill = rng.normal(size=n_features).astype(dtype)
    mean = rng.normal(3.0, 1.0, size=n_features).astype(dtype)
    inv_scale = rng.uniform(0.2, 2.0, size=n_features).astype(dtype)
    return X, fill, mean, inv_scale


def reference(
    X: np.ndarray, fill: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray
) -> np.ndarray:
    Z = np.empty(X.shape, dtype=X.dtype)
    for j in range(X.shape[1]):
        col = X[:, j]
        col = np.where(np.isnan(col), fill[j], col)
        Z[:, j] = (col - mean[j]) * inv_scale[j]
    return Z


# ---------------------------------------------------------------- twin on the CPU


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_matches_reference(dtype: type, order: str) -> None:
    X, fill, mean, inv_scale = make_data(503, 7, dtype, order)
    assert np.isnan(X).any()
    Z = standardize(X, fill, mean, inv_scale, xp=np)
    assert Z.dtype == dtype
    assert Z.shape == X.shape
    assert Z.flags.f_contiguous
    assert not np.isnan(Z).any()
    np.testing.assert_allclose(Z, reference(X, fill, mean, inv_scale), rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_inf_is_not_missing(dtype: type) -> None:
    X = np.array([[np.inf, np.nan], [-np.inf, 1.0]], dtype=dtype)
    Z = standardize(X, [5.0, 7.0], [1.0, 1.0], [2.0, 2.0], xp=np)
    np.testing.assert_array_equal(Z, np.array([[np.inf, 12.0], [-np.inf, 0.0]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_params_cast_to_x_dtype(dtype: type) -> None:
    X, fill, mean, inv_scale = make_data(10, 3, dtype)
    # float64 / list parameters must not promote a float32 result.
    Z = standardize(X, fill.astype(np.float64), list(mean), inv_scale.astype(np.float64), xp=np)
    assert Z.dtype == dtype


def test_twin_out_and_in_place() -> None:
    X, fill, mean, inv_scale = make_data(50, 4, np.float64)
    expected = reference(X, fill, mean, inv_scale)
    out = np.empty(X.shape, dtype=X.dtype, order="F")
    assert standardize(X, fill, mean, inv_scale, xp=np, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # In place: X is already Fortran-ordered float64.
    assert standardize(X, fill, mean, inv_scale, xp=np, out=X) is X
    np.testing.assert_allclose(X, expected, rtol=1e-12)


def test_twin_rejects_bad_arguments() -> None:
    X, fill, mean, inv_scale = make_data(5, 3, np.float32)
    with pytest.raises(TypeError):
        standardize(np.zeros((5, 3), np.int64), fill, mean, inv_scale, xp=np)
    with pytest.raises(ValueError):
        standardize(X[:, 0], fill, mean, inv_scale, xp=np)
    with pytest.raises(ValueError):
        standardize(X, fill[:2], mean, inv_scale, xp=np)
    with pytest.raises(ValueError):
        standardize(X, fill, mean, inv_scale, xp=np, out=np.empty((5, 3), np.float32, order="C"))
    with pytest.raises(ValueError):
        standardize(X, fill, mean, inv_scale, xp=np, out=np.empty((5, 2), np.float32, order="F"))
    with pytest.raises(TypeError):
        standardize(X, fill, mean, inv_scale, xp=np, out=np.empty((5, 3), np.float64, order="F"))


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (4, 0)])
def test_twin_degenerate_shapes(shape: tuple[int, int]) -> None:
    X = np.full(shape, np.nan, dtype=np.float32)
    F = shape[1]
    Z = standardize(X, np.ones(F), np.zeros(F), np.full(F, 2.0), xp=np)
    assert Z.shape == shape and Z.dtype == np.float32
    assert np.all(Z == 2.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_minmax_scale_twin(dtype: type) -> None:
    X, fill, _, _ = make_data(100, 5, dtype)
    filled = np.where(np.isnan(X), fill, X)
    lo, hi = filled.min(axis=0), filled.max(axis=0)
    inv_range = (1 / (hi - lo)).astype(dtype)
    Z = minmax_scale(X, fill, lo, inv_range, xp=np)
    assert Z.dtype == dtype and Z.flags.f_contiguous
    np.testing.assert_allclose(Z, (filled - lo) * inv_range, rtol=RTOL[dtype])
    atol = 10 * np.finfo(dtype).eps
    assert Z.min() >= -atol and Z.max() <= 1 + atol


@pytest.mark.parametrize("dtype", DTYPES)
def test_column_moments_matches_nan_functions(dtype: type) -> None:
    X, *_ = make_data(1000, 6, dtype, nan_frac=0.2)
    X[:, 2] = np.nan  # a column with no values at all
    X[:, 4] = 1.5  # a constant column
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" / invalid-value warnings
        mean, std, nulls = column_moments(X, xp=np)
    assert mean.dtype == np.float64 and std.dtype == np.float64 and nulls.dtype == np.int64
    np.testing.assert_array_equal(nulls, np.isnan(X).sum(axis=0))
    X64 = X.astype(np.float64)
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(mean[keep], np.nanmean(X64[:, keep], axis=0), rtol=1e-12)
    np.testing.assert_allclose(std[keep], np.nanstd(X64[:, keep], axis=0, ddof=0), rtol=1e-10)
    assert np.isnan(mean[2]) and np.isnan(std[2]) and nulls[2] == 1000
    assert std[4] == 0.0


# ---------------------------------------------------------------- CUDA against the twin

GPU_SIZES = [0, 1, 255, 256, 257, 1000, 300_001]
GPU_FEATURES = [1, 20, 70]


@pytest.mark.gpu
@pytest.mark.parametrize("n_features", GPU_FEATURES)
@pytest.mark.parametrize("n", GPU_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_twin(dtype: type, n: int, n_features: int) -> None:
    cp = pytest.importorskip("cupy")
    X, fill, mean, inv_scale = make_data(n, n_features, dtype, order="F", seed=n + n_features)
    X[: min(n, 3), 0] = [np.inf, -np.inf, 0.0][: min(n, 3)]
    Xd = cp.asarray(X, order="F")
    got = standardize_cuda(Xd, cp.asarray(fill), cp.asarray(mean), cp.asarray(inv_scale))
    want = standardize(Xd, cp.asarray(fill), cp.asarray(mean), cp.asarray(inv_scale), xp=cp)
    assert isinstance(got, cp.ndarray)
    assert got.dtype == dtype and got.shape == (n, n_features) and got.flags.f_contiguous
    np.testing.assert_allclose(cp.asnumpy(got), cp.asnumpy(want), rtol=RTOL[dtype], atol=0)
    np.testing.assert_allclose(
        cp.asnumpy(got), reference(X, fill, mean, inv_scale), rtol=RTOL[dtype], atol=0
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_c_order_host_params_and_in_place(dtype: type) -> None:
    cp = pytest.importorskip("cupy")
    X, fill, mean, inv_scale = make_data(777, 9, dtype, order="C")
    expected = reference(X, fill, mean, inv_scale)
    Xd = cp.asarray(X)  # C-ordered on the device: the wrapper makes it column-major
    got = standardize_cuda(Xd, fill, mean, inv_scale)  # host parameters are fine
    assert got.flags.f_contiguous
    np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=RTOL[dtype])
    Xf = cp.asfortranarray(Xd)
    assert standardize_cuda(Xf, fill, mean, inv_scale, out=Xf) is Xf
    np.testing.assert_allclose(cp.asnumpy(Xf), expected, rtol=RTOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_minmax_scale_cuda_matches_twin(dtype: type) -> None:
    cp = pytest.importorskip("cupy")
    X, fill, lo, inv_range = make_data(1001, 11, dtype)
    Xd = cp.asarray(X)
    got = minmax_scale_cuda(Xd, fill, lo, inv_range)
    want = minmax_scale(Xd, fill, lo, inv_range, xp=cp)
    np.testing.assert_allclose(cp.asnumpy(got), cp.asnumpy(want), rtol=RTOL[dtype])


@pytest.mark.gpu
def test_cuda_rejects_bad_arguments() -> None:
    cp = pytest.importorskip("cupy")
    X, fill, mean, inv_scale = make_data(5, 3, np.float32)
    with pytest.raises(TypeError):
        standardize_cuda(X, fill, mean, inv_scale)  # host matrix: no hidden transfer
    with pytest.raises(TypeError):
        standardize_cuda(cp.asarray(X).astype(cp.float16), fill, mean, inv_scale)
    with pytest.raises(ValueError):
        standardize_cuda(cp.asarray(X), fill[:2], mean, inv_scale)
    with pytest.raises(ValueError):
        standardize_cuda(cp.asarray(X), fill, mean, inv_scale, out=cp.empty((5, 3), cp.float32))


@pytest.mark.gpu
def test_column_moments_cupy_matches_numpy() -> None:
    cp = pytest.importorskip("cupy")
    X, *_ = make_data(2000, 5, np.float32, nan_frac=0.3)
    for got, want in zip(
        column_moments(cp.asarray(X), xp=cp), column_moments(X, xp=np), strict=True
    ):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-12)
