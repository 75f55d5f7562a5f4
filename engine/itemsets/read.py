"""A task's customers as 0/1 blocks, from a wide customer table or a basket table.

* **wide** (``--items`` / ``--items-prefix``): one row per customer, one column per item
  (0/1, boolean or a count; held when > 0, not held when 0 or null). A task is one
  fragment, read in batches: each batch is a block, so memory follows the batch and the
  item count, never the customers.
* **baskets** (``--baskets``): rows of (customer id, item), like a transaction log; a
  customer's rows may lie in any file. A task owns one hash bucket of the customer ids
  (:func:`pandas.util.hash_array`, the same in every process) and reads the id and item
  columns of every fragment, keeping its bucket's rows, so each customer is whole in one
  task and counted once however many rows (or repeats of an item) they have. The number of
  buckets follows ``--partition-rows``, which bounds a task's rows.

Values are checked as they are read: a wide item column holding a negative, fractional or
non-finite value fails the run with the column, file and row named (never the value).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array  # at import: two task threads importing pandas at once deadlock

from engine.errors import InputError
from engine.io.dataset import Fragment, iter_fragment

WIDE, BASKETS = "wide", "baskets"


@dataclass(frozen=True)
class RulesTask:
    """One unit of counting work: a fragment (wide) or a bucket of customer ids (baskets)."""

    index: int
    form: str
    fragments: tuple[Fragment, ...]
    partition_types: dict[str, pa.DataType]
    items: tuple[str, ...]          # wide: the item columns; baskets: (item column,)
    id_column: str | None = None    # baskets only
    bucket: int = 0
    buckets: int = 1
    batch_rows: int = 65_536

    def describe(self) -> str:
        if self.form == WIDE and self.id_column is None:
            return self.fragments[0].describe()
        return f"customer bucket {self.bucket + 1} of {self.buckets}"


def _bad_values(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Positions of values that are not a non-negative whole number (nulls excluded)."""
    if values.dtype == np.bool_:
        return np.zeros(0, dtype=np.int64)
    if np.issubdtype(values.dtype, np.integer):
        return np.flatnonzero(valid & (values < 0))
    finite = np.isfinite(values)
    ok = finite & (values >= 0) & (np.floor(np.where(finite, values, 0)) == np.where(finite, values, 0))
    return np.flatnonzero(valid & ~ok)


def held_matrix(table: pa.Table, columns: tuple[str, ...], where: str, first_row: int) -> np.ndarray:
    """``(rows, items)`` bool: which item each row holds (> 0), after checking the values."""
    out = np.zeros((table.num_rows, len(columns)), dtype=np.bool_)
    for j, name in enumerate(columns):
        col = table.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_null(col.type):
            continue
        valid = np.ones(len(col), dtype=np.bool_) if col.null_count == 0 else \
            np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
        values = col.fill_null(False if pa.types.is_boolean(col.type) else 0).to_numpy(zero_copy_only=False)
        bad = _bad_values(np.asarray(values), valid)
        if bad.size:
            raise InputError(
                f"item column {name!r} holds a value that is not 0/1, a boolean or a count (a negative, "
                f"fractional, NaN or infinite number) in {where}, row {first_row + int(bad[0])} "
                f"({bad.size} such row(s) in that batch); item columns say whether a customer holds the "
                "item: 0 or null = no, > 0 = yes. Fix the column or leave it out of --items"
            )
        out[:, j] = (values > 0) & valid
    return out


def wide_blocks(task: RulesTask) -> Iterator[np.ndarray]:
    """The fragment's customers, a batch at a time, as bool ``(rows, items)`` blocks."""
    (fragment,) = task.fragments
    first = fragment.row_offset
    for batch in iter_fragment(fragment, task.items, task.partition_types, batch_rows=task.batch_rows):
        yield held_matrix(batch, task.items, fragment.path, first)
        first += batch.num_rows


def _bucket_of(ids: pa.Array, buckets: int) -> np.ndarray:
    """Each id's bucket, the same in every process: integer ids through a multiplicative
    (Fibonacci) hash, a few NumPy passes; other ids through :func:`pandas.util.hash_array`
    (SipHash with a fixed key), about ten times slower."""
    if pa.types.is_integer(ids.type):
        values = ids.to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
        with np.errstate(over="ignore"):
            mixed = (values * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
        return (mixed % np.uint64(buckets)).astype(np.int64)
    values = ids.to_numpy(zero_copy_only=False)
    if values.dtype == object or values.dtype.kind in "OUS":
        values = values.astype(object)
    return (hash_array(values) % np.uint64(buckets)).astype(np.int64)


def basket_pairs(task: RulesTask) -> tuple[pa.Array, pa.Array, dict[str, int]]:
    """This bucket's rows as (customer id, item as text), nulls left out; and row tallies."""
    id_column, (item_column,) = task.id_column, task.items
    assert id_column is not None
    ids, items = [], []
    tally = {"rows": 0, "null_ids": 0, "null_items": 0}
    for fragment in task.fragments:
        for batch in iter_fragment(fragment, (id_column, item_column), task.partition_types,
                                   batch_rows=task.batch_rows):
            id_col = batch.column(id_column).combine_chunks()
            item_col = batch.column(item_column).combine_chunks()
            if pa.types.is_dictionary(id_col.type):
                id_col = id_col.dictionary_decode()
            if pa.types.is_dictionary(item_col.type):
                item_col = item_col.dictionary_decode()
            if task.bucket == 0:  # every bucket reads every row: one of them tallies them
                tally["rows"] += len(id_col)
                tally["null_ids"] += id_col.null_count
                tally["null_items"] += item_col.null_count
            keep = pc.and_(id_col.is_valid(), item_col.is_valid())
            id_col, item_col = id_col.filter(keep), item_col.filter(keep)
            if task.buckets > 1:
                mine = pa.array(_bucket_of(id_col, task.buckets) == task.bucket)
                id_col, item_col = id_col.filter(mine), item_col.filter(mine)
            ids.append(id_col)
            items.append(pc.cast(item_col, pa.string()))
    if not ids:
        return pa.array([], pa.int64()), pa.array([], pa.string()), tally
    return pa.concat_arrays(ids), pa.concat_arrays(items), tally


def customer_rows(ids: pa.Array) -> tuple[np.ndarray, int]:
    """Each row's customer number 0..customers-1 in this bucket, and the customer count."""
    encoded = pc.dictionary_encode(ids)
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64), len(encoded.dictionary)


def item_codes(items: pa.Array, names: tuple[str, ...]) -> np.ndarray:
    """Each row's code in ``names`` (-1 where the item is not among them)."""
    codes = pc.index_in(items, value_set=pa.array(names, pa.string()))
    return np.asarray(codes.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def basket_matrix(rows: np.ndarray, codes: np.ndarray, customers: int, items: int) -> Any:
    """The bucket's customers x items 0/1 CSR matrix (a repeated item counts once)."""
    import scipy.sparse as sp

    keep = codes >= 0
    m = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.int64), (rows[keep], codes[keep])),
                      shape=(customers, items))
    m.sum_duplicates()
    m.data[:] = 1
    return m
