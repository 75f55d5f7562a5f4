"""GPU benchmark: transfer bandwidth, the scaling kernel against a device copy, the fused
scorer against CuPy array operations, and end-to-end ``engine score`` GPU vs CPU.

Runs on a GPU machine that has CuPy but no cuML and no network (Dask and the engine can
come along as wheels)::

    python -m bench.gpu_bench [--rows 8000000] [--files 16] [--out bench/results]

Targets (issue 4): the scaling kernel moves ≥ 80 % of a device-to-device copy's bytes per
second; end-to-end GPU scoring is ≥ 3 × CPU scoring on the same machine and data, and
within 1.5 × of the I/O floor's time. Results go to ``bench/results/gpu-<device>-*.json``.
"""

from __future__ import annotations

import argparse
import re
import sys
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
    """Rows/s of the fused ``score_rows`` kernel and of the CuPy-operations scorer, same data."""
    from engine.models.artifact import load_model
    from engine.models.scorer import fold, score_matrix
    from kernels.score_rows import score_rows_cuda

    model = load_model(model_dir)
    f = model.n_features
    rng = cp.random.default_rng(1)
    X = cp.asfortranarray(rng.standard_normal((rows, f)) * 3 + cp.asarray(model.segmenter.mean))
    s, p = model.segmenter, model.propensity
    params = [cp.asarray(v) for v in (s.fill, 1 / s.scale, -s.mean / s.scale, model.centroids,
                                       p.fill, 1 / p.scale, -p.mean / p.scale, model.coef)]
    folded = fold(model, xp=cp)
    t_fused = _time_gpu(cp, lambda: score_rows_cuda(X, *params, model.intercept))
    t_ops = _time_gpu(cp, lambda: score_matrix(X, folded, xp=cp))
    a = score_rows_cuda(X, *params, model.intercept)
    b = score_matrix(X, folded, xp=cp)
    agree = bool((a[0] == b[0]).all()) and float(cp.abs(a[2] - b[2]).max()) <= 1e-5
    return {"rows": rows, "fused_kernel_rows_s": rows / t_fused, "cupy_ops_rows_s": rows / t_ops,
            "fused_over_ops": t_ops / t_fused, "results_agree": agree}


def end_to_end(args: argparse.Namespace, data: Path, model: Path) -> dict[str, Any]:
    """``engine score`` on the CPU and the GPU backend, and the I/O floor, on the same data."""
    logs = Path(args.workdir) / "logs"
    outs = Path(args.workdir) / "outputs"
    results: dict[str, Any] = {}
    results["engine_cpu"] = h.measure_engine("engine_cpu", data, model, outs / "cpu", logs)
    results["engine_gpu"] = h.measure_engine("engine_gpu", data, model, outs / "gpu", logs,
                                             extra=["--backend", "gpu"])
    floor_out = outs / "floor"
    h.remove(floor_out)
    m = h.run_measured("io_floor", [sys.executable, "-m", "bench.methods", "floor", "--input", str(data),
                                    "--model", str(model), "--output", str(floor_out), "--pool", "4",
                                    "--result", str(logs / "io_floor.json")],
                       logs, env=h.clean_env())
    h.require_ok(m)
    h.remove(floor_out)
    rows = results["engine_cpu"]["rows"]
    results["io_floor"] = m.to_dict() | {"rows": rows, "rows_per_s": rows / m.wall_s}
    gpu, cpu, floor = (results[k]["rows_per_s"] for k in ("engine_gpu", "engine_cpu", "io_floor"))
    results["targets"] = {
        "gpu_over_cpu": gpu / cpu, "gpu_over_cpu_target": 3.0, "gpu_over_cpu_met": gpu / cpu >= 3.0,
        "gpu_time_over_floor_time": floor / gpu, "within_1_5x_of_floor": floor / gpu <= 1.5,
    }
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8_000_000, help="rows of the end-to-end dataset")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--workdir", default="bench/data")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--transfer-gib", type=float, default=1.0)
    parser.add_argument("--kernel-rows", type=int, default=16_000_000)
    parser.add_argument("--skip-e2e", action="store_true", help="only the device-side measurements")
    args = parser.parse_args(argv)
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as exc:
        sys.exit(f"bench.gpu_bench needs CuPy and a GPU: {type(exc).__name__}: {exc}")
    workdir = Path(args.workdir)
    data, _, _ = h.ensure_dataset(workdir, args.rows, args.files)
    model, _ = h.ensure_model(workdir, data)
    payload: dict[str, Any] = {"started": h.now_utc(), "machine": h.machine(workdir), "device": device_info(cp),
                               "parameters": vars(args)}
    transfer = transfer_bandwidth(cp, int(args.transfer_gib * GIB))
    payload["transfer"] = transfer
    payload["scaling_kernel"] = scaling_kernel(cp, args.kernel_rows, 21, transfer["d2d_copy_gb_s"])
    payload["scorers"] = scorers(cp, args.kernel_rows, model)
    if not args.skip_e2e:
        payload["end_to_end"] = end_to_end(args, data, model)
    slug = re.sub(r"[^a-z0-9]+", "-", payload["device"]["name"].lower()).strip("-")
    stamped, latest = h.write_results(Path(args.out), f"gpu-{slug}", args.rows, payload)
    print(f"device {payload['device']['name']}: H2D pageable {transfer['h2d_pageable_gb_s']:.1f} GB/s, "
          f"pinned {transfer['h2d_pinned_gb_s']:.1f} GB/s, D2D copy {transfer['d2d_copy_gb_s']:.0f} GB/s")
    for dt in ("float32", "float64"):
        k = payload["scaling_kernel"][dt]
        print(f"scaling kernel {dt}: {k['gb_s']:.0f} GB/s = {k['share_of_d2d_copy']:.0%} of the copy")
    s = payload["scorers"]
    print(f"scorer: fused kernel {s['fused_kernel_rows_s']:,.0f} rows/s, CuPy ops {s['cupy_ops_rows_s']:,.0f} rows/s")
    if "end_to_end" in payload:
        e = payload["end_to_end"]
        for name in ("io_floor", "engine_cpu", "engine_gpu"):
            print(f"{name:<11} {e[name]['rows_per_s']:>14,.0f} rows/s  {e[name]['wall_s']:7.2f} s")
        print(f"GPU/CPU {e['targets']['gpu_over_cpu']:.2f}x; GPU time / floor time "
              f"{e['targets']['gpu_time_over_floor_time']:.2f}")
    print(f"wrote {stamped} and {latest}")
    return payload


if __name__ == "__main__":
    main()
