"""The privacy rule, in one place: no stored or shown statistic describes fewer than
:data:`MIN_CUSTOMERS` customers, and none is one customer's value.

Every profile (``model.json``), report, manifest and log line that carries a statistic of
customer values goes through these functions:

* :func:`min_customers` is the minimum in force: :data:`MIN_CUSTOMERS` (20), or a higher
  setting (``privacy_min_customers``); a lower one is refused.
* :func:`enough` says whether a statistic over ``count`` customers may be kept at all.
* :func:`private_quantiles` gives quantiles that are never an order statistic of the data:
  each is the mean of the ``m`` sorted values around the quantile's position (``m`` = the
  minimum), so a bin edge or a median describes ``m`` customers, never a lone one, and a
  quantile whose tail holds fewer than ``m`` customers is left out. The exact minimum and
  maximum are never stored.
* :func:`clip_bounds` gives per-column bounds at which a lone extreme customer is pulled
  into a crowd of at least ``m`` before K-means is fitted, so no segment is made of them;
  :func:`coarse_group_means` rounds the centroids (and the report's segment means) to one
  member's influence.

* :func:`bounded_mean` and :func:`bounded_std` (means, fills, scales, the windows of
  :func:`private_quantiles`) bound what one customer can do to a statistic, against the
  differencing attack (a reader who knows every other customer's value solves the mean for
  the last one): values are clipped at the ``m``-th smallest and ``m``-th largest value
  (``m`` customers lie at or beyond each bound, so a lone extreme customer is pulled into a
  crowd and moving them changes nothing), and the result is rounded to a grid as coarse as
  one customer's whole influence (``(hi - lo) / n`` for a mean of ``n``). Knowing every
  other value then tells at most on which side of one threshold a customer's value lies,
  never the value. A mean therefore needs ``2 m`` customers (the two crowds at the bounds):
  a higher minimum for means than for counts.
* Customers are distinct ids, not rows: training refuses repeated ids unless the rows are
  events (``--rows-are-events``), when every minimum in rows becomes
  :func:`rows_for_customers` (a group of that many rows holds ``m`` customers for sure).
* :func:`gate_score_statistics` is the one place where a score run's group statistics
  (segments, propensity bins and mean, action thresholds, drift bins, level shares) become
  manifest and report fields: a group whose rows cannot be shown to hold ``m`` distinct
  customers (rows minus every row that repeats an id or has none) is suppressed, and the
  manifest says what was.

Issue 18's categorical levels use :func:`min_customers` as their minimum level count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import UsageError

MIN_CUSTOMERS = 20


def min_customers(setting: int | None = None) -> int:
    """The minimum number of customers behind any statistic: 20, or a higher ``setting``."""
    if setting is None:
        return MIN_CUSTOMERS
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < MIN_CUSTOMERS:
        raise UsageError(f"the privacy minimum may be raised, never lowered: it must be an integer "
                         f">= {MIN_CUSTOMERS} (got {setting!r})")
    return setting


def enough(count: int, minimum: int | None = None) -> bool:
    """Whether a statistic over ``count`` customers may be stored or shown."""
    return count >= (minimum or MIN_CUSTOMERS)


def private_quantiles(finite: np.ndarray, qs: Sequence[float], minimum: int | None = None,
                      *, need_tails: bool = True, rows_per_customer: int = 1) -> dict[float, float]:
    """Quantiles ``qs`` of ``finite`` that each average ``minimum`` neighbouring order statistics.

    At least ``2 * minimum`` values are needed (so no window is the mean of every value, which
    the plain mean would give away by differencing). A quantile
    is left out when fewer than ``minimum`` values lie on its smaller side (``need_tails``);
    none is given with fewer than ``2 * minimum`` values in all (no bounds). Each window's mean
    is rounded to :func:`window_step` (one customer's whole influence on it, local to the
    window), so a reader who knows the other values of a window learns the last one only to
    within about the window's width.
    """
    m = minimum or MIN_CUSTOMERS
    values = np.sort(np.asarray(finite, dtype=np.float64))
    n = values.size
    if n < 2 * m:
        return {}
    cums = np.concatenate([[0.0], np.cumsum(values)])
    out: dict[float, float] = {}
    for q in qs:
        if need_tails and min(q, 1.0 - q) * n < m:
            continue
        centre = q * (n - 1)
        start = int(np.clip(round(centre - (m - 1) / 2.0), 0, n - m))
        lo, hi = float(values[start]), float(values[start + m - 1])
        mean = (cums[start + m] - cums[start]) / m
        # Kept inside its window (rounding could put it a hair outside).
        out[q] = _coarse(float(mean), window_step(hi - lo, m, rows_per_customer), lo, hi)
    return out


def window_step(width: float, count: int, rows_per_customer: int = 1) -> float:
    """The grid a mean of ``count`` values spanning ``width`` is rounded to: the power of two
    at or above one customer's whole influence, ``width * rows_per_customer / count``.

    A power of two, not the influence itself: the grid then moves only when a value moves the
    window's width by a factor of two, so trying candidate values against the grid tells a
    reader little more than the rounding already hides. Zero for a window of equal values
    (their shared value belongs to every one of them, to none alone).
    """
    influence = width * max(1, rows_per_customer) / max(1, count)
    if not (influence > 0 and math.isfinite(influence)):
        return 0.0
    return float(2.0 ** math.ceil(math.log2(influence)))


def clip_bounds(values: np.ndarray, minimum: int | None = None, *,
                is_sorted: bool = False) -> tuple[float, float] | None:
    """``(lo, hi)``: the ``minimum``-th smallest and ``minimum``-th largest finite value.

    At least ``minimum`` customers lie at or below ``lo`` and at or above ``hi``, so after
    clipping no value beyond the bounds is anyone's own and an extreme customer's value moves
    no statistic. None with fewer than ``2 * minimum`` values (the crowds would overlap).
    Neither bound is ever stored: they only clip.
    """
    m = minimum or MIN_CUSTOMERS
    v = np.asarray(values, dtype=np.float64)
    if not is_sorted:
        v = np.sort(v[np.isfinite(v)])
    if v.size < 2 * m:
        return None
    return float(v[m - 1]), float(v[v.size - m])


def _coarse(value: float, step: float, lo: float, hi: float) -> float:
    """``value`` rounded to a multiple of ``step`` (kept inside ``[lo, hi]``); unchanged for a zero step."""
    if not (step > 0 and math.isfinite(step)):
        return float(min(max(value, lo), hi))
    return float(min(max(round(value / step) * step, lo), hi))


def finite_and_bounds(values: np.ndarray, minimum: int | None) -> tuple[np.ndarray, float, float] | None:
    """``(finite values, lo, hi)``: the values and their :func:`clip_bounds`, found by selection
    (two order statistics, no sort: training calls this per column); None with fewer than
    ``2 * minimum`` finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    m = minimum or MIN_CUSTOMERS
    if v.size < 2 * m:
        return None
    part = np.partition(v, [m - 1, v.size - m])
    return v, float(part[m - 1]), float(part[v.size - m])


