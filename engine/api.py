"""The engine as a Python library: the CLI's twin.

::

    import engine

    model = engine.load_model("models/churn")
    scored = model.score(frame, reasons=3)            # pandas in, pandas out (or Arrow)
    summary = engine.score("data/customers", "models/churn", "scores/tonight", overwrite=True)
    model = engine.train("data/customers", "churned", "models/churn", k=8)

Every function takes the CLI's flags as keyword arguments (``--sample-rows`` is
``sample_rows``) and raises :class:`engine.EngineError` subclasses whose ``exit_code`` is
the code the CLI exits with. The CLI (:mod:`engine.cli`) parses, calls these, prints.

Importing this module imports nothing heavy (no NumPy, pyarrow, Dask, nor any GPU
library): each function imports what it needs when called.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.api_checks import api_errors, int_arg, names_arg, path_arg, positive_arg
from engine.errors import BadRowsError, InputError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from engine.config import Settings
    from engine.jobs.score import ScorePlan
    from engine.models.artifact import ScoringModel

Say = Callable[[str], None]


def _names(values: str | Sequence[str] | None, name: str = "names") -> list[str]:
    """A comma list (as on the command line) or a sequence of names; anything else names ``name=``."""
    return names_arg(values, name)


class Model:
    """A loaded, verified model (:func:`load_model`): score in-memory tables with :meth:`score`.

    Attributes mirror ``engine model show``: ``features``, ``id_column``, ``target``, ``k``,
    ``metrics``, ``content_hash`` and ``path``; ``artifact`` is the underlying
    :class:`engine.models.artifact.ScoringModel`.
    """

    def __init__(self, artifact: ScoringModel, path: str | None = None) -> None:
        self.artifact = artifact
        self.path = path

    def __repr__(self) -> str:
        return (f"Model(path={self.path!r}, features={len(self.features)}, k={self.k}, "
                f"hash={self.content_hash[:19]!r})")

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.artifact.features)

    @property
    def id_column(self) -> str:
        return self.artifact.id_column

    @property
    def target(self) -> str | None:
        return self.artifact.target

    @property
    def k(self) -> int:
        return self.artifact.k

    @property
    def propensity_of(self) -> str:
        """What ``propensity`` is the probability of, e.g. ``"P(Status = bad)"``."""
        from engine.models.target import propensity_label

        return propensity_label(self.artifact)

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.artifact.metrics)

    @property
    def content_hash(self) -> str:
        return self.artifact.content_hash

    @api_errors
    def score(self, data: Any, *, reasons: int = 0, keep: str | Sequence[str] = (),
              reason_contributions: bool = False, id_column: str | None = None,
              on_bad_rows: str = "impute", block_rows: int = 16_384) -> Any:
        """Score ``data`` (a pyarrow Table or RecordBatch, or a pandas DataFrame); returns the same kind.

        Columns, in order: the id column when ``data`` has it (default the model's), ``segment``
        (int32), ``segment_distance`` (float32), ``propensity`` (float32: the probability that
        :attr:`propensity_of` names, e.g. ``P(Status = bad)``), ``reason_1 ..
        reason_N`` with ``reasons=N`` (and ``reason_i_contribution`` with
        ``reason_contributions=True``), then the ``keep`` columns; one row per input row,
        in order (a DataFrame keeps its index). The arithmetic is the CLI's: the same
        compiled kernel on the CPU, so ``engine score`` gives the same segments and
        propensities. Nulls and NaN are imputed as the model says; ±inf too with
        ``on_bad_rows="impute"`` (the default), while ``"fail"`` raises
        :class:`engine.BadRowsError` naming the rows. A missing or non-numeric feature
        raises :class:`engine.InputError`.
        """
        import pyarrow as pa

        from engine.backends.stage import get_stage, stage_settings
        from engine.io.dataset import is_numeric
        from engine.io.validate import categorical_type_problem, trained_categorical_types
        from engine.jobs.blocks import score_table
        from engine.jobs.partition import OUTPUT_SCHEMA_TAIL
        from engine.models.categorical import can_be_categorical, is_date_type
        from engine.models.reasons import prepare_kernel, reason_output, validate_reasons

        model = self.artifact
        reasons = int_arg(reasons, "reasons")
        block_rows = int_arg(block_rows, "block_rows")
        if id_column is not None and (not isinstance(id_column, str) or not id_column):
            raise UsageError(f"id_column= must be a column name, not {id_column!r}")
        keep = _names(keep, "keep")
        validate_reasons(reasons, model.n_features, model)
        _check_in_memory_policy(on_bad_rows, "scoring", "engine.score")
        if reasons:
            prepare_kernel()
        table, kind, index = _to_table(data)
        keep_cols = list(keep)
        problems = []
        dates = set(model.date_features)
        for name in model.features:
            idx = table.schema.get_field_index(name)
            if idx < 0:
                problems.append(f"feature column {name!r} is missing")
                continue
            dtype = table.schema.field(idx).type
            fits = is_date_type(dtype) if name in dates else is_numeric(dtype)
            if not (fits or pa.types.is_null(dtype)):
                problems.append(f"feature column {name!r} has type {dtype}, not "
                                + ("a date or timestamp" if name in dates else "a number"))
        trained = trained_categorical_types(model)
        for cat in model.categoricals:
            idx = table.schema.get_field_index(cat.name)
            if idx < 0:
                problems.append(f"categorical column {cat.name!r} is missing")
            elif not (can_be_categorical(table.schema.field(idx).type) or pa.types.is_null(table.schema.field(idx).type)):
                problems.append(f"categorical column {cat.name!r} has type {table.schema.field(idx).type}")
            elif cat.name in trained and (changed := categorical_type_problem(
                    cat.name, trained[cat.name], table.schema.field(idx).type, "the data")):
                problems.append(changed)
        problems += [f"--keep column {name!r} is missing" for name in keep_cols if name not in table.schema.names]
        if problems:
            raise InputError("the data does not fit the model:\n  - " + "\n  - ".join(problems))
        id_name = id_column or model.id_column
        stage = get_stage(model, "cpu", stage_settings("cpu", block_rows))
        # engine score's own block loop (engine/jobs/blocks.py): levels, dates, reasons, kernel.
        scored = score_table(model, table, stage, reasons=reasons, flag_bad=on_bad_rows == "fail")
        _raise_bad_rows(scored.bad, scored.bad_columns, scored.bad_reasons, "score")
        segment, distance, propensity = scored.segment, scored.distance, scored.propensity
        codes, values = scored.reasons, scored.reason_values
        names: list[str] = []
        arrays: list[Any] = []
        if id_name in table.schema.names:
            names.append(id_name)
            arrays.append(table.column(id_name))
        for (name, dtype), vals in zip(OUTPUT_SCHEMA_TAIL, (segment, distance, propensity)):
            names.append(name)
            arrays.append(pa.array(vals, type=dtype))
        if codes is not None and values is not None:
            for name, col in reason_output(codes, values, model, contributions=reason_contributions):
                names.append(name)
                arrays.append(col)
        for name in keep_cols:
            if name not in names:
                names.append(name)
                arrays.append(table.column(name))
        return _from_table(pa.table(arrays, names=names), kind, index)


    @property
    def offers(self) -> tuple[str, ...]:
        """The offer ids of a model trained with ``offers=`` (empty for a single-target model)."""
        return tuple(o["id"] for o in self.artifact.offers)

    def recommend(self, data: Any, *, top: int | None = None, offers: str | None = None,
                  id_column: str | None = None, on_bad_rows: str = "impute", block_rows: int = 16_384,
                  budget_sample_rows: int | None = None) -> Any:
        """Each customer's top offers, in long format; ``engine recommend``'s twin.

        ``data``: a pyarrow Table or RecordBatch, or a pandas DataFrame (returns the same
        kind, with a fresh index). Columns: the id column, ``rank`` (1..N), ``offer``,
        ``propensity``, ``expected_value``, ``reason``; customers in input order, ranks in
        order. ``offers``: a catalogue file to use instead of the model's own (values, rules,
        ``top`` and budgets may change, targets may not); ``top`` overrides its ``top``.
        Budgets are applied as ``engine recommend`` applies them, over the customers of
        ``data``, the first prices from a sample of ``budget_sample_rows`` of its rows
        (``--budget-sample-rows``, the same default): every row when ``data`` is no larger,
        and then the same rows as a run on the same customers whose sample covers its input.
        Rows without an id are left out (``engine recommend`` leaves them out too).
        Bad rows as in :meth:`score`: ±inf (or beyond ±1e15) features are imputed with
        ``on_bad_rows="impute"`` (the default); ``"fail"`` raises :class:`engine.BadRowsError`
        naming the rows, a row without an id among them (``engine recommend``'s check).
        """
        from engine.offers.catalogue import load_catalogue
        from engine.offers.recommend import check_input, prepare, recommend_table

        model = self.artifact
        _check_in_memory_policy(on_bad_rows, "recommending", "engine.recommend")
        block_rows = int_arg(block_rows, "block_rows")
        sample_rows = _budget_sample_rows(budget_sample_rows)
        plan = prepare(model, load_catalogue(offers) if offers else None, top)
        table, kind, _index = _to_table(data)
        id_col = id_column or model.id_column
        check_input(table.schema, model, plan, id_col, "data")
        ids = table.column(id_col)
        if ids.null_count and on_bad_rows == "impute":
            # As engine recommend: a row without an id cannot be told to anyone (and takes no
            # budget); with "fail" it is a bad row.
            import pyarrow.compute as pc

            table = table.filter(pc.is_valid(ids))
        result = recommend_table(table, model, plan, id_column=id_col, block_rows=block_rows,
                                 flag_bad=on_bad_rows == "fail", sample_rows=sample_rows)
        _raise_bad_rows(result.bad, result.bad_columns, result.bad_reasons, "recommend")
        return result.table.to_pandas() if kind == "pandas" else _from_table(result.table, kind, None)


def _budget_sample_rows(value: Any) -> int:
    """``budget_sample_rows=``: a whole number >= 1, or None for the default."""
    from engine.offers.budgets import SAMPLE_ROWS

    rows = SAMPLE_ROWS if value is None else int_arg(value, "budget_sample_rows")
    if rows < 1:
        raise UsageError(f"budget_sample_rows= must be at least 1, not {rows}")
    return rows


def _check_in_memory_policy(on_bad_rows: str, doing: str, batch: str) -> None:
    if on_bad_rows not in ("impute", "fail"):
        raise UsageError(f"on_bad_rows must be 'impute' or 'fail' for in-memory {doing}, not {on_bad_rows!r} "
                         f"({batch}'s 'reject' writes rejected rows beside an output)")


def _raise_bad_rows(bad: Any, columns: Sequence[str], reasons: Sequence[str], verb: str) -> None:
    """:class:`BadRowsError` naming the first flagged rows (``bad``: the block loop's mask, or None)."""
    if bad is None:
        return
    import numpy as np

    flagged = np.flatnonzero(bad)
    first = [f"row {int(r)} ({column}: {why})" for r, column, why in zip(flagged[:5], columns, reasons)]
    raise BadRowsError(f"bad rows: {', '.join(first)}"
                       + (" and more" if flagged.size > 5 else "")
                       + f"; {verb} with on_bad_rows='impute' to treat such values as missing")


def _to_table(data: Any) -> tuple[Any, str, Any]:
    """``data`` as a pyarrow Table, its kind (``table``, ``batch``, ``pandas``) and a DataFrame's index."""
    import pyarrow as pa

    if isinstance(data, (pa.Table, pa.RecordBatch)):
        twice = sorted({n for n in data.schema.names if data.schema.names.count(n) > 1})
        if twice:
            raise InputError(f"the data has duplicate column names: {', '.join(map(repr, twice))}; "
                             "give each column its own name")
    if isinstance(data, pa.Table):
        return data, "table", None
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data]), "batch", None
    module = type(data).__module__
    if module.startswith("pandas") and type(data).__name__ == "DataFrame":
        names = [str(c) for c in data.columns]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(f"the DataFrame has duplicate column names: {', '.join(map(repr, twice))}; "
                             "give each column its own name")
        try:
            return pa.Table.from_pandas(data, preserve_index=False), "pandas", data.index
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise InputError(f"the DataFrame cannot be read as typed columns ({type(exc).__name__}: {exc}); "
                             "give each column one type (e.g. no strings mixed with numbers)") from None
    raise UsageError(f"Model.score takes a pyarrow Table or RecordBatch or a pandas DataFrame, "
                     f"not {type(data).__name__}")


