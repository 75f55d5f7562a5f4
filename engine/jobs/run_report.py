"""The scoring run's report, drawn off the run's critical path.

The report (``_report.html``, engine/report/drift.py) costs matplotlib's import and a
handful of PNG figures: about 0.6 s of a 2-core run that nothing waited for but the
report itself. A :class:`ReportDrawer` does that work on one background thread:

1. as soon as the drift totals are known (every part scored): import matplotlib and draw
   the charts that need only them (propensity, PSI and null shares, drifted features),
   while the client sums the exact score summaries, counts duplicate ids and checks the
   parts (Parquet reads that release the GIL);
2. as soon as the exact summaries are summed: the segment chart (exact segment sizes);
3. when the manifest is complete: the page (tables and the charts drawn above), written
   into staging before publish. A chart is used only if the manifest holds exactly the
   data it was drawn from; otherwise it is drawn again there.

matplotlib is not imported while the parts are scored: on a 2-core host the task threads
keep both cores busy, so the import would only move its CPU time into the scoring (no
gain), and an import holds the GIL in long stretches that the task threads' Python glue
would queue behind.

A report that fails to draw must not cost the night's scores: :meth:`ReportDrawer.finish`
warns, records why in the manifest and returns None, as a failed render always did.
"""

from __future__ import annotations

import copy
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _draw(drift: dict[str, Any], thresholds: list[float]) -> dict[str, str | None]:
    from engine.report.drift import draw_drift_charts

    return draw_drift_charts(drift, thresholds)


def _draw_segments(seg: dict[str, Any]) -> str:
    from engine.report.drift import draw_segment_chart

    return draw_segment_chart(seg)


def _without_segments(drift: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in drift.items() if k != "segments"}


def _write(manifest: dict[str, Any], path: Path, drawn_from: dict[str, Any],
           charts: Future[dict[str, str | None]] | None, segments: Future[str] | None) -> None:
    from engine.report.drift import write_score_report

    drift = manifest.get("drift", {})
    use: dict[str, str | None] | None = None
    try:
        if charts is not None and drawn_from.get("drift") == _without_segments(drift):
            use = dict(charts.result())
            if segments is not None and drawn_from.get("segments") == drift.get("segments"):
                use["segments"] = segments.result()
    except Exception:  # drawn again below, where a real failure is reported
        use = None
    write_score_report(manifest, path, use)


class ReportDrawer:
    """Draws one run's report on a background thread; see the module docstring.

    Used as a context manager: leaving it stops the thread (after the work already
    queued on a normal exit; without waiting for it after an error).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-report")
        self._charts: Future[dict[str, str | None]] | None = None
        self._segments: Future[str] | None = None
        self._drawn_from: dict[str, Any] = {}

    def __enter__(self) -> ReportDrawer:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # After an error (an interrupt, a bad row limit) nothing waits for queued drawing.
        self._pool.shutdown(wait=exc_type is None, cancel_futures=True)

    def drift_known(self, drift: dict[str, Any], thresholds: list[float]) -> None:
        """Start the charts that need only the drift section (a copy: the caller may go on
        adding to its own)."""
        drift = copy.deepcopy(_without_segments(drift))
        self._drawn_from["drift"] = drift
        self._charts = self._pool.submit(_draw, drift, list(thresholds))

    def segments_known(self, segments: dict[str, Any]) -> None:
        """Start the segment chart (``drift['segments']`` with the exact customers and means)."""
        segments = copy.deepcopy(segments)
        self._drawn_from["segments"] = segments
        self._segments = self._pool.submit(_draw_segments, segments)

    def finish(self, manifest: dict[str, Any], path: Path, name: str) -> str | None:
        """Write the report for the finished ``manifest`` to ``path``; ``name``, or None (with a
        warning and ``manifest['report_error']``) when it could not be drawn."""
        try:
            self._pool.submit(_write, manifest, path, self._drawn_from, self._charts, self._segments).result()
        except Exception as exc:  # any rendering failure; the scores themselves are fine
            warnings.warn(f"the run report {name} could not be written: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)
            manifest["report_error"] = f"{type(exc).__name__}: {exc}"
            return None
        return name
