"""The fused top-N offers kernel: compiled CPU kernel = NumPy twin (= CUDA kernel where a GPU is lent)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.topn_offers import topn_offers
from kernels.topn_offers_cpu import topn_offers_cpu


def _case(seed: int, n: int = 3_000, F: int = 6, T: int = 37, L: int = 7, Q: int = 2, budgets: bool = True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F))
    W = rng.normal(size=(F, T)) * 0.4
    bias = rng.normal(size=T) - 1.0
    levels = rng.integers(0, L, size=(n, Q)).astype(np.int32)
    catW = rng.normal(size=(L, T)) * 0.3
    value = rng.uniform(1, 100, T)
    cost = rng.uniform(0, 5, T)
    lam = np.where(rng.random(T) < 0.3, rng.uniform(0, 10, T), 0.0) if budgets else np.zeros(T)
    allowed = (rng.random((n, T)) < 0.6).astype(np.uint8)
    return X, levels, W, bias, catW, value, cost, lam, allowed


def _brute(X, levels, W, bias, catW, value, cost, lam, allowed, min_ev, keep):
    """Row by row, in plain Python order: the contract, independent of both twins."""
    n, T = X.shape[0], W.shape[1]
    out = []
    for i in range(n):
        logit = X[i] @ W + bias + catW[levels[i]].sum(axis=0)
        p = 1 / (1 + np.exp(-logit))
        ev = p * value - cost
        cands = [(ev[t] - lam[t], -t, t) for t in range(T)
                 if allowed[i, t] and ev[t] >= min_ev and (lam[t] == 0 or ev[t] - lam[t] > 0)]
        cands.sort(reverse=True)
        out.append([t for _, _, t in cands[:keep]])
    return out


def _assert_twin_contract(got, want) -> None:  # noqa: ANN001
    """The compiled kernel's contract with the twin: the same offers and reasons, EV to 1e-12."""
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("keep", [1, 5, 26])
def test_cpu_kernel_equals_twin(keep: int) -> None:
    args = _case(keep)
    mean = np.linspace(-0.2, 0.2, args[0].shape[1])
    idx_t, p_t, ev_t, why_t = topn_offers(*args, 0.0, keep, mean)
    idx_c, p_c, ev_c, why_c = topn_offers_cpu(*args, 0.0, keep, mean)
    _assert_twin_contract((idx_c, p_c, ev_c, why_c), (idx_t, p_t, ev_t, why_t))   # random scores: no near-ties
    assert ((why_t >= 0) == (idx_t >= 0)).mean() > 0.9 and (why_t[idx_t < 0] == -1).all()
    np.testing.assert_allclose(p_c, p_t, rtol=1e-6)
    assert (p_t[idx_t < 0] == 0).all() and (ev_t[idx_t < 0] == 0).all()
    # filled slots come first and are in descending score order
    lam = args[7]
    filled = idx_t >= 0
    assert not (~filled[:, :-1] & filled[:, 1:]).any()
    score = ev_t - lam[np.maximum(idx_t, 0)]
    both = filled[:, 1:] & filled[:, :-1]
    assert (np.diff(score, axis=1)[both] <= 1e-12).all()


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_raw_features_are_imputed_inside_in_any_layout(layout: str) -> None:
    """The kernel reads the block loop's own matrix (Fortran order, or a row slice of it) with NaN
    and ±inf as read, and imputes with ``fill`` itself: the same as imputing first (twin, kernel)."""
    X, levels, W, bias, catW, value, cost, lam, allowed = _case(11, n=2_001, T=40)
    rng = np.random.default_rng(4)
    raw = X.copy()
    raw[rng.random(raw.shape) < 0.05] = np.nan
    raw[rng.random(raw.shape) < 0.01] = np.inf
    raw[rng.random(raw.shape) < 0.01] = -np.inf
    fill = rng.normal(size=X.shape[1])
    imputed = np.where(np.isfinite(raw), raw, fill[None, :])
    if layout == "F":
        raw = np.asfortranarray(raw)
    elif layout == "strided":
        raw = np.asfortranarray(np.vstack([raw, raw[:7]]))[:-7]   # (n, F) view of a taller F matrix
        assert not raw.flags.c_contiguous and not raw.flags.f_contiguous
    mean = np.linspace(-0.3, 0.3, X.shape[1])
    catbase = catW.mean(axis=0)[None, :].repeat(levels.shape[1], axis=0)
    want = topn_offers(imputed, levels, W, bias, catW, value, cost, lam, allowed, 0.0, 5, mean, catbase)
    twin = topn_offers(raw, levels, W, bias, catW, value, cost, lam, allowed, 0.0, 5, mean, catbase, fill=fill)
    got = topn_offers_cpu(raw, levels, W, bias, catW, value, cost, lam, allowed, 0.0, 5, mean, catbase=catbase,
                          fill=fill)
    pre = topn_offers_cpu(imputed, levels, W, bias, catW, value, cost, lam, allowed, 0.0, 5, mean, catbase=catbase)
    for a, b in zip(twin, want):
        np.testing.assert_array_equal(a, b)
    _assert_twin_contract(got, want)
    for a, b in zip(got, pre):            # imputing inside = imputing first, bit for bit
        np.testing.assert_array_equal(a, b)
    assert raw.shape == X.shape and np.isnan(raw).any()   # the caller's matrix is left as it was