def bounded_moments(values: np.ndarray, minimum: int | None = None,
                    rows_per_customer: int = 1) -> tuple[float | None, float | None]:
    """``(bounded_mean, bounded_std)`` of ``values`` from one selection of their bounds."""
    found = finite_and_bounds(values, minimum)
    if found is None:
        return None, None
    v, lo, hi = found
    clipped = np.clip(v, lo, hi)
    var = _coarse(float(clipped.var()), (hi - lo) ** 2 * max(1, rows_per_customer) / v.size, 0.0, (hi - lo) ** 2)
    return clipped_mean(clipped, lo, hi, rows_per_customer), math.sqrt(var)


def clipped_mean(clipped: np.ndarray, lo: float, hi: float, rows_per_customer: int = 1) -> float:
    """The mean of values already clipped at ``lo``/``hi``, rounded to one customer's whole
    influence on it, ``(hi - lo) / n`` (times their rows when rows are events)."""
    return _coarse(float(clipped.mean()), (hi - lo) * max(1, rows_per_customer) / clipped.size, lo, hi)


def bounded_mean(values: np.ndarray, minimum: int | None = None, rows_per_customer: int = 1) -> float | None:
    """The mean of ``values`` with one customer's influence bounded (see the module docstring).

    Clipped at :func:`clip_bounds`, rounded to a multiple of ``(hi - lo) / n`` (times the most
    rows one customer has, when rows are events). None with fewer than ``2 * minimum`` finite
    values.
    """
    return bounded_moments(values, minimum, rows_per_customer)[0]


