"""``engine recommend``'s compiled CPU kernels, loaded on a background thread once per process.

Importing numba and loading the top-N kernel from numba's cache costs about 0.23 s in a quiet
process (0.11 s import, 0.12 s for the first kernel: LLVM's start-up) and up to 0.6 s when the
task threads contend with it for the GIL; the block scan then adds 3 ms. A run
(:func:`engine.jobs.recommend.execute`) starts the load as it starts, so that it overlaps the
reading of the first batches. (Started by the CLI before it imports the job, it gained
nothing measurable: 0.89-0.95 s for a 1M-row T = 1 run either way; numba's load holds the
GIL as the imports do.)

The cyclic garbage collector is off while numba loads, and the objects left then (some 70,000
of numba's: modules, types, dispatchers, which live as long as the process, and whatever else
exists) are frozen (``gc.freeze``): otherwise numba's import sets off two full collections over
them (0.06 and 0.13 s measured, holding the GIL while the task threads wait for it) and every
later full collection of the run walks them again. Left alone where the process already froze
objects itself or runs without the collector. A load that fails is not reported here: the
first block loads the kernel again and raises it.

Light on purpose: importing this module imports nothing of numpy, pyarrow or numba.
"""

from __future__ import annotations

import contextlib
import gc
import threading

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _load() -> None:
    quiet = gc.isenabled() and not gc.get_freeze_count()
    if quiet:
        gc.disable()
    try:
        with contextlib.suppress(Exception):
            from kernels.topn_offers_cpu import warm

            warm()
        with contextlib.suppress(Exception):
            from kernels.block_scan import warm as warm_scan

            warm_scan()
    finally:
        if quiet:
            gc.freeze()
            gc.enable()


def start_recommend_kernels() -> threading.Thread:
    """Start loading the kernels on a daemon thread (once per process); returns that thread."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_load, name="engine-topn-prewarm", daemon=True)
            _thread.start()
        return _thread
