"""Fitting K-means and logistic regression: scikit-learn on the CPU, cuML on the GPU.

Both backends take scaled matrices on ``xp`` and return plain host arrays, which is
all the artifact stores. Without cuML the GPU backend fits with scikit-learn on the
host and says so.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
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


def fit_kmeans(Z: Any, k: int, seed: int, *, xp: ModuleType, n_init: int = 3, max_iter: int = 300,
               on_init: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, float]:
    """Centroids ``(k, F)`` and training inertia of K-means (k-means++ init), best of ``n_init``.

    The initialisations run one at a time (seeds ``seed, seed + 1, ...``) instead of
    inside one ``n_init`` call, so that progress can name each (``on_init(i, n_init)``).
    """
    if Z.shape[0] < k:
        raise ValueError(f"K-means needs at least k={k} training rows, got {Z.shape[0]}")
    gpu = _use_cuml(xp)
    Zh = None if gpu else asnumpy(Z)
    best: tuple[np.ndarray, float] | None = None
    for i in range(n_init):
        if on_init is not None:
            on_init(i, n_init)
        if gpu:
            from cuml.cluster import KMeans as CuKMeans

            model = CuKMeans(n_clusters=k, random_state=seed + i, n_init=1, max_iter=max_iter,
                             init="k-means++", output_type="numpy")
            model.fit(Z)
        else:
            from sklearn.cluster import KMeans

            model = KMeans(n_clusters=k, random_state=seed + i, n_init=1, max_iter=max_iter)
            model.fit(Zh)
        inertia = float(model.inertia_)
        if best is None or inertia < best[1]:
            best = (np.asarray(model.cluster_centers_, dtype=np.float64), inertia)
    assert best is not None
    return best


def fit_logistic(Z: Any, y: Any, seed: int, *, xp: ModuleType, C: float = 1.0, penalty: str = "l2",
                 max_iter: int = 1000) -> tuple[np.ndarray, float]:
    """Coefficients ``(F,)`` and intercept of a logistic regression (L2 or L1) at ``C``."""
    from engine.models.tuning import fit_final

    _use_cuml(xp)  # warns once when the GPU backend has to fit on the host
    return fit_final(Z, y, seed, xp=xp, C=C, penalty=penalty,
                     max_iter=max_iter if penalty == "l2" else max(max_iter, 5000))
