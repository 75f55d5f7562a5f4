"""``engine recommend`` as a run: the bad-row policy (engine score's) and the run report.

Real parts: Parquet files with ±inf values and null ids, a model from ``engine train --offers``,
the CLI, the score commit protocol (nothing published on exit 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_recommend import catalogue, customers, write

INF_ROWS = (5, 17, 400, 1_203)     # rows of the data with an infinite f2 (file 0: rows < 1,500)
NULL_ID_ROWS = (9, 2_222)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, cli) -> dict[str, Path]:
    """3,000 customers in 2 files with 4 infinite values and 2 null ids; a 4-offer model."""
    root = tmp_path_factory.mktemp("recommend_runs")
    table = customers(3_000, 4, seed=11)
    model = root / "model"
    train = write(table, root / "train", 1)
    offers = catalogue(root / "offers.toml", 4, top=2, budgets={1: 500})
    result = cli("train", "--input", train, "--offers", offers, "--output", model, "--k", "3", "--seed", "2",
                 "--backend", "cpu", "-q")
    assert result.exit_code == 0, result.output
    f2 = table.column("f2").to_numpy().copy()
    f2[list(INF_ROWS)] = [np.inf, -np.inf, np.inf, np.inf]
    ids = pa.array(table.column("customer_id").to_numpy(), mask=np.isin(np.arange(3_000), NULL_ID_ROWS))
    table = table.set_column(table.schema.get_field_index("f2"), "f2", pa.array(f2))
    table = table.set_column(0, "customer_id", ids)
    return {"root": root, "data": write(table, root / "data", 2), "model": model, "table": table}


def _run(cli, bad: dict[str, Path], out: Path, *flags: object):
    return cli("recommend", "--model", bad["model"], "--input", bad["data"], "--output", out, "-q", *flags)


def test_bad_rows_rejected_by_default_and_limits(bad: dict[str, Path], cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(cli, bad, out)
    assert result.exit_code == 0, result.output
    rejected = pq.read_table(out / "_rejected").sort_by("_row").to_pylist()
    files = sorted(p.name for p in (bad["data"]).iterdir())
    want = sorted([(r, "f2", "infinite value") for r in INF_ROWS] + [(r, "customer_id", "null id")
                                                                      for r in NULL_ID_ROWS])
    got = [(r["_row"] + (1_500 if r["_file"].endswith(files[1]) else 0), r["_column"], r["_reason"])
           for r in rejected]
    assert sorted(got) == want
    ids = bad["table"].column("customer_id").to_numpy(zero_copy_only=False)
    assert sorted(r["customer_id"] for r in rejected if r["customer_id"] is not None) == sorted(ids[list(INF_ROWS)])
    written = pq.read_table(out, columns=["customer_id"]).column("customer_id")
    assert written.null_count == 0 and not np.isin(ids[list(INF_ROWS)], written.to_numpy()).any()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["rows_rejected"] == 6 and manifest["totals"]["on_bad_rows"] == "reject"
    assert {f["name"] for f in manifest["files"]} >= {"_rejected/" + p.name for p in (out / "_rejected").iterdir()}
    # over the limit: exit 4, naming the column and the flag; nothing published
    over = _run(cli, bad, tmp_path / "over", "--max-rejected-fraction", "0.001")
    assert over.exit_code == 4 and "'f2'" in over.output and "--max-rejected-fraction" in over.output
    assert not (tmp_path / "over").exists()
    fail = _run(cli, bad, tmp_path / "fail", "--on-bad-rows", "fail")
    assert fail.exit_code == 4 and "--on-bad-rows is fail" in fail.output and not (tmp_path / "fail").exists()
    # impute: infinite values scored as missing ones; rows without an id left out and counted
    imputed = _run(cli, bad, tmp_path / "imp", "--on-bad-rows", "impute")
    assert imputed.exit_code == 0, imputed.output
    assert not (tmp_path / "imp" / "_rejected").exists()
    m = json.loads((tmp_path / "imp" / "_manifest.json").read_text())
    assert m["totals"]["rows_rejected"] == 0 and m["totals"]["rows_null_id"] == 2
    rows = pq.read_table(tmp_path / "imp")
    assert pc.sum(pc.is_in(rows.column("customer_id"), pa.array(ids[list(INF_ROWS)]))).as_py() > 0


def test_run_report_escapes_and_suppresses_small_groups(bad: dict[str, Path], cli, tmp_path: Path) -> None:
    from engine.report.html import read_report_data

    # a scoring catalogue that gives offer_2 to 5 customers (its budget): a group too small to describe
    offers = catalogue(tmp_path / "small.toml", 4, top=2, budgets={1: 500, 2: 5})
    out = tmp_path / "out<b>&amp;"
    result = _run(cli, bad, out, "--offers", offers)
    assert result.exit_code == 0, result.output
    text = (out / "_report.html").read_text()
    data = read_report_data(text)
    assert data["kind"] == "recommend" and [o["offer"] for o in data["offers"]] == [f"offer_{t}" for t in range(4)]
    small = data["offers"][2]
    assert small["customers"] is None and small["expected_value"] is None and small["budget_used"] is None
    assert any("offer offer_2" in s for s in data["suppressed"]) and "Suppressed for privacy" in text
    big = data["offers"][1]
    assert 20 <= big["customers"] <= 500 and big["budget_used"] == big["customers"] / 500
    assert 0 < big["eligible_share"] <= 1 and big["expected_value"] > 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["report"] == "_report.html" and manifest["offers"][2]["customers"] is None
    # drift: score's section, over the run's features (f2's infinite values were rejected, not imputed)
    assert "--fail-on-drift" not in text   # score's flag, not recommend's
    assert 'id="drift-level"' in text and 'id="features"' in text and set(manifest["drift"]["features"]) >= {"f1",
                                                                                                              "f2"}
    # every text is escaped: the output path shows as text, never as markup
    assert "out<b>" not in text and "out&lt;b&gt;&amp;amp;" in text
    # customers are counted by id: ids in order and apart (the parts' ranges) count no repeat;
    # two files holding the same 1,500 customers (overlapping ranges: ids read again) count 1,500
    assert manifest["privacy"]["duplicate_rows"] == 0
    twice = tmp_path / "twice"
    twice.mkdir()
    for name in ("a", "b"):
        pq.write_table(customers(1_500, 4, seed=11), twice / f"{name}.parquet")
    result = cli("recommend", "--model", bad["model"], "--input", twice, "--output", tmp_path / "o2", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o2" / "_manifest.json").read_text())["privacy"]["duplicate_rows"] == 1_500


@pytest.mark.parametrize(("policy", "top"), [("reject", None), ("impute", 1)])
def test_parts_and_tallies_equal_the_twin_rebuilt_batch_by_batch(bad: dict[str, Path], tmp_path: Path,
                                                                 policy: str, top: int | None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins what the run writes around the kernel (the block loop's scan, the long table, the
    tallies, reused buffers): with ``kernel="numpy"`` every part equals, value for value, the
    NumPy twin run here on the same batches (700 rows: three per file, the last short), and the
    manifest's counts and sums equal the ones summed here in the same order. The budget makes
    the prices non-zero (and a top + 1 slot); the bad rows leave some slots empty, and with
    top 1 and no bad row some batches have every slot filled (the long table's other path)."""
    from engine.config import Settings
    from engine.jobs.recommend import RecommendOptions, recommend
    from engine.models.artifact import load_model
    from engine.models.categorical import level_matrix
    from engine.offers import budgets
    from engine.offers.budgets import dual_bound, shown_bound
    from engine.offers.recommend import allowed, prepare, reason_names
    from kernels.topn_offers import topn_offers

    # The manifest shows a private price (the mean of the marginal customers' thresholds, tested
    # in test_budget_cuts.py); the rebuild below needs the run's exact one.
    monkeypatch.setattr(budgets, "shown_price", lambda lam, _holders, _minimum: None if lam >= budgets.WITHDRAWN
                        else lam)
    out = tmp_path / "out"
    manifest = recommend(RecommendOptions(input=str(bad["data"]), model=str(bad["model"]), output=str(out),
                                          progress="quiet", kernel="numpy", batch_rows=700, threads=2, top=top),
                         Settings(on_bad_rows=policy))
    assert not manifest["budgets"]["cut_offers"]   # one price per offer: what the twin is given below
    model = load_model(str(bad["model"]))
    plan = prepare(model, None, top)
    T, N = plan.n_offers, plan.top
    assert all(o["lambda"] is not None for o in manifest["offers"])
    lam = np.array([o["lambda"] for o in manifest["offers"]])
    assert (lam[1] > 0) == (top is None) and not lam[[0, 2, 3]].any()   # top 2: the budget binds, a real price
    names, reasons = list(plan.ids), reason_names(model)
    customers, value = np.zeros(T, np.int64), np.zeros(T)
    eligible, owned = np.zeros(T, np.int64), np.zeros(T, np.int64)
    rows_out = with_offer = rejected = null_ids = full = 0
    score_sum = 0.0
    files = sorted((bad["data"]).iterdir())
    for k, path in enumerate(files):
        want: dict[str, list] = {c: [] for c in ("customer_id", "rank", "offer", "propensity", "expected_value",
                                                 "reason")}
        part = {"customers": np.zeros(T, np.int64), "value": np.zeros(T)}
        for batch in pq.ParquetFile(path).iter_batches(batch_size=700):
            table = pa.Table.from_batches([batch])
            if policy == "impute":
                null_ids += table.column("customer_id").null_count
                table = table.filter(pc.is_valid(table.column("customer_id")))
            X = np.column_stack([table.column(f).to_numpy(zero_copy_only=False).astype(float)
                                 for f in model.features])
            bad_rows = ~np.isfinite(np.where(np.isnan(X), 0.0, X)).all(axis=1)
            if policy == "reject":
                bad_rows |= table.column("customer_id").is_null().to_numpy(zero_copy_only=False)
            else:
                bad_rows[:] = False
            rejected += int(bad_rows.sum())
            mask, _, _ = allowed(table, plan)
            imputed = np.ascontiguousarray(np.where(np.isfinite(X), X, plan.fill))
            levels = level_matrix(table, model.categoricals) if model.categoricals else None
            idx, p, ev, why = topn_offers(imputed, levels, plan.W, plan.bias, plan.catW, plan.value, plan.cost, lam,
                                          mask, plan.min_ev, N + 1, plan.mean, catbase=plan.catbase)
            idx[bad_rows] = -1
            full += bool((idx[:, :N] >= 0).all())
            _, e, o = allowed(table.filter(pa.array(~bad_rows)), plan)
            eligible += e
            owned += o
            ids = table.column("customer_id").to_pylist()
            r, s = np.nonzero(idx[:, :N] >= 0)
            got = idx[r, s]
            want["customer_id"] += [ids[i] for i in r]
            want["rank"] += (s + 1).tolist()
            want["offer"] += [names[t] for t in got]
            want["propensity"] += p[r, s].tolist()
            want["expected_value"] += ev[r, s].tolist()
            want["reason"] += [reasons[c] if c >= 0 else None for c in why[r, s]]
            part["customers"] += np.bincount(got, minlength=T)
            part["value"] += np.bincount(got, weights=ev[r, s], minlength=T)
            rows_out += r.size
            with_offer += int((idx[:, 0] >= 0).sum())
            score_sum += float(np.maximum(ev[r, s] - lam[got], 0.0).sum())
        written = pq.read_table(out / f"part-{k:05d}.parquet")
        assert written.schema.names == list(want)
        for name, values in want.items():
            column = written.column(name)
            got_values = column.cast(pa.string()).to_pylist() if name in ("offer", "reason") else column.to_pylist()
            assert got_values == values, (path.name, name)
        customers += part["customers"]
        value += part["value"]
    totals = manifest["totals"]
    assert (totals["rows_out"], totals["customers_with_offer"], totals["rows_rejected"], totals["rows_null_id"]) == (
        rows_out, with_offer, rejected, null_ids)
    assert rejected == (6 if policy == "reject" else 0) and rows_out > N * 2_500
    assert full == (0 if policy == "reject" else 6)   # both ways of building the long table
    assert totals["expected_value"] == float(value.sum())
    kept = totals["rows_in"] - null_ids - rejected
    for j, offer in enumerate(manifest["offers"]):
        assert offer["customers"] in (None, int(customers[j])) and offer["expected_value"] in (None, float(value[j]))
        assert offer["eligible_share"] in (None, eligible[j] / kept) and offer["owned_share"] in (None, owned[j] / kept)
    assert sum(o["customers"] is not None for o in manifest["offers"]) >= 3
    budgets = np.array([np.inf if o.budget is None else float(o.budget) for o in plan.catalogue.offers])
    assert manifest["budgets"]["dual_bound"] == shown_bound(dual_bound(score_sum, lam, budgets))