def _from_table(table: Any, kind: str, index: Any) -> Any:
    if kind == "table":
        return table
    if kind == "batch":
        batches = table.combine_chunks().to_batches()
        if batches:
            return batches[0]
        import pyarrow as pa

        return pa.RecordBatch.from_pylist([], schema=table.schema)
    frame = table.to_pandas()
    frame.index = index
    return frame


@api_errors
def load_model(path: str) -> Model:
    """Load and verify a model directory (content hash, format, invariants); raises :class:`engine.ModelError`."""
    from engine.models.artifact import load_model as _load

    path = path_arg(path, "path")
    return Model(_load(path), str(path))


@dataclass(frozen=True)
class TrainSummary:
    """What :func:`train` did: rows, where the metrics came from, the report, seconds."""

    path: str
    rows_read: int
    rows_train: int
    rows_holdout: int
    report_path: str | None
    seconds: float


@api_errors
def train(input: str, target: str | None, output: str, *, k: int = 8, features: str | Sequence[str] | None = None,
          id_column: str = "customer_id", sample_rows: int | None = None, holdout: float | None = None,
          seed: int = 42, overwrite: bool = False, C: float | None = None,
          c_grid: Sequence[float] | None = None, cv_folds: int = 5, report: bool = True,
          backend: str = "auto", scheduler: str | None = None, workers: int | None = None,
          connect_timeout: float | None = None, config: str | None = None, progress: str = "quiet",
          categorical: str | Sequence[str] | None = None, positive: str | None = None, as_of: str | None = None,
          on_step: Say | None = None, schema: str | None = None, offers: str | None = None,
          rows_are_events: bool = False) -> Model:
    """``engine train`` as a function: fit, evaluate, refit and write a model to ``output``; returns it.

    Keyword arguments are the CLI's flags (``--C`` is ``C``, ``--no-report`` is
    ``report=False``). ``on_step`` receives the step lines that ``--progress log`` prints.
    The returned model's ``training`` attribute is a :class:`TrainSummary`; its
    :attr:`Model.propensity_of` says what the propensity is the probability of
    (``P(churned = 1)``, or ``P(Status = bad)`` with ``target="Status", positive="bad"``).
    Errors name these arguments (``positive=``), and every argument is checked first.
    ``offers`` (``--offers``, with ``target=None``): one calibrated head per offer of that
    catalogue (engine/offers), for :meth:`Model.recommend` and ``engine recommend``.
    """
    from engine.config import load_settings
    from engine.jobs.progress import resolve_mode
    from engine.jobs.train import TrainOptions
    from engine.jobs.train import train as run

    t0 = time.perf_counter()
    input, output = path_arg(input, "input"), path_arg(output, "output")
    if offers is None and (not isinstance(target, str) or not target):
        raise UsageError(f"target= must name the target column (or offers= a catalogue), not {target!r} "
                         f"({type(target).__name__})")
    if offers is not None and target is not None:
        raise UsageError("give target= or offers=, not both: a catalogue names each offer's target")
    if offers is not None:
        offers = path_arg(offers, "offers")
    positive = positive_arg(positive)
    settings = load_settings(config, scheduler=scheduler, workers=workers, connect_timeout_s=connect_timeout)
    result = run(TrainOptions(input=str(input), target=target, output=str(output), k=k,
                              features=_names(features, "features") or None, id_column=id_column,
                              sample_rows=sample_rows,
                              holdout=holdout, seed=seed, backend=backend, progress=resolve_mode(progress),
                              overwrite=overwrite, report=report, C=C,
                              c_grid=list(c_grid) if c_grid is not None else None, cv_folds=cv_folds,
                              categorical=tuple(_names(categorical, "categorical") or ()), positive=positive,
                              as_of=as_of, schema=schema, offers=str(offers) if offers is not None else None,
                              rows_are_events=rows_are_events),
                 on_step=on_step, settings=settings)
    model = Model(result.model, result.path)
    model.training = TrainSummary(result.path, result.rows_read, result.rows_train,  # type: ignore[attr-defined]
                                  result.rows_holdout, result.report_path, time.perf_counter() - t0)
    return model


