"""Object stores as the engine uses them: one file system per store and process, and the few
operations the readers, the part writers and the store commit protocol need.

Reads go through pyarrow's own file systems (``S3FileSystem``, ``GcsFileSystem``; fsspec's
``adlfs`` wrapped in ``PyFileSystem(FSSpecHandler)`` for Azure): ranged reads, Parquet
pre-buffering with concurrent range requests. Writes to S3 go through boto3, for two
things pyarrow's file system does not expose: a conditional create (``If-None-Match: *``,
the run lock) and multipart uploads that also complete against S3-compatible servers whose
``CompleteMultipartUpload`` answer pyarrow rejects (moto 5.2.1, getmoto/moto#10055). Other
stores write through their pyarrow file system (no conditional create: see
docs/object-stores.md for what that means for the lock).

Nothing here is pickled into a task: a task carries URIs (strings), and every process
builds its own file system from its own environment (:func:`store_for`, cached), so no
credential ever travels in a task graph or lands in a file.

Module-level helpers (:func:`open_parquet`, :func:`read_metadata`, :func:`exists`,
:func:`remove`, :func:`put_bytes`, :func:`upload_file`) take a path flag's text or a part's
path and do the local thing for local paths, the store thing for URIs.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import OutputError, UsageError
from engine.io.uri import Location, is_remote, parse

#: Parts at or above this size go up as multipart uploads, in chunks of this size.
MULTIPART_BYTES = 8 << 20
UPLOAD_THREADS = 4
#: Threads that copy and delete objects at commit (each a small request).
COMMIT_THREADS = 8


class PreconditionFailed(Exception):
    """A conditional create found the object already there."""


@dataclass(frozen=True)
class ObjectInfo:
    path: str       # fs path: bucket/key
    size: int
    mtime_ns: int


class Store:
    """A store reached through a pyarrow file system (reads; writes where no better way exists)."""

    conditional_create = False

    def __init__(self, kind: str, fs: Any) -> None:
        self.kind, self.fs = kind, fs

    # -- reading ---------------------------------------------------------------
    def info(self, loc: Location) -> str:
        """'file', 'dir' or 'missing' (a prefix with objects under it is a 'dir')."""
        from pyarrow.fs import FileType

        found = self.fs.get_file_info(loc.fs_path)
        if found.type == FileType.File:
            return "file"
        if found.type == FileType.Directory:
            return "dir"
        return "missing"

    def bucket_exists(self, loc: Location) -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(loc.bucket).type != FileType.NotFound

    def list(self, prefix: Location) -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursively), sorted by path; empty if none."""
        from pyarrow.fs import FileSelector, FileType

        infos = self.fs.get_file_info(FileSelector(prefix.fs_path, recursive=True, allow_not_found=True))
        return sorted((ObjectInfo(i.path, int(i.size or 0), int(i.mtime_ns or 0))
                       for i in infos if i.type == FileType.File), key=lambda o: o.path)

    def open_input(self, loc: Location) -> Any:
        return self.fs.open_input_file(loc.fs_path)

    def read_bytes(self, loc: Location, limit: int = 64 << 20) -> bytes | None:
        """The object's bytes (at most ``limit``), or None when it does not exist."""
        try:
            with self.fs.open_input_file(loc.fs_path) as fh:
                return fh.read(limit)
        except FileNotFoundError:
            return None

    # -- writing ---------------------------------------------------------------
    def put_bytes(self, loc: Location, data: bytes, *, exclusive: bool = False) -> None:
        """Write one object. ``exclusive``: fail with :class:`PreconditionFailed` if it exists
        (checked, then written: not atomic on this store; see :attr:`conditional_create`)."""
        if exclusive and self.info(loc) == "file":
            raise PreconditionFailed(loc.uri)
        with self.fs.open_output_stream(loc.fs_path) as out:
            out.write(data)

    def upload_file(self, loc: Location, local_path: str) -> None:
        _stream_up(self.fs, local_path, loc.fs_path)

    def copy(self, src: Location, dst: Location) -> None:
        self.fs.copy_file(src.fs_path, dst.fs_path)

    def delete(self, locs: Iterable[Location]) -> None:
        for loc in locs:
            with suppress(FileNotFoundError):
                self.fs.delete_file(loc.fs_path)


