"""The offer catalogue: one TOML file, validated at load, every error naming its line and key.

::

    top = 3                      # offers per customer, 1..25
    min_expected_value = 0.0     # never recommend an offer expected to be worth less
    [[offer]]
    id = "car_insurance"         # unique; the `offer` column of the output
    target = "owns_car_insurance"  # 0/1 or boolean column (or `positive = "yes"`)
    value = 120.0                # value of one acceptance (default 1)
    cost = 4.0                   # cost of one contact (default 0)
    eligible = "age >= 18 and region in ['north', 'east'] and not (income is null)"
    exclude_owned = true         # a customer whose target is already positive is not offered it
    budget = 5000                # at most this many customers get it (optional)
    exclude_features = ["PPERSAUT", "APERSAUT"]  # columns this head never uses (optional)

With association rules (``engine rules``; :mod:`engine.offers.rules_use`): a global
``rules = "path or s3:// URI of an engine rules output"`` and, per offer, ``item = "..."``
(the item its rules conclude; default the ``target`` column's name); ``eligible`` may then
call ``by_rules(min_lift = 1.5, min_confidence = 0.2)``, and recommend's output gets a
``rule`` column.

Every problem is a :class:`engine.errors.UsageError` (exit 2) naming the file, the line
and the key, with the nearest known name where one is close (a misspelt key, an unknown
column). ``tomllib`` gives no positions for values, so :func:`_lines` maps each
``[[offer]]`` table and key to its line from the text (the file is small).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import tomllib

from engine.errors import UsageError
from engine.offers import expr

MAX_TOP = 25
MAX_OFFERS = 512
TOP_KEYS = ("top", "min_expected_value", "rules", "offer")
OFFER_KEYS = ("id", "target", "positive", "value", "cost", "eligible", "exclude_owned", "budget",
              "exclude_features", "item")
_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


@dataclass(frozen=True)
class Offer:
    id: str
    target: str
    positive: str | None = None
    value: float = 1.0
    cost: float = 0.0
    eligible: str | None = None
    exclude_owned: bool = True
    budget: int | None = None
    # Feature columns this offer's head never uses (weights held at 0 in its fit); None: the
    # key was not given (at scoring: the model's own exclusions stand).
    exclude_features: tuple[str, ...] | None = None
    # The item of the catalogue's rules this offer is (None: its target column's name).
    item: str | None = None
    line: int = 0
    rule: Any = field(default=None, compare=False, repr=False)

    @property
    def rule_item(self) -> str:
        """The consequent of the rules that concern this offer (``item``, default ``target``)."""
        return self.item if self.item is not None else self.target

    def record(self) -> dict[str, Any]:
        """What a model and a manifest store of this offer (exclusions only where there are some)."""
        out = {"id": self.id, "target": self.target, "positive": self.positive, "value": self.value,
               "cost": self.cost, "eligible": self.eligible, "exclude_owned": self.exclude_owned,
               "budget": self.budget}
        if self.exclude_features:
            out["exclude_features"] = list(self.exclude_features)
        if self.item is not None:
            out["item"] = self.item
        return out


@dataclass(frozen=True)
class Catalogue:
    offers: tuple[Offer, ...]
    top: int = 3
    min_expected_value: float = 0.0
    source: str = "offers"
    top_lines: dict[str, int] = field(default_factory=dict, compare=False)
    # The `engine rules` output named by the `rules` key (engine.offers.rules_use.LoadedRules).
    rules: Any = field(default=None, compare=False)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(o.id for o in self.offers)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.target for o in self.offers))

    def rule_columns(self) -> list[str]:
        """The columns the offers' rules read (with ``rules``: every antecedent item of their rules)."""
        cols = [c for o in self.offers if o.rule is not None for c in expr.columns(o.rule)]
        if self.rules is not None:
            cols += self.rules.antecedent_items(tuple(o.rule_item for o in self.offers))
        return list(dict.fromkeys(cols))

    def record(self) -> dict[str, Any]:
        # -inf (no minimum) is null: manifests are strict JSON.
        out = {"top": self.top,
               "min_expected_value": self.min_expected_value if math.isfinite(self.min_expected_value) else None,
               "offers": [o.record() for o in self.offers]}
        if self.rules is not None:
            out["rules"] = self.rules.record()
        return out


