"""Many logistic heads at once: one L2 fit for T offers, CV across heads, Platt per head, shrinkage.

Why not T scikit-learn fits: every head shares the design matrix ``Z`` (n, D). The
objective of T independent L2 logistic regressions is a sum of separate terms, so one
L-BFGS run over the stacked ``(D + 1, T)`` parameters minimises all of them together,
and each evaluation is two matrix products (``Z @ B`` and ``Zᵀ @ G``) for every head at
once: BLAS-3 instead of T BLAS-2 loops. Each head keeps its own ``C`` (scikit-learn's
meaning: loss ``C · Σ logloss + ½‖w‖²``; the intercept is not penalised).

Cross-validation is vectorised the same way: one pass over the folds, and in each fold
one warm-started fit per grid value for *all* heads; each head then picks the ``C`` of its
lowest out-of-fold log loss.

Calibration (:func:`platt`): Platt scaling per head on the out-of-fold logits at the chosen
C (with Platt's smoothed targets), so propensities are comparable across offers. A head
whose out-of-fold ranking is worse than chance gets slope 0 (its base rate for everyone). It is
affine in the logit and is folded into the head's weights at scoring.

Shrinkage of rare heads (:data:`RARE_POSITIVES`): a head with ``m < 200`` positive customers
has its calibrated logit pulled toward the logit of its base rate,
``logit' = β0 + α (logit − β0)`` with ``α = m / 200``: with few positives its ranking is
mostly noise, and a rare offer's propensities then stay near its base rate instead of
winning top slots on chance. Still affine: folded into the stored Platt pair.

Excluded features (an offer's ``exclude_features``; ``mask`` ``(D, T)``, 0 where head t may
not use design column d): those coefficients start at 0 and their gradient is 0, so L-BFGS
never moves them (its steps are combinations of past gradients and steps, all 0 there), and
they are set to exactly 0 after the fit. Held at 0, they add nothing to the loss or the
penalty, so the masked head is the L2 fit on its own columns only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

#: Decades from 1e-4 to 100: the heads' C grid.
HEAD_C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
RARE_POSITIVES = 200


def _objective(theta: np.ndarray, Z: np.ndarray, Y: np.ndarray, Wt: np.ndarray, inv_c: np.ndarray,
               scale: float, mask: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    D, T = Z.shape[1], Y.shape[1]
    P = theta.reshape(D + 1, T)
    B, b = P[:D], P[D]
    S = Z @ B + b
    # log(1 + e^s) - y s, weighted (weight 0 where the head's target is null)
    loss = float(((np.logaddexp(0.0, S) - Y * S) * Wt).sum() + 0.5 * (inv_c * (B * B)).sum())
    G = (0.5 * (1.0 + np.tanh(0.5 * S)) - Y) * Wt
    grad = np.empty_like(P)
    grad[:D] = Z.T @ G + inv_c * B
    if mask is not None:
        grad[:D] *= mask
    grad[D] = G.sum(axis=0)
    return loss * scale, grad.ravel() * scale


def fit_heads(Z: np.ndarray, Y: np.ndarray, C: np.ndarray, *, weights: np.ndarray | None = None,
              start: np.ndarray | None = None, max_iter: int = 500, tol: float = 1e-8,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Stacked parameters ``(D + 1, T)`` (coefficients, then the intercepts) of T L2 logistic heads.

    ``Y`` (n, T) holds 0/1 targets, ``weights`` (n, T) 1 where a head's target is known, 0 where
    not; ``C`` (T,) each head's inverse regularisation; ``start`` a warm start; ``mask``
    ``(D, T)`` 0 where a head's coefficient is held at exactly 0 (module docstring).
    """
    from scipy.optimize import minimize

    Z = np.ascontiguousarray(Z, dtype=np.float64)
    n, D = Z.shape
    T = Y.shape[1]
    Wt = np.ones_like(Y, dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    inv_c = (1.0 / np.asarray(C, dtype=np.float64))[None, :]
    theta0 = np.zeros((D + 1, T)) if start is None else np.array(start, dtype=np.float64).reshape(D + 1, T)
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float64)
        if mask.all():
            mask = None
        else:
            theta0[:D] *= mask
    scale = 1.0 / max(n, 1)
    res = minimize(_objective, theta0.ravel(), args=(Z, np.asarray(Y, dtype=np.float64), Wt, inv_c, scale, mask),
                   jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12})
    params = res.x.reshape(D + 1, T)
    if mask is not None:
        params[:D][mask == 0] = 0.0  # exactly 0 (never -0.0 or a stray step)
    return params


def logits(Z: np.ndarray, params: np.ndarray) -> np.ndarray:
    D = Z.shape[1]
    return Z @ params[:D] + params[D]


def _log_loss(Y: np.ndarray, S: np.ndarray, Wt: np.ndarray) -> np.ndarray:
    """Mean log loss per head of logits ``S``."""
    return ((np.logaddexp(0.0, S) - Y * S) * Wt).sum(axis=0) / np.maximum(Wt.sum(axis=0), 1.0)


