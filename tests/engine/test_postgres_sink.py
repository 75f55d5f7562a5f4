"""`engine score --output postgresql://...` against a real PostgreSQL server started here.

The server (Debian's PostgreSQL: `pg_config --bindir`) is initialised once per test session
in a temporary directory on a free port of 127.0.0.1, with password authentication; as
root, initdb and the server run as the ``postgres`` user. Skipped, with the reason, only
when no server can be started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

dbapi = pytest.importorskip("adbc_driver_postgresql.dbapi",
                            reason="ADBC's Postgres driver is not installed: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._postgres import PASSWORD, ServerUnavailable, start  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> Iterator[dict[str, str]]:
    """A PostgreSQL server for this session: {"url": postgresql://127.0.0.1:PORT/engine, "env": ..., "admin": ...}."""
    try:
        server = start()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield {"url": server.url, "env": server.env, "admin": server.admin}
    finally:
        server.stop()


def _sql(pg: dict[str, str], sql: str, commit: bool = True) -> list[tuple]:
    with dbapi.connect(pg["admin"]) as conn:
        cur = conn.cursor()
        cur.execute(sql)
        rows = cur.fetchall() if cur.description else []
        if commit:
            conn.commit()
        return rows


@pytest.fixture
def pg_env(pg_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in pg_server["env"].items():
        monkeypatch.setenv(key, value)
    return pg_server


def test_create_refuse_overwrite_upsert_and_foreign_tables(pg_env, cli, model_dir: Path,  # noqa: ANN001
                                                          dataset_dir: Path) -> None:
    _sql(pg_env, "CREATE SCHEMA crm")
    url = pg_env["url"] + "?table=crm.scores"

    def score(*flags: str):  # noqa: ANN202
        return cli("score", "--input", dataset_dir, "--model", model_dir, "--output", url, "--backend", "cpu",
                   "--quiet", *flags)

    result = score()
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    rows = _sql(pg_env, "SELECT count(*), count(DISTINCT customer_id), min(propensity), max(propensity) "
                        "FROM crm.scores")[0]
    assert rows[0] == rows[1] == 6_000 and 0.0 <= rows[2] <= rows[3] <= 1.0
    cols = _sql(pg_env, "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema='crm' "
                        "AND table_name='scores' ORDER BY ordinal_position")
    assert cols[:4] == [("customer_id", "bigint"), ("segment", "integer"), ("segment_distance", "real"),
                        ("propensity", "real")]
    companion = _sql(pg_env, "SELECT table_name, rows, mode, manifest->'totals'->>'rows_out' "
                             "FROM crm._engine_manifest")
    assert companion == [("scores", 6_000, "create", "6000")]

    # An engine table is not replaced without a flag; --overwrite swaps it (new OID); grants survive.
    _sql(pg_env, "CREATE ROLE crm_reader")
    _sql(pg_env, "GRANT SELECT ON crm.scores TO crm_reader")
    oid_before = _sql(pg_env, "SELECT 'crm.scores'::regclass::oid::bigint")[0][0]
    assert score().exit_code == 6
    result = score("--dry-run", "--overwrite")  # the plan, with the table's state; nothing changes
    assert result.exit_code == 0, result.output
    assert "crm.scores: holds an engine table (run " in result.output and "6,000 rows" in result.output
    assert "replaced atomically" in result.output
    assert score("--dry-run").exit_code == 6
    assert _sql(pg_env, "SELECT 'crm.scores'::regclass::oid::bigint")[0][0] == oid_before
    result = score("--overwrite")
    assert result.exit_code == 0, result.output
    assert _sql(pg_env, "SELECT 'crm.scores'::regclass::oid::bigint")[0][0] != oid_before
    assert _sql(pg_env, "SELECT has_table_privilege('crm_reader', 'crm.scores', 'SELECT')")[0][0] is True
    assert _sql(pg_env, "SELECT count(*) FROM crm.scores")[0][0] == 6_000
    assert not _sql(pg_env, "SELECT relname FROM pg_class WHERE relname LIKE '\\_engine\\_stage%'")

    # --upsert merges: rows scored again are updated in place, others kept.
    _sql(pg_env, "UPDATE crm.scores SET propensity = -1 WHERE customer_id < 100")
    _sql(pg_env, "INSERT INTO crm.scores (customer_id, segment, segment_distance, propensity) "
                 "VALUES (99999999, 0, 0, 0.5)")
    result = score("--upsert")
    assert result.exit_code == 0, result.output
    assert _sql(pg_env, "SELECT count(*) FROM crm.scores WHERE propensity < 0")[0][0] == 0
    assert _sql(pg_env, "SELECT count(*) FROM crm.scores")[0][0] == 6_001
    assert _sql(pg_env, "SELECT mode FROM crm._engine_manifest")[0][0] == "upsert"

    # A table the engine did not make is never touched, --overwrite or not; nor one re-created under our name.
    _sql(pg_env, "CREATE TABLE crm.theirs (customer_id bigint, note text)")
    _sql(pg_env, "INSERT INTO crm.theirs VALUES (1, 'keep me')")
    for flags in ((), ("--overwrite",), ("--upsert",), ("--dry-run", "--overwrite")):
        result = cli("score", "--input", dataset_dir, "--model", model_dir, "--output",
                     pg_env["url"] + "?table=crm.theirs", "--backend", "cpu", "--quiet", *flags)
        assert result.exit_code == 6, result.output
        assert "not made by the engine" in result.output
    assert _sql(pg_env, "SELECT * FROM crm.theirs") == [(1, "keep me")]
    _sql(pg_env, "DROP TABLE crm.scores")
    _sql(pg_env, "CREATE TABLE crm.scores (customer_id bigint)")
    assert score("--overwrite").exit_code == 6
    assert _sql(pg_env, "SELECT count(*) FROM crm.scores")[0][0] == 0


def test_uri_rules_never_echo_credentials(pg_env, cli, model_dir: Path, dataset_dir: Path,  # noqa: ANN001
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = pg_env["url"]
    with_password = base.replace("127.0.0.1", f"postgres:{PASSWORD}@127.0.0.1") + "?table=public.s"
    for url, code in ((with_password, 2), (base, 2), (base + "?table=a.b.c-d", 2)):
        result = cli("score", "--input", dataset_dir, "--model", model_dir, "--output", url, "--backend", "cpu",
                     "--quiet")
        assert result.exit_code == code, result.output
        assert PASSWORD not in result.output
    # A wrong password: exit 6 before any scoring, naming the server, not the secret.
    monkeypatch.setenv("PGPASSWORD", "wrong-" + PASSWORD)
    result = cli("score", "--input", dataset_dir, "--model", model_dir, "--output", base + "?table=public.s",
                 "--backend", "cpu", "--quiet")
    assert result.exit_code == 6 and "cannot connect" in result.output and PASSWORD not in result.output
    # ~/.pgpass-style credentials through PGPASSFILE.
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    port = base.rsplit(":", 1)[1].split("/")[0]
    pgpass.write_text(f"127.0.0.1:{port}:engine:postgres:{PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    result = cli("score", "--input", dataset_dir, "--model", model_dir, "--output", base + "?table=public.s",
                 "--backend", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert _sql(pg_env, "SELECT count(*) FROM public.s")[0][0] == 6_000


def test_kill_9_mid_load_leaves_last_nights_table(pg_env, model_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from engine.jobs.generate import generate

    data = tmp_path / "big"
    generate(400_000, 2, data, seed=11)
    url = pg_env["url"] + "?table=public.nightly"
    env = {**os.environ, **pg_env["env"], "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "engine", "score", "--input", str(data), "--model", str(model_dir),
           "--output", url, "--backend", "cpu", "--progress", "log"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _sql(pg_env, "SELECT count(*), sum(propensity::float8), max(run_id) FROM public.nightly, "
                          "public._engine_manifest WHERE table_name = 'nightly'")[0]
    assert before[0] == 400_000
    state = "SELECT count(*), sum(propensity::float8), max(run_id) FROM public.nightly, public._engine_manifest " \
            "WHERE table_name = 'nightly'"
    watcher = dbapi.connect(pg_env["admin"], autocommit=True)
    cur = watcher.cursor()

    def kill_when(sql: str) -> tuple:  # noqa: ANN202
        """Start a run, SIGKILL it the moment ``sql`` finds its session in that state; what a reader saw then."""
        proc = subprocess.Popen([*cmd, "--overwrite"], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            cur.execute(sql)
            if cur.fetchall()[0][0]:
                break
            assert proc.poll() is None, "the run finished before it could be killed in that state"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        cur.execute(state)
        seen = cur.fetchall()[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        return seen

    # 1. Killed while COPY streams into the staging table; a reader meanwhile sees last night's table.
    seen = kill_when("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query ILIKE 'COPY%'")
    assert seen == before
    # 2. Killed after COPY, before the commit: the swap waits for the target's lock, held here.
    holder = dbapi.connect(pg_env["admin"])
    hcur = holder.cursor()
    hcur.execute("SELECT pg_advisory_xact_lock(hashtext('engine:public.nightly'))")
    hcur.fetchall()
    seen = kill_when("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                     "AND wait_event = 'advisory'")
    holder.rollback()
    holder.close()
    assert seen == before
    time.sleep(0.5)  # the server notices the dead sessions and rolls them back
    cur.execute(state)
    assert cur.fetchall()[0] == before
    cur.execute("SELECT relname FROM pg_class WHERE relname LIKE '\\_engine\\_stage%'")
    assert not cur.fetchall()
    watcher.close()
    # The next night's run publishes normally.
    again = subprocess.run([*cmd, "--overwrite"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _sql(pg_env, "SELECT max(run_id) FROM public._engine_manifest WHERE table_name='nightly'")[0][0] != before[2]


def test_library_call_loads_the_same_scores_as_the_parquet_output(pg_env, score_cli, scores_of, model_dir: Path,  # noqa: ANN001
                                                                  dataset_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    import engine

    summary = engine.score(str(dataset_dir), str(model_dir), pg_env["url"] + "?table=public.api_scores",
                           backend="cpu", keep=["region"])
    assert summary.rows_out == 6_000 and summary.output.startswith("postgresql://127.0.0.1")
    assert PASSWORD not in summary.output
    with dbapi.connect(pg_env["admin"]) as conn:
        cur = conn.cursor()
        cur.execute("SELECT * FROM public.api_scores ORDER BY customer_id")
        loaded = cur.fetch_arrow_table().to_pandas()
    assert score_cli(dataset_dir, model_dir, tmp_path / "s", "--keep", "region").exit_code == 0
    ref = scores_of(tmp_path / "s")
    assert list(loaded.columns) == list(ref.columns)
    assert loaded["customer_id"].tolist() == ref["customer_id"].tolist()
    assert loaded["segment"].tolist() == ref["segment"].tolist() and loaded["region"].tolist() == ref["region"].tolist()
    assert np.array_equal(loaded["propensity"].to_numpy(), ref["propensity"].to_numpy())
    assert np.array_equal(loaded["segment_distance"].to_numpy(), ref["segment_distance"].to_numpy())
