"""Forged models with recomputed hashes (issue 16, finding 9): every one is exit 5 before any
work, naming the field; a property test over random model.json mutations never sees exit 1."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pyarrow.dataset as ds
import pytest
from guard_helpers import engine, one_line
from hypothesis import HealthCheck, given, settings

from engine.errors import ModelError
from engine.jobs.generate import generate
from engine.jobs.train import TrainOptions, train
from engine.models.artifact import ARRAYS_FILE, METADATA_FILE, compute_hash

EXIT_MODEL = ModelError.exit_code


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("schema")
    data = root / "data"
    generate(300, 1, data, seed=4)
    model = root / "model"
    train(TrainOptions(input=str(data), target="churned", output=str(model), k=2, seed=1, backend="cpu"))
    r = score(data, model, root / "reference", cwd=root)
    assert r.exit_code == 0, r.output
    ref = ds.dataset(root / "reference", format="parquet").to_table().sort_by("customer_id")
    return {"root": root, "data": data, "model": model, "reference": ref,
            "meta": json.loads((model / METADATA_FILE).read_text())}


def score(data: Path, model: Path, out: Path, *flags: object, cwd: Path) -> Any:
    return engine("score", "--input", data, "--model", model, "--output", out, "--backend", "cpu", "-q",
                  *flags, cwd=cwd)


def forge(src: Path, dest: Path, meta: Any) -> Path:
    """A copy of the model with ``meta`` as model.json and its hash recomputed."""
    shutil.copytree(src, dest)
    with np.load(dest / ARRAYS_FILE) as npz:
        arrays = {n: np.array(npz[n]) for n in npz.files}
    if isinstance(meta, dict):
        meta["content_hash"] = compute_hash(meta, arrays)
    (dest / METADATA_FILE).write_text(json.dumps(meta))
    return dest


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


FORGERIES = {
    "profile-features-as-list": (lambda m: m["profile"].__setitem__("features", []), "profile.features"),
    "null-rate-abc": (lambda m: next(iter(m["profile"]["features"].values())).__setitem__("null_rate", "abc"),
                      "null_rate"),
    "null-rate-null": (lambda m: next(iter(m["profile"]["features"].values())).__setitem__("null_rate", None),
                       "null_rate"),
    "propensity-profile-string": (lambda m: m["profile"].__setitem__("propensity", "x"), "profile.propensity"),
    "segment-shares-strings": (lambda m: m["profile"].__setitem__("segment_shares", ["0.5", "0.5"]),
                               "profile.segment_shares[0]"),
    "deeply-nested-params": (lambda m: m["params"].__setitem__("x", _deep(5_000)), "nested"),
    "features-not-a-list": (lambda m: m.__setitem__("features", {"name": "age"}), "features"),
    "metric-auc-string": (lambda m: m["metrics"]["train"].__setitem__("auc", "high"), "metrics.train.auc"),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_a_forged_model_is_exit_5_before_work_naming_the_field(case: str, small: dict[str, Any],
                                                               tmp_path: Path) -> None:
    edit, field = FORGERIES[case]
    meta = copy.deepcopy(small["meta"])
    edit(meta)
    if case == "deeply-nested-params":
        # json.dumps itself cannot write 5,000 levels without recursion: write the text by hand.
        model = forge(small["model"], tmp_path / "model", meta={})
        text = json.dumps({**small["meta"], "params": "__DEEP__"}).replace('"__DEEP__"', "[" * 5_000 + "]" * 5_000)
        (model / METADATA_FILE).write_text(text)
    else:
        model = forge(small["model"], tmp_path / "model", meta)
    r = score(small["data"], model, tmp_path / "out", cwd=tmp_path)
    assert r.exit_code == EXIT_MODEL, r.output
    assert field in one_line(r.stderr) and "Traceback" not in r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.engine").exists()


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "content_hash":
                found += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            found += _paths(v, (*prefix, i))
    return found


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_of_model_json_is_exit_0_or_exit_5_never_1(data: st.DataObject, small: dict[str, Any],
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    meta = copy.deepcopy(small["meta"])
    paths = _paths(meta)[1:]
    path = data.draw(st.sampled_from(paths))
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON_VALUES)
    tmp = tmp_path_factory.mktemp("mutation")
    model = forge(small["model"], tmp / "model", meta)
    r = score(small["data"], model, tmp / "out", cwd=tmp)
    assert r.exit_code in (0, EXIT_MODEL, 3), (path, r.output)  # 3: a feature renamed to no column
    if r.exit_code == 0:
        got = ds.dataset(tmp / "out", format="parquet").to_table()
        assert got.num_rows == small["reference"].num_rows
        if path[0] not in ("features", "id_column"):
            assert got.sort_by("customer_id").equals(small["reference"]), path


def test_a_forged_level_share_that_is_not_a_number_is_refused_never_a_crash(small: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    """Found by the mutation test above on a fresh clone: a share '' reached float() (exit 1)."""
    meta = copy.deepcopy(small["meta"])
    name = meta["categoricals"][0]["name"]
    meta["profile"]["categoricals"][name]["shares"][0] = ""
    model = forge(small["model"], tmp_path / "model", meta)
    r = score(small["data"], model, tmp_path / "out", cwd=tmp_path)
    assert r.exit_code in (0, EXIT_MODEL), r.output