def test_no_mask_means_every_offer_allowed() -> None:
    X, levels, W, bias, catW, value, cost, lam, _ = _case(12, n=1_500, T=64)
    ones = np.ones((X.shape[0], W.shape[1]), np.uint8)
    for run in (topn_offers, topn_offers_cpu):
        a = run(X, levels, W, bias, catW, value, cost, lam, None, 0.0, 5)
        b = run(X, levels, W, bias, catW, value, cost, lam, ones, 0.0, 5)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="allowed must be"):
        topn_offers_cpu(X, levels, W, bias, catW, value, cost, lam, ones[:-1], 0.0, 5)


def test_results_written_into_given_rows() -> None:
    """``out=``: the kernel writes into a caller's (n, keep) rows (a block's slice of a batch's
    arrays) the very values it would return; anything the kernel could not write safely is refused."""
    X, levels, W, bias, catW, value, cost, lam, allowed = _case(13, n=700, T=40)
    args = (X, levels, W, bias, catW, value, cost, lam, allowed, 0.0, 5)
    want = topn_offers_cpu(*args)
    batch = [np.full((900, 5), -7, dtype=d) for d in (np.int32, np.float32, np.float64, np.int32)]
    rows = tuple(a[100:800] for a in batch)
    got = topn_offers_cpu(*args, out=rows)
    for a, b, whole in zip(got, want, batch):
        np.testing.assert_array_equal(a, b)
        assert (whole[:100] == -7).all() and (whole[800:] == -7).all()   # nothing outside the rows
    with pytest.raises(ValueError, match="out must be"):
        topn_offers_cpu(*args, out=(rows[0], rows[1], rows[2].astype(np.float32), rows[3]))
    with pytest.raises(ValueError, match="out must be"):
        topn_offers_cpu(*args, out=tuple(np.empty((5, 700), a.dtype).T for a in rows))


def test_twin_equals_the_contract_row_by_row() -> None:
    args = _case(3, n=300, T=12)
    idx, _, _, _ = topn_offers(*args, 1.5, 4)
    want = _brute(*args, 1.5, 4)
    for i in range(idx.shape[0]):
        assert [t for t in idx[i] if t >= 0] == want[i]


