"""The array namespace ``xp`` of a backend, and the only host/device moves of the engine."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def get_xp(backend: str) -> ModuleType:
    """NumPy for ``cpu``, CuPy for ``gpu`` (imported here, late, in the process that computes)."""
    if backend == "cpu":
        return np
    if backend == "gpu":
        import cupy

        return cupy
    raise ValueError(f"backend must be 'cpu' or 'gpu', not {backend!r}")


def is_numpy(xp: ModuleType) -> bool:
    return xp is np


def to_device(xp: ModuleType, array: Any) -> Any:
    """Host array to the namespace's device (a no-op for NumPy)."""
    return array if is_numpy(xp) else xp.asarray(array)


def asnumpy(array: Any) -> np.ndarray:
    """Any backend's array to a host NumPy array."""
    if isinstance(array, np.ndarray):
        return array
    get = getattr(array, "get", None)
    return get() if callable(get) else np.asarray(array)
