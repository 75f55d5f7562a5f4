"""The ``engine`` command line: parses flags, calls the library, prints. No logic lives here.

Results (summary lines, ``model show``, the ``--dry-run`` plan, ``info``) go to stdout;
progress and diagnostics (progress lines, drift lines, warnings, ``report: ...``,
errors) go to stderr, where tqdm, rich and Dask write theirs, so ``engine score ... >
summary.txt`` captures just the result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from engine import __version__
from engine.errors import EngineError, Terminated, exit_code_table

F = TypeVar("F", bound=Callable[..., Any])

# One line per code ("\b" keeps the paragraph's line breaks in click's and typer's help).
EXIT_CODES_HELP = "\b\nExit codes:\n" + exit_code_table()


def _plain_flags() -> None:
    """No ``<bool>`` after a flag that takes no value (``--overwrite``, ``--quiet``).

    typer's rich help prints every option's type, and for an on/off flag that reads as if
    it took a value (``--overwrite <bool>``). Its options show their ``metavar`` instead of
    the type when one is set; a flag has none to show, so it gets no type column at all.
    """
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "_engine_plain_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._engine_plain_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags()

app = typer.Typer(
    name="engine",
    help="Batch scoring of customer Parquet data: K-means segments and logistic propensity, "
         "on Dask, on CUDA GPUs or the CPU.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Inspect and import model artifacts.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def fail_cleanly(fn: F) -> F:
    """Set the log format, and turn the engine's own errors into one message and their exit code.

    In json mode the message is the last stderr line, ``{"event": "error", "exit_code": N, ...}``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from engine import log

        try:
            log.set_format(_value(kwargs.get("log_format")) or log.resolve_format(None))
        except EngineError as exc:
            _error(f"error ({exc.kind}): {exc}", exc.exit_code, exc.kind)
        from engine.api_checks import from_cli

        try:
            _command_signals()
            with _sigterm_interrupts(), from_cli():
                return fn(*args, **kwargs)
        except EngineError as exc:
            from engine.errors import ClusterError

            # A cluster lost mid-run leaves its finished parts staged: say how to keep them.
            hint = (" (parts finished before the failure stay staged: rerun with --resume to reuse them)"
                    if fn.__name__ == "score" and isinstance(exc, ClusterError) else "")
            # File names that are not UTF-8 arrive as lone surrogates: shown as \xNN, never a crash.
            message = f"error ({exc.kind}): {exc}{hint}".encode("utf-8", "surrogateescape")
            # A run that published before failing (exit 9) keeps its counts on its last JSON line.
            _error(message.decode("utf-8", "backslashreplace"), exc.exit_code, exc.kind,
                   **(getattr(exc, "log_fields", None) or {}))
        except KeyboardInterrupt as exc:
            # Ctrl-C (130) or a scheduler's SIGTERM (143): the same clean end, each its code.
            code = exc.exit_code if isinstance(exc, Terminated) else 130
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            hint = getattr(exc, "resume_hint", None)
            _error(f"{what}: nothing was published" + (f"; {hint}" if hint else ""), code, what)

    return wrapper  # type: ignore[return-value]


def _echo(line: str) -> None:
    """A stdout line that names things from the data (levels, column names): on one line,
    control characters escaped, credentials redacted."""
    from engine.safe_text import printable, redact

    typer.echo(printable(redact(line)))