def bounded_std(values: np.ndarray, minimum: int | None = None, rows_per_customer: int = 1) -> float | None:
    """The standard deviation of the clipped values, its variance rounded to ``(hi - lo)^2 / n``
    (the most one customer inside the bounds can move it; times their rows when rows are
    events); None as :func:`bounded_mean`."""
    return bounded_moments(values, minimum, rows_per_customer)[1]


def coarse_group_means(means: np.ndarray, counts: np.ndarray, low: np.ndarray, high: np.ndarray,
                       minimum: int | None = None, rows_per_customer: int = 1) -> np.ndarray:
    """Group means (rows: groups, columns: features) of values clipped at ``low``/``high``,
    each rounded to one customer's whole influence on it, ``(high - low) / count``.

    K-means centroids and the report's per-segment means are such means: a reader who knows
    every other member of a segment could otherwise solve its centroid for the last one. A
    group below ``minimum`` rows gets NaN (nothing of it is shown). Columns without finite
    bounds are kept as they are (no crowd to clip at: the caller refuses such columns).
    """
    m = minimum or MIN_CUSTOMERS
    out = np.array(means, dtype=np.float64, copy=True)
    for g in range(out.shape[0]):
        n = int(counts[g])
        if n < m:
            out[g, :] = np.nan
            continue
        for j in range(out.shape[1]):
            lo, hi = float(low[j]), float(high[j])
            if math.isfinite(lo) and math.isfinite(hi):
                out[g, j] = _coarse(float(out[g, j]), (hi - lo) * max(1, rows_per_customer) / n, lo, hi)
    return out


def mean_minimum(minimum: int | None = None) -> int:
    """Customers a mean needs: twice the minimum (a crowd at each clipping bound)."""
    return 2 * (minimum or MIN_CUSTOMERS)


def rows_for_customers(minimum: int, rows: int, distinct: int, heaviest: int) -> int:
    """Rows a group needs to hold ``minimum`` distinct customers for sure, in a table of ``rows``
    rows with ``distinct`` ids, the most frequent id on ``heaviest`` rows.

    A group of ``r`` rows holds at least ``ceil(r / heaviest)`` customers, and at least
    ``r - (rows - distinct)`` (every repeated row taken from it): the smaller of the two
    row counts that guarantee ``minimum`` is enough.
    """
    if heaviest <= 1:
        return minimum
    return int(min(minimum * heaviest, minimum + (rows - distinct)))


def winsor_bounds(column: np.ndarray, minimum: int | None = None) -> tuple[float, float] | None:
    """``(low, high)``: the means of the ``minimum`` smallest and of the ``minimum`` largest values.

    Clipping a column to them puts every one of those customers at one shared value, so a
    lone extreme value cannot form a group of its own. None when there are too few values.
    """
    m = minimum or MIN_CUSTOMERS
    finite = np.sort(column[np.isfinite(column)].astype(np.float64))
    if finite.size < 2 * m:
        return None
    return float(finite[:m].mean()), float(finite[-m:].mean())


def small_groups(counts: Sequence[int] | np.ndarray, minimum: int | None = None) -> list[int]:
    """Indices of non-empty groups (segments) smaller than the minimum."""
    m = minimum or MIN_CUSTOMERS
    return [i for i, c in enumerate(counts) if 0 < int(c) < m]


def suppressed_cells(counts: Sequence[int | None], slack: int, minimum: int | None = None) -> list[bool]:
    """Which cells of a partition of rows (segments, bins) may not be shown.

    A cell of ``c`` rows holds at least ``c - slack`` distinct customers (``slack``: the rows
    that repeat an id or have none); a non-empty cell below ``minimum`` is suppressed. When
    the suppressed cells together hold fewer than ``minimum`` customers, the next-smallest
    cells are suppressed too, so a published total minus the shown cells gives no small count.
    """
    m = minimum or MIN_CUSTOMERS
    c = [int(x) if x is not None else 0 for x in counts]
    out = [x > 0 and x - slack < m for x in c]
    if any(out):
        while sum(x for x, s in zip(c, out) if s) - slack < m:
            rest = [(x, i) for i, (x, s) in enumerate(zip(c, out)) if not s and x > 0]
            if not rest:
                break
            out[min(rest)[1]] = True
    return out


def _blank(values: list[Any], hide: list[bool]) -> list[Any]:
    return [None if h else v for v, h in zip(values, hide)]


