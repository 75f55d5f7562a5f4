"""``engine rules``: association rules over what customers hold, planned and published like a score run.

The client checks the flags, the input's footers and the output before any work, then runs
one pass per level as Dask tasks (:mod:`engine.itemsets.passes`): pass 1 counts every item's
customers; pass ``L`` counts the level-``L`` candidates built from the frequent
``(L-1)``-itemsets (``--max-len`` of 3 means three passes). Tasks return counts, never rows;
the client sums them, keeps what is frequent and held by at least the privacy minimum of
customers, derives the rules and publishes ``rules.parquet``, ``_manifest.json``,
``_report.html`` and ``_SUCCESS`` as one directory, all or nothing.

Publishing goes through :mod:`engine.io.publish` (issue 24), the protocol of every artifact:
built in a private directory, swapped in whole on a local disk, manifest-last with a backup
in an object store; ``_SUCCESS`` is the marker removed first and written last.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine import __version__
from engine.backends import resolve_backend
from engine.cluster import open_runner, run_threads
from engine.config import Settings
from engine.errors import InputError, OutputError, UsageError
from engine.io.dataset import Fragment, InputDataset, discover, plan_fragments
from engine.io.uri import Location, check, is_remote, parse, shown
from engine.io.validate import require_schema, suggest
from engine.itemsets.count import Level
from engine.itemsets.mine import (
    MAX_ITEMS,
    MAX_LEN,
    add_counts,
    frequent_mask,
    level_two,
    make_rules,
    min_count,
    next_level,
)
from engine.itemsets.passes import IDS, PassJob, run_pass
from engine.itemsets.read import BASKETS, WIDE, RulesTask
from engine.itemsets.spill import (
    PairSource,
    PartitionTask,
    bucket_segments,
    partition_fragment,
    spill_buckets,
    spill_directory,
)
from engine.jobs.progress import MODES, Progress
from engine.privacy import min_customers

RULES_FILE = "rules.parquet"
MANIFEST = "_manifest.json"
REPORT = "_report.html"
SUCCESS = "_SUCCESS"
GENERATOR = "engine rules"
OUTPUT_NAMES = frozenset({RULES_FILE, MANIFEST, REPORT, SUCCESS})
LEVEL_NAMES = {2: "pairs", 3: "triples", 4: "quadruples"}


@dataclass(frozen=True)
class RulesOptions:
    """``engine rules`` flags (see ``engine rules --help``)."""

    input: str
    output: str
    items: Sequence[str] = ()
    items_prefix: str | None = None
    baskets: bool = False
    item_column: str = "item"
    id_column: str = "customer_id"
    # Wide form with the id column: rows are events and an id may repeat (a customer holds an
    # item when any of their rows does); without it a repeated id is exit 3. Baskets: always.
    rows_are_events: bool = False
    min_support: float = 0.01
    min_confidence: float = 0.5
    min_lift: float = 1.0
    max_len: int = 3
    backend: str = "auto"
    overwrite: bool = False
    progress: str = "quiet"
    report: bool = True
    top: int = 25          # rules shown in the report


@dataclass
class RulesPlan:
    """What a run will do, decided from flags and footers before any data page is read."""

    options: RulesOptions
    settings: Settings
    backend: str
    dataset: InputDataset
    form: str
    items: tuple[str, ...]       # wide: item columns; baskets: (item column,)
    tasks: list[RulesTask]
    floor: int                   # privacy minimum of customers behind any itemset
    real_output: Path | Location
    replaces: bool
    started: float = field(default_factory=time.perf_counter)
    # Counting by customer bucket from (customer, item) pairs (engine.itemsets.spill): baskets,
    # and wide rows with --rows-are-events; None: wide fragments, or baskets on a remote cluster
    # (engine.itemsets.read.basket_pairs). The tasks are then the buckets.
    pair_source: PairSource | None = None
    # Workers on this host: each fragment read once by a partition pass that spills pairs by
    # bucket; else (remote --scheduler) every bucket reads every fragment.
    spill: bool = False
    fragments: tuple[Fragment, ...] = ()
    # A wide table with the id column and without --rows-are-events: ids checked distinct first.
    id_check: PairSource | None = None
    check_buckets: int = 0

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-able data (what ``engine rules --dry-run`` prints)."""
        o = self.options
        return {
            "input": {"path": shown(o.input), "files": len(self.dataset.files), "rows": self.dataset.num_rows},
            "form": self.form,
            "items": list(self.items) if self.form == WIDE else {"id_column": o.id_column,
                                                                   "item_column": o.item_column},
            "thresholds": {"min_support": o.min_support, "min_confidence": o.min_confidence,
                           "min_lift": o.min_lift, "max_len": o.max_len,
                           "privacy_min_customers": self.floor},
            "passes": [*(["ids"] if self.id_check else []),
                       *(["partition"] if self.spill and self.pair_source else []), "items",
                       *(LEVEL_NAMES[n] for n in range(2, o.max_len + 1))],
            **({"partition": {"fragments": len(self.fragments), "buckets": len(self.tasks)}}
               if self.spill and self.pair_source else {}),
            **({"rows_are_events": True, "id_column": o.id_column} if self.form == WIDE and self.pair_source else {}),
            "backend": self.backend,
            "tasks": [t.describe() for t in self.tasks],
            "output": {"path": shown(o.output), "files": sorted(OUTPUT_NAMES - ({REPORT} if not o.report else set())),
                       "replaces": self.replaces},
        }


