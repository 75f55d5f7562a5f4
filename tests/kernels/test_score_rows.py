"""kernels/score_rows: the xp twin against a per-row reference, and CUDA against the twin."""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import numpy as np
import pytest

import kernels.score_rows as score_rows_module
from kernels._loader import kernel_source
from kernels.score_rows import K_TILE, score_rows, score_rows_cuda, shared_bytes

DTYPES = (np.float32, np.float64)
# Twin vs reference on the CPU: same dtype arithmetic, only the summation order differs.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
# Outputs are float32 whatever the input dtype, so a float64 run can only be compared
# to ~1 float32 ulp: two float64 results 1e-16 apart may round to neighbouring floats.
OUT_RTOL = {np.float32: 1e-5, np.float64: 2.5e-7}
# Twin against the per-row reference and the dense (GEMM) path: the summation order (and
# for the GEMM the expanded form) differs; near a centroid the absolute difference (about
# eps * |z|^2) dominates the relative one. The kernel itself is built without FMA
# contraction and equals the CPU kernel exactly in float64 (see the exact tests below).
OUT_ATOL = {np.float32: 1e-5, np.float64: 1e-7}

Params = dict[str, Any]


def make_problem(
    n: int, n_features: int, k: int, dtype: type, order: str = "F", seed: int = 0
) -> tuple[np.ndarray, Params]:
    rng = np.random.default_rng(seed)
    X = rng.normal(2.0, 3.0, size=(n, n_features))
    X[rng.random(X.shape) < 0.1] = np.nan
    X = np.asarray(X, dtype=dtype, order=order)
    mean = rng.normal(2.0, 1.0, size=n_features)
    a_s = rng.uniform(0.2, 1.0, size=n_features)
    a_p = rng.uniform(0.2, 1.0, size=n_features)
    params: Params = {
        "fill_s": mean,
        "a_s": a_s,
        "d_s": -mean * a_s,
        "centroids": rng.normal(size=(k, n_features)),
        "fill_p": rng.normal(2.0, 1.0, size=n_features),
        "a_p": a_p,
        "d_p": -mean * a_p,
        "coef": rng.normal(size=n_features) / math.sqrt(n_features),
        "intercept": -0.3,
    }
    cast = {
        key: (np.asarray(v, dtype=dtype) if key != "intercept" else dtype(v))
        for key, v in params.items()
    }
    return X, cast


def sigmoid(logit: float) -> float:
    if math.isnan(logit):
        return math.nan
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


