"""Training: read (or sample) the dataset, impute, scale, fit both heads, evaluate, save.

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
from engine.io.validate import default_features, require_schema
from engine.jobs.progress import Progress
from engine.models.artifact import Preprocess, ScoringModel, check_model_output, save_model
from engine.models.fit import fit_kmeans, fit_logistic
from engine.models.profile import feature_profile, score_profile
from engine.models.scorer import fold, scale_matrix, score_matrix


@dataclass(frozen=True)
class TrainOptions:
    input: str
    target: str
    output: str
    k: int = 8
    features: Sequence[str] | None = None
    id_column: str = "customer_id"
    sample_rows: int | None = None
    holdout: float = 0.2
    seed: int = 42
    backend: str = "auto"
    report: bool = True
    progress: str = "quiet"
    overwrite: bool = False    # replace an existing engine model at ``output`` (never anything else)


@dataclass
class TrainResult:
    model: ScoringModel
    path: str
    rows_read: int
    rows_train: int
    rows_holdout: int
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
# matrix, its training rows, their imputed and scaled versions, and the fitters' own copies.
TRAINING_COPIES = 6


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


def train(options: TrainOptions, on_step: Callable[[str], None] | None = None,
          settings: Settings | None = None) -> TrainResult:
    """Fit and save a model from a Parquet dataset; see :class:`TrainOptions`.

    ``settings`` with a ``scheduler`` or ``workers`` reads the data on that Dask cluster;
    without, everything runs in this process.
    """
    say = on_step or (lambda _msg: None)
    if options.k < 1:
        raise UsageError("--k must be at least 1")
    if not 0.0 <= options.holdout < 0.9:
        raise UsageError("--holdout must be in [0, 0.9)")
    if options.sample_rows is not None and options.sample_rows < 1:
        raise UsageError("--sample-rows must be at least 1")
    if options.features:
        unique_names(options.features, "--features")
    # Before reading anything: where the model goes must be allowed (checked again at save).
    check_model_output(options.output, overwrite=options.overwrite, protected={"the input": options.input})
    backend = resolve_backend(options.backend)
    xp = get_xp(backend)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    on_cluster = settings is not None and bool(settings.scheduler or settings.workers)
    # Workers of an attached cluster run in their own working directory: give them absolute paths.
    attached = settings is not None and bool(settings.scheduler)
    dataset = discover(Path(options.input).absolute() if attached else options.input)
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
    say(f"reading {dataset.num_rows:,} rows from {len(dataset.files)} file(s)"
        + (f", sampling {options.sample_rows:,}" if options.sample_rows else ""))
    # Steps: one per file read, then K-means, logistic regression, evaluation and report.
    progress = Progress("train", len(dataset.files) + 3, unit="steps", mode=options.progress)
    try:
        def file_read(rows: int) -> None:
            progress.advance(1, rows=rows)

        if on_cluster:
            assert settings is not None
            table = _read_on_cluster(dataset, features + [options.target], options, settings, say, file_read)
        else:
            table = read_training_table(dataset, features + [options.target], options.sample_rows,
                                        options.seed, on_file=file_read)
        return _fit_and_save(options, dataset, features, table, backend, xp, seconds, t0, say, progress)
    finally:
        progress.close()


def _fit_and_save(options: TrainOptions, dataset: Any, features: list[str], table: pa.Table, backend: str,
                  xp: Any, seconds: dict[str, float], t0: float, say: Callable[[str], None],
                  progress: Progress) -> TrainResult:
    """Impute, scale, fit both heads, evaluate on the holdout, save the artifact and report."""
    y_all, has_target = binary_target(table, options.target, dataset.root)
    X_all = table_to_matrix(table, features)
    del table
    X_host, y_host = X_all[has_target], y_all[has_target]
    if X_host.shape[0] < max(2 * options.k, 10):
        raise InputError(f"input {dataset.root} has only {X_host.shape[0]} rows with a target; too few to train")
    seconds["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_idx, hold_idx = split_indices(X_host.shape[0], options.holdout, options.seed)
    X_train = to_device(xp, np.asfortranarray(X_host[train_idx]))
    y_train = to_device(xp, y_host[train_idx])
    finite = xp.where(xp.isinf(X_train), xp.nan, X_train)
    fill = asnumpy(xp.nanmean(finite, axis=0))
    if np.isnan(fill).any():
        empty = [features[j] for j in np.flatnonzero(np.isnan(fill))]
        raise InputError(f"feature column(s) {', '.join(empty)} have no values in the training rows")
    imputed = xp.where(xp.isnan(finite), to_device(xp, fill), finite)
    std = asnumpy(imputed.std(axis=0))
    del finite, imputed
    # A constant column carries no information; scale 1 keeps it finite (as StandardScaler does).
    scale = np.where(std > 0, std, 1.0)
    pre = Preprocess(fill=fill, mean=fill.copy(), scale=scale)
    Z_train = scale_matrix(xp.where(xp.isinf(X_train), xp.nan, X_train), pre, xp=xp)
    say(f"fitting K-means (k={options.k}) and logistic regression on {Z_train.shape[0]:,} rows, "
        f"{len(features)} features, backend {backend}")
    centroids, train_inertia = fit_kmeans(Z_train, options.k, options.seed, xp=xp)
    progress.advance(1)
    coef, intercept = fit_logistic(Z_train, y_train, options.seed, xp=xp)
    progress.advance(1)
    del Z_train
    seconds["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = ScoringModel(
        features=tuple(features),
        feature_types=tuple(str(dataset.column_type(f)) for f in features),
        segmenter=pre, centroids=centroids, propensity=pre, coef=coef, intercept=intercept,
        id_column=options.id_column, target=options.target,
    )
    folded = fold(model, xp=xp)
    seg_tr, _, prop_tr = score_matrix(xp.where(xp.isinf(X_train), xp.nan, X_train), folded, xp=xp)
    metrics: dict[str, Any] = {
        "kmeans_inertia_train": train_inertia,
        "kmeans_inertia_train_per_row": train_inertia / len(train_idx),
        "train": classification_metrics(y_host[train_idx], asnumpy(prop_tr)),
    }
    if len(hold_idx):
        X_hold = to_device(xp, np.asfortranarray(X_host[hold_idx]))
        X_hold = xp.where(xp.isinf(X_hold), xp.nan, X_hold)
        seg_h, dist_h, prop_h = score_matrix(X_hold, folded, xp=xp)
        dist = asnumpy(dist_h).astype(np.float64)
        metrics["holdout"] = classification_metrics(y_host[hold_idx], asnumpy(prop_h))
        metrics["kmeans_inertia"] = float((dist ** 2).sum())
        metrics["kmeans_inertia_per_row"] = float((dist ** 2).mean())
        metrics["holdout_segment_sizes"] = np.bincount(asnumpy(seg_h), minlength=options.k).tolist()
    profile = {
        "rows": int(len(train_idx)),
        "features": feature_profile(X_host[train_idx], features),
        **score_profile(prop_tr, seg_tr, options.k),
    }
    params = {
        "k": options.k, "seed": options.seed, "holdout": options.holdout,
        "sample_rows": options.sample_rows, "rows_read": int(X_all.shape[0]),
        "rows_with_target": int(X_host.shape[0]), "backend": backend,
        "input": str(Path(options.input).resolve()), "source": "engine train",
        "logistic": {"penalty": "l2", "C": 1.0}, "kmeans": {"init": "k-means++", "n_init": 3},
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
        say("writing the training report")
        if len(hold_idx):
            evaluation = ("holdout", y_host[hold_idx], asnumpy(prop_h), asnumpy(seg_h))
        else:
            evaluation = ("train", y_host[train_idx], asnumpy(prop_tr), asnumpy(seg_tr))
        evidence = collect_evidence(X_host, train_idx, asnumpy(seg_tr), pre.fill, pre.mean, pre.scale,
                                    options.k, evaluation[1], evaluation[2], evaluation[3], evaluation[0],
                                    options.seed)
        report_path = str(Path(options.output) / TRAIN_REPORT)
        report = write_train_report(saved, evidence, report_path, model_path=options.output)
        seconds["report"] = time.perf_counter() - t0
    progress.advance(1)
    return TrainResult(saved, options.output, int(X_all.shape[0]), len(train_idx), len(hold_idx), seconds,
                       report_path=report_path, report=report)