def test_ties_go_to_the_earlier_offer_and_masks_hold() -> None:
    n, F, T = 50, 3, 6
    X = np.zeros((n, F))
    W = np.zeros((F, T))
    bias = np.zeros(T)                      # every p = 0.5
    value = np.full(T, 10.0)                # every EV = 5: all tied
    allowed = np.ones((n, T), np.uint8)
    allowed[:, 1] = 0                       # offer 1 never allowed
    for run in (topn_offers, topn_offers_cpu):
        idx, p, ev, why = run(X, None, W, bias, None, value, np.zeros(T), np.zeros(T), allowed, 0.0, 3)
        assert (idx == np.array([0, 2, 3])).all()
        assert np.allclose(p, 0.5) and np.allclose(ev, 5.0)
        assert (why == -1).all()                # zero weights: no feature raises any offer
        # min_ev above every EV: nothing recommended
        idx, _, _, _ = run(X, None, W, bias, None, value, np.zeros(T), np.zeros(T), allowed, 6.0, 3)
        assert (idx == -1).all()
        # a price above EV removes the priced offer only
        idx, _, _, _ = run(X, None, W, bias, None, value, np.zeros(T), np.array([9.0, 0, 0, 0, 0, 0]), allowed,
                           0.0, 3)
        assert (idx == np.array([2, 3, 4])).all()


def _reasons_brute(X, levels, W, catW, catbase, mean, idx):
    """Reason codes one chosen slot at a time, in plain Python: candidates in order, strictly larger wins."""
    F, Q = X.shape[1], levels.shape[1]
    out = np.full(idx.shape, -1)
    for i, j in zip(*np.nonzero(idx >= 0)):
        t, best, code = idx[i, j], 0.0, -1
        for f in range(F):
            d = X[i, f] - mean[f]
            if d * W[f, t] > best:
                best, code = d * W[f, t], 2 * f + (1 if d <= 0 else 0)
        for q in range(Q):
            level = levels[i, q]
            if catW[level, t] - catbase[q, t] > best:
                best, code = catW[level, t] - catbase[q, t], 2 * F + level
        out[i, j] = code
    return out


