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
* **Wide rows as pairs**: a wide table whose rows are events of customers
  (``--rows-are-events``: an id may repeat) goes the same way: each row's held items become
  ``(key, column position)`` pairs, plus one *row marker* ``(key, len(items))`` per row, so
  a customer who holds nothing still counts; a customer holds an item when any of their
  rows does. Without the flag, a wide table with the id column is checked for repeated ids
  by spilling the keys alone (:func:`repeated_ids`).
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

from engine.errors import OutputError
from engine.io.dataset import Fragment, iter_fragment
from engine.itemsets.read import held_matrix

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
    try:
        path = tempfile.mkdtemp(prefix="engine-rules-spill-")
    except OSError as exc:
        raise OutputError(f"cannot create the spill directory for customer buckets under {tempfile.gettempdir()}: "
                          f"{exc.strerror or exc}; set TMPDIR to a writable local disk") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class PairSource:
    """What a batch's rows become: basket ``(id, item)`` rows, wide rows (``items``) as pairs with
    a row marker, or (``keys_only``) the ids alone, for the repeated-id check of a wide table."""

    id_column: str
    item_column: str | None = None      # baskets
    items: tuple[str, ...] = ()         # wide: item columns; code = position, len(items) = row marker
    keys_only: bool = False

    def columns(self) -> tuple[str, ...]:
        if self.keys_only:
            return (self.id_column,)
        return (self.id_column, self.item_column) if self.item_column else (self.id_column, *self.items)


@dataclass(frozen=True)
class PartitionTask:
    """Read one fragment once and spill its pairs (or keys) by customer bucket."""

    index: int
    fragment: Fragment
    partition_types: dict[str, pa.DataType]
    source: PairSource
    buckets: int
    batch_rows: int
    directory: str
    name: str = "pairs"     # file names' prefix: one spill directory serves several passes


@dataclass(frozen=True)
class Segment:
    """One bucket's slice of one spilled batch: ``count`` pairs from pair ``start``."""

    keys_path: str
    codes_path: str
    code_dtype: str
    start: int
    count: int
    to_global: np.ndarray    # local item code -> global code (int32)