@dataclass
class HeadSearch:
    C: np.ndarray            # (T,) chosen per head
    oof_logit: np.ndarray    # (m, T) out-of-fold logits at the chosen C, over ``index``
    index: np.ndarray        # rows of Z the folds ran on
    curve: np.ndarray        # (len(grid), T) out-of-fold log loss
    grid: tuple[float, ...]
    folds: int


def search_heads(Z: np.ndarray, Y: np.ndarray, weights: np.ndarray, seed: int, *, folds: int = 5,
                 grid: tuple[float, ...] = HEAD_C_GRID, max_rows: int = 50_000,
                 on_fold: Any = None, mask: np.ndarray | None = None) -> HeadSearch:
    """C per head by k-fold CV, every head in the same fits; out-of-fold logits at the choice."""
    n, T = Y.shape
    index = np.arange(n)
    if n > max_rows:
        index = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
    Zs, Ys, Ws = Z[index], Y[index], weights[index]
    m = index.size
    fold_of = np.random.default_rng(seed).permutation(m) % folds
    grid = tuple(sorted(grid))
    oof = np.zeros((len(grid), m, T))
    with threadpool_limits(1):
        for f in range(folds):
            if on_fold is not None:
                on_fold(f, folds)
            tr, va = fold_of != f, fold_of == f
            params = None
            for g, c in enumerate(grid):
                params = fit_heads(Zs[tr], Ys[tr], np.full(T, c), weights=Ws[tr], start=params, max_iter=200,
                                   tol=1e-6, mask=mask)
                oof[g][va] = logits(Zs[va], params)
    curve = np.stack([_log_loss(Ys, oof[g], Ws) for g in range(len(grid))])
    best = np.argmin(curve, axis=0)  # lowest C on ties: the simpler head
    C = np.asarray([grid[b] for b in best])
    chosen = oof[best, :, np.arange(T)].T  # (m, T)
    return HeadSearch(C, chosen, index, curve, grid, folds)


def platt(S: np.ndarray, Y: np.ndarray, weights: np.ndarray, iters: int = 50) -> np.ndarray:
    """Platt's (A, B) per head, ``p = σ(A s + B)``, fitted on logits ``S`` (m, T) by Newton steps.

    Targets are Platt's smoothed ones, ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)``, which keeps
    A and B finite on separable folds. Returns ``(T, 2)``.
    """
    T = S.shape[1]
    pos = (Y * weights).sum(axis=0)
    neg = ((1 - Y) * weights).sum(axis=0)
    target = np.where(Y > 0, (pos + 1) / (pos + 2), 1.0 / (neg + 2))
    A, B = np.ones(T), np.zeros(T)
    for _ in range(iters):
        u = A * S + B
        p = 0.5 * (1.0 + np.tanh(0.5 * u))
        r = (p - target) * weights
        q = p * (1 - p) * weights + 1e-12
        gA, gB = (r * S).sum(axis=0), r.sum(axis=0)
        hAA, hAB, hBB = (q * S * S).sum(axis=0) + 1e-9, (q * S).sum(axis=0), q.sum(axis=0) + 1e-9
        det = hAA * hBB - hAB * hAB
        dA = (hBB * gA - hAB * gB) / det
        dB = (hAA * gB - hAB * gA) / det
        A, B = A - dA, B - dB
        if max(np.abs(dA).max(), np.abs(dB).max()) < 1e-10:
            break
    # A negative slope means the head's out-of-fold ranking is worse than chance (a head
    # without signal, whose heavily regularised folds anti-correlate): it is not reversed,
    # it is flattened to the head's base rate (A = 0), the honest propensity of a blind head.
    flat = ~(A > 0)
    if flat.any():
        rate = np.clip((pos + 1) / (pos + neg + 2), 1e-6, 1 - 1e-6)
        A = np.where(flat, 0.0, A)
        B = np.where(flat, np.log(rate / (1 - rate)), B)
    return np.stack([A, B], axis=1)


def shrink(platt_ab: np.ndarray, positives: np.ndarray, base_rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Platt pairs with rare heads pulled toward their base rate (module docstring); and α per head."""
    alpha = np.minimum(1.0, np.asarray(positives, dtype=np.float64) / RARE_POSITIVES)
    rate = np.clip(base_rate, 1e-6, 1 - 1e-6)
    beta0 = np.log(rate / (1 - rate))
    A = alpha * platt_ab[:, 0]
    B = alpha * (platt_ab[:, 1] - beta0) + beta0
    return np.stack([A, B], axis=1), alpha


def calibrated(S: np.ndarray, platt_ab: np.ndarray) -> np.ndarray:
    u = platt_ab[:, 0] * S + platt_ab[:, 1]
    return 0.5 * (1.0 + np.tanh(0.5 * u))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width bins (weighted by bin size)."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() * abs(float(p[sel].mean()) - float(y[sel].mean()))
    return total / max(y.size, 1)
