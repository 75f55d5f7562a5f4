"""kernels/score_rows_cpu: the compiled CPU kernel against the NumPy twin and direct NumPy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kernels import score_rows_cpu
from kernels.score_rows import score_rows
from kernels.score_rows_cpu import TILE
from kernels.score_rows_cpu import score_rows_cpu as score_cpu

REPO = Path(__file__).resolve().parents[2]
DTYPES = (np.float32, np.float64)
# Same operations in the same order as the twin: float64 agrees bit for bit; float32
# only differs in the sigmoid, which the kernel evaluates in float64.
PROP_ATOL = {np.float32: 2e-7, np.float64: 0.0}


def make_problem(n: int, n_features: int, k: int, dtype: type, order: str = "F",
                 seed: int = 0) -> tuple[np.ndarray, dict]:
    """Random rows (10% NaN) and random parameters of both heads, all in ``dtype``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(2.0, 3.0, size=(n, n_features))
    X[rng.random(X.shape) < 0.1] = np.nan
    mean = rng.normal(2.0, 1.0, size=n_features)
    a_s = rng.uniform(0.2, 1.0, size=n_features)
    a_p = rng.uniform(0.2, 1.0, size=n_features)
    params = {"fill_s": mean, "a_s": a_s, "d_s": -mean * a_s, "centroids": rng.normal(size=(k, n_features)),
              "fill_p": rng.normal(2.0, 1.0, size=n_features), "a_p": a_p, "d_p": -mean * a_p,
              "coef": rng.normal(size=n_features) / np.sqrt(n_features), "intercept": -0.3}
    cast = {key: np.asarray(v, dtype=dtype) if key != "intercept" else dtype(v) for key, v in params.items()}
    return np.asarray(X, dtype=dtype, order=order), cast


