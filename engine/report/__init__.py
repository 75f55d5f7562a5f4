"""Self-contained HTML reports: the training report and the scoring run's drift report.

Both are single HTML files with every chart embedded and no external resource, so they
open offline and can be mailed as they are: the training report's charts are PNGs drawn
with matplotlib (Agg backend, imported only when a report is rendered, never by
``import engine``); the run report, drawn on every nightly run, uses inline SVG
(:mod:`engine.report.svg`), which takes milliseconds.
"""

from __future__ import annotations

from engine.report.evaluation import calibration_table, gains_table, pca_2d

TRAIN_REPORT = "report.html"
# Starts with "_" so pyarrow.dataset discovery skips it inside a scores directory.
SCORE_REPORT = "_report.html"

__all__ = [
    "SCORE_REPORT",
    "TRAIN_REPORT",
    "calibration_table",
    "gains_table",
    "pca_2d",
]
