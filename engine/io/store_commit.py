"""The output commit protocol for object stores: manifest-last, ``_SUCCESS`` first out and last in.

Object stores have no atomic rename of a prefix, so the local staging-and-swap
(:mod:`engine.io.commit`) does not carry over. After Hadoop's S3A committers, Spark's
``_SUCCESS`` convention and Delta Lake's and Iceberg's manifest-last commits, an output
``s3://B/OUT`` is committed so (the same interface as the local committer):

* Everything the engine keeps beside the output lives under one run-state prefix,
  ``s3://B/.OUT.engine/``, created with a proof of ownership (``owner.json``, created
  exclusively): ``lock.json`` (the run lock), ``staging/`` (parts, ``_rejected/``, sidecars
  in ``_parts/``) and, only while a commit is under way, ``publishing.json``. A prefix of that
  name without our proof is someone else's: exit 6, nothing touched.
* The lock is a conditional create (``If-None-Match: *``) on S3; a second run fails at once.
  A lock left by a killed run on this host (its pid is gone) is taken over; one from another
  host must be removed by hand (the message names it). Stores without conditional writes in
  pyarrow (gs, az) check, write and read back: exclusive against a run that starts later,
  not against one that starts in the same instant.
* Workers write each part under ``staging/`` (multipart upload of a finished local file: an
  object appears complete or not at all). The previous output stays readable and complete.
* Commit, under the lock, after re-checking that the output holds only what its manifest
  says the engine wrote: ``publishing.json`` records the old and new names; ``_SUCCESS`` is
  deleted first, then ``_manifest.json``; the staged objects are copied in (server-side);
  objects of the previous output that tonight's does not have are deleted;
  ``_manifest.json`` (every file with its size and SHA-256) and then ``_SUCCESS`` are
  written last. A reader that waits for ``_SUCCESS`` and reads the files the manifest lists
  (checking sizes or checksums) never reads a mix.
* A run killed before the commit leaves the previous output untouched and its parts in
  ``staging/`` for ``--resume``; one killed during the commit leaves the output without
  ``_SUCCESS`` (readers wait) and staging complete: ``--resume`` commits again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from engine.errors import OutputError
from engine.io.commit import (
    MANIFEST,
    PARTS_META,
    REJECTED,
    SCORE_REPORT_NAME,
    SUCCESS,
    TEST_PAUSE_BEFORE_SWAP,
    part_name,
    pause_for_tests,
)
from engine.io.store import (
    Location,
    PreconditionFailed,
    Store,
    parallel,
    store_errors,
    store_for,
)

STATE_FORMAT = "customer-scoring-engine/output-state"
OWNER = "owner.json"
LOCK = "lock.json"
PUBLISHING = "publishing.json"
STAGING = "staging"
TEST_PAUSE_DURING_PUBLISH = "ENGINE_TEST_PAUSE_DURING_PUBLISH"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _json(store: Store, loc: Location) -> dict[str, Any] | None:
    data = store.read_bytes(loc)
    if data is None:
        return None
    try:
        found = json.loads(data)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def relative_names(store: Store, prefix: Location) -> dict[str, int]:
    """Object names under ``prefix`` relative to it, with their sizes."""
    root = prefix.fs_path + "/"
    return {o.path[len(root):]: o.size for o in store.list(prefix) if o.path.startswith(root)}


def check_location(loc: Location, *, flag: str, protected: dict[str, Any] | None = None) -> Store:
    """Before any work: an output location in a store is allowed; its store.

    Refuses a bucket root (the prefix is replaced as a whole), a missing bucket, and an
    output that is, contains or lies inside a protected location (the input, the model).
    """
    from engine.io.uri import is_remote, parse

    if not loc.key:
        raise OutputError(f"{flag} {loc.uri} is a whole bucket; choose a prefix of its own inside it "
                          f"({loc.uri}/scores)")
    for name, other in (protected or {}).items():
        if other is None or not is_remote(os.fspath(other)):
            continue
        o = parse(os.fspath(other), "path")
        assert isinstance(o, Location)
        same = (o.kind, o.bucket, o.key) == (loc.kind, loc.bucket, loc.key)
        relation = ("is" if same else "contains" if loc.contains(o) else "lies inside" if o.contains(loc)
                    else None)
        if relation:
            raise OutputError(f"{flag} {loc.uri} {relation} {name} ({o.uri}); an output must be a prefix of "
                              f"its own, apart from {name}. Choose another {flag}")
    store = store_for(loc)
    with store_errors(loc, "look at"):
        if not store.bucket_exists(loc):
            raise OutputError(f"{flag} {loc.uri}: the bucket {loc.bucket} does not exist or cannot be seen with "
                              "these credentials; create it or choose another bucket")
        if store.info(loc) == "file":
            raise OutputError(f"{flag} {loc.uri} is an object, not a prefix; the engine never replaces it. "
                              f"Choose another {flag}")
    return store


def check_replaceable(store: Store, loc: Location, *, flag: str, what: str, markers: tuple[str, ...],
                      overwrite: bool, owned: Callable[[Store, Location], set[str] | None], held: str | None = None,
                      also_ours: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether the prefix holds objects; refuse it unless empty, or ours and ``overwrite``.

    As :func:`engine.io.guard.check_replaceable` on a local disk: the markers' contents
    say which names the engine wrote, and any other object under the prefix is foreign
    (never deleted, even with ``--overwrite``). ``also_ours``: names an interrupted commit
    recorded (its output may lack its markers for a moment).
    """
    with store_errors(loc, "list"):
        names = set(relative_names(store, loc))
    if not names:
        return False
    if also_ours:
        foreign = sorted(names - set(also_ours) - (owned(store, loc) or set()))
        if not foreign:
            return True
    present = [m for m in markers if m in names]
    if not present:
        raise OutputError(
            f"{flag} {loc.uri} holds objects and is not {what} (it has no {' or '.join(markers)}); the engine "
            f"replaces only its own outputs or an empty prefix, even with --overwrite. Choose another {flag}, "
            "or empty it yourself")
    with store_errors(loc, "read the markers of"):
        ours = owned(store, loc)
    if ours is None:
        raise OutputError(
            f"{flag} {loc.uri} has {present[0]} but is not {what} (its markers were not written by the engine); "
            f"the engine replaces only its own outputs or an empty prefix, even with --overwrite. "
            f"Choose another {flag}, or empty it yourself")
    foreign = sorted(names - ours)
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"{flag} {loc.uri} is {what} but also holds objects the engine did not write ({listed}); the engine "
            f"never deletes them, even with --overwrite. Move them away or choose another {flag}")
    if not overwrite:
        raise OutputError(f"{flag} {loc.uri} already holds {held or what} (it has {present[0]}); pass --overwrite "
                          "to replace it (it stays as it is until the new one is complete)")
    return True


