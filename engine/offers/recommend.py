"""From an Arrow block to its customers' top-N offers: one function, called by the CLI's job and the API.

:func:`prepare` folds a multi-head model and a catalogue into the kernel's operands once
(per process); :func:`recommend_block` takes one block (a ``pyarrow.Table``) through the
masks (eligibility rules, ownership), the fused top-N kernel and into the long output
table, with the block's summary (customers per offer, expected value, eligibility and
ownership counts) for the run report. Budgets (:mod:`engine.offers.budgets`) only change
the ``lam`` operand.

Folding: a head's calibrated logit is ``A (z·w + b + w_cat[level]) + B`` with the shared
scaled features ``z = x a + d`` (``a = 1/scale``, ``d = −mean/scale``), so per offer
``W[:, t] = A a∘w``, ``bias = A (b + d·w) + B`` and ``catW[:, t] = A w_cat``: the kernel
sees raw imputed features and never scales a copy of the data.

Reasons: for a recommended offer, the term of its calibrated logit that raises it most against
the average training customer, as ``engine score --reasons`` defines and names it
(:mod:`engine.models.reasons`): a numeric feature's ``W[f, t] (x_f − mean_f)``, named
``feature:high``/``feature:low`` (which side of the average the value lies on), or a
categorical column's ``catW[level, t] − catbase[q, t]`` (the row's level's term against the
column's training-share-weighted average, :func:`engine.models.reasons.level_references`),
named ``column=level``; null when no term is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import InputError, ModelError, UsageError
from engine.io.arrow import codes_array, string_array
from engine.io.matrix import HostBlocks, to_arrow, true_rows
from engine.models.artifact import ScoringModel
from engine.offers import expr, rules_use
from engine.offers.catalogue import Catalogue, for_scoring, head_index

#: Columns of the long output after the id column.
OUTPUT_COLUMNS = ("rank", "offer", "propensity", "expected_value", "reason")


@dataclass(frozen=True)
class OfferPlan:
    """A model's heads folded for one catalogue (columns in catalogue order)."""

    catalogue: Catalogue
    heads: tuple[int, ...]
    W: np.ndarray          # (F, T)
    bias: np.ndarray       # (T,)
    catW: np.ndarray | None  # (L, T)
    value: np.ndarray
    cost: np.ndarray
    fill: np.ndarray       # (F,) imputation
    mean: np.ndarray       # (F,) the average training customer (reasons)
    top: int
    min_ev: float
    catbase: np.ndarray | None = None  # (Q, T) each categorical column's average term (reasons)

    @property
    def n_offers(self) -> int:
        return len(self.heads)

    @property
    def ids(self) -> tuple[str, ...]:
        return self.catalogue.ids

    @property
    def budgets(self) -> np.ndarray:
        """(T,) each offer's budget, ``inf`` where it has none."""
        return np.asarray([np.inf if o.budget is None else float(o.budget) for o in self.catalogue.offers])


def prepare(model: ScoringModel, offers: Catalogue | None = None, top: int | None = None) -> OfferPlan:
    """Fold ``model``'s heads for ``offers`` (default the catalogue it was trained with)."""
    if not model.offers:
        raise ModelError("the model has no offer heads (it was trained with --target): train one with "
                         "`engine train --offers offers.toml` to recommend offers")
    catalogue = for_scoring(model.offers, offers, model.offer_settings)
    keep = catalogue.top if top is None else top
    if not 1 <= keep <= 25:
        raise UsageError(f"--top must be from 1 to 25, not {keep}")
    heads = head_index(model.offers, catalogue)
    pre = model.propensity
    a, d = 1.0 / pre.scale, -pre.mean / pre.scale
    w = np.asarray(model.head_coef, dtype=np.float64)[heads]          # (T, F)
    b = np.asarray(model.head_intercept, dtype=np.float64)[heads]
    platt = np.asarray(model.head_platt, dtype=np.float64)[heads]
    A, B = platt[:, 0], platt[:, 1]
    W = (A[:, None] * (a[None, :] * w)).T
    bias = A * (b + w @ d) + B
    catW = catbase = None
    if model.categoricals:
        from engine.models.reasons import level_references

        catW = (A[:, None] * np.asarray(model.head_cat_coef, dtype=np.float64)[heads]).T.copy()
        catbase = np.ascontiguousarray(level_references(model, catW))
    return OfferPlan(catalogue, tuple(heads), np.ascontiguousarray(W), bias, catW,
                     np.asarray([o.value for o in catalogue.offers]), np.asarray([o.cost for o in catalogue.offers]),
                     np.asarray(pre.fill, dtype=np.float64), np.asarray(pre.mean, dtype=np.float64), int(keep),
                     float(catalogue.min_expected_value), catbase)


