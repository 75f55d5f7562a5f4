"""Scoring: plan on the client, score on Dask workers, check, then publish atomically.

The client validates the input against the model, plans one task per fragment (file,
row-group range or row range), and commits; workers read, score and write their own
part files (:func:`engine.jobs.partition.score_partition`). Nothing gathers the data.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.backends import resolve_backend
from engine.backends.stage import StageSettings, prewarm, stage_settings
from engine.cluster import (
    cuda_worker_threads,
    default_batch_rows,
    default_threads,
    open_runner,
    pin_single_gpu,
    run_threads,
    uses_distributed,
)
from engine.config import Settings, unique_names
from engine.errors import BadRowsError, DriftAlert, EngineError, InputError, UsageError
from engine.io.commit import (
    REJECTED,
    RUN_KEY_METADATA,
    OutputCommitter,
    check_output_dir,
    part_name,
)
from engine.io.dataset import Fragment, InputDataset, discover, plan_fragments
from engine.io.guard import check_writable, resolve_output
from engine.io.id_ranges import overlapping_parts
from engine.io.ids import IDS_DIR, bucket_count, count_bucket
from engine.io.store import exists, read_metadata, remove
from engine.io.store_commit import StoreCommitter, check_score_output
from engine.io.uri import Location, check, is_remote, parse, shown
from engine.io.validate import require_schema, trained_categorical_types
from engine.jobs import badrows
from engine.jobs.partition import (
    BAD_ROW_POLICIES,
    OUTPUT_SCHEMA_TAIL,
    PartitionTask,
    score_partition,
)
from engine.jobs.progress import MODES, Progress
from engine.jobs.run_report import ReportDrawer
from engine.jobs.summary import summarise_scores
from engine.models.artifact import ScoringModel, load_model
from engine.models.profile import (
    PSI_EPS,
    discrete_summary,
    drift_level,
    median_from_bins,
    merge_discrete,
    psi,
)
from engine.models.reasons import (
    contribution_columns,
    output_reason_columns,
    prepare_kernel,
    reason_columns,
    validate_reasons,
)
from engine.models.target import positive_class, propensity_label
from engine.privacy import enough, gate_score_statistics
from engine.report import SCORE_REPORT


@dataclass(frozen=True)
class ScoreOptions:
    input: str
    model: str
    output: str
    id_column: str | None = None
    keep: Sequence[str] = ()
    backend: str = "auto"
    overwrite: bool = False
    resume: bool = False
    unique_ids: bool = False
    fail_on_drift: bool = False
    progress: str = "auto"
    reasons: int = 0     # reason_1..reason_N per customer (engine/models/reasons.py)
    reason_contributions: bool = False   # reason_i_contribution: each reason's logit contribution
    schema: str | None = None  # --schema: CSV column types (engine/io/csv_input.py)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stderr(message: str) -> None:
    from engine import log

    log.event("score.note", message)


@dataclass
class ScorePlan:
    """What a run will do, decided before any data page is read or anything is written.

    :func:`plan_score` makes it with every check a real run makes before its work (model,
    flags, backend, input footers and schema, the output's state and lock); ``--dry-run``
    prints it and :func:`execute` runs it.
    """

    options: ScoreOptions
    settings: Settings
    model: Any
    id_column: str
    keep: tuple[str, ...]
    backend: str
    dataset: InputDataset
    fragments: list[Fragment]
    output: dict[str, Any]
    real_output: Path | Location  # symlinks resolved, after the output guard (engine/io/guard.py); or a store prefix
    started: float = field(default_factory=time.perf_counter)
    planned: float = field(default_factory=time.perf_counter)

    def output_schema(self) -> list[tuple[str, str]]:
        """``(column, type)`` of the output parts, in order (Arrow types, floats by width)."""
        def name(dtype: Any) -> str:
            # Arrow prints float32 as "float" and float64 as "double"; say which.
            return {"halffloat": "float16", "float": "float32", "double": "float64"}.get(str(dtype), str(dtype))

        cols = [(self.id_column, name(self.dataset.column_type(self.id_column)))]
        cols += [(col, name(dtype)) for col, dtype in OUTPUT_SCHEMA_TAIL]
        # Reason codes: feature names, dictionary-encoded (engine/models/reasons.py).
        cols += [(col, "dictionary<values=string, indices=int32>") for col in reason_columns(self.options.reasons)]
        if self.options.reason_contributions:
            cols += [(col, "float32") for col in contribution_columns(self.options.reasons)]
        cols += [(k, name(self.dataset.column_type(k))) for k in self.keep if k != self.id_column]
        return cols

    def batch_rows(self) -> int:
        """Rows per decoded batch: ``--batch-rows`` (at most a partition), else sized for the threads."""
        return _batch_rows(self.settings, self.model, self.id_column, self.keep)

    def task_threads(self) -> int | None:
        """Task threads per worker process this run would use; None where the workers decide."""
        return _task_threads(self.settings, self.backend)

    def stage_settings(self) -> StageSettings:
        """The device stage every task of this run asks its process for (see :func:`_stage_settings`)."""
        return _stage_settings(self.settings, self.backend, self.batch_rows(), self.task_threads())

    def settings_shown(self) -> dict[str, dict[str, Any]]:
        """Resolved settings, with the values chosen for this host where a setting is unset.

        ``threads_per_worker`` and ``batch_rows`` default to None ("fit the host"); a plan
        that printed None would hide the very values the run uses, so they are shown as
        chosen, marked ``auto``.
        """
        shown = self.settings.resolved()
        chosen = {"threads_per_worker": self.task_threads(), "batch_rows": self.batch_rows()}
        for name, value in chosen.items():
            if shown[name]["value"] is None and value is not None:
                shown[name] = {**shown[name], "value": value, "auto": True}
        return shown

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-able data (what ``engine score --dry-run`` prints)."""
        return {
            "input": {"path": shown(self.options.input), "files": len(self.dataset.files),
                      "rows": self.dataset.num_rows},
            "model": {"path": shown(self.options.model), "content_hash": self.model.content_hash,
                      "features": len(self.model.columns), "k": self.model.k,
                      "propensity_of": propensity_label(self.model)},
            "backend": self.backend,
            "fragments": [{"part": part_name(f.index), "fragment": f.describe(), "rows": f.num_rows}
                          for f in self.fragments],
            "columns": [{"name": n, "type": t} for n, t in self.output_schema()],
            "cluster": _cluster_text(self.settings, self.backend),
            "settings": self.settings_shown(),
            "config_file": self.settings.config_file,
            "output": self.output,
        }


def _batch_rows(settings: Settings, model: Any, id_column: str, keep: Sequence[str]) -> int:
    if settings.batch_rows:
        return min(settings.batch_rows, settings.partition_rows)
    read_columns = len(dict.fromkeys([id_column, *model.columns, *keep]))
    return default_batch_rows(run_threads(settings), read_columns, settings.partition_rows)


def _task_threads(settings: Settings, backend: str) -> int | None:
    if settings.threads_per_worker:
        return settings.threads_per_worker
    if settings.scheduler:
        return None  # an attached cluster's workers were started with their own count
    if uses_distributed(settings, backend):
        if backend == "gpu":
            return cuda_worker_threads(settings)  # the local dask-cuda workers share the cores
        return 1  # LocalCluster(--workers) defaults to one thread per worker process
    return default_threads()


def _stage_settings(settings: Settings, backend: str, batch_rows: int, threads: int | None) -> StageSettings:
    """The tasks' stage settings. On the GPU a staging slot holds one block, and a block
    never exceeds a batch: slots sized to ``min(--gpu-block-rows, batch rows)`` keep the
    pinned memory near the batches' own budget, and one slot per task thread (``threads``;
    0 = the worker's cores) lets every thread fill while others' blocks are on the GPU."""
    if backend == "gpu":
        return stage_settings("gpu", min(settings.gpu_block_rows, batch_rows), settings.gpu_tasks, threads or 0)
    return stage_settings(backend, settings.block_rows)


def _cluster_text(settings: Settings, backend: str) -> str:
    """Where the tasks would run; a dry run contacts no scheduler and starts no worker."""
    if settings.scheduler:
        return f"the Dask scheduler at {settings.scheduler} (not contacted by a dry run)"
    if settings.workers:
        return f"a local Dask cluster of {settings.workers} worker process(es) (not started by a dry run)"
    if uses_distributed(settings, backend):
        return "a local dask-cuda cluster, one worker per selected GPU (not started by a dry run)"
    return f"threads of this process ({settings.threads_per_worker or default_threads()})"


def plan_score(options: ScoreOptions, settings: Settings, *, prewarm_stage: bool = True) -> ScorePlan:
    """Every check a run makes before its work; reads footers only and writes nothing.

    A dry run also reads the dictionary pages of the categorical text columns (UTF-8 check).

    ``prewarm_stage=False`` (``--dry-run``) skips building the CPU scoring stage, which a
    real run starts here so that it is ready when the first task is.
    """
    t_start = time.perf_counter()
    if settings.on_bad_rows not in BAD_ROW_POLICIES:
        raise UsageError(f"--on-bad-rows must be one of {', '.join(BAD_ROW_POLICIES)}")
    if options.progress not in MODES:
        raise UsageError(f"--progress must be one of {', '.join(MODES)}, not {options.progress!r}")
    # Every path flag's scheme first: an unsupported one is exit 2 before anything is read or made.
    for flag, value in (("--input", options.input), ("--model", options.model), ("--output", options.output)):
        check(value, flag)
    real_output = check_output(options)
    unique_names([k for k in options.keep if k], "--keep")
    model = load_model(options.model)
    id_column = options.id_column or model.id_column
    keep = tuple(k for k in options.keep if k)
    validate_reasons(options.reasons, model.n_features, model)
    if options.reason_contributions and not options.reasons:
        raise UsageError("--reason-contributions adds a contribution per reason: give --reasons N too")
    reason_cols = output_reason_columns(options.reasons, options.reason_contributions)
    clash = [c for c in keep if c in ("segment", "segment_distance", "propensity", *reason_cols)]
    if clash:
        raise UsageError(f"--keep cannot name an output column: {', '.join(clash)}")
    backend = resolve_backend(options.backend)
    if prewarm_stage and not uses_distributed(settings, backend):
        # The tasks run in this process: their stage (numba kernel; or CUDA context, pinned
        # slots and kernel) is built while the run is planned, off the first task's clock.
        if backend == "gpu":
            pin_single_gpu(settings)
        spec = _stage_settings(settings, backend, _batch_rows(settings, model, id_column, keep),
                               _task_threads(settings, backend))
        prewarm(model, backend, spec)
    if prewarm_stage and options.reasons and not uses_distributed(settings, backend):
        # In-process tasks: load the reason-code kernel in the background (after the scoring
        # kernel, whose numba start-up it shares) while the run is planned.
        prepare_kernel()
    # Workers of an attached cluster run in their own working directory: give them absolute paths.
    from engine.io.csv_input import parse_schema, scoring_types

    dataset = discover(Path(parse(options.input, "--input")).absolute()
                       if settings.scheduler and not is_remote(options.input) else options.input,
                       csv_types={**scoring_types(model), **parse_schema(options.schema)})
    dates = model.date_features
    require_schema(dataset, numeric=[f for f in model.features if f not in dates], present=[id_column, *keep],
                   hint=f"the model {options.model} needs features: {', '.join(model.columns)}",
                   same_type=[id_column, *keep], all_null_ok=True, dates=dates,
                   categorical=[c.name for c in model.categoricals], ids=[id_column],
                   trained_types=trained_categorical_types(model),
                   origins={**{k: "--keep" for k in keep}, id_column: "--id-column" if options.id_column
                            else "the model as its id column; --id-column names another"})
    if dataset.num_rows == 0:
        raise InputError(f"input {dataset.root} holds no rows (all {len(dataset.files)} file(s) are empty)")
    if not prewarm_stage:
        # A dry run reads no values, but the dictionary pages of the categorical text columns are
        # small: read them to find invalid UTF-8 (exit 3 naming the column) as a real run would.
        from engine.io.text_columns import text_bytes

        names = [c.name for c in model.categoricals]
        text_bytes(dataset, names, utf8=names)
    fragments = plan_fragments(dataset, settings.partition_rows)
    output = committer_for(real_output, options).inspect()
    return ScorePlan(options, settings, model, id_column, keep, backend, dataset, fragments, output,
                     real_output, started=t_start, planned=time.perf_counter())


def committer_for(real_output: Path | Location, options: ScoreOptions) -> OutputCommitter | StoreCommitter:
    """The output's commit protocol: staging and swap on a local disk, manifest-last in a store."""
    if isinstance(real_output, Location):
        return StoreCommitter(real_output, overwrite=options.overwrite, resume=options.resume, shown=options.output,
                              protected={"the input": options.input, "the model": options.model})
    return OutputCommitter(real_output, overwrite=options.overwrite, resume=options.resume, shown=options.output)


@contextlib.contextmanager
def _resume_hint(committer: OutputCommitter | StoreCommitter) -> Iterator[None]:
    """A run that stops after staging: say how to pick up where it stopped, or leave no litter.

    On SIGINT or SIGTERM with finished parts, the message names them and ``--resume``. A
    failure before any part was finished (an unreachable scheduler, a worker that cannot see
    the input) leaves nothing worth resuming: its empty staging directory is removed rather
    than left beside the output.
    """
    try:
        yield
    except BaseException as exc:
        # Parts set aside by a publish that was stopped count too: --resume puts them back.
        finished = committer.staged_parts()
        if isinstance(exc, KeyboardInterrupt) and finished:
            exc.resume_hint = (  # type: ignore[attr-defined]
                f"{finished} finished part(s) are kept in {committer.staging}; rerun the same command "
                "with --resume to reuse them")
        if not finished and (isinstance(committer, StoreCommitter) or not _holds_files(committer.staging)):
            committer.discard()
        raise


def _holds_files(root: Path) -> bool:
    """Whether any regular file lies under ``root`` (rejected rows' ids, parts being written)."""
    return any(files for _d, _s, files in os.walk(root))


def score(options: ScoreOptions, settings: Settings, *,
          say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score ``options.input`` with ``options.model`` into ``options.output``; returns the manifest.

    ``say`` receives diagnostics (discarded staged parts, the Dask dashboard); by default
    they go to stderr unless ``options.progress`` is ``quiet``.
    """
    return execute(plan_score(options, settings), say=say)


def execute(plan: ScorePlan, *, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a :class:`ScorePlan`: score every fragment, check, publish; returns the manifest."""
    options, settings, model, dataset = plan.options, plan.settings, plan.model, plan.dataset
    id_column, keep, backend, fragments = plan.id_column, plan.keep, plan.backend, plan.fragments
    t_start, t_plan = plan.started, plan.planned
    if say is None:
        say = (lambda _m: None) if options.progress == "quiet" else _stderr
    run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]

    in_store = isinstance(plan.real_output, Location)
    with committer_for(plan.real_output, options) as committer, _resume_hint(committer), \
            ReportDrawer() as report:
        staged = len(committer.finished_parts())
        if staged and not options.resume:
            say(f"discarding {staged} staged part(s) of an interrupted run on {options.output}; "
                "rerun with --resume to reuse parts of the same input and model instead")
        committer.prepare()
        fingerprints = {f.path: f.fingerprint() for f in dataset.files}
        run_spec = {"model": model.content_hash, "id": id_column, "keep": keep,
                    "on_bad_rows": settings.on_bad_rows, "compression": settings.compression,
                    "reasons": options.reasons, "reason_contributions": options.reason_contributions,
                    "reasons_format": 2, "backend_independent": True}
        tasks = []
        buckets = bucket_count(dataset.num_rows)
        batch_rows = plan.batch_rows()
        spec = plan.stage_settings()
        for frag in fragments:
            key = _digest({**run_spec, "fragment": [frag.path, frag.row_groups, frag.stream_rows],
                           "fingerprint": fingerprints[frag.path]})
            tasks.append(PartitionTask(
                fragment=frag, model=model, backend=backend,
                part_path=str(committer.part_path(frag.index)),
                rejected_path=str(committer.rejected_path(frag.index)),
                sidecar_path=str(committer.sidecar_path(frag.index)),
                id_column=id_column, keep=keep, partition_types=dataset.partition_columns,
                on_bad_rows=settings.on_bad_rows, compression=settings.compression,
                fingerprint=fingerprints[frag.path], run_key=key,
                block_rows=spec.gpu_block_rows if backend == "gpu" else spec.block_rows,
                batch_rows=batch_rows, gpu_tasks=spec.gpu_tasks, gpu_slots=spec.gpu_slots,
                # In a store the duplicate count reads the ids back from the parts (no shared disk).
                ids_dir="" if in_store else str(committer.staging / IDS_DIR), id_buckets=buckets,
                reasons=options.reasons,
                reason_contributions=options.reason_contributions,
                thresholds=tuple(float(t) for t in settings.action_thresholds),
            ))
        results: dict[int, dict[str, Any]] = {}
        if options.resume:
            results = _reusable(committer, tasks)
            if results:
                say(f"resuming: {len(results)} of {len(tasks)} part(s) "
                    f"({sum(r['rows_in'] for r in results.values()):,} rows) reused from the interrupted run")
        todo = [t for t in tasks if t.fragment.index not in results]
        # Progress counts what this run scores: reused parts would inflate its rows/s and ETA.
        progress = Progress("score", len(todo), mode=options.progress,
                            total_rows=sum(t.fragment.num_rows for t in todo),
                            interval=settings.progress_interval_s, tick=True)

        def record(summary: dict[str, Any]) -> None:
            results[summary["index"]] = summary
            progress.advance(1, rows=summary["rows_in"])

        t_scored = t_plan
        try:
            with open_runner(settings, backend, say=say) as runner:
                if todo:
                    # The root alone is not enough: an unmounted share still leaves its empty mount point.
                    probe = list(dict.fromkeys([dataset.root, todo[0].fragment.path, todo[-1].fragment.path]))
                    runner.ready(probe, [str(committer.staging)])
                    runner.map(score_partition, todo, "score-partition", on_result=record)
                progress.close()
                t_scored = time.perf_counter()
                # The drift totals are known: the report's charts are drawn while the rest is checked.
                drift = _drift(model, results, settings)
                # The tasks tallied their scores; only parts reused from an older run may be read back.
                scores = summarise_scores(runner, [t.part_path for t in tasks], model.k,
                                          settings.action_thresholds,
                                          [results[t.fragment.index].get("scores") for t in tasks])
                duplicates = _count_duplicates(runner, tasks, id_column, results)
                # engine.privacy: no group statistic of fewer distinct customers than the minimum
                # reaches the manifest or the report (counted from rows, less every repeated id).
                privacy = gate_score_statistics(
                    drift, scores, rows=int(sum(c or 0 for c in scores["segment_counts"])),
                    duplicate_rows=duplicates["duplicate_rows"],
                    null_ids=sum(int(r.get("null_ids", 0)) for r in results.values()),
                    minimum=settings.privacy_min_customers)
                report.drift_known(drift, settings.action_thresholds)
                # Exact per-segment sizes and mean propensity over every published row (the
                # drift histograms are a sample).
                drift["segments"].update({"customers": scores["segment_counts"],
                                          "mean_propensity": scores["segment_mean_propensity"]})
                report.segments_known(drift["segments"])
        finally:
            progress.close()
        if not in_store:
            shutil.rmtree(committer.staging / IDS_DIR, ignore_errors=True)
        manifest = _manifest(run_id, plan, tasks, results, duplicates, scores, drift,
                             {"plan": t_plan - t_start, "score": t_scored - t_plan,
                              "checks": time.perf_counter() - t_scored})
        manifest["privacy"] = privacy
        _check_counts(committer, tasks, results)
        totals = manifest["totals"]
        if totals["rows_in"] and totals["rows_rejected"] / totals["rows_in"] > settings.max_rejected_fraction:
            # Staging stays: its _rejected/ holds the rejected rows' ids for the user to look at
            # (and --resume reuses the parts once the limit or the data is fixed).
            raise _too_many_rejected(totals, settings, f"{committer.staging}/{REJECTED}",
                                     [results[t.fragment.index] for t in tasks])
        try:
            if options.unique_ids and duplicates["duplicate_rows"]:
                raise BadRowsError(
                    f"{duplicates['duplicate_rows']:,} rows repeat an id already seen "
                    f"({duplicates['duplicated_ids']:,} ids appear more than once) in column {id_column!r} "
                    "and --unique-ids is set; nothing was published. Deduplicate the input"
                )
        except EngineError:
            committer.discard()
            raise
        t_report = time.perf_counter()
        # The run report goes into staging before publish, which keeps only the names it is given.
        manifest["report"] = _write_run_report(committer, manifest, report)
        manifest["files"] = _files(tasks, results, manifest)
        manifest["seconds"]["report"] = time.perf_counter() - t_report
        manifest["seconds"]["total"] = time.perf_counter() - t_start
        committer.publish(manifest, keep_parts={part_name(t.fragment.index) for t in tasks} | {SCORE_REPORT})
        if committer.displaced:
            say(f"{len(committer.displaced)} file(s) appeared in the previous {options.output} while it was being "
                f"replaced ({', '.join(committer.displaced[:5])}); they were not deleted: they are in "
                f"{committer.workspace.path}")
    alerts = manifest["drift"]["alerts"]
    if options.fail_on_drift and alerts:
        reasons = manifest["drift"].get("reasons", {})
        alert = DriftAlert(
            f"drift alert on {'; '.join(f'{n} ({reasons[n]})' if n in reasons else n for n in alerts)}; "
            f"the scores were published to {options.output}; see {options.output}/{SCORE_REPORT} and "
            "_manifest.json for every feature"
        )
        alert.manifest = manifest  # type: ignore[attr-defined]  # the run did publish: callers may summarise it
        raise alert
    return manifest


def check_output(options: ScoreOptions) -> Path | Location:
    """Before any work: the output path is allowed, replaceable and writable; its real path.

    Refuses an empty or root ``--output``, one that is, contains or lies inside the input
    or the model (or is or contains the working directory), an existing directory that is
    not an engine score output (even with ``--overwrite``), a previous output without
    ``--overwrite``, and a destination that cannot be written.
    """
    target = parse(options.output, "--output")
    if isinstance(target, Location):
        check_score_output(target, overwrite=options.overwrite,
                           protected={"the input": options.input, "the model": options.model})
        return target
    local_inputs = {"the input": None if is_remote(options.input) else parse(options.input, "--input"),
                    "the model": None if is_remote(options.model) else parse(options.model, "--model")}
    real = resolve_output(target, protected=local_inputs)
    check_output_dir(real, overwrite=options.overwrite, shown=options.output)
    check_writable(real, flag="--output", shown=options.output)
    return real


def _too_many_rejected(totals: dict[str, Any], settings: Settings, rejected_dir: Path | str,
                       parts: list[dict[str, Any]]) -> BadRowsError:
    """Exit 4 that says which columns and rows, where their ids are, and which flags help."""
    share = totals["rows_rejected"] / totals["rows_in"]
    by_column, first = badrows.merge(parts)
    return BadRowsError(
        f"{totals['rows_rejected']:,} of {totals['rows_in']:,} rows were rejected ({share:.2%}), above "
        f"--max-rejected-fraction {settings.max_rejected_fraction:g}; nothing was published. "
        f"{badrows.describe(by_column, first)}. The rejected rows' ids (with file, row, column and reason) "
        f"are in {rejected_dir}. Fix the input, or rerun with --max-rejected-fraction {_above(share)} to "
        "publish the other rows (add --resume to reuse the scored parts), or with --on-bad-rows impute "
        "to score infinite values as missing ones"
    )


def _above(share: float) -> str:
    """A round fraction just above ``share``, for the message's suggested flag."""
    for digits in range(2, 7):
        step = 10.0 ** -digits
        value = min(1.0, (int(share / step) + 1) * step)
        if value - share <= max(share * 0.5, step):
            return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "1"


def _write_run_report(committer: OutputCommitter | StoreCommitter, manifest: dict[str, Any],
                      report: ReportDrawer) -> str | None:
    """Write ``_report.html`` into staging (drawn by ``report``, begun while parts committed);
    its name, or None when it could not be drawn: a report that fails to render must not cost
    the night's scores (the drawer warns and says why in the manifest)."""
    if not isinstance(committer, StoreCommitter):
        return report.finish(manifest, committer.staging / SCORE_REPORT, SCORE_REPORT)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="engine-report-") as tmp:
        name = report.finish(manifest, Path(tmp) / SCORE_REPORT, SCORE_REPORT)
        if name is not None:
            committer.put_staged_file(SCORE_REPORT, str(Path(tmp) / SCORE_REPORT))
    return name


