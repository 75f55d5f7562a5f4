"""engine/jobs/heap.py: after retain_batch_memory, batch-sized arrays come from the heap, not fresh mappings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Where a fresh 20 MiB and a 40 MiB array live: the [heap] (brk) or an anonymous mapping of their own.
PROBE = """
import sys
import numpy as np
if sys.argv[1] == "retain":
    from engine.jobs.heap import retain_batch_memory
    assert retain_batch_memory() and retain_batch_memory()   # set, and idempotent
def where(size):
    a = np.empty(size // 8)
    a[:] = 1.0
    for line in open("/proc/self/maps"):
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= a.ctypes.data < hi:
            return fields[5] if len(fields) > 5 else "anonymous"
print(where(20 << 20), where(40 << 20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="the policy is glibc's (mallopt); elsewhere retain_batch_memory does nothing")
def test_batch_sized_arrays_come_from_the_heap_after_retain_batch_memory() -> None:
    def run(mode: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        return out.stdout.split()

    # glibc's default: a first 20 MiB block is a mapping of its own (freed: unmapped, faulted in again).
    assert run("default") == ["anonymous", "anonymous"]
    # Retained: up to 32 MiB from the heap (kept there when freed); larger blocks are still mapped.
    assert run("retain") == ["[heap]", "anonymous"]