def owned_mask(column: pa.ChunkedArray | pa.Array, positive: str | None) -> np.ndarray:
    """Rows whose target says the customer already holds the offer (null: not owned)."""
    values = column
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if positive is not None:
        if pa.types.is_floating(values.type) or pa.types.is_integer(values.type):
            try:
                hit = pc.equal(values, expr.scalar(float(positive)).cast(values.type))
            except (ValueError, pa.ArrowInvalid):
                hit = pc.equal(pc.cast(values, pa.string()), expr.scalar(str(positive)))
        else:
            text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
            probe = str(positive).lower() if pa.types.is_boolean(values.type) else str(positive)
            hit = pc.equal(text, expr.scalar(probe))
    elif pa.types.is_boolean(values.type):
        hit = values
    else:
        hit = pc.equal(values, expr.scalar(1).cast(values.type))
    return true_rows(hit)


def restrictions(table: pa.Table, plan: OfferPlan, holding: rules_use.Holding | None = None
                 ) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Per offer with a rule or an ownership test, its ``(n,)`` bool vector of allowed rows;
    per offer the eligible and owned row counts. Offers with the same rule share one evaluation
    (``by_rules``: the same rule and item), offers with the same target and positive value one
    ownership test. ``holding``: the block's rule holdings (made here when the catalogue names
    rules).

    Offers missing from the dict are allowed on every row. The ``(rows, T)`` mask the kernel
    reads is built from these per block (:func:`block_mask`), never for a whole batch.
    """
    n, T = table.num_rows, plan.n_offers
    if holding is None:
        holding = rules_use.holding(table, plan.catalogue)
    vectors: dict[int, np.ndarray] = {}
    eligible = np.zeros(T, dtype=np.int64)
    owned = np.zeros(T, dtype=np.int64)
    rules: dict[str, np.ndarray] = {}
    holders: dict[tuple[str, str | None], np.ndarray] = {}   # offers with the same target share one test
    for t, offer in enumerate(plan.catalogue.offers):
        ok = None
        if offer.rule is not None:
            key = (offer.eligible or "") + ("\0" + offer.rule_item if holding is not None else "")
            ok = rules.get(key)
            if ok is None:
                ok = rules[key] = expr.mask(offer.rule, table, rules_use.by_rules_for(holding, offer.rule_item))
            eligible[t] = int(np.count_nonzero(ok))
        else:
            eligible[t] = n
        if offer.exclude_owned:
            has = holders.get((offer.target, offer.positive))
            if has is None:
                has = holders[(offer.target, offer.positive)] = owned_mask(table.column(offer.target), offer.positive)
            owned[t] = int(np.count_nonzero(has if ok is None else has & ok))
            ok = ~has if ok is None else ok & ~has
        if ok is not None:
            vectors[t] = ok
    return vectors, eligible, owned


def block_mask(vectors: dict[int, np.ndarray], start: int, stop: int, T: int) -> np.ndarray:
    """The ``(stop - start, T)`` uint8 mask of rows ``[start, stop)`` from :func:`restrictions`."""
    out = np.ones((stop - start, T), dtype=np.uint8)
    for t, ok in vectors.items():
        out[:, t] = ok[start:stop]
    return out


def allowed(table: pa.Table, plan: OfferPlan, holding: rules_use.Holding | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, T)`` uint8 mask of offers a row may get, and per offer the eligible and owned row counts."""
    vectors, eligible, owned = restrictions(table, plan, holding)
    return block_mask(vectors, 0, table.num_rows, plan.n_offers), eligible, owned


