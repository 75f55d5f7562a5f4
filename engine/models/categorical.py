"""Categorical and date columns: their kinds, the levels learned at training, and Arrow to level indices.

A categorical column's levels are its most frequent values with at least
``min_level_count`` training rows (never fewer than the privacy minimum), at most
``max_levels`` of them, followed by two levels that every categorical has: *other*
(rare, dropped or never-seen values) and *missing* (nulls). Its model entries form a
one-hot block (one coefficient and one centroid coordinate per level), unscaled, as
scikit-learn's ``OneHotEncoder`` beside a ``StandardScaler`` gives them.

At scoring, a batch's values become level indices in C++ (``pyarrow.compute``): a
dictionary-encoded column's dictionary is mapped to the model's levels once per chunk
and the indices taken through that map; a plain string column is looked up with
``index_in`` (one hash per value, as dictionary-encoding it would cost). Nothing runs
per row in Python.

Dates and timestamps are numeric features: days before the model's as-of date.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import InputError
from engine.io.arrow import (  # the type predicates live below io/validate and here; named here too
    can_be_categorical,  # noqa: F401
    is_categorical_type,
    is_date_type,
    string_array,
)
from engine.privacy import MIN_CUSTOMERS

#: No level stored or shown with fewer customers (the privacy rule of the profile).
PRIVACY_MIN_ROWS = MIN_CUSTOMERS  # engine.privacy: the one minimum of customers behind a statistic
MIN_LEVEL_COUNT = 20
MAX_LEVELS = 50
OTHER_LABEL = "(other)"
MISSING_LABEL = "(missing)"


@dataclass(frozen=True)
class Categorical:
    """One categorical feature: its kept levels, then *other* and *missing* (indices ``m`` and ``m + 1``)."""

    name: str
    type: str
    levels: tuple[str, ...]
    # Where nulls go: the *missing* level (None), or another level's index (an imported
    # pipeline that imputes a category, or an encoder that has no level for nulls).
    null_level: int | None = None

    @property
    def null_index(self) -> int:
        return self.missing if self.null_level is None else self.null_level

    @property
    def n_levels(self) -> int:
        return len(self.levels) + 2

    @property
    def other(self) -> int:
        return len(self.levels)

    @property
    def missing(self) -> int:
        return len(self.levels) + 1

    def label(self, index: int) -> str:
        """The level's name as reports and reason codes show it."""
        if index == self.other:
            return OTHER_LABEL
        if index == self.missing:
            return MISSING_LABEL
        return self.levels[index]

    def labels(self) -> list[str]:
        return [self.label(i) for i in range(self.n_levels)]


def offsets(categoricals: Sequence[Categorical]) -> np.ndarray:
    """Each column's first global level index (the blocks are laid end to end)."""
    sizes = [c.n_levels for c in categoricals]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32) if sizes else np.zeros(0, np.int32)


def total_levels(categoricals: Sequence[Categorical]) -> int:
    return int(sum(c.n_levels for c in categoricals))


def _strings(chunk: pa.Array) -> pa.Array:
    """A chunk's values as strings (booleans as ``true``/``false``, integers in decimal)."""
    if pa.types.is_string(chunk.type):
        return chunk
    return pc.cast(chunk, pa.string())


def learn_levels(column: pa.ChunkedArray, name: str, min_count: int = MIN_LEVEL_COUNT,
                 max_levels: int = MAX_LEVELS) -> tuple[Categorical, dict[str, int]]:
    """The column's levels and the training rows per level (kept ones, ``other``, ``missing``)."""
    min_count = max(int(min_count), PRIVACY_MIN_ROWS)
    values = pa.chunked_array([_strings(c.dictionary_decode() if pa.types.is_dictionary(c.type) else c)
                               for c in column.chunks], type=pa.string())
    counts = pc.value_counts(values.drop_null()) if len(values) else pa.array([], pa.struct(
        [("values", pa.string()), ("counts", pa.int64())]))
    names = counts.field("values").to_pylist()
    freq = counts.field("counts").to_numpy(zero_copy_only=False)
    # Most frequent first; equal counts in name order, so the levels do not depend on row order.
    order = sorted(range(len(names)), key=lambda i: (-int(freq[i]), names[i]))
    kept = [i for i in order if freq[i] >= min_count][:max_levels]
    levels = tuple(names[i] for i in kept)
    n_kept = int(sum(freq[i] for i in kept))
    cat = Categorical(name, str(column.type), levels)
    per_level = {names[i]: int(freq[i]) for i in kept}
    return cat, {**per_level, OTHER_LABEL: int(freq.sum()) - n_kept if len(freq) else 0,
                 MISSING_LABEL: int(column.null_count)}


