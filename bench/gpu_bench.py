"""GPU benchmark: device-side figures (transfer bandwidth, the scaling kernel against a
device copy, the fused scorer against CuPy array operations) and end-to-end scoring per
method: the I/O floor, ``engine score --backend cpu`` and ``--backend gpu``.

Runs on a GPU machine that has CuPy but no cuML and no network (Dask and the engine can
come along as wheels), and on any other machine, where the GPU method is skipped with
its reason so the rest can be tried::

    python -m bench.gpu_bench [--rows 8000000] [--files 16] [--threads N] [--out bench/results]
    python -m bench.gpu_bench --rows 200000 --files 4 --heavy-rows 100000 --workdir /tmp/gb   # smoke

Per method, under ``end_to_end.{io_floor, engine_cpu, engine_gpu}`` (and the same under
``heavy_model`` for k = 64 over 100 features): ``rows_per_s`` over the process wall,
``inner_rows_per_s`` over the method's own loop, ``peak_rss_mib`` (process tree), and the
task ``thread_seconds`` split into read / compute / write; ``cores`` is the machine's.
Targets (issue 11): GPU loop >= 0.9 x floor loop, CPU loop >= 0.85 x floor loop, GPU wall
>= 0.95 x CPU wall, peak RSS <= 1.5 GiB. Results: ``bench/results/gpu-<device>-*.json``
(``gpu-none-*`` without a GPU).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from bench import _harness as h

GIB = 1024**3


def _time_gpu(cp: Any, fn: Any, repeat: int = 5) -> float:
    """Median seconds of ``fn`` timed with CUDA events, after one warm-up call."""
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1000.0)
    return float(np.median(times))


def device_info(cp: Any) -> dict[str, Any]:
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {
        "name": name,
        "total_memory_gib": round(props["totalGlobalMem"] / GIB, 1),
        "multiprocessors": props["multiProcessorCount"],
        "compute_capability": f"{props['major']}.{props['minor']}",
        "driver_version": cp.cuda.runtime.driverGetVersion(),
        "runtime_version": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
    }


def transfer_bandwidth(cp: Any, nbytes: int) -> dict[str, Any]:
    """Host→device GB/s from pageable and from pinned memory, and device→device copy GB/s."""
    import cupyx

    n = nbytes // 8
    pageable = np.ones(n)
    pinned = cupyx.empty_pinned((n,), dtype=np.float64)
    pinned[...] = 1.0
    dev = cp.empty(n, dtype=np.float64)
    other = cp.empty_like(dev)
    t_pageable = _time_gpu(cp, lambda: dev.set(pageable))
    t_pinned = _time_gpu(cp, lambda: dev.set(pinned))
    t_d2d = _time_gpu(cp, lambda: cp.copyto(other, dev))
    return {
        "bytes": n * 8,
        "h2d_pageable_gb_s": n * 8 / t_pageable / 1e9,
        "h2d_pinned_gb_s": n * 8 / t_pinned / 1e9,
        # A copy reads and writes every byte: count both, as the kernel's figure does.
        "d2d_copy_gb_s": 2 * n * 8 / t_d2d / 1e9,
    }


def scaling_kernel(cp: Any, rows: int, n_features: int, d2d_gb_s: float) -> dict[str, Any]:
    """The impute-and-standardise kernel's GB/s (bytes read + written) against the copy's."""
    from kernels.standardize import standardize_cuda

    out: dict[str, Any] = {}
    for dtype in (np.float32, np.float64):
        rng = cp.random.default_rng(0)
        X = cp.asfortranarray(rng.standard_normal((rows, n_features), dtype=dtype))
        X[::97, 3] = cp.nan
        fill, mean, inv = (cp.asarray(v, dtype=dtype) for v in
                           (np.zeros(n_features), np.full(n_features, 0.5), np.full(n_features, 2.0)))
        Z = cp.empty_like(X, order="F")
        t = _time_gpu(cp, lambda X=X, Z=Z, fill=fill, mean=mean, inv=inv: standardize_cuda(X, fill, mean, inv, out=Z))
        gbs = 2 * X.nbytes / t / 1e9
        out[np.dtype(dtype).name] = {"rows": rows, "features": n_features, "seconds": t, "gb_s": gbs,
                                     "share_of_d2d_copy": gbs / d2d_gb_s}
        del X, Z
    out["target_share_of_copy"] = 0.8
    out["meets_target"] = all(v["share_of_d2d_copy"] >= 0.8 for k, v in out.items() if isinstance(v, dict))
    return out


def scorers(cp: Any, rows: int, model_dir: Path) -> dict[str, Any]:
    """Rows/s of the fused ``score_rows`` kernel and of the CuPy-operations scorer, same data.

    A model with categorical columns (the default model has one) scores random levels of
    each column beside the numeric block, through both scorers: nothing is dropped.
    """
    from engine.backends.stage import level_inputs
    from engine.models.artifact import load_model
    from engine.models.categorical import offsets
    from engine.models.scorer import fold, score_matrix
    from kernels.score_rows import score_rows_cuda

    model = load_model(model_dir)
    f = model.n_features
    rng = cp.random.default_rng(1)
    X = cp.asfortranarray(rng.standard_normal((rows, f)) * 3 + cp.asarray(model.segmenter.mean))
    s, p = model.segmenter, model.propensity
    params = [cp.asarray(v) for v in (s.fill, 1 / s.scale, -s.mean / s.scale, model.centroids,
                                       p.fill, 1 / p.scale, -p.mean / p.scale, model.coef)]
    cats: dict[str, Any] = {}
    levels = None
    if model.categoricals:
        bases = offsets(model.categoricals)
        cols = [rng.integers(0, c.n_levels, rows, dtype=cp.int32) + int(b)
                for c, b in zip(model.categoricals, bases)]
        levels = cp.ascontiguousarray(cp.stack(cols, axis=1).astype(cp.int32))
        tables = level_inputs(model)
        assert tables is not None
        cats = {"levels": levels, "cat_logit": cp.asarray(tables[0]), "cat_dist": cp.asarray(tables[1])}
    folded = fold(model, xp=cp)
    t_fused = _time_gpu(cp, lambda: score_rows_cuda(X, *params, model.intercept, **cats))
    t_ops = _time_gpu(cp, lambda: score_matrix(X, folded, xp=cp, levels=levels))
    a = score_rows_cuda(X, *params, model.intercept, **cats)
    b = score_matrix(X, folded, xp=cp, levels=levels)
    agree = bool((a[0] == b[0]).all()) and float(cp.abs(a[2] - b[2]).max()) <= 1e-5
    return {"rows": rows, "categorical_columns": len(model.categoricals),
            "fused_kernel_rows_s": rows / t_fused, "cupy_ops_rows_s": rows / t_ops,
            "fused_over_ops": t_ops / t_fused, "results_agree": agree}


def _measure(args: argparse.Namespace, fn: Any, *fn_args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn`` run ``--repeat`` times; the median run (wall, inner, thread-seconds), the highest peak."""
    runs = [fn(*fn_args, **kwargs) for _ in range(args.repeat)]
    out = h.median_run(runs)
    for key in ("pool", "method"):
        if key in runs[0]:
            out[key] = runs[0][key]
    if "engine" in runs[0]:
        out["engine"] = runs[0]["engine"]
    return out


