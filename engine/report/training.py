"""The training report: how well the propensity ranks, and which segments exist.

:func:`engine.jobs.train.train` collects a :class:`TrainEvidence` (holdout labels and
predictions, segment statistics, a bounded sample of scaled rows) while the data is in
memory, and :func:`write_train_report` turns it into ``report.html`` beside the model.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.io.commit import write_atomic
from engine.privacy import (
    MIN_CUSTOMERS,
    clipped_mean,
    coarse_group_means,
    finite_and_bounds,
    mean_of_shares,
    private_quantiles,
)
from engine.report.evaluation import calibration_table, gains_table, pca_2d
from engine.report.html import PALETTE, esc, figure, fmt, page, pyplot, table

SCATTER_SAMPLE = 20_000
#: Cells per axis of the 2-D projection's density picture.
PROJECTION_GRID = 36


@dataclass
class TrainEvidence:
    """What the report needs from a training run; every array is on the host and bounded.

    ``y``/``p`` are the evaluation labels and predicted propensities (the holdout, or the
    training rows when there is no holdout, as ``evaluated_on`` says). Segment statistics
    are over the training rows; ``sample_z`` is at most :data:`SCATTER_SAMPLE` scaled rows.
    """

    evaluated_on: str
    y: np.ndarray
    p: np.ndarray
    segment_eval: np.ndarray
    segment_counts: np.ndarray
    segment_means: np.ndarray
    overall_means: np.ndarray
    sample_z: np.ndarray
    sample_segment: np.ndarray
    minimum: int = MIN_CUSTOMERS


def collect_evidence(X: np.ndarray, rows: np.ndarray, seg_train: np.ndarray, fill: np.ndarray,
                     mean: np.ndarray, scale: np.ndarray, k: int, y_eval: np.ndarray, p_eval: np.ndarray,
                     seg_eval: np.ndarray, evaluated_on: str, seed: int,
                     sample: int = SCATTER_SAMPLE, *, minimum: int = MIN_CUSTOMERS,
                     rows_per_customer: int = 1) -> TrainEvidence:
    """Segment means in original units (after imputation) and a scaled sample for the projection.

    ``X[rows]`` are the training rows, in the order of ``seg_train``; columns are read one
    at a time so memory stays at one column plus the sample, whatever the training size.
    Every mean is bounded (engine.privacy): values clipped at the ``minimum``-th smallest and
    largest, rounded to one customer's influence; a segment below ``minimum`` rows has none.
    The sample is never drawn point by point (:func:`_projection` shows cells of ``minimum``).
    """
    seg_train = np.asarray(seg_train, dtype=np.int64)
    counts = np.bincount(seg_train, minlength=k)
    means = np.full((k, X.shape[1]), np.nan)
    overall = np.full(X.shape[1], np.nan)
    for j in range(X.shape[1]):
        col = X[rows, j].astype(np.float64)
        col = np.where(np.isfinite(col), col, fill[j])
        found = finite_and_bounds(col, minimum)   # col is imputed: every value finite
        if found is None:
            continue
        _, lo, hi = found
        clipped = np.clip(col, lo, hi)
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.bincount(seg_train, weights=clipped, minlength=k) / counts
        means[:, j] = coarse_group_means(raw[:, None], counts, np.array([lo]), np.array([hi]),
                                         minimum, rows_per_customer)[:, 0]
        overall[j] = clipped_mean(clipped, lo, hi, rows_per_customer)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows.size, size=min(sample, rows.size), replace=False))
    Xs = X[rows[pick]].astype(np.float64)
    Xs = np.where(np.isfinite(Xs), Xs, fill)
    return TrainEvidence(
        evaluated_on=evaluated_on,
        y=np.asarray(y_eval, dtype=np.float64), p=np.asarray(p_eval, dtype=np.float64),
        segment_eval=np.asarray(seg_eval, dtype=np.int64),
        segment_counts=counts, segment_means=means, overall_means=overall, minimum=minimum,
        sample_z=(Xs - mean) / scale, sample_segment=seg_train[pick],
    )


def _shown(value: float) -> float | None:
    """A bounded mean for a table cell; None (shown blank) where none may be shown."""
    return None if not np.isfinite(value) else float(value)


def _roc(plt: Any, y: np.ndarray, p: np.ndarray, auc: float | None, label: str) -> str:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    if fpr.size > 2000:  # thin the curve: the picture does not need every threshold
        keep = np.unique(np.linspace(0, fpr.size - 1, 2000).astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.plot(fpr, tpr, color=PALETTE[0], lw=2, label=f"model (AUC {auc:.3f})" if auc is not None else "model")
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="random (AUC 0.5)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC curve ({label})",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return figure(fig, f"ROC on the {label} rows: AUC {fmt(auc, 3)}. The dashed diagonal is a random ranking.",
                  "ROC curve")


def _gains(plt: Any, deciles: list[dict[str, Any]], base: float, label: str) -> str:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.8))
    x = [0.0] + [d["cumulative_customers_share"] for d in deciles]
    g = [0.0] + [d["cumulative_gain"] or 0.0 for d in deciles]
    ax.plot(x, g, marker="o", color=PALETTE[0], lw=2, label="model")
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="random")
    if 0 < base < 1:
        ax.plot([0, base, 1], [0, 1, 1], ls=":", color=PALETTE[2], lw=1, label="perfect")
    ax.set(xlabel="share of customers contacted (highest propensity first)", ylabel="share of positives captured",
           title=f"Cumulative gains ({label})", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right")
    lifts = [d["lift"] or 0.0 for d in deciles]
    ax2.bar([d["decile"] for d in deciles], lifts, color=PALETTE[0])
    ax2.axhline(1.0, ls="--", color="#999", lw=1)
    for d, v in zip(deciles, lifts):
        ax2.text(d["decile"], v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax2.set(xlabel="decile (1 = highest predicted propensity)", ylabel="lift (actual rate / base rate)",
            title="Lift by decile", xticks=[d["decile"] for d in deciles])
    top = deciles[0]["lift"] if deciles else None
    return figure(fig, f"Contacting the top 10% finds {fmt(deciles[0]['cumulative_gain'] if deciles else None, 3)} "
                       f"of all positives; top-decile lift {fmt(top, 2)} (1.0 = random).", "gains and lift chart")


def _calibration(plt: Any, y: np.ndarray, p: np.ndarray, label: str) -> str:
    # engine.privacy: a calibration bin of fewer than 20 evaluation customers is not drawn.
    bins = [b for b in calibration_table(y, p) if b["customers"] >= MIN_CUSTOMERS]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="perfectly calibrated")
    sizes = np.array([b["customers"] for b in bins], dtype=np.float64)
    ax.scatter([b["mean_predicted"] for b in bins], [b["actual_rate"] for b in bins],
               s=20 + 180 * sizes / max(1.0, sizes.max()), color=PALETTE[1], zorder=3, label="bins (size = customers)")
    ax.plot([b["mean_predicted"] for b in bins], [b["actual_rate"] for b in bins], color=PALETTE[1], lw=1)
    ax.set(xlabel="mean predicted propensity", ylabel="actual rate", title=f"Calibration ({label})",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    return figure(fig, "Actual rate against mean prediction in ten equal-width bins of the prediction; "
                       "points on the diagonal are well calibrated.", "calibration plot")


def _segment_sizes(plt: Any, ev: TrainEvidence) -> str:
    k = ev.segment_counts.size
    total = max(1, int(ev.segment_counts.sum()))
    rate = _segment_rates(ev)
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    bars = ax.bar(range(k), ev.segment_counts, color=[PALETTE[i % len(PALETTE)] for i in range(k)])
    for i, b in enumerate(bars):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{ev.segment_counts[i] / total:.0%}",
                ha="center", va="bottom", fontsize=7)
    if not np.isnan(rate).all():
        ax2 = ax.twinx()
        ax2.plot(range(k), rate, "o-", color="#333", lw=1, ms=4, label=f"target rate ({_rows(ev)} rows)")
        ax2.set_ylabel("target rate")
        ax2.set_ylim(0, max(0.05, float(np.nanmax(rate)) * 1.25))
        ax2.legend(loc="upper right", fontsize=7)
    ax.set(xlabel="segment", ylabel="training customers", title="Segment sizes", xticks=range(k))
    ax.margins(y=0.18)
    return figure(fig, f"Customers per segment (training rows) with their share; the line is each segment's "
                       f"target rate ({_rows(ev)} rows).", "segment sizes")


def _rows(ev: TrainEvidence) -> str:
    """Which rows the segment target rates describe (cross-validation evaluates all of them)."""
    return {"cv": "all", "train": "training"}.get(ev.evaluated_on, ev.evaluated_on)


def _segment_rates(ev: TrainEvidence) -> np.ndarray:
    k = ev.segment_counts.size
    n = np.bincount(ev.segment_eval, minlength=k).astype(np.float64)
    pos = np.bincount(ev.segment_eval, weights=ev.y, minlength=k)
    # engine.privacy: no rate of fewer than 20 evaluation customers (a 25-customer segment
    # has about 5 holdout rows), and a rate is rounded to 1 / customers.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= MIN_CUSTOMERS, pos / n, np.nan)


def _heatmap(plt: Any, centroids: np.ndarray, features: list[str]) -> str:
    k, f = centroids.shape
    lim = max(1.0, float(np.nanmax(np.abs(centroids)))) if centroids.size else 1.0
    lim = min(lim, 3.0)
    fig, ax = plt.subplots(figsize=(min(14, 2.5 + 0.42 * f), 1.3 + 0.38 * k))
    im = ax.imshow(centroids, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(f), features, rotation=55, ha="right")
    ax.set_yticks(range(k), [f"segment {i}" for i in range(k)])
    if k * f <= 120:  # beyond that the numbers are unreadable; the table below has them
        for i in range(k):
            for j in range(f):
                ax.text(j, i, f"{centroids[i, j]:.1f}", ha="center", va="center", fontsize=6.5,
                        color="white" if abs(centroids[i, j]) > 0.6 * lim else "#222")
    fig.colorbar(im, ax=ax, label="standard deviations from the mean", shrink=0.9)
    ax.set_title("Segment profiles: standardised centroids")
    return figure(fig, "Each cell is how far a segment's centre lies from the average customer, in standard "
                       "deviations of that feature (red above, blue below the mean).", "centroid heatmap")


def projection_cells(xy: np.ndarray, segment: np.ndarray, k: int, minimum: int = MIN_CUSTOMERS,
                     grid: int = PROJECTION_GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The projected sample as a grid of cells: ``(x edges, y edges, customers per cell, the
    most common segment per cell)``, a cell of fewer than ``minimum`` customers counted 0.

    engine.privacy: a point of a scatter is one customer's features; a cell is drawn only when
    it holds ``minimum`` of them. The grid spans the 0.5 % and 99.5 % private quantiles of
    each axis (:func:`engine.privacy.private_quantiles`), never one customer's value, and no
    lone extreme customer stretches it; customers beyond it fall into the border cells.
    """
    edges = []
    for axis in range(2):
        found = private_quantiles(xy[:, axis], (0.005, 0.995), minimum, need_tails=False)
        lo, hi = (found[0.005], found[0.995]) if len(found) == 2 else (-1.0, 1.0)
        if not hi > lo:
            lo, hi = lo - 1.0, lo + 1.0
        edges.append(np.linspace(lo, hi, grid + 1))
    ix = np.clip(np.searchsorted(edges[0], xy[:, 0], side="right") - 1, 0, grid - 1)
    iy = np.clip(np.searchsorted(edges[1], xy[:, 1], side="right") - 1, 0, grid - 1)
    per_segment = np.zeros((k, grid, grid), dtype=np.int64)
    np.add.at(per_segment, (np.asarray(segment, dtype=np.int64), ix, iy), 1)
    cells = per_segment.sum(axis=0)
    cells[cells < minimum] = 0
    return edges[0], edges[1], cells, per_segment.argmax(axis=0)


