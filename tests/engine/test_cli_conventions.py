"""CLI conventions: enum choices, results on stdout and diagnostics on stderr, flag names,
versions in ``engine info``, the Dask dashboard address."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from engine.cli import app

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command, flag, choices", [
    ("score", "--backend", ("auto", "cpu", "gpu")),
    ("score", "--progress", ("auto", "bar", "log", "quiet")),
    ("score", "--on-bad-rows", ("impute", "reject", "fail")),
    ("train", "--backend", ("auto", "cpu", "gpu")),
    ("train", "--progress", ("auto", "bar", "log", "quiet")),
])
def test_choices_are_enums_that_help_shows_and_typer_validates(
        command: str, flag: str, choices: tuple[str, ...], dataset_dir: Path, model_dir: Path,
        tmp_path: Path) -> None:
    # Wide enough that rich does not wrap the choices column.
    help_out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"})
    help_text = " ".join(help_out.stdout.split())
    assert f"<{'|'.join(choices)}>" in help_text
    base = (["score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "o"]
            if command == "score" else
            ["train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "o"])
    result = invoke(*base, flag, "fancy", "-q")
    assert result.exit_code == 2, result.output
    text = " ".join(result.stderr.replace("│", " ").split())
    assert "Invalid value for" in text and "'fancy' is not one of" in text
    assert result.stdout == "" and not (tmp_path / "o").exists()


def test_progress_fancy_exits_2_even_when_quiet(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    result = invoke("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "o",
                    "--progress", "fancy", "-q")
    assert result.exit_code == 2


def _engine(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real console entry point in its own process, with stdout and stderr apart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_results_on_stdout_diagnostics_on_stderr(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    proc = _engine("score", "--input", dataset_dir, "--model", model_dir, "--output", out, "--backend", "cpu",
                   "--progress", "log", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # stdout: the summary line alone, so `engine score ... > summary.txt` captures the result.
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scored 6,000 of 6,000 rows")
    # stderr: progress lines, the drift line and where the report is.
    assert re.search(r"^\[score\] 3/3 partitions, 6,000 rows", proc.stderr, re.M)
    assert re.search(r"^drift ok ", proc.stderr, re.M)
    assert f"report: {out}/_report.html" in proc.stderr
    # The plan of a dry run is a result: stdout.
    plan = _engine("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "other",
                   "--backend", "cpu", "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0 and plan.stdout.startswith("plan (dry run") and plan.stderr == ""
    # Train: step lines on stderr, metrics and the summary on stdout.
    train = _engine("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m",
                    "--k", 2, "--backend", "cpu", "--progress", "log", "--sample-rows", 2_000, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "[train]" in train.stderr and "[train]" not in train.stdout
    assert "report: " in train.stderr and train.stdout.splitlines()[-1].startswith("trained on ")


@pytest.mark.parametrize("flag", ["--output", "--out"])
def test_generate_takes_output_with_out_as_an_alias(flag: str, tmp_path: Path) -> None:
    result = invoke("generate", "--rows", 300, "--files", 1, flag, tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "data").glob("*.parquet"))) == 1
    assert "--output" in " ".join(invoke("generate", "--help").stdout.split())


def test_info_names_library_versions() -> None:
    from importlib.metadata import version

    result = invoke("info")
    assert result.exit_code == 0
    line = next(li for li in result.stdout.splitlines() if li.startswith("versions: "))
    for dist in ("dask", "distributed", "pyarrow", "numpy", "scikit-learn"):
        assert f"{dist} {version(dist)}" in line
    try:
        assert f"numba {version('numba')}" in line
    except Exception:  # numba not installed: then it is not listed
        assert "numba" not in line


def test_local_cluster_prints_its_dashboard_address(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    proc = _engine("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "s",
                   "--backend", "cpu", "--workers", 1, "--progress", "log", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"^dask: local cluster of 1 worker\(s\); dashboard (http://\S+:\d+/status)$",
                      proc.stderr, re.M)
    assert found, proc.stderr
    assert "dashboard" not in proc.stdout


def test_shell_completion_offers_the_choices(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update({"PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
                "_ENGINE_COMPLETE": "complete_bash", "COMP_WORDS": "engine score --on-bad-rows r",
                "COMP_CWORD": "3"})
    proc = subprocess.run([sys.executable, "-c", "from engine.cli import main; main()"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.stdout.split() == ["reject"], proc.stderr
