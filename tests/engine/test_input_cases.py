"""Inputs the kernels must not misread (issue 24, items 10, 12-15): dictionary indices of every
integer type, a level over the size limit, invalid UTF-8 in a dictionary<binary> column (dry
run included), a compression bomb the memory plan must count, a footer that claims more rows
than its pages hold. Real Parquet files, the real CLI (in a subprocess under an address-space
limit for the bomb) and the library's scorer."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine.errors import InputError
from engine.models.categorical import Categorical, learn_levels, level_indices

INDEX_TYPES = [pa.int8(), pa.uint8(), pa.int16(), pa.uint16(), pa.int32(), pa.uint32(), pa.int64(), pa.uint64()]


@pytest.mark.parametrize("index_type", INDEX_TYPES, ids=str)
def test_dictionary_indices_of_every_integer_type(index_type: pa.DataType) -> None:
    """The issue's case: a dictionary<uint8> of 205 entries; rows at index >= 128 were read as negative."""
    entries = 205 if index_type.bit_width == 8 and pa.types.is_unsigned_integer(index_type) else 120
    dictionary = pa.array([f"level-{i}" for i in range(entries)])
    rng = np.random.default_rng(1)
    codes = rng.choice([0, 3, entries - 1, entries - 2, entries - 50], 2_000)
    mask = rng.random(2_000) < 0.05
    column = pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array(codes, index_type, mask=mask), dictionary)])
    plain = pa.chunked_array([column.chunk(0).dictionary_decode()])
    cat, counts = learn_levels(column, "region")
    plain_cat, plain_counts = learn_levels(plain, "region")
    assert (cat.levels, counts) == (plain_cat.levels, plain_counts)
    assert f"level-{entries - 1}" in cat.levels
    got, want = level_indices(column, cat), level_indices(plain, cat)
    np.testing.assert_array_equal(got, want)
    assert (got[~mask] < len(cat.levels)).all()  # no row fell to "other"


def test_a_uint8_dictionary_scores_as_its_strings(model_dir: Path, dataset_dir: Path) -> None:
    model = engine.load_model(model_dir)
    table = pq.read_table(dataset_dir / "customers-00000.parquet")
    names = [f"filler-{i}" for i in range(200)] + ["north", "south", "east", "west", "central"]
    lookup = {n: i for i, n in enumerate(names)}
    region = table.column("region").to_pylist()
    codes = pa.array([None if r is None else lookup[r] for r in region], pa.uint8())
    encoded = table.set_column(table.schema.get_field_index("region"), "region",
                               pa.DictionaryArray.from_arrays(codes, pa.array(names)))
    a, b = model.score(table), model.score(encoded)
    assert a.column("propensity").equals(b.column("propensity")) and a.column("segment").equals(b.column("segment"))


def _binary_region(table: pa.Table) -> pa.Table:
    values = pa.array([b"north", b"south", b"\xff\xfe bad"], pa.binary())
    codes = pa.array(np.arange(table.num_rows) % 3, pa.int8())
    return table.set_column(table.schema.get_field_index("region"), "region",
                            pa.DictionaryArray.from_arrays(codes, values))


def test_invalid_utf8_in_a_dictionary_binary_column_is_exit_3_naming_it(cli: Callable[..., Any], dataset_dir: Path,
                                                                       tmp_path: Path) -> None:
    table = _binary_region(pq.read_table(dataset_dir / "customers-00000.parquet"))
    with pytest.raises(InputError, match="column region"):
        level_indices(table.column("region"), Categorical("region", "string", ("north",)))
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "part.parquet")
    result = cli("train", "--input", tmp_path / "in", "--target", "churned", "--output", tmp_path / "m",
                 "--backend", "cpu", "--quiet")
    assert result.exit_code == 3, result.output
    assert "region" in result.output and "UTF-8" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_invalid_utf8_is_exit_3_in_a_score_dry_run(cli: Callable[..., Any], dataset_dir: Path, model_dir: Path,
                                                   tmp_path: Path) -> None:
    """The dry run reads the dictionary pages of the model's categorical columns (not their data pages)."""
    table = pq.read_table(dataset_dir / "customers-00000.parquet")
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    encoded = table.set_column(table.schema.get_field_index("region"), "region",
                               table.column("region").cast(pa.binary()).dictionary_encode())
    pq.write_table(encoded, tmp_path / "good" / "part.parquet")
    pq.write_table(_binary_region(table), tmp_path / "bad" / "part.parquet")
    good = cli("score", "--input", tmp_path / "good", "--model", model_dir, "--output", tmp_path / "s",
               "--backend", "cpu", "--dry-run")
    assert good.exit_code == 0 and "dictionary pages read" in good.output, good.output
    bad = cli("score", "--input", tmp_path / "bad", "--model", model_dir, "--output", tmp_path / "s",
              "--backend", "cpu", "--dry-run")
    assert bad.exit_code == 3, bad.output
    assert "column region" in bad.output and "UTF-8" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "s").exists()


