"""Shared fixtures of the engine tests: one small generated dataset and one trained model
per session (both read-only for the tests), a CLI runner, and helpers to read scores.

Tests that need to change data or a model copy it into their own ``tmp_path`` first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner, Result

from engine.cli import app
from engine.jobs.generate import generate
from engine.jobs.train import TrainOptions, train

DATA_ROWS = 6_000
DATA_FILES = 3
DATA_SEED = 7
MODEL_K = 4


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,000 generated customers in 3 Parquet files (seed 7). Do not modify."""
    out = tmp_path_factory.mktemp("shared") / "data"
    generate(DATA_ROWS, DATA_FILES, out, seed=DATA_SEED)
    return out


@pytest.fixture(scope="session")
def model_dir(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained by the engine on :func:`dataset_dir` (k=4, CPU). Do not modify."""
    out = tmp_path_factory.mktemp("shared-model") / "model"
    train(TrainOptions(input=str(dataset_dir), target="churned", output=str(out), k=MODEL_K,
                       seed=3, backend="cpu"))
    return out


@pytest.fixture(scope="session")
def dataset_frame(dataset_dir: Path) -> pd.DataFrame:
    """The shared dataset as one pandas DataFrame, in file order."""
    return ds.dataset(dataset_dir, format="parquet").to_table().to_pandas()


@pytest.fixture(scope="session")
def cli() -> Callable[..., Result]:
    """``cli("score", "--input", ...)``: run the CLI in-process; returns click's Result."""
    runner = CliRunner()

    def invoke(*args: object) -> Result:
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def score_cli(cli: Callable[..., Result]) -> Callable[..., Result]:
    """``score_cli(input, model, output, *flags)``: ``engine score`` on the CPU backend, quiet."""

    def run(input: object, model: object, output: object, *flags: object) -> Result:
        return cli("score", "--input", input, "--model", model, "--output", output,
                   "--backend", "cpu", "--quiet", *flags)

    return run


def read_scores(output: Path | str, id_column: str = "customer_id",
                columns: Sequence[str] | None = None) -> pd.DataFrame:
    """An output dataset as a DataFrame sorted by id (through pyarrow's own discovery)."""
    table = ds.dataset(str(output), format="parquet").to_table(columns=columns)
    return table.to_pandas().sort_values(id_column, kind="stable").reset_index(drop=True)


@pytest.fixture(scope="session")
def scores_of() -> Callable[..., pd.DataFrame]:
    """:func:`read_scores` as a fixture (test modules cannot import each other's conftest)."""
    return read_scores


@pytest.fixture(scope="session")
def fresh_imports() -> Callable[..., list[str]]:
    """``fresh_imports(code, names, cwd=None)``: run ``code`` in a fresh interpreter (this checkout
    first on its path) and return, sorted, which of the modules ``names`` it had imported at its end
    (start-up costs that a run must not pay). The code's failure, or anything it prints, fails the
    test."""
    repo = Path(__file__).resolve().parents[2]

    def run(code: str, names: Sequence[str], cwd: Path | None = None) -> list[str]:
        probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {tuple(names)!r} if m in sys.modules)))\n"
        result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)   # the probe's line and nothing else (the code prints nothing)

    return run
