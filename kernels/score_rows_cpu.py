"""Fused row scoring on the CPU: the compiled twin of ``kernels/score_rows.cu``.

One call scores a whole block without the GIL (numba ``njit(nogil=True)``): per row,
impute (NaN *and* ±inf take the head's fill value), scale (``x * a + d``), the squared
distance to every centroid, the nearest one (lowest index on ties; a first NaN wins,
as in the twin), its distance ``sqrt(max(d2, 0))``, the logit and an overflow-free
sigmoid; on the way it records each row's first ±inf feature and counts the NaN of
every feature. Many small NumPy calls per block contend for the GIL across threads
(per-task compute grew 7x from 1 to 16 threads); one compiled call per block does not.

The arithmetic follows the NumPy twin (:func:`kernels.score_rows.score_rows`) step for
step: ``x * a + d`` rounded twice (no FMA contraction without fastmath), squared
differences summed over features in order, so float64 results match it bit for bit in
practice; ``segment`` is int32, ``distance`` and ``propensity`` float32.

Rows are processed in tiles of :data:`TILE` rows, feature by feature, so that the inner
loops run over contiguous rows of the Fortran-ordered block (SIMD across rows) and the
per-centroid accumulators stay in L1. Measured on one core of the 2-core CI machine:
about 12M rows/s for k = 8 and 21 features in float64, against 1.4M rows/s for the
NumPy twin.

Compiled once per process and dtype on first call; with ``cache=True`` the machine code
is also kept on disk (``__pycache__`` beside this file, or ``$NUMBA_CACHE_DIR``), and
where no cache location is writable the kernel is compiled per process instead.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from kernels._numba import compile_nogil
from kernels._validate import column_param, matrix_dtype

#: Rows per tile: k accumulators of TILE values stay in L1 for any sensible k.
TILE = 128

__all__ = ["TILE", "compile_seconds", "no_levels", "prepare_params", "score_block", "score_rows_cpu", "warm"]

_lock = threading.Lock()
_kernel: Any = None
_compile_seconds: dict[str, float] = {}


def _body(X, ld, n, fill_s, a_s, d_s, C, fill_p, a_p, d_p, w, b,  # noqa: ANN001 (numba types)
          segment, distance, propensity, inf_col, nulls,
          levels, cat_logit, cat_dist):  # pragma: no cover - compiled
    # X is the block's flat column-major buffer (column j starts at j * ld): one 1-D type
    # whatever the block's shape, so numba compiles one version per dtype, not one per layout.
    n_features = fill_s.shape[0]
    k = C.shape[0]
    acc = np.empty((k, TILE), dtype=X.dtype)
    zs = np.empty(TILE, dtype=X.dtype)
    logit = np.empty(TILE, dtype=X.dtype)
    lvt = np.empty(TILE, dtype=np.int32)
    for r0 in range(0, n, TILE):
        m = min(TILE, n - r0)
        for r in range(m):
            logit[r] = 0.0
            inf_col[r0 + r] = -1
        for c in range(k):
            for r in range(m):
                acc[c, r] = 0.0
        for j in range(n_features):
            fs, as_, ds = fill_s[j], a_s[j], d_s[j]
            fp, ap, dp, wj = fill_p[j], a_p[j], d_p[j], w[j]
            n_nan = 0
            n_bad = 0
            # Branch-free so that LLVM vectorises across rows: x - x is 0 only for finite x.
            col = j * ld + r0
            for r in range(m):
                x = X[col + r]
                finite = (x - x) == 0.0
                n_nan += x != x
                n_bad += not finite
                xs = x if finite else fs
                xq = x if finite else fp
                zs[r] = xs * as_ + ds
                logit[r] += (xq * ap + dp) * wj
            nulls[j] += n_nan
            if n_bad > n_nan:  # some ±inf in this tile's column: rare, find the rows
                for r in range(m):
                    x = X[col + r]
                    if np.isinf(x) and inf_col[r0 + r] < 0:
                        inf_col[r0 + r] = j
            for c in range(k):
                cj = C[c, j]
                for r in range(m):
                    diff = zs[r] - cj
                    acc[c, r] += diff * diff
        # Categorical columns: each row's level (a global index into the level tables)
        # adds its logit term and, per centroid, its one-hot block's squared distance.
        # Rows innermost, as for the numeric features: a gather per centroid row of the table.
        for q in range(levels.shape[1]):
            for r in range(m):
                lv = levels[r0 + r, q]
                lvt[r] = lv
                logit[r] += cat_logit[lv]
            for c in range(k):
                for r in range(m):
                    acc[c, r] += cat_dist[c, lvt[r]]
        for r in range(m):
            best = acc[0, r]
            best_c = 0
            for c in range(1, k):
                d2 = acc[c, r]
                # The twin's rule: strictly smaller wins (lowest index keeps ties); a first NaN beats any number.
                if d2 < best or (np.isnan(d2) and not np.isnan(best)):
                    best = d2
                    best_c = c
            segment[r0 + r] = best_c
            bd = np.float64(best)
            distance[r0 + r] = np.sqrt(bd) if bd > 0.0 else (bd if np.isnan(bd) else 0.0)
            t = np.float64(logit[r]) + np.float64(b)
            e = np.exp(-abs(t))
            propensity[r0 + r] = 1.0 / (1.0 + e) if t >= 0.0 else e / (1.0 + e)


def _get_kernel() -> Any:
    """The compiled dispatcher, built on first use (numba is imported here, not at import)."""
    global _kernel
    if _kernel is None:
        with _lock:
            if _kernel is None:
                _kernel = compile_nogil(_body, "CPU scoring kernel")
    return _kernel


class _NoScipyLinalgHere:
    """An import hook that fails ``scipy.linalg`` imports of one thread only (see :func:`_no_blas_probe`)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if threading.get_ident() == self.thread and (fullname == "scipy.linalg"
                                                     or fullname.startswith("scipy.linalg.")):
            raise ImportError(f"{fullname} is not needed by the CPU scoring kernel")
        return None