def bucket_of(keys: np.ndarray, buckets: int) -> np.ndarray:
    """Each key's bucket through a multiplicative (Fibonacci) hash: the same in every process."""
    with np.errstate(over="ignore"):
        mixed = (keys.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    # uint16 (buckets <= MAX_BUCKETS): NumPy's stable argsort of 16-bit integers is a radix sort.
    # Lemire's range reduction (the top 32 bits times the bucket count) instead of a modulo: a
    # 64-bit division per value was the partition pass's largest cost.
    return ((mixed * np.uint64(buckets)) >> np.uint64(32)).astype(np.uint16)


def customer_keys(ids: pa.Array) -> np.ndarray:
    """Each id's ``int64`` key, the same in every process: integer ids are their own key; other
    ids are keyed by :func:`pandas.util.hash_array`."""
    if pa.types.is_integer(ids.type):
        values = ids.to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
    else:
        raw = ids.to_numpy(zero_copy_only=False)
        if raw.dtype == object or raw.dtype.kind in "OUS":
            raw = raw.astype(object)
        values = hash_array(raw)
    return values.view(np.int64)


def _column(batch: pa.Table, name: str) -> pa.Array:
    col = batch.column(name).combine_chunks()
    return col.dictionary_decode() if pa.types.is_dictionary(col.type) else col


def fragment_pairs(fragment: Fragment, partition_types: dict[str, pa.DataType], source: PairSource,
                   batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, pa.Array | None, dict[str, int]]]:
    """The fragment's rows, a batch at a time, as ``(keys, codes, dictionary, tally)``.

    Baskets: rows with a null id or item are left out (tallied); codes index the fragment's
    growing item dictionary (``dictionary``, in the column's own type: only it ever becomes
    text). Wide: held items as column positions plus one row marker per row, values checked
    as in every wide read; rows without an id are left out (a row of anyone). Keys only: the
    ids of the rows that have one, ``codes`` empty.
    """
    dictionary: pa.Array | None = None
    first = fragment.row_offset
    for batch in iter_fragment(fragment, source.columns(), partition_types, batch_rows=batch_rows):
        id_col = _column(batch, source.id_column)
        tally = {"rows": len(id_col), "null_ids": id_col.null_count, "null_items": 0}
        if source.keys_only:
            keys = customer_keys(id_col.drop_null())
            yield keys, np.zeros(0, np.int32), None, tally
        elif source.item_column is not None:
            item_col = _column(batch, source.item_column)
            tally["null_items"] = item_col.null_count
            if id_col.null_count or item_col.null_count:
                keep = pc.and_(id_col.is_valid(), item_col.is_valid())
                id_col, item_col = id_col.filter(keep), item_col.filter(keep)
            seen = pc.unique(item_col)
            if dictionary is None:
                dictionary = seen
            else:
                new = seen.filter(pc.invert(pc.is_in(seen, value_set=dictionary)))
                if len(new):
                    dictionary = pa.concat_arrays([dictionary, new])
            codes = np.asarray(pc.index_in(item_col, value_set=dictionary).to_numpy(zero_copy_only=False))
            keys = customer_keys(id_col)
            yield keys, codes.astype(np.int32, copy=False), dictionary, tally
        else:
            held = held_matrix(batch, source.items, fragment.path, first)
            valid = np.ones(len(id_col), np.bool_) if id_col.null_count == 0 else \
                np.asarray(id_col.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
            keys = customer_keys(id_col.filter(pa.array(valid)) if id_col.null_count else id_col)
            rows, cols = np.nonzero(held[valid])
            yield (np.concatenate([keys[rows], keys]),
                   np.concatenate([cols.astype(np.int32), np.full(keys.size, len(source.items), np.int32)]),
                   None, tally)
        first += batch.num_rows


def partition_fragment(task: PartitionTask) -> dict[str, object]:
    """Spill the fragment's pairs (or keys), one pair of files per batch, sorted by bucket.
    Returns the fragment's item dictionary as text (baskets), each batch's files and bucket
    offsets, and row tallies; no customer value."""
    dictionary: pa.Array | None = None
    batches: list[dict[str, object]] = []
    tally = {"rows": 0, "null_ids": 0, "null_items": 0}
    for n, (keys, codes, dictionary_now, counted) in enumerate(
            fragment_pairs(task.fragment, task.partition_types, task.source, task.batch_rows)):
        for k, v in counted.items():
            tally[k] += v
        dictionary = dictionary_now if dictionary_now is not None else dictionary
        if keys.size == 0:
            continue
        bucket = bucket_of(keys, task.buckets)
        order = np.argsort(bucket, kind="stable")
        offsets = np.zeros(task.buckets + 1, dtype=np.int64)
        np.cumsum(np.bincount(bucket, minlength=task.buckets), out=offsets[1:])
        stem = os.path.join(task.directory, f"{task.name}-f{task.index:06d}-b{n:06d}")
        entry: dict[str, object] = {"keys": stem + ".keys", "codes": "", "code_dtype": "", "offsets": offsets}
        try:
            keys[order].tofile(stem + ".keys")
            if not task.source.keys_only:
                size = len(dictionary) if dictionary is not None else len(task.source.items) + 1
                code_dtype = np.int16 if size < (1 << 15) else np.int32
                codes.astype(code_dtype)[order].tofile(stem + ".codes")
                entry |= {"codes": stem + ".codes", "code_dtype": np.dtype(code_dtype).str}
        except OSError as exc:
            raise OutputError(f"cannot spill customer buckets to {task.directory} ({exc.strerror or exc}): the "
                              "basket form needs about 10 bytes a row of local disk there; set TMPDIR to a "
                              "larger local disk") from None
        batches.append(entry)
    names = [] if dictionary is None else pc.cast(dictionary, pa.string()).to_pylist()
    return {"index": task.index, "names": names, "batches": batches, **tally}


def bucket_segments(results: list[dict[str, object]], names: tuple[str, ...], buckets: int
                    ) -> list[tuple[Segment, ...]]:
    """Per bucket, its slices of every spilled batch, with each fragment's local-to-global codes."""
    where = {n: i for i, n in enumerate(names)}
    identity = np.arange(len(names) + 1, dtype=np.int32)   # wide: codes are global; + the row marker
    out: list[list[Segment]] = [[] for _ in range(buckets)]
    for r in results:
        to_global = identity if not r["names"] else \
            np.asarray([where[str(n)] for n in r["names"]], dtype=np.int32)  # type: ignore[attr-defined]
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
        with open(s.keys_path, "rb") as f:
            f.seek(s.start * 8)
            keys[at:at + s.count] = np.fromfile(f, dtype=np.int64, count=s.count)
        if not s.codes_path:   # keys only
            at += s.count
            continue
        dtype = np.dtype(s.code_dtype)
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
    """The bucket's customers and, per global item code ``0..items-1``, how many of them hold it
    (a repeated row counts once; code ``items``, the wide row marker, only makes a customer)."""
    if keys.size == 0:
        return 0, np.zeros(items, dtype=np.int64)
    width = np.int64(items + 1)
    rows, customers = customer_numbers(keys)
    pairs = np.sort(rows * width + codes)
    held = pairs[_first_of_runs(pairs)]
    return customers, np.bincount(held % width, minlength=items + 1)[:items].astype(np.int64)


def repeated_ids(keys: np.ndarray) -> tuple[int, int]:
    """``(ids held by more than one row, extra rows)`` among a bucket's keys."""
    if keys.size == 0:
        return 0, 0
    s = np.sort(keys)
    new = _first_of_runs(s)
    distinct = int(new.sum())
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, s.size))
    return int((sizes > 1).sum()), int(keys.size - distinct)


def direct_bucket_pairs(fragments: tuple[Fragment, ...], partition_types: dict[str, pa.DataType],
                        source: PairSource, bucket: int, buckets: int, batch_rows: int
                        ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """A bucket's pairs (wide rows or keys only) read from every fragment, without a spill: the
    way of a remote ``--scheduler`` cluster, whose workers cannot see this host's disk. Work
    grows with buckets x fragments; tallies come from bucket 0 only (each bucket reads all)."""
    assert source.item_column is None, "baskets on a remote cluster read through engine.itemsets.read"
    keys_all, codes_all = [], []
    tally = {"rows": 0, "null_ids": 0, "null_items": 0}
    for fragment in fragments:
        for keys, codes, _, counted in fragment_pairs(fragment, partition_types, source, batch_rows):
            if bucket == 0:
                for k, v in counted.items():
                    tally[k] += v
            mine = bucket_of(keys, buckets) == bucket
            keys_all.append(keys[mine])
            codes_all.append(codes[mine] if codes.size else codes)
    keys = np.concatenate(keys_all) if keys_all else np.zeros(0, np.int64)
    codes = np.concatenate(codes_all) if codes_all else np.zeros(0, np.int32)
    return keys, codes.astype(np.int32, copy=False), tally
