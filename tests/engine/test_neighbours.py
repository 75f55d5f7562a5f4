"""The engine touches only what it made (issue 16, findings 1-4 and the SIGTERM hint).

Everything a run keeps beside an output ``DIR`` lies in ``.DIR.engine/``, created with a
proof inside; whatever else sits beside ``DIR`` (a planted symlink, a user's backup named
like the old protocol's ``.DIR.staging``/``.DIR.lock``/``.DIR.old``, a user's own
``.DIR.engine``) is never followed, opened, moved or deleted. Files that appear in the
previous output during a run are never deleted. Each case runs the real CLI and checks
the victims byte-identical at their paths and nothing published.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guard_helpers import engine, one_line, snapshot

from engine.errors import OutputError
from engine.io.commit import TEST_PAUSE_BEFORE_SWAP
from engine.io.workspace import PROOF, PROOF_KIND
from engine.jobs.generate import generate
from engine.jobs.train import TrainOptions, train

ROWS, FILES = 2_000, 2
EXIT_OUTPUT = OutputError.exit_code


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("neighbours")
    data = root / "data"
    generate(ROWS, FILES, data, seed=7, row_group_rows=500)
    model = root / "model"
    train(TrainOptions(input=str(data), target="churned", output=str(model), k=3, seed=2, backend="cpu"))
    scores = root / "scores"
    r = score(data, model, scores, cwd=root)
    assert r.exit_code == 0, r.output
    return {"root": root, "data": data, "model": model, "scores": scores}


def score(inp: Path, model: Path, out: Path, *flags: object, cwd: Path) -> object:
    return engine("score", "--input", inp, "--model", model, "--output", out, "--backend", "cpu", "-q",
                  "--partition-rows", 500, *flags, cwd=cwd)


def victim(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("1,2,3")
    return path


# -- 1, 2: symlinks beside the output -------------------------------------------------------------
@pytest.mark.parametrize("name", [".out.staging", ".out.parts", ".out.old", ".out.engine"])
def test_a_planted_symlink_is_never_followed(name: str, env: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(env["scores"], tmp_path / "out")
    target = victim(tmp_path / "private")
    (tmp_path / name).symlink_to(target)
    before, previous = snapshot(target), snapshot(tmp_path / "out")
    r = score(env["data"], env["model"], tmp_path / "out", "--overwrite", "--resume", cwd=tmp_path)
    assert snapshot(target) == before and os.readlink(tmp_path / name) == str(target)
    assert not (tmp_path / "out").is_symlink()
    if name == ".out.engine":
        assert r.exit_code == EXIT_OUTPUT, r.output
        msg = one_line(r.stderr)
        assert f"{tmp_path / '.out.engine'} (beside --output" in msg and "it is a symbolic link" in msg
        assert "move it away" in msg and snapshot(tmp_path / "out") == previous  # nothing published
    else:
        assert r.exit_code == 0, r.output  # an old-protocol name is simply not ours: never used


def test_a_lock_named_file_is_never_opened_or_truncated(env: dict[str, Path], tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate")
    (tmp_path / ".out.lock").symlink_to(precious)
    (tmp_path / ".new.lock").write_text("a user's own file named like a lock")
    assert score(env["data"], env["model"], tmp_path / "out", cwd=tmp_path).exit_code == 0
    assert score(env["data"], env["model"], tmp_path / "new", cwd=tmp_path).exit_code == 0
    assert precious.read_text() == "do not truncate"
    assert (tmp_path / ".new.lock").read_text() == "a user's own file named like a lock"
    # Nothing of the engine is left beside the outputs, so nothing piles up.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".new.lock", ".out.lock", "new", "out", "precious.txt"]


# -- 3: same-named neighbours ------------------------------------------------------------------------
def test_users_directories_named_like_engine_neighbours_are_kept(env: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(env["scores"], tmp_path / "out")
    backups = [victim(tmp_path / n) for n in (".out.staging", ".out.parts", ".out.old", ".new.old")]
    before = {b: snapshot(b) for b in backups}
    assert score(env["data"], env["model"], tmp_path / "out", "--overwrite", cwd=tmp_path).exit_code == 0
    r = score(env["data"], env["model"], tmp_path / "new", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "new" / "_SUCCESS").exists() and not (tmp_path / "new" / "thesis.tex").exists()
    assert {b: snapshot(b) for b in backups} == before


@pytest.mark.parametrize("kind", ["empty", "files", "forged-for-another", "file"])
def test_a_users_engine_named_neighbour_is_refused_not_adopted(kind: str, env: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    mine = tmp_path / ".out.engine"
    if kind == "file":
        mine.write_text("a user's file")
    else:
        mine.mkdir()
        if kind == "files":
            (mine / "notes.txt").write_text("mine")
        if kind == "forged-for-another":
            (mine / PROOF).write_text(json.dumps({"kind": PROOF_KIND, "for": "other"}))
    before = snapshot(mine) if mine.is_dir() else mine.read_bytes()
    r = score(env["data"], env["model"], tmp_path / "out", cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert f"{mine} (beside --output" in one_line(r.stderr) and "was not made by the engine" in one_line(r.stderr)
    assert (snapshot(mine) if mine.is_dir() else mine.read_bytes()) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "generate", "import"])
def test_every_writer_uses_the_same_protocol(command: str, env: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / ".out.engine").symlink_to(victim(tmp_path / "private"))
    before = snapshot(tmp_path / "private")
    if command == "train":
        r = engine("train", "--input", env["data"], "--target", "churned", "--output", out, "--backend", "cpu",
                   "--k", 2, cwd=tmp_path)
    elif command == "generate":
        r = engine("generate", "--rows", 100, "--files", 1, "--output", out, cwd=tmp_path)
    else:
        # Refused before any joblib file is loaded: their contents do not matter here.
        (tmp_path / "km.joblib").write_bytes(b"x")
        (tmp_path / "lr.joblib").write_bytes(b"x")
        r = engine("model", "import-sklearn", "--segmenter", tmp_path / "km.joblib", "--propensity",
                   tmp_path / "lr.joblib", "--output", out, cwd=tmp_path)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert "it is a symbolic link" in one_line(r.stderr)
    assert snapshot(tmp_path / "private") == before and not out.exists()


# -- 4: a file that appears in the previous output during the run ---------------------------------
def _start(env: dict[str, Path], out: Path, *flags: str, pause: float) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    environ[TEST_PAUSE_BEFORE_SWAP] = str(pause)
    cmd = [sys.executable, "-m", "engine", "score", "--input", str(env["data"]), "--model", str(env["model"]),
           "--output", str(out), "--backend", "cpu", "--partition-rows", "500", "-q", *flags]
    return subprocess.Popen(cmd, cwd=out.parent, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_publishing(proc: subprocess.Popen[str], out: Path) -> None:
    success = out.parent / f".{out.name}.engine" / "staging" / "_SUCCESS"
    deadline = time.monotonic() + 240
    while not success.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_file_written_into_the_old_output_during_the_run_is_never_deleted(env: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    out = shutil.copytree(env["scores"], tmp_path / "out")
    previous = snapshot(out)
    proc = _start(env, out, "--overwrite", pause=2)
    _wait_publishing(proc, out)
    (out / "notes.txt").write_text("written while the engine ran")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_OUTPUT, err
    msg = one_line(err)
    assert "notes.txt" in msg and "found when publishing" in msg and "--resume" in msg
    assert (out / "notes.txt").read_text() == "written while the engine ran"
    assert {k: v for k, v in snapshot(out).items() if k != "notes.txt"} == previous  # nothing published
    staging = tmp_path / ".out.engine" / "staging"
    assert (staging / "_SUCCESS").exists()  # kept for --resume
    # The user moves the file away; --resume publishes, reusing every part.
    (out / "notes.txt").rename(tmp_path / "notes.txt")
    r = score(env["data"], env["model"], out, "--overwrite", "--resume", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["parts_reused"] == manifest["totals"]["parts"]
    assert not (tmp_path / ".out.engine").exists()


def test_sigterm_while_publishing_gives_the_resume_hint(env: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _start(env, out, pause=60)
    _wait_publishing(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    msg = one_line(err)
    assert "terminated" in msg and "finished part(s) are kept in" in msg and "--resume" in msg
    assert not out.exists()
    r = score(env["data"], env["model"], out, "--resume", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "_manifest.json").read_text())["totals"]["parts_reused"] == 4


# -- permissions: another user plants the engine's own name in a shared directory ------------------
@pytest.fixture()
def team_dir() -> Iterator[Path]:
    """A world-writable sticky directory, like a setgid team share or /tmp."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another user (nobody)")
    path = Path(tempfile.mkdtemp(prefix="engine-team-", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(*commands: list[str]) -> None:
    """Run each command as the unprivileged user nobody (the system's tools, not this venv's python)."""
    for command in commands:
        subprocess.run(["runuser", "-u", "nobody", "--", *command], check=True, timeout=60)


def test_another_users_forged_workspace_is_refused(team_dir: Path, env: dict[str, Path]) -> None:
    root_only = victim(team_dir / "root-only")
    os.chmod(root_only, 0o700)
    before = snapshot(root_only)
    # nobody forges a workspace with a valid-looking proof and a staging link to root's directory.
    ws = team_dir / ".out.engine"
    proof = json.dumps({"kind": PROOF_KIND, "for": "out"})
    as_nobody(["mkdir", str(ws)], ["sh", "-c", f"printf '%s' '{proof}' > {ws / PROOF}"],
              ["ln", "-s", str(root_only), str(ws / "staging")], ["mkdir", str(ws / "parts")])
    assert ws.stat().st_uid != 0 and (ws / PROOF).read_text() == proof
    r = score(env["data"], env["model"], team_dir / "out", "--overwrite", "--resume", cwd=team_dir)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert "belongs to another user" in one_line(r.stderr)
    assert snapshot(root_only) == before and not (team_dir / "out").exists()


def test_another_users_symlink_at_the_workspace_name_is_refused(team_dir: Path, env: dict[str, Path]) -> None:
    root_only = victim(team_dir / "root-only")
    os.chmod(root_only, 0o700)
    before = snapshot(root_only)
    as_nobody(["ln", "-s", str(root_only), str(team_dir / ".out.engine")])
    r = score(env["data"], env["model"], team_dir / "out", "--overwrite", "--resume", cwd=team_dir)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert "it is a symbolic link" in one_line(r.stderr)
    assert snapshot(root_only) == before and not (team_dir / "out").exists()
