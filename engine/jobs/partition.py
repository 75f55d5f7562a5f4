"""The per-partition scoring task that runs on a Dask worker (or a thread of the embedded runner).

A pure, module-level function of a picklable :class:`PartitionTask`: stream only the
needed columns of one fragment in batches of ``batch_rows`` rows, score each batch
through this process's device stage (:mod:`engine.backends.stage`), write it as one
row group of the part (and its rejected rows) to staging, and return a small JSON-able
summary (counts, drift histograms, timings). One pipeline for both backends: the host
decodes and encodes, the stage only computes. A task holds one decoded batch at a time,
so memory is bounded by threads x ``batch_rows`` whatever the file sizes. Rewriting the
same part on a retry is harmless: every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.backends.stage import Stage, get_stage, stage_settings
from engine.errors import BadRowsError, InputError
from engine.io.commit import RUN_KEY_METADATA, TEST_PAUSE_AFTER_PART, pause_for_tests
from engine.io.dataset import Fragment, iter_fragment
from engine.io.guard import output_errors
from engine.io.id_ranges import IdRange
from engine.io.ids import write_id_buckets
from engine.io.matrix import to_arrow
from engine.io.store import file_digest, put_bytes, remove, upload_file
from engine.jobs import badrows
from engine.jobs.blocks import BlockScores, score_table
from engine.jobs.drift_sample import DriftCounter, drift_stride
from engine.jobs.summary import ScoreTally
from engine.models.artifact import ScoringModel
from engine.models.reasons import (
    output_reason_columns,
    prepare_kernel,
    reason_columns,
    reason_output,
)

BAD_ROW_POLICIES = ("impute", "reject", "fail")
OUTPUT_SCHEMA_TAIL = (
    ("segment", pa.int32()),
    ("segment_distance", pa.float32()),
    ("propensity", pa.float32()),
)


@dataclass(frozen=True)
class PartitionTask:
    """Everything one worker needs to score one fragment; small and picklable."""

    fragment: Fragment
    model: ScoringModel
    backend: str
    part_path: str
    rejected_path: str
    sidecar_path: str
    id_column: str
    keep: tuple[str, ...] = ()
    partition_types: dict[str, pa.DataType] = field(default_factory=dict)
    on_bad_rows: str = "reject"
    compression: str = "snappy"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    run_key: str = ""
    block_rows: int = 16_384     # rows per lease of the device stage (the backend's block size)
    batch_rows: int = 131_072    # rows decoded, scored and written at a time (one output row group)
    gpu_tasks: int = 2           # concurrent device work per GPU (the GPU stage's cap)
    gpu_slots: int = 0           # the GPU stage's staging slots (0: one per core of the process)
    ids_dir: str = ""            # where the scored ids go for the duplicate check ("" = skip)
    id_buckets: int = 1
    reasons: int = 0             # reason_1..reason_N columns (engine/models/reasons.py); 0 = none
    reason_contributions: bool = False   # reason_i_contribution columns beside them
    thresholds: tuple[float, ...] | None = None  # the run's action thresholds: tally the scores (None: no)


def write_options(compression: str, dictionary_columns: list[str]) -> dict[str, Any]:
    """Parquet writer settings of a part (the benchmark's I/O floor uses the same).

    Dictionary encoding only where it pays (the segment, pass-through columns): on ids
    and float scores pyarrow would build a dictionary and abandon it, which costs more
    than the rest of the write.
    """
    return {"compression": compression, "use_dictionary": dictionary_columns}


def task_stage(task: PartitionTask) -> Stage:
    """This process's device stage for the task's model and backend (built once per process)."""
    return get_stage(task.model, task.backend,
                     stage_settings(task.backend, task.block_rows, task.gpu_tasks, task.gpu_slots))


def _score_blocks(task: PartitionTask, table: pa.Table, ids: pa.ChunkedArray, row_base: int = 0,
                  drift: DriftCounter | None = None, stage: Stage | None = None) -> BlockScores:
    """Score one batch of the task's fragment through :func:`engine.jobs.blocks.score_table`.

    ``table`` holds the fragment's rows from ``row_base`` on; ``drift`` accumulates across
    the batches of one fragment (None: a sampler of this batch alone, returned in ``drift``).
    """
    own = drift is None
    counter = DriftCounter(task.model, drift_stride(table.num_rows)) if drift is None else drift
    scores = score_table(task.model, table, stage or task_stage(task), reasons=task.reasons, ids=ids,
                         flag_bad=task.on_bad_rows != "impute", id_column=task.id_column, drift=counter,
                         row_base=row_base, thresholds=task.thresholds)
    if not own:
        scores.drift = {}
    return scores


def score_partition(task: PartitionTask) -> dict[str, Any]:
    """Score one fragment and commit its part to staging; returns the part's summary."""
    return _score_partition(task)


class _PartWriter:
    """A Parquet file written one table (one row group) at a time under a temporary name.

    :meth:`commit` renames it into place, so a reader (or a retried task) never sees half a
    part. A part for an object store (a URI) is written to a private local temporary file
    and uploaded at commit (multipart above 8 MiB): the object appears complete or not at
    all, and no disk is shared with anyone. The run key inside the file lets ``--resume`` tell this part from one that an
    earlier run with other inputs, model or options left under the same name.
    """

    def __init__(self, path: str, compression: str, run_key: str, dictionary_columns: list[str],
                 no_statistics: tuple[str, ...] = ()) -> None:
        self.uri = path if "://" in path else None
        self.path = Path(path) if self.uri is None else Path(path.rsplit("/", 1)[-1])
        if self.uri is None:
            self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        else:
            import tempfile

            self.tmp = Path(tempfile.gettempdir()) / f".engine-{os.getpid()}-{uuid.uuid4().hex}.parquet.tmp"
        self.digest: tuple[int, str] | None = None   # (bytes, sha256) of the committed file
        self.options = write_options(compression, dictionary_columns)
        # Columns whose row-group min/max would prune nothing (reason codes: every group
        # spans the feature names) and cost as much as encoding them.
        self.no_statistics = no_statistics
        self.metadata = {RUN_KEY_METADATA: run_key.encode()}
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        # The run key replaces the input's schema metadata, which need not describe the output.
        table = table.replace_schema_metadata(self.metadata)
        with output_errors(self.uri or self.path, "write the part"):
            if self.writer is None:
                options = self.options
                if self.no_statistics:
                    options = {**options, "write_statistics": [n for n in table.schema.names
                                                               if n not in self.no_statistics]}
                self.writer = pq.ParquetWriter(self.tmp, table.schema, **options)
            self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> int:
        if self.writer is not None:
            with output_errors(self.uri or self.path, "write the part"):
                self.writer.close()
                self.writer = None
                # Size and checksum for the manifest, read back while the file is in the page cache.
                self.digest = file_digest(str(self.tmp))
                if self.uri is None:
                    os.replace(self.tmp, self.path)
            if self.uri is not None:
                try:
                    upload_file(self.uri, str(self.tmp))
                finally:
                    self.tmp.unlink(missing_ok=True)
        return self.rows

    def abort(self) -> None:
        if self.writer is not None:
            # A full disk fails the close too; the original error is the one to report.
            with contextlib.suppress(OSError):
                self.writer.close()
            self.writer = None
        self.tmp.unlink(missing_ok=True)


def _output_table(task: PartitionTask, table: pa.Table, scores: BlockScores) -> pa.Table:
    """The id, the three scores and the kept columns of the rows that were not rejected."""
    keep_mask = to_arrow(~scores.bad) if scores.bad is not None else None
    seg, dist, prop = scores.segment, scores.distance, scores.propensity
    if scores.bad is not None:
        seg, dist, prop = seg[~scores.bad], dist[~scores.bad], prop[~scores.bad]
    out = table.select([task.id_column])
    if keep_mask is not None:
        out = out.filter(keep_mask)
    for (name, dtype), values in zip(OUTPUT_SCHEMA_TAIL, (seg, dist, prop)):
        out = out.append_column(pa.field(name, dtype), to_arrow(values, dtype))
    if scores.reasons is not None:
        codes, values = scores.reasons, scores.reason_values
        if scores.bad is not None:
            codes = codes[~scores.bad]
            values = values[~scores.bad] if values is not None else None
        for name, col in reason_output(codes, values, task.model, contributions=task.reason_contributions):
            out = out.append_column(name, col)
    for name in task.keep:
        if name != task.id_column:
            col = table.column(name)
            out = out.append_column(name, col.filter(keep_mask) if keep_mask is not None else col)
    return out


def _rejected_table(task: PartitionTask, ids: pa.ChunkedArray, scores: BlockScores, row_base: int) -> pa.Table:
    """Rejected rows: the id, where the row is, the column and the reason; never the values."""
    assert scores.bad is not None
    rows = np.flatnonzero(scores.bad)
    fragment = task.fragment
    return pa.table({
        task.id_column: ids.take(to_arrow(rows)),
        "_file": pa.array([fragment.path] * rows.size),
        "_row": to_arrow(rows + fragment.row_offset + row_base, pa.int64()),
        "_column": pa.array(scores.bad_columns),
        "_reason": pa.array(scores.bad_reasons),
    })


def _bad_rows(task: PartitionTask, scores: BlockScores, row_base: int, by_column: dict[str, dict[str, int]],
              first: list[dict[str, Any]], rejected: _PartWriter, ids: pa.ChunkedArray) -> None:
    """Count a batch's bad rows per column and keep their ids in the part's rejected file.

    With ``--on-bad-rows fail`` the rejected file is committed (the user can look at
    the ids, under staging) and the task fails with the counts and the first rows.
    """
    assert scores.bad is not None
    rows = np.flatnonzero(scores.bad) + task.fragment.row_offset + row_base
    badrows.tally(by_column, first, task.fragment.path, rows, scores.bad_columns, scores.bad_reasons)
    rejected.write(_rejected_table(task, ids, scores, row_base))
    if task.on_bad_rows == "fail":
        rejected.commit()
        raise BadRowsError(
            f"{task.fragment.describe()} has rows that cannot be scored and --on-bad-rows is fail: "
            f"{badrows.describe(by_column, first)}. Their ids are in {task.rejected_path}. Fix the input, "
            "or rerun with --on-bad-rows reject to set such rows aside (up to --max-rejected-fraction of "
            "the rows) or --on-bad-rows impute to score infinite values as missing ones; nothing was published"
        )


def _score_partition(task: PartitionTask) -> dict[str, Any]:
    model, fragment = task.model, task.fragment
    features = list(model.features)
    read_cols = list(dict.fromkeys([task.id_column, *model.columns, *task.keep]))
    # stage: waiting for this process's device stage (only a process's first tasks wait).
    seconds = {"read": 0.0, "compute": 0.0, "write": 0.0, "stage": 0.0}
    # The same steps in this thread's CPU time: wall seconds also count waiting for a core
    # or the GIL, CPU seconds only the work, so the two together tell contention from work.
    cpu_seconds = {"read": 0.0, "compute": 0.0, "write": 0.0}
    part = _PartWriter(task.part_path, task.compression, task.run_key,
                       ["segment", *reason_columns(task.reasons), *(c for c in task.keep if c != task.id_column)],
                       no_statistics=tuple(output_reason_columns(task.reasons, task.reason_contributions)))
    rejected = _PartWriter(task.rejected_path, task.compression, task.run_key, ["_file", "_column", "_reason"])
    drift = DriftCounter(model, drift_stride(fragment.num_rows))
    nulls = np.zeros(len(features), dtype=np.int64)
    counts = {"infinite_values": 0, "null_ids": 0}
    level_counts: dict[str, list[int]] = {}
    bad_by_column: dict[str, dict[str, int]] = {}
    first_bad: list[dict[str, Any]] = []
    rows_in = 0
    stage: Stage | None = None
    tally: ScoreTally | None = None
    id_range = IdRange()
    id_buckets = False
    if task.reasons:
        prepare_kernel()  # loads while the first batch is read
    try:
        # Categorical columns arrive dictionary-encoded (the Parquet dictionary, mapped to the model's
        # levels once per chunk), unless the output passes them through (their type stays as stored).
        dictionary = [c.name for c in model.categoricals if c.name not in task.keep and c.name != task.id_column]
        tables = iter_fragment(fragment, read_cols, task.partition_types, batch_rows=task.batch_rows,
                               dictionary=dictionary)
        for batch in itertools.count():
            t0, c0 = time.perf_counter(), time.thread_time()
            table = next(tables, None)
            t1, c1 = time.perf_counter(), time.thread_time()
            seconds["read"] += t1 - t0
            cpu_seconds["read"] += c1 - c0
            if table is None:
                break
            if stage is None:
                # Asked for after the first batch is decoded, so that a process's first tasks
                # read while its stage is built (kernel load, device buffers; once per process).
                # The wait is the process's set-up, not this task's compute: timed apart.
                stage = task_stage(task)
                t_ready = time.perf_counter()
                seconds["stage"] = t_ready - t1
                t1, c1 = t_ready, time.thread_time()
            ids = table.column(task.id_column)
            scores = _score_blocks(task, table, ids, rows_in, drift, stage)
            nulls += scores.nulls
            for name, counted in scores.level_counts.items():
                level_counts[name] = [a + b for a, b in zip(level_counts.get(name, [0] * len(counted)), counted)]
            if scores.tally is not None:
                if tally is None:
                    tally = scores.tally
                else:
                    tally.merge(scores.tally)
            for key, value in scores.counts.items():
                counts[key] = counts.get(key, 0) + value
            out_table = _output_table(task, table, scores)
            t2, c2 = time.perf_counter(), time.thread_time()
            seconds["compute"] += t2 - t1
            cpu_seconds["compute"] += c2 - c1
            if scores.bad is not None:
                _bad_rows(task, scores, rows_in, bad_by_column, first_bad, rejected, ids)
            part.write(out_table)
            # Ids in order: their range and repeats go back with the summary (no file). Otherwise
            # hash buckets from the first batch on; a part that leaves order later is read back.
            if not id_range.add(out_table.column(task.id_column)) and task.ids_dir \
                    and (batch == 0 or id_buckets):
                id_buckets = True
                write_id_buckets(out_table.column(task.id_column), task.ids_dir, task.run_key, batch,
                                 task.id_buckets)
            rows_in += table.num_rows
            seconds["write"] += time.perf_counter() - t2
            cpu_seconds["write"] += time.thread_time() - c2
        if rows_in != fragment.num_rows:
            raise InputError(f"{fragment.describe()}: read {rows_in} rows, its footer says {fragment.num_rows}; "
                             "the file changed during the run: rerun")
        t0, c0 = time.perf_counter(), time.thread_time()
        rows_out = part.commit()
        rows_rejected = rejected.commit()
        if not rows_rejected:
            # Rejected rows that an earlier run left for this part are not this run's.
            remove(task.rejected_path)
        seconds["write"] += time.perf_counter() - t0
        cpu_seconds["write"] += time.thread_time() - c0
    except BaseException:
        part.abort()
        rejected.abort()
        raise
    summary = {
        "index": fragment.index,
        "part": task.part_path.rsplit("/", 1)[-1],
        "fragment": fragment.describe(),
        "file": fragment.path,
        "row_groups": list(fragment.row_groups) if fragment.row_groups is not None else None,
        "row_offset": fragment.row_offset,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_rejected,
        "nulls_imputed": {f: int(n) for f, n in zip(features, nulls) if n},
        # Rows per level of each categorical column (kept levels, other, missing): summed over
        # parts by the client, which shows only totals and shares (never a part's counts).
        "level_counts": level_counts,
        **counts,
        "bad_rows_by_column": bad_by_column,
        "first_bad_rows": first_bad,
        "drift_counts": drift.result(),
        "id_range": id_range.to_json(),
        # Exact score summaries of the rows written (the client adds them: nothing read back).
        "scores": (tally or ScoreTally.empty(model.k, task.thresholds)).to_json()
        if task.thresholds is not None else None,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "fingerprint": task.fingerprint,
        "run_key": task.run_key,
    }
    if part.digest is not None:
        summary["bytes"], summary["sha256"] = part.digest
    if rejected.digest is not None and rows_rejected:
        summary["rejected_bytes"], summary["rejected_sha256"] = rejected.digest
    put_bytes(task.sidecar_path, json.dumps(summary).encode())
    pause_for_tests(TEST_PAUSE_AFTER_PART)
    return summary
