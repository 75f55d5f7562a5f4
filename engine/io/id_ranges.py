"""Duplicate ids by per-part id ranges: the exact count without reading the ids twice.

Customer tables are usually written in id order. A scoring task then checks, while it
writes, that its integer ids never decrease, and keeps their range and the repeats it
saw (neighbours that are equal): about 1 ns a row, no extra file. The client sorts the
parts' ranges: a part whose range overlaps no other part's holds every copy of its ids,
so its own count is exact. Only parts whose ranges overlap (or whose ids are not in
order, or not integers) are counted the old way (:mod:`engine.io.ids`: hash buckets
written by the task from its first batch on, or the part's ids read back), and only
those parts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from engine.io.matrix import chunk_values

__all__ = ["IdRange", "overlapping_parts"]


class IdRange:
    """The integer ids one task wrote: their range, and whether they came in order.

    ``low``/``high`` bound the ids (nulls skipped). While ``ordered`` (every id >= the one
    before, across batches too), ``repeats``/``repeated`` count the rows repeating an id
    and the ids seen more than once. ``usable`` False: not integers (no range at all).
    """

    def __init__(self) -> None:
        self.usable = True
        self.ordered = True
        self.low: int | None = None
        self.high: int | None = None
        self.last: int | None = None
        self.repeats = 0
        self.repeated = 0
        self._last_was_repeat = False
        self.rows = 0

    def add(self, ids: pa.ChunkedArray) -> bool:
        """Take one batch's written ids; returns whether they are still in order."""
        if not self.usable:
            return False
        if not pa.types.is_integer(ids.type):
            self.usable = self.ordered = False
            return False
        for chunk in ids.chunks:
            if chunk.null_count:
                chunk = chunk.drop_null()
            if not len(chunk):
                continue
            v = chunk_values(chunk)
            self.rows += int(v.size)
            if self.ordered and ((self.last is not None and v[0] < self.last)
                                 or (v.size > 1 and not bool(np.all(v[1:] >= v[:-1])))):
                self.ordered = False
            if not self.ordered:
                lo, hi = int(v.min()), int(v.max())
                self.low = lo if self.low is None else min(self.low, lo)
                self.high = hi if self.high is None else max(self.high, hi)
                continue
            # Repeats: equal neighbours, across the batch boundary too.
            same = v[1:] == v[:-1]
            prev = False
            if self.last is not None:
                same = np.concatenate([[v[0] == self.last], same])
                prev = self._last_was_repeat
            if same.size:
                self.repeats += int(same.sum())
                starts = same & ~np.concatenate([[prev], same[:-1]])
                self.repeated += int(starts.sum())
                self._last_was_repeat = bool(same[-1])
            if self.low is None:
                self.low = int(v[0])
            self.high = self.last = int(v[-1])
        return self.ordered

    def to_json(self) -> dict[str, Any] | None:
        if not self.usable:
            return None
        return {"low": self.low, "high": self.high, "ordered": self.ordered, "repeats": self.repeats,
                "repeated": self.repeated, "rows": self.rows}


def overlapping_parts(ranges: list[dict[str, Any] | None]) -> tuple[list[int], int, int]:
    """Split parts by their ranges: ``(parts to count the old way, repeats, repeated ids)``.

    ``ranges[i]`` is part i's :meth:`IdRange.to_json`. A part whose ids were in order and
    whose range overlaps no other part's is counted from its own repeats; every other
    part (overlapping, out of order) is returned for the bucket count, and all of them
    where any part has no range (ids that are not integers: nothing is known).
    """
    if any(r is None for r in ranges):
        return list(range(len(ranges))), 0, 0
    spans = sorted((r["low"], r["high"], i) for i, r in enumerate(ranges) if r is not None and r["rows"])
    fallback = []
    repeats = repeated = 0
    j = 0
    while j < len(spans):
        group = [spans[j]]
        high = spans[j][1]
        j += 1
        while j < len(spans) and spans[j][0] <= high:
            group.append(spans[j])
            high = max(high, spans[j][1])
            j += 1
        r = ranges[group[0][2]]
        if len(group) == 1 and r is not None and r["ordered"]:
            repeats += int(r["repeats"])
            repeated += int(r["repeated"])
        else:
            fallback += [g[2] for g in group]
    return sorted(fallback), repeats, repeated
