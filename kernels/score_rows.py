"""Fused row scoring: ``kernels/score_rows.cu`` and its twin.

One pass over each row computes both model heads:

* missing: a value that is NaN, ±inf or finite beyond :data:`MAX_INPUT_ABS` (1e15); the
  last two are imputed like NaN and flagged in ``inf_col`` (the engine applies its bad-row
  policy to the flagged rows afterwards), so no separate pass looks for too large values.
* segmenter: ``z_s = where(missing, fill_s, x) * a_s + d_s``; squared Euclidean
  distance to each of the k centroids; ``segment`` = index of the nearest centroid
  (lowest index on exact ties; a NaN distance counts as nearest, like ``numpy.argmin``,
  so a broken row is visible instead of silently assigned); ``distance`` =
  ``sqrt(max(d2, 0))``.
* propensity: ``z_p = where(missing, fill_p, x) * a_p + d_p``;
  ``logit = z_p . coef + intercept``; ``propensity = sigmoid(logit)`` computed as
  ``1/(1+e)`` or ``e/(1+e)`` with ``e = exp(-|logit|)``, which never overflows, so
  ±1000 gives exactly 1/0 without warnings.

Categorical columns (optional): ``levels`` is an int32 ``(n, Q)`` matrix of global level
indices into two tables built from the model, ``cat_logit`` (L,) and ``cat_dist`` (k, L).
Each row's level of each column adds ``cat_logit[level]`` to the logit and
``cat_dist[c, level]`` to the squared distance to centroid ``c`` (for a one-hot block
that term is ``1 - 2 c[level] + sum(c²)``), after the numeric features and in column
order, so no expanded one-hot matrix is ever built.

The per-feature affine ``x * a + d`` is how the engine hands over imputation folded
with any scaler (standardize: ``a = 1/std``, ``d = -mean/std``). Arithmetic is in X's
dtype; outputs are ``segment`` int32, ``distance`` float32, ``propensity`` float32.
With ``flags=True`` both paths also return ``inf_col`` (int32: the row's first ±inf or
too large feature, -1 for none) and ``nulls`` (uint64 per feature: NaN values, ±inf not counted).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from kernels import _loader
from kernels._validate import (
    column_param,
    fortran,
    matrix_dtype,
    multiprocessor_count,
    require_cupy_array,
)

#: Finite values beyond this magnitude are bad values like ±inf (imputed and flagged in
#: ``inf_col``): float64 no longer holds every integer exactly past 2**53 ~ 9.0e15. The
#: same constant in every kernel (``MAX_INPUT_ABS`` in score_rows.cu and score_rows_cpu.py).
MAX_INPUT_ABS = 1e15
#: Rows per chunk in the twin: bounds its (chunk, F) temporaries to a few tens of MB.
TWIN_CHUNK_ROWS = 65536
#: Centroids accumulated per register tile in the kernel; must match K_TILE in the .cu.
K_TILE = 8
#: Dynamic shared memory the kernel may use without an opt-in attribute on any GPU.
MAX_SHARED_BYTES = 48 * 1024

_BLOCK = 256
# Grid-stride: a few resident blocks per SM, so each block loads the parameters once
# into shared memory and then streams many rows.
_BLOCKS_PER_SM = 8

__all__ = [
    "K_TILE",
    "MAX_INPUT_ABS",
    "MAX_SHARED_BYTES",
    "TWIN_CHUNK_ROWS",
    "KernelParams",
    "device_shared_limit",
    "fits_shared_memory",
    "launch_score_rows",
    "prepare_cuda_params",
    "prewarm_launch",
    "score_rows",
    "score_rows_cuda",
    "score_rows_dense",
    "check_levels",
    "shared_bytes",
]


def shared_bytes(k: int, n_features: int, itemsize: int) -> int:
    """Dynamic shared memory the kernel needs: per-feature null counters (uint64),
    7 parameter vectors and k centroids padded to K_TILE."""
    k_pad = -(-k // K_TILE) * K_TILE
    return 8 * n_features + (7 + k_pad) * n_features * itemsize


def fits_shared_memory(k: int, n_features: int, itemsize: int, limit: int = MAX_SHARED_BYTES) -> bool:
    """Whether the fused kernel can take this model (else score with dense matrix products).

    ``limit`` is the dynamic shared memory a block may have: :data:`MAX_SHARED_BYTES`
    without an opt-in, :func:`device_shared_limit` on a given GPU (the launch opts in).
    """
    return shared_bytes(k, n_features, itemsize) <= limit


_limits: dict[int, int] = {}
_opt_in_lock = threading.Lock()
# (id of the RawKernel, device) -> the dynamic shared memory it was opted in to.
_opted_in: dict[tuple[int, int], int] = {}


def device_shared_limit(device: int) -> int:
    """Dynamic shared memory one block may opt in to on ``device`` (``sharedMemPerBlockOptin``:
    227 KiB on H100/H200, 163 KiB on A100), never less than :data:`MAX_SHARED_BYTES`.

    The kernel declares no static shared memory, so all of it is available to the dynamic part.
    """
    limit = _limits.get(device)
    if limit is None:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(device)
        limit = max(MAX_SHARED_BYTES, int(props.get("sharedMemPerBlockOptin", MAX_SHARED_BYTES)))
        _limits[device] = limit
    return limit


def _opt_in(kernel: Any, device: int, nbytes: int) -> None:
    """Raise ``kernel``'s cudaFuncAttributeMaxDynamicSharedMemorySize to ``nbytes`` (once per size).

    Needed only above :data:`MAX_SHARED_BYTES`. ``cuFuncSetAttribute`` is not thread-safe,
    hence the lock; the attribute only ever grows, so concurrent launches of a smaller
    model keep working.
    """
    key = (id(kernel), device)
    if _opted_in.get(key, MAX_SHARED_BYTES) >= nbytes:
        return
    with _opt_in_lock:
        if _opted_in.get(key, MAX_SHARED_BYTES) < nbytes:
            kernel.max_dynamic_shared_size_bytes = nbytes
            _opted_in[key] = nbytes


def _prepare(
    xp: Any,
    X: Any,
    fill_s: Any,
    a_s: Any,
    d_s: Any,
    centroids: Any,
    fill_p: Any,
    a_p: Any,
    d_p: Any,
    coef: Any,
    intercept: Any,
) -> tuple[Any, ...]:
    """Check shapes and cast every parameter to X's dtype in namespace ``xp``."""
    dtype = matrix_dtype(X)
    n_features = X.shape[1]
    C = xp.asarray(centroids, dtype=dtype)
    if C.ndim != 2 or C.shape[1] != n_features or C.shape[0] < 1:
        raise ValueError(f"centroids must have shape (k >= 1, {n_features}), got {tuple(C.shape)}")
    if hasattr(xp, "ascontiguousarray"):
        C = xp.ascontiguousarray(C)
    vecs = [
        column_param(xp, p, name, n_features, dtype)
        for p, name in (
            (fill_s, "fill_s"),
            (a_s, "a_s"),
            (d_s, "d_s"),
            (fill_p, "fill_p"),
            (a_p, "a_p"),
            (d_p, "d_p"),
            (coef, "coef"),
        )
    ]
    b = xp.asarray(intercept, dtype=dtype)
    if b.size != 1:
        raise ValueError(f"intercept must be a scalar, got shape {tuple(b.shape)}")
    b = xp.reshape(b, ())
    return (dtype, C, *vecs, b)


