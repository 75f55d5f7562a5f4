"""The scoring run's report: tonight's data against the training profile, and row counts.

Rendered from the run's manifest alone (``manifest['drift']``, ``['totals']`` and
``['propensity']``), so the HTML and ``_manifest.json`` can never disagree. Charts are
matplotlib PNGs, as in the training report: one chart library for both. The report is
drawn on every nightly run, so it draws a fixed handful of figures whatever the number
of features (every feature is in the table; only drifted ones get a panel).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from engine.io.commit import write_atomic
from engine.models.profile import PSI_ALERT, PSI_EPS, PSI_WARN
from engine.report.html import LEVEL_COLOURS, PALETTE, esc, figure, page, pyplot, svg_hbars, table

MAX_PARTITION_ROWS = 50
MAX_DRIFT_PANELS = 4
TRAINING_COLOUR = "#999999"
_ORDER = {"ok": 0, "warning": 1, "alert": 2}



def _shown(value: float | None, spec: str) -> str:
    """A share as text, or "suppressed" where the privacy gate withheld it (fewer than 20 customers)."""
    return "suppressed" if value is None else format(value, spec)

_SI = ("", "k", "M", "G", "T", "P", "E")


def edge_label(value: float) -> str:
    """A bin edge in the feature's units, short enough for a tick: 12, 0.35, 1.25k, 3.4M.

    From 1,000 up, an SI prefix (k, M, G, ...) with two decimals, trailing zeros dropped (3.40M
    -> 3.4M). No plotting library: the tables of every run report print these.
    """
    if not abs(value) >= 1000 or not math.isfinite(value):
        return f"{value:.3g}"
    power = min(len(_SI) - 1, int(math.floor(math.log10(abs(value)) / 3)))
    mantissa = value / 10.0 ** (3 * power)
    if round(abs(mantissa), 2) >= 1000 and power < len(_SI) - 1:
        power, mantissa = power + 1, mantissa / 1000
    text = f"{mantissa:.2f}".rstrip("0").rstrip(".")
    return f"{text}{_SI[power]}"


def _bins(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Each reference bin with its edges in the feature's units (None: open-ended)."""
    edges = list(d.get("bin_edges", []))
    lows = [None, *edges]
    highs = [*edges, None]
    return [{"low": lo, "high": hi, "training_share": t, "share": a}
            for lo, hi, t, a in zip(lows, highs, d.get("training_fractions", []), d.get("fractions", []))]


def share_tick(value: float, _pos: object = None) -> str:
    """A share as a percent tick label with no more digits than it has (0.025 -> "2.5%")."""
    return f"{round(value * 100, 6):g}%"


