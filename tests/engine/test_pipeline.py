"""The scoring pipeline: identical parts whatever the threads, block and batch sizes; bounded batches.

One pipeline serves both backends (host threads decode, fill leased blocks, score through
the process's device stage, encode); these tests run it on the CPU stage with real
Parquet files and Dask's threaded scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import Result

from engine.backends.stage import STAGES
from engine.cluster import MIN_BATCH_ROWS, default_batch_rows
from engine.config import Settings
from engine.jobs.score import ScoreOptions, score

LAYOUTS = [
    # (threads, block rows, batch rows)
    ("1", "16384", None),
    ("2", "1000", "1500"),
    ("4", "1", "700"),      # one-row blocks: every lease scores one row
    ("3", "4096", "100000"),
]


@pytest.fixture(scope="module")
def messy_input(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared dataset with ±inf, NaN and a null id in it, one file of 600-row groups."""
    files = sorted(dataset_dir.glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    rng = np.random.default_rng(5)
    features = [n for n in table.column_names if pa.types.is_floating(table.schema.field(n).type)]
    for name in features[:3]:
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        values[rng.choice(values.size, 7, replace=False)] = np.inf
        values[rng.choice(values.size, 50, replace=False)] = np.nan
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    root = tmp_path_factory.mktemp("messy")
    pq.write_table(table, root / "messy.parquet", row_group_size=600)
    return root


def _parts(output: Path) -> dict[str, pa.Table]:
    return {p.name: pq.read_table(p) for p in sorted(output.glob("part-*.parquet"))}


def _manifest(output: Path) -> dict:
    return json.loads((output / "_manifest.json").read_text())


def test_parts_identical_across_threads_blocks_and_batches(messy_input: Path, model_dir: Path, tmp_path: Path,
                                                           score_cli: Callable[..., Result]) -> None:
    outputs = []
    for threads, block, batch in LAYOUTS:
        out = tmp_path / f"t{threads}-b{block}-{batch}"
        flags = ["--threads-per-worker", threads, "--block-rows", block, "--partition-rows", 2_000,
                 "--max-rejected-fraction", 0.5]
        if batch is not None:
            flags += ["--batch-rows", batch]
        result = score_cli(messy_input, model_dir, out, *flags)
        assert result.exit_code == 0, result.output
        outputs.append(out)
    first = _parts(outputs[0])
    m0 = _manifest(outputs[0])
    assert m0["totals"]["rows_rejected"] > 0 and m0["totals"]["nulls_imputed"] > 0
    assert m0["totals"]["infinite_values"] == 21
    rejected0 = pq.read_table(outputs[0] / "_rejected").sort_by("_row")
    for out in outputs[1:]:
        parts = _parts(out)
        assert parts.keys() == first.keys()
        for name, table in parts.items():
            assert table.equals(first[name]), f"{out.name}/{name} differs from {outputs[0].name}/{name}"
        m = _manifest(out)
        assert m["totals"] == m0["totals"]
        assert m["drift"] == m0["drift"]
        for a, b in zip(m["partitions"], m0["partitions"]):
            assert a["nulls_imputed"] == b["nulls_imputed"]
        assert pq.read_table(out / "_rejected").sort_by("_row").equals(rejected0)


def test_a_task_holds_one_bounded_batch(messy_input: Path, model_dir: Path, tmp_path: Path,
                                        score_cli: Callable[..., Result]) -> None:
    """Each batch is decoded, scored and written as one row group of at most --batch-rows rows."""
    out = tmp_path / "out"
    result = score_cli(messy_input, model_dir, out, "--batch-rows", 1_000, "--partition-rows", 10**9,
                       "--on-bad-rows", "impute")
    assert result.exit_code == 0, result.output
    assert _manifest(out)["totals"]["parts"] == 1
    meta = pq.read_metadata(out / "part-00000.parquet")
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == 6_000 and max(sizes) <= 1_000 and len(sizes) >= 6


def test_default_batch_rows_fit_the_budget() -> None:
    # 23 columns: 2 threads -> 524,288 rows; 16 threads -> 65,536; never above partition_rows.
    assert default_batch_rows(2, 23, 1 << 20) == 524_288
    assert default_batch_rows(16, 23, 1 << 20) == 65_536
    assert default_batch_rows(16, 23, 10_000) == 10_000
    assert default_batch_rows(1024, 500, 1 << 20) == MIN_BATCH_ROWS
    for threads in (1, 2, 16, 64):
        rows = default_batch_rows(threads, 23, 1 << 20)
        assert rows & (rows - 1) == 0
        assert threads * rows * 23 * 16 <= 512 << 20 or rows == MIN_BATCH_ROWS


def test_tasks_share_one_stage_per_process(dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    """Every task of a run (and the next run of the same model) borrows the same stage."""
    settings = Settings(threads_per_worker=3, block_rows=777)
    before = len(STAGES)
    for i in range(2):
        manifest = score(ScoreOptions(input=str(dataset_dir), model=str(model_dir), output=str(tmp_path / f"o{i}"),
                                      backend="cpu", progress="quiet"), settings)
        assert manifest["totals"]["parts"] == 3
    assert len(STAGES) <= max(before, 0) + 1
    stages = [s for s in STAGES._stages.values() if s.block_rows == 777]
    assert len(stages) == 1
    # At most one block per task thread (the prewarm made none), all reused across the 6 tasks.
    assert 1 <= stages[0]._made <= 3


def test_host_drift_bins_equal_the_profile_bins() -> None:
    """The drift sample's per-edge counting gives searchsorted's bins, ties and non-finite values included."""
    from engine.jobs.drift_sample import bin_counts_host
    from engine.models.profile import bin_counts

    rng = np.random.default_rng(3)
    values = np.round(rng.normal(size=20_000) * 3, 1)   # many values exactly on an edge
    values[rng.choice(values.size, 300, replace=False)] = np.nan
    values[:5] = [np.inf, -np.inf, np.inf, -1e308, 1e308]
    for edges in (np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 2.5]), np.array([0.0]), np.empty(0)):
        want = bin_counts(values, edges, xp=np)
        got = bin_counts_host(values, edges)
        assert got.tolist() == want.tolist()
        assert got.sum() == np.isfinite(values).sum()


@pytest.mark.parametrize("reasons", [0, 3])
def test_a_scoring_run_never_imports_pandas(dataset_dir: Path, model_dir: Path, tmp_path: Path, reasons: int,
                                            fresh_imports) -> None:  # noqa: ANN001
    """pandas costs 0.3-0.4 s of import under the GIL; nothing on the scoring path needs it.

    With reason codes too: their string columns are built from buffers, and their kernel
    shares numba's start-up with the scoring kernel (no scipy.linalg). (Dask's threaded
    scheduler runs the tasks; ``distributed`` is not started either.)
    """
    import pyarrow.dataset as ds

    from engine.models.reasons import reason_columns

    code = (
        "from engine.config import load_settings\n"
        "from engine.jobs.score import ScoreOptions, score\n"
        f"score(ScoreOptions(input={str(dataset_dir)!r}, model={str(model_dir)!r}, output={str(tmp_path / 'o')!r},"
        f" backend='cpu', progress='quiet', reasons={reasons}), load_settings(threads_per_worker=2))"
    )
    assert fresh_imports(code, ("pandas", "distributed", "sklearn", "scipy.linalg"), tmp_path) == []
    columns = ds.dataset(tmp_path / "o", format="parquet").schema.names
    assert [c for c in columns if c.startswith("reason_")] == reason_columns(reasons)