def check_levels(xp: Any, levels: Any, cat_logit: Any, cat_dist: Any, n: int, k: int,
                 dtype: Any, check_range: bool = True) -> tuple[Any, Any, Any]:
    """The categorical inputs checked and cast: C-contiguous int32 ``(n, Q)`` levels, tables in ``dtype``.

    Every level must index the tables (``0 <= level < L``): the kernels do not check;
    ``check_range=False`` skips that check (it waits for the device on CuPy).
    """
    L = xp.ascontiguousarray(xp.asarray(levels, dtype=xp.int32))
    if L.ndim != 2 or L.shape[0] != n:
        raise ValueError(f"levels must have shape ({n}, Q), got {tuple(L.shape)}")
    lg = xp.ascontiguousarray(xp.asarray(cat_logit, dtype=dtype))
    dist = xp.ascontiguousarray(xp.asarray(cat_dist, dtype=dtype))
    if lg.ndim != 1 or lg.shape[0] < 1 or dist.shape != (k, lg.shape[0]):
        raise ValueError(f"cat_logit must have shape (L,) and cat_dist ({k}, L), got "
                         f"{tuple(lg.shape)} and {tuple(dist.shape)}")
    if check_range and L.size and (int(L.min()) < 0 or int(L.max()) >= lg.shape[0]):
        raise ValueError(f"levels must lie in [0, {lg.shape[0]}), the level tables' length")
    return L, lg, dist


