"""Categorical columns in both reports: bar charts of level shares, and the columns a model uses.

A share of fewer than 20 customers is never drawn or printed: training stores it as 0
and a run shows it as missing (None), so no bar or cell describes a handful of people.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.report.html import PALETTE, esc, svg_hbars, table

#: Categorical columns drawn per chart (the rest are in the table).
MAX_LEVEL_PANELS = 6
TRAINING_COLOUR = "#9aa5b1"


def level_share_chart(plt: Any, panels: Sequence[tuple[str, list[str], list[Any], list[Any] | None, str]],
                      caption: str) -> str:
    """One horizontal bar panel per column: ``(name, labels, shares, training shares or None, level)``.

    Inline SVG (``plt`` is unused, kept for the callers' shape): a run report with categorical
    columns then starts no plotting library. A share withheld by the privacy gate (None) draws no bar.
    """
    charts = []
    for name, labels, shares, training, _level in panels:
        names = [str(label)[:28] for label in labels]
        series = [("this run" if training is not None else "share", list(shares), [PALETTE[0]] * len(names))]
        if training is not None:
            series.insert(0, ("training", list(training), [TRAINING_COLOUR] * len(names)))
        values = [float(v) for _, vs, _ in series for v in vs if v is not None]
        top = max(0.05, max(values, default=0.0) * 1.1)
        charts.append(svg_hbars(names, series, top=min(1.0, top), title=str(name), xlabel="share of customers",
                                percent=True))
    return (f'<figure role="img" aria-label="level shares of categorical columns">{"".join(charts)}'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


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
