"""Scoring: plan on the client, score on Dask workers, check, then publish atomically.

The client validates the input against the model, plans one task per fragment (file,
row-group range or row range), and commits; workers read, score and write their own
part files (:func:`engine.jobs.partition.score_partition`). Nothing gathers the data.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from engine import __version__
from engine.backends import resolve_backend
from engine.backends.stage import prewarm, stage_settings
from engine.cluster import default_batch_rows, open_runner, run_threads, uses_distributed
from engine.config import Settings, unique_names
from engine.errors import BadRowsError, DriftAlert, EngineError, InputError, UsageError
from engine.io.commit import (
    REJECTED,
    RUN_KEY_METADATA,
    OutputCommitter,
    check_output_dir,
    part_name,
)
from engine.io.dataset import discover, plan_fragments
from engine.io.guard import check_writable, resolve_output
from engine.io.ids import IDS_DIR, bucket_count, count_bucket
from engine.io.validate import require_schema
from engine.jobs import badrows
from engine.jobs.partition import BAD_ROW_POLICIES, PartitionTask, score_partition
from engine.jobs.progress import Progress
from engine.models.artifact import load_model
from engine.models.profile import PSI_ALERT, PSI_EPS, PSI_WARN, drift_level, psi
from engine.models.reasons import prepare_kernel, reason_columns, validate_reasons
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


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def score(options: ScoreOptions, settings: Settings) -> dict[str, Any]:
    """Score ``options.input`` with ``options.model`` into ``options.output``; returns the manifest."""
    t_start = time.perf_counter()
    run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    if settings.on_bad_rows not in BAD_ROW_POLICIES:
        raise UsageError(f"--on-bad-rows must be one of {', '.join(BAD_ROW_POLICIES)}")
    real_output = check_output(options)
    unique_names([k for k in options.keep if k], "--keep")
    model = load_model(options.model)
    id_column = options.id_column or model.id_column
    keep = tuple(k for k in options.keep if k)
    validate_reasons(options.reasons, model.n_features)
    clash = [c for c in keep if c in ("segment", "segment_distance", "propensity", *reason_columns(options.reasons))]
    if clash:
        raise UsageError(f"--keep cannot name an output column: {', '.join(clash)}")
    backend = resolve_backend(options.backend)
    if backend == "cpu" and not uses_distributed(settings, backend):
        # The tasks run in this process: their CPU stage is built while the run is planned.
        prewarm(model, backend, stage_settings(backend, settings.block_rows))
    if options.reasons and not uses_distributed(settings, backend):
        # In-process tasks: load the reason-code kernel in the background (after the scoring
        # kernel, whose numba start-up it shares) while the run is planned.
        prepare_kernel()
    # Workers of an attached cluster run in their own working directory: give them absolute paths.
    dataset = discover(Path(options.input).absolute() if settings.scheduler else options.input)
    require_schema(dataset, numeric=list(model.features), present=[id_column, *keep],
                   hint=f"the model {options.model} needs features: {', '.join(model.features)}",
                   same_type=[id_column, *keep])
    if dataset.num_rows == 0:
        raise InputError(f"input {dataset.root} holds no rows (all {len(dataset.files)} file(s) are empty)")
    fragments = plan_fragments(dataset, settings.partition_rows)
    t_plan = time.perf_counter()

    with OutputCommitter(real_output, overwrite=options.overwrite, resume=options.resume,
                         shown=options.output) as committer:
        committer.prepare()
        fingerprints = {f.path: f.fingerprint() for f in dataset.files}
        run_spec = {"model": model.content_hash, "id": id_column, "keep": keep,
                    "on_bad_rows": settings.on_bad_rows, "compression": settings.compression,
                    "reasons": options.reasons, "backend_independent": True}
        tasks = []
        buckets = bucket_count(dataset.num_rows)
        read_columns = len(dict.fromkeys([id_column, *model.features, *keep]))
        batch_rows = min(settings.batch_rows, settings.partition_rows) if settings.batch_rows else \
            default_batch_rows(run_threads(settings), read_columns, settings.partition_rows)
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
                block_rows=settings.gpu_block_rows if backend == "gpu" else settings.block_rows,
                batch_rows=batch_rows, gpu_tasks=settings.gpu_tasks,
                ids_dir=str(committer.staging / IDS_DIR), id_buckets=buckets, reasons=options.reasons,
            ))
        results: dict[int, dict[str, Any]] = {}
        if options.resume:
            results = _reusable(committer, tasks)
        todo = [t for t in tasks if t.fragment.index not in results]
        progress = Progress("score", len(tasks), mode=options.progress, total_rows=dataset.num_rows,
                            interval=settings.progress_interval_s)
        progress.advance(len(results), rows=sum(r["rows_in"] for r in results.values()))
        def record(summary: dict[str, Any]) -> None:
            results[summary["index"]] = summary
            progress.advance(1, rows=summary["rows_in"])

        try:
            with open_runner(settings, backend) as runner:
                if todo:
                    # The root alone is not enough: an unmounted share still leaves its empty mount point.
                    probe = list(dict.fromkeys([dataset.root, todo[0].fragment.path, todo[-1].fragment.path]))
                    runner.ready(probe, [str(committer.staging)])
                    runner.map(score_partition, todo, "score-partition", on_result=record)
                progress.close()
                duplicates = _count_duplicates(runner, tasks, id_column)
        except KeyboardInterrupt as exc:
            # SIGINT or SIGTERM: staging stays; say how to pick up where this run stopped.
            finished = len(committer.finished_parts())
            if finished:
                exc.resume_hint = (  # type: ignore[attr-defined]
                    f"{finished} finished part(s) are kept in {committer.staging}; rerun the same command "
                    "with --resume to reuse them")
            raise
        finally:
            progress.close()
        shutil.rmtree(committer.staging / IDS_DIR, ignore_errors=True)
        manifest = _manifest(run_id, options, settings, model, backend, dataset, tasks, results,
                             duplicates, {"plan": t_plan - t_start, "score": time.perf_counter() - t_plan})
        _check_counts(committer, tasks, results)
        totals = manifest["totals"]
        if totals["rows_in"] and totals["rows_rejected"] / totals["rows_in"] > settings.max_rejected_fraction:
            # Staging stays: its _rejected/ holds the rejected rows' ids for the user to look at
            # (and --resume reuses the parts once the limit or the data is fixed).
            raise _too_many_rejected(totals, settings, committer.staging / REJECTED,
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
        manifest["seconds"]["total"] = time.perf_counter() - t_start
        # The run report goes into staging before publish, which keeps only the names it is given.
        manifest["report"] = _write_run_report(committer.staging, manifest)
        committer.publish(manifest, keep_parts={part_name(t.fragment.index) for t in tasks} | {SCORE_REPORT})
    alerts = manifest["drift"]["alerts"]
    if options.fail_on_drift and alerts:
        alert = DriftAlert(
            f"drift alert (PSI > {PSI_ALERT:.2f}) on {', '.join(alerts)}; the scores were published to "
            f"{options.output}; see {options.output}/{SCORE_REPORT} and _manifest.json for every PSI"
        )
        alert.manifest = manifest  # type: ignore[attr-defined]  # the run did publish: callers may summarise it
        raise alert
    return manifest


def check_output(options: ScoreOptions) -> Path:
    """Before any work: the output path is allowed, replaceable and writable; its real path.

    Refuses an empty or root ``--output``, one that is, contains or lies inside the input
    or the model (or is or contains the working directory), an existing directory that is
    not an engine score output (even with ``--overwrite``), a previous output without
    ``--overwrite``, and a destination that cannot be written.
    """
    real = resolve_output(options.output, protected={"the input": options.input, "the model": options.model})
    check_output_dir(real, overwrite=options.overwrite, shown=options.output)
    check_writable(real, flag="--output", shown=options.output)
    return real


def _too_many_rejected(totals: dict[str, Any], settings: Settings, rejected_dir: Path,
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


def _write_run_report(staging: Path, manifest: dict[str, Any]) -> str | None:
    """Write ``_report.html`` into staging; its name, or None when it could not be drawn.

    A report that fails to render must not cost the night's scores: the run goes on,
    warns, and says why in the manifest.
    """
    import warnings

    from engine.report.drift import write_score_report

    try:
        write_score_report(manifest, staging / SCORE_REPORT)
    except Exception as exc:  # any rendering failure; the scores themselves are fine
        warnings.warn(f"the run report {SCORE_REPORT} could not be written: {type(exc).__name__}: {exc}",
                      RuntimeWarning, stacklevel=2)
        manifest["report_error"] = f"{type(exc).__name__}: {exc}"
        return None
    return SCORE_REPORT


def _reusable(committer: OutputCommitter, tasks: list[PartitionTask]) -> dict[int, dict[str, Any]]:
    """Finished parts of an interrupted run whose input fingerprint and model hash still match."""
    found = committer.finished_parts()
    reused = {}
    for task in tasks:
        info = found.get(task.fragment.index)
        part = Path(task.part_path)
        if info is None or info.get("run_key") != task.run_key or not part.is_file():
            continue
        rejected = Path(task.rejected_path)
        try:
            # The sidecar and the files must all belong to this run key: a kill between
            # writing a part and its sidecar must not pair one run's part with another's.
            if not _written_by(part, task.run_key, info["rows_out"]):
                continue
            if info["rows_rejected"]:
                if not _written_by(rejected, task.run_key, info["rows_rejected"]):
                    continue
            else:
                rejected.unlink(missing_ok=True)
        except (OSError, KeyError, TypeError):
            continue
        reused[task.fragment.index] = info | {"reused": True}
    return reused


def _written_by(path: Path, run_key: str, rows: int) -> bool:
    """Whether ``path`` is a complete Parquet file of ``rows`` rows written under ``run_key``."""
    try:
        meta = pq.read_metadata(path)
    except Exception:  # missing, truncated, not Parquet: not reusable, whatever the reason
        return False
    key = (meta.metadata or {}).get(RUN_KEY_METADATA, b"").decode(errors="replace")
    return key == run_key and meta.num_rows == rows


def _count_duplicates(runner: Any, tasks: list[PartitionTask], id_column: str) -> dict[str, int]:
    """Exact duplicate-id count over every scored row, one reduce task per id bucket."""
    buckets = tasks[0].id_buckets if tasks else 1
    sources = [(t.ids_dir, t.run_key, t.part_path) for t in tasks]
    jobs = [functools.partial(count_bucket, sources, id_column, b, buckets) for b in range(buckets)]
    pairs = runner.map(_call, jobs, "count-duplicate-ids")
    return {"duplicate_rows": sum(p[0] for p in pairs), "duplicated_ids": sum(p[1] for p in pairs)}


def _call(job: Callable[[], Any]) -> Any:
    return job()


def _check_counts(committer: OutputCommitter, tasks: list[PartitionTask],
                  results: dict[int, dict[str, Any]]) -> None:
    """Every fragment has exactly one part whose rows match: in = out + rejected."""
    for task in tasks:
        frag = task.fragment
        info = results.get(frag.index)
        if info is None:
            raise EngineError(f"internal: no result for {frag.describe()}")
        part_rows = pq.read_metadata(task.part_path).num_rows
        if part_rows != info["rows_out"] or info["rows_in"] != info["rows_out"] + info["rows_rejected"] \
                or info["rows_in"] != frag.num_rows:
            raise EngineError(
                f"internal: part {Path(task.part_path).name} of {frag.describe()} has {part_rows} rows, "
                f"expected {info['rows_out']} (in {info['rows_in']}, rejected {info['rows_rejected']})"
            )


def _drift(model: Any, results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    profile = model.profile or {}
    feats = profile.get("features", {})
    out: dict[str, Any] = {"features": {}}
    summed: dict[str, np.ndarray] = {}
    prop = None
    segs = np.zeros(model.k, dtype=np.int64)
    for info in results.values():
        counts = info.get("drift_counts", {})
        for name, c in counts.get("features", {}).items():
            summed[name] = summed.get(name, 0) + np.asarray(c)
        if "propensity" in counts:
            prop = (prop if prop is not None else 0) + np.asarray(counts["propensity"])
        segs += np.asarray(counts.get("segments", np.zeros(model.k)), dtype=np.int64)
    def _fractions(counts: Any) -> list[float]:
        counts = np.asarray(counts, dtype=np.float64)
        return (counts / max(1.0, counts.sum())).tolist()

    for name, c in summed.items():
        value = psi(feats[name]["bin_fractions"], c)
        out["features"][name] = {"psi": value, "level": drift_level(value), "fractions": _fractions(c),
                                 "training_fractions": feats[name]["bin_fractions"]}
    if prop is not None and "propensity" in profile:
        value = psi(profile["propensity"]["bin_fractions"], prop)
        out["propensity"] = {"psi": value, "level": drift_level(value), "fractions": _fractions(prop),
                             "training_fractions": profile["propensity"]["bin_fractions"]}
    shares = segs / max(1, segs.sum())
    out["segments"] = {"shares": shares.tolist(), "counts": segs.tolist()}
    if "segment_shares" in profile:
        value = psi(profile["segment_shares"], segs)
        out["segments"].update({"training_shares": profile["segment_shares"], "psi": value,
                                "level": drift_level(value)})
    # One list per level, named as the terminal summary, the run report and --fail-on-drift name them.
    levels = [(n, d["level"]) for n, d in out["features"].items()]
    levels += [(n, out[n]["level"]) for n in ("propensity",) if n in out]
    levels += [("segment shares", out["segments"]["level"])] if "level" in out["segments"] else []
    out["thresholds"] = {"warning": PSI_WARN, "alert": PSI_ALERT, "eps": PSI_EPS}
    out["alerts"] = [n for n, lvl in levels if lvl == "alert"]
    out["warnings"] = [n for n, lvl in levels if lvl == "warning"]
    return out


def _manifest(run_id: str, options: ScoreOptions, settings: Settings, model: Any, backend: str,
              dataset: Any, tasks: list[PartitionTask], results: dict[int, dict[str, Any]],
              duplicates: dict[str, int], seconds: dict[str, float]) -> dict[str, Any]:
    parts = [results[t.fragment.index] for t in tasks]
    totals = {
        "rows_in": sum(p["rows_in"] for p in parts),
        "rows_out": sum(p["rows_out"] for p in parts),
        "rows_rejected": sum(p["rows_rejected"] for p in parts),
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
        "model": {"path": str(Path(options.model).resolve()), "content_hash": model.content_hash,
                  "features": list(model.features), "k": model.k},
        "input": {"path": str(Path(options.input).resolve()), "files": dataset.fingerprint(),
                  "fingerprint": _digest(dataset.fingerprint())},
        "output": {"path": str(Path(options.output).resolve()), "id_column": tasks[0].id_column if tasks else None,
                   "columns": ["segment", "segment_distance", "propensity", *reason_columns(options.reasons)],
                   "keep": list(options.keep)},
        "backend": backend,
        "settings": asdict(settings),
        "totals": totals,
        "partitions": [{k: v for k, v in p.items() if k not in ("drift_counts", "fingerprint")} for p in parts],
        "drift": _drift(model, results),
        "seconds": seconds,
    }
