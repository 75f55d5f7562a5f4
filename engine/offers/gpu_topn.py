"""``engine recommend --backend gpu``: the fused top-N kernel on the device, per block of the score loop.

Three pieces, split so that everything but the device call runs (and is tested) on CI:

* :func:`device_operands` folds an :class:`~engine.offers.recommend.OfferPlan` into the
  kernel's operands exactly as the CPU path hands them to its kernel (float64; no
  categorical columns: a one-row zero ``catW`` and ``+inf`` ``catbase``, which never win a
  reason), plus the mask encoding: which offers are restricted (a rule or an ownership
  test) and their row of the bit-packed mask. :func:`pack_block` packs one block's allowed
  vectors; :func:`check_levels` checks its level indices against ``catW``'s rows on the
  host before any launch.
* :class:`TopNStage` holds, once per process and plan, the operands on the device, the
  loaded kernel, a ring of page-locked staging slots (:mod:`engine.io.topn_device`, one
  per task thread as ``engine score``'s GPU stage has), one stream per slot and a cap on
  concurrent device work (``--gpu-tasks``); only the budgets' prices (``lam``) go up again,
  once per distinct price vector (once per pass). :class:`TwinStage` is the same interface
  on the host, running the NumPy twin over exactly the buffers that would be uploaded (CI).
* :class:`GpuTopN` is the block loop's consumer (``_TopN``'s GPU twin): per block it fills a
  leased slot (features, levels, packed mask), runs it and keeps ``idx``/``p``/``ev``/``reason``.

Imputation (NaN and ±inf read as the model's fill) happens in the kernel, as the CPU path
imputes: the same values reach the logits and the reasons. Never run on a GPU in the session
that wrote it (no device was lent); ``bench/device_check.sh`` runs its device tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from engine.offers.recommend import OfferPlan


@dataclass(frozen=True)
class DeviceSettings:
    """How a process's top-N stage is sized (from the run's settings; see :func:`device_settings`).

    ``block_rows``: rows per block and staging slot; ``concurrent``: kernels in flight at once
    (``--gpu-tasks``); ``slots``: staging slots (0: one per task thread of the process).
    """

    block_rows: int = 65_536
    concurrent: int = 2
    slots: int = 0


def device_settings(settings: Any, batch_rows: int) -> DeviceSettings:
    """The stage settings of a run (``--gpu-block-rows``, ``--gpu-tasks`` as engine score's): blocks
    of at most a batch (a block never exceeds one, so larger slots would only pin idle memory)."""
    return DeviceSettings(block_rows=max(1, min(int(settings.gpu_block_rows), int(batch_rows))),
                          concurrent=max(1, int(settings.gpu_tasks)),
                          slots=max(0, int(getattr(settings, "gpu_slots", 0) or 0)))


@dataclass(frozen=True)
class DeviceOperands:
    """The kernel's per-plan operands (host, float64, C-ordered) and the mask encoding."""

    W: np.ndarray          # (F, T)
    bias: np.ndarray       # (T,)
    catW: np.ndarray       # (n_levels, T); one zero row without categorical columns
    catbase: np.ndarray    # (max(1, Q), T); +inf without categorical columns (no reason candidates)
    value: np.ndarray
    cost: np.ndarray
    mean: np.ndarray       # (F,)
    fill: np.ndarray       # (F,) the imputation, done by the kernel
    min_ev: float
    n_cat: int
    restricted: tuple[int, ...]   # offers with a rule or an ownership test, in catalogue order
    mask_row: np.ndarray   # (T,) int32: -1, or the offer's row of the packed mask

    @property
    def n_features(self) -> int:
        return int(self.W.shape[0])

    @property
    def n_offers(self) -> int:
        return int(self.W.shape[1])

    @property
    def n_levels(self) -> int:
        return int(self.catW.shape[0])

    @property
    def key(self) -> str:
        """A content key: tasks unpickled in another process find the same stage."""
        h = hashlib.sha256()
        for a in (self.W, self.bias, self.catW, self.catbase, self.value, self.cost, self.mean, self.fill,
                  self.mask_row):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((self.min_ev, self.n_cat)).encode())
        return h.hexdigest()[:24]


def restricted_offers(plan: OfferPlan) -> tuple[int, ...]:
    """Offers that :func:`engine.offers.recommend.restrictions` gives a row vector: a rule or ``exclude_owned``."""
    return tuple(t for t, o in enumerate(plan.catalogue.offers) if o.rule is not None or o.exclude_owned)