def _projection(plt: Any, ev: TrainEvidence, centroids: np.ndarray) -> str:
    from matplotlib.colors import to_rgba

    k = centroids.shape[0]
    xy, (cxy,), ratio = pca_2d(ev.sample_z, centroids)
    fig, ax = plt.subplots(figsize=(6.2, 4.8))
    xe, ye, cells, top = projection_cells(xy, ev.sample_segment, k, ev.minimum)
    image = np.zeros((cells.shape[1], cells.shape[0], 4))
    shown = cells > 0
    if shown.any():
        weight = np.log1p(cells) / np.log1p(cells.max())
        for i, j in zip(*np.nonzero(shown)):
            r, g, b, _ = to_rgba(PALETTE[int(top[i, j]) % len(PALETTE)])
            image[j, i] = (r, g, b, 0.25 + 0.7 * float(weight[i, j]))
    ax.imshow(image, origin="lower", extent=(xe[0], xe[-1], ye[0], ye[-1]), aspect="auto",
              interpolation="nearest")
    for i in range(k):
        ax.scatter(cxy[i, 0], cxy[i, 1], marker="X", s=160, color=PALETTE[i % len(PALETTE)],
                   edgecolors="black", linewidths=1.2, zorder=4, label=f"segment {i}")
        ax.annotate(str(i), (cxy[i, 0], cxy[i, 1]), xytext=(6, 6), textcoords="offset points",
                    fontsize=9, fontweight="bold")
    ax.set(xlabel=f"PC 1 ({ratio[0]:.0%} of variance)", ylabel=f"PC 2 ({ratio[1]:.0%} of variance)",
           title=f"Customers in 2-D (PCA of scaled features, {xy.shape[0]:,} sampled)")
    ax.legend(loc="best", fontsize=7, markerscale=0.6, ncol=2 if k > 6 else 1)
    return figure(fig, "A random sample of training customers projected on the first two principal components "
                       "of the scaled features, as a grid of cells coloured by their most common segment (darker: "
                       f"more customers); a cell of fewer than {MIN_CUSTOMERS} customers is left blank, so no "
                       "customer is drawn alone. Crosses mark the segment centres.",
                  "2-D projection by segment")


