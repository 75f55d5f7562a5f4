"""``engine recommend --backend auto|cpu|gpu``: the flag, its errors, and the GPU top-N path.

On CI (no GPU): the flag is engine score's (spelling, choices, default), ``--backend gpu``
without a GPU is score's exit 7, ``auto`` runs the CPU and the manifest says so, and the GPU
path's host side (operands, the bit-packed mask, level checks, imputation in the kernel, the
block consumer) runs through :class:`engine.offers.gpu_topn.TwinStage`, which runs the
kernel's NumPy twin over exactly the buffers a device slot uploads, and equals the CPU path.
The tests marked ``gpu`` run the CLI and the device stage on a GPU (``bench/device_check.sh``)
and skip, with their reason, elsewhere; the data and models they use are built on CI too.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from test_recommend import catalogue, customers, write

import engine
from engine.backends import detect
from engine.errors import BackendError, UsageError
from engine.models.artifact import load_model
from engine.offers.gpu_topn import (
    GpuTopN,
    TwinStage,
    check_levels,
    device_operands,
    pack_block,
    restricted_offers,
)
from engine.offers.recommend import block_mask, prepare, recommend_block, restrictions
from kernels.topn_offers import pack_allowed, unpack_allowed

T = 5


def _with_bad_values(table: pa.Table) -> pa.Table:
    """NaN, ±inf and a value beyond ±1e15 in the features (imputed or rejected per policy)."""
    f1 = table.column("f1").to_numpy().copy()
    f2 = table.column("f2").to_numpy().copy()
    f1[5], f1[17], f1[301] = np.inf, -np.inf, np.nan
    f2[42] = 3e16
    table = table.set_column(table.schema.get_field_index("f1"), "f1", pa.array(f1))
    return table.set_column(table.schema.get_field_index("f2"), "f2", pa.array(f2))


@pytest.fixture(scope="module")
def offers_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3,000 customers in 2 files (a categorical column, nulls), 5 offers (a rule, one not excluding
    owners), a model from engine.train; a budgeted catalogue and a copy of the data with bad values."""
    root = tmp_path_factory.mktemp("recommend-gpu")
    table = customers(3_000, T, seed=11)
    data = write(table, root / "data", 2)
    offers = catalogue(root / "offers.toml", T, top=3)
    engine.train(str(data), None, str(root / "model"), offers=str(offers), k=2, report=False, backend="cpu")
    bad = root / "bad"
    bad.mkdir()
    pq.write_table(_with_bad_values(table), bad / "part0.parquet")
    budgets = catalogue(root / "budgets.toml", T, top=2, budgets={1: 400, 3: 250})
    return {"root": root, "data": data, "model": root / "model", "bad": bad, "budgets": budgets}


# ---------------------------------------------------------------- the flag (CI)

def test_backend_option_is_engine_scores(cli, tmp_path: Path) -> None:
    """Same flag, choices, default and help as engine score's; an unknown choice is typer's exit 2 for both."""
    import inspect

    import typer.main

    from engine.cli import app

    commands = typer.main.get_command(app).commands   # type: ignore[attr-defined]

    def option(command: str, name: str = "backend") -> object:
        return next(p for p in commands[command].params if p.name == name)

    gpus = [option(c, "gpus") for c in ("recommend", "score")]
    assert gpus[0].opts == gpus[1].opts == ["--gpus"] and gpus[0].default is gpus[1].default is None  # type: ignore[attr-defined]
    assert inspect.signature(engine.recommend).parameters["gpus"].default is None

    rec, score = option("recommend"), option("score")
    assert rec.opts == score.opts == ["--backend"]                           # type: ignore[attr-defined]
    assert rec.default == score.default and str(rec.default.value) == "auto"  # type: ignore[attr-defined]
    assert rec.help == score.help                                            # type: ignore[attr-defined]
    args = ["--model", tmp_path, "--input", tmp_path, "--output", tmp_path / "o", "--backend", "tpu"]
    bad = [cli(command, *args) for command in ("recommend", "score")]
    assert [b.exit_code for b in bad] == [2, 2]
    for b in bad:
        assert all(f"'{c}'" in b.stderr for c in ("auto", "cpu", "gpu")), b.stderr
    assert inspect.signature(engine.recommend).parameters["backend"].default == "auto"


