"""Exact duplicate-id counting over a whole run, in bounded memory.

Each scoring task writes the ids it scored, split into ``B`` hash buckets, as a small
Arrow file in staging (``_ids/``). After every task, one reduce task per bucket sorts
its ids and counts repeats. ``B`` grows with the run's rows, so
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

from engine.io.guard import output_errors
from engine.io.matrix import chunk_values, to_arrow
from engine.io.store import open_parquet

IDS_DIR = "_ids"
IDS_PER_BUCKET = 1_000_000
_GOLDEN = np.uint64(11400714819323198485)  # 2**64 / phi: Fibonacci hashing of integer ids


def bucket_count(total_rows: int) -> int:
    return max(1, -(-total_rows // IDS_PER_BUCKET))


def bucket_file(ids_dir: str | os.PathLike[str], run_key: str, batch: int, buckets: int) -> Path:
    """One batch of one part's ids, one Arrow record batch per bucket; the run key ties it to the part."""
    return Path(ids_dir) / f"{run_key}-{batch:06d}-of{buckets:04d}.arrow"


def bucket_files(ids_dir: str | os.PathLike[str], buckets: int) -> dict[str, list[Path]]:
    """Every part's id files, by run key (a streamed part writes one per batch).

    One directory listing for all parts, rather than a glob per part over a directory
    that holds a file per part and batch.
    """
    suffix = f"-of{buckets:04d}.arrow"
    found: dict[str, list[Path]] = {}
    try:
        names = sorted(os.listdir(ids_dir)) if ids_dir else []
    except FileNotFoundError:
        return found
    for name in names:
        if name.endswith(suffix) and not name.startswith("."):
            run_key = name[: -len(suffix)].rsplit("-", 1)[0]
            found.setdefault(run_key, []).append(Path(ids_dir) / name)
    return found


def id_buckets(ids: pa.Array, buckets: int) -> np.ndarray:
    """The bucket of every id: the same on every worker for the same value (no salted hash)."""
    if buckets == 1:
        return np.zeros(len(ids), dtype=np.int64)
    if pa.types.is_integer(ids.type):
        h = chunk_values(ids.cast(pa.int64())).astype(np.uint64) * _GOLDEN
        return ((h >> np.uint64(33)) % np.uint64(buckets)).astype(np.int64)
    import pandas as pd

    values = np.asarray(ids.to_pylist(), dtype=object)
    return (pd.util.hash_array(values) % np.uint64(buckets)).astype(np.int64)


def write_id_buckets(ids: pa.ChunkedArray, ids_dir: str, run_key: str, batch: int, buckets: int) -> None:
    """Write one batch of a part's non-null ids as one Arrow IPC file whose record batch ``b``
    holds bucket ``b`` (temp name, then rename): one small file per batch, not one per bucket,
    and each reduce task maps in only its own record batch. One stable sort on the bucket
    number groups the ids; the reduce sorts each bucket's ids itself."""
    arr = ids.drop_null().combine_chunks()
    if buckets == 1:
        pieces = [arr]
    else:
        owner = id_buckets(arr, buckets)
        # A stable sort of small integers is a radix sort in NumPy: linear time.
        order = np.argsort(owner.astype(np.int16 if buckets < 2**15 else np.int32), kind="stable")
        counts = np.bincount(owner, minlength=buckets)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        grouped = arr.take(to_arrow(order))
        pieces = [grouped.slice(int(start), int(count)) for start, count in zip(starts, counts)]
    target = bucket_file(ids_dir, run_key, batch, buckets)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    schema = pa.schema([pa.field("id", arr.type)])
    # In staging, on the output side: a full disk here is an OutputError like any part's.
    with output_errors(target, "write duplicate-id buckets"):
        try:
            Path(ids_dir).mkdir(parents=True, exist_ok=True)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for piece in pieces:
                    writer.write_batch(pa.record_batch([piece], schema=schema))
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def count_bucket(sources: Sequence[tuple[str, str, str]], id_column: str, bucket: int, buckets: int
                 ) -> tuple[int, int]:
    """(rows repeating an id seen before, ids seen more than once) within one bucket.

    ``sources`` are ``(ids_dir, run_key, part)`` of every part; a part reused from an
    interrupted run whose bucket files are gone has its ids read back from the part.
    """
    runs = []
    listings: dict[str, dict[str, list[Path]]] = {}
    for ids_dir, run_key, part in sources:
        if ids_dir not in listings:
            listings[ids_dir] = bucket_files(ids_dir, buckets)
        files = listings[ids_dir].get(run_key, [])
        for ids_file in files:
            with pa.memory_map(str(ids_file)) as source:
                runs.append(pa.ipc.open_file(source).get_batch(bucket).column(0))
        if not files:
            ids = open_parquet(part).read(columns=[id_column]).column(0).drop_null().combine_chunks()
            owner = id_buckets(ids, buckets)
            runs.append(ids if buckets == 1 else ids.filter(to_arrow(owner == bucket)))
    if not runs:
        return 0, 0
    merged = pa.concat_arrays([r.cast(runs[0].type) for r in runs])
    if pa.types.is_integer(merged.type) or pa.types.is_floating(merged.type):
        values = np.sort(chunk_values(merged))  # ids are never null here: a zero-copy view, sorted
        if values.size < 2:
            return 0, 0
        same = values[1:] == values[:-1]
        starts = same & ~np.concatenate([[False], same[:-1]])
        return int(same.sum()), int(starts.sum())
    counts = pc.value_counts(merged).field("counts").to_numpy()
    return int((counts - 1).sum()), int((counts > 1).sum())
