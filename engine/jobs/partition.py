"""The per-partition scoring task that runs on a Dask worker.

A pure, module-level function of a picklable :class:`PartitionTask`: read only the
needed columns of one fragment, score on the task's backend, write the part file and
its rejected rows to staging, and return a small JSON-able summary (counts, drift
histograms, timings). Rewriting the same part on a retry is harmless: every file is
written to a temporary name and renamed.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.backends.namespace import asnumpy, get_xp, is_numpy, to_device
from engine.errors import BadRowsError, InputError
from engine.io.commit import RUN_KEY_METADATA, TEST_PAUSE_AFTER_PART, pause_for_tests, write_atomic
from engine.io.dataset import Fragment, iter_fragment
from engine.io.device import device_blocks
from engine.io.guard import output_errors
from engine.io.ids import write_id_buckets
from engine.io.matrix import BlockReader
from engine.jobs import badrows
from engine.models.artifact import ScoringModel
from engine.models.profile import bin_counts
from engine.models.scorer import fold, score_matrix

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
    block_rows: int = 32_768
    ids_dir: str = ""            # where the scored ids go for the duplicate check ("" = skip)
    id_buckets: int = 1


def write_options(compression: str, dictionary_columns: list[str]) -> dict[str, Any]:
    """Parquet writer settings of a part (the benchmark's I/O floor uses the same).

    Dictionary encoding only where it pays (the segment, pass-through columns): on ids
    and float scores pyarrow would build a dictionary and abandon it, which costs more
    than the rest of the write.
    """
    return {"compression": compression, "use_dictionary": dictionary_columns}


@dataclass
class BlockScores:
    """Scores of every row of a fragment (host arrays) and what was found on the way."""

    segment: np.ndarray
    distance: np.ndarray
    propensity: np.ndarray
    bad: np.ndarray | None
    bad_columns: list[str]
    bad_reasons: list[str]
    nulls: np.ndarray
    counts: dict[str, int]
    drift: dict[str, Any]


DRIFT_SAMPLE_ROWS = 16_384


def drift_stride(n: int) -> int:
    """Drift histograms use every ``stride``-th row of a fragment (a systematic sample).

    Binning every feature of every row would cost as much as the scoring itself. About
    16k rows per fragment (all rows of smaller ones) keeps the sampling noise of a
    decile PSI near 1e-3 per fragment and far lower over a whole run, well under the
    0.10 warning level.
    """
    return max(1, n // DRIFT_SAMPLE_ROWS)


def _may_be_missing(col: pa.ChunkedArray) -> bool:
    """Whether a feature column can hold a missing or infinite value: nulls, or floats."""
    return col.null_count > 0 or pa.types.is_floating(col.type)


def _score_blocks(task: PartitionTask, table: pa.Table, ids: pa.ChunkedArray, row_base: int = 0,
                  drift: DriftCounter | None = None) -> BlockScores:
    """Score ``table`` block by block on the task's backend; ±inf and null ids per policy.

    ``table`` holds the fragment's rows from ``row_base`` on (a batch of a streamed
    fragment); ``drift`` accumulates across the batches of one fragment.
    """
    model = task.model
    features = model.features
    xp = get_xp(task.backend)
    n = table.num_rows
    own_drift = drift is None
    if drift is None:
        drift = DriftCounter(model, xp, drift_stride(n))
    null_ids = np.asarray(pc.is_null(ids).to_numpy(zero_copy_only=False), dtype=bool) \
        if ids.null_count else None
    # Only float columns and columns with nulls can hold NaN or ±inf: put them first,
    # so the checks and the imputation run over that leading slice of each block alone.
    checked = [j for j, f in enumerate(features) if _may_be_missing(table.column(f))]
    order = checked + [j for j in range(len(features)) if j not in set(checked)]
    m = len(checked)
    folded = fold(model, xp=xp, order=order)
    reader = BlockReader(table, [features[j] for j in order], task.block_rows)
    # Results stay on the device until the end: no per-block synchronisation, so on a
    # GPU the next block's copy overlaps this block's kernels (engine/io/device.py).
    seg_d = xp.empty(n, dtype=xp.int32)
    dist_d = xp.empty(n, dtype=xp.float32)
    prop_d = xp.empty(n, dtype=xp.float32)
    inf_rows_d = xp.zeros(n, dtype=bool)
    inf_col_d = xp.zeros(n, dtype=xp.int32)
    nulls = xp.zeros(m, dtype=xp.int64)
    inf_total = xp.zeros((), dtype=xp.int64)
    host = is_numpy(xp)
    for start, stop, X in device_blocks(reader, xp):
        Xc = X[:, :m]
        missing = None
        if m:
            inf = xp.isinf(Xc)
            if not host or bool(inf.any()):
                inf_rows_d[start:stop] = inf.any(axis=1)
                inf_col_d[start:stop] = xp.asarray(order, dtype=xp.int32)[xp.argmax(inf, axis=1)]
                inf_total += inf.sum()
                xp.copyto(Xc, xp.nan, where=inf)
            missing = xp.isnan(Xc)
            nulls += missing.sum(axis=0)
        drift.add_rows(row_base + start, X, order)
        if folded.shared_fill:
            if m:
                xp.copyto(Xc, folded.fill_s[:m], where=missing)
            seg, dist, prop = score_matrix(X, folded, xp=xp, imputed=True)
        else:
            full = xp.zeros(X.shape, dtype=bool)
            if m:
                full[:, :m] = missing
            seg, dist, prop = score_matrix(X, folded, xp=xp, missing=full)
        drift.add_scores(row_base + start, seg, prop)
        seg_d[start:stop] = seg
        dist_d[start:stop] = dist
        prop_d[start:stop] = prop
    segment, distance, propensity = asnumpy(seg_d), asnumpy(dist_d), asnumpy(prop_d)
    infinite_values = int(inf_total)
    inf_rows = asnumpy(inf_rows_d) if infinite_values else None
    inf_first_col = asnumpy(inf_col_d) if infinite_values else None
    counts = {"infinite_values": infinite_values, "null_ids": int(null_ids.sum()) if null_ids is not None else 0}
    bad = None
    columns: list[str] = []
    reasons: list[str] = []
    if task.on_bad_rows != "impute" and (inf_rows is not None or null_ids is not None):
        bad = np.zeros(n, dtype=bool)
        if inf_rows is not None:
            bad |= inf_rows
        if null_ids is not None:
            bad |= null_ids
        for r in np.flatnonzero(bad):
            if null_ids is not None and null_ids[r]:
                columns.append(task.id_column)
                reasons.append("null id")
            else:
                columns.append(features[int(inf_first_col[r])])
                reasons.append("infinite value")
        if not bad.any():
            bad = None
    nulls_by_feature = np.zeros(len(features), dtype=np.int64)
    nulls_by_feature[checked] = asnumpy(nulls)
    return BlockScores(segment, distance, propensity, bad, columns, reasons,
                       nulls_by_feature, counts, drift.result() if own_drift else {})


def score_partition(task: PartitionTask) -> dict[str, Any]:
    """Score one fragment and commit its part to staging; returns the part's summary."""
    return _score_partition(task)