def score_rows(
    X: Any,
    fill_s: Any,
    a_s: Any,
    d_s: Any,
    centroids: Any,
    fill_p: Any,
    a_p: Any,
    d_p: Any,
    coef: Any,
    intercept: Any,
    *,
    xp: Any,
    flags: bool = False,
    levels: Any = None,
    cat_logit: Any = None,
    cat_dist: Any = None,
) -> tuple[Any, ...]:
    """Score every row: nearest segment, its distance, and the logistic propensity.

    Twin of :func:`score_rows_cuda`, written with ``xp.*`` only (NumPy or CuPy). It
    computes the distances directly from ``z - c`` and scans centroids in order with
    the same comparison as the kernel, chunked over rows to bound memory.

    Args:
        X: (n, F) float32 or float64 matrix, any memory order; NaN or ±inf = missing.
        fill_s, a_s, d_s: length-F imputation value and affine scale/offset of the
            segmenter head.
        centroids: (k, F) cluster centres in the scaled space, k >= 1.
        fill_p, a_p, d_p: the same three vectors for the propensity head.
        coef: length-F logistic coefficients; intercept: scalar.
        xp: the array namespace of X.
        flags: also return ``inf_col`` and ``nulls`` (see the module docstring).
        levels, cat_logit, cat_dist: the categorical inputs (module docstring); None
            for a model without categorical columns.

    Returns:
        ``(segment, distance, propensity)``: int32, float32 and float32 vectors of
        length n; with ``flags``, followed by ``inf_col`` (int32, n) and ``nulls``
        (uint64, F).
    """
    dtype, C, fs, as_, ds, fp, ap, dp, w, b = _prepare(
        xp, X, fill_s, a_s, d_s, centroids, fill_p, a_p, d_p, coef, intercept
    )
    n, n_features = X.shape
    k = C.shape[0]
    if levels is not None:
        L, cat_lg, cat_d = check_levels(xp, levels, cat_logit, cat_dist, n, k, dtype)
    segment = xp.empty((n,), dtype=xp.int32)
    distance = xp.empty((n,), dtype=xp.float32)
    propensity = xp.empty((n,), dtype=xp.float32)
    inf_col = xp.empty((n,), dtype=xp.int32)
    nulls = xp.zeros((n_features,), dtype=xp.uint64)
    for start in range(0, n, TWIN_CHUNK_ROWS):
        stop = min(start + TWIN_CHUNK_ROWS, n)
        Xc = X[start:stop]
        # NaN, ±inf and finite values beyond MAX_INPUT_ABS are imputed; the last two flagged.
        missing = ~(xp.abs(Xc) <= MAX_INPUT_ABS)

        zs = xp.where(missing, fs, Xc) * as_ + ds
        zp = xp.where(missing, fp, Xc) * ap + dp
        logit = xp.sum(zp * w, axis=1)
        Lc = L[start:stop] if levels is not None else None
        if Lc is not None:
            for q in range(Lc.shape[1]):
                logit = logit + cat_lg[Lc[:, q]]
        best = None
        best_c = None
        for c in range(k):
            diff = zs - C[c]
            d2 = xp.sum(diff * diff, axis=1)
            if Lc is not None:
                for q in range(Lc.shape[1]):
                    d2 = d2 + cat_d[c][Lc[:, q]]
            if best is None:
                best = d2
                best_c = xp.zeros(d2.shape, dtype=xp.int32)
            else:
                # Same rule as the kernel's sequential scan: strictly smaller wins, so
                # the lowest index keeps exact ties; a first NaN beats any number.
                take = (d2 < best) | (xp.isnan(d2) & ~xp.isnan(best))
                best = xp.where(take, d2, best)
                best_c = xp.where(take, xp.asarray(c, dtype=xp.int32), best_c)
        best = xp.where(best < 0, xp.asarray(0, dtype=dtype), best)
        segment[start:stop] = best_c
        distance[start:stop] = xp.sqrt(best).astype(xp.float32)

        logit = logit + b
        e = xp.exp(-xp.abs(logit))
        p = xp.where(logit >= 0, 1 / (1 + e), e / (1 + e))
        propensity[start:stop] = p.astype(xp.float32)

        if flags:
            inf = missing & ~xp.isnan(Xc)
            first = xp.argmax(inf, axis=1).astype(xp.int32)
            inf_col[start:stop] = xp.where(xp.any(inf, axis=1), first, xp.asarray(-1, dtype=xp.int32))
            nulls += xp.sum(xp.isnan(Xc), axis=0).astype(xp.uint64)
    if flags:
        return segment, distance, propensity, inf_col, nulls
    return segment, distance, propensity


