"""The output guard: what a command may write, and what it may replace.

Every command that writes a directory (``score --output``, ``train --output``,
``generate --out``, ``model import-sklearn --output``, ``demo --workdir``) asks this
module first, before any work:

* :func:`resolve_output` resolves symlinks once (the run then locks, stages and swaps
  the real directory and leaves a link as it was) and refuses an empty or root path,
  and an output that is, contains or lies inside a protected path (the input, the
  model) or that is or contains the working directory.
* :func:`check_replaceable` lets an existing directory be replaced only when it is
  empty or when it is the engine's own kind of output (its marker files say so), and
  then only with ``--overwrite``.
* :func:`check_writable` refuses, still before any work, a read-only, immutable or
  otherwise unwritable destination.
* :func:`output_errors` turns any ``OSError`` on the output side into an
  :class:`~engine.errors.OutputError` (exit 6) that names the path and what to do.

A directory's kind is told by its markers: scores have ``_SUCCESS``/``_manifest.json``,
a model ``model.json``/``arrays.npz``, generated data ``_generated.json``, a demo
working directory ``_engine_demo.json``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from engine.errors import OutputError

# What to do about each errno, said once for every writer of the output side.
_ADVICE = {
    errno.EACCES: "this user may not write there: fix the permissions or choose another output",
    errno.EPERM: "the operation is not permitted (an immutable or append-only directory?): "
                 "check `lsattr` or choose another output",
    errno.EROFS: "the filesystem is read-only: choose an output on a writable filesystem",
    errno.ENOSPC: "the disk is full: free space (or raise the quota) and rerun with --resume",
    errno.EDQUOT: "the disk quota is exceeded: free space (or raise the quota) and rerun with --resume",
    errno.EFBIG: "a file grew past the size this process may write (ulimit -f): raise the limit and rerun",
    errno.EBUSY: "the path is busy (a mount point, or in use by another process): choose another output",
    errno.ENOTDIR: "a component of the path is a file, not a directory: choose another output",
    errno.EISDIR: "a directory stands where a file must be written: choose another output",
    errno.ENOENT: "a directory on the way does not exist, or this filesystem (such as /proc) takes no new "
                  "files: choose another output",
    errno.EEXIST: "something already exists at that name: remove it or choose another output",
    errno.ENOTEMPTY: "a directory that must be replaced is not empty: remove it or choose another output",
    errno.EXDEV: "the output and its staging directory are on different filesystems: choose another output",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter output path",
    errno.ELOOP: "the path has a symlink loop: fix the link or choose another output",
}


def advice(err: int | None) -> str:
    """What a user can do about an ``errno`` on the output side."""
    return _ADVICE.get(err or 0, "check the path and the filesystem, then rerun")


def describe_os_error(exc: OSError, path: str | os.PathLike[str], doing: str) -> str:
    """One message: the path, what failed, the system's reason and what to do."""
    reason = exc.strerror or str(exc)
    where = exc.filename if exc.filename else path
    return f"cannot {doing} {where}: {reason}; {advice(exc.errno)}"


@contextmanager
def output_errors(path: str | os.PathLike[str], doing: str) -> Iterator[None]:
    """``OSError`` inside the block -> :class:`OutputError` naming ``path`` (exit 6).

    Raised as an :class:`OutputError` (a plain message) also inside Dask tasks, so the
    message survives pickling back to the client.
    """
    try:
        yield
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path, doing)) from None


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def resolve_output(path: str | os.PathLike[str], *, flag: str = "--output",
                   protected: Mapping[str, str | os.PathLike[str] | None] | None = None) -> Path:
    """The real (symlink-free, absolute) output directory, or :class:`OutputError`.

    ``protected`` names paths the output must neither be, contain nor lie inside
    (``{"the input": ..., "the model": ...}``); the working directory is protected too,
    except that an output may lie inside it.
    """
    raw = os.fspath(path)
    if not raw.strip():
        raise OutputError(
            f"{flag} is empty (an unset variable?); it would name the working directory. "
            f"Pass the output directory explicitly"
        )
    real = Path(os.path.realpath(raw))
    if real == Path(real.anchor):
        raise OutputError(f"{flag} {raw} is the filesystem root; choose a directory of its own")
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd or _inside(cwd, real):
        what = "is" if real == cwd else "contains"
        raise OutputError(
            f"{flag} {raw} {what} the working directory {cwd}; replacing it would destroy files the "
            "engine does not own. Choose a directory of its own"
        )
    for name, other in (protected or {}).items():
        if other is None or not os.fspath(other):
            continue
        other_real = Path(os.path.realpath(os.fspath(other)))
        if real == other_real:
            relation = "is"
        elif _inside(other_real, real):
            relation = "contains"
        elif _inside(real, other_real):
            relation = "lies inside"
        else:
            continue
        raise OutputError(
            f"{flag} {raw} {relation} {name} ({other_real}); an output must be a directory of its own, "
            f"apart from {name}. Choose another {flag}"
        )
    return real