def impute(X: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of a block's raw features with NaN and ±inf replaced by the fill values."""
    bad = ~np.isfinite(X)
    out = np.where(bad, fill[None, :], X) if bad.any() else X
    return np.ascontiguousarray(out, dtype=np.float64)


def topn(X: np.ndarray, levels: np.ndarray | None, plan: OfferPlan, mask: np.ndarray | None, lam: np.ndarray,
         keep: int, *, kernel: str = "cpu", out: tuple[np.ndarray, ...] | None = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fused kernel on a block of raw features (NaN, ±inf: imputed with the model's fill
    inside the kernel): ``kernel='cpu'`` the compiled one, ``'numpy'`` the twin. ``mask``
    None: every offer allowed on every row. ``out``: the compiled kernel writes its results
    there (the twin's are copied in)."""
    args = (X, levels, plan.W, plan.bias, plan.catW, plan.value, plan.cost, lam, mask, plan.min_ev, keep, plan.mean)
    if kernel != "numpy":
        from kernels.topn_offers_cpu import topn_offers_cpu

        return topn_offers_cpu(*args, catbase=plan.catbase, fill=plan.fill, out=out)
    from kernels.topn_offers import topn_offers

    got = topn_offers(*args, catbase=plan.catbase, fill=plan.fill)
    if out is None:
        return got
    for target, value in zip(out, got):
        target[...] = value
    return out


def reason_names(model: ScoringModel) -> list[str]:
    """What the kernel's reason codes name (``kernels/topn_offers.py``): ``2 f`` / ``2 f + 1``
    ``feature:high`` / ``feature:low``, then ``2 F + l`` the global level ``l`` as ``column=level``,
    spelled by :mod:`engine.models.reasons` as ``engine score`` spells them."""
    from engine.models.reasons import reason_label
    from engine.models.reasons import reason_names as score_names

    numeric = [reason_label(f, side) for f in model.features for side in ("high", "low")]
    return numeric + score_names(model)[len(model.features):]


@dataclass
class BlockResult:
    table: pa.Table
    customers: np.ndarray   # (T,) rows that got each offer
    value: np.ndarray       # (T,) expected value of those recommendations
    eligible: np.ndarray
    owned: np.ndarray
    rows: int
    idx: np.ndarray         # (rows, keep) the kernel's choices (keep may exceed top: budgets)
    ev: np.ndarray
    # Rows set aside by the bad-row policy (flag_bad): mask, and each one's column and reason
    # (engine.jobs.blocks.score_table's flags); they get no offer and are in no tally.
    bad: np.ndarray | None = None
    bad_columns: list[str] = field(default_factory=list)
    bad_reasons: list[str] = field(default_factory=list)
    scores: Any = None      # the score loop's BlockScores (drift counts, nulls) for the run report
    with_rule: np.ndarray | None = None  # (T,) recommendations that came with a rule (catalogue `rules`)
    with_offer: int = 0     # rows that got at least one offer
    score_sum: float = 0.0  # sum over the recommendations of max(EV - lam, 0) (the budgets' dual bound)


class BatchBuffers:
    """Arrays reused batch after batch by one task: the kernel's ``(rows, keep)`` results, the
    block loop's host block, the long table's repeated ids and the offers as ``intp``.

    A fragment's batches are all the same size but the last: allocating these afresh per
    batch (some 20 MB at 65,536 rows, top 5) costs their page faults every time, since the
    allocator hands such sizes back to the system when they are freed (``perf``: most of a
    run's page faults). Only for a caller that is done with a batch's result (its long table
    written) before it asks for the next: the returned arrays are views of these.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self.host = HostBlocks()

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A C-contiguous ``shape`` view of the reused array ``name`` (grown when too small)."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape))
        have = self._arrays.get(name)
        if have is None or have.dtype != dtype or have.size < size:
            have = self._arrays[name] = np.empty(max(size, 1), dtype)
        return have[:size].reshape(shape)

    def slots(self, n: int, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (self.array("idx", (n, keep), np.int32), self.array("p", (n, keep), np.float32),
                self.array("ev", (n, keep), np.float64), self.array("why", (n, keep), np.int32))


def _new_slots(n: int, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.empty((n, keep), np.int32), np.empty((n, keep), np.float32), np.empty((n, keep), np.float64),
            np.empty((n, keep), np.int32))


class _TopN:
    """The per-block consumer of :func:`engine.jobs.blocks.score_table`: the fused kernel on each leased block."""

    def __init__(self, n: int, plan: OfferPlan, vectors: dict[int, np.ndarray], lam: np.ndarray, keep: int,
                 kernel: str, features: tuple[str, ...], buffers: BatchBuffers | None = None) -> None:
        self.plan, self.vectors, self.lam, self.keep, self.kernel = plan, vectors, lam, keep, kernel
        self.features = features
        # The kernel's choices per row: fresh arrays, or the first n rows of a caller's reused ones.
        out = buffers.slots(n, keep) if buffers is not None else _new_slots(n, keep)
        self.idx, self.p, self.ev, self.why = out   # why: reason codes, from the kernel

    def __call__(self, block: Any) -> None:
        a, b = block.start, block.stop
        # The block loop's own host matrix as it is (the kernel imputes), and a (rows, T) mask
        # per block (never (n, T)), none at all when no offer has a rule or an ownership test.
        mask = block_mask(self.vectors, a, b, self.plan.n_offers) if self.vectors else None
        # Straight into this batch's result rows (C-ordered row slices): no per-block arrays to copy.
        topn(block.X, block.levels, self.plan, mask, self.lam, self.keep, kernel=self.kernel,
             out=(self.idx[a:b], self.p[a:b], self.ev[a:b], self.why[a:b]))


class _EVMatrix:
    """A consumer that keeps a block's full ``(rows, T)`` expected values: only for the budgets' sample."""

    def __init__(self, plan: OfferPlan) -> None:
        self.plan = plan
        self.parts: list[np.ndarray] = []

    def __call__(self, block: Any) -> None:
        from kernels.topn_offers import _sigmoid

        op = self.plan
        logit = impute(block.X, op.fill) @ op.W + op.bias
        if block.levels is not None and op.catW is not None:
            for q in range(block.levels.shape[1]):
                logit += op.catW[block.levels[:, q]]
        self.parts.append(_sigmoid(logit) * op.value - op.cost)


def recommend_block(table: pa.Table, model: ScoringModel, plan: OfferPlan, lam: np.ndarray | None = None,
                    *, id_column: str, kernel: str = "cpu", keep: int | None = None,
                    block_rows: int = 16_384, flag_bad: bool = False, drift: Any = None,
                    row_base: int = 0, device: Any = None, buffers: BatchBuffers | None = None,
                    cuts: Any = None) -> BlockResult:
    """One table's long output: per row its ranked offers (``rank`` 1..N), and the table's tallies.

    Reading the features (dates as days, categorical levels, the ±1e15 rule) is the score
    loop's own (:func:`engine.jobs.blocks.score_table`, without a stage: no segment or
    propensity scores); the top-N kernel runs as its per-block consumer. ``keep`` > top
    keeps extra slots (the budgets read the next one). ``flag_bad``: rows with a ±inf (or
    beyond ±1e15) feature or a missing id are flagged by the score loop (as ``engine score
    --on-bad-rows reject|fail`` flags them) and get no offer; without it such values are
    imputed. ``drift``: the score loop's drift sampler (features only: no scores here).
    ``kernel='gpu'``: the CUDA kernel (:mod:`engine.offers.gpu_topn`) in blocks of its stage's
    slots; ``device`` its :class:`~engine.offers.gpu_topn.DeviceSettings` (or a stage: tests).
    ``buffers``: the kernel's result arrays, the host blocks and the long table's columns are
    views of these, reused by the next call (the returned ``idx``, ``ev`` and ``table`` with
    them): for a caller that writes each result before the next call
    (:func:`engine.jobs.recommend_tasks.recommend_fragment`). ``lam``: the budgets' prices;
    ``cuts`` (:class:`engine.offers.budgets.Cuts`): the offers whose price is a cut, ranked
    just below it and then dropped by the rows below the cut (their next slot moves up).
    """
    from engine.jobs.blocks import score_table

    lam = np.zeros(plan.n_offers) if lam is None else lam
    ranked = cuts.kernel_prices(lam) if cuts is not None else lam   # the prices the kernel ranks by
    keep = plan.top if keep is None else keep
    holding = rules_use.holding(table, plan.catalogue)
    vectors, eligible, owned = restrictions(table, plan, holding)
    if kernel == "gpu":
        from engine.offers.gpu_topn import gpu_consumer

        consumer: Any = gpu_consumer(table.num_rows, model, plan, vectors, ranked, keep, device)
        block_rows = consumer.block_rows
    else:
        consumer = _TopN(table.num_rows, plan, vectors, ranked, keep, kernel, model.features, buffers)
    # No stage: the segment/propensity kernel has nothing to add here (consumers only).
    scores = score_table(model, table, None, consumers=[consumer], block_rows=block_rows,
                         ids=table.column(id_column) if flag_bad else None, flag_bad=flag_bad,
                         id_column=id_column, drift=drift, row_base=row_base,
                         host=buffers.host if buffers is not None else None, drift_result=False)
    idx, p, ev = consumer.idx, consumer.p, consumer.ev
    bad = scores.bad
    if bad is not None:
        idx[bad] = -1
        _, bad_eligible, bad_owned = allowed(table.filter(to_arrow(bad)), plan)
        eligible, owned = eligible - bad_eligible, owned - bad_owned
    N = plan.top
    if cuts is not None and cuts.level:
        from engine.offers.budgets import apply_cuts

        apply_cuts(cuts, table.column(id_column), (idx, p, ev, consumer.why), ranked, N)
    # The recommendations as flat runs in long-table order (row by row, rank by rank): with
    # every slot filled (the common case) reshapes of the kernel's arrays, no selection.
    slots = filled_slots(idx[:, :N], p[:, :N], ev[:, :N], consumer.why[:, :N])
    got, evs = slots.offer, slots.ev
    rule = rules_use.rule_column(holding, plan.catalogue, idx[:, :N])
    out = long_table(table.column(id_column), idx[:, :N], p[:, :N], ev[:, :N], plan, slots.reason,
                     reason_names(model), id_column, rule=None if rule is None else rule[:2], slots=slots,
                     buffers=buffers)
    # bincount reads intp: cast once, into a reused array (it would cast a fresh copy per call).
    offers = buffers.array("offers", got.shape, np.intp) if buffers is not None else np.empty(got.shape, np.intp)
    np.copyto(offers, got)
    customers = np.bincount(offers, minlength=plan.n_offers)
    value = np.bincount(offers, weights=evs, minlength=plan.n_offers)
    with_offer = idx.shape[0] if slots.rows is None else int(np.count_nonzero(idx[:, 0] >= 0))
    # Subtracting zero prices changes no value: skipped (the same sum, one pass fewer).
    gain = evs - lam[got] if lam.any() else evs
    score_sum = float(np.maximum(gain, 0.0).sum())
    return BlockResult(out, customers, value, eligible, owned, table.num_rows - (0 if bad is None else int(bad.sum())),
                       idx, ev, bad, scores.bad_columns, scores.bad_reasons, scores,
                       None if rule is None else rule[2], with_offer, score_sum)


def recommend_table(table: pa.Table, model: ScoringModel, plan: OfferPlan, *, id_column: str,
                    block_rows: int = 16_384, flag_bad: bool = False, sample_rows: int | None = None
                    ) -> BlockResult:
    """A whole table's recommendations with its catalogue's budgets: every customer is in it.

    ``engine recommend``'s pricing (:mod:`engine.offers.budgets`) on the table in memory: the
    first prices from a uniform sample of at most ``sample_rows`` rows (default
    :data:`~engine.offers.budgets.SAMPLE_ROWS`, as the run's ``--budget-sample-rows``; every
    row when the table is no larger: then the run's rows exactly), then full passes of
    :func:`recommend_block` that raise prices and cut ties until no budget is exceeded.
    Without budgets, one :func:`recommend_block`.
    """
    budgets = plan.budgets
    if not np.isfinite(budgets).any():
        return recommend_block(table, model, plan, id_column=id_column, block_rows=block_rows, flag_bad=flag_bad)
    from engine.offers import budgets as bud
    from kernels.topn_offers import MAX_KEEP

    N, n = plan.top, table.num_rows
    share = min(1.0, (bud.SAMPLE_ROWS if sample_rows is None else sample_rows) / max(n, 1))
    sample = table
    if share < 1.0:   # pricing holds (rows, offers) matrices: a sample's, not the table's
        pick = np.flatnonzero(np.random.default_rng(bud.SAMPLE_SEED).random(n) < share)
        sample = table.take(to_arrow(pick, pa.int64()))
    EV, candidate = expected_values(sample, model, plan, block_rows, id_column=id_column, flag_bad=flag_bad)
    lam = bud.sample_prices(EV, candidate, budgets, N, EV.shape[0] / n if share < 1.0 else 1.0)
    del EV, candidate, sample
    cuts = bud.Cuts()
    keep = min(N + 2, MAX_KEEP)   # as the run's: the next score and room for two cut offers
    ids = table.column(id_column)
    passes = 0
    while True:
        passes += 1
        res = recommend_block(table, model, plan, lam, id_column=id_column, keep=keep, block_rows=block_rows,
                              flag_bad=flag_bad, cuts=cuts)
        if res.bad is not None and res.bad.any():
            return res   # the caller fails on them (on_bad_rows="fail"): no pass more
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        bud.collect_pairs(found, res.idx, res.ev, cuts.kernel_prices(lam), N, ids, budgets)
        lam, cuts, over = bud.raise_prices(lam, cuts, res.customers, budgets, found, passes >= bud.MAX_FULL_PASSES)
        if not over:
            return res


@dataclass(frozen=True)
class FilledSlots:
    """The filled slots of ``(rows, N)`` kernel results, flattened in long-table order.

    ``rows``/``rank`` (the slot's row and 1-based rank) are None when every slot is filled:
    then the row of flat position i is ``i // N`` and its rank ``i % N + 1``.
    """

    offer: np.ndarray      # int32
    p: np.ndarray          # float32
    ev: np.ndarray         # float64
    reason: np.ndarray     # int32
    rows: np.ndarray | None
    rank: np.ndarray | None


def filled_slots(idx: np.ndarray, p: np.ndarray, ev: np.ndarray, why: np.ndarray) -> FilledSlots:
    """:class:`FilledSlots` of the kernel's ``(rows, N)`` results (-1 in ``idx``: an empty slot)."""
    flat_idx = np.ascontiguousarray(idx).reshape(-1)
    if not flat_idx.size or flat_idx.min() >= 0:
        return FilledSlots(flat_idx, np.ascontiguousarray(p).reshape(-1), np.ascontiguousarray(ev).reshape(-1),
                           np.ascontiguousarray(why).reshape(-1), None, None)
    N = idx.shape[1]
    sel = np.flatnonzero(flat_idx >= 0)
    return FilledSlots(flat_idx[sel], np.ascontiguousarray(p).reshape(-1)[sel],
                       np.ascontiguousarray(ev).reshape(-1)[sel], np.ascontiguousarray(why).reshape(-1)[sel],
                       sel // N, (sel % N + 1).astype(np.int8))


def expected_values(table: pa.Table, model: ScoringModel, plan: OfferPlan, block_rows: int = 16_384,
                    *, id_column: str | None = None, flag_bad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(EV (n, T), candidate (n, T))`` of a table: the budgets' sample (never all rows of a large input).

    With ``id_column``, rows that no pass recommends to are no one's candidates: a null id
    (left out, or a bad row), and with ``flag_bad`` a bad row (``--on-bad-rows reject|fail``).
    Counted in the sample, they took budget there that the full passes never fill (no cut
    follows a pass under budget): 14 % of three budgets with one id in seven null.
    """
    from engine.jobs.blocks import score_table

    consumer = _EVMatrix(plan)
    ids = table.column(id_column) if id_column is not None else None
    scores = score_table(model, table, None, consumers=[consumer], block_rows=block_rows,
                         ids=ids if flag_bad else None, flag_bad=flag_bad, id_column=id_column or "")
    EV = np.vstack(consumer.parts) if consumer.parts else np.zeros((0, plan.n_offers))
    mask, _, _ = allowed(table, plan)
    candidate = (mask != 0) & (plan.min_ev <= EV)
    if ids is not None and ids.null_count:
        candidate &= ids.is_valid().to_numpy(zero_copy_only=False)[:, None]
    if scores.bad is not None:
        candidate &= ~scores.bad[:, None]
    return EV, candidate


def long_table(ids: Any, idx: np.ndarray, p: np.ndarray, ev: np.ndarray, plan: OfferPlan,
               reason: np.ndarray, names: list[str], id_column: str,
               rule: tuple[np.ndarray, list[str]] | None = None, slots: FilledSlots | None = None,
               buffers: BatchBuffers | None = None) -> pa.Table:
    """The long format: one row per (customer, recommended offer), ranks in order; with ``rule``
    (codes per output row, dictionary) the ``rule`` column (catalogues with ``rules``).
    ``slots``: :func:`filled_slots` of ``idx, p, ev`` when the caller has them already;
    ``buffers``: the repeated ids are written into a reused array (see :class:`BatchBuffers`)."""
    n, N = idx.shape
    # Row-major flat runs: the long rows are the filled slots in this order. Every slot filled
    # (the common case) needs no selection at all; else one 1-D selection per column.
    if slots is None:
        slots = filled_slots(idx, p, ev, np.zeros(idx.shape, np.int32))
    flat_idx, flat_p, flat_ev = slots.offer, slots.p, slots.ev
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else (ids.chunk(0) if ids.num_chunks else
                                                                  pa.nulls(0, ids.type))
    if slots.rows is None:
        rank = _ranks(N, n)
        ids_out = _repeat_ids(ids, N, buffers)
    else:
        rank = slots.rank
        ids_out = ids.take(to_arrow(slots.rows, pa.int64()))
    # From buffers, not pa.array: that imports pandas (~0.1 s of every run) and walks masks per element.
    return pa.table({
        id_column: ids_out,
        "rank": to_arrow(rank, pa.int8()),
        "offer": pa.DictionaryArray.from_arrays(codes_array(flat_idx), string_array(plan.ids)),
        "propensity": to_arrow(flat_p, pa.float32()),
        "expected_value": to_arrow(flat_ev, pa.float64()),
        "reason": pa.DictionaryArray.from_arrays(codes_array(reason), string_array(names)),
        **({} if rule is None else {"rule": pa.DictionaryArray.from_arrays(codes_array(rule[0]),
                                                                           string_array(rule[1]))}),
    })


def _ranks(N: int, n: int) -> np.ndarray:
    """``1..N`` repeated ``n`` times (int8): the rank column of a table with every slot filled."""
    return np.tile(np.arange(1, N + 1, dtype=np.int8), n)


def _repeat_ids(ids: pa.Array, N: int, buffers: BatchBuffers | None = None) -> pa.Array:
    """Each id ``N`` times in a row: an integer or floating id column without nulls is repeated
    on its value buffer (one pass; ``take`` with an index array is two, and builds the index),
    into ``buffers``' reused array if given; any other type (strings, nulls) goes through ``take``."""
    kind = ids.type
    if len(ids) and not ids.null_count and (pa.types.is_integer(kind) or pa.types.is_floating(kind)) \
            and not pa.types.is_float16(kind):
        values = np.frombuffer(ids.buffers()[1], dtype=np.dtype(kind.to_pandas_dtype()),
                               count=ids.offset + len(ids))[ids.offset:]
        if buffers is None:
            out = np.repeat(values, N)
        else:
            out = buffers.array("ids", (len(ids), N), values.dtype)
            out[:] = values[:, None]
        return pa.Array.from_buffers(kind, len(ids) * N, [None, pa.py_buffer(out)])
    return ids.take(to_arrow(np.repeat(np.arange(len(ids), dtype=np.int64), N), pa.int64()))


def output_schema(id_type: pa.DataType, id_column: str, rules: bool = False) -> pa.Schema:
    return pa.schema([(id_column, id_type), ("rank", pa.int8()), ("offer", pa.dictionary(pa.int32(), pa.string())),
                      ("propensity", pa.float32()), ("expected_value", pa.float64()),
                      ("reason", pa.dictionary(pa.int32(), pa.string()))]
                     + ([("rule", pa.dictionary(pa.int32(), pa.string()))] if rules else []))


def check_input(schema: pa.Schema, model: ScoringModel, plan: OfferPlan, id_column: str, source: str) -> None:
    """The input has the id, every feature, and the columns the catalogue reads (rules: exit 2; data: exit 3)."""
    from engine.offers.catalogue import check_columns, suggest

    names = list(schema.names)
    missing = [c for c in (id_column, *model.columns) if c not in names]
    if missing:
        raise InputError(f"input {source}: column(s) {', '.join(map(repr, missing))} missing"
                         f"{suggest(missing[0], names)}; the model reads {', '.join(model.columns)}")
    check_columns(plan.catalogue, schema, targets=False, id_column=id_column)
