"""Input the engine must refuse rather than guess at (issue 16): hive keys that clash with a
file's own column, id columns of types it cannot key on, file names that are not UTF-8,
duplicated column names, near-name suggestions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

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


__all__ = ["_write", "_base", "os"]
