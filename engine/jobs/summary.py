"""Exact summaries of the published scores: segment sizes, mean propensity, action counts.

The drift histograms are a sample of each fragment; an analyst's "how many customers are
above 0.8 tonight" and "mean propensity of segment 3" must be exact. One task per part
reads back only the ``segment`` and ``propensity`` columns of the part it summarises
(about 8 bytes a row, just written, so usually still in the page cache) and returns a
few numbers; the client adds them up. The per-part scoring loop is left alone.
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


def summarise_part(path: str, k: int, thresholds: Sequence[float]) -> dict[str, Any]:
    """Per-segment row counts and propensity sums, rows at or above each threshold, and
    the propensity histogram over :func:`histogram_edges` (bins ``[e_i, e_i+1)``, so a
    customer exactly at a threshold counts above it, as the action counts do)."""
    counts = np.zeros(k, dtype=np.int64)
    sums = np.zeros(k, dtype=np.float64)
    above = np.zeros(len(thresholds), dtype=np.int64)
    cuts = np.asarray(thresholds, dtype=np.float32)
    edges = histogram_edges(thresholds).astype(np.float32)
    hist = np.zeros(edges.size + 1, dtype=np.int64)
    pf = open_parquet(path)
    for i in range(pf.metadata.num_row_groups):
        rg = pf.read_row_group(i, columns=["segment", "propensity"])
        seg = _values(rg.column("segment"), np.int32)
        prop = _values(rg.column("propensity"), np.float32)
        counts += np.bincount(seg, minlength=k)[:k]
        sums += np.bincount(seg, weights=prop, minlength=k)[:k]
        if cuts.size <= _COMPARE_MAX_THRESHOLDS:
            # One comparison pass per threshold: a sort per row group cost ~30 ns a row (0.5
            # CPU-s over 16M rows, on the 2-core run's critical path), a pass about 1 ns.
            # ~(p < t), not p >= t: a NaN counts as above, as it sorts last in the sort below.
            above += np.array([np.count_nonzero(~(prop < c)) for c in cuts], dtype=np.int64)
        else:
            # Many thresholds: sorted once per row group, one binary search per threshold.
            ordered = np.sort(prop)
            above += ordered.size - np.searchsorted(ordered, cuts, side="left")
        # Bin i holds [e_i-1, e_i): the number of edges at or below the value; no sort needed
        # (NaN searches past every edge, into the top bin, as it counts above every threshold).
        hist += np.bincount(np.searchsorted(edges, prop, side="right"), minlength=edges.size + 1)
    return {"counts": counts.tolist(), "sums": sums.tolist(), "above": above.tolist(), "histogram": hist.tolist()}


def _call(job: Callable[[], Any]) -> Any:
    return job()


def summarise_scores(runner: Any, part_paths: Sequence[str], k: int,
                     thresholds: Sequence[float]) -> dict[str, Any]:
    """Add up :func:`summarise_part` over every part, one task per part on ``runner``."""
    jobs = [functools.partial(summarise_part, p, k, tuple(thresholds)) for p in part_paths]
    found = runner.map(_call, jobs, "summarise-scores") if jobs else []
    counts = np.zeros(k, dtype=np.int64)
    sums = np.zeros(k, dtype=np.float64)
    above = np.zeros(len(thresholds), dtype=np.int64)
    edges = histogram_edges(thresholds)
    hist = np.zeros(edges.size + 1, dtype=np.int64)
    for f in found:
        hist += np.asarray(f["histogram"], dtype=np.int64)
        counts += np.asarray(f["counts"], dtype=np.int64)
        sums += np.asarray(f["sums"], dtype=np.float64)
        above += np.asarray(f["above"], dtype=np.int64)
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
