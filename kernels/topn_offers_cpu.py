"""Fused top-N offers on the CPU: the compiled (numba ``nogil``) twin of ``kernels/topn_offers.cu``.

Per row, the T logits are accumulated feature by feature, vectorised across offers (no
BLAS call: small threaded products per tile stalled on a loaded machine), then the sigmoid of all T logits runs in one
vectorised loop (an explicit polynomial ``exp``, relative error below 1e-14: numba has no
vector ``exp`` without Intel SVML, and a scalar ``exp`` per offer made the kernel only 2x
NumPy at T = 512), then the row walks its T offers once, applying value, cost, dual
price and the allowed mask, and keeps a running top-``keep`` list (insertion into a short sorted array: strictly larger scores move up, so ties keep
catalogue order). The tile buffer is reused: no ``(n, T)`` matrix is written. Same
contract as :func:`kernels.topn_offers.topn_offers`; logits agree with the twin to the
last few bits (BLAS may sum in another order), so the twin test compares with a tolerance
and checks the choices on rows without near-ties (the polynomial exp differs from libm's
in the last bits too).
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


_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238
_LN2_LO = 1.9082149292705877e-10


def _body(X, levels, W, bias, catW, value, cost, lam, allowed, min_ev, keep, mean,  # noqa: ANN001 (numba types)
          out_idx, out_p, out_ev, out_reason):  # pragma: no cover - compiled
    n, F = X.shape
    T = W.shape[1]
    Q = levels.shape[1]
    best_s = np.empty(keep, dtype=np.float64)
    best_ev = np.empty(keep, dtype=np.float64)
    best_p = np.empty(keep, dtype=np.float32)
    best_t = np.empty(keep, dtype=np.int32)
    poly = np.empty(T, dtype=np.float64)
    bits = np.empty(T, dtype=np.int64)
    scale = bits.view(np.float64)
    evs = np.empty(T, dtype=np.float64)
    ps = np.empty(T, dtype=np.float64)
    u = np.empty(T, dtype=np.float64)
    for row in range(n):
        if True:  # noqa: SIM108 - one row at a time: its T logits stay in L1
            # Logits as x·W, feature by feature, vectorised across the T offers. No BLAS call:
            # small multithreaded GEMMs per tile spin-waited for cores on a loaded machine
            # (measured 0.9 s -> 4-16 s for 262k rows x 512 offers, 2 busy cores).
            for t in range(T):
                u[t] = 0.0
            for f in range(F):
                x = X[row, f]
                wf = W[f]
                for t in range(T):
                    u[t] += x * wf[t]
            for q in range(Q):
                lw = catW[levels[row, q]]
                for t in range(T):
                    u[t] += lw[t]
            # exp(-|logit|) for every offer of the row in one branch-free loop that LLVM
            # vectorises (numba has no vector exp without SVML): range reduction by ln 2, a
            # degree-11 polynomial, and 2^k from its exponent bits; relative error < 1e-14.
            for t in range(T):
                a = min(abs(u[t] + bias[t]), 700.0)
                k = np.floor(-a * _LOG2E + 0.5)
                x = -a - k * _LN2_HI - k * _LN2_LO
                poly[t] = 1.0 + x * (1.0 + x * (0.5 + x * (1.0 / 6 + x * (1.0 / 24 + x * (1.0 / 120 + x * (
                    1.0 / 720 + x * (1.0 / 5040 + x * (1.0 / 40320 + x * (1.0 / 362880 + x * (
                        1.0 / 3628800 + x * (1.0 / 39916800)))))))))))
                bits[t] = (np.int64(k) + 1023) << 52
            for t in range(T):
                e = poly[t] * scale[t]
                logit = u[t] + bias[t]
                inv = 1.0 / (1.0 + e)
                p = inv if logit >= 0 else e * inv   # a select, not a branch
                ps[t] = p
                evs[t] = p * value[t] - cost[t]
            filled = 0
            for t in range(T):
                if allowed[row, t] == 0:
                    continue
                ev = evs[t]
                s = ev - lam[t]
                if filled == keep and not (s > best_s[keep - 1]):
                    continue
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
                best_p[pos] = np.float32(ps[t])
                best_t[pos] = t
                if filled < keep:
                    filled += 1
            for j in range(keep):
                if j < filled:
                    t = best_t[j]
                    out_idx[row, j] = t
                    out_p[row, j] = best_p[j]
                    out_ev[row, j] = best_ev[j]
                    # The reason: the feature whose term raises this offer's logit most.
                    code = -1
                    top = 0.0
                    for f in range(F):
                        d = X[row, f] - mean[f]
                        c = d * W[f, t]
                        if c > top:
                            top = c
                            code = 2 * f + (1 if d <= 0 else 0)
                    out_reason[row, j] = code
                else:
                    out_idx[row, j] = -1
                    out_p[row, j] = 0.0
                    out_ev[row, j] = 0.0
                    out_reason[row, j] = -1


def _compiled() -> Any:
    global _kernel
    if _kernel is None:
        with _lock:
            if _kernel is None:
                _kernel = compile_nogil(_body, "top-N offers kernel")
    return _kernel


def topn_offers_cpu(X: Any, levels: Any, W: Any, bias: Any, catW: Any, value: Any, cost: Any, lam: Any,
                    allowed: Any, min_ev: float, keep: int, mean: Any = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
    out_reason = np.empty((n, keep), dtype=np.int32)
    mean = np.zeros(X.shape[1]) if mean is None else np.ascontiguousarray(mean, dtype=np.float64)
    _compiled()(X, np.ascontiguousarray(levels, dtype=np.int32), W, np.ascontiguousarray(bias, dtype=np.float64),
                np.ascontiguousarray(catW, dtype=np.float64), np.ascontiguousarray(value, dtype=np.float64),
                np.ascontiguousarray(cost, dtype=np.float64), np.ascontiguousarray(lam, dtype=np.float64),
                np.ascontiguousarray(allowed, dtype=np.uint8), float(min_ev), int(keep), mean, out_idx, out_p, out_ev,
                out_reason)
    return out_idx, out_p, out_ev, out_reason
