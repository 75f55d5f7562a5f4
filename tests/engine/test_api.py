"""The Python API is the CLI's twin: same scores, same failures (``exit_code``), documented example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from typer.testing import Result

import engine
from engine.errors import EXIT_CODES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli_scores(dataset_dir: Path, model_dir: Path, score_cli: Callable[..., Result],
               tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """``engine score --reasons 3 --reason-contributions --keep region`` of the shared data, by id."""
    out = tmp_path_factory.mktemp("api-cli") / "scores"
    r = score_cli(dataset_dir, model_dir, out, "--reasons", 3, "--reason-contributions", "--keep", "region")
    assert r.exit_code == 0, r.output
    frame = ds.dataset(out, format="parquet").to_table().to_pandas()
    return frame.sort_values("customer_id").reset_index(drop=True)


def _same(api: pd.DataFrame, cli: pd.DataFrame) -> None:
    api = api.sort_values("customer_id").reset_index(drop=True)
    assert list(api.columns) == list(cli.columns)
    assert (api["customer_id"].to_numpy() == cli["customer_id"].to_numpy()).all()
    assert (api["segment"].to_numpy() == cli["segment"].to_numpy()).all()
    assert np.abs(api["propensity"].to_numpy() - cli["propensity"].to_numpy()).max() <= 1e-6
    assert np.abs(api["segment_distance"].to_numpy() - cli["segment_distance"].to_numpy()).max() <= 1e-5
    for i in (1, 2, 3):
        assert api[f"reason_{i}"].astype(object).fillna("").tolist() == \
            cli[f"reason_{i}"].astype(object).fillna("").tolist()
        a, c = api[f"reason_{i}_contribution"].to_numpy(), cli[f"reason_{i}_contribution"].to_numpy()
        assert (np.isnan(a) == np.isnan(c)).all() and np.nanmax(np.abs(a - c)) <= 1e-6
    assert api["region"].tolist() == cli["region"].tolist()


@pytest.mark.parametrize("kind", ["table", "batch", "pandas"])
def test_model_score_equals_the_cli(kind: str, dataset_dir: Path, model_dir: Path,
                                    cli_scores: pd.DataFrame) -> None:
    model = engine.load_model(str(model_dir))
    assert isinstance(model, engine.Model) and model.k == 4 and model.id_column == "customer_id"
    table = ds.dataset(dataset_dir, format="parquet").to_table()
    data = {"table": table, "batch": table.combine_chunks().to_batches()[0],
            "pandas": table.to_pandas()}[kind]
    if kind == "pandas":
        data.index = data.index + 1000   # a DataFrame keeps its own index
    out = model.score(data, reasons=3, reason_contributions=True, keep=["region"])
    expected_type = {"table": pa.Table, "batch": pa.RecordBatch, "pandas": pd.DataFrame}[kind]
    assert isinstance(out, expected_type)
    assert out.num_rows if kind != "pandas" else len(out) == table.num_rows
    frame = out if kind == "pandas" else out.to_pandas()
    if kind == "pandas":
        assert (frame.index == data.index).all()
    else:
        assert out.schema.field("segment").type == pa.int32()
        assert out.schema.field("propensity").type == pa.float32()
    _same(frame, cli_scores)


def test_model_score_without_an_id_and_in_its_own_order(dataset_dir: Path, model_dir: Path,
                                                        cli_scores: pd.DataFrame) -> None:
    model = engine.load_model(str(model_dir))
    table = ds.dataset(dataset_dir, format="parquet").to_table()
    order = np.argsort(table.column("customer_id").to_numpy())[::-1]
    out = model.score(table.take(order).drop_columns(["customer_id"]))
    assert out.schema.names == ["segment", "segment_distance", "propensity"]
    expected = cli_scores.iloc[::-1]
    assert (out.column("segment").to_numpy() == expected["segment"].to_numpy()).all()


def test_model_score_errors_carry_the_cli_exit_codes(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    model = engine.load_model(str(model_dir))
    table = ds.dataset(dataset_dir, format="parquet").to_table()
    with pytest.raises(engine.InputError, match="recency_days") as err:
        model.score(table.drop_columns(["recency_days"]))
    assert err.value.exit_code == 3
    with pytest.raises(engine.UsageError) as usage:
        model.score(table, reasons=99)
    assert usage.value.exit_code == 2
    i = table.schema.get_field_index("monetary_12m")
    values = table.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
    values[7] = np.inf
    infinite = table.set_column(i, "monetary_12m", pa.array(values))
    with pytest.raises(engine.BadRowsError, match="row 7") as bad:
        model.score(infinite, on_bad_rows="fail")
    assert bad.value.exit_code == 4
    assert model.score(infinite).num_rows == table.num_rows   # imputed by default
    with pytest.raises(engine.ModelError) as missing:
        engine.load_model(str(tmp_path / "nowhere"))
    assert missing.value.exit_code == 5 and isinstance(missing.value, engine.EngineError)


def test_train_returns_the_model_it_wrote(dataset_dir: Path, tmp_path: Path) -> None:
    model = engine.train(str(dataset_dir), "churned", str(tmp_path / "m"), k=3, C=1.0, report=False,
                         backend="cpu", features="recency_days,frequency_12m,monetary_12m")
    assert isinstance(model, engine.Model)
    assert model.features == ("recency_days", "frequency_12m", "monetary_12m") and model.k == 3
    assert model.training.rows_train == 6_000 and model.training.report_path is None  # type: ignore[attr-defined]
    assert engine.load_model(str(tmp_path / "m")).content_hash == model.content_hash
    with pytest.raises(engine.OutputError) as exists:
        engine.train(str(dataset_dir), "churned", str(tmp_path / "m"), k=3, C=1.0, report=False, backend="cpu")
    assert exists.value.exit_code == 6
    with pytest.raises(engine.InputError) as no_target:
        engine.train(str(dataset_dir), "no_such_target", str(tmp_path / "m2"), backend="cpu")
    assert no_target.value.exit_code == 3


def test_score_returns_the_run_summary(dataset_dir: Path, model_dir: Path, tmp_path: Path,
                                       score_cli: Callable[..., Result]) -> None:
    out = tmp_path / "scores"
    summary = engine.score(str(dataset_dir), str(model_dir), str(out), backend="cpu", keep="region",
                           partition_rows=1000)
    assert isinstance(summary, engine.ScoreSummary)
    assert summary.rows_in == summary.rows_out == summary.rows_scored == 6_000 and summary.rows_rejected == 0
    assert summary.output == str(out.resolve()) and (out / "_SUCCESS").exists() and summary.seconds > 0
    assert summary.manifest["totals"]["rows_in"] == 6_000
    with pytest.raises(engine.OutputError) as exists:
        engine.score(str(dataset_dir), str(model_dir), str(out), backend="cpu")
    cli = score_cli(dataset_dir, model_dir, out)
    assert exists.value.exit_code == cli.exit_code == 6
    with pytest.raises(engine.ModelError) as bad_model:
        engine.score(str(dataset_dir), str(tmp_path / "nope"), str(tmp_path / "o2"), backend="cpu")
    assert bad_model.value.exit_code == 5 and EXIT_CODES[5] == "model"
    summary = engine.score(str(dataset_dir), str(model_dir), str(out), backend="cpu", overwrite=True, reasons=2)
    names = ds.dataset(out, format="parquet").schema.names
    assert names == ["customer_id", "segment", "segment_distance", "propensity", "reason_1", "reason_2"]


def test_import_engine_stays_light(fresh_imports) -> None:  # noqa: ANN001
    code = "import engine; engine.load_model; engine.Model; engine.EngineError"
    assert fresh_imports(code, ("numpy", "pyarrow", "pandas", "dask", "cupy", "cuml", "numba", "sklearn")) == []


def readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- section:api -->")[1].split("<!-- /section:api -->")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_readme_example_runs(tmp_path: Path) -> None:
    """The README's example, as a user would run it, after the command it says to run first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = str(REPO)
    setup = subprocess.run([sys.executable, "-m", "engine", "generate", "--rows", "30000", "--files", "2",
                            "--output", "data/customers"], cwd=tmp_path, capture_output=True, text=True,
                           env=env, timeout=300)
    assert setup.returncode == 0, setup.stderr
    r = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "scores" / "tonight" / "_SUCCESS").exists()
    assert "scored 30000 rows" in r.stdout and "ModelError 5" in r.stdout
