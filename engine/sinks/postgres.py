"""A PostgreSQL table as a score output: ``--output postgresql://HOST:PORT/DB?table=SCHEMA.NAME``.

How a run publishes (readers see last night's table or tonight's, never a mix):

1. Before any work: the URI is checked (no password in it: credentials come from the
   environment, ``PGPASSWORD`` / ``PGUSER`` / ``PGPASSFILE`` or ``~/.pgpass``, as libpq
   reads them) and the target is checked against the refusal rules below.
2. The scores are computed by the ordinary pipeline into a private local staging
   directory (the engine's own Parquet commit protocol, under ``$TMPDIR``).
3. One transaction: a new staging table is created and filled with ADBC's Postgres
   driver (Arrow batches, binary ``COPY``); under an advisory lock per target the
   ownership is re-checked; then either the staging table is renamed into place (the
   previous table dropped, its grants copied) or, with ``--upsert``, its rows are merged
   with ``INSERT ... ON CONFLICT (id) DO UPDATE``; the companion row is written; commit.
   A kill at any moment before the commit (``kill -9`` included) is a rollback: the
   server drops the uncommitted staging table with the session, and the previous table
   is untouched.

Ownership, as for files ("create, don't adopt"): the companion table
``SCHEMA._engine_manifest`` has one row per table the engine made, with the table's OID
(its identity, not its name), the run id, the model's hash and the run's ``_manifest``
as JSON. A table with that name but no row, or another OID, was not made by the engine
and is never replaced or written, ``--overwrite`` or not (exit 6). An engine table is
replaced only with ``--overwrite`` and merged only with ``--upsert``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from engine.errors import BadRowsError, DriftAlert, OutputError, UsageError

SCHEMES = ("postgresql", "postgres")
COMPANION = "_engine_manifest"
_COMPANION_COLUMNS = ("table_name", "table_oid", "run_id", "model_hash", "rows", "mode", "loaded_at", "manifest")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def is_postgres_uri(text: object) -> bool:
    return isinstance(text, str) and text.split("://", 1)[0].lower() in SCHEMES and "://" in text


@dataclass(frozen=True)
class PgTarget:
    """A parsed ``--output``: the libpq URI to connect with (no ``table``), the schema and the table."""

    conninfo: str
    schema: str
    table: str
    shown: str  # how messages and the manifest show it: no credentials, no options

    @property
    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.table)}"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_target(text: str, flag: str = "--output") -> PgTarget:
    """``postgresql://[USER@]HOST[:PORT]/DB?table=SCHEMA.NAME`` checked; :class:`UsageError` (exit 2) otherwise."""
    parts = urllib.parse.urlsplit(text)
    if parts.password is not None:
        # Never echo it: the message names neither the URI nor the password.
        raise UsageError(f"{flag}: a postgresql:// URI with a password is not accepted (it would be kept in shell "
                         "history, process lists and logs); set PGPASSWORD or use ~/.pgpass / PGPASSFILE")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    tables = query.pop("table", [])
    if len(tables) != 1 or not tables[0]:
        raise UsageError(f"{flag}: name the table with ?table=SCHEMA.NAME (or ?table=NAME for the public schema), "
                         f"e.g. postgresql://{parts.hostname or 'HOST'}/{parts.path.lstrip('/') or 'DB'}"
                         "?table=crm.customer_scores")
    schema, _, table = tables[0].rpartition(".")
    schema = schema or "public"
    for what, name in (("schema", schema), ("table", table)):
        if not _IDENT.match(name):
            raise UsageError(f"{flag}: the {what} name {name!r} is not a plain identifier (letters, digits, _ and $, "
                             "starting with a letter or _, at most 63 characters)")
    if table.startswith("_engine"):
        raise UsageError(f"{flag}: table names starting with _engine are the engine's own")
    if not parts.path.strip("/"):
        raise UsageError(f"{flag}: name the database: postgresql://HOST/DB?table=SCHEMA.NAME")
    rest = urllib.parse.urlencode([(k, v) for k, vs in query.items() for v in vs])
    conninfo = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, rest, ""))
    host = parts.hostname or "localhost"
    shown = f"postgresql://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}?table={schema}.{table}"
    return PgTarget(conninfo, schema, table, shown)


