"""Helpers shared by the issue-10 tests: run the CLI (in-process or as a real process) from a
chosen working directory, and snapshot a tree to prove it byte-identical afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from engine.cli import app


def engine(*args: object, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """``engine ...`` in-process from ``cwd`` (so no conf/engine.toml is picked up)."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    finally:
        os.chdir(old)


def engine_process(*args: object, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300,
                   preexec: Callable[[], Any] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m engine ...`` as its own process (signals, rlimits, umask, hangs)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under ``root`` (itself included): file bytes, link targets, directories."""
    found: dict[str, Any] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir",)
        else:
            found[rel] = ("file", path.read_bytes())
    return found


def one_line(text: str) -> str:
    """Terminal-wrapped messages as one line, for ``in`` checks."""
    return " ".join(text.split())
