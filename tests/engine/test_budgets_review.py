"""Review of the budgets by dual prices (issue 26, item 4): the design's claims on real runs.

Real parts: Parquet files, models trained by ``engine train --offers``, ``engine.recommend``
and the CLI (a SIGKILLed process and ``--resume``), ``Model.recommend``, SciPy HiGHS's LP
optimum (bench/budgets_lp.py) and two ``dask worker`` processes. Most data are "tied"
(test_recommend.tied: groups of hundreds of identical customers), so that budgets bind at
exact ties and the cuts decide who gets an offer.

1. No budget is exceeded in any case; a binding budget is filled to 0.1 % (after a cut);
   the value is within 1 % of the LP optimum; no customer misses an unbudgeted offer it
   could have had while a slot of its top N stays empty.
2. The same customers win the ties in any file layout, fragment split, row order, on a
   Dask cluster; ``Model.recommend`` gives the CLI's rows when the sample covers the input.
3. ``--resume`` after a kill in a budgeted run from a sample publishes the same rows.
4. Counting-only passes write nothing; no shown number is one customer's threshold; no
   tie-break key appears in anything published or logged.
"""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from test_recommend import catalogue, customers, killed_after_a_part, reference, tied, write

import engine
from bench.budgets_lp import lp_optimum

T = 6
BUDGETS = {0: 200, 1: 300, 2: 500, 3: 250}
VALUES = np.array([10.0 + 7.0 * t for t in range(T)])
COSTS = np.array([0.5 * (t % 3) for t in range(T)])
EXCLUDED = np.array([t != T - 1 for t in range(T)])
WIDE = 28          # offers of the model for top 25 (the kernel keeps at most 26 slots)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two models trained on 2,000 tied customers: 6 offers, and 28 offers (top 25)."""
    root = tmp_path_factory.mktemp("budgets-review")
    made = {"root": root}
    for name, n_offers in (("model", T), ("wide", WIDE)):
        offers = catalogue(root / f"{name}.toml", n_offers, 2)
        train = write(tied(customers(2_000, n_offers, seed=5)), root / f"{name}-train", 1)
        engine.train(str(train), None, str(root / name), offers=str(offers), k=2, report=False, backend="cpu")
        made[name] = root / name
    return made


def base(n: int = 3_000, n_offers: int = T, seed: int = 7) -> pd.DataFrame:
    return tied(customers(n, n_offers, seed=seed, first_id=50_000)).to_pandas()


