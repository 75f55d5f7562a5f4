"""The numbers behind the report charts: gains by decile, calibration, a 2-D projection.

Plain NumPy on host arrays; no plotting here, so the numbers can be tested on their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def gains_table(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """Customers ranked by predicted propensity, highest first, cut into ``n_bins`` equal groups.

    Each row: the decile (1 = highest predicted), its customers and positives, the actual
    rate, the mean predicted propensity, the lift over the base rate and the cumulative
    share of all positives captured down to that decile (the gains curve).
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.size == 0:
        return []
    # A stable sort on -p keeps ties in input order, so the table is deterministic.
    order = np.argsort(-p, kind="stable")
    base = y.mean()
    positives = y.sum()
    rows, captured, seen = [], 0.0, 0
    for i, idx in enumerate(np.array_split(order, min(n_bins, y.size)), start=1):
        pos = float(y[idx].sum())
        captured += pos
        seen += idx.size
        rate = pos / idx.size if idx.size else 0.0
        rows.append({
            "decile": i,
            "customers": int(idx.size),
            "positives": int(pos),
            "actual_rate": rate,
            "mean_predicted": float(p[idx].mean()) if idx.size else 0.0,
            "lift": rate / base if base > 0 else None,
            "cumulative_customers_share": seen / y.size,
            "cumulative_gain": captured / positives if positives > 0 else None,
        })
    return rows


def calibration_table(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """Actual rate against mean predicted propensity in equal-width bins of the prediction."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    pred = np.bincount(idx, weights=p, minlength=n_bins)
    act = np.bincount(idx, weights=y, minlength=n_bins)
    return [
        {"bin": f"{b / n_bins:.1f}-{(b + 1) / n_bins:.1f}", "customers": int(c),
         "mean_predicted": float(pred[b] / c), "actual_rate": float(act[b] / c)}
        for b, c in enumerate(counts) if c > 0
    ]


def pca_2d(Z: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Project ``Z`` (and ``others``, e.g. centroids) on the first two principal axes of ``Z``.

    Returns the projected ``Z``, the projected ``others`` and the explained variance
    ratio of the two axes. Signs are fixed (largest loading positive) for stable pictures.
    """
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] == 0:
        # No numeric feature (a model of categorical columns only): nothing to project.
        return (np.zeros((Z.shape[0], 2)), [np.zeros((np.asarray(o).shape[0], 2)) for o in others],
                np.zeros(2))
    mean = Z.mean(axis=0)
    _, s, vt = np.linalg.svd(Z - mean, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:  # a single feature: the second axis is flat
        axes = np.vstack([axes, np.zeros_like(axes)])
        s = np.concatenate([s, [0.0]])
    signs = np.sign(axes[np.arange(2), np.argmax(np.abs(axes), axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    total = float((s ** 2).sum()) or 1.0
    ratio = (s[:2] ** 2) / total
    return (Z - mean) @ axes.T, [(np.asarray(o, dtype=np.float64) - mean) @ axes.T for o in others], ratio