def _drivers_chart(plt: Any, found: list[dict[str, Any]], top: int = 15) -> str:
    shown = found[:top][::-1]  # strongest at the top of a horizontal bar chart
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.28 * max(1, len(shown))))
    values = [d["log_odds_per_sd"] for d in shown]
    ax.barh([d["feature"] for d in shown], values,
            color=[PALETTE[5] if v > 0 else PALETTE[0] for v in values])
    ax.axvline(0.0, color="#333", lw=0.8)
    units = {d["unit"] for d in shown}
    numeric_unit = "standard deviation" if "sd" in units else "raw unit"
    ax.set(xlabel="change in log-odds" + (f" (per {numeric_unit}; levels vs the average customer)"
                                          if "level" in units else f" per {numeric_unit}"),
           title="Propensity drivers (one scale: log-odds against the average customer)")
    levels = ("; a categorical level (column=level) is the change in log-odds of a customer at that level "
              "against the column's average training customer" if "level" in units else "")
    return figure(fig, "Strongest first, each on one scale, log-odds against the average training customer "
                       f"(vermillion raises, blue lowers): a numeric feature is the change for one {numeric_unit} "
                       f"above the average{levels}.", "propensity drivers")


def _cv_curve_chart(plt: Any, logistic: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, penalty in enumerate(dict.fromkeys(p["penalty"] for p in logistic["curve"])):
        pts = [p for p in logistic["curve"] if p["penalty"] == penalty]
        ax.plot([p["C"] for p in pts], [p["log_loss"] for p in pts], "o-", ms=3, color=PALETTE[i],
                label=f"{penalty.upper()} penalty")
    ax.axvline(logistic["C"], ls="--", color="#333", lw=1,
               label=f"chosen: {str(logistic['penalty']).upper()} C={logistic['C']:.3g}")
    ax.set_xscale("log")
    ax.set(xlabel="C (inverse regularisation strength)", ylabel="out-of-fold log loss",
           title=f"Regularisation chosen by {logistic.get('folds')}-fold CV")
    ax.legend(loc="best", fontsize=7)
    return figure(fig, f"Out-of-fold log loss of each C over {logistic.get('search_rows', 0):,} rows "
                       f"({'a uniform sample' if logistic.get('search_sampled') else 'all training rows'}); "
                       "lower is better. The final model is refitted on every labelled row at the chosen C.",
                  "cross-validation curve")


#: How the evaluation rows are named on the page (``evaluated_on`` keeps the short key).
SHOWN = {"holdout": "holdout", "cv": "out-of-fold", "train": "training"}


def _columns_paragraph(model: Any) -> str:
    """Every feature with its kind and every column left out with the reason; rows without a target."""
    from engine.models.explain import column_summary

    lines = column_summary(model)
    return ("<h2>Columns</h2><pre id=\"columns\">" + "\n".join(esc(line.strip()) for line in lines) + "</pre>")


def render_train_report(model: Any, ev: TrainEvidence, model_path: str = "") -> tuple[str, dict[str, Any]]:
    """The report's HTML and its data (metrics, decile table, segments) as a dict."""
    features = list(model.features)
    metrics = model.metrics or {}
    label = ev.evaluated_on
    ev_metrics = metrics.get(label, {})
    auc = ev_metrics.get("auc")
    base = float(ev.y.mean()) if ev.y.size else 0.0
    # engine.privacy: each group of the gains table holds at least 20 evaluation customers.
    deciles = gains_table(ev.y, ev.p, min(10, ev.y.size // MIN_CUSTOMERS)) if ev.y.size >= MIN_CUSTOMERS else []
    rates = _segment_rates(ev)
    eval_n = np.bincount(ev.segment_eval, minlength=model.k)
    seg_p = np.bincount(ev.segment_eval, weights=ev.p, minlength=model.k) / np.maximum(1, eval_n)
    total = max(1, int(ev.segment_counts.sum()))
    segments = [
        {"segment": i, "customers": int(ev.segment_counts[i]), "share": float(ev.segment_counts[i] / total),
         "actual_rate": None if np.isnan(rates[i]) else float(rates[i]), "mean_predicted": mean_of_shares(float(seg_p[i]), int(eval_n[i]))
         if eval_n[i] >= MIN_CUSTOMERS else None,
         "feature_means": {f: _shown(ev.segment_means[i, j]) for j, f in enumerate(features)}}
        for i in range(model.k)
    ]
    from engine.models.explain import drivers, feature_counts, features_text, segment_descriptions
    from engine.models.target import propensity_label

    found = drivers(model)
    described = segment_descriptions(model)
    for s, d in zip(segments, described):
        s["description"] = d["description"]
    logistic = (model.params or {}).get("logistic") or {}
    data = {"kind": "train", "model": model_path, "content_hash": model.content_hash,
            "evaluated_on": label, "metrics": metrics, "base_rate": base, "deciles": deciles,
            "segments": [{k: v for k, v in s.items() if k != "feature_means"} for s in segments],
            "drivers": found, "logistic": logistic, "counts": feature_counts(model),
            "propensity_of": propensity_label(model)}

    body: list[str] = [f"<p id=\"propensity-of\">Propensity is {esc(propensity_label(model))}: the probability, "
                       "for each customer, that the target takes its positive class.</p>",
                       _columns_paragraph(model)]
    rows_metric = [
        ("rows", ev_metrics.get("rows")), ("AUC", auc), ("log loss", ev_metrics.get("log_loss")),
        ("accuracy at 0.5", ev_metrics.get("accuracy")), ("base rate", ev_metrics.get("base_rate")),
        ("top-decile lift", deciles[0]["lift"] if deciles else None),
        ("K-means inertia per row", metrics.get("kmeans_inertia_per_row", metrics.get("kmeans_inertia_train_per_row"))),
    ]
    train_m = metrics.get("train", {})
    shown = SHOWN.get(label, label)
    evaluation = metrics.get("evaluation") or {}
    body.append(f"<h2>{'Cross-validated' if label == 'cv' else label.capitalize()} metrics</h2>")
    if label == "cv":
        body.append(f"<p>Out-of-fold predictions of {evaluation.get('folds', '?')}-fold cross-validation over "
                    f"{evaluation.get('rows', ev.y.size):,} rows, at the chosen regularisation; the model itself "
                    "is refitted on every labelled row (its in-sample metrics are the train column).</p>")
    elif label == "holdout":
        body.append(f"<p>A fit on the other rows only, scored on the {evaluation.get('rows', ev.y.size):,} held-out "
                    "rows; the model itself is then refitted on every labelled row (train column).</p>")
    body.append(table(["metric", "cross-validated" if label == "cv" else label, "train"],
                      [(n, v, train_m.get(key)) for (n, v), key in zip(
                          rows_metric, ["rows", "auc", "log_loss", "accuracy", "base_rate", None, None])],
                      css_id="metrics"))
    with pyplot() as plt:
        body.append("<h2>How well the propensity ranks customers</h2>")
        if 0 < ev.y.sum() < ev.y.size:
            body.append('<div class="grid">' + _roc(plt, ev.y, ev.p, auc, shown)
                        + _calibration(plt, ev.y, ev.p, shown) + "</div>")
        body.append('<div class="grid">' + _gains(plt, deciles, base, shown) + "</div>")
        body.append(f"<p>Decile table ({shown} predictions ranked by propensity; base rate {base:.4f}).</p>")
        body.append(table(
            ["decile", "customers", "positives", "actual rate", "mean predicted", "lift", "cumulative gain"],
            [(d["decile"], d["customers"], d["positives"], d["actual_rate"], d["mean_predicted"], d["lift"],
              d["cumulative_gain"]) for d in deciles], css_id="deciles"))
        body.append("<h2>What drives the propensity</h2>")
        if logistic.get("C") is not None:
            # In words as well: a chart's legend is an image, which no search or reader finds.
            how = ("fixed with --C" if logistic.get("selected_by") == "fixed" else
                   f"chosen by {logistic.get('folds')}-fold cross-validation ({logistic.get('criterion', 'log loss')}"
                   f" over {logistic.get('search_rows', 0):,} rows)")
            body.append(f"<p>Logistic regression: {str(logistic.get('penalty', 'l2')).upper()} penalty, "
                        f"C={logistic['C']:.4g}, {how}.</p>")
        body.append('<p id="reading-reasons">Reading reason codes (<code>engine score --reasons N</code>): '
                    "<code>reason_1 = tenure_months:low</code> means this customer's tenure is below the average "
                    "training customer's and that, of all features, it raises the propensity most; "
                    "<code>reason_1_contribution</code> (with <code>--reason-contributions</code>) is how much it "
                    "adds to the log-odds, so the contributions of all features sum to the customer's logit "
                    "minus the average customer's.</p>")
        charts = _drivers_chart(plt, found)
        if len(logistic.get("curve") or []) > 1:
            charts += _cv_curve_chart(plt, logistic)
        body.append('<div class="grid">' + charts + "</div>")
        centroids = np.asarray(model.centroids, dtype=np.float64)
        body.append("<h2>Segments</h2>")
        body.append(table(["segment", "how it differs from the average customer (standard deviations)",
                           "customers", "share"],
                          [(s["segment"], s["description"], s["customers"], s["share"]) for s in segments],
                          left=2, css_id="segment-descriptions"))
        body.append('<div class="grid">' + _segment_sizes(plt, ev) + _projection(plt, ev, centroids) + "</div>")
        if features:
            body.append(_heatmap(plt, centroids, features))
        from engine.report.levels import training_levels_section

        body.extend(training_levels_section(plt, model))
    head = ["feature", *[f"segment {i}" for i in range(model.k)], "all"]
    rows = [("customers", *[s["customers"] for s in segments], total),
            ("share", *[s["share"] for s in segments], 1.0),
            (f"actual rate ({_rows(ev)} rows)", *[s["actual_rate"] for s in segments], base),
            ("mean predicted", *[s["mean_predicted"] for s in segments],
             mean_of_shares(float(ev.p.mean()), ev.p.size) if ev.p.size >= ev.minimum else None)]
    rows += [(f, *[_shown(ev.segment_means[i, j]) for i in range(model.k)], _shown(ev.overall_means[j]))
             for j, f in enumerate(features)]
    body.append("<p>Per-segment feature means in original units (training rows, nulls imputed), each over values "
                f"clipped at the {ev.minimum}th smallest and largest and rounded to one customer's influence "
                "(docs/safety.md), so no mean gives a customer's value away.</p>")
    body.append(table(head, rows, css_id="segment-profiles", digits=3))
    params = model.params or {}
    created = model.created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    subtitle = (f"model {model_path or '?'} · hash {model.content_hash[:19]} · created {created} · "
                f"{features_text(model)} · k={model.k} · propensity = {propensity_label(model)} · "
                f"input {params.get('input', '?')}")
    return page("Training report", subtitle, body, data), data


def write_train_report(model: Any, ev: TrainEvidence, path: str | Path, model_path: str = "") -> dict[str, Any]:
    """Write ``report.html`` (atomically) and return its data dict."""
    text, data = render_train_report(model, ev, model_path)
    write_atomic(Path(path), text.encode("utf-8"))
    return data