def _ints(arr: pa.Array, fill: int = 0) -> np.ndarray:
    """An integer Arrow array as int32 NumPy values read from its buffers, nulls set to ``fill``.

    Neither ``to_numpy`` nor ``fill_null`` with a Python scalar: both may import pandas,
    which a scoring run never needs (tests/engine/test_pipeline.py checks that).
    """
    from engine.io.matrix import valid_mask

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n, offset = len(arr), arr.offset
    dtype = np.dtype(f"int{arr.type.bit_width}")
    values = np.frombuffer(arr.buffers()[1], dtype=dtype, count=offset + n)[offset:].astype(np.int32)
    if arr.null_count:
        values[~valid_mask(arr)] = fill
    return values


def level_indices(column: pa.ChunkedArray, cat: Categorical) -> np.ndarray:
    """Local level index (int32) of every row: kept levels, then other, then missing."""

    levels = string_array(cat.levels)  # built from buffers: pa.array imports pandas
    parts = []
    for chunk in column.chunks:
        if not len(chunk):
            continue
        if pa.types.is_null(chunk.type):
            parts.append(np.full(len(chunk), cat.null_index, np.int32))
            continue
        if pa.types.is_dictionary(chunk.type):
            # The dictionary is mapped once; the rows only take through the map (in NumPy).
            mapping = _ints(pc.index_in(_strings(chunk.dictionary), value_set=levels), cat.other)
            codes = mapping[_ints(chunk.indices)] if len(mapping) else np.full(len(chunk), cat.other, np.int32)
        else:
            codes = _ints(pc.index_in(_strings(chunk), value_set=levels), cat.other)
        if chunk.null_count:
            from engine.io.matrix import valid_mask

            codes[~valid_mask(chunk)] = cat.null_index  # null rows: the missing level (or the model's choice)
        parts.append(codes)
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def level_matrix(table: pa.Table, categoricals: Sequence[Categorical], global_index: bool = True) -> np.ndarray:
    """A C-contiguous ``(n, Q)`` int32 matrix of level indices (global ones: with the column offsets)."""
    n = table.num_rows
    out = np.empty((n, len(categoricals)), dtype=np.int32)
    base = offsets(categoricals) if global_index else np.zeros(len(categoricals), np.int32)
    for q, cat in enumerate(categoricals):
        out[:, q] = level_indices(table.column(cat.name), cat) + base[q]
    return out


def parse_as_of(text: str | None) -> _dt.date:
    """``--as-of YYYY-MM-DD`` (None: today in UTC)."""
    if text is None or text == "":
        return _dt.datetime.now(_dt.timezone.utc).date()
    try:
        return _dt.date.fromisoformat(str(text))
    except ValueError:
        from engine.errors import UsageError

        raise UsageError(f"--as-of must be a date YYYY-MM-DD, not {text!r}") from None


def days_before(column: pa.ChunkedArray, as_of: _dt.date, name: str = "") -> np.ndarray:
    """Days from each date/timestamp to the as-of date (float64, NaN for nulls); later dates are negative."""
    if pa.types.is_timestamp(column.type):
        if column.type.tz is not None:
            column = pc.cast(column, pa.timestamp(column.type.unit))  # wall time in UTC
        unit_per_day = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
        raw = pc.cast(column, pa.int64())
        per_day = unit_per_day[column.type.unit]
        ref = (_dt.datetime(as_of.year, as_of.month, as_of.day) - _dt.datetime(1970, 1, 1)).days * per_day
        values = raw.to_numpy().astype(np.float64) if not raw.null_count else \
            pc.fill_null(pc.cast(raw, pa.float64()), float("nan")).to_numpy()
        return (ref - values) / per_day
    if pa.types.is_date(column.type):
        raw = pc.cast(pc.cast(column, pa.date32()), pa.int32())
        values = pc.fill_null(pc.cast(raw, pa.float64()), float("nan")).to_numpy()
        return float((as_of - _dt.date(1970, 1, 1)).days) - values
    raise InputError(f"column {name!r} has type {column.type}, not a date or timestamp")


