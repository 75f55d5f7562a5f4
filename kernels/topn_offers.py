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
The twin materialises the block's ``(n, T)`` scores (it is the reference, called per
block); the CPU kernel (:mod:`kernels.topn_offers_cpu`) and the CUDA kernel keep a running
top-N per row and never write an ``(n, T)`` matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_KEEP = 26  # TOPN_MAX_KEEP in the .cu: top 25 plus one slot the budgets' thresholds read
_BLOCK = 128

__all__ = ["MAX_KEEP", "topn_offers", "topn_offers_cuda"]


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


def topn_offers_cuda(X: Any, levels: Any, W: Any, bias: Any, catW: Any, value: Any, cost: Any, lam: Any,
                     allowed: Any, min_ev: float, keep: int, mean: Any = None, catbase: Any = None
                     ) -> tuple[Any, Any, Any, Any]:
    """The CUDA kernel on CuPy arrays (same signature and results as :func:`topn_offers`).

    Never run in the session that wrote it (no GPU was lent); its device check is in
    ``bench/device_check.sh``.
    """
    import cupy as cp

    from kernels import _loader

    if not 1 <= keep <= MAX_KEEP:
        raise ValueError(f"keep must be in 1..{MAX_KEEP}, got {keep}")
    X = cp.ascontiguousarray(X)
    dtype = X.dtype
    suffix = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}[np.dtype(dtype)]
    n, F = X.shape
    W = cp.ascontiguousarray(cp.asarray(W, dtype=dtype))
    T = W.shape[1]
    if levels is None or levels.shape[1] == 0:
        levels = cp.zeros((n, 0), dtype=cp.int32)
        catW = cp.zeros((1, T), dtype=dtype)
        catbase = None
    L = cp.ascontiguousarray(cp.asarray(levels, dtype=cp.int32))
    # No reference: the columns are no reason candidates (a term minus +inf never wins).
    base = cp.full((max(1, L.shape[1]), T), cp.inf, dtype=dtype) if catbase is None else \
        cp.ascontiguousarray(cp.asarray(catbase, dtype=dtype))
    out_idx = cp.empty((n, keep), dtype=cp.int32)
    out_p = cp.empty((n, keep), dtype=cp.float32)
    out_ev = cp.empty((n, keep), dtype=cp.float64)
    out_reason = cp.empty((n, keep), dtype=cp.int32)
    mean = cp.zeros(F, dtype=dtype) if mean is None else cp.asarray(mean, dtype=dtype)
    kernel = _loader.get_kernel("topn_offers", f"engine_topn_offers_{suffix}")
    grid = max(1, min(-(-n // _BLOCK), 65535))
    args = [X, L, W, cp.asarray(bias, dtype=dtype), cp.ascontiguousarray(cp.asarray(catW, dtype=dtype)),
            cp.asarray(value, dtype=dtype), cp.asarray(cost, dtype=dtype), cp.asarray(lam, dtype=dtype),
            cp.ascontiguousarray(cp.asarray(allowed, dtype=cp.uint8)), np.int64(n), np.int32(F),
            np.int32(L.shape[1]), np.int32(T), dtype.type(min_ev), np.int32(keep), mean, base, out_idx, out_p,
            out_ev, out_reason]
    kernel((grid,), (_BLOCK,), tuple(args))
    return out_idx, out_p, out_ev, out_reason