@pytest.mark.parametrize("T", [37, 512])
def test_categorical_levels_are_reasons_equal_in_both_kernels(T: int) -> None:
    """Each categorical column's level term against its reference is a reason candidate (``2 F + level``).

    Both run the pruned path (T >= 32). Levels are global indices (column q's levels after column
    q-1's), as the engine passes them; a reference per (column, offer) as ``catbase``.
    """
    n, F, Q, per = 2_000, 5, 3, 4
    args = list(_case(40 + T, n=n, F=F, T=T, L=Q * per, Q=Q))
    rng = np.random.default_rng(T)
    levels = (rng.integers(0, per, size=(n, Q)) + per * np.arange(Q)).astype(np.int32)
    catW = rng.normal(size=(Q * per, T)) * 0.8           # large enough that levels often win
    catbase = np.vstack([catW[q * per:(q + 1) * per].mean(axis=0) for q in range(Q)])
    args[1], args[4] = levels, catW
    mean = np.linspace(-0.2, 0.2, F)
    stats = np.zeros(4, np.int64)
    idx_t, p_t, ev_t, why_t = topn_offers(*args, 0.0, 5, mean, catbase)
    idx_c, p_c, ev_c, why_c = topn_offers_cpu(*args, 0.0, 5, mean, stats=stats, catbase=catbase)
    _assert_twin_contract((idx_c, None, ev_c, why_c), (idx_t, None, ev_t, why_t))
    assert stats[0] > n // 2                              # the pruned path: cut-offs in use
    np.testing.assert_array_equal(why_t, _reasons_brute(args[0], levels, args[2], catW, catbase, mean, idx_t))
    chosen = idx_t >= 0
    level_won = why_t[chosen] >= 2 * F
    assert 0.2 < level_won.mean() < 0.9                  # levels and numeric features both win often
    won = why_t[chosen][level_won] - 2 * F
    assert set(np.unique(won // per)) == set(range(Q))   # every column's levels win somewhere
    # The reference matters: the same levels measured from 0 give other reasons; with no reference
    # the columns are no candidates (their logit terms still count: same offers).
    _, _, _, why_0 = topn_offers_cpu(*args, 0.0, 5, mean, catbase=np.zeros_like(catbase))
    assert (why_0 != why_c).any()
    idx_n, _, ev_n, why_n = topn_offers_cpu(*args, 0.0, 5, mean)
    np.testing.assert_array_equal(idx_n, idx_c)
    np.testing.assert_array_equal(ev_n, ev_c)
    assert (why_n < 2 * F).all()
    np.testing.assert_array_equal(why_n, topn_offers(*args, 0.0, 5, mean)[3])


def test_float32_twin_close_to_float64() -> None:
    args = _case(5, T=20, budgets=False)
    idx64, _, ev64, _ = topn_offers(*args, 0.0, 5)
    idx32, _, ev32, _ = topn_offers(args[0].astype(np.float32), *args[1:], 0.0, 5)
    assert (idx32 == idx64).mean() > 0.99
    np.testing.assert_allclose(ev32[idx32 == idx64], ev64[idx32 == idx64], rtol=1e-4)


def test_pruned_rows_equal_the_twin_and_retry_when_the_guess_fails() -> None:
    """T = 512: most offers skip their exp by the cut-offs; rows worse than the guess are evaluated again."""
    from kernels import topn_offers_cpu as cpu

    rng = np.random.default_rng(21)
    n, F, T = 3 * cpu.REFRESH + 500, 8, 512
    X = rng.normal(size=(n, F))
    X[cpu.REFRESH + cpu.WINDOW:, :] -= 1.5   # later rows score lower than the guess learnt on earlier ones
    W = np.abs(rng.normal(size=(F, T))) * 0.3
    bias = rng.normal(size=T) - 1.0
    levels = rng.integers(0, 5, size=(n, 1)).astype(np.int32)
    catW = rng.normal(size=(5, T)) * 0.2
    value = rng.uniform(1, 100, T)
    value[::50] = 0.0                        # EV flat in p: never skipped
    cost = rng.uniform(0, 2, T)
    lam = np.where(rng.random(T) < 0.1, rng.uniform(0, 5, T), 0.0)
    allowed = (rng.random((n, T)) < 0.8).astype(np.uint8)
    args = (X, levels, W, bias, catW, value, cost, lam, allowed, 0.5, 5, np.zeros(F))
    stats = np.zeros(4, np.int64)
    idx_c, p_c, ev_c, why_c = cpu.topn_offers_cpu(*args, stats=stats)
    idx_t, p_t, ev_t, why_t = topn_offers(*args)
    _assert_twin_contract((idx_c, None, ev_c, why_c), (idx_t, None, ev_t, why_t))
    cut_rows, retried, exact, every = (int(v) for v in stats)
    assert cut_rows > n // 2                 # the cut-offs were in use on most rows
    assert retried > 10                      # the retry with the lower guess ran (the shifted rows)
    assert 0 < every < retried               # and, where that failed too, every allowed offer
    assert exact < 0.5 * allowed.sum()       # most allowed offers never got an exp
    # A row's result does not depend on where it falls in a block (4-row tiles, padded tail).
    idx_s, _, ev_s, _ = cpu.topn_offers_cpu(X[3:], levels[3:], *args[2:8], allowed[3:], *args[9:])
    np.testing.assert_array_equal(idx_s, idx_c[3:])
    np.testing.assert_array_equal(ev_s, ev_c[3:])


def _near_cutoff_case(n: int = 1_500, F: int = 8, T: int = 64, near: int = 30, band: float = 3e-5):
    """Rows whose best candidate for the last top-N slot sits within float32's error of its cut-off.

    Four offers always lead; ``near`` offers have float64 logits spread over about ``band`` (per
    offer, and per row through small feature deviations), built as large categorical terms
    (+-500..1000 on two levels that cancel) plus feature terms, so their float32 logits are off
    by about 1e-4: more than the spread. The guess G is the window's lowest 5th score, so most
    rows have several near offers just above it, and the best of them belongs in the top 5.
    """
    rng = np.random.default_rng(7)
    x0 = rng.normal(size=F) * 3.0
    X = x0 + rng.normal(size=(n, F)) * (band / 3)
    W = np.zeros((F, T))
    bias = np.full(T, -20.0)                                    # the rest: far below
    catW = np.zeros((2, T))
    bias[:4] = 3.0                                              # the leaders
    t_near = np.arange(4, 4 + near)
    W[:, t_near] = rng.normal(size=(F, near))
    k = rng.uniform(500, 1000, near) * rng.choice([-1.0, 1.0], near)
    catW[0, t_near] = k
    catW[1, t_near] = -k - x0 @ W[:, t_near]                    # logit: delta_t + (x - x0) @ W_t
    bias[t_near] = rng.uniform(-band, band, near)               # delta_t
    levels = np.tile(np.array([[0, 1]], np.int32), (n, 1))
    value = np.full(T, 10.0)
    zeros = np.zeros(T)
    allowed = np.ones((n, T), np.uint8)
    return X, levels, W, bias, catW, value, zeros, zeros.copy(), allowed, 0.0, 5, np.zeros(F)


def test_rows_at_the_cut_off_equal_the_twin() -> None:
    """Offers just above their cut-off are never lost (nor would they be to a float32 cut-off test).

    Written for a float32 pruning pass (tried, slower, not kept: docs/offers.md): with its
    error bound set to 0 it lost the right offer on 392 of these 1,500 rows, and 16 with the
    categorical terms left out of the bound. It holds any pruning to the twin near the cut-off.
    """
    from kernels import topn_offers_cpu as cpu

    args = _near_cutoff_case()
    stats = np.zeros(4, np.int64)
    idx_c, _, ev_c, why_c = cpu.topn_offers_cpu(*args, stats=stats)
    idx_t, _, ev_t, why_t = topn_offers(*args)
    _assert_twin_contract((idx_c, None, ev_c, why_c), (idx_t, None, ev_t, why_t))
    assert stats[0] > args[0].shape[0] // 2                    # the cut-offs were in use
    # The case is near the cut-off: the leaders fill four slots; the last one goes to near
    # offers that change from row to row, 5th and 6th best within float32's error (1e-4 of a
    # logit is 2.5e-4 of EV here).
    assert (idx_t[:, :4] < 4).all() and len(np.unique(idx_t[:, 4])) > 5
    sixth = np.sort(1 / (1 + np.exp(-(args[0] @ args[2] + args[3] + args[4].sum(axis=0)))), axis=1)[:, -6] * 10
    assert np.median(ev_t[:, 4] - sixth) < 2.5e-4


def _cuda_case(dtype):  # noqa: ANN001, ANN202
    """The CUDA test's inputs (host arrays, kernel dtype) and the twin's answer: built on every machine.

    Categorical levels are reason candidates too (``catbase``: each column's average term).
    """
    args = _case(11, budgets=True)
    X = args[0].astype(dtype)
    mean = np.linspace(-0.2, 0.2, X.shape[1])
    catbase = np.tile(args[4].mean(axis=0), (args[1].shape[1], 1))
    return (X, *args[1:]), (mean, catbase), topn_offers(X, *args[1:], 0.0, 5, mean, catbase)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_case_is_sound_without_a_gpu(dtype) -> None:  # noqa: ANN001
    """What the device test compares against runs on CI: the twin in the kernel's dtype, near float64."""
    host, mean, (idx, p, ev, why) = _cuda_case(dtype)
    assert host[0].dtype == dtype and host[0].flags.c_contiguous
    ref_idx, _, ref_ev, _ = _cuda_case(np.float64)[2]
    same = idx == ref_idx
    assert same.mean() > (0.9999 if dtype == np.float64 else 0.99)
    np.testing.assert_allclose(ev[same], ref_ev[same], rtol=1e-12 if dtype == np.float64 else 1e-4)
    assert (idx >= 0).mean() > 0.5 and ((why >= 0) <= (idx >= 0)).all()
    assert (why >= 2 * host[0].shape[1]).any()          # some level wins: the device compares those too


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_kernel_equals_twin(dtype) -> None:  # noqa: ANN001
    """Only the device call needs a GPU (skipped, with its reason, elsewhere)."""
    import cupy as cp

    from kernels.topn_offers import topn_offers_cuda

    host, (mean, catbase), (idx_t, p_t, ev_t, why_t) = _cuda_case(dtype)
    dev = [cp.asarray(a) for a in host]
    idx_g, p_g, ev_g, why_g = (cp.asnumpy(a) for a in topn_offers_cuda(*dev, 0.0, 5, cp.asarray(mean),
                                                                         cp.asarray(catbase)))
    assert (idx_g == idx_t).mean() > (0.999 if dtype == np.float64 else 0.99)
    same = idx_g == idx_t
    np.testing.assert_allclose(ev_g[same], ev_t[same], rtol=1e-9 if dtype == np.float64 else 1e-4)
    assert (why_g[same] == why_t[same]).mean() > 0.99


def _raw_case():  # noqa: ANN202
    """The CUDA test's case with NaN and ±inf in X, a fill, and offers allowed everywhere (no mask bytes)."""
    args = list(_case(12, n=1_001, budgets=True))
    X = args[0].copy()
    rng = np.random.default_rng(5)
    hit = rng.random(X.shape) < 0.02
    X[hit] = rng.choice([np.nan, np.inf, -np.inf], int(hit.sum()))
    args[0] = X
    args[8][:, [0, 3, 5]] = 1
    fill = np.linspace(-0.5, 0.5, X.shape[1])
    mean = np.linspace(-0.2, 0.2, X.shape[1])
    catbase = np.tile(args[4].mean(axis=0), (args[1].shape[1], 1))
    return args, fill, mean, catbase


def test_twin_imputes_with_fill_as_the_engine_does_before_the_cpu_kernel() -> None:
    """``fill``: NaN and ±inf read as the fill in the logit and the reason, as imputing first does."""
    args, fill, mean, catbase = _raw_case()
    X = args[0]
    imputed = np.where(np.isfinite(X), X, fill[None, :])
    got = topn_offers(*args, 0.0, 5, mean, catbase, fill=fill)
    want = topn_offers(imputed, *args[1:], 0.0, 5, mean, catbase)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    cpu = topn_offers_cpu(imputed, *args[1:], 0.0, 5, mean, catbase=catbase)
    np.testing.assert_array_equal(cpu[0], want[0])
    assert (~np.isfinite(X)).any()                                           # the case has bad values


def test_packed_mask_reads_back() -> None:
    """The CUDA kernel's mask encoding (8 rows a byte, offers allowed everywhere left out) round-trips."""
    from kernels.topn_offers import pack_allowed, unpack_allowed

    args, *_ = _raw_case()
    allowed = args[8]
    packed, mask_row = pack_allowed(allowed)
    assert packed.shape == (allowed.shape[1] - 3, (allowed.shape[0] + 7) // 8) and packed.dtype == np.uint8
    assert (mask_row[[0, 3, 5]] == -1).all() and sorted(mask_row[mask_row >= 0]) == list(range(packed.shape[0]))
    np.testing.assert_array_equal(unpack_allowed(packed, mask_row, allowed.shape[0]), allowed)
    bits = np.unpackbits(packed[mask_row[1]], bitorder="little")[:allowed.shape[0]]
    np.testing.assert_array_equal(bits, allowed[:, 1])                        # bit (row & 7) of byte row >> 3


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["fortran-padded", "c"])
def test_cuda_kernel_reads_strides_fill_and_packed_mask(layout: str) -> None:
    """X through its strides (the engine's Fortran blocks, leading dimension above n), NaN/±inf
    imputed in the kernel, offers allowed everywhere without mask bytes: the twin's answer."""
    import cupy as cp

    from kernels.topn_offers import topn_offers_cuda

    args, fill, mean, catbase = _raw_case()
    X = args[0]
    if layout == "c":
        Xd = cp.asarray(np.ascontiguousarray(X))
    else:
        big = cp.zeros((X.shape[0] + 13, X.shape[1]), order="F")
        big[:X.shape[0]] = cp.asarray(X)
        Xd = big[:X.shape[0]]
        assert Xd.strides == (8, 8 * big.shape[0])
    dev = [cp.asarray(a) for a in args[1:]]
    got = [cp.asnumpy(a) for a in topn_offers_cuda(Xd, *dev, 0.0, 5, cp.asarray(mean), cp.asarray(catbase),
                                                   fill=cp.asarray(fill))]
    want = topn_offers(*args, 0.0, 5, mean, catbase, fill=fill)
    same = got[0] == want[0]
    assert same.mean() > 0.999
    np.testing.assert_allclose(got[2][same], want[2][same], rtol=1e-9, atol=1e-12)
    assert (got[3][same] == want[3][same]).mean() > 0.99
    # A level index outside catW is refused before the launch.
    bad = args[1].copy()
    bad[7, 0] = args[4].shape[0]
    with pytest.raises(ValueError, match="level indices"):
        topn_offers_cuda(Xd, cp.asarray(bad), *dev[1:], 0.0, 5, cp.asarray(mean), cp.asarray(catbase))


@pytest.mark.parametrize(("T", "F"), [(6, 7), (20, 20), (40, 7)])
def test_exact_ties_go_to_the_earlier_offer_and_the_first_feature(T: int, F: int) -> None:
    """Exact ties in scores (offers in identical pairs) and in reason terms (small integers times
    halves): the earlier offer and the first feature win, whichever path the compiled kernel takes
    (ranks counted for up to 12 candidates, an insertion list beyond; with cut-offs from row 64 at
    T = 40; reason maxima over features f mod 4, and the remainder at F = 7). Products of small
    integers and halves tie often."""
    n = 400
    rng = np.random.default_rng(T + F)
    X = rng.integers(-2, 3, size=(n, F)).astype(np.float64)
    W = rng.integers(-2, 3, size=(F, T)) * 0.5
    W[:, 1::2] = W[:, 0::2]                          # offers 2k and 2k + 1 score the same on every row
    bias = np.repeat(rng.normal(size=T // 2) - 1.0, 2)
    value = np.repeat(rng.uniform(5, 50, T // 2), 2)
    zeros = np.zeros(T)
    allowed = (rng.random((n, T)) < 0.8).astype(np.uint8)
    levels, catW = np.zeros((n, 0), np.int32), np.zeros((1, T))
    mean = np.zeros(F)
    stats = np.zeros(4, np.int64)
    idx, _, _, why = topn_offers_cpu(X, None, W, bias, None, value, zeros, zeros, allowed, 0.0, 5, mean, stats=stats)
    want = _brute(X, levels, W, bias, catW, value, zeros, zeros, allowed, 0.0, 5)
    assert all([t for t in idx[i] if t >= 0] == want[i] for i in range(n))
    np.testing.assert_array_equal(why, _reasons_brute(X, levels, W, catW, np.zeros((0, T)), mean, idx))
    pairs = idx[:, :-1] // 2 == idx[:, 1:] // 2                # a tied pair chosen side by side
    assert pairs[(idx[:, :-1] >= 0) & (idx[:, 1:] >= 0)].any()
    assert (stats[0] > 0) == (T >= 32)
