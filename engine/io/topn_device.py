"""Host/device staging of ``engine recommend``'s GPU top-N: the only place it moves rows to a GPU.

A :class:`TopNSlot` is what one in-flight block of the top-N kernel needs, allocated once
per process and reused by every task (as :class:`engine.io.device.StagingSlot` is for
``engine score``, whose page-locking and 2-D copy it reuses): a Fortran host matrix the
consumer fills from the block loop's, the block's level indices, its bit-packed allowed
mask, the four host outputs, their device twins and a non-blocking stream. The host side
is ordinary NumPy pages page-locked with ``cudaHostRegister`` (pageable where the driver
refuses), so the copies are asynchronous DMA on the slot's stream. Nothing here
synchronises except :meth:`TopNSlot.wait`, on the slot's own stream.

CuPy is imported by the caller and passed in: importing this module starts no CUDA.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.io.device import _register, upload_geometry

#: The top-N kernel's outputs per row and slot: name -> dtype (kernels/topn_offers.cu).
OUTPUTS: dict[str, Any] = {"idx": np.int32, "p": np.float32, "ev": np.float64, "reason": np.int32}


def upload_arrays(cp: Any, arrays: dict[str, np.ndarray], stream: Any) -> dict[str, Any]:
    """Device copies of a few small host arrays (a plan's operands, a pass's prices), queued on
    ``stream`` and waited for: made once per process and plan (or pass), never per block."""
    with stream:
        out = {name: cp.asarray(np.ascontiguousarray(a)) for name, a in arrays.items()}
    stream.synchronize()
    return out


def mask_bytes(rows: int) -> int:
    """Bytes of one restricted offer's packed row vector over ``rows`` rows (8 rows a byte)."""
    return (rows + 7) // 8


@dataclass
class TopNSlot:
    """One block's host and device buffers and its stream (see the module docstring).

    ``X`` Fortran ``(rows, F)`` float64: the consumer fills ``X[:n]``; one 2-D copy moves
    exactly its ``n * F`` values, and the device keeps the same leading dimension ``rows``
    (the kernel reads it through strides: a warp's rows of one feature are consecutive).
    ``levels`` ``(rows, Q)`` int32 C-ordered; ``packed`` ``(R, mask_bytes(rows))`` uint8, one row
    per restricted offer; outputs ``(rows * keep)`` flat, row-major ``(n, keep)`` in front.
    """

    rows: int
    n_features: int
    keep: int
    X: np.ndarray
    levels: np.ndarray
    packed: np.ndarray
    host_out: dict[str, np.ndarray]
    device_X: Any
    device_levels: Any
    device_packed: Any
    device_out: dict[str, Any]
    stream: Any
    registered: list[np.ndarray] = field(default_factory=list)
    h2d_bytes: int = 0

    @classmethod
    def allocate(cls, cp: Any, rows: int, n_features: int, n_cat: int, restricted: int, keep: int, *,
                 pin: bool = True) -> TopNSlot:
        """Allocate (once per process) and page-lock one slot on the current device.

        If anything fails half-way, what was registered is unlocked before the error.
        """
        X = np.zeros((rows, n_features), dtype=np.float64, order="F")   # zeros: pages touched
        levels = np.zeros((rows, n_cat), np.int32)
        # At least one row: the kernel gets a valid pointer even where no offer is restricted.
        packed = np.zeros((max(1, restricted), mask_bytes(rows)), np.uint8)
        host_out = {name: np.zeros(rows * keep, dtype) for name, dtype in OUTPUTS.items()}
        slot = cls(rows, n_features, keep, X, levels, packed, host_out,
                   cp.empty(rows * n_features, dtype=np.float64), cp.empty((rows, n_cat), dtype=np.int32),
                   cp.empty(packed.shape, dtype=np.uint8),
                   {name: cp.empty(a.shape, dtype=a.dtype) for name, a in host_out.items()},
                   cp.cuda.Stream(non_blocking=True))
        try:
            for array in (X, levels, packed, *host_out.values()) if pin else ():
                if array.nbytes and _register(cp, array):
                    slot.registered.append(array)
        except BaseException:
            slot.release(cp)
            raise
        return slot

    def device_matrix(self, n: int) -> Any:
        """The device copy of ``X[:n]``: an ``(n, F)`` view with leading dimension ``rows``."""
        return self.device_X.reshape(self.n_features, self.rows).T[:n]

    def upload(self, cp: Any, n: int) -> dict[str, Any]:
        """Queue ``X[:n]``, ``levels[:n]`` and the packed mask of ``n`` rows to the device on the
        slot's stream; the device views the kernel reads (``X``, ``levels``, ``packed``)."""
        ptr, kind, stream = cp.cuda.runtime, cp.cuda.runtime.memcpyHostToDevice, self.stream.ptr
        if n and self.n_features:
            pitch, width, height = upload_geometry(self.rows, n, self.n_features, self.X.itemsize)
            ptr.memcpy2DAsync(self.device_X.data.ptr, pitch, self.X.ctypes.data, pitch, width, height, kind, stream)
            self.h2d_bytes += width * height
        q = self.levels.shape[1]
        if n and q:
            nbytes = n * q * self.levels.itemsize
            ptr.memcpyAsync(self.device_levels.data.ptr, self.levels.ctypes.data, nbytes, kind, stream)
            self.h2d_bytes += nbytes
        width = mask_bytes(n)
        if n:
            # The first mask_bytes(n) bytes of each restricted offer's row, same pitch both sides.
            pitch = self.packed.shape[1]
            ptr.memcpy2DAsync(self.device_packed.data.ptr, pitch, self.packed.ctypes.data, pitch, width,
                              self.packed.shape[0], kind, stream)
            self.h2d_bytes += width * self.packed.shape[0]
        return {"X": self.device_matrix(n), "levels": self.device_levels[:n], "packed": self.device_packed}

    def device_outputs(self, n: int) -> dict[str, Any]:
        """The kernel's ``(n, keep)`` C-ordered output views."""
        return {name: a[:n * self.keep].reshape(n, self.keep) for name, a in self.device_out.items()}

    def download(self, cp: Any, n: int) -> None:
        """Queue the copies of the first ``n`` rows' outputs to the host."""
        for name, host in self.host_out.items():
            count = n * self.keep
            if count:
                cp.cuda.runtime.memcpyAsync(host.ctypes.data, self.device_out[name].data.ptr, count * host.itemsize,
                                            cp.cuda.runtime.memcpyDeviceToHost, self.stream.ptr)

    def results(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Fresh host ``(n, keep)`` copies of the downloaded outputs (after :meth:`wait`)."""
        return tuple(self.host_out[name][:n * self.keep].reshape(n, self.keep).copy()  # type: ignore[return-value]
                     for name in OUTPUTS)

    def wait(self) -> None:
        """Block this thread (not the GIL) until the slot's queued work is done."""
        self.stream.synchronize()

    def release(self, cp: Any) -> None:
        """Unlock the host pages (at process end or when a stage is dropped)."""
        for array in self.registered:
            with contextlib.suppress(Exception):   # the CUDA context may already be gone at exit
                cp.cuda.runtime.hostUnregister(array.ctypes.data)
        self.registered.clear()
