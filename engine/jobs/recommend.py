"""``engine recommend``: plan, run the fused top-N pass over every block, price budgets, publish.

The output is a Parquet dataset in long format, one row per (customer, recommended
offer): the id column, ``rank`` (1..N), ``offer`` (dictionary-encoded), ``propensity``,
``expected_value`` and ``reason``; ``_manifest.json`` and ``_SUCCESS`` written last,
through the very committers ``engine score`` uses (:mod:`engine.io.commit` on a disk,
:mod:`engine.io.store_commit` in an object store): the same staging, lock, atomic publish,
ownership rules and ``--resume`` (each part's sidecar carries a run key over the input
fingerprint, model hash, catalogue and prices, so a resumed run reuses exactly the parts it
would write again).

With budgets (:mod:`engine.offers.budgets`) the prices come first from a sample (a uniform
share of every fragment's rows), then each full pass counts the offers exactly; a pass
that finds an offer over its budget raises its price and runs again (its parts are
rewritten), so what is published never exceeds a budget.

Rows run in this process, fragment by fragment, in batches; each batch goes through
:func:`engine.offers.recommend.recommend_block`, the function ``Model.recommend`` calls,
so the API and the CLI agree by construction. (Issue 23's block loop is to replace this
loop when it lands; see the report.)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine import __version__
from engine.config import Settings
from engine.errors import InputError, UsageError
from engine.io.commit import TEST_PAUSE_AFTER_PART, pause_for_tests
from engine.io.dataset import Fragment, InputDataset, discover, iter_fragment, plan_fragments
from engine.io.id_ranges import IdRange
from engine.io.store import put_bytes
from engine.io.uri import Location, check
from engine.jobs.progress import MODES, Progress
from engine.models.artifact import ScoringModel, load_model
from engine.offers import budgets as bud
from engine.offers.catalogue import load_catalogue
from engine.offers.recommend import (
    OfferPlan,
    check_input,
    expected_values,
    prepare,
    recommend_block,
)
from engine.privacy import enough, gate_offer_statistics, gate_score_statistics
from engine.report import SCORE_REPORT

#: Rows of the sample the budget prices are first found on.
BUDGET_SAMPLE_ROWS = 50_000
#: Rows decoded and recommended at a time.
BATCH_ROWS = 65_536


@dataclass(frozen=True)
class RecommendOptions:
    input: str
    model: str
    output: str
    offers: str | None = None
    top: int | None = None
    id_column: str | None = None
    overwrite: bool = False
    resume: bool = False
    progress: str = "auto"
    seed: int = 42
    kernel: str = "cpu"           # "cpu" (compiled) or "numpy" (the twin; tests and benchmarks)
    batch_rows: int = BATCH_ROWS
    sample_rows: int = BUDGET_SAMPLE_ROWS
    threads: int | None = None    # fragments at once (default: the cores)


@dataclass
class RecommendPlan:
    options: RecommendOptions
    settings: Settings
    model: ScoringModel
    offers: OfferPlan
    id_column: str
    dataset: InputDataset
    fragments: list[Fragment]
    output_state: dict[str, Any]
    real_output: Path | Location
    started: float = field(default_factory=time.perf_counter)

    @property
    def budgets(self) -> np.ndarray:
        return np.asarray([np.inf if o.budget is None else float(o.budget) for o in self.offers.catalogue.offers])

    def describe(self) -> dict[str, Any]:
        cat = self.offers.catalogue
        return {
            "input": self.dataset.root, "rows": self.dataset.num_rows, "files": len(self.dataset.files),
            "fragments": len(self.fragments), "model": self.options.model, "model_hash": self.model.content_hash,
            "catalogue": cat.source, "offers": list(cat.ids), "top": self.offers.top,
            "min_expected_value": cat.min_expected_value,
            "budgets": {o.id: o.budget for o in cat.offers if o.budget is not None},
            "output": self.output_state,
            "output_columns": [self.id_column, "rank", "offer", "propensity", "expected_value", "reason"]
            + (["rule"] if cat.rules is not None else []),
            **({"rules": cat.rules.record()} if cat.rules is not None else {}),
            "on_bad_rows": self.settings.on_bad_rows, "max_rejected_fraction": self.settings.max_rejected_fraction,
        }


def _score_options(options: RecommendOptions) -> Any:
    from engine.jobs.score import ScoreOptions

    return ScoreOptions(input=options.input, model=options.model, output=options.output,
                        overwrite=options.overwrite, resume=options.resume)


def plan_recommend(options: RecommendOptions, settings: Settings | None = None) -> RecommendPlan:
    """Every check a run makes before its work (flags, model, catalogue, input schema, output); writes nothing."""
    from engine.jobs.score import check_output, committer_for

    settings = settings or Settings()
    t0 = time.perf_counter()
    if options.progress not in MODES:
        raise UsageError(f"--progress must be one of {', '.join(MODES)}, not {options.progress!r}")
    if options.kernel not in ("cpu", "numpy"):
        raise UsageError(f"kernel must be 'cpu' or 'numpy', not {options.kernel!r}")
    for flag, value in (("--input", options.input), ("--model", options.model), ("--output", options.output)):
        check(value, flag)
    if options.top is not None and not 1 <= options.top <= 25:
        raise UsageError(f"--top must be from 1 to 25, not {options.top}")
    real_output = check_output(_score_options(options))
    model = load_model(options.model)
    catalogue = load_catalogue(options.offers) if options.offers else None
    offer_plan = prepare(model, catalogue, options.top)
    id_column = options.id_column or model.id_column
    dataset = discover(options.input)
    schema = pa.schema(list(dataset.files[0].schema)
                       + [pa.field(k, t) for k, t in dataset.partition_columns.items()
                          if k not in dataset.files[0].schema.names])
    check_input(schema, model, offer_plan, id_column, dataset.root)
    if dataset.num_rows == 0:
        raise InputError(f"input {dataset.root} holds no rows")
    fragments = plan_fragments(dataset, settings.partition_rows)
    state = committer_for(real_output, _score_options(options)).inspect()
    return RecommendPlan(options, settings, model, offer_plan, id_column, dataset, fragments, state, real_output,
                         started=t0)


def _columns(plan: RecommendPlan) -> list[str]:
    cat = plan.offers.catalogue
    owned = [o.target for o in cat.offers if o.exclude_owned]
    return list(dict.fromkeys([plan.id_column, *plan.model.columns, *cat.rule_columns(), *owned]))


def _batches(plan: RecommendPlan, fragment: Fragment) -> Any:
    return iter_fragment(fragment, _columns(plan), plan.dataset.partition_columns, batch_rows=plan.options.batch_rows)


def _sample(plan: RecommendPlan) -> tuple[np.ndarray, np.ndarray, float]:
    """EV and candidate matrices ``(m, T)`` of a uniform sample of rows (every fragment's share)."""
    n = plan.dataset.num_rows
    share = min(1.0, plan.options.sample_rows / max(n, 1))
    rng = np.random.default_rng(plan.options.seed)
    evs, cands = [], []
    for frag in plan.fragments:
        for table in _batches(plan, frag):
            if share < 1.0:
                pick = np.flatnonzero(rng.random(table.num_rows) < share)
                table = table.take(pa.array(pick, pa.int64()))
            if table.num_rows == 0:
                continue
            ev, cand = expected_values(table, plan.model, plan.offers)
            evs.append(ev)
            cands.append(cand)
    T = plan.offers.n_offers
    EV = np.vstack(evs) if evs else np.zeros((0, T))
    cand = np.vstack(cands) if cands else np.zeros((0, T), bool)
    return EV, cand, (EV.shape[0] / n if n else 1.0)


def _run_key(plan: RecommendPlan, frag: Fragment, lam: np.ndarray) -> str:
    spec = {"model": plan.model.content_hash, "catalogue": plan.offers.catalogue.record(), "top": plan.offers.top,
            "lam": [float(x) for x in lam], "id": plan.id_column, "kernel_contract": 2,
            "fragment": [frag.path, frag.row_groups, frag.stream_rows],
            "fingerprint": next(f.fingerprint() for f in plan.dataset.files if f.path == frag.path)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _one_pass(plan: RecommendPlan, committer: Any, lam: np.ndarray, keep: int, progress: Progress | None,
              reused: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Recommend every fragment into its staged part; the pass's exact tallies (and budget thresholds)."""
    from engine.jobs.partition import _PartWriter

    op = plan.offers
    T, _N = op.n_offers, op.top
    budgets = plan.budgets
    tracked = [j for j in range(T) if np.isfinite(budgets[j])]
    found: dict[int, list[np.ndarray]] = {j: [] for j in tracked}
    totals = {"customers": np.zeros(T, np.int64), "value": np.zeros(T), "eligible": np.zeros(T, np.int64),
              "owned": np.zeros(T, np.int64), "with_rule": np.zeros(T, np.int64), "rows_in": 0, "rows_out": 0,
              "null_ids": 0, "score_sum": 0.0,
              "customers_with_offer": 0, "rows_rejected": 0}
    parts = {}

    def run(frag: Fragment) -> dict[str, Any]:
        key = _run_key(plan, frag, lam)
        prior = reused.get(frag.index)
        if prior is not None and prior.get("run_key") == key and _written_by(str(committer.part_path(frag.index)), key,
                                                                          prior.get("rows_out", -1)) \
                and (not prior.get("rows_rejected")
                     or _written_by(str(committer.rejected_path(frag.index)), key, prior["rows_rejected"])):
            return prior | {"reused": True}
        return _fragment(plan, committer, frag, lam, keep, key, tracked, _PartWriter)

    # Fragments on threads: the kernels and Parquet run without the GIL; each writes its own part.
    threads = max(1, min(len(plan.fragments), plan.options.threads or os.cpu_count() or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="recommend") as pool:
        futures = [pool.submit(run, frag) for frag in plan.fragments]
        done = []
        for future in as_completed(futures):
            done.append(future.result())
            if progress is not None:
                progress.advance(1, rows=done[-1]["tally"]["rows_in"])
    for info in sorted(done, key=lambda i: i["index"]):
        parts[info["index"]] = info
        for name in ("customers", "value", "eligible", "owned", "with_rule"):
            totals[name] += np.asarray(info["tally"].get(name, np.zeros(T)), dtype=totals[name].dtype)
        for name in ("rows_in", "rows_out", "null_ids", "score_sum", "customers_with_offer", "rows_rejected"):
            totals[name] += info["tally"].get(name, 0)
        for j in tracked:
            found[j].extend(np.asarray(x) for x in info.get("thresholds", {}).get(str(j), []))
            _trim(found, j, budgets[j])
    totals["parts"] = parts
    totals["found"] = found
    return totals


def _written_by(path: str, key: str, rows: int) -> bool:
    from engine.jobs.score import _written_by as written

    return written(path, key, rows)


def _trim(found: dict[int, list[np.ndarray]], j: int, budget: float, slack: int = 2) -> None:
    """Keep only the B + 1 largest thresholds of offer j (all the price update reads)."""
    if not found[j]:
        return
    t = np.concatenate(found[j])
    k = int(budget) + 1
    if t.size > slack * k:
        t = -np.partition(-t, k - 1)[:k]
    found[j] = [t]


@dataclass(frozen=True)
class _BadRowTask:
    """What engine/jobs/partition.py's bad-row helpers read of a score task, for one recommend fragment."""

    id_column: str
    fragment: Fragment
    on_bad_rows: str
    rejected_path: str


def _fragment(plan: RecommendPlan, committer: Any, frag: Fragment, lam: np.ndarray, keep: int, key: str,
              tracked: list[int], writer_cls: Any) -> dict[str, Any]:
    from engine.jobs.drift_sample import DriftCounter, drift_stride
    from engine.jobs.partition import _bad_rows

    op = plan.offers
    T, N = op.n_offers, op.top
    part_path = str(committer.part_path(frag.index))
    ruled = op.catalogue.rules is not None
    writer = writer_cls(part_path, plan.settings.compression, key,
                        [plan.id_column, "offer", "reason", *(["rule"] if ruled else [])],
                        no_statistics=("reason", "rule") if ruled else ("reason",))
    # The bad-row policy is engine score's (docs/safety.md "Bad rows"): the score loop flags
    # rows with a ±inf or too large feature or a missing id; reject sets them aside in
    # _rejected/ (id, _file, _row, _column, _reason), fail stops the run, impute scores them.
    policy = plan.settings.on_bad_rows
    bad_task = _BadRowTask(plan.id_column, frag, policy, str(committer.rejected_path(frag.index)))
    rejected = writer_cls(bad_task.rejected_path, plan.settings.compression, key, ["_file", "_column", "_reason"])
    bad_by_column: dict[str, dict[str, int]] = {}
    first_bad: list[dict[str, Any]] = []
    drift = DriftCounter(plan.model, drift_stride(frag.num_rows))
    nulls = np.zeros(len(plan.model.features), dtype=np.int64)
    counts = {"infinite_values": 0}
    level_counts: dict[str, list[int]] = {}
    tally = {"customers": np.zeros(T, np.int64), "value": np.zeros(T), "eligible": np.zeros(T, np.int64),
             "owned": np.zeros(T, np.int64), "with_rule": np.zeros(T, np.int64), "rows_in": 0, "rows_out": 0,
             "null_ids": 0, "score_sum": 0.0, "customers_with_offer": 0, "rows_rejected": 0}
    thresholds: dict[int, list[np.ndarray]] = {j: [] for j in tracked}
    id_range = IdRange()   # the ids of the customers scored: duplicate ids for the privacy gate
    try:
        for table in _batches(plan, frag):
            row_base = tally["rows_in"]
            tally["rows_in"] += table.num_rows
            ids = table.column(plan.id_column)
            if ids.null_count and policy == "impute":
                # A row without an id cannot be told to anyone: left out, counted (with reject
                # or fail it is a bad row, as in engine score).
                tally["null_ids"] += ids.null_count
                import pyarrow.compute as pc

                table = table.filter(pc.is_valid(ids))
                ids = table.column(plan.id_column)
            res = recommend_block(table, plan.model, op, lam, id_column=plan.id_column,
                                  kernel=plan.options.kernel, keep=keep, flag_bad=policy != "impute",
                                  drift=drift, row_base=row_base)
            if res.bad is not None:
                tally["rows_rejected"] += int(res.bad.sum())
                _bad_rows(bad_task, res.scores, row_base, bad_by_column, first_bad, rejected, ids)  # type: ignore[arg-type]
            id_range.add(ids if res.bad is None else ids.filter(pa.array(~res.bad)))
            nulls += res.scores.nulls
            counts["infinite_values"] += int(res.scores.counts.get("infinite_values", 0))
            for name, counted in res.scores.level_counts.items():
                level_counts[name] = [a + b for a, b in zip(level_counts.get(name, [0] * len(counted)), counted)]
            if tracked:
                for j, t in bud.thresholds(res.idx, res.ev, lam, N, tracked).items():
                    thresholds[j].append(t)
            out = res.table
            writer.write(out)
            idx, ev = res.idx[:, :N], res.ev[:, :N]
            filled = idx >= 0
            got = idx[filled]
            tally["customers"] += res.customers
            tally["value"] += res.value
            tally["eligible"] += res.eligible
            tally["owned"] += res.owned
            if res.with_rule is not None:
                tally["with_rule"] += res.with_rule
            tally["rows_out"] += out.num_rows
            tally["customers_with_offer"] += int(filled[:, 0].sum())
            tally["score_sum"] += float(np.maximum(ev[filled] - lam[got], 0.0).sum())
        writer.commit()
        rows_rejected = rejected.commit()
        if not rows_rejected:
            # Rejected rows that an earlier run left for this part are not this run's.
            from engine.io.store import remove

            remove(bad_task.rejected_path)
    except BaseException:
        writer.abort()
        rejected.abort()
        raise
    info = {"index": frag.index, "part": part_path.rsplit("/", 1)[-1], "run_key": key, "rows_in": tally["rows_in"],
            "rows_out": tally["rows_out"], "rows_rejected": tally["rows_rejected"],
            "bad_rows_by_column": bad_by_column, "first_bad_rows": first_bad,
            "nulls_imputed": {f: int(n) for f, n in zip(plan.model.features, nulls) if n},
            "level_counts": level_counts, **counts, "drift_counts": drift.result(), "id_range": id_range.to_json(),
            "tally": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in tally.items()},
            "thresholds": {}}
    if rejected.digest is not None and rows_rejected:
        info["rejected_bytes"], info["rejected_sha256"] = rejected.digest
    for j, v in thresholds.items():
        if v:
            # Only the B + 1 largest thresholds matter to the price update: the sidecar stays small.
            _trim(thresholds, j, plan.budgets[j], slack=1)
            info["thresholds"][str(j)] = [np.concatenate(thresholds[j]).tolist()]
    if writer.digest is not None:
        info["bytes"], info["sha256"] = writer.digest
    put_bytes(str(committer.sidecar_path(frag.index)), json.dumps(info).encode())
    pause_for_tests(TEST_PAUSE_AFTER_PART)
    return info


def _prewarm_kernel() -> None:
    """Import numba and load the top-N kernel on a thread while the first fragments are read.

    About 0.4 s on the clock of a run otherwise (measured on the shared 2-core machine). A
    failure is not reported here: the first block compiles again and raises it.
    """
    import contextlib
    import threading

    def build() -> None:
        with contextlib.suppress(Exception):
            from kernels.topn_offers_cpu import warm

            warm()

    threading.Thread(target=build, name="engine-topn-prewarm", daemon=True).start()


def execute(plan: RecommendPlan, *, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a :class:`RecommendPlan`: price budgets, recommend every block, publish; returns the manifest."""
    from engine.io.commit import part_name
    from engine.jobs.score import _resume_hint, committer_for

    options = plan.options
    if options.kernel == "cpu":
        _prewarm_kernel()
    say = say or (lambda _m: None)
    op = plan.offers
    T, N = op.n_offers, op.top
    budgets = plan.budgets
    has_budgets = bool(np.isfinite(budgets).any())
    run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    lam = np.zeros(T)
    pricing: dict[str, Any] = {}
    t_price = time.perf_counter()
    if has_budgets:
        EV, cand, scale = _sample(plan)
        lam = bud.sample_prices(EV, cand, budgets, N, scale)
        pricing["sample_rows"] = int(EV.shape[0])
        pricing["sample_lambda"] = lam.tolist()
        say(f"budget prices from a sample of {EV.shape[0]:,} rows: "
            + ", ".join(f"{op.ids[j]}={lam[j]:.4g}" for j in range(T) if np.isfinite(budgets[j])))
    pricing["seconds_sample"] = time.perf_counter() - t_price
    keep = N + 1 if has_budgets and N < 26 else N
    with committer_for(plan.real_output, _score_options(options)) as committer, _resume_hint(committer):
        committer.prepare()
        reused = committer.finished_parts() if options.resume else {}
        passes = 0
        t0 = time.perf_counter()
        while True:
            passes += 1
            progress = Progress("recommend", len(plan.fragments), mode=options.progress,
                                total_rows=plan.dataset.num_rows, interval=plan.settings.progress_interval_s)
            try:
                totals = _one_pass(plan, committer, lam, keep, progress, reused)
            finally:
                progress.close()
            if not has_budgets:
                break
            final = passes >= bud.MAX_FULL_PASSES
            lam, over = bud.raise_prices(lam, totals["customers"], budgets, totals["found"], final)
            if not over:
                break
            say(f"pass {passes}: offer(s) {', '.join(op.ids[j] for j in over)} over budget; prices raised, "
                "running the pass again")
            reused = {}
        seconds = {"plan": t_price - plan.started, "pricing_sample": pricing["seconds_sample"],
                   "recommend": time.perf_counter() - t0}
        if totals["rows_in"] and totals["rows_rejected"] / totals["rows_in"] > plan.settings.max_rejected_fraction:
            # As engine score: staging stays, its _rejected/ holds the rejected rows' ids.
            from engine.io.commit import REJECTED
            from engine.jobs.score import _too_many_rejected

            raise _too_many_rejected(totals, plan.settings, f"{committer.staging}/{REJECTED}",
                                     [totals["parts"][f.index] for f in plan.fragments])
        manifest = _manifest(run_id, plan, totals, lam, passes, pricing, seconds)
        manifest["report"] = _write_report(committer, manifest, say)
        committer.publish(manifest, keep_parts={part_name(f.index) for f in plan.fragments} | {SCORE_REPORT})
    return manifest


def _manifest(run_id: str, plan: RecommendPlan, totals: dict[str, Any], lam: np.ndarray, passes: int,
              pricing: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    from engine.io.commit import REJECTED
    from engine.io.uri import shown

    op = plan.offers
    budgets = plan.budgets
    rows = totals["rows_in"] - totals["null_ids"] - totals["rows_rejected"]
    per_offer = []
    for j, offer in enumerate(op.catalogue.offers):
        got = int(totals["customers"][j])
        per_offer.append({
            "offer": offer.id, "customers": got, "expected_value": float(totals["value"][j]),
            "eligible_share": float(totals["eligible"][j] / rows) if rows else None,
            "owned_share": float(totals["owned"][j] / rows) if rows else None,
            "budget": offer.budget,
            "budget_used": got / offer.budget if offer.budget else None,
            "lambda": float(lam[j]) if lam[j] < bud.WITHDRAWN else None,
            "withdrawn": bool(lam[j] >= bud.WITHDRAWN),
            **({"rules": int(op.catalogue.rules.for_item(offer.rule_item).size),
                "with_rule": int(totals["with_rule"][j])} if op.catalogue.rules is not None else {}),
        })
    # Group statistics of fewer than the minimum customers (or their complement) are not
    # shown (engine/privacy.py); the same gate for the drift section.
    minimum = plan.settings.privacy_min_customers
    duplicates = _duplicate_rows(plan, totals["parts"])
    suppressed = gate_offer_statistics(per_offer, customers=rows, slack=duplicates, minimum=minimum)
    drift = _run_drift(plan, totals)
    privacy = gate_score_statistics(drift, {}, rows=rows, duplicate_rows=duplicates, null_ids=0, minimum=minimum)
    privacy["duplicate_rows"] = duplicates
    privacy["suppressed"] = suppressed + privacy["suppressed"]
    achieved = float(totals["value"].sum())
    budget_info = None
    if np.isfinite(budgets).any():
        bound = bud.dual_bound(totals["score_sum"], lam, budgets)
        budget_info = {"method": "Lagrangian dual prices (engine/offers/budgets.py)", "passes": passes,
                       "lambda": {op.ids[j]: float(lam[j]) for j in range(op.n_offers) if np.isfinite(budgets[j])},
                       "dual_bound": bound if np.isfinite(bound) else None, "achieved_value": achieved,
                       "gap": (bound - achieved) / bound if np.isfinite(bound) and bound > 0 else None,
                       "exceeded": [], **pricing}
    return {
        "run_id": run_id, "engine_version": __version__, "command": "recommend",
        "model": {"path": shown(plan.options.model), "content_hash": plan.model.content_hash},
        "input": {"path": plan.dataset.root, "files": plan.dataset.fingerprint()},
        "output": {"path": shown(plan.options.output)},
        "catalogue": op.catalogue.record() | {"source": op.catalogue.source},
        "top": op.top, "kernel": plan.options.kernel,
        "totals": {"rows_in": totals["rows_in"], "rows_null_id": totals["null_ids"],
                   "rows_rejected": totals["rows_rejected"], "on_bad_rows": plan.settings.on_bad_rows,
                   "rows_out": totals["rows_out"], "parts": len(plan.fragments),
                   "parts_reused": sum(1 for p in totals["parts"].values() if p.get("reused")),
                   "customers_with_offer": totals["customers_with_offer"],
                   "expected_value": achieved if enough(totals["customers_with_offer"]) else None},
        "offers": per_offer, "budgets": budget_info, "drift": drift, "privacy": privacy,
        "files": [{"name": p["part"], "rows": p["rows_out"], "bytes": p.get("bytes"), "sha256": p.get("sha256")}
                  for _, p in sorted(totals["parts"].items())]
        + [{"name": f"{REJECTED}/{p['part']}", "rows": p["rows_rejected"], "bytes": p.get("rejected_bytes"),
            "sha256": p.get("rejected_sha256")} for _, p in sorted(totals["parts"].items()) if p.get("rows_rejected")],
        "partitions": [{"part": p["part"], "rows_in": p["rows_in"], "rows_out": p["rows_out"],
                        "rows_rejected": p.get("rows_rejected", 0),
                        "bad_rows_by_column": p.get("bad_rows_by_column") or {},
                        "first_bad_rows": p.get("first_bad_rows") or []}
                       for _, p in sorted(totals["parts"].items())],
        "seconds": seconds | {"total": time.perf_counter() - plan.started},
    }


def _write_report(committer: Any, manifest: dict[str, Any], say: Callable[[str], None]) -> str | None:
    """``_report.html`` into staging (published with the parts); None, with a warning, if it cannot be
    drawn: a report must not cost the night's recommendations (as engine score's)."""
    import tempfile

    from engine.io.store_commit import StoreCommitter
    from engine.report.recommend_run import write_recommend_report

    try:
        if not isinstance(committer, StoreCommitter):
            write_recommend_report(manifest, committer.staging / SCORE_REPORT)
            return SCORE_REPORT
        with tempfile.TemporaryDirectory(prefix="engine-report-") as tmp:
            write_recommend_report(manifest, Path(tmp) / SCORE_REPORT)
            committer.put_staged_file(SCORE_REPORT, str(Path(tmp) / SCORE_REPORT))
        return SCORE_REPORT
    except Exception as exc:  # noqa: BLE001 - any drawing failure; the run goes on without a report
        say(f"warning: the run report could not be written ({type(exc).__name__}: {exc}); the recommendations "
            "are published without it")
        manifest["report_error"] = f"{type(exc).__name__}: {exc}"
        return None


def _duplicate_rows(plan: RecommendPlan, parts: dict[int, dict[str, Any]]) -> int:
    """Rows of the customers scored that repeat an id: exact, from the parts' id ranges
    (engine/io/id_ranges.py) where they do not overlap; the others' ids read again from the
    input and counted (rejected rows included there: a count that can only be larger)."""
    import pyarrow.compute as pc

    from engine.io.id_ranges import overlapping_parts

    rest, repeats, _ = overlapping_parts([parts[f.index].get("id_range") for f in plan.fragments])
    if not rest:
        return repeats
    chunks: list[pa.Array] = []
    for i in rest:
        for table in iter_fragment(plan.fragments[i], [plan.id_column], plan.dataset.partition_columns,
                                   batch_rows=plan.options.batch_rows):
            chunks.extend(c for c in table.column(0).chunks if len(c))
    if not chunks:
        return repeats
    ids = pa.chunked_array(chunks).drop_null()
    return repeats + len(ids) - int(pc.count_distinct(ids).as_py())


def _run_drift(plan: RecommendPlan, totals: dict[str, Any]) -> dict[str, Any]:
    """engine score's drift section for the run's features (the score loop's samples in each part);
    the propensity and segment entries of the model's primary head are left out (recommend
    publishes neither)."""
    from engine.jobs.score import _drift

    drift = _drift(plan.model, totals["parts"], plan.settings)
    drift.pop("propensity", None)
    drift.pop("segments", None)
    gone = {"propensity", "segment shares"}
    drift["alerts"] = [n for n in drift["alerts"] if n not in gone]
    drift["warnings"] = [n for n in drift["warnings"] if n not in gone]
    drift["reasons"] = {n: r for n, r in drift["reasons"].items() if n not in gone}
    return drift


def recommend(options: RecommendOptions, settings: Settings | None = None, *,
              say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Recommend offers for every customer of ``options.input``; returns the manifest."""
    return execute(plan_recommend(options, settings), say=say)