def _reusable(committer: OutputCommitter | StoreCommitter, tasks: list[PartitionTask]) -> dict[int, dict[str, Any]]:
    """Finished parts of an interrupted run whose input fingerprint and model hash still match."""
    found = committer.finished_parts()
    reused = {}
    for task in tasks:
        info = found.get(task.fragment.index)
        part = task.part_path
        if info is None or info.get("run_key") != task.run_key or not exists(part):
            continue
        rejected = task.rejected_path
        try:
            # The sidecar and the files must all belong to this run key: a kill between
            # writing a part and its sidecar must not pair one run's part with another's.
            if not _written_by(part, task.run_key, info["rows_out"]):
                continue
            if info["rows_rejected"]:
                if not _written_by(rejected, task.run_key, info["rows_rejected"]):
                    continue
            else:
                remove(rejected)
        except (OSError, KeyError, TypeError):
            continue
        reused[task.fragment.index] = info | {"reused": True}
    return reused


def _written_by(path: str, run_key: str, rows: int) -> bool:
    """Whether ``path`` is a complete Parquet file of ``rows`` rows written under ``run_key``."""
    try:
        meta = read_metadata(path)
    except Exception:  # missing, truncated, not Parquet: not reusable, whatever the reason
        return False
    key = (meta.metadata or {}).get(RUN_KEY_METADATA, b"").decode(errors="replace")
    return key == run_key and meta.num_rows == rows


