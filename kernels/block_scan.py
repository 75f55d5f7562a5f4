"""One pass over a block the scoring kernels do not score: missing values and out-of-range values.

``engine recommend`` fills its blocks on the host and never runs the scoring kernel, which
would otherwise report, in its own pass, each row's first ±inf (or beyond ``max_abs``)
feature and the NaN count per feature. :func:`scan_block_numpy` does it with NumPy (five
passes and three block-sized temporaries); :func:`scan_block` is its compiled twin (numba
``nogil``, disk-cached, as every CPU kernel here: :mod:`kernels._numba`): one pass, no
temporary, without the GIL, so two task threads scan their blocks at once.

Both read rows ``[0, rows)`` of a Fortran-contiguous float64 ``(>= rows, F)`` buffer (the block
loop's own buffer, whole, so that the compiled scan has one type whatever the block's
length), add the NaN count of each column to ``nulls`` (int64, length F), write each row's
first column holding ±inf or a finite value with ``|x| > max_abs`` into ``first[:rows]``
(int32, -1: none) and return how many rows have one. Exact integers: the twins agree exactly.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from kernels._numba import LazyKernel

_lock = threading.Lock()
_loaded = False


def scan_block_numpy(X: np.ndarray, rows: int, max_abs: float, nulls: np.ndarray, first: np.ndarray) -> int:
    """The NumPy twin: ``nulls += NaN per column``; ``first[:rows]`` = each row's first out-of-range column."""
    X = X[:rows]
    with np.errstate(invalid="ignore"):
        out = np.abs(X) > max_abs        # ±inf too; NaN (missing) is not out of range
        nulls += np.isnan(X).sum(axis=0)
    first[:rows] = -1
    hit = np.flatnonzero(out.any(axis=1))
    if hit.size:
        first[hit] = np.argmax(out[hit], axis=1)
    return int(hit.size)


def _body(X, rows, max_abs, nulls, first):  # noqa: ANN001, ANN202 (numba types)  # pragma: no cover - compiled
    F = X.shape[1]
    for r in range(rows):
        first[r] = -1
    hits = 0
    # Column by column (a Fortran block's memory order); a row's first hit is the lowest column,
    # so a later column never overwrites it.
    for f in range(F):
        nan = 0
        for r in range(rows):
            v = X[r, f]
            nan += 1 if v != v else 0
            if abs(v) > max_abs and first[r] < 0:
                first[r] = f
                hits += 1
        nulls[f] += nan
    return hits


_KERNEL = LazyKernel(_body, "block scan")


def _compiled() -> Any:
    return _KERNEL.get()


def scan_block(X: np.ndarray, rows: int, max_abs: float, nulls: np.ndarray, first: np.ndarray) -> int:
    """The compiled twin of :func:`scan_block_numpy` (same arguments, same results); runs without the GIL."""
    if X.ndim != 2 or X.dtype != np.float64 or not X.flags.f_contiguous or not 0 <= rows <= X.shape[0]:
        raise ValueError(f"need a Fortran-contiguous float64 (>= {rows}, F) buffer, got {X.dtype} {X.shape}")
    if nulls.dtype != np.int64 or nulls.shape != (X.shape[1],):
        raise ValueError(f"nulls must be int64 of length {X.shape[1]}")
    if first.dtype != np.int32 or first.ndim != 1 or first.shape[0] < rows:
        raise ValueError(f"first must be int32 of at least {rows} rows")
    kernel = _compiled()
    args = (X, int(rows), float(max_abs), nulls, first)
    global _loaded
    if _loaded:
        return int(kernel(*args))
    from kernels._numba import no_blas_probe

    with _lock, no_blas_probe():   # the first call loads (or compiles): once, on one thread
        hits = int(kernel(*args))
    _loaded = True
    return hits


def warm() -> None:
    """Compile the scan, or load it from numba's cache, with a one-row call (the run's types)."""
    scan_block(np.zeros((1, 1), order="F"), 1, 1.0, np.zeros(1, np.int64), np.empty(1, np.int32))
