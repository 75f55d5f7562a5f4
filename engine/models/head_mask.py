"""Which design columns each offer head may use: the per-head feature mask.

An offer's ``exclude_features`` (engine/offers/catalogue.py) names input columns its head
never uses. In the design matrix (numeric and date columns, then the one-hot levels of the
categorical columns laid end to end) that is a 0/1 mask ``(T, F + L)``: 0 where a column,
or every level of a categorical column, is excluded. The fit holds those weights at exactly
0 (engine/offers/heads.py); the model stores the mask (``head_mask`` in arrays.npz) and
every load checks it against the names and the weights. It lives here, below both the
artifact (which validates it) and the offers training (which builds it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.models.categorical import Categorical, offsets


def design_mask(features: Sequence[str], categoricals: Sequence[Categorical],
                excluded: Sequence[Sequence[str]]) -> np.ndarray:
    """``(T, F + L)`` float64 0/1: per head, 1 for each design column it uses.

    A name that is not a model column raises ``KeyError`` (callers validate names first).
    """
    F = len(features)
    L = int(sum(c.n_levels for c in categoricals))
    where = {name: i for i, name in enumerate(features)}
    base = offsets(categoricals)
    blocks = {c.name: (F + int(base[q]), F + int(base[q]) + c.n_levels) for q, c in enumerate(categoricals)}
    mask = np.ones((len(excluded), F + L))
    for t, names in enumerate(excluded):
        for name in names:
            if name in where:
                mask[t, where[name]] = 0.0
            else:
                lo, hi = blocks[name]
                mask[t, lo:hi] = 0.0
    return mask
