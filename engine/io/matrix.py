"""Arrow feature columns to small dense blocks, for cache-resident scoring.

Scoring a row costs a few dozen flops, so the time goes into memory passes. Rather
than building one ``(n, F)`` matrix and running a dozen full passes over it, the
columns are copied block by block (a few thousand rows) into one reused buffer that
stays in the CPU cache while every step of the scorer runs over it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


def _bits(buffer: pa.Buffer, offset: int, length: int) -> np.ndarray:
    """An Arrow bitmap (validity or boolean values) as a NumPy bool array."""
    packed = np.frombuffer(buffer, dtype=np.uint8)
    return np.unpackbits(packed, bitorder="little", count=offset + length)[offset:].astype(bool)


def chunk_values(chunk: pa.Array) -> np.ndarray:
    """A numeric or boolean Arrow chunk as NumPy values, nulls as NaN.

    Read straight from the Arrow buffers with NumPy: no Arrow compute kernel and no
    pyarrow-to-NumPy conversion layer (which may import pandas on first use).
    """
    piece = _piece(0, chunk)
    if piece.nulls is None:
        return piece.values
    values = piece.values.astype(np.float64)  # a copy: the view's null slots hold junk
    values[piece.nulls] = np.nan
    return values


@dataclass(frozen=True)
class _Piece:
    """One Arrow chunk of a column: its first row, its values, and the rows that are null.

    ``values`` is a zero-copy view of the Arrow buffer (the raw slot of a null row holds
    junk) unless the chunk is boolean; ``nulls`` lists the chunk's null rows, which
    :meth:`BlockReader.fill` sets to NaN in each block. Converting the whole chunk to
    float64 with NaN up front would copy every value of every column with nulls once
    more per batch (a second copy of the decoded batch in memory).
    """

    start: int
    values: np.ndarray
    nulls: np.ndarray | None


def _piece(start: int, chunk: pa.Array) -> _Piece:
    n, offset = len(chunk), chunk.offset
    if pa.types.is_null(chunk.type):
        # A column of Arrow type null (pandas writes an all-None column so): every value
        # missing, imputed and counted like any other null. It has no value buffer.
        return _Piece(start, np.full(n, np.nan), None)
    validity, data = chunk.buffers()[:2]
    if pa.types.is_boolean(chunk.type):
        values = _bits(data, offset, n).astype(np.float64)
    else:
        # A zero-copy view of the values (pyarrow's own to_numpy can import pandas, 0.3 s).
        values = np.frombuffer(data, dtype=np.dtype(chunk.type.to_pandas_dtype()), count=offset + n)[offset:]
    nulls = np.flatnonzero(~_bits(validity, offset, n)) if chunk.null_count else None
    return _Piece(start, values, nulls)


def _column_pieces(col: pa.ChunkedArray) -> list[_Piece]:
    """One :class:`_Piece` per non-empty Arrow chunk, zero-copy where it can be."""
    pieces = []
    start = 0
    for chunk in col.chunks:
        if len(chunk):
            pieces.append(_piece(start, chunk))
            start += len(chunk)
    return pieces


def block_view(flat: Any, rows: int, n_features: int) -> Any:
    """The first ``rows * F`` elements of a flat buffer as a contiguous ``(rows, F)`` Fortran array.

    A short last block is then still one contiguous piece of memory, which a host-to-device
    copy needs (a row slice of a full-size Fortran buffer would not be).
    """
    return flat[: rows * n_features].reshape((rows, n_features), order="F")


class BlockReader:
    """Yields ``(start, stop, block)`` with ``block`` an ``(rows, F)`` Fortran view of a reused buffer.

    The buffer is overwritten by the next block: consume (or copy to the device) first.
    """

    def __init__(self, table: pa.Table, features: Sequence[str], block_rows: int,
                 dtype: Any = np.float64) -> None:
        self.n = table.num_rows
        self.dtype = np.dtype(dtype)
        self.block_rows = max(1, min(block_rows, self.n or 1))
        self.n_features = len(features)
        self.columns = [_column_pieces(table.column(name)) for name in features]

    def bounds(self) -> list[tuple[int, int]]:
        return [(s, min(self.n, s + self.block_rows)) for s in range(0, self.n, self.block_rows)]

    def fill(self, out: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Copy rows ``[start, stop)`` of every feature into ``out`` (shape ``(stop - start, F)``)."""
        for j, pieces in enumerate(self.columns):
            dest = out[:, j]
            for piece in pieces:
                p_start = piece.start
                lo, hi = max(start, p_start), min(stop, p_start + piece.values.shape[0])
                if lo >= hi:
                    continue
                dest[lo - start:hi - start] = piece.values[lo - p_start:hi - p_start]
                if piece.nulls is not None:
                    a, b = np.searchsorted(piece.nulls, [lo - p_start, hi - p_start])
                    if b > a:
                        dest[piece.nulls[a:b] + (p_start - start)] = np.nan
        return out

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        flat = np.empty(self.block_rows * self.n_features, dtype=self.dtype)
        for start, stop in self.bounds():
            yield start, stop, self.fill(block_view(flat, stop - start, self.n_features), start, stop)


class HostBlocks:
    """The stage-less loop's host buffers (room for a Fortran ``(rows, F)`` block, and per-row
    flags), kept by a caller across :func:`engine.jobs.blocks.score_table` calls on tables of
    the same features, so that each batch does not fault in fresh pages for them
    (``engine recommend``'s tasks). Blocks are cut from the flat buffer by :func:`block_view`:
    Fortran-contiguous whatever their length (a short block is no strided view of a longer one)."""

    def __init__(self) -> None:
        self.flat: np.ndarray | None = None
        self.first: np.ndarray | None = None

    def get(self, rows: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """A flat float64 buffer of at least ``rows * n_features`` values, and an int32 vector of
        at least ``rows`` (their contents are whatever the last call left)."""
        if self.flat is None or self.first is None or self.flat.size < rows * n_features or self.first.size < rows:
            self.flat = np.empty(max(rows * n_features, 1))
            self.first = np.empty(max(rows, 1), dtype=np.int32)
        return self.flat, self.first


def valid_mask(chunk: pa.Array) -> np.ndarray:
    """A chunk's validity as booleans, read from its bitmap (True where the value is present)."""
    validity = chunk.buffers()[0]
    if validity is None or not chunk.null_count:
        return np.ones(len(chunk), dtype=bool)
    return _bits(validity, chunk.offset, len(chunk))


def true_rows(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow column as a NumPy bool array, null counted as false, read from its bitmaps
    (``fill_null``/``to_numpy`` would import pandas)."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 0:
            return np.zeros(0, dtype=bool)
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=bool)
    out = _bits(values.buffers()[1], values.offset, n)
    return out & valid_mask(values) if values.null_count else out


def to_arrow(values: np.ndarray, dtype: pa.DataType | None = None) -> pa.Array:
    """A 1-D NumPy array as an Arrow array without nulls: zero-copy for numbers, bit-packed for booleans.

    ``pyarrow.array`` would do the same, but it first asks pandas whether the object is
    one of its own, which imports pandas (0.3-0.4 s of a process's start, holding the
    import lock) in a run that otherwise never needs it.
    """
    values = np.ascontiguousarray(values)
    n = values.shape[0]
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(bits)])
    arrow_type = dtype if dtype is not None else pa.from_numpy_dtype(values.dtype)
    if np.dtype(arrow_type.to_pandas_dtype()) != values.dtype:
        values = values.astype(arrow_type.to_pandas_dtype())
    return pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(values)])
