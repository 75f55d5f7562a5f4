"""The Dask cluster a run uses: an existing one (``--scheduler``), or a local one.

* ``--scheduler ADDRESS`` (or ``ENGINE_SCHEDULER``, or ``[cluster] scheduler``): attach
  to a running Dask cluster (``dask scheduler`` + ``dask worker`` / ``dask cuda worker``).
* ``--workers N``: a ``LocalCluster`` of N worker processes on this machine.
* GPU backend without a scheduler: a dask-cuda ``LocalCUDACluster``, one worker per GPU,
  when ``--gpus`` selects several; one GPU runs on threads of this process.
* Otherwise the embedded default: Dask's threaded scheduler in this process, one thread
  per core (pyarrow and the CPU kernel release the GIL in the heavy parts); see
  :class:`ThreadRunner`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from engine.config import Settings
from engine.errors import BackendError, ClusterError, UsageError


def _quiet_dask_logs() -> None:
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.comm", "distributed.client", "tornado"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


#: Decoded input batches of all task threads of a process together stay under this.
BATCH_BUDGET_BYTES = 512 << 20
MIN_BATCH_ROWS = 16_384


def default_batch_rows(threads: int, columns: int, partition_rows: int) -> int:
    """Rows per decoded batch so that ``threads`` batches fit :data:`BATCH_BUDGET_BYTES`.

    A batch costs about twice its decoded Arrow columns (8 bytes a value) while it is
    scored and encoded (the output table, the encoder's pages). The result is a power of
    two of at least :data:`MIN_BATCH_ROWS`, and never above ``partition_rows`` (a task
    never holds more): 524,288 rows at 2 threads and 65,536 at 16 threads for 23
    columns, i.e. a bounded peak on any host.
    """
    per_row = 2 * 8 * max(1, columns)
    rows = BATCH_BUDGET_BYTES // (max(1, threads) * per_row)
    rows = max(MIN_BATCH_ROWS, 1 << max(0, int(rows).bit_length() - 1))
    return int(max(1, min(rows, partition_rows)))


def run_threads(settings: Settings) -> int:
    """Task threads per worker process: the setting, else one per core of this host."""
    return settings.threads_per_worker or default_threads()


def _gpu_list(spec: str) -> str | None:
    if spec in ("", "all"):
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise UsageError(f"--gpus must be 'all' or a comma list of device numbers like 0,1; got {spec!r}")
    return ",".join(parts)


def probe_scheduler(address: str, timeout: float) -> None:
    """Connect, shake hands and ask the scheduler who it is, all within ``timeout`` seconds.

    ``Client(timeout=...)`` bounds the TCP connect but not every step after it: a listener
    that accepts and never speaks held a run for minutes. One deadline over the whole
    exchange here; anything short of a scheduler's reply is a ``TimeoutError``/``OSError``.
    """
    import asyncio

    from distributed.comm import connect

    async def exchange() -> None:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            reply = await comm.read()
        finally:
            comm.abort()
        if not isinstance(reply, dict):
            raise OSError(f"{address} answered, but not as a Dask scheduler")

    async def bounded() -> None:
        await asyncio.wait_for(exchange(), timeout=max(timeout, 0.1))

    try:
        asyncio.run(bounded())
    except asyncio.TimeoutError:
        raise TimeoutError(f"no answer from {address} within {timeout:g}s (connection and handshake)") from None
    except (OSError, TimeoutError):
        raise
    except Exception as exc:  # a comm error of distributed's own, a protocol error: not a scheduler
        raise OSError(f"{type(exc).__name__}: {exc}") from None


@contextmanager
def open_client(settings: Settings, backend: str,
                say: Callable[[str], None] | None = None) -> Iterator[Any]:
    """A connected ``distributed.Client`` for the run, closed (and its cluster stopped) after.

    ``say`` (default: stderr) hears the dashboard address of a local cluster this starts:
    its port is picked at random, so it is worth nothing unless it is printed."""
    import dask
    from distributed import Client, LocalCluster

    _quiet_dask_logs()
    cluster = None
    with dask.config.set({"distributed.scheduler.allowed-failures": 3,
                          "distributed.comm.timeouts.connect": f"{settings.connect_timeout_s}s"}):
        if settings.scheduler:
            try:
                probe_scheduler(settings.scheduler, settings.connect_timeout_s)
                client = Client(settings.scheduler, timeout=settings.connect_timeout_s,
                                set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ClusterError(
                    f"cannot reach the Dask scheduler at {settings.scheduler} within "
                    f"{settings.connect_timeout_s:g}s ({type(exc).__name__}: {exc}); check the address "
                    "and that `dask scheduler` runs there, or drop --scheduler to run locally"
                ) from None
        else:
            if backend == "gpu":
                cluster = _local_cuda_cluster(settings)
            # dashboard_address=":0": the scheduler always serves HTTP (metrics); a random
            # port keeps concurrent runs on one machine from fighting over 8787.
            elif settings.workers:
                cluster = LocalCluster(
                    n_workers=settings.workers, threads_per_worker=settings.threads_per_worker or 1,
                    processes=True, dashboard_address=":0",
                )
            else:
                cluster = LocalCluster(
                    n_workers=1, threads_per_worker=settings.threads_per_worker or default_threads(),
                    processes=False, dashboard_address=":0",
                )
            client = Client(cluster, set_as_default=False)
            link = getattr(cluster, "dashboard_link", None)
            (say or _stderr)(f"dask: local cluster of {len(cluster.workers)} worker(s); dashboard {link or 'unavailable'}")
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def _local_cuda_cluster(settings: Settings) -> Any:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise BackendError(
            "the GPU backend on one node needs dask-cuda (pip install '.[cu12]' or '.[cu13]'), "
            "or attach to a cluster of `dask cuda worker`s with --scheduler"
        ) from None
    kwargs: dict[str, Any] = {"dashboard_address": ":0"}
    devices = _gpu_list(settings.gpus)
    if devices is not None:
        kwargs["CUDA_VISIBLE_DEVICES"] = devices
    if settings.rmm_pool_size:
        kwargs["rmm_pool_size"] = settings.rmm_pool_size
    kwargs["threads_per_worker"] = cuda_worker_threads(settings)
    return LocalCUDACluster(**kwargs)


def cuda_worker_threads(settings: Settings) -> int:
    """Task threads of each local dask-cuda worker: the setting, else this host's cores
    shared among the selected GPUs.

    dask-cuda defaults to one thread per worker, which would decode, fill and encode one
    partition at a time per GPU while the GPU waits; the threads overlap that host work
    (the GPU stage caps the device work itself at ``--gpu-tasks``).
    """
    if settings.threads_per_worker:
        return settings.threads_per_worker
    return max(1, default_threads() // max(1, len(selected_gpus(settings))))


def check_paths(paths: list[str], writable: list[str]) -> list[str]:
    """On a worker: which of ``paths`` it cannot see and which of ``writable`` it cannot write."""
    import socket

    problems = []
    for p in paths:
        if "://" in p:
            problems += _check_store(p, write=False)
        elif not os.path.exists(p):
            problems.append(f"cannot see {p}")
    for p in writable:
        if "://" in p:
            problems += _check_store(p, write=True)
        elif not os.path.isdir(p) or not os.access(p, os.W_OK):
            problems.append(f"cannot write to {p}")
    return [f"worker {socket.gethostname()}:{os.getpid()}: {msg}" for msg in problems]


def _check_store(uri: str, *, write: bool) -> list[str]:
    """On a worker: whether it reaches a store location with its own credentials and endpoint.

    Reading: the object or prefix is there. Writing: its bucket is visible (a write is
    proven by the first part; a probe object would be litter in someone's bucket).
    """
    from engine.io.store import location, store_for

    loc = location(uri)
    if loc is None:
        return []
    try:
        store = store_for(loc)
        if write:
            return [] if store.bucket_exists(loc) else [f"cannot see the bucket of {uri}"]
        return [] if store.info(loc) != "missing" else [f"cannot see {uri}"]
    except Exception as exc:  # a worker without the extra, credentials or a route to the endpoint
        return [f"cannot reach {uri} ({type(exc).__name__}: {str(exc)[:200]})"]


def require_paths_on_workers(client: Any, paths: list[str], writable: list[str]) -> None:
    """Fail fast, naming each worker and path, if any worker cannot see the run's storage."""
    results = client.run(check_paths, paths, writable)
    if not results:
        raise ClusterError("the Dask cluster has no workers; start some with `dask worker SCHEDULER_ADDRESS`")
    # client.run keys by worker address; the message says both the address the scheduler
    # knows and the host:pid the worker saw itself as, so the operator can find it.
    problems = [f"{address} ({msg})" for address, worker_msgs in sorted(results.items()) for msg in worker_msgs]
    if problems:
        raise ClusterError(
            "workers cannot reach the run's storage (every worker must see the input and output: a path they "
            "all mount, or an object store each reaches with its own credentials):\n  - "
            + "\n  - ".join(problems)
        )


def ready_workers(client: Any, settings: Settings, paths: list[str], writable: list[str]) -> None:
    """Before any task: an attached cluster has a worker and every worker sees ``paths``.

    Only for ``--scheduler``: local clusters share this process's filesystem view.
    """
    if not settings.scheduler:
        return
    try:
        client.wait_for_workers(1, timeout=settings.connect_timeout_s)
    except TimeoutError:
        raise ClusterError(
            f"the Dask cluster at {settings.scheduler} has no workers (waited "
            f"{settings.connect_timeout_s:g}s); start some with `dask worker {settings.scheduler}`"
        ) from None
    require_paths_on_workers(client, paths, writable)


@contextmanager
def cluster_failures(settings: Settings) -> Iterator[None]:
    """Turn Dask's ways of losing workers or the scheduler into :class:`ClusterError` (exit 8).

    ``KilledWorker``: one task was on ``allowed-failures`` + 1 workers that died (the
    scheduler's setting, default 3). ``CommClosedError`` / cancelled
    futures: the connection to the scheduler broke and could not be re-established.
    """
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError, FuturesCancelledError
    from distributed.comm import CommClosedError

    where = f"the Dask cluster at {settings.scheduler}" if settings.scheduler else "the local Dask cluster"
    try:
        yield
    except KilledWorker as exc:
        raise ClusterError(
            f"too many workers of {where} died while running task {exc.task!r}: it was tried on "
            f"{exc.allowed_failures + 1} worker(s) (last {getattr(exc.last_worker, 'address', '?')}) "
            "and each died under it; nothing was published. "
            "Check the workers' memory limits and logs, then rerun (add --resume to reuse finished parts)"
        ) from None
    except (CommClosedError, FutureCancelledError, FuturesCancelledError) as exc:
        raise ClusterError(
            f"lost the connection to {where} ({type(exc).__name__}: {exc}); nothing was published. "
            "Check that the scheduler is still running, then rerun (add --resume to reuse finished parts)"
        ) from None


class ThreadRunner:
    """A thread pool in this process: the embedded default on one machine.

    The tasks of a run are a flat list of independent calls, so a plain
    ``concurrent.futures`` pool runs them as Dask's threaded scheduler did, without the
    0.26-0.33 s that importing ``dask`` costs a run (measured in issue 11; issue 23 saw it
    contend for the GIL with numba's import at the start of the first tasks). Dask stays
    the engine's scheduler wherever there is more than one process (``--workers``,
    ``--scheduler``: :class:`ClientRunner`).
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def ready(self, paths: list[str], writable: list[str]) -> None:
        """Nothing to check: the tasks run in this process, with its view of the files."""

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], name: str,
            on_result: Callable[[Any], None] | None = None) -> list[Any]:
        """``fn`` over ``items`` on the thread pool; ``on_result`` sees each result as it lands.

        The first task to fail stops the run: no further task starts (queued ones are
        cancelled; tasks already running finish, a thread cannot be stopped) and its
        exception is raised. Results come back in the order of ``items``.
        """
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        # Tasks already run one per core: BLAS threads inside each task would only
        # oversubscribe the cores. threadpoolctl's limit is process-wide, so it is set once
        # here around the whole run, never per task (tasks would undo each other's limits).
        # Worker processes of a distributed cluster get the same from dask's nanny.
        from threadpoolctl import threadpool_limits

        results: list[Any] = [None] * len(items)
        # The run's own pool, shut down with the run: after a failure or Ctrl-C/SIGTERM,
        # queued tasks are cancelled instead of running on.
        pool = ThreadPoolExecutor(max_workers=max(1, self.threads), thread_name_prefix=f"engine-{name}")
        try:
            with threadpool_limits(1):
                pending = {pool.submit(fn, item): i for i, item in enumerate(items)}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        i = pending.pop(future)
                        results[i] = future.result()   # the first failure raises here
                        if on_result is not None:
                            on_result(results[i])
            return results
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class ClientRunner:
    """Tasks on a ``distributed`` cluster (``--scheduler``, ``--workers`` or dask-cuda)."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client, self.settings = client, settings

    def ready(self, paths: list[str], writable: list[str]) -> None:
        ready_workers(self.client, self.settings, paths, writable)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], name: str,
            on_result: Callable[[Any], None] | None = None) -> list[Any]:
        import contextlib
        import uuid

        from distributed import wait

        batch = uuid.uuid4().hex[:8]
        futures = self.client.map(fn, list(items), pure=False,
                                  key=[f"{name}-{batch}-{i}" for i in range(len(items))])
        index = {future.key: i for i, future in enumerate(futures)}
        results: dict[int, Any] = {}
        watch = _WorkerWatch(self.client, self.settings)
        try:
            pending = set(futures)
            while pending:
                try:
                    with self.client.as_current():  # distributed.wait uses the current client
                        done, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished within the second: look at the workers
                    watch.check(len(pending))
                    continue
                for future in done:
                    # A result held by a worker that dies before it is fetched is recomputed
                    # elsewhere: fetch with the same watch on the workers, never block forever.
                    results[index[future.key]] = result = watch.result(future, len(pending) + 1)
                    if on_result is not None:
                        on_result(result)
            return [results[i] for i in range(len(futures))]
        except BaseException:
            # The scheduler may be gone already; the original error is the one to report.
            with contextlib.suppress(Exception):
                self.client.cancel(futures)
            raise


