"""Choosing the logistic head's regularisation by stratified k-fold cross-validation.

A grid of ``C`` (inverse regularisation strength, scikit-learn's meaning) is scored by
the out-of-fold log loss: a proper scoring rule that rewards calibrated probabilities
and, on the real data sets we checked (docs/training.md), picks a C that ranks at
least as well as AUC-based selection does, where AUC's flat optimum picked extreme C
from noise (CDNOW: C=31.6; CoIL 2000 Caravan: a C that lost 0.005 test AUC).

L2 is always searched. L1 is searched too when the searched rows are few (at most
:data:`L1_MAX_ROWS`): that is where sparsity pays (Caravan, 85 correlated features,
4,000 rows: +0.011 test AUC over L2), and where its solver (saga, several times
slower than L2's lbfgs) is affordable. L1 is chosen only when it lowers the
out-of-fold log loss by :data:`L1_MIN_GAIN` (relative) or more: below that the
difference is fold noise and L2's dense solution is the safer default.

Fits run with scikit-learn on the host (warm-started along the grid), or cuML on the
GPU where installed. Large data is searched on a uniform sample of at most
``max_rows`` rows: the final fit uses every row anyway, and C barely matters once
rows outnumber features by thousands.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from engine.backends.namespace import asnumpy, is_numpy

#: Half-decades from 1e-4 to 100: strong enough to shrink 85 noisy features to a few,
#: weak enough to be unregularised on millions of rows.
DEFAULT_C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))
DEFAULT_FOLDS = 5
#: Rows the search runs on at most (a uniform sample above that).
SEARCH_MAX_ROWS = 50_000
#: L1 is searched only when the searched rows are at most this many.
L1_MAX_ROWS = 20_000
#: Relative out-of-fold log-loss improvement L1 must show over L2 to be chosen.
L1_MIN_GAIN = 0.001
#: Folds fitted at once (threads), at most one per core.
FOLD_THREADS = 8


@dataclass
class SearchResult:
    """The chosen penalty and C, the CV curve, and the out-of-fold predictions at the choice."""

    penalty: str
    C: float
    selected_by: str                 # "cv" (grid search) or "fixed" (--C; curve of one point)
    folds: int
    rows: int                        # rows the folds were drawn from
    sampled: bool                    # whether those rows are a sample of the training rows
    curve: list[dict[str, Any]] = field(default_factory=list)
    oof: np.ndarray | None = None    # out-of-fold propensities at the choice, over ``index``
    index: np.ndarray | None = None  # rows (into the searched matrix) that ``oof`` describes

    def summary(self) -> dict[str, Any]:
        """What ``model.json`` records under ``params.logistic``."""
        return {"penalty": self.penalty, "C": self.C, "selected_by": self.selected_by,
                "criterion": "out-of-fold log loss", "folds": self.folds, "search_rows": self.rows,
                "search_sampled": self.sampled, "curve": self.curve}


def _sklearn_logistic(C: float, penalty: str, seed: int, max_iter: int, warm_start: bool = False) -> Any:
    """A scikit-learn LogisticRegression for ``penalty`` on any supported scikit-learn version.

    scikit-learn 1.8 deprecates ``penalty`` for ``l1_ratio``; older versions need ``penalty``.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    solver = "saga" if penalty == "l1" else "lbfgs"
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):
        kind = {"l1_ratio": 1.0 if penalty == "l1" else 0.0}
    else:  # pragma: no cover - older scikit-learn
        kind = {"penalty": penalty}
    return LogisticRegression(C=C, solver=solver, max_iter=max_iter, random_state=seed, warm_start=warm_start,
                              **kind)


def use_cuml(xp: ModuleType) -> bool:
    """cuML fits on the GPU backend when it is installed (the caller warns otherwise)."""
    return not is_numpy(xp) and importlib.util.find_spec("cuml") is not None


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled (train, validation) index pairs; every class in every fold."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros((y.size, 1)), y))


def _path_predictions(Z: Any, y: np.ndarray, grid: list[float], penalty: str, splits: list[tuple[np.ndarray, np.ndarray]],
                      seed: int, xp: ModuleType, on_fold: Callable[[str, int, int], None]) -> np.ndarray:
    """Out-of-fold propensities ``(len(grid), n)`` for ``penalty`` over ``grid`` (ascending C)."""
    n = y.size
    oof = np.empty((len(grid), n))
    gpu = use_cuml(xp)
    if gpu:
        from cuml.linear_model import LogisticRegression as CuLogisticRegression

        for f, (tr, va) in enumerate(splits):
            on_fold(penalty, f, len(splits))
            tr_d, va_d = xp.asarray(tr), xp.asarray(va)
            y_d = xp.asarray(y[tr])
            for i, C in enumerate(grid):
                model = CuLogisticRegression(C=C, penalty=penalty, max_iter=1000, output_type="numpy")
                model.fit(Z[tr_d], y_d)
                oof[i, va] = np.asarray(model.predict_proba(Z[va_d]))[:, 1]
        return oof
    Zh = np.ascontiguousarray(asnumpy(Z))

    def fold_path(f: int) -> None:
        tr, va = splits[f]
        on_fold(penalty, f, len(splits))
        # Warm start along the path: each C starts from the previous C's solution, so
        # the whole grid costs a few cold fits. saga's looser tolerance: the path only
        # ranks the Cs; the final fit runs at the default tolerance.
        model = _sklearn_logistic(grid[0], penalty, seed, 1000, warm_start=True)
        if penalty == "l1":
            model.set_params(tol=1e-3)
        Ztr, ytr, Zva = Zh[tr], y[tr], Zh[va]
        for i, C in enumerate(grid):
            model.set_params(C=C)
            model.fit(Ztr, ytr)
            oof[i, va] = model.predict_proba(Zva)[:, 1]

    # Folds in parallel threads (lbfgs and saga spend their time in NumPy/BLAS and Cython
    # that release the GIL), each fit on one BLAS thread: on a busy machine OpenMP/BLAS
    # threads that spin-wait for a core made the search several times slower (measured:
    # 8.7 s against 1.1 s, 2 loaded cores). The limit is process-wide, so it is set once here.
    threads = max(1, min(len(splits), os.cpu_count() or 1, FOLD_THREADS))
    with warnings.catch_warnings(), threadpool_limits(1):
        # Strong-penalty ends of the grid may stop at max_iter; their loss says so.
        warnings.simplefilter("ignore", category=UserWarning)
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", category=ConvergenceWarning)
        if threads == 1:
            for f in range(len(splits)):
                fold_path(f)
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cv-fold") as pool:
                list(pool.map(fold_path, range(len(splits))))
    return oof


