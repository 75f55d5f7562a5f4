"""Association rules in ``engine recommend``: ``by_rules(...)`` eligibility and the ``rule`` column.

Real parts: a synthetic wide customer table with a planted rule (holders of ``a`` and ``b``
take ``c``), the real ``engine rules`` command (wide and ``--baskets``), a model trained by
``engine train --offers``, the recommend CLI, the Python API, and moto's S3 server for a rules
output in an object store. The references are NumPy/pandas over ``rules.parquet`` and the
columns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from test_object_store import _upload_dir, _uri, s3  # noqa: F401 - s3 is a fixture (moto server)

import engine

N = 3_000
OFFERS = [("offer_c", "c"), ("offer_d", "d"), ("offer_b", "b")]
ELIGIBLE_C = "by_rules(min_lift = 1.6, min_confidence = 0.3)"
ELIGIBLE_D = "f1 > 0.5 or not by_rules(min_confidence = 0.5)"


def _customers(seed: int = 7) -> pa.Table:
    """Two features and four products; ``a`` has nulls (not held); holders of a and b mostly hold c."""
    rng = np.random.default_rng(seed)
    f1, f2 = rng.normal(size=N), rng.normal(size=N)
    a = (rng.random(N) < 0.35 + 0.1 * (f1 > 0)).astype(np.int8)
    null_a = rng.random(N) < 0.03
    b = (rng.random(N) < 0.4).astype(np.int8)
    has_a = (a > 0) & ~null_a
    d = (rng.random(N) < 0.15 + 0.3 * has_a + 0.2 * (f1 > 0)).astype(np.int8)
    c = np.where(has_a & (b > 0), rng.random(N) < 0.7, rng.random(N) < 1 / (1 + np.exp(2.5 - 1.5 * f2))).astype(np.int8)
    # a: a count with nulls; d: a boolean column (held when true).
    count_a = a * rng.integers(1, 4, N).astype(np.int8)
    return pa.table({"customer_id": np.arange(N, dtype=np.int64), "f1": f1, "f2": f2,
                     "a": pa.array(count_a, mask=null_a), "b": b, "c": c, "d": d.astype(bool)})


def _catalogue(path: Path, rules: str | None, *, top: int = 3, extra: dict[str, str] | None = None,
               eligible: tuple[str | None, ...] = (ELIGIBLE_C, ELIGIBLE_D, None)) -> Path:
    lines = [f"top = {top}", "min_expected_value = -inf"]
    if rules is not None:
        lines.append(f'rules = "{rules}"')
    for (offer, target), rule in zip(OFFERS, eligible):
        lines += ["[[offer]]", f'id = "{offer}"', f'target = "{target}"', f"value = {2.0 + len(target)}"]
        if rule:
            lines.append(f'eligible = "{rule}"')
        for key, value in (extra or {}).items() if offer == "offer_c" else ():
            lines.append(f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, cli: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rulesrec")
    table = _customers()
    data = root / "data"
    data.mkdir()
    pq.write_table(table.slice(0, 1_700), data / "part0.parquet")
    pq.write_table(table.slice(1_700), data / "part1.parquet")
    rules = root / "rules"
    mined = cli("rules", "--input", data, "--output", rules, "--items", "a,b,c,d", "--min-support", "0.02",
                "--min-confidence", "0.1", "--min-lift", "1.0", "--backend", "cpu", "--quiet")
    assert mined.exit_code == 0, mined.output
    # The same holdings as (customer, product) rows: rules mined with --baskets name products.
    frame = table.to_pandas()
    ids, cols = np.nonzero((frame[["a", "b", "c", "d"]].fillna(0) > 0).to_numpy())
    baskets = root / "baskets"
    baskets.mkdir()
    pq.write_table(pa.table({"customer_id": ids.astype(np.int64),
                             "product": np.asarray(["prod_a", "prod_b", "prod_c", "prod_d"])[cols]}),
                   baskets / "part0.parquet")
    basket_rules = root / "basket_rules"
    mined = cli("rules", "--input", baskets, "--output", basket_rules, "--baskets", "--item-column", "product",
                "--min-support", "0.02", "--min-confidence", "0.1", "--backend", "cpu", "--quiet")
    assert mined.exit_code == 0, mined.output
    plain = root / "plain.toml"
    plain.write_text("top = 3\n" + "".join(f'[[offer]]\nid = "{o}"\ntarget = "{t}"\n' for o, t in OFFERS))
    model = root / "model"
    trained = cli("train", "--input", data, "--offers", plain, "--features", "f1,f2", "--output", model, "--k", "2",
                  "--seed", "1", "--backend", "cpu", "-q")
    assert trained.exit_code == 0, trained.output
    offers = _catalogue(root / "offers.toml", str(rules))
    out = root / "out"
    result = cli("recommend", "--input", data, "--model", model, "--offers", offers, "--output", out)
    assert result.exit_code == 0, result.output
    return {"root": root, "table": table, "data": data, "rules": rules, "basket_rules": basket_rules,
            "model": model, "offers": offers, "out": out}


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["customer_id", "rank"], kind="stable").reset_index(drop=True)


def _read(out: Path) -> pd.DataFrame:
    return _sorted(ds.dataset(out).to_table().to_pandas())


class Reference:
    """by_rules and the best held rule from ``rules.parquet`` and the columns, with NumPy alone."""

    def __init__(self, rules_dir: Path, frame: pd.DataFrame) -> None:
        self.rules = pq.read_table(rules_dir / "rules.parquet").to_pandas()
        self.frame = frame

    def held(self, antecedent: Any) -> np.ndarray:
        cols = [self.frame[i].fillna(0).to_numpy(dtype=float) > 0 for i in antecedent]
        return np.logical_and.reduce(cols)

    def by_rules(self, item: str, min_lift: float | None = None, min_confidence: float | None = None) -> np.ndarray:
        out = np.zeros(len(self.frame), dtype=bool)
        for r in self.rules.itertuples():
            if list(r.consequent) != [item] or (min_lift is not None and r.lift < min_lift) or \
                    (min_confidence is not None and r.confidence < min_confidence):
                continue
            out |= self.held(r.antecedent)
        return out

    def best(self, item: str) -> np.ndarray:
        """Per customer, ``A + B -> item`` of the held rule with the highest lift (first in the file on a tie)."""
        best_lift = np.full(len(self.frame), -np.inf)
        text = np.full(len(self.frame), None, dtype=object)
        for r in self.rules.itertuples():
            if list(r.consequent) != [item]:
                continue
            better = self.held(r.antecedent) & (r.lift > best_lift)
            best_lift[better] = r.lift
            text[better] = " + ".join(r.antecedent) + " -> " + item
        return text


def test_by_rules_and_rule_column_equal_the_reference(setup: dict[str, Any]) -> None:
    frame = setup["table"].to_pandas()
    ref = Reference(setup["rules"], frame)
    got = _read(setup["out"])
    assert list(got.columns) == ["customer_id", "rank", "offer", "propensity", "expected_value", "reason", "rule"]
    # top = 3 of 3 offers and no minimum value: exactly the eligible, unowned offers are recommended.
    eligible = {
        "offer_c": ref.by_rules("c", min_lift=1.6, min_confidence=0.3),
        "offer_d": (frame["f1"].to_numpy() > 0.5) | ~ref.by_rules("d", min_confidence=0.5),
        "offer_b": np.ones(N, dtype=bool),
    }
    # The thresholds matter on this data (a rule alone of lift < 1.6 does not admit a customer).
    assert (ref.by_rules("c") != eligible["offer_c"]).sum() > 50
    assert 300 < eligible["offer_c"].sum() < N - 300
    want = {(int(i), o) for o, t in OFFERS for i in np.flatnonzero(eligible[o] & (frame[t].to_numpy() != 1))}
    have = set(zip(got["customer_id"].astype(int), got["offer"].astype(str)))
    assert have == want
    # The rule column: the held rule with the highest lift for the offer's item, or null.
    best = {o: ref.best(t) for o, t in OFFERS}
    expect = [best[o][i] for i, o in zip(got["customer_id"], got["offer"].astype(str))]
    rule = got["rule"].astype(object).where(got["rule"].notna(), None).tolist()
    assert rule == expect
    assert got["rule"].notna().sum() > 500 and got["rule"].isna().sum() > 100
    # Every offer_c recommendation came through by_rules, so it names a rule of lift >= 1.6.
    assert got.loc[got["offer"] == "offer_c", "rule"].notna().all()
    manifest = json.loads((setup["out"] / "_manifest.json").read_text())
    assert manifest["catalogue"]["rules"]["form"] == "wide"
    assert manifest["catalogue"]["rules"]["rules"] == len(ref.rules)
    for rec in manifest["offers"]:
        rows = got[got["offer"] == rec["offer"]]
        assert rec["with_rule"] == int(rows["rule"].notna().sum())
        item = dict(OFFERS)[rec["offer"]]
        assert rec["rules"] == sum(list(c) == [item] for c in ref.rules["consequent"])
    assert "rules" in (setup["out"] / "_report.html").read_text()


def test_api_equals_cli_and_a_model_keeps_its_rules(setup: dict[str, Any], cli: Any, tmp_path: Path) -> None:
    cli_out = _read(setup["out"])
    model = engine.load_model(str(setup["model"]))
    api = _sorted(model.recommend(setup["table"].to_pandas(), offers=str(setup["offers"])))
    pd.testing.assert_frame_equal(api.astype({"offer": str, "reason": object, "rule": object}),
                                  cli_out.astype({"offer": str, "reason": object, "rule": object}),
                                  check_dtype=False)
    manifest = engine.recommend(str(setup["data"]), str(setup["model"]), str(tmp_path / "api"),
                                offers=str(setup["offers"]))
    assert [o["with_rule"] for o in manifest["offers"]] == \
        [int(cli_out.loc[cli_out["offer"] == o, "rule"].notna().sum()) for o, _ in OFFERS]
    pd.testing.assert_frame_equal(_read(tmp_path / "api"), cli_out)
    # Budgets price offers on a sample with the same masks: by_rules holds there too.
    budgeted = _catalogue(tmp_path / "budget.toml", str(setup["rules"]))
    budgeted.write_text(budgeted.read_text().replace('id = "offer_c"', 'id = "offer_c"\nbudget = 150'))
    engine.recommend(str(setup["data"]), str(setup["model"]), str(tmp_path / "budget"), offers=str(budgeted))
    capped = _read(tmp_path / "budget")
    given_c = capped.loc[capped["offer"] == "offer_c", "customer_id"].to_numpy()
    ref = Reference(setup["rules"], setup["table"].to_pandas())
    assert 0 < given_c.size <= 150 and ref.by_rules("c", 1.6, 0.3)[given_c].all()
    assert capped.loc[capped["offer"] == "offer_c", "rule"].notna().all()
    # A model trained with the catalogue records its rules (a path relative to the catalogue's
    # folder) and recommends the same without --offers.
    (tmp_path / "conf").mkdir()
    offers = _catalogue(tmp_path / "conf" / "offers.toml", "../" + str(Path("rules_copy")))
    shutil.copytree(setup["rules"], tmp_path / "rules_copy")
    trained = cli("train", "--input", setup["data"], "--offers", offers, "--features", "f1,f2", "--output",
                  tmp_path / "m", "--k", "2", "--seed", "1", "--backend", "cpu", "-q")
    assert trained.exit_code == 0, trained.output
    result = cli("recommend", "--input", setup["data"], "--model", tmp_path / "m", "--output", tmp_path / "own")
    assert result.exit_code == 0, result.output
    own = _read(tmp_path / "own")
    assert own["rule"].astype(object).tolist() == cli_out["rule"].astype(object).tolist()
    assert own["offer"].astype(str).tolist() == cli_out["offer"].astype(str).tolist()


def test_bad_rules_are_exit_2_naming_the_line(setup: dict[str, Any], cli: Any, tmp_path: Path) -> None:
    def run(offers: Path) -> Any:
        return cli("recommend", "--input", setup["data"], "--model", setup["model"], "--offers", offers,
                   "--output", tmp_path / "out")

    # by_rules without a rules key: the line of the offer's eligible rule.
    got = run(_catalogue(tmp_path / "none.toml", None))
    assert got.exit_code == 2 and "line 7" in got.output and "by_rules" in got.output and "rules =" in got.output
    # Not an engine rules output: the data folder, a recommend output, an incomplete rules output.
    for where, words in ((setup["data"], "no _manifest.json"), (setup["out"], "written by 'recommend'"),
                         (tmp_path / "nowhere", "no _manifest.json")):
        got = run(_catalogue(tmp_path / "bad.toml", str(where)))
        assert got.exit_code == 2 and "line 3 key 'rules'" in got.output and words in got.output, got.output
        assert "not an `engine rules` output" in got.output
    partial = tmp_path / "partial"
    shutil.copytree(setup["rules"], partial)
    (partial / "_SUCCESS").unlink()
    got = run(_catalogue(tmp_path / "partial.toml", str(partial)))
    assert got.exit_code == 2 and "incomplete" in got.output and "line 3" in got.output
    # Rules mined with --baskets: products, not columns.
    got = run(_catalogue(tmp_path / "b1.toml", str(setup["basket_rules"]), extra={"item": "prod_c"},
                         eligible=(ELIGIBLE_C, None, None)))
    assert got.exit_code == 2 and "prod_" in got.output and "not a column of the input" in got.output
    assert "--baskets" in got.output and str(setup["basket_rules"]) in got.output and "line 8" in got.output
    got = run(_catalogue(tmp_path / "b2.toml", str(setup["basket_rules"])))
    assert got.exit_code == 2 and "item 'c' is in no rule" in got.output and "--baskets" in got.output
    assert "line 8" in got.output and "'prod_a'" in got.output
    # An item the wide rules were not mined on.
    got = run(_catalogue(tmp_path / "w.toml", str(setup["rules"]), extra={"item": "cc"}))
    assert got.exit_code == 2 and "line 9" in got.output and "did you mean 'c'" in got.output
    # An antecedent item that is no column of this input (another table's rules).
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(setup["table"].drop(["a"]), other / "p.parquet")
    got = cli("recommend", "--input", other, "--model", setup["model"], "--offers", setup["offers"],
              "--output", tmp_path / "out")
    assert got.exit_code == 2 and "item 'a'" in got.output and "not a column of the input" in got.output
    assert "line 8" in got.output and not (tmp_path / "out").exists()


@pytest.mark.usefixtures("s3")
def test_rules_from_an_object_store(setup: dict[str, Any], tmp_path: Path) -> None:
    """moto's S3 server: the catalogue names the rules by URI; same recommendations as from the disk."""
    _upload_dir(setup["rules"], "rulesrec/rules")
    offers = _catalogue(tmp_path / "s3.toml", _uri("rulesrec/rules"))
    model = engine.load_model(str(setup["model"]))
    got = _sorted(model.recommend(setup["table"], offers=str(offers)).to_pandas())
    pd.testing.assert_frame_equal(got, _read(setup["out"]), check_dtype=False, check_categorical=False)
    missing = _catalogue(tmp_path / "s3bad.toml", _uri("rulesrec/nothing"))
    with pytest.raises(engine.EngineError) as info:
        model.recommend(setup["table"], offers=str(missing))
    assert info.value.exit_code == 2 and "not an `engine rules` output" in str(info.value)


def test_with_rule_counts_pass_the_privacy_gate() -> None:
    """engine/privacy.py: a count of recommendations with a rule is blank when it, or the rest of the
    offer's recommendations, hold fewer than 20 customers, or when the offer's own count is blank."""
    from engine.privacy import gate_offer_statistics

    def gated(customers: int, with_rule: int, total: int = 1_000) -> Any:
        rec = {"offer": "x", "customers": customers, "expected_value": 1.0, "budget_used": None,
               "with_rule": with_rule}
        notes = gate_offer_statistics([rec], customers=total)
        return rec["with_rule"], notes

    assert gated(100, 50) == (50, [])
    assert gated(100, 5)[0] is None and "with a rule" in gated(100, 5)[1][0]
    assert gated(100, 95)[0] is None          # the 5 without a rule would be given away
    assert gated(100, 0)[0] == 0 and gated(100, 100)[0] == 100   # nobody on one side: nothing to give away
    assert gated(10, 10)[0] is None           # the offer's own count is blank
    assert gated(990, 500)[0] is None         # ... also when its complement is small