@dataclass(frozen=True)
class ScoreSummary:
    """The run of :func:`score`, from its ``_manifest.json``.

    ``rows_in = rows_scored + rows_reused``-ish bookkeeping as in the manifest's ``totals``:
    ``rows_in`` read, ``rows_out`` written, ``rows_rejected`` set aside (rows in = rows out +
    rows rejected), ``rows_scored`` by this run (a resumed run reuses the rest).
    """

    run_id: str
    output: str
    backend: str
    rows_in: int
    rows_out: int
    rows_rejected: int
    rows_scored: int
    rows_reused: int
    parts: int
    seconds: float
    drift_alerts: tuple[str, ...]
    drift_warnings: tuple[str, ...]
    report: str | None
    manifest: dict[str, Any] = field(repr=False)
    #: What ``propensity`` is the probability of, e.g. ``"P(Status = bad)"``.
    propensity_of: str | None = None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ScoreSummary:
        t = manifest["totals"]
        report = manifest.get("report")
        return cls(
            run_id=manifest["run_id"], output=manifest["output"]["path"], backend=manifest["backend"],
            rows_in=t["rows_in"], rows_out=t["rows_out"], rows_rejected=t["rows_rejected"],
            rows_scored=t.get("rows_scored", t["rows_in"]), rows_reused=t.get("rows_reused", 0),
            parts=t["parts"], seconds=float(manifest["seconds"]["total"]),
            drift_alerts=tuple(manifest["drift"].get("alerts", ())),
            drift_warnings=tuple(manifest["drift"].get("warnings", ())),
            report=f"{manifest['output']['path']}/{report}" if report else None, manifest=manifest,
            propensity_of=(manifest.get("model") or {}).get("propensity_of"),
        )


