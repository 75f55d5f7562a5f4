"""Support counts of one level of candidate itemsets over a block of customers.

With ``X`` a block's customers x items 0/1 matrix, every pair's count is an entry of
``Xᵀ X``. A level-``L`` candidate is a frequent ``(L-2)``-itemset ``S`` (the *prefix*)
extended by two items ``a < b`` taken from ``S``'s *extensions* (items after ``S``'s last
whose union with ``S`` is frequent): its count is an entry of ``X_Sᵀ X_S``, the same
product over the rows of ``X`` that hold all of ``S``, restricted to the extension columns.
Level 2 is the empty prefix with every frequent item as extension. Each product's result
is at most extensions² (never customers x anything), and counts of disjoint blocks add.

Two forms of the same arithmetic, chosen per block by cost:

* :func:`count_dense`: ``float32`` 0/1 blocks through ``xp.matmul`` (BLAS on the CPU,
  cuBLAS with CuPy). Exact: every entry is an integer below 2**24 because a block never
  holds more rows than :data:`MAX_DENSE_ROWS`.
* :func:`count_sparse`: SciPy CSR blocks through SciPy's compiled sparse product (CPU);
  its cost follows the items each customer holds, not the number of items, which is what
  a basket table with thousands of products and a dozen per customer needs.

Both return the block's non-zero counts as ``(itemsets, counts)``: an ``(K, L)`` int32
array of item codes (each row increasing) and an int64 array; summing across blocks and
partitions is the caller's (:func:`engine.itemsets.mine.add_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.sparse as sp  # at import, not in a task thread beside the report's imports

from engine.backends.namespace import asnumpy, is_numpy, to_device

# float32 holds every integer up to 2**24 exactly: a dense block's counts stay exact.
MAX_DENSE_ROWS = 1 << 24


@dataclass(frozen=True)
class Level:
    """The candidates of one level: ``size``-itemsets as prefix + two extensions."""

    size: int
    prefixes: np.ndarray               # (P, size - 2) int32, each row increasing
    extensions: tuple[np.ndarray, ...]  # per prefix: increasing int32 codes above the prefix's last

    def candidates(self) -> int:
        """How many itemsets this level counts at most (the client's memory bound)."""
        return int(sum(len(e) * (len(e) - 1) // 2 for e in self.extensions))


def empty_counts(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, size), dtype=np.int32), np.zeros(0, dtype=np.int64)


def _upper(c: np.ndarray, prefix: np.ndarray, ext: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero strictly-upper entries of one product as itemsets (prefix, ext[a], ext[b])."""
    a, b = np.nonzero(np.triu(c, k=1))
    sets = np.empty((a.size, size), dtype=np.int32)
    sets[:, : size - 2] = prefix
    sets[:, size - 2] = ext[a]
    sets[:, size - 1] = ext[b]
    return sets, c[a, b].astype(np.int64)


def count_dense(x: Any, level: Level, *, xp: ModuleType) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``level``'s candidates over the 0/1 block ``x`` (rows x items, ``xp`` array).

    ``x`` holds 0 and 1 in ``float32`` and has at most :data:`MAX_DENSE_ROWS` rows. The
    products run on ``x``'s device; only each product's non-zero counts come back to the host.
    """
    if x.shape[0] > MAX_DENSE_ROWS:
        raise ValueError(f"a dense block holds at most {MAX_DENSE_ROWS} rows (float32 counts stay exact)")
    sets, counts = [], []
    for prefix, ext in zip(level.prefixes, level.extensions):
        if len(ext) < 2:
            continue
        cols = to_device(xp, ext.astype(np.int64))
        if len(prefix):
            held = xp.all(x[:, to_device(xp, prefix.astype(np.int64))] > 0, axis=1)
            sub = x[held][:, cols]
        else:
            sub = x[:, cols]
        if sub.shape[0] == 0:
            continue
        c = asnumpy(xp.rint(sub.T @ sub)).astype(np.int64)
        s, n = _upper(c, prefix, ext, level.size)
        sets.append(s)
        counts.append(n)
    if not sets:
        return empty_counts(level.size)
    return np.concatenate(sets), np.concatenate(counts)


def count_sparse(x: Any, level: Level) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`count_dense` for a SciPy CSR 0/1 block (CPU): cost by the items customers hold."""
    csr = sp.csr_matrix(x, dtype=np.int64)
    csc = None   # built on the first prefix (level 2 has none)
    sets, counts = [], []
    for prefix, ext in zip(level.prefixes, level.extensions):
        if len(ext) < 2:
            continue
        if len(prefix):
            if csc is None:
                csc = csr.tocsc()
                csc.sort_indices()
            rows = csc.indices[csc.indptr[prefix[0]]:csc.indptr[prefix[0] + 1]]
            for item in prefix[1:]:
                rows = np.intersect1d(rows, csc.indices[csc.indptr[item]:csc.indptr[item + 1]], assume_unique=True)
            if rows.size == 0:
                continue
            sub = csr[rows][:, ext]
        elif len(ext) == csr.shape[1] and np.array_equal(ext, np.arange(csr.shape[1])):
            sub = csr   # level 2 over every item: no column selection to copy
        else:
            sub = csr[:, ext]
        c = (sub.T @ sub).tocoo()
        keep = c.row < c.col
        a, b, n = c.row[keep], c.col[keep], c.data[keep]
        nz = n > 0
        a, b, n = a[nz], b[nz], n[nz]
        s = np.empty((a.size, level.size), dtype=np.int32)
        s[:, : level.size - 2] = prefix
        s[:, level.size - 2] = ext[a]
        s[:, level.size - 1] = ext[b]
        sets.append(s)
        counts.append(n.astype(np.int64))
    if not sets:
        return empty_counts(level.size)
    return np.concatenate(sets), np.concatenate(counts)


def dense_is_cheaper(rows: int, items: int, held: int, xp: ModuleType) -> bool:
    """Whether a block is counted densely: always with CuPy; on the CPU when a dense product
    (rows x items², BLAS at ~10 multiply-adds a nanosecond) costs less than the sparse one
    (about the sum over customers of their items², at ~0.1 a nanosecond, estimated from the
    mean), or when there are few items."""
    if not is_numpy(xp):
        return True
    if items <= 64:
        return True
    per_row = held / max(rows, 1)
    return rows * items * items / 10.0 < rows * per_row * per_row * 10.0