def end_to_end(args: argparse.Namespace, data: Path, model: Path, case: str, gpu_reason: str | None
               ) -> dict[str, Any]:
    """The I/O floor, ``engine score --backend cpu`` and ``--backend gpu`` on the same data, each in a
    fresh process: ``rows_per_s`` over the process wall, ``inner_rows_per_s`` over the method's own
    loop, ``peak_rss_mib`` and task ``thread_seconds`` (read / compute / write)."""
    logs = Path(args.workdir) / "logs" / case
    outs = Path(args.workdir) / "outputs" / case
    logs.mkdir(parents=True, exist_ok=True)
    threads = ["--threads-per-worker", str(args.threads)] if args.threads else []
    extra = [*threads, *args.engine_arg]
    results: dict[str, Any] = {}
    pool = args.floor_pool or h.machine()["cores_usable"]
    results["io_floor"] = _measure(args, h.measure_floor, "io_floor", data, model, outs / "floor", logs, pool,
                                   timeout_s=args.timeout)
    results["engine_cpu"] = _measure(args, h.measure_engine, "engine_cpu", data, model, outs / "cpu", logs,
                                     extra=extra, timeout_s=args.timeout)
    if gpu_reason is None:
        results["engine_gpu"] = _measure(args, h.measure_engine, "engine_gpu", data, model, outs / "gpu", logs,
                                         extra=["--backend", "gpu", *extra], timeout_s=args.timeout)
    else:
        results["engine_gpu"] = {"skipped": True, "reason": gpu_reason}
    floor, cpu, gpu = (results[k] for k in ("io_floor", "engine_cpu", "engine_gpu"))
    targets: dict[str, Any] = {
        "cpu_loop_over_floor_loop": cpu["inner_rows_per_s"] / floor["inner_rows_per_s"],
        "cpu_loop_ge_0_85_floor_loop": cpu["inner_rows_per_s"] / floor["inner_rows_per_s"] >= 0.85,
        "cpu_wall_over_floor_wall": cpu["rows_per_s"] / floor["rows_per_s"],
        "cpu_peak_rss_le_1_5_gib": cpu["peak_rss_mib"] <= 1.5 * 1024,
    }
    if not gpu.get("skipped"):
        targets |= {
            "gpu_over_cpu": gpu["rows_per_s"] / cpu["rows_per_s"],
            "gpu_wall_ge_0_95_cpu": gpu["rows_per_s"] / cpu["rows_per_s"] >= 0.95,
            "gpu_loop_over_floor_loop": gpu["inner_rows_per_s"] / floor["inner_rows_per_s"],
            "gpu_loop_ge_0_9_floor_loop": gpu["inner_rows_per_s"] / floor["inner_rows_per_s"] >= 0.9,
            "gpu_peak_rss_le_1_5_gib": gpu["peak_rss_mib"] <= 1.5 * 1024,
            # Issue 17: each block's upload moves its n x F x 8 bytes, not the whole slot.
            "gpu_h2d_bytes": gpu["engine"]["device_bytes_in"],
            "data_bytes": gpu["engine"]["data_bytes"],
            "gpu_h2d_equals_data_bytes": gpu["engine"]["device_bytes_in"] == gpu["engine"]["data_bytes"],
        }
    results["targets"] = targets
    return results


