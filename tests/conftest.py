"""Test-suite wide fixtures: the ``gpu`` marker and its skip.

Minimal version written alongside kernels/; the lead may replace it.
"""

from __future__ import annotations

import functools

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: needs a usable CUDA GPU and CuPy; skipped with a reason otherwise"
    )


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
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_unusable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"no usable GPU ({reason})")
    for item in gpu_items:
        item.add_marker(skip)