def suggest(name: str, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the nearest known name, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _lines(text: str) -> tuple[dict[str, int], list[int], list[dict[str, int]]]:
    """Line numbers of top-level keys, of each ``[[offer]]`` header and of each offer's keys."""
    top: dict[str, int] = {}
    headers: list[int] = []
    keys: list[dict[str, int]] = []
    in_offer = False
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[[") and line.rstrip().endswith("]]"):
            in_offer = line[2:-2].strip() == "offer"
            if in_offer:
                headers.append(no)
                keys.append({})
            continue
        if line.startswith("["):
            in_offer = False
            continue
        m = re.match(r'^("?)([A-Za-z0-9_\-]+)\1\s*=', line)
        if m:
            (keys[-1] if in_offer and keys else top).setdefault(m.group(2), no)
    return top, headers, keys


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_catalogue(path: str | os.PathLike[str], *, flag: str = "--offers") -> Catalogue:
    """Read and validate the catalogue at ``path``; :class:`UsageError` (exit 2) naming line and key."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as fh:
            data = fh.read(1 << 22)
    except FileNotFoundError:
        raise UsageError(f"{flag} {where}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{flag} {where}: cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
        parsed = tomllib.loads(text)
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {where}: not UTF-8 text; the catalogue is a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: not valid TOML: {exc}") from None
    return parse_catalogue(parsed, text, where)


def parse_catalogue(parsed: dict[str, Any], text: str, where: str) -> Catalogue:
    """Validate a parsed catalogue (``text`` gives the lines for messages)."""
    top_lines, headers, key_lines = _lines(text)

    def fail(line: int | None, message: str) -> UsageError:
        return UsageError(f"{where}" + (f" line {line}" if line else "") + f": {message}")

    for key in parsed:
        if key not in TOP_KEYS:
            raise fail(top_lines.get(key), f"unknown key {key!r}{suggest(key, TOP_KEYS)} "
                       f"(known: {', '.join(TOP_KEYS)})")
    top = parsed.get("top", 3)
    if not (isinstance(top, int) and not isinstance(top, bool) and 1 <= top <= MAX_TOP):
        raise fail(top_lines.get("top"), f"key 'top' must be a whole number from 1 to {MAX_TOP}, got {top!r}")
    min_ev = parsed.get("min_expected_value", 0.0)
    if not _number(min_ev) or math.isnan(min_ev) or min_ev == math.inf:
        raise fail(top_lines.get("min_expected_value"),
                   f"key 'min_expected_value' must be a number (or -inf), got {min_ev!r}")
    rules = None
    if "rules" in parsed:
        from engine.offers.rules_use import load_rules, resolve

        value = parsed["rules"]
        if not isinstance(value, str) or not value:
            raise fail(top_lines.get("rules"), "key 'rules' must be the path or store URI of an `engine rules` "
                       f"output, got {value!r}")
        line = top_lines.get("rules")
        rules = load_rules(resolve(value, where), where=f"{where}" + (f" line {line}" if line else "")
                           + " key 'rules'")
    raw_offers = parsed.get("offer")
    if not isinstance(raw_offers, list) or not raw_offers or not all(isinstance(o, dict) for o in raw_offers):
        raise fail(top_lines.get("offer"), "the catalogue lists no offers: add [[offer]] tables "
                   "(id, target, value, cost, eligible, exclude_owned, budget)")
    if len(raw_offers) > MAX_OFFERS:
        raise fail(None, f"{len(raw_offers)} offers; at most {MAX_OFFERS} are supported")
    offers: list[Offer] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_offers):
        header = headers[i] if i < len(headers) else None
        lines = key_lines[i] if i < len(key_lines) else {}
        name = raw.get("id")
        label = f"offer {name!r}" if isinstance(name, str) else f"offer {i + 1}"

        def at(key: str, _lines: dict[str, int] = lines, _h: int | None = header) -> int | None:
            return _lines.get(key, _h)

        for key in raw:
            if key not in OFFER_KEYS:
                raise fail(at(key), f"{label}: unknown key {key!r}{suggest(key, OFFER_KEYS)} "
                           f"(known: {', '.join(OFFER_KEYS)})")
        for key in ("id", "target"):
            if key not in raw:
                raise fail(header, f"{label}: key {key!r} is missing")
            if not isinstance(raw[key], str) or not raw[key]:
                raise fail(at(key), f"{label}: key {key!r} must be a non-empty string, got {raw[key]!r}")
        if not _ID.match(name):
            raise fail(at("id"), f"{label}: key 'id' may hold letters, digits and _ . : - (1 to 128), got {name!r}")
        if name in seen:
            raise fail(at("id"), f"duplicate offer id {name!r} (first at line {seen[name]})")
        seen[name] = at("id") or 0
        values: dict[str, Any] = {}
        for key, default in (("value", 1.0), ("cost", 0.0)):
            v = raw.get(key, default)
            if not _number(v) or not math.isfinite(v):
                raise fail(at(key), f"{label}: key {key!r} must be a finite number, got {v!r}")
            values[key] = float(v)
        if values["cost"] < 0:
            raise fail(at("cost"), f"{label}: key 'cost' must be 0 or more, got {values['cost']}")
        positive = raw.get("positive")
        if positive is not None and (isinstance(positive, (dict, list)) or positive == ""):
            raise fail(at("positive"), f"{label}: key 'positive' must be a value of the target column")
        exclude = raw.get("exclude_owned", True)
        if not isinstance(exclude, bool):
            raise fail(at("exclude_owned"), f"{label}: key 'exclude_owned' must be true or false, got {exclude!r}")
        budget = raw.get("budget")
        if budget is not None and not (isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0):
            raise fail(at("budget"), f"{label}: key 'budget' must be a whole number of customers, 0 or more, "
                       f"got {budget!r}")
        rule_text = raw.get("eligible")
        rule = None
        if rule_text is not None:
            if not isinstance(rule_text, str):
                raise fail(at("eligible"), f"{label}: key 'eligible' must be a string (a rule), got {rule_text!r}")
            try:
                rule = expr.parse(rule_text)
            except expr.RuleError as exc:
                raise fail(at("eligible"), f"{label}: key 'eligible' does not parse: {exc}") from None
            if rules is None and expr.uses_rules(rule):
                raise fail(at("eligible"), f"{label}: key 'eligible' calls by_rules(...) but the catalogue names "
                           "no rules: add a top-level key rules = \"<path or s3:// URI of an `engine rules` "
                           "output>\" (before the first [[offer]])")
        item = raw.get("item")
        if item is not None and (not isinstance(item, str) or not item):
            raise fail(at("item"), f"{label}: key 'item' must be the name of an item of the rules, got {item!r}")
        if rules is not None and rules.items is not None:
            named = item if item is not None else raw["target"]
            if named not in rules.items and (item is not None or (rule is not None and expr.uses_rules(rule))):
                raise fail(at("item") if item is not None else at("target"),
                           f"{label}: item {named!r} is not one of the items {rules.shown} was mined on"
                           f"{suggest(named, rules.items)} (items: {', '.join(rules.items[:20])}"
                           f"{' ...' if len(rules.items) > 20 else ''}); name it with the key 'item'")
        if rules is not None and rules.form == "baskets" and rule is not None and expr.uses_rules(rule):
            named = item if item is not None else raw["target"]
            known = rules.names()
            if named not in known:
                some = sorted(known)[:10]
                raise fail(at("item") if item is not None else at("eligible"),
                           f"{label}: item {named!r} is in no rule of {rules.shown}{suggest(named, known)}; those "
                           f"rules were mined with --baskets, so their items are product names (e.g. "
                           f"{', '.join(map(repr, some))}), not columns: name the offer's product with the key "
                           "'item', and note that by_rules reads each antecedent item as a column of the input "
                           "(mine the rules on a wide table, `engine rules --items ...`, to use them here)")
        excluded = raw.get("exclude_features")
        if excluded is not None:
            if not isinstance(excluded, list) or not all(isinstance(c, str) and c for c in excluded):
                raise fail(at("exclude_features"), f"{label}: key 'exclude_features' must be a list of column "
                           f"names, e.g. [\"PPERSAUT\", \"APERSAUT\"], got {excluded!r}")
            twice = sorted({c for c in excluded if excluded.count(c) > 1})
            if twice:
                raise fail(at("exclude_features"), f"{label}: key 'exclude_features' names {', '.join(twice)} "
                           "more than once")
        offers.append(Offer(id=name, target=raw["target"], positive=None if positive is None else str(positive),
                            value=values["value"], cost=values["cost"], eligible=rule_text,
                            exclude_owned=exclude, budget=budget,
                            exclude_features=None if excluded is None else tuple(excluded),
                            item=item, line=header or 0, rule=rule))
    return Catalogue(tuple(offers), int(top), float(min_ev), where, top_lines, rules)


def check_columns(catalogue: Catalogue, schema: Any, *, targets: bool, id_column: str | None = None,
                  owned_needed: bool = True) -> None:
    """Every column the catalogue names exists in ``schema`` and fits its use; exit 2 naming line and key.

    ``targets``: the target columns must be present (training); at scoring, only those of
    offers with ``exclude_owned`` (``owned_needed``).
    """
    names = list(schema.names)

    def fail(offer: Offer, key: str, message: str) -> UsageError:
        line = _key_line(catalogue, offer, key)
        return UsageError(f"{catalogue.source}" + (f" line {line}" if line else "") + f": offer {offer.id!r}: {message}")

    for offer in catalogue.offers:
        if (targets or (owned_needed and offer.exclude_owned)) and offer.target not in names:
            hint = "" if targets else " (exclude_owned = true reads it to skip owners; set it to false to score without)"
            raise fail(offer, "target", f"target column {offer.target!r} is not in the input"
                       f"{suggest(offer.target, names)}{hint}")
        if offer.target == id_column:
            raise fail(offer, "target", f"target column {offer.target!r} is the id column")
        if offer.rule is None:
            continue
        for col in expr.columns(offer.rule):
            if col not in names:
                raise fail(offer, "eligible", f"rule names column {col!r}, which is not in the input"
                           f"{suggest(col, names)}")
        try:
            expr.check_types(offer.rule, schema)
        except expr.RuleError as exc:
            raise fail(offer, "eligible", f"rule {offer.eligible!r}: {exc}") from None
    if catalogue.rules is not None:
        from engine.offers import rules_use

        rules_use.check_columns(catalogue, schema, lambda offer, key: _key_line(catalogue, offer, key))


def check_exclusions(catalogue: Catalogue, features: Sequence[str]) -> None:
    """Every ``exclude_features`` name is one of the training's feature columns; exit 2 naming line and key."""
    for offer in catalogue.offers:
        for col in offer.exclude_features or ():
            if col not in features:
                line = _key_line(catalogue, offer, "exclude_features")
                raise UsageError(f"{catalogue.source}" + (f" line {line}" if line else "")
                                 + f": offer {offer.id!r}: key 'exclude_features' names {col!r}, which is not a "
                                 f"feature of this training{suggest(col, features)} (features: "
                                 f"{', '.join(list(features)[:20])}{' ...' if len(features) > 20 else ''})")


def _key_line(catalogue: Catalogue, offer: Offer, key: str) -> int | None:
    try:
        with open(catalogue.source, encoding="utf-8") as fh:
            _, headers, keys = _lines(fh.read())
    except OSError:
        return offer.line or None
    idx = catalogue.offers.index(offer)
    if idx < len(keys):
        return keys[idx].get(key, headers[idx])
    return offer.line or None


def for_scoring(model_offers: Sequence[dict[str, Any]], given: Catalogue | None,
                model_settings: dict[str, Any]) -> Catalogue:
    """The catalogue a scoring run uses: the model's own, or ``given`` checked against the model.

    A catalogue at scoring time may change values, costs, rules, ownership, budgets, ``top``
    and the order (ties go to the earlier offer), and may leave offers out; it may not add
    an offer the model has no head for, nor change an offer's target (that needs retraining).
    """
    if given is None:
        rules = None
        if model_settings.get("rules"):
            from engine.offers.rules_use import load_rules

            rules = load_rules(model_settings["rules"], where="the model's catalogue key 'rules'")
        offers = []
        for rec in model_offers:
            rule = expr.parse(rec["eligible"]) if rec.get("eligible") else None
            offers.append(Offer(id=rec["id"], target=rec["target"], positive=rec.get("positive"),
                                value=float(rec.get("value", 1.0)), cost=float(rec.get("cost", 0.0)),
                                eligible=rec.get("eligible"), exclude_owned=bool(rec.get("exclude_owned", True)),
                                budget=rec.get("budget"),
                                exclude_features=tuple(rec.get("exclude_features") or ()), item=rec.get("item"),
                                rule=rule))
            if rules is None and rule is not None and expr.uses_rules(rule):
                raise UsageError(f"the model's catalogue: offer {rec['id']!r} calls by_rules(...) but the model "
                                 "records no rules output: give a catalogue with a `rules` key (--offers)")
        return Catalogue(tuple(offers), int(model_settings.get("top", 3)),
                         # None: trained with -inf (no minimum); strict JSON has no -inf.
                         float(model_settings.get("min_expected_value", 0.0) if model_settings.get(
                             "min_expected_value", 0.0) is not None else -math.inf),
                         "the model's catalogue", rules=rules)
    known = {rec["id"]: rec for rec in model_offers}
    for offer in given.offers:
        rec = known.get(offer.id)
        line = _key_line(given, offer, "id")
        where = f"{given.source}" + (f" line {line}" if line else "")
        if rec is None:
            raise UsageError(f"{where}: offer {offer.id!r} has no head in the model{suggest(offer.id, known)}; "
                             "a new offer needs `engine train --offers`")
        if rec["target"] != offer.target or (rec.get("positive") or None) != (offer.positive or None):
            line = _key_line(given, offer, "target")
            where = f"{given.source}" + (f" line {line}" if line else "")
            raise UsageError(f"{where}: offer {offer.id!r} has target {offer.target!r} but the model's head was "
                             f"trained on {rec['target']!r}; a catalogue at scoring time may change values, rules "
                             "and budgets, not targets (retrain with `engine train --offers`)")
        trained = tuple(rec.get("exclude_features") or ())
        if offer.exclude_features is not None and sorted(offer.exclude_features) != sorted(trained):
            line = _key_line(given, offer, "exclude_features")
            where = f"{given.source}" + (f" line {line}" if line else "")
            raise UsageError(f"{where}: offer {offer.id!r} excludes {list(offer.exclude_features)} but the model's "
                             f"head was trained excluding {list(trained)}; the excluded features are part of the "
                             "trained head: leave the key out (or repeat the model's list), or retrain with "
                             "`engine train --offers`")
    return Catalogue(tuple(replace(o, exclude_features=tuple(known[o.id].get("exclude_features") or ()))
                           for o in given.offers), given.top, given.min_expected_value, given.source,
                     given.top_lines, given.rules)


def head_index(model_offers: Sequence[dict[str, Any]], catalogue: Catalogue) -> list[int]:
    """For each catalogue offer, in catalogue order, the model's head index."""
    pos = {rec["id"]: i for i, rec in enumerate(model_offers)}
    return [pos[o.id] for o in catalogue.offers]
