"""Schema checks of an input against what a job needs, before any heavy work.

All problems are collected and reported in one :class:`InputError`, each naming the
column and the files concerned, so one run tells the operator everything to fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import pyarrow as pa

from engine.errors import InputError
from engine.io.arrow import can_be_categorical, categorical_family, is_date_type
from engine.io.dataset import InputDataset, is_numeric

_MAX_NAMED_FILES = 3


def _files_text(paths: Sequence[str], total: int) -> str:
    named = ", ".join(paths[:_MAX_NAMED_FILES])
    more = len(paths) - _MAX_NAMED_FILES
    if len(paths) == total and total > 1:
        return f"all {total} files" if more > 0 else f"every file ({named})"
    return named + (f" and {more} more" if more > 0 else "")


def suggest(name: str, known: Sequence[str]) -> str:
    """`` (did you mean 'X'?)`` for the nearest of ``known`` (case first, then difflib), or ''."""
    by_case = [k for k in known if k.lower() == name.lower() and k != name]
    near = by_case or difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _nested(dtype: pa.DataType) -> bool:
    return (pa.types.is_nested(dtype) or pa.types.is_union(dtype)
            or (pa.types.is_dictionary(dtype) and pa.types.is_nested(dtype.value_type)))


_KIND_TEXT = {
    "numeric": "non-numeric type",
    "date": "type {dtype}, not a date or timestamp,",
    "categorical": "type {dtype}, which cannot be categorical (string, dictionary, boolean or integer codes),",
}


def _fits(kind: str, dtype: pa.DataType, all_null_ok: bool) -> bool:
    if all_null_ok and pa.types.is_null(dtype):
        return True
    if kind == "numeric":
        return is_numeric(dtype)
    if kind == "date":
        return is_date_type(dtype)
    return can_be_categorical(dtype)


def trained_categorical_types(model: object) -> dict[str, str]:
    """Categorical column -> the type it was trained on; empty for an imported pipeline, whose
    recorded type is a placeholder (an encoder does not say what column type it was fitted on)."""
    params = getattr(model, "params", None) or {}
    if params.get("source") != "engine train":
        return {}
    return {c.name: c.type for c in getattr(model, "categoricals", ())}


def categorical_type_problem(name: str, trained: str, found: pa.DataType, where: str) -> str | None:
    """The problem of categorical column ``name`` trained as ``trained`` and found as ``found``, or None."""
    if pa.types.is_null(found):
        return None  # every value missing: the (missing) level, as scoring has always done
    was, now = categorical_family(trained), categorical_family(found)
    if was == now or was == "other":
        return None
    return (f"categorical column {name!r} was trained as {trained} ({was} levels) and has type {found} "
            f"({now}) in {where}; its values would not match any trained level, so every row would be "
            f"scored as (other). Cast it back to {trained} upstream, or retrain the model on the new type")


def schema_problems(
    dataset: InputDataset,
    numeric: Sequence[str],
    present: Sequence[str] = (),
    same_type: Sequence[str] = (),
    all_null_ok: bool = False,
    ids: Sequence[str] = (),
    dates: Sequence[str] = (),
    categorical: Sequence[str] = (),
    trained_types: dict[str, str] | None = None,
    origins: dict[str, str] | None = None,
) -> list[str]:
    """Problems of ``dataset`` for columns that must be numeric, or merely present.

    ``all_null_ok`` (scoring) also accepts a numeric column stored with Arrow's null type
    (every value missing: imputed like any null); training needs values, so it does not.

    ``trained_types`` (scoring) maps categorical columns to the type they were trained on: a
    column whose values now come in another family (:func:`categorical_family`) is a problem
    naming the trained and the found type.

    Columns in ``same_type`` (those copied to an output: the id, pass-through columns)
    must also have one type in every file, or the output parts would not form one
    readable dataset; the files whose type differs from the first file's are named.
    Columns in ``ids`` must be of a type one can key on (not a struct, list or map). A
    column name that appears twice in a file is named as duplicated, and a missing column
    gets the nearest existing name suggested.
    """
    problems: list[str] = []
    total = len(dataset.files)
    known = list(dict.fromkeys([*(n for f in dataset.files for n in f.schema.names), *dataset.partition_columns]))
    typed = {**{c: "numeric" for c in numeric}, **{c: "date" for c in dates}, **{c: "categorical" for c in categorical}}
    wanted = [(c, kind) for c, kind in typed.items()] + [(c, None) for c in present if c not in typed]
    for column, kind in wanted:
        if column in dataset.partition_columns:
            if kind is not None and kind != "categorical" and not _fits(kind, dataset.partition_columns[column],
                                                                        False):
                problems.append(f"column {column!r} is a hive partition key with non-numeric values")
            continue
        missing, twice, wrong, retyped = [], [], {}, {}
        for info in dataset.files:
            found = info.schema.get_all_field_indices(column)
            if len(found) > 1:
                twice.append(info.path)
                continue
            if not found:
                missing.append(info.path)
                continue
            idx = found[0]
            dtype = info.schema.field(idx).type
            if kind is not None and not _fits(kind, dtype, all_null_ok):
                wrong.setdefault(str(dtype), []).append(info.path)
            elif kind == "categorical" and trained_types and column in trained_types:
                changed = categorical_type_problem(column, trained_types[column], dtype, "{where}")
                if changed:
                    retyped.setdefault(changed, []).append(info.path)
        if missing:
            origin = (origins or {}).get(column)
            problems.append(f"column {column!r} is missing from {_files_text(missing, total)}"
                            + (f" (named by {origin})" if origin else "") + suggest(column, known))
        if twice:
            problems.append(f"column {column!r} appears more than once (duplicated column name) in "
                            f"{_files_text(twice, total)}; give each column its own name")
        problems += [text.format(where=_files_text(paths, total)) for text, paths in retyped.items()]
        for dtype, paths in wrong.items():
            text = _KIND_TEXT[kind or "numeric"]
            text = f"non-numeric type {dtype}" if kind == "numeric" else text.format(dtype=dtype)
            hint = ""
            if kind == "numeric" and _fits("categorical", dataset.column_type(column) or pa.null(), False):
                hint = "; the model takes it as a number: retrain to have it scored as a categorical column"
            problems.append(f"column {column!r} has {text} in {_files_text(paths, total)}{hint}")
    for column in dict.fromkeys(same_type):
        if column in dataset.partition_columns:
            continue
        by_type: dict[str, list[str]] = {}
        for info in dataset.files:
            for idx in info.schema.get_all_field_indices(column)[:1]:
                by_type.setdefault(str(info.schema.field(idx).type), []).append(info.path)
        if len(by_type) > 1:
            (first_type, first_paths), *others = by_type.items()
            differ = "; ".join(f"{dtype} in {_files_text(paths, total)}" for dtype, paths in others)
            problems.append(
                f"column {column!r} has type {first_type} in {_files_text(first_paths, total)} "
                f"but {differ}; it must have one type in every file"
            )
    for column in dict.fromkeys(ids):
        nested = {str(f.schema.field(i).type): f.path for f in dataset.files
                  for i in f.schema.get_all_field_indices(column) if _nested(f.schema.field(i).type)}
        for dtype, path in nested.items():
            problems.append(f"id column {column!r} has type {dtype} in {path}; an id must be a number, string, "
                            "date or binary value (not a struct, list or map). Pass --id-column with another column")
    return problems


def require_schema(dataset: InputDataset, numeric: Sequence[str], present: Sequence[str] = (),
                   hint: str = "", same_type: Sequence[str] = (), all_null_ok: bool = False,
                   ids: Sequence[str] = (), dates: Sequence[str] = (),
                   categorical: Sequence[str] = (), trained_types: dict[str, str] | None = None,
                   origins: dict[str, str] | None = None) -> None:
    """Raise one :class:`InputError` listing every schema problem, if there are any.

    ``origins`` names the flag each column came from (``--keep``), said beside a missing one.
    """
    problems = schema_problems(dataset, numeric, present, same_type, all_null_ok, ids=ids, dates=dates,
                               categorical=categorical, trained_types=trained_types, origins=origins)
    if problems:
        lines = "\n  - ".join(problems)
        raise InputError(f"input {dataset.root} does not fit:\n  - {lines}" + (f"\n{hint}" if hint else ""))


def default_features(dataset: InputDataset, exclude: Sequence[str]) -> list[str]:
    """Every numeric column of the first file, in file order, except ``exclude``."""
    schema: pa.Schema = dataset.files[0].schema
    return [f.name for f in schema if is_numeric(f.type) and f.name not in set(exclude)]
