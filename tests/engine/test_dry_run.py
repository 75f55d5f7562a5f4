"""``engine score --dry-run``: the plan of a run, the same refusals, and nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from engine.cli import app
from engine.io.commit import OutputCommitter

Cli = Callable[..., Result]


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``path`` (hidden ones too) with its size and modification time."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_dry_run_prints_the_plan_and_writes_nothing(dataset_dir: Path, model_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "nightly"
    parent.mkdir()
    out = parent / "scores"
    config = tmp_path / "engine.toml"
    config.write_text("[score]\ncompression = \"zstd\"\n[report]\naction_thresholds = [0.3]\n")
    monkeypatch.setenv("ENGINE_PSI_ALERT", "0.3")
    before, inputs = tree(parent), tree(dataset_dir)
    result = invoke("score", "--input", dataset_dir, "--model", model_dir, "--output", out, "--backend", "cpu",
                    "--keep", "region", "--partition-rows", 1_500, "--config", config, "--dry-run")
    assert result.exit_code == 0, result.output
    assert tree(parent) == before and not out.exists()  # no output, lock or staging
    assert tree(dataset_dir) == inputs
    plan = result.stdout
    # Fragments and their rows: each 2,000-row file is one streamed row group.
    files = sorted(dataset_dir.glob("*.parquet"))
    assert "fragments: 3 (one task each)" in plan
    for i, f in enumerate(files):
        rows = pq.read_metadata(f).num_rows
        assert any(line.split()[:3] == [f"part-{i:05d}.parquet", f"{rows:,}", "rows"] and str(f) in line
                   for line in plan.splitlines()), plan
    # Output columns and their types, in order.
    columns = plan.split("output columns:\n", 1)[1].split("settings", 1)[0].split("\n")
    assert [c.split() for c in columns if c.strip()] == [
        ["customer_id", "int64"], ["segment", "int32"], ["segment_distance", "float32"],
        ["propensity", "float32"], ["region", "string"]]
    # Resolved settings with where each came from, and the file used.
    assert f"settings (file: {config})" in plan
    settings = {line.split()[0]: line.split()[-1] for line in plan.split("settings (", 1)[1].splitlines()[1:]
                if line.startswith("  ")}
    assert settings["partition_rows"] == "(flag)" and settings["compression"] == "(file)"
    assert settings["psi_alert"] == "(env)" and settings["null_alert"] == "(default)"
    assert settings["action_thresholds"] == "(file)"
    assert f"output  {out}: holds nothing (it will be created at publish)" in plan
    assert "backend cpu, tasks on threads of this process" in plan
    assert result.stderr == ""
    # A dry run starts no cluster and contacts no scheduler; it says where the tasks would run.
    cluster = invoke("score", "--input", dataset_dir, "--model", model_dir, "--output", out, "--backend", "cpu",
                     "--scheduler", "tcp://127.0.0.1:9", "--dry-run")
    assert cluster.exit_code == 0, cluster.output
    assert "tasks on the Dask scheduler at tcp://127.0.0.1:9 (not contacted by a dry run)" in cluster.stdout
    assert tree(parent) == before


def test_dry_run_says_what_would_be_replaced(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    first = invoke("score", "--input", dataset_dir, "--model", model_dir, "--output", out, "--backend", "cpu",
                   "--quiet")
    assert first.exit_code == 0, first.output
    run_id = json.loads((out / "_manifest.json").read_text())["run_id"]
    before = tree(tmp_path)
    result = invoke("score", "--input", dataset_dir, "--model", model_dir, "--output", out, "--backend", "cpu",
                    "--overwrite", "--dry-run")
    assert result.exit_code == 0, result.output
    assert (f"holds a complete engine output (run {run_id}, 6,000 rows); replaced atomically at publish"
            in result.stdout)
    assert tree(tmp_path) == before


def _bad(case: str, dataset_dir: Path, model_dir: Path, tmp_path: Path) -> tuple[list[object], int]:
    """The flags of one bad run, and the exit code a real run gives it."""
    inp, model, out, extra = dataset_dir, model_dir, tmp_path / "area" / "out", []
    if case == "missing-model":
        model = tmp_path / "no-model"
    elif case == "missing-feature":
        inp = tmp_path / "in.parquet"
        pq.write_table(pq.read_table(sorted(dataset_dir.glob("*.parquet"))[0]).drop_columns(["age"]), inp)
    elif case == "output-exists":
        out.mkdir(parents=True)
        (out / "precious.txt").write_text("keep me")
    elif case == "bad-config":
        extra = ["--config", tmp_path / "missing.toml"]
    elif case == "gpu-without-gpu":
        extra = ["--backend", "gpu"]
    elif case == "keep-clash":
        extra = ["--keep", "propensity"]
    (tmp_path / "area").mkdir(exist_ok=True)
    args = ["score", "--input", inp, "--model", model, "--output", out, "--quiet"]
    if "--backend" not in extra:
        args += ["--backend", "cpu"]
    return args + extra, {"missing-model": 5, "missing-feature": 3, "output-exists": 6, "bad-config": 2,
                          "gpu-without-gpu": 7, "keep-clash": 2}[case]


@pytest.mark.parametrize("case", ["missing-model", "missing-feature", "output-exists", "bad-config",
                                  "gpu-without-gpu", "keep-clash"])
def test_dry_run_refuses_bad_input_with_the_exit_code_of_a_real_run(
        case: str, dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    from engine.backends import detect

    if case == "gpu-without-gpu" and detect().gpu_usable:
        pytest.skip("a usable GPU is present: --backend gpu is not an error here")
    args, code = _bad(case, dataset_dir, model_dir, tmp_path)
    area = tmp_path / "area"
    before = tree(area)
    dry = invoke(*args, "--dry-run")
    assert dry.exit_code == code, dry.output
    assert dry.stderr.startswith("error (") and dry.stdout == ""
    assert tree(area) == before  # nothing written: no lock, no staging, no output
    real = invoke(*args)
    assert real.exit_code == code, real.output
    assert real.stderr.splitlines()[0] == dry.stderr.splitlines()[0]  # the same message


def test_dry_run_refuses_an_output_locked_by_a_running_job(dataset_dir: Path, model_dir: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "scores"
    with OutputCommitter(out):  # another run holds the lock
        before = tree(tmp_path)
        result = invoke("score", "--input", dataset_dir, "--model", model_dir, "--output", out,
                        "--backend", "cpu", "--dry-run")
        assert result.exit_code == 6 and "another engine run" in result.stderr
        assert tree(tmp_path) == before


class _Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_run_hints_resume_and_the_rerun_reports_scored_and_reused_rows(
        dataset_dir: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "scores"
    args = ["score", "--input", dataset_dir, "--model", model_dir, "--output", out, "--backend", "cpu",
            "--progress", "log"]

    def interrupt(self: OutputCommitter, *a: Any, **k: Any) -> None:
        raise _Interrupt()  # Ctrl-C after every part was staged, before publishing

    with monkeypatch.context() as m:
        m.setattr(OutputCommitter, "publish", interrupt)
        stopped = invoke(*args)
    assert stopped.exit_code == 130
    assert "interrupted: nothing was published" in stopped.stderr and "--resume" in stopped.stderr
    assert not out.exists()
    workspace = tmp_path / ".scores.engine"  # the engine's own directory, with its proof
    staging = workspace / "staging"
    snapshot = tmp_path / "snapshot"
    # Drop one part's sidecar: that part is scored again, the other two are reused.
    (staging / "_parts" / "part-00001.json").unlink()
    shutil.copytree(workspace, snapshot)

    plan = invoke(*args, "--dry-run")
    assert "staged  2 part(s) of an interrupted run: would be discarded (add --resume to reuse them)" in plan.stdout
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 2 of 3 part(s) (4,000 rows) reused" in resumed.stderr
    summary = resumed.stdout.strip()
    assert summary.startswith("scored 6,000 of 6,000 rows (0 rejected) in 3 part(s), 2 reused (4,000 rows) in ")
    assert "rows/s over the 2,000 rows scored now)" in summary
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["rows_scored"] == 2_000 and manifest["totals"]["rows_reused"] == 4_000
    # The progress lines count only what this run scores.
    assert "[score] 1/1 partitions, 2,000 rows" in resumed.stderr

    # A rerun without --resume says it discards the staged parts, and how to keep them.
    shutil.rmtree(out)
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.copytree(snapshot, workspace)
    fresh = invoke(*args)
    assert fresh.exit_code == 0, fresh.output
    assert "discarding 2 staged part(s) of an interrupted run" in fresh.stderr and "--resume" in fresh.stderr
    assert json.loads((out / "_manifest.json").read_text())["totals"]["parts_reused"] == 0


def test_config_lookup_is_explicit_and_never_the_working_directory(
        dataset_dir: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.config import load_settings

    cwd = tmp_path / "cwd"
    (cwd / "conf").mkdir(parents=True)
    (cwd / "conf" / "engine.toml").write_text("[score]\npartition_rows = 7\n")
    home = tmp_path / "xdg"
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("ENGINE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.partition_rows != 7 and settings.config_file is None  # the cwd file is not read
    (home / "engine").mkdir(parents=True)
    (home / "engine" / "engine.toml").write_text("[score]\npartition_rows = 9\n")
    settings = load_settings()
    assert settings.partition_rows == 9 and settings.config_file == str(home / "engine" / "engine.toml")
    env_file = tmp_path / "env.toml"
    env_file.write_text("[score]\npartition_rows = 11\n")
    monkeypatch.setenv("ENGINE_CONFIG", str(env_file))
    assert load_settings().partition_rows == 11 and load_settings().config_file == str(env_file)
    assert load_settings(str(cwd / "conf" / "engine.toml")).partition_rows == 7  # --config wins
    monkeypatch.setenv("ENGINE_CONFIG", str(tmp_path / "nope.toml"))
    result = invoke("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "o",
                    "--dry-run")
    assert result.exit_code == 2 and "$ENGINE_CONFIG" in result.stderr
    # A real run records the file it read and the source of every setting.
    monkeypatch.setenv("ENGINE_CONFIG", str(env_file))
    real = invoke("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "o",
                  "--backend", "cpu", "--quiet", "--partition-rows", 1_000)
    assert real.exit_code == 0, real.output
    manifest = json.loads((tmp_path / "o" / "_manifest.json").read_text())
    assert manifest["config_file"] == str(env_file)
    assert manifest["settings"]["partition_rows"] == 1_000
    assert manifest["settings_sources"]["partition_rows"] == "flag"
    assert manifest["settings_sources"]["compression"] == "default"
    assert os.environ["ENGINE_CONFIG"] == str(env_file)


def test_repository_settings_file_lists_every_setting_with_its_default() -> None:
    """conf/engine.toml documents every key; its uncommented values are the built-in defaults."""
    import sys

    from engine.config import TUNABLES, Settings, load_settings

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(__file__).resolve().parents[2] / "conf" / "engine.toml"
    text = path.read_text()
    for name in TUNABLES:
        assert re.search(rf"^#? ?{name} = ", text, re.M), f"conf/engine.toml does not list {name}"
    defaults = Settings()
    for table in tomllib.loads(text).values():
        for key, value in table.items():
            expected = getattr(defaults, key)
            assert (list(expected) if isinstance(expected, tuple) else expected) == value, key
    settings = load_settings(str(path))
    assert settings.values() == defaults.values() and settings.config_file == str(path)


@pytest.mark.parametrize("where", ["inside-input", "is-model", "cwd"])
def test_dry_run_runs_the_output_guard_of_a_real_run(where: str, dataset_dir: Path, model_dir: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output guard (engine/io/guard.py) is part of the plan: dry and real runs refuse alike."""
    monkeypatch.chdir(tmp_path)
    out = {"inside-input": dataset_dir / "scores", "is-model": model_dir, "cwd": tmp_path}[where]
    watched = {"inside-input": dataset_dir, "is-model": model_dir, "cwd": tmp_path}[where]
    args = ["score", "--input", dataset_dir, "--model", model_dir, "--output", out, "--backend", "cpu",
            "--quiet", "--overwrite"]
    before = tree(watched)
    dry = invoke(*args, "--dry-run")
    real = invoke(*args)
    assert dry.exit_code == real.exit_code != 0, (dry.output, real.output)
    assert dry.stderr.splitlines()[0] == real.stderr.splitlines()[0]
    assert tree(watched) == before


