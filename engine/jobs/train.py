"""Training: read (or sample) the dataset, impute, scale, fit both heads, evaluate, save.

The procedure (docs/training.md, "The training procedure"):

1. **Evaluate** the procedure on rows the model did not see: a holdout (``--holdout``,
   by default 20% from :data:`CV_EVAL_MAX_ROWS` labelled rows up), or, below that,
   k-fold cross-validation (out-of-fold predictions). The logistic head's
   regularisation is chosen by stratified k-fold CV (:mod:`engine.models.tuning`)
   on the training side of the holdout only, so the holdout stays unseen.
2. **Refit** the final model on every labelled row with the chosen settings: the
   imputation and scaling statistics, K-means and the logistic head. The model records
   where its metrics came from (``metrics.evaluation``).

With a Dask cluster (``--scheduler`` or ``--workers``) the workers read: one task per
file returns only its sampled rows and columns, so the client holds at most
``--sample-rows`` rows. Fitting then runs where the client runs (scikit-learn on the
host, or cuML on the client's GPU with the GPU backend): the sample is bounded, and a
distributed fit (``cuml.dask``) is not worth its complexity at these sizes.

The holdout evaluation scores through :func:`engine.models.scorer.score_matrix`, the
very arithmetic that ``engine score`` runs, so the metrics describe the scorer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.backends import get_xp, resolve_backend, to_device
from engine.backends.namespace import asnumpy
from engine.config import Settings, unique_names
from engine.errors import InputError, UsageError
from engine.io.dataset import discover, read_training_table, table_to_matrix
from engine.io.text_columns import text_bytes
from engine.io.uri import check as check_uri
from engine.io.uri import is_remote, parse, shown
from engine.io.validate import require_schema
from engine.jobs.heartbeat import Heartbeat
from engine.jobs.progress import Progress
from engine.models.artifact import Preprocess, ScoringModel, check_model_output, save_model
from engine.models.categorical import (
    MAX_LEVEL_CHARS,
    MAX_LEVELS,
    MIN_LEVEL_COUNT,
    PRIVACY_MIN_ROWS,
    Categorical,
    ColumnPlan,
    learn_levels,
    level_matrix,
    one_hot,
    parse_as_of,
    plan_columns,
    total_levels,
    with_dates_as_days,
)
from engine.models.fit import fit_kmeans, fit_logistic
from engine.models.profile import feature_profile, score_profile
from engine.models.scorer import fold, scale_matrix, score_matrix
from engine.models.tuning import DEFAULT_FOLDS, SEARCH_MAX_ROWS, SearchResult, search_logistic
from engine.privacy import (
    MIN_CUSTOMERS,
    bounded_moments,
    clip_bounds,
    coarse_group_means,
    enough,
    mean_minimum,
    min_customers,
    rows_for_customers,
    small_groups,
)

#: Below this many labelled rows the default evaluation is k-fold cross-validation
#: (a 20% holdout of a few thousand rows is both noisy and costly to the model).
CV_EVAL_MAX_ROWS = 20_000
DEFAULT_HOLDOUT = 0.2
KMEANS_INITS = 3


@dataclass(frozen=True)
class TrainOptions:
    input: str
    target: str | None  # None with offers (one head per offer)
    output: str
    k: int = 8
    features: Sequence[str] | None = None
    id_column: str = "customer_id"
    sample_rows: int | None = None
    # None: 0.2 from CV_EVAL_MAX_ROWS labelled rows up, else cross-validated metrics.
    holdout: float | None = None
    seed: int = 42
    backend: str = "auto"
    report: bool = True
    progress: str = "quiet"
    overwrite: bool = False    # replace an existing engine model at ``output`` (never anything else)
    C: float | None = None                        # fixed C (no search)
    c_grid: Sequence[float] | None = None         # the searched grid; default tuning.DEFAULT_C_GRID
    cv_folds: int = DEFAULT_FOLDS
    search_rows: int = SEARCH_MAX_ROWS
    categorical: Sequence[str] = ()               # integer (or other) columns to take as categorical
    positive: str | None = None                   # the target's positive class (--positive)
    as_of: str | None = None                      # YYYY-MM-DD for date features; None: today in UTC
    min_level_count: int = MIN_LEVEL_COUNT        # rows a level needs to be kept (never below 20)
    max_levels: int = MAX_LEVELS                  # kept levels per categorical column
    schema: str | None = None                     # --schema: CSV column types (engine/io/csv_input.py)
    offers: str | None = None                     # offer catalogue (TOML): one head per offer (engine/offers)
    # --rows-are-events: an id may repeat (customers are counted by distinct id); else exit 3.
    rows_are_events: bool = False


@dataclass
class TrainResult:
    model: ScoringModel
    path: str
    rows_read: int
    rows_train: int          # rows of the final fit: every labelled row
    rows_holdout: int        # rows held out for evaluation only (then refitted on)
    seconds: dict[str, float] = field(default_factory=dict)
    # report.html beside the model and its data (metrics, decile table, segments); None without a report.
    report_path: str | None = None
    report: dict[str, Any] | None = None


def split_indices(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and holdout row indices: a seeded permutation, the last ``holdout`` share held out."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(n * holdout))
    return np.sort(perm[: n - n_hold]), np.sort(perm[n - n_hold:])


#: Target values named in an error: at most this many, each held by at least PRIVACY_MIN_ROWS rows.
SHOWN_TARGET_VALUES = 5


def _target_values_text(col: pa.ChunkedArray) -> str:
    """A few of the target's values (each held by enough rows to name it), for an error message."""
    from engine.models.categorical import PRIVACY_MIN_ROWS

    values = col.drop_null()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    counts = pc.value_counts(values)
    pairs = sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()),
                   key=lambda vc: (-vc[1], str(vc[0])))
    shown = [repr(v) for v, c in pairs if c >= PRIVACY_MIN_ROWS][:SHOWN_TARGET_VALUES]
    more = len(pairs) - len(shown)
    return (", ".join(shown) or "none held by 20 rows or more") + (f" and {more} other value(s)" if more else "")


