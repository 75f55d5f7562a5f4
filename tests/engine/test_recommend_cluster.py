"""``engine recommend`` on Dask: an existing cluster (``--scheduler``) and a local one (``--workers``).

Real parts: a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1
(test_distributed's helper), a ``LocalCluster`` of worker processes started by the engine,
Parquet files with infinite values (rejected by default), a model from ``engine train
--offers``, the compiled kernel and the score commit protocol. A cluster run must publish
what the local run publishes: the same long output and the same ``_rejected/`` rows, with
and without budgets (the budgets' sample is drawn per fragment by the tasks, with a
generator seeded by the fragment's index, so the prices are the same wherever it runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from test_object_store import _keys, _upload_dir, _uri, s3  # noqa: F401 - s3 is a fixture (moto server)
from test_recommend import catalogue, customers, killed_after_a_part, write

ROWS = 6_000
PARTITION_ROWS = 1_000          # 6 tasks over 3 files
INF_ROWS = (3, 1_999, 4_500)    # an infinite f1: rejected (the default policy)
BUDGETS = {0: 300, 2: 700, 3: 900}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (test_distributed's)."""
    from test_distributed import _running_cluster

    with _running_cluster(tmp_path_factory.mktemp("recommend-dask"), ["w1", "w2"]) as c:
        yield c


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory, cli) -> dict[str, Path]:
    """6,000 customers in 3 files (3 infinite values), a 6-offer model; catalogues with and without budgets."""
    root = tmp_path_factory.mktemp("recommend-cluster")
    table = customers(ROWS, 6, seed=21)
    train = write(customers(3_000, 6, seed=22, first_id=100_000), root / "train", 1)
    plain = catalogue(root / "plain.toml", 6, top=2)
    budgeted = catalogue(root / "budgets.toml", 6, top=2, budgets=BUDGETS)
    result = cli("train", "--input", train, "--offers", plain, "--output", root / "model", "--k", "2",
                 "--seed", "3", "--backend", "cpu", "--no-report", "-q")
    assert result.exit_code == 0, result.output
    f1 = table.column("f1").to_numpy().copy()
    f1[list(INF_ROWS)] = np.inf
    table = table.set_column(table.schema.get_field_index("f1"), "f1", pa.array(f1))
    data = root / "data"
    data.mkdir()
    for i in range(3):   # row groups of PARTITION_ROWS: one task each
        pq.write_table(table.slice(i * 2_000, 2_000), data / f"part{i}.parquet", row_group_size=PARTITION_ROWS)
    return {"root": root, "data": data, "model": root / "model", "plain": plain,
            "budgets": budgeted}


def _recommend(cli, rec: dict[str, Path], out: Path, offers: str, *flags: object):
    return cli("recommend", "--model", rec["model"], "--input", rec["data"], "--output", out, "--offers", rec[offers],
               "--partition-rows", PARTITION_ROWS, "-q", *flags)


def _rows(path: Path) -> pa.Table:
    """The long output's rows in (id, rank) order: the content, whatever part holds which customer."""
    table = ds.dataset(path, format="parquet").to_table()
    return table.sort_by([("customer_id", "ascending"), ("rank", "ascending")])


def _rejected(path: Path) -> list[dict[str, Any]]:
    """The rejected rows, their ``_file`` as the file's name (a store run names its URI)."""
    rows = [r | {"_file": r["_file"].rsplit("/", 1)[-1]} for r in pq.read_table(path / "_rejected").to_pylist()]
    return sorted(rows, key=lambda r: (r["_file"], r["_row"]))


def _download(prefix: str, to: Path) -> Path:
    """A store output's objects, as files under ``to``."""
    for name, data in _keys(prefix).items():
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        (to / name).write_bytes(data)
    return to


def _pids(path: Path) -> set[int]:
    """The processes that wrote the parts (the manifest's ``worker``: host:pid)."""
    manifest = json.loads((path / "_manifest.json").read_text())
    return {int(p["worker"].rsplit(":", 1)[1]) for p in manifest["partitions"] if not p.get("reused")}


