"""Text (string and binary) columns as footers and dictionary pages describe them, before any data is read.

A Parquet footer gives each column chunk's encoded size, which for a dictionary-encoded text
column says nothing about its decoded size: 20 distinct values of 1 MiB referenced by 20,000
rows are a 20 MiB dictionary page (a few hundred KB compressed) that decodes to 20 GiB of
strings (issue 24, the compression bomb). So the dictionary page of each such chunk is read
(its first batch only: the dictionary and one row, never the data pages) and the chunk's
decoded size is estimated as the mean length of its dictionary entries times its rows (at
least its encoded size, which covers values stored plainly). The same dictionary pages are
checked to be UTF-8 text where a column must be text (categorical features): exit 3 naming
the column, even in a dry run. Values stored plainly (no dictionary) are checked when read.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import InputError

__all__ = ["is_text_type", "text_bytes"]

# Buffer of the page-by-page reader that fetches a dictionary page (and nothing after it).
_PROBE_BUFFER = 1 << 20


def is_text_type(dtype: pa.DataType) -> bool:
    """String or binary values (dictionary-encoded or not): their decoded size is not in the footer."""
    if pa.types.is_dictionary(dtype):
        return is_text_type(dtype.value_type)
    return (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_binary(dtype)
            or pa.types.is_large_binary(dtype)
            or getattr(pa.types, "is_string_view", lambda _t: False)(dtype)
            or getattr(pa.types, "is_binary_view", lambda _t: False)(dtype))


def _check_utf8(dictionary: pa.Array, name: str, where: str) -> None:
    try:
        if pa.types.is_string(dictionary.type) or pa.types.is_large_string(dictionary.type):
            dictionary.validate(full=True)
        else:
            pc.cast(dictionary, pa.string())
    except pa.ArrowInvalid as exc:
        raise InputError(f"column {name} ({dictionary.type}) in {where} holds values that are not valid UTF-8 text "
                         f"({exc}); a categorical feature must be text: re-encode the column as UTF-8 strings, or "
                         "leave it out with --features") from None


def _file_text_bytes(path: str, names: Sequence[str], utf8: Collection[str]) -> dict[str, int]:
    """Estimated decoded bytes of each of ``names`` in one file (see the module's docstring)."""
    from engine.io.dataset import input_source
    from engine.io.store import open_parquet

    out = dict.fromkeys(names, 0)
    try:
        with input_source(path) as source:
            meta = open_parquet(source, pre_buffer=False).metadata
            paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
            index = {n: paths.index(n) for n in names if n in paths}
            pf = None
            for rg in range(meta.num_row_groups):
                group = meta.row_group(rg)
                if group.num_rows == 0:
                    continue
                encoded = {n: group.column(i).total_uncompressed_size for n, i in index.items()}
                with_dict = [n for n, i in index.items() if group.column(i).has_dictionary_page]
                for n in set(index) - set(with_dict):
                    out[n] += encoded[n]
                if not with_dict:
                    continue
                if pf is None:
                    pf = open_parquet(source, buffer_size=_PROBE_BUFFER, pre_buffer=False, read_dictionary=list(index))
                batch = next(pf.iter_batches(batch_size=1, row_groups=[rg], columns=with_dict))
                for n in with_dict:
                    column = batch.column(batch.schema.get_field_index(n))
                    dictionary = column.dictionary if pa.types.is_dictionary(column.type) else column
                    if n in utf8:
                        _check_utf8(dictionary, n, f"{path} (row group {rg})")
                    total = pc.sum(pc.binary_length(dictionary)).as_py() or 0
                    mean = total / len(dictionary) if len(dictionary) else 0.0
                    out[n] += max(encoded[n], int(mean * group.num_rows))
    except InputError:
        raise
    except (OSError, pa.ArrowException, StopIteration) as exc:
        raise InputError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    return out


def text_bytes(dataset: object, columns: Sequence[str], utf8: Collection[str] = ()) -> dict[str, int]:
    """Estimated decoded bytes of each text column of ``columns`` over the whole dataset.

    Reads footers and the dictionary pages of dictionary-encoded chunks only (one small read
    per row group and column); a dictionary of a column in ``utf8`` that is not UTF-8 is exit 3
    naming the column. Columns that are not text (or are hive partition keys) are left out.
    """
    files = getattr(dataset, "files", ())
    names = [c for c in columns if any(c in f.schema.names and is_text_type(f.schema.field(c).type)
                                       for f in files)]
    totals = dict.fromkeys(names, 0)
    if not names or not files:
        return totals
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        for sizes in pool.map(lambda f: _file_text_bytes(f.path, names, utf8), files):
            for n, b in sizes.items():
                totals[n] += b
    return totals
