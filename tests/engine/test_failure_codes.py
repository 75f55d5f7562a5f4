"""Issue 10, parts 2 to 4: a model is checked, not just hashed; every failure has its exit code;
bad-row failures say what to fix.

Real models edited after training with their hash recomputed, real settings from the
environment, a config file and flags, real ``engine score`` processes stopped with
SIGTERM and SIGINT, and real Parquet files with infinite values and null ids.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from guard_helpers import engine, engine_process, one_line, snapshot

from engine.errors import EXIT_CODES, BadRowsError, ModelError, Terminated, UsageError
from engine.io.commit import TEST_PAUSE_AFTER_PART
from engine.models.artifact import ARRAYS_FILE, METADATA_FILE, compute_hash, load_model
from engine.models.profile import QUANTILES

EXIT_MODEL, EXIT_USAGE, EXIT_BAD_ROWS = ModelError.exit_code, UsageError.exit_code, BadRowsError.exit_code


def score(inp: Path, model: Path, out: Path, *flags: object, cwd: Path, env: dict[str, str] | None = None) -> Any:
    return engine("score", "--input", inp, "--model", model, "--output", out, "--backend", "cpu", "-q",
                  *flags, cwd=cwd, env=env)


# -- part 2: a model is checked at every load ------------------------------------------------------
def edit_model(model: Path, arrays: Callable[[dict[str, np.ndarray]], None] | None = None,
               meta: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Edit a copied artifact the way a hostile or careless hand would: and recompute its hash."""
    with np.load(model / ARRAYS_FILE) as npz:
        values = {name: np.array(npz[name]) for name in npz.files}
    metadata = json.loads((model / METADATA_FILE).read_text())
    if arrays:
        arrays(values)
    if meta:
        meta(metadata)
    np.savez(model / ARRAYS_FILE, **values)
    metadata["content_hash"] = compute_hash(metadata, values)
    (model / METADATA_FILE).write_text(json.dumps(metadata))


