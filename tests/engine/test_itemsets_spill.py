"""The basket form's partition by customer (:mod:`engine.itemsets.spill`): every fragment read
once, and the buckets' pairs together are exactly the input's distinct non-null pairs, each
customer whole in one bucket, item codes as int16 or int32 by the dictionary's size; the spill
directory is gone afterwards, also after a failure."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.io.dataset import discover, plan_fragments
from engine.itemsets import spill


def _baskets(path: Path, ids: pa.Array, items: pa.Array, files: int = 3) -> Path:
    path.mkdir()
    n = len(ids)
    for f, part in enumerate(np.array_split(np.arange(n), files)):
        pq.write_table(pa.table({"customer_id": ids.take(part), "item": items.take(part)}),
                       path / f"part-{f}.parquet", row_group_size=4_000)
    return path


@pytest.mark.parametrize("kind", ["int ids, 40k text items", "text ids, int items"])
def test_buckets_hold_exactly_the_input_pairs(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    raw_ids = rng.integers(0, 3_000, n)
    wide_dictionary = kind.startswith("int")
    if wide_dictionary:   # one fragment: its dictionary passes 32,767 items part way through
        ids = pa.array(raw_ids, pa.int64())
        items = pa.array([f"p{v}" for v in rng.permutation(n) % 36_000], pa.string())
    else:
        ids = pa.array([f"cust-{v}" for v in raw_ids], pa.string())
        items = pa.array(rng.integers(0, 50, n), pa.int32())
    null_id, null_item = rng.random(n) < 0.01, rng.random(n) < 0.01
    ids = pa.array(ids.to_pylist(), ids.type, mask=null_id)
    items = pa.array(items.to_pylist(), items.type, mask=null_item)
    dataset = discover(str(_baskets(tmp_path / "in", ids, items, files=1 if wide_dictionary else 3)))
    fragments = plan_fragments(dataset, n if wide_dictionary else 8_000)
    assert len(fragments) == 1 if wide_dictionary else len(fragments) >= 3
    source = spill.PairSource("customer_id", item_column="item")
    buckets = 7
    with spill.spill_directory() as directory:
        results = [spill.partition_fragment(spill.PartitionTask(i, f, dataset.partition_columns, source, buckets,
                                                                batch_rows=3_000, directory=directory))
                   for i, f in enumerate(fragments)]
        assert os.stat(directory).st_mode & 0o777 == 0o700
        names = tuple(sorted({str(v) for r in results for v in r["names"]}))
        dtypes = {b["code_dtype"] for r in results for b in r["batches"]}
        assert dtypes == ({"<i2", "<i4"} if wide_dictionary else {"<i2"}), dtypes
        got, owner = set(), {}
        for b, segments in enumerate(spill.bucket_segments(results, names, buckets)):
            keys, codes = spill.bucket_pairs(segments)
            for k in np.unique(keys).tolist():
                assert owner.setdefault(k, b) == b, "a customer in two buckets"
            got |= set(zip(keys.tolist(), (names[c] for c in codes.tolist())))
            customers, counts = spill.item_customers(keys, codes, len(names))
            assert customers == len(np.unique(keys)) and counts.sum() == len(set(zip(keys.tolist(), codes.tolist())))
    assert not os.path.exists(directory)
    keep = ~(null_id | null_item)
    key_of = spill.customer_keys(ids.filter(pa.array(keep)))
    want = set(zip(key_of.tolist(), (str(v) for v in items.filter(pa.array(keep)).to_pylist())))
    assert got == want
    assert sum(int(r["rows"]) for r in results) == n and sum(int(r["null_ids"]) for r in results) == null_id.sum()
    assert len(set(key_of.tolist())) == len(set(ids.filter(pa.array(keep)).to_pylist()))  # no key shared


def test_spill_directory_goes_on_failure_and_buckets_follow_the_budget() -> None:
    with pytest.raises(RuntimeError), spill.spill_directory() as directory:
        (Path(directory) / "x.keys").write_bytes(b"1")
        raise RuntimeError("a task failed")
    assert not os.path.exists(directory)
    # One bucket's pairs fit the budget whatever the row count; at least one bucket per thread.
    per_bucket = spill.BUCKET_PAIR_BYTES // spill.PAIR_BYTES
    for rows in (10, 10_000_000, 100_000_000):
        b = spill.spill_buckets(rows, 2)
        assert b >= 2 and -(-rows // b) <= per_bucket + 1
    assert spill.spill_buckets(100_000_000, 2) == 10 * spill.spill_buckets(10_000_000, 2)


def test_a_full_or_unwritable_spill_disk_is_exit_6_naming_tmpdir(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from engine.errors import OutputError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(OutputError, match="TMPDIR") as caught, spill.spill_directory():
        pass
    assert caught.value.exit_code == 6
    data = _baskets(tmp_path / "in", pa.array([1, 2], pa.int64()), pa.array(["a", "b"]), files=1)
    dataset = discover(str(data))
    task = spill.PartitionTask(0, plan_fragments(dataset, 10)[0], {}, spill.PairSource("customer_id", item_column="item"),
                               2, 10, str(tmp_path / "gone"))
    with pytest.raises(OutputError, match="TMPDIR"):
        spill.partition_fragment(task)
