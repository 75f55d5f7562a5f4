"""Input discovery and reading of customer Parquet datasets.

An input is one Parquet file, a directory of Parquet files (searched recursively), or
a hive-partitioned directory (``region=north/part-0.parquet``): partition keys become
columns. Names starting with ``_`` or ``.`` are skipped, as pyarrow and Spark do.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import InputError
from engine.io.matrix import BlockReader
from engine.io.store import open_parquet, read_metadata
from engine.io.uri import Location, parse

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
STREAM_BUFFER_BYTES = 4 << 20
SAMPLE_STREAM_ROWS = 1_048_576


@dataclass(frozen=True)
class FileInfo:
    """One Parquet file of the input, as its footer describes it."""

    path: str
    size: int
    mtime_ns: int
    num_rows: int
    row_group_rows: tuple[int, ...]
    schema: pa.Schema
    partition_values: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class InputDataset:
    """A discovered dataset: its root, its files, and the hive partition columns."""

    root: str
    files: tuple[FileInfo, ...]
    partition_columns: dict[str, pa.DataType]

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    def fingerprint(self) -> list[dict[str, Any]]:
        return [f.fingerprint() for f in self.files]

    def column_type(self, name: str) -> pa.DataType | None:
        """The column's type in the first file that has it (or its partition type)."""
        if name in self.partition_columns:
            return self.partition_columns[name]
        for f in self.files:
            idx = f.schema.get_field_index(name)
            if idx >= 0:
                return f.schema.field(idx).type
        return None


def is_numeric(dtype: pa.DataType) -> bool:
    """Types the engine converts to floating point features."""
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.parts)


def _list_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for name in sorted(filenames):
            rel = Path(dirpath, name).relative_to(root)
            if not _hidden(rel) and name.lower().endswith(PARQUET_SUFFIXES):
                found.append(Path(dirpath, name))
    return found


def _partition_values(root: Path, path: Path) -> dict[str, str]:
    if root.is_file():
        return {}
    values = {}
    for part in path.relative_to(root).parts[:-1]:
        if "=" in part:
            key, _, value = part.partition("=")
            values[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return values


def _read_footer(root: Path, path: Path) -> FileInfo:
    try:
        stat = path.stat()
        if not S_ISREG(stat.st_mode):
            # A FIFO would block the footer read forever; a socket or device is no Parquet file.
            raise InputError(f"{path} is not a regular file (a FIFO, socket or device), not Parquet; "
                             "remove it from the input")
        if stat.st_size == 0:
            raise InputError(f"{path} is an empty file (0 bytes), not Parquet; remove it or regenerate it")
        with input_source(str(path)) as source:
            meta = pq.read_metadata(source)
        schema = meta.schema.to_arrow_schema()
    except InputError:
        raise
    except PermissionError:
        raise InputError(f"{path} cannot be read (permission denied); fix its permissions") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"{path} is not a readable Parquet file ({type(exc).__name__}: {exc}); "
            "remove or replace it, then rerun"
        ) from None
    rg_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return FileInfo(
        path=str(path),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        num_rows=meta.num_rows,
        row_group_rows=rg_rows,
        schema=schema,
        partition_values=_partition_values(root, path),
    )


def _partition_types(files: Sequence[FileInfo]) -> dict[str, pa.DataType]:
    keys: dict[str, list[str]] = {}
    for f in files:
        for key, value in f.partition_values.items():
            keys.setdefault(key, []).append(value)
    types = {}
    for key, values in keys.items():
        try:
            for v in values:
                int(v)
            types[key] = pa.int64()
        except ValueError:
            types[key] = pa.string()
    return types