def check_replaceable(real: Path, *, flag: str, what: str, markers: Sequence[str], overwrite: bool,
                      shown: str | os.PathLike[str] | None = None, held: str | None = None,
                      owned: Callable[[Path], Collection[str] | None] | None = None) -> bool:
    """Whether ``real`` exists; refuse it unless it is empty, or ours and ``overwrite``.

    ``what`` names the engine's kind of output ("an engine output"), ``markers`` the
    files that prove it, ``held`` what an existing one holds ("a complete run").
    ``owned`` reads the markers and returns the names the engine wrote there, or None
    when the markers are not the engine's: a marker's name alone proves little (Spark and
    Hadoop write ``_SUCCESS`` too), and a user's file dropped beside our output is not ours
    to delete. Non-directories are never replaced.
    """
    name = os.fspath(shown) if shown is not None else str(real)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutputError(describe_os_error(exc, real, "look at")) from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{flag} {name} exists and is not a directory; the engine never replaces it. "
                          f"Choose another {flag}")
    try:
        entries = os.listdir(real)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, real, "list")) from None
    if not entries:
        return True
    ours = [m for m in markers if os.path.lexists(real / m)]
    if not ours:
        raise OutputError(
            f"{flag} {name} exists, is not empty and is not {what} (it has no {' or '.join(markers)}); "
            f"the engine replaces only its own outputs or an empty directory, even with --overwrite. "
            f"Choose another {flag}, or empty it yourself"
        )
    if owned is not None:
        names = owned(real)
        if names is None:
            raise OutputError(
                f"{flag} {name} has {ours[0]} but is not {what} (its markers were not written by the "
                f"engine); the engine replaces only its own outputs or an empty directory, even with "
                f"--overwrite. Choose another {flag}, or empty it yourself"
            )
        foreign = sorted(set(entries) - set(names))
        if foreign:
            shown_names = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputError(
                f"{flag} {name} is {what} but also holds files the engine did not write ({shown_names}); "
                f"the engine never deletes them, even with --overwrite. Move them away or choose another {flag}"
            )
    if not overwrite:
        raise OutputError(
            f"{flag} {name} already holds {held or what} (it has {ours[0]}); pass --overwrite to replace it "
            "(it stays as it is until the new one is complete)"
        )
    return True


def read_json_marker(path: Path, required: Sequence[str]) -> dict | None:
    """A marker file's JSON object if it has every ``required`` key, else None (not ours)."""
    try:
        # A link is never a marker: opened without following it, and only a regular file counts.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = json.loads(fh.read(64 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or any(key not in data for key in required):
        return None
    return data


def check_writable(real: Path, *, flag: str, shown: str | os.PathLike[str] | None = None) -> None:
    """Refuse an output whose nearest existing directory, or itself, cannot be written.

    ``os.access`` sees read-only filesystems and immutable directories even for root;
    what it cannot see (a full disk) is caught where it happens, by :func:`output_errors`.
    """
    name = os.fspath(shown) if shown is not None else str(real)
    probe = real.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write {flag} {name}: {probe} is a file, not a directory; "
                          "choose another output")
    for path in ([real] if real.is_dir() else []) + [probe]:
        if not os.access(path, os.W_OK | os.X_OK):
            read_only = False
            with suppress(OSError):
                read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
            reason = ("is on a read-only filesystem" if read_only
                      else "is not writable by this user, or is immutable")
            raise OutputError(
                f"cannot write {flag} {name}: {path} {reason}; nothing was done. "
                "Fix the permissions (`ls -ld`, `lsattr -d`) or choose another output"
            )


def owner_only_to_umask(path: str | os.PathLike[str]) -> None:
    """Give a ``mkdtemp``/``mkstemp`` path the mode any other tool's output would have.

    ``tempfile`` creates them 0700/0600 whatever the umask; a published model or dataset
    must be readable by whoever the umask lets read (the scheduler's account, the team).
    """
    full = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, full & ~current_umask())


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows.

    ``os.umask`` can only be read by setting it, and for that moment files made by other
    threads (Dask's) would get the wrong mode; ``/proc/self/status`` says it directly.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