def _scores(y: np.ndarray, p: np.ndarray) -> tuple[float, float | None]:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(log_loss(y, p, labels=[0, 1])), float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else None


def search_logistic(Z: Any, y: np.ndarray, seed: int, *, xp: ModuleType, grid: tuple[float, ...] | None = None,
                    fixed_C: float | None = None, folds: int = DEFAULT_FOLDS, max_rows: int = SEARCH_MAX_ROWS,
                    on_fold: Callable[[str, int, int], None] | None = None) -> SearchResult:
    """Choose penalty and C by stratified ``folds``-fold CV on (a sample of) ``Z``, ``y``.

    ``on_fold(penalty, j, m)`` is called as fold ``j`` of ``m`` starts.
    ``fixed_C`` skips the choice (L2 at that C) but still runs the folds, whose
    out-of-fold predictions give cross-validated metrics. With too few rows of the
    rarer class for two folds, nothing is searched: L2 at ``fixed_C`` or 1.0.
    """
    y = np.asarray(asnumpy(y), dtype=np.float64)
    notify = on_fold or (lambda _p, _f, _m: None)
    n = y.size
    index = np.arange(n)
    sampled = n > max_rows
    if sampled:
        index = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
    ys = y[index]
    minority = int(min(ys.sum(), ys.size - ys.sum()))
    k = min(folds, minority)
    if k < 2:
        return SearchResult("l2", float(fixed_C or 1.0), "fixed" if fixed_C else "default", 0, int(index.size),
                            sampled)
    Zs = Z if not sampled else Z[xp.asarray(index) if not is_numpy(xp) else index]
    splits = fold_indices(ys, k, seed)
    if fixed_C is not None:
        oof = _path_predictions(Zs, ys, [float(fixed_C)], "l2", splits, seed, xp, notify)
        ll, auc = _scores(ys, oof[0])
        return SearchResult("l2", float(fixed_C), "fixed", k, int(index.size), sampled,
                            [{"penalty": "l2", "C": float(fixed_C), "log_loss": ll, "auc": auc}], oof[0], index)
    grid_list = sorted(float(c) for c in (grid or DEFAULT_C_GRID))
    penalties = ["l2"] + (["l1"] if index.size <= L1_MAX_ROWS else [])
    curve: list[dict[str, Any]] = []
    best: dict[str, tuple[float, int, np.ndarray]] = {}
    for penalty in penalties:
        oof = _path_predictions(Zs, ys, grid_list, penalty, splits, seed, xp, notify)
        losses = []
        for i, C in enumerate(grid_list):
            ll, auc = _scores(ys, oof[i])
            losses.append(ll)
            curve.append({"penalty": penalty, "C": C, "log_loss": ll, "auc": auc})
        i = int(np.argmin(losses))  # lowest C on ties: the simpler model
        best[penalty] = (losses[i], i, oof[i])
    choice = "l2"
    if "l1" in best and best["l1"][0] < best["l2"][0] * (1 - L1_MIN_GAIN):
        choice = "l1"
    _, i, oof_best = best[choice]
    return SearchResult(choice, grid_list[i], "cv", k, int(index.size), sampled, curve, oof_best, index)


def fit_final(Z: Any, y: Any, seed: int, *, xp: ModuleType, C: float, penalty: str,
              max_iter: int = 1000) -> tuple[np.ndarray, float]:
    """Coefficients ``(F,)`` and intercept at the chosen setting, fitted on every row given."""
    if use_cuml(xp):
        from cuml.linear_model import LogisticRegression as CuLogisticRegression

        model = CuLogisticRegression(C=C, penalty=penalty, max_iter=max_iter, output_type="numpy")
        model.fit(Z, y)
        return np.asarray(model.coef_, dtype=np.float64).ravel(), float(np.ravel(model.intercept_)[0])
    model = _sklearn_logistic(C, penalty, seed, max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # l1_ratio/penalty deprecation chatter
        model.fit(asnumpy(Z), asnumpy(y))
    return np.asarray(model.coef_, dtype=np.float64).ravel(), float(model.intercept_[0])
