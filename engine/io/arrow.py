"""Low-level Arrow helpers that modules on both sides of ``engine/io`` and ``engine/models`` need.

Kept below both (this module imports nothing of the engine), so that arrows point one way:
``io/validate`` asks which types can be categorical or dates without importing
``models/categorical``, and ``models/categorical`` builds string arrays without
borrowing from ``models/reasons`` (issue 23: the five-module import circle).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["can_be_categorical", "codes_array", "is_categorical_type", "is_date_type", "string_array"]


def is_categorical_type(dtype: pa.DataType) -> bool:
    """String, large string, dictionary-encoded and boolean columns are categorical by default."""
    return (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_dictionary(dtype)
            or pa.types.is_boolean(dtype) or getattr(pa.types, "is_string_view", lambda _t: False)(dtype))


def is_date_type(dtype: pa.DataType) -> bool:
    return pa.types.is_date(dtype) or pa.types.is_timestamp(dtype)


def can_be_categorical(dtype: pa.DataType) -> bool:
    """Types ``--categorical`` accepts: the default categorical ones and integer codes."""
    return is_categorical_type(dtype) or pa.types.is_integer(dtype)


def string_array(values: Iterable[Any]) -> Any:
    """A pyarrow string array built from buffers: ``pa.array`` of a Python list imports pandas
    (0.2-0.4 s), which a scoring process otherwise never loads."""
    encoded = [str(v).encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def codes_array(codes: Any) -> Any:
    """int32 dictionary codes as a pyarrow array, a negative code null: built from buffers
    (``pa.array(..., mask=...)`` imports pandas and takes a per-element path)."""
    idx = np.ascontiguousarray(codes, dtype=np.int32)
    missing = idx < 0
    nulls = int(missing.sum())
    bitmap = pa.py_buffer(np.packbits(~missing, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(pa.int32(), idx.size, [bitmap, pa.py_buffer(idx)], null_count=nulls)


def categorical_family(dtype: pa.DataType | str) -> str:
    """``text``, ``boolean``, ``integer`` or ``other``: the kinds of value a categorical level is read from.

    Within one family a column may change its storage (string to dictionary<string>, int32
    to int64) and keep its levels; across families the same values print differently
    (``True`` vs ``1``, ``"408"`` vs ``408``) or not at all, so every row would fall into
    ``(other)``: a schema change, not drift.
    """
    text = str(dtype)
    if isinstance(dtype, pa.DataType) and pa.types.is_dictionary(dtype):
        return categorical_family(dtype.value_type)
    if text.startswith("dictionary<values="):
        return categorical_family(text[len("dictionary<values="):].split(",", 1)[0])
    if text in ("string", "large_string", "utf8", "large_utf8", "string_view", "binary", "large_binary"):
        return "text"
    if text in ("bool", "boolean"):
        return "boolean"
    if text.startswith(("int", "uint")):
        return "integer"
    return "other"