def _check_thresholds(o: RulesOptions) -> None:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not number(o.min_support) or not 0.0 < o.min_support <= 1.0:
        raise UsageError(f"--min-support must be a share of customers in (0, 1], got {o.min_support!r}")
    if not number(o.min_confidence) or not 0.0 <= o.min_confidence <= 1.0:
        raise UsageError(f"--min-confidence must lie in [0, 1], got {o.min_confidence!r}")
    if not number(o.min_lift) or o.min_lift < 0.0:
        raise UsageError(f"--min-lift must be a number >= 0, got {o.min_lift!r}")
    if isinstance(o.max_len, bool) or not isinstance(o.max_len, int) or not 2 <= o.max_len <= MAX_LEN:
        raise UsageError(f"--max-len must be 2, 3 or 4 (items in a rule), got {o.max_len!r}")
    if o.progress not in MODES:
        raise UsageError(f"--progress must be one of {', '.join(MODES)}, not {o.progress!r}")
    if o.baskets and (o.items or o.items_prefix):
        raise UsageError("--baskets reads a long table of (--id-column, --item-column) rows; "
                         "--items and --items-prefix name the columns of a wide table: give one form, not both")
    if not o.baskets and not o.items and not o.items_prefix:
        raise UsageError("name the items: --items a,b,c or --items-prefix P (a wide table of 0/1, boolean or "
                         "count columns), or --baskets with --item-column (a table of customer id and item rows)")
    if o.items and o.items_prefix:
        raise UsageError("give --items or --items-prefix, not both")
    if len(set(o.items)) != len(o.items):
        twice = sorted({i for i in o.items if list(o.items).count(i) > 1})
        raise UsageError(f"--items names {', '.join(map(repr, twice))} more than once")


def _wide_items(o: RulesOptions, dataset: InputDataset) -> tuple[str, ...]:
    names = list(dict.fromkeys([*(n for f in dataset.files for n in f.schema.names), *dataset.partition_columns]))
    if o.items:
        return tuple(o.items)
    chosen = tuple(n for n in names if n.startswith(o.items_prefix or ""))
    if not chosen:
        raise UsageError(f"--items-prefix {o.items_prefix!r} matches no column of {shown(o.input)}"
                         + suggest(o.items_prefix or "", names))
    return chosen


