"""The engine against a real S3-compatible server: moto's standalone server, started here as a
separate process on 127.0.0.1 (``python -m moto.server``), reached through the standard
environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), as a user would.

Covered: every path flag takes ``s3://``; train from and to the store; score from and to the
store equal to a local run; the manifest lists every part with size and checksum; refusal
without ``--overwrite``, foreign objects, a lock held elsewhere; resume after SIGKILL; a reader
that waits for ``_SUCCESS`` during an overwrite never reads a mix; two real ``dask worker``
processes with working directories of their own score from and to the store; no credential in
any object or file written or any line printed. Unsupported schemes exit 2 on every path flag.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 (the s3 extra) is not installed")
pytest.importorskip("moto", reason="moto[server] (the dev extra) is not installed")

SECRET = "sEcReT-engine-test-7d1f0c9a"
KEY_ID = "AKIAENGINETEST00001"
BUCKET = "engine-test"
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: moto's server with one change: moto 5.2.1 recomputes the SigV4 signature over the decoded
#: query string, so every listing whose prefix holds "/" (boto3's and pyarrow's alike) fails
#: with SignatureDoesNotMatch once IAM checks are on. Only that signature comparison is
#: skipped; access keys and every permission are checked by moto as they are.
MOTO_SERVER = ("import sys; import moto.iam.access_control as a; "
               "a.IAMRequestBase.check_signature = lambda self: None; "
               "from moto.server import main; sys.argv[0] = 'moto_server'; main()")
#: IAM requests moto answers before it starts checking credentials (the users made below).
IAM_SETUP_REQUESTS = 11
#: Users with policies of their own (moto checks IAM once the setup requests are spent).
POLICIES = {
    "admin": ["*"],
    # The reproduction: everything a publish needs except deleting.
    "nodelete": ["s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:HeadBucket"],
    "readonly": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"],
    # Allowed nothing: every request is denied (test_store_exit_codes.py's "denied" case).
    "nobody": [],
}
# (AWS authorises HeadBucket with s3:ListBucket; moto asks for an action of that name.)


def _users(endpoint: str) -> dict[str, dict[str, str]]:
    """The users of :data:`POLICIES` with their access keys (the first IAM requests, unchecked)."""
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID,
                       aws_secret_access_key=SECRET)
    keys = {}
    for user, actions in POLICIES.items():
        iam.create_user(UserName=user)
        if actions:
            iam.put_user_policy(UserName=user, PolicyName="engine-test", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    return keys


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A moto S3 server process on 127.0.0.1 with IAM checks and one bucket; the environment points
    at it with the credentials of a user allowed everything (``admin``); ``nodelete`` and
    ``readonly`` hold the credentials of users allowed less."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-c", MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(IAM_SETUP_REQUESTS)})
    log.close()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto server did not start: {log_path.read_text()}") from None
                time.sleep(0.2)
        users = _users(endpoint)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1", **users["admin"]}
        os.environ.update(env)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(k, None)
        boto3.session.Session().client("s3").create_bucket(Bucket=BUCKET)
        yield {**env, "log": str(log_path), **users}
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _client() -> Any:
    return boto3.session.Session().client("s3")


def _upload_dir(local: Path, prefix: str) -> None:
    c = _client()
    for p in sorted(local.rglob("*")):
        if p.is_file():
            c.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(local)}")


def _keys(prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/`` with its bytes, by name relative to the prefix."""
    c = _client()
    found = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix) + 1:]] = c.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return found


def _fs() -> Any:
    from pyarrow.fs import S3FileSystem

    host = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1]
    return S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1",
                        access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def _store_scores(prefix: str) -> pd.DataFrame:
    """An output in the store read through pyarrow's own discovery (``_`` names skipped)."""
    table = ds.dataset(f"{BUCKET}/{prefix}", filesystem=_fs(), format="parquet").to_table()
    return table.to_pandas().sort_values("customer_id", kind="stable").reset_index(drop=True)


def _uri(prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="module")
def store_data(s3: dict[str, Any], dataset_dir: Path, model_dir: Path) -> dict[str, str]:
    """The shared dataset and model uploaded to the store."""
    _upload_dir(dataset_dir, "data")
    _upload_dir(model_dir, "model")
    return {"data": _uri("data"), "model": _uri("model")}


