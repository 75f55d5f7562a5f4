"""The training report of a model with offer heads: one page for the offer family.

Per head: positive customers, base rate, the chosen C, shrinkage, cross-validated AUC, log
loss and calibration error (ECE), value, cost, budget, and its top drivers (calibrated
log-odds per standard deviation of a numeric feature); then reliability curves (mean
predicted against observed acceptance per bin of out-of-fold propensities). Every bin shown
holds at least 20 customers (engine/privacy.py); smaller bins are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.models.artifact import ScoringModel
from engine.report.html import figure, page, pyplot, table

#: Heads drawn as reliability curves (the table lists all).
MAX_CURVES = 24


def drivers(model: ScoringModel, t: int, top: int = 3) -> str:
    """The head's strongest numeric features, calibrated log-odds per sd, e.g. ``age +0.41``."""
    if not model.features:
        return ""
    w = np.asarray(model.head_coef)[t] * float(np.asarray(model.head_platt)[t, 0])
    order = np.argsort(-np.abs(w), kind="stable")[:top]
    return ", ".join(f"{model.features[j]} {w[j]:+.2f}" for j in order if w[j] != 0)


def write_offers_report(model: ScoringModel, reliability: list[list[tuple[float, float, int]]], path: str,
                        *, model_path: str) -> dict[str, Any]:
    rows = []
    for t, o in enumerate(model.offers):
        cv = o.get("cv") or {}
        rows.append([o["id"], o["target"], o.get("positives"), o.get("base_rate"), o.get("C"), o.get("shrink"),
                     cv.get("auc"), cv.get("log_loss"), cv.get("ece"), o.get("value"), o.get("cost"),
                     o.get("budget"), drivers(model, t), ", ".join(o.get("exclude_features") or ()) or "–"])
    body = ["<h2>Offer heads</h2>",
            "<p>One calibrated logistic head per offer on the shared features; C per head by 5-fold "
            "cross-validation, Platt calibration on out-of-fold predictions, heads with fewer than 200 positive "
            "customers shrunk toward their base rate (shrink = positives / 200). Metrics are out of fold.</p>",
            table(["offer", "target", "positive customers", "base rate", "C", "shrink", "CV AUC", "log loss", "ECE",
                   "value", "cost", "budget", "top drivers (log-odds per sd)", "excluded features"], rows, left=2,
                  css_id="offers")]
    curves = [(o["id"], r) for o, r in zip(model.offers, reliability) if r][:MAX_CURVES]
    if curves:
        with pyplot() as plt:
            cols = min(4, len(curves))
            nrows = -(-len(curves) // cols)
            fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.4 * nrows), squeeze=False)
            for ax in axes.ravel()[len(curves):]:
                ax.axis("off")
            for ax, (name, pts) in zip(axes.ravel(), curves):
                p = [a for a, _, _ in pts]
                y = [b for _, b, _ in pts]
                hi = max(max(p), max(y), 0.05) * 1.05
                ax.plot([0, hi], [0, hi], color="#bbb", lw=1)
                ax.plot(p, y, marker="o", ms=3)
                ax.set_title(name)
                ax.set_xlim(0, hi)
                ax.set_ylim(0, hi)
            body.append(figure(fig, "Reliability: mean predicted (x) against observed acceptance (y), out of fold; "
                                    "bins of fewer than 20 customers are left out", "reliability curves"))
    data = {"offers": [dict(zip(["offer", "target", "positives", "base_rate", "C", "shrink", "auc", "log_loss", "ece"],
                                r[:9])) for r in rows]}
    Path(path).write_text(page(f"Training report: {len(model.offers)} offers", f"model {model_path} "
                               f"({model.content_hash[:19]})", body, data), encoding="utf-8")
    return data


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 10, minimum: int = 20) -> list[tuple[float, float, int]]:
    """Equal-width bins of ``p``: (mean predicted, observed rate, customers), bins under ``minimum`` left out."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        if n >= minimum:
            out.append((float(p[sel].mean()), float(y[sel].mean()), n))
    return out
