"""The declared schema of ``model.json``, checked by one function before any field is used.

A model's hash only says nobody edited it since it was written; a forged model with a
recomputed hash must still fail here, as exit 5 naming the field, and never later as a
traceback (a profile entry that is a list, a null rate ``"abc"``, segment shares as
strings, JSON nested a thousand deep). Readers then trust the types they get.

The schema is plain data (:class:`Obj`, :class:`ListOf`, :class:`MapOf`, :class:`Num`, ...):
the parts the engine computes with are declared exactly; free-form records (``params``,
extra keys a later format adds) are any JSON within :data:`MAX_DEPTH` and :data:`MAX_ITEMS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ModelError

MAX_DEPTH = 32
MAX_ITEMS = 1_000_000
MAX_STR = 65_536


class _Bad(Exception):
    def __init__(self, path: str, expected: str, value: Any) -> None:
        shown = repr(value)
        super().__init__(f"field {path or '(top level)'!r} must be {expected}, got "
                         f"{shown[:60] + '...' if len(shown) > 60 else shown}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


class Spec:
    def check(self, value: Any, path: str, depth: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class AnyJSON(Spec):
    """Any JSON value, nested at most :data:`MAX_DEPTH` deep."""

    def check(self, value: Any, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Bad(path, f"nested at most {MAX_DEPTH} deep", "...")
        if isinstance(value, dict):
            if len(value) > MAX_ITEMS:
                raise _Bad(path, f"an object of at most {MAX_ITEMS} keys", f"{len(value)} keys")
            for k, v in value.items():
                self.check(v, f"{path}.{k}", depth + 1)
        elif isinstance(value, list):
            if len(value) > MAX_ITEMS:
                raise _Bad(path, f"a list of at most {MAX_ITEMS} items", f"{len(value)} items")
            for i, v in enumerate(value):
                self.check(v, f"{path}[{i}]", depth + 1)
        elif isinstance(value, str) and len(value) > MAX_STR:
            raise _Bad(path, f"a string of at most {MAX_STR} characters", f"{len(value)} characters")


ANY = AnyJSON()


@dataclass(frozen=True)
class Num(Spec):
    nullable: bool = False
    low: float | None = None
    high: float | None = None

    def check(self, value: Any, path: str, depth: int) -> None:
        if value is None and self.nullable:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        if not ok:
            rng = "" if self.low is None and self.high is None else f" in [{self.low}, {self.high}]"
            raise _Bad(path, f"a finite number{rng}" + (" or null" if self.nullable else ""), value)


@dataclass(frozen=True)
class Int(Spec):
    nullable: bool = False
    low: int | None = None

    def check(self, value: Any, path: str, depth: int) -> None:
        if value is None and self.nullable:
            return
        if not (isinstance(value, int) and not isinstance(value, bool) and (self.low is None or value >= self.low)):
            raise _Bad(path, "an integer" + (f" >= {self.low}" if self.low is not None else "")
                       + (" or null" if self.nullable else ""), value)


@dataclass(frozen=True)
class Str(Spec):
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    max_len: int = 4096

    def check(self, value: Any, path: str, depth: int) -> None:
        if value is None and self.nullable:
            return
        ok = isinstance(value, str) and len(value) <= self.max_len
        if ok and self.choices is not None:
            ok = value in self.choices
        if not ok:
            expected = (f"one of {', '.join(map(repr, self.choices))}" if self.choices
                        else f"a string of at most {self.max_len} characters")
            raise _Bad(path, expected + (" or null" if self.nullable else ""), value)


@dataclass(frozen=True)
class Bool(Spec):
    def check(self, value: Any, path: str, depth: int) -> None:
        if not isinstance(value, bool):
            raise _Bad(path, "true or false", value)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    min_len: int = 0
    max_len: int = MAX_ITEMS

    def check(self, value: Any, path: str, depth: int) -> None:
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len:
            raise _Bad(path, f"a list of {self.min_len} to {self.max_len} items", value)
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]", depth + 1)


@dataclass(frozen=True)
class MapOf(Spec):
    value: Spec

    def check(self, value: Any, path: str, depth: int) -> None:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise _Bad(path, "an object", value)
        for k, v in value.items():
            self.value.check(v, f"{path}.{k}", depth + 1)


@dataclass(frozen=True)
class Obj(Spec):
    required: dict[str, Spec] = field(default_factory=dict)
    optional: dict[str, Spec] = field(default_factory=dict)
    extra: Spec | None = ANY  # other keys: any JSON within the limits (None: refused)
    nullable: bool = False

    def check(self, value: Any, path: str, depth: int) -> None:
        if value is None and self.nullable:
            return
        if not isinstance(value, dict):
            raise _Bad(path, "an object" + (" or null" if self.nullable else ""), value)
        for key in self.required:
            if key not in value:
                raise _Bad(f"{path}.{key}" if path else key, "present", "nothing")
        for key, v in value.items():
            sub = f"{path}.{key}" if path else key
            spec = self.required.get(key) or self.optional.get(key) or self.extra
            if spec is None:
                raise _Bad(sub, "absent (an unknown field)", v)
            spec.check(v, sub, depth + 1)


_BINS = {"bin_edges": ListOf(Num(), max_len=10_000), "bin_fractions": ListOf(Num(low=0.0, high=1.0), max_len=10_001)}
_FEATURE_PROFILE = Obj(optional={"null_rate": Num(low=0.0, high=1.0), "mean": Num(nullable=True),
                                 "std": Num(nullable=True), "quantiles": MapOf(Num()), **_BINS})
_METRICS = MapOf(Num(nullable=True))

MODEL_SCHEMA = Obj(
    required={
        "format": Str(), "format_version": Int(),
        "features": ListOf(Obj(required={"name": Str(max_len=1024), "type": Str(max_len=256)}), 1, 100_000),
        "id_column": Str(max_len=1024),
    },
    optional={
        "engine_version": Str(), "created_at": Str(), "content_hash": Str(),
        "target": Str(nullable=True, max_len=1024),
        "segmenter": Obj(optional={"kind": Str(), "k": Int(low=1), "space": Str()}),
        "propensity": Obj(optional={"kind": Str(), "link": Str()}),
        "metrics": Obj(optional={
            "evaluation": Obj(optional={"kind": Str(choices=("holdout", "cv", "none")), "rows": Int(low=0),
                                        "folds": Int(nullable=True, low=0), "share": Num(nullable=True)}),
            "train": _METRICS, "holdout": _METRICS, "cv": _METRICS,
            "kmeans_inertia_train": Num(nullable=True), "kmeans_inertia_train_per_row": Num(nullable=True),
        }),
        "profile": Obj(optional={
            "rows": Int(low=0),
            "features": MapOf(_FEATURE_PROFILE),
            "propensity": Obj(optional={**_BINS, "mean": Num(nullable=True)}),
            "segment_shares": ListOf(Num(low=0.0, high=1.0)),
            "segment_mean_propensity": ListOf(Num(nullable=True, low=0.0, high=1.0)),
        }),
        "params": Obj(optional={"k": Int(low=1), "seed": Int(nullable=True),
                                "logistic": Obj(optional={"C": Num(), "penalty": Str(choices=("l1", "l2"))})}),
        "drivers": ListOf(Obj(optional={"feature": Str(max_len=1024), "log_odds_per_sd": Num(), "direction": Str(),
                                        "unit": Str()})),
        "segments": ListOf(Obj(optional={"segment": Int(low=0), "description": Str(max_len=MAX_STR)})),
        # Offer heads (engine/offers): the catalogue each head was trained for, and its statistics.
        "offers": ListOf(Obj(required={"id": Str(max_len=128), "target": Str(max_len=1024)},
                             optional={"positive": Str(nullable=True), "value": Num(), "cost": Num(low=0.0),
                                       "eligible": Str(nullable=True, max_len=10_000),
                                       "exclude_owned": Bool(), "budget": Int(nullable=True, low=0),
                                       "positives": Int(low=0), "base_rate": Num(low=0.0, high=1.0),
                                       "C": Num(low=0.0), "shrink": Num(low=0.0, high=1.0),
                                       "exclude_features": ListOf(Str(max_len=1024), 1, 100_000),
                                       "item": Str(max_len=1024),
                                       "cv": _METRICS}), 1, 512),
        "offer_settings": Obj(optional={"top": Int(low=1), "min_expected_value": Num(nullable=True),
                                        "rules": Str(max_len=4096)}),
    },
)


def check_model_json(meta: Any, where: str) -> None:
    """``meta`` (parsed ``model.json``) against :data:`MODEL_SCHEMA`; :class:`ModelError` naming the field."""
    try:
        MODEL_SCHEMA.check(meta, "", 0)
    except _Bad as exc:
        raise ModelError(f"{where}: {exc}; the model is corrupt or forged: retrain or restore it") from None
