"""`--where`: a small filter language over the slice table, turned into a row mask.

    mask = where_mask(parse_where('age >= 60 and sex == "F"'), table)   # (N,) bool

The text is read by a hand-written tokenizer and a recursive-descent parser; nothing is ever
evaluated as Python. The grammar (keywords in any case):

    filter     := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" or ")" | comparison
    comparison := COLUMN op literal | COLUMN ["not"] "in" "[" literal ("," literal)* "]"
    op         := "==" | "!=" | "<" | "<=" | ">" | ">="
    literal    := NUMBER (12, -3.5, 1e3) | STRING ("F" or 'F', backslash escapes \\" \\' \\\\)
                | DATE (2020-01-31, unquoted) | "true" | "false"

A column is a column of the index's slice table (`case`, `slice`, `lesion_area`, and the case
metadata: `sex`, `age`, `study_date`, `manufacturer`, ...). Numbers compare with numeric
columns, strings with text columns, dates with date columns (a quoted ISO date too); anything
else is a `WhereError` naming the column, as is an unknown column. A missing value (an empty
cell) fails every comparison, `!=` included, so `not (age > 60)` keeps the rows without an age.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fdn.archive_index.slice_table import typed_column
from fdn.errors import QueryError

MAX_LENGTH = 2000  # characters of a filter
MAX_DEPTH = 40  # nested parentheses and nots: the parser recurses once per level
OPS = ("==", "!=", "<=", ">=", "<", ">")
KEYWORDS = ("and", "or", "not", "in", "true", "false")


class WhereError(QueryError):
    """A filter that cannot be read or applied: the message says where and why."""


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "op", "number", "string", "date", "bool", "punct", keyword, "end"
    value: Any
    at: int  # character offset, for messages


@dataclass(frozen=True)
class Compare:
    column: str
    op: str  # one of OPS, or "in" / "not in"
    values: tuple  # one literal, or the list of `in`


@dataclass(frozen=True)
class Not:
    arg: Any


@dataclass(frozen=True)
class Both:
    op: str  # "and" / "or"
    left: Any
    right: Any


_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<date>\d{4}-\d{2}-\d{2}(?![\w.]))
      | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|<|>)
      | (?P<punct>[()\[\],])
      | (?P<quote>["'])""",
    re.VERBOSE,
)


def _date(text: str, at: int) -> np.datetime64:
    try:
        return np.datetime64(datetime.date.fromisoformat(text), "D")
    except ValueError:
        raise WhereError(f"filter: {text!r} at {at} is not a date (YYYY-MM-DD)") from None


def tokenize(text: str) -> list[Token]:
    """The tokens of a filter; WhereError at the first character that starts none."""
    tokens, i = [], 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            raise WhereError(f"filter: unexpected {text[i]!r} at {i}: {text!r}")
        kind = m.lastgroup
        if kind == "quote":
            value, i = _string(text, m.end(), m.group())
            tokens.append(Token("string", value, m.start()))
            continue
        word = m.group()
        if kind == "date":
            tokens.append(Token("date", _date(word, i), i))
        elif kind == "number":
            tokens.append(Token("number", float(word), i))
        elif kind == "name" and word.lower() in KEYWORDS:
            low = word.lower()
            if low in ("true", "false"):
                tokens.append(Token("bool", low == "true", i))
            else:
                tokens.append(Token(low, low, i))
        elif kind != "space":
            tokens.append(Token(str(kind), word, i))
        i = m.end()
    tokens.append(Token("end", None, len(text)))
    return tokens