def _driver() -> Any:
    try:
        import adbc_driver_postgresql.dbapi as dbapi
    except ImportError:
        raise UsageError("a postgresql:// output needs ADBC's Postgres driver: "
                         "pip install 'customer-scoring-engine[postgres]'") from None
    return dbapi


@contextmanager
def connect(target: PgTarget) -> Iterator[Any]:
    """A DB-API connection (autocommit off); connection failures are exit 6 naming the shown URI only."""
    dbapi = _driver()
    try:
        conn = dbapi.connect(target.conninfo)
    except Exception as exc:  # noqa: BLE001 - the driver's errors are not one type
        raise OutputError(f"--output {target.shown}: cannot connect ({_reason(exc)}); check the server, and the "
                          "credentials in PGUSER / PGPASSWORD or ~/.pgpass") from None
    try:
        yield conn
    finally:
        with suppress(Exception):  # closing a broken connection
            conn.close()


def _reason(exc: BaseException) -> str:
    """The server's words without the statement (libpq's message quotes it whole before the cause)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"Failed to execute query '.*?'(: |\)?)", "", text, flags=re.S)
    return re.sub(r"password=\S+", "password=***", text)[:300]


def _fetch(cur: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cur.execute(sql, params)
    return list(cur.fetchall())


@dataclass(frozen=True)
class TargetState:
    exists: bool
    owned: bool
    oid: int | None
    run_id: str | None = None  # the companion row's, for an engine table
    rows: int = 0


def inspect_target(cur: Any, target: PgTarget) -> TargetState:
    """Whether the table exists, and whether the companion table proves the engine made it."""
    if not _fetch(cur, "SELECT 1 FROM pg_namespace WHERE nspname = $1", (target.schema,)):
        raise OutputError(f"--output {target.shown}: schema {target.schema!r} does not exist; create it first "
                          "(the engine creates tables, never schemas)")
    rows = _fetch(cur, "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = $1 AND c.relname = $2", (target.schema, target.table))
    if not rows:
        return TargetState(False, False, None)
    oid = int(rows[0][0])
    if not _companion_exists(cur, target):
        return TargetState(True, False, oid)
    owned = _fetch(cur, f"SELECT 1 FROM {quote(target.schema)}.{COMPANION} WHERE table_name = $1 AND "
                        "table_oid = $2", (target.table, oid))
    return TargetState(True, bool(owned), oid)


def _companion_exists(cur: Any, target: PgTarget) -> bool:
    cols = [r[0] for r in _fetch(
        cur, "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n "
             "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT "
             "a.attisdropped ORDER BY a.attnum", (target.schema, COMPANION))]
    if not cols:
        return False
    if tuple(cols) != _COMPANION_COLUMNS:
        raise OutputError(f"--output {target.shown}: {target.schema}.{COMPANION} exists but is not the engine's "
                          "companion table (other columns); the engine does not adopt it: rename it")
    return True


def check_target(target: PgTarget, *, overwrite: bool, upsert: bool,
                 state: TargetState | None = None) -> TargetState:
    """The refusal rules (exit 6); with ``state`` None the server is asked. Returns the state."""
    if state is None:
        with connect(target) as conn:
            cur = conn.cursor()
            state = inspect_target(cur, target)
            if state.owned:
                row = _fetch(cur, f"SELECT run_id, rows FROM {quote(target.schema)}.{COMPANION} WHERE table_name = $1",
                             (target.table,))
                state = TargetState(state.exists, state.owned, state.oid, row[0][0], int(row[0][1] or 0))
            conn.rollback()
    if state.exists and not state.owned:
        raise OutputError(f"--output {target.shown}: table {target.schema}.{target.table} exists and was not made "
                          f"by the engine (no matching row in {target.schema}.{COMPANION}); it is never replaced "
                          "or written, --overwrite or not: name another table")
    if state.exists and not (overwrite or upsert):
        raise OutputError(f"--output {target.shown}: the engine's table {target.schema}.{target.table} exists; "
                          "pass --overwrite to replace it or --upsert to merge tonight's scores into it")
    return state


def _dry_run(input: str, model: str, target: PgTarget, state: TargetState, *, overwrite: bool, upsert: bool,
             **options: Any) -> dict[str, Any]:
    """``--dry-run``: the ordinary plan (footers only) with the table's state as its output."""
    from engine.api import score_plan

    staging = tempfile.mkdtemp(prefix="engine-pg-")  # planned against, never written; removed at once
    try:
        plan = score_plan(input, model, os.path.join(staging, "scores"), **options).describe()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not state.exists:
        holds = "nothing (the table is created at publish)"
    else:
        holds = f"an engine table (run {state.run_id}, {state.rows:,} rows)"
        holds += "; tonight's rows merged into it by id (--upsert)" if upsert else ""
    plan["output"] = {"path": target.shown, "holds": holds, "replaced": state.exists and overwrite,
                      "staged_parts": 0}
    return plan