def _bucket_count(dataset: InputDataset, settings: Settings) -> int:
    """Customer buckets of a basket run on a remote cluster (``--scheduler``): enough that each task reads at most ``--partition-rows``
    of its bucket's rows, at least one per thread of the run (each reads every file's two columns)."""
    by_rows = -(-max(dataset.num_rows, 1) // settings.partition_rows)
    return max(1, min(max(by_rows, run_threads(settings) if not settings.scheduler else 2), 4096))


def plan_rules(options: RulesOptions, settings: Settings) -> RulesPlan:
    """Every check a run makes before its work; reads footers only and writes nothing."""
    t0 = time.perf_counter()
    _check_thresholds(options)
    for flag, value in (("--input", options.input), ("--output", options.output)):
        check(value, flag)
    floor = min_customers(settings.privacy_min_customers)
    real_output, replaces = _check_output(options)
    backend = resolve_backend(options.backend)
    dataset = discover(Path(parse(options.input, "--input")).absolute()
                       if settings.scheduler and not is_remote(options.input) else options.input)
    if options.baskets:
        form, items = BASKETS, (options.item_column,)
        if options.item_column == options.id_column:
            raise UsageError(f"--item-column and --id-column both name {options.id_column!r}")
        require_schema(dataset, numeric=[], present=[options.id_column, options.item_column],
                       same_type=[options.id_column, options.item_column], ids=[options.id_column, options.item_column],
                       hint="--baskets reads one row per (customer, item): name them with --id-column and "
                            "--item-column")
    else:
        form, items = WIDE, _wide_items(options, dataset)
        if len(items) > MAX_ITEMS:
            raise UsageError(f"{len(items):,} item columns; at most {MAX_ITEMS:,} are supported")
        require_schema(dataset, numeric=list(items), all_null_ok=True,
                       hint="item columns hold 0/1, booleans or counts (held when > 0)")
    if dataset.num_rows == 0:
        raise InputError(f"input {dataset.root} holds no rows (all {len(dataset.files)} file(s) are empty); "
                         "there are no customers to count")
    columns = {n for f in dataset.files for n in f.schema.names} | set(dataset.partition_columns)
    has_id = form == WIDE and options.id_column in columns and options.id_column not in items
    if form == WIDE and options.rows_are_events:
        if options.id_column in items:
            raise UsageError(f"--id-column {options.id_column!r} is also an item column")
        require_schema(dataset, numeric=[], present=[options.id_column], ids=[options.id_column],
                       hint="--rows-are-events joins the rows of one customer by --id-column")
    # Rows decoded at a time: a wide batch is rows x items booleans; a basket batch is two columns.
    batch_rows = settings.batch_rows or (65_536 if not options.baskets else settings.partition_rows)
    fragments = tuple(plan_fragments(dataset, settings.partition_rows))
    # A remote cluster's workers cannot see this host's spill directory: there every bucket
    # reads every fragment's columns (work grows with buckets x fragments).
    spill = not settings.scheduler
    buckets = spill_buckets(dataset.num_rows, run_threads(settings) * max(1, settings.workers or 1)) if spill \
        else _bucket_count(dataset, settings)
    if form == WIDE and not options.rows_are_events:
        tasks = [RulesTask(index=f.index, form=WIDE, fragments=(f,), partition_types=dataset.partition_columns,
                           items=items, batch_rows=batch_rows) for f in fragments]
        id_check = PairSource(options.id_column, keys_only=True) if has_id else None
        return RulesPlan(options, settings, backend, dataset, form, items, tasks, floor, real_output, replaces,
                         started=t0, spill=spill, fragments=fragments, id_check=id_check,
                         check_buckets=buckets if id_check else 0)
    if form == WIDE:
        source: PairSource | None = PairSource(options.id_column, items=items)
    else:
        source = PairSource(options.id_column, item_column=options.item_column) if spill else None
    tasks = [RulesTask(index=b, form=form, fragments=() if spill else fragments,
                       partition_types=dataset.partition_columns, items=items, id_column=options.id_column,
                       bucket=b, buckets=buckets, batch_rows=batch_rows) for b in range(buckets)]
    return RulesPlan(options, settings, backend, dataset, form, items, tasks, floor, real_output, replaces,
                     started=t0, pair_source=source, spill=spill, fragments=fragments)


# -- output: the publishing protocol of every artifact (engine.io.publish, issue 24) -----------


def _owned(read: Callable[[str], bytes | None]) -> set[str] | None:
    """The names an earlier ``engine rules`` output holds (from its manifest); None if not ours."""
    from engine.io.publish import json_marker

    marker = json_marker(read(MANIFEST), ("generator", "files"))
    if marker is None or marker["generator"] != GENERATOR:
        return None
    return set(OUTPUT_NAMES)


def _kind() -> Any:
    from engine.io.publish import ArtifactKind

    # _SUCCESS is removed first and written last: a reader that waits for it never mixes versions.
    return ArtifactKind(what="rules written by `engine rules`", marker=SUCCESS, owned=_owned,
                        markers=(MANIFEST, SUCCESS))


def _check_output(options: RulesOptions) -> tuple[Path | Location, bool]:
    """Before any work: the output may be written (new, empty, or an earlier rules output with
    ``--overwrite``); never the input, inside it, or holding it; never a foreign directory."""
    from engine.io.publish import check_target

    real = check_target(options.output, _kind(), overwrite=options.overwrite, protected={"the input": options.input})
    replaces = isinstance(real, Path) and (real / MANIFEST).exists()
    return real, replaces


def _publish(plan: RulesPlan, write: Callable[[Path], None]) -> None:
    """Build the output in a private directory with ``write``, then swap it in as a whole."""
    from engine.io.publish import publish

    publish(plan.options.output, write, _kind(), overwrite=plan.options.overwrite,
            protected={"the input": plan.options.input})


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RulesResult:
    rules: pa.Table
    manifest: dict[str, Any]


def _stderr(message: str) -> None:
    from engine import log

    log.event("rules.note", message)


class _RunningCounts:
    """One level's counts summed as each task's result lands, so the client holds one running
    sum (bounded by the level's candidates), not one result per bucket."""

    def __init__(self, size: int) -> None:
        self.sets, self.counts = np.zeros((0, size), dtype=np.int32), np.zeros(0, dtype=np.int64)
        self.size = size

    def add(self, result: dict[str, Any]) -> None:
        self.sets, self.counts = add_counts([(self.sets, self.counts), (result.pop("sets"), result.pop("counts"))],
                                            self.size)


def _run_pass(runner: Any, jobs: Sequence[Any], label: str, options: RulesOptions, settings: Settings,
              fn: Callable[[Any], dict[str, Any]] = run_pass,
              fold: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """``fn`` over ``jobs`` with progress; ``fold`` (if given) consumes each result as it lands
    (it may empty the result, which the returned list then holds emptied)."""
    progress = Progress(f"rules {label}", len(jobs), unit="tasks", mode=options.progress,
                        interval=settings.progress_interval_s, tick=True)

    def landed(result: dict[str, Any]) -> None:
        if fold is not None:
            fold(result)
        progress.advance(1)

    try:
        return runner.map(fn, jobs, f"rules-{label}", on_result=landed)
    finally:
        progress.close()


def execute(plan: RulesPlan, *, say: Callable[[str], None] | None = None) -> RulesResult:
    """Count, mine and publish; returns the rules (an Arrow table) and the manifest."""
    options, settings = plan.options, plan.settings
    if say is None:
        say = (lambda _m: None) if options.progress == "quiet" else _stderr
    run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    seconds: dict[str, float] = {"plan": time.perf_counter() - plan.started}
    passes: list[dict[str, Any]] = []
    uses_spill = plan.spill and (plan.pair_source is not None or plan.id_check is not None)
    with open_runner(settings, plan.backend, say=say) as runner, \
            (spill_directory() if uses_spill else contextlib.nullcontext()) as spill_dir:
        runner.ready([plan.dataset.root], [])
        if plan.id_check is not None:
            t = time.perf_counter()
            _check_ids(runner, plan, spill_dir)
            seconds["ids"] = time.perf_counter() - t
            passes.append({"pass": "ids", "buckets": plan.check_buckets, "seconds": seconds["ids"]})
        segments: list[Any] = [None] * len(plan.tasks)
        spilled_tally: dict[str, int] | None = None
        global_names: tuple[str, ...] = plan.items if plan.form == WIDE else ()
        direct = None
        if plan.pair_source is not None and plan.spill:
            t = time.perf_counter()
            spilled = _partition(runner, plan, plan.pair_source, len(plan.tasks), spill_dir, "pairs")
            if plan.form == BASKETS:
                global_names = tuple(sorted({str(n) for r in spilled for n in r["names"]}))
            segments = bucket_segments(spilled, global_names, len(plan.tasks))
            spilled_tally = {k: sum(int(r[k]) for r in spilled) for k in ("rows", "null_ids", "null_items")}
            seconds["partition"] = time.perf_counter() - t
            passes.append({"pass": "partition", "fragments": len(plan.fragments), "buckets": len(plan.tasks),
                           "spilled_batches": sum(len(r["batches"]) for r in spilled),
                           "seconds": seconds["partition"]})
        elif plan.pair_source is not None:
            direct = plan.pair_source
        t = time.perf_counter()
        first = _run_pass(runner, [PassJob(task, names=global_names, segments=seg, direct=direct)
                                   for task, seg in zip(plan.tasks, segments)], "items", options, settings)
        customers, names, counts, tally = _sum_items(first)
        if spilled_tally is not None:
            tally = spilled_tally
        seconds["items"] = time.perf_counter() - t
        if customers == 0:
            raise InputError(f"input {plan.dataset.root} holds no customer with an id and an item "
                             f"({tally.get('null_ids', 0):,} rows with a null id, "
                             f"{tally.get('null_items', 0):,} with a null item)")
        keep = frequent_mask(counts, customers, options.min_support, plan.floor)
        order = sorted(np.flatnonzero(keep), key=lambda i: names[i])
        frequent_names = tuple(names[i] for i in order)
        if len(frequent_names) > MAX_ITEMS:
            raise UsageError(f"{len(frequent_names):,} frequent items; at most {MAX_ITEMS:,}: raise --min-support")
        column_of = {n: j for j, n in enumerate(plan.items)} if plan.form == WIDE and plan.pair_source is None else {}
        code_map = None
        if plan.pair_source is not None:
            frequent_code = {n: j for j, n in enumerate(frequent_names)}
            # + the wide row marker (code len(global_names)), which is no item
            code_map = np.asarray([frequent_code.get(n, -1) for n in global_names] + [-1], dtype=np.int32)
        itemsets: list[tuple[np.ndarray, np.ndarray]] = [
            (np.arange(len(order), dtype=np.int32)[:, None], counts[order].astype(np.int64))]
        passes.append({"pass": "items", "candidates": len(names), "frequent": len(order),
                       "seconds": seconds["items"]})
        level: Level | None = level_two(len(order)) if len(order) >= 2 else None
        while level is not None and level.size <= options.max_len:
            t = time.perf_counter()
            label = LEVEL_NAMES[level.size]
            jobs = [PassJob(task, kind="level", names=frequent_names,
                            columns=tuple(column_of[n] for n in frequent_names) if column_of else (),
                            level=level, backend=plan.backend, block_rows=_block_rows(len(frequent_names)),
                            segments=seg, code_map=code_map, direct=direct)
                    for task, seg in zip(plan.tasks, segments)]
            total = _RunningCounts(level.size)
            _run_pass(runner, jobs, label, options, settings, fold=total.add)
            sets, level_counts = total.sets, total.counts
            mask = frequent_mask(level_counts, customers, options.min_support, plan.floor)
            itemsets.append((sets[mask], level_counts[mask]))
            seconds[label] = time.perf_counter() - t
            passes.append({"pass": label, "candidates": level.candidates(), "frequent": int(mask.sum()),
                           "seconds": seconds[label]})
            level = next_level(sets[mask])
    t = time.perf_counter()
    rules = make_rules(itemsets, customers, frequent_names, options.min_confidence, options.min_lift)
    seconds["rules"] = time.perf_counter() - t
    manifest = _manifest(run_id, plan, customers, tally, itemsets, frequent_names, rules, passes, seconds)
    _write_and_publish(plan, rules, manifest, itemsets, frequent_names, customers)
    return RulesResult(rules, manifest)


def _partition(runner: Any, plan: RulesPlan, source: PairSource, buckets: int, directory: str, name: str
               ) -> list[dict[str, Any]]:
    """The partition pass: every fragment read once, its pairs (or keys) spilled by bucket."""
    parts = [PartitionTask(index=i, fragment=f, partition_types=plan.dataset.partition_columns, source=source,
                           buckets=buckets, batch_rows=plan.tasks[0].batch_rows, directory=directory, name=name)
             for i, f in enumerate(plan.fragments)]
    return _run_pass(runner, parts, f"partition-{name}", plan.options, plan.settings, fn=partition_fragment)


def _check_ids(runner: Any, plan: RulesPlan, directory: str | None) -> None:
    """Exit 3 when a wide table's id column repeats an id and the rows are not said to be events:
    customers are distinct ids (the privacy minimum counts ids, issue 24), as ``engine train``."""
    o, source = plan.options, plan.id_check
    assert source is not None
    buckets = plan.check_buckets
    tasks = [RulesTask(index=b, form=WIDE, fragments=plan.fragments, partition_types=plan.dataset.partition_columns,
                       items=plan.items, id_column=o.id_column, bucket=b, buckets=buckets,
                       batch_rows=plan.tasks[0].batch_rows) for b in range(buckets)]
    if plan.spill:
        assert directory is not None
        spilled = _partition(runner, plan, source, buckets, directory, "ids")
        segments = bucket_segments(spilled, (), buckets)
        jobs = [PassJob(task, kind=IDS, segments=seg) for task, seg in zip(tasks, segments)]
    else:
        jobs = [PassJob(task, kind=IDS, direct=source) for task in tasks]
    results = _run_pass(runner, jobs, "ids", o, plan.settings)
    ids = sum(int(r["repeated_ids"]) for r in results)
    extra = sum(int(r["extra_rows"]) for r in results)
    if ids:
        raise InputError(
            f"input {shown(o.input)}: id column {o.id_column!r} repeats {ids:,} id(s) over {extra:,} extra rows. "
            f"Customers are counted by distinct id (the privacy minimum of {plan.floor}): deduplicate to one row "
            "per customer, name the right column with --id-column, or pass --rows-are-events if each row is an "
            "event of a customer (a customer then holds an item when any of their rows does)")


def _block_rows(items: int) -> int:
    """Customers per counted block: a dense float32 block of them stays near 256 MiB."""
    return max(4_096, min(1 << 20, (256 << 20) // (4 * max(items, 1))))


def _sum_items(results: list[dict[str, Any]]) -> tuple[int, list[str], np.ndarray, dict[str, int]]:
    """Pass 1 over every task: customers, and each item's customers (tasks hold disjoint customers)."""
    totals: dict[str, int] = {}
    tally = {"rows": 0, "null_ids": 0, "null_items": 0}
    customers = 0
    for r in results:
        customers += int(r["customers"])
        for name, c in zip(r["names"], np.asarray(r["counts"]).tolist()):
            totals[str(name)] = totals.get(str(name), 0) + int(c)
        for k in tally:
            tally[k] += int(r.get(k, 0))
    names = list(totals)
    return customers, names, np.asarray([totals[n] for n in names], dtype=np.int64), tally


def _manifest(run_id: str, plan: RulesPlan, customers: int, tally: dict[str, int],
              itemsets: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...], rules: pa.Table,
              passes: list[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    o = plan.options
    return {
        "generator": GENERATOR,
        "run_id": run_id,
        "engine_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": shown(o.input), "files": plan.dataset.fingerprint(), "form": plan.form,
                  **({"items": list(plan.items)} if plan.form == WIDE else
                     {"id_column": o.id_column, "item_column": o.item_column}),
                  **({"id_column": o.id_column, "rows_are_events": True}
                     if plan.form == WIDE and plan.pair_source is not None else {}),
                  **({"id_column": o.id_column, "ids_checked_distinct": True} if plan.id_check else {})},
        "output": {"path": shown(o.output)},
        "files": sorted(OUTPUT_NAMES - ({REPORT} if not o.report else set())),
        "backend": plan.backend,
        "thresholds": {"min_support": o.min_support, "min_confidence": o.min_confidence, "min_lift": o.min_lift,
                       "max_len": o.max_len, "privacy_min_customers": plan.floor,
                       "min_customers_in_effect": min_count(customers, o.min_support, plan.floor)},
        "totals": {"customers": customers, "frequent_items": len(names),
                   "frequent_itemsets": {str(s.shape[1]): int(len(s)) for s, _ in itemsets},
                   "rules": rules.num_rows,
                   **({k: v for k, v in tally.items() if plan.form == BASKETS or plan.pair_source is not None})},
        "passes": passes,
        "tasks": len(plan.tasks),
        "settings": plan.settings.values(),
        "seconds": seconds,
    }


def _write_and_publish(plan: RulesPlan, rules: pa.Table, manifest: dict[str, Any],
                       itemsets: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...], customers: int) -> None:
    import pyarrow.parquet as pq

    def write(directory: Path) -> None:
        from engine.io.guard import output_errors

        with output_errors(plan.options.output, "write rules to"):
            pq.write_table(rules, directory / RULES_FILE, compression=plan.settings.compression)
            if plan.options.report:
                from engine.report.rules import write_rules_report

                write_rules_report(directory / REPORT, rules, manifest, itemsets, names, customers,
                                   top=plan.options.top)
            manifest["seconds"]["total"] = time.perf_counter() - plan.started
            (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False, default=str) + "\n")
            (directory / SUCCESS).write_bytes(b"")

    t = time.perf_counter()
    try:
        _publish(plan, write)
    except OSError as exc:
        raise OutputError(f"cannot publish rules to {plan.options.output}: {exc}") from None
    manifest["seconds"]["publish"] = time.perf_counter() - t


def rules(options: RulesOptions, settings: Settings, *, say: Callable[[str], None] | None = None) -> RulesResult:
    """Plan, count, mine and publish (``engine rules``)."""
    return execute(plan_rules(options, settings), say=say)
