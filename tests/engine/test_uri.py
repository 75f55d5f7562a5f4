"""Path flags as URIs (engine/io/uri.py): parsing, refusals, and ``file://`` equal to a plain path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from engine.errors import UsageError
from engine.io.uri import Location, check, is_remote, parse, shown


def test_parse_and_normalise() -> None:
    assert parse("s3://bucket/a//b/", "--input") == Location("s3", "bucket", "a/b")
    assert parse("gs://b/x", "--input").kind == "gs"  # type: ignore[union-attr]
    assert parse("abfs://container/p", "--input").kind == "az"  # type: ignore[union-attr]
    assert parse("az://container/p", "--input").uri == "az://container/p"  # type: ignore[union-attr]
    assert parse("file:///data/x", "--input") == "/data/x"
    assert parse("relative/dir", "--input") == "relative/dir"
    assert is_remote("s3://b/k") and not is_remote("file:///x") and not is_remote("plain")
    assert shown("s3://b//k/") == "s3://b/k"
    loc = Location("s3", "b", "p/out")
    assert loc.parent.join(".out.engine").uri == "s3://b/p/.out.engine"
    assert loc.contains(Location("s3", "b", "p/out/x")) and not loc.contains(Location("s3", "b", "p/out2"))


@pytest.mark.parametrize("text, needle", [
    ("hdfs://nn/data", "hdfs://"),
    ("HTTP://host/x", "http://"),
    ("s3://KEY:SECRET@bucket/x", "credentials"),
    ("s3://bucket/x?endpoint_override=y", "options in a URI"),
    ("s3:///x", "no bucket"),
    ("file://relative", "absolute path"),
])
def test_refused(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        check(text, "--input")
    assert needle in str(info.value) and "SECRET" not in str(info.value)
    assert info.value.exit_code == 2


def test_file_uris_score_like_plain_paths(dataset_dir: Path, model_dir: Path, tmp_path: Path,
                                          score_cli: Callable[..., Any],
                                          scores_of: Callable[..., pd.DataFrame]) -> None:
    plain = score_cli(dataset_dir, model_dir, tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    uri = score_cli(f"file://{dataset_dir}", f"file://{model_dir}", f"file://{tmp_path / 'uri'}")
    assert uri.exit_code == 0, uri.output
    pd.testing.assert_frame_equal(scores_of(tmp_path / "uri"), scores_of(tmp_path / "plain"))
