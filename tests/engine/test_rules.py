"""``engine rules``: the same rules and metrics as mlxtend's ``fpgrowth`` + ``association_rules``
(synthetic data and Caravan's 21 product columns), baskets equal to the wide form, a real
two-worker Dask cluster equal to the local run, the privacy floor, bad input, the output's
protocol (dry run, no overwrite without --overwrite, JSON log events) and the store.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine.report.html import read_report_data

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

mlxtend = pytest.importorskip("mlxtend", reason="mlxtend (the dev extra) is not installed")
from mlxtend.frequent_patterns import association_rules, fpgrowth  # noqa: E402

METRICS = ("support", "confidence", "lift", "leverage", "conviction")


def _synthetic(n: int = 2_000, seed: int = 5) -> pd.DataFrame:
    """Customers with 12 items of mixed kinds (bool, 0/1 ints, counts, whole floats, nulls) and
    planted rules: most holders of i1 and i2 also hold i3; i5 goes with i6."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.04, 0.45, 12)
    held = rng.random((n, 12)) < p
    both = held[:, 1] & held[:, 2]
    held[:, 3] |= both & (rng.random(n) < 0.8)
    held[:, 6] |= held[:, 5] & (rng.random(n) < 0.7)
    # A basket table has no row for a customer who holds nothing: everyone holds something here,
    # so the two forms describe the same customers.
    held[~held.any(axis=1), 0] = True
    frame = pd.DataFrame({"customer_id": np.arange(100, 100 + n, dtype=np.int64)})
    for j in range(12):
        col = held[:, j]
        if j % 4 == 0:
            frame[f"i{j}"] = col                                               # boolean
        elif j % 4 == 1:
            frame[f"i{j}"] = np.where(col, rng.integers(1, 5, n), 0)          # counts
        elif j % 4 == 2:
            frame[f"i{j}"] = col.astype(np.float64)                            # whole floats
        else:
            frame[f"i{j}"] = pd.array(np.where(col, 1, 0), dtype="Int8")
            frame.loc[~col & (rng.random(n) < 0.1), f"i{j}"] = pd.NA          # nulls: not held
    frame["region"] = rng.choice(["n", "s"], n)
    return frame


def _items(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("i")]


def _mlxtend_rules(held: pd.DataFrame, min_support: float, min_confidence: float, min_lift: float,
                   max_len: int) -> pd.DataFrame:
    fi = fpgrowth(held, min_support=min_support, use_colnames=True, max_len=max_len)
    ar = association_rules(fi, len(held), metric="confidence", min_threshold=min_confidence)
    return ar[ar["lift"] >= min_lift]


def _assert_same_rules(ours: pa.Table, theirs: pd.DataFrame) -> None:
    def key(a: Any, c: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(sorted(a)), tuple(sorted(c))

    mine = ours.to_pandas()
    got = {key(a, c): r for a, c, r in zip(mine["antecedent"], mine["consequent"], mine.itertuples())}
    want = {key(a, c): r for a, c, r in zip(theirs["antecedents"], theirs["consequents"], theirs.itertuples())}
    assert len(got) == len(mine), "a rule appears twice"
    assert set(got) == set(want), (sorted(set(got) ^ set(want))[:5], len(got), len(want))
    assert len(got) > 10
    for k, r in got.items():
        w = want[k]
        for m in METRICS:
            a, b = getattr(r, m), getattr(w, m)
            assert (np.isinf(a) and np.isinf(b)) or abs(a - b) <= 1e-9, (k, m, a, b)
    lifts = mine["lift"].to_numpy()
    assert np.all(lifts[:-1] >= lifts[1:]), "not sorted by lift"


def _write(frame: pd.DataFrame, path: Path, files: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False), path / f"part-{i}.parquet")
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    frame = _synthetic()
    return frame, _write(frame, tmp_path_factory.mktemp("rules") / "wide", files=2)


