"""Exit codes by what failed, for every source (issue 25): an object store that cannot be reached,
a missing bucket, denied credentials and a missing key give exit 3 for ``--input``, 5 for
``--model`` and 6 for ``--output`` (only writing the output is an output conflict).

All four on the moto server of ``test_object_store.py`` (IAM checks on): "denied" runs as its
user ``nobody``, allowed nothing, so the server itself answers AccessDenied. ``--dry-run``
runs every check a real run makes before its work (exit codes as for a real run) and keeps
this fast.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 (the s3 extra) is not installed")
pytest.importorskip("moto", reason="moto[server] (the dev extra) is not installed")

from test_object_store import BUCKET as PLAIN_BUCKET  # noqa: E402
from test_object_store import s3  # noqa: E402,F401 - the module's moto server fixture, reused


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: (failure, environment, bucket, key under the bucket for input/model): each store failure.
FAILURES = [
    ("wrong endpoint", "wrong_endpoint", PLAIN_BUCKET, "{what}"),
    ("missing bucket", "plain", "no-such-bucket", "{what}"),
    ("denied", "nobody", PLAIN_BUCKET, "{what}"),
    ("missing key", "plain", PLAIN_BUCKET, "no-such-{what}"),
]


@pytest.mark.parametrize(("failure", "env", "bucket", "key"), FAILURES, ids=[f[0] for f in FAILURES])
def test_store_failures_exit_by_what_failed(failure: str, env: str, bucket: str, key: str,
                                            s3: dict[str, Any], cli: Callable[..., Any],  # noqa: F811
                                            dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    plain = {k: v for k, v in s3.items() if k.startswith("AWS_")}
    envs = {"nobody": {**plain, **s3["nobody"]}, "plain": plain,
            # Nothing listens there: the connection is refused at once.
            "wrong_endpoint": {**plain, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}}
    if env in ("plain", "nobody"):  # the paths exist there apart from the one named missing
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
