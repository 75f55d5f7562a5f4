"""Diagnostics as events: a line of text for a person, or one JSON object per line for a machine.

``--log-format text`` (the default) writes each event's message as it always was;
``--log-format json`` (or ``ENGINE_LOG_FORMAT=json``) writes every stderr line as one JSON
object: ``ts`` (ISO 8601, UTC), ``level``, ``event``, the event's fields and its
``message``, as schedulers and log platforms (Airflow, Kubernetes, Loki, Datadog) read
them. Events carry counts, seconds, file and column names: never a customer's value.

In a real process (``engine`` on a command line) json mode also catches what other code
writes to file descriptor 2 (Python warnings, Dask's logging, worker processes, C
libraries): :class:`StderrCapture` points descriptor 2 at a pipe and a thread wraps each
line that is not already an event into ``{"event": "log", ...}``, in order, so every
stderr line parses whatever wrote it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import threading
from typing import Any

FORMATS = ("text", "json")
ENV = "ENGINE_LOG_FORMAT"
_lock = threading.Lock()
_state: dict[str, Any] = {"format": "text", "errors": 0}


def resolve_format(flag: str | None) -> str:
    """``--log-format``, else ``$ENGINE_LOG_FORMAT``, else ``text``; anything else is a usage error."""
    fmt = flag or os.environ.get(ENV) or "text"
    if fmt not in FORMATS:
        from engine.errors import UsageError

        where = "--log-format" if flag else f"${ENV}"
        raise UsageError(f"{where} must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def set_format(fmt: str) -> None:
    """Choose the format of every later event of this process (``text`` or ``json``)."""
    _state["format"] = resolve_format(fmt)
    if _state["format"] == "json":
        import warnings

        warnings.showwarning = _show_warning


def get_format() -> str:
    return str(_state["format"])


def is_json() -> bool:
    return _state["format"] == "json"


def now_iso() -> str:
    """The current time in ISO 8601, UTC, to the millisecond (``2026-12-03T18:30:01.123Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(event_name: str, message: str = "", *, level: str = "info", **fields: Any) -> dict[str, Any]:
    """The JSON object of an event (what :func:`event` writes in json mode)."""
    return {"ts": now_iso(), "level": level, "event": event_name, **fields,
            **({"message": message} if message else {})}


def event(event_name: str, message: str = "", *, level: str = "info", **fields: Any) -> None:
    """Write one event to stderr: its message in text mode (nothing if empty), one JSON line in json mode.

    Credentials in any URI form are redacted from the message and every string field
    (:func:`engine.safe_text.redact`), whatever wrote them.
    """
    from engine.safe_text import redact

    message = redact(message)
    fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
    if is_json():
        line = json.dumps(record(event_name, message, level=level, **fields), default=str)
    elif message:
        line = message
    else:
        return
    if event_name == "error":
        _state["errors"] += 1
    with _lock:
        print(line, file=sys.stderr, flush=True)


def errors_reported() -> int:
    """How many ``error`` events this process wrote (the CLI writes one for a failed run)."""
    return int(_state["errors"])


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    event("warning", str(message), level="warning", category=category.__name__)


def wrap_line(line: str) -> str:
    """A stderr line as an event: unchanged when it is one already, else ``{"event": "log"}``."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "event" in obj and "ts" in obj:
            return stripped
    low = stripped.lower()
    level = ("error" if ("error" in low or "traceback" in low) else
             "warning" if "warn" in low else "info")
    return json.dumps(record("log", stripped, level=level))


class StderrCapture:
    """While installed, whatever is written to file descriptor 2 comes out as JSON lines.

    Descriptor 2 becomes a pipe; a thread reads it and writes each line, wrapped by
    :func:`wrap_line`, to the original stderr. One FIFO keeps every writer's lines in
    order. :meth:`close` puts descriptor 2 back and waits for the thread to drain the pipe
    (a worker process that outlives the run and still holds the pipe is not waited for
    longer than ``timeout`` seconds), so a final event written after it is the last line.
    """

    def __init__(self) -> None:
        self._saved = -1
        self._thread: threading.Thread | None = None
        self._read = -1

    def install(self) -> StderrCapture:
        sys.stderr.flush()
        self._saved = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._read = r
        self._thread = threading.Thread(target=self._pump, name="stderr-json", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        pending = b""
        with os.fdopen(self._read, "rb", buffering=0) as src:
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                self._write(lines)
        if pending:
            self._write([pending])

    def _write(self, lines: list[bytes]) -> None:
        out = b"".join(wrap_line(raw.decode("utf-8", "replace")).encode() + b"\n"
                       for raw in lines if raw.strip())
        if out:
            os.write(self._saved, out)

    def close(self, timeout: float = 5.0) -> None:
        if self._saved < 0:
            return
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(self._saved, 2)   # this process's end of the pipe closes here
        if self._thread is not None:
            self._thread.join(timeout)
        os.close(self._saved)
        self._saved = -1
