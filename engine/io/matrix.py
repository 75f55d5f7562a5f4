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


def _column_pieces(col: pa.ChunkedArray, dtype: Any) -> list[tuple[int, np.ndarray]]:
    """(start row, values) per Arrow chunk; zero-copy where the chunk has no nulls."""
    pieces = []
    start = 0
    for chunk in col.chunks:
        m = len(chunk)
        if m == 0:
            continue
        if chunk.null_count or pa.types.is_boolean(chunk.type):
            if pa.types.is_boolean(chunk.type):
                chunk = chunk.cast(pa.uint8())
            # Nulls become NaN here, once per column, so blocks only copy.
            values = chunk.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            values = chunk.to_numpy(zero_copy_only=False)
        pieces.append((start, values))
        start += m
    return pieces


class BlockReader:
    """Yields ``(start, stop, block)`` with ``block`` an ``(rows, F)`` Fortran view of a reused buffer.

    The buffer is overwritten by the next block: consume (or copy to the device) first.
    """

    def __init__(self, table: pa.Table, features: Sequence[str], block_rows: int,
                 dtype: Any = np.float64, buffers: int = 1) -> None:
        self.n = table.num_rows
        self.dtype = np.dtype(dtype)
        self.block_rows = max(1, min(block_rows, self.n or 1))
        self.columns = [_column_pieces(table.column(name), dtype) for name in features]
        self._buffers = [np.empty((self.block_rows, len(features)), dtype=dtype, order="F")
                         for _ in range(buffers)]

    def fill(self, out: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Copy rows ``[start, stop)`` of every feature into ``out[:stop - start]``."""
        rows = stop - start
        for j, pieces in enumerate(self.columns):
            dest = out[:rows, j]
            for p_start, values in pieces:
                p_stop = p_start + values.shape[0]
                lo, hi = max(start, p_start), min(stop, p_stop)
                if lo < hi:
                    dest[lo - start:hi - start] = values[lo - p_start:hi - p_start]
        return out[:rows]

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for i, start in enumerate(range(0, self.n, self.block_rows)):
            stop = min(self.n, start + self.block_rows)
            yield start, stop, self.fill(self._buffers[i % len(self._buffers)], start, stop)