@api_errors
def recommend(input: str, model: str, output: str, *, offers: str | None = None, top: int | None = None,
              id_column: str | None = None, overwrite: bool = False, resume: bool = False, config: str | None = None,
              progress: str = "quiet", say: Say | None = None, on_bad_rows: str | None = None,
              max_rejected_fraction: float | None = None, scheduler: str | None = None,
              workers: int | None = None, connect_timeout: float | None = None,
              threads_per_worker: int | None = None, partition_rows: int | None = None,
              backend: str = "auto", gpus: str | None = None, budget_sample_rows: int | None = None
              ) -> dict[str, Any]:
    """``engine recommend`` as a function: every customer's top offers into ``output``; returns the manifest.

    ``on_bad_rows`` (impute, reject, fail), ``max_rejected_fraction``, ``backend`` (auto, cpu,
    gpu) and the cluster's ``scheduler``, ``workers``, ``connect_timeout``,
    ``threads_per_worker``, ``partition_rows`` and ``gpus`` as ``engine score``'s.
    ``budget_sample_rows``: rows the budgets' first prices are found on (``--budget-sample-rows``).
    """
    from engine.config import load_settings
    from engine.jobs.progress import resolve_mode
    from engine.jobs.recommend import RecommendOptions
    from engine.jobs.recommend import recommend as run

    settings = load_settings(config, on_bad_rows=on_bad_rows, max_rejected_fraction=max_rejected_fraction,
                             scheduler=scheduler, workers=workers, connect_timeout_s=connect_timeout,
                             threads_per_worker=threads_per_worker, partition_rows=partition_rows, gpus=gpus)
    sample_rows = _budget_sample_rows(budget_sample_rows)
    return run(RecommendOptions(input=str(input), model=str(model), output=str(output), offers=offers, top=top,
                                id_column=id_column, overwrite=overwrite, resume=resume,
                                progress=resolve_mode(progress), backend=backend, sample_rows=sample_rows),
               settings, say=say)


