"""Nightly-run safety (issue 6), with real Parquet files and real model artifacts.

Validation before any work (one message for every problem), bad rows and their
reasons, rows in = rows scored + rows rejected, duplicate ids, refusing an existing
output, the run lock, ``--resume`` and what it may reuse, privacy of outputs and
messages, and the exit code table in README and ``--help``. Killing a real process at
several moments is in test_kill_publish.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.config import Settings
from engine.errors import (
    EXIT_CODES,
    BadRowsError,
    EngineError,
    InputError,
    ModelError,
    OutputError,
    exit_code_markdown,
)
from engine.io.commit import OutputCommitter
from engine.io.ids import count_bucket, write_id_buckets
from engine.io.workspace import Workspace
from engine.jobs.generate import generate
from engine.jobs.score import ScoreOptions, score
from engine.jobs.train import TrainOptions, train
from engine.models.artifact import ARRAYS_FILE, METADATA_FILE, load_model, save_model

REPO = Path(__file__).resolve().parents[2]
ROWS, FILES = 3_000, 3
FEATURE_INF = "monetary_12m"       # float64 in the generated data
FEATURE_NEG_INF = "basket_size_items"  # float32
FEATURE_NAN = "avg_order_value"


# -- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture(scope="module")
def safety_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 generated customers in 3 files (1,000 rows in 500-row groups). Read-only."""
    out = tmp_path_factory.mktemp("safety") / "data"
    generate(ROWS, FILES, out, seed=11, row_group_rows=500)  # 500-row groups: one part each
    return out


@pytest.fixture(scope="module")
def safety_model(safety_data: Path) -> Path:
    """A model trained by the engine on :func:`safety_data` (k=4, CPU). Read-only."""
    out = safety_data.parent / "model"
    train(TrainOptions(input=str(safety_data), target="churned", output=str(out), k=4, seed=5,
                       backend="cpu"))
    return out


@pytest.fixture(scope="module")
def reference(safety_data: Path, safety_model: Path) -> tuple[Path, dict[str, Any], pa.Table]:
    """A clean run of :func:`safety_model` over :func:`safety_data`: output, manifest, scores."""
    out = safety_data.parent / "reference"
    manifest = run(safety_data, safety_model, out)
    return out, manifest, scores_of(out)


@pytest.fixture(scope="module")
def other_model(safety_model: Path) -> Path:
    """A second real artifact with other propensity weights, hence another content hash."""
    m = load_model(safety_model)
    out = safety_model.parent / "model-other"
    save_model(replace(m, intercept=m.intercept + 0.5, coef=m.coef * 0.9, content_hash=""), out)
    return out


def data_files(data: Path) -> list[Path]:
    return sorted(data.glob("*.parquet"))


def copy_data(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest)
    return dest


def run(inp: Path, model: Path, out: Path, *, keep: tuple[str, ...] = (), overwrite: bool = False,
        resume: bool = False, unique_ids: bool = False, **settings: Any) -> dict[str, Any]:
    """The library's ``score`` on the CPU backend, with the settings that matter here."""
    settings.setdefault("partition_rows", 500)
    return score(ScoreOptions(input=str(inp), model=str(model), output=str(out), keep=keep, backend="cpu",
                              overwrite=overwrite, resume=resume, unique_ids=unique_ids, progress="quiet"),
                 Settings(**settings))