def device_operands(plan: OfferPlan, n_cat: int) -> DeviceOperands:
    """``plan``'s operands as the GPU stage uploads them once (``n_cat``: the model's categorical columns)."""
    T = plan.n_offers

    def f64(a: Any) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float64)

    if n_cat and plan.catW is not None:
        catW = f64(plan.catW)
        catbase = f64(plan.catbase) if plan.catbase is not None else np.full((n_cat, T), np.inf)
    else:
        n_cat = 0
        catW, catbase = np.zeros((1, T)), np.full((1, T), np.inf)
    restricted = restricted_offers(plan)
    mask_row = np.full(T, -1, np.int32)
    mask_row[list(restricted)] = np.arange(len(restricted), dtype=np.int32)
    return DeviceOperands(f64(plan.W), f64(plan.bias), catW, catbase, f64(plan.value), f64(plan.cost), f64(plan.mean),
                          f64(plan.fill), float(plan.min_ev), n_cat, restricted, mask_row)


def check_levels(levels: np.ndarray | None, n: int, n_cat: int, n_levels: int) -> None:
    """A block's level indices must cover its ``n`` rows and index ``catW``'s ``n_levels`` rows.

    Checked on the host before a launch: the kernel reads ``catW[level, t]`` unchecked, and
    an index outside it would read another allocation (an earlier GPU kernel of this project did).
    """
    if n_cat == 0 or n == 0:
        return
    if levels is None or levels.ndim != 2 or levels.shape[1] != n_cat or levels.shape[0] < n:
        shape = None if levels is None else levels.shape
        raise ValueError(f"the plan has {n_cat} categorical column(s): pass their ({n}, {n_cat}) level indices, "
                         f"not {shape}")
    block = levels[:n]
    low, high = int(block.min()), int(block.max())
    if low < 0 or high >= n_levels:
        raise ValueError(f"level indices must lie in [0, {n_levels}) (the folded catW's rows); this block holds "
                         f"{low}..{high}")


def pack_block(vectors: dict[int, np.ndarray], restricted: tuple[int, ...], start: int, stop: int,
               out: np.ndarray) -> None:
    """Pack rows ``[start, stop)`` of each restricted offer's allowed vector into ``out[r, :]``
    (8 rows a byte, ``bitorder="little"``: the kernel's encoding, see :func:`kernels.topn_offers.pack_allowed`).

    An offer without a vector (no rule applies to the table) is allowed on every row.
    """
    width = (stop - start + 7) // 8
    for r, t in enumerate(restricted):
        ok = vectors.get(t)
        if ok is None:
            out[r, :width] = 0xFF
        else:
            out[r, :width] = np.packbits(ok[start:stop], bitorder="little")


