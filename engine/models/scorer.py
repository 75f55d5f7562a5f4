"""Scoring arithmetic: imputation and scaling folded into the heads' weights.

For a head with imputed raw row ``x`` and scaled row ``z = x * a + d`` (``a = 1/scale``,
``d = -mean/scale``):

* logit ``= z·w + b = x·(a∘w) + (b + d·w)``
* ``||z - c||² = ||z||² - 2 x·(a∘c) - 2 d·c + ||c||²``; the argmin over centroids
  drops ``||z||²``, and ``||z||² = (x∘x)·(a∘a) + x·(2 a∘d) + d·d``.

So every centroid score, the logit and the cross term of ``||z||²`` come from one
matrix product of the imputed raw matrix with a small ``(k + 2, F)`` weight matrix,
and the data is never scaled in memory. All functions take the namespace ``xp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.backends.namespace import is_numpy, to_device

if TYPE_CHECKING:  # the artifact imports this module (fold): the arrow points one way
    from engine.models.artifact import ScoringModel


@dataclass(frozen=True)
class FoldedModel:
    """Device-resident folded weights of a model, for one namespace and dtype.

    ``weights`` is ``(k + 2, F)``: one row ``-2 a∘c`` per centroid, the row ``2 a∘d`` of
    the ``||z||²`` cross term, and (when both heads impute alike) the logit row ``a_p∘w``.
    """

    fill_s: Any
    fill_p: Any
    shared_fill: bool
    weights: Any
    bias_s: Any         # (k,): ||c||² - 2 d·c
    a2: Any             # (F,): a∘a
    dd: float           # d·d
    weights_p: Any      # (F,): a_p∘w
    bias_p: float       # b + d_p·w
    k: int
    cat_logit: Any = None  # (L,) logit term per categorical level; None without categoricals
    cat_dist: Any = None   # (k, L) squared-distance term per centroid and level


def level_tables(model: ScoringModel) -> tuple[np.ndarray, np.ndarray] | None:
    """The kernels' categorical tables ``(cat_logit (L,), cat_dist (k, L))``, float64; None without categoricals.

    For level ``l`` of a one-hot block ``B`` with one-hot value ``h`` (1, or 0 for an
    ignored unknown value): logit term ``w[l]·h``, distance term to centroid ``c``
    ``sum_{j in B} c_j² - 2 c_l h + h`` (``||e_l - c_B||²`` written out).
    """
    if not model.categoricals:
        return None
    arrays = model._cat_arrays()
    w = np.asarray(arrays["cat_coef"], dtype=np.float64)
    C = np.asarray(arrays["cat_centroids"], dtype=np.float64)
    h = np.asarray(arrays["cat_onehot"], dtype=np.float64)
    dist = np.empty_like(C)
    start = 0
    for cat in model.categoricals:
        stop = start + cat.n_levels
        block = C[:, start:stop]
        dist[:, start:stop] = (block * block).sum(axis=1, keepdims=True) - 2.0 * block * h[start:stop] \
            + h[start:stop]
        start = stop
    return w * h, dist


def fold(model: ScoringModel, *, xp: ModuleType, dtype: Any = np.float64,
         order: Any = None) -> FoldedModel:
    """Fold preprocessing into head weights (computed on the host in float64, then moved).

    ``order`` permutes the features (the matrix's columns come in that order); scores
    do not depend on it.
    """
    seg, prop = model.segmenter, model.propensity
    a, d = 1.0 / seg.scale, -seg.mean / seg.scale
    c = model.centroids
    ap, dp = 1.0 / prop.scale, -prop.mean / prop.scale
    weights_p = ap * model.coef
    weights = np.vstack([-2.0 * c * a[None, :], 2.0 * a * d, weights_p])
    perm = np.arange(model.n_features) if order is None else np.asarray(order)

    def dev(x: np.ndarray) -> Any:
        return to_device(xp, np.ascontiguousarray(x, dtype=dtype))

    def feat(x: np.ndarray) -> Any:
        """A per-feature array (last axis) in the matrix's column order."""
        return dev(x[..., perm])

    return FoldedModel(
        fill_s=feat(seg.fill),
        fill_p=feat(prop.fill),
        shared_fill=bool(np.array_equal(seg.fill, prop.fill)),
        weights=feat(weights),
        bias_s=dev((c * c).sum(axis=1) - 2.0 * (c @ d)),
        a2=feat(a * a),
        dd=float(d @ d),
        weights_p=feat(weights_p),
        bias_p=float(model.intercept + dp @ model.coef),
        k=model.k,
        **({} if (tables := level_tables(model)) is None
           else {"cat_logit": dev(tables[0]), "cat_dist": dev(tables[1])}),
    )


def impute(X: Any, fill: Any, missing: Any, *, xp: ModuleType) -> Any:
    """``X`` with NaN replaced by the column's fill value (``missing`` is ``isnan(X)``)."""
    return xp.where(missing, fill, X) if bool(missing.any()) else X


def nearest(S: Any, *, xp: ModuleType) -> tuple[Any, Any]:
    """Index (lowest on ties) and value of the minimum of each column of ``S`` (k, n)."""
    if not is_numpy(xp):
        idx = xp.argmin(S, axis=0)
        return idx, xp.take_along_axis(S, idx[None, :], axis=0)[0]
    # k contiguous passes beat argmin along a short axis by several times on the CPU.
    best = S[0].copy()
    idx = np.zeros(S.shape[1], dtype=np.int32)
    for c in range(1, S.shape[0]):
        closer = S[c] < best
        np.copyto(best, S[c], where=closer)
        np.copyto(idx, c, where=closer)
    return idx, best


def sigmoid32(logit: Any, *, xp: ModuleType) -> Any:
    """The logistic function in float32 (the output's precision); clipping avoids overflow."""
    t = xp.clip(logit, -80.0, 80.0).astype(xp.float32)
    return xp.float32(1.0) / (xp.float32(1.0) + xp.exp(-t))


def score_matrix(X: Any, folded: FoldedModel, *, xp: ModuleType, missing: Any = None,
                 imputed: bool = False, levels: Any = None) -> tuple[Any, Any, Any]:
    """Score a raw ``(n, F)`` feature matrix with NaN for missing values.

    Returns ``segment`` (int32), ``segment_distance`` (float32, Euclidean, segmenter
    scaled space) and ``propensity`` (float32 in [0, 1]), all on ``xp``'s device.
    Works on the transpose so that every intermediate is a contiguous row of length n.
    ``imputed=True``: the caller already filled missing values (shared-fill models only).
    ``levels``: the ``(n, Q)`` global level indices of a model with categorical columns.
    """
    if imputed:
        if not folded.shared_fill:
            raise ValueError("imputed=True needs a model whose heads impute alike")
        Xs = X
    else:
        if missing is None:
            missing = xp.isnan(X)
        Xs = impute(X, folded.fill_s, missing, xp=xp)
    k = folded.k
    XT = Xs.T
    P = folded.weights @ XT if folded.shared_fill else folded.weights[: k + 1] @ XT
    cat_d = cat_l = 0.0
    if folded.cat_logit is not None:
        if levels is None:
            raise ValueError("the model has categorical columns: pass their level indices")
        L = to_device(xp, np.asarray(levels, dtype=np.int64)) if is_numpy(xp) else xp.asarray(levels)
        cat_d = folded.cat_dist[:, L].sum(axis=2) if L.shape[1] else 0.0
        cat_l = folded.cat_logit[L].sum(axis=1) if L.shape[1] else 0.0
    segment, best = nearest(P[:k] + folded.bias_s[:, None] + cat_d, xp=xp)
    zz = folded.a2 @ (XT * XT) + P[k] + folded.dd
    distance = xp.sqrt(xp.maximum(best + zz, 0.0))
    if folded.shared_fill:
        logit = P[k + 1] + folded.bias_p + cat_l
    else:
        logit = folded.weights_p @ impute(X, folded.fill_p, missing, xp=xp).T + folded.bias_p + cat_l
    return segment.astype(xp.int32), distance.astype(xp.float32), sigmoid32(logit, xp=xp)


def scale_matrix(X: Any, pre: Any, *, xp: ModuleType) -> Any:
    """The scaled matrix ``z`` of one head (used in training and evaluation, not in scoring)."""
    from engine.backends.ops import standardize

    fill, mean, inv = (to_device(xp, np.asarray(v, dtype=X.dtype)) for v in (pre.fill, pre.mean, pre.inv_scale))
    return standardize(X, fill, mean, inv, xp=xp)