@api_errors
def score_plan(input: str, model: str, output: str, *, id_column: str | None = None,
               keep: str | Sequence[str] = (), backend: str = "auto", gpus: str | None = None,
               scheduler: str | None = None, workers: int | None = None, connect_timeout: float | None = None,
               threads_per_worker: int | None = None, partition_rows: int | None = None,
               batch_rows: int | None = None, block_rows: int | None = None, on_bad_rows: str | None = None,
               max_rejected_fraction: float | None = None, unique_ids: bool = False, overwrite: bool = False,
               resume: bool = False, fail_on_drift: bool = False, reasons: int = 0,
               reason_contributions: bool = False, config: str | None = None, progress: str = "quiet",
               dry_run: bool = False, schema: str | None = None) -> ScorePlan:
    """Every check a run makes before its work, and its plan (what ``--dry-run`` prints)."""
    input, model, output = path_arg(input, "input"), path_arg(model, "model"), path_arg(output, "output")
    reasons = int_arg(reasons, "reasons")
    keep = _names(keep, "keep")
    if not (scheduler or workers or dry_run):
        from engine.backends.detect import detect

        if backend == "cpu" or (backend == "auto" and not detect().gpu_usable):
            # First thing: the CPU kernel loads while the rest of the engine is imported.
            from engine.backends.stage import prewarm_kernel

            prewarm_kernel()
    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, plan_score

    settings: Settings = load_settings(
        config, scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
        connect_timeout_s=connect_timeout, partition_rows=partition_rows, batch_rows=batch_rows,
        block_rows=block_rows, on_bad_rows=on_bad_rows, max_rejected_fraction=max_rejected_fraction, gpus=gpus)
    options = ScoreOptions(input=str(input), model=str(model), output=str(output), id_column=id_column,
                           keep=_names(keep), backend=backend, overwrite=overwrite, resume=resume,
                           unique_ids=unique_ids, fail_on_drift=fail_on_drift, progress=progress,
                           reasons=reasons, reason_contributions=reason_contributions, schema=schema)
    return plan_score(options, settings, prewarm_stage=not dry_run)