def with_dates_as_days(table: pa.Table, dates: Sequence[str], as_of: _dt.date) -> pa.Table:
    """``table`` with each named date/timestamp column replaced by float64 days before ``as_of``."""
    for name in dates:
        if name not in table.column_names:
            continue
        col = table.column(name)
        if not is_date_type(col.type):
            continue
        i = table.column_names.index(name)
        table = table.set_column(i, name, pa.array(days_before(col, as_of, name), pa.float64()))
    return table


@dataclass(frozen=True)
class ColumnPlan:
    """What training makes of every column: numeric, date and categorical features, and the rest with why."""

    numeric: tuple[str, ...]
    dates: tuple[str, ...]
    categorical: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]

    @property
    def features(self) -> tuple[str, ...]:
        """The float matrix's columns: numeric features, then dates (as days before the as-of date)."""
        return self.numeric + self.dates


def _kind(dtype: pa.DataType, forced: bool) -> str | None:
    if forced:
        return "categorical" if can_be_categorical(dtype) else None
    if is_categorical_type(dtype):
        return "categorical"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return "numeric"
    if is_date_type(dtype):
        return "date"
    return None


def plan_columns(schema: pa.Schema, exclude: Sequence[str], features: Sequence[str] | None,
                 categorical: Sequence[str]) -> ColumnPlan:
    """Sort the columns of ``schema`` into feature kinds; a named column that cannot be one is an error.

    Default features: every column but ``exclude``. ``categorical`` names integer (or
    other) columns to take as categorical.
    """
    from engine.errors import UsageError

    names = list(schema.names)
    unknown = list(dict.fromkeys(c for c in list(categorical) + list(features or ()) if c not in names))
    if unknown:
        from engine.io.validate import suggest

        raise InputError("; ".join(f"column {c!r} is missing from the input{suggest(c, names)}" for c in unknown)
                         + f" (named by --features/--categorical); its columns: {', '.join(names[:30])}"
                         + (" ..." if len(names) > 30 else ""))
    clash = [c for c in categorical if c in exclude]
    if clash:
        raise UsageError(f"--categorical must not include the id or target column: {', '.join(clash)}")
    wanted = list(features) if features else [n for n in names if n not in set(exclude)]
    wanted += [c for c in categorical if c not in wanted]
    numeric, dates, cats, left = [], [], [], []
    # The named order first (it is the model's feature order), then the columns left out.
    for name in wanted + [n for n in names if n not in wanted]:
        if name in exclude:
            continue
        if name not in wanted:
            left.append((name, "not in --features"))
            continue
        dtype = schema.field(name).type
        kind = _kind(dtype, name in categorical)
        if kind is None:
            if name in categorical:
                raise UsageError(f"column {name!r} has type {dtype}, which the engine cannot take as a feature "
                                 "with --categorical (string, dictionary, boolean or integer columns can be)")
            if features:
                raise InputError(f"column {name!r} has non-numeric type {dtype}, which the engine cannot take as "
                                 "a feature (numbers, strings, dictionary codes, booleans and dates are): leave it "
                                 "out of --features")
            left.append((name, f"type {dtype} is not a feature type (numbers, strings, booleans, dates)"))
            continue
        {"numeric": numeric, "date": dates, "categorical": cats}[kind].append(name)
    return ColumnPlan(tuple(numeric), tuple(dates), tuple(cats), tuple(left))


def one_hot(levels: np.ndarray, n_levels: int) -> np.ndarray:
    """The ``(n, L)`` one-hot matrix of global level indices (training only: the fit needs it)."""
    n = levels.shape[0]
    out = np.zeros((n, n_levels), dtype=np.float64)
    rows = np.arange(n)
    for q in range(levels.shape[1]):
        out[rows, levels[:, q]] = 1.0
    return out
