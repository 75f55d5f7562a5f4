"""Fused top-N offers on the CPU: the compiled (numba ``nogil``) twin of ``kernels/topn_offers.cu``.

Rows are taken in tiles of :data:`TILE`: the tile's logits for every offer come from one
small matrix product (``(TILE, F) @ (F, T)``, a BLAS call inside the compiled code, a few
hundred KB that stays in cache), then each row walks its T offers once, applying the
sigmoid, value, cost, dual price and the allowed mask, and keeps a running top-``keep``
list (insertion into a short sorted array: strictly larger scores move up, so ties keep
catalogue order). The tile buffer is reused: no ``(n, T)`` matrix is written. Same
contract as :func:`kernels.topn_offers.topn_offers`; logits agree with the twin to the
last few bits (BLAS may sum in another order), so the twin test compares with a tolerance
and checks the choices on rows without near-ties.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from kernels._numba import compile_nogil
from kernels.topn_offers import MAX_KEEP

TILE = 256
_lock = threading.Lock()
_kernel: Any = None


def _body(X, levels, W, bias, catW, value, cost, lam, allowed, min_ev, keep,  # noqa: ANN001 (numba types)
          out_idx, out_p, out_ev):  # pragma: no cover - compiled
    n, F = X.shape
    T = W.shape[1]
    Q = levels.shape[1]
    best_s = np.empty(keep, dtype=np.float64)
    best_ev = np.empty(keep, dtype=np.float64)
    best_p = np.empty(keep, dtype=np.float32)
    best_t = np.empty(keep, dtype=np.int32)
    for r0 in range(0, n, TILE):
        m = min(TILE, n - r0)
        tile = np.dot(X[r0:r0 + m], W)
        for r in range(m):
            row = r0 + r
            filled = 0
            for t in range(T):
                if allowed[row, t] == 0:
                    continue
                logit = tile[r, t] + bias[t]
                for q in range(Q):
                    logit += catW[levels[row, q], t]
                e = np.exp(-abs(logit))
                p = 1.0 / (1.0 + e) if logit >= 0 else e / (1.0 + e)
                ev = p * value[t] - cost[t]
                s = ev - lam[t]
                if not (ev >= min_ev):
                    continue
                if lam[t] != 0.0 and not (s > 0.0):
                    continue
                pos = filled
                while pos > 0 and best_s[pos - 1] < s:
                    pos -= 1
                if pos >= keep:
                    continue
                last = filled if filled < keep else keep - 1
                for j in range(last, pos, -1):
                    best_s[j] = best_s[j - 1]
                    best_ev[j] = best_ev[j - 1]
                    best_p[j] = best_p[j - 1]
                    best_t[j] = best_t[j - 1]
                best_s[pos] = s
                best_ev[pos] = ev
                best_p[pos] = np.float32(p)
                best_t[pos] = t
                if filled < keep:
                    filled += 1
            for j in range(keep):
                if j < filled:
                    out_idx[row, j] = best_t[j]
                    out_p[row, j] = best_p[j]
                    out_ev[row, j] = best_ev[j]
                else:
                    out_idx[row, j] = -1
                    out_p[row, j] = 0.0
                    out_ev[row, j] = 0.0


def _compiled() -> Any:
    global _kernel
    if _kernel is None:
        with _lock:
            if _kernel is None:
                _kernel = compile_nogil(_body, "top-N offers kernel")
    return _kernel


def topn_offers_cpu(X: Any, levels: Any, W: Any, bias: Any, catW: Any, value: Any, cost: Any, lam: Any,
                    allowed: Any, min_ev: float, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The compiled kernel; arguments and results as :func:`kernels.topn_offers.topn_offers` (float64)."""
    if not 1 <= keep <= MAX_KEEP:
        raise ValueError(f"keep must be in 1..{MAX_KEEP}, got {keep}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    W = np.ascontiguousarray(W, dtype=np.float64)
    T = W.shape[1]
    if levels is None or np.asarray(levels).shape[1] == 0:
        levels = np.zeros((n, 0), dtype=np.int32)
        catW = np.zeros((1, T))
    out_idx = np.empty((n, keep), dtype=np.int32)
    out_p = np.empty((n, keep), dtype=np.float32)
    out_ev = np.empty((n, keep), dtype=np.float64)
    _compiled()(X, np.ascontiguousarray(levels, dtype=np.int32), W, np.ascontiguousarray(bias, dtype=np.float64),
                np.ascontiguousarray(catW, dtype=np.float64), np.ascontiguousarray(value, dtype=np.float64),
                np.ascontiguousarray(cost, dtype=np.float64), np.ascontiguousarray(lam, dtype=np.float64),
                np.ascontiguousarray(allowed, dtype=np.uint8), float(min_ev), int(keep), out_idx, out_p, out_ev)
    return out_idx, out_p, out_ev
