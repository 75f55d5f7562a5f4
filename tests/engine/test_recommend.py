"""``engine recommend`` end to end: a NumPy reference, masks, budgets against SciPy's HiGHS, API = CLI, resume.

Real parts: Parquet files, models trained by ``engine train --offers``, the compiled kernel,
the score commit protocol, a real kill (SIGKILL of a CLI process) and ``--resume``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from test_object_store import _keys, _upload_dir, _uri, s3  # noqa: F401 - s3 is a fixture (moto server)

import engine
from bench.budgets_lp import lp_optimum
from engine.models.artifact import load_model
from engine.models.categorical import level_matrix

RULE = "age >= 18 and region in ['north', 'east'] and not (income is null)"


def customers(n: int, T: int, seed: int, first_id: int = 0) -> pa.Table:
    """Customers with numeric, categorical and null features and T product-ownership targets."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 4))
    region = rng.choice(["north", "east", "south", "west"], n, p=[0.3, 0.3, 0.2, 0.2])
    cols: dict[str, object] = {
        "customer_id": np.arange(first_id, first_id + n, dtype=np.int64),
        "age": np.where(rng.random(n) < 0.03, np.nan, rng.integers(15, 80, n).astype(float)),
        "income": np.where(rng.random(n) < 0.05, np.nan, 50 + 10 * Z[:, 2]),
        "f1": Z[:, 0], "f2": Z[:, 1], "region": region,
    }
    for t in range(T):
        logit = -1.6 + (0.8 + 0.15 * t) * Z[:, t % 3] - 0.4 * Z[:, (t + 1) % 3] + 0.5 * (region == "north") * (t % 2)
        cols[f"owns_{t}"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pa.table(cols)


def write(table: pa.Table, root: Path, files: int) -> Path:
    root.mkdir(parents=True)
    step = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), root / f"part{i}.parquet")
    return root


