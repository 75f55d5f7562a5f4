"""Test-suite wide: the ``gpu`` and ``cuml`` markers skip, with their reason, where they cannot run.

GPU tests never vanish: on a machine without a usable GPU (CI) they are reported as
skipped with the reason, e.g. ``no usable GPU (ModuleNotFoundError: No module named 'cupy')``.
"""

from __future__ import annotations

import functools
import importlib.util

import pytest


@functools.cache
def _gpu_unusable_reason() -> str | None:
    """None when CuPy imports and sees a device, else why not (asked once per session)."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CuPy, no driver, no device: all mean "no GPU"
        return f"{type(exc).__name__}: {exc}"
    if count <= 0:
        return "no CUDA device found"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("gpu") or item.get_closest_marker("cuml")]
    if not marked:
        return
    gpu_reason = _gpu_unusable_reason()
    cuml_missing = importlib.util.find_spec("cuml") is None
    for item in marked:
        if gpu_reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"no usable GPU ({gpu_reason})"))
        elif item.get_closest_marker("cuml") and cuml_missing:
            item.add_marker(pytest.mark.skip(reason="cuML is not installed (pip install '.[cu12]' or '.[cu13]')"))
