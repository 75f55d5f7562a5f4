"""The heavy-model case of the GPU benchmark: k = 64 segments over 100 features.

The generator's table has 21 features, so this case brings its own: ``features`` float
columns of standard normal values with 5 % nulls beside an int64 ``customer_id``, and a
model artifact built directly (random centroids and coefficients in the standardised
space, the training profile of a sample, so drift is computed as in a real run). The
arithmetic per row is about 30x the default model's, which is where a GPU should win.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._harness import META_FILE

HEAVY_K = 64
HEAVY_FEATURES = 100
ROW_GROUP_ROWS = 131_072


def feature_names(n: int) -> list[str]:
    return [f"x{j:03d}" for j in range(n)]


def ensure_heavy_dataset(workdir: Path, rows: int, files: int, features: int = HEAVY_FEATURES,
                         seed: int = 11, say=print) -> Path:
    """``rows`` customers x ``features`` columns in ``files`` Parquet files (reused when present)."""
    target = workdir / f"heavy-r{rows}-f{files}-x{features}-s{seed}"
    meta = {"rows": rows, "files": files, "features": features, "seed": seed}
    if (target / META_FILE).is_file() and json.loads((target / META_FILE).read_text()) == meta:
        say(f"reusing heavy dataset {target}")
        return target
    say(f"generating the heavy dataset: {rows:,} rows x {features} features in {files} files ...")
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = feature_names(features)
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    for i in range(files):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        with pq.ParquetWriter(target / f"heavy-{i:05d}.parquet",
                              pa.schema([("customer_id", pa.int64()), *[(n, pa.float64()) for n in names]]),
                              compression="snappy") as writer:
            for start in range(lo, hi, ROW_GROUP_ROWS):
                stop = min(hi, start + ROW_GROUP_ROWS)
                n = stop - start
                cols = {"customer_id": pa.array(np.arange(start, stop, dtype=np.int64))}
                for name in names:
                    values = rng.standard_normal(n)
                    cols[name] = pa.array(values, mask=rng.random(n) < 0.05)
                writer.write_table(pa.table(cols))
    (target / META_FILE).write_text(json.dumps(meta) + "\n")
    return target


def ensure_heavy_model(workdir: Path, data: Path, k: int = HEAVY_K, seed: int = 12, say=print) -> Path:
    """A k-segment model over every ``x*`` column of ``data`` (random, but a valid artifact)."""
    from engine.io.dataset import table_to_matrix
    from engine.models.artifact import Preprocess, ScoringModel, load_model, save_model
    from engine.models.profile import feature_profile, score_profile
    from engine.models.scorer import fold, score_matrix

    target = workdir / f"model-{data.name}-k{k}"
    if (target / "model.json").is_file():
        try:
            load_model(target)
            say(f"reusing heavy model {target}")
            return target
        except Exception:  # an artifact of an older format: build it again
            import shutil

            shutil.rmtree(target)
    first = sorted(data.glob("*.parquet"))[0]
    names = [n for n in pq.read_schema(first).names if n.startswith("x")]
    f = len(names)
    rng = np.random.default_rng(seed)
    sample = table_to_matrix(pq.ParquetFile(first).read_row_group(0, columns=names), names)
    mean = np.nanmean(sample, axis=0)
    scale = np.nanstd(sample, axis=0)
    pre = Preprocess(fill=mean, mean=mean, scale=scale)
    model = ScoringModel(features=tuple(names), feature_types=("double",) * f, segmenter=pre,
                         centroids=rng.standard_normal((k, f)), propensity=pre,
                         coef=rng.standard_normal(f) / np.sqrt(f), intercept=-0.5,
                         params={"source": "bench.heavy (random heavy model)"})
    seg, _, prop = score_matrix(sample, fold(model, xp=np), xp=np)
    profile = {"features": feature_profile(sample, names), **score_profile(prop, seg, k)}
    from dataclasses import replace

    save_model(replace(model, profile=profile), target)
    load_model(target)  # the artifact must load as any other
    return target
