"""The partition functions of ``engine rules``: pure, module-level, picklable.

Pass 1 (:data:`ITEMS`) counts, per task, its customers and how many hold each item. Each
later pass counts one level of candidate itemsets (:class:`engine.itemsets.count.Level`) over
the task's customers restricted to the frequent items. Results are host NumPy values that
add across tasks (each customer lies in exactly one task), so the client sums them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from engine.itemsets.count import Level, count_dense, count_sparse, dense_is_cheaper
from engine.itemsets.mine import add_counts
from engine.itemsets.read import (
    WIDE,
    RulesTask,
    basket_matrix,
    basket_pairs,
    customer_rows,
    item_codes,
    wide_blocks,
)
from engine.itemsets.spill import (
    PairSource,
    Segment,
    bucket_pairs,
    customer_numbers,
    direct_bucket_pairs,
    item_customers,
    repeated_ids,
)

ITEMS = "items"
IDS = "ids"       # the repeated-id check of a wide table


@dataclass(frozen=True)
class PassJob:
    """One task of one pass: the task, and for a level pass the frequent items and the level."""

    task: RulesTask
    kind: str = ITEMS                 # "items" or "level"
    names: tuple[str, ...] = ()       # frequent items, code order (level passes)
    columns: tuple[int, ...] = ()     # wide: each frequent item's column in task.items
    level: Level | None = None
    backend: str = "cpu"
    block_rows: int = 65_536
    # Baskets partitioned by customer (engine.itemsets.spill): this bucket's spilled slices,
    # and for a level pass each global item code's frequent code (-1: not frequent). With
    # them, ``names`` of the items pass is the global item dictionary.
    segments: tuple[Segment, ...] | None = None
    code_map: np.ndarray | None = None
    # Or, on a remote cluster (no spill): what this bucket reads from every fragment.
    direct: PairSource | None = None

    def pairs(self) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """This bucket's ``(keys, global codes)`` and (direct reads) row tallies."""
        if self.segments is not None:
            keys, codes = bucket_pairs(self.segments)
            return keys, codes, {}
        assert self.direct is not None
        t = self.task
        return direct_bucket_pairs(t.fragments, t.partition_types, self.direct, t.bucket, t.buckets, t.batch_rows)


def run_pass(job: PassJob) -> dict[str, Any]:
    """Pass 1 or a level pass over one task; host values only in the result."""
    if job.kind == IDS:
        keys, _, tally = job.pairs()
        ids, extra = repeated_ids(keys)
        return {"index": job.task.index, "repeated_ids": ids, "extra_rows": extra, **tally}
    if job.kind == ITEMS:
        if job.segments is not None or job.direct is not None:
            return _items_spilled(job)
        return _items_wide(job.task) if job.task.form == WIDE else _items_baskets(job.task)
    assert job.level is not None
    from engine.backends.namespace import get_xp

    xp = get_xp(job.backend)
    parts = []
    for block in _level_blocks(job):
        rows, items = block.shape
        held = int(block.sum()) if isinstance(block, np.ndarray) else int(block.nnz)
        if rows == 0 or held == 0:
            continue
        if dense_is_cheaper(rows, items, held, xp):
            dense = block.astype(np.float32) if isinstance(block, np.ndarray) else block.toarray().astype(np.float32)
            from engine.backends.namespace import to_device

            parts.append(count_dense(to_device(xp, dense), job.level, xp=xp))
        else:
            parts.append(count_sparse(block if sp.issparse(block) else sp.csr_matrix(block), job.level))
    sets, counts = add_counts(parts, job.level.size)
    return {"index": job.task.index, "sets": sets, "counts": counts}


def _level_blocks(job: PassJob) -> Any:
    task = job.task
    if task.form == WIDE and job.segments is None and job.direct is None:
        cols = np.asarray(job.columns, dtype=np.int64)
        for block in wide_blocks(task):
            yield block[:, cols]
        return
    if job.segments is not None or job.direct is not None:
        assert job.code_map is not None
        keys, codes, _ = job.pairs()
        codes = job.code_map[codes]
        keep = codes >= 0
        rows, customers = customer_numbers(keys[keep])
        matrix = basket_matrix(rows, codes[keep], customers, len(job.names))
    else:
        ids, items, _ = basket_pairs(task)
        rows, customers = customer_rows(ids)
        matrix = basket_matrix(rows, item_codes(items, job.names), customers, len(job.names))
    step = max(1, job.block_rows)
    for start in range(0, customers, step):
        yield matrix[start:start + step]


def _items_wide(task: RulesTask) -> dict[str, Any]:
    customers = 0
    counts = np.zeros(len(task.items), dtype=np.int64)
    for block in wide_blocks(task):
        customers += block.shape[0]
        counts += block.sum(axis=0, dtype=np.int64)
    return {"index": task.index, "customers": customers, "names": list(task.items), "counts": counts}


def _items_baskets(task: RulesTask) -> dict[str, Any]:
    ids, items, tally = basket_pairs(task)
    if len(ids) == 0:
        return {"index": task.index, "customers": 0, "names": [], "counts": np.zeros(0, np.int64), **tally}
    pairs = pa.table({"id": ids, "item": items}).group_by(["id", "item"]).aggregate([])
    per_item = pairs.group_by("item").aggregate([("id", "count")])
    customers = len(pc.unique(ids))
    return {"index": task.index, "customers": customers,
            "names": per_item.column("item").to_pylist(),
            "counts": np.asarray(per_item.column("id_count").to_numpy(), dtype=np.int64), **tally}


def _items_spilled(job: PassJob) -> dict[str, Any]:
    """Pass 1 over one bucket of pairs: its customers and each global item's customers."""
    keys, codes, tally = job.pairs()
    customers, counts = item_customers(keys, codes, len(job.names))
    return {"index": job.task.index, "customers": customers, "names": job.names, "counts": counts, **tally}