def owned_score_names(store: Store, loc: Location) -> set[str] | None:
    """The objects a published score output holds, from its manifest; None if not ours."""
    manifest = _json(store, loc.join(MANIFEST))
    if not manifest or any(k not in manifest for k in ("run_id", "engine_version", "partitions")):
        return None
    if not isinstance(manifest["partitions"], list):
        return None
    names = {SUCCESS, MANIFEST, SCORE_REPORT_NAME}
    if isinstance(manifest.get("report"), str):
        names.add(manifest["report"])
    for p in manifest["partitions"]:
        if isinstance(p, dict) and "part" in p:
            names.add(str(p["part"]))
            names.add(f"{REJECTED}/{p['part']}")
    for f in manifest.get("files") or []:
        if isinstance(f, dict) and isinstance(f.get("name"), str):
            names.add(f["name"])
    return names


def interrupted_commit(store: Store, loc: Location) -> set[str]:
    """Names an interrupted commit of ``loc`` recorded (old and new), if its run state is provably ours."""
    state = state_prefix(loc)
    owner = _json(store, state.join(OWNER))
    if not owner or owner.get("format") != STATE_FORMAT or owner.get("output") != loc.uri:
        return set()
    record = _json(store, state.join(PUBLISHING)) or {}
    names = [*(record.get("old") or []), *(record.get("new") or [])]
    return {n for n in names if isinstance(n, str)}


