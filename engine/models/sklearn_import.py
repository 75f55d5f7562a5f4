"""Import a fitted scikit-learn segmenter and propensity pipeline into the engine's artifact.

Accepted pipelines: an optional ``SimpleImputer`` (any strategy: its ``statistics_``
are the fill values; no missing-indicator columns), then an optional ``StandardScaler``,
then a ``KMeans`` (segmenter) or a binary ``LogisticRegression`` (propensity), fitted
on a DataFrame so that ``feature_names_in_`` names the features. Or a
``ColumnTransformer`` and then the estimator: numeric transformers of ``SimpleImputer``
and/or ``StandardScaler``, and ``OneHotEncoder`` (``handle_unknown='ignore'`` or
``'infrequent_if_exist'``, ``drop=None``, optionally after a ``SimpleImputer``) whose
categories become the model's levels (an ignored unknown value is the zero vector, an
infrequent one the infrequent column). Anything else is refused by name. Loading a joblib file runs code from it: only import trusted files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelError, UsageError
from engine.models.artifact import Preprocess, ScoringModel, validate
from engine.models.categorical import Categorical


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
    encoded = import_column_transformers(segmenter_path, seg_obj, propensity_path, prop_obj)
    if encoded is not None:
        where = f"the pipelines {segmenter_path} and {propensity_path}"
        validate(encoded, arrays_file=where, metadata_file=where)
        return encoded
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


# --- ColumnTransformer pipelines: numeric steps beside OneHotEncoder ----------------------------


@dataclass(frozen=True)
class _Head:
    """One imported pipeline read through its ColumnTransformer, in the engine's layout."""

    numeric: list[str]
    pre: Preprocess
    categoricals: list[Categorical]
    onehot: np.ndarray              # (L,) 1 where a level sets its own output column
    num_cols: list[int]             # output column of each numeric feature
    level_cols: list[int]           # output column of each global level (-1: zero vector)


def _level_text(value: Any, column: str, path: str) -> str:
    """A category as the engine compares it: Arrow's text of the value (booleans as true/false)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str):
        return value
    raise ModelError(f"{path}: OneHotEncoder category {value!r} of column {column!r} is a {type(value).__name__}; "
                     "only string, integer and boolean categories can be imported")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _encoder(trans: Any, name: str, path: str) -> tuple[Any, Any]:
    """``(imputer or None, OneHotEncoder)`` of a categorical transformer; anything else is refused by name."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    steps = [(name, trans)] if not isinstance(trans, Pipeline) else \
        [(n, s) for n, s in trans.steps if s not in (None, "passthrough")]
    imputer = None
    for step_name, step in steps[:-1]:
        if isinstance(step, SimpleImputer) and imputer is None and not getattr(step, "add_indicator", False):
            imputer = step
            continue
        raise ModelError(f"{path}: step {step_name!r} ({type(step).__name__}) of transformer {name!r} cannot be "
                         "imported; before a OneHotEncoder only one SimpleImputer is supported")
    ohe = steps[-1][1]
    if not isinstance(ohe, OneHotEncoder):
        raise ModelError(f"{path}: transformer {name!r} ends in {type(ohe).__name__}, not a OneHotEncoder")
    if ohe.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise ModelError(f"{path}: OneHotEncoder {name!r} has handle_unknown={ohe.handle_unknown!r}; the engine "
                         "imports 'ignore' or 'infrequent_if_exist' (new levels at scoring must not fail a run)")
    if getattr(ohe, "drop_idx_", None) is not None:
        raise ModelError(f"{path}: OneHotEncoder {name!r} drops a category (drop={ohe.drop!r}); refit with drop=None")
    return imputer, ohe


def _numeric_steps(trans: Any, name: str) -> list[tuple[str, Any]]:
    from sklearn.pipeline import Pipeline

    if isinstance(trans, Pipeline):
        return [(n, s) for n, s in trans.steps if s not in (None, "passthrough")]
    return [(name, trans)]


