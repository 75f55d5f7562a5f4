"""Host/device staging for GPU scoring: the only place scoring moves rows to a GPU.

A :class:`StagingSlot` is what one in-flight block needs, allocated once per process
and reused by every task: a host matrix the pipeline fills straight from Arrow, host
output vectors, their device twins, and a non-blocking stream. The host side is made
of ordinary NumPy pages, touched first and then page-locked with ``cudaHostRegister``
(several times faster than ``cudaHostAlloc`` for the same bytes, and free of CuPy's
pinned pool, which rounds up to powers of two and allocates under a lock), so copies
are true asynchronous DMA on the slot's stream. Nothing here synchronises except
:meth:`StagingSlot.wait`, once per block, on the slot's own stream: never the legacy
default stream, so other threads' slots keep running.

CuPy is imported inside the functions: importing this module starts no CUDA.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Bytes of one slot's host matrix. Page-locked memory counts in the process's RSS
#: whether it is used or not, so slots stay small: a few tens of MB already keep a
#: PCIe or NVLink-C2C link busy for a millisecond per copy, far above launch costs.
SLOT_MATRIX_BYTES = 32 * 1024 * 1024
#: Fewest rows a slot holds, however wide the model.
MIN_SLOT_ROWS = 1024


def slot_rows(block_rows: int, n_features: int, itemsize: int = 8) -> int:
    """Rows per slot: ``block_rows``, capped so the host matrix stays near :data:`SLOT_MATRIX_BYTES`."""
    cap = max(MIN_SLOT_ROWS, SLOT_MATRIX_BYTES // max(1, n_features * itemsize))
    return max(1, min(int(block_rows), cap))


class PageLockError(RuntimeError):
    """``cudaHostRegister`` refused (e.g. a container's locked-memory limit)."""


_warn_lock = threading.Lock()
_warned = False


def _register(cp: Any, array: np.ndarray) -> bool:
    """Page-lock ``array``'s pages in place; False if the driver refuses.

    A refusal is warned about once per process: a stage registers several arrays per slot
    and several slots, and every refusal has the same cause and the same remedy.
    """
    global _warned
    try:
        cp.cuda.runtime.hostRegister(array.ctypes.data, array.nbytes, 0)
    except Exception as exc:  # CUDARuntimeError: memlock limits, unsupported platforms
        with _warn_lock:
            first, _warned = not _warned, True
        if first:
            warnings.warn(
                f"could not page-lock {array.nbytes:,} bytes of staging memory ({exc}); host/device "
                "copies fall back to pageable memory and will not overlap (warned once per process). "
                "Raise the container's locked-memory limit (docker run --ulimit memlock=-1)",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return True


def upload_geometry(rows: int, n: int, n_features: int, itemsize: int = 8) -> tuple[int, int, int]:
    """``(pitch, width, height)`` in bytes/rows of the 2-D copy that moves ``X[:n]`` of a slot.

    The slot's host matrix and its device twin are both Fortran ``(rows, F)``: column ``j``
    starts at byte ``j * rows * itemsize``. One ``cudaMemcpy2DAsync`` of ``height = F``
    "rows" (the columns) of ``width = n * itemsize`` bytes, with the same ``pitch = rows *
    itemsize`` on both sides, moves exactly ``n * F * itemsize`` bytes and never the gap
    rows ``n..rows-1`` (a 1-row tail block moves F values, not the whole slot).
    """
    return rows * itemsize, n * itemsize, n_features


@dataclass
class StagingSlot:
    """One block's host and device buffers and its stream (see the module docstring).

    ``X`` is a Fortran ``(rows, F)`` host matrix; the pipeline fills ``X[:n]``, so column
    ``j`` of the block sits at ``X_flat[j * rows : j * rows + n]`` and one 2-D copy
    (:func:`upload_geometry`) moves exactly those ``n * F`` values (the gap rows are never
    read, on the host or on the device). ``h2d_bytes`` counts the bytes queued to the
    device over the slot's life.
    """

    rows: int
    n_features: int
    X: np.ndarray
    host_out: dict[str, np.ndarray]
    device_X: Any
    device_out: dict[str, Any]
    stream: Any
    registered: list[np.ndarray] = field(default_factory=list)
    h2d_bytes: int = 0
    levels: np.ndarray | None = None      # host (rows, Q) int32 level indices, page-locked with the rest
    device_levels: Any = None             # its device twin

    @property
    def pinned(self) -> bool:
        """Whether the host matrix is page-locked (else copies are staged by the driver)."""
        return any(a is self.X for a in self.registered)

    @classmethod
    def allocate(cls, cp: Any, rows: int, n_features: int, *, pin: bool = True, n_cat: int = 0) -> StagingSlot:
        """Allocate (once per process) and page-lock one slot on the current device.

        ``pin=False`` leaves the host side pageable, as a refused registration does.
        ``n_cat``: categorical columns of the model; their level indices get a host
        ``(rows, n_cat)`` int32 buffer registered with the rest and a device twin, so
        they travel like the matrix (on the slot's stream, counted in ``h2d_bytes``).
        If anything fails half-way, what was registered is unlocked before the error.
        """
        X = np.zeros((rows, n_features), dtype=np.float64, order="F")  # zeros: pages touched
        host_out = {
            "segment": np.zeros(rows, np.int32),
            "distance": np.zeros(rows, np.float32),
            "propensity": np.zeros(rows, np.float32),
            "inf_col": np.zeros(rows, np.int32),
            "nulls": np.zeros(n_features, np.uint64),
        }
        levels = np.zeros((rows, n_cat), np.int32) if n_cat else None
        device_out = {name: cp.empty(a.shape, dtype=a.dtype) for name, a in host_out.items()}
        slot = cls(rows, n_features, X, host_out, cp.empty(rows * n_features, dtype=np.float64),
                   device_out, cp.cuda.Stream(non_blocking=True), levels=levels,
                   device_levels=cp.empty((rows, n_cat), dtype=np.int32) if n_cat else None)
        try:
            for array in (X, *host_out.values(), *(() if levels is None else (levels,))) if pin else ():
                if _register(cp, array):
                    slot.registered.append(array)
        except BaseException:
            slot.release(cp)
            raise
        return slot

    def upload_levels(self, cp: Any, levels: np.ndarray, n: int) -> Any:
        """Queue ``levels[:n]`` (int32 global level indices) to the device on the slot's stream.

        Copied into the slot's registered host buffer first (a plain host copy, Q ints a
        row), then one asynchronous copy, counted in ``h2d_bytes``; no pageable
        ``cupy.asarray``, no allocation, no pinned-pool lock. Returns the device ``(n, Q)``
        view the kernel reads.
        """
        if self.levels is None or self.device_levels is None:
            raise ValueError("this slot was allocated without categorical columns")
        q = self.levels.shape[1]
        if n == 0:
            return self.device_levels[:0]
        self.levels[:n] = levels[:n]
        nbytes = n * q * self.levels.itemsize
        cp.cuda.runtime.memcpyAsync(self.device_levels.data.ptr, self.levels.ctypes.data, nbytes,
                                    cp.cuda.runtime.memcpyHostToDevice, self.stream.ptr)
        self.h2d_bytes += nbytes
        return self.device_levels[:n]

    def device_matrix(self, n: int) -> Any:
        """The device copy of ``X[:n]``: an ``(n, F)`` view with leading dimension ``rows``."""
        return self.device_X.reshape(self.n_features, self.rows).T[:n]

    def upload(self, cp: Any, n: int) -> None:
        """Queue the copy of ``X[:n]`` to the device on the slot's stream."""
        if n == 0:
            return
        pitch, width, height = upload_geometry(self.rows, n, self.n_features, self.X.itemsize)
        cp.cuda.runtime.memcpy2DAsync(self.device_X.data.ptr, pitch, self.X.ctypes.data, pitch, width, height,
                                      cp.cuda.runtime.memcpyHostToDevice, self.stream.ptr)
        self.h2d_bytes += width * height

    def clear_counters(self, cp: Any) -> None:
        """Queue the zeroing of the device null counters (the kernel adds to them)."""
        nulls = self.device_out["nulls"]
        cp.cuda.runtime.memsetAsync(nulls.data.ptr, 0, nulls.nbytes, self.stream.ptr)

    def download(self, cp: Any, n: int) -> None:
        """Queue the copies of the first ``n`` results (and every null counter) to the host."""
        for name, host in self.host_out.items():
            count = self.n_features if name == "nulls" else n
            if count:
                cp.cuda.runtime.memcpyAsync(host.ctypes.data, self.device_out[name].data.ptr,
                                            count * host.itemsize,
                                            cp.cuda.runtime.memcpyDeviceToHost, self.stream.ptr)

    def wait(self) -> None:
        """Block this thread (not the GIL: CuPy waits without it) until the slot's work is done."""
        self.stream.synchronize()

    def release(self, cp: Any) -> None:
        """Unlock the host pages (at process end or when a stage is dropped)."""
        for array in self.registered:
            # The CUDA context may already be gone at interpreter exit.
            with contextlib.suppress(Exception):
                cp.cuda.runtime.hostUnregister(array.ctypes.data)
        self.registered.clear()


@contextlib.contextmanager
def waited_on_error(slot: Any) -> Any:
    """Around a slot's queued device work: on an error, wait for its stream before the error
    propagates. The copies may still be reading the slot's host buffers, and returning the
    slot before they finish would let the next lease's fill race them."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            slot.wait()
        raise
