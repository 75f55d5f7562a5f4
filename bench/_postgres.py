"""A throwaway PostgreSQL server on 127.0.0.1 (tests/engine/test_postgres_sink.py and bench/postgres_load.py).

Debian's PostgreSQL binaries (``pg_config --bindir``); a temporary data directory; a free
port; password (SCRAM) authentication. ``initdb`` refuses to run as root, so as root the
server runs as the ``postgres`` user in a directory that user owns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "s3cret-never-shown"


class ServerUnavailable(RuntimeError):
    """No server could be started here (the message says why)."""


@dataclass
class PgServer:
    root: Path
    port: int
    bindir: Path
    prefix: list[str]

    @property
    def url(self) -> str:
        """The engine database, without credentials (they come from :attr:`env`)."""
        return f"postgresql://127.0.0.1:{self.port}/engine"

    @property
    def admin(self) -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/engine"

    @property
    def env(self) -> dict[str, str]:
        return {"PGUSER": "postgres", "PGPASSWORD": PASSWORD}

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    # Debian keeps the server's binaries off PATH, one folder per major version.
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                   if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(fsync: bool = False) -> PgServer:
    """Initialise and start a server with a database ``engine``; :class:`ServerUnavailable` if it cannot be."""
    bins = bindir()
    if bins is None:
        raise ServerUnavailable("PostgreSQL server binaries not found (pg_config --bindir; Debian: "
                                "apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="engine-pg-server-"))
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise ServerUnavailable("running as root and there is no 'postgres' user to run initdb as") from None
        os.chmod(root, 0o755)
        for p in (root, pwfile):
            os.chown(p, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    server = PgServer(root, port, bins, prefix)
    try:
        subprocess.run([*prefix, str(bins / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--pwfile",
                        str(pwfile), "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], check=True,
                       capture_output=True, timeout=120)
        opts = f"-p {port} -k {root} -h 127.0.0.1" + ("" if fsync else " -c fsync=off")
        subprocess.run([*prefix, str(bins / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w",
                        "-t", "60", "-o", opts, "start"], check=True, capture_output=True, timeout=120)
        import adbc_driver_postgresql.dbapi as dbapi

        conn = dbapi.connect(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres", autocommit=True)
        conn.cursor().execute("CREATE DATABASE engine")
        conn.close()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[-300:]
        server.stop()
        raise ServerUnavailable(f"cannot start PostgreSQL: {exc} {detail}") from None
    return server
