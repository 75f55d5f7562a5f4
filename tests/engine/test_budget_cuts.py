"""Budgets' cuts at a tie: tie-break keys of customer ids, the cut applied to kernel results, pairs' order.

End to end (ties at every threshold, budgets filled to the customer, HiGHS's optimum) in
tests/engine/test_recommend.py; here the pieces, on hand-made cases.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from engine.offers.budgets import WITHDRAWN, Cuts, apply_cuts, held, merge_pairs, shown_price
from engine.offers.tiebreak import customer_keys


@pytest.mark.parametrize("ids", [
    pa.array([f"cust-{i}" for i in range(1000)]),
    pa.array(np.arange(10**12, 10**12 + 1000)),
])
def test_keys_depend_on_the_id_and_offer_alone(ids: pa.Array) -> None:
    keys = customer_keys(ids, 3)
    assert keys.dtype == np.uint64 and np.unique(keys).size == 1000
    # The same ids in chunks, sliced, dictionary-encoded or as large strings: the same keys.
    assert (customer_keys(pa.chunked_array([ids[:300], ids[300:]]), 3) == keys).all()
    assert (customer_keys(ids.slice(250), 3) == keys[250:]).all()
    assert (customer_keys(ids.take(pa.array([5, 5, 7])), 3) == keys[[5, 5, 7]]).all()
    assert (customer_keys(ids.dictionary_encode(), 3) == keys).all()
    if pa.types.is_string(ids.type):
        assert (customer_keys(ids.cast(pa.large_string()), 3) == keys).all()
    # Another offer orders the same customers differently; every bit of the key is used.
    other = customer_keys(ids, 4)
    assert abs(np.corrcoef(np.argsort(keys), np.argsort(other))[0, 1]) < 0.1
    bits = ((keys[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)
    assert ((bits > 0.4) & (bits < 0.6)).all()


def test_keys_of_strings_see_every_byte_and_the_length() -> None:
    keys = customer_keys(pa.array(["ab", "ba", "a", "a\x00", "", "abc"]), 0)
    assert np.unique(keys).size == 6


def test_a_cut_keeps_the_rows_above_it_and_the_smallest_keys_at_it() -> None:
    """Offer 1 held in slot 0 or 1 by 6 rows (top 2, 4 slots); its cut: level 5.0, key of row 3."""
    ids = pa.array([f"c{i}" for i in range(7)])
    keys = customer_keys(ids, 1)
    # Rows 0..5 hold offer 1; its threshold t = EV - (third score): row 0 above the level,
    # rows 1..4 exactly at it, row 5 below it. Row 6 does not hold it.
    idx = np.array([[1, 0, 2, 3], [1, 2, 0, -1], [0, 1, 2, 3], [1, 2, 3, 0], [2, 1, 0, -1], [1, 0, 2, -1],
                    [0, 2, 3, -1]], np.int32)
    ev = np.array([[9.0, 4, 3, 1], [8, 4, 3, 0], [7, 6, 1, 0], [5.5, 4, 0.5, 0], [9, 7, 2, 0], [6.5, 4, 3, 0],
                   [5, 4, 3, 0]])
    lam = np.zeros(4)
    t = held(idx, ev, lam, 2, 1)
    assert t.rows.tolist() == [0, 1, 2, 3, 4, 5] and t.t.tolist() == [6.0, 5.0, 5.0, 5.0, 5.0, 3.5]
    tied = np.array([1, 2, 3, 4])
    cut_key = int(np.sort(keys[tied])[2])   # the third smallest key at the level: two rows keep it
    p = ev.astype(np.float32)
    why = np.arange(28, dtype=np.int32).reshape(7, 4)
    before = [a.copy() for a in (idx, p, ev, why)]
    apply_cuts(Cuts({1: 5.0}, {1: cut_key}), ids, (idx, p, ev, why), lam, 2)
    keeps = {r for r in tied if keys[r] < np.uint64(cut_key)}
    assert len(keeps) == 2
    for r in range(7):
        dropped = r == 5 or (r in tied and r not in keeps)
        if not dropped:
            assert (idx[r] == before[0][r]).all() and (why[r] == before[3][r]).all()
            continue
        s = int(np.flatnonzero(before[0][r] == 1)[0])
        # Its later slots moved up one; the last one is empty.
        for a, b, empty in zip((idx, p, ev, why), before, (-1, 0.0, 0.0, -1)):
            assert (a[r, :s] == b[r, :s]).all() and (a[r, s:3] == b[r, s + 1:]).all() and a[r, 3] == empty
    assert (idx[:, :2] == 1).sum() == 1 + 2


def test_pairs_order_larger_thresholds_then_smaller_keys() -> None:
    t, keys = merge_pairs([(np.array([1.0, 3.0, 2.0]), np.array([9, 8, 7], np.uint64)),
                           (np.array([3.0, 2.0]), np.array([5, 6], np.uint64))], budget=3)
    assert t.tolist() == [3.0, 3.0, 2.0, 2.0] and keys.tolist() == [5, 8, 6, 7]


def test_a_shown_price_is_never_one_customers_threshold() -> None:
    rng = np.random.default_rng(0)
    t = rng.exponential(size=45)
    price = shown_price(0.7, t, 20)
    assert price == pytest.approx(np.sort(t)[:20].mean()) and price not in set(t.tolist())
    assert shown_price(0.7, t[:39], 20) is None                  # fewer than 2 x 20 customers: not shown
    assert shown_price(0.0, t[:3], 20) == 0.0                    # no price is no customer's value
    assert shown_price(WITHDRAWN, t, 20) is None
