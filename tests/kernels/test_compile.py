"""Every kernels/*.cu compiles without a GPU (nvcc, and NVRTC when available).

The sources are globbed, so a new kernel is covered by adding its .cu file. The
package-level checks (lazy CuPy import, source lookup) live here too because they
concern all kernels at once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kernels
from kernels import _loader

KERNEL_DIR = Path(kernels.__file__).resolve().parent
CU_FILES = sorted(KERNEL_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")

# extern "C" entry points the Python side launches, per source. Checked against the
# compiled PTX so a renamed kernel fails here rather than on the first GPU run.
EXPECTED_ENTRIES = {
    "standardize": {"engine_standardize_f32", "engine_standardize_f64"},
    "score_rows": {"engine_score_rows_f32", "engine_score_rows_f64"},
    "topn_offers": {"engine_topn_offers_f32", "engine_topn_offers_f64"},
}


def _ids(path: Path) -> str:
    return path.name


def _nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found on PATH; install the CUDA toolkit to check kernel compilation")
    return nvcc


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def test_kernel_sources_exist() -> None:
    # An empty glob would make every parametrized test below vanish silently.
    assert CU_FILES, f"no .cu files found in {KERNEL_DIR}"
    assert {p.stem for p in CU_FILES} >= set(EXPECTED_ENTRIES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cu", CU_FILES, ids=_ids)
def test_nvcc_compiles_cubin(cu: Path, arch: str, tmp_path: Path) -> None:
    nvcc = _nvcc()
    out = tmp_path / f"{cu.stem}.{arch}.cubin"
    cmd = [nvcc, *_loader.COMPILE_OPTIONS, f"-arch={arch}", "--cubin", "-o", str(out), str(cu)]
    proc = _run(cmd)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}\n{proc.stdout}"
    assert out.stat().st_size > 0


@pytest.mark.parametrize("cu", CU_FILES, ids=_ids)
def test_nvcc_ptx_exports_namespaced_entries(cu: Path, tmp_path: Path) -> None:
    nvcc = _nvcc()
    out = tmp_path / f"{cu.stem}.ptx"
    cmd = [nvcc, *_loader.COMPILE_OPTIONS, "-arch=sm_80", "-ptx", "-o", str(out), str(cu)]
    proc = _run(cmd)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}\n{proc.stdout}"
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", out.read_text()))
    assert entries, "no kernel entry points in PTX"
    # extern "C" keeps names unmangled; the engine_ prefix keeps them from clashing.
    assert all(name.startswith("engine_") for name in entries), entries
    assert entries >= EXPECTED_ENTRIES.get(cu.stem, set())


def _fma_count(nvcc: str, source: Path, options: list[str], arch: str, out: Path) -> int:
    cmd = [nvcc, *options, f"-arch={arch}", "-ptx", "-o", str(out), str(source)]
    proc = _run(cmd)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}\n{proc.stdout}"
    return len(re.findall(r"^\s*fma\.", out.read_text(), flags=re.MULTILINE))


def _without_exp(cu: Path, tmp_path: Path) -> Path:
    """A copy of ``cu`` whose exp/expf return their argument.

    libdevice's exp is built from explicit fma calls (``__fma_rn``, which ``--fmad=false``
    rightly keeps); with exp stubbed out, every fma left in the PTX would be one the
    compiler contracted from the kernel's own ``a * b + c``.
    """
    src = cu.read_text()
    stubbed = src.replace("return expf(x);", "return x;").replace("return exp(x);", "return x;")
    if cu.stem == "score_rows":
        assert stubbed.count("return x;") == 2, "exp_t changed: update this test's stub"
    path = tmp_path / cu.name
    path.write_text(stubbed)
    return path


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cu", CU_FILES, ids=_ids)
def test_no_fma_contraction(cu: Path, arch: str, tmp_path: Path) -> None:
    """The kernels are built without FMA contraction, so GPU float64 results equal the CPU's.

    NVRTC and nvcc contract ``x * a + d`` into one ``fma.rn`` by default (rounded once),
    while NumPy and numba round the product and the sum separately. ``--fmad=false`` is in
    the options CuPy compiles with; the control build without it shows the check can fail.
    """
    assert "--fmad=false" in _loader.COMPILE_OPTIONS
    nvcc = _nvcc()
    source = _without_exp(cu, tmp_path)
    got = _fma_count(nvcc, source, list(_loader.COMPILE_OPTIONS), arch, tmp_path / "nofma.ptx")
    assert got == 0, f"{cu.name}: {got} fma instruction(s) in the PTX built with {_loader.COMPILE_OPTIONS}"
    if cu.stem == "score_rows":
        contracting = [o for o in _loader.COMPILE_OPTIONS if not o.startswith("--fmad")]
        assert _fma_count(nvcc, source, contracting, arch, tmp_path / "fma.ptx") > 0


@pytest.mark.parametrize("cu", CU_FILES, ids=_ids)
def test_nvrtc_compiles(cu: Path) -> None:
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    try:
        err, prog = nvrtc.nvrtcCreateProgram(cu.read_bytes(), cu.name.encode(), 0, [], [])
    except RuntimeError as exc:  # cuda-bindings present but no libnvrtc to load
        pytest.skip(f"NVRTC library not loadable: {exc}")
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    try:
        opts = [o.encode() for o in _loader.COMPILE_OPTIONS] + [b"--gpu-architecture=compute_80"]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def test_import_does_not_import_cupy() -> None:
    # A fresh interpreter: this test session may have imported CuPy already.
    code = (
        "import sys, kernels, kernels._loader, kernels.standardize, kernels.score_rows; "
        "bad = [m for m in ('cupy', 'cupyx', 'cuda') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = KERNEL_DIR.parent
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_kernel_source_paths() -> None:
    for cu in CU_FILES:
        assert _loader.kernel_source(cu.stem) == cu
    with pytest.raises(FileNotFoundError):
        _loader.kernel_source("no_such_kernel")


@pytest.mark.gpu
def test_loader_caches_per_device() -> None:
    cp = pytest.importorskip("cupy")
    first = _loader.get_module("standardize")
    assert _loader.get_module("standardize") is first
    kernel = _loader.get_kernel("standardize", "engine_standardize_f32")
    assert kernel is not None
    with cp.cuda.Device(0):
        assert _loader.get_module("standardize") is first