def _int_ids(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(customer_id=np.arange(len(f), dtype=np.int64) * 3 + 7)


def _date_ids(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(customer_id=[datetime.date(2000, 1, 1) + datetime.timedelta(days=i) for i in range(len(f))])


def _duplicated(f: pd.DataFrame) -> pd.DataFrame:
    """Every customer twice (the same id and features: the same threshold and key at a cut)."""
    return pd.concat([f, f]).sort_values("customer_id", kind="stable").reset_index(drop=True)


def _null_ids(f: pd.DataFrame) -> pd.DataFrame:
    g = f.copy()
    g.loc[::7, "customer_id"] = None
    return g


def _infinite(f: pd.DataFrame) -> pd.DataFrame:
    g = f.copy()
    g.loc[::50, "f1"] = np.inf   # rejected (the default policy)
    return g


def _continuous(f: pd.DataFrame) -> pd.DataFrame:
    return customers(len(f), T, seed=8, first_id=50_000).to_pandas()


FULL = 10**6    # --budget-sample-rows: every row

# (case, input, budgets, catalogue extras, top, recommend's keyword arguments, files)
CASES: list[Any] = [
    ("string-ids", lambda f: f, BUDGETS, "", 2, {"budget_sample_rows": FULL}, 3),
    ("string-ids-sampled", lambda f: f, BUDGETS, "", 2, {"budget_sample_rows": 600}, 3),
    ("int-ids", _int_ids, BUDGETS, "", 2, {"budget_sample_rows": FULL}, 2),
    ("date-ids-sampled", _date_ids, BUDGETS, "", 2, {"budget_sample_rows": 800}, 2),
    ("duplicate-ids", _duplicated, BUDGETS, "", 2, {"budget_sample_rows": FULL}, 2),
    ("duplicate-ids-sampled", _duplicated, BUDGETS, "", 2, {"budget_sample_rows": 700}, 3),
    ("null-ids-rejected", _null_ids, BUDGETS, "", 2, {"budget_sample_rows": FULL, "max_rejected_fraction": 0.5}, 2),
    ("null-ids-left-out-sampled", _null_ids, BUDGETS, "", 2, {"budget_sample_rows": 900, "on_bad_rows": "impute"}, 2),
    pytest.param("infinite-rows-rejected", _infinite, BUDGETS, "", 2,
                 {"budget_sample_rows": FULL, "max_rejected_fraction": 0.05}, 2, marks=pytest.mark.xfail(
                     strict=True, reason="offer_2 ends at 491 of 500 (1.8 % short): its second cut raised its price, "
                     "which lifted offer_3's thresholds of a tie group whose next offer is offer_2 above offer_3's "
                     "cut; 16 customers left offer_2 for offer_3 instead of 6, and prices only rise, so no pass "
                     "refills it (NOTES-s7-review.md)")),
    ("budget-0-and-above-the-customers", lambda f: f, {0: 0, 1: 0, 2: 500, 3: 10**6, 4: 3_000}, "", 2,
     {"budget_sample_rows": FULL}, 2),
    ("min-expected-value", lambda f: f, BUDGETS, "min_expected_value = 5.0", 2, {"budget_sample_rows": 700}, 2),
    ("top-1-three-cut-offers", lambda f: f, {3: 50, 4: 50, 5: 50}, "", 1, {"budget_sample_rows": FULL}, 2),
    ("two-rules-and-owned", lambda f: f, BUDGETS, "", 3, {"budget_sample_rows": FULL}, 2),
    ("continuous-sampled", _continuous, BUDGETS, "", 2, {"budget_sample_rows": 500}, 3),
]


def _run(models: dict[str, Path], name: str, frame: pd.DataFrame, budgets: dict[int, int], extra: str, top: int,
         kwargs: dict[str, Any], files: int, model: str = "model", rules: tuple[int, ...] = (0,)
         ) -> tuple[dict[str, Any], pd.DataFrame, pa.Table, Path]:
    root = models["root"] / name
    n_offers = WIDE if model == "wide" else T
    offers = catalogue(root.with_suffix(".toml"), n_offers, top, budgets=budgets, rule_on=rules)
    if extra:
        offers.write_text(extra + "\n" + offers.read_text())
    table = pa.Table.from_pandas(frame, preserve_index=False)
    data = write(table, root / "data", files)
    manifest = engine.recommend(str(data), str(models[model]), str(root / "out"), offers=str(offers),
                                progress="quiet", **kwargs)
    return manifest, ds.dataset(root / "out").to_table().to_pandas(), table, offers


def _check_budgets(manifest: dict[str, Any], out: pd.DataFrame, table: pa.Table, model: Path, budgets: dict[int, int],
                   top: int, n_offers: int, rules: tuple[int, ...], min_ev: float = 0.0,
                   duplicates: bool = False) -> None:
    """Never over; filled where binding; the LP's 1 %; no empty slot beside an unbudgeted candidate."""
    counts = out["offer"].astype(str).value_counts()
    for j, b in budgets.items():
        assert counts.get(f"offer_{j}", 0) <= b, (j, counts.get(f"offer_{j}"), b)     # never exceeded
    for o in manifest["offers"]:   # (None: a group the privacy gate hides, e.g. with duplicated ids)
        assert o["customers"] in (None, counts.get(o["offer"], 0)), o
    # The customers the passes recommend to: an id, and no bad feature (rejected rows).
    frame = table.to_pandas()
    keep = frame["customer_id"].notna().to_numpy() & np.isfinite(frame["f1"].to_numpy(float))
    table = table.filter(pa.array(keep))
    ids = table.column("customer_id").to_pandas()
    values = np.array([10.0 + 7.0 * t for t in range(n_offers)])
    costs = np.array([0.5 * (t % 3) for t in range(n_offers)])
    excluded = np.array([t != n_offers - 1 for t in range(n_offers)])
    order, ev = reference(model, table, values, costs, n_offers, rules, excluded)
    ok = np.zeros((table.num_rows, n_offers), bool)
    EV = np.zeros((table.num_rows, n_offers))
    rows = np.repeat(np.arange(table.num_rows), n_offers).reshape(order.shape)
    ok[rows[order >= 0], order[order >= 0]] = ev[order >= 0] >= min_ev
    EV[rows[order >= 0], order[order >= 0]] = ev[order >= 0]
    sizes = out.groupby("customer_id").size()
    assert (sizes <= top * ids.value_counts().reindex(sizes.index)).all()
    # A customer with an empty slot of its top N has every candidate it lacks among the budgeted offers.
    got = out.groupby("customer_id")["offer"].apply(lambda s: set(s.astype(str)))
    budgeted = {f"offer_{j}" for j in budgets}
    for r in np.flatnonzero(ok.sum(axis=1) > 0):
        have = got.get(ids.iloc[r], set())
        if len(have) < top:
            lacking = {f"offer_{t}" for t in np.flatnonzero(ok[r])} - have - budgeted
            assert not lacking, (ids.iloc[r], have, lacking)
    achieved = float(out["expected_value"].sum())
    optimum = lp_optimum(EV, ok, top, budgets)
    assert achieved <= optimum * (1 + 1e-9)
    assert achieved >= 0.99 * optimum, (achieved, optimum)
    b = manifest["budgets"]
    assert abs(b["achieved_value"] - achieved) <= 1e-9 * max(achieved, 1.0)
    assert b["dual_bound"] is None or b["dual_bound"] >= optimum * (1 - 1e-9)
    # A binding budget (what the LP's optimum gives it, or the customers who want it) is
    # filled to 0.1 % of it (one customer), two more where duplicated rows straddle a cut.
    wants = ok.sum(axis=0)
    for j, budget in budgets.items():
        if f"offer_{j}" not in b["cut_offers"] or budget == 0:
            continue
        slack = max(1, int(np.ceil(0.001 * budget))) + (2 if duplicates else 0)
        assert counts.get(f"offer_{j}", 0) >= min(budget, wants[j]) - slack, (j, counts.get(f"offer_{j}"), budget)


@pytest.mark.parametrize(("case", "shape", "budgets", "extra", "top", "kwargs", "files"), CASES,
                         ids=[c.values[0] if hasattr(c, "values") else c[0] for c in CASES])
def test_budgets_hold_and_fill_in_every_case(models: dict[str, Path], case: str, shape: Any, budgets: dict[int, int],
                                             extra: str, top: int, kwargs: dict[str, Any], files: int) -> None:
    rules = (0, 2) if case == "two-rules-and-owned" else (0,)
    manifest, out, table, offers = _run(models, case, shape(base()), budgets, extra, top, kwargs, files, rules=rules)
    _check_budgets(manifest, out, table, models["model"], budgets, top, T, rules,
                   min_ev=5.0 if extra else 0.0, duplicates="duplicate" in case)
    b = manifest["budgets"]
    assert b["passes"] <= 12, b
    if case.startswith("budget-0"):
        assert not {"offer_0", "offer_1"} & set(out["offer"].astype(str))
    covered = kwargs["budget_sample_rows"] >= table.num_rows
    if not covered:   # the sample's prices let in more on purpose: the first full pass only counts
        assert b["passes_counting_only"] >= 1, b
    if covered and kwargs.get("on_bad_rows", "reject") == "reject" and "null" not in case and "infinite" not in case:
        # Priced on every row: Model.recommend (the same prices, passes and cuts) gives the same rows.
        api = engine.load_model(str(models["model"])).recommend(table, offers=str(offers)).to_pandas()
        key = ["customer_id", "rank", "offer"]
        a = api.astype({"offer": str})[key].sort_values(key).reset_index(drop=True)
        c = out.astype({"offer": str})[key].sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, c, check_dtype=False)


def test_top_25_of_28_offers_with_cuts(models: dict[str, Path]) -> None:
    """top 25: the kernel keeps 26 slots (one extra); rows that drop a cut offer still get
    their best unbudgeted offers, and no budget is exceeded."""
    budgets = {0: 300, 5: 200, 9: 400, 14: 100, 20: 250, 27: 150}
    frame = tied(customers(1_500, WIDE, seed=9, first_id=50_000)).to_pandas()
    manifest, out, table, offers = _run(models, "top25", frame, budgets, "", 25, {"budget_sample_rows": FULL}, 2,
                                        model="wide")
    assert manifest["top"] == 25 and manifest["budgets"]["cut_offers"]
    _check_budgets(manifest, out, table, models["wide"], budgets, 25, WIDE, (0,))
    api = engine.load_model(str(models["wide"])).recommend(table, offers=str(offers)).to_pandas()
    assert len(api) == len(out)


def test_api_equals_cli_with_null_ids(models: dict[str, Path]) -> None:
    manifest, out, table, offers = _run(models, "api-null-ids", _null_ids(base()), BUDGETS, "", 2,
                                        {"budget_sample_rows": FULL, "on_bad_rows": "impute"}, 1)
    api = engine.load_model(str(models["model"])).recommend(table, offers=str(offers)).to_pandas()
    key = ["customer_id", "rank", "offer"]
    a = api.astype({"offer": str})[key].sort_values(key).reset_index(drop=True)
    c = out.astype({"offer": str})[key].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, c, check_dtype=False)


