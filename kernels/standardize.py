"""Column-wise imputation + affine scaling: ``kernels/standardize.cu`` and its twin.

``Z = (where(isnan(X), fill, X) - mean) * inv_scale`` per column. NaN is the only
missing value; ±inf passes through the arithmetic (the engine deals with it elsewhere).
Output has X's dtype and is column-major (Fortran order), the layout every kernel
in this package reads.
"""

from __future__ import annotations

from typing import Any

from kernels import _loader
from kernels._validate import (
    check_out,
    column_param,
    fortran,
    matrix_dtype,
    multiprocessor_count,
    require_cupy_array,
)

_BLOCK = 256
# Enough resident blocks to fill every SM several times over; more only re-reads params.
_BLOCKS_PER_SM = 32
_MAX_GRID_Y = 65535

__all__ = [
    "column_moments",
    "minmax_scale",
    "minmax_scale_cuda",
    "standardize",
    "standardize_cuda",
]


def standardize(
    X: Any, fill: Any, mean: Any, inv_scale: Any, *, xp: Any, out: Any | None = None
) -> Any:
    """Impute NaN with ``fill`` then return ``(X - mean) * inv_scale``, column-wise.

    Twin of :func:`standardize_cuda`, written with ``xp.*`` only so that it runs with
    NumPy or CuPy.

    Args:
        X: (n_rows, n_features) float32 or float64 matrix, any memory order.
        fill, mean, inv_scale: length-n_features vectors, cast to X's dtype.
        xp: the array namespace of X (numpy or cupy).
        out: optional Fortran-ordered (n_rows, n_features) matrix of X's dtype to write
            into; it may be X itself when X is already Fortran-ordered.

    Returns:
        The standardized matrix, X's dtype, Fortran order (``out`` if given).
    """
    dtype = matrix_dtype(X)
    n, n_features = X.shape
    fill = column_param(xp, fill, "fill", n_features, dtype)
    mean = column_param(xp, mean, "mean", n_features, dtype)
    inv_scale = column_param(xp, inv_scale, "inv_scale", n_features, dtype)
    if out is None:
        out = xp.empty((n, n_features), dtype=dtype, order="F")
    else:
        check_out(out, (n, n_features), dtype)
    Xf = fortran(xp, X)
    filled = xp.where(xp.isnan(Xf), fill, Xf)
    # Same operation order as the kernel ((x - m) * s, no fusable multiply-add), so
    # both paths round identically.
    xp.subtract(filled, mean, out=out)
    xp.multiply(out, inv_scale, out=out)
    return out


def standardize_cuda(
    X: Any, fill: Any, mean: Any, inv_scale: Any, *, out: Any | None = None
) -> Any:
    """CUDA version of :func:`standardize` (same arguments minus ``xp``).

    X must be a ``cupy.ndarray``; it is made Fortran-ordered first (a copy if it is not
    already). Parameters may be host or device arrays; they are tiny and moved as needed.
    ``out`` may be X itself (in place) when X is already Fortran-ordered and of a
    supported dtype.
    """
    cp = require_cupy_array(X)
    dtype = matrix_dtype(X)
    n, n_features = X.shape
    fill = column_param(cp, fill, "fill", n_features, dtype)
    mean = column_param(cp, mean, "mean", n_features, dtype)
    inv_scale = column_param(cp, inv_scale, "inv_scale", n_features, dtype)
    if out is None:
        out = cp.empty((n, n_features), dtype=dtype, order="F")
    else:
        require_cupy_array(out)
        check_out(out, (n, n_features), dtype)
    if n == 0 or n_features == 0:
        return out
    Xf = cp.asfortranarray(X)
    suffix = "f32" if dtype == cp.float32 else "f64"
    kernel = _loader.get_kernel("standardize", f"engine_standardize_{suffix}")
    grid_y = min(n_features, _MAX_GRID_Y)
    sms = multiprocessor_count(cp.cuda.runtime.getDevice())
    blocks_for_rows = -(-n // _BLOCK)
    grid_x = max(1, min(blocks_for_rows, (sms * _BLOCKS_PER_SM) // grid_y))
    kernel(
        (grid_x, grid_y),
        (_BLOCK,),
        (Xf, fill, mean, inv_scale, out, cp.int64(n), cp.int32(n_features)),
    )
    return out


def minmax_scale(
    X: Any, fill: Any, lo: Any, inv_range: Any, *, xp: Any, out: Any | None = None
) -> Any:
    """Impute NaN with ``fill`` then return ``(X - lo) * inv_range``, column-wise.

    Min-max scaling is standardization with ``mean = lo`` and
    ``inv_scale = inv_range = 1 / (hi - lo)``, so this simply calls :func:`standardize`
    (and :func:`minmax_scale_cuda` the same kernel). The caller chooses what
    ``inv_range`` is for constant columns (hi == lo), typically 0 or 1.
    """
    return standardize(X, fill, lo, inv_range, xp=xp, out=out)


def minmax_scale_cuda(X: Any, fill: Any, lo: Any, inv_range: Any, *, out: Any | None = None) -> Any:
    """CUDA version of :func:`minmax_scale`; runs the standardize kernel."""
    return standardize_cuda(X, fill, lo, inv_range, out=out)


def column_moments(X: Any, *, xp: Any) -> tuple[Any, Any, Any]:
    """NaN-aware per-column mean, population std (ddof=0) and count of NaN.

    Equivalent to ``nanmean``/``nanstd(ddof=0)``, but accumulated in float64 (sums of
    millions of float32 values lose digits otherwise) and without "empty slice"
    warnings: a column with no values gets NaN mean and std. ±inf is not missing and
    yields inf/NaN statistics; the engine screens it out before fitting.

    Returns:
        ``(mean, std, null_count)``: float64, float64 and int64 vectors of length
        n_features, in namespace ``xp``.
    """
    matrix_dtype(X)
    n = X.shape[0]
    missing = xp.isnan(X)
    null_count = xp.sum(missing, axis=0, dtype=xp.int64)
    count = n - null_count
    has_values = count > 0
    # max(count, 1) keeps 0/0 (and its warning) out; those columns are set to NaN below.
    denom = xp.maximum(count, 1).astype(xp.float64)
    total = xp.sum(xp.where(missing, 0, X), axis=0, dtype=xp.float64)
    mean = xp.where(has_values, total / denom, xp.nan)
    # Two-pass variance: E[(x - mean)^2] is stable where E[x^2] - mean^2 cancels.
    dev = xp.where(missing, 0.0, X.astype(xp.float64) - mean)
    var = xp.sum(dev * dev, axis=0) / denom
    std = xp.where(has_values, xp.sqrt(var), xp.nan)
    return mean, std, null_count