@contextlib.contextmanager
def input_source(path: str) -> Iterator[Any]:
    """What pyarrow should open for ``path``: the path itself, or an open Python file when the
    name is not UTF-8 (pyarrow's own file system cannot encode such a name)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        with open(path, "rb") as fh:
            yield fh
        return
    yield path


def _refuse_hive_conflicts(files: Sequence[FileInfo]) -> None:
    """A hive key (``age=5/``) that names a column of the file is a conflict, not an override.

    Either value could be meant; taking one silently scores every row with it.
    """
    for f in files:
        clash = sorted(k for k in f.partition_values if k in f.schema.names)
        if clash:
            raise InputError(
                f"{shown_path(f.path)} lies under the hive partition directory "
                f"{', '.join(f'{k}={f.partition_values[k]}' for k in clash)} but also holds a column "
                f"{', '.join(repr(k) for k in clash)} of its own; the engine cannot tell which is meant. "
                "Rename the directory (or drop the column from the file)"
            )


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path for messages: bytes that are not UTF-8 shown escaped (``\\xff``), never a crash."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def discover(path: str | os.PathLike[str], csv_types: dict[str, pa.DataType] | None = None) -> InputDataset:
    """Find the input's Parquet files and read their footers (in parallel threads).

    ``path`` may be a store URI (``s3://bucket/prefix``): the same rules, over the
    objects under that prefix (or that one object). A CSV file or a directory of CSV
    files is read through :mod:`engine.io.csv_input` (``csv_types`` names column types).
    """
    parsed = parse(os.fspath(path), "--input")
    if isinstance(parsed, Location):
        return _discover_store(parsed)
    root = Path(parsed)
    if not root.exists():
        raise InputError(f"input {root} does not exist; pass a Parquet file or a directory of Parquet files")
    from engine.io.csv_input import csv_as_parquet, csv_files, skipped_files

    csv = csv_files(root, PARQUET_SUFFIXES)
    if csv is not None:
        from dataclasses import replace

        return replace(discover(csv_as_parquet(root, csv, csv_types)), root=str(root))
    skipped = skipped_files(root, PARQUET_SUFFIXES)
    if skipped:
        from engine import log

        log.event("input.skipped", f"warning: input {root}: {len(skipped)} file(s) that are not Parquet are "
                  f"skipped: {', '.join(skipped[:5])}" + (" ..." if len(skipped) > 5 else "")
                  + " (CSV is read only from an input of CSV files alone)", level="warning", files=skipped[:20])
    files = _list_files(root)
    if not files:
        raise InputError(
            f"input {root} holds no Parquet files (looked for {', '.join(PARQUET_SUFFIXES)} "
            "recursively, skipping names that start with '_' or '.')"
        )
    def read(p: Path) -> FileInfo | InputError:
        try:
            return _read_footer(root, p)
        except InputError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        infos = list(pool.map(read, files))
    # One message for every unreadable file, so one rerun is enough after fixing them.
    errors = [str(e) for e in infos if isinstance(e, InputError)]
    if len(errors) == 1:
        raise InputError(errors[0])
    if errors:
        raise InputError(f"{len(errors)} of {len(files)} input files cannot be used:\n  - " + "\n  - ".join(errors))
    found = [i for i in infos if isinstance(i, FileInfo)]
    _refuse_hive_conflicts(found)
    return InputDataset(root=str(root), files=tuple(found), partition_columns=_partition_types(found))


def _discover_store(root: Location) -> InputDataset:
    """:func:`discover` over an object store: one listing, then the footers in parallel.

    Footers are read with ranged requests (a few KiB per file), 16 at a time.
    """
    from engine.io.store import store_errors, store_for

    store = store_for(root)
    with store_errors(root, "list the input", role="input"):
        kind = store.info(root)
        if kind == "missing" and not store.bucket_exists(root):
            raise InputError(f"input {root.uri}: the bucket {root.bucket} does not exist or cannot be seen with "
                             "these credentials (check AWS_ENDPOINT_URL and the credentials)")
        objects = [o for o in store.list(root)] if kind != "file" else []
    if kind == "file":
        from pyarrow.fs import FileType

        info = store.fs.get_file_info(root.fs_path)
        if info.type != FileType.File:
            raise InputError(f"input {root.uri} does not exist")
        candidates = [(root.uri, int(info.size or 0), int(info.mtime_ns or 0), {})]
    else:
        base = root.fs_path + "/"
        candidates = []
        for o in objects:
            rel = o.path[len(base):]
            if _hidden(Path(rel)) or not rel.lower().endswith(PARQUET_SUFFIXES):
                continue
            values = {}
            for part in rel.split("/")[:-1]:
                if "=" in part:
                    key, _, value = part.partition("=")
                    values[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
            candidates.append((f"{root.scheme}://{o.path}", o.size, o.mtime_ns, values))
    if kind == "missing":
        raise InputError(f"input {root.uri} does not exist; pass a Parquet object or a prefix of Parquet objects")
    if not candidates:
        raise InputError(f"input {root.uri} holds no Parquet files (looked for {', '.join(PARQUET_SUFFIXES)} "
                         "under the prefix, skipping names that start with '_' or '.')")

    def read(c: tuple[str, int, int, dict[str, str]]) -> FileInfo | InputError:
        uri, size, mtime_ns, values = c
        if size == 0:
            return InputError(f"{uri} is an empty object (0 bytes), not Parquet; remove it or regenerate it")
        try:
            meta = read_metadata(uri)
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            return InputError(f"{uri} is not a readable Parquet file ({type(exc).__name__}: {exc}); "
                              "remove or replace it, then rerun")
        rg_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        return FileInfo(uri, size, mtime_ns, meta.num_rows, rg_rows, schema, values)

    with ThreadPoolExecutor(max_workers=min(16, len(candidates))) as pool:
        infos = list(pool.map(read, candidates))
    errors = [str(e) for e in infos if isinstance(e, InputError)]
    if len(errors) == 1:
        raise InputError(errors[0])
    if errors:
        raise InputError(f"{len(errors)} of {len(candidates)} input files cannot be used:\n  - " + "\n  - ".join(errors))
    found = [i for i in infos if isinstance(i, FileInfo)]
    return InputDataset(root=root.uri, files=tuple(found), partition_columns=_partition_types(found))


@dataclass(frozen=True)
class Fragment:
    """One unit of work: a file, a contiguous range of its row groups, or one oversized row group.

    A row group larger than the memory budget cannot be split by row ranges cheaply (Parquet
    has no row-level seek: every range would decode the group from its start), so it is
    one fragment read as a stream of ``stream_rows``-row batches (:func:`iter_fragment`).
    """

    index: int
    path: str
    row_groups: tuple[int, ...] | None
    num_rows: int
    partition_values: dict[str, str] = field(default_factory=dict)
    row_offset: int = 0          # first row of this fragment within its file
    stream_rows: int | None = None  # read in batches of this many rows (an oversized row group)

    def describe(self) -> str:
        if self.row_groups is None:
            return self.path
        if self.stream_rows is not None:
            return f"{self.path} row group {self.row_groups[0]} (rows {self.row_offset}..{self.row_offset + self.num_rows - 1})"
        return f"{self.path} row groups {self.row_groups[0]}..{self.row_groups[-1]}"


def _split_file(row_group_rows: Sequence[int], max_rows: int) -> list[tuple[tuple[int, ...], int, int, bool]]:
    """(row groups, rows, first row, streamed) of each piece of one file."""
    pieces: list[tuple[tuple[int, ...], int, int, bool]] = []
    group: list[int] = []
    group_rows = group_start = offset = 0
    for rg, rows in enumerate(row_group_rows):
        if group and (rows > max_rows or group_rows + rows > max_rows):
            pieces.append((tuple(group), group_rows, group_start, False))
            group, group_rows = [], 0
        if rows > max_rows:
            pieces.append(((rg,), rows, offset, True))
        else:
            if not group:
                group_start = offset
            group.append(rg)
            group_rows += rows
        offset += rows
    if group:
        pieces.append((tuple(group), group_rows, group_start, False))
    return pieces


def plan_fragments(dataset: InputDataset, max_rows: int | None = None) -> list[Fragment]:
    """One fragment per file; files above ``max_rows`` rows are split by row groups.

    Row groups are packed greedily into fragments of at most ``max_rows`` rows; a single
    row group larger than that is one fragment streamed in ``max_rows``-row batches, so
    a 20M-row single-row-group file is never held whole (nor decoded twice).
    """
    fragments: list[Fragment] = []
    for info in dataset.files:
        if max_rows is None or info.num_rows <= max_rows or not info.row_group_rows:
            fragments.append(Fragment(len(fragments), info.path, None, info.num_rows, info.partition_values))
            continue
        for row_groups, rows, offset, streamed in _split_file(info.row_group_rows, max_rows):
            fragments.append(Fragment(len(fragments), info.path, row_groups, rows, info.partition_values,
                                      row_offset=offset, stream_rows=max_rows if streamed else None))
    return fragments


def _partition_column(name: str, value: str, dtype: pa.DataType, n: int) -> pa.Array:
    scalar = pa.scalar(int(value) if pa.types.is_integer(dtype) else value, type=dtype)
    return pa.repeat(scalar, n) if hasattr(pa, "repeat") else pa.array([scalar.as_py()] * n, type=dtype)


def _with_partition_columns(table: pa.Table, fragment: Fragment, columns: Sequence[str],
                            partition_types: dict[str, pa.DataType]) -> pa.Table:
    for name in columns:
        if name in partition_types:
            value = fragment.partition_values.get(name)
            if value is None:
                raise InputError(f"{fragment.path} has no hive partition value for column {name!r}")
            table = table.append_column(name, _partition_column(name, value, partition_types[name], table.num_rows))
    return table.select(list(columns))


def iter_fragment(fragment: Fragment, columns: Sequence[str],
                  partition_types: dict[str, pa.DataType] | None = None,
                  batch_rows: int | None = None, dictionary: Sequence[str] = ()) -> Iterator[pa.Table]:
    """The fragment's ``columns`` as one table, or as a stream of batches.

    ``batch_rows`` set: every fragment streams in batches of at most that many rows
    (the scorer's bounded memory). Unset: a streamed fragment (an oversized row group)
    streams in its ``stream_rows`` batches, any other is read whole. Always yields at
    least one table (an empty one for a fragment without rows), so that every fragment
    produces a part file with the output's schema. String columns named in ``dictionary``
    (categorical features) stream dictionary-encoded as Parquet stores them, so their
    values are never materialised as strings (other types ignore it).
    """
    partition_types = partition_types or {}
    file_cols = [c for c in columns if c not in partition_types]
    if batch_rows is None and fragment.stream_rows is None:
        yield read_fragment(fragment, columns, partition_types)
        return
    batch_size = batch_rows if batch_rows is not None else fragment.stream_rows
    yielded = False
    try:
        # Page by page through a small buffer, no pre-buffering: otherwise the reader loads
        # every whole column chunk, i.e. the whole compressed row group (measured: 580 MB of
        # Arrow memory for a 12M-row group read in 256k-row batches, 178 MB this way), and
        # pre-buffers every row group of the fragment at once.
        # In a store, a fragment that is not one oversized row group is pre-buffered: its
        # column chunks come in as coalesced ranges fetched concurrently (pyarrow's I/O
        # threads), not one small request per page. Its size is bounded by --partition-rows.
        with input_source(fragment.path) as source:
            pf = open_parquet(source, buffer_size=STREAM_BUFFER_BYTES,
                              pre_buffer=_remote(fragment.path) and fragment.stream_rows is None,
                              read_dictionary=[c for c in dictionary if c in file_cols] or None)
            row_groups = list(fragment.row_groups) if fragment.row_groups is not None else None
            batches = pf.iter_batches(batch_size=batch_size, row_groups=row_groups, columns=file_cols)
            for batch in batches:
                yielded = True
                yield _with_partition_columns(pa.Table.from_batches([batch]), fragment, columns, partition_types)
            if not yielded:
                empty = pa.schema([pf.schema_arrow.field(c) for c in file_cols]).empty_table()
                yield _with_partition_columns(empty, fragment, columns, partition_types)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{fragment.describe()}: cannot be read ({type(exc).__name__}: {exc})") from None


def read_fragment(
    fragment: Fragment,
    columns: Sequence[str],
    partition_types: dict[str, pa.DataType] | None = None,
) -> pa.Table:
    """Read only ``columns`` of one fragment whole; hive partition keys are materialised as columns."""
    partition_types = partition_types or {}
    if fragment.stream_rows is not None:
        streamed = pa.concat_tables(iter_fragment(fragment, columns, partition_types))
        check_rows(fragment, streamed.num_rows)
        return streamed
    file_cols = [c for c in columns if c not in partition_types]
    try:
        with input_source(fragment.path) as source:
            pf = open_parquet(source)
            if fragment.row_groups is None:
                table = pf.read(columns=file_cols)
            else:
                table = pf.read_row_groups(list(fragment.row_groups), columns=file_cols)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{fragment.describe()}: cannot be read ({type(exc).__name__}: {exc})") from None
    check_rows(fragment, table.num_rows)
    return _with_partition_columns(table, fragment, columns, partition_types)


def check_rows(fragment: Fragment, rows: int) -> None:
    """Exit 3 "corrupt file" when the rows read are not the rows the footer promised."""
    if rows != fragment.num_rows:
        raise InputError(corrupt_rows_message(fragment.describe(), rows, fragment.num_rows))


def corrupt_rows_message(where: str, rows: int, footer: int) -> str:
    return (f"{where}: corrupt file: its footer says {footer:,} rows but its data holds {rows:,} (or the file was "
            "rewritten during the run); restore or rewrite the file, then rerun")


def _remote(path: str) -> bool:
    return "://" in path


def table_to_matrix(table: pa.Table, features: Sequence[str], dtype: Any = np.float64,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Feature columns as one Fortran-ordered ``(n, F)`` matrix, nulls as NaN.

    Column-major keeps each column's copy contiguous (one memcpy-like pass per Arrow
    chunk) and is the layout the CUDA kernels read coalesced. Columns are read straight
    from their Arrow buffers (:func:`engine.io.matrix.chunk_values`).
    """
    n = table.num_rows
    if out is None:
        out = np.empty((n, len(features)), dtype=dtype, order="F")
    # The scorer's block reader, with one block of every row: one conversion for both.
    return BlockReader(table, features, max(n, 1), dtype).fill(out, 0, n)


@dataclass(frozen=True)
class FileSample:
    """The rows of one file that training reads: whole (``takes`` None) or per row group."""

    index: int
    path: str
    num_rows: int
    partition_values: dict[str, str] = field(default_factory=dict)
    # (row group, row numbers within it) for each row group that holds sampled rows
    takes: tuple[tuple[int, np.ndarray], ...] | None = None


def plan_training_reads(dataset: InputDataset, sample_rows: int | None, seed: int) -> list[FileSample]:
    """Which rows of which file a training run reads: all, or a seeded uniform sample."""
    total = dataset.num_rows
    if sample_rows is None or sample_rows >= total:
        return [FileSample(i, info.path, info.num_rows, info.partition_values)
                for i, info in enumerate(dataset.files)]
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=sample_rows, replace=False))
    plan, base = [], 0
    for i, info in enumerate(dataset.files):
        takes = []
        for rg, rows in enumerate(info.row_group_rows):
            lo, hi = np.searchsorted(chosen, [base, base + rows])
            if hi > lo:
                takes.append((rg, chosen[lo:hi] - base))
            base += rows
        if takes:
            plan.append(FileSample(i, info.path, info.num_rows, info.partition_values, tuple(takes)))
    return plan