class _PartWriter:
    """A Parquet file written one table (one row group) at a time under a temporary name.

    :meth:`commit` renames it into place, so a reader (or a retried task) never sees half a
    part. The run key inside the file lets ``--resume`` tell this part from one that an
    earlier run with other inputs, model or options left under the same name.
    """

    def __init__(self, path: str, compression: str, run_key: str, dictionary_columns: list[str]) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self.options = write_options(compression, dictionary_columns)
        self.metadata = {RUN_KEY_METADATA: run_key.encode()}
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        # The run key replaces the input's schema metadata, which need not describe the output.
        table = table.replace_schema_metadata(self.metadata)
        with output_errors(self.path, "write the part"):
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.tmp, table.schema, **self.options)
            self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> int:
        if self.writer is not None:
            with output_errors(self.path, "write the part"):
                self.writer.close()
                self.writer = None
                os.replace(self.tmp, self.path)
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
    keep_mask = pa.array(~scores.bad) if scores.bad is not None else None
    seg, dist, prop = scores.segment, scores.distance, scores.propensity
    if scores.bad is not None:
        seg, dist, prop = seg[~scores.bad], dist[~scores.bad], prop[~scores.bad]
    out = table.select([task.id_column])
    if keep_mask is not None:
        out = out.filter(keep_mask)
    for (name, dtype), values in zip(OUTPUT_SCHEMA_TAIL, (seg, dist, prop)):
        out = out.append_column(pa.field(name, dtype), pa.array(values, type=dtype))
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
        task.id_column: ids.take(pa.array(rows)),
        "_file": pa.array([fragment.path] * rows.size),
        "_row": pa.array(rows + fragment.row_offset + row_base, type=pa.int64()),
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
    read_cols = list(dict.fromkeys([task.id_column, *features, *task.keep]))
    seconds = {"read": 0.0, "compute": 0.0, "write": 0.0}
    part = _PartWriter(task.part_path, task.compression, task.run_key,
                       ["segment", *(c for c in task.keep if c != task.id_column)])
    rejected = _PartWriter(task.rejected_path, task.compression, task.run_key, ["_file", "_column", "_reason"])
    drift = DriftCounter(model, get_xp(task.backend), drift_stride(fragment.num_rows))
    nulls = np.zeros(len(features), dtype=np.int64)
    counts = {"infinite_values": 0, "null_ids": 0}
    bad_by_column: dict[str, dict[str, int]] = {}
    first_bad: list[dict[str, Any]] = []
    rows_in = 0
    try:
        tables = iter_fragment(fragment, read_cols, task.partition_types)
        for batch in itertools.count():
            t0 = time.perf_counter()
            table = next(tables, None)
            t1 = time.perf_counter()
            seconds["read"] += t1 - t0
            if table is None:
                break
            ids = table.column(task.id_column)
            scores = _score_blocks(task, table, ids, rows_in, drift)
            nulls += scores.nulls
            for key, value in scores.counts.items():
                counts[key] = counts.get(key, 0) + value
            out_table = _output_table(task, table, scores)
            t2 = time.perf_counter()
            seconds["compute"] += t2 - t1
            if scores.bad is not None:
                _bad_rows(task, scores, rows_in, bad_by_column, first_bad, rejected, ids)
            part.write(out_table)
            if task.ids_dir:
                write_id_buckets(out_table.column(task.id_column), task.ids_dir, task.run_key, batch,
                                 task.id_buckets)
            rows_in += table.num_rows
            seconds["write"] += time.perf_counter() - t2
        if rows_in != fragment.num_rows:
            raise InputError(f"{fragment.describe()}: read {rows_in} rows, its footer says {fragment.num_rows}; "
                             "the file changed during the run: rerun")
        t0 = time.perf_counter()
        rows_out = part.commit()
        rows_rejected = rejected.commit()
        if not rows_rejected:
            # Rejected rows that an earlier run left for this part are not this run's.
            Path(task.rejected_path).unlink(missing_ok=True)
        seconds["write"] += time.perf_counter() - t0
    except BaseException:
        part.abort()
        rejected.abort()
        raise
    summary = {
        "index": fragment.index,
        "part": Path(task.part_path).name,
        "fragment": fragment.describe(),
        "file": fragment.path,
        "row_groups": list(fragment.row_groups) if fragment.row_groups is not None else None,
        "row_offset": fragment.row_offset,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_rejected,
        "nulls_imputed": {f: int(n) for f, n in zip(features, nulls) if n},
        **counts,
        "bad_rows_by_column": bad_by_column,
        "first_bad_rows": first_bad,
        "drift_counts": drift.result(),
        "seconds": seconds,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "fingerprint": task.fingerprint,
        "run_key": task.run_key,
    }
    write_atomic(Path(task.sidecar_path), json.dumps(summary).encode())
    pause_for_tests(TEST_PAUSE_AFTER_PART)
    return summary