def _with_infs(X: np.ndarray, seed: int = 1) -> np.ndarray:
    """X with ±inf sprinkled in (some rows with several, some beside NaN)."""
    rng = np.random.default_rng(seed)
    X = X.copy(order="F")
    n, f = X.shape
    rows = rng.choice(n, size=max(3, n // 50), replace=False)
    cols = rng.integers(0, f, size=rows.size)
    X[rows, cols] = np.where(rng.random(rows.size) < 0.5, np.inf, -np.inf)
    X[rows[0], :] = np.inf  # a row of nothing but inf
    X[rows[1], [0, f - 1]] = [-np.inf, np.nan]
    return X


def _twin(X: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: the NumPy twin, with ±inf imputed like NaN."""
    return score_rows(np.where(np.isinf(X), np.nan, X), *params.values(), xp=np)


def _first_inf(X: np.ndarray) -> np.ndarray:
    inf = np.isinf(X)
    return np.where(inf.any(axis=1), np.argmax(inf, axis=1), -1).astype(np.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, n_features, k", [
    (3, 3, 1), (TILE - 1, 5, 2), (TILE * 3 + 7, 21, 8), (5_000, 100, 64), (700, 300, 130), (3_000, 1, 9),
])
def test_matches_twin_with_nan_and_inf(dtype: type, n: int, n_features: int, k: int) -> None:
    X, params = make_problem(n, n_features, k, dtype, seed=n + k)
    X = _with_infs(X, seed=k)
    seg, dist, prop, inf_col, nulls = score_cpu(X, *params.values())
    t_seg, t_dist, t_prop = _twin(X, params)
    assert seg.dtype == np.int32 and dist.dtype == np.float32 and prop.dtype == np.float32
    np.testing.assert_array_equal(seg, t_seg)
    np.testing.assert_array_equal(dist, t_dist)
    np.testing.assert_allclose(prop, t_prop, rtol=0, atol=PROP_ATOL[dtype])
    np.testing.assert_array_equal(inf_col, _first_inf(X))
    np.testing.assert_array_equal(nulls, np.isnan(X).sum(axis=0))
    assert inf_col.max() >= 0 and nulls.sum() > 0  # the data did exercise both


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_go_to_the_lowest_index(dtype: type) -> None:
    X, params = make_problem(1_000, 6, 5, dtype)
    C = params["centroids"].copy()
    C[3] = C[1]          # exact duplicates: every row nearer to 1 than to others ties with 3
    C[4] = C[0]
    params["centroids"] = C
    seg, dist, *_ = score_cpu(X, *params.values())
    t_seg, t_dist, _ = _twin(X, params)
    np.testing.assert_array_equal(seg, t_seg)
    assert set(np.unique(seg)) <= {0, 1, 2}
    np.testing.assert_array_equal(dist, t_dist)


def test_any_memory_order_and_no_change_to_input() -> None:
    X, params = make_problem(2_000, 21, 8, np.float64, order="C")
    X = _with_infs(X)
    C_order = np.ascontiguousarray(X)
    before = C_order.copy()
    a = score_cpu(C_order, *params.values())
    b = score_cpu(np.asfortranarray(X), *params.values())
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(C_order, before)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the twin's, not ours
def test_extremes_never_overflow() -> None:
    """Huge logits give exactly 0 and 1; values at MAX_INPUT_ABS stay finite, never NaN."""
    X, params = make_problem(4, 2, 2, np.float64)
    X[:] = [[1e15, 1e15], [-1e15, -1e15], [0.0, 0.0], [np.nan, np.inf]]
    params["coef"] = np.array([1e290, 1e290])
    seg, dist, prop, inf_col, nulls = score_cpu(X, *params.values())
    t_seg, t_dist, t_prop = _twin(X, params)
    np.testing.assert_array_equal(seg, t_seg)
    np.testing.assert_array_equal(dist, t_dist)
    np.testing.assert_array_equal(prop, t_prop)
    assert {float(prop[0]), float(prop[1])} == {0.0, 1.0}
    assert inf_col.tolist() == [-1, -1, -1, 1] and nulls.tolist() == [1, 0]


def test_block_entry_scores_a_prefix_and_adds_nulls() -> None:
    """``score_block`` scores rows [0, n) of a reused block and adds to the caller's null counts."""
    X, params = make_problem(1_000, 7, 3, np.float64)
    block = np.full((4_096, 7), np.inf, order="F")    # rows past n are junk that must be ignored
    block[:1_000] = X
    p, b = score_rows_cpu.prepare_params(block, *params.values())
    out = [np.empty(1_000, np.int32), np.empty(1_000, np.float32), np.empty(1_000, np.float32),
           np.empty(1_000, np.int32)]
    nulls = np.full(7, 5, np.int64)
    score_rows_cpu.score_block(block, 1_000, p, b, *out, nulls)
    whole = score_cpu(X, *params.values())
    for got, want in zip(out, whole[:4]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(nulls, whole[4] + 5)


def test_compiled_once_without_the_gil() -> None:
    """One machine-code version per dtype, whatever the block sizes; it releases the GIL."""
    kernel = score_rows_cpu._get_kernel()
    assert kernel.targetoptions.get("nogil") is True
    for n in (1, 17, 1_000, 5_000):
        X, params = make_problem(n, 9, 4, np.float64)
        score_cpu(X, *params.values())
    f64 = [sig for sig in kernel.signatures if str(sig[0].dtype) == "float64"]
    assert len(f64) == 1, f64
    assert "float64" in score_rows_cpu.compile_seconds()


def _run_isolated(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_unwritable_cache_dir_still_scores(tmp_path: Path) -> None:
    """A NUMBA_CACHE_DIR that cannot be created (a file stands in its way) compiles per process."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _check_fallback(blocker / "cache")


def _check_fallback(cache_dir: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO)}
    result = _run_isolated("""
        import warnings
        import numpy as np
        from kernels.score_rows_cpu import score_rows_cpu
        X = np.array([[1.0, np.nan], [np.inf, 2.0]], order="F")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg, dist, prop, inf_col, nulls = score_rows_cpu(
                X, [0, 0], [1, 1], [0, 0], [[0, 0], [5, 5]], [0, 0], [1, 1], [0, 0], [1, 1], 0.0)
        print(seg.tolist(), inf_col.tolist(), nulls.tolist())
        print(any("compiled once per process" in str(w.message) for w in caught))
    """, env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "[0, 0] [-1, 0] [0, 1]"
    assert lines[1] == "True"


def test_loading_the_kernel_leaves_scipy_importable() -> None:
    """The first load skips numba's scipy.linalg probe for its own thread only: another thread
    importing scipy.linalg meanwhile, and any import afterwards, work as usual."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = _run_isolated("""
        import sys, threading
        from kernels.score_rows_cpu import warm
        errors = []
        def other():
            try:
                import scipy.linalg
                scipy.linalg.cho_factor
            except Exception as exc:
                errors.append(repr(exc))
        t = threading.Thread(target=other)
        t.start()
        warm()
        t.join()
        import scipy.linalg
        from sklearn.linear_model import LogisticRegression
        print(errors, "scipy.linalg" in sys.modules, not any(type(h).__name__ == "_NoScipyLinalgHere"
                                                             for h in sys.meta_path))
    """, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True True"