@api_errors
def score(input: str, model: str, output: str, *, say: Say | None = None, **options: Any) -> ScoreSummary:
    """``engine score`` as a function: score ``input`` with ``model`` into ``output``; returns the run's summary.

    Keyword arguments are the CLI's flags (see :func:`score_plan` for the list:
    ``keep``, ``backend``, ``scheduler``, ``workers``, ``on_bad_rows``, ``overwrite``,
    ``resume``, ``fail_on_drift``, ``reasons``, ``progress`` ...; ``progress`` defaults to
    ``quiet``). ``say`` receives the run's diagnostic lines. With ``fail_on_drift`` a drift
    alert raises :class:`engine.DriftAlert` after publishing; its ``summary`` attribute is
    the published run's :class:`ScoreSummary`. ``output`` may be a Postgres table
    (``postgresql://HOST/DB?table=SCHEMA.NAME``, with ``upsert=True`` to merge).
    """
    from engine.errors import DriftAlert
    from engine.jobs.score import execute

    if options.get("dry_run"):
        raise UsageError("engine.score runs; use engine.score_plan(...) for a dry run")
    from engine.sinks.postgres import is_postgres_uri

    if is_postgres_uri(output) or options.get("upsert"):
        # A Postgres table (engine/sinks/postgres.py): scored as usual, then loaded in one transaction.
        from engine.sinks.postgres import score_to_postgres

        options.setdefault("progress", "quiet")
        try:
            return ScoreSummary.from_manifest(score_to_postgres(input, model, output, say=say, **options))
        except DriftAlert as exc:
            if getattr(exc, "manifest", None):
                exc.summary = ScoreSummary.from_manifest(exc.manifest)  # type: ignore[attr-defined]
            raise
    plan = score_plan(input, model, output, **options)
    try:
        manifest = execute(plan, say=say)
    except DriftAlert as exc:
        if getattr(exc, "manifest", None):
            exc.summary = ScoreSummary.from_manifest(exc.manifest)  # type: ignore[attr-defined]
        raise
    return ScoreSummary.from_manifest(manifest)


