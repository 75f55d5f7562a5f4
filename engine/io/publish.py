"""Publish a set of files (a model, generated data, rules, recommendations...) all or nothing.

One protocol for every artifact a job writes as a directory of files, on a local disk or
under an object-store prefix. A job describes its artifact once (:class:`ArtifactKind`:
what it is called, its marker file, which names it owns) and calls:

* :func:`check_target` before any work: the place is allowed (not the input, not a bucket
  root, not someone else's directory or prefix), replaceable (empty, or an artifact of this
  kind and ``overwrite``) and writable (a store is probed: a write and a delete, so read-only
  or delete-less credentials fail here, before hours of work, exit 6);
* :func:`publish` with a ``write(dir)`` callback that fills a private local directory; the
  directory then replaces the target as a whole;
* :func:`readable` (readers): where the last complete version of the artifact lies now.

On a local disk the directory is swapped in with one ``renameat2(RENAME_EXCHANGE)``
(:func:`engine.io.workspace.publish_directory`). In an object store, which has no atomic
rename, the score commit's manifest-last protocol (:mod:`engine.io.store_commit`) is used
with a backup, under the run-state prefix ``.NAME.engine/`` (created with a proof of
ownership and locked as for scores):

1. **staged**: every new file is uploaded to ``staging/``;
2. **backed-up**: every object of the previous version is copied (server side) to ``previous/``;
3. **recorded**: ``publishing.json`` names the marker and the old and new names;
4. **marker-removed**: the marker is deleted from the target (from here the engine's
   readers read ``previous/``);
5. **copied**: the new files other than the marker are copied in from ``staging/``;
6. **stale-deleted**: objects of the previous version that the new one lacks are deleted;
7. **marker-written**: the marker is copied in last: the new version is published;
8. tidy: the record, ``staging/`` and ``previous/`` are deleted, the lock released.

A kill -9 at any step leaves the previous version readable (the target itself up to step 4
and after step 7; ``previous/`` through :func:`readable` between) and the next run of any
job on that target first completes the interrupted publish (its staging is complete once
the record exists), then proceeds: a rerun with ``--overwrite`` replaces it. Every delete's
per-key result is checked (:meth:`engine.io.store.S3Store.delete`): a denied delete stops
the publish with exit 6 at the step where it happened, which is one of the states above.

Test hook: ``ENGINE_TEST_PAUSE_AT=STEP`` (a step name above) makes the store publish print
``ENGINE-TEST-PAUSED STEP`` to stderr and sleep ``ENGINE_TEST_PAUSE_S`` seconds (default 60)
after that step, so a test can kill it there.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import OutputError
from engine.io.store import Store, parallel, store_errors, store_for
from engine.io.store_commit import (
    OWNER,
    PUBLISHING,
    STATE_FORMAT,
    StoreCommitter,
    check_location,
    local_scratch,
    probe_store,
    relative_names,
    state_prefix,
)
from engine.io.store_commit import check_replaceable as check_store_replaceable
from engine.io.uri import Location, parse

PREVIOUS = "previous"
RECORD_FORMAT = "customer-scoring-engine/publish"
STEPS = ("staged", "backed-up", "recorded", "marker-removed", "copied", "stale-deleted", "marker-written")
TEST_PAUSE_AT = "ENGINE_TEST_PAUSE_AT"
TEST_PAUSE_S = "ENGINE_TEST_PAUSE_S"

#: Reads one file of an artifact by its name relative to the artifact's root; None if absent.
ReadName = Callable[[str], "bytes | None"]


@dataclass(frozen=True)
class ArtifactKind:
    """What a job publishes.

    ``what``: how messages name it ("an engine model"). ``marker``: the file written last and
    removed first (its presence means "complete"). ``owned(read)``: the names an existing
    artifact of this kind holds, read from its marker (``read(name)`` gives a file's bytes
    or None), or None when what is there is not one of ours; only those names are ever
    deleted. ``markers``: names whose presence says something of this kind is there
    (default: the marker alone).
    """

    what: str
    marker: str
    owned: Callable[[ReadName], set[str] | None]
    markers: tuple[str, ...] = field(default=())

    @property
    def proof_names(self) -> tuple[str, ...]:
        return self.markers or (self.marker,)

    def names_local(self, real: Path) -> set[str] | None:
        return self.owned(lambda name: _read_local(real / name))

    def names_store(self, store: Store, loc: Location) -> set[str] | None:
        return self.owned(lambda name: store.read_bytes(loc.join(name)))


def json_marker(data: bytes | None, required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """A marker's JSON object if it parses and has every ``required`` key (a helper for ``owned``)."""
    if data is None:
        return None
    try:
        found = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(found, dict) or any(k not in found for k in required):
        return None
    return found


