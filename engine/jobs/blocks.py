"""The one block loop: an Arrow table to scores, reason codes and summaries.

``engine score``'s tasks (:mod:`engine.jobs.partition`) and ``Model.score``
(:mod:`engine.api`) both call :func:`score_table`, so the two can never drift apart:
the same level mapping of categorical columns, the same dates as days before the
model's as-of date, the same ``MAX_INPUT_ABS`` rule, the same reason codes and the same
kernel. Per block of ``stage.block_rows`` rows: fill a leased host matrix from Arrow,
score it on the device stage (the kernel imputes and flags ±inf and values beyond
:data:`MAX_INPUT_ABS` in its one pass), mark the flagged rows' too large values as ±inf,
reason codes (host kernel, raw values), drift sample, then every :class:`BlockConsumer` the caller
passed (``engine recommend``'s multi-head top-N kernel plugs in there), all while the
block is leased. After the loop: the bad-row mask (if asked for), the exact score
summaries of the rows kept (:class:`ScoreTally`) and the rows per level.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from engine.backends.stage import BlockResult, Stage
from engine.io.matrix import BlockReader, HostBlocks, block_view, chunk_values, valid_mask
from engine.jobs.drift_sample import DriftCounter
from engine.jobs.summary import ScoreTally
from engine.models.artifact import ScoringModel
from kernels.block_scan import scan_block
from kernels.score_rows import MAX_INPUT_ABS as _KERNEL_MAX_INPUT_ABS

#: The largest magnitude a feature value may have: beyond it, float64 no longer holds every
#: integer exactly (2**53 ~ 9.0e15) and the scaled distance arithmetic loses the nearest
#: segment. Such a finite value is a bad value like ±inf (imputed, rejected or failed per
#: --on-bad-rows); in training data it is an input error. The kernels check it in their pass.
MAX_INPUT_ABS = _KERNEL_MAX_INPUT_ABS
TOO_LARGE = f"value beyond ±{MAX_INPUT_ABS:g}"

__all__ = ["MAX_INPUT_ABS", "TOO_LARGE", "Block", "BlockConsumer", "BlockScores", "mark_too_large",
           "missing_ids", "out_of_range_columns", "score_table", "with_model_dates"]


@dataclass(frozen=True)
class Block:
    """One leased block, as a :class:`BlockConsumer` sees it (valid only during the call).

    ``X``: the host ``(rows, F)`` float64 Fortran-ordered matrix in the model's feature
    order, raw values (NaN = missing, ±inf as read, finite values beyond
    :data:`MAX_INPUT_ABS` already turned to ±inf; nothing imputed or scaled); rows
    ``[start, stop)`` of the table; Fortran-contiguous when :func:`score_table` runs without a
    stage (with one, a short block is the first rows of the leased buffer). ``levels``: the
    block's C-contiguous ``(rows, Q)`` int32 global level indices (None without categorical
    columns). ``result``: the stage's scores of the block (segment, distance, propensity,
    each row's first ±inf feature); None when :func:`score_table` runs without a stage
    (consumers only).
    """

    start: int
    stop: int
    X: np.ndarray
    levels: np.ndarray | None
    result: BlockResult | None


class BlockConsumer(Protocol):
    """Anything called once per block, in order, while the block is leased; must not keep ``X``."""

    def __call__(self, block: Block) -> None: ...


@dataclass
class BlockScores:
    """Scores of every row of a table (host arrays) and what was found on the way."""

    segment: np.ndarray
    distance: np.ndarray
    propensity: np.ndarray
    bad: np.ndarray | None
    bad_columns: list[str]
    bad_reasons: list[str]
    nulls: np.ndarray
    counts: dict[str, int]
    drift: dict[str, Any]
    reasons: np.ndarray | None = None    # (rows, N) int32 feature indices of the reason codes, -1 = none
    levels: np.ndarray | None = None     # (rows, Q) int32 global level indices of the categorical columns
    reason_values: np.ndarray | None = None  # (rows, N) float64 their logit contributions, NaN = none
    tally: ScoreTally | None = None      # exact summaries of the rows kept (not ``bad``)
    level_counts: dict[str, list[int]] = field(default_factory=dict)  # rows per level, every row


def missing_ids(ids: pa.ChunkedArray) -> np.ndarray | None:
    """Rows whose id is missing: null, or NaN/±inf in a floating-point id column; None if none.

    A NaN id names no customer any more than a null does, so both follow --on-bad-rows.
    """
    floating = pa.types.is_floating(ids.type)
    if not ids.null_count and not floating:
        return None
    parts = []
    for chunk in ids.chunks:
        missing = ~valid_mask(chunk)
        if floating:
            missing |= ~np.isfinite(chunk_values(chunk))
        parts.append(missing)
    found = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    return found if found.any() else None


def mark_too_large(X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Turn finite values beyond :data:`MAX_INPUT_ABS` into ±inf in place; their (rows, columns).

    One vectorised pass that finds nothing on ordinary data; the few hits then take the
    path every ±inf takes (the kernels, the counts, the bad-row policy).
    """
    with np.errstate(invalid="ignore"):
        big = np.abs(X) > MAX_INPUT_ABS
    big &= np.isfinite(X)
    if not big.any():
        return None
    where = np.nonzero(big)
    X[where] = np.copysign(np.inf, X[where])
    return where[0], where[1]


