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
from engine.io.uri import check as check_uri
from engine.io.uri import is_remote, parse, shown
from engine.io.validate import default_features, require_schema
from engine.jobs.heartbeat import Heartbeat
from engine.jobs.progress import Progress
from engine.models.artifact import Preprocess, ScoringModel, check_model_output, save_model
from engine.models.fit import fit_kmeans, fit_logistic
from engine.models.profile import feature_profile, score_profile
from engine.models.scorer import fold, scale_matrix, score_matrix
from engine.models.tuning import DEFAULT_FOLDS, SEARCH_MAX_ROWS, SearchResult, search_logistic

#: Below this many labelled rows the default evaluation is k-fold cross-validation
#: (a 20% holdout of a few thousand rows is both noisy and costly to the model).
CV_EVAL_MAX_ROWS = 20_000
DEFAULT_HOLDOUT = 0.2
KMEANS_INITS = 3


@dataclass(frozen=True)
class TrainOptions:
    input: str
    target: str
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


def binary_target(table: pa.Table, target: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The target as 0/1 floats and the mask of rows that have one; anything else is an error."""
    col = table.column(target)
    if not (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type) or pa.types.is_floating(col.type)):
        raise InputError(f"target column {target!r} in {source} has type {col.type}; it must be 0/1 or boolean")
    valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
    values = col.to_numpy(zero_copy_only=False).astype(np.float64)
    values = np.where(valid, values, 0.0)
    if np.isnan(values).any():
        valid &= ~np.isnan(values)
    bad = valid & (values != 0.0) & (values != 1.0)
    if bad.any():
        raise InputError(
            f"target column {target!r} in {source} must hold only 0 and 1 "
            f"(first other value at sampled row {int(np.argmax(bad))}); binarise it before training"
        )
    y = values[valid]
    if y.size and (y.min() == y.max()):
        raise InputError(f"target column {target!r} in {source} has a single class; both 0 and 1 are needed")
    return values, valid


# Float64 copies of the training matrix alive at the peak of training: the Arrow table, the
# matrix, its labelled rows, the scaled matrices of the evaluation and of the final fit,
# and the fitters' own copies.
TRAINING_COPIES = 7


def check_training_memory(rows: int, n_features: int, source: str, available: int | None = None) -> None:
    """Refuse, before reading anything, a training set that cannot fit in this machine's memory."""
    import psutil

    need = rows * (n_features + 1) * 8 * TRAINING_COPIES
    available = psutil.virtual_memory().available if available is None else available
    if need > 0.8 * available:
        fits = max(1_000, int(0.8 * available / ((n_features + 1) * 8 * TRAINING_COPIES)) // 1_000 * 1_000)
        raise UsageError(
            f"training on {rows:,} rows of {source} needs about {need / 2**30:.1f} GiB of memory and "
            f"{available / 2**30:.1f} GiB is available; train on a uniform sample with --sample-rows "
            f"(at most about {fits:,} rows here; a few million rows lose nothing measurable for k-means "
            "and a linear model)"
        )


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


def validate_options(options: TrainOptions) -> None:
    """Every flag checked before anything is read: a :class:`UsageError` (exit 2) naming it."""
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
    dataset = discover(Path(parse(options.input, "--input")).absolute()
                       if attached and not is_remote(options.input) else options.input)
    exclude = [options.id_column, options.target]
    features = list(options.features) if options.features else default_features(dataset, exclude)
    if not features:
        raise InputError(f"input {dataset.root} has no numeric feature columns besides {exclude}")
    clash = [c for c in features if c in exclude]
    if clash:
        raise UsageError(f"--features must not include the id or target column: {', '.join(clash)}")
    require_schema(dataset, numeric=features + [options.target], present=[options.id_column])
    check_training_memory(min(dataset.num_rows, options.sample_rows or dataset.num_rows), len(features),
                          dataset.root)
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

            if on_cluster:
                assert settings is not None
                table = _read_on_cluster(dataset, features + [options.target], options, settings, say, file_read)
            else:
                table = read_training_table(dataset, features + [options.target], options.sample_rows,
                                            options.seed, on_file=file_read)
            return _fit_and_save(options, dataset, features, table, backend, xp, seconds, t0, beat, progress)
    finally:
        progress.close()


def _preprocess(X: Any, features: list[str], xp: Any) -> Preprocess:
    """Mean imputation and standardisation statistics of ``X`` (±inf counts as missing)."""
    finite = xp.where(xp.isinf(X), xp.nan, X)
    fill = asnumpy(xp.nanmean(finite, axis=0))
    if np.isnan(fill).any():
        empty = [features[j] for j in np.flatnonzero(np.isnan(fill))]
        raise InputError(f"feature column(s) {', '.join(empty)} have no values in the training rows")
    imputed = xp.where(xp.isnan(finite), to_device(xp, fill), finite)
    std = asnumpy(imputed.std(axis=0))
    del finite, imputed
    # A constant column carries no information; scale 1 keeps it finite (as StandardScaler does).
    return Preprocess(fill=fill, mean=fill.copy(), scale=np.where(std > 0, std, 1.0))


def _scaled(X: Any, pre: Preprocess, xp: Any) -> Any:
    return scale_matrix(xp.where(xp.isinf(X), xp.nan, X), pre, xp=xp)


def evaluation_plan(rows: int, holdout: float | None) -> tuple[str, float]:
    """``(kind, holdout share)``: ``holdout`` with a share, ``cv``, or ``none`` (train metrics only)."""
    share = holdout if holdout is not None else (DEFAULT_HOLDOUT if rows >= CV_EVAL_MAX_ROWS else 0.0)
    if share > 0:
        return "holdout", share
    return ("cv", 0.0) if rows <= SEARCH_MAX_ROWS else ("none", 0.0)


def _fit_and_save(options: TrainOptions, dataset: Any, features: list[str], table: pa.Table, backend: str,
                  xp: Any, seconds: dict[str, float], t0: float, beat: Heartbeat,
                  progress: Progress) -> TrainResult:
    """Evaluate the procedure, refit on every labelled row, save the artifact and report."""
    # Named, or the heartbeat would go on saying "reading: file N of N done" while this runs.
    beat.step(f"preparing {table.num_rows:,} rows x {len(features)} features: target, imputation, scaling")
    y_all, has_target = binary_target(table, options.target, dataset.root)
    X_all = table_to_matrix(table, features)
    del table
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
        pre_tr = _preprocess(X_tr, features, xp)
        Z_tr = _scaled(X_tr, pre_tr, xp)
        del X_tr
        chosen = search(Z_tr, y_host[train_idx])
        beat.step(f"evaluation fit on {train_idx.size:,} rows (holdout {hold_idx.size:,})")
        coef_ev, b_ev = fit_logistic(Z_tr, y_dev[to_device(xp, train_idx)], options.seed, xp=xp, C=chosen.C,
                                     penalty=chosen.penalty)
        del Z_tr
        eval_fit = (pre_tr, coef_ev, b_ev)
        evaluation["share"] = share
    X = to_device(xp, np.asfortranarray(X_host))
    pre = _preprocess(X, features, xp)
    Z = _scaled(X, pre, xp)
    if kind != "holdout":
        chosen = search(Z, y_host)
        if kind == "cv":
            evaluation["folds"] = chosen.folds
    beat.step(f"fitting K-means (k={options.k}) on all {n:,} labelled rows, {len(features)} features, "
              f"backend {backend}")

    def init_step(i: int, m: int) -> None:
        if i:
            progress.advance(1)
        beat.step(f"K-means init {i + 1} of {m}")

    centroids, train_inertia = fit_kmeans(Z, options.k, options.seed, xp=xp, n_init=KMEANS_INITS, on_init=init_step)
    progress.advance(1)
    beat.step(f"final fit: logistic {chosen.penalty.upper()} C={chosen.C:.4g} on all {n:,} labelled rows")
    coef, intercept = fit_logistic(Z, y_dev, options.seed, xp=xp, C=chosen.C, penalty=chosen.penalty)
    progress.advance(1)
    del Z
    seconds["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    beat.step("evaluating and saving the model")
    model = ScoringModel(
        features=tuple(features),
        feature_types=tuple(str(dataset.column_type(f)) for f in features),
        segmenter=pre, centroids=centroids, propensity=pre, coef=coef, intercept=intercept,
        id_column=options.id_column, target=options.target,
    )
    X = xp.where(xp.isinf(X), xp.nan, X)
    seg_all, _, prop_all = score_matrix(X, fold(model, xp=xp), xp=xp)
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
        ev_model = ScoringModel(**{**model.__dict__, "propensity": pre_tr, "coef": coef_ev, "intercept": b_ev})
        X_hold = to_device(xp, np.asfortranarray(X_host[hold_idx]))
        seg_h, _, prop_h = score_matrix(xp.where(xp.isinf(X_hold), xp.nan, X_hold), fold(ev_model, xp=xp), xp=xp)
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
        "features": feature_profile(X_host, features),
        **score_profile(prop_all, seg_all, options.k),
    }
    params = {
        "k": options.k, "seed": options.seed, "holdout": share,
        "sample_rows": options.sample_rows, "rows_read": int(X_all.shape[0]),
        "rows_with_target": int(n), "backend": backend,
        "input": shown(options.input), "source": "engine train",
        "final_fit_rows": int(n),
        "logistic": chosen.summary(), "kmeans": {"init": "k-means++", "n_init": KMEANS_INITS},
    }
    model = ScoringModel(**{**model.__dict__, "metrics": metrics, "profile": profile, "params": params})
    saved = save_model(model, options.output, overwrite=options.overwrite, protected={"the input": options.input})
    seconds["evaluate_and_save"] = time.perf_counter() - t0
    report_path, report = None, None
    if options.report:
        # Written after the atomic save, beside model.json: the content hash covers only
        # model.json and arrays.npz, so the extra file leaves the artifact verifiable.
        from engine.report import TRAIN_REPORT
        from engine.report.training import collect_evidence, write_train_report

        t0 = time.perf_counter()
        beat.step("writing the training report")
        label = {"holdout": "holdout", "cv": "cv"}.get(kind, "train")
        evidence = collect_evidence(X_host, everyone, seg_all, pre.fill, pre.mean, pre.scale,
                                    options.k, eval_y, eval_p, eval_seg, label, options.seed)
        if is_remote(options.output):
            import tempfile

            from engine.io.store import upload_file

            report_path = options.output.rstrip("/") + "/" + TRAIN_REPORT
            with tempfile.TemporaryDirectory(prefix="engine-report-") as tmp:
                report = write_train_report(saved, evidence, str(Path(tmp) / TRAIN_REPORT),
                                            model_path=options.output)
                upload_file(report_path, str(Path(tmp) / TRAIN_REPORT))
        else:
            report_path = str(Path(parse(options.output, "--output")) / TRAIN_REPORT)
            report = write_train_report(saved, evidence, report_path, model_path=options.output)
        seconds["report"] = time.perf_counter() - t0
    progress.advance(max(0, progress.total - progress.done))
    return TrainResult(saved, options.output, int(X_all.shape[0]), int(n), int(hold_idx.size), seconds,
                       report_path=report_path, report=report)
