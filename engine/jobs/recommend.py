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

Each fragment is one task (:mod:`engine.jobs.recommend_tasks`: read, bad-row flags,
top-N, write the staged part and its sidecar), run where engine score's tasks run
(:func:`engine.cluster.open_runner`): threads of this process by default, a local Dask
cluster with ``--workers N``, an existing one with ``--scheduler``. Each batch goes through
:func:`engine.offers.recommend.recommend_block`, the function ``Model.recommend`` calls, so
the API and the CLI agree by construction; the budgets' sample and every full pass are maps
over the fragments whose results the client sums in fragment order, so a cluster run
publishes the bytes a local run does.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine import __version__
from engine.backends import resolve_backend
from engine.cluster import ThreadRunner, open_runner, uses_distributed
from engine.config import Settings
from engine.errors import InputError, UsageError
from engine.io.dataset import Fragment, InputDataset, discover, iter_fragment, plan_fragments
from engine.io.uri import Location, check, is_remote, parse
from engine.jobs.progress import MODES, Progress
from engine.jobs.recommend_tasks import (
    TALLY_COUNTS,
    TALLY_VECTORS,
    FragmentTask,
    SampleTask,
    empty_tally,
    pairs_from_json,
    recommend_fragment,
    sample_fragment,
)
from engine.models.artifact import ScoringModel, load_model
from engine.offers import budgets as bud
from engine.offers.catalogue import load_catalogue
from engine.offers.recommend import OfferPlan, check_input, prepare
from engine.privacy import enough, gate_offer_statistics, gate_score_statistics, min_customers
from engine.report import SCORE_REPORT
from kernels.topn_offers import MAX_KEEP

#: A pass after one whose offers were over budget by more than this share of their budgets
#: (summed) only counts: the cuts' overflows shrink some 4-fold a pass, so it will be over again.
COUNT_ONLY_EXCESS = 0.02
#: Rows of the sample the budget prices are first found on.
BUDGET_SAMPLE_ROWS = bud.SAMPLE_ROWS
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
    seed: int = bud.SAMPLE_SEED
    kernel: str = "cpu"           # "cpu" (compiled) or "numpy" (the twin; tests and benchmarks; CPU backend only)
    batch_rows: int = BATCH_ROWS
    sample_rows: int = BUDGET_SAMPLE_ROWS
    threads: int | None = None    # fragments at once in this process (default: engine score's runner)
    backend: str = "auto"         # auto | cpu | gpu, as engine score's --backend (engine.backends.resolve_backend)


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
    backend: str = "cpu"          # resolved: "cpu" or "gpu"

    @property
    def kernel(self) -> str:
        """The top-N kernel the tasks run: "gpu" on the GPU backend, else the option's ("cpu" or "numpy")."""
        return "gpu" if self.backend == "gpu" else self.options.kernel

    def device_settings(self) -> Any:
        """The GPU top-N stage's settings of this run's tasks (None on the CPU)."""
        if self.backend != "gpu":
            return None
        from engine.offers.gpu_topn import device_settings

        return device_settings(self.settings, self.options.batch_rows)

    @property
    def budgets(self) -> np.ndarray:
        return self.offers.budgets

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
            "backend": self.backend, "kernel": self.kernel,
            "cluster": _cluster_text(self.settings, self.backend),
        }


def _cluster_text(settings: Settings, backend: str) -> str:
    from engine.jobs.score import _cluster_text as text

    return text(settings, backend)


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
    if options.kernel == "numpy" and options.backend == "gpu":
        raise UsageError("kernel='numpy' is the CPU twin of the top-N kernel: it runs on the CPU backend, not --backend gpu")
    for flag, value in (("--input", options.input), ("--model", options.model), ("--output", options.output)):
        check(value, flag)
    # As engine score's: auto picks the GPU when one is usable; gpu without one is exit 7 (BackendError).
    backend = "cpu" if options.kernel == "numpy" else resolve_backend(options.backend)
    if options.threads and uses_distributed(settings, backend):
        # Not silently ignored: the tasks would run on the cluster's threads, not this many.
        raise UsageError(f"threads={options.threads} sizes this process's pool of tasks, and --scheduler/--workers "
                         "run them on a Dask cluster: give --threads-per-worker (a local cluster's workers) or start "
                         "the workers with `dask worker --nthreads N`, not both")
    if options.top is not None and not 1 <= options.top <= 25:
        raise UsageError(f"--top must be from 1 to 25, not {options.top}")
    real_output = check_output(_score_options(options))
    model = load_model(options.model)
    catalogue = load_catalogue(options.offers) if options.offers else None
    offer_plan = prepare(model, catalogue, options.top)
    id_column = options.id_column or model.id_column
    # Workers of an attached cluster run in their own working directory: give them absolute paths.
    dataset = discover(Path(parse(options.input, "--input")).absolute()
                       if settings.scheduler and not is_remote(options.input) else options.input)
    schema = pa.schema(list(dataset.files[0].schema)
                       + [pa.field(k, t) for k, t in dataset.partition_columns.items()
                          if k not in dataset.files[0].schema.names])
    check_input(schema, model, offer_plan, id_column, dataset.root)
    if dataset.num_rows == 0:
        raise InputError(f"input {dataset.root} holds no rows")
    fragments = plan_fragments(dataset, settings.partition_rows)
    state = committer_for(real_output, _score_options(options)).inspect()
    return RecommendPlan(options, settings, model, offer_plan, id_column, dataset, fragments, state, real_output,
                         started=t0, backend=backend)


