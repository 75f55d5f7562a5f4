"""Issue 10, part 1 and 5: the engine replaces only what is its own, and what it writes the
team can read.

Every case runs the real CLI on real Parquet data and real models and checks the documented
exit code, a message naming the path, the protected files byte-identical afterwards, and
nothing partial left beside them. Root-only cases (an immutable directory, a read-only or
full tmpfs) skip with their reason where the machine does not allow them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from guard_helpers import engine, engine_process, one_line, snapshot

from engine.errors import OutputError
from engine.io.workspace import Workspace
from engine.jobs.generate import generate
from engine.jobs.train import TrainOptions, train
from engine.models.artifact import load_model

ROWS, FILES = 3_000, 3
EXIT_OUTPUT = OutputError.exit_code


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only: 3,000 customers in 3 files, a k=3 model, and a published score output."""
    root = tmp_path_factory.mktemp("guard")
    data = root / "data"
    generate(ROWS, FILES, data, seed=31, row_group_rows=500)
    model = root / "model"
    train(TrainOptions(input=str(data), target="churned", output=str(model), k=3, seed=2, backend="cpu"))
    scores = root / "scores"
    r = engine("score", "--input", data, "--model", model, "--output", scores, "--backend", "cpu", "-q",
               "--partition-rows", 500, cwd=root)
    assert r.exit_code == 0, r.output
    return {"root": root, "data": data, "model": model, "scores": scores}


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def score(inp: Path | str, model: Path | str, out: Path | str, *flags: object, cwd: Path) -> Any:
    return engine("score", "--input", inp, "--model", model, "--output", out, "--backend", "cpu", "-q",
                  "--partition-rows", 500, *flags, cwd=cwd)


def staged_siblings(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith((".staging", ".parts", ".old", ".engine", ".tmp"))
                  or ".tmp-" in p.name)


