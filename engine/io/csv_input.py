"""CSV input: a ``.csv`` file, or a directory of them, read with pyarrow's CSV reader.

The rest of the engine reads Parquet fragments (footers, row groups, hive keys, Dask tasks
that open their own file), so a CSV input is converted once, streaming, to Parquet files in
a private temporary directory that lives as long as the process; discovery then goes on
over those. Types are inferred by pyarrow (numbers, booleans, timestamps, strings), except
where the caller names them: scoring passes the model's own types (numeric features as
float64, each categorical column as the type family it was trained on), so a code column
such as ``area_code`` that looks numeric in a CSV is read as the string it was trained as.

Only local CSV files are read this way; a CSV object in a store is refused with a hint.
Files of other kinds inside an input directory are named in a warning (:func:`skipped_files`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from engine.errors import InputError

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
#: Bytes pyarrow reads (and infers types from) per block: one block for most customer tables.
CSV_BLOCK_BYTES = 64 << 20

_SCRATCH: list[str] = []


def _cleanup() -> None:
    for d in _SCRATCH:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def _visible(rel: Path) -> bool:
    return not any(part.startswith(("_", ".")) for part in rel.parts)


def csv_files(root: Path, parquet_suffixes: tuple[str, ...]) -> list[Path] | None:
    """The CSV files of ``root`` when it is a CSV input (a CSV file, or a directory with CSV files
    and no Parquet file), else None."""
    if root.is_file():
        return [root] if root.name.lower().endswith(CSV_SUFFIXES) else None
    found, parquet = [], False
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for name in sorted(filenames):
            rel = Path(dirpath, name).relative_to(root)
            if not _visible(rel):
                continue
            parquet |= name.lower().endswith(parquet_suffixes)
            if name.lower().endswith(CSV_SUFFIXES):
                found.append(Path(dirpath, name))
    return found if found and not parquet else None


def skipped_files(root: Path, read_suffixes: tuple[str, ...]) -> list[str]:
    """Files under ``root`` (not hidden) that the input does not read: named in a warning."""
    if root.is_file():
        return []
    skipped = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for name in sorted(filenames):
            rel = Path(dirpath, name).relative_to(root)
            if _visible(rel) and not name.lower().endswith(read_suffixes):
                skipped.append(str(rel))
    return skipped


def csv_as_parquet(root: Path, files: list[Path], column_types: Mapping[str, pa.DataType] | None = None) -> Path:
    """Convert ``files`` (under ``root``) to Parquet in a private directory, keeping their relative
    paths (hive keys survive); returns that directory. ``column_types`` overrides inference."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(tempfile.mkdtemp(prefix="engine-csv-"))
    _SCRATCH.append(str(out))
    for path in files:
        rel = Path(path.name) if root.is_file() else path.relative_to(root)
        target = out / rel.parent / (rel.name.rsplit(".csv", 1)[0].rsplit(".tsv", 1)[0] + ".parquet")
        target.parent.mkdir(parents=True, exist_ok=True)
        header = _header(path)
        types = {k: v for k, v in (column_types or {}).items() if k in header}
        try:
            reader = pacsv.open_csv(
                str(path), read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                parse_options=pacsv.ParseOptions(delimiter="\t" if path.name.lower().endswith(".tsv") else ","),
                convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
            with pq.ParquetWriter(str(target), reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path} cannot be read as CSV ({type(exc).__name__}: {exc}); fix the file "
                             "(one header line, the same columns on every line), then rerun") from None
    return out


def _header(path: Path) -> list[str]:
    import csv
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as fh:
            return next(csv.reader(fh, delimiter="\t" if ".tsv" in path.name.lower() else ","), [])
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc})") from None


def scoring_types(model: object) -> dict[str, pa.DataType]:
    """The types a CSV is read with to score ``model``: numeric features as float64, categorical
    ones as the family they were trained on (text, boolean, integer)."""
    from engine.io.arrow import categorical_family

    types: dict[str, pa.DataType] = {}
    dates = set(getattr(model, "date_features", ()))
    for name in getattr(model, "features", ()):
        if name not in dates:
            types[name] = pa.float64()
    family = {"text": pa.string(), "boolean": pa.bool_(), "integer": pa.int64()}
    for cat in getattr(model, "categoricals", ()):
        kind = categorical_family(cat.type)
        if kind in family:
            types[cat.name] = family[kind]
    return types


def parse_schema(text: str | None, flag: str = "--schema") -> dict[str, pa.DataType]:
    """``--schema area_code:string,tenure:int64``: CSV column types by name (pyarrow's type names)."""
    from engine.errors import UsageError

    if not text:
        return {}
    types: dict[str, pa.DataType] = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, alias = item.rpartition(":")
        if not sep or not name:
            raise UsageError(f"{flag} takes column:type pairs, e.g. area_code:string,tenure:int64; got {item!r}")
        try:
            types[name] = pa.type_for_alias(alias.strip())
        except (ValueError, KeyError):
            raise UsageError(f"{flag}: {alias.strip()!r} (for column {name!r}) is not a type name; use string, "
                             "int64, float64, bool, date32 or timestamp[s]") from None
    return types