def score_rows_dense(
    X: Any,
    fill_s: Any,
    a_s: Any,
    d_s: Any,
    centroids: Any,
    fill_p: Any,
    a_p: Any,
    d_p: Any,
    coef: Any,
    intercept: Any,
    *,
    xp: Any,
    levels: Any = None,
    cat_logit: Any = None,
    cat_dist: Any = None,
) -> tuple[Any, Any, Any, Any, Any]:
    """The same five outputs as ``score_rows(..., flags=True)``, from dense matrix products.

    The path for models too big for the kernel's shared memory (see
    :func:`fits_shared_memory`): every centroid distance comes from one GEMM
    (``||z||² - 2 z·C + ||c||²``, cuBLAS on CuPy), so its cost grows with k·F as a
    matrix product does rather than per row and centroid. Written with ``xp.*`` only and
    free of host synchronisation (no ``bool(...)`` of a device value), so on CuPy every
    operation is queued on the current stream. Ties go to the lowest index (argmin);
    distances may differ from the direct form by rounding (about eps·||z||²).

    A row whose ``||z||²`` overflows (a huge finite value, or one that ``x * a + d``
    overflows) would get ``inf - inf = NaN`` from the expansion; the direct form (the
    fused kernel, the CPU kernel, the twin) gives ``inf`` to every centroid, so segment 0
    and distance inf (for centroids of ordinary magnitude). Such rows are set to ``inf``
    here, which gives the same.
    """
    dtype, C, fs, as_, ds, fp, ap, dp, w, b = _prepare(
        xp, X, fill_s, a_s, d_s, centroids, fill_p, a_p, d_p, coef, intercept
    )
    finite = xp.abs(X) <= MAX_INPUT_ABS   # as the fused kernels: NaN, ±inf, too large imputed
    inf = ~finite & ~xp.isnan(X)
    first = xp.argmax(inf, axis=1).astype(xp.int32)
    inf_col = xp.where(xp.any(inf, axis=1), first, xp.asarray(-1, dtype=xp.int32))
    nulls = xp.sum(xp.isnan(X), axis=0).astype(xp.uint64)
    zs = xp.where(finite, X, fs) * as_ + ds
    zz = xp.sum(zs * zs, axis=1)
    d2 = zz[:, None] - 2 * (zs @ C.T) + xp.sum(C * C, axis=1)[None, :]
    d2 = xp.where(xp.isinf(zz)[:, None], xp.asarray(xp.inf, dtype=dtype), d2)
    logit = (xp.where(finite, X, fp) * ap + dp) @ w
    if levels is not None:
        L, cat_lg, cat_d = check_levels(xp, levels, cat_logit, cat_dist, X.shape[0], C.shape[0], dtype,
                                      check_range=False)
        cat_dT = xp.ascontiguousarray(cat_d.T)
        for q in range(L.shape[1]):
            d2 = d2 + cat_dT[L[:, q]]
            logit = logit + cat_lg[L[:, q]]
    segment = xp.argmin(d2, axis=1).astype(xp.int32)
    best = xp.take_along_axis(d2, segment[:, None].astype(xp.int64), axis=1)[:, 0]
    distance = xp.sqrt(xp.maximum(best, 0)).astype(xp.float32)
    logit = logit + b
    e = xp.exp(-xp.abs(logit))
    propensity = xp.where(logit >= 0, 1 / (1 + e), e / (1 + e)).astype(xp.float32)
    return segment, distance, propensity, inf_col, nulls


