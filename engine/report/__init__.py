"""Self-contained HTML reports: the training report and the scoring run's drift report.

Both are single HTML files with every chart embedded and no external resource, so they
open offline and can be mailed as they are. One chart library draws both: matplotlib
(Agg backend, imported only when a report is rendered, never by ``import engine``),
as base64 PNGs. The run report is drawn on every nightly run, so it draws a fixed
handful of figures whatever the number of features (measured well under 2 s for 20).
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
