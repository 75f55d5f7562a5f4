"""Compiling the CPU kernels with numba: one policy for every compiled twin.

numba is imported inside :func:`compile_nogil`, never at import time. A kernel is compiled
``nogil`` (tasks run it on many threads) and cached on disk (``__pycache__`` beside its
source, or ``$NUMBA_CACHE_DIR``); where no cache location is writable it is compiled once
per process instead, with a warning, rather than failing the run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def cache_usable() -> bool:
    """Whether numba can write its on-disk cache somewhere (else compile per process).

    numba itself raises at decoration time when no location is writable, and an
    explicit ``$NUMBA_CACHE_DIR`` that cannot be written would fail the same way.
    """
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if not explicit:
        return True  # numba probes __pycache__ and the user-wide cache itself
    try:
        os.makedirs(explicit, exist_ok=True)
        tempfile.TemporaryFile(dir=explicit).close()
    except OSError:
        return False
    return True


def compile_nogil(body: Callable[..., Any], what: str, *, contract: bool = False,
                  signature: Callable[[Any], Any] | None = None, numpy_errors: bool = False) -> Any:
    """The numba dispatcher of ``body`` (``what`` names it in warnings): nogil, disk-cached if possible.

    ``contract``: let LLVM fuse ``a * b + c`` into one FMA (exactly rounded, so at least as
    accurate; no other fast-math flag: no reassociation, no approximate functions). Only for
    kernels whose twin contract is a tolerance, not bit equality. ``signature``: given numba's
    ``types`` module, the one signature to compile (eagerly, at this call; e.g. arrays of any
    layout, so C, Fortran and strided blocks share one compiled body instead of one each).
    ``numpy_errors``: numba's NumPy error model, a float division by zero gives ±inf or NaN as
    in NumPy instead of raising: no test and branch per division, so LLVM can vectorise a loop
    that divides. Only for kernels whose divisors cannot be zero (the results are the same).
    """
    # numba highlights its messages through colorama, which swaps sys.stdout and
    # sys.stderr from whichever thread formats one and puts back what it saw: from a
    # background thread that can undo another thread's redirection (a rich live display,
    # a test's captured output). Plain messages need no swapping.
    os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
    # LLVM's SLP vectoriser packs the scoring kernel's written-out register blocks (4
    # centroids x 8 rows) into SIMD registers: 35 -> 20 ns a row for k = 8, F = 20 measured.
    # numba leaves it off by default (compile time); it changes no arithmetic (no fastmath).
    # Read at numba's import, so a process that imported numba before keeps its choice.
    os.environ.setdefault("NUMBA_SLP_VECTORIZE", "1")
    import numba

    options: dict[str, Any] = {"fastmath": {"contract"}} if contract else {}
    if numpy_errors:
        options["error_model"] = "numpy"
    # With a signature numba compiles it now and no other; without, lazily per argument types.
    jit = (lambda **kw: numba.njit(signature(numba.types), **kw)) if signature is not None else numba.njit
    if cache_usable():
        try:
            return jit(nogil=True, cache=True, **options)(body)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            warnings.warn(f"numba cannot cache the {what} ({exc}); compiling it once per process instead",
                          RuntimeWarning, stacklevel=3)
    else:
        warnings.warn(f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']} is not writable; the {what} is "
                      "compiled once per process instead", RuntimeWarning, stacklevel=3)
    return jit(nogil=True, cache=False, **options)(body)


class LazyKernel:
    """A kernel compiled (or loaded from numba's cache) by :func:`compile_nogil` on first use: once
    per process, whichever thread asks first (the others wait for it). ``options``: as
    :func:`compile_nogil`'s. Built under :func:`no_blas_probe` (an eager compile, with a
    ``signature``, loads numba's CPU target right here)."""

    def __init__(self, body: Callable[..., Any], what: str, **options: Any) -> None:
        self.body, self.what, self.options = body, what, options
        self.lock = threading.Lock()
        self.kernel: Any = None

    def get(self) -> Any:
        if self.kernel is None:
            with self.lock:
                if self.kernel is None:
                    with no_blas_probe():
                        self.kernel = compile_nogil(self.body, self.what, **self.options)
        return self.kernel


class _NoScipyLinalgHere:
    """An import hook that fails ``scipy.linalg`` imports of one thread only (see :func:`no_blas_probe`)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if threading.get_ident() == self.thread and (fullname == "scipy.linalg"
                                                     or fullname.startswith("scipy.linalg.")):
            raise ImportError(f"{fullname} is not needed by the compiled CPU kernels")
        return None


@contextmanager
def no_blas_probe() -> Iterator[None]:
    """Keep numba's first compile or cache load from importing ``scipy.linalg``.

    Initialising its CPU target, numba imports ``scipy.linalg`` only to learn whether
    BLAS is there for ``np.dot`` and friends, which no kernel here calls: 0.2-0.3 s of
    a scoring process's start, measured (0.86-0.94 s against 0.56-0.64 s to load the
    cached scoring kernel in a fresh process). The import fails for this thread alone, for
    this one call, and only where nothing has imported ``scipy.linalg`` yet: other threads,
    and later imports, see scipy as usual. Used by the scoring and the top-N kernels.
    """
    if "scipy.linalg" in sys.modules:
        yield
        return
    hook = _NoScipyLinalgHere()
    sys.meta_path.insert(0, hook)  # type: ignore[arg-type]
    try:
        yield
    finally:
        sys.meta_path.remove(hook)  # type: ignore[arg-type]