@dataclass(frozen=True)
class KernelParams:
    """The kernel's model parameters, cast to one dtype and resident on the device.

    Built once per model and device (:func:`prepare_cuda_params`) and reused by every
    launch, so a launch moves nothing but its rows.
    """

    dtype: Any
    k: int
    n_features: int
    fill_s: Any
    a_s: Any
    d_s: Any
    centroids: Any
    fill_p: Any
    a_p: Any
    d_p: Any
    coef: Any
    intercept: Any  # a NumPy scalar of ``dtype``: passed by value
    cat_logit: Any = None  # (L,) level tables on the device; None without categorical columns
    cat_dist: Any = None   # (k, L)
    # Placeholders of the five categorical arguments for launches without levels (never read
    # by the kernel): made once here, not two allocations and two memsets per launch.
    no_levels: Any = None
    no_table: Any = None

    @property
    def shared_bytes(self) -> int:
        return shared_bytes(self.k, self.n_features, self.dtype.itemsize)


def prepare_cuda_params(
    dtype: Any,
    n_features: int,
    fill_s: Any,
    a_s: Any,
    d_s: Any,
    centroids: Any,
    fill_p: Any,
    a_p: Any,
    d_p: Any,
    coef: Any,
    intercept: Any,
    cat_logit: Any = None,
    cat_dist: Any = None,
) -> KernelParams:
    """Check and move the parameters (and the level tables, if any) to the current device, once per model."""
    import cupy as cp

    probe = cp.empty((0, n_features), dtype=dtype)
    dt, C, fs, as_, ds, fp, ap, dp, w, b = _prepare(
        cp, probe, fill_s, a_s, d_s, centroids, fill_p, a_p, d_p, coef, intercept
    )
    lg = dist = None
    if cat_logit is not None:
        _, lg, dist = check_levels(cp, cp.zeros((0, 0), cp.int32), cat_logit, cat_dist, 0, int(C.shape[0]), dt)
    # Scalars typed explicitly: a Python float would be passed as double to a float kernel.
    return KernelParams(dt, int(C.shape[0]), n_features, fs, as_, ds, C, fp, ap, dp, w,
                        dt.type(b.item()), lg, dist, cp.zeros(1, dtype=cp.int32), cp.zeros(1, dtype=dt))