def _columns(plan: RecommendPlan) -> list[str]:
    cat = plan.offers.catalogue
    owned = [o.target for o in cat.offers if o.exclude_owned]
    return list(dict.fromkeys([plan.id_column, *plan.model.columns, *cat.rule_columns(), *owned]))


def _sample(plan: RecommendPlan, runner: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """EV and candidate matrices ``(m, T)`` of a uniform sample of rows (every fragment's share,
    drawn by the fragment's own task: :func:`engine.jobs.recommend_tasks.sample_fragment`)."""
    n = plan.dataset.num_rows
    share = min(1.0, plan.options.sample_rows / max(n, 1))
    tasks = [SampleTask(frag, plan.model, plan.offers, tuple(_columns(plan)), plan.dataset.partition_columns,
                        plan.options.batch_rows, share, plan.options.seed, plan.id_column,
                        plan.settings.on_bad_rows != "impute") for frag in plan.fragments]
    results = runner.map(sample_fragment, tasks, "recommend-sample")   # in fragment order, whatever ran them
    T = plan.offers.n_offers
    EV = np.vstack([np.zeros((0, T)), *(ev for ev, _ in results)])
    cand = np.vstack([np.zeros((0, T), bool), *(c for _, c in results)])
    return EV, cand, (EV.shape[0] / n if n else 1.0)


def _run_key(plan: RecommendPlan, frag: Fragment, lam: np.ndarray, cuts: bud.Cuts) -> str:
    spec = {"model": plan.model.content_hash, "catalogue": plan.offers.catalogue.record(), "top": plan.offers.top,
            "lam": [float(x) for x in lam], "cuts": cuts.record(), "id": plan.id_column, "kernel_contract": 3,
            # The GPU's EVs differ from the CPU kernel's in the last bits: parts are not mixed.
            **({"backend": "gpu"} if plan.backend == "gpu" else {}),
            "fragment": [frag.path, frag.row_groups, frag.stream_rows],
            "fingerprint": next(f.fingerprint() for f in plan.dataset.files if f.path == frag.path)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tasks(plan: RecommendPlan, committer: Any, lam: np.ndarray, cuts: bud.Cuts, keep: int,
           write: bool = True) -> list[FragmentTask]:
    """One task per fragment: paths and values only (what a worker process needs)."""
    columns = tuple(_columns(plan))
    return [FragmentTask(fragment=frag, model=plan.model, offers=plan.offers, id_column=plan.id_column,
                         columns=columns, partition_types=plan.dataset.partition_columns,
                         batch_rows=plan.options.batch_rows, kernel=plan.kernel, device=plan.device_settings(),
                         compression=plan.settings.compression, on_bad_rows=plan.settings.on_bad_rows,
                         lam=lam, cuts=cuts, write=write, keep=keep, budgets=plan.budgets,
                         run_key=_run_key(plan, frag, lam, cuts),
                         part_path=str(committer.part_path(frag.index)),
                         rejected_path=str(committer.rejected_path(frag.index)),
                         sidecar_path=str(committer.sidecar_path(frag.index)))
            for frag in plan.fragments]


def _reusable(task: FragmentTask, prior: dict[str, Any] | None) -> bool:
    """Whether an interrupted run's part (its sidecar ``prior``) is exactly what ``task`` would write."""
    if prior is None or prior.get("run_key") != task.run_key:
        return False
    if not _written_by(task.part_path, task.run_key, prior.get("rows_out", -1)):
        return False
    return not prior.get("rows_rejected") or _written_by(task.rejected_path, task.run_key, prior["rows_rejected"])


def _one_pass(plan: RecommendPlan, runner: Any, committer: Any, lam: np.ndarray, cuts: bud.Cuts, keep: int,
              reused: dict[int, dict[str, Any]], say: Callable[[str], None], write: bool = True) -> dict[str, Any]:
    """Recommend every fragment into its staged part; the pass's exact tallies (and budget thresholds).

    Parts of an interrupted run written under the same run key are reused (checked here, on
    the client, from their footers, as engine score's ``--resume``); the others run as tasks
    on ``runner``. Progress counts what this pass runs.
    """
    T = plan.offers.n_offers
    budgets = plan.budgets
    tracked = [j for j in range(T) if np.isfinite(budgets[j])]
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    totals = empty_tally(T)
    tasks = _tasks(plan, committer, lam, cuts, keep, write)
    done = [reused[t.fragment.index] | {"reused": True} for t in tasks if _reusable(t, reused.get(t.fragment.index))]
    if done:
        say(f"resuming: {len(done)} of {len(tasks)} part(s) ({sum(i['rows_in'] for i in done):,} rows) reused "
            "from the interrupted run")
    have = {info["index"] for info in done}
    todo = [t for t in tasks if t.fragment.index not in have]
    progress = Progress("recommend", len(todo), mode=plan.options.progress,
                        total_rows=sum(t.fragment.num_rows for t in todo),
                        interval=plan.settings.progress_interval_s)
    try:
        done += runner.map(recommend_fragment, todo, "recommend",
                           on_result=lambda info: progress.advance(1, rows=info["tally"]["rows_in"]))
    finally:
        progress.close()
    parts = {}
    # Summed in fragment order, whatever ran the tasks and in what order they finished.
    for info in sorted(done, key=lambda i: i["index"]):
        parts[info["index"]] = info
        for name in TALLY_VECTORS:
            totals[name] += np.asarray(info["tally"].get(name, np.zeros(T)), dtype=totals[name].dtype)
        for name in TALLY_COUNTS:
            totals[name] += info["tally"].get(name, 0)
        for j in tracked:
            doc = info.get("thresholds", {}).get(str(j))
            if doc:
                pairs = pairs_from_json(doc)
                found[j] = bud.merge_pairs([found[j], pairs], budgets[j]) if j in found else pairs
    totals["parts"] = parts
    totals["found"] = found
    return totals


def _written_by(path: str, key: str, rows: int) -> bool:
    from engine.jobs.score import _written_by as written

    return written(path, key, rows)


def _prewarm_kernel() -> None:
    """Load the top-N kernel and the block scan on a thread while the first fragments are read
    (:func:`engine.jobs.prewarm.start_recommend_kernels`; the CLI starts it before its imports)."""
    from engine.jobs.prewarm import start_recommend_kernels

    start_recommend_kernels()


def execute(plan: RecommendPlan, *, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a :class:`RecommendPlan`: price budgets, recommend every block, publish; returns the manifest.

    The tasks run where :func:`engine.cluster.open_runner` puts them (threads of this process,
    or a Dask cluster with ``--workers``/``--scheduler``), exactly as engine score's; the
    client sums their tallies, updates the prices and commits.
    """
    from engine.io.commit import part_name
    from engine.jobs.score import _resume_hint, committer_for

    options, settings = plan.options, plan.settings
    distributed = uses_distributed(settings, plan.backend)
    if plan.kernel == "cpu" and not distributed:
        _prewarm_kernel()
    say = say or (lambda _m: None)
    op = plan.offers
    T, N = op.n_offers, op.top
    budgets = plan.budgets
    has_budgets = bool(np.isfinite(budgets).any())
    run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    lam = np.zeros(T)
    scale = 1.0
    cuts = bud.Cuts()
    pricing: dict[str, Any] = {}
    # With budgets, two slots more than the top N: the next score (the thresholds) and room
    # for a row that drops two cut offers (engine.offers.budgets.apply_cuts).
    keep = min(N + 2, MAX_KEEP) if has_budgets else N
    if plan.backend == "gpu" and not distributed:
        # The tasks run in this process: its one GPU, then the stage (CUDA context, pinned
        # slots, operands, kernel) built while the first fragments are read.
        from engine.cluster import pin_single_gpu
        from engine.offers.gpu_topn import prewarm

        pin_single_gpu(settings)
        prewarm(op, len(plan.model.categoricals), keep, plan.device_settings())
    with committer_for(plan.real_output, _score_options(options)) as committer, _resume_hint(committer):
        staged = len(committer.finished_parts())
        if staged and not options.resume:
            say(f"discarding {staged} staged part(s) of an interrupted run on {options.output}; "
                "rerun with --resume to reuse parts of the same input, model, catalogue and prices instead")
        committer.prepare()
        reused = committer.finished_parts() if options.resume else {}
        t_cluster = time.perf_counter()
        with _runner(plan, say) as runner:
            # The root alone is not enough: an unmounted share still leaves its empty mount point.
            probe = list(dict.fromkeys([plan.dataset.root, plan.fragments[0].path, plan.fragments[-1].path]))
            runner.ready(probe, [str(committer.staging)])
            t_price = time.perf_counter()
            if has_budgets:
                EV, cand, scale = _sample(plan, runner)
                lam = bud.sample_prices(EV, cand, budgets, N, scale)
                pricing["sample_rows"] = int(EV.shape[0])
                # Which offers the sample prices, not the prices: each is one sampled customer's threshold.
                say(f"budget prices from a sample of {EV.shape[0]:,} rows; priced: "
                    + (", ".join(op.ids[j] for j in range(T) if 0 < lam[j] < bud.WITHDRAWN) or "none"))
            pricing["seconds_sample"] = time.perf_counter() - t_price
            passes = counted = 0
            # A pass that will most likely find an offer over budget only counts (no parts
            # written): the first one after a part of the rows priced the budgets (its prices
            # let in more on purpose: engine.offers.budgets.sample_cap), and one after a pass
            # whose offers were over by more than COUNT_ONLY_EXCESS of their budgets.
            write = not (has_budgets and scale < 1.0 and bool(((lam > 0) & (lam < bud.WITHDRAWN)).any()))
            t0 = time.perf_counter()
            while True:
                passes += 1
                counted += not write
                totals = _one_pass(plan, runner, committer, lam, cuts, keep, reused, say, write=write)
                if not has_budgets:
                    break
                final = passes >= bud.MAX_FULL_PASSES
                excess = totals["customers"] - budgets
                lam, cuts, over = bud.raise_prices(lam, cuts, totals["customers"], budgets, totals["found"], final)
                if not over:
                    if write:
                        break
                    # Counted, and nothing over: the same prices once more, writing the parts.
                    write = True
                    say(f"pass {passes} counted: no offer over budget; writing")
                    continue
                write = bool(excess[over].sum() <= COUNT_ONLY_EXCESS * budgets[over].sum())
                say(f"pass {passes}: offer(s) {', '.join(op.ids[j] for j in over)} over budget; prices raised, "
                    + ("running the pass again" if write else "counting again"))
                # The interrupted run's parts stay offered to the next passes: a budgeted run
                # from a sample counts first, and its parts were written under a later pass's
                # prices. A part is reused only under its own run key (prices and cuts), its
                # footer checked: one this run has rewritten since no longer matches.
        # cluster: starting or reaching the Dask cluster and checking its workers (0 on threads).
        seconds = {"plan": t_cluster - plan.started, "cluster": t_price - t_cluster,
                   "pricing_sample": pricing["seconds_sample"],
                   "recommend": time.perf_counter() - t0}
        if totals["rows_in"] and totals["rows_rejected"] / totals["rows_in"] > settings.max_rejected_fraction:
            # As engine score: staging stays, its _rejected/ holds the rejected rows' ids.
            from engine.io.commit import REJECTED
            from engine.jobs.score import _too_many_rejected

            raise _too_many_rejected(totals, settings, f"{committer.staging}/{REJECTED}",
                                     [totals["parts"][f.index] for f in plan.fragments])
        manifest = _manifest(run_id, plan, totals, lam, passes, pricing | {
            "cut_offers": [op.ids[j] for j in sorted(cuts.level)], "passes_counting_only": counted}, seconds)
        manifest["report"] = _write_report(committer, manifest, say)
        committer.publish(manifest, keep_parts={part_name(f.index) for f in plan.fragments} | {SCORE_REPORT})
    return manifest


@contextlib.contextmanager
def _runner(plan: RecommendPlan, say: Callable[[str], None]) -> Iterator[Any]:
    """engine score's runner (:func:`engine.cluster.open_runner`, on the run's backend); ``options.threads``
    sizes the in-process pool where no cluster is asked for (benchmarks)."""
    if plan.options.threads and not uses_distributed(plan.settings, plan.backend):
        if plan.backend == "gpu":
            from engine.cluster import pin_single_gpu

            pin_single_gpu(plan.settings)
        yield ThreadRunner(plan.options.threads)
        return
    with open_runner(plan.settings, plan.backend, say=say) as runner:
        yield runner


def _manifest(run_id: str, plan: RecommendPlan, totals: dict[str, Any], lam: np.ndarray, passes: int,
              pricing: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    from engine.io.commit import REJECTED
    from engine.io.uri import shown

    op = plan.offers
    budgets = plan.budgets
    rows = totals["rows_in"] - totals["null_ids"] - totals["rows_rejected"]
    minimum = plan.settings.privacy_min_customers
    # Prices as shown: the mean of the marginal customers' thresholds, never one customer's.
    prices = [bud.shown_price(float(lam[j]), totals["found"].get(j, (np.zeros(0),))[0], min_customers(minimum))
             if np.isfinite(budgets[j]) else 0.0 for j in range(op.n_offers)]
    hidden = [op.ids[j] for j in range(op.n_offers) if np.isfinite(budgets[j]) and lam[j] < bud.WITHDRAWN
              and prices[j] is None]
    per_offer = []
    for j, offer in enumerate(op.catalogue.offers):
        got = int(totals["customers"][j])
        per_offer.append({
            "offer": offer.id, "customers": got, "expected_value": float(totals["value"][j]),
            "eligible_share": float(totals["eligible"][j] / rows) if rows else None,
            "owned_share": float(totals["owned"][j] / rows) if rows else None,
            "budget": offer.budget,
            "budget_used": got / offer.budget if offer.budget else None,
            "lambda": prices[j],
            "withdrawn": bool(lam[j] >= bud.WITHDRAWN),
            **({"rules": int(op.catalogue.rules.for_item(offer.rule_item).size),
                "with_rule": int(totals["with_rule"][j])} if op.catalogue.rules is not None else {}),
        })
    # Group statistics of fewer than the minimum customers (or their complement) are not
    # shown (engine/privacy.py); the same gate for the drift section.
    duplicates = _duplicate_rows(plan, totals["parts"])
    suppressed = gate_offer_statistics(per_offer, customers=rows, slack=duplicates, minimum=minimum)
    drift = _run_drift(plan, totals)
    privacy = gate_score_statistics(drift, {}, rows=rows, duplicate_rows=duplicates, null_ids=0, minimum=minimum)
    privacy["duplicate_rows"] = duplicates
    privacy["suppressed"] = suppressed + privacy["suppressed"] + [
        f"offer {o}: budget price (fewer than {2 * min_customers(minimum)} customers given it)" for o in hidden]
    achieved = float(totals["value"].sum())
    budget_info = None
    if np.isfinite(budgets).any():
        bound = bud.shown_bound(bud.dual_bound(totals["score_sum"], lam, budgets))
        budget_info = {"method": "Lagrangian dual prices (engine/offers/budgets.py)", "passes": passes,
                       "lambda": {op.ids[j]: prices[j] for j in range(op.n_offers) if np.isfinite(budgets[j])},
                       "dual_bound": bound if np.isfinite(bound) else None, "achieved_value": achieved,
                       "gap": (bound - achieved) / bound if np.isfinite(bound) and bound > 0 else None,
                       "exceeded": [], **pricing}
    return {
        "run_id": run_id, "engine_version": __version__, "command": "recommend",
        "model": {"path": shown(plan.options.model), "content_hash": plan.model.content_hash},
        "input": {"path": plan.dataset.root, "files": plan.dataset.fingerprint()},
        "output": {"path": shown(plan.options.output)},
        "catalogue": op.catalogue.record() | {"source": op.catalogue.source},
        "top": op.top, "kernel": plan.kernel,
        # Which backend ran (as engine score's manifest says) and what was asked: "auto" that
        # found no usable GPU reads backend "cpu", backend_requested "auto".
        "backend": plan.backend, "backend_requested": plan.options.backend,
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
        "partitions": [{"part": p["part"], "worker": p.get("worker"), "rows_in": p["rows_in"], "rows_out": p["rows_out"],
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
