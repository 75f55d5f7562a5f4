"""Argument checks and launch helpers shared by the kernel twins and CUDA entry points.

Both paths of a kernel run the same checks, so a bad call fails the same way on CPU
and GPU. CuPy is imported only inside the CUDA-only helpers.
"""

from __future__ import annotations

import functools
from typing import Any

SUPPORTED_DTYPES = ("float32", "float64")


def matrix_dtype(X: Any) -> Any:
    """Return X's dtype after checking that X is a 2-D float32/float64 matrix."""
    if getattr(X, "ndim", None) != 2:
        raise ValueError(
            f"X must be a 2-D (n_rows, n_features) matrix, got shape {getattr(X, 'shape', None)}"
        )
    if str(X.dtype) not in SUPPORTED_DTYPES:
        raise TypeError(f"X must be float32 or float64, got {X.dtype}")
    return X.dtype


def column_param(xp: Any, p: Any, name: str, n_features: int, dtype: Any) -> Any:
    """Return ``p`` as a contiguous length-``n_features`` vector of ``dtype`` in namespace ``xp``."""
    v = xp.asarray(p, dtype=dtype)
    if v.shape != (n_features,):
        raise ValueError(f"{name} must have shape ({n_features},), got {tuple(v.shape)}")
    return xp.ascontiguousarray(v) if hasattr(xp, "ascontiguousarray") else v


def fortran(xp: Any, a: Any) -> Any:
    """Column-major view or copy of ``a``; the one NumPy/CuPy-only layout call, guarded here."""
    f = getattr(xp, "asfortranarray", None)
    return a if f is None else f(a)


def check_out(out: Any, shape: tuple[int, int], dtype: Any) -> None:
    """Check a caller-provided output matrix: right shape, dtype and column-major layout."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.f_contiguous:
        raise ValueError("out must be Fortran-contiguous (column-major)")


def require_cupy_array(X: Any) -> Any:
    """Return the cupy module after checking that X already lives on the device.

    The CUDA entry points never move the big matrix between host and device
    themselves: that is engine/io's job, and a hidden copy would hide the cost.
    """
    import cupy

    if not isinstance(X, cupy.ndarray):
        raise TypeError(f"X must be a cupy.ndarray for the CUDA path, got {type(X).__name__}")
    return cupy


@functools.cache
def multiprocessor_count(device: int) -> int:
    """Number of SMs of ``device``, cached because launches ask for it every call."""
    import cupy

    return int(cupy.cuda.runtime.getDeviceProperties(device)["multiProcessorCount"])
