"""Both benchmark scripts write the per-method figures under the names issue 11 fixes.

``end_to_end.{io_floor, engine_cpu, engine_gpu}`` is read independently of the scripts,
so a smoke run of each (tiny sizes) is checked for it here; found missing from
``bench.score_bench`` by QA.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("rows_per_s", "inner_rows_per_s", "peak_rss_mib", "thread_seconds")


def _run(module: str, *args: object, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _check(end_to_end: dict, rows: int) -> None:
    for method in ("io_floor", "engine_cpu"):
        entry = end_to_end[method]
        assert all(k in entry for k in FIELDS), (method, sorted(entry))
        assert entry["rows_per_s"] > 0 and entry["inner_rows_per_s"] >= entry["rows_per_s"]
        assert set(entry["thread_seconds"]) >= {"read", "compute", "write"}
        assert entry["rows"] == rows
    gpu = end_to_end["engine_gpu"]
    assert (gpu.get("skipped") is True and gpu["reason"]) or all(k in gpu for k in FIELDS)


@pytest.mark.parametrize("module, extra, pattern", [
    ("bench.score_bench", ["--skip-pandas", "--floor-pools", "1", "--features", "20"], "score-latest.json"),
    ("bench.gpu_bench", ["--skip-heavy", "--skip-device", "--floor-pool", "1"], "gpu-*-latest.json"),
])
def test_smoke_run_writes_end_to_end_per_method(module: str, extra: list[str], pattern: str, tmp_path: Path) -> None:
    rows = 20_000
    out = tmp_path / "results"
    _run(module, "--rows", rows, "--files", 2, "--workdir", tmp_path / "work", "--out", out, *extra,
         tmp_path=tmp_path)
    (latest,) = out.glob(pattern)
    payload = json.loads(latest.read_text())
    _check(payload["end_to_end"], rows)
    if "--features" in extra:  # issue 17's configuration: rows x features x files, as asked
        assert payload["parameters"]["features"] == int(extra[extra.index("--features") + 1])


def test_store_bench_smoke_run(tmp_path: Path) -> None:
    """bench.store_bench against its own moto server: every layout measured, read floor with and
    without pre-buffering, the machine recorded."""
    pytest.importorskip("moto", reason="moto[server] (the dev extra) is not installed")
    pytest.importorskip("boto3", reason="boto3 (the s3 extra) is not installed")
    rows = 20_000
    out = tmp_path / "results"
    _run("bench.store_bench", "--rows", rows, "--files", 2, "--workdir", tmp_path / "work", "--out", out,
         tmp_path=tmp_path)
    payload = json.loads((out / "store-latest.json").read_text())
    assert set(payload["results"]) == {"local", "store-in", "store-out", "store"}
    for entry in payload["results"].values():
        assert entry["rows"] == rows and entry["rows_per_s"] > 0 and entry["vs_local_wall"] > 0
    assert set(payload["pyarrow_read_floor"]) == {"pre_buffer", "no_pre_buffer"}
    assert payload["machine"]["cores_usable"] >= 1 and payload["machine"]["cpu_model"]
