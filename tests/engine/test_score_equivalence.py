"""Scoring is independent of how the input is laid out: the same customers in several files,
row groups, row ranges or hive partitions give exactly the rows that scoring them as one
file gives, whatever the number of partitions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import Result

OUTPUT_COLUMNS = ["customer_id", "segment", "segment_distance", "propensity"]


@pytest.fixture(scope="module")
def all_rows(dataset_dir: Path) -> pa.Table:
    """Every row of the shared dataset, in file order."""
    files = sorted(dataset_dir.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def reference(all_rows: pa.Table, model_dir: Path, score_cli: Callable[..., Result],
              scores_of: Callable[..., pd.DataFrame],
              tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The rows concatenated into one file (one row group), scored as one partition."""
    root = tmp_path_factory.mktemp("reference")
    pq.write_table(all_rows, root / "all.parquet", row_group_size=all_rows.num_rows)
    result = score_cli(root / "all.parquet", model_dir, root / "scores", "--keep", "region",
                       "--partition-rows", 10**9)
    assert result.exit_code == 0, result.output
    assert _manifest(root / "scores")["totals"]["parts"] == 1
    scores = scores_of(root / "scores")
    assert len(scores) == all_rows.num_rows and scores["customer_id"].is_unique
    return scores


def _manifest(output: Path) -> dict:
    return json.loads((output / "_manifest.json").read_text())


def _assert_same_rows(got: pd.DataFrame, reference: pd.DataFrame, with_region: bool = False) -> None:
    columns = OUTPUT_COLUMNS + (["region"] if with_region else [])
    assert list(got.columns) == columns, list(got.columns)
    ref = reference[columns]
    assert len(got) == len(ref)
    # Exactly equal, bit for bit: ids, segments, distances and probabilities.
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref.reset_index(drop=True),
                                  check_exact=True, check_dtype=True)


def _score(score_cli: Callable[..., Result], scores_of: Callable[..., pd.DataFrame], input: Path,
           model: Path, output: Path, *flags: object) -> tuple[pd.DataFrame, dict]:
    result = score_cli(input, model, output, *flags)
    assert result.exit_code == 0, result.output
    manifest = _manifest(output)
    assert manifest["totals"]["rows_in"] == manifest["totals"]["rows_out"]
    assert (output / "_SUCCESS").is_file()
    return scores_of(output), manifest


@pytest.mark.parametrize("partition_rows, min_parts", [(1_000, 3), (7_777, 3), (10**9, 3)])
def test_several_files_any_partition_size(partition_rows: int, min_parts: int, dataset_dir: Path,
                                          model_dir: Path, reference: pd.DataFrame, tmp_path: Path,
                                          score_cli: Callable[..., Result],
                                          scores_of: Callable[..., pd.DataFrame]) -> None:
    got, manifest = _score(score_cli, scores_of, dataset_dir, model_dir, tmp_path / "out",
                           "--partition-rows", partition_rows)
    assert manifest["totals"]["parts"] >= min_parts
    # A part above --partition-rows is only ever one oversized row group, read as a stream.
    for p in manifest["partitions"]:
        assert p["rows_in"] <= partition_rows or len(p["row_groups"]) == 1
    _assert_same_rows(got, reference)


