"""Fused top-N offers: ``kernels/topn_offers.cu``, its NumPy twin, and the CPU kernel's contract.

Per row and offer ``t`` (columns in catalogue order):

* ``logit = bias[t] + x · W[:, t] + Σ_q catW[level_q, t]`` (Platt calibration and the
  model's imputation/scaling folded into ``W``, ``bias`` and ``catW`` by the caller);
* ``p = sigmoid(logit)`` (overflow-free form), ``ev = p · value[t] − cost[t]``,
  ``score = ev − lam[t]`` (``lam``: the budgets' dual prices, 0 without budgets);
* a candidate where ``allowed[row, t]`` (eligible and not owned), ``ev >= min_ev`` and,
  for a priced offer (``lam[t] > 0``), ``score > 0``;
* the ``keep`` best candidates by score, descending; ties go to the earlier offer.

Outputs ``(n, keep)``: ``idx`` int32 (-1: no candidate left), ``p`` float32, ``ev`` float64,
and ``reason`` int32: for each chosen offer, the candidate term of the logit that is largest
and positive, measured against the average training customer as ``engine score --reasons``
measures it (:mod:`engine.models.reasons`):

* numeric feature ``f``: ``W[f, t] (x_f − mean_f)``, coded ``2 f`` when ``x_f > mean_f``
  (``feature:high``) or ``2 f + 1`` (``feature:low``);
* categorical column ``q``: ``catW[l, t] − catbase[q, t]`` for the row's level ``l =
  levels[row, q]`` (``catbase``: the column's training-share-weighted average term per offer),
  coded ``2 F + l`` (``column=level``, ``l`` the global level index);

ties go to the lower candidate (numeric features in order, then the categorical columns in
order); -1 when no term is positive or the slot is empty. ``catbase`` None: the categorical
columns are no candidates (their logit terms still count).
``fill`` (optional): the raw features' imputation, NaN and ±inf read as ``fill[f]`` (in
the logit and the reason alike), as the engine's CPU path imputes before its kernel.

The CUDA kernel reads two encodings that the twin does not need (:func:`launch_topn_offers`):
``X`` through strides (the engine passes Fortran blocks, one coalesced read per feature
and warp) and ``allowed`` bit-packed per restricted offer (:func:`pack_allowed`; offers
allowed everywhere move no bytes). :func:`unpack_allowed` is the twin of the kernel's read.

The twin materialises the block's ``(n, T)`` scores (it is the reference, called per
block); the CPU kernel (:mod:`kernels.topn_offers_cpu`) and the CUDA kernel keep a running
top-N per row and never write an ``(n, T)`` matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_KEEP = 26  # TOPN_MAX_KEEP in the .cu: top 25 plus one slot the budgets' thresholds read
_BLOCK = 128

__all__ = ["MAX_KEEP", "launch_topn_offers", "pack_allowed", "topn_offers", "topn_offers_cuda", "unpack_allowed"]


def _sigmoid(u: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(u))
    return np.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def topn_offers(X: Any, levels: Any, W: Any, bias: Any, catW: Any, value: Any, cost: Any, lam: Any,
                allowed: Any, min_ev: float, keep: int, mean: Any = None, catbase: Any = None, fill: Any = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The NumPy twin (see the module docstring). ``fill``: ``X`` holds raw values, NaN and
    ±inf are replaced by ``fill`` first. ``allowed`` None: every offer allowed on every row."""
    if not 1 <= keep <= MAX_KEEP:
        raise ValueError(f"keep must be in 1..{MAX_KEEP}, got {keep}")
    X = np.asarray(X)
    if fill is not None:
        X = np.where(np.isfinite(X), X, np.asarray(fill, dtype=X.dtype)[None, :])
    dtype = X.dtype
    n, T = X.shape[0], np.asarray(W).shape[1]
    if allowed is None:
        allowed = np.ones((n, T), np.uint8)
    logit = X @ np.asarray(W, dtype=dtype) + np.asarray(bias, dtype=dtype)
    if levels is not None and np.asarray(levels).shape[1]:
        cw = np.asarray(catW, dtype=dtype)
        for q in range(np.asarray(levels).shape[1]):
            logit = logit + cw[np.asarray(levels)[:, q]]
    p = _sigmoid(logit).astype(dtype)
    ev = p * np.asarray(value, dtype=dtype) - np.asarray(cost, dtype=dtype)
    lam = np.asarray(lam, dtype=dtype)
    s = ev - lam
    ok = (np.asarray(allowed) != 0) & (ev >= min_ev) & ((lam == 0) | (s > 0))
    ranked = np.where(ok, s, -np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :keep]
    rows = np.arange(n)[:, None]
    good = ok[rows, order]
    idx = np.where(good, order, -1).astype(np.int32)
    out_p = np.where(good, p[rows, order], 0.0).astype(np.float32)
    out_ev = np.where(good, ev[rows, order], 0.0).astype(np.float64)
    if keep > T:  # fewer offers than slots: the rest are empty
        pad = keep - order.shape[1]
        idx = np.hstack([idx, np.full((n, pad), -1, np.int32)])
        out_p = np.hstack([out_p, np.zeros((n, pad), np.float32)])
        out_ev = np.hstack([out_ev, np.zeros((n, pad))])
    return idx, out_p, out_ev, reason_codes(X, idx, np.asarray(W, dtype=dtype), mean, levels, catW, catbase)