def _same_run(got: Path, want: Path) -> dict[str, Any]:
    """``got`` published exactly ``want``'s rows and rejected rows; returns got's manifest."""
    a, b = _rows(got), _rows(want)
    assert a.num_rows == b.num_rows > 0
    assert a.equals(b), "the cluster run's recommendations differ from the local run's"
    assert _rejected(got) == _rejected(want)
    assert len(_rejected(got)) == len(INF_ROWS)
    manifest = json.loads((got / "_manifest.json").read_text())
    local = json.loads((want / "_manifest.json").read_text())
    assert manifest["totals"] == local["totals"] | {"parts_reused": manifest["totals"]["parts_reused"]}
    assert [o["customers"] for o in manifest["offers"]] == [o["customers"] for o in local["offers"]]
    assert manifest["totals"]["parts"] == ROWS // PARTITION_ROWS
    return manifest


@pytest.mark.parametrize("offers", ["plain", "budgets"])
def test_cluster_runs_equal_the_local_run(rec: dict[str, Path], cluster: Any, cli, tmp_path: Path,
                                          offers: str, s3: Any) -> None:  # noqa: F811
    """Two ``dask worker`` processes (--scheduler) and a local cluster the engine starts
    (--workers 2) publish the local run's rows, rejected rows and, with budgets, its prices.
    Without budgets the local cluster reads its input from and publishes to an object store
    (moto's server): its workers write the parts and rejected rows there themselves."""
    local = _recommend(cli, rec, tmp_path / "local", offers)
    assert local.exit_code == 0, local.output
    remote = _recommend(cli, rec, tmp_path / "remote", offers, "--scheduler", cluster.address)
    assert remote.exit_code == 0, remote.output
    if offers == "plain":
        _upload_dir(rec["data"], "recdask/data")
        here = cli("recommend", "--model", rec["model"], "--input", _uri("recdask/data"), "--output",
                   _uri("recdask/out"), "--offers", rec["plain"], "--partition-rows", PARTITION_ROWS, "-q",
                   "--workers", "2")
        assert here.exit_code == 0, here.output
        _download("recdask/out", tmp_path / "here")
        assert (tmp_path / "here" / "_SUCCESS").exists()
    else:
        here = _recommend(cli, rec, tmp_path / "here", offers, "--workers", "2")
        assert here.exit_code == 0, here.output
    want = json.loads((tmp_path / "local" / "_manifest.json").read_text())
    assert _pids(tmp_path / "local") == {os.getpid()}
    assert _pids(tmp_path / "remote") <= {w.pid for w in cluster.workers}, "parts must come from the workers"
    assert os.getpid() not in _pids(tmp_path / "here")     # the local cluster's worker processes
    for out in ("remote", "here"):
        manifest = _same_run(tmp_path / out, tmp_path / "local")
        if offers == "budgets":
            b, w = manifest["budgets"], want["budgets"]
            assert b["lambda"] == w["lambda"] and b["passes"] == w["passes"]       # the same prices, exactly
            assert b["sample_rows"] == w["sample_rows"] == ROWS          # every row: fewer than the sample's size
            assert b["achieved_value"] == pytest.approx(w["achieved_value"], rel=1e-12)
    if offers == "budgets":
        counts = _rows(tmp_path / "remote").column("offer").to_pandas().astype(str).value_counts()
        for j, budget in BUDGETS.items():
            assert counts.get(f"offer_{j}", 0) <= budget          # never exceeded
        assert max(counts.get(f"offer_{j}", 0) / budget for j, budget in BUDGETS.items()) > 0.9   # budgets bind


def test_budget_passes_on_the_cluster_raise_prices_as_locally(rec: dict[str, Path], cluster: Any,
                                                              tmp_path: Path) -> None:
    """A small sample (1,000 of 6,000 rows, drawn by the tasks) leaves offers over budget: the full
    passes on the workers raise the prices and rewrite the parts exactly as the local passes do."""
    from engine.config import load_settings
    from engine.jobs.recommend import RecommendOptions, recommend

    def run(out: Path, **cluster_flags: Any) -> dict[str, Any]:
        settings = load_settings(None, partition_rows=PARTITION_ROWS, **cluster_flags)
        return recommend(RecommendOptions(input=str(rec["data"]), model=str(rec["model"]), output=str(out),
                                          offers=str(rec["budgets"]), progress="quiet", sample_rows=1_000), settings)

    local = run(tmp_path / "local")
    remote = run(tmp_path / "remote", scheduler=cluster.address)
    assert local["budgets"]["passes"] >= 2, local["budgets"]          # the sample's prices were raised
    assert remote["budgets"]["lambda"] == local["budgets"]["lambda"]
    assert remote["budgets"]["cut_offers"] == local["budgets"]["cut_offers"]
    assert remote["budgets"]["passes"] == local["budgets"]["passes"]
    assert _pids(tmp_path / "remote") <= {w.pid for w in cluster.workers}
    _same_run(tmp_path / "remote", tmp_path / "local")