def catalogue(path: Path, T: int, top: int, budgets: dict[int, int] | None = None, rule_on: tuple[int, ...] = (0,),
              values: list[float] | None = None) -> Path:
    lines = [f"top = {top}"]
    for t in range(T):
        lines += ["[[offer]]", f'id = "offer_{t}"', f'target = "owns_{t}"',
                  f"value = {values[t] if values else 10.0 + 7.0 * t}", f"cost = {0.5 * (t % 3)}"]
        if t in rule_on:
            lines.append(f'eligible = "{RULE}"')
        if t == T - 1:
            lines.append("exclude_owned = false")
        if budgets and t in budgets:
            lines.append(f"budget = {budgets[t]}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, cli) -> dict[str, Path]:
    """4,000 customers in 2 files, 5 offers (one with a rule, one not excluding owners), a model from the CLI."""
    root = tmp_path_factory.mktemp("recommend")
    data = write(customers(4_000, 5, seed=1), root / "data", 2)
    offers = catalogue(root / "offers.toml", 5, top=3)
    model = root / "model"
    result = cli("train", "--input", str(data), "--offers", str(offers), "--output", str(model), "--k", "3",
                 "--seed", "2", "--backend", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert "cv AUC" in result.output
    from engine.report.html import read_report_data

    report = read_report_data((model / "report.html").read_text())   # the offer family's page
    assert [o["offer"] for o in report["offers"]] == [f"offer_{t}" for t in range(5)]
    assert all(0.5 < o["auc"] < 1 and o["positives"] >= 20 for o in report["offers"][:3])
    return {"root": root, "data": data, "offers": offers, "model": model}


def reference(model_dir: Path, table: pa.Table, values: np.ndarray, costs: np.ndarray, top: int,
              rule_on: tuple[int, ...], owned_excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-N offer indices and EVs from the model's stored arrays with NumPy/pandas alone."""
    m = load_model(model_dir)
    frame = table.to_pandas()
    X = frame[list(m.features)].to_numpy(dtype=np.float64)
    X = np.where(np.isfinite(X), X, m.propensity.fill)
    Z = (X - m.propensity.mean) / m.propensity.scale
    logit = Z @ m.head_coef.T + m.head_intercept
    if m.categoricals:
        L = level_matrix(table, m.categoricals)
        logit = logit + m.head_cat_coef[:, L].sum(axis=2).T
    u = m.head_platt[:, 0] * logit + m.head_platt[:, 1]
    ev = 1 / (1 + np.exp(-u)) * values - costs
    rule = (frame["age"] >= 18) & frame["region"].isin(["north", "east"]) & frame["income"].notna()
    ok = np.ones_like(ev, dtype=bool)
    for t in rule_on:
        ok[:, t] &= rule.to_numpy()
    for t in np.flatnonzero(owned_excluded):
        ok[:, t] &= frame[f"owns_{t}"].to_numpy() != 1
    ok &= ev >= 0.0
    ranked = np.where(ok, ev, -np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :top]
    return np.where(np.take_along_axis(ok, order, 1), order, -1), np.take_along_axis(ranked, order, 1)


def as_matrix(out: pd.DataFrame, ids: np.ndarray, top: int, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pos = {i: k for k, i in enumerate(ids)}
    idx = np.full((ids.size, top), -1)
    ev = np.full((ids.size, top), -np.inf)
    code = {n: t for t, n in enumerate(names)}
    rows = out["customer_id"].map(pos).to_numpy()
    ranks = out["rank"].to_numpy().astype(int) - 1
    idx[rows, ranks] = out["offer"].astype(str).map(code).to_numpy()
    ev[rows, ranks] = out["expected_value"].to_numpy()
    return idx, ev


def test_recommend_equals_numpy_reference_and_api(small: dict[str, Path], cli) -> None:
    out = small["root"] / "out"
    result = cli("recommend", "--model", str(small["model"]), "--input", str(small["data"]), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "_SUCCESS").exists() and (out / "_manifest.json").exists()
    got = ds.dataset(out).to_table()
    assert got.schema.names == ["customer_id", "rank", "offer", "propensity", "expected_value", "reason"]
    assert pa.types.is_dictionary(got.schema.field("offer").type)
    table = ds.dataset(small["data"]).to_table()
    names = [f"offer_{t}" for t in range(5)]
    values = np.array([10.0 + 7.0 * t for t in range(5)])
    costs = np.array([0.5 * (t % 3) for t in range(5)])
    excluded = np.array([True, True, True, True, False])
    want_idx, want_ev = reference(small["model"], table, values, costs, 3, (0,), excluded)
    frame = got.to_pandas()
    idx, ev = as_matrix(frame, table.column("customer_id").to_numpy(), 3, names)
    # Rows without near-ties: same offers in the same order.
    both = np.isfinite(want_ev[:, 1:]) & np.isfinite(want_ev[:, :-1])
    gaps = np.where(both, np.abs(np.diff(np.where(np.isfinite(want_ev), want_ev, 0.0), axis=1)), np.inf)
    clear = gaps.min(axis=1) > 1e-9
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(idx[clear], want_idx[clear])
    filled = want_idx >= 0
    np.testing.assert_allclose(ev[filled & clear[:, None]], want_ev[filled & clear[:, None]], atol=1e-6)
    # Never an ineligible or owned offer.
    by_id = table.to_pandas().set_index("customer_id")
    rows = by_id.loc[frame["customer_id"]]
    offer = frame["offer"].astype(str).to_numpy()
    got0 = offer == "offer_0"
    r0 = rows[got0]
    assert ((r0["age"] >= 18) & r0["region"].isin(["north", "east"]) & r0["income"].notna()).all()
    for t in range(4):
        assert (rows[offer == f"offer_{t}"][f"owns_{t}"] != 1).all()
    assert (rows[offer == "offer_4"]["owns_4"] == 1).any()  # exclude_owned = false is honoured
    assert frame["reason"].notna().mean() > 0.9
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["rows_out"] == len(frame)
    assert [o["offer"] for o in manifest["offers"]] == names
    # API twin: the same rows from Model.recommend on a pandas frame.
    api = engine.load_model(str(small["model"])).recommend(table.to_pandas())
    merged = api.sort_values(["customer_id", "rank"]).reset_index(drop=True)
    cli_sorted = frame.sort_values(["customer_id", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(merged.astype({"offer": str}), cli_sorted.astype({"offer": str}))
    # model show lists the heads
    shown = cli("model", "show", str(small["model"]))
    assert shown.exit_code == 0 and "5 offer heads" in shown.output and "offer_3" in shown.output


def test_api_bad_rows_policy_is_scores(small: dict[str, Path]) -> None:
    """Model.recommend(on_bad_rows=...): 'impute' treats ±inf as missing (the CLI's impute), 'fail'
    raises BadRowsError naming the row and column, 'reject' is for batch runs only."""
    table = ds.dataset(small["data"]).to_table().slice(0, 400)
    model = engine.load_model(str(small["model"]))
    feature = model.artifact.features[0]
    values = table.column(feature).to_numpy(zero_copy_only=False).astype(float)
    values[[7, 300]] = [np.inf, np.nan]
    broken = table.set_column(table.schema.get_field_index(feature), feature, pa.array(values))
    missing = table.set_column(table.schema.get_field_index(feature), feature,
                               pa.array(np.where(np.isinf(values), np.nan, values)))
    got = model.recommend(broken)
    assert got.equals(model.recommend(missing))       # ±inf imputed as a missing value is
    with pytest.raises(engine.BadRowsError, match=rf"row 7 \({feature}: infinite value\)"):
        model.recommend(broken, on_bad_rows="fail")
    assert model.recommend(missing, on_bad_rows="fail").equals(got)   # NaN is missing, not bad
    with pytest.raises(engine.UsageError, match="'impute' or 'fail'"):
        model.recommend(broken, on_bad_rows="reject")


def test_catalogue_at_scoring_changes_values_not_targets(small: dict[str, Path], cli, tmp_path: Path) -> None:
    values = [100.0, 1.0, 1.0, 1.0, 1.0]
    other = catalogue(tmp_path / "values.toml", 5, top=1, values=values, rule_on=())
    api = engine.load_model(str(small["model"])).recommend(ds.dataset(small["data"]).to_table(), offers=str(other))
    counts = api.column("offer").to_pandas().astype(str).value_counts()
    assert counts.idxmax() == "offer_0" and (api.column("rank").to_numpy() == 1).all()
    bad = tmp_path / "bad.toml"
    bad.write_text(other.read_text().replace('target = "owns_2"', 'target = "owns_1"'))
    result = cli("recommend", "--model", str(small["model"]), "--input", str(small["data"]),
                 "--output", str(tmp_path / "o"), "--offers", str(bad))
    assert result.exit_code == 2 and "not targets" in result.output and "line 14:" in result.output
    assert not (tmp_path / "o").exists()
    result = cli("recommend", "--model", str(small["model"]), "--input", str(small["data"]),
                 "--output", str(tmp_path / "o"), "--top", "2", "--dry-run")
    assert result.exit_code == 0 and "top 2" in result.output and not (tmp_path / "o").exists()
    result = cli("recommend", "--model", str(small["model"]), "--input", str(small["data"]),
                 "--output", str(tmp_path / "o"), "--budget-sample-rows", "0")
    assert result.exit_code == 2 and "--budget-sample-rows" in result.output and not (tmp_path / "o").exists()
    result = cli("recommend", "--model", str(small["model"]), "--input", str(small["data"]),
                 "--output", str(tmp_path / "o"), "--gpus", "first")
    assert result.exit_code == 2 and "setting gpus (from --gpus)" in result.output
    with pytest.raises(engine.UsageError, match="budget_sample_rows= must be at least 1"):
        engine.recommend(str(small["data"]), str(small["model"]), str(tmp_path / "o"), budget_sample_rows=0)


BUDGETS = {0: 800, 2: 1500, 3: 3000, 5: 400, 7: 2000, 8: 6000}


def tied(table: pa.Table) -> pa.Table:
    """The customers with a few distinct values per feature and string ids: groups of hundreds
    share every feature, so their expected values tie exactly."""
    f = table.to_pandas()
    f["customer_id"] = [f"c-{i}" for i in f["customer_id"]]
    f["f1"], f["f2"] = np.sign(np.round(f["f1"])), np.sign(np.round(f["f2"]))
    f["age"] = np.where(f["age"].fillna(50) < 40, 30.0, 60.0)
    f["income"] = np.where(f["income"].fillna(50) < 50, 45.0, 55.0)
    return pa.Table.from_pandas(f, preserve_index=False)


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """20,000 customers x 10 offers (6 with budgets); a model trained on 4,000 others. ``tied``:
    the same with few distinct feature values (exact ties at every budget's threshold)."""
    root = tmp_path_factory.mktemp("budgets")
    offers = catalogue(root / "offers.toml", 10, 3, budgets=BUDGETS)
    made = {}
    for kind, shape in (("continuous", lambda t: t), ("tied", tied)):
        train_dir = write(shape(customers(4_000, 10, seed=5)), root / kind / "train", 1)
        data = write(shape(customers(20_000, 10, seed=6, first_id=10_000)), root / kind / "data", 4)
        engine.train(str(train_dir), None, str(root / kind / "model"), offers=str(offers), k=2, report=False,
                     backend="cpu")
        made[kind] = {"root": root / kind, "data": data, "model": root / kind / "model"}
    return made


@pytest.mark.parametrize(("kind", "sample_rows"), [("continuous", 50_000), ("continuous", 3_000),
                                                   ("tied", 50_000), ("tied", 3_000)])
def test_budgets_hold_and_reach_the_lp_optimum(budgeted: dict[str, Any], kind: str, sample_rows: int) -> None:
    """Prices from all rows (one pass) and from a 15% sample (then raised on full passes); with
    exact ties at the thresholds a binding budget is filled to the customer (a cut, not a price)."""
    root, data, model = budgeted[kind]["root"], budgeted[kind]["data"], budgeted[kind]["model"]
    T, top, budgets = 10, 3, BUDGETS
    out = root / f"out{sample_rows}"
    manifest = engine.recommend(str(data), str(model), str(out), budget_sample_rows=sample_rows)
    frame = ds.dataset(out).to_table().to_pandas()
    counts = frame["offer"].astype(str).value_counts()
    for j, b in budgets.items():
        assert counts.get(f"offer_{j}", 0) <= b                 # never exceeded
    assert (frame.groupby("customer_id").size() <= top).all()
    table = ds.dataset(data).to_table()
    values = np.array([10.0 + 7.0 * t for t in range(T)])
    costs = np.array([0.5 * (t % 3) for t in range(T)])
    excluded = np.array([t != T - 1 for t in range(T)])
    _, _ = reference(model, table.slice(0, 10), values, costs, top, (0,), excluded)  # the reference runs
    m = load_model(model)
    frame_in = table.to_pandas()
    X = np.where(np.isfinite(frame_in[list(m.features)].to_numpy(float)), frame_in[list(m.features)].to_numpy(float),
                 m.propensity.fill)
    logit = ((X - m.propensity.mean) / m.propensity.scale) @ m.head_coef.T + m.head_intercept
    logit += m.head_cat_coef[:, level_matrix(table, m.categoricals)].sum(axis=2).T
    ev = 1 / (1 + np.exp(-(m.head_platt[:, 0] * logit + m.head_platt[:, 1]))) * values - costs
    rule = ((frame_in["age"] >= 18) & frame_in["region"].isin(["north", "east"]) & frame_in["income"].notna()).to_numpy()
    ok = ev >= 0
    ok[:, 0] &= rule
    for t in np.flatnonzero(excluded):
        ok[:, t] &= frame_in[f"owns_{t}"].to_numpy() != 1
    optimum = lp_optimum(ev, ok, top, budgets)
    achieved = float(frame["expected_value"].sum())
    b = manifest["budgets"]
    assert abs(b["achieved_value"] - achieved) < 1e-6 * achieved
    assert achieved <= optimum * (1 + 1e-9)
    assert achieved >= 0.99 * optimum, (achieved, optimum)
    assert b["dual_bound"] >= optimum * (1 - 1e-9)             # a true upper bound
    assert set(b["lambda"]) == {f"offer_{j}" for j in budgets}
    if kind == "tied":
        ties = pd.DataFrame(ev).round(12).duplicated().mean()
        assert ties > 0.9, ties                                   # most customers share their EVs
    assert "sample_lambda" not in b   # each sample price was one sampled customer's threshold
    # Passes that only count (a sample's prices let in more on purpose) leave the parts to the last one.
    assert (b["passes_counting_only"] >= 1) == (sample_rows < table.num_rows), b
    assert {o["offer"]: o["customers"] for o in manifest["offers"]} == counts.to_dict()
    if sample_rows < table.num_rows:   # Model.recommend prices from a sample too: budgets hold
        api = engine.load_model(str(model)).recommend(table, budget_sample_rows=sample_rows).to_pandas()
        got = api["offer"].astype(str).value_counts()
        assert all(got.get(f"offer_{j}", 0) <= b for j, b in budgets.items()), got
        with pytest.raises(engine.UsageError, match="budget_sample_rows= must be at least 1"):
            engine.load_model(str(model)).recommend(table.slice(0, 10), budget_sample_rows=0)
    if sample_rows >= table.num_rows:   # priced on every row: Model.recommend gives the same rows
        api = engine.load_model(str(model)).recommend(table).to_pandas()
        key = ["customer_id", "rank"]
        cli_rows = frame.sort_values(key).reset_index(drop=True)
        assert len(api) == len(cli_rows)
        pd.testing.assert_frame_equal(api.sort_values(key).reset_index(drop=True)[cli_rows.columns], cli_rows,
                                      check_categorical=False, check_dtype=False)
    for o in manifest["offers"]:
        if o["lambda"]:   # a binding price, shown as the mean of the 20 lowest thresholds of its customers
            assert o["customers"] >= 40 and o["lambda"] > 0
    if b["cut_offers"]:   # the run report names them
        assert "Prices that are cuts" in (out / "_report.html").read_text()
    binding = [j for j in budgets if b["lambda"][f"offer_{j}"] > 0]
    assert binding and set(b["cut_offers"]) <= {f"offer_{j}" for j in binding}
    for j in binding:   # a cut fills its budget to the customer; a price from all rows to its 0.1% headroom
        if f"offer_{j}" in b["cut_offers"]:   # exactly, or within the 0.1% a second cut keeps free
            assert budgets[j] - np.ceil(0.001 * budgets[j]) <= counts.get(f"offer_{j}", 0) <= budgets[j], (j, counts)
        elif sample_rows >= table.num_rows:
            assert counts.get(f"offer_{j}", 0) >= budgets[j] - 0.001 * budgets[j] - 1, (j, counts, b)


def killed_after_a_part(args: list[str], out: Path) -> tuple[dict[str, str], int]:
    """Run ``args`` (an ``engine recommend`` writing ``out``), SIGKILL it once a part is staged;
    returns the environment for the rerun (the engine's path, no test pause) and the killed pid."""
    env = {**os.environ, "ENGINE_TEST_PAUSE_AFTER_PART": "30", "PYTHONPATH": str(Path(engine.__file__).parents[1])}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staged = f".{out.name}.engine/staging/_parts/part-*.json"
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list(out.parent.glob(staged)):
            time.sleep(0.1)
        assert list(out.parent.glob(staged)), "no part was staged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "_SUCCESS").exists()
    env.pop("ENGINE_TEST_PAUSE_AFTER_PART")
    return env, proc.pid


def test_kill_and_resume(small: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-m", "engine", "recommend", "--model", str(small["model"]), "--input",
            str(small["data"]), "--output", str(out), "--progress", "quiet"]
    env, _pid = killed_after_a_part(args, out)
    done = subprocess.run([*args, "--resume", "--log-format", "json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]   # JSON logs: one object a line
    assert events[-1]["event"] == "recommend.finished" and events[-1]["exit_code"] == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["parts_reused"] >= 1 and manifest["totals"]["parts"] == 2
    fresh = engine.load_model(str(small["model"])).recommend(ds.dataset(small["data"]).to_table())
    got = ds.dataset(out).to_table()
    assert got.num_rows == fresh.num_rows
    np.testing.assert_allclose(np.sort(got.column("expected_value").to_numpy()),
                               np.sort(fresh.column("expected_value").to_numpy()))


def test_train_refuses_small_heads_by_name(small: dict[str, Path], cli, tmp_path: Path) -> None:
    table = customers(400, 2, seed=9)
    rare = np.zeros(400, np.int8)
    rare[:12] = 1                                   # 12 positive customers: below the 20 minimum
    data = write(table.append_column("owns_rare", pa.array(rare)), tmp_path / "data", 1)
    offers = tmp_path / "offers.toml"
    offers.write_text('[[offer]]\nid = "fine"\ntarget = "owns_0"\n[[offer]]\nid = "rare_one"\ntarget = "owns_rare"\n')
    result = cli("train", "--input", str(data), "--offers", str(offers), "--output", str(tmp_path / "m"), "--k", "2")
    assert result.exit_code == 3 and "rare_one" in result.output and "fewer than 20" in result.output
    assert "fine" not in result.output.split("have fewer")[0].split("head(s)")[-1]
    assert not (tmp_path / "m").exists()
    both = cli("train", "--input", str(data), "--offers", str(offers), "--target", "owns_0", "--output",
               str(tmp_path / "m"))
    assert both.exit_code == 2 and "not both" in both.output


@pytest.mark.usefixtures("s3")
def test_recommend_from_and_to_an_object_store(small: dict[str, Path], cli) -> None:
    """moto's S3 server: input and model read from the store, output published manifest-last."""
    _upload_dir(small["data"], "rec/data")
    _upload_dir(small["model"], "rec/model")
    out = _uri("rec/out")
    result = cli("recommend", "--model", _uri("rec/model"), "--input", _uri("rec/data"), "--output", out)
    assert result.exit_code == 0, result.output
    objects = _keys("rec/out")
    parts = sorted(n for n in objects if n.endswith(".parquet"))
    assert set(objects) == {*parts, "_manifest.json", "_SUCCESS", "_report.html"} and len(parts) == 2
    manifest = json.loads(objects["_manifest.json"])
    assert {f["name"] for f in manifest["files"]} == set(parts)
    got = pd.concat([pq.read_table(pa.BufferReader(objects[p])).to_pandas() for p in parts])
    local = engine.load_model(str(small["model"])).recommend(ds.dataset(small["data"]).to_table()).to_pandas()
    key = ["customer_id", "rank"]
    got = got.sort_values(key).reset_index(drop=True)
    local = local.sort_values(key).reset_index(drop=True)
    assert got["offer"].astype(str).tolist() == local["offer"].astype(str).tolist()
    np.testing.assert_allclose(got["expected_value"], local["expected_value"])
    again = cli("recommend", "--model", _uri("rec/model"), "--input", _uri("rec/data"), "--output", out)
    assert again.exit_code == 6 and _keys("rec/out") == objects


def reason_reference(model_dir: Path, table: pa.Table, offers: np.ndarray) -> tuple[list[str | None], np.ndarray]:
    """Each (row, offer)'s reason from the model's stored arrays with NumPy alone, and the margin
    between its best and second-best candidate terms (near-ties can differ in the last bits).

    Score's definition (engine.models.reasons), on the offer's calibrated logit: a numeric
    feature's ``A w_f (x_f - mean_f) / scale_f`` (``feature:high|low``), a categorical column's
    level term ``A w_level`` against the column's training-share-weighted average (``col=level``).
    """
    m = load_model(model_dir)
    frame = table.to_pandas()
    X = frame[list(m.features)].to_numpy(dtype=np.float64)
    X = np.where(np.isfinite(X), X, m.propensity.fill)
    A = m.head_platt[offers, 0]
    terms = [(X - m.propensity.mean) * (A[:, None] * m.head_coef[offers] / m.propensity.scale)]
    names = [[f"{f}:{'high' if s else 'low'}" for f, s in zip(m.features, row)] for row in (X - m.propensity.mean) > 0]
    if m.categoricals:
        L = level_matrix(table, m.categoricals)
        shares = m.profile["categoricals"]
        start = 0
        for q, cat in enumerate(m.categoricals):
            w = A[:, None] * m.head_cat_coef[offers, start:start + cat.n_levels]     # (rows, levels)
            s = np.asarray(shares[cat.name]["shares"])
            average = w @ s / s.sum()
            terms.append((w[np.arange(len(offers)), L[:, q] - start] - average)[:, None])
            for i, row in enumerate(names):
                row.append(f"{cat.name}={cat.label(int(L[i, q]) - start)}")
            start += cat.n_levels
    C = np.hstack(terms)
    best = np.argmax(C, axis=1)
    top2 = np.sort(C, axis=1)[:, -2:]
    margin = np.where(top2[:, 1] > 0, np.minimum(top2[:, 1] - top2[:, 0], top2[:, 1]), np.inf)
    return [names[i][b] if C[i, b] > 0 else None for i, b in enumerate(best)], margin


def test_recommend_reasons_name_levels_as_the_numpy_reference(small: dict[str, Path], cli) -> None:
    """Every recommendation's reason (numeric side or categorical level) equals the reference's."""
    out = small["root"] / "out-reasons"
    result = cli("recommend", "--model", str(small["model"]), "--input", str(small["data"]), "--output", str(out))
    assert result.exit_code == 0, result.output
    frame = ds.dataset(out).to_table().to_pandas()
    table = ds.dataset(small["data"]).to_table()
    pos = {i: k for k, i in enumerate(table.column("customer_id").to_numpy())}
    rows = table.take(pa.array(frame["customer_id"].map(pos).to_numpy()))
    offers = frame["offer"].astype(str).str.removeprefix("offer_").astype(int).to_numpy()
    want, margin = reason_reference(small["model"], rows, offers)
    got = frame["reason"].astype(object).where(frame["reason"].notna(), None).tolist()
    clear = margin > 1e-9
    assert clear.mean() > 0.999
    assert [g for g, c in zip(got, clear) if c] == [w for w, c in zip(want, clear) if c]
    levels = frame["reason"].astype(str).str.startswith("region=")
    assert 0.01 < levels.mean() < 0.99                         # levels and numeric features both win
    assert set(frame["reason"].dropna().astype(str).str.split(":").str[0]) - {"region"} <= \
        {*load_model(small["model"]).features, *(f"region={r}" for r in ("north", "east", "south", "west"))}


def test_single_offer_reason_is_scores_first_reason(tmp_path: Path, cli) -> None:
    """One offer, top 1: recommend's reason is ``engine score --reasons 1``'s (the Platt slope is positive)."""
    table = customers(3_000, 1, seed=5)
    data = write(table, tmp_path / "data", 1)
    offers = catalogue(tmp_path / "offers.toml", 1, top=1, rule_on=())
    model = tmp_path / "model"
    result = cli("train", "--input", str(data), "--offers", str(offers), "--output", str(model), "--k", "2",
                 "--seed", "3", "--backend", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert load_model(model).head_platt[0, 0] > 0
    rec, sco = tmp_path / "rec", tmp_path / "sco"
    assert cli("recommend", "--model", str(model), "--input", str(data), "--output", str(rec)).exit_code == 0
    result = cli("score", "--input", str(data), "--model", str(model), "--output", str(sco), "--backend", "cpu",
                 "--reasons", "1", "-q")
    assert result.exit_code == 0, result.output
    r = ds.dataset(rec).to_table().to_pandas().set_index("customer_id")
    s = ds.dataset(sco).to_table().to_pandas().set_index("customer_id").loc[r.index]
    assert len(r) > 1_000
    _, margin = reason_reference(model, table.take(pa.array(r.index.to_numpy())), np.zeros(len(r), int))
    clear = margin > 1e-9
    assert clear.mean() > 0.999
    got, want = r["reason"].astype(object)[clear], s["reason_1"].astype(object)[clear]
    assert (got.isna() == want.isna()).all() and (got.dropna() == want.dropna()).all()
    assert got.astype(str).str.startswith("region=").any()


def test_a_recommend_run_never_imports_pandas_or_matplotlib(small: dict[str, Path], tmp_path: Path,
                                                            fresh_imports) -> None:  # noqa: ANN001
    """pandas (~0.1 s), matplotlib (~0.5 s) and scipy.linalg (~0.25 s: numba's BLAS probe when the top-N
    kernel loads) are fixed costs of every nightly run that nothing on the
    recommend path needs: the long output is built from buffers, the run report's charts are SVG
    unless a feature drifted."""
    code = (
        "from engine.jobs.recommend import RecommendOptions, recommend\n"
        f"recommend(RecommendOptions(input={str(small['data'])!r}, model={str(small['model'])!r}, "
        f"output={str(tmp_path / 'o')!r}, progress='quiet'))"
    )
    assert fresh_imports(code, ("pandas", "matplotlib", "distributed", "sklearn", "scipy.linalg"), tmp_path) == []
    assert (tmp_path / "o" / "_report.html").is_file()