def _stream_up(fs: Any, local_path: str, fs_path: str) -> None:
    with open(local_path, "rb") as src, fs.open_output_stream(fs_path) as out:
        while chunk := src.read(MULTIPART_BYTES):
            out.write(chunk)


class S3Store(Store):
    """S3 and S3-compatible stores: pyarrow reads, boto3 writes (conditional create, multipart)."""

    conditional_create = True

    def __init__(self, fs: Any, client: Any) -> None:
        super().__init__("s3", fs)
        self.client = client

    def put_bytes(self, loc: Location, data: bytes, *, exclusive: bool = False) -> None:
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": "*"} if exclusive else {}
        try:
            self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **extra)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if exclusive and code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                raise PreconditionFailed(loc.uri) from None
            raise _os_error(exc, loc) from None

    def upload_file(self, loc: Location, local_path: str) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import ClientError

        config = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                max_concurrency=UPLOAD_THREADS, use_threads=True)
        try:
            self.client.upload_file(local_path, loc.bucket, loc.key, Config=config)
        except (ClientError, Exception) as exc:  # boto3 wraps failures in S3UploadFailedError
            if isinstance(exc, OSError):
                raise
            raise OSError(f"upload to {loc.uri} failed: {_reason(exc)}") from None

    def copy(self, src: Location, dst: Location) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.copy_object(Bucket=dst.bucket, Key=dst.key,
                                    CopySource={"Bucket": src.bucket, "Key": src.key})
        except ClientError as exc:
            raise _os_error(exc, dst) from None

    def delete(self, locs: Iterable[Location]) -> None:
        """Delete objects (absent ones are not an error); OSError naming the first key any failure hit."""
        from botocore.exceptions import ClientError

        by_bucket: dict[str, list[str]] = {}
        for loc in locs:
            by_bucket.setdefault(loc.bucket, []).append(loc.key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):
                try:
                    answer = self.client.delete_objects(Bucket=bucket, Delete={
                        "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
                except ClientError as exc:
                    raise _os_error(exc, Location("s3", bucket, keys[i])) from None
                # DeleteObjects answers 200 with a per-key list of failures (AccessDenied, ...):
                # any of them is a failed delete, never a silent success.
                failed = answer.get("Errors") or []
                if failed:
                    first = failed[0]
                    more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
                    raise OSError(f"{Location('s3', bucket, str(first.get('Key', '?'))).uri}{more} could not be "
                                  f"deleted: {first.get('Code', '?')}: {first.get('Message', '')}".rstrip(": "))


def _reason(exc: BaseException) -> str:
    """A store error in words: its code and message, never the request (which may be signed)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def _os_error(exc: BaseException, loc: Location) -> OSError:
    return OSError(f"{loc.uri}: {_reason(exc)}")


_STORES: dict[tuple[str, ...], Store] = {}
_LOCK = threading.Lock()


def _env_key(kind: str) -> tuple[str, ...]:
    names = {"s3": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"),
             "gs": ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"),
             "az": ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_CONNECTION_STRING")}[kind]
    # Only which endpoint/profile is in use keys the cache; secrets are not kept here.
    return (kind, *(os.environ.get(n, "") if "CONNECTION" not in n else str(bool(os.environ.get(n)))
                    for n in names))


def store_for(loc: Location) -> Store:
    """This process's store for ``loc`` (made once per store kind and environment)."""
    key = _env_key(loc.kind)
    with _LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = _make_store(loc.kind)
        return store


def s3_endpoint() -> tuple[str | None, str | None]:
    """(endpoint host[:port], scheme) from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, or (None, None).

    pyarrow 26's S3FileSystem does not read these variables itself (checked: without an
    explicit override it goes to amazonaws.com); boto3 does. Both get the same endpoint.
    """
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, None
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.rstrip("/"), "https"
    return rest.rstrip("/"), scheme


def _make_store(kind: str) -> Store:
    if kind == "s3":
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise UsageError("s3:// paths need boto3: pip install 'customer-scoring-engine[s3]' "
                             "(or pip install boto3)") from None
        from pyarrow.fs import S3FileSystem

        endpoint, scheme = s3_endpoint()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        kwargs: dict[str, Any] = {}
        if endpoint:
            kwargs.update(endpoint_override=endpoint, scheme=scheme)
        if region:
            kwargs["region"] = region
        fs = S3FileSystem(**kwargs)
        client = boto3.session.Session().client(
            "s3", config=Config(retries={"max_attempts": 5, "mode": "standard"},
                                max_pool_connections=max(10, COMMIT_THREADS + UPLOAD_THREADS)))
        return S3Store(fs, client)
    if kind == "gs":
        from pyarrow.fs import GcsFileSystem

        host = os.environ.get("STORAGE_EMULATOR_HOST")
        if host:
            scheme, _, rest = host.partition("://")
            return Store("gs", GcsFileSystem(endpoint_override=rest or scheme, scheme=scheme if rest else "http",
                                             anonymous=True))
        return Store("gs", GcsFileSystem())
    if kind == "az":
        try:
            import adlfs
        except ImportError:
            raise UsageError("abfs:// and az:// paths need adlfs: pip install 'customer-scoring-engine[azure]'"
                             ) from None
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return Store("az", PyFileSystem(FSSpecHandler(adlfs.AzureBlobFileSystem(
            account_name=os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")))))
    raise UsageError(f"unknown store kind {kind}")


# -- local-or-remote helpers (a path's text decides) ------------------------------------
def location(text: str) -> Location | None:
    """The :class:`Location` of a store URI, None for a local path."""
    if not is_remote(text):
        return None
    parsed = parse(text, "path")
    assert isinstance(parsed, Location)
    return parsed


def open_parquet(path: Any, **kwargs: Any) -> pq.ParquetFile:
    """``pq.ParquetFile`` over a local file (a path or an open file) or a store object (pre-buffered
    with concurrent ranges)."""
    loc = location(path) if isinstance(path, str) else None
    if loc is None:
        return pq.ParquetFile(path, **kwargs)
    kwargs.setdefault("pre_buffer", True)
    return pq.ParquetFile(store_for(loc).open_input(loc), **kwargs)


def read_metadata(path: Any) -> pq.FileMetaData:
    loc = location(path) if isinstance(path, str) else None
    if loc is None:
        return pq.read_metadata(path)
    with store_for(loc).open_input(loc) as fh:
        return pq.read_metadata(fh)


def exists(path: str) -> bool:
    loc = location(path)
    if loc is None:
        return os.path.isfile(path)
    return store_for(loc).info(loc) == "file"


def remove(path: str) -> None:
    """Delete one file or object if it is there."""
    loc = location(path)
    if loc is None:
        Path(path).unlink(missing_ok=True)
    else:
        store_for(loc).delete([loc])


def put_bytes(path: str, data: bytes) -> None:
    """Write small bytes (a sidecar) to a store object; local paths go through ``write_atomic``."""
    from engine.io.commit import write_atomic

    loc = location(path)
    if loc is None:
        write_atomic(Path(path), data)
        return
    with store_errors(loc, "write"):
        store_for(loc).put_bytes(loc, data)


def upload_file(path: str, local_path: str) -> None:
    loc = location(path)
    assert loc is not None
    with store_errors(loc, "upload"):
        store_for(loc).upload_file(loc, local_path)


def file_digest(path: str) -> tuple[int, str]:
    """(bytes, "sha256:...") of a local file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, "sha256:" + digest.hexdigest()


@contextmanager
def store_errors(loc: Location | str, doing: str) -> Iterator[None]:
    """Any failure talking to the store -> :class:`OutputError` (exit 6) naming the object."""
    try:
        yield
    except (OutputError, UsageError, PreconditionFailed):
        raise
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"cannot {doing} {loc}: {exc}; check the store, the bucket and the credentials "
                          "(docs/object-stores.md), then rerun (with --resume where the run staged parts)"
                          ) from None


def parallel(fn: Any, items: list[Any], threads: int = COMMIT_THREADS) -> list[Any]:
    """``fn`` over ``items`` on a few threads (store requests are latency-bound)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(fn, items))
