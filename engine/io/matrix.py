"""Arrow feature columns to small dense blocks, for cache-resident scoring.

Scoring a row costs a few dozen flops, so the time goes into memory passes. Rather
than building one ``(n, F)`` matrix and running a dozen full passes over it, the
columns are copied block by block (a few thousand rows) into one reused buffer that
stays in the CPU cache while every step of the scorer runs over it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    n, offset = len(chunk), chunk.offset
    validity, data = chunk.buffers()[:2]
    if pa.types.is_boolean(chunk.type):
        values = _bits(data, offset, n).astype(np.float64)
    else:
        # A zero-copy view of the values (pyarrow's own to_numpy can import pandas, 0.3 s).
        view = np.frombuffer(data, dtype=np.dtype(chunk.type.to_pandas_dtype()), count=offset + n)[offset:]
        if not chunk.null_count:
            return view
        values = view.astype(np.float64)
    if chunk.null_count:
        values[~_bits(validity, offset, n)] = np.nan
    return values


def _column_pieces(col: pa.ChunkedArray) -> list[tuple[int, np.ndarray]]:
    """(start row, values) per Arrow chunk; zero-copy where the chunk has no nulls."""
    pieces = []
    start = 0
    for chunk in col.chunks:
        if len(chunk):
            pieces.append((start, chunk_values(chunk)))
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
            for p_start, values in pieces:
                p_stop = p_start + values.shape[0]
                lo, hi = max(start, p_start), min(stop, p_stop)
                if lo < hi:
                    dest[lo - start:hi - start] = values[lo - p_start:hi - p_start]
        return out

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        flat = np.empty(self.block_rows * self.n_features, dtype=self.dtype)
        for start, stop in self.bounds():
            yield start, stop, self.fill(block_view(flat, stop - start, self.n_features), start, stop)