def gpu_unusable_reason() -> str | None:
    """None when this machine can run the GPU backend (NVML sees a device and CuPy imports), else why not."""
    from engine.backends.detect import detect

    status = detect()
    if not status.gpu_usable:
        return status.gpu_reason or "no usable GPU"
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as exc:  # no driver, broken install: all mean "no GPU" here
        return f"{type(exc).__name__}: {exc}"
    return None


def _print_case(title: str, e: dict[str, Any]) -> None:
    print(f"{title}:")
    for name in ("io_floor", "engine_cpu", "engine_gpu"):
        r = e[name]
        if r.get("skipped"):
            print(f"  {name:<11} skipped: {r['reason']}")
            continue
        ts = r["thread_seconds"]
        print(f"  {name:<11} {r['rows_per_s']:>13,.0f} rows/s wall {r['wall_s']:7.2f} s | loop "
              f"{r['inner_rows_per_s']:>13,.0f} rows/s | peak {r['peak_rss_mib']:7,.0f} MiB | thread-s "
              f"read {ts['read']:.2f} compute {ts['compute']:.2f} write {ts['write']:.2f}")
    t = e["targets"]
    if "gpu_over_cpu" in t:
        print(f"  GPU/CPU {t['gpu_over_cpu']:.2f}x (wall); GPU loop / floor loop {t['gpu_loop_over_floor_loop']:.2f}; "
              f"CPU loop / floor loop {t['cpu_loop_over_floor_loop']:.2f}; host-to-device "
              f"{t['gpu_h2d_bytes']:,} bytes for {t['data_bytes']:,} bytes of data")
    else:
        print(f"  CPU loop / floor loop {t['cpu_loop_over_floor_loop']:.2f}; "
              f"CPU wall / floor wall {t['cpu_wall_over_floor_wall']:.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8_000_000, help="rows of the end-to-end dataset")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--heavy-rows", type=int, default=None,
                        help="rows of the heavy-model case (k=64, 100 features); default min(rows, 2M)")
    parser.add_argument("--heavy-files", type=int, default=None, help="default: files")
    parser.add_argument("--skip-heavy", action="store_true", help="leave out the heavy-model case")
    parser.add_argument("--threads", type=int, default=None,
                        help="engine task threads (--threads-per-worker); default the engine's (one per core)")
    parser.add_argument("--floor-pool", type=int, default=None, help="floor files at a time; default one per core")
    parser.add_argument("--engine-arg", action="append", default=[],
                        help="extra flag for every engine run, e.g. --engine-arg=--batch-rows=262144")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; medians reported")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a method is killed")
    parser.add_argument("--workdir", default="bench/data")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--transfer-gib", type=float, default=1.0)
    parser.add_argument("--kernel-rows", type=int, default=16_000_000)
    parser.add_argument("--skip-e2e", action="store_true", help="only the device-side measurements")
    parser.add_argument("--skip-device", action="store_true", help="only the end-to-end measurements")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.rows < args.files or args.files < 1:
        parser.error("need rows >= files >= 1 and repeat >= 1")
    gpu_reason = gpu_unusable_reason()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data, _, _ = h.ensure_dataset(workdir, args.rows, args.files)
    model, _ = h.ensure_model(workdir, data)
    payload: dict[str, Any] = {"started": h.now_utc(), "machine": h.machine(workdir), "parameters": vars(args),
                               "gpu": {"usable": gpu_reason is None, "reason": gpu_reason}}
    payload["cores"] = payload["machine"]["cores_usable"]
    if gpu_reason is None:
        import cupy as cp

        payload["device"] = device_info(cp)
        if not args.skip_device:
            transfer = transfer_bandwidth(cp, int(args.transfer_gib * GIB))
            payload["transfer"] = transfer
            payload["scaling_kernel"] = scaling_kernel(cp, args.kernel_rows, 21, transfer["d2d_copy_gb_s"])
            payload["scorers"] = scorers(cp, args.kernel_rows, model)
            print(f"device {payload['device']['name']}: H2D pageable {transfer['h2d_pageable_gb_s']:.1f} GB/s, "
                  f"pinned {transfer['h2d_pinned_gb_s']:.1f} GB/s, D2D copy {transfer['d2d_copy_gb_s']:.0f} GB/s")
            for dt in ("float32", "float64"):
                k = payload["scaling_kernel"][dt]
                print(f"scaling kernel {dt}: {k['gb_s']:.0f} GB/s = {k['share_of_d2d_copy']:.0%} of the copy")
            sc = payload["scorers"]
            print(f"scorer: fused kernel {sc['fused_kernel_rows_s']:,.0f} rows/s, "
                  f"CuPy ops {sc['cupy_ops_rows_s']:,.0f} rows/s")
    else:
        payload["device"] = {"name": "none", "reason": gpu_reason}
        print(f"no usable GPU ({gpu_reason}): the GPU method is skipped, the rest runs")
    if not args.skip_e2e:
        payload["end_to_end"] = end_to_end(args, data, model, "default", gpu_reason)
        _print_case(f"default model ({args.rows:,} rows, 21 features, k=8)", payload["end_to_end"])
        if not args.skip_heavy:
            from bench.heavy import (
                HEAVY_FEATURES,
                HEAVY_K,
                ensure_heavy_dataset,
                ensure_heavy_model,
            )

            heavy_rows = args.heavy_rows or min(args.rows, 2_000_000)
            heavy_files = min(args.heavy_files or args.files, heavy_rows)
            heavy_data = ensure_heavy_dataset(workdir, heavy_rows, heavy_files)
            heavy_model = ensure_heavy_model(workdir, heavy_data)
            heavy = end_to_end(args, heavy_data, heavy_model, "heavy", gpu_reason)
            heavy["case"] = {"rows": heavy_rows, "files": heavy_files, "k": HEAVY_K, "features": HEAVY_FEATURES}
            payload["heavy_model"] = heavy
            _print_case(f"heavy model ({heavy_rows:,} rows, {HEAVY_FEATURES} features, k={HEAVY_K})", heavy)
    slug = re.sub(r"[^a-z0-9]+", "-", payload["device"]["name"].lower()).strip("-")
    stamped, latest = h.write_results(Path(args.out), f"gpu-{slug}", args.rows, payload)
    print(f"wrote {stamped} and {latest}")
    return payload


if __name__ == "__main__":
    main()