def cli(*args: object, cwd: Path) -> Any:
    """``engine ...`` in-process, from ``cwd`` so that no conf/engine.toml is picked up."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


def scores_of(out: Path) -> pa.Table:
    """The published scores as pyarrow.dataset reads them, sorted by id."""
    table = ds.dataset(out, format="parquet").to_table()
    return table.sort_by("customer_id")


def assert_same_scores(a: pa.Table, b: pa.Table) -> None:
    assert a.num_rows == b.num_rows
    for name in ("customer_id", "segment", "segment_distance", "propensity"):
        np.testing.assert_array_equal(a.column(name).to_numpy(), b.column(name).to_numpy(), err_msg=name)


def assert_counts_add_up(manifest: dict[str, Any]) -> None:
    t = manifest["totals"]
    assert t["rows_in"] == t["rows_out"] + t["rows_rejected"]
    for p in manifest["partitions"]:
        assert p["rows_in"] == p["rows_out"] + p["rows_rejected"], p["part"]
    assert t["rows_in"] == sum(p["rows_in"] for p in manifest["partitions"])


def hidden_siblings(out: Path) -> set[str]:
    return {p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")}


# -- validation before any work --------------------------------------------------------
def test_every_schema_problem_in_one_message_naming_files(safety_data: Path, safety_model: Path,
                                                          tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    f0, f1, f2 = data_files(safety_data)
    shutil.copy(f0, inp / "good.parquet")
    t1 = pq.read_table(f1)
    pq.write_table(t1.drop_columns(["tenure_months"]), inp / "no-tenure.parquet")
    t2 = pq.read_table(f2)
    t2 = t2.set_column(t2.schema.get_field_index("age"), "age", pc.cast(t2.column("age"), pa.string()))
    t2 = t2.set_column(t2.schema.get_field_index("customer_id"), "customer_id",
                       pc.cast(t2.column("customer_id"), pa.string()))
    pq.write_table(t2, inp / "strings.parquet")
    out = tmp_path / "out"

    r = cli("score", "--input", inp, "--model", safety_model, "--output", out, "--backend", "cpu", cwd=tmp_path)
    assert r.exit_code == InputError.exit_code, r.output
    msg = r.output
    assert re.search(r"'tenure_months' is missing from \S*no-tenure\.parquet", msg), msg
    assert re.search(r"'age' has non-numeric type string in \S*strings\.parquet", msg), msg
    assert re.search(r"'customer_id' has type int64 in \S*good\.parquet.* but string in \S*strings\.parquet",
                     msg), msg
    assert msg.count("error (") == 1  # one message for all three problems
    # Checked before anything was written: no output, no lock, no staging.
    assert not out.exists() and not hidden_siblings(out)


def test_no_input_files(safety_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty-dir" / "_hidden").mkdir(parents=True)
    pq.write_table(pa.table({"customer_id": [1]}), tmp_path / "empty-dir" / "_hidden" / "x.parquet")
    for inp, expect in ((tmp_path / "empty-dir", "holds no Parquet files"), (tmp_path / "nowhere", "does not exist")):
        r = cli("score", "--input", inp, "--model", safety_model, "--output", tmp_path / "out", cwd=tmp_path)
        assert r.exit_code == 3, r.output
        assert expect in r.output and str(inp) in r.output


def test_empty_and_corrupt_files_are_each_named(safety_data: Path, safety_model: Path, tmp_path: Path) -> None:
    inp = copy_data(safety_data, tmp_path / "in")
    (inp / "empty.parquet").write_bytes(b"")
    (inp / "garbage.parquet").write_bytes(os.urandom(5_000))
    whole = data_files(safety_data)[0].read_bytes()
    (inp / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    r = cli("score", "--input", inp, "--model", safety_model, "--output", tmp_path / "out", cwd=tmp_path)
    assert r.exit_code == 3, r.output
    assert "3 of 6 input files cannot be used" in r.output
    assert f"{inp / 'empty.parquet'} is an empty file" in r.output
    assert f"{inp / 'garbage.parquet'} is not a readable Parquet file" in r.output
    assert f"{inp / 'truncated.parquet'} is not a readable Parquet file" in r.output
    assert not (tmp_path / "out").exists()


def test_zero_row_files(safety_data: Path, safety_model: Path, tmp_path: Path) -> None:
    f0 = data_files(safety_data)[0]
    schema = pq.read_schema(f0)
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(schema.empty_table(), inp / "a-empty.parquet")
    with pytest.raises(InputError, match="holds no rows"):
        run(inp, safety_model, tmp_path / "out0")
    shutil.copy(f0, inp / "b.parquet")
    manifest = run(inp, safety_model, tmp_path / "out")
    assert manifest["totals"]["rows_in"] == manifest["totals"]["rows_out"] == 1_000
    assert manifest["partitions"][0]["rows_in"] == 0
    assert_counts_add_up(manifest)
    assert scores_of(tmp_path / "out").num_rows == 1_000


def _break_model(src: Path, dest: Path, how: str) -> Path:
    if how == "missing":
        return dest / "nothing-here"
    shutil.copytree(src, dest)
    meta_path, arrays_path = dest / METADATA_FILE, dest / ARRAYS_FILE
    if how == "no-metadata":
        meta_path.unlink()
    elif how == "corrupt-json":
        meta_path.write_text(meta_path.read_text()[:200])
    elif how == "unknown-format":
        meta = json.loads(meta_path.read_text())
        meta["format_version"] = 999
        meta_path.write_text(json.dumps(meta))
    elif how == "not-a-model":
        meta_path.write_text(json.dumps({"format": "something-else"}))
    elif how == "tampered":
        with np.load(arrays_path) as npz:
            arrays = {k: np.array(npz[k]) for k in npz.files}
        arrays["coef"] = arrays["coef"] * 2
        np.savez(arrays_path, **arrays)
    elif how == "corrupt-arrays":
        arrays_path.write_bytes(arrays_path.read_bytes()[:100])
    elif how == "no-arrays":
        arrays_path.unlink()
    return dest


@pytest.mark.parametrize("how, expect", [
    ("missing", "does not exist"),
    ("no-metadata", "is not a model directory"),
    ("corrupt-json", "is not valid JSON"),
    ("unknown-format", "format version 999 is not supported"),
    ("not-a-model", "is not a customer-scoring-engine model"),
    ("tampered", "content hash mismatch"),
    ("corrupt-arrays", "cannot be read"),
    ("no-arrays", "is missing"),
])
def test_model_errors(how: str, expect: str, safety_data: Path, safety_model: Path, tmp_path: Path) -> None:
    model = _break_model(safety_model, tmp_path / "model", how)
    r = cli("score", "--input", safety_data, "--model", model, "--output", tmp_path / "out", cwd=tmp_path)
    assert r.exit_code == ModelError.exit_code, r.output
    assert expect in r.output and str(model) in r.output
    assert not (tmp_path / "out").exists()


# -- bad rows ---------------------------------------------------------------------------
BAD_ROWS = {5: ("inf", FEATURE_INF), 17: ("-inf", FEATURE_NEG_INF), 30: ("inf", FEATURE_INF), 40: ("null-id", None)}
NAN_ROW = 50


@pytest.fixture(scope="module")
def bad_input(safety_data: Path) -> tuple[Path, pa.Table]:
    """One 1,000-row file with ±inf at rows 5, 17, 30, a null id at row 40, NaN at row 50."""
    src = pq.read_table(data_files(safety_data)[0])
    cols = {name: src.column(name).to_numpy(zero_copy_only=False).copy()
            for name in (FEATURE_INF, FEATURE_NEG_INF, FEATURE_NAN)}
    ids = src.column("customer_id").to_pylist()
    for row, (what, col) in BAD_ROWS.items():
        if what == "null-id":
            ids[row] = None
        else:
            cols[col][row] = np.inf if what == "inf" else -np.inf
    cols[FEATURE_NAN][NAN_ROW] = np.nan
    table = src
    for name, values in [*cols.items(), ("customer_id", ids)]:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    out = safety_data.parent / "bad" / "bad.parquet"
    out.parent.mkdir()
    pq.write_table(table, out)
    return out.parent, src


def test_bad_rows_rejected_with_reasons(bad_input: tuple[Path, pa.Table], safety_model: Path,
                                        tmp_path: Path) -> None:
    inp, src = bad_input
    out = tmp_path / "out"
    manifest = run(inp, safety_model, out, on_bad_rows="reject", max_rejected_fraction=0.01)
    t = manifest["totals"]
    assert (t["rows_in"], t["rows_out"], t["rows_rejected"]) == (1_000, 996, 4)
    assert t["infinite_values"] == 3 and t["null_ids"] == 1
    assert t["nulls_imputed"] >= 1
    assert_counts_add_up(manifest)
    rejected = pq.read_table(out / "_rejected").sort_by("_row")
    assert rejected.column_names == ["customer_id", "_file", "_row", "_column", "_reason"]  # no feature values
    assert rejected.column("_row").to_pylist() == sorted(BAD_ROWS)
    assert set(rejected.column("_file").to_pylist()) == {str(inp / "bad.parquet")}
    assert rejected.column("_column").to_pylist() == [FEATURE_INF, FEATURE_NEG_INF, FEATURE_INF, "customer_id"]
    assert rejected.column("_reason").to_pylist() == ["infinite value"] * 3 + ["null id"]
    scores = scores_of(out)
    bad_ids = {src.column("customer_id")[r].as_py() for r in BAD_ROWS}
    assert not bad_ids & set(scores.column("customer_id").to_pylist())
    assert src.column("customer_id")[NAN_ROW].as_py() in set(scores.column("customer_id").to_pylist())
    assert scores.num_rows == 996


def test_bad_rows_imputed(bad_input: tuple[Path, pa.Table], safety_model: Path, tmp_path: Path) -> None:
    inp, _ = bad_input
    manifest = run(inp, safety_model, tmp_path / "out", on_bad_rows="impute")
    t = manifest["totals"]
    assert (t["rows_in"], t["rows_out"], t["rows_rejected"]) == (1_000, 1_000, 0)
    assert t["infinite_values"] == 3
    assert_counts_add_up(manifest)
    assert not (tmp_path / "out" / "_rejected").exists()
    assert np.isfinite(scores_of(tmp_path / "out").column("propensity").to_numpy()).all()


def test_bad_rows_fail_names_file_row_column_never_values(bad_input: tuple[Path, pa.Table], safety_model: Path,
                                                         tmp_path: Path) -> None:
    inp, src = bad_input
    out = tmp_path / "out"
    r = cli("score", "--input", inp, "--model", safety_model, "--output", out, "--backend", "cpu",
            "--on-bad-rows", "fail", "--partition-rows", 500, "-q", cwd=tmp_path)
    assert r.exit_code == BadRowsError.exit_code, r.output
    assert f"{inp / 'bad.parquet'} row 5: column {FEATURE_INF!r} is infinite" in r.output
    row = {name: src.column(name)[5].as_py() for name in src.column_names}
    for name, value in row.items():
        if isinstance(value, float) and not value.is_integer():
            assert str(value) not in r.output and f"{value:g}" not in r.output, name
    assert str(row["customer_id"]) not in r.output
    assert not out.exists()


def test_rejected_fraction_beyond_tolerance_publishes_nothing(bad_input: tuple[Path, pa.Table],
                                                              safety_model: Path, tmp_path: Path) -> None:
    inp, _ = bad_input
    out = tmp_path / "out"
    r = cli("score", "--input", inp, "--model", safety_model, "--output", out, "--backend", "cpu",
            "--max-rejected-fraction", "0.001", "-q", cwd=tmp_path)
    assert r.exit_code == BadRowsError.exit_code, r.output
    assert "4 of 1,000 rows were rejected (0.40%), above --max-rejected-fraction 0.001" in r.output
    assert not out.exists()
    # The rejected ids stay where the message says, under staging (issue 10).
    rejected = tmp_path / ".out.engine/staging" / "_rejected"
    assert str(rejected) in " ".join(r.output.split())
    assert pq.read_table(rejected).num_rows == 4


def test_duplicate_ids_counted_and_refused_with_unique_ids(safety_data: Path, safety_model: Path,
                                                           tmp_path: Path) -> None:
    inp = copy_data(safety_data, tmp_path / "in")
    t0 = pq.read_table(data_files(safety_data)[0])
    # 30 ids of file 0 again in a new file, one of them three times in all.
    dup = pa.concat_tables([t0.slice(100, 30), t0.slice(100, 1)])
    pq.write_table(dup, inp / "zz-dups.parquet")
    manifest = run(inp, safety_model, tmp_path / "out")
    t = manifest["totals"]
    assert t["duplicate_rows"] == 31 and t["duplicated_ids"] == 30
    assert t["rows_in"] == t["rows_out"] == ROWS + 31
    assert_counts_add_up(manifest)

    out = tmp_path / "out-unique"
    r = cli("score", "--input", inp, "--model", safety_model, "--output", out, "--backend", "cpu",
            "--unique-ids", "-q", cwd=tmp_path)
    assert r.exit_code == BadRowsError.exit_code, r.output
    assert "31 rows repeat an id already seen (30 ids appear more than once) in column 'customer_id'" in r.output
    assert str(t0.column("customer_id")[100].as_py()) not in r.output
    assert not out.exists()


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("buckets", [1, 7])
def test_duplicate_count_is_the_same_in_hash_buckets(kind: str, buckets: int, tmp_path: Path) -> None:
    """Bucket files written by the parts, or the parts themselves when the files are gone."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5_000, 20_000)
    values = pa.array(ids) if kind == "int" else pa.array([f"c-{i}" for i in ids])
    parts = []
    for i, chunk in enumerate(np.array_split(np.arange(ids.size), 3)):
        parts.append(str(tmp_path / f"p{i}.parquet"))
        table = pa.table({"id": values.take(pa.array(chunk))})
        pq.write_table(table, parts[-1])
        # Two batches per part, as a streamed fragment writes them.
        half = table.num_rows // 2
        for batch, piece in enumerate((table.slice(0, half), table.slice(half))):
            write_id_buckets(piece.column("id"), str(tmp_path / "ids"), f"key{i}", batch, buckets)
    _, counts = np.unique(ids, return_counts=True)
    expected = (int((counts - 1).sum()), int((counts > 1).sum()))
    for drop_files in (False, True):
        if drop_files:
            for f in (tmp_path / "ids").iterdir():
                f.unlink()
        got = [count_bucket([(str(tmp_path / "ids"), f"key{i}", part) for i, part in enumerate(parts)],
                            "id", b, buckets) for b in range(buckets)]
        assert (sum(g[0] for g in got), sum(g[1] for g in got)) == expected