def _set(name: str, index: Any, value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def change(a: dict[str, np.ndarray]) -> None:
        a[name][index] = value
    return change


EDITS: dict[str, tuple[Any, Any, str, str]] = {
    # case: (array edit, metadata edit, file named, message)
    "nan-coefficient": (_set("coef", 1, np.nan), None, ARRAYS_FILE, "array 'coef' holds NaN or infinite values"),
    "huge-coefficient": (_set("coef", 0, 1e300), None, ARRAYS_FILE, "array 'coef' holds values beyond"),
    "zero-scale": (_set("propensity_scale", 2, 0.0), None, ARRAYS_FILE, "array 'propensity_scale' has a zero scale"),
    "infinite-centroid": (_set("centroids", (0, 0), np.inf), None, ARRAYS_FILE,
                          "array 'centroids' holds NaN or infinite values"),
    "nan-fill": (_set("segment_fill", 0, np.nan), None, ARRAYS_FILE, "array 'segment_fill' holds NaN"),
    "short-feature-list": (None, lambda m: m["features"].pop(), ARRAYS_FILE, "array 'segment_fill' has shape"),
    "bad-shape": (lambda a: a.update(centroids=a["centroids"].ravel()), None, ARRAYS_FILE,
                  "array 'centroids' has shape"),
    "no-segments": (lambda a: a.update(centroids=a["centroids"][:0]), None, ARRAYS_FILE, "with k >= 1 segments"),
    "unknown-type": (None, lambda m: m["features"][0].update(type="string"), METADATA_FILE,
                     "has unknown column type 'string'"),
    "bad-drift-bins": (None, lambda m: next(iter(m["profile"]["features"].values())).update(bin_edges=[3, 1]),
                       METADATA_FILE, "unusable drift bins"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_an_edited_model_with_a_recomputed_hash_is_refused(case: str, dataset_dir: Path, model_dir: Path,
                                                           tmp_path: Path) -> None:
    model = Path(shutil.copytree(model_dir, tmp_path / "model"))
    arrays, meta, named, message = EDITS[case]
    edit_model(model, arrays, meta)
    out = tmp_path / "scores"
    r = score(dataset_dir, model, out, cwd=tmp_path)
    assert r.exit_code == EXIT_MODEL, r.output
    msg = one_line(r.stderr)
    assert f"{model / named}" in msg and message in msg, msg
    assert "Traceback" not in r.output
    assert not out.exists() and not (tmp_path / ".scores.engine/staging").exists()
    assert engine("model", "show", model, cwd=tmp_path).exit_code == EXIT_MODEL


@pytest.mark.parametrize("name", [ARRAYS_FILE, METADATA_FILE])
def test_a_fifo_in_the_model_is_refused_without_hanging(name: str, dataset_dir: Path, model_dir: Path,
                                                        tmp_path: Path) -> None:
    model = Path(shutil.copytree(model_dir, tmp_path / "model"))
    (model / name).unlink()
    os.mkfifo(model / name)
    t0 = time.monotonic()
    done = engine_process("score", "--input", dataset_dir, "--model", model, "--output", tmp_path / "scores",
                          "--backend", "cpu", "-q", cwd=tmp_path, timeout=120)
    assert done.returncode == EXIT_MODEL, done.stderr
    assert f"{model / name} is a FIFO, not a regular file" in one_line(done.stderr)
    assert time.monotonic() - t0 < 100 and not (tmp_path / "scores").exists()


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_fifo_in_the_input_is_refused_without_hanging(dry_run: bool, dataset_dir: Path, model_dir: Path,
                                                        tmp_path: Path) -> None:
    # It was read as "an empty file (0 bytes)"; a FIFO is no file of data at all.
    data = Path(shutil.copytree(dataset_dir, tmp_path / "data"))
    os.mkfifo(data / "zz-late.parquet")
    done = engine_process("score", "--input", data, "--model", model_dir, "--output", tmp_path / "scores",
                          "--backend", "cpu", "-q", *(["--dry-run"] if dry_run else []), cwd=tmp_path, timeout=120)
    assert done.returncode == 3, done.stderr
    assert f"{data / 'zz-late.parquet'} is not a regular file (a FIFO" in one_line(done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("trained_by", ["library", "cli"])
def test_the_profile_keeps_no_exact_extremes(trained_by: str, dataset_dir: Path, model_dir: Path,
                                             dataset_frame: Any, tmp_path: Path) -> None:
    """No lone customer's minimum or maximum is copied into the model file."""
    if trained_by == "cli":
        model_dir = tmp_path / "model"
        r = engine("train", "--input", dataset_dir, "--target", "churned", "--output", model_dir, "--k", 3,
                   "--backend", "cpu", "-q", cwd=tmp_path)
        assert r.exit_code == 0, r.output
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    assert 0.0 not in QUANTILES and 1.0 not in QUANTILES

    for name, entry in meta["profile"]["features"].items():
        assert "0.0" not in entry["quantiles"] and "1.0" not in entry["quantiles"], name
        # The values of customers the profile holds: quantiles and bin edges (the rest are rates).
        stored = {float(v) for v in [*entry["quantiles"].values(), *entry["bin_edges"]]}
        column = dataset_frame[name].dropna().astype(np.float64)
        for extreme in (column.min(), column.max()):
            if (column == extreme).sum() < 20:  # a value few customers share identifies them
                assert float(extreme) not in stored, (name, extreme)


def test_an_older_model_with_extremes_still_loads_and_scores(dataset_dir: Path, model_dir: Path,
                                                             tmp_path: Path) -> None:
    model = Path(shutil.copytree(model_dir, tmp_path / "model"))

    def add_extremes(meta: dict[str, Any]) -> None:
        for entry in meta["profile"]["features"].values():
            entry["quantiles"] = {"0.0": -1.0, **entry["quantiles"], "1.0": 1e6}

    edit_model(model, meta=add_extremes)
    assert load_model(model).profile["features"]["age"]["quantiles"]["1.0"] == 1e6
    r = score(dataset_dir, model, tmp_path / "scores", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert ds.dataset(tmp_path / "scores", format="parquet").count_rows() == 6_000


def test_import_sklearn_refuses_a_pipeline_that_cannot_score(dataset_dir: Path, tmp_path: Path) -> None:
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    frame = ds.dataset(dataset_dir, format="parquet").to_table().to_pandas()
    X = frame[["recency_days", "frequency_12m"]].astype(np.float64)
    seg = Pipeline([("scale", StandardScaler()), ("kmeans", KMeans(n_clusters=2, n_init=1, random_state=0))]).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        prop = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression())]).fit(X, frame["churned"])
    seg[-1].cluster_centers_[1, 0] = np.inf
    joblib.dump(seg, tmp_path / "seg.joblib")
    joblib.dump(prop, tmp_path / "prop.joblib")
    out = tmp_path / "model"
    r = engine("model", "import-sklearn", "--segmenter", tmp_path / "seg.joblib", "--propensity",
               tmp_path / "prop.joblib", "--output", out, cwd=tmp_path)
    assert r.exit_code == EXIT_MODEL, r.output
    msg = one_line(r.stderr)
    assert str(tmp_path / "seg.joblib") in msg and "array 'centroids' holds NaN or infinite values" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prop.joblib", "seg.joblib"]


# -- part 3: settings are checked when they are loaded ---------------------------------------------
SETTINGS_CASES: dict[str, tuple[dict[str, str], list[str], str]] = {
    # case: (environment, flags, message)
    "compression": ({"ENGINE_COMPRESSION": "bogus"}, [], "setting compression (from the environment variable ENGINE_COMPRESSION)"),
    "connect-timeout-nan": ({}, ["--connect-timeout", "nan"], "setting connect_timeout_s (from --connect-timeout)"),
    "no-worker-timeout-inf": ({"ENGINE_NO_WORKER_TIMEOUT_S": "inf"}, [], "setting no_worker_timeout_s"),
    "block-rows-0": ({"ENGINE_BLOCK_ROWS": "0"}, [], "setting block_rows (from the environment variable ENGINE_BLOCK_ROWS)"),
    "batch-rows-0": ({}, ["--batch-rows", "0"], "setting batch_rows (from --batch-rows)"),
    "gpu-tasks-0": ({"ENGINE_GPU_TASKS": "0"}, [], "setting gpu_tasks (from the environment variable ENGINE_GPU_TASKS)"),
    "block-rows-negative": ({"ENGINE_BLOCK_ROWS": "-1"}, [], "must be a whole number of at least 1, got -1"),
    "gpu-block-rows": ({"ENGINE_GPU_BLOCK_ROWS": "0"}, [], "setting gpu_block_rows"),
    "partition-rows": ({}, ["--partition-rows", "0"], "setting partition_rows (from --partition-rows)"),
    "threads-0": ({}, ["--threads-per-worker", "0"], "setting threads_per_worker (from --threads-per-worker)"),
    "workers-0": ({}, ["--workers", "0"], "setting workers (from --workers)"),
    "fraction-nan": ({}, ["--max-rejected-fraction", "nan"], "setting max_rejected_fraction"),
    "progress-interval": ({"ENGINE_PROGRESS_INTERVAL_S": "0"}, [], "setting progress_interval_s"),
    "duplicate-keep": ({}, ["--keep", "region,tenure_months,region"], "--keep names 'region' more than once"),
    "gpus": ({}, ["--gpus", "first"], "setting gpus (from --gpus)"),
    # Once accepted silently on the CPU: a shared settings file's typo surfaced only on the GPU host.
    # Named as the setting it is (it came from the environment), not as the flag's enum.
    "on-bad-rows-env": ({"ENGINE_ON_BAD_ROWS": "skip"}, [], "setting on_bad_rows (from the environment variable ENGINE_ON_BAD_ROWS)"),
    "rmm-pool-size": ({"ENGINE_RMM_POOL_SIZE": "24 gigs"}, [], "setting rmm_pool_size (from the environment variable ENGINE_RMM_POOL_SIZE)"),
    "rmm-pool-size-0": ({"ENGINE_RMM_POOL_SIZE": "0"}, [], "must be a share of GPU memory in (0, 1]"),
}


@pytest.mark.parametrize("case", list(SETTINGS_CASES))
def test_bad_settings_are_exit_2_before_anything_is_created(case: str, dataset_dir: Path, model_dir: Path,
                                                            tmp_path: Path) -> None:
    environ, flags, message = SETTINGS_CASES[case]
    before = snapshot(tmp_path)
    r = score(dataset_dir, model_dir, tmp_path / "scores", *flags, cwd=tmp_path, env=environ)
    assert r.exit_code == EXIT_USAGE, r.output
    assert message in one_line(r.stderr), r.stderr
    assert snapshot(tmp_path) == before  # no output, no staging, no lock


def test_a_bad_value_in_the_config_file_is_exit_2(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "engine.toml").write_text("[score]\nblock_rows = 0\n")
    r = score(dataset_dir, model_dir, tmp_path / "scores", "--config", tmp_path / "engine.toml", cwd=tmp_path)
    assert r.exit_code == EXIT_USAGE and "setting block_rows" in r.stderr
    assert not (tmp_path / "scores").exists() and not (tmp_path / ".scores.engine").exists()
    # A flag corrects a bad environment value: only the merged settings are checked.
    r = score(dataset_dir, model_dir, tmp_path / "scores", "--partition-rows", 2_000, cwd=tmp_path,
              env={"ENGINE_PARTITION_ROWS": "0"})
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("how", ["binary", "directory", "env-directory"])
def test_a_config_that_is_not_a_toml_file_is_exit_2(how: str, dataset_dir: Path, model_dir: Path,
                                                    tmp_path: Path) -> None:
    # A binary file once ended in a UnicodeDecodeError traceback (exit 1).
    if how == "binary":
        config = tmp_path / "engine.toml"
        config.write_bytes(b"\xb0\x00\xff[score]\n")
    else:
        config = tmp_path / "conf"
        config.mkdir()
    flags = [] if how == "env-directory" else ["--config", config]
    env = {"ENGINE_CONFIG": str(config)} if how == "env-directory" else None
    before = sorted(p.name for p in tmp_path.iterdir())
    r = score(dataset_dir, model_dir, tmp_path / "scores", *flags, cwd=tmp_path, env=env)
    assert r.exit_code == EXIT_USAGE, r.output
    said = one_line(r.stderr)
    assert "Traceback" not in r.stderr and str(config) in said
    assert ("not UTF-8 text" if how == "binary" else "is a directory, not a file") in said
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("flags, message", [
    (["--features", "age,age,tenure_months"], "--features names 'age' more than once"),
    (["--connect-timeout", "nan"], "setting connect_timeout_s"),
])
def test_train_settings_are_exit_2_before_anything_is_created(flags: list[str], message: str, dataset_dir: Path,
                                                              tmp_path: Path) -> None:
    r = engine("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "model",
               "--backend", "cpu", "-q", *flags, cwd=tmp_path)
    assert r.exit_code == EXIT_USAGE, r.output
    assert message in one_line(r.stderr)
    assert list(tmp_path.iterdir()) == []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# -- part 3: SIGTERM ends like SIGINT ---------------------------------------------------------------
@pytest.mark.parametrize("signum, code, said", [
    (signal.SIGTERM, 143, "terminated (SIGTERM): nothing was published"),
    (signal.SIGINT, 130, "interrupted: nothing was published"),
])
def test_a_signal_publishes_nothing_keeps_staging_and_says_resume(signum: int, code: int, said: str,
                                                                  dataset_dir: Path, model_dir: Path,
                                                                  tmp_path: Path) -> None:
    assert EXIT_CODES[code].startswith(("terminated (SIGTERM)", "interrupted")) and Terminated.exit_code == 143
    out = tmp_path / "scores"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    environ[TEST_PAUSE_AFTER_PART] = "1.0"  # each part lingers a second after committing: a window
    cmd = [sys.executable, "-m", "engine", "score", "--input", str(dataset_dir), "--model", str(model_dir),
           "--output", str(out), "--backend", "cpu", "--partition-rows", "500", "-q"]
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT
    # (no KeyboardInterrupt): give the engine the default disposition a terminal would.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    parts = tmp_path / ".scores.engine/staging" / "_parts"
    deadline = time.monotonic() + 240
    while not list(parts.glob("part-*.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no part was ever committed"
        time.sleep(0.02)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == code, stderr
    msg = one_line(stderr)
    assert said in msg and "Traceback" not in stderr
    assert f"finished part(s) are kept in {tmp_path / '.scores.engine/staging'}" in msg and "--resume" in msg
    assert not out.exists()
    done = engine_process(*cmd[3:], "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["parts_reused"] >= 1 and manifest["totals"]["rows_out"] == 6_000


# -- part 4: bad-row failures say what to fix -------------------------------------------------------
@pytest.fixture(scope="module")
def bad_data(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[int]]]:
    """Two 2,000-row files: ±inf in two columns and null ids in both. Returns the bad rows per file."""
    out = tmp_path_factory.mktemp("badrows") / "data"
    out.mkdir()
    bad: dict[str, list[int]] = {}
    plan = {"a.parquet": {"monetary_12m": [5, 17, 30], "basket_size_items": [44], None: [60]},
            "b.parquet": {"monetary_12m": [2], None: [9, 11]}}
    for source, (name, edits) in zip(sorted(dataset_dir.glob("*.parquet")), plan.items()):
        table = pq.read_table(source)
        for column, rows in edits.items():
            target = column or "customer_id"
            values = table.column(target).to_pylist()
            for row in rows:
                values[row] = None if column is None else (np.inf if row % 2 else -np.inf)
            i = table.schema.get_field_index(target)
            table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
        pq.write_table(table, out / name)
        bad[name] = sorted(r for rows in edits.values() for r in rows)
    return out, bad


def test_too_many_rejected_rows_say_which_columns_rows_and_flags(bad_data: tuple[Path, dict[str, list[int]]],
                                                                model_dir: Path, tmp_path: Path) -> None:
    data, bad = bad_data
    out = tmp_path / "scores"
    r = score(data, model_dir, out, "--max-rejected-fraction", "0.001", cwd=tmp_path)
    assert r.exit_code == EXIT_BAD_ROWS, r.output
    msg = one_line(r.stderr)
    assert "8 of 4,000 rows were rejected (0.20%), above --max-rejected-fraction 0.001" in msg
    assert "column 'monetary_12m': 4 rows with an infinite value" in msg
    assert "column 'customer_id': 3 rows with a null id" in msg
    assert "column 'basket_size_items': 1 row with an infinite value" in msg
    assert f"First bad rows: {data / 'a.parquet'} row 5: column 'monetary_12m' is infinite" in msg
    assert f"{data / 'a.parquet'} row 60: column 'customer_id' (the id) is null" in msg
    assert "rerun with --max-rejected-fraction 0.01 " in msg and "--on-bad-rows impute" in msg
    assert "--on-bad-rows reject" not in msg  # the default it is already using
    rejected = tmp_path / ".scores.engine/staging" / "_rejected"
    assert f"are in {rejected}" in msg
    kept = pq.read_table(rejected)
    assert kept.num_rows == 8 and kept.column_names == ["customer_id", "_file", "_row", "_column", "_reason"]
    rows = {(Path(f).name, r) for f, r in zip(kept.column("_file").to_pylist(), kept.column("_row").to_pylist())}
    assert rows == {(name, r) for name, rs in bad.items() for r in rs}
    assert not out.exists()
    # The suggested flags work, and --resume reuses the parts already scored.
    r = score(data, model_dir, out, "--max-rejected-fraction", "0.01", "--resume", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["parts_reused"] == 2
    first = next(p for p in manifest["partitions"] if p["file"].endswith("a.parquet"))
    assert first["bad_rows_by_column"] == {"monetary_12m": {"infinite value": 3},
                                           "basket_size_items": {"infinite value": 1},
                                           "customer_id": {"null id": 1}}
    assert [(b["row"], b["column"]) for b in first["first_bad_rows"]] == [
        (5, "monetary_12m"), (17, "monetary_12m"), (30, "monetary_12m"), (44, "basket_size_items"),
        (60, "customer_id")]


def test_on_bad_rows_fail_counts_per_column_and_keeps_the_ids(bad_data: tuple[Path, dict[str, list[int]]],
                                                              model_dir: Path, tmp_path: Path) -> None:
    data, bad = bad_data
    one = tmp_path / "in"
    one.mkdir()
    shutil.copy(data / "a.parquet", one / "a.parquet")
    r = score(one, model_dir, tmp_path / "scores", "--on-bad-rows", "fail", cwd=tmp_path)
    assert r.exit_code == EXIT_BAD_ROWS, r.output
    msg = one_line(r.stderr)
    assert "has rows that cannot be scored and --on-bad-rows is fail" in msg
    assert "column 'monetary_12m': 3 rows with an infinite value" in msg
    assert "column 'customer_id': 1 row with a null id" in msg
    assert f"{one / 'a.parquet'} row 5: column 'monetary_12m' is infinite" in msg
    assert "--on-bad-rows reject" in msg and "--on-bad-rows impute" in msg
    where = tmp_path / ".scores.engine/staging" / "_rejected" / "part-00000.parquet"
    assert f"Their ids are in {where}" in msg
    kept = pq.read_table(where)
    source = pq.read_table(one / "a.parquet")
    assert kept.column("_row").to_pylist() == bad["a.parquet"]
    expect = source.column("customer_id").take(pa.array(bad["a.parquet"]))
    assert kept.column("customer_id").equals(expect) and pc.sum(kept.column("customer_id").is_null()).as_py() == 1
    assert not (tmp_path / "scores").exists()


def test_an_unreachable_scheduler_leaves_no_staging_behind(dataset_dir: Path, model_dir: Path,
                                                           tmp_path: Path) -> None:
    # Exit 8 before any part was finished: nothing to resume, so no empty staging directory
    # (with its empty _parts/ and _rejected/) may be left beside the output.
    out = tmp_path / "scores"
    r = score(dataset_dir, model_dir, out, "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", 1,
              cwd=tmp_path)
    assert r.exit_code == 8, r.output
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in one_line(r.stderr)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock, no staging
