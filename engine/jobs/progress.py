"""Progress of a job: a live bar on a terminal, a plain line every few seconds otherwise.

``mode``: ``auto`` (bar when stderr is a terminal, log lines when it is not: cron,
Airflow), ``bar``, ``log`` or ``quiet`` (nothing until the summary line, which every
mode prints). Progress is a diagnostic, so it goes to stderr, as tqdm's, rich's and
Dask's do; stdout keeps the results (the summary line), which a script may capture.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

MODES = ("auto", "bar", "log", "quiet")


def resolve_mode(mode: str, stream: IO[str] | None = None) -> str:
    """``auto`` becomes ``bar`` when ``stream`` (default stderr) is a terminal, else ``log``."""
    if mode not in MODES:
        from engine.errors import UsageError

        raise UsageError(f"--progress must be one of {', '.join(MODES)}, not {mode!r}")
    from engine import log

    if log.is_json() and mode != "quiet":
        return "log"  # a live bar is not one JSON object per line
    if mode == "auto":
        return "bar" if getattr(stream or sys.stderr, "isatty", lambda: False)() else "log"
    return mode


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished units (partitions, files) and rows; thread-safe enough for one consumer."""

    def __init__(self, label: str, total: int, *, unit: str = "partitions", mode: str = "auto",
                 total_rows: int | None = None, stream: IO[str] | None = None,
                 interval: float = 5.0, tick: bool = False) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.total_rows = total_rows
        self.stream = stream or sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        self.interval = interval
        self.done = 0
        self.rows = 0
        self.start = time.perf_counter()
        self._last_log = self.start
        self._bar: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.mode == "bar":
            self._start_bar()
        elif self.mode == "log" and tick:
            # A unit (one partition) may take longer than the interval: repeat the line
            # anyway, so a log never goes quiet for longer than the interval.
            self._ticker = threading.Thread(target=self._tick, name=f"{label}-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        wait = self.interval
        while not self._stop.wait(max(0.01, wait)):
            with self._lock:
                quiet = time.perf_counter() - self._last_log
                if quiet >= self.interval * 0.98:
                    self._last_log = time.perf_counter()
                    self.log_line()
                    quiet = 0.0
            wait = self.interval - quiet

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(self.unit), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=self.stream), transient=False,
        )
        self._task = self._bar.add_task(self.label, total=self.total, rate="")
        self._bar.start()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rows_per_second(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    def eta(self) -> float | None:
        if self.done == 0:
            return None
        if self.total_rows:
            return (self.total_rows - self.rows) / max(self.rows_per_second(), 1e-9)
        return self.elapsed / self.done * (self.total - self.done)

    def advance(self, units: int = 1, rows: int = 0) -> None:
        self.done += units
        self.rows += rows
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rows_per_second():,.0f} rows/s")
        elif self.mode == "log":
            with self._lock:
                now = time.perf_counter()
                if now - self._last_log >= self.interval or self.done == self.total:
                    self._last_log = now
                    self.log_line()

    def note(self, step: str) -> None:
        """Name the current step on the bar (log mode prints step lines itself; quiet shows nothing)."""
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(self._task, description=f"{self.label}: {step}")

    def log_line(self) -> None:
        from engine import log

        eta = self.eta()
        message = (f"[{self.label}] {self.done}/{self.total} {self.unit}, {self.rows:,} rows, "
                   f"{self.rows_per_second():,.0f} rows/s, elapsed {_fmt_seconds(self.elapsed)}, "
                   f"ETA {_fmt_seconds(eta) if eta is not None else '?'}")
        if log.is_json() and self.stream is sys.stderr:
            log.event(f"{self.label}.progress", message, done=self.done, total=self.total, unit=self.unit,
                      rows=self.rows, rows_per_s=round(self.rows_per_second(), 1),
                      elapsed_s=round(self.elapsed, 3), eta_s=round(eta, 3) if eta is not None else None)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=2)
            self._ticker = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
