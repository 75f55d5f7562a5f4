"""The scoring run's report: tonight's data against the training profile, and row counts.

Rendered from the run's manifest alone (``manifest['drift']`` and ``manifest['totals']``),
so the HTML and ``_manifest.json`` can never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.io.commit import write_atomic
from engine.models.profile import PSI_ALERT, PSI_EPS, PSI_WARN
from engine.report.html import LEVEL_COLOURS, PALETTE, esc, figure, page, pyplot, table

MAX_PARTITION_ROWS = 50


def _psi_bars(plt: Any, drift: dict[str, Any]) -> str:
    items = [(name, d["psi"], d["level"]) for name, d in drift.get("features", {}).items()]
    items.sort(key=lambda t: t[1])
    if "propensity" in drift:
        items.append(("PROPENSITY", drift["propensity"]["psi"], drift["propensity"]["level"]))
    if "psi" in drift.get("segments", {}):
        items.append(("SEGMENT SHARES", drift["segments"]["psi"], drift["segments"]["level"]))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.26 * len(items)))
    values = [v for _, v, _ in items]
    ax.barh(range(len(items)), values, color=[LEVEL_COLOURS[lvl] for _, _, lvl in items])
    ax.set_yticks(range(len(items)), [n for n, _, _ in items])
    ax.axvline(PSI_WARN, color=LEVEL_COLOURS["warning"], ls="--", lw=1.2, label=f"warning {PSI_WARN:.2f}")
    ax.axvline(PSI_ALERT, color=LEVEL_COLOURS["alert"], ls="--", lw=1.2, label=f"alert {PSI_ALERT:.2f}")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=7)
    ax.set_xlim(0, max(0.3, max(values, default=0) * 1.18))
    ax.set(xlabel="PSI against the training profile", title="Population Stability Index")
    ax.legend(loc="lower right")
    return figure(fig, f"PSI per feature, for the propensity and for the segment shares. Above {PSI_WARN:.2f}: "
                       f"warning; above {PSI_ALERT:.2f}: alert.", "PSI per feature")


def _bins_chart(ax: Any, training: list[float], tonight: list[float], title: str) -> None:
    x = np.arange(len(training))
    ax.bar(x - 0.2, training, width=0.4, color="#999", label="training")
    ax.bar(x + 0.2, tonight, width=0.4, color=PALETTE[0], label="this run")
    ax.set(title=title, xlabel="reference bin (training deciles)", ylabel="share of rows", xticks=x)
    ax.legend(fontsize=7)


def _distribution_charts(plt: Any, drift: dict[str, Any]) -> str:
    panels = []
    if "fractions" in drift.get("propensity", {}):
        p = drift["propensity"]
        panels.append(("propensity", p))
    worst = sorted(((n, d) for n, d in drift.get("features", {}).items() if "fractions" in d),
                   key=lambda t: -t[1]["psi"])[:3]
    panels += worst
    if not panels:
        return ""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0), squeeze=False)
    for ax, (name, d) in zip(axes[0], panels):
        _bins_chart(ax, d["training_fractions"], d["fractions"], f"{name} (PSI {d['psi']:.3f})")
    return figure(fig, "Share of rows per reference bin, training against this run: the propensity and the "
                       "features with the highest PSI.", "distribution per reference bin")


def _segment_chart(plt: Any, seg: dict[str, Any]) -> str:
    shares = seg.get("shares", [])
    training = seg.get("training_shares")
    x = np.arange(len(shares))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if training is not None:
        ax.bar(x - 0.2, training, width=0.4, color="#999", label="training")
    ax.bar(x + (0.2 if training is not None else 0), shares, width=0.4, color=PALETTE[0], label="this run")
    ax.set(xlabel="segment", ylabel="share of customers", xticks=x,
           title="Segment shares" + (f" (PSI {seg['psi']:.3f})" if "psi" in seg else ""))
    ax.legend(fontsize=7)
    return figure(fig, "Share of customers per segment in this run against the training data.", "segment shares")


def render_score_report(manifest: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The report's HTML and its data (drift and totals) for a run's manifest."""
    drift = manifest.get("drift", {})
    totals = manifest.get("totals", {})
    alerts, warnings = drift.get("alerts", []), drift.get("warnings", [])
    level = "alert" if alerts else "warning" if warnings else "ok"
    body = [f'<h2>Drift: <span class="badge {level}" id="drift-level">{level.upper()}</span></h2>']
    if alerts:
        body.append(f"<p><b>Alert</b> (PSI &gt; {PSI_ALERT:.2f}): {esc(', '.join(alerts))}</p>")
    if warnings:
        body.append(f"<p><b>Warning</b> (PSI &gt; {PSI_WARN:.2f}): {esc(', '.join(warnings))}</p>")
    if not alerts and not warnings:
        body.append(f"<p>Every PSI is at most {PSI_WARN:.2f}: tonight's customers look like the training data.</p>")
    body.append(
        f"<p class=\"meta\">PSI = Σ (a − e) · ln(a / e) over the training reference bins (the distinct training "
        f"deciles of each feature and of the propensity; the segments for segment shares), with empty bins "
        f"smoothed to {PSI_EPS:g}. Warning above {PSI_WARN:.2f}, alert above {PSI_ALERT:.2f}; "
        f"<code>--fail-on-drift</code> exits 9 on an alert, after publishing the scores.</p>")
    with pyplot() as plt:
        body.append(_psi_bars(plt, drift))
        body.append('<div class="grid">' + _segment_chart(plt, drift.get("segments", {}))
                    + _distribution_charts(plt, drift) + "</div>")
    rows = [(n, d["psi"], d["level"]) for n, d in drift.get("features", {}).items()]
    if "propensity" in drift:
        rows.append(("propensity", drift["propensity"]["psi"], drift["propensity"]["level"]))
    if "psi" in drift.get("segments", {}):
        rows.append(("segment shares", drift["segments"]["psi"], drift["segments"]["level"]))
    body.append(table(["distribution", "PSI", "level"], rows, css_id="psi"))
    seg = drift.get("segments", {})
    training = seg.get("training_shares") or [None] * len(seg.get("shares", []))
    body.append(table(["segment", "customers", "share", "training share"],
                      [(i, c, s, t) for i, (c, s, t) in enumerate(zip(seg.get("counts", []), seg.get("shares", []),
                                                                      training))], css_id="segments"))
    body.append("<h2>Rows</h2>")
    body.append(table(["rows in", "rows out", "rows rejected", "nulls imputed", "infinite values",
                       "null ids", "duplicate-id rows", "parts", "parts reused"],
                      [(totals.get("rows_in"), totals.get("rows_out"), totals.get("rows_rejected"),
                        totals.get("nulls_imputed"), totals.get("infinite_values"), totals.get("null_ids"),
                        totals.get("duplicate_rows"), totals.get("parts"), totals.get("parts_reused"))],
                      left=0, css_id="totals"))
    parts = manifest.get("partitions", [])
    body.append(table(["part", "rows in", "rows out", "rows rejected"],
                      [(p.get("index"), p.get("rows_in"), p.get("rows_out"), p.get("rows_rejected"))
                       for p in parts[:MAX_PARTITION_ROWS]], css_id="partitions"))
    if len(parts) > MAX_PARTITION_ROWS:
        body.append(f"<p class=\"meta\">… and {len(parts) - MAX_PARTITION_ROWS:,} more parts "
                    "(every part is listed in _manifest.json).</p>")
    model, inp = manifest.get("model", {}), manifest.get("input", {})
    subtitle = (f"run {manifest.get('run_id', '?')} · {manifest.get('created_at', '')} · model "
                f"{model.get('path', '?')} ({str(model.get('content_hash', ''))[:19]}) · input {inp.get('path', '?')} · "
                f"output {manifest.get('output', {}).get('path', '?')} · backend {manifest.get('backend', '?')}")
    data = {"kind": "score", "run_id": manifest.get("run_id"), "level": level, "drift": drift, "totals": totals}
    return page("Scoring run report", subtitle, body, data), data


def write_score_report(manifest: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Write the run report (atomically) and return its data dict."""
    text, data = render_score_report(manifest)
    write_atomic(Path(path), text.encode("utf-8"))
    return data