def _bomb(directory: Path, *, arrow_dictionary: bool) -> None:
    """The issue's compression bomb: 20 distinct 1 MiB strings referenced by 20,000 rows, dictionary-encoded
    (a file of ~250 KB, 20 GiB once decoded). Written as plain strings (read back decoded) or, with the
    Arrow schema stored, as a dictionary<binary> column (read back as a dictionary)."""
    n = 20_000
    rng = np.random.default_rng(5)
    values = pa.array([bytes([65 + i]) * (1 << 20) for i in range(20)], pa.binary())
    # Never decoded here either: pyarrow writes the dictionary and the indices as they are.
    blob = pa.DictionaryArray.from_arrays(pa.array(np.arange(n) % 20, pa.int32()),
                                          values if arrow_dictionary else values.cast(pa.string()))
    table = pa.table({"customer_id": np.arange(n), "x": rng.random(n),
                      "churned": (rng.random(n) < 0.3).astype(np.int8), "blob": blob})
    directory.mkdir()
    pq.write_table(table, directory / "part.parquet", compression="zstd", dictionary_pagesize_limit=64 << 20,
                   store_schema=arrow_dictionary)
    assert os.path.getsize(directory / "part.parquet") < 400_000


def test_a_compression_bomb_is_refused_by_the_memory_plan_before_reading(tmp_path: Path) -> None:
    """Under a 4 GiB address-space limit (the issue used 6 GB): exit 2 with the column and the largest
    --sample-rows that fits, not an ArrowMemoryError after allocating gigabytes."""
    limit = 4 << 30

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    for arrow_dictionary in (False, True):
        data, model = tmp_path / f"in-{arrow_dictionary}", tmp_path / f"m-{arrow_dictionary}"
        _bomb(data, arrow_dictionary=arrow_dictionary)
        err = tmp_path / f"stderr-{arrow_dictionary}"
        with open(err, "w") as fh:
            child = subprocess.Popen([sys.executable, "-m", "engine", "train", "--input", str(data), "--target",
                                      "churned", "--output", str(model), "--backend", "cpu", "--quiet"],
                                     preexec_fn=limited, stdout=subprocess.DEVNULL, stderr=fh,
                                     env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
            # wait4: this child's own peak memory (not that of other children of the test process).
            timer = threading.Timer(120, child.kill)  # a hung child fails the test, never the suite
            timer.start()
            _pid, status, usage = os.wait4(child.pid, 0)
            timer.cancel()
            child.returncode = os.waitstatus_to_exitcode(status)
        message = err.read_text()
        assert child.returncode == 2, message
        assert "column blob" in message and "--sample-rows" in message and "at most about" in message, message
        assert "MemoryError" not in message and "Traceback" not in message
        assert not model.exists()
        # Far below the 20 GiB the bomb decodes to: refused before its data pages were read.
        assert usage.ru_maxrss < 1 << 20, usage.ru_maxrss  # KiB: 1 GiB


def test_the_memory_plan_counts_text_bytes_and_its_suggestion_fits() -> None:
    from engine.errors import UsageError
    from engine.jobs.train import check_training_memory

    gib = 2**30
    check_training_memory(20_000, 3, "data", available=8 * gib)  # numbers alone: a few MB
    with pytest.raises(UsageError, match="text of column blob") as refused:
        check_training_memory(20_000, 3, "data", available=8 * gib, text_bytes={"blob": 20 * gib},
                              total_rows=20_000)
    fits = int(str(refused.value).split("at most about ")[1].split(" rows")[0].replace(",", ""))
    assert 0 < fits < 20_000
    check_training_memory(fits, 3, "data", available=8 * gib, text_bytes={"blob": 20 * gib}, total_rows=20_000)
    with pytest.raises(UsageError):
        check_training_memory(fits + 1_000, 3, "data", available=8 * gib, text_bytes={"blob": 20 * gib},
                              total_rows=20_000)


def _claim_rows(path: Path, real: int, claimed: int) -> None:
    """Rewrite the footer's row counts (file and row group; thrift i64 field 3) from ``real`` to ``claimed``.

    Both zigzag varints must have the same length; every ``i64`` field holding ``real`` is patched."""
    def varint(n: int) -> bytes:
        z, out = n << 1, b""
        while True:
            if z < 0x80:
                return out + bytes([z])
            out += bytes([(z & 0x7F) | 0x80])
            z >>= 7

    old, new = varint(real), varint(claimed)
    assert len(old) == len(new)
    raw = path.read_bytes()
    n = struct.unpack("<i", raw[-8:-4])[0]
    footer = raw[-8 - n:-8].replace(b"\x16" + old, b"\x16" + new)
    path.write_bytes(raw[:-8 - n] + footer + raw[-8:])


def test_a_footer_that_claims_more_rows_is_a_corrupt_file(cli: Callable[..., Any], dataset_dir: Path,
                                                           model_dir: Path, tmp_path: Path) -> None:
    table = pq.read_table(dataset_dir / "customers-00000.parquet").slice(0, 1_200)
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "part.parquet"
    pq.write_table(table, path, write_statistics=False)
    _claim_rows(path, 1_200, 8_000)
    assert pq.read_metadata(path).num_rows == 8_000 and pq.read_table(path).num_rows == 1_200
    trained = cli("train", "--input", tmp_path / "in", "--target", "churned", "--output", tmp_path / "m",
                  "--backend", "cpu", "--quiet")
    assert trained.exit_code == 3 and "corrupt file" in trained.output and "8,000" in trained.output, trained.output
    scored = cli("score", "--input", tmp_path / "in", "--model", model_dir, "--output", tmp_path / "s",
                 "--backend", "cpu", "--quiet")
    assert scored.exit_code == 3 and "corrupt file" in scored.output, scored.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()


def test_a_level_longer_than_the_limit_is_other_and_the_model_loads(cli: Callable[..., Any], dataset_dir: Path,
                                                                     tmp_path: Path) -> None:
    """The issue's case: a level of 1,092 characters passed training and made a model score refused."""
    from engine.models.artifact import load_model
    from engine.models.categorical import MAX_LEVEL_CHARS

    table = pq.read_table(dataset_dir / "customers-00000.parquet")
    long = "x" * 1_092
    region = [long if i % 2 else r for i, r in enumerate(table.column("region").to_pylist())]
    table = table.set_column(table.schema.get_field_index("region"), "region", pa.array(region))
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "part.parquet")
    trained = cli("train", "--input", tmp_path / "in", "--target", "churned", "--output", tmp_path / "m",
                  "--backend", "cpu", "--quiet", "--k", 2)
    assert trained.exit_code == 0, trained.output
    model = load_model(tmp_path / "m")
    levels = [lv for c in model.categoricals for lv in c.levels]
    assert levels and long not in levels and all(len(lv) <= MAX_LEVEL_CHARS for lv in levels)
    # ... and said so: a note naming the column, in the model and in `model show`.
    hints = {h["name"]: h["hint"] for h in model.params["columns"]["hints"]}
    assert f"longer than {MAX_LEVEL_CHARS} characters" in hints["region"] and "1 value(s)" in hints["region"]
    assert f"longer than {MAX_LEVEL_CHARS} characters" in cli("model", "show", tmp_path / "m").stdout
    scored = cli("score", "--input", tmp_path / "in", "--model", tmp_path / "m", "--output", tmp_path / "s",
                 "--backend", "cpu", "--quiet")
    assert scored.exit_code == 0, scored.output