def _read_column_transformer(ct: Any, path: str) -> _Head:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    names_in = [str(n) for n in getattr(ct, "feature_names_in_", [])]
    numeric: list[str] = []
    fills: list[np.ndarray] = []
    means: list[np.ndarray] = []
    scales: list[np.ndarray] = []
    num_cols: list[int] = []
    cats: list[Categorical] = []
    onehot: list[float] = []
    level_cols: list[int] = []
    out = 0
    for name, trans, cols in ct.transformers_:
        if isinstance(cols, slice) or np.ndim(cols) == 0:
            cols = [cols]
        cols = [names_in[c] if isinstance(c, (int, np.integer)) and names_in else str(c) for c in cols]
        if trans == "drop" or not cols:
            continue
        if trans == "passthrough":
            raise ModelError(f"{path}: transformer {name!r} passes columns {', '.join(cols)} through untouched; "
                             "the engine imports SimpleImputer/StandardScaler and OneHotEncoder transformers only")
        last = trans.steps[-1][1] if isinstance(trans, Pipeline) else trans
        if isinstance(last, OneHotEncoder):
            imputer, ohe = _encoder(trans, name, path)
            for i, col in enumerate(cols):
                cats_i = list(ohe.categories_[i])
                infrequent = getattr(ohe, "infrequent_categories_", None)
                rare = list(infrequent[i]) if infrequent is not None and infrequent[i] is not None else []
                rare_text = {repr(v) for v in rare}
                frequent = [v for v in cats_i if repr(v) not in rare_text]
                named = [v for v in frequent if not _is_missing(v)]
                levels = tuple(_level_text(v, col, path) for v in named)
                m = len(levels)
                cols_of = {}
                for v in frequent:
                    cols_of[repr(v)] = out
                    out += 1
                other_col = -1
                if rare:
                    other_col = out
                    out += 1
                missing_cat = next((v for v in frequent if _is_missing(v)), None)
                missing_col = cols_of[repr(missing_cat)] if missing_cat is not None else -1
                null_level = None
                if imputer is not None:
                    fill = imputer.statistics_[i]
                    text = None if _is_missing(fill) else _level_text(fill, col, path)
                    if text in levels:
                        null_level = levels.index(text)
                    elif rare:
                        null_level = m  # an infrequent value: "other"
                    missing_col = -1
                elif missing_cat is None and rare and any(_is_missing(v) for v in rare):
                    null_level = m
                elif missing_cat is None and ohe.handle_unknown == "infrequent_if_exist" and rare:
                    null_level = m  # an unknown value goes to the infrequent column
                cats.append(Categorical(col, "string", levels, null_level))
                level_cols += [cols_of[repr(v)] for v in named] + [other_col, missing_col]
                onehot += [1.0] * m + [1.0 if other_col >= 0 else 0.0, 1.0 if missing_col >= 0 else 0.0]
            continue
        steps = _numeric_steps(trans, name)
        if not all(isinstance(s, (SimpleImputer, StandardScaler)) for _, s in steps):
            bad = next((n, s) for n, s in steps if not isinstance(s, (SimpleImputer, StandardScaler)))
            raise ModelError(f"{path}: step {bad[0]!r} ({type(bad[1]).__name__}) of transformer {name!r} cannot be "
                             "imported; numeric columns may go through SimpleImputer and StandardScaler only")
        pre = _preprocess(steps, path, len(cols))
        numeric += cols
        fills.append(pre.fill)
        means.append(pre.mean)
        scales.append(pre.scale)
        num_cols += list(range(out, out + len(cols)))
        out += len(cols)
    cat = np.concatenate
    pre = Preprocess(cat(fills) if fills else np.zeros(0), cat(means) if means else np.zeros(0),
                     cat(scales) if scales else np.ones(0))
    return _Head(numeric, pre, cats, np.asarray(onehot), num_cols, level_cols)


