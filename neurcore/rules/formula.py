"""Logical formulas over concepts: leaves, AND, OR, AND NOT, and NOT.

The canonical string parenthesizes every binary operator, e.g.
``((water OR river) AND NOT blue)``; a concept name is quoted (``"sky blue"``)
when it contains whitespace, a parenthesis, a quote or a backslash, is empty,
or reads as an operator. :func:`parse` reads that syntax back, and also
unparenthesized input with precedence NOT > AND > OR (left-associative).
Length is the number of concept leaves (Mu & Andreas, "Compositional Explanations of Neurons",
NeurIPS 2020).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np

from ..errors import FormulaSyntaxError

if TYPE_CHECKING:
    from ..engine import BitMasks

__all__ = ["Formula", "Leaf", "Not", "And", "Or", "AndNot", "parse", "quote", "equivalent",
           "FormulaSyntaxError"]

_KEYWORDS = {"AND", "OR", "NOT"}
_NEEDS_QUOTES = re.compile(r'[\s()"\\]')


def quote(name: str) -> str:
    """A concept name as it appears in a formula string."""
    if name and not _NEEDS_QUOTES.search(name) and name.upper() not in _KEYWORDS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Formula:
    """Base of the formula tree; subclasses are frozen dataclasses (hashable, comparable)."""

    def __len__(self) -> int:
        return sum(1 for _ in self.leaves())

    def leaves(self) -> Iterator[str]:
        """Concept names, left to right (with repeats)."""
        raise NotImplementedError

    def evaluate(self, masks: "BitMasks", names: Mapping[str, int] | Sequence[str]) -> "BitMasks":
        """The formula's mask, given concept ``masks`` and their ``names`` (a sequence aligned with
        the rows, or a name -> row mapping). ``masks`` is a BitMasks (the result is a one-row
        BitMasks) or a bool array [n_concepts, ...] (the result is a bool array [...])."""
        index = names if isinstance(names, Mapping) else {n: i for i, n in enumerate(names)}
        return self._eval(masks, index)

    def _eval(self, masks, index):
        raise NotImplementedError


@dataclass(frozen=True)
class Leaf(Formula):
    """One concept, by name."""

    name: str

    def __str__(self) -> str:
        return quote(self.name)

    def leaves(self) -> Iterator[str]:
        """The concept's name."""
        yield self.name

    def _eval(self, masks, index):
        try:
            return masks[index[self.name]]
        except KeyError:
            raise KeyError(f"formula: unknown concept {self.name!r}") from None


@dataclass(frozen=True)
class Not(Formula):
    """NOT operand: the complement of its mask within each image."""

    operand: Formula

    def __str__(self) -> str:
        return f"NOT {self.operand}"

    def leaves(self) -> Iterator[str]:
        """The operand's concept names, left to right."""
        yield from self.operand.leaves()

    def _eval(self, masks, index):
        return ~self.operand._eval(masks, index)


@dataclass(frozen=True)
class _Binary(Formula):
    left: Formula
    right: Formula
    _op = ""

    def __str__(self) -> str:
        return f"({self.left} {self._op} {self.right})"

    def leaves(self) -> Iterator[str]:
        yield from self.left.leaves()
        yield from self.right.leaves()


@dataclass(frozen=True)
class And(_Binary):
    """left AND right: pixels in both masks."""

    _op = "AND"

    def __str__(self) -> str:
        # "(a AND NOT b)" reads as AndNot; And(a, Not(b)) keeps its own tree.
        right = f"({self.right})" if isinstance(self.right, Not) else str(self.right)
        return f"({self.left} AND {right})"

    def _eval(self, masks, index):
        return self.left._eval(masks, index) & self.right._eval(masks, index)


@dataclass(frozen=True)
class Or(_Binary):
    """left OR right: pixels in either mask."""

    _op = "OR"

    def _eval(self, masks, index):
        return self.left._eval(masks, index) | self.right._eval(masks, index)


@dataclass(frozen=True)
class AndNot(_Binary):
    """left AND NOT right: pixels of the left mask outside the right one."""

    _op = "AND NOT"

    def _eval(self, masks, index):
        left, right = self.left._eval(masks, index), self.right._eval(masks, index)
        return left.and_not(right) if hasattr(left, "and_not") else left & ~right


def equivalent(a: Formula, b: Formula) -> bool:
    """Whether two formulas are logically equivalent: equal on every truth assignment of their
    concepts (2**k assignments of the k distinct concepts in either)."""
    names = sorted(set(a.leaves()) | set(b.leaves()))
    k = len(names)
    table = (np.arange(2 ** k)[None, :] >> np.arange(k)[:, None]) & 1 == 1  # bool [k, 2**k]
    return bool(np.array_equal(a.evaluate(table, names), b.evaluate(table, names)))


_TOKEN = re.compile(r'\s*(?:(?P<lp>\()|(?P<rp>\))|"(?P<q>(?:[^"\\]|\\.)*)"|(?P<word>[^\s()"]+))')


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FormulaSyntaxError(f"formula {text!r}: unexpected {text[pos:].strip()[:10]!r} at {pos}")
        start = m.start(m.lastgroup)
        if m.lastgroup == "lp":
            out.append(("(", "(", start))
        elif m.lastgroup == "rp":
            out.append((")", ")", start))
        elif m.lastgroup == "q":
            out.append(("name", re.sub(r"\\(.)", r"\1", m.group("q")), start))
        else:
            w = m.group("word")
            out.append((w, w, start) if w in _KEYWORDS else ("name", w, start))
        pos = m.end()
    return out


def parse(text: str) -> Formula:
    """Parse a formula string (canonical or with omitted parentheses: NOT > AND > OR)."""
    toks = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos][0] if pos < len(toks) else None

    def fail(what: str):
        where = toks[pos][2] if pos < len(toks) else len(text)
        raise FormulaSyntaxError(f"formula {text!r}: expected {what} at {where}")

    def take(kind: str) -> str:
        nonlocal pos
        if peek() != kind:
            fail(repr(kind) if kind != "name" else "a concept name")
        pos += 1
        return toks[pos - 1][1]

    def expr() -> Formula:
        node = term()
        while peek() == "OR":
            take("OR")
            node = Or(node, term())
        return node

    def term() -> Formula:
        node = factor()
        while peek() == "AND":
            take("AND")
            if peek() == "NOT":
                take("NOT")
                node = AndNot(node, factor())
            else:
                node = And(node, factor())
        return node

    def factor() -> Formula:
        kind = peek()
        if kind == "NOT":
            take("NOT")
            return Not(factor())
        if kind == "(":
            take("(")
            node = expr()
            take(")")
            return node
        if kind == "name":
            return Leaf(take("name"))
        fail("a concept name, NOT or '('")

    if not toks:
        raise FormulaSyntaxError("formula: empty string")
    node = expr()
    if pos != len(toks):
        fail("end of formula")
    return node