def read_file_sample(sample: FileSample, columns: Sequence[str],
                     partition_types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Read the planned rows of one file; pure and picklable, so it can run on a Dask worker."""
    if sample.takes is None:
        frag = Fragment(sample.index, sample.path, None, sample.num_rows, sample.partition_values)
        return read_fragment(frag, columns, partition_types)
    tables = []
    with input_source(sample.path) as source:
        meta = read_metadata(source)
    for rg, take in sample.takes:
        rows = meta.row_group(rg).num_rows
        # A row group too big to hold is streamed, keeping only the sampled rows of each batch.
        stream = rows if rows <= SAMPLE_STREAM_ROWS else SAMPLE_STREAM_ROWS
        frag = Fragment(sample.index, sample.path, (rg,), rows, sample.partition_values,
                        stream_rows=None if stream == rows else stream)
        base = 0
        for batch in iter_fragment(frag, columns, partition_types):
            lo, hi = np.searchsorted(take, [base, base + batch.num_rows])
            if hi > lo:
                tables.append(batch.take(pa.array(take[lo:hi] - base)))
            base += batch.num_rows
        check_rows(frag, base)
    return pa.concat_tables(tables, promote_options="permissive")


def read_training_table(
    dataset: InputDataset,
    columns: Sequence[str],
    sample_rows: int | None,
    seed: int,
    client: Any = None,
    on_file: Callable[[int], None] | None = None,
) -> pa.Table:
    """All rows of ``columns``, or a uniform sample of ``sample_rows`` rows without replacement.

    Sampling picks global row numbers, then reads only the row groups that hold them,
    one at a time, so memory follows the sample, not the dataset. With a Dask ``client``
    each file is read by one task on the workers and only the sampled rows travel back;
    the result is the same table, in the same row order, as a local read.
    """
    plan = plan_training_reads(dataset, sample_rows, seed)
    done = on_file or (lambda _rows: None)
    tables: list[pa.Table] = []
    if client is None:
        for sample in plan:
            tables.append(read_file_sample(sample, columns, dataset.partition_columns))
            done(tables[-1].num_rows)
    else:
        from distributed import as_completed

        futures = client.map(read_file_sample, plan, columns=list(columns),
                             partition_types=dataset.partition_columns, pure=False)
        for future in as_completed(futures, loop=client.loop):
            done(future.result().num_rows)
        tables = client.gather(futures)
    if not tables:
        raise InputError(f"input {dataset.root} holds no rows")
    return pa.concat_tables(tables, promote_options="permissive")
