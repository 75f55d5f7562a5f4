"""The engine on a real Dask cluster: one ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1, started here as subprocesses (no in-process fakes).

Workers run with ``--no-nanny`` so that the process we SIGKILL is the worker itself
(a nanny would restart it), with one thread each, and in a working directory of their
own, so that a relative path that only the client understands would show.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import ClusterError

ROWS = 160_000
FILES = 4
PARTITION_ROWS = 4_000  # and row groups of that size: 40 tasks, enough for a worker to die mid-run
START_TIMEOUT_S = 60.0


def _dask(*args: str) -> list[str]:
    # `python -m dask` is the `dask` command, run by this interpreter whatever PATH says.
    return [sys.executable, "-m", "dask", *args]


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


@dataclass
class Cluster:
    address: str
    root: Path
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, name: str, *, wrap: list[str] | None = None) -> subprocess.Popen[bytes]:
        """A ``dask worker`` process (optionally under ``wrap``, a command prefix)."""
        cwd = self.root / f"cwd-{name}"
        cwd.mkdir(exist_ok=True)
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        cmd = _dask("worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                    "--name", name, "--death-timeout", "30")
        proc = subprocess.Popen([*(wrap or []), *cmd], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.workers.append(proc)
        return proc

    def live_workers(self) -> dict[str, dict]:
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            return client.scheduler_info(n_workers=-1)["workers"]

    def wait_for_workers(self, names: set[str], timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if names <= {w.get("name") for w in self.live_workers().values()}:
                return
            time.sleep(0.2)
        raise AssertionError(f"workers {names} did not join {self.address} within {timeout_s}s; "
                             f"see the logs under {self.root}")


@contextmanager
def _running_cluster(root: Path, workers: list[str], env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, stopped on exit."""
    sched_file = root / "scheduler.json"
    log = open(root / "scheduler.log", "wb")  # noqa: SIM115 - closed with the process
    scheduler = subprocess.Popen(
        _dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(sched_file)),
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    log.close()
    c = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not sched_file.is_file() or not sched_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dask scheduler did not start: {(root / 'scheduler.log').read_text()}")
            time.sleep(0.1)
        c = Cluster(json.loads(sched_file.read_text())["address"], root, scheduler)
        for name in workers:
            c.start_worker(name)
        c.wait_for_workers(set(workers))
        yield c
    finally:
        for proc in (c.workers if c else []):
            _stop(proc)
        _stop(scheduler)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with _running_cluster(tmp_path_factory.mktemp("dask-cluster"), ["w1", "w2"]) as c:
        yield c


@dataclass(frozen=True)
class Data:
    input: Path
    model: Path
    local: pa.Table  # the scores of a local run, sorted by id


def _sorted_scores(path: Path) -> pa.Table:
    return ds.dataset(path, format="parquet").to_table().sort_by("customer_id")


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output + (str(result.exception) if result.exception and
                                               not isinstance(result.exception, SystemExit) else "")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("dist-data")
    code, out = _invoke("generate", "--rows", str(ROWS), "--files", str(FILES), "--out", str(root / "in"),
                        "--row-group-rows", str(PARTITION_ROWS))
    assert code == 0, out
    code, out = _invoke("train", "--input", str(root / "in"), "--target", "churned", "--output",
                        str(root / "model"), "--k", "4", "--sample-rows", "20000", "--quiet")
    assert code == 0, out
    code, out = _invoke("score", "--input", str(root / "in"), "--model", str(root / "model"), "--output",
                        str(root / "local"), "--partition-rows", str(PARTITION_ROWS), "--quiet")
    assert code == 0, out
    return Data(root / "in", root / "model", _sorted_scores(root / "local"))


def _assert_same_rows(output: Path, expected: pa.Table) -> None:
    got = _sorted_scores(output)
    assert (output / "_SUCCESS").is_file()
    assert got.num_rows == expected.num_rows
    ids = got.column("customer_id").to_numpy()
    assert np.unique(ids).size == ids.size, "a customer appears twice"
    assert got.schema.equals(expected.schema)
    for name in ("customer_id", "segment"):
        assert got.column(name).equals(expected.column(name)), f"{name} differs from the local run"
    # float32 arithmetic in a BLAS whose threading differs between processes may round
    # the last bit differently; a few ulps, never more.
    for name in ("segment_distance", "propensity"):
        np.testing.assert_allclose(got.column(name).to_numpy(), expected.column(name).to_numpy(),
                                   rtol=1e-6, atol=1e-7, err_msg=f"{name} differs from the local run")


def test_score_on_cluster_matches_local_run(cluster: Cluster, data: Data, tmp_path: Path) -> None:
    # A relative --input: the workers live in other directories, so the engine must hand
    # them absolute paths.
    rel_input = os.path.relpath(data.input)
    code, out = _invoke("score", "--input", rel_input, "--model", str(data.model), "--output",
                        str(tmp_path / "out"), "--scheduler", cluster.address,
                        "--partition-rows", str(PARTITION_ROWS), "--quiet")
    assert code == 0, out
    _assert_same_rows(tmp_path / "out", data.local)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    pids = {p["worker"].rsplit(":", 1)[1] for p in manifest["partitions"]}
    assert pids <= {str(w.pid) for w in cluster.workers}, "parts must come from the cluster's workers"


