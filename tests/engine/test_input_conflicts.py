"""Input the engine must refuse rather than guess at (issue 16): hive keys that clash with a
file's own column, id columns of types it cannot key on, file names that are not UTF-8,
duplicated column names, near-name suggestions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from guard_helpers import engine, one_line, snapshot

from engine.errors import InputError

EXIT_INPUT = InputError.exit_code


def score(inp: Path, model: Path, out: Path, *flags: object, cwd: Path) -> Any:
    return engine("score", "--input", inp, "--model", model, "--output", out, "--backend", "cpu", "-q",
                  *flags, cwd=cwd)


def first_file(dataset_dir: Path) -> Path:
    return sorted(dataset_dir.glob("*.parquet"))[0]


# -- hive partition keys ----------------------------------------------------------------------------
@pytest.mark.parametrize("key,flags", [("age=5", ()), ("region=EU", ("--keep", "region"))])
def test_a_hive_key_naming_a_file_column_is_a_conflict(key: str, flags: tuple[str, ...], dataset_dir: Path,
                                                       model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "in" / key
    data.mkdir(parents=True)
    shutil.copy(first_file(dataset_dir), data / "part-0.parquet")
    before = snapshot(tmp_path / "in")
    r = score(tmp_path / "in", model_dir, tmp_path / "out", *flags, cwd=tmp_path)
    assert r.exit_code == EXIT_INPUT, r.output
    column = key.split("=")[0]
    msg = one_line(r.stderr)
    assert str(data / "part-0.parquet") in msg and f"also holds a column '{column}'" in msg
    assert "Rename the directory" in msg
    assert snapshot(tmp_path / "in") == before and not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.engine").exists()
    # A hive key that is not a column of the file is still a column.
    other = tmp_path / "in2" / "batch=7"
    other.mkdir(parents=True)
    shutil.copy(first_file(dataset_dir), other / "part-0.parquet")
    r = score(tmp_path / "in2", model_dir, tmp_path / "out2", "--keep", "batch", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert set(pq.read_table(tmp_path / "out2").column("batch").to_pylist()) == {7}


def test_training_refuses_a_hive_conflict_too(dataset_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "in" / "tenure_months=3"
    data.mkdir(parents=True)
    shutil.copy(first_file(dataset_dir), data / "part-0.parquet")
    r = engine("train", "--input", tmp_path / "in", "--target", "churned", "--output", tmp_path / "m",
               "--backend", "cpu", cwd=tmp_path)
    assert r.exit_code == EXIT_INPUT, r.output
    assert "also holds a column 'tenure_months'" in one_line(r.stderr)
    assert not (tmp_path / "m").exists()


def _write(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _base(dataset_dir: Path) -> pa.Table:
    return pq.read_table(first_file(dataset_dir)).slice(0, 500)


# -- ids, names, duplicated columns -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["struct", "list", "map"])
def test_an_id_column_of_a_nested_type_is_exit_3_before_work(kind: str, dataset_dir: Path, model_dir: Path,
                                                             tmp_path: Path) -> None:
    base = _base(dataset_dir)
    ids = base.column("customer_id").combine_chunks()
    nested = {"struct": pa.StructArray.from_arrays([ids], names=["id"]),
              "list": pa.array([[int(v)] for v in ids.to_pylist()]),
              "map": pa.array([[("id", int(v))] for v in ids.to_pylist()], type=pa.map_(pa.string(), pa.int64()))}[kind]
    _write(tmp_path / "in" / "part-0.parquet", base.set_column(0, "customer_id", nested))
    r = score(tmp_path / "in", model_dir, tmp_path / "out", cwd=tmp_path)
    assert r.exit_code == EXIT_INPUT, r.output
    msg = one_line(r.stderr)
    assert "id column 'customer_id' has type" in msg and "not a struct, list or map" in msg
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.engine").exists()


def test_a_duplicated_column_name_is_named_as_duplicated(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    base = _base(dataset_dir)
    twice = pa.Table.from_arrays([*base.columns, base.column("age")], names=[*base.column_names, "age"])
    _write(tmp_path / "in" / "part-0.parquet", twice)
    r = score(tmp_path / "in", model_dir, tmp_path / "out", cwd=tmp_path)
    assert r.exit_code == EXIT_INPUT, r.output
    msg = one_line(r.stderr)
    assert "column 'age' appears more than once (duplicated column name)" in msg and "'age' is missing" not in msg


def test_a_file_name_that_is_not_utf8_is_read_and_shown_escaped(dataset_dir: Path, model_dir: Path,
                                                                tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(first_file(dataset_dir), os.fsencode(inp) + b"/caf\xe9.parquet")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine", "score", "--input", str(inp), "--model", str(model_dir), "--output",
           str(out), "--backend", "cpu", "-q"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).num_rows == pq.read_metadata(first_file(dataset_dir)).num_rows
    # A broken file with such a name: exit 3, the name shown escaped, no traceback.
    (out / "_SUCCESS").unlink()
    shutil.rmtree(out)
    with open(os.fsencode(inp) + b"/bad\xff.parquet", "wb") as fh:
        fh.write(b"not parquet at all")
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_INPUT, done.stderr
    assert "bad\\xff.parquet" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("flag,given,near", [("--keep", "regoin", "region"), ("--target", "Churned", "churned")])
def test_near_names_are_suggested(flag: str, given: str, near: str, dataset_dir: Path, model_dir: Path,
                                  tmp_path: Path) -> None:
    if flag == "--keep":
        r = score(dataset_dir, model_dir, tmp_path / "out", "--keep", given, cwd=tmp_path)
    else:
        r = engine("train", "--input", dataset_dir, "--target", given, "--output", tmp_path / "m", "--backend",
                   "cpu", cwd=tmp_path)
    assert r.exit_code == EXIT_INPUT, r.output
    assert f"column {given!r} is missing" in one_line(r.stderr) and f"did you mean {near!r}?" in one_line(r.stderr)


def test_a_missing_feature_gets_a_suggestion(dataset_dir: Path, tmp_path: Path) -> None:
    r = engine("train", "--input", dataset_dir, "--target", "churned", "--features", "age,tenure_month",
               "--output", tmp_path / "m", "--backend", "cpu", cwd=tmp_path)
    assert r.exit_code == EXIT_INPUT, r.output
    assert "did you mean 'tenure_months'?" in one_line(r.stderr)


# -- finite values too large to score exactly -------------------------------------------------------
def _with_huge(dataset_dir: Path, tmp_path: Path, values: tuple[float, ...]) -> tuple[Path, pa.Table]:
    base = _base(dataset_dir)
    col = base.column("avg_order_value").to_numpy().copy()
    col[: len(values)] = values
    table = base.set_column(base.schema.get_field_index("avg_order_value"), "avg_order_value", pa.array(col))
    return _write(tmp_path / "in" / "part-0.parquet", table).parent, base


@pytest.mark.parametrize("policy", ["reject", "fail", "impute"])
def test_finite_values_too_large_are_bad_values(policy: str, dataset_dir: Path, model_dir: Path,
                                                tmp_path: Path) -> None:
    inp, base = _with_huge(dataset_dir, tmp_path, (1e40, -1e300, 1e160))
    out = tmp_path / "out"
    r = score(inp, model_dir, out, "--on-bad-rows", policy, "--max-rejected-fraction", 0.5, cwd=tmp_path)
    if policy == "fail":
        assert r.exit_code == 4, r.output
        assert "avg_order_value" in one_line(r.stderr) and "beyond" in one_line(r.stderr)
        assert not out.exists()
        return
    assert r.exit_code == 0, r.output
    scores = pq.read_table(out).sort_by("customer_id")
    manifest = json.loads((out / "_manifest.json").read_text())
    if policy == "reject":
        assert manifest["totals"]["rows_rejected"] == 3 and scores.num_rows == base.num_rows - 3
        assert "avg_order_value" in (out / "_manifest.json").read_text()
    else:
        # Imputed like ±inf: the row scores as if the value were missing.
        missing = base.set_column(base.schema.get_field_index("avg_order_value"), "avg_order_value",
                                  pa.array([None] * 3 + base.column("avg_order_value").to_pylist()[3:],
                                           type=pa.float64()))
        _write(tmp_path / "in2" / "part-0.parquet", missing)
        assert score(tmp_path / "in2", model_dir, tmp_path / "out2", cwd=tmp_path).exit_code == 0
        assert scores.equals(pq.read_table(tmp_path / "out2").sort_by("customer_id"))
    distance = scores.column("segment_distance").to_numpy()
    assert np.isfinite(distance).all()


def test_huge_values_in_training_data_are_an_input_error(dataset_dir: Path, tmp_path: Path) -> None:
    inp, _ = _with_huge(dataset_dir, tmp_path, (1e300,))
    r = engine("train", "--input", inp, "--target", "churned", "--output", tmp_path / "m", "--backend", "cpu",
               cwd=tmp_path)
    assert r.exit_code == EXIT_INPUT, r.output
    assert "avg_order_value (1 rows)" in one_line(r.stderr) and "beyond" in one_line(r.stderr)
    assert not (tmp_path / "m").exists()
