"""Reason codes: for each customer, the features that raise the propensity most.

The propensity head is linear in its standardised, imputed features ``z``, so the
exact Shapley value of feature ``j`` for a customer, relative to the average training
customer (whose ``z`` is 0; see :func:`baseline` for heads that do not centre), is its
contribution to the logit::

    contribution_j = w_j * z_j,   z_j = (where(isfinite(x_j), x_j, fill_j) - mean_j) / scale_j

Missing values and ±inf are imputed with the head's fill value, as scoring imputes
them, so a missing feature contributes what its fill value contributes (zero when the
fill is the training mean). Reason ``i`` of a row is the feature with the ``i``-th
largest *positive* contribution, ties going to the lower feature index; a slot whose
rank has no positive contribution left is ``-1`` (a null in the output).

Two implementations with one signature: :func:`top_reasons_reference` in plain
array operations (any ``xp``, the tested reference) and :func:`top_reasons`, a
compiled host kernel (numba, ``nogil`` so scoring threads run it in parallel) that
scoring uses. Both run on the host block of raw values, on either backend, so the
CPU and GPU outputs are identical by construction: the scorer's device never sees
this arithmetic.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from engine.io.arrow import codes_array, string_array

REASON_PREFIX = "reason_"


def reason_columns(n: int) -> list[str]:
    """The output column names ``reason_1 ... reason_n``."""
    return [f"{REASON_PREFIX}{i}" for i in range(1, n + 1)]


CONTRIBUTION_SUFFIX = "_contribution"


def contribution_columns(n: int) -> list[str]:
    """``reason_1_contribution ... reason_n_contribution`` (``--reason-contributions``)."""
    return [f"{name}{CONTRIBUTION_SUFFIX}" for name in reason_columns(n)]


def output_reason_columns(n: int, contributions: bool) -> list[str]:
    """Every reason column of an output, in order: the reasons, then their contributions."""
    return reason_columns(n) + (contribution_columns(n) if contributions else [])


def reason_label(feature: str, direction: str) -> str:
    """The value of a reason column, e.g. ``tenure_months:low``: the feature and the side of
    the average customer its value lies on. The one place reason values are named."""
    return f"{feature}:{direction}"


def reason_labels(model: Any) -> list[str]:
    """Each feature's label when it is a reason.

    A reason's contribution ``(x - baseline) * slope`` is positive, so its value lies above
    the baseline (``high``) exactly when the feature's slope is positive and below it
    (``low``) when negative: the direction is the feature's own, whatever the customer.
    A categorical column's reason names the customer's level (``plan=basic``): a level is a
    reason only when its coefficient raises the propensity above the column's average level,
    so the level itself is the direction. Indices past the numeric features are global levels.
    """
    slope = ReasonWeights.of(model).slope
    labels = [reason_label(f, "high" if s > 0 else "low") for f, s in zip(model.features, slope)]
    return labels + reason_names(model)[len(model.features):]


@dataclass(frozen=True)
class ReasonWeights:
    """The propensity head as reason codes need it, per block column (float64, host).

    ``slope = coef / scale`` so that ``contribution = (x - mean) * slope`` is one
    subtraction and one product per value, the same two operations in both
    implementations (which keeps them bit-identical, ties included). ``feature`` maps a
    block column to its model feature index (blocks may hold the features permuted).
    """

    slope: np.ndarray
    mean: np.ndarray
    fill: np.ndarray
    feature: np.ndarray

    @classmethod
    def of(cls, model: Any, order: Any = None) -> ReasonWeights:
        """Weights of the numeric block columns, then one column per categorical feature.

        A categorical column's block value is its level's coefficient (see
        :func:`with_level_columns`), measured from the column's training-average
        coefficient with slope 1: ``w[level] - sum(share * w)``, the exact Shapley value
        of a one-hot block against the average customer.
        """
        prop = model.propensity
        perm = np.arange(model.n_features) if order is None else np.asarray(order, dtype=np.int64)
        slope = np.asarray(model.coef, dtype=np.float64) / np.asarray(prop.scale, dtype=np.float64)
        base = level_baselines(model)
        q = len(base)
        return cls(slope=np.ascontiguousarray(np.concatenate([slope[perm], np.ones(q)])),
                   mean=np.ascontiguousarray(np.concatenate([baseline(model)[perm], base])),
                   fill=np.ascontiguousarray(np.concatenate([np.asarray(prop.fill, dtype=np.float64)[perm], base])),
                   feature=np.ascontiguousarray(np.concatenate([perm, model.n_features + np.arange(q)])
                                                .astype(np.int32)))


def level_baselines(model: Any) -> np.ndarray:
    """Per categorical column, the training-share-weighted average of its levels' logit terms."""
    if not getattr(model, "categoricals", ()):
        return np.zeros(0)
    from engine.models.explain import level_shares
    from engine.models.scorer import level_tables

    tables = level_tables(model)
    assert tables is not None
    logit = tables[0]
    shares = level_shares(model)
    out, start = [], 0
    for cat in model.categoricals:
        w = logit[start:start + cat.n_levels]
        s = np.asarray(shares[cat.name])
        out.append(float(w @ s / s.sum()) if s.sum() > 0 else float(w.mean()))
        start += cat.n_levels
    return np.asarray(out)