@pytest.fixture(scope="module")
def local_scores(dataset_dir: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                 score_cli: Callable[..., Any], scores_of: Callable[..., pd.DataFrame]) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("local") / "scores"
    result = score_cli(dataset_dir, model_dir, out, "--partition-rows", 1000)
    assert result.exit_code == 0, result.output
    return scores_of(out)


def _no_secret(*texts: str | bytes) -> None:
    for t in texts:
        raw = t.encode() if isinstance(t, str) else t
        for secret in (SECRET, os.environ.get("AWS_SECRET_ACCESS_KEY") or SECRET):
            assert secret.encode() not in raw


# -- unsupported schemes: every path flag, exit 2, nothing created ----------------------------


@pytest.mark.parametrize("scheme", ["hdfs", "http", "ftp"])
def test_unsupported_schemes_exit_2_on_every_path_flag(scheme: str, cli: Callable[..., Any], dataset_dir: Path,
                                                       model_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = f"{scheme}://host/some/path"
    seg = tmp_path.parent / "none.joblib"
    cases = {
        "score --input": ("score", "--input", bad, "--model", model_dir, "--output", "o1", "--backend", "cpu"),
        "score --model": ("score", "--input", dataset_dir, "--model", bad, "--output", "o2", "--backend", "cpu"),
        "score --output": ("score", "--input", dataset_dir, "--model", model_dir, "--output", bad, "--backend", "cpu"),
        "train --input": ("train", "--input", bad, "--target", "churned", "--output", "m1"),
        "train --output": ("train", "--input", dataset_dir, "--target", "churned", "--output", bad),
        "model show": ("model", "show", bad),
        "import-sklearn --output": ("model", "import-sklearn", "--segmenter", seg, "--propensity", seg,
                                    "--output", bad),
        "import-sklearn --segmenter": ("model", "import-sklearn", "--segmenter", bad, "--propensity", seg,
                                       "--output", "m2"),
        "generate --output": ("generate", "--rows", 100, "--files", 1, "--output", bad),
        "demo --workdir": ("demo", "--rows", 1000, "--workdir", bad),
    }
    for what, args in cases.items():
        result = cli(*args)
        assert result.exit_code == 2, (what, result.output)
        assert f"{scheme}://" in result.output, (what, result.output)
        assert list(tmp_path.iterdir()) == [], (what, list(tmp_path.iterdir()))


def test_credentials_in_a_uri_are_refused(cli: Callable[..., Any], dataset_dir: Path, model_dir: Path) -> None:
    result = cli("score", "--input", dataset_dir, "--model", model_dir, "--output",
                 f"s3://{KEY_ID}:{SECRET}@bucket/out", "--backend", "cpu")
    assert result.exit_code == 2
    _no_secret(result.output)


# -- train and score through the store -------------------------------------------------------


def test_score_from_and_to_the_store_equals_a_local_run(s3: dict[str, Any], store_data: dict[str, str],
                                                        local_scores: pd.DataFrame, score_cli: Callable[..., Any],
                                                        cli: Callable[..., Any]) -> None:
    dry = score_cli(store_data["data"], store_data["model"], _uri("scores"), "--dry-run")
    assert dry.exit_code == 0 and f"output  {_uri('scores')}: holds nothing" in dry.output, dry.output
    assert _keys("scores") == {} and _keys(".scores.engine") == {}  # a dry run writes nothing
    result = score_cli(store_data["data"], store_data["model"], _uri("scores"), "--partition-rows", 1000)
    assert result.exit_code == 0, result.output
    _no_secret(result.output)
    pd.testing.assert_frame_equal(_store_scores("scores"), local_scores)
    objects = _keys("scores")
    manifest = json.loads(objects["_manifest.json"])
    parts = sorted(n for n in objects if n.endswith(".parquet"))
    # Directly under the prefix: exactly tonight's parts, the manifest, _SUCCESS and the report.
    assert set(objects) == {*parts, "_manifest.json", "_SUCCESS", "_report.html"}
    assert parts == [f"part-{i:05d}.parquet" for i in range(len(parts))] and len(parts) == 3
    listed = {f["name"]: f for f in manifest["files"]}
    assert sorted(listed) == parts
    for name in parts:
        assert listed[name]["bytes"] == len(objects[name])
        assert listed[name]["sha256"] == "sha256:" + hashlib.sha256(objects[name]).hexdigest()
    assert manifest["input"]["path"] == store_data["data"] and manifest["output"]["path"] == _uri("scores")
    # The run-state prefix is gone after a clean commit: nothing piles up beside the output.
    assert _keys(".scores.engine") == {}
    _no_secret(*objects.values())
    # A second run without --overwrite is refused and changes nothing.
    again = score_cli(store_data["data"], store_data["model"], _uri("scores"))
    assert again.exit_code == 6 and "--overwrite" in again.output
    assert _keys("scores") == objects
    # --overwrite replaces it with a new run (another id), same rows.
    over = score_cli(store_data["data"], store_data["model"], _uri("scores"), "--overwrite")
    assert over.exit_code == 0, over.output
    replaced = _keys("scores")
    assert json.loads(replaced["_manifest.json"])["run_id"] != manifest["run_id"]
    pd.testing.assert_frame_equal(_store_scores("scores"), local_scores)
    # A model shown from the store.
    shown = cli("model", "show", store_data["model"])
    assert shown.exit_code == 0 and "content hash sha256:" in shown.output


def test_foreign_objects_and_a_lock_held_elsewhere_are_never_touched(s3: dict[str, Any], store_data: dict[str, str],
                                                                     score_cli: Callable[..., Any]) -> None:
    c = _client()
    c.put_object(Bucket=BUCKET, Key="foreign/notes.txt", Body=b"mine")
    result = score_cli(store_data["data"], store_data["model"], _uri("foreign"), "--overwrite")
    assert result.exit_code == 6 and "not an engine output" in result.output.replace("\n", " ")
    assert _keys("foreign") == {"notes.txt": b"mine"}
    assert _keys(".foreign.engine") == {}
    # A run-state prefix the engine did not make is not adopted.
    c.put_object(Bucket=BUCKET, Key=".other.engine/staging/x", Body=b"theirs")
    result = score_cli(store_data["data"], store_data["model"], _uri("other"))
    assert result.exit_code == 6 and ".other.engine" in result.output
    assert _keys(".other.engine") == {"staging/x": b"theirs"} and _keys("other") == {}
    # A lock held by a run on another host: exit 6 naming it; the output is not created.
    first = score_cli(store_data["data"], store_data["model"], _uri("locked"))
    assert first.exit_code == 0, first.output
    before = _keys("locked")
    c.put_object(Bucket=BUCKET, Key=".locked.engine/owner.json", Body=json.dumps(
        {"format": "customer-scoring-engine/output-state", "output": _uri("locked")}).encode())
    c.put_object(Bucket=BUCKET, Key=".locked.engine/lock.json",
                 Body=json.dumps({"run": "x", "host": "another-host", "pid": 1}).encode())
    held = score_cli(store_data["data"], store_data["model"], _uri("locked"), "--overwrite")
    assert held.exit_code == 6 and "another-host" in held.output and "lock.json" in held.output
    assert _keys("locked") == before


def test_train_from_and_to_the_store(s3: dict[str, Any], store_data: dict[str, str], cli: Callable[..., Any],
                                     tmp_path: Path, dataset_dir: Path) -> None:
    from engine.models.artifact import load_model

    result = cli("train", "--input", store_data["data"], "--target", "churned", "--output", _uri("trained"),
                 "--k", 3, "--seed", 5, "--backend", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    local = cli("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m",
                "--k", 3, "--seed", 5, "--backend", "cpu", "--quiet")
    assert local.exit_code == 0, local.output
    remote, here = load_model(_uri("trained")), load_model(tmp_path / "m")
    for name, arr in here.arrays().items():
        assert (remote.arrays()[name] == arr).all(), name
    objects = _keys("trained")
    assert set(objects) == {"model.json", "arrays.npz", "report.html"}
    _no_secret(*objects.values(), result.output)
    # Not replaced without --overwrite; a tampered model.json fails its hash (exit 5) as from disk.
    again = cli("train", "--input", store_data["data"], "--target", "churned", "--output", _uri("trained"),
                "--backend", "cpu", "--quiet")
    assert again.exit_code == 6
    meta = json.loads(objects["model.json"])
    meta["id_column"] = "someone_else"
    _client().put_object(Bucket=BUCKET, Key="tampered/model.json", Body=json.dumps(meta).encode())
    _client().put_object(Bucket=BUCKET, Key="tampered/arrays.npz", Body=objects["arrays.npz"])
    bad = cli("model", "show", _uri("tampered"))
    assert bad.exit_code == 5 and "hash mismatch" in bad.output and _uri("tampered") in bad.output
    # generate --output to the store.
    gen = cli("generate", "--rows", 500, "--files", 2, "--output", _uri("generated"))
    assert gen.exit_code == 0, gen.output
    assert set(_keys("generated")) == {"_generated.json", "customers-00000.parquet", "customers-00001.parquet"}


# -- SIGKILL and resume; a reader during an overwrite -----------------------------------------


def _engine(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine", *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_resume_after_sigkill_leaves_the_previous_output_intact(s3: dict[str, Any], store_data: dict[str, str],
                                                                 score_cli: Callable[..., Any], tmp_path: Path,
                                                                 scores_of: Callable[..., pd.DataFrame]) -> None:
    from engine.jobs.generate import generate

    # 500-row row groups: 12 parts of 500 rows, so a kill lands between parts.
    generate(6_000, 3, tmp_path / "data", seed=11, row_group_rows=500)
    _upload_dir(tmp_path / "data", "kdata")
    clean = score_cli(tmp_path / "data", store_data["model"], tmp_path / "clean", "--partition-rows", 500)
    assert clean.exit_code == 0, clean.output
    first = score_cli(_uri("kdata"), store_data["model"], _uri("killed"), "--reasons", 1)
    assert first.exit_code == 0, first.output
    previous = _keys("killed")
    args = ["score", "--input", _uri("kdata"), "--model", store_data["model"], "--output", _uri("killed"),
            "--backend", "cpu", "--quiet", "--overwrite", "--partition-rows", "500", "--threads-per-worker", "1"]
    proc = _engine(*args, env={"ENGINE_TEST_PAUSE_AFTER_PART": "1.0"})
    deadline = time.monotonic() + 240
    while len([k for k in _keys(".killed.engine") if k.startswith("staging/_parts/")]) < 3:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    # The previous output is intact, byte for byte, _SUCCESS included.
    assert _keys("killed") == previous
    resumed = score_cli(_uri("kdata"), store_data["model"], _uri("killed"), "--overwrite", "--resume",
                        "--partition-rows", 500)
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads(_keys("killed")["_manifest.json"])
    assert manifest["totals"]["parts_reused"] >= 3 and manifest["totals"]["parts"] == 12
    pd.testing.assert_frame_equal(_store_scores("killed"), scores_of(tmp_path / "clean"))
    assert _keys(".killed.engine") == {}


def test_killed_during_the_commit_readers_wait_and_resume_commits(s3: dict[str, Any], store_data: dict[str, str],
                                                                   local_scores: pd.DataFrame,
                                                                   score_cli: Callable[..., Any]) -> None:
    first = score_cli(store_data["data"], store_data["model"], _uri("midcommit"), "--reasons", 1)
    assert first.exit_code == 0, first.output
    proc = _engine("score", "--input", store_data["data"], "--model", store_data["model"], "--output",
                   _uri("midcommit"), "--backend", "cpu", "--quiet", "--overwrite",
                   env={"ENGINE_TEST_PAUSE_DURING_PUBLISH": "60"})
    deadline = time.monotonic() + 240
    while "publishing.json" not in _keys(".midcommit.engine") or "_SUCCESS" in _keys("midcommit"):
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(1.0)  # inside the pause: the parts are copied, the manifest and _SUCCESS not yet written
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    objects = _keys("midcommit")
    assert "_SUCCESS" not in objects and "_manifest.json" not in objects  # a reader that waits, waits
    assert len([k for k in _keys(".midcommit.engine") if k.startswith("staging/_parts/")]) == 3
    resumed = score_cli(store_data["data"], store_data["model"], _uri("midcommit"), "--overwrite", "--resume")
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads(_keys("midcommit")["_manifest.json"])
    assert manifest["totals"]["parts_reused"] == 3
    pd.testing.assert_frame_equal(_store_scores("midcommit"), local_scores)
    assert set(_keys("midcommit")) == {"part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
                                       "_manifest.json", "_SUCCESS", "_report.html"}


def test_a_reader_waiting_for_success_never_reads_a_mix(s3: dict[str, Any], store_data: dict[str, str],
                                                        score_cli: Callable[..., Any]) -> None:
    """Runs A (4 parts) and B (another partitioning: 6 parts, other values via --reasons) take
    turns on one output; a reader that follows the documented recipe (wait for _SUCCESS, read
    the manifest, read the parts it lists, check their checksums) accepts only whole runs."""
    a = score_cli(store_data["data"], store_data["model"], _uri("shared"), "--partition-rows", 1500)
    assert a.exit_code == 0, a.output
    want_a = _store_scores("shared")
    c = _client()
    seen: list[str] = []
    gaps = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                c.head_object(Bucket=BUCKET, Key="shared/_SUCCESS")
            except Exception:
                gaps[0] += 1
                time.sleep(0.05)
                continue
            try:
                manifest = json.loads(c.get_object(Bucket=BUCKET, Key="shared/_manifest.json")["Body"].read())
                tables = []
                for f in manifest["files"]:
                    body = c.get_object(Bucket=BUCKET, Key=f"shared/{f['name']}")["Body"].read()
                    if "sha256:" + hashlib.sha256(body).hexdigest() != f["sha256"]:
                        raise ValueError("changed under the reader")
                    tables.append(pq.read_table(__import__("io").BytesIO(body)).to_pandas())
            except Exception:
                continue  # a commit began meanwhile: the recipe says start again
            df = pd.concat(tables).sort_values("customer_id", kind="stable").reset_index(drop=True)
            seen.append("B" if "reason_1" in df.columns else "A")
            if "reason_1" not in df.columns:
                pd.testing.assert_frame_equal(df, want_a)
            assert len(df) == len(want_a)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        proc = _engine("score", "--input", store_data["data"], "--model", store_data["model"], "--output",
                       _uri("shared"), "--backend", "cpu", "--quiet", "--overwrite", "--reasons", "1",
                       "--partition-rows", "1000", env={"ENGINE_TEST_PAUSE_DURING_PUBLISH": "2"})
        out = proc.communicate(timeout=240)[0].decode()
        assert proc.returncode == 0, out
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
    assert "A" in seen and "B" in seen and gaps[0] > 0, (seen[:3], gaps)
    assert seen[-1] == "B"


# -- workers that share no disk ----------------------------------------------------------------


def _dask(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]


def test_two_dask_workers_without_a_shared_disk(s3: dict[str, Any], store_data: dict[str, str],
                                                 local_scores: pd.DataFrame, tmp_path: Path,
                                                 cli: Callable[..., Any]) -> None:
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(cmd: list[str], name: str, cwd: Path) -> None:
        cwd.mkdir()
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        logs.append(tmp_path / f"{name}.log")
        # Each worker gets a temporary directory of its own too: nothing on disk is shared.
        env = {**os.environ, "TMPDIR": str(cwd)}
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()

    try:
        start(_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(sched_file)), "scheduler", tmp_path / "sched")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not sched_file.is_file() or not sched_file.read_text().strip():
            assert time.monotonic() < deadline and procs[0].poll() is None
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for name in ("w1", "w2"):
            start(_dask("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", name),
                  name, tmp_path / f"cwd-{name}")
        from distributed import Client

        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT_S)
        result = cli("score", "--input", store_data["data"], "--model", store_data["model"], "--output",
                     _uri("dist"), "--backend", "cpu", "--quiet", "--scheduler", address, "--partition-rows", 500)
        assert result.exit_code == 0, result.output
    finally:
        for p in procs[::-1]:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    pd.testing.assert_frame_equal(_store_scores("dist"), local_scores)
    manifest = json.loads(_keys("dist")["_manifest.json"])
    workers = {p["worker"] for p in manifest["partitions"]}
    assert len(workers) == 2, workers
    # The workers wrote to the store, not to their disks: no Parquet under their directories.
    for name in ("w1", "w2"):
        assert not list((tmp_path / f"cwd-{name}").rglob("*.parquet"))
    _no_secret(*(p.read_bytes() for p in logs), result.output)


