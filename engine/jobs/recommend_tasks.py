"""The per-fragment work of ``engine recommend``: module-level, pure, picklable tasks.

The client plans and commits (:mod:`engine.jobs.recommend`); these run wherever
:func:`engine.cluster.open_runner` puts them: threads of this process by default, the
worker processes of a local Dask cluster (``--workers N``) or of an existing one
(``--scheduler``). Each task is a frozen dataclass of paths and values (the model and its
folded heads travel inside it, as in ``engine score``): no committer, settings or plan
object of the client, so the same function gives the same bytes on any runner.

* :class:`SampleTask` / :func:`sample_fragment`: the budgets' sample share of one
  fragment, as its ``(rows, T)`` expected values and candidate mask. The share is drawn
  with a generator seeded by ``(seed, fragment index)``, so the sample, and therefore the
  prices, do not depend on which process reads which fragment or in what order.
* :class:`FragmentTask` / :func:`recommend_fragment`: read, bad-row flags, top-N, write
  the staged part, its rejected rows and its sidecar; returns the part's tallies (and, with
  budgets, the thresholds the price update reads).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from engine.io.commit import TEST_PAUSE_AFTER_PART, pause_for_tests
from engine.io.dataset import Fragment, iter_fragment
from engine.io.id_ranges import IdRange
from engine.io.matrix import to_arrow
from engine.io.store import put_bytes
from engine.models.artifact import ScoringModel
from engine.offers import budgets as bud
from engine.offers.recommend import BatchBuffers, OfferPlan, expected_values, recommend_block

TALLY_VECTORS = ("customers", "value", "eligible", "owned", "with_rule")
TALLY_COUNTS = ("rows_in", "rows_out", "null_ids", "score_sum", "customers_with_offer", "rows_rejected")


def empty_tally(T: int) -> dict[str, Any]:
    """Per-offer vectors and run counts, all zero (a part's and a pass's tallies alike)."""
    return {"customers": np.zeros(T, np.int64), "value": np.zeros(T), "eligible": np.zeros(T, np.int64),
            "owned": np.zeros(T, np.int64), "with_rule": np.zeros(T, np.int64),
            **{name: 0.0 if name == "score_sum" else 0 for name in TALLY_COUNTS}}


def pairs_to_json(pairs: tuple[np.ndarray, np.ndarray]) -> dict[str, list[Any]]:
    """An offer's ``(threshold, key)`` pairs in a sidecar (keys as text: JSON numbers are doubles)."""
    return {"t": pairs[0].tolist(), "key": [str(k) for k in pairs[1].tolist()]}


