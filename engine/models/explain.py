"""What a model says about customers: propensity drivers and segment descriptions.

Both are read off the artifact's arrays, so every model gets them, trained or imported,
old or new (``engine model show`` computes them at load; ``model.json`` of a model
written by this version carries them too, as ``drivers`` and ``segments``).

* **Drivers**: the propensity head's coefficients in its scaled space, i.e. the change
  in log-odds per standard deviation of the feature (for a head that standardises: every
  engine-trained model and imported pipelines with a ``StandardScaler``), ranked by
  magnitude, with sign. Raw-unit coefficients would rank by the features' units instead.
* **Segment descriptions**: the features where a segment's centroid departs most from
  the average customer, in standard deviations (the segmenter's scaled space, where the
  average customer sits at 0), e.g. ``recency_days +1.4 sd, purchases_12m -0.9 sd``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Features named in a segment's description.
DESCRIBE_TOP = 3


def _scaled(pre: Any) -> bool:
    """Whether a head standardises (any scale other than 1): then its units are SDs."""
    return not np.all(np.asarray(pre.scale) == 1.0)


def feature_counts(model: Any) -> dict[str, int]:
    """The model's feature counts, the one source of every count shown (summary, `model show`, report, JSON).

    ``features`` counts input columns used (numeric, date and categorical alike); ``levels``
    counts the categorical columns' kept levels (their ``(other)`` and ``(missing)`` aside).
    """
    dates = len(model.date_features)
    return {"features": len(model.columns), "numeric": len(model.features) - dates, "date": dates,
            "categorical": len(model.categoricals),
            "levels": int(sum(len(c.levels) for c in model.categoricals))}


def features_text(model: Any) -> str:
    """``13 features (9 numeric, 4 categorical)``: :func:`feature_counts` in words."""
    c = feature_counts(model)
    parts = [f"{c[kind]} {kind}" for kind in ("numeric", "date", "categorical") if c[kind]]
    return f"{c['features']} feature{'s' if c['features'] != 1 else ''}" + (
        f" ({', '.join(parts)})" if len(parts) > 1 else "")


def column_summary(model: Any) -> list[str]:
    """Every feature with its kind, then every input column training left out and why."""
    dates = set(model.date_features)
    lines = [f"  {features_text(model)} used:"]
    for name, kind in zip(model.features, model.feature_types):
        what = f"date ({kind}), days before {model.as_of}" if name in dates else f"numeric ({kind})"
        lines.append(f"    {name:<28} {what}")
    for cat in model.categoricals:
        lines.append(f"    {cat.name:<28} categorical ({cat.type}), {len(cat.levels)} level(s) + other + missing")
    columns = (model.params or {}).get("columns") or {}
    left = columns.get("left_out") or []
    if left:
        lines.append(f"  {len(left)} column(s) left out:")
        lines += [f"    {c.get('name')!s:<28} {c.get('reason')}" for c in left if isinstance(c, dict)]
    hints = [h for h in columns.get("hints") or [] if isinstance(h, dict)]
    if hints:
        lines.append("  hint:")
        lines += [f"    {h.get('name')!s:<28} {h.get('hint')}" for h in hints]
    null_target = (model.params or {}).get("rows_null_target")
    if null_target:
        lines.append(f"  {null_target:,} row(s) with a null target were left out of training")
    return lines


def level_shares(model: Any) -> dict[str, list[float]]:
    """Training share of every level of each categorical column (0 where fewer than 20 customers)."""
    prof = ((model.profile or {}).get("categoricals") or {}) if isinstance(model.profile, dict) else {}
    out = {}
    for cat in model.categoricals:
        shares = (prof.get(cat.name) or {}).get("shares") if isinstance(prof.get(cat.name), dict) else None
        # Numbers in [0, 1] only: anything else in a (forged) profile counts as no shares, never a crash.
        ok = (isinstance(shares, list) and len(shares) == cat.n_levels
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in shares))
        out[cat.name] = [float(v) for v in shares] if ok else [0.0] * cat.n_levels
    return out


def _level_items(model: Any) -> list[tuple[str, str, int, int]]:
    """``(column, label, global index, local index)`` of every named categorical level."""
    items, base = [], 0
    for cat in model.categoricals:
        for i in range(cat.n_levels):
            items.append((cat.name, cat.label(i), base + i, i))
        base += cat.n_levels
    return items


def level_effects(model: Any) -> dict[str, list[float]]:
    """Per categorical column, each level's log-odds against the column's training-average customer.

    The one scale on which levels are shown (drivers, the report's level table): the raw
    one-hot coefficient minus the training-share-weighted mean of its column's coefficients,
    so 0 is the average customer, as it is for a standardised numeric feature.
    """
    if not model.categoricals:
        return {}
    w = np.asarray(model.cat_coef, dtype=np.float64) * np.asarray(model.cat_onehot, dtype=np.float64)
    shares = level_shares(model)
    out, start = {}, 0
    for cat in model.categoricals:
        share = np.asarray(shares[cat.name])
        block = w[start:start + cat.n_levels]
        mean = float(block @ share / share.sum()) if share.sum() > 0 else float(block.mean())
        out[cat.name] = [float(v) - mean for v in block]
        start += cat.n_levels
    return out


def drivers(model: Any) -> list[dict[str, Any]]:
    """Every feature, strongest first: ``{"feature", "log_odds_per_sd", "direction"}``.

    Ties keep the feature order. ``log_odds_per_sd`` is the coefficient of the head's
    scaled space; for an imported head without a scaler that space is raw units, and
    ``unit`` says so.
    """
    coef = np.asarray(model.coef, dtype=np.float64)
    unit = "sd" if _scaled(model.propensity) else "raw unit"
    order = sorted(range(coef.size), key=lambda j: (-abs(coef[j]), j))
    out = [{"feature": model.features[j], "log_odds_per_sd": round(float(coef[j]), 6),
            "direction": "raises" if coef[j] > 0 else "lowers" if coef[j] < 0 else "none", "unit": unit}
           for j in order]
    if not model.categoricals:
        return out
    effects = level_effects(model)
    shares = level_shares(model)
    levels = []
    for name, label, _g, i in _level_items(model):
        if shares[name][i] <= 0:
            continue  # a level with fewer than 20 training customers is not named
        effect = effects[name][i]
        levels.append({"feature": f"{name}={label}", "log_odds_per_sd": round(effect, 6),
                       "direction": "raises" if effect > 0 else "lowers" if effect < 0 else "none",
                       "unit": "level"})
    return sorted(out + levels, key=lambda d: -abs(d["log_odds_per_sd"]))


def segment_descriptions(model: Any, top: int = DESCRIBE_TOP) -> list[dict[str, Any]]:
    """Per segment: ``{"segment", "description", "top": [[feature, sd], ...]}``.

    ``top`` holds the ``top`` features with the largest absolute departure of the
    centroid from the average customer (ties: lower feature index first).
    """
    centroids = np.asarray(model.centroids, dtype=np.float64)
    unit = "sd" if _scaled(model.segmenter) else "units"
    out = []
    levels = _level_items(model) if model.categoricals else []
    shares = level_shares(model) if levels else {}
    cat_c = np.asarray(model.cat_centroids, dtype=np.float64) if levels else None
    ranked: list[list[tuple[float, int, str, float, str]]] = []
    for s, c in enumerate(centroids):
        # Numeric departures in sd; a level's departure is its segment share against its
        # overall share, in the sd of a 0/1 indicator, so that both rank on one scale.
        cands: list[tuple[float, int, str, float, str]] = [
            (abs(c[j]), j, model.features[j], float(c[j]), f"{model.features[j]} {c[j]:+.1f} {unit}")
            for j in range(c.size)]
        for name, label, g, i in levels:
            overall = shares[name][i]
            if overall <= 0 or overall >= 1:
                continue  # fewer than 20 training customers (or every one): not described
            seg_share = float(np.clip(cat_c[s, g], 0.0, 1.0))
            z = (seg_share - overall) / float(np.sqrt(overall * (1 - overall)))
            cands.append((abs(z), c.size + g, f"{name}={label}", round(z, 4),
                          f"{name} = {label}: {seg_share:.0%} vs {overall:.0%} overall"))
        ranked.append(sorted(cands, key=lambda t: (-t[0], t[1])))
    # Two segments never read alike: where descriptions coincide, each names more features
    # (up to all it has) until they differ; the rest keep ``top``.
    counts = [top] * len(ranked)
    texts = _descriptions(ranked, counts)
    for _ in range(max((len(r) for r in ranked), default=0)):
        same = [i for i, t in enumerate(texts) if texts.count(t) > 1 and counts[i] < len(ranked[i])]
        if not same:
            break
        for i in same:
            counts[i] += 1
        texts = _descriptions(ranked, counts)
    for s, (chosen, text) in enumerate(zip((r[:m] for r, m in zip(ranked, counts)), texts)):
        pairs = [[name, round(float(v), 4)] for _, _, name, v, _ in chosen]
        out.append({"segment": s, "description": text, "top": pairs})
    return out


def _descriptions(ranked: list[list[tuple[float, int, str, float, str]]], counts: list[int]) -> list[str]:
    return [", ".join(text for *_, text in r[:m]) for r, m in zip(ranked, counts)]
