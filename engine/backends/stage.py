"""The device stage of the scoring pipeline: per-process scoring resources that tasks borrow.

The pipeline (engine/jobs/partition.py) is the same for both backends: host threads
decode Parquet, fill a :class:`Lease`'s host matrix from Arrow, call ``lease.score(n)``,
apply the bad-row policy and encode the part. Only the stage differs:

* ``cpu``: :class:`CpuStage`, the compiled fused kernel (``kernels/score_rows_cpu.py``,
  numba ``nogil``) over reused host blocks;
* ``gpu``: ``engine.backends.gpu_stage.GpuStage`` (the folded model on the device, a
  ring of pinned buffers, a few streams, a cap on concurrent device work).

A stage is expensive to make (compiling or loading the kernel, pinned memory, streams)
and cheap to use, so each process keeps one per (model content, backend, settings) in
a :class:`StageCache`. :data:`STAGES` is this process's cache; tasks reach it through
:func:`get_stage`, never by creating stages themselves.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engine.backends.block import BlockResult, check_block_levels, level_inputs, model_params
from engine.models.artifact import ScoringModel

# BlockResult and the parameter helpers live in engine/backends/block.py, below this module
# and gpu_stage (which this module builds lazily): named here too for existing callers.
__all__ = ["BACKENDS", "BlockResult", "CpuStage", "Lease", "Stage", "StageCache", "StageSettings", "STAGES",
           "check_block_levels", "get_stage", "level_inputs", "model_params", "prewarm", "prewarm_kernel",
           "stage_settings", "use_system_allocator"]

BACKENDS = ("cpu", "gpu")


class Lease(Protocol):
    """One borrowed host block; a context manager that gives it back on exit."""

    X: np.ndarray  # host float64 (rows, F), Fortran order, model feature order

    def score(self, n: int, levels: np.ndarray | None = None, tally: Any = None) -> BlockResult:
        """Score ``X[:n]`` (NaN = missing) and, for a model with categorical columns, the
        C-contiguous int32 ``levels[:n]`` (global level indices); ``X`` is not modified.
        ``tally`` (an ``engine.jobs.summary.ScoreTally``): a stage that can adds the block's
        scores to it in the same pass and says so in ``BlockResult.tallied``."""
        ...

    def __enter__(self) -> Lease: ...

    def __exit__(self, *exc: object) -> None: ...


class Stage(Protocol):
    """Scores leased blocks; bounded: :meth:`lease` waits while every block is lent."""

    backend: str
    block_rows: int

    def lease(self) -> Lease: ...


@dataclass(frozen=True)
class StageSettings:
    """The settings a stage is built from (the engine's ``Settings`` has the same fields).

    ``cpu_leases`` 0: one host block per core of this process, so no task thread ever
    waits for one; ``gpu_slots`` 0 likewise for the GPU stage's pinned staging slots
    (``engine.backends.gpu_stage.slot_count``).
    """

    block_rows: int = 16_384
    gpu_block_rows: int = 4_194_304
    gpu_tasks: int = 2
    cpu_leases: int = 0
    gpu_slots: int = 0

    @classmethod
    def of(cls, settings: Any) -> StageSettings:
        """The stage-relevant part of any settings object (missing fields take defaults)."""
        defaults = cls()
        return cls(**{name: getattr(settings, name, getattr(defaults, name))
                      for name in ("block_rows", "gpu_block_rows", "gpu_tasks", "cpu_leases", "gpu_slots")})


class _CpuLease:
    def __init__(self, stage: CpuStage, X: np.ndarray) -> None:
        self._stage, self.X = stage, X

    def score(self, n: int, levels: np.ndarray | None = None, tally: Any = None) -> BlockResult:
        from kernels.score_rows_cpu import score_block

        if not 0 <= n <= self.X.shape[0]:
            raise ValueError(f"cannot score {n} rows of a {self.X.shape[0]}-row block")
        stage = self._stage
        check_block_levels(levels, n, stage.n_cat)
        out = BlockResult(np.empty(n, np.int32), np.empty(n, np.float32), np.empty(n, np.float32),
                          np.empty(n, np.int32), np.zeros(self.X.shape[1], np.int64))
        cats = None
        if stage.tables is not None and levels is not None:
            cats = (np.ascontiguousarray(levels, dtype=np.int32), *stage.tables)
        if n:
            score_block(self.X, n, stage.params, stage.intercept, out.segment, out.distance,
                        out.propensity, out.inf_col, out.nulls, cats,
                        tally.kernel_arrays() if tally is not None else None)
        out.tallied = tally is not None
        return out

    def __enter__(self) -> _CpuLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stage._give_back(self.X)


class CpuStage:
    """Host blocks and the compiled CPU kernel, shared by every task of a process.

    At most ``leases`` blocks of ``block_rows`` x F float64 exist (made on first demand,
    then reused); the kernel is compiled (or loaded from numba's cache) here, once.
    """

    backend = "cpu"

    def __init__(self, model: ScoringModel, block_rows: int, leases: int = 0) -> None:
        from engine.cluster import default_threads
        from kernels.score_rows_cpu import prepare_params, score_block

        self.block_rows = max(1, int(block_rows))
        self.n_features = model.n_features
        self.max_leases = leases if leases > 0 else default_threads()
        self._free: queue.LifoQueue[np.ndarray] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()
        params, intercept = model_params(model)
        probe = np.zeros((1, self.n_features), order="F")
        self.params, self.intercept = prepare_params(probe, *params, intercept)
        self.n_cat = len(model.categoricals)
        self.tables = level_inputs(model)
        cats = None if self.tables is None else (np.zeros((1, self.n_cat), np.int32), *self.tables)
        # Pay the compile (or cache load) now, in the stage's constructor, not in a task's clock.
        score_block(probe, 1, self.params, self.intercept, np.empty(1, np.int32), np.empty(1, np.float32),
                    np.empty(1, np.float32), np.empty(1, np.int32), np.zeros(self.n_features, np.int64), cats)

    def lease(self) -> _CpuLease:
        try:
            X = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._made < self.max_leases
                if make:
                    self._made += 1
            X = np.empty((self.block_rows, self.n_features), order="F") if make else self._free.get()
        return _CpuLease(self, X)

    def _give_back(self, X: np.ndarray) -> None:
        self._free.put(X)


def use_system_allocator() -> bool:
    """Make the system allocator pyarrow's default pool in this process, unless the user chose one.

    pyarrow's default mimalloc pool keeps freed memory in per-thread heaps: with one task
    thread per core, decoded batches that were long freed stay resident (measured on
    1M rows in 16 files: peak RSS 1,024 MiB at 16 threads with mimalloc, 692 MiB with the
    system allocator; at 2 threads 535 against 415 MiB, and no slower). Buffers already
    allocated keep their own pool, so switching mid-process is safe.
    """
    import os

    import pyarrow as pa

    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return False
    pa.set_memory_pool(pa.system_memory_pool())
    return True


class StageCache:
    """One stage per (model content hash, backend, stage settings) in this process.

    Bounded (least recently used stages beyond ``size`` are dropped; a task still
    holding one keeps it alive until it finishes), and thread-safe: concurrent first
    requests build a stage once while the others wait.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._stages: OrderedDict[tuple[Any, ...], Stage] = OrderedDict()
        self._lock = threading.Lock()
        self._configured = False

    def get(self, model: ScoringModel, backend: str, settings: Any) -> Stage:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        spec = StageSettings.of(settings)
        key = (model.content_hash or id(model), backend, spec)
        with self._lock:
            stage = self._stages.get(key)
            if stage is None:
                if not self._configured:  # the process's first stage: its host memory settings too
                    use_system_allocator()
                    self._configured = True
                stage = _build(model, backend, spec)
                self._stages[key] = stage
                while len(self._stages) > self.size:
                    self._stages.popitem(last=False)
            self._stages.move_to_end(key)
            return stage

    def clear(self) -> None:
        with self._lock:
            self._stages.clear()

    def __len__(self) -> int:
        return len(self._stages)


def _build(model: ScoringModel, backend: str, spec: StageSettings) -> Stage:
    if backend == "gpu":
        from engine.backends.gpu_stage import GpuStage

        return GpuStage(model, block_rows=spec.gpu_block_rows, concurrent=spec.gpu_tasks, slots=spec.gpu_slots)
    return CpuStage(model, block_rows=spec.block_rows, leases=spec.cpu_leases)


#: This process's stages: the embedded runner's threads, or one Dask worker's.
STAGES = StageCache()


def get_stage(model: ScoringModel, backend: str, settings: Any) -> Stage:
    """The stage of this process for ``model`` on ``backend`` (built on first use)."""
    return STAGES.get(model, backend, settings)


def stage_settings(backend: str, block_rows: int, gpu_tasks: int = 2, gpu_slots: int = 0) -> StageSettings:
    """The stage settings of a task: ``block_rows`` is the backend's own block size
    (on the GPU, the rows of one staging slot: at most the run's batch rows)."""
    if backend == "gpu":
        return StageSettings(gpu_block_rows=block_rows, gpu_tasks=gpu_tasks, gpu_slots=gpu_slots)
    return StageSettings(block_rows=block_rows)


def prewarm_kernel() -> threading.Thread:
    """Compile or load the CPU kernel on a background thread (model-independent, once per process).

    Importing numba and loading the kernel costs about 0.7 CPU-seconds; started as the
    first thing of a run, it overlaps the run's own imports and planning instead of
    holding up its first tasks.
    """
    def build() -> None:
        with contextlib.suppress(Exception):  # the stage builds again and reports it
            from kernels.score_rows_cpu import warm

            warm()

    thread = threading.Thread(target=build, name="engine-kernel-prewarm", daemon=True)
    thread.start()
    return thread


def prewarm(model: ScoringModel, backend: str, settings: Any) -> threading.Thread:
    """Build this process's stage on a background thread, while the caller plans the run.

    Importing numba and loading (or compiling) the kernel takes most of a second, which
    would otherwise sit on the first tasks' clocks; on the GPU, creating the CUDA context,
    page-locking the staging slots and loading the kernel do too. ``settings`` must be the
    tasks' own stage settings (the cache is keyed by them). A failure here is not
    reported: the first task asks for the same stage and raises the error itself.
    """
    def build() -> None:
        with contextlib.suppress(Exception):  # the first task builds again and reports it
            get_stage(model, backend, settings)

    thread = threading.Thread(target=build, name="engine-stage-prewarm", daemon=True)
    thread.start()
    return thread
