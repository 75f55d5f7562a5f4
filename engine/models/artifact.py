"""The model artifact: a directory of JSON metadata plus plain arrays, never pickle.

Layout of ``MODEL/``::

    model.json   metadata: format version, engine version, features and dtypes,
                 preprocessing and head descriptions, metrics, training profile,
                 content hash
    arrays.npz   the numeric parameters, loaded with ``allow_pickle=False``

The content hash is SHA-256 over the canonical JSON of the metadata (without the hash
itself) and every array's name, dtype, shape and bytes, so any edit to either file
is detected at load time. A hash proves only that nobody edited the files since they
were written; :func:`validate` checks that what they say can be scored (shapes match the
feature list, every value finite, scales non-zero, k >= 1, known column types), at
save, at import and at every load.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.errors import ModelError
from engine.models.categorical import Categorical
from engine.models.schema import check_model_json

FORMAT = "customer-scoring-engine/model"
FORMAT_VERSION = 1
METADATA_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
_ARRAY_NAMES = (
    "segment_fill", "segment_mean", "segment_scale", "centroids",
    "propensity_fill", "propensity_mean", "propensity_scale", "coef", "intercept",
)
# Arrow type names of the numeric columns the engine scores (engine.io.dataset.is_numeric).
KNOWN_FEATURE_TYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "halffloat", "float", "double",
})
# Categorical one-hot blocks: present only in models with categorical columns, so the
# hash of a model without them is what it always was.
_CAT_ARRAY_NAMES = ("cat_coef", "cat_centroids", "cat_onehot")
# Offer heads (engine/offers): present only in models trained with --offers, so a
# single-target model is exactly what it always was (one head: ``coef``/``intercept``).
_HEAD_ARRAY_NAMES = ("head_coef", "head_intercept", "head_platt")


def is_date_feature_type(name: str) -> bool:
    """Arrow type names of date and timestamp features (scored as days before the as-of date)."""
    return name.startswith(("date32", "date64", "timestamp["))


# No fitted parameter comes near this; past it the folded model's float64 arithmetic
# (squares of scaled centroids, products with 1/scale) can overflow to inf and NaN.
MAX_ABS = 1e50


@dataclass(frozen=True)
class Preprocess:
    """Impute then standardise: ``z = (where(isnan(x), fill, x) - mean) / scale``."""

    fill: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @property
    def inv_scale(self) -> np.ndarray:
        return 1.0 / self.scale

    def same_as(self, other: Preprocess) -> bool:
        return all(
            np.array_equal(a, b) for a, b in
            ((self.fill, other.fill), (self.mean, other.mean), (self.scale, other.scale))
        )


@dataclass(frozen=True)
class ScoringModel:
    """Everything needed to score a customer: two heads over one feature vector.

    ``centroids`` live in the segmenter's scaled space, ``coef`` in the propensity
    head's scaled space; each head has its own :class:`Preprocess` because an imported
    scikit-learn segmenter and propensity model may impute or scale differently.
    """

    features: tuple[str, ...]
    feature_types: tuple[str, ...]
    segmenter: Preprocess
    centroids: np.ndarray
    propensity: Preprocess
    coef: np.ndarray
    intercept: float
    id_column: str = "customer_id"
    target: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    engine_version: str = __version__
    format_version: int = FORMAT_VERSION
    created_at: str = ""
    content_hash: str = ""
    # Categorical features (engine/models/categorical.py): levels, and one-hot blocks laid
    # end to end (L = sum of n_levels): coefficients (L,), centroid entries (k, L), and
    # whether each level sets its one-hot entry (1) or is the zero vector (0: an imported
    # encoder's ignored unknown value).
    categoricals: tuple[Categorical, ...] = ()
    cat_coef: np.ndarray | None = None
    cat_centroids: np.ndarray | None = None
    cat_onehot: np.ndarray | None = None
    # The as-of date (YYYY-MM-DD) date features count days back from; None without dates.
    as_of: str | None = None
    # Offer heads (engine/offers/heads.py), in the propensity head's scaled space: one record
    # per offer (catalogue entry and training statistics), coefficients (T, F), categorical
    # coefficients (T, L), intercepts (T,) and Platt pairs (T, 2). ``coef`` is head 0's.
    offers: tuple[dict[str, Any], ...] = ()
    offer_settings: dict[str, Any] = field(default_factory=dict)
    head_coef: np.ndarray | None = None
    head_cat_coef: np.ndarray | None = None
    head_intercept: np.ndarray | None = None
    head_platt: np.ndarray | None = None
    # Per-head feature mask (engine/models/head_mask.py), (T, F + L) 0/1: present only when an
    # offer excludes features (its record's ``exclude_features``); weights are 0 where it is 0.
    head_mask: np.ndarray | None = None

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_features(self) -> int:
        """Numeric (and date) features: the columns of the kernels' float matrix."""
        return len(self.features)

    @property
    def n_levels(self) -> int:
        return int(sum(c.n_levels for c in self.categoricals))

    @property
    def columns(self) -> tuple[str, ...]:
        """Every input column the model reads as a feature: numeric and date ones, then categorical ones."""
        return self.features + tuple(c.name for c in self.categoricals)

    @property
    def date_features(self) -> tuple[str, ...]:
        return tuple(n for n, t in zip(self.features, self.feature_types) if is_date_feature_type(t))

    @property
    def n_heads(self) -> int:
        """Offer heads (0 for a single-target model)."""
        return len(self.offers)

    def arrays(self) -> dict[str, np.ndarray]:
        return self._numeric_arrays() | self._cat_arrays() | self._head_arrays()

    def _head_arrays(self) -> dict[str, np.ndarray]:
        if not self.offers:
            return {}
        out = {"head_coef": self.head_coef, "head_intercept": self.head_intercept, "head_platt": self.head_platt}
        if self.categoricals:
            out["head_cat_coef"] = self.head_cat_coef
        if self.head_mask is not None:
            out["head_mask"] = self.head_mask
        return {k: np.asarray(v) for k, v in out.items() if v is not None}

    def _cat_arrays(self) -> dict[str, np.ndarray]:
        if not self.categoricals:
            return {}
        L = self.n_levels
        return {
            "cat_coef": self.cat_coef if self.cat_coef is not None else np.zeros(L),
            "cat_centroids": self.cat_centroids if self.cat_centroids is not None else np.zeros((self.k, L)),
            "cat_onehot": self.cat_onehot if self.cat_onehot is not None else np.ones(L),
        }

    def _numeric_arrays(self) -> dict[str, np.ndarray]:
        return {
            "segment_fill": self.segmenter.fill,
            "segment_mean": self.segmenter.mean,
            "segment_scale": self.segmenter.scale,
            "centroids": self.centroids,
            "propensity_fill": self.propensity.fill,
            "propensity_mean": self.propensity.mean,
            "propensity_scale": self.propensity.scale,
            "coef": self.coef,
            "intercept": np.asarray([self.intercept], dtype=np.float64),
        }

    def metadata(self) -> dict[str, Any]:
        # Derived from the arrays (engine/models/explain.py), stored for readers of model.json;
        # a validator can recompute them from the arrays and compare.
        from engine.models.explain import drivers, segment_descriptions

        extra: dict[str, Any] = {}
        if self.categoricals:
            extra["categoricals"] = [{"name": c.name, "type": c.type, "levels": list(c.levels)}
                                     | ({} if c.null_level is None else {"null_level": c.null_level})
                                     for c in self.categoricals]
        if self.as_of is not None:
            extra["as_of"] = self.as_of
        if self.offers:
            extra["offers"] = [dict(o) for o in self.offers]
            extra["offer_settings"] = dict(self.offer_settings)
        return extra | {
            "format": FORMAT,
            "format_version": self.format_version,
            "engine_version": self.engine_version,
            "created_at": self.created_at,
            "features": [{"name": n, "type": t} for n, t in zip(self.features, self.feature_types)],
            "id_column": self.id_column,
            "target": self.target,
            "segmenter": {"kind": "kmeans", "k": self.k, "space": "segmenter-scaled"},
            "propensity": {"kind": "logistic", "link": "logit"},
            "metrics": self.metrics,
            "profile": self.profile,
            "params": self.params,
            "drivers": drivers(self),
            "segments": segment_descriptions(self),
        }


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def compute_hash(metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    digest.update(_canonical({k: v for k, v in metadata.items() if k != "content_hash"}))
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        digest.update(arr.tobytes())
    return "sha256:" + digest.hexdigest()


def _json_safe(obj: Any) -> Any:
    """NumPy scalars and arrays to plain JSON; NaN/inf to None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _shapes(f: int, k: int) -> dict[str, tuple[int, ...]]:
    return {
        "segment_fill": (f,), "segment_mean": (f,), "segment_scale": (f,), "centroids": (k, f),
        "propensity_fill": (f,), "propensity_mean": (f,), "propensity_scale": (f,), "coef": (f,),
        "intercept": (1,),
    }


def validate_arrays(arrays: dict[str, np.ndarray], n_features: int, where: str) -> None:
    """The arrays' invariants for ``n_features`` features; :class:`ModelError` naming ``where`` and the array."""
    missing = [n for n in _ARRAY_NAMES if n not in arrays]
    if missing:
        raise ModelError(f"{where}: array(s) {', '.join(missing)} missing; the model is incomplete: retrain or restore it")
    centroids = np.asarray(arrays["centroids"])
    if centroids.ndim != 2 or centroids.shape[0] < 1:
        raise ModelError(f"{where}: array 'centroids' has shape {centroids.shape}, expected (k, {n_features}) "
                         "with k >= 1 segments; the model is corrupt: retrain or restore it")
    for name, shape in _shapes(n_features, centroids.shape[0]).items():
        arr = np.asarray(arrays[name])
        if arr.shape != shape:
            raise ModelError(
                f"{where}: array {name!r} has shape {arr.shape}, expected {shape} (the model lists "
                f"{n_features} features); the model is corrupt: retrain or restore it")
        if arr.dtype.kind not in "fiu":
            raise ModelError(f"{where}: array {name!r} has dtype {arr.dtype}, expected floating point numbers")
        values = arr.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ModelError(f"{where}: array {name!r} holds NaN or infinite values; retrain or restore the model")
        if values.size and np.max(np.abs(values)) > MAX_ABS:
            raise ModelError(f"{where}: array {name!r} holds values beyond ±{MAX_ABS:g}, which no fit produces "
                             "and which overflow the scoring arithmetic; retrain or restore the model")
    for name in ("segment_scale", "propensity_scale"):
        scale = np.asarray(arrays[name], dtype=np.float64)
        if np.any(scale == 0):
            raise ModelError(f"{where}: array {name!r} has a zero scale (feature "
                             f"{int(np.flatnonzero(scale == 0)[0])}); retrain or restore the model")
        if np.any(np.abs(scale) < 1.0 / MAX_ABS):
            raise ModelError(f"{where}: array {name!r} has a scale below {1.0 / MAX_ABS:g}, which overflows "
                             "the scoring arithmetic; retrain or restore the model")


def validate(model: ScoringModel, *, arrays_file: str, metadata_file: str) -> None:
    """Every invariant of ``model``; a violation is a :class:`ModelError` naming the file and the part.

    Runs at save (:func:`finalize`), at import and at every load (:func:`load_model`).
    """
    f = model.n_features
    if f == 0 and not model.categoricals:
        raise ModelError(f"{metadata_file}: the model has no features")
    bad = [n for n in model.features if not isinstance(n, str) or not n]
    if bad:
        raise ModelError(f"{metadata_file}: feature names must be non-empty strings, got {bad[0]!r}")
    twice = sorted({n for n in model.features if model.features.count(n) > 1})
    if twice:
        raise ModelError(f"{metadata_file}: feature(s) {', '.join(map(repr, twice))} listed more than once")
    if len(model.feature_types) != f:
        raise ModelError(f"{metadata_file}: {len(model.feature_types)} feature types for {f} features")
    unknown = [(n, t) for n, t in zip(model.features, model.feature_types)
               if t not in KNOWN_FEATURE_TYPES and not (isinstance(t, str) and is_date_feature_type(t))]
    if unknown:
        raise ModelError(f"{metadata_file}: feature {unknown[0][0]!r} has unknown column type {unknown[0][1]!r}; "
                         f"known: {', '.join(sorted(KNOWN_FEATURE_TYPES))}")
    if not isinstance(model.id_column, str) or not model.id_column:
        raise ModelError(f"{metadata_file}: the id column must be a non-empty string")
    if model.id_column in model.features:
        raise ModelError(f"{metadata_file}: the id column {model.id_column!r} is also listed as a feature")
    validate_arrays(model.arrays(), f, arrays_file)
    _validate_categoricals(model, arrays_file, metadata_file)
    _validate_heads(model, arrays_file, metadata_file)
    from engine.models.scorer import fold  # late: the scorer imports this module

    folded = fold(model, xp=np)
    for name in ("weights", "bias_s", "a2", "dd", "weights_p", "bias_p"):
        if not np.all(np.isfinite(np.asarray(getattr(folded, name), dtype=np.float64))):
            raise ModelError(f"{arrays_file}: the scaled parameters overflow ({name} is not finite); "
                             "retrain or restore the model")
    _validate_profile(model, metadata_file)
    _validate_training_record(model, metadata_file)


def _validate_categoricals(model: ScoringModel, arrays_file: str, metadata_file: str) -> None:
    """Levels named once each, columns named once, one-hot blocks of the right shapes and values."""
    if model.date_features and not _is_date_text(model.as_of):
        raise ModelError(f"{metadata_file}: the model has date features but no as-of date (YYYY-MM-DD), "
                         f"got {model.as_of!r}; retrain or restore it")
    if not model.categoricals:
        return
    names = [c.name for c in model.categoricals]
    for c in model.categoricals:
        if not isinstance(c.name, str) or not c.name:
            raise ModelError(f"{metadata_file}: categorical feature names must be non-empty strings")
        if c.name in model.features or names.count(c.name) > 1 or c.name == model.id_column:
            raise ModelError(f"{metadata_file}: categorical feature {c.name!r} is listed twice or is the id column")
        if not all(isinstance(v, str) for v in c.levels) or len(set(c.levels)) != len(c.levels):
            raise ModelError(f"{metadata_file}: the levels of categorical feature {c.name!r} must be distinct strings")
        if not isinstance(c.type, str):
            raise ModelError(f"{metadata_file}: categorical feature {c.name!r} has no column type")
        if c.null_level is not None and not (isinstance(c.null_level, int) and not isinstance(c.null_level, bool)
                                             and 0 <= c.null_level < c.n_levels):
            raise ModelError(f"{metadata_file}: categorical feature {c.name!r} has null_level {c.null_level!r}, "
                             f"not a level index below {c.n_levels}")
    L, k = model.n_levels, model.k
    arrays = model._cat_arrays()
    for name, shape in (("cat_coef", (L,)), ("cat_centroids", (k, L)), ("cat_onehot", (L,))):
        arr = np.asarray(arrays[name])
        if arr.shape != shape or arr.dtype.kind not in "fiu":
            raise ModelError(f"{arrays_file}: array {name!r} has shape {arr.shape}, expected {shape} numbers "
                             f"(the model lists {L} categorical levels); the model is corrupt: retrain or restore it")
        values = arr.astype(np.float64)
        if not np.all(np.isfinite(values)) or (values.size and np.max(np.abs(values)) > MAX_ABS):
            raise ModelError(f"{arrays_file}: array {name!r} holds NaN, infinite or huge values; "
                             "retrain or restore the model")
    onehot = np.asarray(arrays["cat_onehot"], dtype=np.float64)
    if not np.all((onehot == 0) | (onehot == 1)):
        raise ModelError(f"{arrays_file}: array 'cat_onehot' must hold only 0 and 1")
    zero = onehot == 0
    if np.any(np.asarray(arrays["cat_coef"])[zero] != 0) or np.any(np.asarray(arrays["cat_centroids"])[:, zero] != 0):
        raise ModelError(f"{arrays_file}: a level encoded as the zero vector has non-zero coefficient or "
                         "centroid entries; the model is corrupt: retrain or restore it")


def _validate_heads(model: ScoringModel, arrays_file: str, metadata_file: str) -> None:
    """Offer heads: unique ids, one row of every head array per offer, finite values, A > 0."""
    if not model.offers:
        return
    T, F, L = len(model.offers), model.n_features, model.n_levels
    ids = [o.get("id") for o in model.offers]
    if len(set(ids)) != T or not all(isinstance(i, str) and i for i in ids):
        raise ModelError(f"{metadata_file}: offer ids must be distinct non-empty strings")
    shapes = {"head_coef": (T, F), "head_intercept": (T,), "head_platt": (T, 2)}
    if model.categoricals:
        shapes["head_cat_coef"] = (T, L)
    arrays = model._head_arrays()
    for name, shape in shapes.items():
        arr = arrays.get(name)
        if arr is None or arr.shape != shape or arr.dtype.kind not in "fiu":
            raise ModelError(f"{arrays_file}: array {name!r} has shape {None if arr is None else arr.shape}, "
                             f"expected {shape} numbers ({T} offers, {F} features, {L} levels); the model is "
                             "corrupt: retrain or restore it")
        values = arr.astype(np.float64)
        if not np.all(np.isfinite(values)) or (values.size and np.max(np.abs(values)) > MAX_ABS):
            raise ModelError(f"{arrays_file}: array {name!r} holds NaN, infinite or huge values; "
                             "retrain or restore the model")
    if np.any(np.asarray(arrays["head_platt"])[:, 0] < 0):
        raise ModelError(f"{arrays_file}: array 'head_platt' has a negative slope (it would reverse a head's "
                         "ranking); the model is corrupt: retrain or restore it")
    _validate_head_mask(model, arrays, arrays_file, metadata_file)


def _validate_head_mask(model: ScoringModel, arrays: dict[str, np.ndarray], arrays_file: str,
                        metadata_file: str) -> None:
    """``head_mask`` present exactly when an offer excludes features, equal to the names, weights 0 under it."""
    from engine.models.head_mask import design_mask

    excluded = [list(o.get("exclude_features") or ()) for o in model.offers]
    mask = arrays.get("head_mask")
    if not any(excluded):
        if mask is not None:
            raise ModelError(f"{arrays_file}: array 'head_mask' is present but no offer excludes features; "
                             "the model is corrupt: retrain or restore it")
        return
    columns = set(model.columns)
    for o, names in zip(model.offers, excluded):
        unknown = [n for n in names if n not in columns]
        if unknown or len(set(names)) != len(names):
            raise ModelError(f"{metadata_file}: offer {o.get('id')!r} excludes {names}, not distinct columns of "
                             "the model; the model is corrupt: retrain or restore it")
    want = design_mask(model.features, model.categoricals, excluded)
    if mask is None or mask.shape != want.shape or not np.array_equal(np.asarray(mask, dtype=np.float64), want):
        raise ModelError(f"{arrays_file}: array 'head_mask' does not match the offers' exclude_features "
                         f"(shape {None if mask is None else mask.shape}, expected {want.shape}); the model is "
                         "corrupt: retrain or restore it")
    F = model.n_features
    weights = np.asarray(arrays["head_coef"], dtype=np.float64)
    if model.categoricals:
        weights = np.hstack([weights, np.asarray(arrays["head_cat_coef"], dtype=np.float64)])
    if np.any(weights[want == 0] != 0) or np.any(np.asarray(model.coef)[want[0, :F] == 0] != 0):
        raise ModelError(f"{arrays_file}: a head has a non-zero weight on a feature it excludes "
                         "(head_mask); the model is corrupt: retrain or restore it")


def _is_date_text(text: Any) -> bool:
    try:
        _dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        return False
    return True


def _validate_training_record(model: ScoringModel, where: str) -> None:
    """The regularisation choice and the evaluation record, where a model carries them."""
    logistic = (model.params or {}).get("logistic") if isinstance(model.params, dict) else None
    if isinstance(logistic, dict) and "C" in logistic:
        C = logistic["C"]
        if not (isinstance(C, (int, float)) and not isinstance(C, bool) and math.isfinite(C) and C > 0):
            raise ModelError(f"{where}: params.logistic.C must be a positive number, got {C!r}")
        if logistic.get("penalty", "l2") not in ("l1", "l2"):
            raise ModelError(f"{where}: params.logistic.penalty must be 'l1' or 'l2', got {logistic.get('penalty')!r}")
    evaluation = (model.metrics or {}).get("evaluation") if isinstance(model.metrics, dict) else None
    if evaluation is not None and (not isinstance(evaluation, dict)
                                   or evaluation.get("kind") not in ("holdout", "cv", "none")):
        raise ModelError(f"{where}: metrics.evaluation.kind must be 'holdout', 'cv' or 'none'")


def check_derived(meta: dict[str, Any], model: ScoringModel, where: str) -> None:
    """``drivers`` and ``segments`` in ``model.json`` must be what the arrays say (they are derived)."""
    from engine.models.explain import drivers, segment_descriptions

    for key, derive in (("drivers", drivers), ("segments", segment_descriptions)):
        if key in meta and meta[key] != derive(model):
            raise ModelError(f"{where}: {key!r} does not match the model's arrays (it is derived from them); "
                             "the model was edited: retrain or restore it")


def _validate_profile(model: ScoringModel, where: str) -> None:
    """The drift reference bins must be usable: sorted finite edges, one fraction per bin."""
    profile = model.profile or {}
    if not isinstance(profile, dict):
        raise ModelError(f"{where}: 'profile' must be an object")
    feats = profile.get("features") or {}
    entries = [(f"profile of feature {n!r}", feats.get(n)) for n in model.features if n in feats]
    if "propensity" in profile:
        entries.append(("profile of the propensity", profile["propensity"]))
    for what, entry in entries:
        if not isinstance(entry, dict) or "bin_edges" not in entry:
            continue
        edges, fractions = entry.get("bin_edges"), entry.get("bin_fractions")
        ok = isinstance(edges, list) and isinstance(fractions, list) and len(fractions) == len(edges) + 1
        ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in edges + fractions)
        ok = ok and all(a < b for a, b in zip(edges, edges[1:]))
        if not ok:
            raise ModelError(f"{where}: {what} has unusable drift bins (bin_edges must be sorted finite numbers "
                             "and bin_fractions one longer); retrain or restore the model")
    shares = profile.get("segment_shares")
    if shares is not None and (not isinstance(shares, list) or len(shares) != model.k):
        raise ModelError(f"{where}: profile 'segment_shares' must list one share per segment ({model.k})")


