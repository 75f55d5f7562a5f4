"""The training data profile and the Population Stability Index used for drift checks.

Each feature's reference bins are the distinct interior deciles of its training values;
the profile stores the training fraction in every bin, so PSI stays correct for
discrete features whose deciles collapse. Bins and counts are computed with ``xp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from engine.backends.namespace import asnumpy
from engine.privacy import (
    MIN_CUSTOMERS,
    bounded_moments,
    enough,
    mean_of_shares,
    private_quantiles,
)

# No 0 and 1: a model file is copied around, and the exact minimum and maximum are one
# customer's values each. A quantile is kept only if at least MIN_TAIL_ROWS training
# values lie beyond it on its side, so no stored quantile pins down a lone extreme value.
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
MIN_TAIL_ROWS = MIN_CUSTOMERS  # engine.privacy: one rule
DECILES = tuple(i / 10 for i in range(1, 10))
PSI_EPS = 1e-4
PSI_WARN = 0.10
PSI_ALERT = 0.25


def bin_edges(values: np.ndarray, minimum: int | None = None, rows_per_customer: int = 1) -> np.ndarray:
    """Distinct interior deciles of the finite values, each the mean of ``minimum`` neighbouring
    values (:func:`engine.privacy.private_quantiles`); empty with fewer values than that."""
    finite = values[np.isfinite(values)]
    edges = private_quantiles(finite, DECILES, minimum, need_tails=False, rows_per_customer=rows_per_customer)
    return np.unique(np.asarray(list(edges.values()), dtype=np.float64)) if edges else np.empty(0)


def bin_counts(values: Any, edges: Any, *, xp: ModuleType) -> Any:
    """Counts of finite values in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    finite = values[xp.isfinite(values)]
    idx = xp.searchsorted(edges, finite, side="left")
    return xp.bincount(idx, minlength=int(edges.shape[0]) + 1)


def feature_profile(X: np.ndarray, features: Sequence[str], minimum: int | None = None,
                    rows_per_customer: int = 1) -> dict[str, Any]:
    """Per-feature null rate, moments, quantiles and reference bins of a host matrix.

    Every statistic goes through :mod:`engine.privacy`: moments only over ``2 * minimum`` or
    more values, clipped and coarsened; quantiles and edges as coarsened means of ``minimum``
    neighbouring clipped values.
    """
    profile = {}
    n = X.shape[0]
    for j, name in enumerate(features):
        col = np.asarray(X[:, j], dtype=np.float64)
        finite = col[np.isfinite(col)]
        edges = bin_edges(col, minimum, rows_per_customer)
        counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=edges.size + 1)
        # Clipped and coarsened (engine.privacy): no reader solves them for one customer.
        mean, std = bounded_moments(finite, minimum, rows_per_customer)
        profile[name] = {
            "null_rate": float(np.isnan(col).mean()) if n else 0.0,
            "mean": mean,
            "std": std,
            "quantiles": _quantiles(finite, minimum, rows_per_customer),
            "bin_edges": edges.tolist(),
            "bin_fractions": (counts / max(1, counts.sum())).tolist(),
        }
    return profile


def _quantiles(finite: np.ndarray, minimum: int | None = None, rows_per_customer: int = 1) -> dict[str, float]:
    """The :data:`QUANTILES` of ``finite`` whose tails hold at least the privacy minimum of values.

    Each is the mean of the minimum number of neighbouring values (engine.privacy), never one
    customer's value. Integer-valued features (counts, 0/1 flags) take the value of the data
    itself (the inverse of the empirical distribution function) where at least that many
    customers hold it: a median of 1.5 household members, or 0.5 for a 0/1 flag, describes no
    customer and reads as drift, while a value shared by many customers is nobody's own.
    """
    m = minimum or MIN_TAIL_ROWS
    private = private_quantiles(finite, QUANTILES, m, rows_per_customer=rows_per_customer)
    if not private or not is_integer_valued(finite):
        return {str(q): v for q, v in private.items()}
    out = {}
    for q, v in private.items():
        exact = float(np.quantile(finite, q, method="inverted_cdf"))
        out[str(q)] = exact if np.count_nonzero(finite == exact) >= m else v
    return out


def is_integer_valued(finite: np.ndarray) -> bool:
    """Every value a whole number (a count, a 0/1 flag), whatever the column's storage type."""
    return bool(finite.size) and bool(np.all(finite == np.round(finite)))


#: A feature counts as discrete tonight when its sampled values are whole numbers with at
#: most this many distinct values; its median and shares are then exact, not interpolated.
MAX_DISCRETE_VALUES = 64


def discrete_counts(values: np.ndarray) -> list[list[float]] | None:
    """``[[value, count], ...]`` of a sample's finite values if they are few whole numbers, else None."""
    finite = values[np.isfinite(values)]
    if finite.size and not is_integer_valued(finite):
        return None
    uniq, counts = np.unique(finite, return_counts=True)
    if uniq.size > MAX_DISCRETE_VALUES:
        return None
    return [[float(v), int(c)] for v, c in zip(uniq, counts)]


