"""Which backends can run here, found without starting CUDA.

GPU presence is read through NVML (``libnvidia-ml``) with ctypes: it needs no CUDA
context, so a dask-cuda cluster started afterwards can still give each worker its
own GPU. CuPy is only *located* (``importlib.util.find_spec``), not imported.
"""

from __future__ import annotations

import ctypes
import importlib.util
from dataclasses import dataclass, field

from engine.errors import BackendError, UsageError

BACKENDS = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class BackendStatus:
    """What this machine offers: devices seen and why the GPU backend can or cannot run."""

    gpu_devices: list[str] = field(default_factory=list)
    gpu_reason: str = ""
    cupy_available: bool = False
    cuml_available: bool = False
    dask_cuda_available: bool = False

    @property
    def gpu_usable(self) -> bool:
        return bool(self.gpu_devices) and self.cupy_available


def _nvml_devices() -> tuple[list[str], str]:
    """Device names from NVML, or an empty list and the reason."""
    for name in ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll"):
        try:
            nvml = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return [], "no NVIDIA driver found (libnvidia-ml could not be loaded)"
    try:
        if nvml.nvmlInit_v2() != 0:
            return [], "NVIDIA driver present but nvmlInit failed"
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return [], "nvmlDeviceGetCount failed"
        names = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                continue
            buf = ctypes.create_string_buffer(96)
            nvml.nvmlDeviceGetName(handle, buf, ctypes.c_uint(96))
            names.append(f"{index}: {buf.value.decode(errors='replace')}")
        nvml.nvmlShutdown()
    except Exception as exc:  # any NVML trouble means "no GPU", never a crash
        return [], f"NVML error: {exc}"
    if not names:
        return [], "the NVIDIA driver reports no GPU"
    return names, ""


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect() -> BackendStatus:
    """Probe the machine for GPUs (NVML) and GPU libraries (located, not imported)."""
    devices, reason = _nvml_devices()
    cupy = _has_module("cupy")
    if devices and not cupy:
        reason = "a GPU is present but CuPy is not installed (pip install '.[cu12]' or '.[cu13]')"
    return BackendStatus(
        gpu_devices=devices,
        gpu_reason=reason,
        cupy_available=cupy,
        cuml_available=_has_module("cuml"),
        dask_cuda_available=_has_module("dask_cuda"),
    )


def resolve_backend(requested: str, status: BackendStatus | None = None) -> str:
    """Turn ``auto|cpu|gpu`` into ``cpu`` or ``gpu``; an explicit ``gpu`` that cannot run is an error."""
    if requested not in BACKENDS:
        raise UsageError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "cpu":
        return "cpu"
    status = status or detect()
    if status.gpu_usable:
        return "gpu"
    if requested == "gpu":
        raise BackendError(
            f"--backend gpu was requested but the GPU backend cannot run here: {status.gpu_reason}. "
            "Use --backend cpu (or auto), or run on a machine with an NVIDIA GPU and CuPy."
        )
    return "cpu"