def level_references(model: Any, terms: np.ndarray) -> np.ndarray:
    """Per categorical column, the training-share-weighted average of its levels' logit terms,
    for several heads at once: ``terms`` ``(L, T)`` (one column per head) -> ``(Q, T)``.

    :func:`level_baselines` for ``T`` heads (``engine recommend``'s offers): the reference a
    level's term is measured from, so that a level is a reason exactly as ``engine score``
    defines it (the average customer's column contributes 0).
    """
    if not getattr(model, "categoricals", ()):
        return np.zeros((0, terms.shape[1]))
    from engine.models.explain import level_shares

    shares = level_shares(model)
    out, start = [], 0
    for cat in model.categoricals:
        w = terms[start:start + cat.n_levels]
        s = np.asarray(shares[cat.name])
        out.append(s @ w / s.sum() if s.sum() > 0 else w.mean(axis=0))
        start += cat.n_levels
    return np.asarray(out, dtype=np.float64).reshape(len(model.categoricals), terms.shape[1])


def with_level_columns(X: np.ndarray, levels: np.ndarray | None, model: Any) -> np.ndarray:
    """The raw block with one more column per categorical feature: each row's level's logit term."""
    if levels is None or not model.categoricals:
        return X
    from engine.models.scorer import level_tables

    tables = level_tables(model)
    assert tables is not None
    out = np.empty((X.shape[0], X.shape[1] + levels.shape[1]), order="F")
    out[:, : X.shape[1]] = X
    out[:, X.shape[1]:] = tables[0][levels]
    return out


def name_levels(codes: np.ndarray, levels: np.ndarray | None, n_features: int) -> np.ndarray:
    """Reason codes of categorical columns (``F + q``) turned into the row's level (``F + global level``)."""
    if levels is None:
        return codes
    hit = codes >= n_features
    if hit.any():
        rows = np.nonzero(hit)[0]
        codes = codes.copy()
        codes[hit] = n_features + levels[rows, codes[hit] - n_features]
    return codes


def reason_names(model: Any) -> list[str]:
    """What a reason index names: numeric features, then ``column=level`` for every global level."""
    names = list(model.features)
    for cat in getattr(model, "categoricals", ()):
        names += [f"{cat.name}={label}" for label in cat.labels()]
    return names


def baseline(model: Any) -> np.ndarray:
    """The customer contributions are measured from: the average training customer.

    That is the head's centring mean (every engine-trained model; imported pipelines with
    a ``StandardScaler``). An imported head that does not centre (mean 0) would measure
    from the all-zero customer instead, so that every customer's reasons are the features
    with large raw values (found by QA: ``age`` first for 80% of customers); its
    ``SimpleImputer`` fill, the training mean (or median) per feature, is used instead.
    """
    prop = model.propensity
    mean = np.asarray(prop.mean, dtype=np.float64)
    return np.asarray(prop.fill, dtype=np.float64) if not mean.any() else mean