def test_reason_codes_on_cluster_equal_the_local_run(cluster: Cluster, data: Data, tmp_path: Path) -> None:
    """Worker processes load the reason-code kernel themselves: the same codes as in-process."""
    outputs = {}
    for where, flags in (("local", []), ("cluster", ["--scheduler", cluster.address])):
        code, out = _invoke("score", "--input", str(data.input), "--model", str(data.model), "--output",
                            str(tmp_path / where), "--partition-rows", str(PARTITION_ROWS), "--reasons", "3",
                            "--quiet", *flags)
        assert code == 0, out
        outputs[where] = _sorted_scores(tmp_path / where)
    for name in ("customer_id", "reason_1", "reason_2", "reason_3"):
        assert outputs["cluster"].column(name).to_pylist() == outputs["local"].column(name).to_pylist(), name
    assert outputs["cluster"].column("reason_1").null_count < outputs["cluster"].num_rows


def test_scheduler_from_environment(cluster: Cluster, data: Data, tmp_path: Path) -> None:
    code, out = _invoke("score", "--input", str(data.input), "--model", str(data.model), "--output",
                        str(tmp_path / "out"), "--partition-rows", "100000", "--quiet",
                        env={"ENGINE_SCHEDULER": cluster.address})
    assert code == 0, out
    _assert_same_rows(tmp_path / "out", data.local)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["settings"]["scheduler"] == cluster.address