def launch_score_rows(
    X: Any,
    n: int,
    ld: int,
    params: KernelParams,
    segment: Any,
    distance: Any,
    propensity: Any,
    inf_col: Any,
    nulls: Any,
    levels: Any = None,
) -> None:
    """Queue one kernel launch on the current stream; nothing waits for it.

    ``X`` is device memory holding column j of the rows at ``X[j * ld : j * ld + n]``
    (a Fortran ``(ld, F)`` buffer of which the first ``n`` rows are scored); the outputs
    are device arrays of at least ``n`` elements (``nulls``: F uint64 counters that the
    caller zeroed and that the launch adds to). ``levels`` (models with categorical
    columns) is a C-contiguous int32 device matrix ``(>= n, Q)`` of global level indices.
    """
    import cupy as cp

    device = cp.cuda.runtime.getDevice()
    limit = device_shared_limit(device)
    if params.shared_bytes > limit:
        raise ValueError(
            f"score_rows_cuda: k={params.k}, F={params.n_features} ({params.dtype}) needs "
            f"{params.shared_bytes} bytes of shared memory, more than this GPU's {limit}; "
            "use fewer features/centroids, float32, or dense matrix products"
        )
    if n == 0:
        return
    suffix = "f32" if params.dtype == cp.float32 else "f64"
    kernel = _loader.get_kernel("score_rows", f"engine_score_rows_{suffix}")
    if params.shared_bytes > MAX_SHARED_BYTES:
        _opt_in(kernel, device, params.shared_bytes)
    sms = multiprocessor_count(device)
    grid = max(1, min(-(-n // _BLOCK), sms * _BLOCKS_PER_SM))
    kernel(
        (grid,),
        (_BLOCK,),
        (
            X,
            cp.int64(n),
            cp.int64(ld),
            cp.int32(params.n_features),
            cp.int32(params.k),
            params.fill_s,
            params.a_s,
            params.d_s,
            params.centroids,
            params.fill_p,
            params.a_p,
            params.d_p,
            params.coef,
            params.intercept,
            segment,
            distance,
            propensity,
            inf_col,
            nulls,
            *_level_args(cp, params, levels),
        ),
        shared_mem=params.shared_bytes,
    )


def prewarm_launch(params: KernelParams) -> None:
    """Load (compile, or read CuPy's cache) the kernel for ``params`` and launch it on one row.

    Pays module load, the shared-memory opt-in and the first launch's set-up once, where a
    stage is built, instead of on the first block's clock. Queued on the current stream.
    """
    import cupy as cp

    f = params.n_features
    X = cp.zeros(f, dtype=params.dtype)
    outs = (cp.empty(1, cp.int32), cp.empty(1, cp.float32), cp.empty(1, cp.float32), cp.empty(1, cp.int32),
            cp.zeros(f, cp.uint64))
    launch_score_rows(X, 1, 1, params, *outs)


def _level_args(cp: Any, params: KernelParams, levels: Any) -> tuple[Any, ...]:
    """The kernel's five categorical arguments; placeholders (never read) without categorical columns."""
    if params.cat_logit is None or levels is None or levels.shape[1] == 0:
        if params.no_levels is None:  # KernelParams built by hand (tests): made here, as before
            dummy = cp.zeros(1, dtype=params.dtype)
            return (cp.zeros(1, dtype=cp.int32), cp.int32(0), dummy, dummy, cp.int32(1))
        return (params.no_levels, cp.int32(0), params.no_table, params.no_table, cp.int32(1))
    if levels.dtype != cp.int32 or not levels.flags.c_contiguous:
        raise ValueError("levels must be a C-contiguous int32 device matrix")
    return (levels, cp.int32(levels.shape[1]), params.cat_logit, params.cat_dist,
            cp.int32(params.cat_logit.shape[0]))


def score_rows_cuda(
    X: Any,
    fill_s: Any,
    a_s: Any,
    d_s: Any,
    centroids: Any,
    fill_p: Any,
    a_p: Any,
    d_p: Any,
    coef: Any,
    intercept: Any,
    *,
    flags: bool = False,
    levels: Any = None,
    cat_logit: Any = None,
    cat_dist: Any = None,
) -> tuple[Any, ...]:
    """CUDA version of :func:`score_rows` (same arguments minus ``xp``).

    X must be a ``cupy.ndarray`` (made Fortran-ordered first, a copy if it is not).
    Parameters may be host or device arrays. The parameters and centroids live in
    shared memory, so ``shared_bytes(k, F, X.itemsize)`` must not exceed
    :func:`device_shared_limit` (the launch opts in above 48 KiB; 227 KiB on H100/H200:
    about ``(ceil(k/8)*8 + 8) * F <= 29000`` in float64, e.g. k = 64 with F = 390);
    otherwise ``ValueError``.
    """
    cp = require_cupy_array(X)
    n, n_features = X.shape
    params = prepare_cuda_params(matrix_dtype(X), n_features, fill_s, a_s, d_s, centroids,
                                 fill_p, a_p, d_p, coef, intercept,
                                 cat_logit if levels is not None else None, cat_dist)
    L = None
    if levels is not None:
        L, _, _ = check_levels(cp, levels, cat_logit, cat_dist, n, params.k, params.dtype)
    segment = cp.empty((n,), dtype=cp.int32)
    distance = cp.empty((n,), dtype=cp.float32)
    propensity = cp.empty((n,), dtype=cp.float32)
    inf_col = cp.empty((n,), dtype=cp.int32)
    nulls = cp.zeros((n_features,), dtype=cp.uint64)
    launch_score_rows(fortran(cp, X), n, n, params, segment, distance, propensity, inf_col, nulls, L)
    if flags:
        return segment, distance, propensity, inf_col, nulls
    return segment, distance, propensity
