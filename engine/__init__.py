"""Batch scoring engine for customer data: K-means segments and logistic propensity.

The library is the CLI's twin (see :mod:`engine.api`)::

    import engine
    model = engine.load_model("models/churn")
    scores = model.score(frame, reasons=3)        # pandas or Arrow in, the same kind out
    summary = engine.score("data/customers", "models/churn", "scores/tonight", overwrite=True)

Failures raise :class:`EngineError` subclasses whose ``exit_code`` is the CLI's.
Importing this package touches no GPU library and imports neither NumPy nor pyarrow:
CuPy, cuML and dask-cuda are imported lazily inside :mod:`engine.backends`, so that
dask-cuda can still place one worker per GPU.
"""

__version__ = "0.1.0"

from engine.api import (  # noqa: E402
    Model,
    ScoreSummary,
    TrainSummary,
    load_model,
    recommend,
    rules,
    rules_plan,
    score,
    score_plan,
    train,
)
from engine.errors import (  # noqa: E402
    EXIT_CODES,
    BackendError,
    BadRowsError,
    ClusterError,
    DriftAlert,
    EngineError,
    InputError,
    ModelError,
    OutputError,
    UsageError,
)

__all__ = [
    "EXIT_CODES", "BackendError", "BadRowsError", "ClusterError", "DriftAlert", "EngineError", "InputError",
    "Model", "ModelError", "OutputError", "ScoreSummary", "TrainSummary", "UsageError", "__version__",
    "load_model", "recommend", "rules", "rules_plan", "score", "score_plan", "train",
]
