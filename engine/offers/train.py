"""``engine train --offers``: the segmenter once, one calibrated logistic head per offer, one artifact.

Shares everything before the fit with the single-target training (reading, levels, dates,
imputation and scaling statistics, the private K-means): the heads are fitted on the same
design matrix ``Z`` (scaled numeric columns and one-hot levels). Then
(:mod:`engine.offers.heads`): C per head by k-fold CV in one pass over the folds for all
heads; Platt calibration per head on the out-of-fold logits; shrinkage of rare heads
toward their base rate; the final fit of every head on every labelled row. The model's
primary head (``coef``, what ``engine score`` scores) is the first offer's uncalibrated head.

Per-head metrics (``offers[i].cv``) are cross-validated: AUC, log loss and ECE of the
calibrated out-of-fold propensities on the searched rows (Platt is fitted on those same
out-of-fold logits, a mild optimism for the calibration figures only; AUC is unaffected,
the calibration being monotone).

Privacy and statistics: a head whose positive customers (distinct ids) number fewer than
20, or whose negative customers do, is refused by name (exit 3).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import InputError
from engine.offers import heads as hd
from engine.offers.catalogue import Catalogue


def targets_matrix(table: pa.Table, catalogue: Catalogue, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``Y`` (n, T) 0/1 and ``known`` (n, T): the offers' targets (owned when 1/true or == positive)."""
    from engine.jobs.train import binary_target

    n, T = table.num_rows, len(catalogue.offers)
    Y = np.zeros((n, T))
    known = np.zeros((n, T))
    for t, offer in enumerate(catalogue.offers):
        y, valid = binary_target(table, offer.target, source, offer.positive)
        Y[:, t], known[:, t] = y, valid
    return Y, known


def refuse_small_heads(Y: np.ndarray, known: np.ndarray, ids: pa.ChunkedArray | None, catalogue: Catalogue,
                       minimum: int) -> np.ndarray:
    """Positive customers per head (distinct ids); refuse any head with fewer than ``minimum`` on either side."""
    positives = np.zeros(Y.shape[1], dtype=np.int64)
    small = []
    for t, offer in enumerate(catalogue.offers):
        pos = (Y[:, t] > 0) & (known[:, t] > 0)
        neg = (Y[:, t] == 0) & (known[:, t] > 0)
        if ids is not None:
            n_pos = pc.count_distinct(ids.filter(pa.array(pos))).as_py()
            n_neg = pc.count_distinct(ids.filter(pa.array(neg))).as_py()
        else:
            n_pos, n_neg = int(pos.sum()), int(neg.sum())
        positives[t] = n_pos
        if n_pos < minimum or n_neg < minimum:
            small.append(f"{offer.id} ({offer.target}: {n_pos} positive, {n_neg} negative)")
    if small:
        raise InputError(f"offer head(s) {', '.join(small)} have fewer than {minimum} positive or negative "
                         "customers in the training rows; a head of so few customers would describe single "
                         f"customers and has no statistical footing. Remove them from {catalogue.source} or train on "
                         "more rows")
    return positives


def fit_offer_heads(Z: np.ndarray, Y: np.ndarray, known: np.ndarray, positives: np.ndarray, seed: int,
                    folds: int, search_rows: int, catalogue: Catalogue, features: list[str],
                    on_step: Any = None, mask: np.ndarray | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]], list[Any]]:
    """Coefficients ``(T, D)``, intercepts ``(T,)``, Platt pairs ``(T, 2)``, per-offer records and
    per-offer reliability bins (out of fold, for the report). ``mask`` ``(D, T)``: 0 where a head's
    coefficient is held at 0 (its excluded features), in the CV fits and the final fit alike."""
    from sklearn.metrics import roc_auc_score

    from engine.report.offers import reliability_bins

    say = on_step or (lambda _m: None)
    t0 = time.perf_counter()
    found = hd.search_heads(Z, Y, known, seed, folds=folds, max_rows=search_rows,
                            on_fold=lambda f, m: say(f"offer heads CV: fold {f + 1} of {m}"), mask=mask)
    Ys, Ks = Y[found.index], known[found.index]
    platt = hd.platt(found.oof_logit, Ys, Ks)
    base = (Y * known).sum(axis=0) / np.maximum(known.sum(axis=0), 1)
    platt, alpha = hd.shrink(platt, positives, base)
    say(f"offer heads: C chosen per head in {time.perf_counter() - t0:.1f}s; final fit of {Y.shape[1]} heads")
    params = hd.fit_heads(Z, Y, found.C, weights=known, mask=mask)
    D = Z.shape[1]
    coef, intercept = params[:D].T.copy(), params[D].copy()
    P = hd.calibrated(found.oof_logit, platt)
    records, reliability = [], []
    for t, offer in enumerate(catalogue.offers):
        sel = Ks[:, t] > 0
        y, p = Ys[sel, t], P[sel, t]
        both = 0 < y.sum() < y.size
        reliability.append(reliability_bins(y, p))
        ll = float(-np.mean(y * np.log(np.clip(p, 1e-15, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-15, 1))))
        records.append(offer.record() | {
            "positives": int(positives[t]), "base_rate": float(base[t]), "C": float(found.C[t]),
            "shrink": float(alpha[t]),
            "cv": {"auc": float(roc_auc_score(y, p)) if both else None, "log_loss": ll, "ece": hd.ece(y, p),
                   "accuracy": float(((p >= 0.5) == (y == 1)).mean()), "base_rate": float(y.mean()),
                   "rows": int(sel.sum()), "folds": found.folds},
        })
    return coef, intercept, platt, records, reliability
