"""Fused row scoring on the CPU: the compiled twin of ``kernels/score_rows.cu``.

One call scores a whole block without the GIL (numba ``njit(nogil=True)``): per row,
impute (NaN, ±inf and finite values beyond :data:`MAX_INPUT_ABS` take the head's fill
value), scale (``x * a + d``), the squared distance to every centroid, the nearest one
(lowest index on ties; a first NaN wins, as in the twin), its distance
``sqrt(max(d2, 0))``, the logit and an overflow-free sigmoid; on the way it records each
row's first ±inf or too large feature and counts the NaN of every feature. Many small
NumPy calls per block contend for the GIL across threads; one compiled call does not.

Vectorised across rows, never across features, so every row's arithmetic keeps the
twin's order (:func:`kernels.score_rows.score_rows`): ``x * a + d`` rounded twice (no
FMA contraction without fastmath), squared differences summed over features in order,
then the categorical terms in column order. Rows go in tiles of :data:`TILE`: one pass
over the tile's columns (contiguous in the Fortran-ordered block) scales them into a
feature-major scratch and accumulates the logit for all rows at once; then distances in
register blocks of 4 centroids x 8 rows (32 independent sums, features innermost),
written out so that LLVM's SLP vectoriser packs them into SIMD registers (numba's
``NUMBA_SLP_VECTORIZE``, set by :mod:`kernels._numba`); then the nearest centroid by a
branch-free scan across rows, and ``exp`` in a loop of its own (a library call).
float64 results equal the twin bit for bit (tests/kernels, bench/kernel_bench.py).
``exp`` is glibc's here and libdevice's in the CUDA kernel: see score_rows.cu for how far
bit-identity goes across devices (segments and distances always; float32 propensities
as measured; float64 propensities within 1 ulp).

Measured on one core of the shared 2-core CI machine (CPU time, ``bench/kernel_bench.py``,
k = 8, F = 20, blocks of 16,384 rows): 23-26 ns a row, from 47-49 ns for the previous
tile-by-feature version (issue 23 measured 86.6 ns for it on a quiet machine's profile).

Compiled once per process and dtype on first call; with ``cache=True`` the machine code
is also kept on disk (``__pycache__`` beside this file, or ``$NUMBA_CACHE_DIR``), and
where no cache location is writable the kernel is compiled per process instead.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from kernels._numba import LazyKernel
from kernels._numba import no_blas_probe as _no_blas_probe
from kernels._validate import column_param, matrix_dtype
from kernels.score_rows import MAX_INPUT_ABS

#: Rows per tile: the tile's scaled inputs (F x TILE) and distances (k x TILE) stay in L1.
TILE = 128

__all__ = ["MAX_INPUT_ABS", "TILE", "compile_seconds", "no_levels", "prepare_params", "score_block", "score_rows_cpu", "warm"]

_lock = threading.Lock()
#: The kernel's tally arguments when nothing is tallied (empty: the kernel skips the step).
_NO_TALLY = (np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros(0, np.int64),
             np.zeros(0, np.float32), np.zeros(0, np.float32))
_compile_seconds: dict[str, float] = {}


def _body(X, ld, n, fill_s, a_s, d_s, C, fill_p, a_p, d_p, w, b,  # noqa: ANN001 (numba types)
          segment, distance, propensity, inf_col, nulls,
          levels, cat_logit, cat_dist,
          t_counts, t_sums, t_above, t_hist, cuts, edges):  # pragma: no cover - compiled
    # X is the block's flat column-major buffer (column j starts at j * ld): one 1-D type
    # whatever the block's shape, so numba compiles one version per dtype, not one per layout.
    # Unsigned indices below spare numba's negative-index wraparound, which blocks SIMD.
    n_features = fill_s.shape[0]
    k = C.shape[0]
    kp = (k + 3) // 4 * 4          # centroids padded to the 4 of a register block
    zero = np.zeros(1, dtype=X.dtype)[0]
    CP = np.empty(kp * n_features, dtype=X.dtype)   # centroids, padded with copies of the last
    for c in range(kp):
        for j in range(n_features):
            CP[c * n_features + j] = C[min(c, k - 1), j]
    ZS = np.empty(n_features * TILE, dtype=X.dtype)  # a tile's scaled segmenter inputs, feature-major
    D = np.empty(kp * TILE, dtype=X.dtype)           # its squared distances, centroid-major
    logit = np.empty(TILE, dtype=X.dtype)
    best = np.empty(TILE, dtype=X.dtype)
    best_c = np.empty(TILE, dtype=np.int32)
    lvt = np.empty(TILE, dtype=np.uint32)            # a tile's levels of one categorical column
    bins = np.empty(TILE, dtype=np.int32)            # a tile's histogram bins
    p32 = np.empty(TILE, dtype=np.float32)           # a tile's propensities as written
    tally = t_counts.shape[0] > 0
    n_cuts = cuts.shape[0]
    n_edges = edges.shape[0]
    n_cat = levels.shape[1]
    for r0 in range(0, n, TILE):
        m = min(TILE, n - r0)
        mm = (m + 7) // 8 * 8
        for r in range(TILE):
            logit[r] = zero
        for r in range(m):
            inf_col[r0 + r] = -1
        for j in range(n_features):
            fs, as_, ds = fill_s[j], a_s[j], d_s[j]
            fp, ap, dp, wj = fill_p[j], a_p[j], d_p[j], w[j]
            n_nan = 0
            n_bad = 0
            # Branch-free so that LLVM vectorises across rows. |x| <= MAX_INPUT_ABS is false for
            # NaN, ±inf and finite values too large to score: all imputed, the last two flagged.
            col = np.uint64(j * ld + r0)
            zj = np.uint64(j * TILE)
            for r in range(m):
                x = X[col + np.uint64(r)]
                ok = abs(x) <= MAX_INPUT_ABS
                n_nan += np.int64(x != x)
                n_bad += np.int64(not ok)
                xs = x if ok else fs
                xq = x if ok else fp
                ZS[zj + np.uint64(r)] = xs * as_ + ds
                logit[r] += (xq * ap + dp) * wj
            for r in range(m, mm):
                ZS[zj + np.uint64(r)] = zero
            nulls[j] += n_nan
            if n_bad > n_nan:  # some ±inf or too large value in this tile's column: rare, find the rows
                for r in range(m):
                    x = X[col + np.uint64(r)]
                    if not abs(x) <= MAX_INPUT_ABS and x == x and inf_col[r0 + r] < 0:
                        inf_col[r0 + r] = j
        # Distances: 4 centroids x 8 rows in 32 registers, features innermost in today's order,
        # so each row's sum is the twin's sum; the 8 rows' chains run side by side (SIMD).
        for c in range(0, kp, 4):
            cb = np.uint64(c * n_features)
            for r in range(0, mm, 8):
                s00 = s01 = s02 = s03 = s04 = s05 = s06 = s07 = zero
                s10 = s11 = s12 = s13 = s14 = s15 = s16 = s17 = zero
                s20 = s21 = s22 = s23 = s24 = s25 = s26 = s27 = zero
                s30 = s31 = s32 = s33 = s34 = s35 = s36 = s37 = zero
                for j in range(n_features):
                    cj = cb + np.uint64(j)
                    c0 = CP[cj + np.uint64(0 * n_features)]
                    c1 = CP[cj + np.uint64(1 * n_features)]
                    c2 = CP[cj + np.uint64(2 * n_features)]
                    c3 = CP[cj + np.uint64(3 * n_features)]
                    zj = np.uint64(j * TILE + r)
                    z = ZS[zj + np.uint64(0)]
                    d = z - c0
                    s00 += d * d
                    d = z - c1
                    s10 += d * d
                    d = z - c2
                    s20 += d * d
                    d = z - c3
                    s30 += d * d
                    z = ZS[zj + np.uint64(1)]
                    d = z - c0
                    s01 += d * d
                    d = z - c1
                    s11 += d * d
                    d = z - c2
                    s21 += d * d
                    d = z - c3
                    s31 += d * d
                    z = ZS[zj + np.uint64(2)]
                    d = z - c0
                    s02 += d * d
                    d = z - c1
                    s12 += d * d
                    d = z - c2
                    s22 += d * d
                    d = z - c3
                    s32 += d * d
                    z = ZS[zj + np.uint64(3)]
                    d = z - c0
                    s03 += d * d
                    d = z - c1
                    s13 += d * d
                    d = z - c2
                    s23 += d * d
                    d = z - c3
                    s33 += d * d
                    z = ZS[zj + np.uint64(4)]
                    d = z - c0
                    s04 += d * d
                    d = z - c1
                    s14 += d * d
                    d = z - c2
                    s24 += d * d
                    d = z - c3
                    s34 += d * d
                    z = ZS[zj + np.uint64(5)]
                    d = z - c0
                    s05 += d * d
                    d = z - c1
                    s15 += d * d
                    d = z - c2
                    s25 += d * d
                    d = z - c3
                    s35 += d * d
                    z = ZS[zj + np.uint64(6)]
                    d = z - c0
                    s06 += d * d
                    d = z - c1
                    s16 += d * d
                    d = z - c2
                    s26 += d * d
                    d = z - c3
                    s36 += d * d
                    z = ZS[zj + np.uint64(7)]
                    d = z - c0
                    s07 += d * d
                    d = z - c1
                    s17 += d * d
                    d = z - c2
                    s27 += d * d
                    d = z - c3
                    s37 += d * d
                db = np.uint64((c + 0) * TILE + r)
                D[db + np.uint64(0)] = s00
                D[db + np.uint64(1)] = s01
                D[db + np.uint64(2)] = s02
                D[db + np.uint64(3)] = s03
                D[db + np.uint64(4)] = s04
                D[db + np.uint64(5)] = s05
                D[db + np.uint64(6)] = s06
                D[db + np.uint64(7)] = s07
                db = np.uint64((c + 1) * TILE + r)
                D[db + np.uint64(0)] = s10
                D[db + np.uint64(1)] = s11
                D[db + np.uint64(2)] = s12
                D[db + np.uint64(3)] = s13
                D[db + np.uint64(4)] = s14
                D[db + np.uint64(5)] = s15
                D[db + np.uint64(6)] = s16
                D[db + np.uint64(7)] = s17
                db = np.uint64((c + 2) * TILE + r)
                D[db + np.uint64(0)] = s20
                D[db + np.uint64(1)] = s21
                D[db + np.uint64(2)] = s22
                D[db + np.uint64(3)] = s23
                D[db + np.uint64(4)] = s24
                D[db + np.uint64(5)] = s25
                D[db + np.uint64(6)] = s26
                D[db + np.uint64(7)] = s27
                db = np.uint64((c + 3) * TILE + r)
                D[db + np.uint64(0)] = s30
                D[db + np.uint64(1)] = s31
                D[db + np.uint64(2)] = s32
                D[db + np.uint64(3)] = s33
                D[db + np.uint64(4)] = s34
                D[db + np.uint64(5)] = s35
                D[db + np.uint64(6)] = s36
                D[db + np.uint64(7)] = s37
        # Categorical columns: each row's level (a global index into the level tables) adds
        # its logit term and, per centroid, its one-hot block's squared distance, after the
        # numeric features and in column order, as in the twin.
        for q in range(n_cat):
            for r in range(m):
                lv = levels[r0 + r, q]
                lvt[r] = lv
                logit[r] += cat_logit[lv]
            for c in range(k):
                table = cat_dist[c]
                cb = c * TILE
                for r in range(m):
                    D[cb + r] += table[lvt[r]]
        for r in range(m):
            best[r] = D[r]
            best_c[r] = 0
        for c in range(1, k):
            cb = c * TILE
            for r in range(m):
                d2 = D[cb + r]
                bd = best[r]
                # The twin's rule: strictly smaller wins (lowest index keeps ties); a first NaN beats any number.
                take = (d2 < bd) | ((d2 != d2) & (bd == bd))
                best[r] = d2 if take else bd
                best_c[r] = c if take else best_c[r]
        for r in range(m):
            segment[r0 + r] = best_c[r]
            bd = np.float64(best[r])
            distance[r0 + r] = np.sqrt(bd) if bd > 0.0 else (bd if bd != bd else 0.0)
        # exp is a library call (no SIMD without fastmath's SVML): a loop of its own.
        for r in range(m):
            t = np.float64(logit[r]) + np.float64(b)
            e = np.exp(-abs(t))
            propensity[r0 + r] = 1.0 / (1.0 + e) if t >= 0.0 else e / (1.0 + e)
        if not tally:
            continue
        # The score summaries of engine/jobs/summary.py's ScoreTally, on the float32 outputs, in
        # row order (so the float64 sums equal bincount's): rows per segment and their
        # propensity sums, rows at or above each cut (a NaN counts as above), histogram bins
        # [e_i, e_i+1) (a NaN in the top bin, as searchsorted puts it).
        for r in range(m):
            p32[r] = propensity[r0 + r]
            bins[r] = 0
        for r in range(m):
            sg = segment[r0 + r]
            t_counts[sg] += 1
            t_sums[sg] += np.float64(p32[r])
        for q in range(n_cuts):
            cut = cuts[q]
            above = 0
            for r in range(m):
                above += np.int32(not p32[np.uint64(r)] < cut)
            t_above[q] += above
        for q in range(n_edges):
            edge = edges[q]
            for r in range(m):
                bins[np.uint64(r)] += np.int32(edge <= p32[np.uint64(r)])
        for r in range(m):
            p = p32[r]
            t_hist[bins[r] if p == p else n_edges] += 1


_KERNEL = LazyKernel(_body, "CPU scoring kernel")


def _get_kernel() -> Any:
    """The compiled dispatcher, built on first use (numba is imported here, not at import)."""
    return _KERNEL.get()


def compile_seconds() -> dict[str, float]:
    """Seconds this process spent on the first call per dtype (compile or cache load)."""
    return dict(_compile_seconds)


def no_levels(rows: int, k: int, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The categorical inputs of a model without categorical columns: no level columns, empty tables."""
    return np.empty((rows, 0), np.int32), np.zeros(1, dtype), np.zeros((k, 1), dtype)


