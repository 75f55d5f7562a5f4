"""engine/jobs/blocks.py: one block loop for engine score's tasks and Model.score; summaries from the tasks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from typer.testing import Result

import engine
from engine.backends.stage import get_stage, stage_settings
from engine.jobs.blocks import Block, score_table
from engine.jobs.summary import ScoreTally, summarise_part, summarise_scores
from engine.models.artifact import load_model


class _Serial:
    def map(self, fn: Callable[[Any], Any], jobs: list[Any], name: str) -> list[Any]:
        return [fn(j) for j in jobs]


def test_one_loop_feeds_consumers_and_model_score(dataset_dir: Path, model_dir: Path) -> None:
    model = load_model(str(model_dir))
    table = ds.dataset(dataset_dir, format="parquet").to_table()
    stage = get_stage(model, "cpu", stage_settings("cpu", 1_000))
    seen: list[tuple[int, int]] = []
    firsts: list[np.ndarray] = []
    segments: list[np.ndarray] = []

    def consume(block: Block) -> None:
        assert block.X.flags.f_contiguous and block.X.shape == (block.stop - block.start, model.n_features)
        seen.append((block.start, block.stop))
        firsts.append(block.X[:, 0].copy())
        segments.append(block.result.segment.copy())

    scored = score_table(model, table, stage, reasons=2, thresholds=(0.5,), consumers=[consume])
    n = table.num_rows
    assert seen == [(s, min(s + 1_000, n)) for s in range(0, n, 1_000)]
    raw = table.column(model.features[0]).to_numpy(zero_copy_only=False).astype(np.float64)
    assert np.array_equal(np.concatenate(firsts), raw, equal_nan=True)
    assert np.array_equal(np.concatenate(segments), scored.segment)
    # The kernel's in-pass tally equals the host's count of the written scores, sums to the bit.
    want = ScoreTally.empty(model.k, (0.5,))
    want.add(scored.segment, scored.propensity)
    assert scored.tally is not None and scored.tally.to_json() == want.to_json()
    assert int(scored.tally.above[0]) == int(np.count_nonzero(scored.propensity >= np.float32(0.5)))
    # Rows flagged bad (here a ±inf and a value beyond MAX_INPUT_ABS) are taken back out of it.
    col = model.features[0]
    values = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
    values[[3, 1_500]] = [np.inf, -2e15]
    bad_table = table.set_column(table.schema.get_field_index(col), col, pa.array(values))
    flagged = score_table(model, bad_table, stage, flag_bad=True, thresholds=(0.5, 0.9))
    assert flagged.bad is not None and np.flatnonzero(flagged.bad).tolist() == [3, 1_500]
    assert flagged.bad_reasons == ["infinite value", "value beyond ±1e+15"]
    kept = ScoreTally.empty(model.k, (0.5, 0.9))
    kept.add(flagged.segment[~flagged.bad], flagged.propensity[~flagged.bad])
    assert flagged.tally is not None and flagged.tally.counts.tolist() == kept.counts.tolist()
    assert flagged.tally.histogram.tolist() == kept.histogram.tolist()
    assert flagged.tally.above.tolist() == kept.above.tolist()
    np.testing.assert_allclose(flagged.tally.sums, kept.sums, rtol=1e-12)
    # Model.score goes through the same function: identical scores and codes.
    api = engine.load_model(str(model_dir)).score(table, reasons=2)
    assert np.array_equal(api.column("segment").to_numpy(), scored.segment)
    assert np.array_equal(api.column("propensity").to_numpy(), scored.propensity)


def test_without_a_stage_consumers_see_the_same_blocks_and_nothing_is_scored(dataset_dir: Path,
                                                                             model_dir: Path) -> None:
    """``stage=None`` (engine recommend): same blocks, bad values and counts as with a stage; no scores."""
    import pytest

    model = load_model(str(model_dir))
    table = ds.dataset(dataset_dir, format="parquet").to_table()
    col = model.features[0]
    values = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
    values[[3, 1_500, 1_501]] = [np.inf, -2e15, np.nan]
    table = table.set_column(table.schema.get_field_index(col), col, pa.array(values))

    def run(stage: Any) -> tuple[Any, list[np.ndarray]]:
        blocks: list[np.ndarray] = []

        def consume(block: Block) -> None:
            assert (block.result is None) == (stage is None)
            blocks.append(block.X.copy())

        return score_table(model, table, stage, flag_bad=True, consumers=[consume], block_rows=700), blocks

    with_stage, want = run(get_stage(model, "cpu", stage_settings("cpu", 700)))
    alone, got = run(None)
    assert len(got) == len(want) and all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want))
    assert np.isneginf(np.concatenate(got)[1_500, 0])       # the too-large value marked as the kernels do
    assert alone.bad is not None and np.flatnonzero(alone.bad).tolist() == [3, 1_500]
    assert alone.bad_reasons == with_stage.bad_reasons and alone.bad_columns == with_stage.bad_columns
    assert alone.counts == with_stage.counts and alone.nulls.tolist() == with_stage.nulls.tolist()
    assert alone.segment.size == alone.propensity.size == 0 and with_stage.segment.size == table.num_rows
    with pytest.raises(ValueError, match="no scores"):
        score_table(model, table, None, thresholds=(0.5,))
    # Drift without a stage: the same feature histograms, no score drift (engine recommend's report).
    from engine.jobs.drift_sample import DriftCounter

    scored, bare = DriftCounter(model, 7), DriftCounter(model, 7)
    score_table(model, table, get_stage(model, "cpu", stage_settings("cpu", 700)), drift=scored)
    score_table(model, table, None, drift=bare, block_rows=700)
    want_drift, got_drift = scored.result(), bare.result()
    assert got_drift["features"] == want_drift["features"] and want_drift["features"]
    assert "propensity" not in got_drift and "propensity" in want_drift


def test_task_tallies_equal_reading_the_parts_back(dataset_dir: Path, model_dir: Path, tmp_path: Path,
                                                   score_cli: Callable[..., Result]) -> None:
    out = tmp_path / "scores"
    r = score_cli(dataset_dir, model_dir, out)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "_manifest.json").read_text())
    thresholds = [t["threshold"] for t in manifest["propensity"]["action_thresholds"]]
    parts = sorted(str(p) for p in out.glob("*.parquet"))
    model = load_model(str(model_dir))
    reread = summarise_scores(_Serial(), parts, model.k, thresholds)  # no tallies: every part read back
    assert manifest["propensity"]["histogram"] == reread["histogram"]
    assert manifest["propensity"]["action_thresholds"] == reread["action_thresholds"]
    assert manifest["drift"]["segments"]["customers"] == reread["segment_counts"]
    # No per-part tally reaches the manifest (a part may hold a handful of customers).
    assert all("scores" not in p for p in manifest["partitions"])
    # A stored tally with other thresholds is not trusted: that part is read back instead.
    stale = ScoreTally.empty(model.k, [0.123]).to_json()
    mixed = summarise_scores(_Serial(), parts, model.k, thresholds, [stale] + [None] * (len(parts) - 1))
    assert mixed == reread
    assert summarise_part(parts[0], model.k, thresholds)["counts"] != [0] * model.k


def test_a_model_of_categorical_columns_only_is_refused_before_training(
        dataset_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Issue 23 (8): such a model was written and then refused by every reader; now a usage error."""
    from engine.errors import UsageError
    from engine.report.evaluation import pca_2d

    r = cli("train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m",
            "--features", "region", "--categorical", "region")
    assert r.exit_code == UsageError.exit_code and "add at least one numeric" in r.output
    assert not (tmp_path / "m").exists()
    xy, (cxy,), ratio = pca_2d(np.zeros((5, 0)), np.zeros((3, 0)))   # no numeric axis: flat, no error
    assert xy.shape == (5, 2) and cxy.shape == (3, 2) and not ratio.any()