def _positive_mask(col: pa.ChunkedArray, positive: str, target: str, source: str) -> np.ndarray:
    """Rows whose target is the ``--positive`` value (compared as text: 'Yes', 'true', '1')."""
    values = col
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_floating(values.type):
        try:
            probe = float(positive)
        except ValueError:
            raise UsageError(f"--positive {positive!r} is not a number, and target column {target!r} in {source} "
                             f"holds numbers: {_target_values_text(col)}") from None
        hit = pc.equal(values, pa.scalar(probe, values.type))
    else:
        text = pc.cast(values, pa.string()) if not pa.types.is_string(values.type) else values
        hit = pc.equal(text, pa.scalar(positive.lower() if pa.types.is_boolean(values.type) else positive))
    mask = np.asarray(hit.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    if not mask.any():
        raise UsageError(f"--positive {positive!r} matches no row of target column {target!r} in {source}; "
                         f"its values: {_target_values_text(col)}")
    return mask


def binary_target(table: pa.Table, target: str, source: str,
                  positive: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The target as 0/1 floats and the mask of rows that have one; anything else is an error.

    With ``positive`` (``--positive``), a string, boolean, dictionary or integer target is 1
    where it equals that value and 0 elsewhere; without, it must be 0/1 or boolean
    (a usage error, exit 2, that lists a few of its values and names the flag).
    """
    col = table.column(target)
    valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
    typed = (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type) or pa.types.is_floating(col.type)
             or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
             or pa.types.is_dictionary(col.type))
    if not typed:
        raise InputError(f"target column {target!r} in {source} has type {col.type}; it must be 0/1, boolean, "
                         "or a string/integer column with --positive VALUE naming the positive class")
    if positive is not None:
        if pa.types.is_floating(col.type):
            valid &= ~np.isnan(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64))
        values = _positive_mask(col, positive, target, source).astype(np.float64)
        y = values[valid]
        if y.size and (y.min() == y.max()):
            raise InputError(f"target column {target!r} in {source} has a single class; both 0 and 1 are needed")
        return np.where(valid, values, 0.0), valid
    if not (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type) or pa.types.is_floating(col.type)):
        raise UsageError(f"target column {target!r} in {source} has type {col.type} and values "
                         f"{_target_values_text(col)}; name the positive class with --positive VALUE "
                         f"(e.g. --positive Yes)")
    values = col.to_numpy(zero_copy_only=False).astype(np.float64)
    values = np.where(valid, values, 0.0)
    if np.isnan(values).any():
        valid &= ~np.isnan(values)
    bad = valid & (values != 0.0) & (values != 1.0)
    if bad.any():
        raise UsageError(
            f"target column {target!r} in {source} is not 0/1 (first other value at sampled row "
            f"{int(np.argmax(bad))}; values: {_target_values_text(col)}); name the positive class with "
            "--positive VALUE (e.g. --positive 1)"
        )
    y = values[valid]
    if y.size and (y.min() == y.max()):
        raise InputError(f"target column {target!r} in {source} has a single class; both 0 and 1 are needed")
    return values, valid


# Float64 copies of the training matrix alive at the peak of training: the Arrow table, the
# matrix, its labelled rows, the scaled matrices of the evaluation and of the final fit,
# and the fitters' own copies.
TRAINING_COPIES = 7
# Decoded copies of a text column alive at once: the Arrow table's and the strings its levels
# are learned from (a dictionary or binary column is decoded or cast to strings).
TEXT_COPIES = 2


def check_training_memory(rows: int, n_features: int, source: str, available: int | None = None,
                          text_bytes: dict[str, int] | None = None, total_rows: int | None = None) -> None:
    """Refuse, before reading anything, a training set that cannot fit in this machine's memory.

    ``text_bytes``: the decoded bytes of each string or binary column over all ``total_rows``
    rows of the input (:func:`engine.io.text_columns.text_bytes`, from footers and dictionary
    pages); a sample of ``rows`` holds its share of them.
    """

    text = {n: b for n, b in (text_bytes or {}).items() if b}
    text_per_row = sum(text.values()) / max(total_rows or rows, 1)
    per_row = (n_features + 1) * 8 * TRAINING_COPIES + text_per_row * TEXT_COPIES
    need = rows * per_row
    available = _available_memory() if available is None else available
    if need > 0.8 * available:
        fits = int(0.8 * available / per_row)
        fits = fits // 1_000 * 1_000 if fits >= 1_000 else fits
        biggest = max(text, key=lambda n: text[n], default=None)
        of_text = ""
        if biggest is not None and text[biggest] * rows / max(total_rows or rows, 1) * TEXT_COPIES > need / 2:
            of_text = (f" (most of it the text of column {biggest}: about "
                       f"{text[biggest] / max(total_rows or rows, 1):,.0f} bytes a row once decoded)")
        raise UsageError(
            f"training on {rows:,} rows of {source} needs about {need / 2**30:.1f} GiB of memory{of_text} and "
            f"{available / 2**30:.1f} GiB is available; train on a uniform sample with --sample-rows "
            f"(at most about {fits:,} rows here; a few million rows lose nothing measurable for k-means "
            "and a linear model)" + (f", or leave column {biggest} out with --features" if of_text else "")
        )


def _available_memory() -> int:
    """Free memory, capped by this process's address-space limit (``ulimit -v``) where one is set."""
    import resource

    import psutil

    available = int(psutil.virtual_memory().available)
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        available = min(available, max(0, soft - psutil.Process().memory_info().vms))
    return available


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """AUC, log loss, accuracy at 0.5 and base rate of predictions ``p`` for labels ``y``."""
    from sklearn.metrics import log_loss, roc_auc_score

    if y.size == 0:
        return {}
    p = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    both = 0 < y.sum() < y.size
    return {
        "auc": float(roc_auc_score(y, p)) if both else None,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "accuracy": float(((p >= 0.5) == (y == 1)).mean()),
        "base_rate": float(y.mean()),
        "rows": int(y.size),
    }


def _read_on_cluster(dataset: Any, columns: list[str], options: TrainOptions, settings: Settings,
                     say: Callable[[str], None], on_file: Callable[[int], None]) -> pa.Table:
    """The training table, read by the Dask workers of ``settings``' cluster."""
    from engine.cluster import cluster_failures, open_client, ready_workers

    # Reading is host I/O whatever the backend, so a local cluster is always a CPU one.
    with open_client(settings, "cpu") as client, cluster_failures(settings):
        # The root alone is not enough: an unmounted share still leaves its empty mount point.
        ready_workers(client, settings, list(dict.fromkeys([dataset.root, dataset.files[0].path])), [])
        say(f"reading on {len(client.scheduler_info()['workers'])} Dask worker(s) "
            f"({settings.scheduler or 'local cluster'})")
        return read_training_table(dataset, columns, options.sample_rows, options.seed, client=client,
                                   on_file=on_file)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def _check_types(options: TrainOptions) -> None:
    """Each option of the type it must have (the Python API passes anything): a :class:`UsageError`."""
    def bad(flag: str, want: str, value: Any) -> UsageError:
        return UsageError(f"--{flag} must be {want}, not {value!r} ({type(value).__name__})")

    named = (("input", options.input), ("output", options.output), ("id-column", options.id_column))
    for flag, value in (*named, *((("target", options.target),) if options.offers is None else ())):
        if not isinstance(value, str) or not value:
            raise bad(flag, "a non-empty string" + (" naming a path" if flag in ("input", "output") else ""),
                      value)
    for flag, value in (("k", options.k), ("seed", options.seed), ("cv-folds", options.cv_folds)):
        if not _is_int(value):
            raise bad(flag, "a whole number", value)
    if options.sample_rows is not None and not _is_int(options.sample_rows):
        raise bad("sample-rows", "a whole number", options.sample_rows)
    for flag, value in (("holdout", options.holdout), ("C", options.C)):
        if value is not None and not _is_number(value):
            raise bad(flag, "a number", value)
    if options.c_grid is not None and (isinstance(options.c_grid, str)
                                       or not all(_is_number(c) for c in options.c_grid)):
        raise bad("c-grid", "a list of numbers", options.c_grid)
    for flag, value in (("positive", options.positive), ("as-of", options.as_of)):
        if value is not None and not isinstance(value, str):
            raise bad(flag, "a string", value)
    for flag, names in (("features", options.features), ("categorical", options.categorical)):
        if names is not None and not all(isinstance(n, str) and n for n in names):
            raise bad(flag, "a list of column names", names)


def validate_options(options: TrainOptions) -> None:
    """Every flag checked before anything is read: a :class:`UsageError` (exit 2) naming it."""
    _check_types(options)
    if bool(options.target) == bool(options.offers):
        raise UsageError("give --target COLUMN (one propensity head) or --offers FILE (one head per offer), "
                         "not " + ("both" if options.target else "neither"))
    if options.offers and options.positive is not None:
        raise UsageError("--positive applies to --target; with --offers give each offer's `positive` in the catalogue")
    if options.k < 1:
        raise UsageError("--k must be at least 1")
    if options.holdout is not None and not 0.0 <= options.holdout < 0.9:
        raise UsageError("--holdout must be in [0, 0.9)")
    if options.sample_rows is not None and options.sample_rows < 1:
        raise UsageError("--sample-rows must be at least 1")
    if options.C is not None and not (np.isfinite(options.C) and options.C > 0):
        raise UsageError(f"--C must be a positive number, not {options.C}")
    if options.C is not None and options.c_grid:
        raise UsageError("--C fixes C and --c-grid searches C: give one of them")
    if options.c_grid is not None:
        grid = list(options.c_grid)
        if not grid or not all(np.isfinite(c) and c > 0 for c in grid):
            raise UsageError(f"--c-grid must list positive numbers, e.g. 0.01,0.1,1; got {grid}")
    if not 2 <= options.cv_folds <= 20:
        raise UsageError(f"--cv-folds must be between 2 and 20, not {options.cv_folds}")
    if options.search_rows < 100:
        raise UsageError("the search sample must hold at least 100 rows")
    if options.min_level_count < PRIVACY_MIN_ROWS:
        raise UsageError(f"min_level_count must be at least {PRIVACY_MIN_ROWS} (no level of fewer customers is "
                         f"stored), not {options.min_level_count}")
    if options.max_levels < 1:
        raise UsageError(f"max_levels must be at least 1, not {options.max_levels}")
    if options.positive is not None and options.positive == "":
        raise UsageError("--positive must name a value of the target column, e.g. --positive Yes")
    if options.categorical:
        unique_names(options.categorical, "--categorical")
    parse_as_of(options.as_of)
    if options.schema is not None:
        from engine.io.csv_input import parse_schema

        parse_schema(options.schema)


def train(options: TrainOptions, on_step: Callable[[str], None] | None = None,
          settings: Settings | None = None) -> TrainResult:
    """Fit and save a model from a Parquet dataset; see :class:`TrainOptions`.

    ``settings`` with a ``scheduler`` or ``workers`` reads the data on that Dask cluster;
    without, everything runs in this process. ``on_step`` receives the step lines (and
    a repeat of the current one every ``settings.progress_interval_s`` during long steps).
    """
    say = on_step or (lambda _msg: None)
    # Every path flag's scheme first: an unsupported one is exit 2 before anything is read or made.
    check_uri(options.input, "--input")
    check_uri(options.output, "--output")
    validate_options(options)
    if options.features:
        unique_names(options.features, "--features")
    # Before reading anything: where the model goes must be allowed (checked again at save).
    check_model_output(options.output, overwrite=options.overwrite, protected={"the input": options.input})
    backend = resolve_backend(options.backend)
    xp = get_xp(backend)
    seconds: dict[str, float] = {}
    interval = (settings or Settings()).progress_interval_s

    t0 = time.perf_counter()
    on_cluster = settings is not None and bool(settings.scheduler or settings.workers)
    # Workers of an attached cluster run in their own working directory: give them absolute paths.
    attached = settings is not None and bool(settings.scheduler)
    from engine.io.csv_input import parse_schema

    dataset = discover(Path(parse(options.input, "--input")).absolute()
                       if attached and not is_remote(options.input) else options.input,
                       csv_types=parse_schema(options.schema) or None)
    catalogue = None
    if options.offers:
        from engine.offers.catalogue import load_catalogue

        catalogue = load_catalogue(options.offers)
    targets = list(catalogue.targets) if catalogue is not None else [options.target]
    exclude = [options.id_column, *targets]
    if catalogue is not None:
        # With offers, --features may name other offers' targets (each head's own target is
        # masked out of its fit: engine/jobs/train_offers.py); by default none is a feature.
        exclude = [options.id_column, *(t for t in targets if t not in (options.features or ()))]
    clash = [c for c in (options.features or ()) if c in exclude]
    if clash:
        raise UsageError(f"--features must not include the id or target column: {', '.join(clash)}")
    schema = pa.schema(list(dataset.files[0].schema)
                       + [pa.field(k, t) for k, t in dataset.partition_columns.items()
                          if k not in dataset.files[0].schema.names])
    # Ids are needed to score, not to train: a table without one trains (and says so).
    has_id = options.id_column in schema.names
    if not has_id:
        say(f"no id column {options.id_column!r} in {dataset.root}: training without ids (scoring will need "
            "one; name it with --id-column when the model scores)")
    if catalogue is not None:
        from engine.offers.catalogue import check_columns

        check_columns(catalogue, schema, targets=True, id_column=options.id_column)
    plan = plan_columns(schema, exclude, options.features, options.categorical)
    if catalogue is not None:
        from engine.offers.catalogue import check_exclusions

        check_exclusions(catalogue, [*plan.features, *plan.categorical])
    features = list(plan.features)
    if not features and not plan.categorical:
        raise InputError(f"input {dataset.root} has no feature columns besides {exclude}"
                         + "".join(f"; {n}: {why}" for n, why in plan.left_out[:5]))
    if not features:
        # The segmenter's space and the model file need one numeric or date column (issue 23:
        # a model of categorical columns only was written and then refused by every reader).
        raise UsageError(f"--features names only categorical columns ({', '.join(plan.categorical)}): add at "
                         "least one numeric or date column to --features")
    require_schema(dataset, numeric=list(plan.numeric),
                   present=[options.id_column, *targets] if has_id else targets,
                   dates=plan.dates, categorical=plan.categorical, ids=[options.id_column] if has_id else [])
    # Text columns: their decoded size (footers and dictionary pages; categorical ones checked to be UTF-8).
    read_text = text_bytes(dataset, [*plan.categorical, *targets, *([options.id_column] if has_id else [])],
                           utf8=plan.categorical)
    check_training_memory(min(dataset.num_rows, options.sample_rows or dataset.num_rows),
                          len(features) + len(plan.categorical), dataset.root, text_bytes=read_text,
                          total_rows=dataset.num_rows)
    # Steps: one per file read, the K-means initialisations, the CV folds, the fits, the report.
    # (L1 folds, searched on small data only, are not counted as steps.)
    progress = Progress("train", len(dataset.files) + KMEANS_INITS + options.cv_folds + 3, unit="steps",
                        mode=options.progress, interval=interval)
    try:
        def announce(step: str) -> None:
            say(step)
            progress.note(step.split(": still running")[0])

        with Heartbeat(announce, interval) as beat:
            beat.step(f"reading {dataset.num_rows:,} rows from {len(dataset.files)} file(s)"
                      + (f", sampling {options.sample_rows:,}" if options.sample_rows else ""))
            files_done = [0]

            def file_read(rows: int) -> None:
                files_done[0] += 1
                progress.advance(1, rows=rows)
                beat.step(f"reading: file {files_done[0]} of {len(dataset.files)} done")

            columns = list(dict.fromkeys(features + list(plan.categorical) + targets
                                         + ([options.id_column] if has_id else [])))
            if on_cluster:
                assert settings is not None
                table = _read_on_cluster(dataset, columns, options, settings, say, file_read)
            else:
                table = read_training_table(dataset, columns, options.sample_rows, options.seed, on_file=file_read)
            minimum = min_customers((settings or Settings()).privacy_min_customers)
            per_customer = 1
            if has_id:
                minimum, per_customer = customer_minimum(table, options.id_column, dataset.root,
                                                         options.rows_are_events, minimum, say)
            if catalogue is not None:
                from engine.jobs.train_offers import fit_and_save_offers

                return fit_and_save_offers(options, catalogue, dataset, plan, table, backend, xp, seconds, t0, beat,
                                           progress, minimum, per_customer)
            return _fit_and_save(options, dataset, plan, table, backend, xp, seconds, t0, beat, progress,
                                 minimum, per_customer)
    finally:
        progress.close()


def suggested_features(plan: ColumnPlan, drop: Sequence[str]) -> str:
    """The ``--features`` list of the run's own feature set (numeric, date and categorical) less ``drop``.

    Pasted back, it trains on the same features less those (a test does exactly that).
    """
    gone = set(drop)
    return ",".join(n for n in (*plan.numeric, *plan.dates, *plan.categorical) if n not in gone)


def customer_minimum(table: pa.Table, id_column: str, source: str, rows_are_events: bool, minimum: int,
                     say: Callable[[str], None] = lambda _m: None) -> tuple[int, int]:
    """The privacy minimum in rows for this table (``minimum`` when every id is distinct), and
    the most rows one customer has (1 unless rows are events: a customer's weight in a mean).

    Customers are ids, not rows. A repeated id is an input error (exit 3) naming the column
    and the count, unless the rows are events (``--rows-are-events``); then the minimum in rows
    is :func:`engine.privacy.rows_for_customers`, so every group of that many rows holds
    ``minimum`` distinct customers (a null id counted as a repeat of the heaviest customer).
    """
    col = table.column(id_column)
    rows = table.num_rows
    nulls = col.null_count
    counts = pc.value_counts(col.drop_null())
    distinct = len(counts)
    heaviest = int(pc.max(counts.field("counts")).as_py() or 0) if distinct else 0
    repeated = rows - nulls - distinct
    if repeated and not rows_are_events:
        ids = int(pc.sum(pc.greater(counts.field("counts"), 1)).as_py() or 0)
        raise InputError(
            f"input {source}: id column {id_column!r} repeats {ids:,} id(s) over {repeated:,} extra rows "
            f"({distinct:,} distinct customers in {rows:,} rows). Customers are counted by id for the privacy "
            f"minimum of {minimum}: deduplicate to one row per customer, name the right column with --id-column, "
            "or pass --rows-are-events if each row is an event of a customer"
        )
    if not rows_are_events:
        return minimum, 1   # one row per customer; a row without an id is a customer of its own
    # Events: a null id may be anyone's, so each counts as a row of the heaviest customer.
    needed = rows_for_customers(minimum, rows, distinct, heaviest + nulls)
    if needed != minimum:
        say(f"rows are events: {distinct:,} customers in {rows:,} rows (up to {heaviest:,} rows each); every "
            f"stored group needs {needed:,} rows to hold {minimum} customers for sure")
    return needed, max(1, heaviest + nulls)


def _refuse_small_class(y: np.ndarray, options: TrainOptions, source: str, minimum: int) -> None:
    """Exit 3 when either class of the target is held by fewer than ``minimum`` customers: the
    class (and with ``--positive`` its value, stored in the model) would describe them."""
    positives = int(np.count_nonzero(y == 1.0))
    for name, held in (("positive", positives), ("negative", int(y.size) - positives)):
        if 0 < held < minimum:
            what = "the --positive value" if options.positive is not None else f"{name} target value"
            raise InputError(
                f"input {source}: the {name} class of target column {options.target!r} ({what}) is held by "
                f"fewer than {minimum} customers; a model of it would describe them. Choose a class held by at "
                f"least {minimum} customers, or train on more rows"
            )


def _preprocess(X: Any, features: list[str], xp: Any, minimum: int = MIN_CUSTOMERS,
                plan: ColumnPlan | None = None, rows_per_customer: int = 1) -> Preprocess:
    """Mean imputation and standardisation statistics of ``X`` (±inf counts as missing), each a
    bounded statistic of :mod:`engine.privacy` (clipped, coarsened to one customer's influence)."""
    finite = xp.where(xp.isinf(X), xp.nan, X)
    present = asnumpy((~xp.isnan(finite)).sum(axis=0))
    # engine.privacy: a mean needs twice the minimum (a crowd at each clipping bound).
    need = mean_minimum(minimum)
    few = [j for j in range(len(features)) if not enough(int(present[j]), need)]
    if few:
        named = ", ".join(f"{features[j]} ({int(present[j])})" for j in few)
        dropped = [features[j] for j in few]
        rest = (suggested_features(plan, dropped) if plan is not None
                else ",".join(f for j, f in enumerate(features) if j not in few))
        raise InputError(
            f"feature column(s) {named} have fewer than {need} non-null values in the training rows "
            f"(a mean needs twice the privacy minimum of {minimum} customers); a statistic of so few customers "
            f"would describe single customers. Drop them with "
            f"--features {rest or '...'}, or train on more rows"
        )
    # engine.privacy: the fill (= centre) and the scale are stored and shown (`model show`), so
    # they are bounded means and spreads: clipped at the minimum-th smallest and largest value
    # and rounded to one customer's whole influence, so a reader who knows every other value
    # cannot solve them for the last one. Scoring needs no more: any fixed centre and scale
    # standardise as well (the fit is made on the features scaled by exactly these).
    host = asnumpy(finite)
    fill = np.empty(len(features))
    scale = np.empty(len(features))
    for j in range(len(features)):
        col = host[:, j]
        present_values = col[~np.isnan(col)]
        # The spread of the values present (clipped at the same crowds): a mostly-null column's
        # imputed copy would clip to a sliver around the fill and blow its few values apart.
        fill[j], spread = bounded_moments(present_values, minimum, rows_per_customer)
        # A constant column carries no information; scale 1 keeps it finite (as StandardScaler does).
        scale[j] = spread if spread else 1.0
    del finite, host
    return Preprocess(fill=fill, mean=fill.copy(), scale=scale)


#: An integer column unique per row is taken for an identifier only from this many rows up (a
#: small table's amounts can all differ by chance).
ID_LIKE_MIN_ROWS = 1_000
#: ... and only when its values span at most this many times the rows (keys are dense; amounts are not).
ID_SPAN_PER_ROW = 4
#: Integer columns with at most this many distinct values (and more than 2) get a --categorical hint.
CODE_HINT_MAX_DISTINCT = 20


def _id_like(col: pa.ChunkedArray, present: int) -> bool:
    """An integer column already known unique per row that also reads as a row key: many rows and its
    values packed within :data:`ID_SPAN_PER_ROW` x the rows (1, 2, 3 ... or with gaps). Amounts that
    merely happen to differ (incomes of a small table) spread far wider and stay features."""
    if present < ID_LIKE_MIN_ROWS:
        return False
    bounds = pc.min_max(col)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return low is not None and high is not None and (high - low + 1) <= ID_SPAN_PER_ROW * present


def _long_levels(col: pa.ChunkedArray, min_count: int) -> int:
    """How many values of at least ``min_count`` rows are longer than a level may be (they are not kept)."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return 0
    lengths = pc.utf8_length(col)
    if (pc.max(lengths).as_py() or 0) <= MAX_LEVEL_CHARS:
        return 0
    counts = pc.value_counts(col.filter(pc.greater(lengths, MAX_LEVEL_CHARS)))
    return int(np.count_nonzero(counts.field("counts").to_numpy(zero_copy_only=False) >= min_count))


def left_out_by_data(table: pa.Table, plan: ColumnPlan, max_levels: int,
                     min_count: int) -> tuple[ColumnPlan, list[dict[str, str]]]:
    """The plan less the columns the data shows to be useless, each with its reason; and hints.

    Left out: a column with one value in every row (constant); a text column, or an integer
    one of :data:`ID_LIKE_MIN_ROWS` rows or more whose values are packed like row keys, unique
    per row (an identifier, never a
    feature); a categorical column whose ``max_levels`` most frequent values of at least
    ``min_count`` rows hold under half the rows (too many levels). Hinted: integer columns
    with a few distinct values, which may be codes (``--categorical``).
    """
    from dataclasses import replace

    n = table.num_rows
    left, hints, drop = list(plan.left_out), [], set()
    for name in (*plan.numeric, *plan.categorical):
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        present = n - col.null_count
        if present == 0:
            continue  # all null: the privacy check names it with the fix
        distinct = int(pc.count_distinct(col).as_py())
        integer = pa.types.is_integer(col.type)
        reason = None
        if distinct == 1 and present == n:
            reason = "constant (the same value in every row): it cannot tell customers apart"
        elif (distinct == present and present >= PRIVACY_MIN_ROWS
              and (name in plan.categorical and not integer or integer and _id_like(col, present))):
            reason = "unique per row: an identifier, never a feature"
        elif name in plan.categorical and distinct > max_levels:
            counts = np.sort(pc.value_counts(col.drop_null()).field("counts").to_numpy(zero_copy_only=False))[::-1]
            kept = counts[:max_levels]
            covered = float(kept[kept >= min_count].sum()) / n
            if covered < 0.5:
                reason = (f"too many levels for max_levels={max_levels}: {distinct:,} distinct values, and the "
                          f"levels it would keep hold only {covered:.0%} of the rows")
        if reason:
            drop.add(name)
            left.append((name, reason))
        elif name in plan.categorical and (long := _long_levels(col, min_count)):
            hints.append({"name": name, "hint": f"{long:,} value(s) held by {min_count}+ rows are longer than "
                                                f"{MAX_LEVEL_CHARS} characters, the most a model's level holds: not "
                                                "kept as levels (their rows count as other). Shorten them (a code) "
                                                "to keep them"})
        elif integer and name in plan.numeric and 2 < distinct <= CODE_HINT_MAX_DISTINCT:
            hints.append({"name": name, "hint": f"{distinct} distinct integer values: if they are codes (a store, "
                                                f"a region), not amounts, pass --categorical {name}"})
    if not drop:
        return plan, hints
    return replace(plan, numeric=tuple(c for c in plan.numeric if c not in drop),
                   categorical=tuple(c for c in plan.categorical if c not in drop), left_out=tuple(left)), hints


def _refuse_too_large(X: np.ndarray, features: list[str], root: str, plan: ColumnPlan | None = None) -> None:
    """Finite values beyond :data:`engine.jobs.blocks.MAX_INPUT_ABS` in training data: exit 3
    naming the columns (the input is at fault, not the model the fit would produce)."""
    from engine.jobs.blocks import MAX_INPUT_ABS

    with np.errstate(invalid="ignore"):
        big = (np.abs(X) > MAX_INPUT_ABS) & np.isfinite(X)
    cols = np.flatnonzero(big.any(axis=0))
    if cols.size:
        named = ", ".join(f"{features[j]} ({int(big[:, j].sum())} rows)" for j in cols)
        raise InputError(
            f"input {root}: feature column(s) {named} hold finite values beyond ±{MAX_INPUT_ABS:g}, too large "
            "to train on exactly; fix or drop those rows (or the column, with --features "
            + (suggested_features(plan, [features[j] for j in cols]) if plan is not None else "...") + ")"
        )


def _private_kmeans(Z: Any, k: int, seed: int, xp: Any, init_step: Callable[[int, int], None],
                    beat: Heartbeat, minimum: int = MIN_CUSTOMERS,
                    rows_per_customer: int = 1) -> tuple[np.ndarray, float, int]:
    """K-means whose every segment holds at least the privacy minimum of training customers.

    A segment is a statistic too (its centroid is its customers' mean): fitted on columns
    clipped at :func:`engine.privacy.clip_bounds` (a lone extreme customer joins a crowd
    of at least the minimum), and if a segment is still smaller, segments are merged (k one
    lower, refitted) down to k=2; below that the training is refused, saying why. The stored
    centroids are :func:`engine.privacy.coarse_group_means` (each coordinate rounded to one
    member's whole influence on it), and segments are then assigned by those centroids.
    """
    Zh = asnumpy(Z)
    low, high = np.full(Zh.shape[1], -np.inf), np.full(Zh.shape[1], np.inf)
    for j in range(Zh.shape[1]):
        # The minimum-th smallest and largest values: the crowds at the bounds hold the minimum, and
        # a lone extreme customer moves neither bound (a mean of the extremes would follow them).
        bounds = clip_bounds(Zh[:, j], minimum)
        if bounds is not None:
            low[j], high[j] = bounds
    clipped = xp.clip(Z, to_device(xp, low), to_device(xp, high))
    for k_try in range(k, 1, -1):
        centroids, inertia = fit_kmeans(clipped, k_try, seed, xp=xp, n_init=KMEANS_INITS,
                                        on_init=init_step if k_try == k else None)
        centroids = _coarse_centroids(centroids, clipped, low, high, minimum, rows_per_customer, xp)
        # Segments as scoring assigns them: every row, unclipped, to its nearest centroid.
        d = (Zh ** 2).sum(axis=1)[:, None] - 2.0 * Zh @ centroids.T + (centroids ** 2).sum(axis=1)[None, :]
        counts = np.bincount(np.argmin(d, axis=1), minlength=k_try)
        # The recorded inertia is that of the stored centroids on the rows as they are.
        inertia = float(np.maximum(d.min(axis=1), 0.0).sum())
        if not small_groups(counts, minimum) and (counts > 0).all():
            if k_try != k:
                beat.step(f"K-means: k={k} gave a segment of fewer than {minimum} customers; merged to k={k_try}")
            return centroids, inertia, k_try
    if k == 1:
        centroids, inertia = fit_kmeans(clipped, 1, seed, xp=xp, n_init=1, on_init=init_step)
        return _coarse_centroids(centroids, clipped, low, high, minimum, rows_per_customer, xp), inertia, 1
    raise InputError(
        f"K-means gives a segment of fewer than {minimum} customers (rows, with --rows-are-events) at every k from {k} down to 2 "
        f"({Zh.shape[0]:,} training rows); a segment that small would describe single customers. "
        "Train on more rows, or with --k 1"
    )


def _coarse_centroids(centroids: np.ndarray, clipped: Any, low: np.ndarray, high: np.ndarray, minimum: int,
                      rows_per_customer: int, xp: Any) -> np.ndarray:
    """``centroids`` rounded to one member's influence (engine.privacy), members counted on the
    clipped rows the fit saw; a segment below the minimum keeps its centroid (the caller merges it)."""
    C = np.asarray(centroids, dtype=np.float64)
    c = to_device(xp, C)
    d = (clipped ** 2).sum(axis=1)[:, None] - 2.0 * clipped @ c.T + (c ** 2).sum(axis=1)[None, :]
    counts = asnumpy(xp.bincount(xp.argmin(d, axis=1), minlength=C.shape[0]))
    coarse = coarse_group_means(C, np.maximum(counts, minimum), low, high, minimum, rows_per_customer)
    return np.where(counts[:, None] >= minimum, coarse, C)


def _scaled(X: Any, pre: Preprocess, xp: Any) -> Any:
    return scale_matrix(xp.where(xp.isinf(X), xp.nan, X), pre, xp=xp)


def to_arrow_mask(mask: np.ndarray) -> pa.Array:
    from engine.io.matrix import to_arrow

    return to_arrow(np.asarray(mask, dtype=bool))


def categorical_profile(cats: Sequence[Categorical], level_rows: dict[str, dict[str, int]],
                        n: int) -> dict[str, Any]:
    """Training share of every level (kept ones, other, missing); a share of fewer than 20 rows is stored as 0."""
    out = {}
    for cat in cats:
        counts = level_rows[cat.name]
        rows = [counts.get(label, 0) for label in cat.labels()]
        shares = [r / n if r >= PRIVACY_MIN_ROWS and n else 0.0 for r in rows]
        out[cat.name] = {"levels": cat.labels(), "shares": shares}
    return out


def column_record(plan: ColumnPlan, cats: Sequence[Categorical]) -> dict[str, Any]:
    """Every column of the input and what training made of it (the summary, `model show` and the report list it)."""
    return {
        "numeric": list(plan.numeric),
        "date": list(plan.dates),
        "categorical": [{"name": c.name, "levels": c.n_levels} for c in cats],
        "left_out": [{"name": name, "reason": why} for name, why in plan.left_out],
    }


def learn_table_levels(table: pa.Table, plan: ColumnPlan, options: TrainOptions,
                       minimum: int) -> tuple[tuple[Any, ...], dict[str, dict[str, int]], int, np.ndarray | None]:
    """The categorical columns' levels learned on ``table``: (levels per column, training rows per
    level, total levels, the table's level-index matrix or None without categoricals)."""
    learned = [learn_levels(table.column(name), name, max(options.min_level_count, minimum), options.max_levels)
               for name in plan.categorical]
    cats = tuple(cat for cat, _ in learned)
    level_rows = {cat.name: counts for cat, counts in learned}
    return cats, level_rows, total_levels(cats), (level_matrix(table, cats) if cats else None)


def fit_segmenter(Z: Any, options: TrainOptions, xp: Any, progress: Any, beat: Any,
                  minimum: int, rows_per_customer: int = 1) -> tuple[Any, float, int]:
    """K-means on the design matrix with a progress step per initialisation: (centroids, inertia, k used)."""
    def init_step(i: int, m: int) -> None:
        if i:
            progress.advance(1)
        beat.step(f"K-means init {i + 1} of {m}")

    fitted = _private_kmeans(Z, options.k, options.seed, xp, init_step, beat, minimum, rows_per_customer)
    progress.advance(1)
    return fitted


def evaluation_plan(rows: int, holdout: float | None) -> tuple[str, float]:
    """``(kind, holdout share)``: ``holdout`` with a share, ``cv``, or ``none`` (train metrics only)."""
    share = holdout if holdout is not None else (DEFAULT_HOLDOUT if rows >= CV_EVAL_MAX_ROWS else 0.0)
    if share > 0:
        return "holdout", share
    return ("cv", 0.0) if rows <= SEARCH_MAX_ROWS else ("none", 0.0)


def _design(Z: Any, levels: np.ndarray | None, n_levels: int, xp: Any) -> Any:
    """The fitted design matrix: scaled numeric columns, then the one-hot blocks (unscaled)."""
    if levels is None:
        return Z
    return xp.hstack([Z, to_device(xp, one_hot(levels, n_levels)).astype(Z.dtype)])


def _fit_and_save(options: TrainOptions, dataset: Any, plan: ColumnPlan, table: pa.Table, backend: str,
                  xp: Any, seconds: dict[str, float], t0: float, beat: Heartbeat,
                  progress: Progress, minimum: int = MIN_CUSTOMERS, per_customer: int = 1) -> TrainResult:
    """Evaluate the procedure, refit on every labelled row, save the artifact and report.

    ``minimum`` is the privacy minimum in rows, ``per_customer`` the most rows one customer has
    (1 unless rows are events): their weight in every bounded mean."""
    plan, hints = left_out_by_data(table, plan, options.max_levels, max(options.min_level_count, minimum))
    for name, why in plan.left_out:
        if not why.startswith(("not in --features", "type ")):
            beat.step(f"left out {name}: {why}")
    features = list(plan.features)
    if not features and not plan.categorical:
        raise InputError(f"input {dataset.root} has no usable feature column: "
                         + "; ".join(f"{n}: {why}" for n, why in plan.left_out[:5]))
    # Named, or the heartbeat would go on saying "reading: file N of N done" while this runs.
    beat.step(f"preparing {table.num_rows:,} rows x {len(features) + len(plan.categorical)} features: "
              "target, levels, imputation, scaling")
    y_all, has_target = binary_target(table, options.target, dataset.root, options.positive)
    target_type = str(table.schema.field(options.target).type)
    _refuse_small_class(y_all[has_target], options, dataset.root, minimum)
    as_of = parse_as_of(options.as_of) if plan.dates else None
    if as_of is not None:
        table = with_dates_as_days(table, plan.dates, as_of)
    X_all = table_to_matrix(table, features)
    # Levels are learned on the labelled rows (no label is looked at): the final fit's rows.
    labelled = table.filter(to_arrow_mask(has_target))
    cats, level_rows, n_levels, L_host = learn_table_levels(labelled, plan, options, minimum)
    rows_read = table.num_rows
    del table, labelled
    _refuse_too_large(X_all, features, dataset.root, plan)
    X_host, y_host = X_all[has_target], y_all[has_target]
    n = X_host.shape[0]
    if n < max(2 * options.k, 10):
        raise InputError(f"input {dataset.root} has only {n} rows with a target; too few to train")
    seconds["read"] = time.perf_counter() - t0
    kind, share = evaluation_plan(n, options.holdout)
    # CV metrics need out-of-fold predictions for every row: search them all (at most SEARCH_MAX_ROWS).
    search_rows = max(n, options.search_rows) if kind == "cv" else options.search_rows
    # Each C once, in order: a value given twice would be fitted twice and shown twice.
    grid = tuple(sorted(set(options.c_grid))) if options.c_grid else None

    def fold_step(penalty: str, f: int, m: int) -> None:
        if f and penalty == "l2":
            progress.advance(1)
        beat.step(f"logistic CV ({penalty.upper()}): fold {f + 1} of {m}")

    def search(Z: Any, y: np.ndarray) -> SearchResult:
        found = search_logistic(Z, y, options.seed, xp=xp, grid=grid, fixed_C=options.C, folds=options.cv_folds,
                                max_rows=search_rows, on_fold=fold_step)
        progress.advance(1)
        beat.step(f"logistic CV: chose {found.penalty.upper()} C={found.C:.4g} ({found.selected_by}, "
                  f"{found.folds} folds over {found.rows:,} rows)")
        return found

    t0 = time.perf_counter()
    everyone = np.arange(n)
    train_idx, hold_idx = split_indices(n, share, options.seed) if kind == "holdout" else (everyone, everyone[:0])
    y_dev = to_device(xp, y_host)
    evaluation: dict[str, Any] = {"kind": kind, "rows": int(hold_idx.size if kind == "holdout" else n)}
    eval_fit: tuple[Preprocess, np.ndarray, float] | None = None
    if kind == "holdout":
        # The evaluated procedure sees only the training side: its own statistics, C and fit.
        X_tr = to_device(xp, np.asfortranarray(X_host[train_idx]))
        pre_tr = _preprocess(X_tr, features, xp, minimum, plan, per_customer)
        Z_tr = _design(_scaled(X_tr, pre_tr, xp), L_host[train_idx] if L_host is not None else None, n_levels, xp)
        del X_tr
        chosen = search(Z_tr, y_host[train_idx])
        beat.step(f"evaluation fit on {train_idx.size:,} rows (holdout {hold_idx.size:,})")
        coef_ev, b_ev = fit_logistic(Z_tr, y_dev[to_device(xp, train_idx)], options.seed, xp=xp, C=chosen.C,
                                     penalty=chosen.penalty)
        del Z_tr
        eval_fit = (pre_tr, coef_ev, b_ev)
        evaluation["share"] = share
    X = to_device(xp, np.asfortranarray(X_host))
    pre = _preprocess(X, features, xp, minimum, plan, per_customer)
    Z = _design(_scaled(X, pre, xp), L_host, n_levels, xp)
    if kind != "holdout":
        chosen = search(Z, y_host)
        if kind == "cv":
            evaluation["folds"] = chosen.folds
    beat.step(f"fitting K-means (k={options.k}) on all {n:,} labelled rows, {len(features)} features, "
              f"backend {backend}")
    centroids, train_inertia, k_used = fit_segmenter(Z, options, xp, progress, beat, minimum, per_customer)
    beat.step(f"final fit: logistic {chosen.penalty.upper()} C={chosen.C:.4g} on all {n:,} labelled rows")
    coef, intercept = fit_logistic(Z, y_dev, options.seed, xp=xp, C=chosen.C, penalty=chosen.penalty)
    progress.advance(1)
    del Z
    seconds["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    beat.step("evaluating and saving the model")
    F = len(features)
    model = ScoringModel(
        features=tuple(features),
        feature_types=tuple(str(dataset.column_type(f)) for f in features),
        segmenter=pre, centroids=centroids[:, :F], propensity=pre, coef=coef[:F], intercept=intercept,
        id_column=options.id_column, target=options.target,
        categoricals=cats,
        cat_coef=coef[F:] if cats else None,
        cat_centroids=centroids[:, F:] if cats else None,
        cat_onehot=np.ones(n_levels) if cats else None,
        as_of=as_of.isoformat() if as_of is not None else None,
    )
    X = xp.where(xp.isinf(X), xp.nan, X)
    seg_all, _, prop_all = score_matrix(X, fold(model, xp=xp), xp=xp, levels=L_host)
    seg_all, prop_all = asnumpy(seg_all), asnumpy(prop_all)
    del X
    metrics: dict[str, Any] = {
        "evaluation": evaluation,
        "kmeans_inertia_train": train_inertia,
        "kmeans_inertia_train_per_row": train_inertia / n,
        "train": classification_metrics(y_host, prop_all),
    }
    if eval_fit is not None:
        # Scored through the scorer's own arithmetic: the evaluation model's propensity head,
        # the final segmenter (segments of holdout rows are only reported, not evaluated).
        pre_tr, coef_ev, b_ev = eval_fit
        ev_model = ScoringModel(**{**model.__dict__, "propensity": pre_tr, "coef": coef_ev[:F], "intercept": b_ev,
                                   "cat_coef": coef_ev[F:] if cats else None})
        X_hold = to_device(xp, np.asfortranarray(X_host[hold_idx]))
        seg_h, _, prop_h = score_matrix(xp.where(xp.isinf(X_hold), xp.nan, X_hold), fold(ev_model, xp=xp), xp=xp,
                                        levels=L_host[hold_idx] if L_host is not None else None)
        eval_y, eval_p, eval_seg = y_host[hold_idx], asnumpy(prop_h), asnumpy(seg_h)
        metrics["holdout"] = classification_metrics(eval_y, eval_p)
    elif kind == "cv" and chosen.oof is not None:
        eval_y, eval_p, eval_seg = y_host[chosen.index], chosen.oof, seg_all[chosen.index]
        metrics["cv"] = classification_metrics(eval_y, eval_p)
    else:  # no holdout and too many rows for CV metrics, or too few of a class for two folds
        kind = evaluation["kind"] = "none"
        evaluation["rows"] = 0
        eval_y, eval_p, eval_seg = y_host, prop_all, seg_all
    profile = {
        "rows": int(n),
        "features": feature_profile(X_host, features, minimum, per_customer),
        **score_profile(prop_all, seg_all, k_used, minimum),
    }
    if cats:
        profile["categoricals"] = categorical_profile(cats, level_rows, n)
    params = {
        "k": k_used, "seed": options.seed, "holdout": share,
        **({"k_requested": options.k} if k_used != options.k else {}),
        "sample_rows": options.sample_rows, "rows_read": int(rows_read),
        "rows_with_target": int(n), "rows_null_target": int(rows_read - n),
        "positive": options.positive, "target_type": target_type,
        "columns": {**column_record(plan, cats), "hints": hints},
        "min_level_count": max(options.min_level_count, minimum), "max_levels": options.max_levels,
        "backend": backend,
        "input": shown(options.input), "source": "engine train",
        "final_fit_rows": int(n),
        "logistic": chosen.summary(), "kmeans": {"init": "k-means++", "n_init": KMEANS_INITS},
    }
    model = ScoringModel(**{**model.__dict__, "metrics": metrics, "profile": profile, "params": params})
    report_path, report, extra = None, None, None
    if options.report:
        # Written into the model's directory before it is published, beside model.json: one
        # publish (all or nothing), and the content hash covers only model.json and arrays.npz,
        # so the extra file leaves the artifact verifiable.
        from engine.report import TRAIN_REPORT
        from engine.report.training import collect_evidence, write_train_report

        beat.step("writing the training report")
        label = {"holdout": "holdout", "cv": "cv"}.get(kind, "train")
        evidence = collect_evidence(X_host, everyone, seg_all, pre.fill, pre.mean, pre.scale,
                                    k_used, eval_y, eval_p, eval_seg, label, options.seed,
                                    minimum=minimum, rows_per_customer=per_customer)

        def extra(finished: ScoringModel, directory: Path) -> None:
            nonlocal report
            t1 = time.perf_counter()
            report = write_train_report(finished, evidence, str(directory / TRAIN_REPORT), model_path=options.output)
            seconds["report"] = time.perf_counter() - t1

        report_path = (options.output.rstrip("/") + "/" + TRAIN_REPORT if is_remote(options.output)
                       else str(Path(parse(options.output, "--output")) / TRAIN_REPORT))
    saved = save_model(model, options.output, overwrite=options.overwrite, protected={"the input": options.input},
                       extra=extra)
    seconds["evaluate_and_save"] = time.perf_counter() - t0 - seconds.get("report", 0.0)
    progress.advance(max(0, progress.total - progress.done))
    return TrainResult(saved, options.output, int(rows_read), int(n), int(hold_idx.size), seconds,
                       report_path=report_path, report=report)