def reason_codes(X: np.ndarray, idx: np.ndarray, W: np.ndarray, mean: Any, levels: Any = None, catW: Any = None,
                 catbase: Any = None) -> np.ndarray:
    """The ``reason`` output of the contract (see the module docstring), for chosen slots."""
    out = np.full(idx.shape, -1, dtype=np.int32)
    rows, slots = np.nonzero(idx >= 0)
    F = X.shape[1]
    cats = levels is not None and catbase is not None and np.asarray(levels).shape[1] > 0
    if rows.size == 0 or (F == 0 and not cats):
        return out
    mean = np.zeros(F) if mean is None else np.asarray(mean, dtype=X.dtype)
    t = idx[rows, slots]
    diff = X[rows] - mean[None, :]
    contrib = diff * W[:, t].T
    lv = None
    if cats:
        lv = np.asarray(levels)[rows]                                   # (m, Q) global levels
        cw = np.asarray(catW, dtype=X.dtype)
        base = np.asarray(catbase, dtype=X.dtype)                       # (Q, T)
        level_terms = cw[lv, t[:, None]] - base[:, t].T                 # (m, Q)
        contrib = np.hstack([contrib, level_terms])
    best = np.argmax(contrib, axis=1)   # the first maximum: numeric features, then columns, in order
    at = np.arange(rows.size)
    numeric = best < F
    code = 2 * best + (diff[at, np.minimum(best, max(F - 1, 0))] <= 0) if F else np.zeros_like(best)
    if lv is not None:
        code = np.where(numeric, code, 2 * F + lv[at, np.maximum(best - F, 0)])
    out[rows, slots] = np.where(contrib[at, best] > 0, code, -1)
    return out