@contextmanager
def _no_blas_probe() -> Iterator[None]:
    """Keep numba's first compile or cache load from importing ``scipy.linalg``.

    Initialising its CPU target, numba imports ``scipy.linalg`` only to learn whether
    BLAS is there for ``np.dot`` and friends, which this kernel never calls: 0.2-0.3 s of
    a scoring process's start, measured (0.86-0.94 s against 0.56-0.64 s to load the
    cached kernel in a fresh process). The import fails for this thread alone, for this
    one call, and only where nothing has imported ``scipy.linalg`` yet: other threads,
    and later imports, see scipy as usual.
    """
    if "scipy.linalg" in sys.modules:
        yield
        return
    hook = _NoScipyLinalgHere()
    sys.meta_path.insert(0, hook)  # type: ignore[arg-type]
    try:
        yield
    finally:
        sys.meta_path.remove(hook)  # type: ignore[arg-type]


def compile_seconds() -> dict[str, float]:
    """Seconds this process spent on the first call per dtype (compile or cache load)."""
    return dict(_compile_seconds)


def no_levels(rows: int, k: int, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The categorical inputs of a model without categorical columns: no level columns, empty tables."""
    return np.empty((rows, 0), np.int32), np.zeros(1, dtype), np.zeros((k, 1), dtype)


def score_block(X: np.ndarray, n: int, params: tuple[np.ndarray, ...], intercept: Any,
                segment: np.ndarray, distance: np.ndarray, propensity: np.ndarray,
                inf_col: np.ndarray, nulls: np.ndarray,
                cats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """Score rows ``[0, n)`` of a Fortran-contiguous ``(rows, F)`` block into the given output arrays.

    The low-level entry point for the engine's CPU stage (no checks, no allocation):
    ``params`` are the eight contiguous vectors/matrix ``(fill_s, a_s, d_s, centroids,
    fill_p, a_p, d_p, coef)`` in X's dtype; ``nulls`` (int64, length F) is added to;
    ``inf_col`` (int32) is overwritten with each row's first ±inf feature, -1 if none.
    ``cats`` is ``(levels, cat_logit, cat_dist)`` for models with categorical columns:
    ``levels`` a C-contiguous int32 ``(>= n, Q)`` matrix of global level indices, and the
    two level tables (see :func:`kernels.score_rows.score_rows`). Runs without the GIL.
    """
    if not X.flags.f_contiguous or X.ndim != 2 or not 0 <= n <= X.shape[0]:
        raise ValueError(f"need a Fortran-contiguous 2-D block of at least {n} rows, got shape {X.shape}")
    if cats is None:
        cats = no_levels(n, params[3].shape[0], X.dtype)
    levels, cat_logit, cat_dist = cats
    if levels.shape[0] < n or not levels.flags.c_contiguous:
        raise ValueError(f"levels must be a C-contiguous (>= {n}, Q) int32 matrix, got shape {levels.shape}")
    kernel = _get_kernel()
    flat = X.T.reshape(-1)  # a view: X.T of a Fortran array is C-contiguous
    key = X.dtype.name
    args = (flat, X.shape[0], n, *params, intercept, segment, distance, propensity, inf_col, nulls,
            levels, cat_logit, cat_dist)
    if key in _compile_seconds:
        kernel(*args)
        return
    import time

    t0 = time.perf_counter()
    with _lock, _no_blas_probe():  # the first call per dtype compiles or loads: once, one thread
        kernel(*args)
    _compile_seconds.setdefault(key, time.perf_counter() - t0)


def warm() -> float:
    """Compile (or load from the cache) the float64 kernel now; returns the seconds it took.

    The kernel does not depend on the model, so a process can pay this before it knows
    which model it will score with (the CLI starts it on a background thread first thing).
    """
    import time

    t0 = time.perf_counter()
    X = np.zeros((1, 1), order="F")
    one = np.ones(1)
    params = (one, one, one, np.zeros((1, 1)), one, one, one, one)
    score_block(X, 1, params, np.float64(0.0), np.empty(1, np.int32), np.empty(1, np.float32),
                np.empty(1, np.float32), np.empty(1, np.int32), np.zeros(1, np.int64))
    return time.perf_counter() - t0


def prepare_params(X: np.ndarray, fill_s: Any, a_s: Any, d_s: Any, centroids: Any, fill_p: Any,
                   a_p: Any, d_p: Any, coef: Any, intercept: Any) -> tuple[tuple[np.ndarray, ...], Any]:
    """The eight parameter arrays, contiguous in X's dtype, and the intercept as that dtype's scalar."""
    dtype = matrix_dtype(X)
    f = X.shape[1]
    C = np.ascontiguousarray(np.asarray(centroids, dtype=dtype))
    if C.ndim != 2 or C.shape[1] != f or C.shape[0] < 1:
        raise ValueError(f"centroids must have shape (k >= 1, {f}), got {tuple(C.shape)}")
    vecs = [column_param(np, p, name, f, dtype) for p, name in (
        (fill_s, "fill_s"), (a_s, "a_s"), (d_s, "d_s"), (fill_p, "fill_p"), (a_p, "a_p"), (d_p, "d_p"),
        (coef, "coef"))]
    b = np.asarray(intercept, dtype=dtype)
    if b.size != 1:
        raise ValueError(f"intercept must be a scalar, got shape {tuple(b.shape)}")
    fs, as_, ds, fp, ap, dp, w = vecs
    return (fs, as_, ds, C, fp, ap, dp, w), dtype.type(b.reshape(()))


def score_rows_cpu(X: Any, fill_s: Any, a_s: Any, d_s: Any, centroids: Any, fill_p: Any, a_p: Any,
                   d_p: Any, coef: Any, intercept: Any, *, levels: Any = None, cat_logit: Any = None,
                   cat_dist: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Compiled version of :func:`kernels.score_rows.score_rows` (same arguments minus ``xp``).

    Returns ``(segment, distance, propensity, inf_col, nulls)``: the twin's three outputs,
    each row's first ±inf feature index (-1 if none), and the NaN count per feature. X
    is made Fortran-contiguous first (a copy if it is not); ±inf is imputed like NaN.
    ``levels``, ``cat_logit``, ``cat_dist``: the categorical inputs, as in the twin.
    """
    dtype = matrix_dtype(X)
    Xf = np.asfortranarray(X)
    params, b = prepare_params(Xf, fill_s, a_s, d_s, centroids, fill_p, a_p, d_p, coef, intercept)
    n, f = Xf.shape
    segment = np.empty(n, dtype=np.int32)
    distance = np.empty(n, dtype=np.float32)
    propensity = np.empty(n, dtype=np.float32)
    inf_col = np.empty(n, dtype=np.int32)
    nulls = np.zeros(f, dtype=np.int64)
    cats = None
    if levels is not None:
        from kernels.score_rows import check_levels

        cats = check_levels(np, levels, cat_logit, cat_dist, n, params[3].shape[0], dtype)
    if n:
        score_block(Xf, n, params, b, segment, distance, propensity, inf_col, nulls, cats)
    return segment, distance, propensity, inf_col, nulls