def probe_store(store: Store, loc: Location, *, flag: str = "--output", write: bool = True) -> None:
    """Exit 6 unless these credentials can delete (and, with ``write``, write) under ``loc``'s
    run-state prefix: found before any work, not after it.

    The delete goes first, on a name that does not exist (S3 checks the permission all the
    same), so credentials without it leave nothing behind. The write probe is an object
    created exclusively and deleted again, only where the run-state prefix is absent or
    provably ours (a foreign one is refused, as :class:`StoreCommitter` would).
    """
    state = state_prefix(loc)
    probe = state.join(f"probe-{uuid.uuid4().hex}")
    what = f"{flag} {loc.uri}"
    try:
        store.delete([probe])
    except OSError as exc:
        raise OutputError(f"cannot delete objects under {state.uri} (beside {what}) with these credentials ({exc}); "
                          "the engine deletes what it replaces and its own lock and staging, so it needs to list, "
                          "read, write and delete objects there. Nothing was written or changed; grant the "
                          "permission (docs/object-stores.md) or choose another output") from None
    if not write:
        return
    with store_errors(state, "look at"):
        names = relative_names(store, state)
        owner = _json(store, state.join(OWNER)) if names else None
    if names and not (owner and owner.get("format") == STATE_FORMAT and owner.get("output") == loc.uri):
        raise OutputError(
            f"{state.uri} exists and was not made by the engine for {loc.uri} (no valid {OWNER}); the engine "
            "keeps its lock and staging there and never adopts or deletes what it did not make. Move it away or "
            f"choose another {flag}")
    try:
        store.put_bytes(probe, b"engine write probe\n", exclusive=True)
        store.delete([probe])
    except (OSError, PreconditionFailed) as exc:
        raise OutputError(f"cannot write under {state.uri} (beside {what}) with these credentials ({exc}); the "
                          "engine found this before doing any work. Grant write permission (docs/object-stores.md) "
                          "or choose another output") from None


def state_prefix(loc: Location) -> Location:
    """Where the engine keeps the lock and staging of the output ``loc``: ``.NAME.engine/`` beside it."""
    return loc.parent.join(f".{loc.name}.engine")


def check_score_output(loc: Location, *, overwrite: bool, protected: dict[str, Any] | None = None) -> bool:
    """Before any work (and again at commit): may the score output ``loc`` be written?

    An output left without ``_SUCCESS`` by a commit that was killed is replaceable (the run
    that was committing there asked for it, and its names are recorded).
    """
    store = check_location(loc, flag="--output", protected=protected)
    with store_errors(loc, "look at"):
        also_ours = interrupted_commit(store, loc)
    overwrite = overwrite or bool(also_ours)
    return check_replaceable(store, loc, flag="--output", what="an engine output", markers=(SUCCESS, MANIFEST),
                             overwrite=overwrite, owned=owned_score_names, held="a complete run",
                             also_ours=also_ours)


