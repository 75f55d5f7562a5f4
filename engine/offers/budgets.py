"""Budgets by dual prices: one price λ_j per offer, so that ranking by ``EV − λ_j`` respects every budget.

The problem: maximise ``Σ_ij EV_ij x_ij`` over eligible, not-owned pairs with
``EV_ij >= min_expected_value``, subject to at most N offers per customer and at most
``B_j`` customers per offer (``0 <= x <= 1``). Its Lagrangian dual over the budget
constraints is

    g(λ) = Σ_i  (sum of the N largest positive values of EV_ij − λ_j over j)  +  Σ_j λ_j B_j

and ``g(λ) >= OPT`` for every ``λ >= 0`` (the *dual bound* the manifest records). For fixed
λ the inner maximum is exactly what the fused top-N kernel computes when it ranks by
``EV − λ_j`` (an offer with a price is a candidate only where that is positive). So no
solver is needed, only passes of the same kernel:

1. **On a sample** (:func:`sample_prices`): exact coordinate descent on g. For offer j with
   the other prices fixed, customer i takes j iff ``λ_j < t_ij = EV_ij − max(0, N-th best
   other score)``; g is minimised over λ_j at the ``(B_j' + 1)``-th largest ``t_ij``
   (``B_j'`` the budget scaled to the sample), or 0 when at most ``B_j'`` customers want j.
   Sweeps over the budgeted offers until the prices settle.
2. **On all rows** (:func:`raise_prices`): a pass with those prices counts every offer's
   customers exactly. An offer over its budget gets its price raised to the
   ``(B_j + 1)``-th largest threshold among the customers who took it (so at most B_j
   keep it, ties excluded), and the pass is repeated; prices only rise, so this ends. After
   :data:`MAX_FULL_PASSES` passes an offer still over budget is withdrawn (price +inf).
   Budgets are therefore never exceeded; the recommended value is within the gap
   ``g(λ) − achieved`` of the optimum, which the manifest records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SWEEPS = 30
MAX_FULL_PASSES = 20
HEADROOM = 0.001
WITHDRAWN = 1e300  # a price no expected value reaches
#: A price sits this far (relative) above the threshold it excludes: at an exact tie the kernel
#: keeps the earlier offer, so the customer at the threshold must lose by a margin.
MARGIN = 1e-9


def _above(t: float) -> float:
    return t + MARGIN * (1.0 + abs(t))


def _nth_other(S: np.ndarray, j: int, N: int) -> np.ndarray:
    """Per row, the N-th largest positive score among the offers other than ``j`` (0 when fewer)."""
    other = S.copy()
    other[:, j] = -np.inf
    T = other.shape[1]
    if N > T - 1:
        return np.zeros(S.shape[0])
    part = -np.partition(-other, N - 1, axis=1)[:, N - 1]
    return np.maximum(part, 0.0)


def sample_prices(EV: np.ndarray, candidate: np.ndarray, budgets: np.ndarray, N: int, scale: float,
                  lam: np.ndarray | None = None, sweeps: int = MAX_SWEEPS) -> np.ndarray:
    """Coordinate descent on the dual over a sample: ``EV`` (m, T), ``candidate`` (m, T) bool.

    ``budgets`` (T,) with ``inf`` for an offer without one; ``scale`` = sample rows / all rows.
    """
    m, T = EV.shape
    lam = np.zeros(T) if lam is None else lam.astype(np.float64).copy()
    budgeted = [j for j in range(T) if np.isfinite(budgets[j])]
    for _ in range(sweeps):
        moved = 0.0
        for j in budgeted:
            S = np.where(candidate, EV - lam[None, :], -np.inf)
            # An unpriced offer with a negative score is still a candidate (EV >= min_ev):
            # the kernel keeps it; prices only act through positive scores.
            t = np.where(candidate[:, j], EV[:, j] - _nth_other(S, j, N), -np.inf)
            # A little headroom (0.1%, at least one customer): the full pass then rarely finds an
            # offer one customer over, which costs a pass, and gives up at most 0.1% of the budget.
            cap = max(0.0, budgets[j] - max(1.0, HEADROOM * budgets[j])) * scale
            want = int(np.sum(t > 0))
            if want <= cap:
                new = 0.0
            else:
                k = int(np.floor(cap))
                new = _above(float(-np.partition(-t, k)[k])) if k < t.size else 0.0
                new = max(new, 0.0)
            moved = max(moved, abs(new - lam[j]))
            lam[j] = new
        if moved <= 1e-12:
            break
    return lam


@dataclass
class PassTally:
    """What a full pass tells the prices: customers per offer and, per offer over budget, thresholds."""

    customers: np.ndarray
    thresholds: dict[int, list[np.ndarray]]


def thresholds(idx: np.ndarray, ev: np.ndarray, lam: np.ndarray, N: int, offers: list[int]) -> dict[int, np.ndarray]:
    """For rows whose top N holds offer j (in ``offers``): ``t = EV_ij − max(0, (N+1)-th score)``.

    ``idx``/``ev`` come from a kernel call with ``keep = N + 1``.
    """
    n = idx.shape[0]
    nxt = np.zeros(n)
    if idx.shape[1] > N:
        has = idx[:, N] >= 0
        nxt[has] = np.maximum(ev[has, N] - lam[idx[has, N]], 0.0)
    out = {}
    for j in offers:
        rows, slots = np.nonzero(idx[:, :N] == j)
        out[j] = ev[rows, slots] - nxt[rows]
    return out


def raise_prices(lam: np.ndarray, customers: np.ndarray, budgets: np.ndarray,
                 found: dict[int, list[np.ndarray]], final: bool) -> tuple[np.ndarray, list[int]]:
    """New prices after a full pass; the offers that were over budget. ``final``: withdraw them instead."""
    over = [j for j in range(lam.size) if np.isfinite(budgets[j]) and customers[j] > budgets[j]]
    lam = lam.copy()
    for j in over:
        if final:
            lam[j] = WITHDRAWN
            continue
        t = np.concatenate(found.get(j) or [np.zeros(0)])
        k = int(budgets[j])
        # The (B+1)-th largest threshold: at most B customers have a larger one.
        new = _above(float(-np.partition(-t, k)[k])) if k < t.size else lam[j]
        lam[j] = max(new, lam[j], np.nextafter(0.0, 1.0))
    return lam, over


def dual_bound(score_sum: float, lam: np.ndarray, budgets: np.ndarray) -> float:
    """``g(λ)``: the positive scores the pass recommended plus ``Σ λ_j B_j`` over budgeted offers."""
    priced = np.isfinite(budgets) & (lam < WITHDRAWN)
    withdrawn = lam >= WITHDRAWN
    extra = float(np.sum(lam[priced] * budgets[priced]))
    if withdrawn.any():
        return float("inf")  # a withdrawn offer's price is not a useful bound
    return score_sum + extra
