"""Tie-break keys of customers for the budgets: who keeps an offer at its price's threshold.

When many customers share the threshold at which an offer's budget binds (identical
features give identical expected values), a price can only take all of them or none:
the budget is then left far from full. The budgets (:mod:`engine.offers.budgets`) cut
such a level instead: of the customers exactly at it, those with the smallest keys keep
the offer, as many as the budget has room for.

A key is a 64-bit hash of the customer's id and the offer's position: the same customer
gets the same key on every worker, in every file layout and every run (no salted hash,
no row numbers), and a different one per offer, so the same customers do not win every
tie. Integer (and date/time) ids are hashed from their value, strings and binary ids from
their bytes (a polynomial hash over the bytes, vectorised); other types from their text.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)   # the polynomial's base (FNV's prime)


def mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 values (wrapping arithmetic): every input bit moves every output bit."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * _M1
        h = h ^ (h >> np.uint64(27))
        h = h * _M2
        return h ^ (h >> np.uint64(31))


def _bytes_hash(arr: pa.Array) -> np.ndarray:
    """Per value, ``sum((b_k + 1) * BASE**k)`` over its bytes (mod 2**64), mixed with its length."""
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lo, hi = int(offsets[0]), int(offsets[-1])
    body = data[lo:hi].astype(np.uint64) + np.uint64(1)
    lengths = np.diff(offsets)
    # Each byte's position within its own value, and BASE to that power (wrapping).
    pos = np.arange(hi - lo, dtype=np.int64) - np.repeat(offsets[:-1] - lo, lengths)
    longest = int(lengths.max()) if n else 0
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.concatenate([[np.uint64(1)], np.full(max(longest - 1, 0), _BASE)]))
        terms = body * powers[pos] if body.size else body
        sums = np.concatenate([[np.uint64(0)], np.cumsum(terms, dtype=np.uint64)])
        h = sums[offsets[1:] - lo] - sums[offsets[:-1] - lo]
    return mix(h ^ mix(lengths.astype(np.uint64)))


def _id_hash(ids: pa.Array) -> np.ndarray:
    dtype = ids.type
    if pa.types.is_dictionary(dtype):
        return _id_hash(ids.dictionary_decode())
    if pa.types.is_temporal(dtype):   # dates and times by their stored integers
        ids = ids.view(pa.int32() if dtype.bit_width == 32 else pa.int64())
        dtype = ids.type
    if pa.types.is_integer(dtype) or pa.types.is_boolean(dtype):
        values = ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return mix(values.view(np.uint64) + _GOLDEN)
    if not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_binary(dtype)
            or pa.types.is_large_binary(dtype) or pa.types.is_fixed_size_binary(dtype)):
        ids = ids.cast(pa.string())   # decimals, floats: their text
    return _bytes_hash(ids)


def customer_keys(ids: Any, offer: int) -> np.ndarray:
    """uint64 tie-break keys of ``ids`` (a pyarrow Array or ChunkedArray without nulls) for offer ``offer``."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if len(ids) == 0:
        return np.zeros(0, np.uint64)
    salt = mix(np.array([offer + 1], dtype=np.uint64) * _GOLDEN)[0]
    return mix(_id_hash(ids) ^ salt)
