"""What analysts and on-call engineers read (issue 25), on one small credit-like table: the
positive class named everywhere a propensity shows, counts that agree, suggested ``--features``
lists that paste back, columns left out with a reason, hints, categorical type changes, and the
last JSON line of a published run with its counts.

The table (600 customers, a word-valued target) is built here; two trainings are shared by the
module's tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.models.artifact import load_model

ROWS = 1_200


def credit_table(rows: int = ROWS, seed: int = 5, with_id: bool = True) -> pa.Table:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.4, rows)
    age = rng.integers(18, 80, rows)
    home = rng.choice(["rent", "owner", "parents", "other"], rows, p=[0.4, 0.35, 0.15, 0.1])
    records = rng.random(rows) < 0.2
    store = rng.integers(1, 8, rows)                      # integer codes: a --categorical hint
    logit = -1.0 + 1.2 * records + 0.8 * (home == "rent") - 0.02 * (age - 45) - 0.5 * (income > 25_000)
    bad = rng.random(rows) < 1 / (1 + np.exp(-logit))
    cols: dict[str, Any] = {}
    if with_id:
        cols["customer_id"] = np.arange(rows, dtype=np.int64)
    cols.update({
        "income": income, "age": age, "home": home, "records": records, "store": store,
        "email": [f"user{i}@mail.example" for i in range(rows)],   # unique per row: an identifier
        "account": rng.permutation(rows).astype(np.int64) + 10_000,  # integer row keys: an identifier too
        "const": np.ones(rows, dtype=np.int64),                    # constant
        "Status": np.where(bad, "bad", "good"),
    })
    return pa.table(cols)


@pytest.fixture(scope="module")
def credit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("credit")
    pq.write_table(credit_table(), root / "credit.parquet")
    sparse = credit_table(with_id=False).append_column(
        "seniority", pa.array([float(i) if i < 15 else None for i in range(ROWS)]))
    pq.write_table(sparse, root / "sparse.parquet")
    return {"root": root, "data": root / "credit.parquet", "sparse": root / "sparse.parquet"}


TRAIN = ("--target", "Status", "--positive", "bad", "--k", "2", "--backend", "cpu", "--c-grid", "0.1,1")


@pytest.fixture(scope="module")
def trained(credit: dict[str, Path], cli: Callable[..., Any]) -> dict[str, Any]:
    out = credit["root"] / "model"
    r = cli("train", "--input", credit["data"], "--output", out, *TRAIN, "--progress", "quiet")
    assert r.exit_code == 0, r.output
    return {"model": out, "output": r.output}


def test_the_positive_class_is_named_wherever_a_propensity_shows(trained: dict[str, Any], cli: Callable[..., Any],
                                                                 credit: dict[str, Path], tmp_path: Path) -> None:
    label = "P(Status = bad)"
    assert f"propensity = {label}" in trained["output"]
    show = cli("model", "show", trained["model"])
    assert show.exit_code == 0 and label in show.output
    assert json.loads(cli("model", "show", trained["model"], "--json").output)["propensity_of"] == label
    assert label in (trained["model"] / "report.html").read_text()
    out = tmp_path / "scores"
    r = cli("score", "--input", credit["data"], "--model", trained["model"], "--output", out, "--backend", "cpu",
            "--quiet")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model"]["propensity_of"] == label and manifest["model"]["positive_class"] == "bad"
    assert label in (out / "_report.html").read_text()
    import engine

    assert engine.load_model(str(trained["model"])).artifact.params["positive"] == "bad"


def test_counts_agree_and_left_out_columns_say_why(trained: dict[str, Any], cli: Callable[..., Any]) -> None:
    m = load_model(str(trained["model"]))
    n = len(m.columns)
    assert set(m.columns) == {"income", "age", "store", "home", "records"}
    summary = trained["output"]
    show = cli("model", "show", trained["model"]).output
    shown = json.loads(cli("model", "show", trained["model"], "--json").output)["counts"]
    from engine.report.html import read_report_data

    report = read_report_data((trained["model"] / "report.html").read_text())
    assert shown["features"] == report["counts"]["features"] == n
    for text in (summary, show):
        assert f"{n} features (3 numeric, 2 categorical)" in text
        assert "email" in text and "unique per row: an identifier" in text
        assert "account" in text.split("left out")[1]
        assert "const" in text and "constant" in text
        assert "--categorical store" in text          # integer codes: the hint
    # Levels on the drivers' scale: the report's level table equals the drivers' level effects.
    drivers = {d["feature"]: d["log_odds_per_sd"] for d in report["drivers"] if d["unit"] == "level"}
    assert drivers and "log-odds vs the average customer" in (trained["model"] / "report.html").read_text()


def test_the_suggested_features_paste_back(credit: dict[str, Path], cli: Callable[..., Any], tmp_path: Path) -> None:
    """A column of 15 values: exit 3 with a --features list; pasted back it trains on every other feature."""
    r = cli("train", "--input", credit["sparse"], "--output", tmp_path / "m1", *TRAIN, "--quiet")
    assert r.exit_code == 3, r.output
    assert "seniority" in r.output
    suggested = r.output.split("--features ", 1)[1].split(",  or")[0].split(", or")[0].split()[0]
    names = suggested.split(",")
    assert "seniority" not in names and {"home", "records"} <= set(names)
    r = cli("train", "--input", credit["sparse"], "--output", tmp_path / "m2", *TRAIN, "--quiet",
            "--features", suggested, "--log-format", "json")
    assert r.exit_code == 0, r.output            # also: no customer_id column, and it trains
    m = load_model(str(tmp_path / "m2"))
    assert set(m.columns) == {"income", "age", "store", "home", "records"}
    # The JSON event counts what the summary counts (every column used, categorical ones too).
    finished = [json.loads(x) for x in r.stderr.splitlines() if '"train.finished"' in x][-1]
    assert finished["features"] == len(m.columns) == finished["feature_counts"]["features"]
    assert finished["propensity_of"] == "P(Status = bad)"


def test_a_categorical_column_that_changes_type_is_exit_3(trained: dict[str, Any], credit: dict[str, Path],
                                                          cli: Callable[..., Any], tmp_path: Path) -> None:
    t = credit_table()
    t = t.set_column(t.schema.get_field_index("records"), "records", pc_cast(t.column("records"), pa.int8()))
    pq.write_table(t, tmp_path / "retyped.parquet")
    r = cli("score", "--input", tmp_path / "retyped.parquet", "--model", trained["model"], "--output",
            tmp_path / "s", "--backend", "cpu", "--quiet")
    assert r.exit_code == 3, r.output
    assert "'records' was trained as bool" in r.output and "type int8" in r.output
    assert not (tmp_path / "s").exists()
    import engine

    with pytest.raises(engine.InputError, match="trained as bool"):
        engine.load_model(str(trained["model"])).score(t)
    # Another storage of the same family (string -> dictionary<string>, int64 -> int32) is no change.
    same = credit_table()
    same = same.set_column(same.schema.get_field_index("home"), "home", pc_cast(same.column("home"),
                           pa.dictionary(pa.int32(), pa.string())))
    same = same.set_column(same.schema.get_field_index("store"), "store", pc_cast(same.column("store"), pa.int32()))
    pq.write_table(same, tmp_path / "same.parquet")
    r = cli("score", "--input", tmp_path / "same.parquet", "--model", trained["model"], "--output",
            tmp_path / "s", "--backend", "cpu", "--quiet", "--dry-run")
    assert r.exit_code == 0, r.output


def pc_cast(col: Any, to: pa.DataType) -> Any:
    import pyarrow.compute as pc

    return pc.cast(col, to)


def test_a_drift_alert_run_ends_with_its_counts(trained: dict[str, Any], credit: dict[str, Path],
                                                tmp_path: Path) -> None:
    """--fail-on-drift: exit 9, scores published, and the last JSON line still carries the counts."""
    t = credit_table(seed=9)
    t = t.set_column(t.schema.get_field_index("income"), "income", pa.array(np.asarray(t.column("income")) * 3))
    pq.write_table(t, tmp_path / "drifted.parquet")
    r = subprocess.run([sys.executable, "-m", "engine", "score", "--input", str(tmp_path / "drifted.parquet"),
                        "--model", str(trained["model"]), "--output", str(tmp_path / "s"), "--backend", "cpu",
                        "--fail-on-drift", "--log-format", "json", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    last = json.loads(r.stderr.strip().splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 9
    assert last["published"] is True and last["rows_in"] == last["rows_out"] == ROWS
    assert last["propensity_of"] == "P(Status = bad)"


def test_api_arguments_are_checked_and_named_as_the_api_names_them(trained: dict[str, Any], credit: dict[str, Path],
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    import pandas as pd

    import engine

    monkeypatch.chdir(tmp_path)
    model = engine.load_model(str(trained["model"]))
    assert model.propensity_of == "P(Status = bad)"
    frame = credit_table(rows=50).to_pandas()
    data = str(credit["data"])
    cases: list[tuple[Callable[[], Any], type[Exception], str]] = [
        (lambda: model.score(frame, reasons="2"), engine.UsageError, "reasons="),
        (lambda: model.score(frame, keep=5), engine.UsageError, "keep="),
        (lambda: model.score(frame, keep=["nope"]), engine.InputError, "keep"),
        (lambda: model.score(frame.assign(age=["x"] + [1] * 49)), engine.InputError, "age"),
        (lambda: model.score(pd.concat([frame, frame[["age"]]], axis=1)), engine.InputError, "duplicate"),
        (lambda: engine.load_model(None), engine.UsageError, "path="),
        (lambda: engine.train(data, "Status", tmp_path / "m", k="4", positive="bad"), engine.UsageError, "k="),
        (lambda: engine.train(data, "Status", tmp_path / "m", k=2.5, positive="bad"), engine.UsageError, "k="),
        (lambda: engine.train(data, "Status", tmp_path / "m", seed="x", positive="bad"), engine.UsageError, "seed="),
        (lambda: engine.train(data, None, tmp_path / "m"), engine.UsageError, "target="),
        (lambda: engine.train(data, "Status", None), engine.UsageError, "output="),
        (lambda: engine.train(data, "Status", tmp_path / "m", positive=1), engine.UsageError, "positive="),
        (lambda: engine.train(data, "Status", tmp_path / "m"), engine.UsageError, "positive="),
    ]
    for call, error, named in cases:
        with pytest.raises(error) as info:
            call()
        assert named in str(info.value), str(info.value)
        assert "--" not in str(info.value).replace("--categorical", ""), str(info.value)
    assert not (tmp_path / "None").exists() and not (tmp_path / "m").exists()


def test_segment_descriptions_are_distinct() -> None:
    from types import SimpleNamespace

    from engine.models.explain import segment_descriptions

    m = SimpleNamespace(centroids=np.array([[1.0, 0.5, 0.2, 0.1], [1.0, 0.5, 0.2, -0.1]]), categoricals=(),
                        segmenter=SimpleNamespace(scale=np.full(4, 2.0)), features=("a", "b", "c", "d"))
    texts = [d["description"] for d in segment_descriptions(m)]
    assert len(set(texts)) == 2 and texts[0].startswith("a +1.0 sd, b +0.5 sd, c +0.2 sd")


def test_csv_input_trains_and_scores_and_other_files_are_named(trained: dict[str, Any], credit: dict[str, Path],
                                                              cli: Callable[..., Any], tmp_path: Path) -> None:
    import pyarrow.csv as pacsv

    table = credit_table(with_id=True)
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    pacsv.write_csv(table.slice(0, 600), csv_dir / "a.csv")
    pacsv.write_csv(table.slice(600), csv_dir / "b.csv")
    # --schema names a type: the store codes read as text, so a categorical feature.
    r = cli("train", "--input", csv_dir, "--output", tmp_path / "m", *TRAIN, "--quiet", "--schema", "store:string")
    assert r.exit_code == 0, r.output
    m = load_model(str(tmp_path / "m"))
    assert set(m.columns) == {"income", "age", "store", "home", "records"}
    assert "store" in {c.name for c in m.categoricals}
    assert cli("train", "--input", csv_dir, "--output", tmp_path / "m0", *TRAIN, "--schema", "store:nope"
               ).exit_code == 2
    # A CSV file scored with a model trained on Parquet: read with the model's types.
    r = cli("score", "--input", csv_dir / "a.csv", "--model", trained["model"], "--output", tmp_path / "s",
            "--backend", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    assert "scored 600 of 600 rows" in r.output
    assert sorted(p.name for p in csv_dir.iterdir()) == ["a.csv", "b.csv"]      # nothing written beside the input
    # Other kinds of file inside a Parquet input directory are named, not skipped silently.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(table, mixed / "part.parquet")
    (mixed / "notes.txt").write_text("hello")
    r = cli("score", "--input", mixed, "--model", trained["model"], "--output", tmp_path / "s2",
            "--backend", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    assert "notes.txt" in r.output and "not Parquet" in r.output