def reference(X: np.ndarray, p: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row at a time, in X's dtype, the obvious way; argmin has numpy's tie rules."""
    n = X.shape[0]
    seg = np.zeros(n, np.int32)
    dist = np.zeros(n, np.float64)
    prop = np.zeros(n, np.float64)
    C = p["centroids"]
    for i in range(n):
        x = X[i]
        zs = np.where(~np.isfinite(x), p["fill_s"], x) * p["a_s"] + p["d_s"]
        d2 = np.array([np.sum((zs - C[c]) ** 2) for c in range(C.shape[0])], dtype=X.dtype)
        seg[i] = int(np.argmin(d2))
        dist[i] = math.sqrt(max(float(d2[seg[i]]), 0.0)) if not np.isnan(d2[seg[i]]) else math.nan
        zp = np.where(~np.isfinite(x), p["fill_p"], x) * p["a_p"] + p["d_p"]
        prop[i] = sigmoid(float(np.sum(zp * p["coef"]) + p["intercept"]))
    return seg, dist.astype(np.float32), prop.astype(np.float32)


def squared_distances(X: np.ndarray, p: Params) -> np.ndarray:
    """(n, k) squared distances in float64, to judge near-ties."""
    X = np.asarray(X, dtype=np.float64)
    zs = np.where(~np.isfinite(X), p["fill_s"], X) * p["a_s"] + p["d_s"]
    C = np.asarray(p["centroids"], dtype=np.float64)
    return ((zs[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)


def assert_segments_match(
    X: np.ndarray, p: Params, got: np.ndarray, want: np.ndarray, rtol: float
) -> None:
    """Equal segments, except where two centroids are tied to within rounding."""
    rows = np.nonzero(got != want)[0]
    if rows.size == 0:
        return
    d2 = squared_distances(X[rows], p)
    a = d2[np.arange(rows.size), got[rows]]
    b = d2[np.arange(rows.size), want[rows]]
    close = np.abs(a - b) <= 10 * rtol * np.maximum(np.abs(a), np.abs(b))
    assert close.all(), f"segments differ beyond ties in rows {rows[~close][:10]}"


def check_outputs(seg: Any, dist: Any, prop: Any, n: int) -> None:
    assert seg.shape == dist.shape == prop.shape == (n,)
    assert seg.dtype == np.int32 and dist.dtype == np.float32 and prop.dtype == np.float32


# ---------------------------------------------------------------- twin on the CPU


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("k", [1, 3, 8, 9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_matches_reference(dtype: type, k: int, order: str) -> None:
    X, p = make_problem(301, 6, k, dtype, order, seed=k)
    seg, dist, prop = score_rows(X, **p, xp=np)
    check_outputs(seg, dist, prop, 301)
    rseg, rdist, rprop = reference(X, p)
    assert_segments_match(X, p, seg, rseg, RTOL[dtype])
    same = seg == rseg
    rtol = OUT_RTOL[dtype]
    np.testing.assert_allclose(dist[same], rdist[same], rtol=rtol, atol=OUT_ATOL[dtype])
    np.testing.assert_allclose(prop, rprop, rtol=rtol, atol=1e-7)
    assert np.all((prop >= 0) & (prop <= 1))
    if k == 1:
        assert np.all(seg == 0)


def test_twin_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    X, p = make_problem(100, 5, 4, np.float64)
    whole = score_rows(X, **p, xp=np)
    monkeypatch.setattr(score_rows_module, "TWIN_CHUNK_ROWS", 7)
    chunked = score_rows(X, **p, xp=np)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_ties_pick_lowest_index(dtype: type) -> None:
    one = np.ones(1, dtype)
    zero = np.zeros(1, dtype)
    X = np.array([[0.0], [-1.0], [1.0], [np.nan], [3.0]], dtype=dtype)
    p: Params = dict(
        fill_s=zero, a_s=one, d_s=zero, centroids=np.array([[-1.0], [1.0]], dtype),
        fill_p=zero, a_p=one, d_p=zero, coef=one, intercept=dtype(0),
    )  # fmt: skip
    seg, dist, _ = score_rows(X, **p, xp=np)
    # 0 and the NaN (filled with 0) sit exactly between the two centroids.
    np.testing.assert_array_equal(seg, [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(dist, np.array([1, 0, 0, 1, 2], np.float32))

    # Duplicated centroids: the later copies can never win.
    X2, p2 = make_problem(200, 4, 3, dtype)
    C = p2["centroids"]
    p2["centroids"] = np.concatenate([C, C[::-1], C])
    seg2, dist2, _ = score_rows(X2, **p2, xp=np)
    seg_ref, dist_ref, _ = score_rows(X2, **{**p2, "centroids": C}, xp=np)
    np.testing.assert_array_equal(seg2, seg_ref)
    np.testing.assert_array_equal(dist2, dist_ref)
    np.testing.assert_array_equal(seg2, reference(X2, p2)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_extreme_logits_saturate_without_warnings(dtype: type) -> None:
    one = np.ones(1, dtype)
    zero = np.zeros(1, dtype)
    X = np.array([[1000.0], [-1000.0], [0.0], [88.0], [-88.0], [-1e4]], dtype=dtype)
    p: Params = dict(
        fill_s=zero, a_s=one, d_s=zero, centroids=np.zeros((1, 1), dtype),
        fill_p=zero, a_p=one, d_p=zero, coef=one, intercept=dtype(0),
    )  # fmt: skip
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        _, _, prop = score_rows(X, **p, xp=np)
    assert prop[0] == 1.0 and prop[1] == 0.0 and prop[2] == 0.5
    assert prop[3] == 1.0 and 0.0 <= prop[4] < 1e-30 and prop[5] == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_imputes_inf_like_nan_and_flags_it(dtype: type) -> None:
    one = np.ones(2, dtype)
    zero = np.zeros(2, dtype)
    fill = np.array([3.0, -1.0], dtype)
    X = np.array([[np.inf, 0.5], [-np.inf, np.nan], [np.nan, np.nan], [1.0, -np.inf],
                  [np.inf, np.inf], [2.0, 2.0]], dtype=dtype)
    p: Params = dict(
        fill_s=fill, a_s=one, d_s=zero, centroids=np.array([[0.0, 0.0], [5.0, 5.0]], dtype),
        fill_p=fill, a_p=one, d_p=zero, coef=one, intercept=dtype(0),
    )  # fmt: skip
    seg, dist, prop, inf_col, nulls = score_rows(X, **p, xp=np, flags=True)
    Xi = np.where(np.isfinite(X), X, fill)
    want = score_rows(Xi, **p, xp=np)
    np.testing.assert_array_equal(seg, want[0])
    np.testing.assert_array_equal(dist, want[1])
    np.testing.assert_array_equal(prop, want[2])
    assert np.isfinite(dist).all() and np.isfinite(prop).all()
    np.testing.assert_array_equal(inf_col, [0, 0, -1, 1, 0, -1])
    assert inf_col.dtype == np.int32
    np.testing.assert_array_equal(nulls, [1, 2])  # ±inf is flagged, not counted as null
    assert nulls.dtype == np.uint64


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_flags_match_reference(dtype: type) -> None:
    X, p = make_problem(70_000, 5, 3, dtype, seed=5)  # more than one twin chunk
    rng = np.random.default_rng(1)
    X[rng.random(X.shape) < 0.01] = np.inf
    X[rng.random(X.shape) < 0.01] = -np.inf
    *_, inf_col, nulls = score_rows(X, **p, xp=np, flags=True)
    inf = np.isinf(X)
    want = np.array([int(np.flatnonzero(r)[0]) if r.any() else -1 for r in inf])
    np.testing.assert_array_equal(inf_col, want)
    np.testing.assert_array_equal(nulls, np.isnan(X).sum(axis=0))


def test_twin_nan_distance_counts_as_nearest() -> None:
    # A NaN distance counts as nearest (numpy.argmin's rule), so broken models stay visible.
    one, zero = np.ones(1), np.zeros(1)
    p: Params = dict(
        fill_s=zero, a_s=one, d_s=zero, centroids=np.array([[0.0], [np.nan]]),
        fill_p=zero, a_p=one, d_p=zero, coef=one, intercept=0.0,
    )  # fmt: skip
    with np.errstate(invalid="ignore"):
        seg, dist, _ = score_rows(np.array([[1.0]]), **p, xp=np)
    assert seg[0] == 1 and np.isnan(dist[0])


@pytest.mark.parametrize("k", [1, 8, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_path_matches_twin(dtype: type, k: int) -> None:
    """The GEMM path for models beyond the kernel's shared memory gives the twin's outputs."""
    from kernels.score_rows import score_rows_dense

    X, p = make_problem(2_000, 100, k, dtype, seed=k)
    X[5, 3], X[6, 0], X[6, 99] = np.inf, -np.inf, np.inf
    want = score_rows(X, **p, xp=np, flags=True)
    got = score_rows_dense(X, **p, xp=np)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
    assert_cuda_matches(X, p, got[:3], want[:3], dtype)
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_array_equal(got[4], want[4])


def overflow_case() -> tuple[np.ndarray, Params]:
    """Rows whose ``||z||^2`` overflows float64 (huge finite values, and ``x * a`` overflowing)."""
    X, p = make_problem(64, 100, 64, np.float64, seed=9)
    X[3, 7] = 1e200                 # (z - c)^2 overflows
    X[4, :] = 1e160                 # every term finite, their sum overflows
    X[5, 0] = np.finfo(np.float64).max  # x * a_s overflows for a > 1
    p["a_s"][0] = 1.5
    X[6, :] = np.nan                # an all-missing row alongside, imputed
    return X, p


def test_values_beyond_max_input_abs_are_imputed_and_flagged_alike() -> None:
    """Finite values beyond MAX_INPUT_ABS (which would overflow ``||z||^2``) are imputed and flagged
    inside every kernel, as ±inf are: the dense expansion never sees them, so no inf - inf = NaN."""
    from kernels.score_rows import MAX_INPUT_ABS, score_rows_dense
    from kernels.score_rows_cpu import score_rows_cpu

    X, p = overflow_case()
    X[7, 9] = -MAX_INPUT_ABS * 1.0000001   # just beyond, negative
    X[8, 9] = MAX_INPUT_ABS                  # at the limit: a value like any other
    want = score_rows(X, **p, xp=np, flags=True)
    got = score_rows_dense(X, **p, xp=np)
    cpu = score_rows_cpu(X, **p)
    clean = X.copy()
    clean[~(np.abs(clean) <= MAX_INPUT_ABS)] = np.nan   # imputed like a missing value
    plain = score_rows(clean, **p, xp=np, flags=True)
    for row, col in ((3, 7), (4, 0), (5, 0), (7, 9)):
        assert want[3][row] == col and cpu[3][row] == col and got[3][row] == col, row
    assert want[3][8] == -1 and want[3][6] == -1
    for a, b in ((want, plain), (cpu, want)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(cpu[4], want[4].astype(np.int64))   # NaN counts only
    assert not np.isnan(got[1]).any() and np.isfinite(want[1]).all()
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6)


def exact_case(n: int = 5_003, n_features: int = 21, k: int = 8, seed: int = 21) -> tuple[np.ndarray, Params]:
    """float64 rows with every kind of value the kernels treat specially.

    All-NaN rows, ±inf, a mostly-null column (94%: the warp-aggregated counting), a
    column of nulls, values where ``x * a + d`` rounds differently with and without FMA
    contraction, and ``n`` not a multiple of the warp size.
    """
    X, p = make_problem(n, n_features, k, np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    X[rng.random(X.shape) < 0.01] = np.inf
    X[rng.random(X.shape) < 0.01] = -np.inf
    X[::97] = np.nan                        # all-missing rows: imputed, counted per column
    X[rng.random(n) < 0.94, 2] = np.nan     # mostly null
    X[:, 5] = np.nan                        # all null
    # x exactly at the fill value: z = fill * a + d = 0 exactly only without contraction
    X[rng.random(n) < 0.2, 0] = p["fill_s"][0]
    return X, p


def test_cpu_kernel_equals_twin_on_the_exact_case() -> None:
    """The case the GPU test compares exactly: the CPU kernel equals the NumPy twin bit for bit."""
    from kernels.score_rows_cpu import score_rows_cpu

    X, p = exact_case()
    cpu = score_rows_cpu(X, **p)
    twin = score_rows(X, **p, xp=np, flags=True)
    assert np.isnan(X[0]).all() and (np.isnan(X[:, 2]).mean() > 0.9)
    for a, b in zip(cpu, twin, strict=True):
        np.testing.assert_array_equal(a, b.astype(a.dtype))


def test_twin_empty_input() -> None:
    X, p = make_problem(0, 5, 3, np.float32)
    seg, dist, prop = score_rows(X, **p, xp=np)
    check_outputs(seg, dist, prop, 0)


def test_twin_rejects_bad_arguments() -> None:
    X, p = make_problem(5, 3, 2, np.float32)
    with pytest.raises(ValueError):
        score_rows(X, **{**p, "centroids": np.zeros((2, 4))}, xp=np)
    with pytest.raises(ValueError):
        score_rows(X, **{**p, "centroids": np.zeros((0, 3))}, xp=np)
    with pytest.raises(ValueError):
        score_rows(X, **{**p, "coef": np.zeros(2)}, xp=np)
    with pytest.raises(ValueError):
        score_rows(X, **{**p, "intercept": np.zeros(2)}, xp=np)
    with pytest.raises(TypeError):
        score_rows(np.zeros((5, 3), np.int32), **p, xp=np)


def test_k_tile_matches_cuda_source() -> None:
    src = kernel_source("score_rows").read_text()
    match = re.search(r"constexpr\s+int\s+K_TILE\s*=\s*(\d+)\s*;", src)
    assert match is not None
    assert int(match.group(1)) == K_TILE
    assert shared_bytes(1, 10, 4) == 8 * 10 + (7 + K_TILE) * 10 * 4
    assert shared_bytes(33, 70, 8) <= score_rows_module.MAX_SHARED_BYTES


# ---------------------------------------------------------------- CUDA against the twin


def run_both(cp: Any, X: np.ndarray, p: Params) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    Xd = cp.asarray(X, order="F" if X.flags.f_contiguous else "C")
    pd = {key: (cp.asarray(v) if key != "intercept" else v) for key, v in p.items()}
    got = score_rows_cuda(Xd, **pd)
    want = score_rows(Xd, **pd, xp=cp)
    return tuple(cp.asnumpy(a) for a in got), tuple(cp.asnumpy(a) for a in want)


def assert_cuda_matches(X: np.ndarray, p: Params, got: tuple, want: tuple, dtype: type) -> None:
    check_outputs(*got, X.shape[0])
    assert_segments_match(X, p, got[0], want[0], OUT_RTOL[dtype])
    same = got[0] == want[0]
    np.testing.assert_allclose(
        got[1][same], want[1][same], rtol=OUT_RTOL[dtype], atol=OUT_ATOL[dtype]
    )
    np.testing.assert_allclose(got[2], want[2], rtol=OUT_RTOL[dtype], atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("n_features", [1, 20, 70])
@pytest.mark.parametrize("k", [1, 8, 33])
@pytest.mark.parametrize("n", [0, 1, 255, 257, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_twin(dtype: type, n: int, k: int, n_features: int) -> None:
    cp = pytest.importorskip("cupy")
    X, p = make_problem(n, n_features, k, dtype, seed=n + 7 * k + n_features)
    got, want = run_both(cp, X, p)
    assert_cuda_matches(X, p, got, want, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_grid_stride_and_c_order(dtype: type) -> None:
    cp = pytest.importorskip("cupy")
    # More rows than one grid covers (SMs x 8 blocks x 256 threads), C-ordered input.
    X, p = make_problem(400_003, 12, 9, dtype, order="C", seed=3)
    got, want = run_both(cp, X, p)
    assert_cuda_matches(X, p, got, want, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ties_extremes_and_host_params(dtype: type) -> None:
    cp = pytest.importorskip("cupy")
    X, p = make_problem(500, 4, 3, dtype, seed=11)
    C = p["centroids"]
    p["centroids"] = np.concatenate([C, C])  # exact ties: lowest index must win
    X[:4, :] = np.nan  # fully imputed rows
    X[4, 0], X[5, 0] = np.inf, -np.inf  # imputed like NaN, and flagged
    # Host (NumPy) parameters are accepted and moved; the matrix must already be on device.
    got = tuple(cp.asnumpy(a) for a in score_rows_cuda(cp.asarray(X), **p, flags=True))
    want = score_rows(X, **p, xp=np, flags=True)
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_array_equal(got[4], want[4])
    assert_segments_match(X, p, got[0], want[0], OUT_RTOL[dtype])
    assert got[0].max() < 3  # the duplicated centroids 3..5 never win a tie
    np.testing.assert_allclose(got[1], want[1], rtol=OUT_RTOL[dtype], atol=OUT_ATOL[dtype])
    np.testing.assert_allclose(got[2], want[2], rtol=OUT_RTOL[dtype], atol=1e-7)

    one = np.ones(1, dtype)
    zero = np.zeros(1, dtype)
    Xe = cp.asarray(np.array([[1000.0], [-1000.0], [0.0]], dtype=dtype))
    pe: Params = dict(
        fill_s=zero, a_s=one, d_s=zero, centroids=np.array([[-1.0], [1.0]], dtype),
        fill_p=zero, a_p=one, d_p=zero, coef=one, intercept=dtype(0),
    )  # fmt: skip
    seg, _, prop = (cp.asnumpy(a) for a in score_rows_cuda(Xe, **pe))
    np.testing.assert_array_equal(prop, np.array([1.0, 0.0, 0.5], np.float32))
    np.testing.assert_array_equal(seg, [1, 0, 0])  # 0 is a tie between -1 and 1


@pytest.mark.gpu
def test_cuda_rejects_bad_arguments() -> None:
    cp = pytest.importorskip("cupy")
    X, p = make_problem(5, 3, 2, np.float64)
    with pytest.raises(TypeError):
        score_rows_cuda(X, **p)  # host matrix: no hidden transfer
    n_features = 200
    limit = score_rows_module.device_shared_limit(cp.cuda.runtime.getDevice())
    k = limit // (8 * n_features)  # too many for float64 even with the opt-in
    assert shared_bytes(k, n_features, 8) > limit
    Xb, pb = make_problem(4, n_features, k, np.float64)
    with pytest.raises(ValueError, match="shared"):
        score_rows_cuda(cp.asarray(Xb), **pb)


@pytest.mark.gpu
def test_cuda_equals_cpu_kernel_exactly() -> None:
    """Built without FMA contraction, the kernel gives the CPU kernel's float64 results bit for bit.

    Parts are marked backend-independent and ``--resume`` may mix them. ``exp`` is the one
    function the two do not share (libdevice vs libm, both within an ulp of float64);
    outputs are float32, so a difference would need a float64 result within an ulp of a
    float32 rounding boundary.
    """
    cp = pytest.importorskip("cupy")
    from kernels.score_rows_cpu import score_rows_cpu

    X, p = exact_case()
    got = tuple(cp.asnumpy(a) for a in score_rows_cuda(cp.asarray(X, order="F"), **p, flags=True))
    want = score_rows_cpu(X, **p)
    for name, a, b in zip(("segment", "distance", "propensity", "inf_col", "nulls"), got, want, strict=True):
        np.testing.assert_array_equal(a.astype(b.dtype), b, err_msg=name)


@pytest.mark.gpu
def test_cuda_opts_in_to_more_shared_memory() -> None:
    """k = 64 over 100 features (57.6 KB of parameters) stays in the fused kernel, exactly the CPU's."""
    cp = pytest.importorskip("cupy")
    from kernels.score_rows_cpu import score_rows_cpu

    assert shared_bytes(64, 100, 8) > score_rows_module.MAX_SHARED_BYTES
    assert score_rows_module.fits_shared_memory(
        64, 100, 8, score_rows_module.device_shared_limit(cp.cuda.runtime.getDevice()))
    X, p = exact_case(n=3_001, n_features=100, k=64, seed=4)
    got = tuple(cp.asnumpy(a) for a in score_rows_cuda(cp.asarray(X, order="F"), **p, flags=True))
    want = score_rows_cpu(X, **p)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.astype(b.dtype), b)
    # A small model launched after it still works (the attribute only grows).
    Xs, ps = make_problem(100, 5, 3, np.float64)
    small = score_rows_cuda(cp.asarray(Xs), **ps)
    np.testing.assert_array_equal(cp.asnumpy(small[0]), score_rows_cpu(Xs, **ps)[0])


