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

from engine.backends.namespace import asnumpy, get_xp, to_device
from engine.errors import BadRowsError, InputError
from engine.io.commit import write_atomic
from engine.io.dataset import Fragment, read_fragment, table_to_matrix
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


def _where(fragment: Fragment, row: int) -> str:
    return f"{fragment.path} row {fragment.row_offset + row}"


def _write_parquet(table: pa.Table, path: Path, compression: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression=compression)
    os.replace(tmp, path)


def _bad_rows(task: PartitionTask, X: np.ndarray, ids: pa.ChunkedArray, xp: Any
              ) -> tuple[np.ndarray | None, list[str], list[str], dict[str, int]]:
    """Rows to reject (mask on host), their first offending column and reason, and counts."""
    fragment, features = task.fragment, task.model.features
    counts: dict[str, int] = {}
    inf = xp.isinf(X)
    inf_rows = asnumpy(inf.any(axis=1)) if X.shape[0] else np.zeros(0, dtype=bool)
    null_ids = np.asarray(pc.is_null(ids).to_numpy(zero_copy_only=False), dtype=bool)
    counts["infinite_values"] = int(asnumpy(inf.sum()))
    counts["null_ids"] = int(null_ids.sum())
    if task.on_bad_rows == "impute" or not (inf_rows.any() or null_ids.any()):
        return None, [], [], counts
    bad = inf_rows | null_ids
    if task.on_bad_rows == "fail":
        row = int(np.argmax(bad))
        if null_ids[row]:
            what = f"column {task.id_column!r} (the id) is null"
        else:
            col = features[int(np.argmax(asnumpy(inf[row])))]
            what = f"column {col!r} is infinite"
        raise BadRowsError(
            f"{_where(fragment, row)}: {what} (--on-bad-rows fail); fix the input, or use "
            "--on-bad-rows reject to set such rows aside or impute to impute infinite values"
        )
    rows = np.flatnonzero(bad)
    first_inf_col = asnumpy(xp.argmax(inf[to_device(xp, rows)], axis=1)) if rows.size else np.zeros(0, int)
    columns, reasons = [], []
    for r, c in zip(rows, first_inf_col):
        if null_ids[r]:
            columns.append(task.id_column)
            reasons.append("null id")
        else:
            columns.append(features[int(c)])
            reasons.append("infinite value")
    return bad, columns, reasons, counts


def score_partition(task: PartitionTask) -> dict[str, Any]:
    """Score one fragment and commit its part to staging; returns the part's summary."""
    t_start = time.perf_counter()
    model, fragment = task.model, task.fragment
    features = list(model.features)
    read_cols = list(dict.fromkeys([task.id_column, *features, *task.keep]))
    table = read_fragment(fragment, read_cols, task.partition_types)
    rows_in = table.num_rows
    if rows_in != fragment.num_rows:
        raise InputError(f"{fragment.describe()}: read {rows_in} rows, its footer says {fragment.num_rows}; "
                         "the file changed during the run: rerun")
    X_host = table_to_matrix(table, features)
    t_read = time.perf_counter()

    xp = get_xp(task.backend)
    X = to_device(xp, X_host)
    ids = table.column(task.id_column)
    bad, bad_cols, bad_reasons, counts = _bad_rows(task, X, ids, xp)
    if task.on_bad_rows == "impute":
        X = xp.where(xp.isinf(X), xp.nan, X)
    keep_mask = None
    if bad is not None:
        keep_mask = ~bad
        X = X[to_device(xp, keep_mask)]
    missing = xp.isnan(X)
    nulls = asnumpy(missing.sum(axis=0))
    folded = fold(model, xp=xp, dtype=X.dtype)
    segment, distance, propensity = score_matrix(X, folded, xp=xp, missing=missing)
    drift = _drift_counts(model, X, segment, propensity, xp)
    seg_h, dist_h, prop_h = asnumpy(segment), asnumpy(distance), asnumpy(propensity)
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
    _write_parquet(out_table, Path(task.part_path), task.compression)
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
        _write_parquet(rejected, Path(task.rejected_path), task.compression)
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
    write_atomic(Path(task.sidecar_path), json.dumps(summary).encode())
    return summary


def _drift_counts(model: ScoringModel, X: Any, segment: Any, propensity: Any, xp: Any) -> dict[str, Any]:
    """Histogram counts of tonight's values in the training profile's reference bins."""
    profile = model.profile or {}
    feats = profile.get("features", {})
    out: dict[str, Any] = {"features": {}}
    for j, name in enumerate(model.features):
        edges = feats.get(name, {}).get("bin_edges")
        if edges is None:
            continue
        counts = bin_counts(X[:, j], to_device(xp, np.asarray(edges, dtype=np.float64)), xp=xp)
        out["features"][name] = asnumpy(counts).tolist()
    prop_edges = profile.get("propensity", {}).get("bin_edges")
    if prop_edges is not None:
        counts = bin_counts(propensity.astype(xp.float64), to_device(xp, np.asarray(prop_edges)), xp=xp)
        out["propensity"] = asnumpy(counts).tolist()
    out["segments"] = asnumpy(xp.bincount(segment, minlength=model.k)).tolist()
    return out
