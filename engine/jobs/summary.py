"""Exact summaries of the published scores: segment sizes, mean propensity, action counts.

The drift histograms are a sample of each fragment; an analyst's "how many customers are
above 0.8 tonight" and "mean propensity of segment 3" must be exact. Each scoring task
tallies the rows it writes (:class:`ScoreTally`, in :func:`engine.jobs.blocks.score_table`)
and returns the tally with its summary; the client adds them up. Nothing is read twice:
only a part reused from an older run whose summary holds no tally (or one over other
thresholds) is read back (its ``segment`` and ``propensity`` columns).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from engine.io.store import open_parquet


def _values(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """The column as one NumPy array, viewed from its Arrow buffers.

    pyarrow's own ``to_numpy`` imports pandas (0.3 s under the GIL), which nothing else on
    the scoring path needs; the engine writes these columns without nulls.
    """
    parts = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise ValueError(f"column {column.type} of a part holds nulls; the engine never writes them")
        data = chunk.buffers()[1]
        n, offset = len(chunk), chunk.offset
        parts.append(np.frombuffer(data, dtype=dtype, count=offset + n)[offset:] if n else np.empty(0, dtype))
    if not parts:
        return np.empty(0, dtype)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


#: Up to this many action thresholds, rows above each are counted by comparison passes.
_COMPARE_MAX_THRESHOLDS = 16


#: Fixed-width probability bins of the run report's propensity chart (0.05 wide); the
#: action thresholds are added as edges, so every threshold is a bin boundary.
HISTOGRAM_STEP = 0.05


def histogram_edges(thresholds: Sequence[float]) -> np.ndarray:
    """Interior edges of the propensity histogram: every 0.05 and each action threshold."""
    grid = np.round(np.arange(1, round(1 / HISTOGRAM_STEP)) * HISTOGRAM_STEP, 10)
    inner = [float(t) for t in thresholds if 0.0 < float(t) < 1.0]
    return np.unique(np.concatenate([grid, np.asarray(inner, dtype=np.float64)]))


class ScoreTally:
    """Exact score summaries of some rows: per-segment row counts and propensity sums, rows
    at or above each threshold, and the propensity histogram over :func:`histogram_edges`
    (bins ``[e_i, e_i+1)``, so a customer exactly at a threshold counts above it, as the
    action counts do). Additive: tasks tally their parts, the client adds them up.
    """

    def __init__(self, k: int, thresholds: Sequence[float], counts: np.ndarray, sums: np.ndarray,
                 above: np.ndarray, histogram: np.ndarray) -> None:
        self.k = k
        self.thresholds = tuple(float(t) for t in thresholds)
        self.counts, self.sums, self.above, self.histogram = counts, sums, above, histogram

    @classmethod
    def empty(cls, k: int, thresholds: Sequence[float]) -> ScoreTally:
        n_bins = histogram_edges(thresholds).size + 1
        return cls(k, thresholds, np.zeros(k, np.int64), np.zeros(k, np.float64),
                   np.zeros(len(thresholds), np.int64), np.zeros(n_bins, np.int64))

    def add(self, segment: np.ndarray, propensity: np.ndarray) -> None:
        """Tally rows (int32 segments, float32 propensities)."""
        k = self.k
        self.counts += np.bincount(segment, minlength=k)[:k]
        self.sums += np.bincount(segment, weights=propensity, minlength=k)[:k]
        cuts = np.asarray(self.thresholds, dtype=np.float32)
        if cuts.size <= _COMPARE_MAX_THRESHOLDS:
            # One comparison pass per threshold: a sort cost ~30 ns a row, a pass about 1 ns.
            # ~(p < t), not p >= t: a NaN counts as above, as it sorts last in the sort below.
            self.above += np.array([np.count_nonzero(~(propensity < c)) for c in cuts], dtype=np.int64)
        else:
            ordered = np.sort(propensity)
            self.above += ordered.size - np.searchsorted(ordered, cuts, side="left")
        # Bin i holds [e_i-1, e_i): the number of edges at or below the value; no sort needed
        # (NaN searches past every edge, into the top bin, as it counts above every threshold).
        edges = histogram_edges(self.thresholds).astype(np.float32)
        self.histogram += np.bincount(np.searchsorted(edges, propensity, side="right"), minlength=edges.size + 1)

    def kernel_arrays(self) -> tuple[np.ndarray, ...]:
        """``(counts, sums, above, histogram, cuts, edges)`` for the CPU kernel, which adds to
        the first four in place (``kernels.score_rows_cpu.score_block``'s ``tally``)."""
        if not hasattr(self, "_cuts"):
            self._cuts = np.asarray(self.thresholds, dtype=np.float32)
            self._edges = histogram_edges(self.thresholds).astype(np.float32)
        return self.counts, self.sums, self.above, self.histogram, self._cuts, self._edges

    def subtract(self, segment: np.ndarray, propensity: np.ndarray) -> None:
        """Take rows back out (rows the kernel tallied that were then rejected)."""
        other = ScoreTally.empty(self.k, self.thresholds)
        other.add(segment, propensity)
        self.counts -= other.counts
        self.sums -= other.sums
        self.above -= other.above
        self.histogram -= other.histogram

    def merge(self, other: ScoreTally) -> None:
        if other.k != self.k or other.thresholds != self.thresholds:
            raise ValueError("cannot add score tallies of other segments or thresholds")
        self.counts += other.counts
        self.sums += other.sums
        self.above += other.above
        self.histogram += other.histogram

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "thresholds": list(self.thresholds), "counts": self.counts.tolist(),
                "sums": self.sums.tolist(), "above": self.above.tolist(), "histogram": self.histogram.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreTally:
        return cls(int(data["k"]), data["thresholds"], np.asarray(data["counts"], np.int64),
                   np.asarray(data["sums"], np.float64), np.asarray(data["above"], np.int64),
                   np.asarray(data["histogram"], np.int64))


def summarise_part(path: str, k: int, thresholds: Sequence[float]) -> dict[str, Any]:
    """:class:`ScoreTally` of a published part, read back (for parts of older runs whose
    task did not tally its scores; a run's own tasks tally while they score)."""
    tally = ScoreTally.empty(k, thresholds)
    pf = open_parquet(path)
    for i in range(pf.metadata.num_row_groups):
        rg = pf.read_row_group(i, columns=["segment", "propensity"])
        tally.add(_values(rg.column("segment"), np.int32), _values(rg.column("propensity"), np.float32))
    return tally.to_json()


def _call(job: Callable[[], Any]) -> Any:
    return job()


def summarise_scores(runner: Any, part_paths: Sequence[str], k: int, thresholds: Sequence[float],
                     tallies: Sequence[dict[str, Any] | None] = ()) -> dict[str, Any]:
    """Add up the parts' :class:`ScoreTally`: ``tallies[i]`` (a task's, JSON) where it has the
    run's thresholds, else :func:`summarise_part` of ``part_paths[i]`` (one task per part on
    ``runner``, reading the part back)."""
    total_tally = ScoreTally.empty(k, thresholds)
    given = list(tallies) + [None] * (len(part_paths) - len(tallies))
    reread = []
    for path, found in zip(part_paths, given):
        tally = ScoreTally.from_json(found) if found else None
        if tally is not None and tally.k == k and tally.thresholds == total_tally.thresholds:
            total_tally.merge(tally)
        else:
            reread.append(path)
    jobs = [functools.partial(summarise_part, p, k, tuple(thresholds)) for p in reread]
    for f in (runner.map(_call, jobs, "summarise-scores") if jobs else []):
        total_tally.merge(ScoreTally.from_json(f))
    counts, sums, above, hist = total_tally.counts, total_tally.sums, total_tally.above, total_tally.histogram
    edges = histogram_edges(thresholds)
    total = int(counts.sum())
    return {
        "segment_counts": counts.tolist(),
        "segment_mean_propensity": [float(s / c) if c else None for s, c in zip(sums, counts)],
        "mean_propensity": float(sums.sum() / total) if total else None,
        "histogram": {"edges": [0.0, *edges.tolist(), 1.0], "counts": hist.tolist()},
        "action_thresholds": [{"threshold": float(t), "customers": int(a),
                               "share": float(a / total) if total else 0.0}
                              for t, a in zip(thresholds, above)],
    }
