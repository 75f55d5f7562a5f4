"""The scoring run's report: tonight's data against the training profile, and row counts.

Rendered from the run's manifest alone (``manifest['drift']`` and ``manifest['totals']``),
so the HTML and ``_manifest.json`` can never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.io.commit import write_atomic
from engine.models.profile import PSI_ALERT, PSI_EPS, PSI_WARN
from engine.report import svg
from engine.report.html import LEVEL_COLOURS, PALETTE, esc, page, table

MAX_PARTITION_ROWS = 50


def _psi_bars(drift: dict[str, Any]) -> str:
    items = [(name, d["psi"], d["level"]) for name, d in drift.get("features", {}).items()]
    items.sort(key=lambda t: -t[1])
    if "propensity" in drift:
        items.insert(0, ("PROPENSITY", drift["propensity"]["psi"], drift["propensity"]["level"]))
    if "psi" in drift.get("segments", {}):
        items.insert(1 if "propensity" in drift else 0,
                     ("SEGMENT SHARES", drift["segments"]["psi"], drift["segments"]["level"]))
    chart = svg.hbars(
        [(name, value, LEVEL_COLOURS[level]) for name, value, level in items],
        title="Population Stability Index", xlabel="PSI against the training profile",
        lines=[(PSI_WARN, LEVEL_COLOURS["warning"], f"warning {PSI_WARN:.2f}"),
               (PSI_ALERT, LEVEL_COLOURS["alert"], f"alert {PSI_ALERT:.2f}")],
        # Past 1.0 every bar means "alert" alike; capping the axis keeps 0.10 and 0.25 readable
        # (a longer bar is drawn to the edge, and its label still gives the value).
        x_max=min(1.0, max(0.3, max((v for _, v, _ in items), default=0.0) * 1.18)),
    )
    return svg.svg_figure(chart, f"PSI per feature, for the propensity and for the segment shares. Above "
                                 f"{PSI_WARN:.2f}: warning; above {PSI_ALERT:.2f}: alert.", "PSI per feature")


def _distribution_charts(drift: dict[str, Any]) -> str:
    panels = []
    if "fractions" in drift.get("propensity", {}):
        panels.append(("propensity", drift["propensity"]))
    worst = sorted(((n, d) for n, d in drift.get("features", {}).items() if "fractions" in d),
                   key=lambda t: -t[1]["psi"])[:3]
    panels += worst
    figures = []
    for name, d in panels:
        bins = [str(i) for i in range(len(d["training_fractions"]))]
        chart = svg.grouped_bars(bins, [("training", d["training_fractions"], "#999999"),
                                        ("this run", d["fractions"], PALETTE[0])],
                                 title=f"{name} (PSI {d['psi']:.3f})", xlabel="reference bin (training deciles)",
                                 ylabel="share of rows", width=330)
        figures.append(svg.svg_figure(chart, f"Share of rows per reference bin of {name}, training against "
                                             "this run.", f"distribution of {name} per reference bin"))
    return "".join(figures)


def _segment_chart(seg: dict[str, Any]) -> str:
    shares = seg.get("shares", [])
    training = seg.get("training_shares")
    series = ([("training", training, "#999999")] if training is not None else []) + \
        [("this run", shares, PALETTE[0])]
    chart = svg.grouped_bars([str(i) for i in range(len(shares))], series,
                             title="Segment shares" + (f" (PSI {seg['psi']:.3f})" if "psi" in seg else ""),
                             xlabel="segment", ylabel="share of customers")
    return svg.svg_figure(chart, "Share of customers per segment in this run against the training data.",
                          "segment shares")


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
    body.append(_psi_bars(drift))
    body.append('<div class="grid">' + _segment_chart(drift.get("segments", {}))
                + _distribution_charts(drift) + "</div>")
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
