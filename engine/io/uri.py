"""Every path flag is a URI: ``s3://``, ``gs://``, ``abfs://``/``az://``, ``file://`` or a plain path.

:func:`parse` resolves a flag's text once: a plain path or ``file://`` URI stays a local
path (the local code paths and the local commit protocol apply unchanged); an object-store
URI becomes a :class:`Location` (scheme, bucket, key) whose :func:`engine.io.store.store_for`
gives the process's one file system for that store. Anything else with ``://`` is refused
with exit 2 naming the scheme, before anything is created (:func:`check`). A store key is
normalised once, here: empty segments (``a//b``) are dropped and ``.``/``..`` segments are
refused (exit 2), so every write and every comparison (output inside input, ...) uses the
one form the :class:`Location` holds.

Credentials never appear in a URI the engine accepts: a URI with a user part
(``s3://KEY:SECRET@bucket``) or a query string is refused (exit 2), so every path the
engine prints or writes into a manifest is free of secrets. Credentials and endpoints
come from each ecosystem's standard chain (for S3: ``AWS_ENDPOINT_URL``/
``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
instance roles; see docs/object-stores.md).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from engine.errors import UsageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: Scheme as typed -> the store kind that reads it.
STORE_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "abfs": "az", "abfss": "az", "az": "az"}
SUPPORTED = (*STORE_SCHEMES, "file")


def scheme_of(text: str | os.PathLike[str]) -> str | None:
    """The URI scheme of ``text`` (lower case), or None for a plain path."""
    m = _SCHEME.match(os.fspath(text)) if isinstance(text, str) else None
    return m.group(1).lower() if m else None


def is_remote(text: str | os.PathLike[str] | None) -> bool:
    """Whether ``text`` names an object in a store (not a local path)."""
    return text is not None and scheme_of(os.fspath(text)) in STORE_SCHEMES


@dataclass(frozen=True)
class Location:
    """An object-store location: ``kind`` (s3, gs, az), ``bucket`` and ``key`` (no slashes at the ends)."""

    scheme: str     # as the user typed it (s3, gs, abfs, ...), kept for messages and manifests
    bucket: str
    key: str = ""

    @property
    def kind(self) -> str:
        return STORE_SCHEMES[self.scheme]

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key else "")

    @property
    def fs_path(self) -> str:
        """The path as pyarrow's file systems name it: ``bucket/key``."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1] if self.key else ""

    @property
    def parent(self) -> Location:
        return Location(self.scheme, self.bucket, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def join(self, *names: str) -> Location:
        parts = [p for p in (self.key, *names) if p]
        return Location(self.scheme, self.bucket, "/".join(p.strip("/") for p in parts))

    def contains(self, other: Location) -> bool:
        """Whether ``other`` lies strictly under this prefix (same store and bucket)."""
        if (self.kind, self.bucket) != (other.kind, other.bucket) or self.key == other.key:
            return False
        return not self.key or other.key.startswith(self.key + "/")

    def __str__(self) -> str:
        return self.uri


def check(text: str | os.PathLike[str] | None, flag: str) -> None:
    """Exit 2 (:class:`UsageError`) for a URI the engine does not read, naming the scheme and the flag.

    Called for every path flag before anything is read or created.
    """
    if text is None:
        return
    raw = os.fspath(text)
    scheme = scheme_of(raw)
    if scheme is None:
        return
    if scheme not in SUPPORTED:
        raise UsageError(
            f"{flag} {raw}: the scheme {scheme}:// is not supported; the engine reads "
            "s3://, gs://, abfs:// (az://), file:// and plain paths"
        )
    rest = raw[len(scheme) + 3:]
    if scheme == "file":
        if rest and not rest.startswith("/"):
            raise UsageError(f"{flag} {raw}: a file:// URI needs an absolute path (file:///data/x)")
        return
    authority = rest.split("/", 1)[0]
    if "@" in authority or ":" in authority:
        raise UsageError(
            f"{flag}: a {scheme}:// URI with a user, password or port part is not accepted (credentials "
            "belong in the environment or the store's profile, never in a path the engine prints); "
            f"give {scheme}://BUCKET/PREFIX and set the credentials as docs/object-stores.md says"
        )
    if "?" in rest or "#" in rest:
        raise UsageError(f"{flag} {raw.split('?', 1)[0]}: options in a URI (?...) are not accepted; "
                         "set the endpoint and region in the environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION)")
    if not authority:
        raise UsageError(f"{flag} {raw}: no bucket (or container) named; give {scheme}://BUCKET/PREFIX")
    dots = [p for p in rest.split("/")[1:] if p in (".", "..")]
    if dots:
        # A key is a name, not a path: S3 stores "x/../out" literally while other clients
        # (pyarrow) normalise it, so the engine would write one object and read another.
        raise UsageError(f"{flag} {raw}: a {scheme}:// key may not hold '{dots[0]}' segments (object stores keep "
                         "them literally, file systems resolve them); give the prefix as meant, e.g. "
                         f"{scheme}://{authority}/{posixpath.normpath('/' + rest.split('/', 1)[1]).strip('/')}")


def parse(text: str | os.PathLike[str], flag: str) -> Location | str:
    """A checked path flag: a :class:`Location` in a store, or a local path (``file://`` stripped)."""
    check(text, flag)
    raw = os.fspath(text)
    scheme = scheme_of(raw)
    if scheme is None:
        return raw
    rest = raw[len(scheme) + 3:]
    if scheme == "file":
        return rest or "/"
    bucket, _, key = rest.partition("/")
    return Location(scheme, bucket, "/".join(p for p in key.split("/") if p))


def local_only(text: str | os.PathLike[str], flag: str) -> str:
    """A flag that reads or writes local files only (a joblib file, the demo's directory): exit 2 for a store URI."""
    parsed = parse(text, flag)
    if isinstance(parsed, Location):
        raise UsageError(f"{flag} {parsed.uri}: the scheme {parsed.scheme}:// is not supported for {flag}, which "
                         "takes a local path")
    return parsed


def local(text: str | os.PathLike[str]) -> str:
    """A local path flag as a path (``file://`` stripped); only for texts that are not remote."""
    parsed = parse(text, "path")
    assert isinstance(parsed, str), "local() on a store URI"
    return parsed


def shown(text: str | os.PathLike[str]) -> str:
    """How a path flag is shown in manifests and messages: a store URI as normalised, a local path resolved."""
    if isinstance(text, str) and text.startswith(("models:/", "runs:/")):
        return text  # an MLflow model URI (engine/integrations/mlflow.py), not a path
    parsed = parse(text, "path")
    if isinstance(parsed, Location):
        return parsed.uri
    return os.path.realpath(parsed) if parsed else parsed