# -- score: never the input, the model, the working directory ---------------------------------
def test_output_equal_to_the_input_is_refused(env: dict[str, Path], tmp_path: Path) -> None:
    data = copy(env["data"], tmp_path / "data")
    before = snapshot(data)
    r = score(data, env["model"], data, "--overwrite", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"--output {data} is the input" in one_line(r.stderr)
    assert snapshot(data) == before
    assert staged_siblings(tmp_path) == [] and not (tmp_path / ".data.engine").exists()


def test_output_containing_the_input_is_refused(env: dict[str, Path], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    copy(env["data"], lake / "customers")
    (lake / "other").mkdir()
    (lake / "other" / "important.txt").write_text("not the engine's")
    before = snapshot(lake)
    r = score(lake / "customers", env["model"], lake, "--overwrite", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"--output {lake} contains the input" in one_line(r.stderr)
    assert snapshot(lake) == before and staged_siblings(tmp_path) == []


def test_output_inside_the_input_is_refused_so_resume_never_rescores_scores(env: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    data = copy(env["data"], tmp_path / "data")
    features = ",".join(load_model(env["model"]).features)
    before = snapshot(data)
    r = score(data, env["model"], data / "scores", "--keep", features, "--overwrite", "--resume", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"--output {data / 'scores'} lies inside the input" in one_line(r.stderr)
    assert snapshot(data) == before  # no scores, no staging, no lock inside the input


def test_output_equal_to_or_around_the_model_is_refused(env: dict[str, Path], tmp_path: Path) -> None:
    model = copy(env["model"], tmp_path / "model")
    before = snapshot(model)
    for out, relation in ((model, "is"), (model / "scores", "lies inside"), (tmp_path, "contains")):
        r = score(env["data"], model, out, "--overwrite", cwd=env["root"])
        assert r.exit_code == EXIT_OUTPUT, r.output
        assert f"--output {out} {relation} the model" in one_line(r.stderr)
        assert snapshot(model) == before
    assert load_model(model).content_hash == load_model(env["model"]).content_hash


@pytest.mark.parametrize("output", ["", ".", "..", "/"])
def test_empty_dot_and_root_outputs_are_refused(output: str, env: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the nightly job's own files")
    before = snapshot(tmp_path)
    r = score(env["data"], env["model"], output, "--overwrite", cwd=work)
    assert r.exit_code == EXIT_OUTPUT, r.output
    msg = one_line(r.stderr)
    if output == "":
        assert "--output is empty (an unset variable?)" in msg
    elif output == "/":
        assert "--output / is the filesystem root" in msg
        assert not Path("/..engine").exists()
    else:
        assert f"--output {output} " in msg and "the working directory" in msg
    assert snapshot(tmp_path) == before


def test_a_foreign_directory_is_never_replaced_even_with_overwrite(env: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "reports"
    out.mkdir()
    (out / "q3.xlsx").write_bytes(b"quarterly figures")
    before = snapshot(out)
    r = score(env["data"], env["model"], out, "--overwrite", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"--output {out} exists, is not empty and is not an engine output" in one_line(r.stderr)
    assert "even with --overwrite" in one_line(r.stderr)
    assert snapshot(out) == before and staged_siblings(tmp_path) == []
    # A file is never replaced, and an empty directory always may be.
    target = tmp_path / "file.parquet"
    target.write_bytes(b"x")
    r = score(env["data"], env["model"], target, "--overwrite", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT and "is not a directory" in r.stderr and target.read_bytes() == b"x"
    (tmp_path / "empty").mkdir()
    assert score(env["data"], env["model"], tmp_path / "empty", cwd=tmp_path).exit_code == 0


# -- score through a symlink -------------------------------------------------------------------
def test_an_output_through_a_symlink_is_staged_locked_and_swapped_on_the_real_directory(
        env: dict[str, Path], tmp_path: Path) -> None:
    real = copy(env["scores"], tmp_path / "store" / "scores")
    link = tmp_path / "tonight"
    link.symlink_to(real)
    r = score(env["data"], env["model"], link, "--overwrite", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is left as it was
    assert (real / "_SUCCESS").exists()
    manifest = json.loads((real / "_manifest.json").read_text())
    assert manifest["output"]["path"] == str(real)
    assert ds.dataset(link, format="parquet").count_rows() == ROWS
    assert not list(tmp_path.glob(".tonight.*"))  # no lock or staging named after the link
    assert sorted(p.name for p in real.parent.iterdir()) == ["scores"]  # nothing of the engine is left

    # The lock is the real directory's: a run on the link waits for none, it fails at once.
    held = Workspace(real)
    held.acquire()
    try:
        before = snapshot(real)
        r = score(env["data"], env["model"], link, "--overwrite", cwd=tmp_path)
        assert r.exit_code == EXIT_OUTPUT, r.output
        assert f"is writing {real}" in one_line(r.stderr)
        assert snapshot(real) == before and link.is_symlink()
    finally:
        held.release()


# -- train, import-sklearn, generate, demo ------------------------------------------------------
def test_train_refuses_an_existing_model_without_overwrite(env: dict[str, Path], tmp_path: Path) -> None:
    model = copy(env["model"], tmp_path / "model")
    before = snapshot(model)
    args = ("train", "--input", env["data"], "--target", "churned", "--output", model, "--k", 2,
            "--backend", "cpu", "-q")
    r = engine(*args, cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"--output {model} already holds an engine model (it has model.json); pass --overwrite" \
        in one_line(r.stderr)
    assert snapshot(model) == before
    r = engine(*args, "--overwrite", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert load_model(model).k == 2 and (model / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directory left


@pytest.mark.parametrize("case", ["scores", "foreign", "input", "inside-input"])
def test_train_never_replaces_what_is_not_a_model(case: str, env: dict[str, Path], tmp_path: Path) -> None:
    data = copy(env["data"], tmp_path / "data")
    out = {"scores": tmp_path / "scores", "foreign": tmp_path / "mine", "input": data,
           "inside-input": data / "model"}[case]
    if case == "scores":
        copy(env["scores"], out)
    elif case == "foreign":
        out.mkdir()
        (out / "thesis.tex").write_text("draft")
    before = snapshot(tmp_path)
    r = engine("train", "--input", data, "--target", "churned", "--output", out, "--overwrite",
               "--backend", "cpu", "-q", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    expect = {"scores": "is not an engine model", "foreign": "is not an engine model",
              "input": "is the input", "inside-input": "lies inside the input"}[case]
    assert f"--output {out} " in one_line(r.stderr) and expect in one_line(r.stderr)
    assert snapshot(tmp_path) == before


def _pipelines(data: Path, where: Path) -> tuple[Path, Path]:
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    frame = ds.dataset(data, format="parquet").to_table().to_pandas()
    X = frame[["recency_days", "frequency_12m", "monetary_12m"]].astype(np.float64)
    seg = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()),
                    ("kmeans", KMeans(n_clusters=3, n_init=2, random_state=0))]).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        prop = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()),
                         ("logistic", LogisticRegression())]).fit(X, frame["churned"])
    joblib.dump(seg, where / "seg.joblib")
    joblib.dump(prop, where / "prop.joblib")
    return where / "seg.joblib", where / "prop.joblib"


def test_import_sklearn_replaces_only_an_engine_model(env: dict[str, Path], tmp_path: Path) -> None:
    seg, prop = _pipelines(env["data"], tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    model = copy(env["model"], tmp_path / "model")
    before = snapshot(tmp_path)
    for out, flags, expect in (
            (foreign, ["--overwrite"], "is not an engine model"),
            (model, [], "already holds an engine model"),
            (tmp_path, ["--overwrite"], "contains the --segmenter file"),
            ("", [], "--output is empty")):
        r = engine("model", "import-sklearn", "--segmenter", seg, "--propensity", prop, "--output", out,
                   *flags, cwd=env["root"])
        assert r.exit_code == EXIT_OUTPUT, (out, r.output)
        assert expect in one_line(r.stderr), (out, r.stderr)
        assert snapshot(tmp_path) == before
    r = engine("model", "import-sklearn", "--segmenter", seg, "--propensity", prop, "--output", model,
               "--overwrite", cwd=env["root"])
    assert r.exit_code == 0, r.output
    assert load_model(model).params["source"] == "engine model import-sklearn"


def test_generate_replaces_only_its_own_data(tmp_path: Path) -> None:
    out = tmp_path / "lake"
    out.mkdir()
    (out / "customers.csv").write_text("id\n1\n")
    before = snapshot(out)
    r = engine("generate", "--rows", 100, "--files", 1, "--out", out, "--overwrite", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"--output {out} exists, is not empty and is not data written by `engine generate`" in one_line(r.stderr)
    assert snapshot(out) == before
    for bad in ("", ".", "/"):
        r = engine("generate", "--rows", 100, "--files", 1, "--out", bad, "--overwrite", cwd=out)
        assert r.exit_code == EXIT_OUTPUT, (bad, r.output)
        assert snapshot(out) == before
    ours = tmp_path / "generated"
    assert engine("generate", "--rows", 100, "--files", 1, "--out", ours, cwd=tmp_path).exit_code == 0
    assert json.loads((ours / "_generated.json").read_text())["rows"] == 100
    r = engine("generate", "--rows", 200, "--files", 2, "--out", ours, "--overwrite", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert ds.dataset(ours, format="parquet").count_rows() == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generated", "lake"]


def test_demo_only_replaces_a_workdir_it_owns(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "data").mkdir()
    (home / "data" / "family-photos.txt").write_text("precious")
    before = snapshot(home)
    for workdir in (home, "", "."):
        r = engine("demo", "--rows", 2_000, "--files", 2, "--workdir", workdir, "--backend", "cpu", "-q",
                   cwd=home)
        assert r.exit_code == EXIT_OUTPUT, (workdir, r.output)
        assert snapshot(home) == before
    assert "is not a demo working directory" in one_line(
        engine("demo", "--rows", 2_000, "--workdir", home, cwd=tmp_path).stderr)
    work = tmp_path / "demo"
    for _ in range(2):  # a new directory, then the demo's own: replaced
        r = engine("demo", "--rows", 2_000, "--files", 2, "--workdir", work, "--backend", "cpu", "-q",
                   cwd=tmp_path)
        assert r.exit_code == 0, r.output
    assert (work / "_engine_demo.json").is_file() and (work / "scores" / "_SUCCESS").is_file()
    assert ds.dataset(work / "scores", format="parquet").count_rows() == 2_000


# -- output-side system errors: exit 6, the path, what to do -------------------------------------
@contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_only_output_parent_fails_before_any_work(env: dict[str, Path], tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = score(env["data"], env["model"], ro / "scores", cwd=tmp_path)
        assert r.exit_code == EXIT_OUTPUT, r.output
        assert f"cannot write --output {ro / 'scores'}: {ro} is on a read-only filesystem" in one_line(r.stderr)
        assert os.listdir(ro) == []


def test_a_full_disk_fails_with_exit_6_and_keeps_the_previous_output(env: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=160k") as small:
        first = sorted(env["data"].glob("*.parquet"))[0]
        out = small / "scores"
        r = score(first, env["model"], out, cwd=tmp_path)  # a small previous output fits
        assert r.exit_code == 0, r.output
        before = snapshot(out)
        r = score(env["data"], env["model"], out, "--overwrite", "--keep", "region,monetary_12m,recency_days",
                  cwd=tmp_path)
        assert r.exit_code == EXIT_OUTPUT, r.output
        msg = one_line(r.stderr)
        assert "No space left on device" in msg and "the disk is full" in msg and str(small) in msg
        assert snapshot(out) == before


@pytest.mark.parametrize("runner", [[], ["--workers", "1"]], ids=["threads", "worker-process"])
def test_a_file_size_limit_inside_a_task_is_exit_6(runner: list[str], env: dict[str, Path], tmp_path: Path) -> None:
    """``ulimit -f`` (RLIMIT_FSIZE) makes part writes fail with EFBIG inside the Dask task: on
    the threaded scheduler, and in a worker process whose error crosses back pickled."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "scores"
    done = engine_process("score", "--input", env["data"], "--model", env["model"], "--output", out,
                          "--backend", "cpu", "-q", *runner, cwd=tmp_path, preexec=limit)
    assert done.returncode == EXIT_OUTPUT, done.stderr
    msg = one_line(done.stderr.splitlines()[-1])
    assert msg.startswith("error (output conflict): cannot write") and "File too large" in msg
    assert "ulimit -f" in msg and str(tmp_path / ".scores.engine/staging") in msg
    assert not out.exists()
    if not runner:  # (a worker process logs its failed task itself; the client prints no traceback)
        assert "Traceback" not in done.stderr


def test_an_immutable_output_is_refused_before_any_work(env: dict[str, Path], tmp_path: Path) -> None:
    out = copy(env["scores"], tmp_path / "scores")
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and a filesystem with attributes)")
    try:
        before = snapshot(out)
        r = score(env["data"], env["model"], out, "--overwrite", cwd=tmp_path)
        assert r.exit_code == EXIT_OUTPUT, r.output
        assert f"cannot write --output {out}: {out} is not writable by this user, or is immutable" \
            in one_line(r.stderr)
        assert "lsattr" in r.stderr
        assert snapshot(out) == before and staged_siblings(tmp_path) == []
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=False)


def test_proc_and_other_unwritable_places_fail_cleanly(env: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in ("/proc/out", blocker / "scores"):
        r = score(env["data"], env["model"], out, cwd=tmp_path)
        assert r.exit_code == EXIT_OUTPUT, (out, r.output)
        assert str(out) in one_line(r.stderr) or str(Path(out).parent) in one_line(r.stderr)
    assert not Path("/proc/.out.engine").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# -- files readable by the team -------------------------------------------------------------------
def test_outputs_follow_the_umask(env: dict[str, Path], tmp_path: Path) -> None:
    def group_umask() -> None:
        os.umask(0o002)

    runs = (("generate", "--rows", 500, "--files", 1, "--out", tmp_path / "data"),
            ("train", "--input", tmp_path / "data", "--target", "churned", "--output", tmp_path / "model",
             "--k", 2, "--backend", "cpu", "-q"),
            ("score", "--input", tmp_path / "data", "--model", tmp_path / "model", "--output",
             tmp_path / "scores", "--backend", "cpu", "-q"))
    for args in runs:
        done = engine_process(*args, cwd=tmp_path, preexec=group_umask)
        assert done.returncode == 0, done.stderr
    for name in ("data", "model", "scores"):
        for path in [tmp_path / name, *(tmp_path / name).rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o775 if path.is_dir() else 0o664), (str(path), oct(mode))


def test_library_refusals_are_output_errors(env: dict[str, Path], tmp_path: Path) -> None:
    """The library refuses as the CLI does (one guard), before touching anything."""
    from engine.config import Settings
    from engine.jobs.score import ScoreOptions
    from engine.jobs.score import score as run_score

    data = copy(env["data"], tmp_path / "data")
    (data / "_generated.json").unlink()  # now data that `engine generate` does not own
    before = snapshot(data)
    with pytest.raises(OutputError, match="is the input"):
        run_score(ScoreOptions(input=str(data), model=str(env["model"]), output=str(data), backend="cpu",
                               overwrite=True, progress="quiet"), Settings())
    with pytest.raises(OutputError, match="is the input"):
        train(TrainOptions(input=str(data), target="churned", output=str(data), backend="cpu", overwrite=True))
    with pytest.raises(OutputError, match="is not data written by `engine generate`"):
        generate(10, 1, data, overwrite=True)
    assert snapshot(data) == before
    assert pq.read_metadata(sorted(data.glob("*.parquet"))[0]).num_rows == 1_000


def test_the_examples_never_empty_a_directory_they_did_not_make(tmp_path: Path) -> None:
    from examples._common import EXAMPLE_MARKER, fresh_dir

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("draft")
    before = snapshot(foreign)
    with pytest.raises(OutputError, match="is not an example's working directory"):
        fresh_dir(foreign)
    assert snapshot(foreign) == before
    ours = fresh_dir(tmp_path / "example")
    (ours / "model").mkdir()
    assert sorted(p.name for p in fresh_dir(ours).iterdir()) == [EXAMPLE_MARKER]  # its own: emptied again


# -- a marker's name is not proof, and a user's file beside our output is not ours --------------
def test_a_spark_output_with_only_a_success_marker_is_not_replaced(env: dict[str, Path], tmp_path: Path) -> None:
    # Spark and Hadoop write `_SUCCESS` too; --overwrite must not take their output for ours.
    spark = tmp_path / "spark_scores"
    spark.mkdir()
    (spark / "_SUCCESS").write_text("")
    (spark / "part-00000-3f2a.snappy.parquet").write_bytes(b"PAR1 someone else's data")
    before = snapshot(spark)
    r = score(env["data"], env["model"], spark, "--overwrite", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"--output {spark} has _SUCCESS but is not an engine output" in one_line(r.stderr)
    assert snapshot(spark) == before
    assert staged_siblings(tmp_path) == []


@pytest.mark.parametrize("kind", ["score", "train", "generate"])
def test_our_output_with_a_users_file_beside_it_is_not_replaced(
    env: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    src = {"score": env["scores"], "train": env["model"], "generate": env["data"]}[kind]
    out = copy(src, tmp_path / "out")
    (out / "notes.txt").write_text("the analyst's notes, not the engine's")
    before = snapshot(out)
    if kind == "score":
        r = score(env["data"], env["model"], out, "--overwrite", cwd=tmp_path)
    elif kind == "train":
        r = engine("train", "--input", env["data"], "--target", "churned", "--output", out, "--k", 2,
                   "--backend", "cpu", "-q", "--overwrite", cwd=tmp_path)
    else:
        r = engine("generate", "--rows", 100, "--files", 1, "--output", out, "--overwrite", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"--output {out} is " in one_line(r.stderr)
    assert "also holds files the engine did not write (notes.txt)" in one_line(r.stderr)
    assert snapshot(out) == before
    assert staged_siblings(tmp_path) == []


def test_a_foreign_model_json_is_not_taken_for_a_model(env: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other_tool_model"
    other.mkdir()
    (other / "model.json").write_text('{"architecture": "someone else\'s"}')
    (other / "weights.bin").write_bytes(b"\x00" * 64)
    before = snapshot(other)
    r = engine("train", "--input", env["data"], "--target", "churned", "--output", other, "--k", 2,
               "--backend", "cpu", "-q", "--overwrite", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert "has model.json but is not an engine model" in one_line(r.stderr)
    assert snapshot(other) == before