def validate_reasons(n: int, n_features: int, model: Any = None) -> None:
    """``0 <= n <= n_features``, else a usage error naming the flag; a model with no baseline refuses."""
    from engine.errors import UsageError

    n_features += len(getattr(model, "categoricals", ()) or ())
    if not 0 <= n <= n_features:
        raise UsageError(f"--reasons must be between 0 and the model's {n_features} features, not {n}")
    if n and model is not None and not baseline(model).any():
        raise UsageError(
            "--reasons needs the average training customer to measure contributions from, and this "
            "model's propensity head records none (an imported pipeline with neither a centring "
            "StandardScaler nor a SimpleImputer); re-import the pipeline with one, or score without --reasons"
        )


def contributions(X: Any, w: ReasonWeights, *, xp: ModuleType) -> Any:
    """``(rows, F)`` contributions ``w_j z_j`` of a raw block (NaN/±inf imputed with the fill)."""
    X = xp.asarray(X, dtype=xp.float64)
    filled = xp.where(xp.isfinite(X), X, xp.asarray(w.fill)[None, :])
    return (filled - xp.asarray(w.mean)[None, :]) * xp.asarray(w.slope)[None, :]


def top_reasons_reference(X: Any, w: ReasonWeights, n: int, *, xp: ModuleType,
                          values: bool = False) -> Any:
    """The reference: ``(rows, n)`` int32 feature indices, ``-1`` where no positive contribution is left.

    Selection by repeated argmax over the feature order (``argmax`` returns the first
    maximum; with the columns sorted by feature index first, that is the lowest index).
    ``values=True`` also returns the ``(rows, n)`` float64 contributions (NaN where ``-1``).
    """
    rows = X.shape[0]
    out = xp.full((rows, n), -1, dtype=xp.int32)
    vals = xp.full((rows, n), xp.nan, dtype=xp.float64)
    if n == 0 or rows == 0:
        return (out, vals) if values else out
    by_feature = xp.argsort(xp.asarray(w.feature))
    C = contributions(X, w, xp=xp)[:, by_feature]
    features = xp.asarray(w.feature)[by_feature]
    taken = xp.arange(rows)
    for i in range(n):
        best = xp.argmax(C, axis=1)
        value = C[taken, best]
        out[:, i] = xp.where(value > 0, features[best], -1).astype(xp.int32)
        vals[:, i] = xp.where(value > 0, value, xp.nan)
        C[taken, best] = -xp.inf
    return (out, vals) if values else out


#: Rows ranked together. Every loop of the kernel runs over the rows of a chunk, with
#: no data-dependent branch (a compare and two selects), so the compiler vectorises it;
#: the chunk's contributions stay in the L1 cache between the slots.
CHUNK_ROWS = 256


def _body(X: Any, slope: Any, mean: Any, fill: Any, feature: Any, out: Any, vals: Any) -> None:  # pragma: no cover
    """The kernel's source (compiled by :func:`_compile`); same contract as :func:`top_reasons`."""
    rows, f = X.shape
    n = out.shape[1]
    # Contributions are kept in feature-index order: a strict ">" scan then leaves
    # ties with the lower feature index, whatever the block's column order.
    col_of = np.argsort(feature)
    c = np.empty((f, CHUNK_ROWS), dtype=np.float64)
    best = np.empty(CHUNK_ROWS, dtype=np.float64)
    arg = np.empty(CHUNK_ROWS, dtype=np.int32)
    for lo in range(0, rows, CHUNK_ROWS):
        m = min(rows, lo + CHUNK_ROWS) - lo
        for j in range(f):
            col = col_of[j]
            mu, s, fl = mean[col], slope[col], fill[col]
            for r in range(m):
                x = X[lo + r, col]
                x = x if np.isfinite(x) else fl
                c[j, r] = (x - mu) * s
        for i in range(n):
            for r in range(m):
                best[r] = 0.0   # only strictly positive contributions are reasons
                arg[r] = -1
            for j in range(f):
                for r in range(m):
                    v = c[j, r]
                    take = v > best[r]
                    best[r] = v if take else best[r]
                    arg[r] = j if take else arg[r]
            for r in range(m):
                a = arg[r]
                if a >= 0:
                    out[lo + r, i] = feature[col_of[a]]
                    vals[lo + r, i] = best[r]
                    c[a, r] = -np.inf
                else:
                    out[lo + r, i] = -1
                    vals[lo + r, i] = np.nan


