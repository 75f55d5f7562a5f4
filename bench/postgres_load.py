"""Loading the scores into PostgreSQL beside writing the same rows as Parquet.

::

    python -m bench.postgres_load --rows 2000000
    python -m bench.postgres_load --rows 200000 --repeat 1 --out /tmp/pg-smoke     # smoke

Scores a generated dataset once with ``engine score`` (local Parquet output), reads the
scores into memory, then, on the same machine and in the same process, ``--repeat``
times each:

* ``parquet_write``: ``pyarrow.parquet.write_table`` of the scores (one file, the
  engine's default compression), fsynced;
* ``pg_ingest``: ADBC's binary COPY of the in-memory scores into a new table, committed;
* ``engine_score_parquet`` / ``engine_score_postgres``: ``engine score`` end to end in a
  fresh process, to a Parquet directory and to a table (scoring, local staging, load, swap);
* ``pg_sink``: the engine's sink (:func:`engine.sinks.postgres.load`): read the Parquet
  output, COPY into a staging table, swap it for the previous table, commit, as
  ``engine score --output postgresql://...`` does after scoring.

The server is a throwaway PostgreSQL started here (bench/_postgres.py) with fsync on,
on the same machine (its CPU time competes with the client's). The load average is
recorded before every measurement. JSON: ``postgres-latest.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _harness as h

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "engine-bench")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    import adbc_driver_postgresql.dbapi as dbapi
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from bench._postgres import start
    from engine.api import score
    from engine.sinks.postgres import load, parse_target

    machine = h.machine(args.workdir)
    data, _files, _ = h.ensure_dataset(args.workdir, args.rows, args.files)
    model, _ = h.ensure_model(args.workdir, data)
    scores = args.workdir / f"pg-scores-{args.rows}"
    h.remove(scores)
    score(str(data), str(model), str(scores), backend="cpu", progress="quiet")
    table = ds.dataset(str(scores), format="parquet").to_table()
    manifest: dict[str, Any] = {"run_id": "bench", "model": {"content_hash": "bench"}}
    server = start(fsync=True)
    os.environ.update(server.env)
    runs: dict[str, list[dict[str, Any]]] = {"parquet_write": [], "pg_ingest": [], "pg_sink": []}
    try:
        target = parse_target(server.url + "?table=public.scores")
        for i in range(args.repeat):
            load_avg = os.getloadavg()
            path = args.workdir / "pg-bench-write.parquet"
            t0 = time.perf_counter()
            pq.write_table(table, path)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            secs = time.perf_counter() - t0
            runs["parquet_write"].append({"seconds": secs, "rows_per_s": table.num_rows / secs,
                                          "bytes": path.stat().st_size, "loadavg": load_avg})
            path.unlink()

            load_avg = os.getloadavg()
            with dbapi.connect(server.admin) as conn:
                cur = conn.cursor()
                t0 = time.perf_counter()
                cur.adbc_ingest(f"plain_{i}", table, mode="create")
                conn.commit()
                secs = time.perf_counter() - t0
                cur.execute(f"SELECT pg_total_relation_size('plain_{i}')")
                size = cur.fetchall()[0][0]
                cur.execute(f"DROP TABLE plain_{i}")
                conn.commit()
            runs["pg_ingest"].append({"seconds": secs, "rows_per_s": table.num_rows / secs, "table_bytes": size,
                                      "loadavg": load_avg})

            load_avg = os.getloadavg()
            manifest["run_id"] = f"bench-{i}"
            t0 = time.perf_counter()
            result = load(target, str(scores), manifest, id_column="customer_id", overwrite=True, upsert=False)
            secs = time.perf_counter() - t0
            runs["pg_sink"].append({"seconds": secs, "rows_per_s": table.num_rows / secs, "loadavg": load_avg}
                                   | result)
            # End to end, each in a fresh process: engine score to Parquet, and to the table.
            for name, out in (("engine_score_parquet", str(args.workdir / "pg-e2e-scores")),
                              ("engine_score_postgres", server.url + "?table=public.e2e")):
                argv = [sys.executable, "-m", "engine", "score", "--input", str(data), "--model", str(model),
                        "--output", out, "--backend", "cpu", "--quiet", "--overwrite"]
                h.settle()
                load_avg = os.getloadavg()
                t0 = time.perf_counter()
                proc = subprocess.run(argv, env=h.clean_env() | server.env | {"PYTHONPATH": str(REPO)},
                                      capture_output=True, text=True)
                secs = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed: {proc.stderr[-2000:]}")
                runs.setdefault(name, []).append({"seconds": secs, "rows_per_s": table.num_rows / secs,
                                                  "loadavg": load_avg})
            h.remove(args.workdir / "pg-e2e-scores")
            print(f"run {i + 1}: parquet {runs['parquet_write'][-1]['rows_per_s']:,.0f} rows/s, "
                  f"COPY {runs['pg_ingest'][-1]['rows_per_s']:,.0f} rows/s, "
                  f"sink {runs['pg_sink'][-1]['rows_per_s']:,.0f} rows/s; engine score to Parquet "
                  f"{runs['engine_score_parquet'][-1]['seconds']:.1f}s, to Postgres "
                  f"{runs['engine_score_postgres'][-1]['seconds']:.1f}s (load {load_avg[0]:.2f})", flush=True)
    finally:
        server.stop()
        h.remove(scores)

    def best(name: str) -> float:
        return max(r["rows_per_s"] for r in runs[name])

    payload = {
        "benchmark": "postgres_load",
        "when": h.now_utc(),
        "rows": table.num_rows,
        "columns": table.column_names,
        "note": "2-core machine shared with other engineers' jobs: see loadavg per run; server on the same host, "
                "fsync on",
        "machine": machine,
        "runs": runs,
        "best_rows_per_s": {k: best(k) for k in runs},
        "pg_sink_vs_parquet_write": best("pg_sink") / best("parquet_write"),
        "engine_score_postgres_vs_parquet": best("engine_score_postgres") / best("engine_score_parquet"),
        "loadavg_at_end": os.getloadavg(),
    }
    stamped, _ = h.write_results(args.out, "postgres", table.num_rows, payload)
    print(f"wrote {stamped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
