"""Lazy, per-device cached loading of the ``kernels/*.cu`` sources through CuPy.

CuPy is imported only inside these functions, so importing the ``kernels`` package
never starts CUDA (dask-cuda must be able to pin each worker to its GPU first).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

#: Options shared by every kernel build (NVRTC through CuPy, and nvcc in the tests). No
#: fast-math: the kernels test NaN as x != x. ``--fmad=false``: no multiply-add is
#: contracted into an FMA, so the kernels round ``x * a + d`` and ``acc += diff * diff``
#: twice, as the NumPy twins and the numba CPU kernel do, and GPU results equal the CPU's
#: bit for bit (NVRTC contracts by default; in a memory-bound kernel the extra
#: instructions cost nothing measurable). tests/kernels/test_compile.py checks the PTX.
COMPILE_OPTIONS: tuple[str, ...] = ("-std=c++17", "--fmad=false")

_KERNEL_DIR = Path(__file__).resolve().parent
_lock = threading.Lock()
# (kernel name, name_expressions, device id) -> cupy.RawModule
_modules: dict[tuple[str, tuple[str, ...], int], Any] = {}
# (kernel name, function, device id) -> cupy.RawKernel; looked up on every launch.
_kernels: dict[tuple[str, str, int], Any] = {}


def kernel_source(name: str) -> Path:
    """Return the path of ``kernels/<name>.cu``.

    The ``.cu`` files ship as package data, so this works from a source tree and from
    an installed wheel alike. Raises ``FileNotFoundError`` for an unknown kernel.
    """
    path = _KERNEL_DIR / f"{name}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"no CUDA source for kernel {name!r} at {path}")
    return path


def get_module(name: str, name_expressions: tuple[str, ...] = ()) -> Any:
    """Return the ``cupy.RawModule`` built from ``kernels/<name>.cu`` for the current device.

    Built on first use and cached per (kernel, name expressions, device), because a
    module loaded on one GPU cannot launch on another. ``name_expressions`` is only
    needed for kernels that expose C++ template names; ``extern "C"`` names need none.
    """
    import cupy

    device = cupy.cuda.runtime.getDevice()
    key = (name, tuple(name_expressions), device)
    module = _modules.get(key)
    if module is None:
        with _lock:
            module = _modules.get(key)
            if module is None:
                code = kernel_source(name).read_text(encoding="utf-8")
                kwargs: dict[str, Any] = {"code": code, "options": COMPILE_OPTIONS}
                if name_expressions:
                    kwargs["name_expressions"] = list(name_expressions)
                module = cupy.RawModule(**kwargs)
                # Compile now, under the lock and on this device, rather than at first launch.
                module.compile()
                _modules[key] = module
    return module


def get_kernel(name: str, function: str) -> Any:
    """Return the ``cupy.RawKernel`` ``function`` of ``kernels/<name>.cu`` for the current device."""
    import cupy

    key = (name, function, cupy.cuda.runtime.getDevice())
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = get_module(name).get_function(function)
        _kernels[key] = kernel  # a racing duplicate is harmless: same compiled module
    return kernel


def clear_cache() -> None:
    """Forget every loaded module (for tests; CuPy keeps its own on-disk cache)."""
    with _lock:
        _modules.clear()
        _kernels.clear()