def _compile() -> Any:
    """The numba dispatcher of :func:`_body`, compiled as the scoring kernel is (``kernels._numba``)."""
    from kernels._numba import compile_nogil

    return compile_nogil(_body, "reason-code kernel")


class _Kernel:
    """The process's compiled kernel, loaded once, in the background when asked early.

    Loading even a disk-cached numba function costs ~0.3 s in a fresh process (LLVM
    start-up) besides ~0.2 s to import numba, shared with the scoring kernel, which needs
    the same. :meth:`prepare` starts the load in a thread at the start of a run or task,
    so it overlaps planning and the first read; the lock makes concurrent task threads
    wait for one load instead of each compiling their own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fn: Any = None
        self._thread: threading.Thread | None = None

    def _load(self) -> None:
        with self._lock:
            if self._fn is None:
                # numba's start-up (import, CPU target) is the scoring kernel's too: let it
                # pay for it, the way it avoids importing scipy.linalg (0.2-0.3 s).
                with contextlib.suppress(Exception):
                    from kernels.score_rows_cpu import warm

                    warm()
                fn = _compile()
                # Scoring blocks are leased Fortran blocks, whole (F layout) or the first rows
                # of one (A layout): load both specialisations from numba's cache now.
                w = np.zeros(1)
                block = np.zeros((3, 1), order="F")
                for X in (block, block[:2]):
                    fn(X, w, w, w, np.zeros(1, np.int32), np.empty((X.shape[0], 1), np.int32),
                       np.empty((X.shape[0], 1), np.float64))
                self._fn = fn

    def prepare(self) -> None:
        with self._lock:
            if self._fn is not None or self._thread is not None:
                return
            self._thread = threading.Thread(target=self._load, name="reasons-kernel-load", daemon=True)
            self._thread.start()

    def get(self) -> Any:
        if self._fn is None:
            self._load()
        return self._fn


_KERNEL = _Kernel()


def prepare_kernel() -> None:
    """Start loading the compiled kernel in the background (idempotent, cheap to call)."""
    _KERNEL.prepare()


def top_reasons(X: np.ndarray, w: ReasonWeights, n: int, *, values: bool = False) -> Any:
    """The compiled kernel (same result as :func:`top_reasons_reference`) on a host block.

    Compiled on first use (cached on disk by numba), not at import: ``import engine``
    must stay cheap and free of compilation. ``values=True`` also returns each reason's
    contribution to the logit (float64, NaN where the slot is empty).
    """
    out = np.full((X.shape[0], n), -1, dtype=np.int32)
    vals = np.full((X.shape[0], n), np.nan, dtype=np.float64)
    if n and X.shape[0]:
        _KERNEL.get()(np.asarray(X, dtype=np.float64), w.slope, w.mean, w.fill, w.feature, out, vals)
    return (out, vals) if values else out


def reason_output(codes: np.ndarray, values: np.ndarray | None, model: Any, *,
                  contributions: bool = False) -> list[tuple[str, Any]]:
    """The reason columns of an output: ``reason_i`` (``feature:high|low``, dictionary-encoded)
    and, with ``contributions``, ``reason_i_contribution`` (float32 logit contribution, null
    where the slot is empty)."""
    import pyarrow as pa

    n = codes.shape[1]
    cols = list(zip(reason_columns(n), reason_arrays(codes, reason_labels(model))))
    if contributions:
        if values is None:
            raise ValueError("contributions need the kernel's values")
        for name, i in zip(contribution_columns(n), range(n)):
            v = np.ascontiguousarray(values[:, i], dtype=np.float32)
            missing = codes[:, i] < 0
            cols.append((name, pa.array(v, type=pa.float32(), mask=missing if missing.any() else None)))
    return cols


def reason_arrays(indices: np.ndarray, features: Any) -> list[Any]:
    """One dictionary-encoded string column per slot: indices into the feature names, null where -1.

    Built from buffers: ``pa.array(..., mask=...)`` takes a per-element path that costs
    more than computing the codes.
    """
    import pyarrow as pa

    names = string_array(features)
    return [pa.DictionaryArray.from_arrays(codes_array(indices[:, i]), names) for i in range(indices.shape[1])]