def merge_discrete(acc: dict[float, int] | None, part: list[list[float]] | None) -> dict[float, int] | None:
    """Add one part's :func:`discrete_counts` to the run's; None (not discrete) wins."""
    if acc is None or part is None:
        return None
    out = dict(acc)
    for value, count in part:
        out[float(value)] = out.get(float(value), 0) + int(count)
    return out if len(out) <= MAX_DISCRETE_VALUES else None


def discrete_summary(counts: dict[float, int] | None, ref: dict[str, Any], binned_total: int) -> dict[str, Any]:
    """Exact median (and, for a 0/1 feature, the share of 1 against training's) of a discrete feature.

    Only when every sampled value was counted (``binned_total`` agrees) and at least
    :data:`MIN_CUSTOMERS` customers were sampled. The median is a value that half the
    sample lies at or below: many customers share it, so it is no one customer's value;
    the share of 1 is a proportion. Empty when the feature is not discrete tonight.
    """
    if not counts:
        return {}
    total = sum(counts.values())
    if total != binned_total or not enough(total):
        return {}
    values = sorted(counts)
    cum = np.cumsum([counts[v] for v in values])
    median = values[int(np.searchsorted(cum, total / 2.0, side="left"))]
    if not enough(counts[median]):  # a value held by too few customers is theirs: not shown
        return {}
    out: dict[str, Any] = {"median": float(median), "median_exact": True}
    training = [float(v) for v in (ref.get("quantiles") or {}).values()] + [float(e) for e in ref.get("bin_edges", [])]
    mean = ref.get("mean")
    if set(values) <= {0.0, 1.0} and set(training) <= {0.0, 1.0} and mean is not None and 0.0 <= mean <= 1.0:
        out["share_of_1"] = counts.get(1.0, 0) / total
        out["training_share_of_1"] = float(mean)
    return out


def score_profile(propensity: Any, segment: Any, k: int, minimum: int | None = None) -> dict[str, Any]:
    """Reference bins of the propensity and segment shares, on training predictions."""
    prop = asnumpy(propensity).astype(np.float64)
    edges = bin_edges(prop, minimum)
    counts = np.bincount(np.searchsorted(edges, prop, side="left"), minlength=edges.size + 1)
    seg = asnumpy(segment)
    seg_counts = np.bincount(seg, minlength=k)
    seg_sums = np.bincount(seg, weights=prop, minlength=k)
    return {
        "propensity": {"bin_edges": edges.tolist(), "bin_fractions": (counts / max(1, counts.sum())).tolist(),
                       "mean": mean_of_shares(float(prop.mean()), prop.size)
                       if enough(prop.size, minimum) else None},
        "segment_shares": (seg_counts / max(1, seg_counts.sum())).tolist(),
        # Models written before this key existed still score; their report shows a dash.
        "segment_mean_propensity": [mean_of_shares(float(s / c), int(c)) if enough(int(c), minimum) else None
                                    for s, c in zip(seg_sums, seg_counts)],
    }


def psi(expected: Sequence[float], actual_counts: Sequence[float], eps: float = PSI_EPS) -> float:
    """Population Stability Index of actual counts against expected fractions.

    Empty bins on either side are smoothed to ``eps`` so the log stays finite.
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    counts = np.asarray(actual_counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    a = np.maximum(counts / total, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_level(value: float, warning: float = PSI_WARN, alert: float = PSI_ALERT) -> str:
    """``ok``, ``warning`` or ``alert``: strictly above a level reaches it."""
    if value > alert:
        return "alert"
    if value > warning:
        return "warning"
    return "ok"


def median_from_bins(counts: Sequence[float], edges: Sequence[float], low: float | None,
                     high: float | None) -> float | None:
    """The median of binned values, interpolated linearly inside the bin that holds it.

    Bins are ``(low, e0], (e0, e1], ..., (e_last, high]``; ``low``/``high`` are the
    training minimum and maximum, which bound the outer bins (values beyond them are
    placed at the edge). Exact to within the width of the median's bin.
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return None
    e = np.asarray(edges, dtype=np.float64)
    lo = e[0] if low is None and e.size else low
    hi = e[-1] if high is None and e.size else high
    if lo is None or hi is None:
        return None
    bounds = np.concatenate([[min(lo, e[0]) if e.size else lo], e, [max(hi, e[-1]) if e.size else hi]])
    cum = np.cumsum(c)
    i = int(np.searchsorted(cum, total / 2.0, side="left"))
    before = cum[i - 1] if i else 0.0
    share = (total / 2.0 - before) / c[i] if c[i] else 0.0
    return float(bounds[i] + share * (bounds[i + 1] - bounds[i]))
