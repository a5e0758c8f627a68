"""compexp's ``tally_{layer}.csv`` (Mu & Andreas, "Compositional Explanations of Neurons", NeurIPS 2020;
github.com/jayelm/compexp, ``vision/dissection/neuron.py`` ``NeuronOperator._tally``).

Columns, as compexp writes them (pandas, no index): ``unit,category,label,score,length,emb_summary,
emb_summary_sim,wn_summary,wn_summary_sim,wn_mean_sim,wn_min_sim,wn_max_sim,consistency,
category_noncomp,label_noncomp,score_noncomp``; units from 0. ``label`` is the formula printed by
compexp's ``F.to_str`` (``vision/loader/data_loader/formula.py``): a leaf is the concept's name as
the probe spells it (Broden's own names, e.g. ``street-s``, ``red-c``: compexp adds no suffix), NOT is
``(NOT x)``, AND and OR are ``(left AND right)``; AND NOT is ``(left AND (NOT right))``.
``category`` is the same formula with each leaf's category; ``score`` the IoU (times the length
penalty, 1.0 by default); ``length`` the number of leaves; ``*_noncomp`` the best single concept.
A unit without any overlapping concept is ``NONE`` with score 0.

Lossy: the summary columns (written empty and 0.0, as compexp does with its summaries off); the
best single concept is written only where known (the formula is one concept, or the results
directory's masks give it), else left empty; pixel counts and metrics are not kept. A concept name
compexp could not print unambiguously (parentheses, quotes, backslashes, AND/OR/NOT as a word, ``NONE``,
runs of spaces) is written quoted as in neurcore's formulas, which this module reads back but compexp's
own parser would not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

from .._io import atomic_open
from ..errors import FormulaSyntaxError, InputError
from ..results import Explanation
from ..rules.formula import And, AndNot, Formula, Leaf, Not, Or, parse
from ._common import bad, fmt, integer, number, read_csv, write_rows

HEADER = ["unit", "category", "label", "score", "length", "emb_summary", "emb_summary_sim", "wn_summary",
          "wn_summary_sim", "wn_mean_sim", "wn_min_sim", "wn_max_sim", "consistency", "category_noncomp",
          "label_noncomp", "score_noncomp"]
REQUIRED = ["unit", "category", "label", "score", "length"]
NONE = "NONE"
_KEYWORDS = {"AND", "OR", "NOT"}


def _name(name: str) -> str:
    """A concept name as compexp prints it, or quoted where that would not read back as one name."""
    plain = (name and name == " ".join(name.split()) and not re.search(r'[()"\\]', name)
             and not (set(name.split()) & _KEYWORDS) and name != NONE)
    return name if plain else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _render(f: Formula, leaf: Iterator[str]) -> str:
    if isinstance(f, Leaf):
        return _name(next(leaf))
    if isinstance(f, Not):
        return f"(NOT {_render(f.operand, leaf)})"
    left = _render(f.left, leaf)
    if isinstance(f, AndNot):
        return f"({left} AND (NOT {_render(f.right, leaf)}))"
    return f"({left} {'OR' if isinstance(f, Or) else 'AND'} {_render(f.right, leaf)})"


def to_compexp_formula(formula: str | Formula, names: Sequence[str] | None = None) -> str:
    """A neurcore formula (canonical string or tree) in compexp's syntax, e.g. ``((water OR river) AND NOT
    blue)`` -> ``((water OR river) AND (NOT blue))``; ``names`` replaces the leaves, left to right
    (compexp's ``category`` column passes the leaves' categories)."""
    f = parse(formula) if isinstance(formula, str) else formula
    return _render(f, iter(names if names is not None else list(f.leaves())))


_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"]+))')


def _tokens(text: str) -> list[tuple[str, str]]:
    """("(" | ")" | "AND" | "OR" | "NOT" | "name", text); unquoted words between operators are one name."""
    out, pos = [], 0
    while text[pos:].strip():
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FormulaSyntaxError(f"unexpected {text[pos:].strip()[:10]!r} at {pos}")
        lp, rp, quoted, word = m.groups()
        if lp or rp:
            out.append((lp or rp, lp or rp))
        elif quoted is not None:
            out.append(("name", re.sub(r"\\(.)", r"\1", quoted)))
        elif word in _KEYWORDS:
            out.append((word, word))
        elif out and out[-1][0] == "word":
            out[-1] = ("word", out[-1][1] + " " + word)
        else:
            out.append(("word", word))
        pos = m.end()
    return [("name", t) if k == "word" else (k, t) for k, t in out]


def from_compexp_formula(text: str) -> Formula:
    """A formula printed by compexp (``((water OR river) AND (NOT blue))``) as a neurcore formula:
    NOT binds tightest, then AND, then OR; ``x AND (NOT y)`` becomes neurcore's ``(x AND NOT y)``.
    Raises :class:`~neurcore.errors.FormulaSyntaxError` for text that does not parse."""
    toks, pos = _tokens(text), 0

    def take(kind: str | None = None) -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks) or (kind and toks[pos][0] != kind):
            got = repr(toks[pos][1]) if pos < len(toks) else "the end"
            raise FormulaSyntaxError(f"expected {kind or 'more'}, got {got}")
        pos += 1
        return toks[pos - 1]

    def peek() -> str | None:
        return toks[pos][0] if pos < len(toks) else None

    def expr(level: int) -> Formula:  # level 0: OR, 1: AND, 2: NOT and atoms
        if level == 2:
            kind = peek()
            if kind == "NOT":
                take()
                return Not(expr(2))
            if kind == "(":
                take()
                node = expr(0)
                take(")")
                return node
            return Leaf(take("name")[1])
        node, op = expr(level + 1), ("OR", "AND")[level]
        while peek() == op:
            take()
            right = expr(level + 1)
            node = Or(node, right) if op == "OR" else \
                AndNot(node, right.operand) if isinstance(right, Not) else And(node, right)
        return node

    if not toks:
        raise FormulaSyntaxError("empty formula")
    node = expr(0)
    if pos != len(toks):
        raise FormulaSyntaxError(f"unexpected {toks[pos][1]!r} after the formula")
    return node


def compexp_rows(rows: Sequence[Explanation], best_single: dict[int, tuple[str, str, float]] | None = None
                 ) -> list[list[str]]:
    """The CSV rows of one layer's explanations, by unit; ``best_single``: unit -> (concept, category,
    IoU) of its best single concept, where known."""
    out = []
    for r in sorted(rows, key=lambda r: r.unit):
        if r.formula is None:
            label, cat, length = NONE, NONE, 1  # compexp's Leaf(None)
        else:
            f = parse(r.formula)
            label, length = to_compexp_formula(f), len(f)
            cats = r.categories if r.categories and len(r.categories) == length else None
            cat = to_compexp_formula(f, cats) if cats else ""
        single = (best_single or {}).get(r.unit)
        if single is None and r.formula is not None and length == 1:
            single = (next(parse(r.formula).leaves()), (r.categories or [""])[0], r.iou)
        if single is None and "label_noncomp" in r.extra:
            e = r.extra
            single = (e["label_noncomp"], e.get("category_noncomp", ""), e.get("score_noncomp"))
        noncomp = ["", "", ""] if single is None else [_name(single[1]) if single[1] else "",
                                                       _name(single[0]), fmt(single[2])]
        out.append([str(r.unit), cat, label, fmt(r.iou or 0.0), str(length),
                    "", "0.0", "", "0.0", "0.0", "0.0", "0.0", "0.0", *noncomp])
    return out


def to_compexp(path: str | os.PathLike, rows: Sequence[Explanation],
                  best_single: dict[int, tuple[str, str, float]] | None = None) -> str:
    """One layer's explanations as compexp's ``tally_{layer}.csv`` at ``path``, atomically; ``best_single``:
    unit -> (concept, category, IoU) of its best single concept where known. Returns the path."""
    with atomic_open(path, newline="", encoding="utf-8") as f:
        write_rows(f, HEADER, compexp_rows(rows, best_single))
    return os.fspath(path)


def _formula(path: str, line: int, column: str, text: str) -> Formula:
    try:
        return from_compexp_formula(text)
    except FormulaSyntaxError as e:
        raise bad(path, line, column, f"{text!r} does not parse ({e})") from None


def from_compexp(path: str | os.PathLike, layer: str | None = None) -> list[Explanation]:
    """The explanations of a compexp ``tally_{layer}.csv``: method ``compexp``, ``formula`` neurcore's
    canonical string, ``iou`` the score; the layer is ``layer``, else the file name's ``{layer}``."""
    path = os.fspath(path)
    if layer is None:
        m = re.fullmatch(r"tally_(.+)\.csv", os.path.basename(path))
        layer = m.group(1) if m else None
    _, rows = read_csv(path, REQUIRED)
    out = []
    for line, row in rows:
        out.append(_compexp_row(path, line, row, layer))
    return out