def gate_score_statistics(drift: dict[str, Any], scores: dict[str, Any], *, rows: int, duplicate_rows: int,
                          null_ids: int, minimum: int | None = None) -> dict[str, Any]:
    """Suppress, in place, every group statistic of a score run that cannot be shown to describe
    ``minimum`` distinct customers; returns the manifest's ``privacy`` record (what was suppressed).

    The one place where a run's summaries become manifest and report fields. ``drift`` is the
    drift section (features, categoricals, propensity, segments), ``scores`` the exact score
    summaries (segment counts and means, propensity mean, histogram, action thresholds).
    Counts are of rows; a group of ``r`` rows holds at least ``r - duplicate_rows - null_ids``
    distinct customers. Means over a group are rounded to ``1 / customers`` (a propensity
    lies in [0, 1]: one customer's whole influence on the mean), so a reader who knows every
    other customer's score cannot solve the mean for the last one.
    """
    m = minimum or MIN_CUSTOMERS
    slack = int(duplicate_rows) + int(null_ids)
    customers = max(0, int(rows) - slack)
    suppressed: list[str] = []
    if customers < m:
        # Too few customers for any group statistic: the scores are published, nothing else.
        scores["mean_propensity"] = None
        scores["segment_counts"] = [None] * len(scores.get("segment_counts", []))
        scores["segment_mean_propensity"] = [None] * len(scores.get("segment_mean_propensity", []))
        if scores.get("histogram"):
            scores["histogram"]["counts"] = None
        for a in scores.get("action_thresholds", []):
            a["customers"] = a["share"] = None
        drift["features"] = {}
        drift.pop("categoricals", None)
        drift.pop("propensity", None)
        seg = drift.get("segments", {})
        drift["segments"] = {k: v for k, v in seg.items() if k.startswith("training_")}
        drift["segments"]["counts"] = drift["segments"]["shares"] = [None] * len(seg.get("counts", []))
        drift["alerts"], drift["warnings"], drift["reasons"] = [], [], {}
        suppressed.append(f"every group statistic (segments, propensity mean and histogram, action counts, "
                          f"drift): at least {customers} distinct customer(s) in the run, fewer than {m}")
        return {"minimum_customers": m, "customers_at_least": customers, "suppressed": suppressed}
    total = int(rows)
    scores["mean_propensity"] = mean_of_shares(scores.get("mean_propensity"), customers)
    counts = list(scores.get("segment_counts", []))
    hide = suppressed_cells(counts, slack, m)
    means = scores.get("segment_mean_propensity", [])
    scores["segment_mean_propensity"] = [None if h else mean_of_shares(v, int(c or 0) - slack)
                                         for v, c, h in zip(means, counts, hide)]
    scores["segment_counts"] = _blank(counts, hide)
    if any(hide):
        suppressed.append(f"segment(s) {', '.join(str(i) for i, h in enumerate(hide) if h)}: size and mean "
                          f"propensity (fewer than {m} customers, or their complement)")
    hist = scores.get("histogram")
    if hist and hist.get("counts") is not None:
        hh = suppressed_cells(hist["counts"], slack, m)
        if any(hh):
            hist["counts"] = _blank(hist["counts"], hh)
            suppressed.append(f"{sum(hh)} propensity histogram bin(s) of fewer than {m} customers")
    for a in scores.get("action_thresholds", []):
        above = int(a["customers"] or 0)
        if any(suppressed_cells([above, total - above], slack, m)):
            a["customers"] = a["share"] = None
            suppressed.append(f"customers at or above {a['threshold']:g} (fewer than {m} on one side)")
    # The drift sample's per-bin shares (a sample of rows: counted as rows, gated the same way).
    for name, d in drift.get("features", {}).items():
        _gate_fractions(d, slack, m, f"feature {name}", suppressed)
        nulls = round(float(d.get("null_share") or 0.0) * total)
        if d.get("null_share") is not None and any(suppressed_cells([nulls, total - nulls], slack, m)):
            d["null_share"] = None
            suppressed.append(f"feature {name}: null share (fewer than {m} customers on one side)")
    if "propensity" in drift:
        _gate_fractions(drift["propensity"], slack, m, "propensity", suppressed)
    seg = drift.get("segments", {})
    if seg.get("counts"):
        hs = suppressed_cells(seg["counts"], slack, m)
        seg["counts"], seg["shares"] = _blank(seg["counts"], hs), _blank(seg.get("shares", []), hs)
    for name, d in drift.get("categoricals", {}).items():
        level_rows = [round(float(s) * total) if s is not None else 0 for s in d.get("shares", [])]
        hl = suppressed_cells(level_rows, slack, m)
        if any(hl) and any(s is not None for s, h in zip(d["shares"], hl) if h):
            d["shares"] = _blank(d["shares"], hl)
            suppressed.append(f"column {name}: shares of level(s) of fewer than {m} customers")
        if d.get("unseen_share") is not None:
            other = round(float(d["unseen_share"]) * total)
            if any(suppressed_cells([other, total - other], slack, m)):
                d["unseen_share"] = None
    return {"minimum_customers": m, "customers_at_least": customers, "suppressed": suppressed}