def score_block(X: np.ndarray, n: int, params: tuple[np.ndarray, ...], intercept: Any,
                segment: np.ndarray, distance: np.ndarray, propensity: np.ndarray,
                inf_col: np.ndarray, nulls: np.ndarray,
                cats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                tally: tuple[np.ndarray, ...] | None = None) -> None:
    """Score rows ``[0, n)`` of a Fortran-contiguous ``(rows, F)`` block into the given output arrays.

    The low-level entry point for the engine's CPU stage (no checks, no allocation):
    ``params`` are the eight contiguous vectors/matrix ``(fill_s, a_s, d_s, centroids,
    fill_p, a_p, d_p, coef)`` in X's dtype; ``nulls`` (int64, length F) is added to;
    ``inf_col`` (int32) is overwritten with each row's first ±inf feature, -1 if none.
    ``cats`` is ``(levels, cat_logit, cat_dist)`` for models with categorical columns:
    ``levels`` a C-contiguous int32 ``(>= n, Q)`` matrix of global level indices, and the
    two level tables (see :func:`kernels.score_rows.score_rows`). ``tally`` is
    ``(counts int64 (k,), sums float64 (k,), above int64 (T,), hist int64 (E+1,), cuts
    float32 (T,), edges float32 (E,))``, added to (see ``engine.jobs.summary.ScoreTally``).
    Runs without the GIL.
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
    if tally is None:
        tally = _NO_TALLY
    args = (flat, X.shape[0], n, *params, intercept, segment, distance, propensity, inf_col, nulls,
            levels, cat_logit, cat_dist, *tally)
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
