"""Fitting K-means and logistic regression: scikit-learn on the CPU, cuML on the GPU.

Both backends take scaled matrices on ``xp`` and return plain host arrays, which is
all the artifact stores. Without cuML the GPU backend fits with scikit-learn on the
host and says so.
"""

from __future__ import annotations

import importlib.util
import warnings
from types import ModuleType
from typing import Any

import numpy as np

from engine.backends.namespace import asnumpy, is_numpy


class FitFallbackWarning(UserWarning):
    """The GPU backend fitted on the host with scikit-learn because cuML is not installed."""


def _use_cuml(xp: ModuleType) -> bool:
    if is_numpy(xp):
        return False
    if importlib.util.find_spec("cuml") is None:
        warnings.warn("cuML is not installed: fitting with scikit-learn on the host "
                      "(scoring still runs on the GPU)", FitFallbackWarning, stacklevel=3)
        return False
    return True


def fit_kmeans(Z: Any, k: int, seed: int, *, xp: ModuleType, n_init: int = 3,
               max_iter: int = 300) -> tuple[np.ndarray, float]:
    """Centroids ``(k, F)`` and training inertia of K-means (k-means++ init)."""
    if Z.shape[0] < k:
        raise ValueError(f"K-means needs at least k={k} training rows, got {Z.shape[0]}")
    if _use_cuml(xp):
        from cuml.cluster import KMeans as CuKMeans

        model = CuKMeans(n_clusters=k, random_state=seed, n_init=n_init, max_iter=max_iter,
                         init="k-means++", output_type="numpy")
        model.fit(Z)
        return np.asarray(model.cluster_centers_, dtype=np.float64), float(model.inertia_)
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, random_state=seed, n_init=n_init, max_iter=max_iter)
    model.fit(asnumpy(Z))
    return np.asarray(model.cluster_centers_, dtype=np.float64), float(model.inertia_)


def fit_logistic(Z: Any, y: Any, seed: int, *, xp: ModuleType, C: float = 1.0,
                 max_iter: int = 1000) -> tuple[np.ndarray, float]:
    """Coefficients ``(F,)`` and intercept of an L2 logistic regression."""
    if _use_cuml(xp):
        from cuml.linear_model import LogisticRegression as CuLogisticRegression

        model = CuLogisticRegression(C=C, max_iter=max_iter, output_type="numpy")
        model.fit(Z, y)
        return np.asarray(model.coef_, dtype=np.float64).ravel(), float(np.ravel(model.intercept_)[0])
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    model.fit(asnumpy(Z), asnumpy(y))
    return np.asarray(model.coef_, dtype=np.float64).ravel(), float(model.intercept_[0])
