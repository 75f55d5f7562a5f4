"""Every kind of user-facing failure, with its exit code, in one place.

The CLI maps each exception class to its ``exit_code``; README.md and
``engine score --help`` print the same table from :data:`EXIT_CODES`.
Messages name files, columns and row numbers, never customer values.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class for errors the user can act on."""

    exit_code: int = 1
    kind: str = "error"


class UsageError(EngineError):
    """Bad flags, settings or configuration."""

    exit_code = 2
    kind = "usage or configuration"


class InputError(EngineError):
    """The input dataset is missing, unreadable, or its schema does not fit the model."""

    exit_code = 3
    kind = "input data"


class BadRowsError(EngineError):
    """Too many rows were rejected, or duplicate ids with ``--unique-ids``."""

    exit_code = 4
    kind = "bad rows beyond tolerance"


class ModelError(EngineError):
    """The model artifact is missing, corrupt, tampered with, or of an unknown format."""

    exit_code = 5
    kind = "model"


class OutputError(EngineError):
    """The output exists already, is locked by another run, or cannot be written."""

    exit_code = 6
    kind = "output conflict"


class BackendError(EngineError):
    """The requested backend cannot run here (for example ``--backend gpu`` without a GPU)."""

    exit_code = 7
    kind = "backend unavailable"


class ClusterError(EngineError):
    """The Dask cluster cannot be reached, lost too many workers, or a worker cannot see a path."""

    exit_code = 8
    kind = "cluster"


class DriftAlert(EngineError):
    """``--fail-on-drift``: the run published its scores but drift exceeded the alert level."""

    exit_code = 9
    kind = "drift alert (scores were published)"


#: What a failure to reach, list or read a place becomes, by the place's role in the run (not by
#: the call that failed): an unreadable or unlisted input is exit 3, an unreadable model exit 5,
#: and only writing the output (or its lock and staging) is an output conflict, exit 6. Every
#: store and file-system failure is mapped through this one table (:func:`error_for`).
SOURCE_ERRORS: dict[str, type[EngineError]] = {
    "input": InputError,
    "model": ModelError,
    "output": OutputError,
}


def error_for(role: str) -> type[EngineError]:
    """The error class for a failure on the ``role`` place (``input``, ``model`` or ``output``)."""
    return SOURCE_ERRORS[role]


#: How the CLI and the Python API name the same argument: errors raised inside the library name
#: the CLI's flags (``--positive``); the API's entry points rename them to its own (``positive=``).
_API_NAMES = {"no-report": "report=False"}


def for_api(exc: EngineError, arguments: set[str] | frozenset[str]) -> EngineError:
    """``exc`` with every ``--flag`` that is one of ``arguments`` renamed to the API's ``flag=``.

    The same class (so the same exit code); the message only is rewritten. A flag the API
    function has no argument for stays as it is.
    """
    import re

    def rename(match: re.Match[str]) -> str:
        flag = match.group(1)
        if flag in _API_NAMES:
            return _API_NAMES[flag]
        name = flag.replace("-", "_")
        return f"{name}=" if name in arguments else match.group(0)

    text = str(exc)
    renamed = re.sub(r"(?<![\w-])--([A-Za-z][A-Za-z0-9-]*)", rename, text)
    if renamed == text:
        return exc
    new = type(exc).__new__(type(exc))
    new.__dict__.update(exc.__dict__)
    new.args = (renamed,)
    return new


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report it with the log)",
    **{cls.exit_code: cls.kind for cls in (
        UsageError, InputError, BadRowsError, ModelError, OutputError,
        BackendError, ClusterError, DriftAlert,
    )},
    130: "interrupted (Ctrl-C / SIGINT); nothing was published",
    143: "terminated (SIGTERM); nothing was published",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler.

    A :class:`KeyboardInterrupt` so that every path that cleans up after Ctrl-C (Dask's
    schedulers, the output committer) does the same for a scheduler's ``kill``.
    """

    exit_code = 143


def exit_code_table() -> str:
    """The exit codes as plain text lines, for ``--help`` and README."""
    return "\n".join(f"{code:>3}  {what}" for code, what in EXIT_CODES.items())


def exit_code_markdown() -> str:
    """The exit codes as the Markdown table that README.md carries (a test keeps them equal)."""
    classes: dict[int, type[EngineError]] = {}
    for cls in _error_classes():  # breadth first: a code's base class, not a subclass, names it
        classes.setdefault(cls.exit_code, cls)
    rows = ["| exit code | meaning | exception | when |", "|---:|---|---|---|"]
    for code, what in EXIT_CODES.items():
        cls = classes.get(code)
        name = f"`{cls.__name__}`" if cls else ""
        when = (cls.__doc__ or "").strip().splitlines()[0] if cls else ""
        rows.append(f"| {code} | {what} | {name} | {when.replace('|', '/')} |")
    return "\n".join(rows)


def _error_classes() -> list[type[EngineError]]:
    found, todo = [], list(EngineError.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found
