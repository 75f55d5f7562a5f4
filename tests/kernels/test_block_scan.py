"""kernels/block_scan: the compiled one-pass scan equals its NumPy twin exactly (and a per-value reference)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.block_scan import scan_block, scan_block_numpy

MAX_ABS = 1e15


def block(rows: int, F: int, seed: int) -> np.ndarray:
    """A Fortran buffer with NaN, ±inf, values just beyond and just within the bound, and clean rows."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, F)) * 10.0
    X[rng.random(X.shape) < 0.08] = np.nan
    X[rng.random(X.shape) < 0.01] = np.inf
    X[rng.random(X.shape) < 0.01] = -np.inf
    X[rng.random(X.shape) < 0.01] = -2.0 * MAX_ABS
    X[rng.random(X.shape) < 0.01] = np.nextafter(MAX_ABS, np.inf)
    X[rng.random(X.shape) < 0.01] = MAX_ABS          # on the bound: in range
    return np.asfortranarray(X)


def reference(X: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per value, as the definition says: NaN per column; each row's first column with |x| > MAX_ABS."""
    nulls = np.zeros(X.shape[1], np.int64)
    first = np.full(rows, -1, np.int32)
    for r in range(rows):
        for f in range(X.shape[1]):
            v = X[r, f]
            nulls[f] += bool(np.isnan(v))
            if first[r] < 0 and not np.isnan(v) and abs(v) > MAX_ABS:
                first[r] = f
    return nulls, first


@pytest.mark.parametrize(("rows", "F", "seed"), [(700, 7, 0), (513, 20, 1), (0, 3, 2), (1, 1, 3)])
def test_compiled_scan_equals_twin_and_reference(rows: int, F: int, seed: int) -> None:
    X = block(rows + 37, F, seed)        # a longer buffer: only the first `rows` rows count
    X[rows:] = np.inf                    # rows past `rows` must not be looked at
    want_nulls, want_first = reference(X, rows)
    got = {}
    for name, scan in (("twin", scan_block_numpy), ("compiled", scan_block)):
        nulls = np.full(F, 5, np.int64)  # added to, not overwritten
        first = np.full(rows + 37, 99, np.int32)
        hits = scan(X, rows, MAX_ABS, nulls, first)
        np.testing.assert_array_equal(nulls - 5, want_nulls, err_msg=name)
        np.testing.assert_array_equal(first[:rows], want_first, err_msg=name)
        assert hits == int((want_first >= 0).sum()), name
        assert (first[rows:] == 99).all(), name   # nothing written past the block
        got[name] = (nulls, first)
    if rows > 100:
        assert 0 < (want_first >= 0).mean() < 1 and want_nulls.sum() > 0   # the data exercise both


def test_compiled_scan_checks_its_buffers() -> None:
    X = block(10, 3, 0)
    with pytest.raises(ValueError, match="Fortran"):
        scan_block(np.ascontiguousarray(X), 10, MAX_ABS, np.zeros(3, np.int64), np.empty(10, np.int32))
    with pytest.raises(ValueError, match="nulls"):
        scan_block(X, 10, MAX_ABS, np.zeros(2, np.int64), np.empty(10, np.int32))
    with pytest.raises(ValueError, match="first"):
        scan_block(X, 10, MAX_ABS, np.zeros(3, np.int64), np.empty(9, np.int32))
