"""``--help`` reads right: plain flags show no type, the exit codes are one compact list."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import EXIT_CODES

COMMANDS = [[], ["generate"], ["train"], ["score"], ["demo"], ["info"], ["model", "show"],
            ["model", "import-sklearn"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "engine")
def test_plain_flags_show_no_bool(command: list[str]) -> None:
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output
    if command == ["score"]:
        line = next(x for x in r.output.splitlines() if "--overwrite" in x)
        assert "<" not in line.split("--overwrite")[1].split("Replace")[0]
        assert "<auto|cpu|gpu>" in r.output   # options that take a value keep their type


@pytest.mark.parametrize("command", [[], ["score"]], ids=["engine", "score"])
def test_exit_codes_are_one_compact_list(command: list[str]) -> None:
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    lines = [x.strip() for x in r.output.splitlines()]
    start = lines.index("Exit codes:")
    listed = lines[start + 1:start + 1 + len(EXIT_CODES)]
    assert [int(re.match(r"(\d+)\s", x).group(1)) for x in listed] == list(EXIT_CODES)
    for x, (code, what) in zip(listed, EXIT_CODES.items()):
        assert x == f"{code}  {what}"
