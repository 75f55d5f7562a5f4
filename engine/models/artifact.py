"""The model artifact: a directory of JSON metadata plus plain arrays, never pickle.

Layout of ``MODEL/``::

    model.json   metadata: format version, engine version, features and dtypes,
                 preprocessing and head descriptions, metrics, training profile,
                 content hash
    arrays.npz   the numeric parameters, loaded with ``allow_pickle=False``

The content hash is SHA-256 over the canonical JSON of the metadata (without the hash
itself) and every array's name, dtype, shape and bytes, so any edit to either file
is detected at load time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.errors import ModelError

FORMAT_VERSION = 1
METADATA_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
_ARRAY_NAMES = (
    "segment_fill", "segment_mean", "segment_scale", "centroids",
    "propensity_fill", "propensity_mean", "propensity_scale", "coef", "intercept",
)


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

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_features(self) -> int:
        return len(self.features)

    def arrays(self) -> dict[str, np.ndarray]:
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
        return {
            "format": "customer-scoring-engine/model",
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


def finalize(model: ScoringModel) -> ScoringModel:
    """Validate shapes, make metadata JSON-safe, stamp the time and compute the hash."""
    f, k = model.n_features, model.k
    if f == 0:
        raise ModelError("the model has no features")
    checks = {
        "segment_fill": (f,), "segment_mean": (f,), "segment_scale": (f,), "centroids": (k, f),
        "propensity_fill": (f,), "propensity_mean": (f,), "propensity_scale": (f,), "coef": (f,),
    }
    arrays = {n: np.asarray(a, dtype=np.float64) for n, a in model.arrays().items()}
    for name, shape in checks.items():
        if arrays[name].shape != shape:
            raise ModelError(f"model array {name} has shape {arrays[name].shape}, expected {shape}")
        if not np.all(np.isfinite(arrays[name])):
            raise ModelError(f"model array {name} holds NaN or infinite values")
    for name in ("segment_scale", "propensity_scale"):
        if np.any(arrays[name] == 0):
            raise ModelError(f"model array {name} has a zero scale")
    model = replace(
        model,
        segmenter=Preprocess(arrays["segment_fill"], arrays["segment_mean"], arrays["segment_scale"]),
        propensity=Preprocess(arrays["propensity_fill"], arrays["propensity_mean"], arrays["propensity_scale"]),
        centroids=arrays["centroids"],
        coef=arrays["coef"],
        intercept=float(model.intercept),
        metrics=_json_safe(model.metrics),
        profile=_json_safe(model.profile),
        params=_json_safe(model.params),
        created_at=model.created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return replace(model, content_hash=compute_hash(model.metadata(), model.arrays()))


def save_model(model: ScoringModel, path: str | os.PathLike[str]) -> ScoringModel:
    """Write the artifact directory atomically (temp dir + rename); returns the finalized model.

    An existing model directory at ``path`` is replaced only once the new one is complete.
    """
    model = finalize(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / METADATA_FILE).exists() and any(target.iterdir()):
        raise ModelError(f"{target} exists and is not a model directory; choose another --output")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        np.savez(tmp / ARRAYS_FILE, **model.arrays())
        meta = model.metadata() | {"content_hash": model.content_hash}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return model


def load_model(path: str | os.PathLike[str]) -> ScoringModel:
    """Load and verify an artifact; any problem is a :class:`ModelError` naming the file."""
    root = Path(path)
    meta_path, arrays_path = root / METADATA_FILE, root / ARRAYS_FILE
    if not root.exists():
        raise ModelError(f"model {root} does not exist; train one with `engine train` or import one")
    if not root.is_dir() or not meta_path.is_file():
        raise ModelError(f"{root} is not a model directory (no {METADATA_FILE}); pass the directory `engine train --output` wrote")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta_path} is not valid JSON ({exc}); the model is corrupt: retrain or restore it") from None
    if not isinstance(meta, dict) or meta.get("format") != "customer-scoring-engine/model":
        raise ModelError(f"{meta_path} is not a customer-scoring-engine model")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{meta_path}: model format version {version!r} is not supported by engine {__version__} "
            f"(it reads format version {FORMAT_VERSION}); use a matching engine version or retrain the model"
        )
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: np.array(npz[name]) for name in _ARRAY_NAMES}
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
        return ScoringModel(
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
        )
    except (KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"{meta_path} lacks a required field ({exc}); the model is corrupt") from None