@pytest.mark.parametrize("ids", [
    pa.array(np.arange(10, 16, dtype=np.int64)).slice(1, 4),          # an offset into the buffer
    pa.array(np.arange(4, dtype=np.int32)),
    pa.array([0.5, 1.5, np.nan, 2.5]),                                # NaN is a value, not a null
    pa.array(["a", "b", "c", "d"]),                                   # not a number: take
    pa.array([1, None, 3, 4], pa.int64()),                           # nulls: take
    pa.array(np.zeros(0, dtype=np.int64)),
])
def test_long_table_repeats_ids_as_take_does(ids: pa.Array) -> None:
    """The id column of a long table with every slot filled: each id N times, whatever its type,
    offset or nulls, with or without reused buffers (two tables in a row: the second overwrites)."""
    from engine.offers.recommend import BatchBuffers, _repeat_ids

    buffers = BatchBuffers()
    for N in (3, 2):
        want = ids.take(pa.array(np.repeat(np.arange(len(ids)), N)))
        fresh = _repeat_ids(ids, N)
        reused = _repeat_ids(ids, N, buffers)
        assert fresh.type == reused.type == ids.type
        assert repr(fresh.to_pylist()) == repr(reused.to_pylist()) == repr(want.to_pylist())   # NaN == NaN here
        assert fresh.null_count == want.null_count