def test_files_with_many_row_groups(all_rows: pa.Table, model_dir: Path, reference: pd.DataFrame,
                                    tmp_path: Path, score_cli: Callable[..., Result],
                                    scores_of: Callable[..., pd.DataFrame]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # Uneven files (1,000 / 2,500 / 2,500 rows) of 700-row groups.
    bounds = [0, 1_000, 3_500, all_rows.num_rows]
    for i in range(3):
        pq.write_table(all_rows.slice(bounds[i], bounds[i + 1] - bounds[i]), data / f"f{i}.parquet",
                       row_group_size=700)
    assert pq.ParquetFile(data / "f1.parquet").num_row_groups == 4
    got, manifest = _score(score_cli, scores_of, data, model_dir, tmp_path / "out", "--partition-rows", 1_500)
    row_groups = [p["row_groups"] for p in manifest["partitions"]]
    assert [0, 1] in row_groups and [2, 3] in row_groups  # groups packed up to 1,500 rows
    assert manifest["totals"]["parts"] == 1 + 2 + 2  # f0 (1,000 rows) is one part
    _assert_same_rows(got, reference)


@pytest.mark.parametrize("partition_rows, batches", [(1_000, 6), (7_777, 1)])
def test_one_big_row_group_streamed_in_batches(partition_rows: int, batches: int, all_rows: pa.Table,
                                               model_dir: Path, reference: pd.DataFrame,
                                               tmp_path: Path, score_cli: Callable[..., Result],
                                               scores_of: Callable[..., pd.DataFrame]) -> None:
    """One row group above --partition-rows is one task that reads it in batches (never whole,
    never decoded twice) and writes one part of one row group per batch."""
    pq.write_table(all_rows, tmp_path / "one.parquet", row_group_size=all_rows.num_rows)
    out = tmp_path / "out"
    got, manifest = _score(score_cli, scores_of, tmp_path / "one.parquet", model_dir, out,
                           "--partition-rows", partition_rows)
    assert manifest["totals"]["parts"] == 1
    part = pq.ParquetFile(out / "part-00000.parquet")
    assert part.num_row_groups == batches
    assert max(part.metadata.row_group(i).num_rows for i in range(batches)) <= partition_rows
    _assert_same_rows(got, reference)


def test_hive_partitioned_directory_with_keep(all_rows: pa.Table, model_dir: Path,
                                              reference: pd.DataFrame, tmp_path: Path,
                                              score_cli: Callable[..., Result],
                                              scores_of: Callable[..., pd.DataFrame]) -> None:
    data = tmp_path / "hive"
    regions = sorted(set(all_rows.column("region").to_pylist()))
    for region in regions:
        subset = all_rows.filter(pc.equal(all_rows.column("region"), region)).drop_columns(["region"])
        target = data / f"region={region}"
        target.mkdir(parents=True)
        half = subset.num_rows // 2
        pq.write_table(subset.slice(0, half), target / "part-0.parquet")
        pq.write_table(subset.slice(half), target / "part-1.parquet")
    got, manifest = _score(score_cli, scores_of, data, model_dir, tmp_path / "out",
                           "--keep", "region", "--partition-rows", 700)
    assert manifest["totals"]["parts"] == 2 * len(regions)  # one part per file
    _assert_same_rows(got, reference, with_region=True)
    # The partition key is a plain string column of the output.
    schema = ds.dataset(tmp_path / "out", format="parquet").schema
    assert pa.types.is_string(schema.field("region").type) or pa.types.is_large_string(schema.field("region").type)


def test_nested_directory_skips_hidden_names(all_rows: pa.Table, model_dir: Path,
                                             reference: pd.DataFrame, tmp_path: Path,
                                             score_cli: Callable[..., Result],
                                             scores_of: Callable[..., pd.DataFrame]) -> None:
    data = tmp_path / "nested"
    (data / "2024" / "q1").mkdir(parents=True)
    (data / "2025").mkdir(parents=True)
    pq.write_table(all_rows.slice(0, 2_000), data / "2024" / "q1" / "a.parquet")
    pq.write_table(all_rows.slice(2_000, 1_000), data / "2024" / "b.parquet")
    pq.write_table(all_rows.slice(3_000), data / "2025" / "c.parquet")
    # Names starting with '_' or '.' are not input: extra rows there must not be scored.
    extra = all_rows.slice(0, 50)
    (data / "_tmp").mkdir()
    (data / ".staging").mkdir()
    pq.write_table(extra, data / "_tmp" / "x.parquet")
    pq.write_table(extra, data / ".staging" / "y.parquet")
    pq.write_table(extra, data / "2025" / "_partial.parquet")
    pq.write_table(extra, data / "2025" / ".hidden.parquet")
    (data / "_SUCCESS").write_text("")
    (data / "README.txt").write_text("not data")
    got, manifest = _score(score_cli, scores_of, data, model_dir, tmp_path / "out", "--keep", "region")
    assert len(manifest["input"]["files"]) == 3
    _assert_same_rows(got, reference, with_region=True)