def finalize(model: ScoringModel, *, where: str = "the model being saved") -> ScoringModel:
    """Validate, make metadata JSON-safe, stamp the time and compute the hash."""
    arrays = {n: np.asarray(a, dtype=np.float64) if np.asarray(a).dtype.kind in "fiub" else np.asarray(a)
              for n, a in model.arrays().items()}
    validate_arrays(arrays, model.n_features, where)
    model = replace(
        model,
        segmenter=Preprocess(arrays["segment_fill"], arrays["segment_mean"], arrays["segment_scale"]),
        propensity=Preprocess(arrays["propensity_fill"], arrays["propensity_mean"], arrays["propensity_scale"]),
        centroids=arrays["centroids"],
        coef=arrays["coef"],
        intercept=float(model.intercept),
        cat_coef=arrays.get("cat_coef"),
        cat_centroids=arrays.get("cat_centroids"),
        cat_onehot=arrays.get("cat_onehot"),
        metrics=_json_safe(model.metrics),
        profile=_json_safe(model.profile),
        params=_json_safe(model.params),
        offers=tuple(_json_safe(list(model.offers))),
        offer_settings=_json_safe(model.offer_settings),
        head_coef=arrays.get("head_coef"),
        head_cat_coef=arrays.get("head_cat_coef"),
        head_intercept=arrays.get("head_intercept"),
        head_platt=arrays.get("head_platt"),
        head_mask=arrays.get("head_mask"),
        created_at=model.created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    validate(model, arrays_file=where, metadata_file=where)
    return replace(model, content_hash=compute_hash(model.metadata(), model.arrays()))


MODEL_MARKERS = (METADATA_FILE, ARRAYS_FILE)


def _owned_model(read: Any) -> set[str] | None:
    """The files a model written by the engine holds; None if its model.json is not ours."""
    from engine.io.publish import json_marker

    meta = json_marker(read(METADATA_FILE), ("format", "format_version", "content_hash"))
    if meta is None or meta["format"] != FORMAT:
        return None
    # "report.html" is engine.report.TRAIN_REPORT, named here so that checking an output
    # does not import the report package.
    return {METADATA_FILE, ARRAYS_FILE, "report.html"}


def model_kind() -> Any:
    """The model as :mod:`engine.io.publish` publishes it: ``model.json`` removed first, written last."""
    from engine.io.publish import ArtifactKind

    return ArtifactKind(what="an engine model", marker=METADATA_FILE, markers=MODEL_MARKERS, owned=_owned_model)


def check_model_output(path: str | os.PathLike[str], *, overwrite: bool, flag: str = "--output",
                       protected: dict[str, Any] | None = None) -> Any:
    """Before any work: where a model may be written; its real path (see :mod:`engine.io.publish`).

    An existing model directory is replaced only with ``overwrite``; an empty directory
    always; anything else never. In an object store (``s3://...``) the same rules hold for
    the prefix, and write and delete permission is probed; the result is then its
    :class:`engine.io.uri.Location`.
    """
    from engine.io.publish import check_target

    return check_target(path, model_kind(), overwrite=overwrite, flag=flag, protected=protected)


def save_model(model: ScoringModel, path: str | os.PathLike[str], *, overwrite: bool = False,
               protected: dict[str, Any] | None = None,
               extra: Callable[[ScoringModel, Path], None] | None = None) -> ScoringModel:
    """Write the artifact directory all or nothing (:func:`engine.io.publish.publish`); returns
    the finalized model.

    An existing model directory at ``path`` is replaced, with ``overwrite`` only, once the
    new one is complete; a symlink at ``path`` stays a link to the replaced directory; in a
    store a kill at any step leaves the previous model loadable. ``extra(model, dir)`` may add
    files (the training report) to the directory before it is published.
    """
    from engine.io.guard import output_errors
    from engine.io.publish import publish

    model = finalize(model, where=f"the model for {os.fspath(path)}")

    def write(tmp: Path) -> None:
        with output_errors(tmp, "write the model"):
            np.savez(tmp / ARRAYS_FILE, **model.arrays())
            meta = model.metadata() | {"content_hash": model.content_hash}
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
        if extra is not None:
            extra(model, tmp)

    publish(path, write, model_kind(), overwrite=overwrite, protected=protected)
    return model


_STORE_MODELS: dict[tuple[Any, ...], ScoringModel] = {}


def _load_from_store(loc: Any) -> ScoringModel:
    """Download the two files of a model in a store, then load and verify them as from disk.

    Loaded once per process for the same objects (same sizes and modification times).
    """
    import tempfile

    from engine.io.publish import readable
    from engine.io.store import store_errors, store_for

    store = store_for(loc)
    # The previous model while a publish is between its markers (or was killed there).
    with store_errors(loc, "read the model at", role="model"):
        source = readable(loc, METADATA_FILE, role="model")
        listing = {o.path.rsplit("/", 1)[-1]: o for o in store.list(source)
                   if o.path.rsplit("/", 1)[0] == source.fs_path}
    if not listing:
        raise ModelError(f"model {loc.uri} does not exist; train one with `engine train` or import one")
    if METADATA_FILE not in listing:
        raise ModelError(f"{loc.uri} is not a model directory (no {METADATA_FILE}); pass the prefix "
                         "`engine train --output` wrote")
    key = (source.uri, *((n, listing[n].size, listing[n].mtime_ns) for n in sorted(listing) if n in MODEL_MARKERS))
    if key in _STORE_MODELS:
        return _STORE_MODELS[key]
    with tempfile.TemporaryDirectory(prefix="engine-model-") as tmp:
        for name in MODEL_MARKERS:
            if name in listing:
                with store_errors(loc, "read the model at", role="model"):
                    data = store.read_bytes(source.join(name), limit=1 << 34)
                (Path(tmp) / name).write_bytes(data or b"")
        try:
            model = load_model(tmp)
        except ModelError as exc:
            raise ModelError(str(exc).replace(tmp, loc.uri)) from None
    _STORE_MODELS[key] = model
    return model


def _regular(path: Path, root: Path) -> None:
    """Refuse a FIFO, device or directory where a model file belongs (opening a FIFO blocks forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"{path} is missing; the model is incomplete: retrain or restore it") from None
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "a device or socket")
        raise ModelError(f"{path} is {kind}, not a regular file; the model {root} is corrupt: retrain or restore it")


def load_model(path: str | os.PathLike[str]) -> ScoringModel:
    """Load and verify an artifact; any problem is a :class:`ModelError` naming the file.

    ``path`` may be a store URI (``s3://bucket/models/churn``) or an MLflow one
    (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN/model``): the same
    checks, on the downloaded files.
    """
    from engine.io.uri import Location, parse

    if isinstance(path, str) and path.startswith(("models:/", "runs:/")):
        # The MLflow registry or a run: downloaded, then loaded by this function (same checks).
        from engine.integrations.mlflow import load_from_mlflow

        return load_from_mlflow(path, load_model)  # type: ignore[no-any-return]
    target = parse(path, "--model")
    if isinstance(target, Location):
        return _load_from_store(target)
    root = Path(target)
    meta_path, arrays_path = root / METADATA_FILE, root / ARRAYS_FILE
    if not root.exists():
        raise ModelError(f"model {root} does not exist; train one with `engine train` or import one")
    if not root.is_dir() or not os.path.lexists(meta_path):
        raise ModelError(f"{root} is not a model directory (no {METADATA_FILE}); pass the directory `engine train --output` wrote")
    _regular(meta_path, root)
    try:
        meta = json.loads(meta_path.read_text())
    except RecursionError:
        raise ModelError(f"{meta_path} is nested too deeply to be a model; the model is corrupt or forged: "
                         "retrain or restore it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta_path} is not valid JSON ({exc}); the model is corrupt: retrain or restore it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{meta_path} is not a customer-scoring-engine model")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{meta_path}: model format version {version!r} is not supported by engine {__version__} "
            f"(it reads format version {FORMAT_VERSION}); use a matching engine version or retrain the model"
        )
    check_model_json(meta, str(meta_path))  # before any field is used
    _regular(arrays_path, root)
    try:
        cat_names = _CAT_ARRAY_NAMES if meta.get("categoricals") else ()
        head_names = (_HEAD_ARRAY_NAMES + (("head_cat_coef",) if cat_names else ())) if meta.get("offers") else ()
        if any(o.get("exclude_features") for o in meta.get("offers") or ()):
            head_names += ("head_mask",)
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: np.array(npz[name]) for name in _ARRAY_NAMES + cat_names + head_names}
    except FileNotFoundError:
        raise ModelError(f"{arrays_path} is missing; the model is incomplete: retrain or restore it") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{arrays_path} cannot be read ({exc}); the model is corrupt: retrain or restore it") from None
    expected = meta.get("content_hash")
    actual = compute_hash(meta, arrays)
    if expected != actual:
        raise ModelError(
            f"{root}: content hash mismatch (recorded {expected}, computed {actual}); "
            "the artifact was modified after it was written. Retrain or restore it from a trusted copy"
        )
    try:
        features = tuple(f["name"] for f in meta["features"])
        types = tuple(f["type"] for f in meta["features"])
        categoricals = tuple(Categorical(str(c["name"]), str(c["type"]), tuple(c["levels"]), c.get("null_level"))
                             for c in meta.get("categoricals") or ())
        validate_arrays(arrays, len(features), str(arrays_path))
        model = ScoringModel(
            features=features,
            feature_types=types,
            segmenter=Preprocess(arrays["segment_fill"], arrays["segment_mean"], arrays["segment_scale"]),
            centroids=arrays["centroids"],
            propensity=Preprocess(arrays["propensity_fill"], arrays["propensity_mean"], arrays["propensity_scale"]),
            coef=arrays["coef"],
            intercept=float(arrays["intercept"][0]),
            id_column=meta["id_column"],
            target=meta.get("target"),
            metrics=meta.get("metrics", {}),
            profile=meta.get("profile", {}),
            params=meta.get("params", {}),
            engine_version=meta.get("engine_version", "?"),
            format_version=version,
            created_at=meta.get("created_at", ""),
            content_hash=actual,
            categoricals=categoricals,
            cat_coef=arrays.get("cat_coef"),
            cat_centroids=arrays.get("cat_centroids"),
            cat_onehot=arrays.get("cat_onehot"),
            as_of=meta.get("as_of"),
            offers=tuple(meta.get("offers") or ()),
            offer_settings=meta.get("offer_settings") or {},
            head_coef=arrays.get("head_coef"),
            head_cat_coef=arrays.get("head_cat_coef"),
            head_intercept=arrays.get("head_intercept"),
            head_platt=arrays.get("head_platt"),
            head_mask=arrays.get("head_mask"),
        )
    except (KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"{meta_path} lacks a required field ({exc}); the model is corrupt") from None
    # The hash says nobody edited the files; this says the model can be scored.
    validate(model, arrays_file=str(arrays_path), metadata_file=str(meta_path))
    check_derived(meta, model, str(meta_path))
    return model
