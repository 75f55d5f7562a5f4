"""Association rules (`engine rules`) in recommendation: ``by_rules(...)`` eligibility and the ``rule`` column.

A catalogue names an ``engine rules`` output with the global key ``rules`` and, per offer,
the ``item`` whose rules concern it (default: the offer's ``target`` column; wide-form
rules' items are the customer table's column names). Two uses:

* **Eligibility.** ``by_rules(min_lift = 1.5, min_confidence = 0.2)`` in an offer's
  ``eligible`` rule is true for a customer who holds every item of the antecedent of at
  least one loaded rule whose consequent is exactly the offer's item (``A -> item``; a rule
  with several consequent items is not one of them) and that passes the thresholds.
  *Held* is the item's column ``> 0`` (``true`` for a boolean column); null and NaN are not
  held, so ``by_rules`` is never unknown.
* **Reason.** For each recommended (customer, offer), the held rule with the highest lift
  for the offer's item (ties: the rules output's order, which sorts by lift, confidence,
  support, then names), written ``A + B -> C``; null when the customer holds no rule's
  antecedent. Every rule of an ``engine rules`` output is a statistic of at least the
  privacy minimum of customers, so its text may be shown.

The output is read with the engine's own readers (:func:`engine.io.publish.readable`, the
store's ``read_bytes`` and :func:`engine.io.store.open_parquet`), so a rules output in an
object store is read as one on a disk, and a store publish that is between its markers is
read from its backup. It is recognised as ``engine score``'s and the models' outputs are:
``_manifest.json`` written by ``engine rules`` and ``_SUCCESS`` (complete).

Per block, :class:`Holding` computes each item's ``> 0`` mask and each antecedent's
conjunction once, shared by every offer and by both uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import EngineError, UsageError
from engine.io.matrix import to_arrow, true_rows

#: The names of an ``engine rules`` output (engine/jobs/rules.py), repeated here so that reading
#: a catalogue does not import the miner (and its Dask runner).
RULES_FILE = "rules.parquet"
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
GENERATOR = "engine rules"
NEEDED = {"antecedent": "list<string>", "consequent": "list<string>", "lift": "number", "confidence": "number"}


@dataclass(frozen=True)
class LoadedRules:
    """The rules of one ``engine rules`` output, as the catalogue uses them."""

    path: str                      # absolute local path or store URI (what a model records)
    shown: str                     # as messages and manifests name it
    run_id: str
    form: str                      # "wide" or "baskets"
    items: tuple[str, ...] | None  # wide form: the item columns that were mined
    antecedents: tuple[tuple[str, ...], ...]
    consequents: tuple[tuple[str, ...], ...]
    lift: np.ndarray
    confidence: np.ndarray
    _by_item: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    _names: dict[tuple[str, ...], tuple[list[str], np.ndarray]] = field(default_factory=dict, compare=False,
                                                                       repr=False)

    def __len__(self) -> int:
        return len(self.antecedents)

    def record(self) -> dict[str, Any]:
        """What a manifest (and a run key) records: a republished output changes ``run_id``."""
        return {"path": self.shown, "run_id": self.run_id, "form": self.form, "rules": len(self)}

    def text(self, r: int) -> str:
        return f"{' + '.join(self.antecedents[r])} -> {' + '.join(self.consequents[r])}"

    def for_item(self, item: str) -> np.ndarray:
        """Indices of the rules ``A -> item``, highest lift first (stable: the output's order)."""
        found = self._by_item.get(item)
        if found is None:
            idx = np.asarray([r for r, c in enumerate(self.consequents) if c == (item,)], dtype=np.int64)
            found = idx[np.argsort(-self.lift[idx], kind="stable")] if idx.size else idx
            self._by_item[item] = found
        return found

    def names(self) -> set[str]:
        """Every item some rule names (antecedent or consequent)."""
        return {i for side in (self.antecedents, self.consequents) for rule in side for i in rule}

    def antecedent_items(self, items: tuple[str, ...]) -> list[str]:
        """Every item an antecedent of a rule for one of ``items`` names, in order of first use."""
        return list(dict.fromkeys(a for item in items for r in self.for_item(item) for a in self.antecedents[r]))

    def output_names(self, items: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
        """The ``rule`` column's dictionary (texts of the rules for ``items``) and each rule's code in it."""
        found = self._names.get(items)
        if found is None:
            code = np.full(len(self), -1, dtype=np.int32)
            names: list[str] = []
            for item in dict.fromkeys(items):
                for r in self.for_item(item):
                    if code[r] < 0:
                        code[r] = len(names)
                        names.append(self.text(int(r)))
            found = self._names[items] = (names, code)
        return found


def resolve(value: str, catalogue: str) -> str:
    """A ``rules`` value as a store URI or an absolute path (relative paths: from the catalogue's folder)."""
    from engine.io.uri import is_remote, scheme_of

    if is_remote(value):
        return value
    if scheme_of(value) == "file":
        value = value[len("file://"):]
    if os.path.isabs(value):
        return value
    base = os.path.dirname(os.path.abspath(catalogue)) if catalogue and os.path.exists(catalogue) else os.getcwd()
    return os.path.normpath(os.path.join(base, value))


def load_rules(value: str, *, where: str) -> LoadedRules:
    """Read the ``engine rules`` output at ``value``; :class:`UsageError` (exit 2) starting with ``where``
    (the catalogue, its line and key) when it is not one."""
    from engine.io.uri import Location, check, parse, shown

    def fail(message: str) -> UsageError:
        return UsageError(f"{where}: {message}; name the folder (or store prefix) that `engine rules --output` "
                          "wrote (it holds rules.parquet, _manifest.json and _SUCCESS)")

    try:
        check(value, "rules")
        target = parse(value, "rules")
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    name = shown(value)
    try:
        manifest_bytes, success, rules_path = _locate(target)
    except EngineError as exc:
        raise UsageError(f"{where}: {name} cannot be read: {exc}") from None
    if manifest_bytes is None:
        raise fail(f"{name} is not an `engine rules` output (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, RecursionError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        made = manifest.get("command") or manifest.get("generator") if isinstance(manifest, dict) else None
        raise fail(f"{name} is not an `engine rules` output (its {MANIFEST} was "
                   + (f"written by {made!r})" if isinstance(made, str) else "not written by `engine rules`)"))
    if not success:
        raise fail(f"{name} is incomplete (no {SUCCESS}: a run was stopped, or is publishing now)")
    inputs = manifest.get("input") if isinstance(manifest.get("input"), dict) else {}
    form = inputs.get("form") if inputs.get("form") in ("wide", "baskets") else "wide"
    items = inputs.get("items") if form == "wide" else None
    if items is not None and not (isinstance(items, list) and all(isinstance(i, str) for i in items)):
        items = None
    try:
        from engine.io.store import open_parquet

        table = open_parquet(rules_path).read(columns=list(NEEDED))
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise fail(f"{name}/{RULES_FILE} cannot be read as the rules ({type(exc).__name__}: {exc})") from None
    for col, kind in NEEDED.items():
        t = table.schema.field(col).type
        ok = (pa.types.is_list(t) and pa.types.is_string(t.value_type)) if kind.startswith("list") else \
            (pa.types.is_floating(t) or pa.types.is_integer(t))
        if not ok:
            raise fail(f"{name}/{RULES_FILE}: column {col!r} is {t}, not {kind}")
    ante = table.column("antecedent").to_pylist()
    cons = table.column("consequent").to_pylist()
    if any(a is None or c is None or None in a or None in c for a, c in zip(ante, cons)):
        raise fail(f"{name}/{RULES_FILE}: a rule has a null item")
    lift = np.asarray(table.column("lift").to_numpy(zero_copy_only=False), dtype=np.float64)
    conf = np.asarray(table.column("confidence").to_numpy(zero_copy_only=False), dtype=np.float64)
    path = target.uri if isinstance(target, Location) else str(target)
    return LoadedRules(path, name, str(manifest.get("run_id", "")), form, None if items is None else tuple(items),
                       tuple(tuple(a) for a in ante), tuple(tuple(c) for c in cons), lift, conf)


def _locate(target: Any) -> tuple[bytes | None, bool, str]:
    """The manifest's bytes (None if absent), whether ``_SUCCESS`` is there, and where ``rules.parquet`` is."""
    from engine.io.publish import readable
    from engine.io.store import store_errors, store_for
    from engine.io.uri import Location

    if isinstance(target, Location):
        store = store_for(target)
        source = readable(target, SUCCESS)
        with store_errors(target, "read the rules at", role="input"):
            data = store.read_bytes(source.join(MANIFEST), limit=16 << 20)
            success = store.info(source.join(SUCCESS)) == "file"
        return data, success, source.join(RULES_FILE).uri
    root = Path(target)
    manifest = root / MANIFEST
    if not root.is_dir() or not manifest.is_file():
        return None, False, ""
    return manifest.read_bytes()[: 16 << 20], (root / SUCCESS).is_file(), str(root / RULES_FILE)


def item_mask(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Rows that hold an item: its column ``> 0`` (``true`` if boolean); null and NaN are not held."""
    if pa.types.is_boolean(column.type):
        hit = column
    else:
        hit = pc.greater(column, pa.scalar(0).cast(column.type))
    return true_rows(hit)


class Holding:
    """One block's rule holdings: per item its ``> 0`` mask, per rule its antecedent's conjunction (cached)."""

    def __init__(self, table: pa.Table, rules: LoadedRules) -> None:
        self.table, self.rules = table, rules
        self._items: dict[str, np.ndarray] = {}
        self._sets: dict[tuple[str, ...], np.ndarray] = {}

    def item(self, name: str) -> np.ndarray:
        m = self._items.get(name)
        if m is None:
            m = self._items[name] = item_mask(self.table.column(name))
        return m

    def antecedent(self, r: int) -> np.ndarray:
        key = self.rules.antecedents[r]
        m = self._sets.get(key)
        if m is None:
            m = self.item(key[0]).copy()
            for name in key[1:]:
                m &= self.item(name)
            self._sets[key] = m
        return m

    def any_rule(self, item: str, min_lift: float | None, min_confidence: float | None) -> np.ndarray:
        """``by_rules(...)`` for an offer whose item is ``item``."""
        out = np.zeros(self.table.num_rows, dtype=bool)
        for r in self.rules.for_item(item):
            if (min_lift is not None and self.rules.lift[r] < min_lift) or \
                    (min_confidence is not None and self.rules.confidence[r] < min_confidence):
                continue
            out |= self.antecedent(int(r))
        return out

    def best(self, item: str, rows: np.ndarray) -> np.ndarray:
        """For ``rows``, the index of the held rule ``A -> item`` with the highest lift; -1 where none."""
        out = np.full(rows.size, -1, dtype=np.int64)
        for r in self.rules.for_item(item):
            todo = out < 0
            if not todo.any():
                break
            hit = todo & self.antecedent(int(r))[rows]
            out[hit] = r
        return out


def by_rules_for(holding: Holding | None, item: str) -> Any:
    """The callback :func:`engine.offers.expr.evaluate` calls for ``by_rules(...)`` of an offer (None without rules)."""
    if holding is None:
        return None

    def truth(node: Any, table: pa.Table) -> pa.Array:
        return to_arrow(np.asarray(holding.any_rule(item, node.min_lift, node.min_confidence), dtype=bool))

    return truth


def holding(table: pa.Table, catalogue: Any) -> Holding | None:
    """The block's :class:`Holding` when the catalogue names rules; None otherwise."""
    rules = getattr(catalogue, "rules", None)
    return None if rules is None else Holding(table, rules)


def rule_column(hold: Holding | None, catalogue: Any, idx: np.ndarray
                ) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """The ``rule`` column's codes for the output rows of ``idx`` (``(rows, N)`` offer indices, -1 empty;
    rows in :func:`engine.offers.recommend.long_table`'s order), its dictionary, and per offer how many
    recommendations came with a rule. None when the catalogue names no rules."""
    if hold is None:
        return None
    items = tuple(o.rule_item for o in catalogue.offers)
    names, code_of = hold.rules.output_names(items)
    rows, slots = np.nonzero(idx >= 0)
    offers = idx[rows, slots]
    codes = np.full(rows.size, -1, dtype=np.int32)
    for t in np.unique(offers):
        pick = np.flatnonzero(offers == t)
        best = hold.best(items[int(t)], rows[pick])
        found = best >= 0
        codes[pick[found]] = code_of[best[found]]
    with_rule = np.bincount(offers[codes >= 0], minlength=len(items)).astype(np.int64)
    return codes, names, with_rule


def check_columns(catalogue: Any, schema: pa.Schema, line_of: Any) -> None:
    """Every antecedent item of the rules the catalogue uses is a numeric or boolean column of ``schema``;
    exit 2 naming the item, the rules output and the line (``line_of(offer, key)``)."""
    from engine.offers.catalogue import suggest

    rules: LoadedRules | None = catalogue.rules
    if rules is None:
        return
    names = list(schema.names)
    for offer in catalogue.offers:
        key = "eligible" if offer.rule is not None and _uses(offer.rule) else ("item" if offer.item else "id")
        line = line_of(offer, key)
        where = f"{catalogue.source}" + (f" line {line}" if line else "") + f": offer {offer.id!r}"
        for r in rules.for_item(offer.rule_item):
            for item in rules.antecedents[r]:
                if item not in names:
                    if rules.form == "baskets":
                        hint = (f"; {rules.shown} was mined with --baskets, so its items are product names (values "
                                "of the item column), not columns: mine the rules on a wide customer table "
                                "(`engine rules --items ...` or `--items-prefix`, one 0/1 or count column per "
                                "product) so that a rule's items are columns of the input")
                    else:
                        hint = (f"{suggest(item, names)}; the rules were mined on another table: give the input "
                                "the same item columns, or mine the rules on this table")
                    raise UsageError(f"{where}: rule {rules.text(int(r))!r} of {rules.shown} names item {item!r}, "
                                     f"which is not a column of the input{hint}")
                t = schema.field(item).type
                if pa.types.is_dictionary(t) or not (pa.types.is_integer(t) or pa.types.is_floating(t)
                                                      or pa.types.is_boolean(t) or pa.types.is_decimal(t)):
                    raise UsageError(f"{where}: rule {rules.text(int(r))!r} of {rules.shown} names item {item!r}, "
                                     f"whose column is {t}; an item is held when its column is > 0, so it must be "
                                     "a 0/1, count or boolean column")


def _uses(node: Any) -> bool:
    from engine.offers.expr import uses_rules

    return uses_rules(node)
