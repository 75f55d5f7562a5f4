"""From summed counts to frequent itemsets, the next level's candidates and the rules.

Pure NumPy on host values, run by the client between passes. An itemset is a sorted row of
item codes; :func:`keys` packs one into a ``uint64`` (16 bits per item, code + 1, so sets of
different sizes never collide), which is how counts from many blocks are summed and how a
rule finds the counts of its antecedent and consequent.

Frequent means, as mlxtend's ``fpgrowth`` decides it (so that the same data give the same
rules): ``count >= ceil(min_support * n)`` and ``count / n >= min_support``; and, whatever
``min_support`` says, ``count >= floor`` where ``floor`` is the privacy minimum of
:mod:`engine.privacy` (20 customers). Every subset of a frequent itemset holds at least as
many customers, so no rule's antecedent, consequent or union describes fewer than ``floor``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pyarrow as pa

from engine.itemsets.count import Level

MAX_ITEMS = (1 << 16) - 2   # codes + 1 fit 16 bits
MAX_LEN = 4                 # 4 x 16 bits = one uint64 key

RULE_SCHEMA = pa.schema([
    ("antecedent", pa.list_(pa.string())),
    ("consequent", pa.list_(pa.string())),
    ("support", pa.float64()),
    ("confidence", pa.float64()),
    ("lift", pa.float64()),
    ("leverage", pa.float64()),
    ("conviction", pa.float64()),
    ("customers", pa.int64()),
])


def keys(sets: np.ndarray) -> np.ndarray:
    """One ``uint64`` per itemset row (codes increasing along the row)."""
    sets = np.asarray(sets)
    out = np.zeros(sets.shape[0], dtype=np.uint64)
    for j in range(sets.shape[1]):
        out |= (sets[:, j].astype(np.uint64) + np.uint64(1)) << np.uint64(16 * j)
    return out


def add_counts(parts: Sequence[tuple[np.ndarray, np.ndarray]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum the counts of the same itemsets over blocks and partitions; rows sorted by key."""
    sets = [s for s, _ in parts if len(s)]
    if not sets:
        return np.zeros((0, size), dtype=np.int32), np.zeros(0, dtype=np.int64)
    allsets = np.concatenate(sets)
    allcounts = np.concatenate([c for s, c in parts if len(s)])
    uniq, first, inverse = np.unique(keys(allsets), return_index=True, return_inverse=True)
    summed = np.zeros(uniq.size, dtype=np.int64)
    np.add.at(summed, inverse, allcounts)
    return allsets[first], summed


def min_count(customers: int, min_support: float, floor: int) -> int:
    """The smallest count that is frequent: mlxtend's ``ceil(min_support * n)``, at least ``floor``."""
    return max(int(math.ceil(min_support * customers)), floor, 1)


def frequent_mask(counts: np.ndarray, customers: int, min_support: float, floor: int) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    return (counts >= min_count(customers, min_support, floor)) & (counts / customers >= min_support)


def next_level(frequent_sets: np.ndarray) -> Level | None:
    """Candidates of size ``L + 1`` from the frequent ``L``-itemsets (sorted rows).

    A frequent ``L``-itemset is a frequent ``(L-1)``-prefix plus its last item, so grouping
    the rows by their first ``L - 1`` codes gives each prefix's extensions; a prefix with
    fewer than two extensions has no candidate.
    """
    if len(frequent_sets) == 0:
        return None
    size = frequent_sets.shape[1]
    order = np.lexsort(frequent_sets.T[::-1])
    rows = frequent_sets[order]
    head = rows[:, : size - 1]
    cuts = np.flatnonzero(np.any(head[1:] != head[:-1], axis=1)) + 1
    prefixes, extensions = [], []
    for block in np.split(np.arange(len(rows)), cuts):
        if len(block) >= 2:
            prefixes.append(head[block[0]])
            extensions.append(rows[block, size - 1].astype(np.int32))
    if not prefixes:
        return None
    return Level(size + 1, np.asarray(prefixes, dtype=np.int32).reshape(len(prefixes), size - 1),
                 tuple(extensions))


def level_two(items: int) -> Level:
    return Level(2, np.zeros((1, 0), dtype=np.int32), (np.arange(items, dtype=np.int32),))