def _arrow_reader(scores_dir: str) -> Any:
    import pyarrow.dataset as ds

    return ds.dataset(scores_dir, format="parquet").scanner(batch_size=131_072).to_reader()


def load(target: PgTarget, scores_dir: str, manifest: dict[str, Any], *, id_column: str, overwrite: bool,
         upsert: bool, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Load a published Parquet score output into ``target`` in one transaction (see the module doc)."""
    run_id = str(manifest.get("run_id") or os.urandom(8).hex())
    stage = f"_engine_stage_{re.sub(r'[^A-Za-z0-9_]', '_', run_id)}"[:63]
    t0 = time.perf_counter()
    with connect(target) as conn:
        cur = conn.cursor()
        say(f"[postgres] loading into staging table {target.schema}.{stage} (binary COPY)")
        try:
            rows = cur.adbc_ingest(stage, _arrow_reader(scores_dir), mode="create", db_schema_name=target.schema)
        except Exception as exc:  # noqa: BLE001
            conn.rollback()
            raise OutputError(f"--output {target.shown}: loading the scores failed ({_reason(exc)})") from None
        t_loaded = time.perf_counter()
        qstage = f"{quote(target.schema)}.{quote(stage)}"
        try:
            # One writer per target at a time; ownership re-checked under the lock, just before the swap.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext($1))", (f"engine:{target.schema}.{target.table}",))
            cur.fetchall()
            cur.execute(f"CREATE TABLE IF NOT EXISTS {quote(target.schema)}.{COMPANION} (table_name text PRIMARY "
                        "KEY, table_oid bigint NOT NULL, run_id text NOT NULL, model_hash text, rows bigint, "
                        "mode text, loaded_at timestamptz NOT NULL DEFAULT now(), manifest jsonb)")
            state = inspect_target(cur, target)
            check_target(target, overwrite=overwrite, upsert=upsert, state=state)
            mode = "create"
            if upsert:
                cur.execute(f"ALTER TABLE {qstage} ADD PRIMARY KEY ({quote(id_column)})")
            if state.exists and upsert:
                mode = "upsert"
                # ON CONFLICT needs a unique index on the id: the engine's own table gets one (once).
                cur.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {quote((target.table + '_engine_id')[:63])} "
                            f"ON {target.qualified} ({quote(id_column)})")
                cols = [r[0] for r in _fetch(cur, "SELECT attname FROM pg_attribute WHERE attrelid = $1::oid AND "
                                                  "attnum > 0 AND NOT attisdropped ORDER BY attnum", (state.oid,))]
                sets = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in cols if c != id_column)
                names = ", ".join(quote(c) for c in cols)
                cur.execute(f"INSERT INTO {target.qualified} ({names}) SELECT {names} FROM {qstage} "
                            f"ON CONFLICT ({quote(id_column)}) DO UPDATE SET {sets}")
                cur.execute(f"DROP TABLE {qstage}")
                new_oid = state.oid
            else:
                if state.exists:
                    mode = "replace"
                    grants = _fetch(cur, "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
                                         "WHERE table_schema = $1 AND table_name = $2 AND grantee <> current_user",
                                    (target.schema, target.table))
                    cur.execute(f"DROP TABLE {target.qualified}")
                else:
                    grants = []
                cur.execute(f"ALTER TABLE {qstage} RENAME TO {quote(target.table)}")
                for grantee, privilege in grants:
                    who = "PUBLIC" if grantee == "PUBLIC" else quote(grantee)
                    cur.execute(f"GRANT {privilege} ON {target.qualified} TO {who}")
                new_oid = int(_fetch(cur, "SELECT $1::regclass::oid::bigint", (f"{target.qualified}",))[0][0])
            cur.execute(
                f"INSERT INTO {quote(target.schema)}.{COMPANION} AS m (table_name, table_oid, run_id, model_hash, "
                "rows, mode, manifest) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT (table_name) DO "
                "UPDATE SET table_oid = EXCLUDED.table_oid, run_id = EXCLUDED.run_id, model_hash = "
                "EXCLUDED.model_hash, rows = EXCLUDED.rows, mode = EXCLUDED.mode, loaded_at = now(), "
                "manifest = EXCLUDED.manifest",
                (target.table, new_oid, run_id, str((manifest.get("model") or {}).get("content_hash", "")),
                 int(rows), mode, json.dumps(manifest, default=str)))
            conn.commit()
        except OutputError:
            conn.rollback()
            raise
        except Exception as exc:  # noqa: BLE001
            conn.rollback()
            text = _reason(exc)
            if "views" in text.lower() or "depend" in text.lower():
                raise OutputError(f"--output {target.shown}: other objects (views) depend on the table, so it cannot "
                                  "be swapped; use --upsert to merge into it instead") from None
            if "duplicate key" in text.lower() or "could not create unique index" in text.lower() \
                    or "affect row a second time" in text.lower():
                raise BadRowsError(f"--output {target.shown} --upsert: the scores hold an id twice; --upsert needs "
                                   f"unique ids in {id_column!r} (nothing was changed)") from None
            raise OutputError(f"--output {target.shown}: publishing failed ({text}); nothing was changed") from None
    t_done = time.perf_counter()
    return {"table": f"{target.schema}.{target.table}", "rows": int(rows), "mode": mode,
            "copy_seconds": round(t_loaded - t0, 3), "swap_seconds": round(t_done - t_loaded, 3)}


def score_to_postgres(input: str, model: str, output: str, *, upsert: bool = False, overwrite: bool = False,
                      say: Callable[[str], None] | None = None, **options: Any) -> dict[str, Any]:
    """``engine score --output postgresql://...``: score into private local staging, then :func:`load`.

    Returns the run's manifest with a ``postgres`` entry (table, rows, mode, seconds).
    """
    from engine.api import score_plan
    from engine.jobs.score import execute

    if options.get("resume"):
        raise UsageError("--resume is not supported with a postgresql:// output: a failed load changes nothing "
                         "in the database, so run again without --resume")
    if upsert and overwrite:
        raise UsageError("--upsert merges into the table and --overwrite replaces it: give one of them")
    if not is_postgres_uri(output):
        raise UsageError("--upsert is for a postgresql:// --output (a Parquet output is replaced whole)")
    target = parse_target(output)
    state = check_target(target, overwrite=overwrite, upsert=upsert)  # before any work
    if options.get("dry_run"):
        return {"dry_run": _dry_run(input, model, target, state, overwrite=overwrite, upsert=upsert, **options)}
    quiet = say or (lambda _m: None)
    staging = tempfile.mkdtemp(prefix="engine-pg-")
    try:
        plan = score_plan(input, model, os.path.join(staging, "scores"), **options)
        alert: DriftAlert | None = None
        try:
            manifest = execute(plan, say=say or (lambda _m: None))
        except DriftAlert as exc:  # the scores are complete: publish them, then report the alert (exit 9)
            alert, manifest = exc, exc.manifest  # type: ignore[attr-defined]
        manifest["output"] = dict(manifest.get("output") or {}) | {"path": target.shown}
        result = load(target, os.path.join(staging, "scores"), manifest, id_column=plan.id_column,
                      overwrite=overwrite, upsert=upsert, say=quiet)
        if alert is not None:
            manifest["postgres"] = result
            raise alert
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest["postgres"] = result
    return manifest