def _compexp_row(path: str, line: int, row: dict[str, str], layer: str | None) -> Explanation:
    unit = integer(path, line, "unit", row["unit"])
    if unit < 0:
        raise bad(path, line, "unit", f"{row['unit']!r} is not a unit index (0, 1, ...)")
    score = number(path, line, "score", row["score"])
    number(path, line, "length", row["length"])
    label = row["label"].strip()
    r = Explanation(unit=unit, method="compexp", formula=None, iou=score, layer=layer)
    if label and label != NONE:
        f = _formula(path, line, "label", label)
        r.formula, r.length = str(f), len(f)
        cat = row["category"].strip()
        if cat and cat != NONE:
            cats = list(_formula(path, line, "category", cat).leaves())
            r.categories = cats if len(cats) == r.length else None
    single = row.get("label_noncomp", "").strip()
    if single and single != NONE:
        r.extra["label_noncomp"] = next(_formula(path, line, "label_noncomp", single).leaves())
        cat = row.get("category_noncomp", "").strip()
        r.extra["category_noncomp"] = \
            next(_formula(path, line, "category_noncomp", cat).leaves()) if cat else ""
        r.extra["score_noncomp"] = number(path, line, "score_noncomp", row.get("score_noncomp", ""),
                                          empty_ok=True)
    return r


def tally_name(layer: str | None) -> str:
    """The file name compexp gives a layer's tally (``tally.csv`` for rows without a layer)."""
    if layer is None:
        return "tally.csv"
    if not layer:
        raise InputError("compexp: a layer name is empty")
    return f"tally_{layer.replace('/', '_')}.csv"
