"""The engine's own directory beside an output: lock, staging and replaced output, proven ours.

Every command that publishes a directory ``DIR`` works in one hidden directory beside it,
``.DIR.engine/``, and touches nothing else beside ``DIR``:

* It is **created, never adopted**: built under a fresh name (``mkdir`` fails on an existing
  name) with a proof file inside (``ENGINE-WORKSPACE.json``, written ``O_EXCL|O_NOFOLLOW``),
  then renamed into place with ``RENAME_NOREPLACE``. An existing ``.DIR.engine`` is used only
  when it is a real directory (opened ``O_NOFOLLOW``), owned by this user, whose proof file
  (a regular file, not a link) says it belongs to ``DIR``: contents, not names. Anything else
  is someone else's and the run stops with exit 6 naming it.
* The run lock is ``flock`` on the directory itself, so there is no lock file to follow or to
  truncate, and a crash never leaves it held.
* Staging (``staging/``), sidecars being published (``parts/``) and a previous output moved
  aside (``old/``) live inside it, so nothing piles up beside outputs; the directory is
  removed when a run leaves nothing in it worth resuming.
* The swap is ``renameat2(RENAME_EXCHANGE)`` on directory descriptors (the staging inside the
  directory we opened, ``DIR`` inside its parent), after the previous output's ownership is
  checked again, under the lock, just before it; afterwards only the names the engine wrote
  are deleted from the replaced output.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import stat
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from engine.errors import OutputError
from engine.io.guard import describe_os_error, output_errors

SUFFIX = ".engine"
PROOF = "ENGINE-WORKSPACE.json"
PROOF_KIND = "engine output workspace"
PID = "pid"
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_ATTEMPTS = 20


def workspace_path(target: Path) -> Path:
    """Where the engine's directory for the output ``target`` lies."""
    return target.parent / f".{target.name}{SUFFIX}"


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> bool:
    """Linux ``renameat2``; False where the kernel or filesystem lacks it, OSError on failure."""
    libc = _libc()
    fn = getattr(libc, "renameat2", None) if libc is not None else None
    if fn is None:
        return False
    rc = fn(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def _remove(dir_fd: int, name: str) -> None:
    """Delete ``name`` inside ``dir_fd`` without following a link (lstat first)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    # By descriptors, never following a link (shutil.rmtree takes dir_fd only from 3.11).
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        for entry in os.listdir(fd):
            _remove(fd, entry)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _is_dir(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return False


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False


class Workspace:
    """``.DIR.engine/`` for one run: see the module docstring. A context manager."""

    def __init__(self, target: Path, *, shown: str | os.PathLike[str] | None = None, flag: str = "--output") -> None:
        self.target = Path(target)
        self.path = workspace_path(self.target)
        self.shown = os.fspath(shown) if shown is not None else str(target)
        self.flag = flag
        self._fd: int | None = None
        self._parent_fd: int | None = None

    # -- lock and proof ------------------------------------------------------------
    def __enter__(self) -> Workspace:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def fd(self) -> int:
        assert self._fd is not None, "workspace not acquired"
        return self._fd

    def acquire(self) -> None:
        """Create (or prove and reuse) the directory and take its lock; OutputError otherwise."""
        with output_errors(self.target.parent, "create the parent directory"):
            self.target.parent.mkdir(parents=True, exist_ok=True)
        with output_errors(self.target.parent, "open the parent directory"):
            self._parent_fd = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(_ATTEMPTS):
                self._create()
                fd = self._open()
                if fd is None:
                    continue  # removed between create and open: start again
                if not self._lock(fd, exclusive=True):
                    holder = self._holder(fd)
                    os.close(fd)
                    raise self._busy(holder)
                if not self._same(fd):
                    os.close(fd)  # the run that held it removed it: start again
                    continue
                try:
                    self._check_proof(fd)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
                self._write_pid()
                return
            raise OutputError(f"could not take the engine's directory {self.path} for {self.flag} {self.shown} "
                              "(it kept disappearing); rerun")
        except BaseException:
            self.release(remove=False)
            raise

    def peek(self) -> bool:
        """Read-only (``--dry-run``): refuse what :meth:`acquire` would refuse; whether it exists."""
        try:
            os.lstat(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path, "look at")) from None
        fd = self._open()
        if fd is None:
            return False
        try:
            if not self._lock(fd, exclusive=False):
                raise self._busy(self._holder(fd))
            self._check_proof(fd)
        finally:
            os.close(fd)
        return True

    def release(self, remove: bool = True) -> None:
        """Drop the lock; first remove the directory when nothing in it is worth keeping."""
        if self._fd is not None:
            if remove:
                try:
                    left = set(os.listdir(self._fd)) - {PROOF, PID}
                    if not left:
                        for name in (PID, PROOF):
                            _remove(self._fd, name)
                        os.rmdir(self.path.name, dir_fd=self._parent_fd)
                except OSError:
                    pass  # a leftover empty workspace is harmless: the next run proves and reuses it
            os.close(self._fd)
            self._fd = None
        if self._parent_fd is not None:
            os.close(self._parent_fd)
            self._parent_fd = None

    def _create(self) -> None:
        if _exists(self._parent_fd, self.path.name):  # type: ignore[arg-type]
            return
        tmp = f"{self.path.name}-{uuid.uuid4().hex[:12]}.tmp"
        with output_errors(self.path, "create the engine's directory"):
            os.mkdir(tmp, 0o777, dir_fd=self._parent_fd)
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._parent_fd)
                try:
                    proof = json.dumps({"kind": PROOF_KIND, "for": self.target.name, "pid": os.getpid(),
                                        "token": uuid.uuid4().hex}) + "\n"
                    pfd = os.open(PROOF, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=fd)
                    try:
                        os.write(pfd, proof.encode())
                    finally:
                        os.close(pfd)
                finally:
                    os.close(fd)
                try:
                    moved = renameat2(self._parent_fd, tmp, self._parent_fd, self.path.name,  # type: ignore[arg-type]
                                      _RENAME_NOREPLACE)
                except FileExistsError:
                    moved = True  # another run created it first: prove and use that one
                    _remove(self._parent_fd, tmp)  # type: ignore[arg-type]
                if not moved:
                    # No RENAME_NOREPLACE here: a plain rename never replaces a file or a
                    # directory with contents (it may replace an empty directory).
                    try:
                        os.rename(tmp, self.path.name, src_dir_fd=self._parent_fd, dst_dir_fd=self._parent_fd)
                    except (FileExistsError, NotADirectoryError, IsADirectoryError, OSError) as exc:
                        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                            raise
                        _remove(self._parent_fd, tmp)  # type: ignore[arg-type]
            except BaseException:
                if _exists(self._parent_fd, tmp):  # type: ignore[arg-type]
                    _remove(self._parent_fd, tmp)  # type: ignore[arg-type]
                raise

    def _open(self) -> int | None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            if self._parent_fd is not None:
                return os.open(self.path.name, flags, dir_fd=self._parent_fd)
            return os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # O_DIRECTORY|O_NOFOLLOW on a link says ENOTDIR: lstat tells which it is.
                try:
                    link = stat.S_ISLNK(os.lstat(self.path).st_mode)
                except OSError:
                    link = exc.errno == errno.ELOOP
                raise self._foreign(f"it is {'a symbolic link' if link else 'not a directory'}") from None
            raise OutputError(describe_os_error(exc, self.path, "open")) from None

    @staticmethod
    def _lock(fd: int, *, exclusive: bool) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _same(self, fd: int) -> bool:
        st = os.fstat(fd)
        try:
            now = os.lstat(self.path.name, dir_fd=self._parent_fd)
        except FileNotFoundError:
            return False
        return st.st_nlink > 0 and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)

    def _check_proof(self, fd: int) -> None:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise self._foreign(f"it belongs to another user (uid {st.st_uid})")
        try:
            pfd = os.open(PROOF, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            raise self._foreign(f"it has no {PROOF} written by the engine") from None
        try:
            if not stat.S_ISREG(os.fstat(pfd).st_mode):
                raise self._foreign(f"its {PROOF} is not a regular file")
            data = os.read(pfd, 1 << 16)
        finally:
            os.close(pfd)
        try:
            proof = json.loads(data)
        except ValueError:
            proof = None
        if not isinstance(proof, dict) or proof.get("kind") != PROOF_KIND or proof.get("for") != self.target.name:
            raise self._foreign(f"its {PROOF} was not written by the engine for {self.target.name}")

    def _foreign(self, why: str) -> OutputError:
        return OutputError(
            f"{self.path} (beside {self.flag} {self.shown}) is where the engine keeps its lock and staging, "
            f"but it was not made by the engine: {why}. The engine never uses, changes or deletes it; "
            f"move it away (or choose another {self.flag}) and rerun"
        )

    def _busy(self, holder: str) -> OutputError:
        return OutputError(
            f"another engine run (pid {holder}) is writing {self.target} right now "
            f"(it holds {self.path}); wait for it to finish or stop it"
        )

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            pfd = os.open(PID, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            return "?"
        try:
            return os.read(pfd, 32).decode(errors="replace").strip() or "?"
        finally:
            os.close(pfd)

    def _write_pid(self) -> None:
        # Written under a fresh name and renamed: a link planted at "pid" is replaced, never followed.
        tmp = f".{PID}-{uuid.uuid4().hex[:8]}"
        with output_errors(self.path, "write the run lock in"):
            pfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=self.fd)
            try:
                os.write(pfd, str(os.getpid()).encode())
            finally:
                os.close(pfd)
            os.rename(tmp, PID, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    # -- entries inside ----------------------------------------------------------------
    def entry(self, name: str) -> Path:
        return self.path / name

    def has_dir(self, name: str) -> bool:
        return _is_dir(self.fd, name)

    def remove(self, name: str) -> None:
        """Delete an entry of the workspace (ours: it lies inside the proven directory)."""
        with output_errors(self.entry(name), "remove"):
            _remove(self.fd, name)

    def make_dir(self, name: str, *, fresh: bool = True) -> Path:
        """``name`` inside the workspace as a real directory: new when ``fresh``, else kept."""
        with output_errors(self.entry(name), "create"):
            if fresh or _exists(self.fd, name) and not _is_dir(self.fd, name):
                _remove(self.fd, name)
            if not _exists(self.fd, name):
                os.mkdir(name, 0o777, dir_fd=self.fd)
        return self.entry(name)

    def move(self, src: str, dst: str) -> None:
        """Rename one workspace entry to another name inside it."""
        with output_errors(self.entry(src), "move"):
            os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    # -- publish -------------------------------------------------------------------------
    def recover(self) -> None:
        """A publish that died between two renames left the previous output at ``old/``: restore it."""
        if not self.has_dir("old"):
            return
        with output_errors(self.target, "recover an interrupted publish of"):
            if not _exists(self._parent_fd, self.target.name):  # type: ignore[arg-type]
                os.rename("old", self.target.name, src_dir_fd=self.fd, dst_dir_fd=self._parent_fd)
            else:
                _remove(self.fd, "old")

    def publish(self, staged: str, *, recheck: Callable[[], None],
                owned: Callable[[Path], Collection[str] | None]) -> list[str]:
        """Swap the complete directory ``staged`` (inside the workspace) into the output's place.

        ``recheck`` runs first, under the lock: it raises when the current output may not be
        replaced (a file that appeared during the run, say). ``owned`` gives the names the
        engine wrote in the output it replaces; only those are deleted afterwards. Returns the
        names that appeared between the check and the swap (kept, in ``displaced-*``).
        """
        recheck()
        parent = self._parent_fd
        name = self.target.name
        if not self.has_dir(staged):
            raise OutputError(f"the staged output {self.entry(staged)} is missing or not a directory; rerun")
        with output_errors(self.target, "publish to"):
            try:
                st = os.lstat(name, dir_fd=parent)
            except FileNotFoundError:
                st = None
            if st is None:
                if not renameat2(self.fd, staged, parent, name, _RENAME_NOREPLACE):  # type: ignore[arg-type]
                    os.rename(staged, name, src_dir_fd=self.fd, dst_dir_fd=parent)
                _fsync(parent)
                return []
            if not stat.S_ISDIR(st.st_mode):
                raise OutputError(f"{self.flag} {self.shown} became something other than a directory during "
                                  "the run; nothing was published")
            names = set(owned(self.target) or ())
            if renameat2(self.fd, staged, parent, name, _RENAME_EXCHANGE):  # type: ignore[arg-type]
                replaced = staged
            else:
                os.rename(name, "old", src_dir_fd=parent, dst_dir_fd=self.fd)
                os.rename(staged, name, src_dir_fd=self.fd, dst_dir_fd=parent)
                replaced = "old"
            _fsync(parent)
        return self._drop_replaced(replaced, names)

    def _drop_replaced(self, replaced: str, names: set[str]) -> list[str]:
        with output_errors(self.entry(replaced), "remove the replaced output"):
            dfd = os.open(replaced, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.fd)
            try:
                left = []
                for entry in os.listdir(dfd):
                    if entry in names:
                        _remove(dfd, entry)
                    else:
                        left.append(entry)
            finally:
                os.close(dfd)
            if not left:
                os.rmdir(replaced, dir_fd=self.fd)
                return []
            os.rename(replaced, f"displaced-{uuid.uuid4().hex[:8]}", src_dir_fd=self.fd, dst_dir_fd=self.fd)
            return sorted(left)


def _fsync(dir_fd: int | None) -> None:
    if dir_fd is None:
        return
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)


def publish_directory(target: Path, write: Callable[[Path], None], *, shown: str | os.PathLike[str],
                      flag: str, recheck: Callable[[], None],
                      owned: Callable[[Path], Collection[str] | None]) -> list[str]:
    """Build a directory with ``write(path)`` in the workspace, then swap it in at ``target``.

    The protocol of ``engine generate`` and model writers: one workspace, one lock, the
    ownership of what is replaced re-checked just before the swap. Returns displaced names.
    """
    with Workspace(target, shown=shown, flag=flag) as ws:
        ws.recover()
        new = ws.make_dir("new")
        try:
            write(new)
            return ws.publish("new", recheck=recheck, owned=owned)
        finally:
            if ws.has_dir("new"):
                ws.remove("new")
