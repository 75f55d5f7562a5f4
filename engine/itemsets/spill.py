"""The basket form's partition by customer: every input file read once, pairs spilled to buckets.

A basket table's rows of one customer may lie in any file, and a level pass must see each
customer whole. Reading every file once per customer bucket makes the work grow with
buckets x files, i.e. quadratically in the data. Instead, one *partition* pass reads each
fragment once, in batches, and writes its ``(customer key, item code)`` pairs, sorted by
bucket, into a local spill directory the run owns (:func:`spill_directory`); every later
pass of a bucket reads only its own slice of each spilled batch (:func:`bucket_pairs`).

* **Compact**: a customer key is an ``int64`` (an integer id itself; any other id its 64-bit
  :func:`pandas.util.hash_array` value, SipHash with a fixed key: two distinct ids share a
  key with probability about ``n² / 2**65``, 3e-6 at ten million ids, and would then count
  as one customer: fewer customers, never more, so the privacy floor still holds). An item
  code is an index into the fragment's own dictionary, ``int16`` while it has fewer than
  32,768 items, else ``int32``; the client joins the fragments' dictionaries into the
  global one and each bucket task maps local codes through a small array.
* **Bounded**: the bucket count is chosen so that one bucket's pairs fit
  :data:`BUCKET_PAIR_BYTES` (:func:`spill_buckets`), so a task's memory follows that budget,
  not the number of customers; a partition task holds one batch.
* **Where**: a fresh private directory (``tempfile.mkdtemp``: created, never adopted, mode
  0700) under ``TMPDIR``, removed when the run ends, whether it succeeds or fails. The
  workers of the run must see it: true of the in-process runner and of a ``--workers``
  cluster the engine starts on this host, not of a remote ``--scheduler`` cluster (there
  the job keeps reading every file per bucket, :func:`engine.itemsets.read.basket_pairs`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array  # at import: two task threads importing pandas at once deadlock

from engine.io.dataset import Fragment, iter_fragment

#: One bucket's spilled pairs (8-byte key + 2- or 4-byte code) stay under this.
BUCKET_PAIR_BYTES = 16 << 20
PAIR_BYTES = 10
MAX_BUCKETS = 1 << 16


def spill_buckets(rows: int, threads: int) -> int:
    """Buckets so that one holds at most :data:`BUCKET_PAIR_BYTES` of pairs (by the input's
    row count from the footers), and at least one per thread of the run."""
    by_budget = -(-max(rows, 1) * PAIR_BYTES // BUCKET_PAIR_BYTES)
    return int(max(1, min(max(by_budget, threads), MAX_BUCKETS)))


@contextmanager
def spill_directory() -> Iterator[str]:
    """A private directory for one run's spilled pairs, removed at the end however it ends."""
    path = tempfile.mkdtemp(prefix="engine-rules-spill-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class PartitionTask:
    """Read one fragment once and spill its pairs by customer bucket."""

    index: int
    fragment: Fragment
    partition_types: dict[str, pa.DataType]
    id_column: str
    item_column: str
    buckets: int
    batch_rows: int
    directory: str


@dataclass(frozen=True)
class Segment:
    """One bucket's slice of one spilled batch: ``count`` pairs from pair ``start``."""

    keys_path: str
    codes_path: str
    code_dtype: str
    start: int
    count: int
    to_global: np.ndarray    # local item code -> global code (int32)


def customer_keys(ids: pa.Array, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Each id's ``int64`` key and bucket, the same in every process: integer ids are their own
    key, bucketed through a multiplicative (Fibonacci) hash; other ids are keyed by
    :func:`pandas.util.hash_array`."""
    if pa.types.is_integer(ids.type):
        values = ids.to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
    else:
        raw = ids.to_numpy(zero_copy_only=False)
        if raw.dtype == object or raw.dtype.kind in "OUS":
            raw = raw.astype(object)
        values = hash_array(raw)
    with np.errstate(over="ignore"):
        mixed = (values * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return values.view(np.int64), (mixed % np.uint64(buckets)).astype(np.int64)


def partition_fragment(task: PartitionTask) -> dict[str, object]:
    """Spill the fragment's non-null ``(id, item)`` rows, one pair of files per batch, sorted by
    bucket. Returns the fragment's item dictionary (text), each batch's files and bucket
    offsets, and row tallies; no customer value."""
    dictionary: pa.Array | None = None
    batches: list[dict[str, object]] = []
    tally = {"rows": 0, "null_ids": 0, "null_items": 0}
    for n, batch in enumerate(iter_fragment(task.fragment, (task.id_column, task.item_column),
                                            task.partition_types, batch_rows=task.batch_rows)):
        id_col = batch.column(task.id_column).combine_chunks()
        item_col = batch.column(task.item_column).combine_chunks()
        if pa.types.is_dictionary(id_col.type):
            id_col = id_col.dictionary_decode()
        if pa.types.is_dictionary(item_col.type):
            item_col = item_col.dictionary_decode()
        tally["rows"] += len(id_col)
        tally["null_ids"] += id_col.null_count
        tally["null_items"] += item_col.null_count
        if id_col.null_count or item_col.null_count:
            keep = pc.and_(id_col.is_valid(), item_col.is_valid())
            id_col, item_col = id_col.filter(keep), item_col.filter(keep)
        if len(id_col) == 0:
            continue
        # Items are coded against the fragment's dictionary in their own type; only the
        # dictionary becomes text (the client's names), never every row.
        seen = pc.unique(item_col)
        if dictionary is None:
            dictionary = seen
        else:
            new = seen.filter(pc.invert(pc.is_in(seen, value_set=dictionary)))
            if len(new):
                dictionary = pa.concat_arrays([dictionary, new])
        codes = np.asarray(pc.index_in(item_col, value_set=dictionary).to_numpy(zero_copy_only=False))
        keys, bucket = customer_keys(id_col, task.buckets)
        order = np.argsort(bucket, kind="stable")
        offsets = np.searchsorted(bucket[order], np.arange(task.buckets + 1)).astype(np.int64)
        code_dtype = np.int16 if len(dictionary) < (1 << 15) else np.int32
        stem = os.path.join(task.directory, f"f{task.index:06d}-b{n:06d}")
        keys[order].tofile(stem + ".keys")
        codes.astype(code_dtype)[order].tofile(stem + ".codes")
        batches.append({"keys": stem + ".keys", "codes": stem + ".codes", "code_dtype": np.dtype(code_dtype).str,
                        "offsets": offsets})
    names = [] if dictionary is None else pc.cast(dictionary, pa.string()).to_pylist()
    return {"index": task.index, "names": names, "batches": batches, **tally}


def bucket_segments(results: list[dict[str, object]], names: tuple[str, ...], buckets: int
                    ) -> list[tuple[Segment, ...]]:
    """Per bucket, its slices of every spilled batch, with each fragment's local-to-global codes."""
    where = {n: i for i, n in enumerate(names)}
    out: list[list[Segment]] = [[] for _ in range(buckets)]
    for r in results:
        to_global = np.asarray([where[str(n)] for n in r["names"]], dtype=np.int32)  # type: ignore[attr-defined]
        for b in r["batches"]:  # type: ignore[attr-defined]
            offsets = b["offsets"]
            for k in range(buckets):
                count = int(offsets[k + 1] - offsets[k])
                if count:
                    out[k].append(Segment(b["keys"], b["codes"], b["code_dtype"], int(offsets[k]), count, to_global))
    return [tuple(s) for s in out]


def bucket_pairs(segments: tuple[Segment, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A bucket's ``(customer key int64, global item code int32)`` pairs, read from its slices."""
    total = sum(s.count for s in segments)
    keys = np.empty(total, dtype=np.int64)
    codes = np.empty(total, dtype=np.int32)
    at = 0
    for s in segments:
        dtype = np.dtype(s.code_dtype)
        with open(s.keys_path, "rb") as f:
            f.seek(s.start * 8)
            keys[at:at + s.count] = np.fromfile(f, dtype=np.int64, count=s.count)
        with open(s.codes_path, "rb") as f:
            f.seek(s.start * dtype.itemsize)
            codes[at:at + s.count] = s.to_global[np.fromfile(f, dtype=dtype, count=s.count)]
        at += s.count
    return keys, codes


def _first_of_runs(s: np.ndarray) -> np.ndarray:
    """Where a sorted array starts a new value."""
    new = np.empty(s.size, dtype=np.bool_)
    new[:1] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    return new


def customer_numbers(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Each pair's customer number 0..customers-1 within the bucket, and the customer count.

    Sort-based: ``np.unique`` was measured 10-100x slower on these arrays (NumPy 2.4)."""
    order = np.argsort(keys, kind="stable")
    new = _first_of_runs(keys[order])
    rows = np.empty(keys.size, dtype=np.int64)
    rows[order] = np.cumsum(new) - 1
    return rows, int(new.sum())


def item_customers(keys: np.ndarray, codes: np.ndarray, items: int) -> tuple[int, np.ndarray]:
    """The bucket's customers and, per global item code, how many of them hold it (a repeated
    row counts once)."""
    if keys.size == 0:
        return 0, np.zeros(items, dtype=np.int64)
    rows, customers = customer_numbers(keys)
    pairs = np.sort(rows * np.int64(items) + codes)
    held = pairs[_first_of_runs(pairs)]
    return customers, np.bincount(held % np.int64(items), minlength=items).astype(np.int64)
