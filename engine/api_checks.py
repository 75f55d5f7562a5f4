"""The Python API's own arguments: checked at its entry points, and named as the API names them.

Errors raised inside the library name the CLI's flags (``--positive``); a caller of
:func:`engine.train` passed ``positive=``, so :func:`api_errors` renames every flag that is
one of the function's arguments in the message (same class, same exit code). The CLI calls
the same functions inside :func:`from_cli`, where messages keep its flags.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from engine.errors import EngineError, UsageError, for_api

F = TypeVar("F", bound=Callable[..., Any])

_FROM_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("engine_from_cli", default=False)


@contextlib.contextmanager
def from_cli() -> Iterator[None]:
    """While the CLI runs a command: errors keep naming its flags."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)


def api_errors(fn: F) -> F:
    """Rename ``--flag`` to ``flag=`` in the :class:`EngineError` messages ``fn`` raises (API callers only)."""
    arguments = frozenset(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _FROM_CLI.get():
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except EngineError as exc:
            renamed = for_api(exc, arguments)
            if renamed is exc:
                raise
            raise renamed from None

    return wrapper  # type: ignore[return-value]


def path_arg(value: Any, name: str) -> str:
    """A path argument (``str`` or ``os.PathLike``) as text; anything else (``None`` too) is a usage error.

    An empty string passes: the path checks downstream refuse it with their own code and
    message (``--output is empty (an unset variable?)``, exit 6), as the CLI always has."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise UsageError(f"{name}= must be a path or URI (a string or os.PathLike), "
                         f"not {value!r} ({type(value).__name__})")
    return value


def int_arg(value: Any, name: str) -> int:
    """A whole number (not a bool, a float or a numeric string)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name}= must be a whole number, not {value!r} ({type(value).__name__})")
    return int(value)


def names_arg(values: Any, name: str) -> list[str]:
    """A comma list (as on the command line) or a sequence of column names."""
    if values is None:
        return []
    if isinstance(values, str):
        return [v.strip() for v in values.split(",") if v.strip()]
    if not isinstance(values, Sequence) and not isinstance(values, (set, frozenset, tuple)) or isinstance(values, bytes):
        raise UsageError(f"{name}= must be a column name, a comma list or a sequence of names, "
                         f"not {values!r} ({type(values).__name__})")
    bad = [v for v in values if not isinstance(v, str) or not v]
    if bad:
        raise UsageError(f"{name}= must hold column names (non-empty strings), not {bad[0]!r}")
    return list(values)


def positive_arg(value: Any) -> str | None:
    """``positive=``: text as the CLI would read it (``1`` is ``"1"``, ``True`` is ``"true"``)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    import numbers

    if isinstance(value, numbers.Number):
        return str(value)
    raise UsageError(f"positive= must name a value of the target column (a string or number), "
                     f"not {value!r} ({type(value).__name__})")
