"""Categorical columns in both reports: bar charts of level shares, and the columns a model uses.

A share of fewer than 20 customers is never drawn or printed: training stores it as 0
and a run shows it as missing (None), so no bar or cell describes a handful of people.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.report.html import LEVEL_COLOURS, PALETTE, figure, table

#: Categorical columns drawn per chart (the rest are in the table).
MAX_LEVEL_PANELS = 6
TRAINING_COLOUR = "#9aa5b1"


def level_share_chart(plt: Any, panels: Sequence[tuple[str, list[str], list[Any], list[Any] | None, str]],
                      caption: str) -> str:
    """One horizontal bar panel per column: ``(name, labels, shares, training shares or None, level)``."""
    n = len(panels)
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    tallest = max(len(p[1]) for p in panels)
    height = 0.9 + 0.28 * tallest
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, height * rows), squeeze=False, layout="none")
    fig.subplots_adjust(left=0.2, right=0.97, top=1 - 0.35 / (height * rows), bottom=0.5 / (height * rows),
                        hspace=0.6, wspace=0.55)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (name, labels, shares, training, level) in zip(axes.flat, panels):
        y = np.arange(len(labels))
        now = np.asarray([np.nan if v is None else v for v in shares], dtype=np.float64)
        if training is not None:
            ax.barh(y - 0.2, np.asarray(training, dtype=np.float64), height=0.4, color=TRAINING_COLOUR,
                    label="training")
            ax.barh(y + 0.2, np.nan_to_num(now), height=0.4, color=PALETTE[0], label="this run")
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.barh(y, np.nan_to_num(now), height=0.6, color=PALETTE[0])
        ax.set_yticks(y, [str(label)[:28] for label in labels], fontsize=7.5)
        ax.invert_yaxis()
        ax.set_xlabel("share of customers")
        ax.set_title(name, color=LEVEL_COLOURS.get(level, "#222"), fontsize=9)
    return figure(fig, caption, "level shares of categorical columns")


def training_levels_section(plt: Any, model: Any) -> list[str]:
    """The training report's categorical section: level shares of each column, and its levels' effects."""
    if not getattr(model, "categoricals", ()):
        return []
    from engine.models.explain import level_shares

    shares = level_shares(model)
    panels = [(c.name, c.labels(), shares[c.name], None, "ok") for c in model.categoricals[:MAX_LEVEL_PANELS]]
    body = ["<h2>Categorical columns</h2>",
            "<p>Share of training customers per level (the model's levels: the most frequent values with at "
            "least 20 customers, then <em>(other)</em> for rarer and new values and <em>(missing)</em> for "
            "nulls; a share of fewer than 20 customers shows as 0).</p>",
            level_share_chart(plt, panels, "Share of training customers per level of each categorical column.")]
    from engine.models.explain import level_effects

    # The drivers chart's scale: log-odds against the column's training-average customer.
    effects = level_effects(model)
    rows = [(cat.name, label, shares[cat.name][i], effects[cat.name][i])
            for cat in model.categoricals for i, label in enumerate(cat.labels())]
    body.append("<p>Each level's effect is the change in log-odds of a customer at that level against the "
                "column's average training customer (0 = average), the scale of the drivers chart.</p>")
    body.append(table(["column", "level", "training share", "log-odds vs the average customer"], rows, left=2,
                      css_id="levels"))
    return body


def run_levels_section(plt: Any, drift: dict[str, Any]) -> list[str]:
    """The run report's categorical section: tonight's level shares against training, PSI, unseen share."""
    cats = drift.get("categoricals") or {}
    if not cats:
        return []
    th = drift.get("thresholds", {})
    panels = [(name, d["levels"], d["shares"], d["training_shares"], d["level"])
              for name, d in list(cats.items())[:MAX_LEVEL_PANELS]]
    body = ["<h2>Categorical columns</h2>",
            f"<p>Level shares tonight against training (PSI over the levels), and the share of values outside the "
            f"model's levels (never seen in training, or too rare to keep) above training's <em>(other)</em>: "
            f"{th.get('unseen_warning', 0.05):.2f} warns, {th.get('unseen_alert', 0.20):.2f} alerts. A level "
            "with fewer than 20 customers tonight is not shown.</p>",
            level_share_chart(plt, panels, "Share of customers per level, training and this run.")]
    rows = [(name, d["level"], round(d["psi"], 4), d.get("unseen_share"), d.get("training_other_share"))
            for name, d in cats.items()]
    body.append(table(["column", "level", "PSI over levels", "outside the model's levels tonight",
                       "(other) in training"], rows, css_id="categoricals"))
    return body