def rules_plan(input: str, output: str, *, items: str | Sequence[str] | None = None,
               items_prefix: str | None = None, baskets: bool = False, item_column: str = "item",
               id_column: str = "customer_id", rows_are_events: bool = False, min_support: float = 0.01,
               min_confidence: float = 0.5,
               min_lift: float = 1.0, max_len: int = 3, backend: str = "auto", scheduler: str | None = None,
               workers: int | None = None, connect_timeout: float | None = None,
               threads_per_worker: int | None = None, partition_rows: int | None = None,
               batch_rows: int | None = None, overwrite: bool = False, report: bool = True,
               config: str | None = None, progress: str = "quiet") -> Any:
    """Every check ``engine rules`` makes before its work, and its plan (what ``--dry-run`` prints)."""
    from engine.config import load_settings
    from engine.jobs.rules import RulesOptions, plan_rules

    settings = load_settings(config, scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
                             connect_timeout_s=connect_timeout, partition_rows=partition_rows, batch_rows=batch_rows)
    options = RulesOptions(input=str(input), output=str(output), items=tuple(_names(items)),
                           items_prefix=items_prefix, baskets=baskets, item_column=item_column, id_column=id_column,
                           rows_are_events=rows_are_events, min_support=min_support, min_confidence=min_confidence, min_lift=min_lift,
                           max_len=max_len, backend=backend, overwrite=overwrite, progress=progress, report=report)
    return plan_rules(options, settings)


def rules(input: str, output: str, *, say: Say | None = None, **options: Any) -> Any:
    """``engine rules`` as a function: association rules of ``input`` published to ``output``.

    Returns the rules as a ``pyarrow.Table`` (``antecedent``, ``consequent``, ``support``,
    ``confidence``, ``lift``, ``leverage``, ``conviction``, ``customers``; sorted by lift), the
    same rows as ``output/rules.parquet``; its schema metadata ``engine.manifest`` holds the
    run's ``_manifest.json``. Keyword arguments are the CLI's flags (see :func:`rules_plan`).
    """
    import json

    from engine.jobs.rules import execute

    if options.pop("dry_run", False):
        raise UsageError("engine.rules runs; use engine.rules_plan(...) for a dry run")
    result = execute(rules_plan(input, output, **options), say=say)
    meta = {b"engine.manifest": json.dumps(result.manifest, default=str, allow_nan=False).encode()}
    return result.rules.replace_schema_metadata(meta)