class DriftCounter:
    """Histogram counts of tonight's values in the training profile's reference bins.

    Blocks hand in a systematic sample of their rows (every ``stride``-th row of the
    fragment, counted from the fragment's first row); the counts are taken once per
    fragment over the collected sample.
    """

    def __init__(self, model: ScoringModel, xp: Any, stride: int) -> None:
        self.model, self.xp, self.stride = model, xp, stride
        self.rows: list[Any] = []
        self.segments: list[Any] = []
        self.propensity: list[Any] = []

    def add_rows(self, start: int, X: Any, order: list[int]) -> None:
        """Sample a block's raw rows (NaN for missing values) before they are imputed.

        Column ``c`` of ``X`` holds feature ``order[c]``; the sample is kept in the model's
        feature order, since the order can differ from one batch to the next.
        """
        back = self.xp.asarray(np.argsort(np.asarray(order)))
        self.rows.append(X[(-start) % self.stride::self.stride][:, back])

    def add_scores(self, start: int, segment: Any, propensity: Any) -> None:
        first = (-start) % self.stride
        self.segments.append(segment[first::self.stride])
        self.propensity.append(propensity[first::self.stride])

    def result(self) -> dict[str, Any]:
        xp, model = self.xp, self.model
        profile = model.profile or {}
        feats = profile.get("features", {})
        out: dict[str, Any] = {"sample_stride": self.stride, "features": {}}
        if not self.rows:
            out["segments"] = [0] * model.k
            return out
        sample = xp.asfortranarray(xp.concatenate(self.rows))
        for j, name in enumerate(model.features):
            edges = feats.get(name, {}).get("bin_edges")
            if edges is not None:
                counts = bin_counts(sample[:, j], to_device(xp, np.asarray(edges, dtype=np.float64)), xp=xp)
                out["features"][name] = asnumpy(counts).tolist()
        prop_edges = profile.get("propensity", {}).get("bin_edges")
        if prop_edges is not None:
            prop = xp.concatenate(self.propensity).astype(xp.float64)
            out["propensity"] = asnumpy(bin_counts(prop, to_device(xp, np.asarray(prop_edges)), xp=xp)).tolist()
        out["segments"] = asnumpy(xp.bincount(xp.concatenate(self.segments), minlength=model.k)).tolist()
        return out