class StoreCommitter:
    """Owns one output prefix in an object store for one run; see the module docstring."""

    def __init__(self, output: Location, *, overwrite: bool = False, resume: bool = False,
                 shown: str | None = None, protected: dict[str, Any] | None = None) -> None:
        self.output = output
        self.shown = shown or output.uri
        self.overwrite, self.resume = overwrite, resume
        self.protected = protected
        self.state = state_prefix(output)
        self.staging_loc = self.state.join(STAGING)
        self.staging = self.staging_loc.uri       # shown in messages, as the local committer's path
        self.lock_loc = self.state.join(LOCK)
        self.store = store_for(output)
        self.token = uuid.uuid4().hex
        self._locked = False
        # The local committer moves aside files that appeared in the old output during the run;
        # in a store the commit refuses them instead (exit 6), so nothing is ever displaced.
        self.displaced: list[str] = []

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> StoreCommitter:
        self.acquire()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.release(clean=exc_type is None)

    def acquire(self) -> None:
        """Prove the run-state prefix ours (or create it), take the lock, refuse an existing output."""
        with store_errors(self.state, "take the run lock under"):
            probe_store(self.store, self.output, write=False)  # no delete permission: exit 6 before anything is made
            self._own_state(create=True)
            self._take_lock()
        try:
            self._check_existing()
        except BaseException:
            self.release(clean=False)
            raise

    def _own_state(self, *, create: bool) -> bool:
        """Whether the run-state prefix exists and is ours; create it (with its proof) if asked."""
        names = relative_names(self.store, self.state)
        owner = _json(self.store, self.state.join(OWNER)) if OWNER in names else None
        if names and not (owner and owner.get("format") == STATE_FORMAT and owner.get("output") == self.output.uri):
            raise OutputError(
                f"{self.state.uri} exists and was not made by the engine for {self.output.uri} (no valid {OWNER}); "
                "the engine keeps its lock and staging there and never adopts or deletes what it did not make. "
                "Move it away or choose another --output")
        if names or not create:
            return bool(names)
        try:
            self.store.put_bytes(self.state.join(OWNER), json.dumps(
                {"format": STATE_FORMAT, "output": self.output.uri, "created_at": _now()}).encode(), exclusive=True)
        except PreconditionFailed:
            return self._own_state(create=False)  # another run made it a moment ago: check it is ours
        return True

    def _holder(self) -> dict[str, Any] | None:
        return _json(self.store, self.lock_loc)

    def _lock_message(self, holder: dict[str, Any]) -> str:
        return (f"another engine run (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
                f"{holder.get('started_at', '?')}) holds the lock on {self.output.uri} ({self.lock_loc.uri}); wait "
                "for it to finish or stop it. If that run is gone (its machine died), delete that lock object and "
                "rerun with --resume")

    def _stale(self, holder: dict[str, Any]) -> bool:
        """A lock whose run is provably dead: same host, and no process with its pid."""
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _take_lock(self) -> None:
        body = json.dumps({"run": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "started_at": _now()}).encode()
        for attempt in (0, 1):
            try:
                self.store.put_bytes(self.lock_loc, body, exclusive=True)
            except PreconditionFailed:
                holder = self._holder() or {}
                if attempt == 0 and self._stale(holder):
                    self.store.delete([self.lock_loc])
                    continue
                raise OutputError(self._lock_message(holder)) from None
            if not self.store.conditional_create and (self._holder() or {}).get("run") != self.token:
                raise OutputError(self._lock_message(self._holder() or {}))
            self._locked = True
            return

    def inspect(self) -> dict[str, Any]:
        """Read-only (``--dry-run``): refuse what :meth:`acquire` would, say what a run would replace."""
        with store_errors(self.state, "look at"):
            has_state = self._own_state(create=False)
            holder = self._holder() if has_state else None
            if holder and not self._stale(holder):
                raise OutputError(self._lock_message(holder))
            exists = self._check_existing()
            state: dict[str, Any] = {"path": self.output.uri, "exists": exists}
            if not exists:
                state["holds"] = "nothing (it will be created at publish)"
            else:
                manifest = _json(self.store, self.output.join(MANIFEST)) or {}
                rows = (manifest.get("totals") or {}).get("rows_out")
                state["holds"] = (f"a complete engine output (run {manifest.get('run_id', '?')}"
                                  + (f", {rows:,} rows" if isinstance(rows, int) else "") + ")")
                state["replaced"] = True
            state["staged_parts"] = self.staged_parts() if has_state else 0
        return state

    def _check_existing(self) -> bool:
        """As on a local disk; names an interrupted commit recorded count as ours."""
        return check_score_output(self.output, overwrite=self.overwrite, protected=self.protected)

    def release(self, clean: bool = False) -> None:
        """Drop the lock (if it is still ours), and the run-state prefix when nothing is staged in it."""
        if not self._locked:
            return
        self._locked = False
        try:
            if (self._holder() or {}).get("run") == self.token:
                leftovers = set(relative_names(self.store, self.state)) - {OWNER, LOCK}
                # Nothing worth resuming left (a clean end, or a run refused before it staged
                # anything): the proof goes too, so nothing piles up beside the output.
                gone = [self.lock_loc] + ([self.state.join(OWNER)] if not leftovers else [])
                # The proof goes before the lock, so a run that sees no proof also sees no lock.
                self.store.delete(gone[::-1])
        except Exception:  # the run's own outcome is what to report
            pass

    # -- staging -----------------------------------------------------------------
    def prepare(self) -> None:
        """A fresh staging prefix, or the old one kept with ``--resume``."""
        if not self.resume:
            self.discard()

    def part_path(self, index: int) -> str:
        return self.staging_loc.join(part_name(index)).uri

    def rejected_path(self, index: int) -> str:
        return self.staging_loc.join(REJECTED, part_name(index)).uri

    def sidecar_path(self, index: int) -> str:
        return self.staging_loc.join(PARTS_META, f"part-{index:05d}.json").uri

    def finished_parts(self) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        meta = self.staging_loc.join(PARTS_META)
        try:
            names = [n for n in relative_names(self.store, meta) if n.endswith(".json")]
        except Exception:
            return found

        def read(name: str) -> dict[str, Any] | None:
            return _json(self.store, meta.join(name))

        for info in parallel(read, names):
            try:
                if info:
                    found[int(info["index"])] = info
            except (KeyError, TypeError, ValueError):
                continue
        return found

    def staged_parts(self) -> int:
        """Parts an interrupted run left in staging (for the ``--resume`` hint)."""
        try:
            return sum(1 for n in relative_names(self.store, self.staging_loc.join(PARTS_META)) if n.endswith(".json"))
        except Exception:
            return 0

    def discard(self) -> None:
        """Delete everything under staging (ours: it lies under the proven run-state prefix)."""
        with store_errors(self.staging_loc, "clear the staging prefix"):
            self.store.delete([self.staging_loc.join(n) for n in relative_names(self.store, self.staging_loc)])

    def put_staged_file(self, name: str, local_path: str) -> None:
        """Upload a file the client made (the run report) into staging."""
        with store_errors(self.staging_loc, "write"):
            self.store.upload_file(self.staging_loc.join(name), local_path)

    # -- commit ------------------------------------------------------------------
    def publish(self, manifest: dict[str, Any], keep_parts: set[str]) -> None:
        """Commit staging to the output prefix, manifest last and ``_SUCCESS`` after it."""
        with store_errors(self.output, "publish to"):
            self._publish(manifest, keep_parts)

    def _publish(self, manifest: dict[str, Any], keep_parts: set[str]) -> None:
        store, out = self.store, self.output
        if (self._holder() or {}).get("run") != self.token:
            raise OutputError(f"the lock {self.lock_loc.uri} is no longer this run's (it was removed or taken "
                              "over); nothing was published. The parts stay staged: rerun with --resume")
        # Re-checked under the lock, right before the commit: an object that appeared in the
        # output during the run is foreign and is never deleted.
        self._check_existing()
        old = set(relative_names(store, out))
        staged = relative_names(store, self.staging_loc)
        new = sorted(n for n in staged
                     if n in keep_parts or (n.startswith(REJECTED + "/") and n.split("/", 1)[1] in keep_parts))
        store.put_bytes(self.state.join(PUBLISHING), json.dumps(
            {"run_id": manifest.get("run_id"), "old": sorted(old), "new": new + [MANIFEST, SUCCESS]}).encode())
        pause_for_tests(TEST_PAUSE_BEFORE_SWAP)
        # _SUCCESS is the first object removed: from here readers that wait for it wait.
        store.delete([out.join(SUCCESS)])
        store.delete([out.join(MANIFEST)])
        parallel(lambda n: store.copy(self.staging_loc.join(n), out.join(n)), new)
        pause_for_tests(TEST_PAUSE_DURING_PUBLISH)
        stale = sorted(old - set(new) - {SUCCESS, MANIFEST})
        store.delete([out.join(n) for n in stale])
        store.put_bytes(out.join(MANIFEST), (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode())
        store.put_bytes(out.join(SUCCESS), b"")
        # Committed. What follows is tidying: a kill here leaves a complete output.
        store.delete([self.state.join(PUBLISHING)])
        self.discard()


def local_scratch(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A private local directory for files built before they go up to a store."""
    return tempfile.TemporaryDirectory(prefix=prefix)