def make_rules(itemsets: Sequence[tuple[np.ndarray, np.ndarray]], customers: int, names: Sequence[str],
               min_confidence: float, min_lift: float) -> pa.Table:
    """Every rule ``A -> C`` (``A``, ``C`` non-empty, disjoint, ``A ∪ C`` frequent) with its metrics.

    ``itemsets``: per size (1, 2, ...) the frequent itemsets and their counts. Metrics as in
    mlxtend's ``association_rules``: support ``s(AC)``, confidence ``s(AC)/s(A)``, lift
    ``confidence/s(C)``, leverage ``s(AC) - s(A)s(C)``, conviction ``(1 - s(C))/(1 - confidence)``
    (infinite where confidence is 1). Kept where confidence >= ``min_confidence`` and lift >=
    ``min_lift``; sorted by lift, then confidence, support and the item names.
    """
    all_sets = [s for s, _ in itemsets]
    all_counts = [c for _, c in itemsets]
    k = np.concatenate([keys(s) for s in all_sets]) if all_sets else np.zeros(0, np.uint64)
    cnt = np.concatenate(all_counts) if all_counts else np.zeros(0, np.int64)
    order = np.argsort(k)
    k, cnt = k[order], cnt[order]

    def lookup(sets: np.ndarray) -> np.ndarray:
        q = keys(sets)
        pos = np.searchsorted(k, q)
        if np.any(pos >= k.size) or np.any(k[np.minimum(pos, k.size - 1)] != q):
            raise AssertionError("internal: a subset of a frequent itemset was not counted")
        return cnt[pos]

    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for sets, counts in itemsets:
        if len(sets) == 0 or sets.shape[1] < 2:
            continue
        size = sets.shape[1]
        for r in range(1, size):
            for a_idx in combinations(range(size), r):
                c_idx = [i for i in range(size) if i not in a_idx]
                a_sets, c_sets = sets[:, list(a_idx)], sets[:, c_idx]
                chunks.append((a_sets, c_sets, counts, lookup(a_sets), lookup(c_sets)))
    if not chunks:
        return RULE_SCHEMA.empty_table()
    n_ac = np.concatenate([c[2] for c in chunks]).astype(np.int64)
    n_a = np.concatenate([c[3] for c in chunks]).astype(np.int64)
    n_c = np.concatenate([c[4] for c in chunks]).astype(np.int64)
    s_ac, s_a, s_c = n_ac / customers, n_a / customers, n_c / customers
    confidence = n_ac / n_a
    lift = confidence / s_c
    leverage = s_ac - s_a * s_c
    with np.errstate(divide="ignore"):
        conviction = np.where(confidence < 1.0, (1.0 - s_c) / np.maximum(1.0 - confidence, 1e-300), np.inf)
    keep = (confidence >= min_confidence) & (lift >= min_lift)
    label = pa.array([str(n) for n in names], pa.string())
    ante = _lists([c[0] for c in chunks], keep, label)
    cons = _lists([c[1] for c in chunks], keep, label)
    # Ties in lift, confidence and support are broken by the item names (codes follow name order).
    tie_a = np.concatenate([_lexical(c[0]) for c in chunks])[keep]
    tie_c = np.concatenate([_lexical(c[1]) for c in chunks])[keep]
    order = np.lexsort((tie_c, tie_a, -s_ac[keep], -confidence[keep], -lift[keep]))
    table = pa.table({
        "antecedent": ante, "consequent": cons,
        "support": s_ac[keep], "confidence": confidence[keep], "lift": lift[keep],
        "leverage": leverage[keep], "conviction": conviction[keep], "customers": n_ac[keep],
    }, schema=RULE_SCHEMA)
    return table.take(pa.array(order))


def _lexical(sets: np.ndarray) -> np.ndarray:
    """A key that orders itemsets as their code sequences do (a prefix first)."""
    out = np.zeros(sets.shape[0], dtype=np.uint64)
    for j in range(sets.shape[1]):
        out |= (sets[:, j].astype(np.uint64) + np.uint64(1)) << np.uint64(16 * (MAX_LEN - 1 - j))
    return out


def _lists(chunks: list[np.ndarray], keep: np.ndarray, label: pa.Array) -> pa.Array:
    """``list<string>`` of the kept rows of every chunk of code rows (one width per chunk)."""
    arrays, start = [], 0
    for sets in chunks:
        rows = keep[start:start + len(sets)]
        start += len(sets)
        chosen = sets[rows]
        width = sets.shape[1]
        offsets = pa.array(np.arange(0, chosen.size + 1, width, dtype=np.int32))
        arrays.append(pa.ListArray.from_arrays(offsets, label.take(pa.array(chosen.ravel().astype(np.int64)))))
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.list_(pa.string()))