def test_resume_on_the_cluster_reuses_a_killed_local_runs_parts(rec: dict[str, Path], cluster: Any, cli,
                                                                tmp_path: Path) -> None:
    """kill -9 of a local run after its first parts, then ``--resume --scheduler``: the staged
    parts are reused (checked on the client), the rest run on the workers, the output is the same."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "engine", "recommend", "--model", str(rec["model"]), "--input", str(rec["data"]),
            "--output", str(out), "--offers", str(rec["budgets"]), "--partition-rows", str(PARTITION_ROWS),
            "--progress", "quiet"]
    env, killed = killed_after_a_part(args, out)
    done = subprocess.run([*args, "--resume", "--scheduler", cluster.address, "--log-format", "json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert events[-1]["event"] == "recommend.finished" and events[-1]["exit_code"] == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert 1 <= manifest["totals"]["parts_reused"] < manifest["totals"]["parts"]
    ran = {int(p["worker"].rsplit(":", 1)[1]) for p in manifest["partitions"]}
    assert ran & {w.pid for w in cluster.workers} and killed in ran    # the killed run's parts, the workers'
    fresh = _recommend(cli, rec, tmp_path / "fresh", "budgets")
    assert fresh.exit_code == 0, fresh.output
    _same_run(out, tmp_path / "fresh")


def test_cluster_flags_are_score_s(rec: dict[str, Path], cluster: Any, cli, tmp_path: Path) -> None:
    """The same settings, checks and exit codes as engine score: a bad --workers is exit 2 naming
    it, an address with no scheduler is exit 8 within --connect-timeout and leaves nothing, a
    dry run names the cluster and contacts nothing; a worker's bad row under --on-bad-rows fail
    is exit 4 on the client, nothing published."""
    fail = _recommend(cli, rec, tmp_path / "fail", "plain", "--on-bad-rows", "fail", "--scheduler", cluster.address)
    assert fail.exit_code == 4 and "--on-bad-rows is fail" in fail.output and "'f1'" in fail.output, fail.output
    assert not (tmp_path / "fail").exists()
    for command in ("recommend", "score"):
        extra = ("--offers", rec["plain"]) if command == "recommend" else ()
        bad = cli(command, "--model", rec["model"], "--input", rec["data"], "--output", tmp_path / "o", *extra,
                  "--workers", "0")
        assert bad.exit_code == 2 and "--workers" in bad.output and "at least 1" in bad.output, bad.output
    from engine.config import load_settings
    from engine.errors import UsageError
    from engine.jobs.recommend import RecommendOptions, plan_recommend

    with pytest.raises(UsageError, match="--threads-per-worker"):   # an in-process pool size, on a cluster
        plan_recommend(RecommendOptions(input=str(rec["data"]), model=str(rec["model"]), output=str(tmp_path / "o"),
                                        threads=2), load_settings(None, workers=2))
    import socket

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    t = time.perf_counter()
    gone = _recommend(cli, rec, tmp_path / "o", "plain", "--scheduler", dead, "--connect-timeout", "1")
    assert gone.exit_code == 8 and dead in gone.output, gone.output
    assert time.perf_counter() - t < 30
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))  # no output, no staging left
    dry = _recommend(cli, rec, tmp_path / "o", "plain", "--scheduler", dead, "--dry-run")
    assert dry.exit_code == 0 and f"the Dask scheduler at {dead} (not contacted" in dry.output
    env = _recommend(cli, rec, tmp_path / "o", "plain", "--dry-run")
    assert "threads of this process" in env.output