def _error(message: str, code: int, kind: str, **fields: Any) -> None:
    """The failed run's last stderr line (an ``error`` event, with ``fields``), then its exit code."""
    from engine import log
    from engine.safe_text import printable

    # One line whatever a name in it holds (a column or level with a newline).
    log.event("error", printable(message), level="error", exit_code=code, kind=kind, **fields)
    raise typer.Exit(code) from None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` in the main thread, as Ctrl-C does.

    Python's default for SIGTERM is to die at once: no message, staging in any state.
    Outside the main thread (a library caller's worker) signals cannot be set: left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signum: int, _frame: Any) -> None:
        _arm_forced_exit(143)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"engine {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Batch scoring engine."""


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in values.split(",") if v.strip()] if values else []


class Backend(str, Enum):
    """``--backend``: typer lists, validates and completes the choices."""

    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class ProgressMode(str, Enum):
    """``--progress`` (see engine/jobs/progress.py)."""

    auto = "auto"
    bar = "bar"
    log = "log"
    quiet = "quiet"


class OnBadRows(str, Enum):
    """``--on-bad-rows`` (see engine/jobs/partition.py)."""

    impute = "impute"
    reject = "reject"
    fail = "fail"


class LogFormat(str, Enum):
    """``--log-format`` (see engine/log.py)."""

    text = "text"
    json = "json"


def _value(choice: Enum | str | None) -> str | None:
    return choice.value if isinstance(choice, Enum) else choice


def _progress_mode(quiet: bool, progress: ProgressMode | str) -> str:
    return "quiet" if quiet else str(_value(progress))


def _say(message: str, event: str = "note", level: str = "info", **fields: Any) -> None:
    """A diagnostic line on stderr (stdout keeps only results): text, or a JSON event."""
    from engine import log

    log.event(event, message, level=level, **fields)


BackendOpt = Annotated[Backend, typer.Option("--backend", help="auto picks the GPU when one is usable.")]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="Settings file (TOML). Default: $ENGINE_CONFIG, else ~/.config/engine/engine.toml ($XDG_CONFIG_HOME) if it exists, else built-in defaults; never the working directory.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; the summary line still prints.")]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (also $ENGINE_SCHEDULER).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Start a local Dask cluster of N worker processes.")]
ConnectTimeoutOpt = Annotated[float | None, typer.Option("--connect-timeout", help="Seconds to wait for the scheduler (and for a first worker) before failing with exit 8 (default 10).")]
LogFormatOpt = Annotated[LogFormat | None, typer.Option("--log-format", help="text (default) or json: every stderr line one JSON object with ts, level, event and its fields (also $ENGINE_LOG_FORMAT).", show_default=False)]
SchemaOpt = Annotated[str | None, typer.Option("--schema", help="CSV input only: column types by name, e.g. area_code:string,tenure:int64 (default: inferred; score reads the model's own types).")]
ProgressOpt = Annotated[ProgressMode, typer.Option("--progress", help="auto: a bar when stderr is a terminal, a log line every few seconds otherwise. Progress goes to stderr.")]


@app.command()
@fail_cleanly
def generate(
    rows: Annotated[int, typer.Option("--rows", help="Number of customers.")],
    files: Annotated[int, typer.Option("--files", help="Number of Parquet files.")],
    out: Annotated[str, typer.Option("--output", "--out", help="Output directory (new, empty, or earlier `engine generate` data with --overwrite); --out is an alias.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same data.")] = 42,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace data that `engine generate` wrote (never other files).")] = False,
    row_group_rows: Annotated[int, typer.Option("--row-group-rows", help="Rows per Parquet row group.")] = 131_072,
    log_format: LogFormatOpt = None,
) -> None:
    """Write synthetic customers (about 20 CRM features, nulls, a region string, hidden archetypes,
    and a `churned` target from a known logistic model) as Parquet files."""
    from engine.jobs.generate import generate as run

    t0 = time.perf_counter()
    result = run(rows, files, out, seed=seed, overwrite=overwrite, row_group_rows=row_group_rows)
    dt = time.perf_counter() - t0
    typer.echo(f"generated {result.rows:,} customers in {result.files} file(s) under {result.out} "
               f"in {dt:.1f}s ({result.rows / dt:,.0f} rows/s)")


@app.command()
@fail_cleanly
def train(
    input: Annotated[str, typer.Option("--input", help="Parquet file, directory (recursive) or hive-partitioned directory; or a CSV file or directory of CSV files.")],
    output: Annotated[str, typer.Option("--output", help="Model directory to write.")],
    target: Annotated[str | None, typer.Option("--target", help="Binary 0/1 target column, e.g. churned (or --offers).")] = None,
    offers: Annotated[str | None, typer.Option("--offers", help="Offer catalogue (TOML): one calibrated propensity head per offer, for `engine recommend` (instead of --target).")] = None,
    k: Annotated[int, typer.Option("--k", help="Number of K-means segments.")] = 8,
    features: Annotated[str | None, typer.Option("--features", help="Comma list; default every column but the id and target (numbers; strings, dictionary codes and booleans as categorical; dates as days before --as-of).")] = None,
    categorical: Annotated[str | None, typer.Option("--categorical", help="Comma list of integer-coded columns (store id, region code) to take as categorical.")] = None,
    positive: Annotated[str | None, typer.Option("--positive", help="The target's positive class, for a string, boolean or integer target (e.g. Yes).")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Date features count days before this date, YYYY-MM-DD (default today in UTC); recorded in the model.")] = None,
    id_column: Annotated[str, typer.Option("--id-column", help="Customer id column.")] = "customer_id",
    rows_are_events: Annotated[bool, typer.Option("--rows-are-events", help="Rows are events and an id may repeat (customers are counted by distinct id for the privacy minimum); without it, a repeated id is refused (exit 3).")] = False,
    sample_rows: Annotated[int | None, typer.Option("--sample-rows", help="Train on a uniform sample of N rows.")] = None,
    holdout: Annotated[float | None, typer.Option("--holdout", help="Share of rows held out to evaluate the procedure (the final model then refits on every row). Default: 0.2 from 20,000 labelled rows up; below, cross-validated metrics.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of sampling, split and fitting.")] = 42,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing engine model at --output (atomically, once the new one is complete).")] = False,
    c_value: Annotated[float | None, typer.Option("--C", help="Fix the logistic regression's C (L2, no search).")] = None,
    c_grid: Annotated[str | None, typer.Option("--c-grid", help="Comma list of C values to search by cross-validation (default 1e-4 ... 100, half-decades).")] = None,
    cv_folds: Annotated[int, typer.Option("--cv-folds", help="Folds of the stratified cross-validation that chooses C.")] = 5,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html beside the model.")] = True,
    schema: SchemaOpt = None,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="Also log the run to MLflow ($MLFLOW_TRACKING_URI): parameters, CV metrics, holdout AUC, the model.")] = False,
    backend: BackendOpt = Backend.auto,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    connect_timeout: ConnectTimeoutOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    progress: ProgressOpt = ProgressMode.auto,
    log_format: LogFormatOpt = None,
) -> None:
    """Fit a segmenter (K-means) and a propensity model (logistic regression, its C chosen by
    cross-validation), evaluate them (a holdout, or cross-validation below 20,000 rows), refit
    on every labelled row, and write a portable model artifact (JSON + arrays, no pickle).

    With --scheduler or --workers the Dask workers read the (sampled) rows; fitting runs in
    this process (on its GPU via cuML with the GPU backend), bounded by --sample-rows."""
    from engine.api import train as run
    from engine.jobs.progress import resolve_mode
    from engine.models.explain import feature_counts, features_text
    from engine.models.target import propensity_label

    t0 = time.perf_counter()
    if mlflow:
        from engine.integrations.mlflow import tracking_uri
        from engine.io.uri import local_only

        tracking_uri()  # no server named: exit 2 before training, not after
        local_only(output, "--output")
    mode = resolve_mode(_progress_mode(quiet, progress))
    # Step lines would tear a live bar apart: with a bar, the bar alone tells the progress.
    say = ((lambda m: _say(f"[train] {m}", "train.step", step=m)) if mode == "log" else (lambda _m: None))
    trained = run(input, target, output, k=k, features=_split(features) or None, id_column=id_column,
                  sample_rows=sample_rows, holdout=holdout, seed=seed, overwrite=overwrite, C=c_value,
                  c_grid=_floats(c_grid, "--c-grid"), cv_folds=cv_folds, report=report, backend=backend.value,
                  scheduler=scheduler, workers=workers, connect_timeout=connect_timeout, config=config,
                  progress=mode, categorical=_split(categorical) or None, positive=positive,
                  as_of=as_of, rows_are_events=rows_are_events, on_step=say, schema=schema, offers=offers)
    result = trained.training  # type: ignore[attr-defined]
    m = trained.metrics
    if not quiet:
        _print_metrics(m)
    label, ev = _evaluation(m)
    auc = ev.get("auc")
    lg = trained.artifact.params.get("logistic", {})
    ev_kind = (m.get("evaluation") or {}).get("kind")
    where = {"holdout": f"metrics from a {result.rows_holdout:,}-row holdout",
             "cv": f"metrics from {(m.get('evaluation') or {}).get('folds')}-fold CV"}.get(ev_kind, "no holdout")
    seconds = time.perf_counter() - t0
    if not quiet:
        for line in _column_lines(trained.artifact):
            _echo(line)
    null_target = trained.artifact.params.get("rows_null_target", 0)
    counts = feature_counts(trained.artifact)
    label_p = propensity_label(trained.artifact)
    _echo(
        f"trained on {result.rows_train:,} rows ({where}"
        + (f"; {null_target:,} rows with a null target left out" if null_target else "")
        + f"), {features_text(trained.artifact)}, k={trained.k} in {seconds:.1f}s; propensity = {label_p}"
        + (f"; {label} AUC {auc:.4f}" if auc is not None else "")
        + (f"; logistic {lg['penalty'].upper()} C={lg['C']:.4g}" if lg else "")
        + f"; model {result.path} ({trained.content_hash[:19]})"
    )
    if result.report_path:
        _say(f"report: {result.report_path}", "report", path=result.report_path)
    if mlflow:
        from engine.integrations.mlflow import log_model
        from engine.models.artifact import load_model

        logged = log_model(result.path, load_model, run_name=f"engine train {os.path.basename(str(result.path).rstrip('/'))}")
        _say(f"mlflow: run {logged['run_id']} ({logged['model_uri']})", "train.mlflow", **logged)
    _say("", "train.finished", exit_code=0, rows_read=result.rows_read, rows_train=result.rows_train,
         rows_holdout=result.rows_holdout, features=counts["features"], feature_counts=counts,
         propensity_of=label_p, k=trained.k,
         auc=auc, evaluation=ev_kind, seconds=round(seconds, 3), model=result.path)


def _column_lines(model: Any) -> list[str]:
    """Every feature with its kind, and every column left out with the reason (train summary, `model show`)."""
    from engine.models.explain import column_summary

    return column_summary(model)


def _floats(values: str | None, flag: str) -> list[float] | None:
    if values is None:
        return None
    try:
        return [float(v) for v in _split(values)]
    except ValueError:
        from engine.errors import UsageError

        raise UsageError(f"{flag} must be a comma list of numbers, e.g. 0.01,0.1,1; got {values!r}") from None


def _evaluation(metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The metrics that describe unseen rows (holdout or cross-validated), else the training rows'."""
    for label in ("holdout", "cv"):
        if metrics.get(label):
            return label, metrics[label]
    return "train", metrics.get("train", {})


def _print_metrics(metrics: dict[str, Any]) -> None:
    label, hold = _evaluation(metrics)
    if hold:
        typer.echo(f"{label}: AUC {hold.get('auc') if hold.get('auc') is None else format(hold['auc'], '.4f')}  "
                   f"log loss {hold['log_loss']:.4f}  accuracy@0.5 {hold['accuracy']:.4f}  "
                   f"base rate {hold['base_rate']:.4f}  rows {hold['rows']:,}")
    if "kmeans_inertia_train" in metrics:
        typer.echo(f"K-means inertia (all training rows): {metrics['kmeans_inertia_train']:.6g} "
                   f"({metrics['kmeans_inertia_train_per_row']:.4f} per row)")


@app.command(epilog=EXIT_CODES_HELP)
@fail_cleanly
def score(
    input: Annotated[str, typer.Option("--input", help="Parquet file, directory (recursive) or hive-partitioned directory; or a CSV file or directory of CSV files.")],
    model: Annotated[str, typer.Option("--model", help="Model directory from `engine train` or `engine model import-sklearn`.")],
    output: Annotated[str, typer.Option("--output", help="Output directory: part files, _manifest.json, _SUCCESS.")],
    id_column: Annotated[str | None, typer.Option("--id-column", help="Customer id column; default the model's.")] = None,
    keep: Annotated[str | None, typer.Option("--keep", help="Comma list of input columns to pass through.")] = None,
    backend: BackendOpt = Backend.auto,
    gpus: Annotated[str | None, typer.Option("--gpus", help="GPU backend on one node: all | 0,1,... (one dask-cuda worker per GPU).")] = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    connect_timeout: ConnectTimeoutOpt = None,
    threads_per_worker: Annotated[int | None, typer.Option("--threads-per-worker", help="Threads per Dask worker.")] = None,
    partition_rows: Annotated[int | None, typer.Option("--partition-rows", help="Most rows one task reads; larger files are split.")] = None,
    batch_rows: Annotated[int | None, typer.Option("--batch-rows", help="Rows a task decodes, scores and writes at a time; default from the threads (memory stays bounded).")] = None,
    block_rows: Annotated[int | None, typer.Option("--block-rows", help="Rows per block of the CPU scoring kernel (default 16384).")] = None,
    on_bad_rows: Annotated[OnBadRows | None, typer.Option("--on-bad-rows", help="For rows with ±inf features or a null id (default reject).")] = None,
    max_rejected_fraction: Annotated[float | None, typer.Option("--max-rejected-fraction", help="Fail (exit 4, nothing published) above this share of rejected rows (default 0.01).")] = None,
    unique_ids: Annotated[bool, typer.Option("--unique-ids", help="Fail (exit 4) if any id appears twice.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing engine score output (atomically, at publish); never other files.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Reuse the parts of an interrupted run of the same input and model.")] = False,
    fail_on_drift: Annotated[bool, typer.Option("--fail-on-drift", help="Exit 9 after publishing if any distribution or null share reaches the alert level (PSI 0.25, null share off by 0.20 by default; the drift section of the settings file).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the input against the model and print the plan (fragments, output columns, settings and their sources, what would be replaced); reads footers only (and the dictionary pages of categorical text columns, checked to be UTF-8), writes nothing. Exit codes as for a real run.")] = False,
    reasons: Annotated[int, typer.Option("--reasons", help="Add reason_1..reason_N: per customer, the features that raise the propensity most, as feature:high or feature:low (which side of the average customer the value lies on; null where fewer than N raise it). 0 = none.")] = 0,
    reason_contributions: Annotated[bool, typer.Option("--reason-contributions", help="With --reasons: add reason_i_contribution, each reason's contribution to the logit (log-odds) against the average customer.")] = False,
    schema: SchemaOpt = None,
    upsert: Annotated[bool, typer.Option("--upsert", help="With a postgresql:// --output: merge the scores into the engine's table (INSERT ... ON CONFLICT on the id) instead of replacing it.")] = False,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    progress: ProgressOpt = ProgressMode.auto,
    log_format: LogFormatOpt = None,
) -> None:
    """Score every customer: `segment` (int32), `segment_distance` (float32), `propensity`
    (float32), one Dask task per Parquet fragment, published atomically. --output may be a
    Postgres table: postgresql://HOST:PORT/DB?table=SCHEMA.NAME (see README "Postgres output")."""
    from engine.api import ScoreSummary, score_plan
    from engine.errors import DriftAlert
    from engine.jobs.score import execute
    from engine.sinks.postgres import is_postgres_uri

    mode = _progress_mode(quiet, progress)
    if is_postgres_uri(output) or upsert:
        if not is_postgres_uri(output):
            from engine.errors import UsageError

            raise UsageError("--upsert is for a postgresql:// --output (a Parquet output is replaced whole)")
        from engine.sinks.postgres import score_to_postgres

        manifest = score_to_postgres(
            input, model, output, upsert=upsert, overwrite=overwrite, say=(lambda _m: None) if mode == "quiet" else _say,
            id_column=id_column, keep=_split(keep), backend=backend.value, gpus=gpus, scheduler=scheduler,
            workers=workers, connect_timeout=connect_timeout, threads_per_worker=threads_per_worker,
            partition_rows=partition_rows, batch_rows=batch_rows, block_rows=block_rows,
            on_bad_rows=_value(on_bad_rows), max_rejected_fraction=max_rejected_fraction, unique_ids=unique_ids,
            resume=resume, fail_on_drift=fail_on_drift, reasons=reasons, reason_contributions=reason_contributions,
            config=config, progress=mode, dry_run=dry_run)
        if dry_run:
            for line in _plan_lines(manifest["dry_run"], resume):
                typer.echo(line)
            return
        _print_score_summary(manifest, quiet)
        pg = manifest["postgres"]
        _say(f"postgres: {pg['rows']:,} rows -> {pg['table']} ({pg['mode']}; COPY {pg['copy_seconds']:.1f}s, "
             f"swap {pg['swap_seconds']:.2f}s)", "score.postgres", **pg)
        return
    plan = score_plan(input, model, output, id_column=id_column, keep=_split(keep), backend=backend.value,
                      gpus=gpus, scheduler=scheduler, workers=workers, connect_timeout=connect_timeout,
                      threads_per_worker=threads_per_worker, partition_rows=partition_rows,
                      batch_rows=batch_rows, block_rows=block_rows, on_bad_rows=_value(on_bad_rows),
                      max_rejected_fraction=max_rejected_fraction, unique_ids=unique_ids, overwrite=overwrite,
                      resume=resume, fail_on_drift=fail_on_drift, reasons=reasons,
                      reason_contributions=reason_contributions, config=config, progress=mode, dry_run=dry_run,
                      schema=schema)
    if dry_run:
        for line in _plan_lines(plan.describe(), resume):
            typer.echo(line)
        return
    try:
        manifest = execute(plan, say=(lambda _m: None) if mode == "quiet" else _say)
    except DriftAlert as exc:
        # The scores were published: summarise the run before the error and its exit code 9,
        # whose JSON line carries the same counts as score.finished would have.
        if getattr(exc, "manifest", None):
            _print_score_summary(exc.manifest, quiet)  # type: ignore[attr-defined]
            exc.log_fields = _score_counts(ScoreSummary.from_manifest(exc.manifest))  # type: ignore[attr-defined]
        raise
    _print_score_summary(manifest, quiet)
    _say("", "score.finished", exit_code=0, **_score_counts(ScoreSummary.from_manifest(manifest)))


def _score_counts(s: Any) -> dict[str, Any]:
    """A published run's counts, as its last JSON line carries them (score.finished or the exit-9 error)."""
    return {"published": True, "rows_in": s.rows_in, "rows_scored": s.rows_scored,
            "rows_rejected": s.rows_rejected, "rows_out": s.rows_out, "rows_reused": s.rows_reused,
            "parts": s.parts, "seconds": round(s.seconds, 3), "backend": s.backend,
            "drift_alerts": list(s.drift_alerts), "output": s.output,
            "propensity_of": s.propensity_of}


@app.command(epilog=EXIT_CODES_HELP)
@fail_cleanly
def recommend(
    model: Annotated[str, typer.Option("--model", help="Model directory from `engine train --offers`.")],
    input: Annotated[str, typer.Option("--input", help="Parquet file, directory (recursive) or hive-partitioned directory.")],
    output: Annotated[str, typer.Option("--output", help="Output directory: part files (id, rank, offer, propensity, expected_value, reason; rule with a catalogue naming `rules`), _manifest.json, _SUCCESS.")],
    offers: Annotated[str | None, typer.Option("--offers", help="Offer catalogue (TOML) to use instead of the model's: values, costs, rules, top and budgets may change; targets may not.")] = None,
    top: Annotated[int | None, typer.Option("--top", help="Offers per customer, 1-25 (default the catalogue's `top`).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Customer id column; default the model's.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing engine output (atomically, at publish); never other files.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Reuse the parts of an interrupted run of the same input, model, catalogue and prices.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the model, catalogue, input and output and print the plan; reads footers only, writes nothing.")] = False,
    on_bad_rows: Annotated[OnBadRows | None, typer.Option("--on-bad-rows", help="For rows with ±inf features or a null id (default reject).")] = None,
    max_rejected_fraction: Annotated[float | None, typer.Option("--max-rejected-fraction", help="Fail (exit 4, nothing published) above this share of rejected rows (default 0.01).")] = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    connect_timeout: ConnectTimeoutOpt = None,
    threads_per_worker: Annotated[int | None, typer.Option("--threads-per-worker", help="Threads per Dask worker.")] = None,
    partition_rows: Annotated[int | None, typer.Option("--partition-rows", help="Most rows one task reads; larger files are split.")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="GPU backend on one node: all | 0,1,... (one dask-cuda worker per GPU, as engine score's).")] = None,
    budget_sample_rows: Annotated[int, typer.Option("--budget-sample-rows", min=1, help="Rows of a uniform sample the budgets' first prices are found on (at least the input's rows: every row, exact prices; docs/offers.md).")] = 50_000,
    backend: BackendOpt = Backend.auto,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    progress: ProgressOpt = ProgressMode.auto,
    log_format: LogFormatOpt = None,
) -> None:
    """Each customer's top N eligible offers by expected value (propensity x value - cost), in long
    format, with budgets honoured by dual prices; published atomically like `engine score`."""
    from engine.config import load_settings
    from engine.jobs.recommend import RecommendOptions, execute, plan_recommend

    mode = _progress_mode(quiet, progress)
    settings = load_settings(config, on_bad_rows=_value(on_bad_rows), max_rejected_fraction=max_rejected_fraction,
                             scheduler=scheduler, workers=workers, connect_timeout_s=connect_timeout,
                             threads_per_worker=threads_per_worker, partition_rows=partition_rows, gpus=gpus)
    plan = plan_recommend(RecommendOptions(input=input, model=model, output=output, offers=offers, top=top,
                                           id_column=id_column, overwrite=overwrite, resume=resume,
                                           progress=mode, backend=backend.value, sample_rows=budget_sample_rows),
                          settings)
    if dry_run:
        d = plan.describe()
        typer.echo(f"dry run: recommend {d['rows']:,} rows in {d['fragments']} fragment(s) of {d['files']} file(s) "
                   f"from {d['input']}")
        typer.echo(f"  model {d['model']} ({d['model_hash'][:19]}); catalogue {d['catalogue']}: "
                   f"{len(d['offers'])} offer(s), top {d['top']}, minimum expected value {d['min_expected_value']}")
        if d["budgets"]:
            typer.echo("  budgets: " + ", ".join(f"{k} {v:,}" for k, v in d["budgets"].items()))
        if d.get("rules"):
            typer.echo(f"  rules: {d['rules']['path']} ({d['rules']['rules']:,} rules, {d['rules']['form']} form)")
        typer.echo(f"  output columns: {', '.join(d['output_columns'])}")
        typer.echo(f"  bad rows: {d['on_bad_rows']} (at most {d['max_rejected_fraction']:g} of the rows rejected)")
        typer.echo(f"  backend {d['backend']}, tasks on {d['cluster']}")
        typer.echo(f"  output {d['output']['path']}: holds {d['output']['holds']}")
        typer.echo("  nothing was read beyond footers and nothing was written")
        return
    manifest = execute(plan, say=(lambda _m: None) if mode == "quiet" else (lambda m: _say(m, "recommend.note")))
    t = manifest["totals"]
    if not quiet:
        for o in manifest["offers"]:
            cust = "<20" if o["customers"] is None else f"{o['customers']:,}"
            ev = "-" if o["expected_value"] is None else f"{o['expected_value']:,.2f}"
            price = ("withdrawn" if o.get("withdrawn") else "not shown: too few customers" if o["lambda"] is None
                     else f"{o['lambda']:.6g}")
            budget = "" if o["budget"] is None else f"  budget {o['budget']:,} (price {price})"
            ruled = "" if "with_rule" not in o else \
                f"  with a rule {'<20' if o['with_rule'] is None else format(o['with_rule'], ',')}"
            typer.echo(f"  {o['offer']:<24} customers {cust:>10}  expected value {ev:>14}{budget}{ruled}")
        if manifest.get("budgets"):
            b = manifest["budgets"]
            gap = "-" if b["gap"] is None else f"{b['gap']:.2%}"
            typer.echo(f"  budgets: {b['passes']} pass(es); achieved {b['achieved_value']:,.2f}, dual bound "
                       f"{b['dual_bound'] if b['dual_bound'] is None else format(b['dual_bound'], ',.2f')} (gap at most {gap})"
                       + (f"; prices that are cuts: {', '.join(b['cut_offers'])}" if b.get("cut_offers") else ""))
    secs = manifest["seconds"]["total"]
    rejected = f" ({t['rows_rejected']:,} rows rejected: see _rejected/)" if t.get("rows_rejected") else ""
    typer.echo(f"recommended {t['rows_out']:,} offers to {t['customers_with_offer']:,} of {t['rows_in']:,} customers "
               f"in {t['parts']} part(s) in {secs:.1f}s on {manifest['backend']} -> {manifest['output']['path']}{rejected}")
    _say("", "recommend.finished", exit_code=0, rows_in=t["rows_in"], rows_out=t["rows_out"], parts=t["parts"],
         seconds=round(secs, 3), output=manifest["output"]["path"], backend=manifest["backend"])


MAX_PLAN_FRAGMENTS = 40


def _plan_lines(plan: dict[str, Any], resume: bool) -> list[str]:
    """``engine score --dry-run``: the plan as text for a person (stdout)."""
    inp, model, out = plan["input"], plan["model"], plan["output"]
    lines = ["plan (dry run: footers and dictionary pages read, nothing written)",
             f"input   {inp['path']}: {inp['files']} file(s), {inp['rows']:,} rows",
             f"model   {model['path']} ({model['content_hash'][:19]}): {model['features']} features, k={model['k']}",
             f"backend {plan['backend']}, tasks on {plan['cluster']}",
             f"fragments: {len(plan['fragments'])} (one task each)"]
    for f in plan["fragments"][:MAX_PLAN_FRAGMENTS]:
        lines.append(f"  {f['part']}  {f['rows']:>12,} rows  {f['fragment']}")
    if len(plan["fragments"]) > MAX_PLAN_FRAGMENTS:
        rest = plan["fragments"][MAX_PLAN_FRAGMENTS:]
        lines.append(f"  ... and {len(rest):,} more fragment(s), {sum(f['rows'] for f in rest):,} rows")
    lines.append("output columns:")
    lines += [f"  {c['name']:<24} {c['type']}" for c in plan["columns"]]
    lines.append(f"settings (file: {plan['config_file'] or 'none, built-in defaults'}):")
    for name, v in plan["settings"].items():
        value = list(v["value"]) if isinstance(v["value"], tuple) else v["value"]
        shown = f"{value} (auto)" if v.get("auto") else str(value)
        lines.append(f"  {name:<24} {shown:<16} ({v['source']})")
    lines.append(f"output  {out['path']}: holds {out['holds']}"
                 + ("; replaced atomically at publish" if out.get("replaced") else ""))
    if out.get("staged_parts"):
        lines.append(f"staged  {out['staged_parts']} part(s) of an interrupted run: "
                     + ("reused where input, model and options still match" if resume
                        else "would be discarded (add --resume to reuse them)"))
    return lines


def _drift_lines(drift: dict[str, Any], quiet: bool) -> list[str]:
    """Alerts always, warnings and the all-clear unless quiet; each says why (PSI or nulls)."""
    reasons = drift.get("reasons", {})

    def why(name: str) -> str:
        if name in reasons:
            # Reasons never carry the name (an older manifest's may: shown once either way).
            text = reasons[name]
            return text if text.startswith((name + " ", name + ":")) else f"{name} {text}"
        d = drift["features"].get(name) or drift.get(name) or drift.get("segments", {})
        return f"{name} {float(d.get('psi', 0.0)):.3f}"

    th = drift.get("thresholds", {"warning": 0.10, "alert": 0.25})
    levels = (f"PSI > {th['alert']:.2f}" + (f" or null share off by > {th['null_alert']:.2f}"
                                             if "null_alert" in th else ""),
              f"PSI > {th['warning']:.2f}" + (f" or null share off by > {th['null_warning']:.2f}"
                                               if "null_warning" in th else ""))
    lines = []
    if drift.get("alerts"):
        lines.append(f"drift ALERT ({levels[0]}): " + ", ".join(why(n) for n in drift["alerts"]))
    if drift.get("warnings") and not quiet:
        lines.append(f"drift warning ({levels[1]}): " + ", ".join(why(n) for n in drift["warnings"]))
    if not quiet and not drift.get("alerts") and not drift.get("warnings"):
        worst = max(((n, d) for n, d in drift["features"].items() if "psi" in d),
                    key=lambda kv: kv[1]["psi"], default=None)
        lines.append(f"drift ok (every PSI <= {th['warning']:.2f}"
                     + (f"; highest feature {worst[0]} {worst[1]['psi']:.3f}" if worst else "")
                     + (f"; propensity {drift['propensity']['psi']:.3f}" if "propensity" in drift else "") + ")")
    return lines


def _print_score_summary(manifest: dict[str, Any], quiet: bool) -> None:
    """Diagnostics (drift, report, bad rows) on stderr; the summary line on stdout."""
    t = manifest["totals"]
    secs = manifest["seconds"]["total"]
    drift = manifest["drift"]
    for line in _drift_lines(drift, quiet):
        level = "alert" if line.startswith("drift ALERT") else "warning" if line.startswith("drift warning") else "ok"
        names = drift.get("alerts" if level == "alert" else "warnings", []) if level != "ok" else []
        _say(line, f"drift.{level}", level="error" if level == "alert" else "warning" if level == "warning" else "info",
             features=list(names), reasons={n: drift.get("reasons", {}).get(n) for n in names})
    hidden = (manifest.get("privacy") or {}).get("suppressed") or []
    if hidden and not quiet:
        _say(f"privacy: {len(hidden)} group statistic(s) of fewer than "
             f"{manifest['privacy']['minimum_customers']} customers suppressed in _manifest.json and the report "
             "(see privacy.suppressed); the scores are published", "privacy.suppressed", suppressed=len(hidden))
    if not quiet:
        if manifest.get("report"):
            path = f"{manifest['output']['path']}/{manifest['report']}"
            _say(f"report: {path}", "report", path=path)
        if t["rows_rejected"] or t["duplicate_rows"] or t["infinite_values"]:
            # Only point to _rejected/ when it exists: --on-bad-rows impute writes none.
            where = " (see _rejected/)" if t["rows_rejected"] else ""
            _say(f"bad rows: {t['rows_rejected']:,} rejected{where}, {t['infinite_values']:,} "
                 f"infinite values, {t['duplicate_rows']:,} duplicate-id rows", "bad_rows", level="warning",
                 rows_rejected=t["rows_rejected"], infinite_values=t["infinite_values"],
                 duplicate_rows=t["duplicate_rows"])
    scored = t.get("rows_scored", t["rows_in"])
    # A resumed run's rate counts only the rows it scored: reused parts cost it nothing.
    reused = (f", {t['parts_reused']} reused ({t['rows_reused']:,} rows)" if t.get("parts_reused") else "")
    rate = f"{scored / max(secs, 1e-9):,.0f} rows/s" + (f" over the {scored:,} rows scored now" if reused else "")
    typer.echo(
        f"scored {t['rows_out']:,} of {t['rows_in']:,} rows ({t['rows_rejected']:,} rejected) in {t['parts']} "
        f"part(s){reused} in {secs:.1f}s ({rate}) on {manifest['backend']} -> {manifest['output']['path']}"
    )


@model_app.command("show")
@fail_cleanly
def model_show(
    model: Annotated[str, typer.Argument(help="Model directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
    log_format: LogFormatOpt = None,
) -> None:
    """Features, parameters in brief, metrics, format version and content hash of a model."""
    from engine.models.artifact import load_model
    from engine.models.explain import feature_counts, features_text
    from engine.models.target import propensity_label

    m = load_model(model)
    if as_json:
        typer.echo(json.dumps(m.metadata() | {"content_hash": m.content_hash, "counts": feature_counts(m),
                                              "propensity_of": propensity_label(m)}, indent=2))
        return
    _echo(f"model {model}")
    _echo(f"  format version {m.format_version}, written by engine {m.engine_version} at {m.created_at}")
    _echo(f"  content hash {m.content_hash}")
    _echo(f"  source: {m.params.get('source', '?')}; id column {m.id_column!r}; target {m.target!r}")
    _echo(f"  segmenter: K-means, k={m.k}; propensity = {propensity_label(m)}: logistic regression, "
               f"intercept {m.intercept:.4f}")
    _echo(f"  {features_text(m)}; numeric and date ones with fill value and scaled coefficient:")
    for j in range(m.n_features):
        _echo(f"    {m.features[j]:<28} {m.feature_types[j]:<8} fill {m.segmenter.fill[j]:<12.6g} "
                   f"scaled coef {m.coef[j]:+.4f}")
    for line in _column_lines(m):
        _echo(line)
    _print_explanations(m)
    if m.offers:
        st = m.offer_settings
        typer.echo(f"  {len(m.offers)} offer heads (top {st.get('top')}, minimum expected value "
                   f"{st.get('min_expected_value')}); cross-validated, calibrated:")
        for o in m.offers:
            cv = o.get("cv") or {}
            auc = "-" if cv.get("auc") is None else f"{cv['auc']:.3f}"
            ece = "-" if cv.get("ece") is None else f"{cv['ece']:.3f}"
            extra = "" if o.get("shrink", 1.0) >= 1.0 else f", shrunk {o['shrink']:.2f}"
            typer.echo(f"    {o['id']:<24} target {o['target']!r}: {o.get('positives')} positive customers, "
                       f"C={o.get('C'):.3g}, AUC {auc}, ECE {ece}, value {o.get('value')}, cost {o.get('cost')}"
                       + (f", budget {o['budget']}" if o.get("budget") is not None else "") + extra
                       + (f"; without {', '.join(o['exclude_features'])}" if o.get("exclude_features") else ""))
    if m.metrics:
        _print_metrics(m.metrics)
    else:
        _echo("  no metrics (imported model)")


def _print_explanations(m: Any, top: int = 5) -> None:
    """Drivers in standardised space, the chosen regularisation and the segments, in words."""
    from engine.models.explain import drivers, segment_descriptions

    found = drivers(m)
    units = {d["unit"] for d in found}
    unit = "standard deviation" if "sd" in units or not units else "raw unit"
    levels = "; a column=level against the column's average customer" if "level" in units else ""
    _echo(f"  strongest propensity drivers (change in log-odds per {unit}{levels}):")
    for d in found[:top]:
        _echo(f"    {d['feature']:<28} {d['log_odds_per_sd']:+.4f}  ({d['direction']} the propensity)")
    lg = m.params.get("logistic") or {}
    if "C" in lg:
        how = {"cv": f"chosen by {lg.get('folds')}-fold CV ({lg.get('criterion', 'log loss')}, "
                     f"{lg.get('search_rows', 0):,} rows)", "fixed": "fixed by --C"}.get(lg.get("selected_by"), "default")
        _echo(f"  logistic regression: {str(lg.get('penalty', 'l2')).upper()} penalty, C={lg['C']:.4g} ({how})")
        curve = [p for p in lg.get("curve", []) if p.get("penalty") == lg.get("penalty")]
        if len(curve) > 1:
            _echo("    CV log loss by C: " + ", ".join(f"{p['C']:.3g}: {p['log_loss']:.4f}" for p in curve))
    ev = m.metrics.get("evaluation") if m.metrics else None
    if ev:
        what = {"holdout": f"a {ev.get('share', 0):.0%} holdout ({ev['rows']:,} rows)",
                "cv": f"{ev.get('folds')}-fold cross-validation over {ev['rows']:,} rows",
                "none": "the training rows only (no holdout)"}.get(ev["kind"], ev["kind"])
        _echo(f"  metrics from {what}; final model fitted on {m.params.get('final_fit_rows', 0):,} rows")
    _echo("  segments (centroid vs the average customer):")
    for seg in segment_descriptions(m):
        _echo(f"    {seg['segment']:>3}: {seg['description']}")


@model_app.command("import-sklearn")
@fail_cleanly
def model_import_sklearn(
    segmenter: Annotated[str, typer.Option("--segmenter", help="joblib file: Pipeline([SimpleImputer?, StandardScaler?, KMeans]).")],
    propensity: Annotated[str, typer.Option("--propensity", help="joblib file: Pipeline([SimpleImputer?, StandardScaler?, LogisticRegression]).")],
    output: Annotated[str, typer.Option("--output", help="Model directory to write.")],
    id_column: Annotated[str, typer.Option("--id-column", help="Customer id column the model will score by.")] = "customer_id",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing engine model at --output.")] = False,
    log_format: LogFormatOpt = None,
) -> None:
    """Convert fitted scikit-learn pipelines into the engine's artifact.

    WARNING: loading a joblib file runs code stored in it (it is pickle). Import only files
    you trust. The engine's own artifact never uses pickle.
    """
    from dataclasses import replace

    from engine.io.uri import local_only
    from engine.models.artifact import check_model_output, save_model
    from engine.models.sklearn_import import import_sklearn

    local_only(segmenter, "--segmenter")
    local_only(propensity, "--propensity")
    protected = {"the --segmenter file": segmenter, "the --propensity file": propensity}
    check_model_output(output, overwrite=overwrite, protected=protected)  # before any joblib runs
    m = save_model(replace(import_sklearn(segmenter, propensity), id_column=id_column), output,
                   overwrite=overwrite, protected=protected)
    _echo(f"imported k={m.k} segmenter and propensity model over {m.n_features} features -> {output} "
               f"({m.content_hash[:19]})")


@model_app.command("log")
@fail_cleanly
def model_log(
    model: Annotated[str, typer.Option("--model", help="Model directory to log.")],
    registered_name: Annotated[str | None, typer.Option("--registered-name", help="Register the logged model under this name (a new version).")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="With --registered-name: point this alias (e.g. champion) at the new version.")] = None,
    experiment: Annotated[str | None, typer.Option("--experiment", help="MLflow experiment name (default $MLFLOW_EXPERIMENT_NAME or Default).")] = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Log an engine model to MLflow (server at $MLFLOW_TRACKING_URI): its files, content hash,
    training parameters and metrics, the training report, and a pyfunc entry."""
    from engine.integrations.mlflow import log_model
    from engine.models.artifact import load_model

    result = log_model(model, load_model, registered_name=registered_name, alias=alias, experiment=experiment)
    typer.echo(f"logged {result['content_hash'][:19]} as {result['model_uri']}"
               + (f"; registered {result['version_uri']}" if "version_uri" in result else "")
               + (f" ({result['alias_uri']})" if "alias_uri" in result else ""))


class ExportFormat(str, Enum):
    """``engine model export --format``."""

    onnx = "onnx"


@model_app.command("export")
@fail_cleanly
def model_export(
    model: Annotated[str, typer.Option("--model", help="Model directory (or models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH).")],
    output: Annotated[str, typer.Option("--output", help="File to write, e.g. m.onnx.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="Export format.")] = ExportFormat.onnx,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an ONNX file this engine wrote (never another file).")] = False,
    log_format: LogFormatOpt = None,
) -> None:
    """Export a model as one ONNX graph (inputs: one per feature column; outputs: segment,
    segment_distance, propensity) for onnxruntime; see README "ONNX export"."""
    from engine.models.artifact import load_model
    from engine.models.onnx_export import export_onnx

    m = load_model(model)
    path = export_onnx(m, output, overwrite=overwrite)
    typer.echo(f"exported {m.content_hash[:19]} as {format.value} ({len(m.columns)} input columns, k={m.k}) "
               f"-> {path}")


@app.command()
@fail_cleanly
def demo(
    rows: Annotated[int, typer.Option("--rows", help="Customers to generate.")] = 1_000_000,
    workdir: Annotated[str, typer.Option("--workdir", help="Where data, model and scores go: new, empty, or an earlier demo's (whose data, model and scores are replaced).")] = "engine-demo",
    files: Annotated[int, typer.Option("--files", help="Parquet files to generate.")] = 8,
    backend: BackendOpt = Backend.auto,
    quiet: QuietOpt = False,
    progress: ProgressOpt = ProgressMode.auto,
    log_format: LogFormatOpt = None,
) -> None:
    """Generate customers, train, score, and print a summary: no GPU, cluster or data needed.
    Every stage reports its progress on stderr as it runs (--progress)."""
    from engine.config import load_settings
    from engine.jobs.heartbeat import Heartbeat

    def say(message: str) -> None:
        event = "demo.step" if message.startswith("[demo]") else "train.step" if message.startswith("[train]") \
            else "score.note"
        _say(message, event)

    talk = not quiet and progress != ProgressMode.quiet
    settings = load_settings()
    with Heartbeat((lambda m: say(f"[demo] {m}")) if talk else (lambda _m: None),
                   settings.progress_interval_s) as beat:
        # Before the heavy imports (a few seconds on a first run): the demo talks from its first second.
        beat.step(f"{rows:,} customers in {workdir}: generate, train, score (loading the engine)")
        from engine.io.uri import local_only
        from engine.jobs.demo import demo as run

        local_only(workdir, "--workdir")

        beat.pause()
        r = run(rows, workdir, settings, files=files, backend=backend.value,
                progress=_progress_mode(quiet, progress), say=say)
    typer.echo("")
    typer.echo(f"demo: {r.rows:,} customers on backend {r.manifest['backend']}")
    for step, secs in r.steps.items():
        typer.echo(f"  {step:<9} {secs:7.1f}s  {r.rows / secs:>12,.0f} rows/s")
    # The propensity is named by what it is the probability of (issue 25), e.g. P(churned = 1).
    head = f"mean {r.manifest.get('model', {}).get('propensity_of') or 'propensity'}"
    typer.echo(f"  segment  customers   share  {head}")
    for s in r.segments:
        mp = "-" if s["mean_propensity"] is None else f"{s['mean_propensity']:.3f}"
        typer.echo(f"  {s['segment']:>7}  {s['customers']:>9,}  {s['share']:6.1%}  {mp:>{len(head)}}")
    label = "holdout" if r.evaluation == "holdout" else "cross-validated"
    typer.echo(f"  {label} AUC {r.holdout_auc:.4f}" if r.holdout_auc is not None else f"  {label} AUC n/a")
    typer.echo(f"  data   {r.data}\n  model  {r.model} (training report: {r.model}/report.html)\n"
               f"  scores {r.scores} (+ _manifest.json, _report.html, _SUCCESS)")


@app.command(epilog=EXIT_CODES_HELP)
@fail_cleanly
def rules(
    input: Annotated[str, typer.Option("--input", help="Parquet file, directory (recursive) or hive-partitioned directory.")],
    output: Annotated[str, typer.Option("--output", help="Output directory: rules.parquet, _manifest.json, _report.html, _SUCCESS.")],
    items: Annotated[str | None, typer.Option("--items", help="Wide table: comma list of item columns (0/1, boolean or counts; held when > 0).")] = None,
    items_prefix: Annotated[str | None, typer.Option("--items-prefix", help="Wide table: every column whose name starts with this prefix is an item.")] = None,
    baskets: Annotated[bool, typer.Option("--baskets", help="Long table: one row per (customer, item), like a transaction log; see --id-column and --item-column.")] = False,
    item_column: Annotated[str, typer.Option("--item-column", help="With --baskets: the item column.")] = "item",
    id_column: Annotated[str, typer.Option("--id-column", help="Customer id column (customers are distinct ids). Baskets: rows of one id are one customer. Wide: when the table has it, a repeated id is refused (exit 3) unless --rows-are-events.")] = "customer_id",
    rows_are_events: Annotated[bool, typer.Option("--rows-are-events", help="Wide table: rows are events and an id may repeat; the rows of one id are one customer, who holds an item when any of their rows does. Without it, a repeated id is refused (exit 3).")] = False,
    min_support: Annotated[float, typer.Option("--min-support", help="Least share of customers holding an itemset, in (0, 1]. Whatever it says, no itemset held by fewer than 20 customers is counted.")] = 0.01,
    min_confidence: Annotated[float, typer.Option("--min-confidence", help="Least confidence of a rule, in [0, 1].")] = 0.5,
    min_lift: Annotated[float, typer.Option("--min-lift", help="Least lift of a rule (1: no better than chance).")] = 1.0,
    max_len: Annotated[int, typer.Option("--max-len", help="Most items in a rule, antecedent and consequent together: 2, 3 or 4.")] = 3,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier `engine rules` output (atomically, once the new one is complete); never other files.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write _report.html: the top rules and which items go together.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check flags, input footers and output, print the plan; reads footers only, writes nothing.")] = False,
    backend: BackendOpt = Backend.auto,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    connect_timeout: ConnectTimeoutOpt = None,
    partition_rows: Annotated[int | None, typer.Option("--partition-rows", help="Most rows one task reads: a wide fragment, or a basket file's piece read once and partitioned by customer (buckets are sized by memory); on a remote --scheduler cluster, also the rows of one basket bucket.")] = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    progress: ProgressOpt = ProgressMode.auto,
    log_format: LogFormatOpt = None,
) -> None:
    """Association rules over what customers hold together ("customers who hold A and B also
    hold C"): itemset supports counted as matrix products of 0/1 blocks, one pass per itemset
    size, partitions adding their counts on Dask; published atomically."""
    from engine.api import rules_plan
    from engine.jobs.rules import execute

    mode = _progress_mode(quiet, progress)
    plan = rules_plan(input, output, items=_split(items) or None, items_prefix=items_prefix, baskets=baskets,
                      item_column=item_column, id_column=id_column, rows_are_events=rows_are_events,
                      min_support=min_support, min_confidence=min_confidence, min_lift=min_lift, max_len=max_len, backend=backend.value,
                      scheduler=scheduler, workers=workers, connect_timeout=connect_timeout,
                      partition_rows=partition_rows, overwrite=overwrite, report=report, config=config,
                      progress=mode)
    if dry_run:
        typer.echo(json.dumps(plan.describe(), indent=2, default=str))
        return
    result = execute(plan, say=(lambda _m: None) if mode == "quiet" else _say)
    m = result.manifest
    t, secs = m["totals"], m["seconds"]["total"]
    if plan.options.report and not quiet:
        _say(f"report: {m['output']['path']}/_report.html", "report", path=f"{m['output']['path']}/_report.html")
    sizes = ", ".join(f"{n} of {k}" for k, n in t["frequent_itemsets"].items())
    typer.echo(f"{t['rules']:,} rules from {t['customers']:,} customers (frequent itemsets: {sizes}) "
               f"in {secs:.1f}s on {m['backend']} -> {m['output']['path']}")
    _say("", "rules.finished", exit_code=0, customers=t["customers"], rules=t["rules"],
         frequent_itemsets=t["frequent_itemsets"], seconds=round(secs, 3), backend=m["backend"],
         output=m["output"]["path"])


@app.command()
@fail_cleanly
def info(
    require_gpu: Annotated[bool, typer.Option("--require-gpu", help="Exit 7 unless the GPU backend can run (container health checks).")] = False,
    log_format: LogFormatOpt = None,
) -> None:
    """Version, which backends can run here and why not, and the devices seen."""
    import platform

    from engine.backends import detect
    from engine.cluster import default_threads

    s = detect()
    typer.echo(f"engine {__version__} (Python {platform.python_version()}, {platform.machine()})")
    typer.echo(f"cpu backend: available ({default_threads()} cores)")
    if s.gpu_usable:
        typer.echo("gpu backend: available")
    else:
        typer.echo(f"gpu backend: unavailable: {s.gpu_reason}")
    typer.echo(f"devices: {', '.join(s.gpu_devices) if s.gpu_devices else 'no GPU seen'}")
    typer.echo(f"libraries: cupy {'yes' if s.cupy_available else 'no'}, cuml {'yes' if s.cuml_available else 'no'} "
               f"(fitting on GPU), dask-cuda {'yes' if s.dask_cuda_available else 'no'} (multi-GPU)")
    typer.echo("versions: " + ", ".join(f"{name} {version}" for name, version in library_versions().items()))
    if require_gpu and not s.gpu_usable:
        from engine.errors import BackendError

        raise BackendError(f"the GPU backend cannot run here: {s.gpu_reason}")


# Distribution names as pip knows them; optional ones are listed only when installed.
_VERSIONED = (("dask", "dask", True), ("distributed", "distributed", True), ("pyarrow", "pyarrow", True),
              ("numpy", "numpy", True), ("scikit-learn", "scikit-learn", True), ("numba", "numba", False),
              ("cupy", ("cupy", "cupy-cuda12x", "cupy-cuda13x"), False),
              ("cuml", ("cuml", "cuml-cu12", "cuml-cu13"), False), ("dask-cuda", "dask-cuda", False))


def library_versions() -> dict[str, str]:
    """Installed versions from package metadata: nothing is imported, so no CUDA starts."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for label, dists, required in _VERSIONED:
        for dist in (dists,) if isinstance(dists, str) else dists:
            try:
                found[label] = version(dist)
                break
            except PackageNotFoundError:
                continue
        else:
            if required:
                found[label] = "not installed"
    return found


def main() -> None:
    """Console-script entry point."""
    # Before pyarrow is first imported, so every pool of the process is the system allocator
    # (see engine.backends.stage.use_system_allocator for why); a user's choice is kept.
    import os

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    from engine import log

    # Until a command takes over (fail_cleanly), SIGINT/SIGTERM end the process at once with
    # the error event: nothing is written yet, and a KeyboardInterrupt raised inside an
    # import lock or a starting thread could leave the process waiting forever.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _early_signal)
    capture = None
    if _wants_json(sys.argv[1:]):
        # Before anything runs: flag-parsing errors, warnings, Dask's logging and worker
        # processes all write to descriptor 2, and every one of their lines must parse.
        log.set_format("json")
        capture = log.StderrCapture().install()
    _START["capture"] = capture
    try:
        app(prog_name="engine")
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # a bug (exit 1) or an interrupt before a command took over
        code = _crashed(exc)
    if capture is not None:
        capture.close()
        if isinstance(code, int) and code not in (0, None) and not log.errors_reported():
            # A failure the commands could not report themselves (a flag typer refused).
            log.event("error", "the command line was refused (see the lines above)", level="error",
                      exit_code=code, kind="usage or configuration")
    _exit_now(code)


_START: dict[str, Any] = {"capture": None}


def _early_signal(signum: int, _frame: Any) -> None:
    """A signal before any command started: the error event, then exit 130 (SIGINT) or 143."""
    from engine import log

    code = 130 if signum == signal.SIGINT else 143
    capture = _START.get("capture")
    with contextlib.suppress(Exception):
        if capture is not None:
            capture.close(timeout=1.0)
        log.event("error", "interrupted during start-up: nothing was published", level="error",
                  exit_code=code, kind="interrupted")
        sys.stderr.flush()
    os._exit(code)


def _command_signals() -> None:
    """A command is running: Ctrl-C raises KeyboardInterrupt again (its clean end is fail_cleanly's),
    with a deadline (:func:`_arm_forced_exit`) whose setting is checked now."""
    _START["grace"] = _stop_grace()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)


def _interrupt(_signum: int, _frame: Any) -> None:
    _arm_forced_exit(130)
    raise KeyboardInterrupt


#: After Ctrl-C or SIGTERM a command has this many seconds to end cleanly (its message, staging
#: kept); then the process ends at once with the error event. ``ENGINE_STOP_GRACE_SECONDS``
#: changes it. A KeyboardInterrupt that lands inside an import lock or while worker threads
#: wait on a lock it left held would otherwise leave the run hanging, printing progress forever.
STOP_GRACE_SECONDS = 30.0


def _stop_grace() -> float:
    """``ENGINE_STOP_GRACE_SECONDS`` (a finite number of seconds >= 0), else the default.

    Checked when a command starts (:func:`_command_signals`: exit 2 naming the variable), so
    a bad value never waits for the stop signal to be found out."""
    from engine.errors import UsageError

    raw = os.environ.get("ENGINE_STOP_GRACE_SECONDS")
    if raw is None or not raw.strip():
        return STOP_GRACE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"ENGINE_STOP_GRACE_SECONDS={raw!r} is not a number of seconds >= 0; set it to one "
                         f"(e.g. 30, the default) or unset it")
    return value


def _arm_forced_exit(code: int) -> None:
    """The first stop signal starts the deadline; a second one ends the process now.

    Ending at once is safe: every publish is all or nothing under ``kill -9`` (docs/safety.md),
    so the previous output stays complete and finished parts stay staged for ``--resume``.
    """
    if _START.get("stopping"):
        _force_exit(code, "stopped again")
    _START["stopping"] = True
    grace = _START.get("grace", STOP_GRACE_SECONDS)
    timer = threading.Timer(grace, _force_exit, args=(code, f"the run did not end within {grace:g} s of the signal"))
    timer.daemon = True
    timer.start()


def _force_exit(code: int, why: str) -> None:
    from engine import log

    capture = _START.get("capture")
    with contextlib.suppress(Exception):
        if capture is not None:
            capture.close(timeout=1.0)
        log.event("error", f"interrupted: {why}; ended at once. Nothing was published (a previous output is "
                           "intact); rerun with --resume to reuse finished parts", level="error",
                  exit_code=code, kind="interrupted")
        sys.stderr.flush()
    os._exit(code)


def _crashed(exc: BaseException) -> int:
    """The last stderr line of a run that ended in an exception no command caught: the
    traceback (as log lines in json mode), then the ``error`` event with its exit code
    (1 for a bug, 130 for an interrupt during start-up)."""
    import traceback

    from engine import log
    from engine.safe_text import redact

    interrupted = isinstance(exc, KeyboardInterrupt)
    code = getattr(exc, "exit_code", 130) if interrupted else 1
    if not interrupted:
        with contextlib.suppress(Exception):
            sys.stderr.write(redact("".join(traceback.format_exception(exc))))
            sys.stderr.flush()
    if not log.errors_reported():
        what = ("interrupted: nothing was published" if interrupted else
                f"internal error ({type(exc).__name__}: {exc}); please report it with the log")
        log.event("error", what, level="error", exit_code=code,
                  kind="interrupted" if interrupted else "internal error")
    return int(code)


def _wants_json(argv: list[str]) -> bool:
    """``--log-format json`` anywhere on the command line, else ``$ENGINE_LOG_FORMAT=json``."""
    from engine import log

    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            return argv[i + 1] == "json"
        if arg.startswith("--log-format="):
            return arg.split("=", 1)[1] == "json"
    return os.environ.get(log.ENV) == "json"


def _exit_now(code: Any) -> None:
    """Exit with ``code`` once the atexit handlers ran, skipping the interpreter's teardown.

    Tearing down the modules of a scoring process (numba's compiler, pyarrow, pandas)
    took 0.35 s of every run, measured, against a few seconds for the whole night's
    work. Every file the engine writes is closed (and its renames done) before its
    command returns; atexit handlers (temporary directories, logging) still run here.
    """
    import atexit
    import os

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
