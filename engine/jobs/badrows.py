"""What a bad-row failure tells the user: per column and reason, how many rows, and where.

A part's summary carries two JSON-able keys that this module fills and reads:

* ``bad_rows_by_column``: ``{column: {reason: rows}}``, e.g.
  ``{"monetary_12m": {"infinite value": 3}, "customer_id": {"null id": 1}}``;
* ``first_bad_rows``: the first :data:`FIRST_BAD_ROWS` bad rows of the part, each
  ``{"file", "row", "column", "reason"}`` (row numbers count from the file's first row).

Messages built from them name files, columns and row numbers, never values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

FIRST_BAD_ROWS = 5


def tally(by_column: dict[str, dict[str, int]], first: list[dict[str, Any]], file: str, rows: np.ndarray,
          columns: Sequence[str], reasons: Sequence[str]) -> None:
    """Add one batch's bad rows (absolute ``rows``, with their column and reason) to a part's tally."""
    for (column, reason), n in Counter(zip(columns, reasons)).items():
        per = by_column.setdefault(column, {})
        per[reason] = per.get(reason, 0) + n
    for row, column, reason in zip(rows[: max(0, FIRST_BAD_ROWS - len(first))], columns, reasons):
        first.append({"file": file, "row": int(row), "column": column, "reason": reason})


def merge(parts: Iterable[Mapping[str, Any]]) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]]]:
    """The run's tally from its parts' summaries (in part order); older summaries lack the keys."""
    by_column: dict[str, dict[str, int]] = {}
    first: list[dict[str, Any]] = []
    for part in parts:
        for column, reasons in (part.get("bad_rows_by_column") or {}).items():
            per = by_column.setdefault(column, {})
            for reason, n in reasons.items():
                per[reason] = per.get(reason, 0) + int(n)
        first.extend(part.get("first_bad_rows") or [])
    return by_column, first[:FIRST_BAD_ROWS]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def describe(by_column: Mapping[str, Mapping[str, int]], first: Sequence[Mapping[str, Any]]) -> str:
    """``column 'x': 3 rows with an infinite value; ...; first: FILE row 5: column 'x' is infinite, ...``"""
    counts = []
    for column, reasons in sorted(by_column.items(), key=lambda kv: -sum(kv[1].values())):
        for reason, n in reasons.items():
            what = "a null id" if reason == "null id" else f"an {reason}" if reason[0] in "aeiou" else f"a {reason}"
            counts.append(f"column {column!r}: {_plural(n, 'row')} with {what}")
    shown = []
    for row in first:
        if row["reason"] == "null id":
            problem = f"column {row['column']!r} (the id) is null"
        elif row["reason"] == "infinite value":
            problem = f"column {row['column']!r} is infinite"
        elif row["reason"].startswith("value beyond"):
            problem = f"column {row['column']!r} holds a {row['reason']} (too large to score exactly)"
        else:
            problem = f"column {row['column']!r}: {row['reason']}"
        shown.append(f"{row['file']} row {row['row']}: {problem}")
    text = "; ".join(counts) if counts else "no per-column detail recorded"
    if shown:
        text += ". First bad rows: " + "; ".join(shown)
    return text
