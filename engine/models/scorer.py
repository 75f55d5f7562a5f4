"""Scoring arithmetic: imputation and scaling folded into the heads' weights.

For a head with imputed raw row ``x`` and scaled row ``z = x * a + d`` (``a = 1/scale``,
``d = -mean/scale``):

* logit ``= z·w + b = x·(a∘w) + (b + d·w)``
* ``||z - c||² = ||z||² - 2 x·(a∘c) - 2 d·c + ||c||²``; the argmin over centroids
  drops ``||z||²``, and ``||z||² = (x∘x)·(a∘a) + x·(2 a∘d) + d·d``.

So every centroid score, the logit and the cross term of ``||z||²`` come from one
matrix product of the imputed raw matrix with a small ``(F, k + 2)`` weight matrix,
and the data is never scaled in memory. All functions take the namespace ``xp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from engine.backends.namespace import to_device
from engine.models.artifact import ScoringModel


@dataclass(frozen=True)
class FoldedModel:
    """Device-resident folded weights of a model, for one namespace and dtype."""

    fill_s: Any
    fill_p: Any
    shared_fill: bool
    weights_s: Any      # (F, k + 1): -2 a∘c per centroid, then 2 a∘d
    bias_s: Any         # (k,): ||c||² - 2 d·c
    a2: Any             # (F,): a∘a
    dd: float           # d·d
    weights_p: Any      # (F,): a_p∘w
    bias_p: float       # b + d_p·w
    k: int


def fold(model: ScoringModel, *, xp: ModuleType, dtype: Any = np.float64) -> FoldedModel:
    """Fold preprocessing into head weights (computed on the host in float64, then moved)."""
    seg, prop = model.segmenter, model.propensity
    a, d = 1.0 / seg.scale, -seg.mean / seg.scale
    c = model.centroids
    weights_s = np.concatenate([(-2.0 * a[:, None] * c.T), (2.0 * a * d)[:, None]], axis=1)
    bias_s = (c * c).sum(axis=1) - 2.0 * (c @ d)
    ap, dp = 1.0 / prop.scale, -prop.mean / prop.scale

    def dev(x: np.ndarray) -> Any:
        return to_device(xp, np.ascontiguousarray(x, dtype=dtype))

    return FoldedModel(
        fill_s=dev(seg.fill),
        fill_p=dev(prop.fill),
        shared_fill=bool(np.array_equal(seg.fill, prop.fill)),
        weights_s=dev(weights_s),
        bias_s=dev(bias_s),
        a2=dev(a * a),
        dd=float(d @ d),
        weights_p=dev(ap * model.coef),
        bias_p=float(model.intercept + dp @ model.coef),
        k=model.k,
    )


def impute(X: Any, fill: Any, missing: Any, *, xp: ModuleType) -> Any:
    """``X`` with NaN replaced by the column's fill value (``missing`` is ``isnan(X)``)."""
    return xp.where(missing, fill, X) if bool(missing.any()) else X


def score_matrix(X: Any, folded: FoldedModel, *, xp: ModuleType, missing: Any = None) -> tuple[Any, Any, Any]:
    """Score a raw ``(n, F)`` feature matrix with NaN for missing values.

    Returns ``segment`` (int32), ``segment_distance`` (float32, Euclidean, segmenter
    scaled space) and ``propensity`` (float32 in [0, 1]), all on ``xp``'s device.
    """
    if missing is None:
        missing = xp.isnan(X)
    Xs = impute(X, folded.fill_s, missing, xp=xp)
    Xp = Xs if folded.shared_fill else impute(X, folded.fill_p, missing, xp=xp)
    k = folded.k
    if folded.shared_fill:
        # One pass over the matrix yields centroid scores, the ||z||² cross term and the logit.
        W = xp.concatenate([folded.weights_s, folded.weights_p[:, None]], axis=1)
        prod = Xs @ W
        logit = prod[:, k + 1] + folded.bias_p
    else:
        prod = Xs @ folded.weights_s
        logit = Xp @ folded.weights_p + folded.bias_p
    scores = prod[:, :k] + folded.bias_s
    segment = xp.argmin(scores, axis=1)
    best = xp.take_along_axis(scores, segment[:, None], axis=1)[:, 0]
    zz = (Xs * Xs) @ folded.a2 + prod[:, k] + folded.dd
    distance = xp.sqrt(xp.maximum(best + zz, 0.0))
    # exp(-logaddexp(0, -t)) is the logistic function without overflow for any t.
    propensity = xp.exp(-xp.logaddexp(0.0, -logit))
    return segment.astype(xp.int32), distance.astype(xp.float32), propensity.astype(xp.float32)


def scale_matrix(X: Any, pre: Any, *, xp: ModuleType) -> Any:
    """The scaled matrix ``z`` of one head (used in training and evaluation, not in scoring)."""
    from engine.backends.ops import standardize

    fill, mean, inv = (to_device(xp, np.asarray(v, dtype=X.dtype)) for v in (pre.fill, pre.mean, pre.inv_scale))
    return standardize(X, fill, mean, inv, xp=xp)