@pytest.fixture(scope="module")
def baskets(wide: tuple[pd.DataFrame, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wide table as (customer_id, item) rows: shuffled over 3 files, some rows twice, and
    rows with a null id or item (left out), so a customer's rows lie in several files."""
    frame, _ = wide
    held = frame[_items(frame)].fillna(0).astype(float) > 0
    ids, cols = np.nonzero(held.to_numpy())
    long = pd.DataFrame({"customer_id": frame["customer_id"].to_numpy()[ids],
                         "product": np.asarray(_items(frame))[cols]})
    long = pd.concat([long, long.sample(300, random_state=2)]).sample(frac=1.0, random_state=3)
    extra = pd.DataFrame({"customer_id": pd.array([None, 100, 101], dtype="Int64"),
                          "product": ["i1", None, None]})
    long = pd.concat([long.astype({"customer_id": "Int64"}), extra], ignore_index=True)
    return _write(long, tmp_path_factory.mktemp("rules") / "baskets", files=3)


def _run(cli: Callable[..., Any], *args: object) -> Any:
    return cli("rules", "--backend", "cpu", "--quiet", *args)


def test_wide_rules_equal_mlxtend_and_baskets_equal_wide(cli: Callable[..., Any], wide: tuple[pd.DataFrame, Path],
                                                        baskets: Path, tmp_path: Path) -> None:
    frame, data = wide
    flags = ("--min-support", "0.02", "--min-confidence", "0.2", "--min-lift", "1.05", "--max-len", "4")
    result = _run(cli, "--input", data, "--output", tmp_path / "w", "--items-prefix", "i", *flags)
    assert result.exit_code == 0, result.output
    ours = pq.read_table(tmp_path / "w" / "rules.parquet")
    held = frame[_items(frame)].fillna(0).astype(float) > 0
    _assert_same_rules(ours, _mlxtend_rules(held, 0.02, 0.2, 1.05, 4))
    assert ours.schema.names == ["antecedent", "consequent", "support", "confidence", "lift", "leverage",
                                 "conviction", "customers"]
    assert ours.column("customers").to_pylist() == [round(s * len(frame)) for s in ours.column("support").to_pylist()]
    assert ["i1", "i2"] in ours.column("antecedent").to_pylist()  # the planted rule i1 + i2 -> i3

    result = _run(cli, "--input", baskets, "--output", tmp_path / "b", "--baskets", "--item-column", "product",
                  *flags)
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "b" / "rules.parquet").equals(ours)
    manifest = json.loads((tmp_path / "b" / "_manifest.json").read_text())
    assert manifest["totals"]["customers"] == len(frame) and manifest["totals"]["null_ids"] == 1
    assert manifest["totals"]["null_items"] == 2


@pytest.fixture(scope="module")
def events(wide: tuple[pd.DataFrame, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """The wide table as events with text ids: each customer's items spread over 1-3 rows, 100
    rows repeated, 30 customers whose two rows hold nothing, 5 rows without an id (left out);
    shuffled over 3 files. Returns the customers' OR of their rows (what the rules describe)."""
    frame, _ = wide
    rng = np.random.default_rng(11)
    items = _items(frame)
    held = (frame[items].fillna(0).astype(float) > 0).to_numpy()
    k = rng.integers(1, 4, len(frame))
    first = np.concatenate([[0], np.cumsum(k)[:-1]])
    rows = np.zeros((int(k.sum()), len(items)), dtype=np.int8)
    c, j = np.nonzero(held)
    rows[first[c] + rng.integers(0, k[c]), j] = 1
    ids = [f"c{i}" for i in np.repeat(frame["customer_id"].to_numpy(), k)]
    long = pd.DataFrame(rows, columns=items)
    long.insert(0, "customer_id", ids)
    empty = pd.DataFrame(np.zeros((60, len(items)), dtype=np.int8), columns=items)
    empty.insert(0, "customer_id", [f"z{i // 2}" for i in range(60)])
    nulls = pd.DataFrame(np.ones((5, len(items)), dtype=np.int8), columns=items)
    nulls.insert(0, "customer_id", None)
    long = pd.concat([long, long.sample(100, random_state=4), empty, nulls], ignore_index=True)
    long = long.sample(frac=1.0, random_state=5).reset_index(drop=True)
    customers = long.dropna(subset=["customer_id"]).groupby("customer_id")[items].max() > 0
    return customers, _write(long, tmp_path_factory.mktemp("rules") / "events", files=3)


def test_wide_ids_are_customers_repeats_refused_or_joined_as_events(
        cli: Callable[..., Any], events: tuple[pd.DataFrame, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide table whose id repeats is exit 3 naming the column; with --rows-are-events the rows of
    an id are one customer (an item held when any row holds it) and the rules equal mlxtend's on
    that table, through many spilled buckets (removed afterwards), whatever the id's type."""
    import tempfile

    from engine.itemsets import spill

    customers, data = events
    flags = ("--items-prefix", "i", "--min-support", "0.02", "--min-confidence", "0.2", "--min-lift", "1.05",
             "--max-len", "3", "--no-report")
    refused = _run(cli, "--input", data, "--output", tmp_path / "refused", *flags)
    assert refused.exit_code == 3, refused.output
    assert "'customer_id' repeats" in refused.output and "--rows-are-events" in refused.output
    assert not (tmp_path / "refused").exists()

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(spill, "BUCKET_PAIR_BYTES", 4096)   # ~10 buckets instead of 2
    result = _run(cli, "--input", data, "--output", tmp_path / "ev", *flags, "--rows-are-events",
                  "--partition-rows", "1500")
    assert result.exit_code == 0, result.output
    _assert_same_rules(pq.read_table(tmp_path / "ev" / "rules.parquet"), _mlxtend_rules(customers, 0.02, 0.2, 1.05, 3))
    manifest = json.loads((tmp_path / "ev" / "_manifest.json").read_text())
    assert manifest["totals"]["customers"] == len(customers) == 2_030 and manifest["totals"]["null_ids"] == 5
    partition = next(p for p in manifest["passes"] if p["pass"] == "partition")
    assert partition["buckets"] >= 8 and partition["fragments"] >= 3, partition
    assert list(scratch.iterdir()) == []

    bad = pd.read_parquet(data / "part-1.parquet")
    bad.loc[7, "i4"] = -1
    _write(bad, tmp_path / "bad")
    failed = _run(cli, "--input", tmp_path / "bad", "--output", tmp_path / "bad-out", *flags, "--rows-are-events")
    assert failed.exit_code == 3 and "'i4'" in failed.output and "row 7" in failed.output, failed.output
    assert list(scratch.iterdir()) == [] and not (tmp_path / "bad-out").exists()
    missing = _run(cli, "--input", data, "--output", tmp_path / "m", *flags, "--rows-are-events", "--id-column", "cid")
    assert missing.exit_code == 3 and "'cid'" in missing.output, missing.output


def test_caravan_product_columns_equal_mlxtend(cli: Callable[..., Any], tmp_path: Path) -> None:
    from bench.public_data import CARAVAN_POLICY_COUNT_COLUMNS, DataPackageMissing, load_caravan

    try:
        caravan = load_caravan()
    except DataPackageMissing as exc:
        pytest.skip(str(exc))
    data = _write(caravan, tmp_path / "caravan")
    # --items-prefix A picks exactly the 21 policy-count columns (AWAPART .. ABYSTAND).
    result = _run(cli, "--input", data, "--output", tmp_path / "out", "--items-prefix", "A",
                  "--min-support", "0.005", "--min-confidence", "0.05", "--min-lift", "0", "--max-len", "4")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["input"]["items"] == list(CARAVAN_POLICY_COUNT_COLUMNS)
    held = caravan[list(CARAVAN_POLICY_COUNT_COLUMNS)] > 0
    _assert_same_rules(pq.read_table(tmp_path / "out" / "rules.parquet"), _mlxtend_rules(held, 0.005, 0.05, 0, 4))


def test_privacy_floor_holds_whatever_min_support_says(cli: Callable[..., Any], tmp_path: Path) -> None:
    """a+b is held by 19 customers, c+d by 20: with a support floor far below one customer,
    only c+d and what 20 or more customers hold is counted, in the rules and the report."""
    n = 400
    frame = pd.DataFrame({k: np.zeros(n, dtype=np.int8) for k in "abcde"})
    frame.loc[:18, ["a", "b"]] = 1            # 19 customers hold a and b
    frame.loc[100:119, ["c", "d"]] = 1        # 20 hold c and d
    frame.loc[200:229, "a"] = 1               # a alone: 49 customers; b alone: 19
    frame.loc[300:339, "e"] = 1
    data = _write(frame, tmp_path / "data")
    result = _run(cli, "--input", data, "--output", tmp_path / "out", "--items", "a,b,c,d,e",
                  "--min-support", "0.0001", "--min-confidence", "0", "--min-lift", "0")
    assert result.exit_code == 0, result.output
    rules = pq.read_table(tmp_path / "out" / "rules.parquet").to_pandas()
    items = {i for side in ("antecedent", "consequent") for r in rules[side] for i in r}
    assert items == {"c", "d"} and len(rules) == 2 and set(rules["customers"]) == {20}
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["thresholds"]["min_customers_in_effect"] == 20
    assert manifest["totals"]["frequent_items"] == 4   # b (19 customers) is not counted
    text = (tmp_path / "out" / "_report.html").read_text()
    report = read_report_data(text)
    assert "b" not in report["picture"]["items"]
    lifts = dict(zip(report["picture"]["items"], report["picture"]["lift"]))
    assert lifts["a"][report["picture"]["items"].index("c")] is None   # a+c: no customer, no number
    # The picture (inline SVG) draws one cell per frequent ordered pair, none for a+c.
    cells = re.findall(r"<title>([^<]*): lift [^<]*</title></rect>", text)
    shown = [p for p in (("c", "d"), ("d", "c")) if lifts[p[0]][report["picture"]["items"].index(p[1])] is not None]
    assert sorted(cells) == sorted(f"{x} + {y}" for x, y in shown) and "a + c" not in cells
    # The mlxtend answer at the same support includes the 19-customer itemsets: the floor is ours.
    ref = _mlxtend_rules(frame.astype(bool), 0.0001, 0, 0, 3)
    assert any("b" in r for r in ref["antecedents"])


@pytest.mark.parametrize("case, flags, code, named", [
    ("unknown column", ("--items", "i1,i99"), 3, "i99"),
    ("misspelt column", ("--items", "I1,i2"), 3, "'I1'"),
    ("string column", ("--items", "i1,region"), 3, "region"),
    ("no prefix match", ("--items-prefix", "zz"), 2, "--items-prefix"),
    ("support 0", ("--items", "i1,i2", "--min-support", "0"), 2, "--min-support"),
    ("support above 1", ("--items", "i1,i2", "--min-support", "1.5"), 2, "--min-support"),
    ("max len 5", ("--items", "i1,i2", "--max-len", "5"), 2, "--max-len"),
    ("both forms", ("--items", "i1", "--baskets"), 2, "--baskets"),
    ("basket column missing", ("--baskets", "--item-column", "sku"), 3, "sku"),
])
def test_bad_flags_and_columns_are_named(cli: Callable[..., Any], wide: tuple[pd.DataFrame, Path], tmp_path: Path,
                                         case: str, flags: tuple[str, ...], code: int, named: str) -> None:
    _, data = wide
    result = _run(cli, "--input", data, "--output", tmp_path / "out", *flags)
    assert result.exit_code == code, (case, result.output)
    assert named in result.output, (case, result.output)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values, row", [
    ([0, 1, -1, 0], 2),                      # negative
    ([0.0, 1.0, 0.5, 1.0], 2),               # fractional
    ([0.0, float("nan"), 1.0, 0.0], 1),      # NaN
])
def test_non_binary_values_fail_with_the_column_and_row(cli: Callable[..., Any], tmp_path: Path,
                                                        values: list[float], row: int) -> None:
    n = 40
    data = tmp_path / "data"
    data.mkdir()
    # Straight from NumPy: a NaN stays a NaN (pandas would store it as a null, which means "not held").
    pq.write_table(pa.table({"ok": np.ones(n, dtype=np.int8), "bad": np.resize(np.asarray(values), n)}),
                   data / "x.parquet")
    result = _run(cli, "--input", data, "--output", tmp_path / "out", "--items", "ok,bad")
    assert result.exit_code == 3, result.output
    assert "'bad'" in result.output and f"row {row} " in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_empty_table_is_exit_3(cli: Callable[..., Any], tmp_path: Path) -> None:
    data = tmp_path / "empty"
    data.mkdir()
    pq.write_table(pa.table({"a": pa.array([], pa.int8()), "b": pa.array([], pa.int8())}), data / "x.parquet")
    result = _run(cli, "--input", data, "--output", tmp_path / "out", "--items", "a,b")
    assert result.exit_code == 3 and "no rows" in result.output, result.output


def test_dry_run_overwrite_and_json_events(cli: Callable[..., Any], wide: tuple[pd.DataFrame, Path],
                                           tmp_path: Path) -> None:
    _, data = wide
    out = tmp_path / "out"
    result = _run(cli, "--input", data, "--output", out, "--items", "i1,i2,i3", "--dry-run")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["form"] == "wide" and plan["passes"] == ["ids", "items", "pairs", "triples"] and not out.exists()
    result = cli("rules", "--input", data, "--output", out, "--items", "i1,i2,i3", "--backend", "cpu",
                 "--log-format", "json", "--progress", "log", "--min-support", "0.05")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "rules.finished" and events[-1]["customers"] == 2_000
    before = (out / "rules.parquet").read_bytes()
    again = _run(cli, "--input", data, "--output", out, "--items", "i1,i2,i3")
    assert again.exit_code == 6 and "--overwrite" in again.output
    assert (out / "rules.parquet").read_bytes() == before
    (out / "notes.txt").write_text("mine")   # a foreign file: never deleted, even with --overwrite
    again = _run(cli, "--input", data, "--output", out, "--items", "i1,i2,i3", "--overwrite")
    assert again.exit_code == 6 and "notes.txt" in again.output
    (out / "notes.txt").unlink()
    again = _run(cli, "--input", data, "--output", out, "--items", "i1,i2", "--overwrite")
    assert again.exit_code == 0, again.output
    replaced = pq.read_table(out / "rules.parquet").to_pandas()
    assert {i for r in replaced["antecedent"] for i in r} <= {"i1", "i2"}


def test_python_api_returns_the_published_table(wide: tuple[pd.DataFrame, Path], tmp_path: Path) -> None:
    _, data = wide
    table = engine.rules(str(data), str(tmp_path / "out"), items="i1,i2,i3,i5,i6", min_support=0.02,
                         min_confidence=0.1, backend="cpu")
    assert isinstance(table, pa.Table) and table.num_rows > 0
    assert table.equals(pq.read_table(tmp_path / "out" / "rules.parquet").replace_schema_metadata(table.schema.metadata))
    manifest = json.loads(table.schema.metadata[b"engine.manifest"])
    assert manifest["totals"]["rules"] == table.num_rows
    with pytest.raises(engine.UsageError):
        engine.rules(str(data), str(tmp_path / "x"), items="i1,i2", min_support=-0.1)


from test_object_store import s3  # noqa: E402,F401  (the moto server fixture, module-scoped)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (test_distributed's)."""
    from test_distributed import _running_cluster

    with _running_cluster(tmp_path_factory.mktemp("rules-dask"), ["w1", "w2"]) as c:
        yield c


def test_two_dask_workers_equal_the_local_run(cli: Callable[..., Any], cluster: Any, wide: tuple[pd.DataFrame, Path],
                                              baskets: Path, events: tuple[pd.DataFrame, Path], tmp_path: Path) -> None:
    """Counts from tasks on two worker processes add up to the local run's, wide (ids checked
    distinct), baskets and wide events; the remote workers read every fragment per bucket, the
    local run spills pairs by bucket."""
    _, data = wide
    flags = ("--min-support", "0.02", "--min-confidence", "0.2", "--max-len", "3", "--no-report")
    for name, source, form in (("wide", data, ("--items-prefix", "i")),
                               ("baskets", baskets, ("--baskets", "--item-column", "product",
                                                     "--partition-rows", "2000")),
                               ("events", events[1], ("--items-prefix", "i", "--rows-are-events"))):
        local = _run(cli, "--input", source, "--output", tmp_path / f"{name}-local", *form, *flags)
        assert local.exit_code == 0, local.output
        remote = _run(cli, "--input", source, "--output", tmp_path / f"{name}-dask", *form, *flags,
                      "--scheduler", cluster.address)
        assert remote.exit_code == 0, remote.output
        expected = pq.read_table(tmp_path / f"{name}-local" / "rules.parquet")
        assert expected.num_rows > 10
        assert pq.read_table(tmp_path / f"{name}-dask" / "rules.parquet").equals(expected), name
        manifest = json.loads((tmp_path / f"{name}-dask" / "_manifest.json").read_text())
        assert manifest["tasks"] >= 2, manifest["tasks"]
        assert "partition" not in [p["pass"] for p in manifest["passes"]]   # no spill a remote worker can't see
    # Worker processes the engine starts on this host read the spilled buckets.
    here = _run(cli, "--input", baskets, "--output", tmp_path / "workers", "--baskets", "--item-column", "product",
                *flags, "--workers", "2")
    assert here.exit_code == 0, here.output
    assert pq.read_table(tmp_path / "workers" / "rules.parquet").equals(
        pq.read_table(tmp_path / "baskets-local" / "rules.parquet"))
    assert json.loads((tmp_path / "workers" / "_manifest.json").read_text())["passes"][0]["pass"] == "partition"


def test_rules_from_and_to_the_store_equal_a_local_run(cli: Callable[..., Any], baskets: Path, tmp_path: Path,
                                                        s3: Any) -> None:  # noqa: F811
    """Basket input read from a real S3-compatible server (moto, test_object_store's fixture), rules
    published under a prefix through engine.io.publish; a rerun without --overwrite is refused."""
    import test_object_store as store

    flags = ("--baskets", "--item-column", "product", "--min-support", "0.02", "--min-confidence", "0.2")
    local = _run(cli, "--input", baskets, "--output", tmp_path / "local", *flags)
    assert local.exit_code == 0, local.output
    store._upload_dir(baskets, "rules-in")
    out = store._uri("rules-out")
    result = _run(cli, "--input", store._uri("rules-in"), "--output", out, *flags)
    assert result.exit_code == 0, result.output
    objects = store._keys("rules-out")
    assert {"rules.parquet", "_manifest.json", "_report.html", "_SUCCESS"} <= set(objects)
    got = pq.read_table(pa.BufferReader(objects["rules.parquet"]))
    assert got.equals(pq.read_table(tmp_path / "local" / "rules.parquet"))
    again = _run(cli, "--input", store._uri("rules-in"), "--output", out, *flags)
    assert again.exit_code == 6 and "--overwrite" in again.output