def _rows(path: Path) -> pd.DataFrame:
    f = ds.dataset(path).to_table().to_pandas().astype({"offer": str, "reason": str})
    return f.sort_values(["customer_id", "rank"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from test_distributed import _running_cluster

    with _running_cluster(tmp_path_factory.mktemp("budgets-review-dask"), ["w1", "w2"]) as c:
        yield c


def test_the_same_customers_win_the_ties_in_any_layout(models: dict[str, Path], cluster: Any) -> None:
    """One tied input (string ids) as 1 file, as 5 files of shuffled rows, split by
    --partition-rows, and on two Dask workers: the same rows, exactly (prices from all rows)."""
    f = base(2_500)
    offers = catalogue(models["root"] / "layout.toml", T, 2, budgets=BUDGETS)
    shuffled = f.sample(frac=1.0, random_state=3).reset_index(drop=True)
    runs = {}
    for name, frame, files, extra in (("one-file", f, 1, {}), ("five-shuffled", shuffled, 5, {}),
                                      ("partition-rows", f, 1, {"partition_rows": 400}),
                                      ("dask", shuffled, 3, {"scheduler": cluster.address})):
        root = models["root"] / f"layout-{name}"
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if "partition_rows" in extra:   # row groups of 250 rows: --partition-rows splits the file
            (root / "data").mkdir(parents=True)
            pq.write_table(table, root / "data" / "all.parquet", row_group_size=250)
            data = root / "data"
        else:
            data = write(table, root / "data", files)
        runs[name] = engine.recommend(str(data), str(models["model"]), str(root / "out"), offers=str(offers),
                                      progress="quiet", budget_sample_rows=FULL, **extra)
        runs[name]["rows"] = _rows(root / "out")
    assert runs["partition-rows"]["totals"]["parts"] >= 5
    want = runs["one-file"]
    assert want["budgets"]["cut_offers"], "the budgets must bind at ties for this test to mean anything"
    for name, got in runs.items():
        pd.testing.assert_frame_equal(got["rows"], want["rows"], obj=name)
        assert got["budgets"]["lambda"] == want["budgets"]["lambda"], name
        assert got["budgets"]["cut_offers"] == want["budgets"]["cut_offers"], name


def test_resume_after_a_kill_in_a_budgeted_run_from_a_sample(models: dict[str, Path], tmp_path: Path) -> None:
    """A sampled budgeted run (its first pass only counts) killed once a part is staged, then
    --resume: the uninterrupted run's rows, prices and passes; the killed run's parts reused."""
    data = write(pa.Table.from_pandas(base(3_000), preserve_index=False), tmp_path / "data", 3)
    offers = catalogue(tmp_path / "offers.toml", T, 2, budgets=BUDGETS)
    args = [sys.executable, "-m", "engine", "recommend", "--model", str(models["model"]), "--input", str(data),
            "--offers", str(offers), "--budget-sample-rows", "700", "--progress", "quiet"]
    fresh = engine.recommend(str(data), str(models["model"]), str(tmp_path / "fresh"), offers=str(offers),
                             budget_sample_rows=700, progress="quiet")
    assert fresh["budgets"]["passes_counting_only"] >= 1 and fresh["budgets"]["cut_offers"]
    out = tmp_path / "out"
    killed_after_a_part([*args, "--output", str(out)], out)
    log: list[str] = []
    manifest = engine.recommend(str(data), str(models["model"]), str(out), offers=str(offers), budget_sample_rows=700,
                                progress="quiet", resume=True, say=log.append)
    pd.testing.assert_frame_equal(_rows(out), _rows(tmp_path / "fresh"))
    for k in ("lambda", "passes", "passes_counting_only", "cut_offers", "dual_bound", "achieved_value"):
        assert manifest["budgets"][k] == fresh["budgets"][k], k
    # The killed run's parts are offered to every pass (each reused only under its own run key):
    # they were written after the counting passes (before this review, after the first one
    # nothing was offered, so a budgeted run from a sample reused nothing).
    assert [m for m in log if m.startswith("resuming: ")], log


def _numbers(doc: Any) -> Iterator[float]:
    if isinstance(doc, bool):
        return
    if isinstance(doc, (int, float)):
        yield float(doc)
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from _numbers(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _numbers(v)
    elif isinstance(doc, str):
        for m in re.finditer(r"-?\d+\.\d+(?:e-?\d+)?", doc):
            yield float(m.group())


def test_counting_passes_write_nothing_and_no_customer_value_is_shown(models: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Spies (the real functions run): the exact prices, cuts and every (threshold, key) pair
    each pass found, and what each counting task left on disk. Then no number of the
    manifest, the report's data or the log equals a threshold fewer than 20 customers share,
    and no key of a customer appears in any file of the output or its workspace, nor in the log."""
    import engine.jobs.recommend as job
    from engine.offers import budgets as bud

    seen: list[tuple[np.ndarray, bud.Cuts, dict[int, tuple[np.ndarray, np.ndarray]]]] = []
    real_raise, real_task = bud.raise_prices, job.recommend_fragment

    def raise_spy(lam: np.ndarray, cuts: bud.Cuts, customers: np.ndarray, budgets: np.ndarray,
                  found: dict[int, tuple[np.ndarray, np.ndarray]], final: bool) -> Any:
        result = real_raise(lam, cuts, customers, budgets, found, final)
        seen.append((result[0], result[1], {j: (t.copy(), k.copy()) for j, (t, k) in found.items()}))
        return result

    counting: list[tuple[bool, bool]] = []

    def task_spy(task: Any) -> dict[str, Any]:
        before = Path(task.part_path).exists(), Path(task.sidecar_path).exists()
        info = real_task(task)
        if not task.write:
            counting.append((before[0] or not Path(task.part_path).exists(),
                             before[1] or not Path(task.sidecar_path).exists()))
        return info

    monkeypatch.setattr(bud, "raise_prices", raise_spy)
    monkeypatch.setattr(job, "recommend_fragment", task_spy)
    frame = _continuous(base(3_000))
    data = write(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "data", 3)
    offers = catalogue(tmp_path / "offers.toml", T, 2, budgets=BUDGETS)
    log: list[str] = []
    out = tmp_path / "out"
    manifest = engine.recommend(str(data), str(models["model"]), str(out), offers=str(offers),
                                budget_sample_rows=600, progress="quiet", say=log.append)
    b = manifest["budgets"]
    assert b["passes_counting_only"] >= 1 and b["cut_offers"] and counting
    assert all(ok for pair in counting for ok in pair), counting   # no part or sidecar created by a counting pass
    # Every threshold a pass saw (the B + 1 largest per offer), with how many customers share it.
    thresholds: dict[float, int] = {}
    keys: set[int] = set()
    for lam, cuts, found in seen:
        for t, k in found.values():
            for value in np.unique(t):
                thresholds[float(value)] = max(thresholds.get(float(value), 0), int(np.unique(k[t == value]).size))
            keys.update(int(x) for x in k)
        keys.update(cuts.key.values())
        for level in cuts.level.values():
            thresholds.setdefault(level, 1)
        for value in lam[(lam > 0) & (lam < bud.WITHDRAWN)]:
            thresholds.setdefault(float(value), 1)
    assert len(keys) > 100 and len(thresholds) > 100
    from engine.report.html import read_report_data

    report = read_report_data((out / "_report.html").read_text())
    shown = [*_numbers(manifest), *_numbers(report), *_numbers(log)]
    assert any(o["lambda"] for o in manifest["offers"]), "a binding price must be shown (as a mean)"
    values = np.array(sorted(thresholds))
    for x in shown:
        near = values[np.isclose(values, x, rtol=1e-12, atol=0.0)]
        assert all(thresholds[float(v)] >= 20 for v in near), (x, near)
    # Tie-break keys: nowhere in the output's files, the workspace left beside it, or the log.
    texts = [p.read_bytes() for p in [*out.rglob("*"), *out.parent.glob(f".{out.name}.engine/**/*")] if p.is_file()]
    texts.append("\n".join(log).encode())
    assert texts and not [k for k in keys if any(str(k).encode() in blob for blob in texts)]


def test_the_exact_price_cannot_be_differenced_from_the_manifest(models: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.offers import budgets as bud

    prices: list[np.ndarray] = []
    real_raise = bud.raise_prices

    def raise_spy(*args: Any) -> Any:
        result = real_raise(*args)
        prices.append(result[0])
        return result

    monkeypatch.setattr(bud, "raise_prices", raise_spy)
    data = write(pa.Table.from_pandas(_continuous(base(3_000)), preserve_index=False), tmp_path / "data", 2)
    offers = catalogue(tmp_path / "offers.toml", T, 2, budgets={2: 500})
    manifest = engine.recommend(str(data), str(models["model"]), str(tmp_path / "out"), offers=str(offers),
                                budget_sample_rows=FULL, progress="quiet")
    exact = float(prices[-1][2])
    offer = next(o for o in manifest["offers"] if o["offer"] == "offer_2")
    assert 0 < exact < bud.WITHDRAWN and offer["customers"] < offer["budget"], (exact, offer)
    b = manifest["budgets"]
    differenced = (b["dual_bound"] - b["achieved_value"]) / (offer["budget"] - offer["customers"])
    assert not np.isclose(differenced, exact, rtol=1e-6, atol=0.0), (differenced, exact)
