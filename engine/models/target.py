"""What a propensity is the probability of: ``P(Status = bad)``.

Every place that shows a propensity (the train summary, ``engine model show``, both
reports, the score manifest, JSON events, the API) names the event through
:func:`propensity_label`, so an analyst never has to guess P(bad) from P(good).
"""

from __future__ import annotations

from typing import Any


def positive_class(model: Any) -> str:
    """The target value a propensity of 1 stands for, as text (``bad``, ``Yes``, ``1``, ``true``).

    A model trained without ``--positive`` had a 0/1 or boolean target: its positive class
    is ``1`` (``true`` for a boolean target). An imported scikit-learn head records its
    second class.
    """
    params = getattr(model, "params", None) or {}
    positive = params.get("positive")
    if positive is None:
        positive = params.get("positive_class")
    if positive is None:
        target_type = str(params.get("target_type") or "")
        return "true" if target_type == "bool" else "1"
    return str(positive)


def propensity_label(model: Any) -> str:
    """``P(<target> = <positive class>)``, e.g. ``P(Status = bad)``; ``P(positive class)`` without a target name."""
    target = getattr(model, "target", None)
    if not target:
        return f"P(class {positive_class(model)})"
    return f"P({target} = {positive_class(model)})"