def _string(text: str, i: int, quote: str) -> tuple[str, int]:
    """The string literal that starts after its opening quote at i, and where it ends."""
    out: list[str] = []
    start = i - 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "\\\"'":
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    raise WhereError(f"filter: the string opened at {start} is never closed: {text!r}")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self, kind: str, value=None) -> Token:
        token = self.peek()
        if token.kind != kind or (value is not None and token.value != value):
            want = value if value is not None else kind
            raise self.error(f"expected {want!r}")
        self.pos += 1
        return token

    def error(self, what: str) -> WhereError:
        token = self.peek()
        found = "the end" if token.kind == "end" else repr(self.text[token.at :][:20])
        return WhereError(f"filter: {what} at {token.at}, found {found}: {self.text!r}")

    def parse(self):
        node = self.or_()
        if self.peek().kind != "end":
            raise self.error("expected 'and', 'or' or the end")
        return node

    def or_(self):
        node = self.and_()
        while self.peek().kind == "or":
            self.pos += 1
            node = Both("or", node, self.and_())
        return node

    def and_(self):
        node = self.not_()
        while self.peek().kind == "and":
            self.pos += 1
            node = Both("and", node, self.not_())
        return node

    def not_(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"more than {MAX_DEPTH} nested parentheses or nots")
        try:
            token = self.peek()
            if token.kind == "not":
                self.pos += 1
                return Not(self.not_())
            if token.kind == "punct" and token.value == "(":
                self.pos += 1
                node = self.or_()
                self.take("punct", ")")
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self) -> Compare:
        if self.peek().kind != "name":
            raise self.error("expected a column name, 'not' or '('")
        column = self.take("name").value
        token = self.peek()
        if token.kind == "op":
            self.pos += 1
            return Compare(column, token.value, (self.literal(),))
        negate = token.kind == "not"
        if negate:
            self.pos += 1
        if self.peek().kind == "in":
            self.pos += 1
            self.take("punct", "[")
            values = [self.literal()]
            while self.peek().kind == "punct" and self.peek().value == ",":
                self.pos += 1
                values.append(self.literal())
            self.take("punct", "]")
            return Compare(column, "not in" if negate else "in", tuple(values))
        raise self.error(f"expected a comparison (==, !=, <, <=, >, >=, in) after {column!r}")

    def literal(self):
        token = self.peek()
        if token.kind not in ("number", "string", "date", "bool"):
            raise self.error('expected a number, a "string", a date (YYYY-MM-DD) or true/false')
        self.pos += 1
        return token.value


def parse_where(text: str):
    """The syntax tree of a filter; WhereError saying where it cannot be read."""
    if not isinstance(text, str):
        raise WhereError(f"filter: expected text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise WhereError(f"filter: {len(text)} characters, at most {MAX_LENGTH}")
    if not text.strip():
        raise WhereError("filter: empty; leave --where out to search every row")
    return _Parser(text).parse()


def _kind(values: np.ndarray) -> str:
    """What a column holds: "number", "date", "bool" or "text"."""
    if values.dtype.kind == "M":
        return "date"
    if values.dtype.kind == "b":
        return "bool"
    if values.dtype.kind in "iuf":
        return "number"
    return "text"


def _literal_for(column: str, kind: str, value):
    """`value` as the column's kind compares it; WhereError for a mismatch."""
    if kind == "date" and isinstance(value, str):
        try:
            return np.datetime64(datetime.date.fromisoformat(value), "D")
        except ValueError:
            pass
    ok = {
        "number": isinstance(value, float),
        "date": isinstance(value, np.datetime64),
        "bool": isinstance(value, bool),
        "text": isinstance(value, str),
    }[kind]
    if not ok:
        shown = str(value) if isinstance(value, np.datetime64) else repr(value)
        raise WhereError(
            f"filter: column {column!r} holds {kind} values and cannot be compared with {shown}"
        )
    return value


def evaluate(node, columns, n: int) -> np.ndarray:
    """(n,) bool: the rows of `columns` (name -> (n,) array) the filter keeps."""
    if isinstance(node, Both):
        left, right = evaluate(node.left, columns, n), evaluate(node.right, columns, n)
        return left & right if node.op == "and" else left | right
    if isinstance(node, Not):
        return ~evaluate(node.arg, columns, n)
    assert isinstance(node, Compare)
    if node.column not in columns:
        names = ", ".join(sorted(columns))
        raise WhereError(f"filter: no column {node.column!r} in this index (columns: {names})")
    values = typed_column(np.asarray(columns[node.column]))
    kind = _kind(values)
    literals = [_literal_for(node.column, kind, v) for v in node.values]
    if kind == "number":
        values = values.astype(np.float64)
        present = ~np.isnan(values)
    elif kind == "date":
        present = ~np.isnat(values)
    elif kind == "text":
        present = np.array([isinstance(v, str) and v != "" for v in values], bool)
        values = np.where(present, values, "").astype(object)
    else:
        present = np.ones(values.shape, bool)
    if node.op in ("in", "not in"):
        hit = np.zeros(values.shape, bool)
        for literal in literals:
            hit |= values == literal
        return present & (hit if node.op == "in" else ~hit)
    literal = literals[0]
    if kind in ("text", "bool") and node.op not in ("==", "!="):
        raise WhereError(f"filter: column {node.column!r} holds {kind} values: use == or !=")
    compare = {
        "==": np.equal,
        "!=": np.not_equal,
        "<": np.less,
        "<=": np.less_equal,
        ">": np.greater,
        ">=": np.greater_equal,
    }[node.op]
    with np.errstate(invalid="ignore"):
        return present & np.asarray(compare(values, literal), bool)


def where_mask(text: str, columns, n: int) -> np.ndarray:
    """(n,) bool rows of the slice table ``columns`` that pass the filter ``text``."""
    return evaluate(parse_where(text), columns, n)
