"""The per-partition scoring task that runs on a Dask worker.

A pure, module-level function of a picklable :class:`PartitionTask`: read only the
needed columns of one fragment, score on the task's backend, write the part file and
its rejected rows to staging, and return a small JSON-able summary (counts, drift
histograms, timings). Rewriting the same part on a retry is harmless: every file is
written to a temporary name and renamed.
"""

from __future__ import annotations

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
from engine.io.dataset import Fragment, read_fragment
from engine.io.device import device_blocks
from engine.io.ids import write_id_buckets
from engine.io.matrix import BlockReader
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


def _where(fragment: Fragment, row: int) -> str:
    return f"{fragment.path} row {fragment.row_offset + row}"


def write_options(compression: str, dictionary_columns: list[str]) -> dict[str, Any]:
    """Parquet writer settings of a part (the benchmark's I/O floor uses the same).

    Dictionary encoding only where it pays (the segment, pass-through columns): on ids
    and float scores pyarrow would build a dictionary and abandon it, which costs more
    than the rest of the write.
    """
    return {"compression": compression, "use_dictionary": dictionary_columns}


def _write_parquet(table: pa.Table, path: Path, compression: str, run_key: str = "",
                   dictionary_columns: list[str] | None = None) -> None:
    # The run key inside the file itself lets --resume tell this part from one that an
    # earlier run with other inputs, model or options left under the same name. It
    # replaces the input's schema metadata, which need not describe the output.
    table = table.replace_schema_metadata({RUN_KEY_METADATA: run_key.encode()})
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, **write_options(compression, list(dictionary_columns or [])))
    os.replace(tmp, path)


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


def _score_blocks(task: PartitionTask, table: pa.Table, ids: pa.ChunkedArray) -> BlockScores:
    """Score ``table`` block by block on the task's backend; ±inf and null ids per policy."""
    model, fragment = task.model, task.fragment
    features = model.features
    xp = get_xp(task.backend)
    n = table.num_rows
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
    drift = DriftCounter(model, xp, drift_stride(n), order)
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
        drift.add_rows(start, X)
        if folded.shared_fill:
            if m:
                xp.copyto(Xc, folded.fill_s[:m], where=missing)
            seg, dist, prop = score_matrix(X, folded, xp=xp, imputed=True)
        else:
            full = xp.zeros(X.shape, dtype=bool)
            if m:
                full[:, :m] = missing
            seg, dist, prop = score_matrix(X, folded, xp=xp, missing=full)
        drift.add_scores(start, seg, prop)
        seg_d[start:stop] = seg
        dist_d[start:stop] = dist
        prop_d[start:stop] = prop
    segment, distance, propensity = asnumpy(seg_d), asnumpy(dist_d), asnumpy(prop_d)
    infinite_values = int(inf_total)
    inf_rows = asnumpy(inf_rows_d) if infinite_values else None
    inf_first_col = asnumpy(inf_col_d) if infinite_values else None
    if inf_rows is not None and task.on_bad_rows == "fail":
        row = int(np.argmax(inf_rows))
        raise BadRowsError(
            f"{_where(fragment, row)}: column {features[int(inf_first_col[row])]!r} is infinite "
            "(--on-bad-rows fail); fix the input, or use --on-bad-rows reject to set such rows "
            "aside or impute to impute infinite values"
        )
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
        if task.on_bad_rows == "fail" and null_ids is not None and null_ids.any():
            row = int(np.argmax(null_ids))
            raise BadRowsError(
                f"{_where(fragment, row)}: column {task.id_column!r} (the id) is null (--on-bad-rows fail); "
                "fix the input, or use --on-bad-rows reject to set such rows aside"
            )
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
                       nulls_by_feature, counts, drift.result())


def score_partition(task: PartitionTask) -> dict[str, Any]:
    """Score one fragment and commit its part to staging; returns the part's summary."""
    return _score_partition(task)