class _WorkerWatch:
    """Fails a run whose cluster has had no worker for ``no_worker_timeout_s``.

    Tasks and results wait for workers forever; a nightly run must not.
    """

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.since: float | None = None

    def check(self, tasks_left: int) -> None:
        import time

        if self.client.scheduler_info(n_workers=-1)["workers"]:
            self.since = None
            return
        self.since = self.since or time.monotonic()
        if time.monotonic() - self.since > self.settings.no_worker_timeout_s:
            where = self.settings.scheduler or "the local cluster"
            raise ClusterError(
                f"all workers of the Dask cluster at {where} died or left, and none came back within "
                f"{self.settings.no_worker_timeout_s:g}s ({tasks_left} task(s) left); nothing was "
                "published. Restart the workers, then rerun with --resume to reuse the finished parts"
            )

    def result(self, future: Any, tasks_left: int) -> Any:
        while True:
            try:
                return future.result(timeout=1.0)
            except TimeoutError:
                self.check(tasks_left)


def selected_gpus(settings: Settings) -> list[str]:
    """The GPUs ``--gpus`` selects on this node, as NVML numbers them (no CUDA is started)."""
    from engine.backends.detect import detect

    listed = _gpu_list(settings.gpus)
    if listed is not None:
        return listed.split(",")
    return [d.split(":", 1)[0] for d in detect().gpu_devices]


