"""``engine train --offers``: the single-target training's reading and preparation, then many heads.

Everything up to the design matrix is the single-target procedure (engine/jobs/train.py):
dates as days, levels learned on the training rows, imputation and scaling statistics
over every row (all rows carry features; each head uses the rows where its target is
known), the private K-means. The heads (engine/offers/heads.py) are then fitted together.
Evaluation is cross-validated per head (out-of-fold), whatever the row count.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine.backends import to_device
from engine.backends.namespace import asnumpy
from engine.io.dataset import table_to_matrix
from engine.io.uri import shown
from engine.jobs.heartbeat import Heartbeat
from engine.jobs.progress import Progress
from engine.jobs.train import (
    KMEANS_INITS,
    TrainOptions,
    TrainResult,
    _design,
    _preprocess,
    _refuse_too_large,
    _scaled,
    categorical_profile,
    column_record,
    fit_segmenter,
    learn_table_levels,
)
from engine.models.artifact import ScoringModel, save_model
from engine.models.categorical import (
    ColumnPlan,
    parse_as_of,
    with_dates_as_days,
)
from engine.models.head_mask import design_mask
from engine.models.profile import feature_profile, score_profile
from engine.models.scorer import fold, score_matrix
from engine.offers.catalogue import Catalogue
from engine.offers.train import fit_offer_heads, refuse_small_heads, targets_matrix
from engine.privacy import MIN_CUSTOMERS


def fit_and_save_offers(options: TrainOptions, catalogue: Catalogue, dataset: Any, plan: ColumnPlan,
                        table: pa.Table, backend: str, xp: Any, seconds: dict[str, float], t0: float,
                        beat: Heartbeat, progress: Progress, minimum: int = MIN_CUSTOMERS,
                        per_customer: int = 1) -> TrainResult:
    """Fit the segmenter and one calibrated head per offer; save one artifact."""
    features = list(plan.features)
    T = len(catalogue.offers)
    beat.step(f"preparing {table.num_rows:,} rows x {len(features) + len(plan.categorical)} features and "
              f"{T} offer targets")
    Y, known = targets_matrix(table, catalogue, dataset.root)
    positives = refuse_small_heads(Y, known, table.column(options.id_column), catalogue, minimum)
    as_of = parse_as_of(options.as_of) if plan.dates else None
    if as_of is not None:
        table = with_dates_as_days(table, plan.dates, as_of)
    X_host = table_to_matrix(table, features)
    cats, level_rows, n_levels, L_host = learn_table_levels(table, plan, options, minimum)
    rows_read = n = table.num_rows
    del table
    _refuse_too_large(X_host, features, dataset.root)
    seconds["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    X = to_device(xp, np.asfortranarray(X_host))
    pre = _preprocess(X, features, xp, minimum, rows_per_customer=per_customer)
    Z = _design(_scaled(X, pre, xp), L_host, n_levels, xp)
    beat.step(f"fitting K-means (k={options.k}) on {n:,} rows")
    centroids, train_inertia, k_used = fit_segmenter(Z, options, xp, progress, beat, minimum, per_customer)
    Zh = np.ascontiguousarray(asnumpy(Z))
    del Z
    excluded = head_exclusions(catalogue, [*features, *(c.name for c in cats)])
    head_mask = design_mask(features, cats, excluded) if any(excluded) else None
    coef, intercept, platt, records, reliability = fit_offer_heads(
        Zh, Y, known, positives, options.seed, options.cv_folds, options.search_rows, catalogue,
        features, on_step=beat.step, mask=None if head_mask is None else head_mask.T)
    for record, names in zip(records, excluded):
        record.pop("exclude_features", None)
        if names:
            record["exclude_features"] = list(names)
    del Zh
    progress.advance(1)
    seconds["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    F = len(features)
    model = ScoringModel(
        features=tuple(features),
        feature_types=tuple(str(dataset.column_type(f)) for f in features),
        segmenter=pre, centroids=centroids[:, :F], propensity=pre, coef=coef[0, :F], intercept=float(intercept[0]),
        id_column=options.id_column, target=catalogue.offers[0].target,
        categoricals=cats,
        cat_coef=coef[0, F:] if cats else None,
        cat_centroids=centroids[:, F:] if cats else None,
        cat_onehot=np.ones(n_levels) if cats else None,
        as_of=as_of.isoformat() if as_of is not None else None,
        offers=tuple(records),
        offer_settings={"top": catalogue.top,
                        "min_expected_value": catalogue.min_expected_value
                        if np.isfinite(catalogue.min_expected_value) else None,
                        **({"rules": catalogue.rules.path} if catalogue.rules is not None else {})},
        head_coef=coef[:, :F], head_cat_coef=coef[:, F:] if cats else None,
        head_intercept=intercept, head_platt=platt, head_mask=head_mask,
    )
    Xs = xp.where(xp.isinf(X), xp.nan, X)
    seg_all, _, prop_all = score_matrix(Xs, fold(model, xp=xp), xp=xp, levels=L_host)
    seg_all, prop_all = asnumpy(seg_all), asnumpy(prop_all)
    del X, Xs
    metrics: dict[str, Any] = {
        "evaluation": {"kind": "cv", "rows": int(records[0]["cv"]["rows"]), "folds": options.cv_folds},
        "kmeans_inertia_train": train_inertia, "kmeans_inertia_train_per_row": train_inertia / n,
        "cv": {k: v for k, v in records[0]["cv"].items() if k in ("auc", "log_loss", "accuracy", "base_rate", "rows")},
    }
    profile = {"rows": int(n), "features": feature_profile(X_host, features, minimum, per_customer),
               **score_profile(prop_all, seg_all, k_used, minimum)}
    if cats:
        profile["categoricals"] = categorical_profile(cats, level_rows, n)
    params = {
        "k": k_used, "seed": options.seed, "sample_rows": options.sample_rows, "rows_read": int(rows_read),
        **({"k_requested": options.k} if k_used != options.k else {}),
        "columns": column_record(plan, cats), "min_level_count": max(options.min_level_count, minimum),
        "max_levels": options.max_levels, "backend": backend, "input": shown(options.input),
        "source": "engine train --offers", "final_fit_rows": int(n),
        "logistic": {"penalty": "l2", "C": float(records[0]["C"]), "selected_by": "cv",
                     "criterion": "out-of-fold log loss, per head"},
        "kmeans": {"init": "k-means++", "n_init": KMEANS_INITS},
        "heads": {"method": "vectorised L2 logistic (L-BFGS over all heads), C per head by CV, Platt per head, "
                            "rare heads shrunk toward their base rate (alpha = positives / 200)",
                  "catalogue": catalogue.source},
    }
    model = ScoringModel(**{**model.__dict__, "metrics": metrics, "profile": profile, "params": params})
    saved = save_model(model, options.output, overwrite=options.overwrite, protected={"the input": options.input})
    seconds["evaluate_and_save"] = time.perf_counter() - t0
    report_path, report = None, None
    if options.report:
        report_path, report = _report(saved, reliability, options)
    progress.advance(max(0, progress.total - progress.done))
    return TrainResult(saved, options.output, int(rows_read), int(n), 0, seconds, report_path=report_path,
                       report=report)


def head_exclusions(catalogue: Catalogue, columns: list[str]) -> list[list[str]]:
    """Per offer, the feature columns its head may not use: its ``exclude_features``, and its own
    target where that is a feature (another offer's target may be one, named in ``--features``)."""
    out = []
    for offer in catalogue.offers:
        names = list(offer.exclude_features or ())
        if offer.target in columns and offer.target not in names:
            names.append(offer.target)
        out.append(names)
    return out


def _report(model: ScoringModel, reliability: list[Any], options: TrainOptions) -> tuple[str, dict[str, Any]]:
    """report.html beside the model (after the atomic save; the hash covers only the model's two files)."""
    from engine.io.uri import is_remote, parse
    from engine.report import TRAIN_REPORT
    from engine.report.offers import write_offers_report

    if is_remote(options.output):
        import tempfile

        from engine.io.store import upload_file

        path = options.output.rstrip("/") + "/" + TRAIN_REPORT
        with tempfile.TemporaryDirectory(prefix="engine-report-") as tmp:
            data = write_offers_report(model, reliability, str(Path(tmp) / TRAIN_REPORT), model_path=options.output)
            upload_file(path, str(Path(tmp) / TRAIN_REPORT))
        return path, data
    path = str(Path(parse(options.output, "--output")) / TRAIN_REPORT)
    return path, write_offers_report(model, reliability, path, model_path=options.output)
