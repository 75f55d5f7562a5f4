"""The ``eligible`` rule language of the offer catalogue: parsed here, never ``eval``'d.

Grammar (keywords lower case; names are column names, or any name in backquotes)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | test
    test    := operand (OP operand | ["not"] "in" "[" literal ("," literal)* "]"
                        | "is" ["not"] "null")?
             | "(" expr ")"
             | "by_rules" "(" [NAME "=" number ("," NAME "=" number)*] ")"
    OP      := "==" | "=" | "!=" | "<" | "<=" | ">" | ">="
    operand := NAME | literal
    literal := number | 'text' | "text" | true | false

A rule evaluates per row with SQL's three-valued logic (Kleene): a comparison with a null
(or NaN) value is *unknown*, ``not unknown`` is unknown, ``false and unknown`` is false,
``true or unknown`` is true, and a row is eligible only where the rule is *true*. So
``age >= 18`` is not eligible where ``age`` is null; say ``age is null or age >= 18`` to
admit them. The evaluator is vectorised: :func:`evaluate` maps the parsed tree onto
``pyarrow.compute`` kernels over a whole block of columns at once (Arrow already has
Kleene ``and``/``or`` and typed comparisons, so no hand-written loop is needed).

``by_rules(min_lift = 1.5, min_confidence = 0.2)`` is the one predicate that is not over
columns alone: true where the customer holds the antecedent of a rule of the catalogue's
``rules`` output whose consequent is the offer's item (:mod:`engine.offers.rules_use`). The
parser only records its thresholds; :func:`evaluate` asks the ``by_rules`` callback it is
given for the truth per row (never null: an item not held is simply not held).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


class RuleError(ValueError):
    """A rule that does not parse or does not fit the data; ``column`` is the rule's character offset."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class Col:
    name: str


@dataclass(frozen=True)
class Lit:
    value: Any  # int, float, str or bool


@dataclass(frozen=True)
class Cmp:
    op: str
    left: Col | Lit
    right: Col | Lit


@dataclass(frozen=True)
class In:
    operand: Col | Lit
    values: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull:
    operand: Col | Lit
    negated: bool


@dataclass(frozen=True)
class ByRules:
    """``by_rules(...)``: thresholds on the loaded rules (None: no threshold)."""

    min_lift: float | None = None
    min_confidence: float | None = None


#: The keyword arguments of ``by_rules`` and their ranges.
BY_RULES_ARGS = ("min_lift", "min_confidence")


@dataclass(frozen=True)
class Not:
    arg: Node


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    args: tuple[Node, ...]


