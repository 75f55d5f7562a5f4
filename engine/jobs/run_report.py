"""The scoring run's report, drawn off the run's critical path.

The report (``_report.html``, engine/report/drift.py) costs matplotlib's import and a
handful of PNG figures: about 0.6 s of a 2-core run that nothing waited for but the
report itself. A :class:`ReportDrawer` does that work on one background thread:

1. when the run starts scoring: import matplotlib (while the task threads read and score;
   on a host with idle cores this is free, on 2 busy cores it costs about what it costs
   at the end, but no longer adds to the wall after the last part);
2. as soon as the drift totals are known (every part scored): the charts that need only
   them (propensity, PSI and null shares, drifted features), while the client counts
   duplicate ids, sums the exact score summaries and checks the parts;
3. when the manifest is complete: the segment chart (it shows the exact segment sizes)
   and the page, written into staging before publish.

A report that fails to draw must not cost the night's scores: :meth:`ReportDrawer.finish`
warns, records why in the manifest and returns None, as a failed render always did.
"""

from __future__ import annotations

import copy
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _import_pyplot() -> None:
    from engine.report.html import pyplot

    with pyplot():
        pass


def _draw(drift: dict[str, Any], thresholds: list[float]) -> dict[str, str | None]:
    from engine.report.drift import draw_drift_charts

    return draw_drift_charts(drift, thresholds)


def _write(manifest: dict[str, Any], path: Path, charts: Future[dict[str, str | None]] | None) -> None:
    from engine.report.drift import write_score_report

    drawn = None
    if charts is not None:
        try:
            drawn = charts.result()
        except Exception:  # drawn again below, where a real failure is reported
            drawn = None
    write_score_report(manifest, path, drawn)


class ReportDrawer:
    """Draws one run's report on a background thread; see the module docstring.

    Used as a context manager: leaving it stops the thread (after the work already
    queued on a normal exit; without waiting for it after an error).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-report")
        self._pool.submit(_import_pyplot)
        self._charts: Future[dict[str, str | None]] | None = None

    def __enter__(self) -> ReportDrawer:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # After an error (an interrupt, a bad row limit) nothing waits for queued drawing.
        self._pool.shutdown(wait=exc_type is None, cancel_futures=True)

    def drift_known(self, drift: dict[str, Any], thresholds: list[float]) -> None:
        """Start the charts that need only the drift section (a copy: the caller may go on
        adding to its own)."""
        self._charts = self._pool.submit(_draw, copy.deepcopy(drift), list(thresholds))

    def finish(self, manifest: dict[str, Any], path: Path, name: str) -> str | None:
        """Write the report for the finished ``manifest`` to ``path``; ``name``, or None (with a
        warning and ``manifest['report_error']``) when it could not be drawn."""
        try:
            self._pool.submit(_write, manifest, path, self._charts).result()
        except Exception as exc:  # any rendering failure; the scores themselves are fine
            warnings.warn(f"the run report {name} could not be written: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)
            manifest["report_error"] = f"{type(exc).__name__}: {exc}"
            return None
        return name
