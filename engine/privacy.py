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
* :func:`winsor_bounds` gives per-column bounds at which a lone extreme customer is pulled
  into a crowd of at least ``m`` before K-means is fitted, so no segment is made of them.

Means, standard deviations and fills over at least ``m`` customers are kept as they are.
Issue 18's categorical levels use :func:`min_customers` as their minimum level count.
"""

from __future__ import annotations

from collections.abc import Sequence

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
                      *, need_tails: bool = True) -> dict[float, float]:
    """Quantiles ``qs`` of ``finite`` that each average ``minimum`` neighbouring order statistics.

    A quantile is left out when fewer than ``minimum`` values lie on its smaller side
    (``need_tails``) or when there are fewer than ``minimum`` values in all.
    """
    m = minimum or MIN_CUSTOMERS
    values = np.sort(np.asarray(finite, dtype=np.float64))
    n = values.size
    if n < m:
        return {}
    cums = np.concatenate([[0.0], np.cumsum(values)])
    out: dict[float, float] = {}
    for q in qs:
        if need_tails and min(q, 1.0 - q) * n < m:
            continue
        centre = q * (n - 1)
        start = int(np.clip(round(centre - (m - 1) / 2.0), 0, n - m))
        mean = (cums[start + m] - cums[start]) / m
        # Rounding could put the mean a hair outside its window; it never leaves it.
        out[q] = float(min(max(mean, values[start]), values[start + m - 1]))
    return out


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
