"""The ``python_function`` flavour's loader: ``mlflow.pyfunc.load_model(uri).predict(df)`` returns the engine's scores.

MLflow calls :func:`_load_pyfunc` with the local copy of the model's ``engine/`` data
directory. Nothing here imports mlflow: the same module works in any environment that
has the engine (``pip install 'customer-scoring-engine[mlflow]'``).
"""

from __future__ import annotations

from typing import Any


class EnginePyfunc:
    """What ``PyFuncModel.predict`` calls: ``Model.score`` of the verified engine model."""

    def __init__(self, path: str) -> None:
        from engine.api import load_model

        self.model = load_model(path)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Scores of a pandas DataFrame (or pyarrow Table): id, segment, segment_distance, propensity.

        ``params`` may hold ``reasons`` (int) and ``keep`` (comma list), as ``Model.score`` takes them.
        """
        options = dict(params or {})
        return self.model.score(model_input, reasons=int(options.get("reasons", 0) or 0),
                                keep=options.get("keep", ()) or ())


def _load_pyfunc(path: str) -> EnginePyfunc:
    return EnginePyfunc(path)