Node = Cmp | In | IsNull | Not | BoolOp | ByRules | Col | Lit

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<quoted>`[^`]+`)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op><=|>=|==|!=|=|<|>)
  | (?P<punct>[()\[\],])
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
_OPS = {"==": "equal", "=": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal",
        ">": "greater", ">=": "greater_equal"}


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise RuleError(f"unexpected character {text[pos]!r} at position {pos + 1}", pos)
        kind = m.lastgroup
        raw = m.group()
        if kind == "num":
            out.append(("lit", float(raw) if any(c in raw for c in ".eE") else int(raw), pos))
        elif kind == "str":
            out.append(("lit", re.sub(r"\\(.)", r"\1", raw[1:-1]), pos))
        elif kind == "quoted":
            out.append(("qname", raw[1:-1], pos))
        elif kind == "name":
            low = raw.lower()
            if low in ("true", "false"):
                out.append(("lit", low == "true", pos))
            elif low in _KEYWORDS:
                out.append(("kw", low, pos))
            else:
                out.append(("name", raw, pos))
        elif kind in ("op", "punct"):
            out.append((kind, raw, pos))
        pos = m.end()
    out.append(("end", None, len(text)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, Any, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, Any, int]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, kind: str, value: Any = None) -> tuple[str, Any, int]:
        tok = self.take()
        if tok[0] != kind or (value is not None and tok[1] != value):
            want = repr(value) if value is not None else kind
            got = "the end of the rule" if tok[0] == "end" else repr(tok[1])
            raise RuleError(f"expected {want} at position {tok[2] + 1}, found {got}", tok[2])
        return tok

    def is_kw(self, word: str) -> bool:
        tok = self.peek()
        return tok[0] == "kw" and tok[1] == word

    def parse(self) -> Node:
        node = self.or_()
        tok = self.peek()
        if tok[0] != "end":
            raise RuleError(f"unexpected {tok[1]!r} at position {tok[2] + 1} (a missing 'and' or 'or'?)", tok[2])
        if isinstance(node, (Col, Lit)):
            raise RuleError("a rule must be a condition (a comparison, 'in [...]' or 'is null'), "
                            "not a bare name or value", 0)
        return node

    def or_(self) -> Node:
        args = [self.and_()]
        while self.is_kw("or"):
            self.take()
            args.append(self.and_())
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def and_(self) -> Node:
        args = [self.not_()]
        while self.is_kw("and"):
            self.take()
            args.append(self.not_())
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def not_(self) -> Node:
        if self.is_kw("not"):
            self.take()
            arg = self.not_()
            if isinstance(arg, (Col, Lit)):
                raise RuleError("'not' must be followed by a condition", self.peek()[2])
            return Not(arg)
        return self.test()

    def operand(self) -> Col | Lit:
        tok = self.take()
        if tok[0] in ("name", "qname"):
            return Col(tok[1])
        if tok[0] == "lit":
            return Lit(tok[1])
        got = "the end of the rule" if tok[0] == "end" else repr(tok[1])
        raise RuleError(f"expected a column name or a value at position {tok[2] + 1}, found {got}", tok[2])

    def test(self) -> Node:
        tok = self.peek()
        if tok[0] == "punct" and tok[1] == "(":
            self.take()
            node = self.or_()
            self.expect("punct", ")")
            return node
        nxt = self.toks[self.i + 1] if self.i + 1 < len(self.toks) else ("end", None, 0)
        if tok[0] == "name" and nxt[0] == "punct" and nxt[1] == "(":
            return self.call()
        left = self.operand()
        tok = self.peek()
        if tok[0] == "op":
            self.take()
            right = self.operand()
            if isinstance(left, Lit) and isinstance(right, Lit):
                raise RuleError(f"comparison at position {tok[2] + 1} compares two values; name a column", tok[2])
            return Cmp(_OPS[tok[1]], left, right)
        if self.is_kw("is"):
            self.take()
            negated = self.is_kw("not")
            if negated:
                self.take()
            self.expect("kw", "null")
            return IsNull(left, negated)
        negated = False
        if self.is_kw("not"):
            self.take()
            negated = True
            if not self.is_kw("in"):
                t = self.peek()
                raise RuleError(f"expected 'in' after 'not' at position {t[2] + 1}", t[2])
        if self.is_kw("in"):
            self.take()
            self.expect("punct", "[")
            values = [self._literal()]
            while self.peek()[0] == "punct" and self.peek()[1] == ",":
                self.take()
                values.append(self._literal())
            self.expect("punct", "]")
            return In(left, tuple(values), negated)
        return left

    def call(self) -> Node:
        """``by_rules(min_lift = 1.5, min_confidence = 0.2)``: the only function of the language."""
        _, name, pos = self.take()
        if name != "by_rules":
            raise RuleError(f"unknown function {name!r} at position {pos + 1}; the only function is "
                            "by_rules(min_lift = ..., min_confidence = ...)", pos)
        self.expect("punct", "(")
        args: dict[str, float] = {}
        while not (self.peek()[0] == "punct" and self.peek()[1] == ")"):
            if args:
                self.expect("punct", ",")
            key = self.take()
            if key[0] != "name" or key[1] not in BY_RULES_ARGS:
                got = "the end of the rule" if key[0] == "end" else repr(key[1])
                close = difflib.get_close_matches(str(key[1]), BY_RULES_ARGS, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close and key[0] == "name" else ""
                raise RuleError(f"by_rules takes min_lift = ... and min_confidence = ... (by name); found {got} "
                                f"at position {key[2] + 1}{hint}", key[2])
            if key[1] in args:
                raise RuleError(f"by_rules names {key[1]} twice (position {key[2] + 1})", key[2])
            eq = self.take()
            if eq[0] != "op" or eq[1] != "=":
                raise RuleError(f"expected '=' after {key[1]} at position {eq[2] + 1}", eq[2])
            val = self.take()
            if val[0] != "lit" or isinstance(val[1], (bool, str)) or val[1] != val[1]:
                raise RuleError(f"by_rules: {key[1]} must be a number, at position {val[2] + 1}", val[2])
            number = float(val[1])
            if number < 0 or (key[1] == "min_confidence" and number > 1) or number == float("inf"):
                want = "from 0 to 1" if key[1] == "min_confidence" else "0 or more"
                raise RuleError(f"by_rules: {key[1]} must be {want}, got {val[1]} at position {val[2] + 1}",
                                val[2])
            args[key[1]] = number
        self.expect("punct", ")")
        return ByRules(args.get("min_lift"), args.get("min_confidence"))

    def _literal(self) -> Any:
        tok = self.take()
        if tok[0] != "lit":
            got = "the end of the rule" if tok[0] == "end" else repr(tok[1])
            raise RuleError(f"expected a value in the list at position {tok[2] + 1}, found {got}", tok[2])
        return tok[1]


def parse(text: str) -> Node:
    """The parsed rule; :class:`RuleError` saying where it fails."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("the rule is empty", 0)
    if len(text) > 10_000:
        raise RuleError("the rule is longer than 10,000 characters", 0)
    return _Parser(text).parse()


def columns(node: Node) -> list[str]:
    """The column names a rule reads, in order of first use."""
    found: list[str] = []

    def walk(n: Node) -> None:
        if isinstance(n, Col):
            if n.name not in found:
                found.append(n.name)
        elif isinstance(n, Cmp):
            walk(n.left)
            walk(n.right)
        elif isinstance(n, (In, IsNull)):
            walk(n.operand)
        elif isinstance(n, Not):
            walk(n.arg)
        elif isinstance(n, BoolOp):
            for a in n.args:
                walk(a)

    walk(node)
    return found


def uses_rules(node: Node) -> bool:
    """Whether the rule calls ``by_rules(...)`` anywhere."""
    if isinstance(node, ByRules):
        return True
    if isinstance(node, Not):
        return uses_rules(node.arg)
    if isinstance(node, BoolOp):
        return any(uses_rules(a) for a in node.args)
    return False


#: What :func:`evaluate` asks for the truth of ``by_rules(...)`` on a table (a bool array).
ByRulesFn = Callable[[ByRules, pa.Table], Any]


def _kind(dtype: pa.DataType) -> str:
    if pa.types.is_dictionary(dtype):
        return _kind(dtype.value_type)
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "text"
    if pa.types.is_null(dtype):
        return "null"
    return str(dtype)


def _lit_kind(value: Any) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else "text"


def check_types(node: Node, schema: pa.Schema) -> None:
    """Every comparison between kinds that can be compared (number, text, boolean); :class:`RuleError` otherwise."""

    def kind(op: Col | Lit) -> str:
        if isinstance(op, Lit):
            return _lit_kind(op.value)
        return _kind(schema.field(op.name).type)

    def same(a: str, b: str, where: str) -> None:
        if "null" in (a, b) or a == b:
            return
        raise RuleError(f"{where} compares {a} with {b}")

    def walk(n: Node) -> None:
        if isinstance(n, Cmp):
            a, b = kind(n.left), kind(n.right)
            name = n.left.name if isinstance(n.left, Col) else n.right.name  # type: ignore[union-attr]
            same(a, b, f"the comparison on column {name!r}")
            if a == "bool" and n.op not in ("equal", "not_equal"):
                raise RuleError(f"column {name!r} is boolean: compare it with == or != only")
        elif isinstance(n, In):
            a = kind(n.operand)
            for v in n.values:
                same(a, _lit_kind(v), f"'in [...]' on {getattr(n.operand, 'name', 'a value')!r}")
        elif isinstance(n, Not):
            walk(n.arg)
        elif isinstance(n, BoolOp):
            for x in n.args:
                walk(x)

    walk(node)


def _literals(values: list[Any]) -> Any:
    """The rule's literals as one Arrow array, built from buffers: ``pa.scalar``/``pa.array`` of
    Python values import pandas (~0.1 s of a nightly run that otherwise never needs it).
    Same types as ``pa.array`` infers: all bool, all int (int64), numbers (double), or text."""
    import numpy as np

    from engine.io.arrow import string_array
    from engine.io.matrix import to_arrow

    if all(isinstance(v, bool) for v in values):
        return to_arrow(np.asarray(values, dtype=bool))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return to_arrow(np.asarray(values, dtype=np.int64))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return to_arrow(np.asarray(values, dtype=np.float64))
    return string_array(values) if all(isinstance(v, str) for v in values) else pa.array(values)


def scalar(value: Any) -> Any:
    """One Python value as an Arrow scalar, without ``pa.scalar`` (which imports pandas)."""
    return _literals([value])[0]


def _value(op: Col | Lit, table: pa.Table) -> Any:
    if isinstance(op, Lit):
        return _literals([op.value])[0]
    col = table.column(op.name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_floating(col.type):
        # NaN is a missing value in this engine: make it null so comparisons are unknown.
        col = pc.if_else(pc.is_nan(col), pa.nulls(1, col.type)[0], col)
    return col


def evaluate(node: Node, table: pa.Table, by_rules: ByRulesFn | None = None) -> Any:
    """The rule's Kleene truth per row of ``table``: a boolean Arrow array (null = unknown).

    ``by_rules``: the truth of a ``by_rules(...)`` call on ``table`` (the catalogue's rules
    for the offer the rule belongs to); a rule that calls it without one is a :class:`RuleError`.
    """
    if isinstance(node, ByRules):
        if by_rules is None:
            raise RuleError("by_rules(...) needs the catalogue's `rules` key (an `engine rules` output)")
        return by_rules(node, table)
    if isinstance(node, Cmp):
        left, right = _value(node.left, table), _value(node.right, table)
        if isinstance(left, pa.Scalar):  # literal OP column: flip to column OP' literal
            flipped = {"less": "greater", "greater": "less", "less_equal": "greater_equal",
                       "greater_equal": "less_equal"}.get(node.op, node.op)
            return getattr(pc, flipped)(right, left)
        return getattr(pc, node.op)(left, right)
    if isinstance(node, In):
        values = _value(node.operand, table)
        hit = pc.is_in(values, value_set=_literals(list(node.values)))
        # is_in says false for a null: a membership test of an unknown value is unknown.
        hit = pc.if_else(pc.is_null(values), pa.nulls(1, pa.bool_())[0], hit)
        return pc.invert(hit) if node.negated else hit
    if isinstance(node, IsNull):
        values = _value(node.operand, table)
        if isinstance(values, pa.Scalar):
            values = pa.repeat(values, table.num_rows) if values.is_valid else pa.nulls(table.num_rows)
        hit = pc.is_null(values)
        return pc.invert(hit) if node.negated else hit
    if isinstance(node, Not):
        return pc.invert(evaluate(node.arg, table, by_rules))
    if isinstance(node, BoolOp):
        fn = pc.and_kleene if node.op == "and" else pc.or_kleene
        out = evaluate(node.args[0], table, by_rules)
        for a in node.args[1:]:
            out = fn(out, evaluate(a, table, by_rules))
        return out
    raise RuleError("a rule must be a condition")  # pragma: no cover - parse() refuses it


def mask(node: Node, table: pa.Table, by_rules: ByRulesFn | None = None) -> Any:
    """Rows where the rule is true (unknown counts as not eligible), as a NumPy bool array."""
    from engine.io.matrix import true_rows

    return true_rows(evaluate(node, table, by_rules))