def _read_local(path: Path) -> bytes | None:
    """A regular file's bytes, never following a link; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read(64 << 20)


# -- before any work ---------------------------------------------------------------------
def check_target(target: str | os.PathLike[str], kind: ArtifactKind, *, overwrite: bool, flag: str = "--output",
                 protected: dict[str, Any] | None = None, probe: bool = True) -> Path | Location:
    """Refuse a target the artifact may not replace (exit 6) before any work; its real path or Location.

    ``probe``: in a store, also write and delete a probe object under the run-state prefix,
    so credentials that cannot write or delete fail now, not after the work.
    """
    parsed = parse(target, flag)
    if isinstance(parsed, Location):
        store = check_location(parsed, flag=flag, protected=protected)
        with store_errors(parsed, "look at"):
            also_ours = interrupted_names(store, parsed)
        check_store_replaceable(store, parsed, flag=flag, what=kind.what, markers=kind.proof_names,
                                overwrite=overwrite or bool(also_ours), owned=kind.names_store, also_ours=also_ours)
        if probe:
            probe_store(store, parsed, flag=flag)
        return parsed
    from engine.io.guard import check_replaceable, check_writable, resolve_output
    from engine.io.workspace import Workspace

    local_protected = {k: (None if v is None or _remote(v) else parse(v, "path")) for k, v in (protected or {}).items()}
    real = resolve_output(parsed, flag=flag, protected=local_protected)
    check_replaceable(real, flag=flag, what=kind.what, markers=kind.proof_names, overwrite=overwrite,
                      shown=target, owned=kind.names_local)
    check_writable(real, flag=flag, shown=target)
    Workspace(real, shown=target, flag=flag).peek()  # a neighbour that is not ours: refused before any work
    return real


def _remote(value: Any) -> bool:
    from engine.io.uri import is_remote

    return is_remote(os.fspath(value))


# -- publishing ----------------------------------------------------------------------------
def publish(target: str | os.PathLike[str], write: Callable[[Path], None], kind: ArtifactKind, *,
            overwrite: bool, flag: str = "--output", protected: dict[str, Any] | None = None) -> Path | Location:
    """Build the artifact with ``write(dir)`` in a private directory, then replace ``target`` by it.

    ``write`` must leave ``kind.marker`` in ``dir``. Refuses (exit 6) what :func:`check_target`
    refuses, checked again under the lock just before the swap. Returns the real path or Location.
    """
    parsed = check_target(target, kind, overwrite=overwrite, flag=flag, protected=protected, probe=False)
    if isinstance(parsed, Location):
        with StorePublisher(parsed, kind, overwrite=overwrite, flag=flag, protected=protected) as pub, \
                local_scratch("engine-publish-") as tmp:
            write(Path(tmp))
            pub.commit(Path(tmp))
        return parsed
    from engine.io.guard import check_replaceable
    from engine.io.workspace import publish_directory

    def recheck() -> None:
        check_replaceable(parsed, flag=flag, what=kind.what, markers=kind.proof_names, overwrite=overwrite,
                          shown=target, owned=kind.names_local)

    publish_directory(parsed, write, shown=target, flag=flag, recheck=recheck, owned=kind.names_local)
    return parsed


def _pause(step: str) -> None:
    if os.environ.get(TEST_PAUSE_AT) == step:
        print(f"ENGINE-TEST-PAUSED {step}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get(TEST_PAUSE_S) or 60))


def _record(store: Store, state: Location) -> dict[str, Any] | None:
    found = json_marker(store.read_bytes(state.join(PUBLISHING)), ("format", "marker", "old", "new"))
    if found is None or found["format"] != RECORD_FORMAT:
        return None
    if not all(isinstance(found[k], list) and all(isinstance(n, str) for n in found[k]) for k in ("old", "new")):
        return None
    return found


def _state_is_ours(store: Store, loc: Location) -> bool:
    owner = json_marker(store.read_bytes(state_prefix(loc).join(OWNER)), ("format", "output"))
    return bool(owner) and owner["format"] == STATE_FORMAT and owner["output"] == loc.uri  # type: ignore[index]


def interrupted_names(store: Store, loc: Location) -> set[str]:
    """Names an interrupted publish of ``loc`` recorded (old and new), if its run state is provably ours."""
    if not _state_is_ours(store, loc):
        return set()
    record = _record(store, state_prefix(loc))
    return set(record["old"]) | set(record["new"]) if record else set()


def readable(target: str | os.PathLike[str] | Location, marker: str, role: str = "input") -> Path | Location:
    """Where readers find the last complete version of the artifact at ``target`` now; a store
    failure is the error of ``role`` (the reader's: ``model`` for a model, ``input`` for data).

    The target itself, except while a store publish is between removing the old marker and
    writing the new one (or was killed there): then the backup under the run-state prefix.
    """
    loc = target if isinstance(target, Location) else parse(target, "path")
    if not isinstance(loc, Location):
        return Path(loc)
    store = store_for(loc)
    with store_errors(loc, "read", role=role):
        if store.info(loc.join(marker)) == "file" or not _state_is_ours(store, loc):
            return loc
        state = state_prefix(loc)
        record = _record(store, state)
        previous = state.join(PREVIOUS)
        if record and record.get("backup") and store.info(previous.join(marker)) == "file":
            return previous
    return loc


class StorePublisher(StoreCommitter):
    """The store side of :func:`publish`: the run-state prefix and lock of the score commit,
    with a backup of the previous version and recovery of an interrupted publish."""

    def __init__(self, output: Location, kind: ArtifactKind, *, overwrite: bool, flag: str = "--output",
                 protected: dict[str, Any] | None = None) -> None:
        super().__init__(output, overwrite=overwrite, protected=protected)
        self.kind, self.flag = kind, flag
        self.previous = self.state.join(PREVIOUS)

    def acquire(self) -> None:
        with store_errors(self.state, "take the run lock under"):
            probe_store(self.store, self.output, flag=self.flag, write=False)
            self._own_state(create=True)
            self._take_lock()
        try:
            with store_errors(self.output, "complete an interrupted publish of"):
                self.recover()
            self._check_existing()
        except BaseException:
            self.release(clean=False)
            raise

    def _check_existing(self) -> bool:
        store, loc = self.store, self.output
        also_ours = interrupted_names(store, loc)
        return check_store_replaceable(store, loc, flag=self.flag, what=self.kind.what,
                                       markers=self.kind.proof_names, overwrite=self.overwrite or bool(also_ours),
                                       owned=self.kind.names_store, also_ours=also_ours)

    # -- the protocol ----------------------------------------------------------------
    def recover(self) -> None:
        """Complete a publish a killed run left recorded (its staging is complete), or undo it
        from the backup when its staging is not; then clear staging and the backup."""
        record = _record(self.store, self.state)
        if record is not None:
            staged = relative_names(self.store, self.staging_loc)
            marker = record["marker"]
            if all(n in staged for n in record["new"]):
                self._install(self.staging_loc, record["new"], set(record["old"]), marker)
            elif record.get("backup") and all(n in relative_names(self.store, self.previous) for n in record["old"]):
                self._install(self.previous, record["old"], set(record["new"]), marker)
            else:
                raise OutputError(f"an interrupted publish of {self.output.uri} left neither its new version nor "
                                  f"the previous one complete under {self.state.uri}; look at it, remove "
                                  f"{self.state.join(PUBLISHING).uri} and rerun")
            self.store.delete([self.state.join(PUBLISHING)])
        self._clear()

    def _clear(self) -> None:
        for prefix in (self.staging_loc, self.previous):
            self.store.delete([prefix.join(n) for n in relative_names(self.store, prefix)])

    def commit(self, local_dir: Path) -> None:
        """Publish the files of ``local_dir`` to the output prefix, steps 1-8 of the module docstring."""
        files = sorted(str(p.relative_to(local_dir)) for p in local_dir.rglob("*") if p.is_file())
        marker = self.kind.marker
        if marker not in files:
            raise OutputError(f"nothing was published to {self.output.uri}: the new {self.kind.what} lacks its "
                              f"{marker}")
        store, out = self.store, self.output
        with store_errors(out, "publish to"):
            parallel(lambda n: store.upload_file(self.staging_loc.join(n), str(local_dir / n)), files)
            _pause("staged")
            if (self._holder() or {}).get("run") != self.token:
                raise OutputError(f"the lock {self.lock_loc.uri} is no longer this run's (it was removed or taken "
                                  "over); nothing was published")
            self._check_existing()  # under the lock, right before the swap: foreign objects are refused
            old = sorted(relative_names(store, out))
            backup = marker in old
            if backup:
                parallel(lambda n: store.copy(out.join(n), self.previous.join(n)), old)
            _pause("backed-up")
            store.put_bytes(self.state.join(PUBLISHING), json.dumps(
                {"format": RECORD_FORMAT, "run": self.token, "marker": marker, "old": old, "new": files,
                 "backup": backup}).encode())
            _pause("recorded")
            self._install(self.staging_loc, files, set(old), marker)
            # Published. What follows is tidying: a kill here leaves the new version complete.
            store.delete([self.state.join(PUBLISHING)])
            self._clear()

    def _install(self, source: Location, names: list[str], replaced: set[str], marker: str) -> None:
        """Make the output hold exactly ``names`` (copied from ``source``), the marker out first and in last."""
        store, out = self.store, self.output
        store.delete([out.join(marker)])
        _pause("marker-removed")
        parallel(lambda n: store.copy(source.join(n), out.join(n)), [n for n in names if n != marker])
        _pause("copied")
        store.delete([out.join(n) for n in sorted(replaced - set(names) - {marker})])
        _pause("stale-deleted")
        store.copy(source.join(marker), out.join(marker))
        _pause("marker-written")
