"""The output commit protocol: stage, check, publish in one rename, ``_SUCCESS`` last.

Modelled on the Hadoop/Spark output committers. For an output ``DIR`` everything the
run writes beside ``DIR`` lies in the engine's own directory ``.DIR.engine/``
(:mod:`engine.io.workspace`: created exclusively with a proof inside, locked with
``flock`` for the whole run, removed when nothing in it is worth resuming):

* ``staging/`` receives the part files (each written to a temporary name and renamed,
  so a retried task rewrites the same part), ``_rejected/``, and per-part sidecars in
  ``_parts/`` that let ``--resume`` reuse finished parts.
* Publishing moves the sidecars aside to ``parts/`` (so a run killed while publishing
  can still be resumed), writes ``_manifest.json`` then ``_SUCCESS`` into staging,
  checks again, under the lock, that the previous output holds only what the engine
  wrote, and swaps staging with ``DIR`` atomically (``renameat2(RENAME_EXCHANGE)`` on
  Linux; two renames with crash recovery through ``old/`` elsewhere). Readers see the
  old output or the new one, never a mixture.

Test hooks (for tests only; unset in production, where they cost one environment
lookup): ``ENGINE_TEST_PAUSE_BEFORE_SWAP=SECONDS`` sleeps right before the final
ownership check and swap, and ``ENGINE_TEST_PAUSE_AFTER_PART=SECONDS`` after each part
is committed to staging, so a test can kill a run inside those windows deterministically.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from engine.errors import OutputError
from engine.io.guard import check_replaceable, output_errors, read_json_marker
from engine.io.workspace import Workspace

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
REJECTED = "_rejected"
# engine.report.SCORE_REPORT, named here so the committer does not import the report package.
SCORE_REPORT_NAME = "_report.html"
PARTS_META = "_parts"
STAGING = "staging"  # inside the workspace
PARTS_ASIDE = "parts"  # inside the workspace: sidecars while publishing
RUN_KEY_METADATA = b"engine.run_key"
TEST_PAUSE_BEFORE_SWAP = "ENGINE_TEST_PAUSE_BEFORE_SWAP"
TEST_PAUSE_AFTER_PART = "ENGINE_TEST_PAUSE_AFTER_PART"


def pause_for_tests(variable: str) -> None:
    """Test hook: sleep for ``$variable`` seconds when it is set (see the module docstring)."""
    seconds = os.environ.get(variable)
    if seconds:
        time.sleep(float(seconds))


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
        self.workspace = Workspace(self.output, shown=self.shown, flag="--output")
        self.staging = self.workspace.entry(STAGING)
        # Sidecars of a staging being published, kept until the swap is done.
        self.parts_aside = self.workspace.entry(PARTS_ASIDE)
        self.lock_path = self.workspace.path
        self.displaced: list[str] = []

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> OutputCommitter:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the run lock, recover an interrupted publish, refuse an existing output."""
        self.workspace.acquire()
        try:
            self.workspace.recover()
            self._check_existing()
        except BaseException:
            # __exit__ does not run when __enter__ fails: free the lock here, or a caller
            # in the same process (the library, a test) could never take it again.
            self.release()
            raise

    def inspect(self) -> dict[str, Any]:
        """Read-only: refuse what :meth:`acquire` would refuse, and say what a run would replace.

        Creates nothing (no parent directory, no lock, no staging): ``--dry-run`` uses it.
        Returns the output's state and the staged parts an interrupted run left.
        """
        has_workspace = self.workspace.peek()
        out = self.output
        old = self.workspace.entry("old")
        restorable = has_workspace and old.is_dir() and not old.is_symlink() and not os.path.lexists(out)
        if not restorable:
            self._check_existing()
        state: dict[str, Any] = {"path": str(out), "exists": out.exists() or restorable}
        if restorable:
            state["holds"] = f"an output left at {old} by an interrupted publish (restored first)"
        elif not out.exists():
            state["holds"] = "nothing (it will be created at publish)"
        elif (out / SUCCESS).exists():
            try:
                previous = json.loads((out / MANIFEST).read_text())
            except (OSError, ValueError):
                previous = {}
            rows = previous.get("totals", {}).get("rows_out") if isinstance(previous, dict) else None
            run = previous.get("run_id", "?") if isinstance(previous, dict) else "?"
            state["holds"] = (f"a complete engine output (run {run}"
                              + (f", {rows:,} rows" if isinstance(rows, int) else "") + ")")
            state["replaced"] = True
        else:
            state["holds"] = "a non-engine directory" if any(out.iterdir()) else "an empty directory"
            state["replaced"] = True
        state["staged_parts"] = self.staged_parts() if has_workspace else 0
        return state

    def staged_parts(self) -> int:
        """How many finished parts are staged, in staging or set aside by a publish."""
        sidecars = [self.staging / PARTS_META, self.parts_aside]
        return sum(len(list(d.glob("part-*.json"))) for d in sidecars if d.is_dir() and not d.is_symlink())

    def release(self) -> None:
        self.workspace.release()

    def _check_existing(self) -> None:
        check_output_dir(self.output, overwrite=self.overwrite, shown=self.shown)

    # -- staging -----------------------------------------------------------------
    def prepare(self) -> None:
        """Create a fresh staging directory, or keep the old one with ``--resume``."""
        with output_errors(self.staging, "create the staging directory"):
            self._prepare()

    def _prepare(self) -> None:
        ws = self.workspace
        if not self.resume:
            ws.remove(PARTS_ASIDE)
            ws.make_dir(STAGING, fresh=True)
        elif ws.has_dir(PARTS_ASIDE) and not (self.staging / PARTS_META).is_dir():
            # Killed while publishing: put the sidecars back. Each part file carries its
            # own run key, so sidecars that outlived a finished swap reuse nothing.
            ws.make_dir(STAGING, fresh=False)
            ws.move(PARTS_ASIDE, f"{STAGING}/{PARTS_META}")
        ws.make_dir(STAGING, fresh=False)
        for sub in (REJECTED, PARTS_META):
            ws.make_dir(f"{STAGING}/{sub}", fresh=False)

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
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def discard(self) -> None:
        """Drop the staging directory (a failed run that cannot be resumed usefully)."""
        try:
            self.workspace.remove(STAGING)
            self.workspace.remove(PARTS_ASIDE)
        except OutputError:
            pass

    def publish(self, manifest: dict[str, Any], keep_parts: set[str]) -> None:
        """Clean staging to exactly ``keep_parts``, write manifest then ``_SUCCESS``, swap in."""
        with output_errors(self.output, "publish to"):
            self._publish(manifest, keep_parts)

    def _publish(self, manifest: dict[str, Any], keep_parts: set[str]) -> None:
        ws = self.workspace
        staging = self.staging
        ws.remove(PARTS_ASIDE)
        if ws.has_dir(f"{STAGING}/{PARTS_META}"):
            ws.move(f"{STAGING}/{PARTS_META}", PARTS_ASIDE)
        for entry in list(staging.iterdir()):
            if entry.is_file() and not entry.is_symlink() and entry.name not in keep_parts:
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

        def recheck() -> None:
            try:
                self._check_existing()
            except OutputError as exc:
                raise OutputError(
                    f"{exc} (found when publishing: the output changed during the run). Nothing was published "
                    f"and nothing was deleted; the finished parts are kept in {staging}: after dealing with it, "
                    "rerun the same command with --resume to reuse them"
                ) from None

        self.displaced = ws.publish(STAGING, recheck=recheck, owned=owned_output_names)
        ws.remove(PARTS_ASIDE)


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
