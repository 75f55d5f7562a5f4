"""engine/jobs/summary.py: rows above each action threshold, counted alike by both methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.jobs import summary


def test_threshold_counts_by_passes_equal_counts_by_sorting(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    prop = rng.random(50_000).astype(np.float32)
    prop[:7] = [0.5, 0.8, np.nextafter(np.float32(0.5), np.float32(0)), 1.0, 0.0, np.nan, 0.8]
    seg = rng.integers(0, 4, prop.size).astype(np.int32)
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"segment": seg, "propensity": prop}), path, row_group_size=8_192)
    cuts = (0.0, 0.5, 0.8, 1.0)
    by_passes = summary.summarise_part(str(path), 4, cuts)
    monkeypatch.setattr(summary, "_COMPARE_MAX_THRESHOLDS", 0)
    by_sorting = summary.summarise_part(str(path), 4, cuts)
    assert by_passes["above"] == by_sorting["above"] and by_passes["counts"] == by_sorting["counts"]
    want = [int(np.count_nonzero(~(prop < np.float32(c)))) for c in cuts]  # NaN counts as above
    assert by_passes["above"] == want and want[-1] == 2  # 1.0 itself and the NaN