def _head_of(obj: Any, path: str, estimator: type) -> tuple[_Head, Any] | None:
    """The ColumnTransformer head of a ``Pipeline([ColumnTransformer, estimator])``; None for other pipelines."""
    from sklearn.compose import ColumnTransformer

    steps = _steps(obj, path)
    if not steps or not isinstance(steps[0][1], ColumnTransformer):
        return None
    if len(steps) != 2 or not isinstance(steps[-1][1], estimator):
        names = ", ".join(f"{n!r} ({type(s).__name__})" for n, s in steps[1:-1]) or type(steps[-1][1]).__name__
        raise ModelError(f"{path}: after the ColumnTransformer the engine imports only a final "
                         f"{estimator.__name__}; cannot import {names}")
    return _read_column_transformer(steps[0][1], path), steps[-1][1]


def import_column_transformers(segmenter_path: str, seg_obj: Any, propensity_path: str,
                               prop_obj: Any) -> ScoringModel | None:
    """Both pipelines as one model when they start with a ColumnTransformer; None when neither does."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    seg = _head_of(seg_obj, segmenter_path, KMeans)
    prop = _head_of(prop_obj, propensity_path, LogisticRegression)
    if seg is None and prop is None:
        return None
    if seg is None or prop is None:
        raise ModelError("one pipeline starts with a ColumnTransformer and the other does not; import two "
                         "pipelines that encode their columns alike")
    (hs, kmeans), (hp, logistic) = seg, prop
    if hs.numeric != hp.numeric or [(c.name, c.levels, c.null_level) for c in hs.categoricals] != \
            [(c.name, c.levels, c.null_level) for c in hp.categoricals] or not np.array_equal(hs.onehot, hp.onehot):
        raise ModelError("the two pipelines' ColumnTransformers must take the same numeric columns and encode the "
                         "same categorical columns with the same categories")
    classes = np.asarray(getattr(logistic, "classes_", []))
    if classes.size != 2:
        raise ModelError(f"{propensity_path}: the LogisticRegression must be binary, it has {classes.size} classes")
    C = np.asarray(kmeans.cluster_centers_, dtype=np.float64)
    w = np.asarray(logistic.coef_, dtype=np.float64)[0]
    n_out = len(hs.num_cols) + int((np.asarray(hs.level_cols) >= 0).sum())
    if C.shape[1] != n_out or w.shape[0] != n_out:
        raise ModelError(f"the pipelines' estimators take {C.shape[1]} and {w.shape[0]} columns; their "
                         f"ColumnTransformers give {n_out}")
    lc = np.asarray(hs.level_cols)
    used = lc >= 0
    cat_c = np.zeros((C.shape[0], lc.size))
    cat_w = np.zeros(lc.size)
    cat_c[:, used] = C[:, lc[used]]
    cat_w[used] = w[lc[used]]
    import sklearn

    def sha(path: str) -> str:
        return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()

    return ScoringModel(
        features=tuple(hs.numeric), feature_types=tuple("double" for _ in hs.numeric),
        segmenter=hs.pre, centroids=C[:, hs.num_cols], propensity=hp.pre, coef=w[hp.num_cols],
        intercept=float(np.ravel(logistic.intercept_)[0]),
        categoricals=tuple(hs.categoricals), cat_coef=cat_w, cat_centroids=cat_c, cat_onehot=hs.onehot,
        params={
            "source": "engine model import-sklearn",
            "segmenter_file": str(Path(segmenter_path).resolve()), "segmenter_sha256": sha(segmenter_path),
            "propensity_file": str(Path(propensity_path).resolve()), "propensity_sha256": sha(propensity_path),
            "positive_class": classes[1].item() if hasattr(classes[1], "item") else str(classes[1]),
            "sklearn_version": sklearn.__version__, "k": int(C.shape[0]),
        },
    )
