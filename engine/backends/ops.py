"""The engine's kernels for a namespace: the CUDA kernel on CuPy, its NumPy twin otherwise."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from engine.backends.namespace import is_numpy


def standardize(X: Any, fill: Any, mean: Any, inv_scale: Any, *, xp: ModuleType) -> Any:
    """``(where(isnan(X), fill, X) - mean) * inv_scale`` with the backend's scaling kernel."""
    from kernels import standardize as kernel

    if is_numpy(xp):
        return kernel.standardize(X, fill, mean, inv_scale, xp=xp)
    return kernel.standardize_cuda(X, fill, mean, inv_scale)
