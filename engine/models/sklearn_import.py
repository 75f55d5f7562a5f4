"""Import a fitted scikit-learn segmenter and propensity pipeline into the engine's artifact.

Accepted pipelines: an optional ``SimpleImputer`` (any strategy: its ``statistics_``
are the fill values; no missing-indicator columns), then an optional ``StandardScaler``,
then a ``KMeans`` (segmenter) or a binary ``LogisticRegression`` (propensity), fitted
on a DataFrame so that ``feature_names_in_`` names the features. Anything else is
refused by name. Loading a joblib file runs code from it: only import trusted files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelError, UsageError
from engine.models.artifact import Preprocess, ScoringModel, validate


def _load(path: str, role: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--{role} file {p} does not exist")
    import joblib

    try:
        return joblib.load(p)
    except Exception as exc:
        raise ModelError(f"--{role} file {p} cannot be loaded with joblib ({type(exc).__name__}: {exc})") from None


def _steps(obj: Any, path: str) -> list[tuple[str, Any]]:
    from sklearn.pipeline import Pipeline

    if isinstance(obj, Pipeline):
        return [(name, step) for name, step in obj.steps if step not in (None, "passthrough")]
    return [(type(obj).__name__, obj)]


def _features(obj: Any, path: str) -> list[str]:
    names = getattr(obj, "feature_names_in_", None)
    if names is None:
        raise ModelError(
            f"{path}: the pipeline has no feature_names_in_; fit it on a pandas DataFrame so the "
            "feature names are recorded"
        )
    return [str(n) for n in names]


def _preprocess(steps: list[tuple[str, Any]], path: str, n_features: int) -> Preprocess:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    fill = np.full(n_features, np.nan)
    mean = np.zeros(n_features)
    scale = np.ones(n_features)
    seen_imputer = seen_scaler = False
    for name, step in steps:
        if isinstance(step, SimpleImputer):
            if seen_imputer or seen_scaler:
                raise ModelError(f"{path}: step {name!r} (SimpleImputer) must come first and only once")
            if getattr(step, "add_indicator", False):
                raise ModelError(f"{path}: step {name!r} uses add_indicator=True, which adds columns; refit without it")
            missing = step.missing_values
            if not (isinstance(missing, float) and np.isnan(missing)):
                raise ModelError(f"{path}: step {name!r} treats {missing!r} as missing; only NaN is supported")
            stats = np.asarray(step.statistics_, dtype=np.float64)
            if stats.shape != (n_features,) or np.isnan(stats).any():
                raise ModelError(
                    f"{path}: step {name!r} has no fill value for some feature (a column was all-missing "
                    "when it was fitted); refit with keep_empty_features=True or drop that feature"
                )
            fill, seen_imputer = stats, True
        elif isinstance(step, StandardScaler):
            if seen_scaler:
                raise ModelError(f"{path}: step {name!r}: only one StandardScaler is supported")
            # with_mean=False still records mean_ (for the variance) but does not centre.
            if step.with_mean and step.mean_ is not None:
                mean = np.asarray(step.mean_, dtype=np.float64)
            if step.with_std and step.scale_ is not None:
                scale = np.asarray(step.scale_, dtype=np.float64)
            seen_scaler = True
        else:
            raise ModelError(
                f"{path}: step {name!r} ({type(step).__name__}) is not supported; a pipeline may hold "
                "only SimpleImputer, StandardScaler and a final KMeans or LogisticRegression"
            )
    if not seen_imputer:
        # Without an imputer, scikit-learn would fail on missing values; the engine imputes
        # with the scaler's mean (z = 0), the least surprising choice, and records it.
        fill = mean.copy()
    return Preprocess(fill=fill, mean=mean, scale=scale)


def import_sklearn(segmenter_path: str, propensity_path: str) -> ScoringModel:
    """A :class:`ScoringModel` equivalent to the two pipelines' ``predict`` / ``predict_proba``."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    seg_obj, prop_obj = _load(segmenter_path, "segmenter"), _load(propensity_path, "propensity")
    seg_steps, prop_steps = _steps(seg_obj, segmenter_path), _steps(prop_obj, propensity_path)
    if not seg_steps or not isinstance(seg_steps[-1][1], KMeans):
        last = type(seg_steps[-1][1]).__name__ if seg_steps else "nothing"
        raise ModelError(f"{segmenter_path}: the last step must be a fitted KMeans, found {last}")
    if not prop_steps or not isinstance(prop_steps[-1][1], LogisticRegression):
        last = type(prop_steps[-1][1]).__name__ if prop_steps else "nothing"
        raise ModelError(f"{propensity_path}: the last step must be a fitted LogisticRegression, found {last}")
    seg_features = _features(seg_obj, segmenter_path)
    prop_features = _features(prop_obj, propensity_path)
    if seg_features != prop_features:
        only_seg = [f for f in seg_features if f not in prop_features]
        only_prop = [f for f in prop_features if f not in seg_features]
        detail = []
        if only_seg:
            detail.append(f"only in the segmenter: {', '.join(only_seg)}")
        if only_prop:
            detail.append(f"only in the propensity model: {', '.join(only_prop)}")
        if not detail:
            i = next(i for i, (a, b) in enumerate(zip(seg_features, prop_features)) if a != b)
            detail.append(f"same names, different order: position {i} is {seg_features[i]!r} in the "
                          f"segmenter and {prop_features[i]!r} in the propensity model")
        raise ModelError("the two pipelines must use the same features in the same order; " + "; ".join(detail))
    n = len(seg_features)
    kmeans, logistic = seg_steps[-1][1], prop_steps[-1][1]
    # Steps first: an unsupported step (e.g. add_indicator) explains a shape mismatch below.
    seg_pre = _preprocess(seg_steps[:-1], segmenter_path, n)
    prop_pre = _preprocess(prop_steps[:-1], propensity_path, n)
    classes = np.asarray(getattr(logistic, "classes_", []))
    if classes.size != 2:
        raise ModelError(f"{propensity_path}: the LogisticRegression must be binary, it has {classes.size} classes")
    coef = np.asarray(logistic.coef_, dtype=np.float64)
    if coef.shape != (1, n):
        raise ModelError(f"{propensity_path}: coef_ has shape {coef.shape}, expected (1, {n})")
    import sklearn

    def sha(path: str) -> str:
        return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()

    model = ScoringModel(
        features=tuple(seg_features),
        feature_types=tuple("double" for _ in seg_features),
        segmenter=seg_pre,
        centroids=np.asarray(kmeans.cluster_centers_, dtype=np.float64),
        propensity=prop_pre,
        coef=coef[0],
        intercept=float(np.ravel(logistic.intercept_)[0]),
        params={
            "source": "engine model import-sklearn",
            "segmenter_file": str(Path(segmenter_path).resolve()), "segmenter_sha256": sha(segmenter_path),
            "propensity_file": str(Path(propensity_path).resolve()), "propensity_sha256": sha(propensity_path),
            "positive_class": classes[1].item() if hasattr(classes[1], "item") else str(classes[1]),
            "sklearn_version": sklearn.__version__, "k": int(kmeans.cluster_centers_.shape[0]),
        },
    )
    # A fitted pipeline can still hold what no scorer can use (an infinite centroid, a zero
    # scale edited in): refused here, naming the files, not later at save or score.
    where = f"the pipelines {segmenter_path} and {propensity_path}"
    validate(model, arrays_file=where, metadata_file=where)
    return model
