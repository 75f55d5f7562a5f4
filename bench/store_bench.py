"""``engine score`` with the data in an S3-compatible store against the same run on local disk.

::

    python -m bench.store_bench --rows 2000000
    python -m bench.store_bench --rows 200000 --files 2 --out /tmp/store-smoke     # smoke

Starts moto's standalone server on 127.0.0.1 (a separate process: ``python -m
moto.server``), uploads the generated dataset and the model to it, and runs, each in a
fresh process through the engine's own flags:

* ``local``: input, model and output on the local disk;
* ``store-in``: input and model from the store, output on the local disk;
* ``store-out``: input and model on disk, output to the store (staging, commit);
* ``store``: everything in the store.

Beside them, pyarrow alone reading the needed columns of every file from the store,
with and without pre-buffering (coalesced, concurrent range requests), shows what
pre-buffering buys on this server.

There is no target: moto keeps objects in its own Python process memory and serves them
over HTTP from one Python server, so the store paths measure the engine's protocol
overhead (listing, ranged reads, uploads, copies at commit) on this machine, not the
speed of a real store. JSON: ``store-latest.json`` (and a time-stamped copy) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import _harness as h

BUCKET = "engine-bench"
LAYOUTS = ("local", "store-in", "store-out", "store")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(log: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    port = _free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, env
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moto server did not start; see {log}") from None
            time.sleep(0.2)


def _upload(client: Any, local: Path, prefix: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(local)}")


def _read_floor(env: dict[str, str], files: list[str], columns: list[str], pre_buffer: bool) -> float:
    """Seconds for pyarrow alone to read ``columns`` of every object (threads: one per core)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq
    from pyarrow.fs import S3FileSystem

    fs = S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"].split("://")[1], scheme="http",
                      region="us-east-1")

    def read(path: str) -> int:
        with fs.open_input_file(path) as fh:
            return pq.ParquetFile(fh, pre_buffer=pre_buffer).read(columns=columns).num_rows

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as p:
        list(p.map(read, files))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.store_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--files", type=int, default=None, help="Default: one file per 500,000 rows.")
    h.add_common_args(p, "Runs per layout (interleaved); medians reported.")
    args = p.parse_args(argv)
    files = args.files or max(1, round(args.rows / 500_000))
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = h.now_utc()
    machine = h.machine(workdir)
    data, paths, data_created = h.ensure_dataset(workdir, args.rows, files, args.seed)
    model, model_created = h.ensure_model(workdir, data, args.sample_rows, args.seed)
    run_dir = workdir / f"run-store-{data.name}"
    h.remove(run_dir)
    (run_dir / "logs").mkdir(parents=True)
    h.warm_cache(paths)
    proc, env = _start_moto(run_dir / "moto.log")
    os.environ.update(env)
    try:
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        t0 = time.perf_counter()
        _upload(client, data, "data")
        _upload(client, model, "model")
        upload_s = time.perf_counter() - t0
        store = {"data": f"s3://{BUCKET}/data", "model": f"s3://{BUCKET}/model", "out": f"s3://{BUCKET}/out"}
        where = {
            "local": (str(data), str(model), str(run_dir / "out")),
            "store-in": (store["data"], store["model"], str(run_dir / "out")),
            "store-out": (str(data), str(model), store["out"]),
            "store": (store["data"], store["model"], store["out"]),
        }
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in LAYOUTS}
        for rep in range(args.repeat):
            for name in LAYOUTS:
                inp, mod, out = where[name]
                h.remove(run_dir / "out")
                argv = [*h.engine_argv(), "score", "--input", inp, "--model", mod, "--output", out,
                        "--backend", "cpu", "--quiet", "--overwrite"]
                print(f"[{rep + 1}/{args.repeat}] {name} ...", flush=True)
                m = h.run_measured(f"{name}-{rep}", argv, run_dir / "logs", env={**h.clean_env(), **env},
                                   timeout_s=args.timeout)
                h.require_ok(m)
                if out.startswith("s3://"):
                    manifest = json.loads(client.get_object(Bucket=BUCKET, Key="out/_manifest.json")["Body"].read())
                else:
                    manifest = json.loads((Path(out) / "_manifest.json").read_text())
                rows = manifest["totals"]["rows_in"]
                inner = manifest["seconds"]["total"]
                r = m.to_dict() | {"rows": rows, "inner_s": inner, "rows_per_s": rows / m.wall_s,
                                   "inner_rows_per_s": rows / inner, "engine_seconds": manifest["seconds"]}
                runs[name].append(r)
                print(f"    {m.wall_s:.2f}s wall ({rows / m.wall_s:,.0f} rows/s), {inner:.2f}s inner, "
                      f"peak RSS {r['peak_rss_mib']:,.0f} MiB", flush=True)
        import statistics

        result = {}
        for name, rs in runs.items():
            wall = statistics.median(r["wall_s"] for r in rs)
            inner = statistics.median(r["inner_s"] for r in rs)
            result[name] = {"rows": rs[0]["rows"], "wall_s": wall, "inner_s": inner,
                            "rows_per_s": rs[0]["rows"] / wall, "inner_rows_per_s": rs[0]["rows"] / inner,
                            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs), "runs": rs}
        for name in result:
            result[name]["vs_local_wall"] = result[name]["wall_s"] / result["local"]["wall_s"]
        objects = [f"{BUCKET}/data/{Path(q).relative_to(data)}" for q in paths]
        meta = json.loads((model / "model.json").read_text())
        columns = ["customer_id", *(f["name"] for f in meta["features"])]
        floor = {}
        for pre in (False, True):
            secs = statistics.median(_read_floor(env, objects, columns, pre) for _ in range(max(1, args.repeat)))
            floor["pre_buffer" if pre else "no_pre_buffer"] = {"seconds": secs, "rows_per_s": args.rows / secs}
    finally:
        proc.terminate()
        proc.wait(10)
    print()
    print(f"engine score over {args.rows:,} rows in {files} files; store = moto server on 127.0.0.1")
    for n, s in result.items():
        print(f"{n:<10} {s['wall_s']:>8.2f}s wall {s['rows_per_s']:>12,.0f} rows/s  x{s['vs_local_wall']:.2f} of local"
              f"  inner {s['inner_s']:.2f}s  peak RSS {s['peak_rss_mib']:,.0f} MiB")
    for k, v in floor.items():
        print(f"pyarrow read from the store, {k}: {v['seconds']:.2f}s ({v['rows_per_s']:,.0f} rows/s)")
    machine["loadavg_at_end"] = os.getloadavg()
    payload = {
        "benchmark": "store",
        "started_at": started,
        "finished_at": h.now_utc(),
        "machine": machine,
        "store": "moto 5.2 standalone server on 127.0.0.1 (objects in that Python process's memory): "
                 "not a real store, no target",
        "parameters": {"rows": args.rows, "files": files, "seed": args.seed, "repeat": args.repeat,
                       "upload_seconds": upload_s},
        "results": result,
        "pyarrow_read_floor": floor,
    }
    stamped, latest = h.write_results(args.out, "store", args.rows, payload)
    print(f"\nwrote {stamped} and {latest}")
    h.remove(run_dir)
    if not args.keep_data:
        h.discard_created(workdir, [data] if data_created else [], model, model_created)
    return payload


if __name__ == "__main__":
    main()