def pairs_from_json(doc: dict[str, list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(doc["t"], dtype=np.float64), np.asarray([int(k) for k in doc["key"]], dtype=np.uint64)


@dataclass(frozen=True)
class FragmentRead:
    """What both tasks read: a fragment's columns in batches, for a model and its folded offers."""

    fragment: Fragment
    model: ScoringModel
    offers: OfferPlan
    columns: tuple[str, ...]
    partition_types: dict[str, pa.DataType]
    batch_rows: int

    def tables(self) -> Iterator[pa.Table]:
        return iter_fragment(self.fragment, list(self.columns), self.partition_types, batch_rows=self.batch_rows)


@dataclass(frozen=True)
class SampleTask(FragmentRead):
    """One fragment's share of the budgets' sample."""

    share: float    # of the fragment's rows, in (0, 1]
    seed: int
    id_column: str | None = None   # rows without an id are no one's candidates (no pass recommends to them)
    flag_bad: bool = False         # --on-bad-rows reject|fail: nor are the bad rows


def sample_fragment(task: SampleTask) -> tuple[np.ndarray, np.ndarray]:
    """``(EV (m, T), candidate (m, T))`` of a uniform ``share`` of the fragment's rows."""
    rng = np.random.default_rng([task.seed, task.fragment.index])
    T = task.offers.n_offers
    evs, cands = [np.zeros((0, T))], [np.zeros((0, T), bool)]
    for table in task.tables():
        if task.share < 1.0:
            pick = np.flatnonzero(rng.random(table.num_rows) < task.share)
            table = table.take(to_arrow(pick, pa.int64()))
        if table.num_rows == 0:
            continue
        ev, cand = expected_values(table, task.model, task.offers, id_column=task.id_column, flag_bad=task.flag_bad)
        evs.append(ev)
        cands.append(cand)
    return np.vstack(evs), np.vstack(cands)


@dataclass(frozen=True)
class FragmentTask(FragmentRead):
    """One fragment's recommendations into its staged part, under prices ``lam``."""

    id_column: str
    kernel: str           # "cpu" (compiled), "numpy" (the twin) or "gpu" (engine.offers.gpu_topn)
    compression: str
    on_bad_rows: str
    lam: np.ndarray       # (T,) the pass's prices
    keep: int             # kernel slots per row: top, or top + 1 with budgets (the next score)
    budgets: np.ndarray   # (T,) inf where an offer has none
    run_key: str
    part_path: str
    rejected_path: str
    sidecar_path: str
    device: Any = None    # kernel "gpu": the top-N stage's settings (engine.offers.gpu_topn.DeviceSettings)
    cuts: Any = None      # budgets: the offers whose price is a cut (engine.offers.budgets.Cuts)
    write: bool = True    # False: a pass that only counts (tallies and thresholds; no part, no sidecar)

    @property
    def tracked(self) -> list[int]:
        """The offers with a budget: their thresholds go back to the price update."""
        return [j for j in range(self.offers.n_offers) if np.isfinite(self.budgets[j])]


@dataclass(frozen=True)
class _BadRowTask:
    """What engine/jobs/partition.py's bad-row helpers read of a score task, for one recommend fragment."""

    id_column: str
    fragment: Fragment
    on_bad_rows: str
    rejected_path: str


def recommend_fragment(task: FragmentTask) -> dict[str, Any]:
    """Recommend every row of the fragment into its staged part; the part's sidecar, also returned."""
    from engine.jobs.drift_sample import DriftCounter, drift_stride
    from engine.jobs.heap import retain_batch_memory
    from engine.jobs.partition import _bad_rows, _PartWriter

    retain_batch_memory()   # freed batch arrays stay in the heap for the next batch (once per process)

    op, model, frag, lam = task.offers, task.model, task.fragment, task.lam
    T, N = op.n_offers, op.top
    ruled = op.catalogue.rules is not None
    tracked = task.tracked
    writer: Any = _PartWriter(task.part_path, task.compression, task.run_key,
                              [task.id_column, "offer", "reason", *(["rule"] if ruled else [])],
                              no_statistics=("reason", "rule") if ruled else ("reason",)) if task.write else _Counting()
    # The bad-row policy is engine score's (docs/safety.md "Bad rows"): the score loop flags
    # rows with a ±inf or too large feature or a missing id; reject sets them aside in
    # _rejected/ (id, _file, _row, _column, _reason), fail stops the run, impute scores them.
    policy = task.on_bad_rows
    bad_task = _BadRowTask(task.id_column, frag, policy, task.rejected_path)
    rejected: Any = (_PartWriter(task.rejected_path, task.compression, task.run_key, ["_file", "_column", "_reason"])
                     if task.write else _Counting())
    bad_by_column: dict[str, dict[str, int]] = {}
    first_bad: list[dict[str, Any]] = []
    drift = DriftCounter(model, drift_stride(frag.num_rows))
    nulls = np.zeros(len(model.features), dtype=np.int64)
    counts = {"infinite_values": 0}
    level_counts: dict[str, list[int]] = {}
    tally = empty_tally(T)
    # Per budgeted offer, the B + 1 largest (threshold, key) pairs of its holders so far.
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    ranked = task.cuts.kernel_prices(lam) if task.cuts is not None else lam
    id_range = IdRange()   # the ids of the customers recommended to: duplicate ids for the privacy gate
    buffers = BatchBuffers()   # the batches' large arrays, reused by every batch of the fragment
    try:
        for table in task.tables():
            row_base = tally["rows_in"]
            tally["rows_in"] += table.num_rows
            ids = table.column(task.id_column)
            if ids.null_count and policy == "impute":
                # A row without an id cannot be told to anyone: left out, counted (with reject
                # or fail it is a bad row, as in engine score).
                tally["null_ids"] += ids.null_count
                import pyarrow.compute as pc

                table = table.filter(pc.is_valid(ids))
                ids = table.column(task.id_column)
            res = recommend_block(table, model, op, lam, id_column=task.id_column, kernel=task.kernel,
                                  keep=task.keep, flag_bad=policy != "impute", drift=drift, row_base=row_base,
                                  device=task.device, buffers=buffers, cuts=task.cuts)
            if res.bad is not None:
                tally["rows_rejected"] += int(res.bad.sum())
                _bad_rows(bad_task, res.scores, row_base, bad_by_column, first_bad, rejected, ids)  # type: ignore[arg-type]
            id_range.add(ids if res.bad is None else ids.filter(to_arrow(~res.bad)))
            nulls += res.scores.nulls
            counts["infinite_values"] += int(res.scores.counts.get("infinite_values", 0))
            for name, counted in res.scores.level_counts.items():
                level_counts[name] = [a + b for a, b in zip(level_counts.get(name, [0] * len(counted)), counted)]
            if tracked:
                bud.collect_pairs(found, res.idx, res.ev, ranked, N, ids, task.budgets)
            out = res.table
            writer.write(out)   # before the next batch: its columns are views of the reused buffers
            tally["customers"] += res.customers
            tally["value"] += res.value
            tally["eligible"] += res.eligible
            tally["owned"] += res.owned
            if res.with_rule is not None:
                tally["with_rule"] += res.with_rule
            tally["rows_out"] += out.num_rows
            tally["customers_with_offer"] += res.with_offer
            tally["score_sum"] += res.score_sum
        writer.commit()
        rows_rejected = rejected.commit()
        if not rows_rejected and task.write:
            # Rejected rows that an earlier run left for this part are not this run's.
            from engine.io.store import remove

            remove(task.rejected_path)
    except BaseException:
        writer.abort()
        rejected.abort()
        raise
    info = {"index": frag.index, "part": task.part_path.rsplit("/", 1)[-1], "run_key": task.run_key,
            "rows_in": tally["rows_in"], "rows_out": tally["rows_out"], "rows_rejected": tally["rows_rejected"],
            # Where it ran (as engine score's parts say): this process, or a Dask worker's.
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "bad_rows_by_column": bad_by_column, "first_bad_rows": first_bad,
            "nulls_imputed": {f: int(n) for f, n in zip(model.features, nulls) if n},
            "level_counts": level_counts, **counts, "drift_counts": drift.result(), "id_range": id_range.to_json(),
            "tally": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in tally.items()},
            "thresholds": {}}
    if rejected.digest is not None and rows_rejected:
        info["rejected_bytes"], info["rejected_sha256"] = rejected.digest
    for j, pairs in found.items():
        if pairs[0].size:
            # Only the B + 1 largest pairs matter to the price update: the sidecar stays small.
            info["thresholds"][str(j)] = pairs_to_json(pairs)
    if writer.digest is not None:
        info["bytes"], info["sha256"] = writer.digest
    if task.write:
        put_bytes(task.sidecar_path, json.dumps(info).encode())
        pause_for_tests(TEST_PAUSE_AFTER_PART)
    return info


class _Counting:
    """The part writers of a pass that only counts: nothing is written, nothing is removed."""

    digest = None

    def __init__(self) -> None:
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows

    def commit(self) -> int:
        return self.rows

    def abort(self) -> None:
        pass