def pack_allowed(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's mask encoding of an ``(n, T)`` allowed matrix: ``(packed, mask_row)``.

    ``mask_row[t]`` is -1 for an offer allowed on every row (no bytes), else its row ``r`` of
    ``packed`` ``(R, ceil(n / 8))`` uint8, bit ``i & 7`` of byte ``i >> 3`` for row ``i``
    (``numpy.packbits(bitorder="little")``).
    """
    ok = np.asarray(allowed) != 0
    n, T = ok.shape
    restricted = np.flatnonzero(~ok.all(axis=0)) if n else np.zeros(0, np.int64)
    mask_row = np.full(T, -1, np.int32)
    mask_row[restricted] = np.arange(restricted.size, dtype=np.int32)
    packed = np.packbits(ok[:, restricted].T, axis=1, bitorder="little") if restricted.size else \
        np.zeros((0, (n + 7) // 8), np.uint8)
    return np.ascontiguousarray(packed), mask_row


def unpack_allowed(packed: np.ndarray, mask_row: np.ndarray, n: int) -> np.ndarray:
    """The ``(n, T)`` uint8 allowed matrix the kernel reads from ``(packed, mask_row)`` (its twin)."""
    mask_row = np.asarray(mask_row)
    out = np.ones((n, mask_row.size), np.uint8)
    rows = np.flatnonzero(mask_row >= 0)
    if rows.size and n:
        bits = np.unpackbits(np.asarray(packed)[mask_row[rows]], axis=1, count=n, bitorder="little")
        out[:, rows] = bits.T
    return out


def launch_topn_offers(X: Any, levels: Any, W: Any, bias: Any, catW: Any, value: Any, cost: Any, lam: Any,
                       packed: Any, mask_row: Any, min_ev: float, keep: int, mean: Any, catbase: Any, fill: Any,
                       out_idx: Any, out_p: Any, out_ev: Any, out_reason: Any, *, n_levels: int,
                       block: int = _BLOCK) -> None:
    """Queue the kernel on CuPy's current stream over device arrays (shapes checked, values not).

    ``X`` ``(n, F)`` of any strides (a Fortran block reads coalesced); ``levels`` C-ordered
    ``(n, Q)`` int32 whose values the caller has checked to lie in ``[0, n_levels)``;
    ``packed``/``mask_row`` as :func:`pack_allowed` makes them (``packed`` C-ordered, its
    leading dimension is its row length); ``fill`` None: no imputation; outputs C-ordered
    ``(n, keep)``. Every operand is in ``X``'s dtype (outputs as documented). Shapes and
    dtypes are checked here: a wrong one would be an out-of-bounds read on the device.
    """
    from kernels import _loader

    if not 1 <= keep <= MAX_KEEP:
        raise ValueError(f"keep must be in 1..{MAX_KEEP}, got {keep}")
    dtype = np.dtype(X.dtype)
    suffix = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}[dtype]
    n, F = X.shape
    T = W.shape[1]
    Q = levels.shape[1]
    item = dtype.itemsize
    if X.strides[0] % item or X.strides[1] % item:
        raise ValueError("X's strides must be whole elements")
    for name, a, shape, want in (("W", W, (F, T), dtype), ("bias", bias, (T,), dtype), ("value", value, (T,), dtype),
                                 ("cost", cost, (T,), dtype), ("lam", lam, (T,), dtype), ("mean", mean, (F,), dtype),
                                 ("catW", catW, (max(1, n_levels), T), dtype), ("catbase", catbase, (max(1, Q), T), dtype),
                                 ("levels", levels, (n, Q), np.dtype(np.int32)), ("mask_row", mask_row, (T,), np.dtype(np.int32)),
                                 ("out_idx", out_idx, (n, keep), np.dtype(np.int32)),
                                 ("out_p", out_p, (n, keep), np.dtype(np.float32)),
                                 ("out_ev", out_ev, (n, keep), np.dtype(np.float64)),
                                 ("out_reason", out_reason, (n, keep), np.dtype(np.int32)),
                                 *((("fill", fill, (F,), dtype),) if fill is not None else ())):
        if tuple(a.shape) != shape or np.dtype(a.dtype) != want or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-ordered {want} array of shape {shape}, not {a.dtype} {a.shape}")
    if packed.dtype != np.uint8 or packed.ndim != 2 or not packed.flags.c_contiguous or \
            packed.shape[1] < (n + 7) // 8:
        raise ValueError(f"packed must be a C-ordered uint8 (R, >= {(n + 7) // 8}) array, not {packed.shape}")
    if n == 0:
        return
    kernel = _loader.get_kernel("topn_offers", f"engine_topn_offers_{suffix}")
    grid = max(1, min(-(-n // block), 65535 * 8))
    args = (X, np.int64(X.strides[0] // item), np.int64(X.strides[1] // item),
            mean if fill is None else fill, np.int32(fill is not None), levels, W, bias, catW, value, cost, lam,
            packed, np.int64(packed.shape[1]), mask_row, np.int64(n), np.int32(F), np.int32(Q), np.int32(T),
            dtype.type(min_ev), np.int32(keep), mean, catbase, out_idx, out_p, out_ev, out_reason)
    kernel((grid,), (block,), args)


def topn_offers_cuda(X: Any, levels: Any, W: Any, bias: Any, catW: Any, value: Any, cost: Any, lam: Any,
                     allowed: Any, min_ev: float, keep: int, mean: Any = None, catbase: Any = None,
                     fill: Any = None) -> tuple[Any, Any, Any, Any]:
    """The CUDA kernel on CuPy arrays (same signature and results as :func:`topn_offers`).

    ``X`` may have any layout (a Fortran one reads coalesced). The levels are checked to
    index ``catW``'s rows before the launch. The engine's GPU path
    (:mod:`engine.offers.gpu_topn`) calls :func:`launch_topn_offers` with operands it keeps
    on the device. Never run in the session that wrote it (no GPU was lent); its device
    check is in ``bench/device_check.sh``.
    """
    import cupy as cp

    if not 1 <= keep <= MAX_KEEP:
        raise ValueError(f"keep must be in 1..{MAX_KEEP}, got {keep}")
    X = cp.asarray(X)
    if X.strides[0] <= 0 or X.strides[1] <= 0:
        X = cp.ascontiguousarray(X)
    dtype = X.dtype
    n, F = X.shape
    W = cp.ascontiguousarray(cp.asarray(W, dtype=dtype))
    T = W.shape[1]
    if levels is None or levels.shape[1] == 0:
        L = cp.zeros((n, 0), dtype=cp.int32)
        catW = cp.zeros((1, T), dtype=dtype)
        catbase = None
    else:
        L = cp.ascontiguousarray(cp.asarray(levels, dtype=cp.int32))
    catW = cp.ascontiguousarray(cp.asarray(catW, dtype=dtype))
    n_levels = int(catW.shape[0])
    if L.shape[1] and n and (int(L.min()) < 0 or int(L.max()) >= n_levels):
        raise ValueError(f"level indices must lie in [0, {n_levels}): found {int(L.min())}..{int(L.max())}")
    # No reference: the columns are no reason candidates (a term minus +inf never wins).
    base = cp.full((max(1, L.shape[1]), T), cp.inf, dtype=dtype) if catbase is None else \
        cp.ascontiguousarray(cp.asarray(catbase, dtype=dtype))
    packed, mask_row = pack_allowed(cp.asnumpy(cp.asarray(allowed)))
    out_idx = cp.empty((n, keep), dtype=cp.int32)
    out_p = cp.empty((n, keep), dtype=cp.float32)
    out_ev = cp.empty((n, keep), dtype=cp.float64)
    out_reason = cp.empty((n, keep), dtype=cp.int32)
    mean = cp.zeros(F, dtype=dtype) if mean is None else cp.ascontiguousarray(cp.asarray(mean, dtype=dtype))

    def dev(a: Any) -> Any:
        return cp.ascontiguousarray(cp.asarray(a, dtype=dtype))

    launch_topn_offers(X, L, W, dev(bias), catW, dev(value), dev(cost), dev(lam),
                       cp.asarray(packed) if packed.shape[0] else cp.zeros((1, max(1, (n + 7) // 8)), cp.uint8),
                       cp.asarray(mask_row), min_ev, keep, mean, base, None if fill is None else dev(fill),
                       out_idx, out_p, out_ev, out_reason, n_levels=n_levels)
    return out_idx, out_p, out_ev, out_reason