def test_dry_run_shows_the_thread_count_and_batch_rows_the_run_uses(dataset_dir: Path, model_dir: Path,
                                                                     tmp_path: Path) -> None:
    """Unset, both fit the host; the plan shows the chosen values, not None (found by QA)."""
    from engine.cluster import default_threads

    out = tmp_path / "scores"
    args = ("score", "--input", dataset_dir, "--model", model_dir, "--output", out, "--backend", "cpu",
            "--partition-rows", 1_500)
    plan = invoke(*args, "--dry-run")
    assert plan.exit_code == 0, plan.output
    shown = {line.split()[0]: line.split()[1:] for line in plan.stdout.split("settings (", 1)[1].splitlines()[1:]
             if line.startswith("  ")}
    assert shown["threads_per_worker"] == [str(default_threads()), "(auto)", "(default)"]
    assert shown["batch_rows"][1:] == ["(auto)", "(default)"]
    batch = int(shown["batch_rows"][0])
    assert batch == 1_500  # never above --partition-rows
    # The real run decodes (and writes one row group per) batch of exactly that size.
    assert invoke(*args).exit_code == 0
    groups = [pq.ParquetFile(p).metadata.row_group(i).num_rows
              for p in sorted(out.glob("part-*.parquet")) for i in range(pq.ParquetFile(p).metadata.num_row_groups)]
    assert max(groups) == batch
    # Set by a flag, a value is shown as given, without the mark.
    args = (*args[:5], "--output", tmp_path / "other", *args[7:])
    flagged = invoke(*args, "--threads-per-worker", 3, "--batch-rows", 700, "--dry-run").stdout
    assert re.search(r"threads_per_worker\s+3\s+\(flag\)", flagged) and re.search(r"batch_rows\s+700\s+\(flag\)", flagged)
    workers = invoke(*args, "--workers", 2, "--dry-run").stdout
    assert re.search(r"threads_per_worker\s+1 \(auto\)\s+\(default\)", workers)
