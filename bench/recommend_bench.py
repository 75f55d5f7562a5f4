"""``engine recommend`` throughput and memory: T = 1 / 64 / 512 offers, F = 20, top 5.

* **I/O floor** (same run): pyarrow alone reads the feature columns of every file, as many
  files at once as there are cores, and writes the engine's own long output again with the
  same writer options, as many parts at once. ``engine / floor`` compares wall times of the
  whole run (the engine's includes loading numba and its kernel: about 0.3-0.4 s, in a
  fresh process; run with ``--rows 4000000`` too, so fixed costs are not the whole story).
* **NumPy/BLAS reference** (compute only, data in memory): per block of 16,384 rows
  ``X @ W``, sigmoid, expected value, ``argpartition`` for the top 5, sort of those 5;
  against the fused numba kernel on the same blocks (one thread; BLAS uses its own
  threads). The kernel's pruning counts are recorded: rows that used the cut-offs, rows
  evaluated again, offers given an exp per row.
* **Peak RSS**: each engine run in its own subprocess (``ru_maxrss`` of the child).

Heads are synthetic (random weights on a model trained once with 4 offers): throughput does
not depend on the weights' values. Machine load is recorded with every figure.

    PYTHONPATH=. python3 bench/recommend_bench.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import machine, now_utc, write_results  # noqa: E402

F = 20
TOP = 5
OUT = Path(__file__).resolve().parent / "results"


def make_data(root: Path, rows: int, files: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir()
    per = -(-rows // files)
    for i in range(files):
        n = min(per, rows - i * per)
        cols = {"customer_id": np.arange(i * per, i * per + n, dtype=np.int64)}
        for j in range(F):
            cols[f"x{j}"] = rng.normal(size=n)
        cols["owns_0"] = (rng.random(n) < 0.2).astype(np.int8)
        pq.write_table(pa.table(cols), data / f"part{i}.parquet", row_group_size=131_072)
    return data


def base_model(root: Path) -> Path:
    """A model trained with 4 offers on 5,000 rows of the same shape (heads replaced later)."""
    import engine

    rng = np.random.default_rng(3)
    n = 5_000
    cols = {"customer_id": np.arange(n, dtype=np.int64), **{f"x{j}": rng.normal(size=n) for j in range(F)}}
    for t in range(4):
        cols[f"owns_{t}"] = (rng.random(n) < 1 / (1 + np.exp(-(cols[f"x{t}"] - 1)))).astype(np.int8)
    (root / "train").mkdir()
    pq.write_table(pa.table(cols), root / "train" / "t.parquet")
    (root / "o4.toml").write_text("top = 5\n" + "".join(
        f'[[offer]]\nid = "o{t}"\ntarget = "owns_{t}"\nexclude_owned = false\n' for t in range(4)))
    engine.train(str(root / "train"), None, str(root / "m4"), offers=str(root / "o4.toml"), k=4, report=False,
                 backend="cpu")
    return root / "m4"


def model_with_heads(base: Path, T: int, out: Path) -> Path:
    from engine.models.artifact import load_model, save_model

    m = load_model(base)
    rng = np.random.default_rng(T)
    offers = tuple({"id": f"offer_{t}", "target": "owns_0", "value": float(rng.uniform(1, 100)), "cost": 0.0,
                    "exclude_owned": False, "eligible": None, "budget": None, "positive": None} for t in range(T))
    m = replace(m, offers=offers, offer_settings={"top": TOP, "min_expected_value": 0.0},
                head_coef=rng.normal(size=(T, F)) * 0.3, head_intercept=rng.normal(size=T) - 2,
                head_platt=np.tile([1.0, 0.0], (T, 1)), content_hash="")
    save_model(m, out)
    return out


def engine_run(data: Path, model: Path, output: Path) -> dict:
    """One ``engine recommend`` in a fresh subprocess: wall seconds and its own peak RSS.

    The peak is the child's ``VmHWM`` (its address space's high-water mark). Not
    ``ru_maxrss``: Linux carries that across ``execve`` from the forked copy of the parent,
    so it reported the *benchmark's* size whenever that was larger (this script holds the
    data of the floor and the compute-only runs): earlier figures grew with every run.
    """
    code = ("import sys, time, json, resource; from engine.jobs.recommend import RecommendOptions, recommend; "
            "t=time.perf_counter(); m=recommend(RecommendOptions(input=sys.argv[1], model=sys.argv[2], "
            "output=sys.argv[3], progress='quiet')); wall=time.perf_counter()-t\n"
            "try:\n"
            "    hwm = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024\n"
            "except (OSError, IndexError, ValueError):\n"
            "    hwm = None\n"
            "print(json.dumps({'wall': wall, 'rows_out': m['totals']['rows_out'], 'seconds': m['seconds'], "
            "'peak_rss_mib': hwm, 'ru_maxrss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", code, str(data), str(model), str(output)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["loadavg"] = os.getloadavg()
    return out


def io_floor(data: Path, output: Path, scratch: Path) -> dict:
    """pyarrow alone: read the features of every file (2 at once), write the engine's output again."""
    from engine.jobs.partition import write_options

    files = sorted(data.glob("*.parquet"))
    cols = ["customer_id", *(f"x{j}" for j in range(F))]
    t0 = time.perf_counter()
    cores = os.cpu_count() or 1
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(lambda f: pq.read_table(f, columns=cols), files))
    t_read = time.perf_counter() - t0
    parts = sorted(output.glob("part-*.parquet"))
    tables = [pq.read_table(p) for p in parts]
    t0 = time.perf_counter()

    def write(i_t):
        i, t = i_t
        pq.write_table(t, scratch / f"floor-{i}.parquet", **write_options("zstd", ["customer_id", "offer", "reason"]))

    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(write, enumerate(tables)))
    t_write = time.perf_counter() - t0
    return {"read_s": t_read, "write_s": t_write, "total_s": t_read + t_write, "threads": cores,
            "loadavg": os.getloadavg()}


