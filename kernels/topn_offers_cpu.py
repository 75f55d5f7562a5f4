"""Fused top-N offers on the CPU: the compiled (numba ``nogil``) twin of ``kernels/topn_offers.cu``.

Same contract as :func:`kernels.topn_offers.topn_offers`; no ``(n, T)`` matrix is written.

* **Raw features in, any layout.** ``X`` is read as the block loop filled it (its Fortran-order
  host matrix, or a row slice of it: one compiled signature for every layout) and imputed per
  4-row tile (NaN, ±inf -> ``fill``), so no imputed C-order copy of a block is made; without
  a mask (``allowed`` None) no ``(rows, T)`` array of ones is made either. Row, offer and
  feature indices in the row loop are unsigned where numba would otherwise add negative-index
  code (a full tile's 4 rows are read unrolled).

* **Logits** of a tile of 4 rows at once, 4 features per pass over the tile's T logits,
  vectorised across offers with fused multiply-adds (``fastmath={"contract"}`` and nothing
  else: no reassociation, no approximate functions). Each row of W is loaded once for 4 rows,
  so W (F x T float64: 80 KiB at F = 20, T = 512) streams from L2 a quarter as often as one
  row at a time. No BLAS call: small threaded products per tile stalled on a loaded machine.
* **Pruning before exp.** Sigmoid is monotone, so for a score level G an offer can beat G only
  if its logit exceeds a cut-off ``zc[t] = logit((G + cost + lam - slack) / value)``. The
  guesses G come from the N-th best scores of the last 64 rows: their median, lower quartile
  and lowest, and one as far below the lowest as the median is above it (cut-offs refreshed
  every 1,024 rows: two logs per offer and guess). Per row, a vectorised count per guess, from
  the highest, finds the first guess that at least N allowed offers can beat (a lower one is
  no use: its exact check would fail); a vectorised test then picks the allowed offers above
  its cut-offs, and only those get an exp (about 7 a row at T = 64 and 8 at T = 512 on the
  benchmark's heads, against 10 and 16 with the lowest guess alone). They are appended to the
  candidate list without a branch on the data: over every offer up to 64 offers, else over the
  8-offer words that hold a flag (listed first, also without a branch). When fewer than N of them
  beat G, the row is evaluated again with the next lower guess, then over every allowed offer,
  so the result never depends on the guess: an offer that was skipped scores at most G, below
  N others, and cannot enter the top N (ties included: entering needs a strictly larger
  score).
* **Scores in one vectorised loop.** The candidates' logits, values, costs and lambdas are
  gathered into contiguous arrays (from 4 candidates on), then one branch-free loop (LLVM
  vectorises it) gives each its p (an explicit polynomial ``exp``, relative error below 1e-14:
  numba has no vector ``exp`` without Intel SVML), EV, sort key (EV - lambda; NaN where the
  offer is not valid) and the counts of valid keys and of keys above G (a retry is decided
  before any selection). Below 32 offers (no cut-offs) the ``exp`` of a whole 4-row tile is one
  vectorised loop instead. Compiled with numba's NumPy error model, so a division is not a test
  and a branch (1 + e is never 0), and no array is sliced into row views inside the loops (each
  view costs two calls into numba's reference counting).
* **The top N** in catalogue order on ties: up to 12 candidates, each one's rank (the valid keys
  larger than its own, or equal and earlier) is counted and the candidate written to that slot;
  more (a row over every offer, T from 13 to 31, or many offers above a cut-off): insertion
  into a short sorted list (counting grows as the square: slower from about 14).
  Both keep a strictly larger key ahead and an equal one behind, as the twin does.
* **Reasons** from W transposed once per call (an offer's weights contiguous) and the row's
  ``x - mean`` and its reason codes (2 f, + 1 where ``x - mean <= 0``) computed once per row:
  four running maxima over the features f = 0, 1, 2, 3 mod 4 (independent chains, vectorised), merged so the winner is the same as one pass in feature
  order (the largest positive term, the first on a tie), then the categorical levels where
  strictly larger.

Measured on the benchmark's inputs (F = 20, top 5, no mask, blocks of 16,384 rows, 1M rows, one
thread, a shared 2-core VM at load 0.6-0.7, best of 11 interleaved runs): 65 -> 54 ns/row at
T = 1, 218 -> 150 at T = 8, 303 -> 224 at T = 64 and 697 -> 551 at T = 512 against the previous
kernel (e7b79c6), with the same offers, p, EV, reasons and stats bit for bit. A second round
(unsigned indices, reason codes once per row, the word list above 64 offers; bit for bit the
same again), 6 processes alternating which kernel runs first, each the best of 5 per block of
300,000 rows, load 1.9-2.3, medians: T = 1 85 -> 85 ns/row (no change), T = 8 180 -> 169,
T = 64 264 -> 253 and T = 512 683 -> 622 (the T = 64 and 512 gains in all 6).

Logits agree with the twin to the last few bits (the twin's BLAS sums in another order, and
the polynomial exp differs from libm's in the last bits), so the twin test compares EV with a
tolerance and the choices on rows without near-ties. ``stats`` (optional) counts the rows that
used cut-offs, those evaluated again, the exact evaluations and the rows that came to every
offer (benchmarks, tests).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels._numba import LazyKernel
from kernels.topn_offers import MAX_KEEP

TILE_ROWS = 4             # rows whose logits share each load of W (the logit loop's register tile)
PRUNE_MIN_OFFERS = 32     # fewer offers: every allowed offer is evaluated exactly (nothing to gain)
LEVELS = 4                # guesses G (window quantiles) with cut-offs, descending
WINDOW = 64               # rows whose N-th best scores set the guess G
REFRESH = 1024            # rows between two refreshes of the cut-offs (two logs per offer each)
FLAT_MAX = 64             # offers up to which candidates are appended without a branch (else 8 at a time)
GATHER_MIN = 4            # candidates from which their values are gathered for a vectorised exp loop
RANK_MAX = 12             # candidates up to which the top N is found by counting ranks, not insertion

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238
_LN2_LO = 1.9082149292705877e-10
#: Relative slack of the cut-offs: far above every rounding error of the arithmetic it bounds.
_SLACK = 1e-9


def _body(X, fill, levels, W, bias, catW, value, cost, lam, allowed, masked, min_ev, keep,  # noqa: ANN001
          mean, catbase, out_idx, out_p, out_ev, out_reason, stats):  # pragma: no cover - compiled
    n, F = X.shape
    T = W.shape[1]
    Q = levels.shape[1]
    U = np.empty((TILE_ROWS, T), dtype=np.float64)
    xt = np.zeros((TILE_ROWS, F), dtype=np.float64)   # the tile's imputed features (C order)
    Tp = (T + 7) // 8 * 8
    flags = np.zeros(Tp, dtype=np.uint8)
    words = flags.view(np.uint64)
    cand = np.empty(T, dtype=np.uint32)   # unsigned: indexing with it needs no negative-index code
    nzw = np.empty(Tp // 8, dtype=np.uint32)   # the flag words (8 offers each) with a candidate
    # Per candidate: its logit, value, cost and lambda gathered (so the exp loop reads contiguous
    # arrays and LLVM vectorises it), then p, EV and the sort key (NaN: not a valid offer).
    gz = np.empty(T, dtype=np.float64)
    gv = np.empty(T, dtype=np.float64)
    gc = np.empty(T, dtype=np.float64)
    gl = np.empty(T, dtype=np.float64)
    ps = np.empty(T, dtype=np.float64)
    evs = np.empty(T, dtype=np.float64)
    key = np.empty(T, dtype=np.float64)
    # The selected offers, best first; slot `keep` takes whatever is not selected.
    sel_s = np.empty(keep + 1, dtype=np.float64)
    sel_ev = np.empty(keep + 1, dtype=np.float64)
    sel_p = np.empty(keep + 1, dtype=np.float32)
    sel_t = np.empty(keep + 1, dtype=np.uint32)   # unsigned (as cand): WT[t] needs no negative-index code
    WT = np.empty((T, F), dtype=np.float64)   # W transposed: one offer's weights contiguous (reasons)
    for f in range(F):
        for t in range(T):
            WT[t, f] = W[f, t]
    dv = np.empty(F, dtype=np.float64)         # the row's features minus the average customer's
    dc = np.empty(F, dtype=np.int64)           # their reason codes: 2 f, + 1 where dv[f] <= 0
    zc = np.empty((LEVELS, T), dtype=np.float64)   # cut-offs of the guesses, descending
    Gs = np.full(LEVELS, -np.inf)
    wsorted = np.empty(WINDOW, dtype=np.float64)
    window = np.empty(WINDOW, dtype=np.float64)
    seen = 0
    levels_ready = 0     # guesses with cut-offs: 0 .. LEVELS
    prune = T >= PRUNE_MIN_OFFERS
    # Without cut-offs every allowed offer gets an exp: those of a whole tile (TILE_ROWS x T) in
    # one vectorised loop, with value, cost and lambda repeated per row.
    NT = 0 if prune else TILE_ROWS * T
    vt = np.empty(NT, dtype=np.float64)
    ct = np.empty(NT, dtype=np.float64)
    lt = np.empty(NT, dtype=np.float64)
    pt = np.empty(NT, dtype=np.float64)
    et = np.empty(NT, dtype=np.float64)
    st = np.empty(NT, dtype=np.float64)
    for i in range(NT):
        vt[i] = value[i % T]
        ct[i] = cost[i % T]
        lt[i] = lam[i % T]
    Uf = U.reshape(TILE_ROWS * T)
    F4 = F - F % 4

    def score(z, v, c, lm):   # inlined by numba: p, EV and EV - lambda of one offer from its logit
        # exp(-|logit|) without a branch, so LLVM vectorises the loops that call this (no vector
        # exp in numba without SVML): range reduction by ln 2, a degree-11 polynomial, 2^k from
        # the exponent bits; relative error < 1e-14.
        a = min(abs(z), 700.0)
        kk = np.floor(-a * _LOG2E + 0.5)
        x = -a - kk * _LN2_HI - kk * _LN2_LO
        poly = 1.0 + x * (1.0 + x * (0.5 + x * (1.0 / 6 + x * (1.0 / 24 + x * (1.0 / 120 + x * (
            1.0 / 720 + x * (1.0 / 5040 + x * (1.0 / 40320 + x * (1.0 / 362880 + x * (
                1.0 / 3628800 + x * (1.0 / 39916800)))))))))))
        e = poly * np.int64((np.int64(kk) + 1023) << 52).view(np.float64)
        inv = 1.0 / (1.0 + e)
        p = inv if z >= 0 else e * inv   # a select, not a branch
        ev = p * v - c
        return p, ev, ev - lm

    for r0 in range(0, n, TILE_ROWS):
        R = min(TILE_ROWS, n - r0)
        # The tile's features, imputed here (NaN, ±inf -> fill: no imputed copy of the block is
        # made), read from X in whatever layout the block loop filled it. Rows R.. of a short
        # last tile keep older values: only their own logits (never read) see them, and every
        # row's arithmetic is the same wherever it falls in a block.
        if R == TILE_ROWS:
            # A full tile: its 4 rows' values per feature, at unsigned indices (numba adds no
            # negative-index code; the generic loop below cost about 8 ns a row).
            q0 = np.uint64(r0)
            q1 = np.uint64(r0 + 1)
            q2 = np.uint64(r0 + 2)
            q3 = np.uint64(r0 + 3)
            for f in range(F):
                fv = fill[f]
                uf = np.uint64(f)
                v0 = X[q0, uf]
                v1 = X[q1, uf]
                v2 = X[q2, uf]
                v3 = X[q3, uf]
                xt[0, f] = v0 if v0 - v0 == 0.0 else fv
                xt[1, f] = v1 if v1 - v1 == 0.0 else fv
                xt[2, f] = v2 if v2 - v2 == 0.0 else fv
                xt[3, f] = v3 if v3 - v3 == 0.0 else fv
        else:
            for f in range(F):
                fv = fill[f]   # loaded before: a select per value, not a branch
                for r in range(R):
                    v = X[r0 + r, f]
                    xt[r, f] = v if v - v == 0.0 else fv
        # Logits of a tile of 4 rows at once: each W row loaded once for 4 rows, 4 features per
        # pass over U (vectorised across offers; FMAs). Arrays are indexed in place, never sliced
        # into row views: each view costs two calls into numba's reference counting.
        for r in range(TILE_ROWS):
            for t in range(T):
                U[r, t] = bias[t]
        for f in range(0, F4, 4):
            a0, a1, a2, a3 = xt[0, f], xt[0, f + 1], xt[0, f + 2], xt[0, f + 3]
            b0, b1, b2, b3 = xt[1, f], xt[1, f + 1], xt[1, f + 2], xt[1, f + 3]
            c0, c1, c2, c3 = xt[2, f], xt[2, f + 1], xt[2, f + 2], xt[2, f + 3]
            d0, d1, d2, d3 = xt[3, f], xt[3, f + 1], xt[3, f + 2], xt[3, f + 3]
            for t in range(T):
                p0, p1, p2, p3 = W[f, t], W[f + 1, t], W[f + 2, t], W[f + 3, t]
                U[0, t] += a0 * p0 + a1 * p1 + a2 * p2 + a3 * p3
                U[1, t] += b0 * p0 + b1 * p1 + b2 * p2 + b3 * p3
                U[2, t] += c0 * p0 + c1 * p1 + c2 * p2 + c3 * p3
                U[3, t] += d0 * p0 + d1 * p1 + d2 * p2 + d3 * p3
        for f in range(F4, F):
            a0, b0, c0, d0 = xt[0, f], xt[1, f], xt[2, f], xt[3, f]
            for t in range(T):
                p0 = W[f, t]
                U[0, t] += a0 * p0
                U[1, t] += b0 * p0
                U[2, t] += c0 * p0
                U[3, t] += d0 * p0
        for r in range(R):
            for q in range(Q):
                lq = levels[r0 + r, q]
                for t in range(T):
                    U[r, t] += catW[lq, t]
        for i in range(NT):
            p, ev, s = score(Uf[i], vt[i], ct[i], lt[i])
            pt[i] = p
            et[i] = ev
            st[i] = s
        for r in range(R):
            row = np.uint64(r0 + r)   # unsigned indices: no negative-index code
            attempt = 0
            ar = row if masked else np.uint64(0)   # the mask's row
            if levels_ready:
                # Start at the highest guess that at least `keep` allowed offers can beat (a
                # vectorised count per level, from the top): a level with fewer offers above its
                # cut-offs would fail the exact check below anyway, and a higher one leaves fewer
                # candidates. None: every allowed offer at once.
                attempt = levels_ready
                for lv in range(levels_ready):
                    count = 0
                    for t in range(T):
                        hit = (allowed[ar, t] != 0) & (U[r, t] > zc[lv, t])
                        flags[t] = hit
                        count += hit
                    if count >= keep:
                        attempt = lv
                        break
                stats[0] += 1
                if attempt == levels_ready:
                    stats[3] += 1
            first = attempt
            while True:
                # The candidates, in catalogue order: with cut-offs, only the allowed offers
                # whose logit can beat G (a vectorised test: on the first attempt the count's
                # own; then a branch-free append, or for many offers a scan that skips 8 at a
                # time: mostly no candidate there); otherwise (or on a retry) every allowed offer.
                m = 0
                G = Gs[attempt] if attempt < levels_ready else -np.inf
                if attempt < levels_ready:
                    if attempt != first:   # the first attempt's flags are the count's
                        for t in range(T):
                            flags[t] = (allowed[ar, t] != 0) & (U[r, t] > zc[attempt, t])
                    if T <= FLAT_MAX:
                        for t in range(T):
                            cand[np.uint64(m)] = t
                            m += flags[t]
                    else:
                        nw = 0
                        # The words (8 offers) with a candidate, listed without a branch (a
                        # branch per word mispredicted on most of the ~10 candidates' words at
                        # T = 512), then a branch-free append within each.
                        for w in range(Tp // 8):
                            nzw[np.uint64(nw)] = w
                            nw += words[w] != 0
                        for i in range(nw):
                            w = nzw[i]
                            for t in range(8 * w, 8 * w + 8):
                                cand[np.uint64(m)] = t
                                m += flags[t]
                else:
                    for t in range(T):
                        cand[np.uint64(m)] = t
                        m += 1 if allowed[ar, t] != 0 else 0
                stats[2] += m
                # Each candidate's p, EV and key, and the counts of valid ones (EV at least
                # min_ev; with a budget's lambda, EV - lambda above 0) and of those above G.
                nvalid = 0
                above = 0
                if not prune:   # scored with the tile
                    for k in range(m):
                        i = r * T + cand[k]
                        ev = et[i]
                        s = st[i]
                        ok = (ev >= min_ev) & ((lt[i] == 0.0) | (s > 0.0))
                        ps[k] = pt[i]
                        evs[k] = ev
                        key[k] = s if ok else np.nan
                        nvalid += ok
                        above += ok & (s > G)
                elif m >= GATHER_MIN:
                    for k in range(m):
                        t = cand[k]
                        gz[k] = U[r, t]
                        gv[k] = value[t]
                        gc[k] = cost[t]
                        gl[k] = lam[t]
                    for k in range(m):   # contiguous and branch-free: vectorised
                        p, ev, s = score(gz[k], gv[k], gc[k], gl[k])
                        ok = (ev >= min_ev) & ((gl[k] == 0.0) | (s > 0.0))
                        ps[k] = p
                        evs[k] = ev
                        key[k] = s if ok else np.nan
                        nvalid += ok
                        above += ok & (s > G)
                else:   # one to three: a gather costs more than it saves
                    for k in range(m):
                        t = cand[k]
                        p, ev, s = score(U[r, t], value[t], cost[t], lam[t])
                        ok = (ev >= min_ev) & ((lam[t] == 0.0) | (s > 0.0))
                        ps[k] = p
                        evs[k] = ev
                        key[k] = s if ok else np.nan
                        nvalid += ok
                        above += ok & (s > G)
                if attempt < levels_ready and above < keep:
                    # Fewer than `keep` candidates beat G: a skipped offer might belong in the
                    # top N after all. Try the next lower guess, then every allowed offer.
                    if attempt == first:
                        stats[1] += 1
                    attempt += 1
                    if attempt == levels_ready:
                        stats[3] += 1
                    continue
                break
            # The top `keep` valid candidates by key, ties in catalogue order (an earlier offer
            # first). Few candidates: each one's rank is counted (the valid ones with a larger
            # key, or an equal one earlier) and it is written to that slot, no branch on the
            # data; many (a row evaluated over every offer): insertion into a sorted list.
            filled = min(nvalid, keep)
            if m <= RANK_MAX:
                for k in range(m):
                    sk = key[k]
                    cnt = 0
                    for i in range(k):
                        cnt += key[i] >= sk
                    for i in range(k + 1, m):
                        cnt += key[i] > sk
                    pos = min(cnt, keep) if sk == sk else keep   # NaN compares false: no rank
                    sel_s[pos] = sk
                    sel_ev[pos] = evs[k]
                    sel_p[pos] = np.float32(ps[k])
                    sel_t[pos] = cand[k]
            else:
                have = 0
                for k in range(m):
                    s = key[k]
                    if s != s:   # NaN: not a valid offer
                        continue
                    if have == keep and not (s > sel_s[keep - 1]):
                        continue
                    pos = have
                    while pos > 0 and sel_s[pos - 1] < s:   # strictly larger moves up
                        pos -= 1
                    last = have if have < keep else keep - 1
                    for j in range(last, pos, -1):
                        sel_s[j] = sel_s[j - 1]
                        sel_ev[j] = sel_ev[j - 1]
                        sel_p[j] = sel_p[j - 1]
                        sel_t[j] = sel_t[j - 1]
                    sel_s[pos] = s
                    sel_ev[pos] = evs[k]
                    sel_p[pos] = np.float32(ps[k])
                    sel_t[pos] = cand[k]
                    if have < keep:
                        have += 1
            for f in range(F):   # once per row, not per chosen offer
                d = xt[r, f] - mean[f]
                dv[f] = d
                dc[f] = 2 * f + (1 if d <= 0 else 0)
            for j in range(filled):
                t = sel_t[j]
                out_idx[row, j] = t
                out_p[row, j] = sel_p[j]
                out_ev[row, j] = sel_ev[j]
                # The reason: the term that raises this offer's logit most against the average
                # customer: the numeric feature with the largest positive d * w (the first on a
                # tie), then a categorical column's level where strictly larger (its term minus
                # the column's reference; +inf: no candidate). Four running maxima over features
                # f = 0, 1, 2, 3 mod 4 (independent chains, vectorised), merged after: the same
                # winner as one pass in feature order.
                t0 = 0.0
                t1 = 0.0
                t2 = 0.0
                t3 = 0.0
                k0 = -1
                k1 = -1
                k2 = -1
                k3 = -1
                for f in range(0, F4, 4):
                    d0 = dv[f]
                    d1 = dv[f + 1]
                    d2 = dv[f + 2]
                    d3 = dv[f + 3]
                    c0 = d0 * WT[t, f]
                    c1 = d1 * WT[t, f + 1]
                    c2 = d2 * WT[t, f + 2]
                    c3 = d3 * WT[t, f + 3]
                    b0 = c0 > t0
                    b1 = c1 > t1
                    b2 = c2 > t2
                    b3 = c3 > t3
                    e0 = dc[f]   # loaded before the selects: a select of a load became a branch
                    e1 = dc[f + 1]
                    e2 = dc[f + 2]
                    e3 = dc[f + 3]
                    k0 = e0 if b0 else k0
                    k1 = e1 if b1 else k1
                    k2 = e2 if b2 else k2
                    k3 = e3 if b3 else k3
                    t0 = c0 if b0 else t0
                    t1 = c1 if b1 else t1
                    t2 = c2 if b2 else t2
                    t3 = c3 if b3 else t3
                for f in range(F4, F):
                    d0 = dv[f]
                    c0 = d0 * WT[t, f]
                    b0 = c0 > t0
                    e0 = dc[f]
                    k0 = e0 if b0 else k0
                    t0 = c0 if b0 else t0
                # Merged: the larger maximum, or on equal ones the lower feature (codes 2f + bit;
                # -1 only where the maximum is still 0, on both sides then).
                b0 = (t1 > t0) | ((t1 == t0) & (k1 < k0))
                k0 = k1 if b0 else k0
                t0 = t1 if b0 else t0
                b2 = (t3 > t2) | ((t3 == t2) & (k3 < k2))
                k2 = k3 if b2 else k2
                t2 = t3 if b2 else t2
                b0 = (t2 > t0) | ((t2 == t0) & (k2 < k0))
                code = k2 if b0 else k0
                top = t2 if b0 else t0
                for q in range(Q):
                    lv = levels[row, q]
                    c = catW[lv, t] - catbase[q, t]
                    better = c > top
                    code = (2 * F + lv) if better else code
                    top = c if better else top
                out_reason[row, j] = code
            for j in range(filled, keep):
                out_idx[row, j] = -1
                out_p[row, j] = 0.0
                out_ev[row, j] = 0.0
                out_reason[row, j] = -1
            if not prune:
                continue
            # The guess G: the lowest N-th best score of the last WINDOW rows, refreshed every
            # REFRESH rows. An offer whose logit is at most its cut-off zc[t] scores at most G
            # (sigmoid is monotone; the slack covers every rounding), so when `keep` others beat
            # G it cannot be among the top N: its exp is never computed.
            window[seen % WINDOW] = sel_s[keep - 1] if filled == keep else -np.inf
            seen += 1
            if seen >= WINDOW and (seen - WINDOW) % REFRESH == 0:
                # The guesses, strictly descending: the window's median and lower quartile, its
                # lowest, and as far below the lowest as the median is above it (rows worse than
                # their neighbours, before all of their offers).
                wsorted[:] = window
                wsorted.sort()
                g0 = wsorted[0]
                spread = wsorted[WINDOW // 2] - g0
                levels_ready = 0
                if np.isfinite(g0):
                    for g in (wsorted[WINDOW // 2], wsorted[WINDOW // 4], g0, g0 - spread):
                        if np.isfinite(g) and (levels_ready == 0 or g < Gs[levels_ready - 1]):
                            Gs[levels_ready] = g
                            levels_ready += 1
                for lv in range(levels_ready):
                    G = Gs[lv]
                    for t in range(T):
                        v = value[t]
                        if not (v > 0.0):
                            zc[lv, t] = -np.inf    # EV does not rise with p: never skipped
                            continue
                        slack = _SLACK * (abs(G) + abs(cost[t]) + abs(lam[t]) + v)
                        rr = (G + cost[t] + lam[t] - slack) / v   # p must exceed rr to beat G
                        if rr <= 0.0:
                            zc[lv, t] = -np.inf
                        elif rr >= 1.0:
                            zc[lv, t] = np.inf
                        else:
                            zz = np.log(rr / (1.0 - rr))
                            zc[lv, t] = zz - _SLACK * (1.0 + abs(zz))


def _signature(t: Any) -> Any:
    """The kernel's one signature: X of any layout (the block loop's Fortran-order host matrix,
    a strided slice of it, or a C-order array), everything else C-contiguous."""
    f64, i32, i64 = t.float64, t.int32, t.int64

    def arr(dtype: Any, dims: int, layout: str = "C") -> Any:
        return t.Array(dtype, dims, layout)

    return t.void(arr(f64, 2, "A"), arr(f64, 1), arr(i32, 2), arr(f64, 2), arr(f64, 1), arr(f64, 2),
                  arr(f64, 1), arr(f64, 1), arr(f64, 1), arr(t.uint8, 2), t.boolean, f64, i64, arr(f64, 1),
                  arr(f64, 2), arr(i32, 2), arr(t.float32, 2), arr(f64, 2), arr(i32, 2), arr(i64, 1))


_KERNEL = LazyKernel(_body, "top-N offers kernel", contract=True, signature=_signature, numpy_errors=True)


def _compiled() -> Any:
    # With a signature numba compiles (or loads its cache) at this first use, not at the first call.
    return _KERNEL.get()


def topn_offers_cpu(X: Any, levels: Any, W: Any, bias: Any, catW: Any, value: Any, cost: Any, lam: Any,
                    allowed: Any, min_ev: float, keep: int, mean: Any = None, stats: np.ndarray | None = None,
                    catbase: Any = None, fill: Any = None, out: tuple[np.ndarray, ...] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The compiled kernel; arguments and results as :func:`kernels.topn_offers.topn_offers` (float64).

    ``X`` may have any layout (the block loop's Fortran-order matrix is read as it is) and,
    with ``fill``, raw values: NaN and ±inf are replaced by ``fill`` inside the kernel (as
    the twin imputes). ``allowed`` None: every offer is allowed on every row (no mask is
    built). ``out``: the four result arrays to write (and return) instead of new ones.
    ``stats``: an int64 array of 4 that gains the rows evaluated with cut-offs, the rows
    evaluated again, the exact evaluations (offers given an exp), and the rows that came
    to every allowed offer (every guess failed, or none was one N allowed offers could beat).
    """
    if not 1 <= keep <= MAX_KEEP:
        raise ValueError(f"keep must be in 1..{MAX_KEEP}, got {keep}")
    if stats is not None and (stats.shape != (4,) or stats.dtype != np.int64):
        raise ValueError("stats must be an int64 array of 4 (the kernel writes into it unchecked)")
    X = np.asarray(X)
    if X.dtype != np.float64:
        X = X.astype(np.float64)
    n, F = X.shape
    W = np.ascontiguousarray(W, dtype=np.float64)
    T = W.shape[1]
    if W.shape[0] != F:
        raise ValueError(f"W must be (features, offers) = ({F}, {T}), not {W.shape}")
    if levels is None or np.asarray(levels).shape[1] == 0:
        levels = np.zeros((n, 0), dtype=np.int32)
        catW = np.zeros((1, T))
        catbase = None
    Q = np.asarray(levels).shape[1]
    # No reference: the columns are no reason candidates (a term minus +inf never wins).
    catbase = np.full((Q, T), np.inf) if catbase is None else np.ascontiguousarray(catbase, dtype=np.float64)
    if catbase.shape != (Q, T):
        raise ValueError(f"catbase must be (categorical columns, offers) = {(Q, T)}, not {catbase.shape}")
    # Without fill the values are used as they are: a NaN stays NaN (the caller imputed).
    fill = np.full(F, np.nan) if fill is None else np.ascontiguousarray(fill, dtype=np.float64)
    masked = allowed is not None
    allowed = np.ones((1, T), np.uint8) if allowed is None else np.ascontiguousarray(allowed, dtype=np.uint8)
    if allowed.shape != ((n, T) if masked else (1, T)):
        raise ValueError(f"allowed must be (rows, offers) = {(n, T)}, not {allowed.shape}")
    dtypes = (np.int32, np.float32, np.float64, np.int32)
    if out is None:
        out_idx, out_p, out_ev, out_reason = (np.empty((n, keep), dtype=d) for d in dtypes)
    else:   # the kernel writes them unchecked: exactly (n, keep), C order, its dtypes
        if len(out) != 4 or any(not (isinstance(a, np.ndarray) and a.shape == (n, keep) and a.dtype == d
                                     and a.flags.c_contiguous and a.flags.writeable) for a, d in zip(out, dtypes)):
            raise ValueError(f"out must be four writeable C-ordered ({n}, {keep}) arrays: idx int32, p float32, "
                             "ev float64, reason int32")
        out_idx, out_p, out_ev, out_reason = out
    mean = np.zeros(F) if mean is None else np.ascontiguousarray(mean, dtype=np.float64)
    kernel = _compiled()
    args = (X, fill, np.ascontiguousarray(levels, dtype=np.int32), W,
            np.ascontiguousarray(bias, dtype=np.float64), np.ascontiguousarray(catW, dtype=np.float64),
            np.ascontiguousarray(value, dtype=np.float64), np.ascontiguousarray(cost, dtype=np.float64),
            np.ascontiguousarray(lam, dtype=np.float64), allowed, masked, float(min_ev), int(keep), mean, catbase,
            out_idx, out_p, out_ev, out_reason, np.zeros(4, np.int64) if stats is None else stats)
    kernel(*args)   # compiled (or loaded) by _compiled(), under no_blas_probe: nothing left for a first call
    return out_idx, out_p, out_ev, out_reason


def warm() -> None:
    """Compile the kernel, or load it from numba's cache, with a one-row call."""
    T = 2
    topn_offers_cpu(np.zeros((1, 1)), None, np.zeros((1, T)), np.zeros(T), None, np.ones(T), np.zeros(T),
                    np.zeros(T), None, 0.0, 1, fill=np.zeros(1))