@pytest.mark.skipif(detect().gpu_usable, reason="a usable GPU is present: --backend gpu is not an error here")
def test_backend_gpu_without_a_gpu_is_scores_exit_7(offers_model: dict[str, Path], cli, tmp_path: Path) -> None:
    args = ["--model", offers_model["model"], "--input", offers_model["data"]]
    rec = cli("recommend", *args, "--output", tmp_path / "r", "--backend", "gpu")
    dry = cli("recommend", *args, "--output", tmp_path / "r", "--backend", "gpu", "--dry-run")
    score = cli("score", *args, "--output", tmp_path / "s", "--backend", "gpu")
    assert rec.exit_code == dry.exit_code == score.exit_code == 7
    first = rec.stderr.splitlines()[0]
    assert first == dry.stderr.splitlines()[0] == score.stderr.splitlines()[0]   # the very message of score
    assert "--backend gpu" in first and detect().gpu_reason in first and "--backend cpu" in first
    assert not any(tmp_path.iterdir())                                          # no output, no staging
    with pytest.raises(BackendError):
        engine.recommend(str(offers_model["data"]), str(offers_model["model"]), str(tmp_path / "a"), backend="gpu")
    with pytest.raises(UsageError, match="auto, cpu, gpu"):
        engine.recommend(str(offers_model["data"]), str(offers_model["model"]), str(tmp_path / "a"), backend="tpu")


def test_auto_runs_where_it_can_and_the_manifest_says_which(offers_model: dict[str, Path], cli,
                                                           tmp_path: Path) -> None:
    """``auto`` (the default) = the GPU where one is usable, else the CPU; the manifest, the dry run
    and the summary line say which; ``--backend cpu`` publishes the same rows."""
    want = "gpu" if detect().gpu_usable else "cpu"
    args = ["recommend", "--model", offers_model["model"], "--input", offers_model["data"], "-q"]
    dry = cli(*args, "--output", tmp_path / "auto", "--dry-run")
    assert dry.exit_code == 0 and f"backend {want}, tasks on threads of this process" in dry.stdout
    auto = cli(*args, "--output", tmp_path / "auto")
    assert auto.exit_code == 0, auto.output
    assert f"s on {want} -> " in auto.stdout
    manifest = json.loads((tmp_path / "auto" / "_manifest.json").read_text())
    assert (manifest["backend"], manifest["backend_requested"], manifest["kernel"]) == (want, "auto", want)
    cpu = engine.recommend(str(offers_model["data"]), str(offers_model["model"]), str(tmp_path / "cpu"),
                           backend="cpu")
    assert (cpu["backend"], cpu["backend_requested"], cpu["kernel"]) == ("cpu", "cpu", "cpu")
    a, c = (ds.dataset(tmp_path / d).to_table().sort_by([("customer_id", "ascending"), ("rank", "ascending")])
            for d in ("auto", "cpu"))
    if want == "cpu":
        assert a.equals(c)
    else:   # the GPU's EVs differ in the last bits: test_cli_gpu_equals_cpu compares them
        assert a.num_rows == c.num_rows


def test_the_numpy_twin_is_the_cpu_backends(offers_model: dict[str, Path], tmp_path: Path) -> None:
    from engine.jobs.recommend import RecommendOptions, plan_recommend

    opts = dict(input=str(offers_model["data"]), model=str(offers_model["model"]), output=str(tmp_path / "o"),
                kernel="numpy")
    with pytest.raises(UsageError, match="CPU backend"):
        plan_recommend(RecommendOptions(**opts, backend="gpu"))
    plan = plan_recommend(RecommendOptions(**opts))           # auto: the twin pins the CPU
    assert (plan.backend, plan.kernel, plan.device_settings()) == ("cpu", "numpy", None)
    assert plan.describe()["backend"] == "cpu"


# ---------------------------------------------------------------- the GPU path's host side (CI)

def _clear_rows(ev: np.ndarray, idx: np.ndarray, gap: float = 1e-9) -> np.ndarray:
    """Rows whose chosen scores are not near-tied with the next (the order is then well defined)."""
    filled = idx >= 0
    e = np.where(filled, ev, -1e300)
    close = (np.abs(np.diff(e, axis=1)) <= gap) & filled[:, 1:]
    return ~close.any(axis=1)