def _readable_share_axis(ax: Any, axis: str = "y") -> None:
    """Ticks on round shares (0%, 10%, 20%) from matplotlib's own locator and formatter."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    # Each tick with the digits it needs (2.5%, 10%, 0.25%): a fixed number of decimals
    # labelled the 2.5% and 7.5% ticks "2%" and "8%".
    target.set_major_formatter(FuncFormatter(share_tick))


def _feature_panels(plt: Any, panels: list[tuple[str, dict[str, Any]]]) -> str:
    """Share of rows per reference bin for the drifted features; ticks are the bin edges."""
    n = len(panels)
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    # Fixed margins (layout="none"): this grid's shape is known, and constrained layout
    # would cost about 0.1 s per panel on every nightly run.
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.0 * rows), squeeze=False, layout="none")
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.3 / (3.0 * rows), bottom=0.75 / (3.0 * rows),
                        hspace=0.75, wspace=0.22)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (name, d) in zip(axes.flat, panels):
        train = np.asarray(d["training_fractions"], dtype=np.float64)
        now = np.asarray(d["fractions"], dtype=np.float64)
        x = np.arange(train.size) + 0.5
        ax.bar(x - 0.2, train, width=0.4, color=TRAINING_COLOUR, label="training")
        ax.bar(x + 0.2, now, width=0.4, color=PALETTE[0], label="this run")
        edges = d.get("bin_edges", [])
        # Ticks sit on the boundaries between bins and carry the edge values.
        ax.set_xticks(np.arange(1, len(edges) + 1), [edge_label(e) for e in edges],
                      rotation=45 if len(edges) > 5 else 0, ha="right" if len(edges) > 5 else "center",
                      fontsize=7.5)
        ax.set_xlim(0, train.size)
        _readable_share_axis(ax)
        bits = []
        if "psi" in d:
            bits.append(f"PSI {d['psi']:.3f}")
        if "null_share" in d:
            bits.append(f"nulls {_shown(d['null_share'], '.0%')} vs {_shown(d['training_null_rate'], '.0%')}")
        ax.set_title(f"{name}: " + ", ".join(bits), color=LEVEL_COLOURS[d["level"]])
        ax.set(xlabel=f"{name} (bin edges in its own units)", ylabel="share of non-null rows")
        ax.legend(fontsize=7, loc="best")
    return figure(fig, "Share of tonight's non-null values in each training reference bin (training deciles) "
                       "of the features at warning or alert level; the ticks are the bin edges in each "
                       "feature's units. Missing values are counted apart (the null share in the title).",
                  "distribution of drifted features per reference bin")


def _psi_and_nulls(drift: dict[str, Any]) -> str:
    """PSI per feature and (when any value is missing) the null shares, as inline SVG: drawn every
    night, so no plotting library starts for it."""
    feats = drift.get("features", {})
    th = drift.get("thresholds", {})
    names = sorted(feats, key=lambda n: (-_ORDER[feats[n]["level"]], -feats[n].get("psi", 0.0)))
    train_nulls = [feats[n].get("training_null_rate", 0.0) for n in names]
    # engine.privacy: a suppressed null share (None) is drawn as no bar.
    now_nulls = [feats[n].get("null_share", 0.0) for n in names]
    # An empty panel says nothing an analyst can use: with no missing value anywhere, a sentence.
    any_missing = any((v or 0) > 0 for v in train_nulls + now_nulls)
    psis = [feats[n].get("psi", 0.0) for n in names]
    cap = min(1.0, max(0.3, max(psis, default=0.0) * 1.18))
    warn, alert = th.get("warning", PSI_WARN), th.get("alert", PSI_ALERT)
    psi_chart = svg_hbars(names, [("PSI", psis, [LEVEL_COLOURS[feats[n].get("psi_level", "ok")] for n in names])],
                          top=cap, title="Distribution drift (PSI)",
                          xlabel="PSI against the training bins (axis capped at 1.0)",
                          lines=[(warn, LEVEL_COLOURS["warning"], f"warning {warn:.2f}"),
                                 (alert, LEVEL_COLOURS["alert"], f"alert {alert:.2f}")])
    if not any_missing:
        return (f'<figure role="img" aria-label="PSI per feature">{psi_chart}<figcaption>{esc("PSI of each feature against its training deciles; colours give the level.")}'
                "</figcaption></figure>"
                '<p id="no-missing">No missing values: every feature was present in every row tonight, '
                "as in training.</p>")
    top = max(0.1, max((v or 0.0) for v in train_nulls + now_nulls) * 1.1)
    null_chart = svg_hbars(names, [("training", train_nulls, [TRAINING_COLOUR] * len(names)),
                                   ("this run", now_nulls,
                                    [LEVEL_COLOURS[feats[n].get("null_level", "ok")] for n in names])],
                           top=top, title="Missing values", xlabel="share of rows missing (imputed)", percent=True,
                           show_names=False)
    caption = ("Left: PSI of each feature against its training deciles; colours give the level. Right: "
               "tonight's share of missing values against the training null rate (imputation hides a "
               "column that went empty from the PSI, so it is checked on its own).")
    return (f'<figure role="img" aria-label="PSI and missing values per feature">{psi_chart}{null_chart}'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _propensity_chart(plt: Any, drift: dict[str, Any], manifest: dict[str, Any]) -> str | None:
    d = drift.get("propensity")
    if not d or not d.get("bin_edges"):
        return None
    from matplotlib.ticker import MultipleLocator

    edges = np.concatenate([[0.0], np.asarray(d["bin_edges"], dtype=np.float64), [1.0]])
    widths = np.maximum(np.diff(edges), 1e-6)
    train = np.asarray(d["training_fractions"], dtype=np.float64) / widths
    # Fixed margins (layout="none"), as for the other charts: constrained layout measures
    # every text twice, about a fifth of the report's drawing time.
    fig, ax = plt.subplots(figsize=(6.4, 3.4), layout="none")
    fig.subplots_adjust(left=0.11, right=0.98, top=0.91, bottom=0.15)
    ax.stairs(train, edges, fill=True, color=TRAINING_COLOUR, alpha=0.6, label="training (its deciles)")
    hist = manifest.get("propensity", {}).get("histogram")
    if hist and hist.get("counts") is not None and np.nansum(np.asarray(hist["counts"], dtype=np.float64)):
        # Tonight: every customer, in fixed 0.05-wide bins with the action thresholds as
        # edges, so each threshold is a bin boundary (the training deciles put the top
        # tenth of customers, and both thresholds, in one wide bin).
        h_edges = np.asarray(hist["edges"], dtype=np.float64)
        # engine.privacy: a suppressed bin (None) is drawn as a gap.
        counts = np.asarray(hist["counts"], dtype=np.float64)
        ax.stairs(counts / np.nansum(counts) / np.maximum(np.diff(h_edges), 1e-6), h_edges, color=PALETTE[0], lw=2,
                  label="this run (every customer)")
        how = ("this run's share of customers in fixed 0.05-wide bins, with the action thresholds as bin edges, "
               "divided by the bin width")
    else:  # a manifest written before the exact histogram: the sampled decile shares
        ax.stairs(np.asarray(d["fractions"], dtype=np.float64) / widths, edges, color=PALETTE[0], lw=2,
                  label="this run")
        how = "this run's share in the same bins"
    for i, a in enumerate(manifest.get("propensity", {}).get("action_thresholds", [])):
        ax.axvline(a["threshold"], ls=":", color=PALETTE[5], lw=1.2,
                   label="action threshold" if i == 0 else None)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_locator(MultipleLocator(0.1))
    ax.set(xlabel="propensity (probability)", ylabel="density (share of customers per unit)",
           title=f"Propensity distribution (PSI {d['psi']:.3f})")
    ax.legend(fontsize=7)
    return figure(fig, "Distribution of the propensity in probability units: training's share of customers in "
                       f"each of its decile bins divided by the bin's width, against {how}; dotted lines mark "
                       "the action thresholds.", "propensity distribution")


def _segment_chart(plt: Any, seg: dict[str, Any]) -> str:
    shares = seg.get("shares", [])
    customers = seg.get("customers")
    if customers is not None and sum(c or 0 for c in customers):
        # engine.privacy: a suppressed segment (None) has no bar; the others keep their exact shares.
        whole = sum(c or 0 for c in customers)
        shares = [c / whole if c is not None else None for c in customers]
    shares = [s if s is not None else np.nan for s in shares]
    k = len(shares)
    x = np.arange(k)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.2), layout="none")
    fig.subplots_adjust(left=0.075, right=0.99, top=0.9, bottom=0.15, wspace=0.25)
    train = seg.get("training_shares")
    if train is not None:
        ax.bar(x - 0.2, train, width=0.4, color=TRAINING_COLOUR, label="training")
    ax.bar(x + 0.2 if train is not None else x, shares, width=0.4, color=PALETTE[0], label="this run")
    ax.set_xticks(x)
    _readable_share_axis(ax)
    ax.set(xlabel="segment", ylabel="share of customers",
           title="Segment sizes" + (f" (PSI {seg['psi']:.3f})" if "psi" in seg else ""))
    ax.legend(fontsize=7)
    tm = seg.get("training_mean_propensity")
    mp = seg.get("mean_propensity")
    if tm is not None:
        ax2.bar(x - 0.2, [v if v is not None else 0.0 for v in tm], width=0.4, color=TRAINING_COLOUR,
                label="training")
    if mp is not None:
        ax2.bar(x + 0.2, [v if v is not None else 0.0 for v in mp], width=0.4, color=PALETTE[0], label="this run")
    ax2.set_xticks(x)
    _readable_share_axis(ax2)
    ax2.set(xlabel="segment", ylabel="mean propensity", title="Mean propensity per segment")
    ax2.legend(fontsize=7)
    return figure(fig, "Share of customers and mean propensity per segment, this run (every scored row) against "
                       "the training data. Models trained before the mean was recorded show this run only.",
                  "segment shares")


def _median_text(d: dict[str, Any]) -> Any:
    """Tonight's median: exact for whole-number features, else marked as interpolated (≈)."""
    median = d.get("median")
    if median is None:
        return None
    if d.get("median_exact"):
        return median
    return f"≈ {median:.4g}"


