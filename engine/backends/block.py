"""What both device stages share: a block's result and the model as the fused kernels take it.

Below ``engine/backends/stage.py`` (the CPU stage, the cache) and
``engine/backends/gpu_stage.py`` (the GPU stage, which ``stage`` builds lazily), so that
imports point one way: stage -> gpu_stage -> block, stage -> block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.models.artifact import ScoringModel


@dataclass
class BlockResult:
    """Scores of one leased block; fresh host arrays the caller owns."""

    segment: np.ndarray     # int32 (n,)
    distance: np.ndarray    # float32 (n,)
    propensity: np.ndarray  # float32 (n,)
    inf_col: np.ndarray     # int32 (n,): the row's first ±inf or too large feature (model order), -1 if none
    nulls: np.ndarray       # int64 (F,): NaN/null values per feature in the block (±inf not counted)
    h2d_bytes: int = 0      # bytes this block moved host -> device (GPU stage: n x F x 8; CPU: 0)
    tallied: bool = False   # the scores were added to the tally passed to ``score`` (CPU kernel)


def model_params(model: ScoringModel) -> tuple[tuple[np.ndarray, ...], float]:
    """The fused kernels' parameters: ``(fill_s, a_s, d_s, centroids, fill_p, a_p, d_p, coef)``, intercept.

    Each head's preprocessing as the affine ``x * a + d`` (``a = 1/scale``, ``d = -mean/scale``).
    """
    s, p = model.segmenter, model.propensity
    a_s, a_p = 1.0 / s.scale, 1.0 / p.scale
    arrays = (s.fill, a_s, -s.mean * a_s, model.centroids, p.fill, a_p, -p.mean * a_p, model.coef)
    return tuple(np.ascontiguousarray(a, dtype=np.float64) for a in arrays), float(model.intercept)


def level_inputs(model: ScoringModel, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray] | None:
    """The kernels' level tables ``(cat_logit, cat_dist)`` in ``dtype``; None without categorical columns."""
    from engine.models.scorer import level_tables

    tables = level_tables(model)
    if tables is None:
        return None
    return tuple(np.ascontiguousarray(t, dtype=dtype) for t in tables)  # type: ignore[return-value]


def check_block_levels(levels: np.ndarray | None, n: int, n_cat: int) -> None:
    """A block's level matrix must be there for a model with categorical columns, and cover ``n`` rows."""
    if n_cat == 0:
        return
    if levels is None or levels.ndim != 2 or levels.shape[1] != n_cat or levels.shape[0] < n:
        raise ValueError(f"the model has {n_cat} categorical column(s): pass their ({n}, {n_cat}) level indices")