class TopNLease(Protocol):
    """A borrowed slot: fill ``X[:n]``, ``levels[:n]`` and ``packed[:, :(n+7)//8]``, then :meth:`run`."""

    X: np.ndarray
    levels: np.ndarray
    packed: np.ndarray

    def run(self, n: int, prices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...

    def __enter__(self) -> TopNLease: ...

    def __exit__(self, *exc: object) -> None: ...


class Stage(Protocol):
    operands: DeviceOperands
    block_rows: int
    keep: int

    def prices(self, lam: np.ndarray) -> Any: ...

    def lease(self) -> TopNLease: ...


class _HostLease:
    def __init__(self, stage: TwinStage) -> None:
        self._stage = stage
        rows, ops = stage.block_rows, stage.operands
        self.X = np.zeros((rows, ops.n_features), order="F")
        self.levels = np.zeros((rows, ops.n_cat), np.int32)
        self.packed = np.zeros((max(1, len(ops.restricted)), (rows + 7) // 8), np.uint8)

    def run(self, n: int, prices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from kernels.topn_offers import topn_offers, unpack_allowed

        ops = self._stage.operands
        check_levels(self.levels, n, ops.n_cat, ops.n_levels)
        allowed = unpack_allowed(self.packed, ops.mask_row, n)
        levels = self.levels[:n] if ops.n_cat else None
        return topn_offers(self.X[:n], levels, ops.W, ops.bias, ops.catW if ops.n_cat else None, ops.value, ops.cost,
                           prices, allowed, ops.min_ev, self._stage.keep, ops.mean,
                           ops.catbase if ops.n_cat else None, fill=ops.fill)

    def __enter__(self) -> _HostLease:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class TwinStage:
    """:class:`TopNStage`'s interface on the host: the NumPy twin over the buffers a slot uploads.

    What CI runs in place of the device: the operands, the packed mask (read back through
    the kernel's twin, :func:`kernels.topn_offers.unpack_allowed`), the level check and the
    in-kernel imputation are the GPU path's; only the launch is the twin's.
    """

    def __init__(self, operands: DeviceOperands, *, block_rows: int, keep: int) -> None:
        self.operands, self.block_rows, self.keep = operands, max(1, int(block_rows)), keep

    def prices(self, lam: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(lam, dtype=np.float64)

    def lease(self) -> _HostLease:
        return _HostLease(self)


class TopNStage:
    """The top-N kernel's per-process device resources; see the module docstring."""

    def __init__(self, operands: DeviceOperands, *, block_rows: int, keep: int, concurrent: int = 2,
                 slots: int = 0, pin: bool = True) -> None:
        import cupy as cp

        from engine.backends.gpu_stage import slot_count
        from engine.io.device import slot_rows
        from engine.io.topn_device import TopNSlot, upload_arrays
        from kernels import _loader

        if concurrent < 1:
            raise ValueError(f"concurrent must be at least 1, got {concurrent}")
        self._cp = cp
        self.operands, self.keep = operands, keep
        self.device_id = int(cp.cuda.runtime.getDevice())
        self.block_rows = slot_rows(block_rows, max(1, operands.n_features))
        ops = operands
        made: list[TopNSlot] = []
        # Registered pages are unlocked with the stage (an evicted stage's slots are freed
        # memory: they must not stay page-locked), also if the rest of this fails.
        self._finalizer = weakref.finalize(self, _release_slots, cp, made)
        with cp.cuda.Device(self.device_id):
            try:
                for _ in range(slot_count(concurrent, slots)):
                    made.append(TopNSlot.allocate(cp, self.block_rows, ops.n_features, ops.n_cat,
                                                  len(ops.restricted), keep, pin=pin))
                # The plan's operands go up once, on the stage's own non-blocking stream (never the
                # legacy default stream, which would serialise with every slot's), then wait.
                self._setup = cp.cuda.Stream(non_blocking=True)
                self._dev = upload_arrays(cp, {name: getattr(ops, name) for name in (
                    "W", "bias", "catW", "catbase", "value", "cost", "mean", "fill", "mask_row")}, self._setup)
                # Compile (NVRTC) or load the kernel now, on the stage's clock, not the first block's.
                _loader.get_kernel("topn_offers", "engine_topn_offers_f64")
            except BaseException:
                self._finalizer()
                raise
        self.slots = tuple(made)
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for slot in made:
            self._free.put(slot)
        self._turns = threading.BoundedSemaphore(concurrent)
        self._prices: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def prices(self, lam: np.ndarray) -> Any:
        """``lam`` on the device: uploaded once per distinct price vector (a pass), kept for a few passes."""
        cp = self._cp
        lam = np.ascontiguousarray(lam, dtype=np.float64)
        key = lam.tobytes()
        with self._lock:
            dev = self._prices.get(key)
            if dev is None:
                from engine.io.topn_device import upload_arrays

                with cp.cuda.Device(self.device_id):
                    dev = upload_arrays(cp, {"lam": lam}, self._setup)["lam"]
                self._prices[key] = dev
                # Passes run one after another: the few kept are never in use by a later pass's kernel.
                while len(self._prices) > 4:
                    self._prices.popitem(last=False)
            return dev

    def lease(self) -> _DeviceLease:
        """Borrow a staging slot, waiting while every slot is lent."""
        return _DeviceLease(self, self._free.get())

    def _run(self, slot: Any, n: int, prices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from engine.io.device import waited_on_error
        from kernels.topn_offers import launch_topn_offers

        cp, ops, d = self._cp, self.operands, self._dev
        if not 0 <= n <= slot.rows:
            raise ValueError(f"n must be between 0 and {slot.rows}, got {n}")
        check_levels(slot.levels, n, ops.n_cat, ops.n_levels)
        if n == 0:
            empty = np.zeros((0, self.keep))
            return (empty.astype(np.int32), empty.astype(np.float32), empty, empty.astype(np.int32))
        with self._turns, cp.cuda.Device(self.device_id), slot.stream, waited_on_error(slot):
            up = slot.upload(cp, n)
            out = slot.device_outputs(n)
            launch_topn_offers(up["X"], up["levels"], d["W"], d["bias"], d["catW"], d["value"], d["cost"],
                               prices, up["packed"], d["mask_row"], ops.min_ev, self.keep, d["mean"],
                               d["catbase"], d["fill"], out["idx"], out["p"], out["ev"], out["reason"],
                               n_levels=ops.n_levels)
            slot.download(cp, n)
            slot.wait()
        return slot.results(n)

    def _give_back(self, slot: Any) -> None:
        self._free.put(slot)


def _release_slots(cp: Any, slots: list[Any]) -> None:
    for slot in slots:
        slot.release(cp)


class _DeviceLease:
    def __init__(self, stage: TopNStage, slot: Any) -> None:
        self._stage, self._slot = stage, slot
        self.X, self.levels, self.packed = slot.X, slot.levels, slot.packed

    def run(self, n: int, prices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._stage._run(self._slot, n, prices)

    def __enter__(self) -> _DeviceLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stage._give_back(self._slot)


class _StageCache:
    """One :class:`TopNStage` per (operands, keep, settings) in this process (the last few kept)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._stages: OrderedDict[tuple[Any, ...], TopNStage] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, operands: DeviceOperands, keep: int, settings: DeviceSettings) -> TopNStage:
        key = (operands.key, keep, settings)
        with self._lock:   # concurrent first requests build one stage; the others wait
            stage = self._stages.get(key)
            if stage is None:
                stage = TopNStage(operands, block_rows=settings.block_rows, keep=keep,
                                  concurrent=settings.concurrent, slots=settings.slots)
                self._stages[key] = stage
                while len(self._stages) > self.size:
                    self._stages.popitem(last=False)
            self._stages.move_to_end(key)
            return stage


#: This process's top-N stages (the embedded runner's threads, or one Dask worker's).
STAGES = _StageCache()


def get_stage(plan: OfferPlan, n_cat: int, keep: int, settings: DeviceSettings) -> TopNStage:
    """This process's stage for ``plan`` (built on first use)."""
    return STAGES.get(device_operands(plan, n_cat), keep, settings)


def prewarm(plan: OfferPlan, n_cat: int, keep: int, settings: DeviceSettings) -> threading.Thread:
    """Build this process's stage on a background thread while the run reads its first fragments
    (CUDA context, page-locked slots, operands, kernel compile). A failure is not reported here:
    the first block asks for the same stage and raises it."""
    def build() -> None:
        with contextlib.suppress(Exception):
            get_stage(plan, n_cat, keep, settings)

    thread = threading.Thread(target=build, name="engine-topn-gpu-prewarm", daemon=True)
    thread.start()
    return thread


class GpuTopN:
    """The per-block consumer of :func:`engine.jobs.blocks.score_table` on a :class:`Stage`:
    the GPU twin of ``engine.offers.recommend._TopN`` (same attributes ``idx``, ``p``, ``ev``, ``why``)."""

    def __init__(self, n: int, plan: OfferPlan, vectors: dict[int, np.ndarray], lam: np.ndarray, keep: int,
                 stage: Stage) -> None:
        if stage.keep != keep:
            raise ValueError(f"the stage keeps {stage.keep} slots per row, not {keep}")
        self.plan, self.vectors, self.keep, self.stage = plan, vectors, keep, stage
        self.block_rows = stage.block_rows
        self.prices = stage.prices(lam)
        self.idx = np.empty((n, keep), np.int32)
        self.p = np.empty((n, keep), np.float32)
        self.ev = np.empty((n, keep), np.float64)
        self.why = np.empty((n, keep), np.int32)

    def __call__(self, block: Any) -> None:
        a, b = block.start, block.stop
        n = b - a
        ops = self.stage.operands
        if n > self.block_rows:
            raise ValueError(f"a block of {n} rows does not fit the stage's {self.block_rows}-row slots")
        check_levels(block.levels, n, ops.n_cat, ops.n_levels)
        with self.stage.lease() as lease:
            lease.X[:n] = block.X
            if ops.n_cat:
                lease.levels[:n] = block.levels[:n]
            pack_block(self.vectors, ops.restricted, a, b, lease.packed)
            idx, p, ev, why = lease.run(n, self.prices)
        self.idx[a:b], self.p[a:b], self.ev[a:b], self.why[a:b] = idx, p, ev, why


def gpu_consumer(n: int, model: Any, plan: OfferPlan, vectors: dict[int, np.ndarray], lam: np.ndarray, keep: int,
                 device: DeviceSettings | Stage | None = None) -> GpuTopN:
    """The consumer of one table: on this process's stage for ``device`` settings (default
    :class:`DeviceSettings`), or on ``device`` itself when it is a stage (:class:`TwinStage` in tests)."""
    if device is None or isinstance(device, DeviceSettings):
        stage: Stage = get_stage(plan, len(model.categoricals), keep, device or DeviceSettings())
    else:
        stage = device
    return GpuTopN(n, plan, vectors, lam, keep, stage)