def mean_of_shares(value: float | None, customers: int) -> float | None:
    """A mean of values in [0, 1] (a propensity, a rate) over ``customers``, rounded to ``1 / customers``:
    one customer's whole influence, so knowing every other value does not give theirs away."""
    if value is None or customers <= 0:
        return None
    return _coarse(float(value), 1.0 / customers, 0.0, 1.0)


def _gate_fractions(d: dict[str, Any], slack: int, m: int, what: str, suppressed: list[str]) -> None:
    """Blank the drift-sample shares of ``d`` whose bins hold too few customers.

    ``d["_counts"]`` (the sampled rows per bin, never published) is removed here.
    """
    counts = d.pop("_counts", None)
    fractions = d.get("fractions")
    if fractions is None or counts is None:
        return
    hide = suppressed_cells(counts, slack, m)
    if any(hide):
        d["fractions"] = _blank(fractions, hide)
        # Read off the same bins: a median or a share inside a hidden bin would show it.
        for key in ("median", "median_exact", "share_of_1"):
            d.pop(key, None)
        suppressed.append(f"{what}: {sum(hide)} drift bin share(s) of fewer than {m} customers")
    sampled = int(sum(counts))
    if d.get("share_of_1") is not None:
        ones = round(float(d["share_of_1"]) * sampled)
        if any(suppressed_cells([ones, sampled - ones], slack, m)):
            d.pop("share_of_1", None)
            suppressed.append(f"{what}: share of 1 (fewer than {m} customers on one side)")


def gate_offer_statistics(per_offer: list[dict[str, Any]], *, customers: int, slack: int = 0,
                          minimum: int | None = None) -> list[str]:
    """Suppress, in place, the per-offer figures of a recommend run that describe too few customers.

    ``per_offer``: one record per offer with ``customers`` (rows given the offer), its
    ``expected_value`` (their sum) and ``budget_used``, and the ``eligible_share`` and
    ``owned_share`` of the run's ``customers`` rows (``slack``: rows that may repeat an id), and
    ``with_rule`` where present (those given it whose recommendation names a rule).
    Each figure splits the run's customers in two (given the offer or not, eligible or not,
    owner or not): it is shown only when both sides hold at least ``minimum`` customers, so
    neither a small group nor its complement (the total less the group) is given away.
    Returns what was suppressed, for the manifest's ``privacy`` record.
    """
    m = minimum or MIN_CUSTOMERS
    suppressed: list[str] = []
    for rec in per_offer:
        got = rec.get("customers")
        if got is not None and (customers - slack < m
                                or any(suppressed_cells([int(got), customers - int(got)], slack, m))):
            suppressed.append(f"offer {rec['offer']}: customers, expected value and budget use (fewer than "
                              f"{m} customers given it, or not given it)")
            rec["customers"] = rec["expected_value"] = rec["budget_used"] = None
        with_rule = rec.get("with_rule")
        if with_rule is not None and (rec.get("customers") is None
                                      or any(suppressed_cells([int(with_rule), int(got) - int(with_rule)], slack, m))):
            # Recommendations that came with a rule (catalogue `rules`): a part of those given the
            # offer, shown only when it and the rest of them each hold the minimum.
            rec["with_rule"] = None
            suppressed.append(f"offer {rec['offer']}: recommendations with a rule (fewer than {m} customers with "
                              "a rule, or without one)")
        for key, what in (("eligible_share", "eligible"), ("owned_share", "owners")):
            share = rec.get(key)
            if share is None:
                continue
            n = round(float(share) * customers)
            if any(suppressed_cells([n, customers - n], slack, m)) or customers - slack < m:
                rec[key] = None
                suppressed.append(f"offer {rec['offer']}: share of {what} (fewer than {m} customers on one side)")
    return suppressed