# -- output conflicts -------------------------------------------------------------------
def test_existing_output_refused_unless_overwrite(safety_data: Path, safety_model: Path, other_model: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run(safety_data, safety_model, out)
    before = scores_of(out)
    with pytest.raises(OutputError, match="already holds a complete run.*--overwrite"):
        run(safety_data, other_model, out)
    assert_same_scores(scores_of(out), before)
    assert json.loads((out / "_manifest.json").read_text())["run_id"] == first["run_id"]
    second = run(safety_data, other_model, out, overwrite=True)
    assert second["model"]["content_hash"] != first["model"]["content_hash"]
    assert json.loads((out / "_manifest.json").read_text())["run_id"] == second["run_id"]
    assert hidden_siblings(out) == set()  # no lock, staging or sidecars left behind

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not ours")
    r = cli("score", "--input", safety_data, "--model", safety_model, "--output", stranger, cwd=tmp_path)
    assert r.exit_code == OutputError.exit_code and "is not an engine output" in r.output


def test_second_run_fails_at_once_and_a_dead_holder_frees_the_lock(safety_data: Path, safety_model: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom pathlib import Path\nfrom engine.io.workspace import Workspace\n"
         f"Workspace(Path({str(out)!r})).acquire()\n"
         "print('locked', flush=True)\n"
         "time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        r = cli("score", "--input", safety_data, "--model", safety_model, "--output", out, "-q", cwd=tmp_path)
        assert r.exit_code == OutputError.exit_code, r.output
        assert f"another engine run (pid {holder.pid}) is writing {out}" in r.output
        assert time.monotonic() - t0 < 30  # at once: no scoring was attempted
        assert not out.exists()
    finally:
        holder.kill()  # SIGKILL: the holder cannot release anything itself
        holder.wait()
    manifest = run(safety_data, safety_model, out)
    assert manifest["totals"]["rows_out"] == ROWS


# -- privacy ----------------------------------------------------------------------------
def test_output_holds_only_id_scores_and_keep(safety_data: Path, safety_model: Path, tmp_path: Path,
                                              reference: tuple[Path, dict[str, Any], pa.Table]) -> None:
    assert reference[2].column_names == ["customer_id", "segment", "segment_distance",
                                                          "propensity"]
    run(safety_data, safety_model, tmp_path / "kept", keep=("region", "tenure_months"))
    assert scores_of(tmp_path / "kept").column_names == ["customer_id", "segment", "segment_distance",
                                                         "propensity", "region", "tenure_months"]
    # Every file that is not a data part starts with '_', so readers skip it.
    for path in (tmp_path / "kept").rglob("*"):
        assert path.name.startswith("_") or re.fullmatch(r"part-\d{5}\.parquet", path.name), path
    r = cli("score", "--input", safety_data, "--model", safety_model, "--output", tmp_path / "x",
            "--keep", "propensity", cwd=tmp_path)
    assert r.exit_code == 2 and "--keep cannot name an output column" in r.output


# -- resume ------------------------------------------------------------------------------
class _Crash(Exception):
    pass


@pytest.fixture()
def interrupted(safety_data: Path, safety_model: Path, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """An input copy, and a run of it that died just before publishing: every part staged.

    Returns (input, output, snapshot of the staging directory) so each resume starts
    from the same interrupted state.
    """
    inp = copy_data(safety_data, tmp_path / "in")
    out = tmp_path / "out"

    def crash(self: OutputCommitter, *args: Any, **kwargs: Any) -> None:
        raise _Crash()

    with monkeypatch.context() as m:
        m.setattr(OutputCommitter, "publish", crash)
        with pytest.raises(_Crash):
            run(inp, safety_model, out)
    staging = tmp_path / ".out.engine/staging"
    assert len(list((staging / "_parts").glob("*.json"))) == 6 and not out.exists()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(staging.parent, snapshot)  # the engine's whole directory, proof included
    return inp, out, snapshot


def _restore(snapshot: Path, out: Path) -> None:
    workspace = out.parent / f".{out.name}.engine"
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.copytree(snapshot, workspace)


def test_resume_reuses_matching_parts_and_recomputes_the_rest(
        interrupted: tuple[Path, Path, Path], safety_model: Path, tmp_path: Path,
        reference: tuple[Path, dict[str, Any], pa.Table]) -> None:
    inp, out, snapshot = interrupted
    _, clean, expected = reference

    m = run(inp, safety_model, out, resume=True)
    assert m["totals"]["parts_reused"] == m["totals"]["parts"] == 6
    assert all(p.get("reused") for p in m["partitions"])
    assert_same_scores(scores_of(out), expected)
    assert_counts_add_up(m)
    assert m["drift"] == clean["drift"]  # reused parts bring their drift counts along
    assert not (out / "_parts").exists() and hidden_siblings(out) == set()

    # Only some parts finished: those are reused, the others computed.
    _restore(snapshot, out)
    staging = out.parent / ".out.engine/staging"
    for i in (0, 5):
        (staging / "_parts" / f"part-{i:05d}.json").unlink()
    (staging / "part-00003.parquet").write_bytes(b"half a part")  # its sidecar survives: must not count
    m = run(inp, safety_model, out, resume=True, overwrite=True)
    assert m["totals"]["parts_reused"] == 3
    assert_same_scores(scores_of(out), expected)

    # Without --resume nothing is reused.
    _restore(snapshot, out)
    m = run(inp, safety_model, out, overwrite=True)
    assert m["totals"]["parts_reused"] == 0


def test_resume_does_not_reuse_after_model_or_input_changed(interrupted: tuple[Path, Path, Path],
                                                            safety_model: Path, other_model: Path,
                                                            tmp_path: Path) -> None:
    inp, out, snapshot = interrupted
    # Another model: nothing matches.
    m = run(inp, other_model, out, resume=True)
    assert m["totals"]["parts_reused"] == 0
    assert m["model"]["content_hash"] == load_model(other_model).content_hash

    # One input file rewritten (new size and mtime): its 2 parts are recomputed.
    _restore(snapshot, out)
    changed = data_files(inp)[1]
    table = pq.read_table(changed)
    prop = table.column("satisfaction_score").to_numpy(zero_copy_only=False)
    table = table.set_column(table.schema.get_field_index("satisfaction_score"), "satisfaction_score",
                             pa.array(np.nan_to_num(prop) / 2, type=pa.float32()))
    pq.write_table(table, changed, row_group_size=500)  # same layout, new size and mtime
    m = run(inp, safety_model, out, resume=True, overwrite=True)
    assert m["totals"]["parts_reused"] == 4
    assert {p["file"] for p in m["partitions"] if not p.get("reused")} == {str(changed)}
    run(inp, safety_model, tmp_path / "clean-changed")
    assert_same_scores(scores_of(out), scores_of(tmp_path / "clean-changed"))

    # Only the modification time of another file changed: its parts are recomputed too.
    _restore(snapshot, out)
    touched = data_files(inp)[0]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    m = run(inp, safety_model, out, resume=True, overwrite=True)
    assert m["totals"]["parts_reused"] == 2
    assert {p["file"] for p in m["partitions"] if p.get("reused")} == {str(data_files(inp)[2])}
    assert_same_scores(scores_of(out), scores_of(tmp_path / "clean-changed"))


def test_resume_with_other_options_drops_stale_rejected_rows(bad_input: tuple[Path, pa.Table],
                                                             safety_model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    inp, _ = bad_input
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(OutputCommitter, "publish", lambda *a, **k: (_ for _ in ()).throw(_Crash()))
        with pytest.raises(_Crash):
            run(inp, safety_model, out, on_bad_rows="reject")
    assert list((tmp_path / ".out.engine/staging" / "_rejected").glob("part-*.parquet"))
    manifest = run(inp, safety_model, out, resume=True, on_bad_rows="impute")
    assert manifest["totals"]["parts_reused"] == 0 and manifest["totals"]["rows_rejected"] == 0
    assert not (out / "_rejected").exists()
    assert scores_of(out).num_rows == 1_000


def test_resume_after_a_crash_right_after_the_swap(
        safety_data: Path, safety_model: Path, other_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, reference: tuple[Path, dict[str, Any], pa.Table]) -> None:
    """Killed between the swap and the clean-up: the staging then holds the *previous*
    output and the sidecars of the new one wait beside it. A resume must not pair them."""
    out = tmp_path / "out"
    staging = tmp_path / ".out.engine/staging"
    old = run(safety_data, other_model, out)

    def crash_after_swap(self: Workspace, replaced: str, names: set[str]) -> list[str]:
        assert json.loads((staging / "_manifest.json").read_text())["run_id"] == old["run_id"]
        raise _Crash()

    with monkeypatch.context() as m:
        m.setattr(Workspace, "_drop_replaced", crash_after_swap)
        with pytest.raises(_Crash):
            run(safety_data, safety_model, out, overwrite=True)
    new_run = json.loads((out / "_manifest.json").read_text())
    assert new_run["model"]["content_hash"] == load_model(safety_model).content_hash
    assert (tmp_path / ".out.engine" / "parts").is_dir() and (staging / "_SUCCESS").exists()

    m = run(safety_data, safety_model, out, overwrite=True, resume=True)
    assert m["totals"]["parts_reused"] == 0  # the staged parts are the old model's
    assert_same_scores(scores_of(out), reference[2])
    assert hidden_siblings(out) == set()


# -- exit codes --------------------------------------------------------------------------
def test_readme_exit_code_table_matches_the_code() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- section:exit-codes -->")[1].split("<!-- /section:exit-codes -->")[0]
    assert exit_code_markdown() in section
    for code in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", section, re.M), code


def test_every_error_class_has_a_documented_code() -> None:
    def all_subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *all_subclasses(s))]

    for cls in all_subclasses(EngineError):
        assert cls.exit_code in EXIT_CODES, cls


def test_score_help_lists_exit_codes(tmp_path: Path) -> None:
    r = cli("score", "--help", cwd=tmp_path)
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for code, what in EXIT_CODES.items():
        assert f"{code} {what}" in text, (code, what)


def test_nan_ids_in_a_float_id_column_are_missing_ids(safety_data: Path, safety_model: Path,
                                                      tmp_path: Path) -> None:
    """A float id of NaN or ±inf names no customer: it is rejected as a null id, like an Arrow null."""
    src = pq.read_table(data_files(safety_data)[0]).slice(0, 300)
    ids = src.column("customer_id").to_numpy().astype(np.float64)
    ids[[7, 8]] = [np.nan, np.inf]
    i = src.schema.get_field_index("customer_id")
    table = src.set_column(i, pa.field("customer_id", pa.float64()), pa.array(ids))
    inp = tmp_path / "float-ids"
    inp.mkdir()
    pq.write_table(table, inp / "f.parquet")
    out = tmp_path / "out"
    r = cli("score", "--input", inp, "--model", safety_model, "--output", out, "--backend", "cpu",
            "--max-rejected-fraction", "0.5", "-q", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["null_ids"] == 2 and manifest["totals"]["rows_rejected"] == 2
    rejected = pq.read_table(out / "_rejected").sort_by("_row")
    assert rejected.column("_row").to_pylist() == [7, 8]
    assert rejected.column("_reason").to_pylist() == ["null id", "null id"]
    assert np.isfinite(scores_of(out).column("customer_id").to_numpy()).all()
    failed = cli("score", "--input", inp, "--model", safety_model, "--output", tmp_path / "out2", "--backend",
                 "cpu", "--on-bad-rows", "fail", "-q", cwd=tmp_path)
    assert failed.exit_code == BadRowsError.exit_code and "customer_id" in failed.output
