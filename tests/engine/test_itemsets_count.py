"""The counting arithmetic of ``engine rules``: dense (``xp`` matrix products) and sparse (SciPy)
counts of every level equal a brute-force count, and CuPy's dense counts equal NumPy's."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from engine.itemsets.count import count_dense, count_sparse
from engine.itemsets.mine import add_counts, keys, level_two, next_level


def _brute(x: np.ndarray, size: int) -> dict[tuple[int, ...], int]:
    out = {}
    for combo in combinations(range(x.shape[1]), size):
        n = int(np.all(x[:, list(combo)], axis=1).sum())
        if n:
            out[combo] = n
    return out


def _as_dict(sets: np.ndarray, counts: np.ndarray) -> dict[tuple[int, ...], int]:
    return {tuple(int(v) for v in s): int(c) for s, c in zip(sets, counts)}


@pytest.fixture(scope="module")
def block() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.random((700, 9)) < rng.uniform(0.1, 0.6, 9)


def _levels(block: np.ndarray) -> list:
    """Level 2, then each next level built from every itemset that occurs at all."""
    levels, level = [], level_two(block.shape[1])
    while level is not None and level.size <= 4:
        levels.append(level)
        sets, counts = count_dense(block.astype(np.float32), level, xp=np)
        level = next_level(sets[counts > 0])
    return levels


def test_dense_and_sparse_counts_equal_brute_force_at_every_level(block: np.ndarray) -> None:
    import scipy.sparse as sp

    levels = _levels(block)
    assert [lv.size for lv in levels] == [2, 3, 4]
    for level in levels:
        dense = _as_dict(*count_dense(block.astype(np.float32), level, xp=np))
        sparse = _as_dict(*count_sparse(sp.csr_matrix(block), level))
        assert dense == sparse == _brute(block, level.size), level.size


def test_blocks_add_up(block: np.ndarray) -> None:
    level = _levels(block)[1]
    parts = [count_dense(block[i:i + 100].astype(np.float32), level, xp=np) for i in range(0, len(block), 100)]
    assert _as_dict(*add_counts(parts, level.size)) == _brute(block, 3)
    # keys are unique per itemset whatever its size
    sets = np.array([[0, 1, 2], [0, 1, 3]], dtype=np.int32)
    assert len(set(keys(sets).tolist()) | set(keys(sets[:, :2]).tolist())) == 3


def _device_cases(block: np.ndarray) -> list[tuple[int, np.ndarray, object, dict[tuple[int, ...], int]]]:
    """What the device comparison feeds CuPy and what it must get back: each level, the float32
    block and NumPy's dense counts. Built (and checked below) on every machine; only the device
    call needs a GPU."""
    x = np.ascontiguousarray(block.astype(np.float32))
    return [(level.size, x, level, _as_dict(*count_dense(x, level, xp=np))) for level in _levels(block)]


def test_device_comparison_inputs_and_numpy_answers(block: np.ndarray) -> None:
    """The inputs and expected answers of the CuPy test, on CI: three levels, float32 0/1 blocks
    whose products stay exact, NumPy's answers equal to the brute-force count."""
    from engine.itemsets.count import MAX_DENSE_ROWS, dense_is_cheaper

    cases = _device_cases(block)
    assert [size for size, *_ in cases] == [2, 3, 4]
    for size, x, _level, want in cases:
        assert x.dtype == np.float32 and x.shape[0] <= MAX_DENSE_ROWS and set(np.unique(x)) <= {0.0, 1.0}
        assert want == _brute(block, size) and want
    # The CPU picks sparse for a wide, thin block; only CuPy always counts densely.
    assert not dense_is_cheaper(100_000, 2_000, 1_000_000, np)


@pytest.mark.gpu
def test_cupy_dense_counts_equal_numpy(block: np.ndarray) -> None:
    import cupy

    from engine.itemsets.count import dense_is_cheaper

    assert dense_is_cheaper(100_000, 2_000, 1_000_000, cupy)
    for size, x, level, want in _device_cases(block):
        got = _as_dict(*count_dense(cupy.asarray(x), level, xp=cupy))
        assert got == want, size