def compute_only(rows: int, T: int, block: int = 16_384, repeat: int = 3, categoricals: int = 0) -> dict:
    """``categoricals``: Q categorical columns of 8 levels each (their logit terms and their levels as
    reason candidates), else none."""
    from kernels.topn_offers_cpu import topn_offers_cpu

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, F))
    W = rng.normal(size=(F, T)) * 0.3
    b = rng.normal(size=T) - 2
    value = rng.uniform(1, 100, T)
    cost = np.zeros(T)
    lam = np.zeros(T)
    allowed = np.ones((block, T), np.uint8)
    Q = categoricals
    levels = (rng.integers(0, 8, size=(rows, Q)) + 8 * np.arange(Q)).astype(np.int32) if Q else None
    catW = rng.normal(size=(8 * Q, T)) * 0.3 if Q else None
    # Each column's average level term per offer: its levels are reason candidates, as in the engine.
    cat = {"catbase": catW.reshape(Q, 8, T).mean(axis=1)} if Q else {}
    topn_offers_cpu(X[:10], None if levels is None else levels[:10], W, b, catW, value, cost, lam, allowed[:10],
                    0.0, TOP, **cat)

    stats = np.zeros(4, np.int64)

    def kernel():
        stats[:] = 0
        for s in range(0, rows, block):
            e = min(rows, s + block)
            topn_offers_cpu(X[s:e], None if levels is None else levels[s:e], W, b, catW, value, cost, lam,
                            allowed[: e - s], 0.0, TOP, stats=stats, **cat)

    def reference():
        for s in range(0, rows, block):
            u = X[s:s + block] @ W + b
            for q in range(Q):
                u += catW[levels[s:s + block, q]]
            P = 1 / (1 + np.exp(-u))
            ev = P * value - cost
            top = np.argpartition(-ev, TOP - 1, axis=1)[:, :TOP] if T > TOP else np.argsort(-ev, axis=1)
            order = np.argsort(-np.take_along_axis(ev, top, 1), axis=1)
            np.take_along_axis(top, order, 1)

    best = {}
    for name, fn in (("kernel", kernel), ("numpy_blas", reference)):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    return {"rows": rows, "T": T, "categoricals": Q, "kernel_s": best["kernel"], "numpy_blas_s": best["numpy_blas"],
            "speedup": best["numpy_blas"] / best["kernel"], "kernel_rows_per_s": rows / best["kernel"],
            "kernel_ns_per_row": best["kernel"] / rows * 1e9, "numpy_ns_per_row": best["numpy_blas"] / rows * 1e9,
            "pruning": {"rows_with_cutoffs": int(stats[0]), "rows_evaluated_again": int(stats[1]),
                        "exp_per_row": float(stats[2]) / rows, "rows_over_every_offer": int(stats[3])},
            "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--heads", default="1,64,512")
    parser.add_argument("--label", default="", help="appended to the results file name")
    parser.add_argument("--repeat", type=int, default=1,
                        help="engine runs, floors and compute-only measurements per T (the machine is shared: "
                             "every repeat is recorded; the summary uses the median of each)")
    parser.add_argument("--compute-only", action="store_true",
                        help="only the kernel vs NumPy/BLAS measurement (no data files, no engine runs)")
    parser.add_argument("--categoricals", type=int, default=0,
                        help="with --compute-only: this many categorical columns (8 levels each) in the kernel's input")
    args = parser.parse_args()
    heads = [int(h) for h in args.heads.split(",")]
    if args.compute_only:
        rows = min(args.rows, 262_144)
        res = {"benchmark": "top-N kernel vs NumPy/BLAS (compute only)", "when": now_utc(), "machine": machine(),
               "note": "2-core machine shared by 4 engineers: loaded; see loadavg per figure", "rows": rows,
               "features": F, "top": TOP,
               "categoricals": args.categoricals,
               "runs": [{"T": T, "repeats": [compute_only(rows, T, categoricals=args.categoricals)
                                             for _ in range(max(1, args.repeat))]} for T in heads]}
        for run in res["runs"]:
            print(json.dumps({"T": run["T"], "kernel_ns_per_row": [round(c["kernel_ns_per_row"]) for c in run["repeats"]],
                              "numpy_ns_per_row": [round(c["numpy_ns_per_row"]) for c in run["repeats"]],
                              "speedup": [round(c["speedup"], 2) for c in run["repeats"]]}))
        stamped, _ = write_results(OUT, f"recommend-kernel-{args.label}" if args.label else "recommend-kernel", rows,
                                   res)
        print("->", stamped)
        return
    result = {"benchmark": "engine recommend", "when": now_utc(), "machine": machine(),
              "note": "2-core machine shared by 4 engineers: loaded; see loadavg per figure",
              "rows": args.rows, "features": F, "top": TOP, "runs": []}
    # numba's on-disk cache (kernels/__pycache__ or $NUMBA_CACHE_DIR) filled first, in its own
    # process: the runs below measure a warm cache, as every run after the first one sees it.
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from kernels.topn_offers_cpu import warm; warm()"], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    result["kernel_cache_fill_s"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="recbench-") as tmp:
        root = Path(tmp)
        data = make_data(root, args.rows, args.files)
        base = base_model(root)
        # The data just written is flushed before anything is timed (its writeback is part of neither
        # figure). The first floor of a large run still reads slow (16M rows: 8.2 s, then 3.6): the
        # summary takes medians of the repeats.
        os.sync()
        for T in heads:
            import shutil

            model = model_with_heads(base, T, root / f"m{T}")
            out = root / f"out{T}"
            runs, floors, computes = [], [], []
            for _ in range(max(1, args.repeat)):
                shutil.rmtree(out, ignore_errors=True)
                runs.append(engine_run(data, model, out))
                floors.append(io_floor(data, out, root))
                computes.append(compute_only(min(args.rows, 262_144), T))
            med = len(runs) // 2
            run = sorted(runs, key=lambda r: r["wall"])[med]
            floor = sorted(floors, key=lambda f: f["total_s"])[med]
            compute = sorted(computes, key=lambda c: c["speedup"])[med]
            entry = {"T": T, "engine": run, "floor": floor, "engine_rows_per_s": args.rows / run["wall"],
                     "engine_over_floor": floor["total_s"] / run["wall"], "compute": compute,
                     "summary": "median of the repeats (each ranked on its own)",
                     "repeats": {"engine": runs, "floor": floors, "compute": computes,
                                 "engine_over_floor_each": [f["total_s"] / r["wall"] for r, f in zip(runs, floors)]}}
            result["runs"].append(entry)
            print(json.dumps({"T": T, "engine_s": [round(r["wall"], 2) for r in runs],
                              "floor_s": [round(f["total_s"], 2) for f in floors],
                              "engine/floor": [round(x, 3) for x in entry["repeats"]["engine_over_floor_each"]],
                              "peak_rss_mib": [round(r["peak_rss_mib"]) for r in runs],
                              "kernel_vs_numpy": [round(c["speedup"], 2) for c in computes],
                              "loadavg": os.getloadavg()}), flush=True)
            shutil.rmtree(out)
    stamped, _ = write_results(OUT, f"recommend-{args.label}" if args.label else "recommend", args.rows, result)
    print("->", stamped)


if __name__ == "__main__":
    main()
