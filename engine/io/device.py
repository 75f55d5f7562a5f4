"""Feature blocks on the compute device: the only place scoring moves data to a GPU.

On NumPy the host blocks are used as they are. On CuPy, blocks go through two pinned
host buffers and a dedicated copy stream: while the GPU computes block *i* (its
kernels are queued, nothing waits for them), the CPU fills the other pinned buffer
with block *i + 1* from Arrow and queues its copy, so the copy overlaps the compute.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

from engine.backends.namespace import is_numpy
from engine.io.matrix import BlockReader, block_view


def device_blocks(reader: BlockReader, xp: ModuleType) -> Iterator[tuple[int, int, Any]]:
    """``(start, stop, X)`` with ``X`` on ``xp``'s device; see the module docstring."""
    if is_numpy(xp):
        yield from reader
        return
    yield from _pinned_pipeline(reader, xp)


def _pinned_pipeline(reader: BlockReader, cp: ModuleType) -> Iterator[tuple[int, int, Any]]:
    import cupyx

    rows, n_features = reader.block_rows, reader.n_features
    pinned = [cupyx.empty_pinned((rows * n_features,), dtype=reader.dtype) for _ in range(2)]
    device = [cp.empty((rows * n_features,), dtype=reader.dtype) for _ in range(2)]
    copy_stream = cp.cuda.Stream(non_blocking=True)
    compute = cp.cuda.get_current_stream()
    # released[b]: the compute stream is done with device[b] (and so is the copy from pinned[b]).
    released: list[Any] = [None, None]
    bounds = reader.bounds()

    def stage(i: int) -> tuple[Any, Any]:
        b = i % 2
        if released[b] is not None:
            released[b].synchronize()
        start, stop = bounds[i]
        host = reader.fill(block_view(pinned[b], stop - start, n_features), start, stop)
        dev = block_view(device[b], stop - start, n_features)
        dev.set(host, stream=copy_stream)
        return dev, copy_stream.record()

    if not bounds:
        return
    staged = stage(0)
    for i, (start, stop) in enumerate(bounds):
        dev, copied = staged
        compute.wait_event(copied)
        yield start, stop, dev
        # The consumer has queued its kernels on block i; mark when they finish, then
        # fill and send block i + 1 while they run.
        released[i % 2] = compute.record()
        if i + 1 < len(bounds):
            staged = stage(i + 1)
