"""The GPU device stage: one per process and model, shared by every task of the process.

Made once (by the process's stage cache, prewarmed on a background thread when a run
starts) and then only borrowed, it holds what the H200 measurements showed must not be
made per task: the model's parameters on the device, the loaded kernel, a bounded ring of
page-locked staging slots (engine/io/device.py), one non-blocking stream per slot, and a
cap on concurrent device work (``concurrent``, 2 by default as in spark-rapids). A task
borrows a slot (:meth:`GpuStage.lease`), fills its host matrix straight from Arrow, and
:meth:`GpuLease.score` queues upload, kernel and download on the slot's stream and waits
for that stream alone.

Slots and device turns are separate: there is one slot per task thread of the process
(at least two per device turn), so host-only work done while a block is leased (the fill
from Arrow, reason codes, drift sampling) never waits for a slot, and only the device
work is capped by ``concurrent``. Slots are sized to the run's batches, not to the
largest block, so their pinned memory stays near the decoded batches' own budget.

Scoring runs the fused kernel ``kernels/score_rows.cu`` (impute, scale, nearest
centroid, propensity, ±inf flags and null counts in one pass), opting in to more than
48 KiB of shared memory where the model needs it (k = 64 with 100 features: 57.6 KB).
Only a model whose parameters exceed the device's opt-in limit
(``(ceil(k/8)*8 + 8) * F`` doubles over 227 KiB on H100/H200) takes the dense path,
cuBLAS matrix products on the same stream (``kernels.score_rows.score_rows_dense``).
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import weakref
from types import TracebackType
from typing import Any

import numpy as np

from engine.backends.block import BlockResult, check_block_levels, level_inputs, model_params
from engine.io.device import StagingSlot, slot_rows, waited_on_error
from engine.models.artifact import ScoringModel

#: The fused kernel's parameter names, in ``engine.backends.stage.model_params`` order.
PARAM_NAMES = ("fill_s", "a_s", "d_s", "centroids", "fill_p", "a_p", "d_p", "coef")
_OUTPUTS = ("segment", "distance", "propensity", "inf_col", "nulls")


def kernel_arguments(model: ScoringModel) -> dict[str, np.ndarray | float]:
    """The model as keyword arguments of ``kernels.score_rows`` (float64, host)."""
    arrays, intercept = model_params(model)
    return dict(zip(PARAM_NAMES, arrays)) | {"intercept": intercept}


def task_threads_here() -> int:
    """Task threads of this process: a Dask worker's ``nthreads`` inside one (a ``dask cuda
    worker`` of an attached cluster), else one per core (the embedded runner's default)."""
    dist = sys.modules.get("distributed")  # never imported here just to ask
    if dist is not None:
        with contextlib.suppress(Exception):  # not inside a worker
            return max(1, int(dist.get_worker().state.nthreads))
    from engine.cluster import default_threads

    return default_threads()


def slot_count(concurrent: int, slots: int = 0) -> int:
    """Staging slots of a stage: ``slots``, else one per task thread of this process; at
    least two per device turn, so one thread fills a slot while another's is on the GPU."""
    if slots <= 0:
        slots = task_threads_here()
    return max(2 * concurrent, slots)


class GpuStage:
    """Scores host blocks on this process's GPU; see the module docstring.

    ``slots`` 0: one per task thread (:func:`slot_count`); ``pin=False`` keeps the slots
    pageable (what a refused ``cudaHostRegister`` falls back to); ``fused`` None picks the
    fused kernel whenever the model fits the device's shared memory (tests force either).
    """

    backend = "gpu"

    def __init__(self, model: ScoringModel, *, block_rows: int, concurrent: int = 2, slots: int = 0,
                 pin: bool = True, fused: bool | None = None) -> None:
        import cupy as cp

        from kernels.score_rows import (
            device_shared_limit,
            fits_shared_memory,
            prepare_cuda_params,
            prewarm_launch,
        )

        if concurrent < 1:
            raise ValueError(f"concurrent must be at least 1, got {concurrent}")
        self._cp = cp
        self.device_id = int(cp.cuda.runtime.getDevice())
        self.n_features = model.n_features
        self.block_rows = slot_rows(block_rows, model.n_features)
        args = kernel_arguments(model)
        self.n_cat = len(model.categoricals)
        tables = level_inputs(model)
        fits = fits_shared_memory(model.k, model.n_features, 8, device_shared_limit(self.device_id))
        if fused and not fits:
            raise ValueError(f"k={model.k} over {model.n_features} features does not fit this GPU's shared memory")
        self.fused = fits if fused is None else fused
        with cp.cuda.Device(self.device_id):
            slots_: list[StagingSlot] = []
            # Registered pages are unlocked with the stage, also if the rest of this fails
            # (a later slot's allocation included: the finalizer holds the list as it grows).
            self._finalizer = weakref.finalize(self, _release_slots, cp, slots_)
            try:
                for _ in range(slot_count(concurrent, slots)):
                    slots_.append(StagingSlot.allocate(cp, self.block_rows, model.n_features, pin=pin,
                                                       n_cat=self.n_cat))
            except BaseException:
                self._finalizer()
                raise
            if self.fused:
                # Parameters go up on the same non-blocking stream as the warm-up launch that
                # reads them (not on the legacy stream, which is unordered with it).
                with slots_[0].stream:
                    self._params: Any = prepare_cuda_params(
                        np.dtype(np.float64), model.n_features, **args,
                        **({} if tables is None else {"cat_logit": tables[0], "cat_dist": tables[1]}))
                    # Compile or load the kernel (and opt in to its shared memory) here, on the
                    # stage's clock, not on the first task's.
                    prewarm_launch(self._params)
            else:
                with slots_[0].stream:
                    self._params = {name: (cp.asarray(v) if isinstance(v, np.ndarray) else v)
                                    for name, v in args.items()}
                    if tables is not None:
                        self._params |= {"cat_logit": cp.asarray(tables[0]), "cat_dist": cp.asarray(tables[1])}
                self._warm_dense(slots_[0])
            # Parameters and buffers are on the device before any task runs.
            cp.cuda.runtime.deviceSynchronize()
        self.slots = tuple(slots_)
        self._free: queue.SimpleQueue[StagingSlot] = queue.SimpleQueue()
        for slot in slots_:
            self._free.put(slot)
        self._turns = threading.BoundedSemaphore(concurrent)

    def _warm_dense(self, slot: StagingSlot) -> None:
        """Load cuBLAS and the dense path's elementwise kernels on one row."""
        from kernels.score_rows import score_rows_dense

        with slot.stream:
            cats = {"levels": self._cp.zeros((1, self.n_cat), self._cp.int32)} if self.n_cat else {}
            score_rows_dense(slot.device_matrix(1), **self._params, xp=self._cp, **cats)

    def lease(self) -> GpuLease:
        """Borrow a staging slot, waiting while every slot is lent."""
        return GpuLease(self, self._free.get())

    def _score(self, slot: StagingSlot, n: int, levels: np.ndarray | None = None) -> BlockResult:
        cp = self._cp
        check_block_levels(levels, n, self.n_cat)
        sent = slot.h2d_bytes  # the slot is this thread's until it is given back
        with self._turns, cp.cuda.Device(self.device_id), slot.stream, waited_on_error(slot):
            slot.upload(cp, n)
            # Level indices: int32, Q per row, through the slot's registered buffer on its
            # stream (counted in h2d_bytes), beside the block's float matrix.
            L = slot.upload_levels(cp, levels, n) if self.n_cat and n and levels is not None else None
            out = slot.device_out
            if self.fused:
                from kernels.score_rows import launch_score_rows

                slot.clear_counters(cp)
                launch_score_rows(slot.device_X, n, slot.rows, self._params, out["segment"],
                                  out["distance"], out["propensity"], out["inf_col"], out["nulls"], L)
            elif n:
                from kernels.score_rows import score_rows_dense

                results = score_rows_dense(slot.device_matrix(n), **self._params, xp=cp,
                                           **({} if L is None else {"levels": L}))
                for name, value in zip(_OUTPUTS, results):
                    target = out[name] if name == "nulls" else out[name][:n]
                    target[...] = value
            else:
                slot.clear_counters(cp)
            slot.download(cp, n)
            slot.wait()
        host = slot.host_out
        return BlockResult(
            segment=host["segment"][:n].copy(),
            distance=host["distance"][:n].copy(),
            propensity=host["propensity"][:n].copy(),
            inf_col=host["inf_col"][:n].copy(),
            nulls=host["nulls"].astype(np.int64),
            h2d_bytes=slot.h2d_bytes - sent,
        )

    def _give_back(self, slot: StagingSlot) -> None:
        self._free.put(slot)


class GpuLease:
    """One borrowed slot: fill ``X[:n]`` on the host, then :meth:`score`."""

    def __init__(self, stage: GpuStage, slot: StagingSlot) -> None:
        self._stage, self._slot = stage, slot
        self.X = slot.X

    @property
    def slot(self) -> StagingSlot:
        return self._slot

    def score(self, n: int, levels: np.ndarray | None = None, tally: Any = None) -> BlockResult:
        """Score ``X[:n]`` (and its ``levels[:n]``, see ``Lease.score``) on the GPU; fresh host arrays.

        ``tally`` is not taken here (``tallied`` stays False): the caller tallies on the host."""
        if not 0 <= n <= self._slot.rows:
            raise ValueError(f"n must be between 0 and {self._slot.rows}, got {n}")
        return self._stage._score(self._slot, n, levels)

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stage._give_back(self._slot)


def _release_slots(cp: Any, slots: list[StagingSlot]) -> None:
    for slot in slots:
        slot.release(cp)