def with_model_dates(table: pa.Table, model: ScoringModel) -> pa.Table:
    """``table`` with the model's date features as days before its as-of date."""
    import datetime as _dt

    from engine.models.categorical import with_dates_as_days

    return with_dates_as_days(table, model.date_features, _dt.date.fromisoformat(str(model.as_of)))


def level_tallies(model: ScoringModel, levels: np.ndarray) -> dict[str, list[int]]:
    """Rows per level (local order: kept levels, other, missing) of each categorical column."""
    from engine.models.categorical import offsets

    out = {}
    # One bincount over the whole level matrix (global indices are disjoint per column), then cut.
    total = sum(c.n_levels for c in model.categoricals)
    counts = np.bincount(levels.reshape(-1), minlength=total) if levels.size else np.zeros(total, np.int64)
    for cat, base in zip(model.categoricals, offsets(model.categoricals)):
        out[cat.name] = counts[base:base + cat.n_levels].tolist()
    return out


def out_of_range_columns(X: np.ndarray) -> np.ndarray:
    """Per row, its first column holding ±inf or a finite value beyond :data:`MAX_INPUT_ABS` (-1: none).

    What the scoring kernels report as ``inf_col`` in their pass, for a block no kernel scores.
    """
    with np.errstate(invalid="ignore"):
        out = np.abs(X) > MAX_INPUT_ABS        # ±inf too; NaN (missing) is not out of range
    first = np.full(X.shape[0], -1, dtype=np.int32)
    if out.any():
        hit = np.flatnonzero(out.any(axis=1))
        first[hit] = np.argmax(out[hit], axis=1)
    return first


_NO_ROWS = np.zeros(0, dtype=np.intp)