def uses_distributed(settings: Settings, backend: str) -> bool:
    """Whether a run needs ``distributed`` (a cluster) or runs on Dask's threaded scheduler.

    One GPU needs no cluster: its partitions run on threads of this process, so that one
    partition's Parquet decoding and writing overlap another's kernels. Several GPUs get
    a dask-cuda ``LocalCUDACluster``, one worker process per GPU.
    """
    if settings.scheduler or settings.workers:
        return True
    return backend == "gpu" and len(selected_gpus(settings)) > 1


def pin_single_gpu(settings: Settings) -> None:
    """Make the one selected GPU this process's only CUDA device (before any CUDA call).

    Called where a GPU run's tasks are about to run in this process: by :func:`open_runner`,
    and earlier by the planner, which builds the GPU stage in the background while it plans.
    """
    gpus = selected_gpus(settings)
    # Still before any CUDA call in this process, so this picks the device.
    if gpus and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # NVML's numbering
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]


@contextmanager
def open_runner(settings: Settings, backend: str,
                say: Callable[[str], None] | None = None) -> Iterator[ThreadRunner | ClientRunner]:
    """Where a run's tasks execute: see the module docstring. ``say`` as for :func:`open_client`."""
    if not uses_distributed(settings, backend):
        if backend == "gpu":
            pin_single_gpu(settings)
        yield ThreadRunner(settings.threads_per_worker or default_threads())
        return
    with open_client(settings, backend, say=say) as client, cluster_failures(settings):
        yield ClientRunner(client, settings)
