"""engine/io/id_ranges.py: duplicate ids from per-part ranges equal a full count."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.io.id_ranges import IdRange, overlapping_parts


def _truth(ids: np.ndarray) -> tuple[int, int]:
    _, counts = np.unique(ids, return_counts=True)
    return int((counts - 1).sum()), int((counts > 1).sum())


def test_ranges_count_repeats_exactly_and_send_overlaps_to_buckets() -> None:
    rng = np.random.default_rng(4)
    parts: list[np.ndarray] = []
    base = 0
    for i in range(6):
        ids = np.sort(rng.integers(base, base + 300, 400))   # repeats inside, across batch cuts too
        parts.append(ids)
        base += 300 if i != 2 else 100                       # part 3 overlaps part 2
    parts.append(rng.permutation(np.arange(5_000, 5_100)))   # out of order: no usable range
    parts.append(np.array([], dtype=np.int64))               # empty part
    ranges = []
    for ids in parts:
        tracker = IdRange()
        for cut in np.array_split(ids, 3):                   # three batches
            tracker.add(pa.chunked_array([pa.array(cut, pa.int64())]))
        ranges.append(tracker.to_json())
        if tracker.ordered:
            assert (tracker.repeats, tracker.repeated) == _truth(ids)
    assert not ranges[6]["ordered"] and (ranges[6]["low"], ranges[6]["high"]) == (5_000, 5_099)
    rest, repeats, repeated = overlapping_parts(ranges)
    assert rest == [2, 3, 6]
    # A part out of order overlapping an ordered one takes it along to the bucket count.
    shuffled = dict(ranges[6], low=0, high=10)
    assert overlapping_parts([*ranges[:6], shuffled, ranges[7]])[0] == [0, 2, 3, 6]
    singles = [_truth(parts[i]) for i in (0, 1, 4, 5)]
    assert (repeats, repeated) == (sum(s[0] for s in singles), sum(s[1] for s in singles))
    # Strings have no range: counted the old way.
    tracker = IdRange()
    assert not tracker.add(pa.chunked_array([pa.array(["a", "b"])])) and tracker.to_json() is None
    assert overlapping_parts([ranges[0], None]) == ([0, 1], 0, 0)
    # Nulls are skipped, as the bucket count skips them.
    tracker = IdRange()
    assert tracker.add(pa.chunked_array([pa.array([1, None, 1, 2], pa.int64())]))
    assert (tracker.repeats, tracker.repeated, tracker.rows) == (1, 1, 3)