def _share_text(d: dict[str, Any]) -> str:
    """For a 0/1 feature: ``share of 1: 0.62 vs 0.64`` (tonight vs training); a dash otherwise."""
    if d.get("share_of_1") is None or d.get("training_share_of_1") is None:
        return "–"
    return f"share of 1: {_shown(d['share_of_1'], '.2f')} vs {_shown(d['training_share_of_1'], '.2f')}"


def _level_text(drift: dict[str, Any], names: list[str]) -> str:
    reasons = drift.get("reasons", {})
    return "; ".join(esc(reasons.get(n, n) if reasons.get(n, "").startswith(n + " ") else
                         f"{n}: {reasons[n]}" if n in reasons else n) for n in names)


def _drifted(feats: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    # Only what reaches the warning level is shown as drifted: a panel of a PSI of 0.001
    # under a "most drifted" heading would send an analyst after noise.
    return sorted(((n, d) for n, d in feats.items() if d["level"] != "ok" and "fractions" in d),
                  key=lambda t: (-_ORDER[t[1]["level"]], -t[1].get("psi", 0.0)))


def drifted_features(drift: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The features of a drift section at warning or alert level, most drifted first."""
    return _drifted(drift.get("features", {}))


def draw_drift_charts(drift: dict[str, Any], thresholds: list[float]) -> dict[str, str | None]:
    """The report's charts that need nothing but the drift section and the action thresholds.

    A run knows these as soon as its parts are scored, before the duplicate count and the
    exact score summaries: engine/jobs/run_report.py draws them then, in the background,
    and :func:`render_score_report` takes them instead of drawing them again.
    """
    charts: dict[str, str | None] = {}
    feats = drift.get("features", {})
    # The propensity chart is not among them: it bins every scored customer, from the
    # exact summaries (manifest["propensity"]["histogram"]), known only later.
    charts["psi_and_nulls"] = _psi_and_nulls(drift) if feats else None
    drifted = _drifted(feats)
    charts["feature_panels"] = None
    if drifted:   # matplotlib only for the drifted features' panels
        with pyplot() as plt:
            charts["feature_panels"] = _feature_panels(plt, drifted[:MAX_DRIFT_PANELS])
    return charts


def draw_segment_chart(seg: dict[str, Any]) -> str:
    """The segment chart for the drift section's ``segments`` with the exact ``customers`` and
    ``mean_propensity`` of the run (known once the score summaries are summed)."""
    with pyplot() as plt:
        return _segment_chart(plt, seg)


def drift_header(drift: dict[str, Any], *, fail_flag: bool = True) -> tuple[list[str], str]:
    """The drift section's heading (level badge), alert and warning lines and method note; and the level.

    Shared by the score and recommend run reports (``fail_flag``: the run has ``--fail-on-drift``).
    """
    th = drift.get("thresholds", {"warning": PSI_WARN, "alert": PSI_ALERT, "eps": PSI_EPS})
    alerts, warnings = drift.get("alerts", []), drift.get("warnings", [])
    level = "alert" if alerts else "warning" if warnings else "ok"
    body = [f'<h2>Drift: <span class="badge {level}" id="drift-level">{level.upper()}</span></h2>']
    if alerts:
        body.append(f'<p id="alerts"><b>Alert</b>: {_level_text(drift, alerts)}</p>')
    if warnings:
        body.append(f'<p id="warnings"><b>Warning</b>: {_level_text(drift, warnings)}</p>')
    if not alerts and not warnings:
        body.append(f"<p>Every PSI is at most {th['warning']:.2f} and every null share within "
                    f"{th.get('null_warning', 0.05):.2f} of training: tonight's customers look like the "
                    "training data.</p>")
    body.append(
        f"<p class=\"meta\">PSI = Σ (a − e) · ln(a / e) over the training reference bins (the distinct training "
        f"deciles of each feature and of the propensity; the segments for segment shares), with empty bins "
        f"smoothed to {th.get('eps', PSI_EPS):g}: warning above {th['warning']:.2f}, alert above "
        f"{th['alert']:.2f}. Missing values: |tonight's null share − training null rate| above "
        f"{th.get('null_warning', 0.05):.2f} warns, above {th.get('null_alert', 0.20):.2f} alerts. Levels are set "
        f"in <code>[drift]</code> of the settings file"
        + ("; <code>--fail-on-drift</code> exits 9 on an alert, after publishing the scores" if fail_flag else "")
        + ". Tonight's median comes from a systematic sample: exact for whole-number features "
        "(counts, 0/1 flags, which also show their share of 1), interpolated within the reference bins "
        "otherwise (marked ≈, exact to the width of its bin); null shares count every row.</p>")
    return body, level


def feature_charts(plt: Any, drift: dict[str, Any], charts: dict[str, str | None] | None = None
                   ) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """The Features heading, PSI/null chart and drifted features' panels (``charts``: drawn already).

    ``plt`` (pyplot) is used only for the drifted features' panels: None when none drifted."""
    th = drift.get("thresholds", {"warning": PSI_WARN, "alert": PSI_ALERT, "eps": PSI_EPS})
    feats = drift.get("features", {})
    body = ["<h2>Features</h2>"]
    if feats:
        body.append(charts["psi_and_nulls"] or "" if charts is not None else _psi_and_nulls(drift))
    drifted = _drifted(feats)
    if drifted:
        body.append(f"<h3>Drifted features ({len(drifted)} at warning or alert level"
                    + (f"; the {MAX_DRIFT_PANELS} most drifted drawn" if len(drifted) > MAX_DRIFT_PANELS
                       else "") + ")</h3>")
        body.append(charts["feature_panels"] or "" if charts is not None
                    else _feature_panels(plt, drifted[:MAX_DRIFT_PANELS]))
    else:
        body.append(f'<p id="no-drifted">No feature reaches the warning level (PSI {th["warning"]:.2f}, '
                    f'null share ± {th.get("null_warning", 0.05):.2f}): none is shown as drifted.</p>')
    return body, drifted


def feature_tables(drift: dict[str, Any]) -> list[str]:
    """The per-feature drift table, then (with categorical columns) the levels section."""
    rows = []
    for name, d in sorted(drift.get("features", {}).items(),
                          key=lambda t: (-_ORDER[t[1]["level"]], -t[1].get("psi", 0.0))):
        edges = ", ".join(edge_label(e) for e in d.get("bin_edges", []))
        psi_value = round(d["psi"], 4) if "psi" in d else None  # 9.8e-05 reads as noise it is
        rows.append((name, d["level"], psi_value, d.get("training_median"), _median_text(d), _share_text(d),
                     d.get("training_null_rate"), d.get("null_share"), edges or "–"))
    body = [table(["feature", "level", "PSI", "training median", "median tonight",
                   "share of 1 (tonight vs training)", "training null share", "null share tonight",
                   "reference bin edges (feature units)"],
                  rows, css_id="features")]
    if drift.get("categoricals"):
        from engine.report.levels import run_levels_section

        body.extend(run_levels_section(None, drift))   # SVG: no plotting library
    return body


def render_score_report(manifest: dict[str, Any], charts: dict[str, str | None] | None = None
                        ) -> tuple[str, dict[str, Any]]:
    """The report's HTML and its data (drift, totals, features, actions) for a run's manifest.

    ``charts``: those of :func:`draw_drift_charts` for this manifest's drift (and under
    ``"segments"`` that of :func:`draw_segment_chart`), already drawn.
    """
    drift = manifest.get("drift", {})
    totals = manifest.get("totals", {})
    feats = drift.get("features", {})
    body, level = drift_header(drift)
    privacy = manifest.get("privacy") or {}
    if privacy.get("suppressed"):
        body.append('<p id="privacy-suppressed"><b>Suppressed for privacy</b> (no statistic of fewer than '
                    f'{privacy.get("minimum_customers", 20)} distinct customers is shown; the scores themselves '
                    "are published): " + "; ".join(esc(s) for s in privacy["suppressed"]) + ".</p>")
    with pyplot() as plt:
        body.append("<h2>Rows</h2>")
        body.append(table(["rows in", "rows out", "rows rejected", "rows scored now", "rows reused",
                           "nulls imputed", "infinite values", "null ids", "duplicate-id rows", "parts",
                           "parts reused"],
                          [(totals.get("rows_in"), totals.get("rows_out"), totals.get("rows_rejected"),
                            totals.get("rows_scored"), totals.get("rows_reused"), totals.get("nulls_imputed"),
                            totals.get("infinite_values"), totals.get("null_ids"), totals.get("duplicate_rows"),
                            totals.get("parts"), totals.get("parts_reused"))],
                          left=0, css_id="totals"))
        body.append("<h2>Propensity</h2>")
        prop = manifest.get("propensity", {})
        what = manifest.get("model", {}).get("propensity_of")
        if what:
            body.append(f"<p>Propensity is {esc(str(what))}: the probability of that event for each customer.</p>")
        chart = _propensity_chart(plt, drift, manifest)
        actions = prop.get("action_thresholds", [])
        body.append('<div class="grid">' + (chart or "") + "</div>")
        body.append(table(["propensity at or above", "customers", "share of customers"],
                          [(f"{a['threshold']:g}", a["customers"], a["share"]) for a in actions],
                          css_id="actions"))
        if prop.get("mean") is not None:
            body.append(f"<p>Mean propensity tonight: {prop['mean']:.4f}.</p>")
        body.append("<h2>Segments</h2>")
        seg = drift.get("segments", {})
        body.append(charts["segments"] if charts is not None and "segments" in charts else _segment_chart(plt, seg))
        counts = seg.get("customers") or seg.get("counts", [])
        total = max(1, sum(c or 0 for c in counts))
        k = len(counts)
        training = seg.get("training_shares") or [None] * k
        tmean = seg.get("training_mean_propensity") or [None] * k
        mean = seg.get("mean_propensity") or [None] * k
        body.append(table(["segment", "customers", "share", "training share", "mean propensity",
                           "training mean propensity"],
                          [(i, counts[i], counts[i] / total if counts[i] is not None else None, training[i],
                            mean[i], tmean[i]) for i in range(k)],
                          css_id="segments"))
        charts_html, drifted = feature_charts(plt, drift, charts)
        body.extend(charts_html)
    body.extend(feature_tables(drift))
    other = []
    if "propensity" in drift:
        other.append(("propensity", round(drift["propensity"]["psi"], 4), drift["propensity"]["level"]))
    if "psi" in seg:
        other.append(("segment shares", round(seg["psi"], 4), seg["level"]))
    body.append(table(["distribution", "PSI", "level"], other, css_id="psi"))
    parts = manifest.get("partitions", [])
    body.append("<h2>Parts</h2>")
    body.append(table(["part", "rows in", "rows out", "rows rejected", "reused"],
                      [(p.get("index"), p.get("rows_in"), p.get("rows_out"), p.get("rows_rejected"),
                        bool(p.get("reused"))) for p in parts[:MAX_PARTITION_ROWS]], css_id="partitions"))
    if len(parts) > MAX_PARTITION_ROWS:
        body.append(f"<p class=\"meta\">… and {len(parts) - MAX_PARTITION_ROWS:,} more parts "
                    "(every part is listed in _manifest.json).</p>")
    model, inp = manifest.get("model", {}), manifest.get("input", {})
    subtitle = (f"run {manifest.get('run_id', '?')} · {manifest.get('created_at', '')} · model "
                f"{model.get('path', '?')} ({str(model.get('content_hash', ''))[:19]}) · input {inp.get('path', '?')} · "
                f"output {manifest.get('output', {}).get('path', '?')} · backend {manifest.get('backend', '?')}"
                + (f" · propensity = {model['propensity_of']}" if model.get("propensity_of") else ""))
    data = {"kind": "score", "run_id": manifest.get("run_id"), "level": level, "drift": drift, "totals": totals,
            "features": {n: {"level": d["level"], "psi": d.get("psi"), "bins": _bins(d),
                             "median": d.get("median"), "training_median": d.get("training_median"),
                             "median_exact": d.get("median_exact"), "share_of_1": d.get("share_of_1"),
                             "training_share_of_1": d.get("training_share_of_1"),
                             "null_share": d.get("null_share"), "training_null_rate": d.get("training_null_rate")}
                         for n, d in feats.items()},
            "drifted": [n for n, _ in drifted],
            "action_thresholds": manifest.get("propensity", {}).get("action_thresholds", [])}
    return page("Scoring run report", subtitle, body, data), data


def write_score_report(manifest: dict[str, Any], path: str | Path,
                       charts: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Write the run report (atomically) and return its data dict (``charts`` as for
    :func:`render_score_report`)."""
    text, data = render_score_report(manifest, charts)
    write_atomic(Path(path), text.encode("utf-8"))
    return data
