"""The output commit protocol: stage, check, publish in one rename, ``_SUCCESS`` last.

Modelled on the Hadoop/Spark output committers. For an output ``DIR``:

* ``.DIR.lock`` (beside ``DIR``) is held with ``flock`` for the whole run, so a second
  run on the same output fails at once; the kernel drops the lock when a run dies, so
  a crash never leaves it stuck.
* ``.DIR.staging/`` receives the part files (each written to a temporary name and
  renamed, so a retried task rewrites the same part), ``_rejected/``, and per-part
  sidecars in ``_parts/`` that let ``--resume`` reuse finished parts.
* Publishing moves the sidecars aside to ``.DIR.parts/`` (so a run killed while
  publishing can still be resumed), writes ``_manifest.json`` then ``_SUCCESS`` into
  the staging directory and swaps it with ``DIR`` atomically
  (``renameat2(RENAME_EXCHANGE)`` on Linux; two renames with crash recovery
  elsewhere). Readers see the old output or the new one, never a mixture.

Test hooks (for tests only; unset in production, where they cost one environment
lookup): ``ENGINE_TEST_PAUSE_BEFORE_SWAP=SECONDS`` sleeps right before the swap and
``ENGINE_TEST_PAUSE_AFTER_PART=SECONDS`` after each part is committed to staging, so a
test can kill a run inside those windows deterministically.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from engine.errors import OutputError
from engine.io.guard import check_replaceable, output_errors, read_json_marker

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
REJECTED = "_rejected"
# engine.report.SCORE_REPORT, named here so the committer does not import the report package.
SCORE_REPORT_NAME = "_report.html"
PARTS_META = "_parts"
RUN_KEY_METADATA = b"engine.run_key"
TEST_PAUSE_BEFORE_SWAP = "ENGINE_TEST_PAUSE_BEFORE_SWAP"
TEST_PAUSE_AFTER_PART = "ENGINE_TEST_PAUSE_AFTER_PART"


def pause_for_tests(variable: str) -> None:
    """Test hook: sleep for ``$variable`` seconds when it is set (see the module docstring)."""
    seconds = os.environ.get(variable)
    if seconds:
        time.sleep(float(seconds))


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False where unsupported."""
    libc = _libc()
    fn = getattr(libc, "renameat2", None) if libc is not None else None
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync, then rename it into place.

    Only ever used on the output side: an ``OSError`` is an :class:`OutputError`.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with output_errors(path, "write"):
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def swap_into_place(staged: Path, target: Path) -> None:
    """Put the complete directory ``staged`` at ``target``, replacing what is there atomically.

    ``renameat2(RENAME_EXCHANGE)`` where the kernel has it, so ``target`` is never
    missing; elsewhere two renames. The previous directory is deleted afterwards.
    """
    with output_errors(target, "replace"):
        if target.exists():
            if exchange(staged, target):
                shutil.rmtree(staged, ignore_errors=True)
                return
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            staged.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staged.rename(target)


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class OutputCommitter:
    """Owns one output directory for one run; see the module docstring for the protocol."""

    def __init__(self, output: str | os.PathLike[str], *, overwrite: bool = False,
                 resume: bool = False, shown: str | os.PathLike[str] | None = None) -> None:
        # Symlinks resolved once: lock, staging and swap act on the real directory (a
        # run on a link and one on its target share one lock), and a link stays a link.
        # ``shown`` is the path as the user gave it, for messages.
        self.shown = os.fspath(shown if shown is not None else output)
        self.output = Path(os.path.realpath(output))
        self.overwrite = overwrite
        self.resume = resume
        parent, name = self.output.parent, self.output.name
        self.staging = parent / f".{name}.staging"
        self.lock_path = parent / f".{name}.lock"
        self._old = parent / f".{name}.old"
        # Sidecars of a staging being published, kept until the swap is done.
        self.parts_aside = parent / f".{name}.parts"
        self._lock_fd: int | None = None

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> OutputCommitter:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the run lock, recover an interrupted publish, refuse an existing output."""
        import fcntl

        with output_errors(self.output.parent, "create the parent directory"):
            self.output.parent.mkdir(parents=True, exist_ok=True)
        with output_errors(self.lock_path, "create the run lock"):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"another engine run (pid {holder}) is writing {self.output} right now "
                f"(lock {self.lock_path}); wait for it to finish or stop it"
            ) from None
        self._lock_fd = fd
        try:
            with output_errors(self.lock_path, "write the run lock"):
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            with output_errors(self.output, "recover an interrupted publish of"):
                self._recover()
            self._check_existing()
        except BaseException:
            # __exit__ does not run when __enter__ fails: free the lock here, or a caller
            # in the same process (the library, a test) could never take it again.
            self.release()
            raise

    def inspect(self) -> dict[str, Any]:
        """Read-only: refuse what :meth:`acquire` would refuse, and say what a run would replace.

        Creates nothing (no parent directory, no lock file, no staging): ``--dry-run`` uses
        it. Returns the output's state and the staged parts an interrupted run left.
        """
        import fcntl

        if self.lock_path.exists():
            try:
                fd = os.open(self.lock_path, os.O_RDONLY)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                    raise OutputError(
                        f"another engine run (pid {holder}) is writing {self.output} right now "
                        f"(lock {self.lock_path}); wait for it to finish or stop it"
                    ) from None
                finally:
                    os.close(fd)
        out = self.output
        restorable = self._old.exists() and not out.exists()
        if not restorable:
            self._check_existing()
        state: dict[str, Any] = {"path": str(out), "exists": out.exists() or restorable}
        if restorable:
            state["holds"] = f"an output left at {self._old} by an interrupted publish (restored first)"
        elif not out.exists():
            state["holds"] = "nothing (it will be created at publish)"
        elif (out / SUCCESS).exists():
            try:
                previous = json.loads((out / MANIFEST).read_text())
            except (OSError, ValueError):
                previous = {}
            rows = previous.get("totals", {}).get("rows_out")
            state["holds"] = (f"a complete engine output (run {previous.get('run_id', '?')}"
                              + (f", {rows:,} rows" if isinstance(rows, int) else "") + ")")
            state["replaced"] = True
        else:
            state["holds"] = "a non-engine directory" if any(out.iterdir()) else "an empty directory"
            state["replaced"] = True
        sidecars = [d / PARTS_META if d == self.staging else d for d in (self.staging, self.parts_aside)]
        state["staged_parts"] = sum(len(list(d.glob("part-*.json"))) for d in sidecars if d.is_dir())
        return state

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _recover(self) -> None:
        # A publish that fell back to two renames and died between them left the
        # previous output at .old: put it back before anything else.
        if self._old.exists():
            if not self.output.exists():
                self._old.rename(self.output)
            else:
                shutil.rmtree(self._old, ignore_errors=True)

    def _check_existing(self) -> None:
        check_output_dir(self.output, overwrite=self.overwrite, shown=self.shown)

    # -- staging -----------------------------------------------------------------
    def prepare(self) -> None:
        """Create a fresh staging directory, or keep the old one with ``--resume``."""
        with output_errors(self.staging, "create the staging directory"):
            self._prepare()

    def _prepare(self) -> None:
        if not self.resume:
            for d in (self.staging, self.parts_aside):
                if d.exists():
                    shutil.rmtree(d)
        elif self.parts_aside.is_dir() and not (self.staging / PARTS_META).exists():
            # Killed while publishing: put the sidecars back. Each part file carries its
            # own run key, so sidecars that outlived a finished swap reuse nothing.
            self.staging.mkdir(parents=True, exist_ok=True)
            self.parts_aside.rename(self.staging / PARTS_META)
        for d in (self.staging, self.staging / REJECTED, self.staging / PARTS_META):
            d.mkdir(parents=True, exist_ok=True)

    def part_path(self, index: int) -> Path:
        return self.staging / part_name(index)

    def rejected_path(self, index: int) -> Path:
        return self.staging / REJECTED / part_name(index)

    def sidecar_path(self, index: int) -> Path:
        return self.staging / PARTS_META / f"part-{index:05d}.json"

    def finished_parts(self) -> dict[int, dict[str, Any]]:
        """Sidecars of parts already committed to staging (for ``--resume``)."""
        found = {}
        meta_dir = self.staging / PARTS_META
        if not meta_dir.is_dir():
            return found
        for sidecar in meta_dir.glob("part-*.json"):
            try:
                info = json.loads(sidecar.read_text())
                found[int(info["index"])] = info
            except (OSError, ValueError, KeyError):
                continue
        return found

    def discard(self) -> None:
        """Drop the staging directory (a failed run that cannot be resumed usefully)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def publish(self, manifest: dict[str, Any], keep_parts: set[str]) -> None:
        """Clean staging to exactly ``keep_parts``, write manifest then ``_SUCCESS``, swap in."""
        with output_errors(self.output, "publish to"):
            self._publish(manifest, keep_parts)

    def _publish(self, manifest: dict[str, Any], keep_parts: set[str]) -> None:
        staging = self.staging
        shutil.rmtree(self.parts_aside, ignore_errors=True)
        if (staging / PARTS_META).exists():
            (staging / PARTS_META).rename(self.parts_aside)
        for entry in list(staging.iterdir()):
            if entry.is_file() and entry.name not in keep_parts:
                entry.unlink()
        rejected = staging / REJECTED
        if rejected.is_dir():
            for entry in rejected.iterdir():
                # Temporary files, and rejected rows of parts this run does not publish.
                if entry.name.startswith(".") or entry.name not in keep_parts:
                    entry.unlink()
            if not any(rejected.iterdir()):
                rejected.rmdir()
        write_atomic(staging / MANIFEST, (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode())
        write_atomic(staging / SUCCESS, b"")
        _fsync_dir(staging)
        pause_for_tests(TEST_PAUSE_BEFORE_SWAP)
        if self.output.exists():
            if exchange(staging, self.output):
                shutil.rmtree(staging, ignore_errors=True)
            else:
                self.output.rename(self._old)
                staging.rename(self.output)
                shutil.rmtree(self._old, ignore_errors=True)
        else:
            staging.rename(self.output)
        _fsync_dir(self.output.parent)
        shutil.rmtree(self.parts_aside, ignore_errors=True)


def check_output_dir(real: Path, *, overwrite: bool, shown: str | os.PathLike[str] | None = None) -> bool:
    """Whether the score output ``real`` exists; refuse it unless empty, or ours and ``overwrite``."""
    return check_replaceable(real, flag="--output", what="an engine output", markers=(SUCCESS, MANIFEST),
                             overwrite=overwrite, shown=shown, held="a complete run", owned=owned_output_names)


def owned_output_names(real: Path) -> set[str] | None:
    """The names a published score output holds, from its manifest; None if it has none of ours."""
    manifest = read_json_marker(real / MANIFEST, ("run_id", "engine_version", "partitions"))
    if manifest is None or not isinstance(manifest["partitions"], list):
        return None
    names = {SUCCESS, MANIFEST, REJECTED, SCORE_REPORT_NAME}
    if isinstance(manifest.get("report"), str):
        names.add(manifest["report"])
    names.update(str(p["part"]) for p in manifest["partitions"] if isinstance(p, dict) and "part" in p)
    return names


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