def _count_duplicates(runner: Any, tasks: list[PartitionTask], id_column: str,
                      results: dict[int, dict[str, Any]] | None = None) -> dict[str, int]:
    """Exact duplicate-id count over every scored row.

    Parts whose ids were in order and whose id range overlaps no other part's count
    their own repeats (engine/io/id_ranges.py, from the tasks' summaries); the rest, one
    reduce task per id bucket over those parts alone (their bucket files, or their ids
    read back).
    """
    ranges = [(results or {}).get(t.fragment.index, {}).get("id_range") for t in tasks]
    rest, repeats, repeated = overlapping_parts(ranges)
    if not rest:
        return {"duplicate_rows": repeats, "duplicated_ids": repeated}
    buckets = tasks[0].id_buckets if tasks else 1
    sources = [(tasks[i].ids_dir, tasks[i].run_key, tasks[i].part_path) for i in rest]
    jobs = [functools.partial(count_bucket, sources, id_column, b, buckets) for b in range(buckets)]
    pairs = runner.map(_call, jobs, "count-duplicate-ids")
    return {"duplicate_rows": repeats + sum(p[0] for p in pairs),
            "duplicated_ids": repeated + sum(p[1] for p in pairs)}


def _call(job: Callable[[], Any]) -> Any:
    return job()