def score_table(model: ScoringModel, table: pa.Table, stage: Stage | None, *, reasons: int = 0,
                ids: pa.ChunkedArray | None = None, flag_bad: bool = False, id_column: str = "",
                drift: DriftCounter | None = None, row_base: int = 0,
                thresholds: Sequence[float] | None = None,
                consumers: Sequence[BlockConsumer] = (), block_rows: int = 16_384,
                host: HostBlocks | None = None, drift_result: bool = True) -> BlockScores:
    """Score ``table`` block by block on ``stage``: scores, reason codes, summaries.

    ``table`` holds the model's feature columns (numeric, date, categorical; dictionary
    encoded or not) as the caller read them, rows ``row_base ..`` of a larger input.
    ``reasons``: reason codes per row (0 = none). ``ids``: the id column, for the
    missing-id check (None = no check). ``flag_bad``: build the ``bad`` mask of rows with
    a ±inf (or beyond :data:`MAX_INPUT_ABS`) feature or a missing id, with each one's
    column and reason (what ``--on-bad-rows reject|fail`` need); with False every such
    value is imputed and ``bad`` is None. ``drift``: a sampler that accumulates across
    calls (None = no drift sample). ``thresholds``: compute the exact
    :class:`ScoreTally` of the rows kept (None = skip). ``consumers``: called per block,
    see :class:`BlockConsumer`.

    ``stage`` None: no scores, for callers that only need the consumers (``engine
    recommend``): blocks of ``block_rows`` rows are filled in a host matrix of this call, the
    ±inf and too-large values found on the host, and the segment and propensity kernel never
    runs (nor loads). ``segment``, ``distance`` and ``propensity`` are then empty,
    ``thresholds`` must be None (it summarises scores) and ``drift`` samples the features
    only; the rest is as with a stage. ``host``: the host buffers to fill (reused across
    calls; a fresh pair when None). ``drift_result`` False: ``drift`` is only fed, and the
    returned ``drift`` is empty (a caller that reads the sampler once, after its last table:
    binning the sample so far after every table costs the square of a fragment's batches).
    """
    from engine.models.reasons import ReasonWeights, name_levels, top_reasons, with_level_columns

    features = model.features
    n = table.num_rows
    scored = stage is not None
    if not scored and thresholds is not None:
        raise ValueError("score_table without a stage computes no scores: thresholds need them")
    null_ids = missing_ids(ids) if ids is not None else None
    m = n if scored else 0
    segment = np.empty(m, dtype=np.int32)
    distance = np.empty(m, dtype=np.float32)
    propensity = np.empty(m, dtype=np.float32)
    nulls = np.zeros(len(features), dtype=np.int64)
    inf_first_col: np.ndarray | None = None   # made at the first ±inf: most tables have none
    infinite_values = 0
    huge: set[tuple[int, int]] = set()  # (row, column) of finite values beyond MAX_INPUT_ABS
    h2d_bytes = 0
    levels = None
    if model.categoricals:
        from engine.models.categorical import level_matrix

        levels = level_matrix(table, model.categoricals)
    if model.date_features:
        table = with_model_dates(table, model)
    reader = BlockReader(table, features, stage.block_rows if stage is not None else max(1, int(block_rows)))
    # Without a stage, each block's ±inf / too large values and NaN counts come from one
    # compiled pass over the block (kernels/block_scan.py), which the stage's kernel does otherwise.
    own = first = None
    if stage is None:
        own, first = (host or HostBlocks()).get(reader.block_rows, len(features))
    # Reason codes: one compiled host call per block, on its raw values (NaN, ±inf as read),
    # before the stage scores them: the same host code on both backends, so identical codes.
    codes = np.empty((n, reasons), dtype=np.int32) if reasons else None
    values = np.empty((n, reasons), dtype=np.float64) if reasons else None
    weights = ReasonWeights.of(model) if reasons else None
    # The CPU kernel adds each block's scores to the tally in its pass; a stage that does not
    # (the GPU's) leaves it to one host pass at the end.
    tally = ScoreTally.empty(model.k, thresholds) if thresholds is not None else None
    all_tallied = True
    for start, stop in reader.bounds():
        rows = stop - start
        block_levels = levels[start:stop] if levels is not None else None
        with stage.lease() if stage is not None else nullcontext() as lease:
            result: BlockResult | None = None
            if lease is not None:
                X = reader.fill(lease.X[:rows], start, stop)
                # The kernels impute and flag ±inf and values beyond MAX_INPUT_ABS themselves (no
                # pass over the block here); the few flagged rows are then marked on the host.
                result = lease.score(rows, block_levels, tally)
                hits = -1   # the stage's kernel flagged the rows: look at its inf_col
                all_tallied = all_tallied and result.tallied
                inf_col = result.inf_col
            else:
                assert own is not None and first is not None
                X = reader.fill(block_view(own, rows, len(features)), start, stop)
                hits = scan_block(X, rows, MAX_INPUT_ABS, nulls, first)
                inf_col = first[:rows]
            flagged = np.flatnonzero(inf_col >= 0) if hits else _NO_ROWS
            if flagged.size:
                sub = X[flagged]
                too_large = mark_too_large(sub)
                if too_large is not None:
                    X[flagged] = sub   # reason codes and drift see them as ±inf, as the kernels did
                    huge.update((start + int(flagged[r]), int(c)) for r, c in zip(*too_large))
                # Counted here, on the few flagged rows, while the block is still ours.
                infinite_values += int(np.isinf(sub).sum())
                if inf_first_col is None:
                    inf_first_col = np.full(n, -1, dtype=np.int32)
                inf_first_col[start:stop] = inf_col
            if codes is not None and values is not None:
                found, values[start:stop] = top_reasons(with_level_columns(X, block_levels, model), weights,
                                                        reasons, values=True)
                codes[start:stop] = name_levels(found, block_levels, len(features))
            if drift is not None:
                drift.add_rows(row_base + start, X)
            if consumers:
                block = Block(start, stop, X, block_levels, result)
                for consume in consumers:
                    consume(block)
        if result is not None:
            segment[start:stop] = result.segment
            distance[start:stop] = result.distance
            propensity[start:stop] = result.propensity
            nulls += result.nulls
            h2d_bytes += result.h2d_bytes
    if drift is not None:
        drift.add_scores(row_base, segment, propensity)
    inf_rows = inf_first_col >= 0 if inf_first_col is not None else None
    counts = {"infinite_values": infinite_values, "null_ids": int(null_ids.sum()) if null_ids is not None else 0}
    if h2d_bytes:  # the GPU stage's host-to-device bytes (bench/gpu_bench.py checks them)
        counts["device_bytes_in"] = h2d_bytes
    bad = None
    columns: list[str] = []
    why: list[str] = []
    if flag_bad and (inf_rows is not None or null_ids is not None):
        bad = np.zeros(n, dtype=bool)
        if inf_rows is not None:
            bad |= inf_rows
        if null_ids is not None:
            bad |= null_ids
        for r in np.flatnonzero(bad):
            if null_ids is not None and null_ids[r]:
                columns.append(id_column)
                why.append("null id")
            else:
                assert inf_first_col is not None
                col = int(inf_first_col[r])
                columns.append(features[col])
                why.append(TOO_LARGE if (int(r), col) in huge else "infinite value")
        if not bad.any():
            bad = None
    if tally is not None:
        if not all_tallied:
            tally = ScoreTally.empty(model.k, tally.thresholds)
            if bad is None:
                tally.add(segment, propensity)
            else:
                tally.add(segment[~bad], propensity[~bad])
        elif bad is not None:
            tally.subtract(segment[bad], propensity[bad])   # summaries are of the rows written
    level_counts = level_tallies(model, levels) if levels is not None else {}
    return BlockScores(segment, distance, propensity, bad, columns, why, nulls, counts,
                       drift.result() if drift is not None and drift_result else {}, codes, levels, values, tally,
                       level_counts)
