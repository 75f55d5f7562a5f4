"""The non-engine methods of the scoring benchmark, each run as its own subprocess:

``python -m bench.methods floor --input DIR --model DIR --output DIR [--pool N] --result PATH``
    The I/O floor: pyarrow alone reads the id and the model's feature columns of each file
    and writes the four output columns with the output's types (id int64, segment int32,
    segment_distance float32, propensity float32), snappy-compressed, with no model
    arithmetic. The written values are drawn once, before the clock starts, so that they
    cost what real scores cost to encode (``--values random``, the default: 8 segment
    values, incompressible floats); ``--values zeros`` writes constants, which Parquet's
    dictionary/RLE encoding makes nearly free (a floor no real scorer could reach).
    ``--pool 1`` processes files one by one with pyarrow's own threads; ``--pool 2``
    additionally runs two files at a time in a thread pool.

``python -m bench.methods pandas-sklearn --input DIR --model DIR --output DIR --result PATH``
    What a user without the engine would write: per file ``pandas.read_parquet`` → the
    same model as fitted scikit-learn pipelines (``predict``, ``transform``,
    ``predict_proba``) → ``DataFrame.to_parquet``.

Each writes a small JSON result (rows, seconds spent in the loop, per-step seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from engine.jobs.partition import write_options

OUTPUT_COLUMNS = ("segment", "segment_distance", "propensity")
# The floor writes with the engine's own part settings (engine.jobs.partition.write_options),
# so it stays the same work minus the model.
FLOOR_WRITE_OPTIONS: dict[str, Any] = write_options("snappy", ["segment"])


def input_files(root: str) -> list[str]:
    """The dataset's Parquet files, in name order (the generator's layout)."""
    return sorted(str(p) for p in Path(root).glob("*.parquet") if not p.name.startswith(("_", ".")))


def sklearn_pipelines(model: Any) -> tuple[Any, Any]:
    """The engine model as two fitted scikit-learn pipelines, as a user would hold it:
    ``SimpleImputer → StandardScaler → KMeans`` and ``SimpleImputer → StandardScaler →
    LogisticRegression``. Each step is fitted on a tiny placeholder (so scikit-learn sets
    every private attribute it checks), then its learned attributes are overwritten with
    the artifact's values.
    """
    import pandas as pd
    from sklearn.cluster import KMeans
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    names = list(model.features)
    n = len(names)

    def preprocess(pre: Any) -> tuple[Any, Any]:
        fill = np.asarray(pre.fill, dtype=np.float64)
        imputer = SimpleImputer(strategy="mean").fit(pd.DataFrame([fill, fill], columns=names))
        imputer.statistics_ = fill.copy()
        scaler = StandardScaler().fit(np.vstack([fill, fill + 1.0]))
        scaler.mean_ = np.asarray(pre.mean, dtype=np.float64).copy()
        scaler.scale_ = np.asarray(pre.scale, dtype=np.float64).copy()
        scaler.var_ = scaler.scale_ ** 2
        return imputer, scaler

    imp_s, sc_s = preprocess(model.segmenter)
    centroids = np.asarray(model.centroids, dtype=np.float64)
    kmeans = KMeans(n_clusters=model.k, n_init=1, init=centroids, max_iter=1).fit(centroids)
    kmeans.cluster_centers_ = centroids.copy()
    imp_p, sc_p = preprocess(model.propensity)
    placeholder_x = np.vstack([np.zeros(n), np.ones(n)])
    logistic = LogisticRegression().fit(placeholder_x, np.array([0, 1]))
    logistic.coef_ = np.asarray(model.coef, dtype=np.float64).reshape(1, n).copy()
    logistic.intercept_ = np.array([float(model.intercept)])
    logistic.classes_ = np.array([0, 1])
    segmenter = Pipeline([("impute", imp_s), ("scale", sc_s), ("kmeans", kmeans)])
    propensity = Pipeline([("impute", imp_p), ("scale", sc_p), ("logistic", logistic)])
    return segmenter, propensity


def _floor(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.models.artifact import load_model

    model = load_model(args.model)
    columns = [model.id_column, *model.features]
    files = input_files(args.input)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    most = max(pq.read_metadata(f).num_rows for f in files)
    if args.values == "random":
        rng = np.random.default_rng(0)
        segment = rng.integers(0, model.k, most, dtype=np.int32)
        distance = (rng.random(most, dtype=np.float32) * 6.0).astype(np.float32)
        propensity = rng.random(most, dtype=np.float32)
    else:
        segment = np.zeros(most, dtype=np.int32)
        distance = np.zeros(most, dtype=np.float32)
        propensity = np.zeros(most, dtype=np.float32)

    def one(path: str) -> tuple[int, float, float]:
        t0 = time.perf_counter()
        table = pq.read_table(path, columns=columns)
        t1 = time.perf_counter()
        n = table.num_rows
        out = pa.table({
            model.id_column: table.column(model.id_column),
            "segment": pa.array(segment[:n], type=pa.int32()),
            "segment_distance": pa.array(distance[:n], type=pa.float32()),
            "propensity": pa.array(propensity[:n], type=pa.float32()),
        })
        pq.write_table(out, out_dir / f"part-{Path(path).stem}.parquet", **FLOOR_WRITE_OPTIONS)
        return n, t1 - t0, time.perf_counter() - t1

    t0 = time.perf_counter()
    if args.pool > 1:
        with ThreadPoolExecutor(max_workers=args.pool) as pool:
            done = list(pool.map(one, files))
    else:
        done = [one(f) for f in files]
    loop = time.perf_counter() - t0
    return {"rows": sum(d[0] for d in done), "files": len(files), "loop_s": loop,
            "step_seconds_summed": {"read": sum(d[1] for d in done), "write": sum(d[2] for d in done)},
            "pool": args.pool, "values": args.values, "columns_read": len(columns),
            "write_options": FLOOR_WRITE_OPTIONS}


def _pandas_sklearn(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from engine.models.artifact import load_model

    model = load_model(args.model)
    features = list(model.features)
    segmenter, propensity = sklearn_pipelines(model)
    files = input_files(args.input)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = {"read": 0.0, "compute": 0.0, "write": 0.0}
    rows = 0
    t0 = time.perf_counter()
    for path in files:
        ta = time.perf_counter()
        df = pd.read_parquet(path, columns=[model.id_column, *features])
        tb = time.perf_counter()
        X = df[features]
        out = pd.DataFrame({
            model.id_column: df[model.id_column].to_numpy(),
            "segment": segmenter.predict(X).astype(np.int32),
            "segment_distance": segmenter.transform(X).min(axis=1).astype(np.float32),
            "propensity": propensity.predict_proba(X)[:, 1].astype(np.float32),
        })
        tc = time.perf_counter()
        out.to_parquet(out_dir / f"part-{Path(path).stem}.parquet", compression="snappy", index=False)
        td = time.perf_counter()
        steps["read"] += tb - ta
        steps["compute"] += tc - tb
        steps["write"] += td - tc
        rows += len(df)
        del df, X, out
    return {"rows": rows, "files": len(files), "loop_s": time.perf_counter() - t0,
            "step_seconds_summed": steps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=["floor", "pandas-sklearn"])
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--result", required=True, help="Where to write this run's JSON result.")
    parser.add_argument("--pool", type=int, default=1, help="floor: files processed at once.")
    parser.add_argument("--values", choices=["random", "zeros"], default="random",
                        help="floor: values written (drawn before the clock starts).")
    args = parser.parse_args(argv)
    result = _floor(args) if args.method == "floor" else _pandas_sklearn(args)
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.method}: {result['rows']:,} rows in {result['loop_s']:.2f}s "
          f"({result['rows'] / max(result['loop_s'], 1e-9):,.0f} rows/s)")


if __name__ == "__main__":
    main()