def _check_counts(committer: OutputCommitter | StoreCommitter, tasks: list[PartitionTask],
                  results: dict[int, dict[str, Any]]) -> None:
    """Every fragment has exactly one part whose rows match: in = out + rejected."""
    for task in tasks:
        frag = task.fragment
        info = results.get(frag.index)
        if info is None:
            raise EngineError(f"internal: no result for {frag.describe()}")
        part_rows = read_metadata(task.part_path).num_rows
        if part_rows != info["rows_out"] or info["rows_in"] != info["rows_out"] + info["rows_rejected"] \
                or info["rows_in"] != frag.num_rows:
            raise EngineError(
                f"internal: part {task.part_path.rsplit('/', 1)[-1]} of {frag.describe()} has {part_rows} rows, "
                f"expected {info['rows_out']} (in {info['rows_in']}, rejected {info['rows_rejected']})"
            )


def _drift(model: Any, results: dict[int, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Tonight against the training profile: PSI per feature, propensity and segment shares,
    and each feature's null share against its training null rate.

    Imputation puts a feature that went empty back inside its training bins, so its PSI
    stays near zero: the null share is compared on its own (from the per-part counts of
    imputed values, which cover every row, not the drift sample).
    """
    profile = model.profile or {}
    feats = profile.get("features", {})
    psi_levels = {"warning": settings.psi_warning, "alert": settings.psi_alert}
    null_levels = {"warning": settings.null_warning, "alert": settings.null_alert}
    out: dict[str, Any] = {"features": {}}
    summed: dict[str, np.ndarray] = {}
    discrete: dict[str, dict[float, int] | None] = {}
    prop = None
    segs = np.zeros(model.k, dtype=np.int64)
    rows_in = 0
    nulls: dict[str, int] = {}
    for info in results.values():
        rows_in += info["rows_in"]
        for name, n in info.get("nulls_imputed", {}).items():
            nulls[name] = nulls.get(name, 0) + int(n)
        counts = info.get("drift_counts", {})
        for name, c in counts.get("features", {}).items():
            summed[name] = summed.get(name, 0) + np.asarray(c)
        for name, values in counts.get("discrete", {}).items():
            discrete[name] = merge_discrete(discrete.get(name, {}), values)
        if "propensity" in counts:
            prop = (prop if prop is not None else 0) + np.asarray(counts["propensity"])
        segs += np.asarray(counts.get("segments", np.zeros(model.k)), dtype=np.int64)

    def _fractions(counts: Any) -> list[float]:
        counts = np.asarray(counts, dtype=np.float64)
        return (counts / max(1.0, counts.sum())).tolist()

    reasons: dict[str, str] = {}
    order = {"ok": 0, "warning": 1, "alert": 2}
    for name in model.features:
        ref = feats.get(name, {})
        entry: dict[str, Any] = {}
        levels = []
        if name in summed and "bin_fractions" in ref:
            c = summed[name]
            value = psi(ref["bin_fractions"], c)
            quantiles = ref.get("quantiles", {})
            # The outer bins are bounded by the most extreme stored quantiles (models no
            # longer store the minimum and maximum: each is one customer's value).
            low = next((quantiles[q] for q in ("0.0", "0.01", "0.05") if q in quantiles), None)
            high = next((quantiles[q] for q in ("1.0", "0.99", "0.95") if q in quantiles), None)
            entry.update({"psi": value, "psi_level": drift_level(value, **psi_levels), "fractions": _fractions(c), "_counts": np.asarray(c).tolist(),
                          "training_fractions": ref["bin_fractions"], "bin_edges": ref.get("bin_edges", []),
                          "training_median": quantiles.get("0.5"),
                          # engine.privacy: no median of fewer customers than the minimum.
                          "median": median_from_bins(c, ref.get("bin_edges", []), low, high)
                          if enough(int(np.sum(c)), settings.privacy_min_customers) else None,
                          "median_exact": False})
            exact = discrete_summary(discrete.get(name), ref, int(np.asarray(c).sum()))
            if exact:
                entry.update(exact)
            levels.append(("psi", entry["psi_level"]))
        if "null_rate" in ref and rows_in:
            share = nulls.get(name, 0) / rows_in
            diff = abs(share - float(ref["null_rate"]))
            entry.update({"null_share": share, "training_null_rate": float(ref["null_rate"]),
                          "null_difference": diff, "null_level": drift_level(diff, **null_levels)})
            levels.append(("null", entry["null_level"]))
        if not entry:
            continue
        entry["level"] = max((lvl for _, lvl in levels), key=order.__getitem__, default="ok")
        why = []
        if entry.get("null_level", "ok") != "ok":
            # Never the column's name: every line that shows a reason puts the name before it.
            why.append(f"null share {entry['null_share']:.2f} vs {entry['training_null_rate']:.2f} "
                       "in training")
        if entry.get("psi_level", "ok") != "ok":
            why.append(f"PSI {entry['psi']:.3f} > {psi_levels[entry['psi_level']]:.2f}")
        if why:
            reasons[name] = "; ".join(why)
        out["features"][name] = entry
    if model.categoricals:
        out["categoricals"] = _level_drift(model, results, rows_in, settings, psi_levels, reasons)
    if prop is not None and "propensity" in profile:
        value = psi(profile["propensity"]["bin_fractions"], prop)
        out["propensity"] = {"psi": value, "level": drift_level(value, **psi_levels), "fractions": _fractions(prop),
                             "_counts": np.asarray(prop).tolist(),
                             "training_fractions": profile["propensity"]["bin_fractions"],
                             "bin_edges": profile["propensity"].get("bin_edges", [])}
        if out["propensity"]["level"] != "ok":
            reasons["propensity"] = f"PSI {value:.3f} > {psi_levels[out['propensity']['level']]:.2f}"
    shares = segs / max(1, segs.sum())
    out["segments"] = {"shares": shares.tolist(), "counts": segs.tolist()}
    if "segment_shares" in profile:
        value = psi(profile["segment_shares"], segs)
        out["segments"].update({"training_shares": profile["segment_shares"], "psi": value,
                                "level": drift_level(value, **psi_levels)})
        if out["segments"]["level"] != "ok":
            reasons["segment shares"] = f"PSI {value:.3f} > {psi_levels[out['segments']['level']]:.2f}"
    if "segment_mean_propensity" in profile:
        out["segments"]["training_mean_propensity"] = profile["segment_mean_propensity"]
    # One list per level, named as the terminal summary, the run report and --fail-on-drift name them.
    levels = [(n, d["level"]) for n, d in out["features"].items()]
    levels += [(n, d["level"]) for n, d in out.get("categoricals", {}).items()]
    levels += [(n, out[n]["level"]) for n in ("propensity",) if n in out]
    levels += [("segment shares", out["segments"]["level"])] if "level" in out["segments"] else []
    out["thresholds"] = {"warning": settings.psi_warning, "alert": settings.psi_alert, "eps": PSI_EPS,
                         "null_warning": settings.null_warning, "null_alert": settings.null_alert,
                         "unseen_warning": settings.unseen_warning, "unseen_alert": settings.unseen_alert}
    out["alerts"] = [n for n, lvl in levels if lvl == "alert"]
    out["warnings"] = [n for n, lvl in levels if lvl == "warning"]
    out["reasons"] = reasons
    return out


def _level_drift(model: ScoringModel, results: dict[int, dict[str, Any]], rows_in: int, settings: Settings,
                 psi_levels: dict[str, float], reasons: dict[str, str]) -> dict[str, Any]:
    """Per categorical column: level shares tonight against training, PSI over the levels, and the
    share of values outside the model's levels (unseen or rare) against training's "other".

    Counted over every row (the parts' level tallies). A level held by fewer than 20 customers
    tonight is shown without its share (None); the PSI still counts it.
    """
    from engine.models.categorical import PRIVACY_MIN_ROWS
    from engine.models.explain import level_shares

    train_shares = level_shares(model)
    unseen_levels = {"warning": settings.unseen_warning, "alert": settings.unseen_alert}
    order = {"ok": 0, "warning": 1, "alert": 2}
    out: dict[str, Any] = {}
    for cat in model.categoricals:
        counts = np.zeros(cat.n_levels, dtype=np.int64)
        for info in results.values():
            tally = (info.get("level_counts") or {}).get(cat.name)
            if tally is not None and len(tally) == cat.n_levels:
                counts += np.asarray(tally, dtype=np.int64)
        total = int(counts.sum())
        if not total:
            continue
        expected = train_shares[cat.name]
        value = psi(expected, counts)
        other = counts[cat.other] / total
        diff = max(0.0, other - expected[cat.other])
        entry = {
            "levels": cat.labels(),
            "shares": [float(c / total) if c >= PRIVACY_MIN_ROWS or c == 0 else None for c in counts],
            "training_shares": expected,
            "psi": value, "psi_level": drift_level(value, **psi_levels),
            "unseen_share": float(other) if counts[cat.other] >= PRIVACY_MIN_ROWS or not counts[cat.other] else None,
            "training_other_share": expected[cat.other], "unseen_difference": float(diff),
            "unseen_level": drift_level(diff, **unseen_levels),
        }
        entry["level"] = max(entry["psi_level"], entry["unseen_level"], key=order.__getitem__)
        why = []
        if entry["unseen_level"] != "ok":
            why.append(f"{diff:.0%} more values outside the model's levels than in training "
                       f"(> {unseen_levels[entry['unseen_level']]:.2f})")
        if entry["psi_level"] != "ok":
            why.append(f"level shares PSI {value:.3f} > {psi_levels[entry['psi_level']]:.2f}")
        if why:
            reasons[cat.name] = "; ".join(why)
        out[cat.name] = entry
    return out


def _manifest(run_id: str, plan: ScorePlan, tasks: list[PartitionTask], results: dict[int, dict[str, Any]],
              duplicates: dict[str, int], scores: dict[str, Any], drift: dict[str, Any],
              seconds: dict[str, float]) -> dict[str, Any]:
    options, settings, model = plan.options, plan.settings, plan.model
    parts = [results[t.fragment.index] for t in tasks]
    rows_in = sum(p["rows_in"] for p in parts)
    rows_reused = sum(p["rows_in"] for p in parts if p.get("reused"))
    totals = {
        "rows_in": rows_in,
        "rows_out": sum(p["rows_out"] for p in parts),
        "rows_rejected": sum(p["rows_rejected"] for p in parts),
        # Resume-aware: rows this run scored, and rows of parts reused from an interrupted run.
        "rows_scored": rows_in - rows_reused,
        "rows_reused": rows_reused,
        "nulls_imputed": sum(sum(p["nulls_imputed"].values()) for p in parts),
        "infinite_values": sum(p.get("infinite_values", 0) for p in parts),
        "null_ids": sum(p.get("null_ids", 0) for p in parts),
        **duplicates,
        "parts": len(parts),
        "parts_reused": sum(1 for p in parts if p.get("reused")),
    }
    return {
        "run_id": run_id,
        "engine_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": shown(options.model), "content_hash": model.content_hash,
                  "features": list(model.features), "k": model.k,
                  # What `propensity` is the probability of, e.g. "P(Status = bad)".
                  "target": model.target, "positive_class": positive_class(model),
                  "propensity_of": propensity_label(model),
                  "categoricals": [c.name for c in model.categoricals],
                  # Date features count days back from this date (None: the model has none).
                  "as_of": model.as_of},
        "input": {"path": shown(options.input), "files": plan.dataset.fingerprint(),
                  "fingerprint": _digest(plan.dataset.fingerprint())},
        "output": {"path": shown(options.output), "id_column": plan.id_column,
                   "columns": ["segment", "segment_distance", "propensity",
                               *output_reason_columns(options.reasons, options.reason_contributions)],
                   "keep": list(options.keep)},
        "backend": plan.backend,
        "settings": settings.values(),
        "settings_sources": {name: settings.source(name) for name in settings.values()},
        "config_file": settings.config_file,
        "totals": totals,
        "propensity": {"mean": scores["mean_propensity"], "action_thresholds": scores["action_thresholds"],
                       "histogram": scores["histogram"]},
        # Per-part level counts and score tallies stay out: a part may hold a handful of customers.
        "partitions": [{k: v for k, v in p.items()
                        if k not in ("drift_counts", "fingerprint", "level_counts", "scores", "id_range")}
                       for p in parts],
        "drift": drift,
        "seconds": seconds,
    }


def _files(tasks: list[PartitionTask], results: dict[int, dict[str, Any]], manifest: dict[str, Any]
           ) -> list[dict[str, Any]]:
    """Every data file the output will hold, with its size and SHA-256, so a reader can verify it.

    Sizes and checksums come from the writers (computed on the finished local file before
    it was renamed or uploaded); the run report is not listed (it is no data).
    """
    files = []
    for task in tasks:
        info = results[task.fragment.index]
        name = task.part_path.rsplit("/", 1)[-1]
        if "sha256" in info:
            files.append({"name": name, "rows": info["rows_out"], "bytes": info["bytes"], "sha256": info["sha256"]})
        if info.get("rows_rejected") and "rejected_sha256" in info:
            files.append({"name": f"{REJECTED}/{name}", "rows": info["rows_rejected"],
                          "bytes": info["rejected_bytes"], "sha256": info["rejected_sha256"]})
    return files