@pytest.mark.gpu
def test_cuda_dense_path_flags_values_beyond_max_input_abs() -> None:
    cp = pytest.importorskip("cupy")
    from kernels.score_rows import score_rows_dense

    X, p = overflow_case()
    want = score_rows(X, **p, xp=np, flags=True)
    got = [cp.asnumpy(a) for a in score_rows_dense(cp.asarray(X), **{k: cp.asarray(v) for k, v in p.items()},
                                                   xp=cp)]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[3], want[3])
    assert np.isfinite(got[1]).all() and (got[3][[3, 4, 5]] >= 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("k", [3, 20])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_flags_and_leading_dimension(dtype: type, k: int) -> None:
    """Flags equal the twin's; the first n rows of a taller (ld, F) buffer score alike."""
    cp = pytest.importorskip("cupy")
    from kernels.score_rows import launch_score_rows, prepare_cuda_params

    X, p = make_problem(3_001, 9, k, dtype, seed=k)
    rng = np.random.default_rng(2)
    X[rng.random(X.shape) < 0.02] = np.inf
    X[rng.random(X.shape) < 0.02] = -np.inf
    X[:, 4] = np.nan  # a column of nulls: one global atomic per block
    want = score_rows(X, **p, xp=np, flags=True)
    ld, n = 4_096, X.shape[0]
    buf = np.full((ld, X.shape[1]), 7.0, dtype=dtype, order="F")  # rows past n are not scored
    buf[:n] = X
    params = prepare_cuda_params(np.dtype(dtype), X.shape[1], **p)
    outs = (cp.empty(ld, cp.int32), cp.empty(ld, cp.float32), cp.empty(ld, cp.float32),
            cp.empty(ld, cp.int32), cp.zeros(X.shape[1], cp.uint64))
    launch_score_rows(cp.asarray(buf, order="F"), n, ld, params, *outs)
    got = tuple(cp.asnumpy(o) for o in outs)
    got = (got[0][:n], got[1][:n], got[2][:n], got[3][:n], got[4])
    assert_cuda_matches(X, p, got[:3], want[:3], dtype)
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_array_equal(got[4], want[4])
    assert int(got[4][4]) == n
