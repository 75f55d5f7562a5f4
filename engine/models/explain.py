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


def drivers(model: Any) -> list[dict[str, Any]]:
    """Every feature, strongest first: ``{"feature", "log_odds_per_sd", "direction"}``.

    Ties keep the feature order. ``log_odds_per_sd`` is the coefficient of the head's
    scaled space; for an imported head without a scaler that space is raw units, and
    ``unit`` says so.
    """
    coef = np.asarray(model.coef, dtype=np.float64)
    unit = "sd" if _scaled(model.propensity) else "raw unit"
    order = sorted(range(coef.size), key=lambda j: (-abs(coef[j]), j))
    return [{"feature": model.features[j], "log_odds_per_sd": round(float(coef[j]), 6),
             "direction": "raises" if coef[j] > 0 else "lowers" if coef[j] < 0 else "none", "unit": unit}
            for j in order]


def segment_descriptions(model: Any, top: int = DESCRIBE_TOP) -> list[dict[str, Any]]:
    """Per segment: ``{"segment", "description", "top": [[feature, sd], ...]}``.

    ``top`` holds the ``top`` features with the largest absolute departure of the
    centroid from the average customer (ties: lower feature index first).
    """
    centroids = np.asarray(model.centroids, dtype=np.float64)
    unit = "sd" if _scaled(model.segmenter) else "units"
    out = []
    for s, c in enumerate(centroids):
        order = sorted(range(c.size), key=lambda j: (-abs(c[j]), j))[:top]
        pairs = [[model.features[j], round(float(c[j]), 4)] for j in order]
        out.append({"segment": s, "description": ", ".join(f"{n} {v:+.1f} {unit}" for n, v in pairs),
                    "top": pairs})
    return out
