"""A step name that is never silent: announced when it starts, repeated while it runs.

Training spends minutes inside single library calls (one K-means initialisation, one
logistic fit on millions of rows) that report nothing. :class:`Heartbeat` names each
step as it starts and, from a daemon thread, says it again every ``interval`` seconds
with the time spent so far, so a log never goes quiet for longer than the interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"


class Heartbeat:
    """``with Heartbeat(say, 5.0) as hb: hb.step("K-means init 1 of 3"); ...``"""

    def __init__(self, say: Callable[[str], None], interval: float) -> None:
        self.say = say
        self.interval = max(0.05, float(interval))
        self._lock = threading.Lock()
        self._step = ""
        self._since = time.perf_counter()
        self._start = self._since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="train-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def step(self, name: str) -> None:
        """Announce a new step; the heartbeat repeats it until the next one."""
        with self._lock:
            self._step, self._since = name, time.perf_counter()
        self.say(name)

    def pause(self) -> None:
        """No current step: silent until the next :meth:`step` (while other code reports)."""
        with self._lock:
            self._step, self._since = "", time.perf_counter()

    def _beat(self) -> None:
        last = time.perf_counter()
        wait = self.interval
        # Wakes when the next line is due (not on a coarse tick), so the log is never
        # quiet for longer than the interval itself.
        while not self._stop.wait(wait):
            now = time.perf_counter()
            with self._lock:
                name, since = self._step, self._since
            quiet = now - max(last, since)
            # Quiet only while steps follow each other faster than the interval.
            if name and quiet >= self.interval * 0.98:
                last = now
                self.say(f"{name}: still running ({_secs(now - since)} in this step, "
                         f"{_secs(now - self._start)} in all)")
                quiet = 0.0
            wait = max(0.01, self.interval - quiet)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
