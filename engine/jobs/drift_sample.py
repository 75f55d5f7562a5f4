"""Drift bookkeeping of one scoring task, on the host, from a small systematic sample.

Binning every feature of every row would cost as much as the scoring itself, so each
task keeps every ``stride``-th row of its fragment (about :data:`DRIFT_SAMPLE_ROWS`
rows) and bins that sample once, at the end, in the training profile's reference bins.
The sample is taken from the host block the pipeline has just filled (raw values, NaN
for missing), so drift costs no device round trip on either backend.

The result (``drift_counts`` of a part summary) is read by engine/jobs/score.py and
the run report: ``{"sample_stride", "features": {name: counts}, "propensity": counts,
"segments": counts}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.models.artifact import ScoringModel
from engine.models.profile import discrete_counts

DRIFT_SAMPLE_ROWS = 16_384


def drift_stride(n: int) -> int:
    """Drift histograms use every ``stride``-th row of a fragment (a systematic sample).

    About 16k rows per fragment (all rows of smaller ones) keeps the sampling noise of a
    decile PSI near 1e-3 per fragment and far lower over a whole run, well under the
    0.10 warning level.
    """
    return max(1, n // DRIFT_SAMPLE_ROWS)


def bin_counts_host(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of the finite ``values`` in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``.

    The same counts as :func:`engine.models.profile.bin_counts` (``searchsorted(edges,
    v, side="left")``), from one comparison pass per edge: with about ten sorted edges
    that is several times faster than a binary search per value (measured 4 ms against
    under 1 ms for 21 features x 20k sampled values), which every task pays once.
    """
    finite = values[np.isfinite(values)]
    at_most = [np.count_nonzero(finite <= e) for e in edges]
    return np.diff(np.asarray([0, *at_most, finite.size], dtype=np.int64))


class DriftCounter:
    """Histogram counts of tonight's values in the training profile's reference bins.

    Blocks hand in their rows and scores with the fragment row of their first row; the
    counter keeps rows ``0, stride, 2*stride, ...`` of the fragment (copies: the blocks
    are reused buffers) and bins them once in :meth:`result`.
    """

    def __init__(self, model: ScoringModel, stride: int) -> None:
        self.model, self.stride = model, stride
        self.rows: list[np.ndarray] = []
        self.segments: list[np.ndarray] = []
        self.propensity: list[np.ndarray] = []

    def add_rows(self, start: int, X: np.ndarray) -> None:
        """Sample a host block's raw rows (model feature order, NaN for missing); ``start`` is its fragment row."""
        picked = X[(-start) % self.stride::self.stride]
        if picked.shape[0]:
            self.rows.append(np.array(picked, order="F"))

    def add_scores(self, start: int, segment: np.ndarray, propensity: np.ndarray) -> None:
        if not segment.size:
            return
        first = (-start) % self.stride
        self.segments.append(segment[first::self.stride].copy())
        self.propensity.append(propensity[first::self.stride].copy())

    def result(self) -> dict[str, Any]:
        model = self.model
        profile = model.profile or {}
        feats = profile.get("features", {})
        out: dict[str, Any] = {"sample_stride": self.stride, "features": {}}
        if not self.segments and not self.rows:
            out["segments"] = [0] * model.k
            return out
        # Column-major, so that each feature's sample is one contiguous run.
        sample = np.asfortranarray(np.concatenate(self.rows)) if self.rows else np.empty((0, model.n_features))
        out["discrete"] = {}
        for j, name in enumerate(model.features):
            edges = feats.get(name, {}).get("bin_edges")
            if edges is not None:
                out["features"][name] = bin_counts_host(sample[:, j], np.asarray(edges, dtype=np.float64)).tolist()
                # Whole-number features (flags, counts) also by value: exact medians and shares.
                out["discrete"][name] = discrete_counts(sample[:, j])
        prop_edges = profile.get("propensity", {}).get("bin_edges")
        if not self.segments:   # rows without scores (engine recommend): the features' drift only
            out["segments"] = [0] * model.k
            return out
        if prop_edges is not None:
            prop = np.concatenate(self.propensity).astype(np.float64)
            out["propensity"] = bin_counts_host(prop, np.asarray(prop_edges, dtype=np.float64)).tolist()
        out["segments"] = np.bincount(np.concatenate(self.segments), minlength=model.k).tolist()
        return out
