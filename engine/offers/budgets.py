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
3. **Cuts at a tie** (:class:`Cuts`). A price alone takes every customer at its threshold or
   none: where many customers share the threshold at which a budget binds (identical
   features give identical expected values), raising the price above it would leave the
   budget far from full. So a raised price is a *cut*: the (B + 1)-th largest pair
   ``(threshold, −key)`` over the customers who took the offer, ``key`` the customer's
   tie-break key (:mod:`engine.offers.tiebreak`: a hash of the id and the offer). The
   kernel ranks with the price just *below* the cut's threshold, so the customers at it
   take the offer; then (:func:`apply_cuts`) those below the cut drop it again (a threshold
   under the level, or at it with a key not below the cut's) and their next offer, the
   kernel's extra slot, moves up: exactly their top N without this offer. So exactly B
   customers keep it when nothing else moves; the next pass counts and checks as before.
   An offer over budget again (customers whom other cuts moved in) is cut 0.1 % below its
   budget (at least one customer), room for the next, smaller, such overflow.
   The sample's prices (step 1) stop just below a tie instead of above it, so that such a
   budget is filled by a cut rather than left short. The choice among tied customers
   depends on their ids only: the same on every worker and in every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.offers.tiebreak import customer_keys

#: Rows of the uniform sample the first prices are found on (``--budget-sample-rows``): its
#: (rows, offers) matrices are what pricing holds in memory, whatever the input's size.
SAMPLE_ROWS = 50_000
#: The sample's seed (``engine recommend``'s default ``seed``; Model.recommend's).
SAMPLE_SEED = 42
MAX_SWEEPS = 30
MAX_FULL_PASSES = 20
HEADROOM = 0.001
WITHDRAWN = 1e300  # a price no expected value reaches
#: A price sits this far (relative) above the threshold it excludes: at an exact tie the kernel
#: keeps the earlier offer, so the customer at the threshold must lose by a margin.
MARGIN = 1e-9


def _above(t: float) -> float:
    return t + MARGIN * (1.0 + abs(t))


def _below(t: float) -> float:
    return t - MARGIN * (1.0 + abs(t))


def sample_cap(budget: float, scale: float) -> float:
    """How many of the sample's customers an offer's sample price lets in.

    Every row sampled (``scale`` 1): the budget less a little headroom (0.1 %, at least one
    customer), so the full pass rarely finds the offer one customer over (a pass more) and
    gives up at most 0.1 % of the budget. A part of the rows: the budget scaled to the sample
    *plus* three standard deviations of that count (and one), so that the first full pass
    almost surely finds the offer over its budget and cuts it there exactly. Prices only
    rise: a sample price that landed too high would leave the budget short by the sample's
    error for good (8 % of a budget of 6,000 from a 2.5 % sample, 12 % of one of 400 from a
    15 % sample; 60 % where a budget is a few sampled customers, as on 100M rows). The cost
    is passes: the cuts move customers into other offers, which may then be cut in turn
    (2–4 full passes on ``bench/budgets_lp.py``'s instances, 5 on the tests' worst).
    """
    if scale >= 1.0:
        return max(0.0, budget - max(1.0, HEADROOM * budget))
    expected = budget * scale
    return expected + 3.0 * float(np.sqrt(expected)) + 1.0


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
            cap = sample_cap(float(budgets[j]), scale)
            want = int(np.sum(t > 0))
            if want <= cap:
                new = 0.0
            elif (k := int(np.floor(cap))) < t.size:
                level = float(-np.partition(-t, k)[k])
                # Customers tied at the level: stop just below it (all of them take the
                # offer) rather than above (none does); the full pass then cuts the tie.
                tied = np.count_nonzero(np.abs(t - level) <= MARGIN * (1.0 + abs(level)))
                new = max(_below(level) if tied > 1 else _above(level), 0.0)
            else:
                new = 0.0
            moved = max(moved, abs(new - lam[j]))
            lam[j] = new
        if moved <= 1e-12:
            break
    return lam


@dataclass
class Cuts:
    """The offers whose price is a cut (module docstring, step 3): per offer its threshold
    level (the price λ_j the manifest and the dual bound read) and its key cut-off."""

    level: dict[int, float] = field(default_factory=dict)
    key: dict[int, int] = field(default_factory=dict)

    def kernel_prices(self, lam: np.ndarray) -> np.ndarray:
        """The prices the kernel ranks by: a cut offer's just below its level (the tie takes it)."""
        if not self.level:
            return lam
        out = lam.copy()
        for j, level in self.level.items():
            out[j] = max(_below(level), np.nextafter(0.0, 1.0))
        return out

    def record(self) -> dict[str, list[Any]]:
        """What a run key holds of the cuts (the keys stay out of manifests: one customer's hash)."""
        return {str(j): [self.level[j], str(self.key[j])] for j in sorted(self.level)}


@dataclass(frozen=True)
class Held:
    """Where offer ``j`` sits in a block's results: its rows, its slots, and each one's threshold."""

    rows: np.ndarray
    slots: np.ndarray
    t: np.ndarray


def held(idx: np.ndarray, ev: np.ndarray, lam: np.ndarray, N: int, j: int) -> Held:
    """For rows whose top N holds offer j: ``t = EV_ij − max(0, (N+1)-th score)`` (``lam``: the
    kernel's prices). ``idx``/``ev`` come from a kernel call with ``keep = N + 1`` (or more)."""
    rows, slots = np.nonzero(idx[:, :N] == j)
    nxt = np.zeros(rows.size)
    if idx.shape[1] > N:
        after = idx[rows, N]
        has = after >= 0
        nxt[has] = np.maximum(ev[rows[has], N] - lam[after[has]], 0.0)
    return Held(rows, slots, ev[rows, slots] - nxt)


def apply_cuts(cuts: Cuts, ids: Any, results: tuple[np.ndarray, ...], lam: np.ndarray, N: int,
               empty: tuple[Any, ...] = (-1, 0.0, 0.0, -1)) -> None:
    """Drop each cut offer from the rows below its cut, in place; their later slots move up.

    ``results``: the kernel's ``(rows, keep)`` arrays (offer first), ``ids`` the rows'
    customer ids, ``lam`` the kernel's prices, ``empty`` each array's value of an empty slot.
    """
    idx = results[0]
    keep = idx.shape[1]
    for j in sorted(cuts.level):
        h = held(idx, results[2], lam, N, j)
        if not h.rows.size:
            continue
        level = cuts.level[j]
        drop = h.t < level
        at = np.flatnonzero(h.t == level)
        if at.size:
            drop[at] = customer_keys(ids.take(h.rows[at]), j) >= np.uint64(cuts.key[j])
        rows, slots = h.rows[drop], h.slots[drop]
        for s in np.unique(slots):
            r = rows[slots == s]
            for a, nothing in zip(results, empty):
                a[r, s:keep - 1] = a[r, s + 1:]
                a[r, keep - 1] = nothing


def top_pairs(t: np.ndarray, rows: np.ndarray, ids: Any, j: int, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """The B + 1 largest pairs ``(t, −key)`` of offer j's holders (``rows`` index ``ids``), largest first.

    Keys are computed only for the rows whose threshold reaches the (B + 1)-th largest (ties included).
    """
    k = int(budget) + 1
    if t.size > k:
        floor = -np.partition(-t, k - 1)[k - 1]
        sel = np.flatnonzero(t >= floor)
        t, rows = t[sel], rows[sel]
    keys = customer_keys(ids.take(rows), j) if rows.size else np.zeros(0, np.uint64)
    return merge_pairs([(t, keys)], budget)


def collect_pairs(found: dict[int, tuple[np.ndarray, np.ndarray]], idx: np.ndarray, ev: np.ndarray,
                  lam: np.ndarray, N: int, ids: Any, budgets: np.ndarray) -> None:
    """Add one block's holders to ``found``: per budgeted offer, the B + 1 largest ``(t, key)``
    pairs so far (``lam``: the kernel's prices; ``ids``: the block's customer ids)."""
    for j in np.flatnonzero(np.isfinite(budgets)).tolist():
        h = held(idx, ev, lam, N, j)
        pairs = top_pairs(h.t, h.rows, ids, j, budgets[j])
        found[j] = merge_pairs([found[j], pairs], budgets[j]) if j in found else pairs


def merge_pairs(pairs: list[tuple[np.ndarray, np.ndarray]], budget: float) -> tuple[np.ndarray, np.ndarray]:
    """The B + 1 largest of several ``(t, key)`` lists: larger ``t`` first, then smaller ``key``."""
    t = np.concatenate([np.zeros(0)] + [np.asarray(p[0], dtype=np.float64) for p in pairs])
    keys = np.concatenate([np.zeros(0, np.uint64)] + [np.asarray(p[1], dtype=np.uint64) for p in pairs])
    order = np.lexsort((keys, -t))[: int(budget) + 1]
    return t[order], keys[order]


def raise_prices(lam: np.ndarray, cuts: Cuts, customers: np.ndarray, budgets: np.ndarray,
                 found: dict[int, tuple[np.ndarray, np.ndarray]], final: bool) -> tuple[np.ndarray, Cuts, list[int]]:
    """New prices and cuts after a full pass; the offers that were over budget. ``found``: per
    budgeted offer its holders' B + 1 largest ``(t, key)`` pairs (:func:`merge_pairs`).
    ``final``: withdraw the offers over budget instead."""
    over = [j for j in range(lam.size) if np.isfinite(budgets[j]) and customers[j] > budgets[j]]
    lam = lam.copy()
    cuts = Cuts(dict(cuts.level), dict(cuts.key))
    for j in over:
        if final:
            lam[j] = WITHDRAWN
            cuts.level.pop(j, None)
            cuts.key.pop(j, None)
            continue
        t, keys = found.get(j, (np.zeros(0), np.zeros(0, np.uint64)))
        # The first cut lets in exactly B. An offer over budget again was filled by customers
        # whom other offers' cuts moved in; cut again, it keeps room for a few more (0.1 %, at
        # least one): such overflows shrink some 4-fold a pass, and chasing the last one or
        # two customers cost 3-4 passes more on the tests' data.
        k = int(budgets[j]) - (max(1, int(np.ceil(HEADROOM * budgets[j]))) if j in cuts.level else 0)
        if k >= t.size:
            continue   # not B + 1 holders seen: nothing to cut (cannot happen when over budget)
        # The (k + 1)-th largest pair: exactly k holders are above it. Every holder was above
        # the previous cut, so the new one is higher: prices only rise.
        lam[j] = float(t[k])
        cuts.level[j] = float(t[k])
        cuts.key[j] = int(keys[k])
    return lam, cuts, over


def shown_price(lam: float, holders: np.ndarray, minimum: int) -> float | None:
    """The price a manifest, report or log shows for an offer: never one customer's value.

    A binding price is an order statistic (the threshold of the customer at the cut), so it
    is shown as the mean of the ``minimum`` lowest thresholds among the offer's customers
    (``holders``: theirs, from the last pass), as :func:`engine.privacy.private_quantiles`
    shows a quantile; with fewer than ``2 * minimum`` customers (the mean of them all could
    be differenced), not at all. No price (0) is shown as it is; a withdrawn offer has none.
    """
    if lam >= WITHDRAWN:
        return None
    if lam == 0.0:
        return 0.0
    t = np.sort(np.asarray(holders, dtype=np.float64))
    if t.size < 2 * minimum:
        return None
    return float(t[:minimum].mean())


def shown_bound(bound: float, digits: int = 4) -> float:
    """The dual bound as a manifest shows it: rounded *up* to ``digits`` significant figures.

    Still an upper bound on the optimum (the gap taken from it is an upper bound on the true
    gap, by at most 0.1 % more). Exact, it gave a price away by differencing: with one
    budgeted offer short of its budget, ``(bound - achieved) / (budget - customers)`` is that
    offer's exact price, one customer's threshold. Rounded, that quotient is off by up to a
    ten-thousandth of the run's whole value divided by the shortfall: an approximate price,
    as the one shown (the mean of the marginal customers' thresholds), never the exact one.
    """
    if not (math.isfinite(bound) and bound > 0):
        return bound
    step = 10.0 ** (math.floor(math.log10(bound)) - (digits - 1))
    return float(f"{math.ceil(bound / step) * step:.{digits + 1}g}")


def dual_bound(score_sum: float, lam: np.ndarray, budgets: np.ndarray) -> float:
    """``g(λ)``: the positive scores the pass recommended plus ``Σ λ_j B_j`` over budgeted offers."""
    priced = np.isfinite(budgets) & (lam < WITHDRAWN)
    withdrawn = lam >= WITHDRAWN
    extra = float(np.sum(lam[priced] * budgets[priced]))
    if withdrawn.any():
        return float("inf")  # a withdrawn offer's price is not a useful bound
    return score_sum + extra
