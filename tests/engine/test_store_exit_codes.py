"""Exit codes by what failed, for every source (issue 25): an object store that cannot be reached,
a missing bucket, denied credentials and a missing key give exit 3 for ``--input``, 5 for
``--model`` and 6 for ``--output`` (only writing the output is an output conflict).

The moto server of ``test_object_store.py`` (no authentication) serves the wrong endpoint,
missing bucket and missing key cases; "denied" needs a second moto server with IAM checks on
(``INITIAL_NO_AUTH_ACTION_COUNT``): its first requests set up a user without any policy, every
later request is authenticated, so the server itself refuses (``AccessDenied``; moto also
refuses pyarrow's signature on listings, a refusal all the same). ``--dry-run`` runs every check
a real run makes before its work (exit codes as for a real run) and keeps this fast.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 (the s3 extra) is not installed")
pytest.importorskip("moto", reason="moto[server] (the dev extra) is not installed")

from test_object_store import BUCKET as PLAIN_BUCKET  # noqa: E402
from test_object_store import s3  # noqa: E402,F401 - the module's moto server fixture, reused

BUCKET = "exit-codes"
ADMIN_POLICY = json.dumps({"Version": "2012-10-17",
                           "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path, model_dir: Path) -> Iterator[dict[str, Any]]:
    """moto with IAM checks; yields the admin's and the no-policy user's environments."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto-iam") / "moto.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    # Five unauthenticated requests: two users, the admin's policy and both access keys.
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "5"})
    log.close()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto server did not start: {log_path.read_text()}") from None
                time.sleep(0.2)
        boot = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "boot",
                "aws_secret_access_key": "boot"}
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=ADMIN_POLICY)
        iam.create_user(UserName="nobody")
        keys = {u: iam.create_access_key(UserName=u)["AccessKey"] for u in ("admin", "nobody")}
        envs = {u: {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": k["AccessKeyId"],
                    "AWS_SECRET_ACCESS_KEY": k["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1"}
                for u, k in keys.items()}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=keys["admin"]["AccessKeyId"],
                          aws_secret_access_key=keys["admin"]["SecretAccessKey"])
        s3.create_bucket(Bucket=BUCKET)
        for local, prefix in ((dataset_dir, "data"), (model_dir, "model")):
            for p in sorted(local.rglob("*")):
                if p.is_file():
                    s3.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(local)}")
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(k, None)
        yield {"admin": envs["admin"], "nobody": envs["nobody"]}
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: (failure, environment, bucket, key under the bucket for input/model): each store failure.
FAILURES = [
    ("wrong endpoint", "wrong_endpoint", PLAIN_BUCKET, "{what}"),
    ("missing bucket", "plain", "no-such-bucket", "{what}"),
    ("denied", "nobody", BUCKET, "{what}"),
    ("missing key", "plain", PLAIN_BUCKET, "no-such-{what}"),
]


@pytest.mark.parametrize(("failure", "env", "bucket", "key"), FAILURES, ids=[f[0] for f in FAILURES])
def test_store_failures_exit_by_what_failed(failure: str, env: str, bucket: str, key: str,
                                            s3: dict[str, str], iam_s3: dict[str, Any], cli: Callable[..., Any],  # noqa: F811
                                            dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    plain = {k: v for k, v in s3.items() if k.startswith("AWS_")}
    envs = {**iam_s3, "plain": plain,
            # Nothing listens there: the connection is refused at once.
            "wrong_endpoint": {**plain, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}}
    if env == "plain":  # the paths exist there apart from the one named missing
        client = boto3.session.Session().client("s3")
        for local, prefix in ((dataset_dir, "data"), (model_dir, "model")):
            for p in sorted(local.rglob("*")):
                if p.is_file():
                    client.upload_file(str(p), PLAIN_BUCKET, f"{prefix}/{p.relative_to(local)}")
    os.environ.update(envs[env])
    try:
        def run(inp: object, model: object, out: object) -> Any:
            return cli("score", "--input", inp, "--model", model, "--output", out, "--backend", "cpu",
                       "--quiet", "--dry-run")

        local_out = tmp_path / "scores"
        cases = [("input", 3, run(f"s3://{bucket}/{key.format(what='data')}", model_dir, local_out)),
                 ("model", 5, run(dataset_dir, f"s3://{bucket}/{key.format(what='model')}", local_out))]
        if failure != "missing key":  # a new prefix is where an output goes: no failure there
            cases.append(("output", 6, run(dataset_dir, model_dir, f"s3://{bucket}/scores")))
        for what, code, result in cases:
            assert result.exit_code == code, f"{failure} on the {what}: {result.output}"
            assert f"({ {3: 'input data', 5: 'model', 6: 'output conflict'}[code]})" in result.output
            assert (bucket if failure == "missing bucket" else f"s3://{bucket}") in result.output
    finally:
        os.environ.update(plain)
