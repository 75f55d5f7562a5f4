"""engine.io.dataset and engine.io.validate: discovery, planning, reading, schema checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import InputError
from engine.io.dataset import (
    discover,
    iter_fragment,
    plan_fragments,
    read_fragment,
    read_training_table,
    table_to_matrix,
)
from engine.io.validate import default_features, require_schema


def _table(n: int, start: int = 0) -> pa.Table:
    ids = np.arange(start, start + n, dtype=np.int64)
    return pa.table({
        "customer_id": ids,
        "x": pa.array((ids * 0.5).astype(np.float64), mask=(ids % 7 == 0)),
        "k": (ids % 5).astype(np.int32),
        "flag": pa.array(ids % 2 == 0),
        "name": pa.array([f"c{i}" for i in ids]),
    })


def _ids(table: pa.Table) -> list[int]:
    return table.column("customer_id").to_pylist()


def test_single_file_and_recursive_directory_skipping_hidden_names(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    (root / "_staging").mkdir()
    (root / ".cache").mkdir()
    pq.write_table(_table(10, 0), root / "top.parquet")
    pq.write_table(_table(10, 10), root / "a" / "b" / "deep.parquet")
    pq.write_table(_table(10, 20), root / "a" / "mid.pq")
    for hidden in (root / "_staging" / "x.parquet", root / ".cache" / "y.parquet",
                   root / "_metadata.parquet", root / "a" / ".tmp.parquet"):
        pq.write_table(_table(5, 1000), hidden)
    (root / "notes.txt").write_text("not parquet")
    (root / "_SUCCESS").write_text("")

    dataset = discover(root)
    names = sorted(Path(f.path).name for f in dataset.files)
    assert names == ["deep.parquet", "mid.pq", "top.parquet"]
    assert dataset.num_rows == 30
    assert dataset.partition_columns == {}

    single = discover(root / "top.parquet")
    assert [Path(f.path).name for f in single.files] == ["top.parquet"]
    assert single.num_rows == 10


def test_hive_partitions_become_typed_columns(tmp_path: Path) -> None:
    for i, (region, year) in enumerate([("north", 2024), ("south", 2024), ("north", 2025)]):
        d = tmp_path / f"region={region}" / f"year={year}"
        d.mkdir(parents=True)
        pq.write_table(_table(4, 4 * i), d / "part-0.parquet")
    dataset = discover(tmp_path)
    assert dataset.partition_columns == {"region": pa.string(), "year": pa.int64()}
    assert dataset.column_type("year") == pa.int64()
    assert dataset.column_type("x") == pa.float64()
    tables = [read_fragment(f, ["customer_id", "region", "year"], dataset.partition_columns)
              for f in plan_fragments(dataset)]
    got = pa.concat_tables(tables)
    assert got.schema.names == ["customer_id", "region", "year"]
    rows = sorted(zip(_ids(got), got.column("region").to_pylist(), got.column("year").to_pylist()))
    assert rows[:4] == [(i, "north", 2024) for i in range(4)]
    assert rows[4] == (4, "south", 2024) and rows[-1] == (11, "north", 2025)


@pytest.mark.parametrize("problem", ["missing", "empty-dir", "zero-bytes", "corrupt"])
def test_unreadable_inputs_are_input_errors_naming_the_path(tmp_path: Path, problem: str) -> None:
    target = tmp_path / "in"
    if problem == "empty-dir":
        target.mkdir()
        (target / "_hidden.parquet").write_bytes(b"")
    elif problem == "zero-bytes":
        target.mkdir()
        (target / "empty.parquet").write_bytes(b"")
    elif problem == "corrupt":
        target.mkdir()
        (target / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(InputError) as info:
        discover(target)
    assert InputError.exit_code == 3
    assert str(target) in str(info.value)


def test_plan_packs_row_groups_and_splits_big_ones(tmp_path: Path) -> None:
    pq.write_table(_table(5_000), tmp_path / "groups.parquet", row_group_size=1_000)
    pq.write_table(_table(5_000, 5_000), tmp_path / "single.parquet", row_group_size=5_000)
    dataset = discover(tmp_path)

    whole = plan_fragments(dataset)
    assert [(f.row_groups, f.num_rows) for f in whole] == [(None, 5_000), (None, 5_000)]

    frags = plan_fragments(dataset, max_rows=2_500)
    groups = [f for f in frags if f.path.endswith("groups.parquet")]
    single = [f for f in frags if f.path.endswith("single.parquet")]
    assert [f.row_groups for f in groups] == [(0, 1), (2, 3), (4,)]
    assert [f.row_offset for f in groups] == [0, 2_000, 4_000]
    # One oversized row group is one fragment, streamed in batches of max_rows rows.
    assert [(f.row_groups, f.num_rows, f.stream_rows) for f in single] == [((0,), 5_000, 2_500)]
    assert [f.index for f in frags] == list(range(len(frags)))
    assert sum(f.num_rows for f in frags) == 10_000

    uneven = [f for f in plan_fragments(dataset, max_rows=1_500) if f.path.endswith("single.parquet")]
    assert [(f.num_rows, f.stream_rows, f.row_offset) for f in uneven] == [(5_000, 1_500, 0)]
    batches = list(iter_fragment(uneven[0], ["customer_id"]))
    assert [b.num_rows for b in batches] == [1_500, 1_500, 1_500, 500]


@pytest.mark.parametrize("max_rows", [None, 250, 999, 1_000, 1_234, 2_500, 10**9])
def test_fragments_read_back_every_row_once_in_order(tmp_path: Path, max_rows: int | None) -> None:
    pq.write_table(_table(3_000), tmp_path / "a.parquet", row_group_size=1_000)
    pq.write_table(_table(2_000, 3_000), tmp_path / "b.parquet", row_group_size=2_000)
    dataset = discover(tmp_path)
    frags = plan_fragments(dataset, max_rows=max_rows)
    if max_rows is not None:
        # Larger fragments only for oversized row groups, which are streamed in max_rows batches.
        assert all(f.num_rows <= max_rows or f.stream_rows == max_rows for f in frags)
        for f in frags:
            if f.stream_rows is not None:
                assert all(b.num_rows <= max_rows for b in iter_fragment(f, ["customer_id"]))
    parts = [read_fragment(f, ["customer_id", "x"]) for f in frags]
    assert [p.num_rows for p in parts] == [f.num_rows for f in frags]
    for frag, part in zip(frags, parts):
        if part.num_rows:
            base = 0 if frag.path.endswith("a.parquet") else 3_000
            assert _ids(part)[0] == base + frag.row_offset
    assert _ids(pa.concat_tables(parts)) == list(range(5_000))


def test_table_to_matrix_nulls_booleans_and_chunks() -> None:
    t = pa.concat_tables([_table(10), _table(5, 10)])
    assert t.column("x").num_chunks == 2
    X = table_to_matrix(t, ["x", "k", "flag"])
    assert X.shape == (15, 3) and X.dtype == np.float64 and X.flags.f_contiguous
    ids = np.arange(15)
    expected_x = np.where(ids % 7 == 0, np.nan, ids * 0.5)
    np.testing.assert_array_equal(X[:, 0], expected_x)
    np.testing.assert_array_equal(X[:, 1], ids % 5)
    np.testing.assert_array_equal(X[:, 2], (ids % 2 == 0).astype(float))
    with_null_bool = pa.table({"b": pa.array([True, None, False])})
    np.testing.assert_array_equal(table_to_matrix(with_null_bool, ["b"])[:, 0], [1.0, np.nan, 0.0])
    X32 = table_to_matrix(t, ["x"], dtype=np.float32)
    assert X32.dtype == np.float32


def test_training_sample_is_uniform_deterministic_and_without_replacement(tmp_path: Path) -> None:
    pq.write_table(_table(3_000), tmp_path / "a.parquet", row_group_size=500)
    pq.write_table(_table(3_000, 3_000), tmp_path / "b.parquet", row_group_size=700)
    dataset = discover(tmp_path)
    full = read_training_table(dataset, ["customer_id", "x"], None, seed=1)
    assert _ids(full) == list(range(6_000))
    s1 = read_training_table(dataset, ["customer_id", "x"], 1_200, seed=1)
    s2 = read_training_table(dataset, ["customer_id", "x"], 1_200, seed=1)
    s3 = read_training_table(dataset, ["customer_id", "x"], 1_200, seed=2)
    assert s1.equals(s2) and not s1.equals(s3)
    ids = np.array(_ids(s1))
    assert ids.size == 1_200 and np.unique(ids).size == 1_200
    assert np.all(np.diff(ids) > 0)  # in file order
    # Both files are sampled about in proportion (3,000 rows each).
    assert 450 < (ids < 3_000).sum() < 750
    # The sampled rows carry their own values.
    x = s1.column("x").to_numpy(zero_copy_only=False)
    keep = ids % 7 != 0
    np.testing.assert_array_equal(x[keep], ids[keep] * 0.5)
    assert read_training_table(dataset, ["customer_id"], 10_000, seed=1).num_rows == 6_000


def test_schema_check_names_every_problem(tmp_path: Path) -> None:
    pq.write_table(_table(10), tmp_path / "a.parquet")
    pq.write_table(_table(10, 10).drop_columns(["k"]), tmp_path / "b.parquet")
    dataset = discover(tmp_path)
    require_schema(dataset, numeric=["x", "flag"], present=["customer_id", "name"])
    with pytest.raises(InputError) as info:
        require_schema(dataset, numeric=["x", "k", "name", "nope"], present=["customer_id"], hint="HINT")
    msg = str(info.value)
    assert "'k' is missing from" in msg and "b.parquet" in msg
    assert "'name' has non-numeric type string" in msg
    assert "'nope' is missing" in msg
    assert msg.rstrip().endswith("HINT")
    assert default_features(dataset, ["customer_id"]) == ["x", "k", "flag"]


def test_sampling_a_huge_row_group_streams_it_and_samples_the_same_rows(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.io.dataset as dataset_module

    table = _table(5_000)
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    pq.write_table(table, tmp_path / "one" / "a.parquet", row_group_size=5_000)
    pq.write_table(table, tmp_path / "many" / "a.parquet", row_group_size=500)
    expected = read_training_table(discover(tmp_path / "many"), ["customer_id", "x"], 700, seed=5)
    monkeypatch.setattr(dataset_module, "SAMPLE_STREAM_ROWS", 600)  # the 5,000-row group is now "huge"
    got = read_training_table(discover(tmp_path / "one"), ["customer_id", "x"], 700, seed=5)
    assert got.num_rows == 700
    assert got.column("customer_id").equals(expected.column("customer_id"))