def test_no_credential_in_any_object_or_file(s3: dict[str, Any], store_data: dict[str, str],
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """After the runs above: no object in the bucket and no file the tests' runs wrote holds the secret."""
    c = _client()
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            _no_secret(c.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
    root = tmp_path_factory.getbasetemp()
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 64 << 20:
            _no_secret(p.read_bytes())


# -- issue 24: denied deletes, read-only credentials, kill -9 at each step of a publish, keys -----


def _as(s3: dict[str, Any], user: str) -> dict[str, str]:
    """The environment of a run with ``user``'s credentials (a process of its own: each process
    builds its store client from its own environment)."""
    return {**os.environ, **s3[user]}


def test_a_denied_delete_is_exit_6_and_the_previous_output_stays(s3: dict[str, Any], store_data: dict[str, str],
                                                                 score_cli: Callable[..., Any],
                                                                 tmp_path: Path) -> None:
    """The issue's reproduction: a user allowed Put/Copy/Get/List but not Delete overwrites an output
    of 2 parts with a run of 1 part. DeleteObjects answers 200 with per-key AccessDenied."""
    from engine.io.store import S3Store, store_for
    from engine.io.uri import Location
    from engine.jobs.generate import generate

    generate(6_000, 2, tmp_path / "two", seed=3)
    (tmp_path / "one").mkdir()
    (tmp_path / "two" / "customers-00000.parquet").rename(tmp_path / "one" / "customers-00000.parquet")
    (tmp_path / "two" / "customers-00001.parquet").rename(tmp_path / "one" / "x.parquet")
    first = score_cli(tmp_path / "one", store_data["model"], _uri("nd"))
    assert first.exit_code == 0, first.output
    previous = _keys("nd")
    assert {"part-00000.parquet", "part-00001.parquet"} <= set(previous)
    (tmp_path / "one" / "x.parquet").unlink()
    # Per key: the store's answer is read, not its status (200).
    client = boto3.client("s3", aws_access_key_id=s3["nodelete"]["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3["nodelete"]["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(OSError, match="part-00001.parquet could not be deleted: AccessDenied"):
        S3Store(store_for(Location("s3", BUCKET)).fs, client).delete([Location("s3", BUCKET, "nd/part-00001.parquet")])
    proc = subprocess.run([sys.executable, "-m", "engine", "score", "--input", str(tmp_path / "one"), "--model",
                           store_data["model"], "--output", _uri("nd"), "--overwrite", "--backend", "cpu"],
                          env=_as(s3, "nodelete"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert "cannot delete objects" in proc.stderr and "AccessDenied" in proc.stderr, proc.stderr
    # Nothing changed, nothing left behind: no lock, no publishing record, no staging.
    assert _keys("nd") == previous
    assert _keys(".nd.engine") == {}
    _no_secret(proc.stdout, proc.stderr)


def test_read_only_credentials_fail_train_before_reading(s3: dict[str, Any], dataset_dir: Path) -> None:
    for user, said in (("readonly", "cannot delete objects"), ("nodelete", "cannot delete objects")):
        proc = subprocess.run([sys.executable, "-m", "engine", "train", "--input", str(dataset_dir), "--target",
                               "churned", "--output", _uri(f"ro-{user}"), "--backend", "cpu"],
                              env=_as(s3, user), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 6, proc.stdout + proc.stderr
        assert said in proc.stderr, proc.stderr
        out = proc.stdout + proc.stderr
        assert "reading" not in out and "K-means" not in out and "fit" not in out.replace("--", ""), out
        assert _keys(f"ro-{user}") == {} and _keys(f".ro-{user}.engine") == {}


def _publish_model_killed_at(step: str, source: str, target: str) -> None:
    """A process publishing another model over ``target``, killed with SIGKILL right after ``step``."""
    script = ("import sys, dataclasses; from engine.models.artifact import load_model, save_model; "
              "m = load_model(sys.argv[1]); "
              "save_model(dataclasses.replace(m, params={**m.params, 'seed': 999}, created_at=None), sys.argv[2], "
              "overwrite=True)")
    proc = subprocess.Popen([sys.executable, "-c", script, source, target], stderr=subprocess.PIPE,
                            env={**os.environ, "ENGINE_TEST_PAUSE_AT": step, "ENGINE_TEST_PAUSE_S": "120"})
    assert proc.stderr is not None
    lines = []
    for raw in proc.stderr:
        lines.append(raw.decode(errors="replace"))
        if raw.startswith(f"ENGINE-TEST-PAUSED {step}".encode()):
            break
    else:
        proc.wait(30)
        raise AssertionError(f"the publish never reached {step}: {''.join(lines)}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def test_kill_9_at_each_step_of_a_model_publish_leaves_the_previous_model(
        s3: dict[str, Any], store_data: dict[str, str], cli: Callable[..., Any], dataset_dir: Path) -> None:
    from engine.io.publish import STEPS
    from engine.models.artifact import load_model, save_model

    previous = load_model(store_data["model"])
    target = _uri("pub")
    save_model(previous, target)
    published = _keys("pub")
    assert set(published) == {"model.json", "arrays.npz"}
    for step in STEPS:
        _publish_model_killed_at(step, store_data["model"], target)
        loaded = load_model(target)
        if step == "marker-written":  # the new model is complete: it is what readers get
            assert loaded.content_hash != previous.content_hash and loaded.params["seed"] == 999, step
        else:
            assert loaded.content_hash == previous.content_hash, step
        if step == "copied":  # the state: the new arrays.npz, no model.json in the prefix
            assert "model.json" not in _keys("pub")
            shown = cli("model", "show", target)
            assert shown.exit_code == 0 and previous.content_hash[:12] in shown.output, shown.output
        # The next publish completes the interrupted one, then replaces it: the previous model again.
        save_model(previous, target, overwrite=True)
        assert _keys("pub") == published, step
        assert _keys(".pub.engine") == {}, step
    # A training run with --overwrite over the worst state works (it was exit 6 "not an engine model").
    _publish_model_killed_at("stale-deleted", store_data["model"], target)
    again = cli("train", "--input", dataset_dir, "--target", "churned", "--output", target, "--overwrite",
                "--k", 3, "--backend", "cpu", "--quiet")
    assert again.exit_code == 0, again.output
    assert set(_keys("pub")) == {"model.json", "arrays.npz", "report.html"} and _keys(".pub.engine") == {}
    assert load_model(target).k == 3


def test_kill_9_while_publishing_generated_data(s3: dict[str, Any], cli: Callable[..., Any]) -> None:
    from engine.io.publish import readable
    from engine.io.uri import Location

    first = cli("generate", "--rows", 300, "--files", 2, "--output", _uri("gen"))
    assert first.exit_code == 0, first.output
    before = _keys("gen")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "generate", "--rows", "400", "--files", "1",
                             "--output", _uri("gen"), "--overwrite"], stderr=subprocess.PIPE,
                            env={**os.environ, "ENGINE_TEST_PAUSE_AT": "stale-deleted"})
    assert proc.stderr is not None
    for raw in proc.stderr:
        if raw.startswith(b"ENGINE-TEST-PAUSED"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert "_generated.json" not in _keys("gen")  # a reader that waits for the marker waits
    backup = readable(_uri("gen"), "_generated.json")
    assert isinstance(backup, Location) and backup.key == ".gen.engine/previous"
    assert _keys(".gen.engine/previous") == before  # the previous data, whole, where readable() points
    again = cli("generate", "--rows", 500, "--files", 3, "--output", _uri("gen"), "--overwrite")
    assert again.exit_code == 0, again.output
    assert set(_keys("gen")) == {"_generated.json", *(f"customers-0000{i}.parquet" for i in range(3))}
    assert _keys(".gen.engine") == {}


def test_dot_segments_in_keys_are_refused_before_any_write(s3: dict[str, Any], store_data: dict[str, str],
                                                           score_cli: Callable[..., Any],
                                                           cli: Callable[..., Any]) -> None:
    for out in (f"s3://{BUCKET}/x/../small/out", f"s3://{BUCKET}/x/./out"):
        result = score_cli(store_data["data"], store_data["model"], out)
        assert result.exit_code == 2 and "segments" in result.output, result.output
    result = score_cli(f"s3://{BUCKET}/x/../data", store_data["model"], _uri("dots"))
    assert result.exit_code == 2 and f"s3://{BUCKET}/data" in result.output, result.output
    trained = cli("train", "--input", store_data["data"], "--target", "churned", "--output",
                  f"s3://{BUCKET}/x/../m", "--backend", "cpu")
    assert trained.exit_code == 2, trained.output
    assert _keys("x") == {} and _keys("small") == {} and _keys("dots") == {} and _keys("m") == {}