def test_train_on_cluster_matches_local_training(cluster: Cluster, data: Data, tmp_path: Path) -> None:
    from engine.models.artifact import load_model

    code, out = _invoke("train", "--input", str(data.input), "--target", "churned", "--output",
                        str(tmp_path / "model"), "--k", "4", "--sample-rows", "20000",
                        "--scheduler", cluster.address)
    assert code == 0, out
    assert f"Dask worker(s) ({cluster.address})" in out
    local, remote = load_model(data.model), load_model(tmp_path / "model")
    # Same sample read by the workers: the same model, bit for bit.
    np.testing.assert_array_equal(local.centroids, remote.centroids)
    np.testing.assert_array_equal(local.coef, remote.coef)
    assert local.intercept == remote.intercept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_fails_fast_with_exit_8(data: Data, tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "score", "--input", str(data.input), "--model", str(data.model),
         "--output", str(tmp_path / "out"), "--scheduler", address, "--connect-timeout", "2", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 8, proc.stderr
    assert address in proc.stderr and "cannot reach the Dask scheduler" in proc.stderr
    assert elapsed < 30, f"took {elapsed:.1f}s"
    assert not (tmp_path / "out").exists()


def test_worker_that_cannot_see_a_path_is_named(cluster: Cluster, tmp_path: Path) -> None:
    from distributed import Client

    from engine.cluster import require_paths_on_workers

    missing = str(tmp_path / "nowhere")
    with Client(cluster.address, timeout=10, set_as_default=False) as client:
        addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
        require_paths_on_workers(client, [str(tmp_path)], [str(tmp_path)])  # all fine: no error
        with pytest.raises(ClusterError) as err:
            require_paths_on_workers(client, [missing], [])
    message = str(err.value)
    for address in addresses:
        assert f"{address} (worker " in message and f"cannot see {missing}" in message


def _private_tmpfs_prefix(hidden: Path) -> list[str] | None:
    """A command prefix that runs a process with ``hidden`` covered by an empty tmpfs, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs none '{hidden}' && test ! -e '{hidden}/probe'"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return [unshare, "-m", "--propagation", "private", "sh", "-c",
            f"mount -t tmpfs none '{hidden}' && exec \"$0\" \"$@\""]


def test_score_fails_fast_when_a_worker_cannot_see_the_input(cluster: Cluster, data: Data,
                                                             tmp_path: Path) -> None:
    # A real third worker whose filesystem view lacks the input: the input's directory is
    # covered by an empty tmpfs in that worker's own mount namespace (needs unshare + mount
    # rights, e.g. root in a container; skipped otherwise).
    private = tmp_path / "private"
    shutil.copytree(data.input, private)
    (private / "probe").touch()
    prefix = _private_tmpfs_prefix(private)
    if prefix is None:
        pytest.skip("no private mount namespaces here (unshare -m / mount tmpfs not permitted)")
    blind = cluster.start_worker("blind", wrap=prefix)
    try:
        cluster.wait_for_workers({"w1", "w2", "blind"})
        t0 = time.monotonic()
        code, out = _invoke("score", "--input", str(private), "--model", str(data.model), "--output",
                            str(tmp_path / "out"), "--scheduler", cluster.address, "--quiet")
        assert code == 8, out
        assert time.monotonic() - t0 < 30
        assert f"cannot see {private}/" in out  # the share's files, not just its mount point
        blind_address = next(a for a, w in cluster.live_workers().items() if w.get("name") == "blind")
        assert blind_address in out
        problems = [line for line in out.splitlines() if "cannot see" in line]
        assert problems and all(blind_address in line for line in problems), "only the blind worker lacks it"
        assert not (tmp_path / "out").exists()
    finally:
        _stop(blind)
        cluster.workers.remove(blind)


def _worker_pids_in_sidecars(parts_dir: Path) -> set[int]:
    pids = set()
    for sidecar in parts_dir.glob("part-*.json"):
        try:
            pids.add(int(json.loads(sidecar.read_text())["worker"].rsplit(":", 1)[1]))
        except (OSError, ValueError, KeyError):
            continue  # being renamed into place
    return pids


def _score_killing_after_first_part(address: str, victim: subprocess.Popen[bytes], data: Data,
                                    out_dir: Path, env: dict[str, str] | None = None
                                    ) -> tuple[subprocess.Popen[str], int, str]:
    """Run ``engine score`` on the cluster and SIGKILL ``victim`` once it has written a part.

    With one thread and dozens of tasks queued the victim has usually picked up its next
    task by then, so that task dies with it. Returns the finished run, the number of parts
    written at the moment of the kill, and the run's stderr.
    """
    parts_dir = out_dir.parent / f".{out_dir.name}.engine" / "staging" / "_parts"
    run = subprocess.Popen(
        [sys.executable, "-m", "engine", "score", "--input", str(data.input), "--model", str(data.model),
         "--output", str(out_dir), "--scheduler", address, "--partition-rows", str(PARTITION_ROWS), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 60
        while victim.pid not in _worker_pids_in_sidecars(parts_dir):
            assert run.poll() is None, f"the run ended before the kill:\n{run.communicate()}"
            assert time.monotonic() < deadline, "the victim wrote no part within 60s"
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        parts_at_kill = len(list(parts_dir.glob("part-*.json")))
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return run, parts_at_kill, stderr


def test_sigkill_of_a_worker_mid_run_loses_no_customer(cluster: Cluster, data: Data, tmp_path: Path) -> None:
    victim = next(w for w in cluster.workers if w.poll() is None)
    out_dir = tmp_path / "out"
    run, parts_at_kill, stderr = _score_killing_after_first_part(cluster.address, victim, data, out_dir)
    cluster.workers.remove(victim)
    assert parts_at_kill < ROWS // PARTITION_ROWS, "the kill came after the last part: proves nothing"
    assert run.returncode == 0, stderr
    _assert_same_rows(out_dir, data.local)
    ids = _sorted_scores(out_dir).column("customer_id")
    input_ids = ds.dataset(data.input, format="parquet").to_table(columns=["customer_id"]).column(0)
    assert ids.equals(input_ids.take(np.argsort(input_ids.to_numpy(), kind="stable"))), \
        "every input customer exactly once"
    manifest = json.loads((out_dir / "_manifest.json").read_text())
    assert manifest["totals"]["rows_in"] == manifest["totals"]["rows_out"] == ROWS
    assert manifest["totals"]["parts"] == ROWS // PARTITION_ROWS
    assert sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("_")) == \
        [f"part-{i:05d}.parquet" for i in range(ROWS // PARTITION_ROWS)], "stray files were published"


def test_too_many_dead_workers_fail_cleanly_with_nothing_published(data: Data, tmp_path: Path) -> None:
    """A scheduler that allows no failures and its only worker killed: exit 8, nothing published.

    Either the task the worker was running is failed (``KilledWorker``), or, if the
    worker was between tasks, the run gives up on a cluster without workers.
    """
    root = tmp_path / "strict"
    root.mkdir()
    out_dir = tmp_path / "out"
    with _running_cluster(root, ["only"], env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}) as strict:
        run, _, stderr = _score_killing_after_first_part(
            strict.address, strict.workers[0], data, out_dir,
            # The killed worker may have been between tasks (no task dies with it): then the
            # run must give up waiting for workers rather than hang.
            env={"ENGINE_NO_WORKER_TIMEOUT_S": "3"})
    assert run.returncode == ClusterError.exit_code, stderr
    assert "died" in stderr and "nothing was published" in stderr
    assert not out_dir.exists(), "a failed run published output"


def test_runner_waits_through_tasks_longer_than_its_poll(cluster: Cluster) -> None:
    """Tasks that take longer than the runner's 1 s poll still deliver every result."""
    from distributed import Client

    from engine.cluster import ClientRunner
    from engine.config import Settings

    seen = []
    with Client(cluster.address, timeout=10, set_as_default=False) as client:
        runner = ClientRunner(client, Settings(scheduler=cluster.address, no_worker_timeout_s=5))
        t0 = time.monotonic()
        results = runner.map(time.sleep, [1.6, 1.6, 1.6], "slow-sleep", on_result=seen.append)
    assert time.monotonic() - t0 >= 1.6
    assert results == [None, None, None] and len(seen) == 3
