"""``--gpus`` on one node: one dask-cuda worker per selected GPU, each scoring with its own stage.

Marked ``gpu`` (skipped with the reason on machines without a usable GPU); it also needs
dask-cuda, which the device machine gets from the carried wheels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from engine.cluster import cuda_worker_threads, default_threads, open_client, selected_gpus
from engine.config import Settings
from engine.jobs.score import ScoreOptions, _stage_settings, _task_threads, score


def test_cuda_workers_share_the_host_cores() -> None:
    """dask-cuda's default of one thread per worker would serialise decode, fill and encode per GPU."""
    cores = default_threads()
    assert cuda_worker_threads(Settings(gpus="0,1")) == max(1, cores // 2)
    assert cuda_worker_threads(Settings(gpus="0")) == cores
    assert cuda_worker_threads(Settings(gpus="0,1", threads_per_worker=3)) == 3
    assert _task_threads(Settings(gpus="0,1"), "gpu") == max(1, cores // 2)  # what --dry-run shows
    assert _task_threads(Settings(workers=2), "cpu") == 1


def test_gpu_stage_settings_follow_the_batches_and_threads() -> None:
    """Staging slots hold one batch at most (not 4M rows), and there is one per task thread."""
    spec = _stage_settings(Settings(), "gpu", 65_536, 16)
    assert (spec.gpu_block_rows, spec.gpu_slots, spec.gpu_tasks) == (65_536, 16, 2)
    assert _stage_settings(Settings(gpu_block_rows=1_000), "gpu", 65_536, None).gpu_block_rows == 1_000
    assert _stage_settings(Settings(gpu_block_rows=1_000), "gpu", 65_536, None).gpu_slots == 0
    assert _stage_settings(Settings(block_rows=512), "cpu", 65_536, 16).block_rows == 512


def _worker_view() -> tuple[str, int, str]:
    import os

    import cupy

    return os.environ.get("CUDA_VISIBLE_DEVICES", ""), cupy.cuda.runtime.getDeviceCount(), str(os.getpid())


@pytest.mark.gpu
def test_one_dask_cuda_worker_per_selected_gpu(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("dask_cuda", reason="dask-cuda is not installed (pip install '.[cu12]')")
    settings = Settings(gpus="0")
    assert selected_gpus(settings) == ["0"]
    with open_client(settings, "gpu") as client:
        views = client.run(_worker_view)
        nthreads = client.nthreads()
    assert len(views) == 1  # one worker for the one selected GPU
    assert list(nthreads.values()) == [cuda_worker_threads(settings)]
    (visible, count, _pid), = views.values()
    assert visible.split(",")[0] == "0" and count >= 1
    # A run on a LocalCUDACluster (--workers with the GPU backend): the worker process
    # scores through its own GPU stage, with the CPU backend's scores.
    out = tmp_path / "gpu-cluster"
    manifest = score(ScoreOptions(input=str(dataset_dir), model=str(model_dir), output=str(out), backend="gpu",
                                  progress="quiet"), Settings(gpus="0", workers=1))
    assert len({p["worker"] for p in manifest["partitions"]}) == 1
    local = tmp_path / "local-cpu"
    score(ScoreOptions(input=str(dataset_dir), model=str(model_dir), output=str(local), backend="cpu",
                       progress="quiet"), Settings())
    a = ds.dataset(out).to_table().sort_by("customer_id")
    b = ds.dataset(local).to_table().sort_by("customer_id")
    assert a.column("customer_id").equals(b.column("customer_id"))
    assert np.array_equal(a.column("segment").to_numpy(), b.column("segment").to_numpy())
    np.testing.assert_allclose(a.column("propensity").to_numpy(), b.column("propensity").to_numpy(), atol=1e-6)


def test_slots_follow_the_worker_threads() -> None:
    """A GPU stage in a Dask worker (an attached ``dask cuda worker``) makes one slot per worker
    thread, not one per core of the host; outside a worker, one per core."""
    from distributed import Client, LocalCluster

    from engine.backends.gpu_stage import slot_count, task_threads_here

    assert task_threads_here() == default_threads()
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        assert client.submit(task_threads_here, pure=False).result() == 3
        assert client.submit(slot_count, 1, pure=False).result() == 3
        assert client.submit(slot_count, 2, pure=False).result() == 4  # two per device turn at least
