"""Exact duplicate-id counting over a whole run, in bounded memory.

Each scoring task writes the ids it scored, sorted and split into ``B`` hash buckets,
as small Arrow files in staging (``_ids/``). After every task, one reduce task per
bucket merges its sorted runs and counts repeats. ``B`` grows with the run's rows, so
no task ever holds more than about :data:`IDS_PER_BUCKET` ids: memory stays flat
however many customers are scored, and the extra I/O is one write and one read of
the id column, far less than re-reading the parts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

IDS_DIR = "_ids"
IDS_PER_BUCKET = 4_000_000
_GOLDEN = np.uint64(11400714819323198485)  # 2**64 / phi: Fibonacci hashing of integer ids


def bucket_count(total_rows: int) -> int:
    return max(1, -(-total_rows // IDS_PER_BUCKET))


def bucket_file(ids_dir: str | os.PathLike[str], run_key: str, batch: int, bucket: int, buckets: int) -> Path:
    """One batch of one part's ids in one bucket; the run key in the name ties it to that part."""
    return Path(ids_dir) / f"{run_key}-{batch:06d}-b{bucket:04d}of{buckets:04d}.arrow"


def bucket_files(ids_dir: str | os.PathLike[str], run_key: str, bucket: int, buckets: int) -> list[Path]:
    """Every batch file of one part in one bucket (a streamed part writes one per batch)."""
    return sorted(Path(ids_dir).glob(f"{run_key}-*-b{bucket:04d}of{buckets:04d}.arrow"))


def id_buckets(ids: pa.Array, buckets: int) -> np.ndarray:
    """The bucket of every id: the same on every worker for the same value (no salted hash)."""
    if buckets == 1:
        return np.zeros(len(ids), dtype=np.int64)
    if pa.types.is_integer(ids.type):
        h = ids.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.uint64) * _GOLDEN
        return ((h >> np.uint64(33)) % np.uint64(buckets)).astype(np.int64)
    import pandas as pd

    values = np.asarray(ids.to_pylist(), dtype=object)
    return (pd.util.hash_array(values) % np.uint64(buckets)).astype(np.int64)


def _sorted(ids: pa.Array) -> pa.Array:
    if pa.types.is_integer(ids.type) or pa.types.is_floating(ids.type):
        return pa.array(np.sort(ids.to_numpy(zero_copy_only=False)), type=ids.type)
    return ids.take(pc.sort_indices(ids))


def write_id_buckets(ids: pa.ChunkedArray, ids_dir: str, run_key: str, batch: int, buckets: int) -> None:
    """Write one batch of a part's non-null ids, sorted, one Arrow file per bucket (temp name, then rename)."""
    arr = ids.drop_null().combine_chunks()
    owner = id_buckets(arr, buckets)
    Path(ids_dir).mkdir(parents=True, exist_ok=True)
    for b in range(buckets):
        chosen = arr if buckets == 1 else arr.filter(pa.array(owner == b))
        table = pa.table({"id": _sorted(chosen)})
        target = bucket_file(ids_dir, run_key, batch, b, buckets)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, target)


def count_bucket(sources: Sequence[tuple[str, str, str]], id_column: str, bucket: int, buckets: int
                 ) -> tuple[int, int]:
    """(rows repeating an id seen before, ids seen more than once) within one bucket.

    ``sources`` are ``(ids_dir, run_key, part)`` of every part; a part reused from an
    interrupted run whose bucket files are gone has its ids read back from the part.
    """
    runs = []
    for ids_dir, run_key, part in sources:
        files = bucket_files(ids_dir, run_key, bucket, buckets)
        for ids_file in files:
            with pa.memory_map(str(ids_file)) as source:
                runs.append(pa.ipc.open_file(source).read_all().column(0).combine_chunks())
        if not files:
            ids = pq.read_table(part, columns=[id_column]).column(0).drop_null().combine_chunks()
            owner = id_buckets(ids, buckets)
            runs.append(ids if buckets == 1 else ids.filter(pa.array(owner == bucket)))
    if not runs:
        return 0, 0
    merged = pa.concat_arrays([r.cast(runs[0].type) for r in runs])
    if pa.types.is_integer(merged.type) or pa.types.is_floating(merged.type):
        # Concatenated sorted runs: the stable sort (timsort) merges them in near-linear time.
        values = np.sort(merged.to_numpy(zero_copy_only=False), kind="stable")
        if values.size < 2:
            return 0, 0
        same = values[1:] == values[:-1]
        starts = same & ~np.concatenate([[False], same[:-1]])
        return int(same.sum()), int(starts.sum())
    counts = pc.value_counts(merged).field("counts").to_numpy()
    return int((counts - 1).sum()), int((counts > 1).sum())