def _score_partition(task: PartitionTask) -> dict[str, Any]:
    t_start = time.perf_counter()
    model, fragment = task.model, task.fragment
    features = list(model.features)
    read_cols = list(dict.fromkeys([task.id_column, *features, *task.keep]))
    table = read_fragment(fragment, read_cols, task.partition_types)
    rows_in = table.num_rows
    if rows_in != fragment.num_rows:
        raise InputError(f"{fragment.describe()}: read {rows_in} rows, its footer says {fragment.num_rows}; "
                         "the file changed during the run: rerun")
    t_read = time.perf_counter()
    ids = table.column(task.id_column)
    scores = _score_blocks(task, table, ids)
    bad = scores.bad
    keep_mask = ~bad if bad is not None else None
    seg_h, dist_h, prop_h = scores.segment, scores.distance, scores.propensity
    if keep_mask is not None:
        seg_h, dist_h, prop_h = seg_h[keep_mask], dist_h[keep_mask], prop_h[keep_mask]
    bad_cols, bad_reasons = scores.bad_columns, scores.bad_reasons
    nulls, counts, drift = scores.nulls, scores.counts, scores.drift
    t_compute = time.perf_counter()

    out_table = table.select([task.id_column])
    if keep_mask is not None:
        out_table = out_table.filter(pa.array(keep_mask))
    for name, dtype in OUTPUT_SCHEMA_TAIL:
        values = {"segment": seg_h, "segment_distance": dist_h, "propensity": prop_h}[name]
        out_table = out_table.append_column(pa.field(name, dtype), pa.array(values, type=dtype))
    for name in task.keep:
        if name == task.id_column:
            continue
        col = table.column(name)
        out_table = out_table.append_column(name, col.filter(pa.array(keep_mask)) if keep_mask is not None else col)
    _write_parquet(out_table, Path(task.part_path), task.compression, task.run_key,
                   dictionary_columns=["segment", *(c for c in task.keep if c != task.id_column)])
    rows_rejected = int(bad.sum()) if bad is not None else 0
    if rows_rejected:
        rows = np.flatnonzero(bad)
        rejected = pa.table({
            task.id_column: ids.take(pa.array(rows)),
            "_file": pa.array([fragment.path] * rows.size),
            "_row": pa.array(rows + fragment.row_offset, type=pa.int64()),
            "_column": pa.array(bad_cols),
            "_reason": pa.array(bad_reasons),
        })
        _write_parquet(rejected, Path(task.rejected_path), task.compression, task.run_key,
                       dictionary_columns=["_file", "_column", "_reason"])
    else:
        # Rejected rows that an earlier run left for this part are not this run's.
        Path(task.rejected_path).unlink(missing_ok=True)
    t_write = time.perf_counter()

    summary = {
        "index": fragment.index,
        "part": Path(task.part_path).name,
        "fragment": fragment.describe(),
        "file": fragment.path,
        "row_groups": list(fragment.row_groups) if fragment.row_groups is not None else None,
        "row_offset": fragment.row_offset,
        "rows_in": rows_in,
        "rows_out": out_table.num_rows,
        "rows_rejected": rows_rejected,
        "nulls_imputed": {f: int(n) for f, n in zip(features, nulls) if n},
        **counts,
        "drift_counts": drift,
        "seconds": {"read": t_read - t_start, "compute": t_compute - t_read, "write": t_write - t_compute},
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "fingerprint": task.fingerprint,
        "run_key": task.run_key,
    }
    if task.ids_dir:
        write_id_buckets(out_table.column(task.id_column), task.ids_dir, task.run_key, task.id_buckets)
    write_atomic(Path(task.sidecar_path), json.dumps(summary).encode())
    pause_for_tests(TEST_PAUSE_AFTER_PART)
    return summary


class DriftCounter:
    """Histogram counts of tonight's values in the training profile's reference bins.

    Blocks hand in a systematic sample of their rows (every ``stride``-th row of the
    fragment); the counts are taken once per fragment over the collected sample.
    """

    def __init__(self, model: ScoringModel, xp: Any, stride: int, order: list[int] | None = None) -> None:
        self.model, self.xp, self.stride = model, xp, stride
        # Column c of the blocks handed in holds feature order[c].
        self.order = list(order) if order is not None else list(range(model.n_features))
        self.rows: list[Any] = []
        self.segments: list[Any] = []
        self.propensity: list[Any] = []

    def add_rows(self, start: int, X: Any) -> None:
        """Sample a block's raw rows (NaN for missing values) before they are imputed."""
        self.rows.append(X[(-start) % self.stride::self.stride].copy())

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
        column_of = {j: c for c, j in enumerate(self.order)}
        for j, name in enumerate(model.features):
            c = column_of[j]
            edges = feats.get(name, {}).get("bin_edges")
            if edges is not None:
                counts = bin_counts(sample[:, c], to_device(xp, np.asarray(edges, dtype=np.float64)), xp=xp)
                out["features"][name] = asnumpy(counts).tolist()
        prop_edges = profile.get("propensity", {}).get("bin_edges")
        if prop_edges is not None:
            prop = xp.concatenate(self.propensity).astype(xp.float64)
            out["propensity"] = asnumpy(bin_counts(prop, to_device(xp, np.asarray(prop_edges)), xp=xp)).tolist()
        out["segments"] = asnumpy(xp.bincount(xp.concatenate(self.segments), minlength=model.k)).tolist()
        return out