@pytest.mark.parametrize("case", ["impute", "reject-budgets"])
def test_twin_stage_equals_the_cpu_path(offers_model: dict[str, Path], case: str) -> None:
    """The GPU consumer over the host twin of its device (same operands, packed mask read back as
    the kernel reads it, levels, in-kernel imputation, blocks of 700 rows: not a multiple of 8)
    gives the CPU path's offers, EVs (1e-9), reasons and long table."""
    model = load_model(str(offers_model["model"]))
    plan = prepare(model)
    table = _with_bad_values(ds.dataset(offers_model["data"]).to_table())
    budgets = case != "impute"
    lam = np.array([0.0, 0.7, 0.0, 1.3, 0.0]) if budgets else None
    keep = plan.top + 1 if budgets else plan.top
    stage = TwinStage(device_operands(plan, len(model.categoricals)), block_rows=700, keep=keep)
    kw = dict(id_column="customer_id", keep=keep, flag_bad=budgets)
    cpu = recommend_block(table, model, plan, lam, **kw)
    gpu = recommend_block(table, model, plan, lam, kernel="gpu", device=stage, **kw)
    clear = _clear_rows(cpu.ev, cpu.idx)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(gpu.idx[clear], cpu.idx[clear])
    np.testing.assert_allclose(gpu.ev, cpu.ev, rtol=0, atol=1e-9)
    assert (cpu.idx >= 0).mean() > 0.5
    if budgets:
        assert cpu.bad is not None and gpu.bad is not None
        np.testing.assert_array_equal(gpu.bad, cpu.bad)
        assert cpu.bad[[5, 17, 42]].all() and not cpu.bad[301]      # ±inf and 3e16 rejected, NaN imputed
        assert (gpu.idx[cpu.bad] == -1).all()
    else:
        assert cpu.bad is None and (gpu.idx[[5, 17, 42, 301]] >= 0).any()   # imputed rows get offers
    for name in ("customer_id", "rank", "offer", "propensity", "reason"):
        assert gpu.table.column(name).equals(cpu.table.column(name)), name
    np.testing.assert_allclose(gpu.table.column("expected_value").to_numpy(),
                               cpu.table.column("expected_value").to_numpy(), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(gpu.customers, cpu.customers)


def test_operands_and_the_packed_mask(offers_model: dict[str, Path]) -> None:
    model = load_model(str(offers_model["model"]))
    plan = prepare(model)
    ops = device_operands(plan, len(model.categoricals))
    F = len(model.features)
    assert ops.W.shape == (F, T) and ops.catW.shape == plan.catW.shape and ops.catbase.shape == plan.catbase.shape
    for a in (ops.W, ops.bias, ops.catW, ops.catbase, ops.value, ops.cost, ops.mean, ops.fill):
        assert a.dtype == np.float64 and a.flags.c_contiguous
    np.testing.assert_array_equal(ops.fill, plan.fill)
    # Offer 4 has no rule and keeps owners: allowed everywhere, no mask bytes.
    assert ops.restricted == restricted_offers(plan) == (0, 1, 2, 3)
    assert ops.mask_row.tolist() == [0, 1, 2, 3, -1]
    # A worker process that unpickles the plan finds the same stage.
    assert device_operands(pickle.loads(pickle.dumps(plan)), len(model.categoricals)).key == ops.key
    bare = device_operands(plan, 0)     # no categorical columns: a zero catW row, no reason candidates
    assert bare.n_cat == 0 and (bare.catW == 0).all() and bare.catW.shape == (1, T) and np.isinf(bare.catbase).all()
    # The packed block reads back (as the kernel reads it) to the CPU path's mask, at any offsets.
    table = ds.dataset(offers_model["data"]).to_table()
    vectors, _, _ = restrictions(table, plan)
    assert set(vectors) == set(ops.restricted)
    out = np.zeros((len(ops.restricted), 200), np.uint8)
    for a, b in ((0, 1), (0, 1_000), (3, 1_002), (1_001, 1_593), (2_999, 3_000)):
        pack_block(vectors, ops.restricted, a, b, out)
        np.testing.assert_array_equal(unpack_allowed(out, ops.mask_row, b - a), block_mask(vectors, a, b, T))
    allowed = (np.random.default_rng(3).random((37, 6)) < 0.7).astype(np.uint8)
    allowed[:, 2] = 1
    packed, mask_row = pack_allowed(allowed)
    assert mask_row[2] == -1 and packed.shape == (5, 5)
    np.testing.assert_array_equal(unpack_allowed(packed, mask_row, 37), allowed)


class _CountingStage(TwinStage):
    runs = 0

    def lease(self):  # noqa: ANN201
        lease = super().lease()
        run = lease.run

        def counted(n, prices):  # noqa: ANN001, ANN202
            _CountingStage.runs += 1
            return run(n, prices)

        lease.run = counted   # type: ignore[method-assign]
        return lease


def test_levels_are_checked_on_the_host_before_a_launch(offers_model: dict[str, Path]) -> None:
    model = load_model(str(offers_model["model"]))
    plan = prepare(model)
    ops = device_operands(plan, 1)
    L = ops.n_levels
    good = np.array([[0], [L - 1]], np.int32)
    check_levels(good, 2, 1, L)
    for bad, why in ((np.array([[0], [L]], np.int32), "must lie in"), (np.array([[-1], [0]], np.int32), "must lie in"),
                     (np.zeros((2, 2), np.int32), "level indices"), (None, "level indices"),
                     (np.zeros((1, 1), np.int32), "level indices")):
        with pytest.raises(ValueError, match=why):
            check_levels(bad, 2, 1, L)
    stage = _CountingStage(ops, block_rows=64, keep=plan.top)
    consumer = GpuTopN(2, plan, {}, np.zeros(T), plan.top, stage)

    class Block:
        start, stop, X, levels = 0, 2, np.zeros((2, len(model.features)), order="F"), np.array([[0], [L]], np.int32)

    with pytest.raises(ValueError, match="must lie in"):
        consumer(Block)
    assert _CountingStage.runs == 0                    # nothing was launched
    Block.levels = good
    consumer(Block)
    assert _CountingStage.runs == 1 and (consumer.idx >= -1).all()


# ---------------------------------------------------------------- on a GPU (device_check.sh)

def _run(cli, offers_model: dict[str, Path], out: Path, backend: str, *flags: object) -> dict:  # noqa: ANN001
    result = cli("recommend", "--model", offers_model["model"], "--output", out, "--backend", backend, "-q", *flags)
    assert result.exit_code == 0, result.output
    return json.loads((out / "_manifest.json").read_text())


def _by_row(out: Path) -> pa.Table:
    return ds.dataset(out).to_table().sort_by([("customer_id", "ascending"), ("rank", "ascending")])


def _case_flags(offers_model: dict[str, Path], case: str) -> list[object]:
    """The CLI flags of a GPU = CPU comparison case: plain, budgets, or rejected bad rows."""
    flags: list[object] = ["--input", offers_model["bad" if case == "reject" else "data"]]
    if case == "budgets":
        flags += ["--offers", offers_model["budgets"]]
    if case == "reject":
        flags += ["--on-bad-rows", "reject", "--max-rejected-fraction", "0.5"]
    return flags


def _check_case(m: dict, out: Path, case: str) -> None:
    """What each case must show on either backend: the bad rows set aside, the budgets held."""
    if case == "reject":
        assert m["totals"]["rows_rejected"] == 3
    if case == "budgets":
        counts = _by_row(out).column("offer").to_pandas().astype(str).value_counts()
        assert counts.get("offer_1", 0) <= 400 and counts.get("offer_3", 0) <= 250


@pytest.mark.parametrize("case", ["plain", "budgets", "reject"])
def test_cli_cases_of_the_gpu_comparison_run_on_the_cpu(offers_model: dict[str, Path], cli, tmp_path: Path,
                                                        case: str) -> None:
    """The inputs, catalogue and flags the device test compares on run here (the CPU side): only the
    device's run skips."""
    m = _run(cli, offers_model, tmp_path / "cpu", "cpu", *_case_flags(offers_model, case))
    assert m["backend"] == "cpu"
    _check_case(m, tmp_path / "cpu", case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["plain", "budgets", "reject"])
def test_cli_gpu_equals_cpu(offers_model: dict[str, Path], cli, tmp_path: Path, case: str) -> None:
    """``--backend gpu`` = ``--backend cpu``: same rows and offers where no near-tie, EV within 1e-9,
    reasons; with budgets (never exceeded), categorical columns and rejected bad rows."""
    flags = _case_flags(offers_model, case)
    m_gpu = _run(cli, offers_model, tmp_path / "gpu", "gpu", *flags)
    m_cpu = _run(cli, offers_model, tmp_path / "cpu", "cpu", *flags)
    _check_case(m_gpu, tmp_path / "gpu", case)
    assert (m_gpu["backend"], m_gpu["kernel"], m_cpu["backend"]) == ("gpu", "gpu", "cpu")
    g, c = _by_row(tmp_path / "gpu"), _by_row(tmp_path / "cpu")
    gf, cf = g.to_pandas(), c.to_pandas()
    ev_c = cf["expected_value"].to_numpy()
    # Near-tied neighbours (1e-9) may swap: compare the customers whose offers are all clear.
    same_customer = cf["customer_id"].to_numpy()[1:] == cf["customer_id"].to_numpy()[:-1]
    tied = same_customer & (np.abs(np.diff(ev_c)) <= 1e-9)
    unclear = set(cf["customer_id"].to_numpy()[1:][tied])
    assert len(unclear) < 0.01 * cf["customer_id"].nunique()
    keep_g, keep_c = ~gf["customer_id"].isin(unclear), ~cf["customer_id"].isin(unclear)
    gs, cs = gf[keep_g].reset_index(drop=True), cf[keep_c].reset_index(drop=True)
    assert len(gs) == len(cs) and (gs["customer_id"] == cs["customer_id"]).all() and (gs["rank"] == cs["rank"]).all()
    assert (gs["offer"].astype(str) == cs["offer"].astype(str)).all()
    assert (gs["reason"].astype(object).fillna("-") == cs["reason"].astype(object).fillna("-")).all()
    np.testing.assert_allclose(gs["expected_value"], cs["expected_value"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(gs["propensity"], cs["propensity"], rtol=1e-6)
    assert m_gpu["totals"]["rows_rejected"] == m_cpu["totals"]["rows_rejected"]
    if case == "reject":
        rej = [ds.dataset(p / "_rejected").to_table().column("customer_id").to_pylist() for p in (tmp_path / "gpu",
                                                                                                  tmp_path / "cpu")]
        assert sorted(rej[0]) == sorted(rej[1])
    if case == "budgets":
        assert abs(m_gpu["budgets"]["achieved_value"] - m_cpu["budgets"]["achieved_value"]) <= \
            1e-6 * m_cpu["budgets"]["achieved_value"]


@pytest.mark.gpu
@pytest.mark.parametrize("block_rows", [700, 65_536])
def test_device_stage_equals_the_twin_stage(offers_model: dict[str, Path], block_rows: int) -> None:
    """The device's buffers (strided X, packed mask, levels, outputs) give the twin's answer on every block."""
    from engine.offers.gpu_topn import DeviceSettings, get_stage

    model = load_model(str(offers_model["model"]))
    plan = prepare(model)
    table = _with_bad_values(ds.dataset(offers_model["data"]).to_table())
    lam = np.array([0.0, 0.7, 0.0, 1.3, 0.0])
    keep = plan.top + 1
    stage = get_stage(plan, len(model.categoricals), keep, DeviceSettings(block_rows=block_rows))
    twin = TwinStage(stage.operands, block_rows=stage.block_rows, keep=keep)
    kw = dict(id_column="customer_id", keep=keep)
    dev = recommend_block(table, model, plan, lam, kernel="gpu", device=stage, **kw)
    host = recommend_block(table, model, plan, lam, kernel="gpu", device=twin, **kw)
    clear = _clear_rows(host.ev, host.idx)
    np.testing.assert_array_equal(dev.idx[clear], host.idx[clear])
    np.testing.assert_allclose(dev.ev, host.ev, rtol=0, atol=1e-9)
    assert dev.table.column("reason").equals(host.table.column("reason"))
    # A level index outside catW is refused on the host; the stage stays usable.
    consumer = GpuTopN(2, plan, {}, lam, keep, stage)

    class Block:
        start, stop, X, levels = 0, 2, np.zeros((2, len(model.features)), order="F"), \
            np.array([[0], [stage.operands.n_levels]], np.int32)

    with pytest.raises(ValueError, match="must lie in"):
        consumer(Block)
    Block.levels = np.zeros((2, 1), np.int32)
    consumer(Block)
    assert (consumer.idx[:, 0] >= 0).all()


@pytest.mark.gpu
def test_kill_and_resume_on_the_gpu(offers_model: dict[str, Path], tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "out"
    args = [sys.executable, "-m", "engine", "recommend", "--model", str(offers_model["model"]), "--input",
            str(offers_model["data"]), "--output", str(out), "--progress", "quiet", "--backend", "gpu"]
    # As test_recommend's killed_after_a_part, but the caller's PYTHONPATH stays behind the engine's
    # (the device machine's Dask wheels live there).
    path = os.environ.get("PYTHONPATH")
    engine_path = str(Path(engine.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": f"{engine_path}{os.pathsep}{path}" if path else engine_path}
    proc = subprocess.Popen(args, env={**env, "ENGINE_TEST_PAUSE_AFTER_PART": "30"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not list(tmp_path.glob(".out.engine/staging/_parts/part-*.json")):
            time.sleep(0.1)
        assert list(tmp_path.glob(".out.engine/staging/_parts/part-*.json")), "no part was staged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "_SUCCESS").exists()
    done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["parts_reused"] >= 1 and manifest["backend"] == "gpu"
    cpu = tmp_path / "cpu"
    engine.recommend(str(offers_model["data"]), str(offers_model["model"]), str(cpu), backend="cpu")
    g, c = _by_row(out), _by_row(cpu)
    assert g.column("customer_id").equals(c.column("customer_id")) and g.num_rows == c.num_rows
