"""NetDissect-Lite's ``tally.csv`` (Bau et al., "Network Dissection: Quantifying Interpretability of Deep
Visual Representations", CVPR 2017; github.com/CSAILVision/NetDissect-Lite, ``feature_operation.py``
``FeatureOperator.tally``).

Columns: ``unit,category,label,score``, then for each category of the probe, in the probe's order,
``{cat}-label,{cat}-truth,{cat}-activation,{cat}-intersect,{cat}-iou``: the unit's best concept of
that category, the concept's pixel count, the unit's pixel count, their intersection and IoU.
``label``/``score`` are the best of those over the categories, ``category`` its category. Units are
numbered from 1 and the rows sorted by score, highest first (ties by unit here; NetDissect-Lite
leaves ties in argsort's order). Pixel counts are written as integers (NetDissect-Lite writes
numpy floats, ``1234.0``; both read back).

neurcore writes ``label``/``score`` from its explanation: a single concept by its name, a compound
formula (beam, optimal, clustered) as its canonical string, with ``category`` the leaves' categories
joined by ``+``; a unit without a formula gets an empty label and its score (0). The per-category
blocks are exact when the results directory still holds the concept masks and unit masks
(``concepts/``, ``layers/<layer>/unit_masks/``): every unit's best single concept of each category,
as NetDissect computes them; otherwise only the block of a single-concept explanation's own category
is filled (from its counts) and the rest are left empty.

Lossy: metrics, the beam, planted and method-specific fields; pixel counts of compound formulas.
``activation`` differs slightly in meaning: NetDissect counts the unit's pixels only in images where
the category is annotated, neurcore in every image (in the synthetic world every category is).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from .._io import atomic_open, safe_name
from ..engine import BitMasks, intersect_counts, to_host
from ..errors import InputError
from ..results import Explanation
from ..rules.formula import Leaf, parse
from ._common import bad, fmt, integer, number, read_csv, write_rows

BASE = ["unit", "category", "label", "score"]
BLOCK = ("label", "truth", "activation", "intersect", "iou")

#: unit -> category -> (concept, truth, activation, intersect, iou)
Tallies = dict[int, dict[str, tuple[str, int, int, int, float]]]


def header(categories: Sequence[str]) -> list[str]:
    """NetDissect-Lite's tally header for ``categories`` in their order."""
    return BASE + [f"{c}-{k}" for c in categories for k in BLOCK]


def category_tallies(run_dir: str, layer: str | None) -> tuple[list[str], Tallies] | None:
    """Every unit's best single concept per category, from a results directory's concept masks and the
    layer's unit masks, with NetDissect's counts; None when the directory does not hold them (or the
    probe has no categories). Returns (categories in the probe's order, tallies)."""
    names_file = os.path.join(run_dir, "concepts.json")
    layer_dir = os.path.join(run_dir, "layers", safe_name(layer or ""))
    blocks = sorted(glob.glob(os.path.join(layer_dir, "unit_masks", "units-*")))
    if layer is None or not os.path.isfile(names_file) or not blocks:
        return None
    with open(names_file) as f:
        meta = json.load(f)
    names, cats = meta.get("names"), meta.get("categories")
    if not cats or not os.path.isdir(os.path.join(run_dir, "concepts")):
        return None
    concepts = BitMasks.load(os.path.join(run_dir, "concepts"))
    units = BitMasks.concat([BitMasks.load(b) for b in blocks])
    inter = np.asarray(to_host(intersect_counts(units, concepts)), dtype=np.int64)
    a = np.asarray(to_host(units.count()), dtype=np.int64)
    t = np.asarray(to_host(concepts.count()), dtype=np.int64)
    union = a[:, None] + t[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    order = list(dict.fromkeys(cats))
    out: Tallies = {}
    for c in order:
        idx = np.array([i for i, k in enumerate(cats) if k == c])
        best = idx[iou[:, idx].argmax(axis=1)]  # ties: the concept listed first
        for u, b in enumerate(best):
            entry = (names[b], int(t[b]), int(a[u]), int(inter[u, b]), float(iou[u, b])) \
                if iou[u, b] > 0 else ("", 0, int(a[u]), 0, 0.0)
            out.setdefault(u, {})[c] = entry
    return order, out


def _label(formula: str | None) -> str:
    """A formula as NetDissect's label: a single concept by its bare name, else the canonical string."""
    if formula is None:
        return ""
    f = parse(formula)
    if isinstance(f, Leaf) and not f.name.startswith(("(", '"')) and f.name:
        return f.name
    return formula


def _own_block(r: Explanation) -> tuple[str, tuple] | None:
    """A single-concept explanation's block in its own category, from its counts."""
    if r.formula is None or r.length != 1 or not r.categories or not r.counts.get("union"):
        return None
    c = r.counts
    return r.categories[0], (next(parse(r.formula).leaves()), c.get("formula"), c.get("unit"),
                             c.get("intersection"), r.iou)


def netdissect_rows(rows: Sequence[Explanation], categories: Sequence[str],
                    tallies: Tallies | None = None) -> list[list[str]]:
    """The CSV rows of one layer's explanations, sorted by score (highest first, ties by unit)."""
    out = []
    for r in sorted(rows, key=lambda r: (-(r.iou or 0.0), r.unit)):
        cat = "+".join(r.categories) if r.formula is not None and r.categories else ""
        blocks = dict((tallies or {}).get(r.unit, {}))
        own = _own_block(r) if tallies is None else None
        if own:
            blocks[own[0]] = own[1]
        line = [str(r.unit + 1), cat, _label(r.formula), fmt(r.iou or 0.0)]
        for c in categories:
            b = blocks.get(c)
            line += ["", "", "", "", ""] if b is None else [b[0], fmt(b[1]), fmt(b[2]), fmt(b[3]), fmt(b[4])]
        out.append(line)
    return out


def to_netdissect(path: str | os.PathLike, rows: Sequence[Explanation],
                     categories: Sequence[str] | None = None, tallies: Tallies | None = None) -> str:
    """One layer's explanations as NetDissect-Lite's ``tally.csv`` at ``path``, atomically; ``categories``
    (default: the rows' categories in order of first appearance) name the per-category blocks,
    ``tallies`` fill them (:func:`category_tallies`). Returns the path."""
    if categories is None:
        categories = list(dict.fromkeys(c for r in rows for c in (r.categories or [])))
    if any("+" in c or not c for c in categories):
        raise InputError(f"netdissect: a category name is empty or holds '+': {list(categories)}")
    with atomic_open(path, newline="", encoding="utf-8") as f:
        write_rows(f, header(categories), netdissect_rows(rows, categories, tallies))
    return os.fspath(path)


def from_netdissect(path: str | os.PathLike, layer: str | None = None) -> list[Explanation]:
    """The explanations of a NetDissect-Lite ``tally.csv`` (in unit order): method ``netdissect``, unit
    ``unit - 1``, ``formula`` the label (canonical), ``iou`` the score, the per-category blocks in
    ``extra["netdissect"]`` and, where the label's block is there, its pixel ``counts``."""
    path = os.fspath(path)
    columns, rows = read_csv(path, BASE)
    cats = [c[: -len("-label")] for c in columns if c.endswith("-label")]
    for c in cats:
        for k in BLOCK:
            if f"{c}-{k}" not in columns:
                raise bad(path, 1, "header", f"missing column '{c}-{k}' (columns: {','.join(columns)})")
    out, seen = [], {}
    for line, row in rows:
        r = _netdissect_row(path, line, row, cats, layer)
        if r.unit in seen:
            raise bad(path, line, "unit", f"unit {r.unit + 1} is also on row {seen[r.unit]}")
        seen[r.unit] = line
        out.append(r)
    return sorted(out, key=lambda r: r.unit)


def _netdissect_row(path: str, line: int, row: dict[str, str], cats: list[str],
                    layer: str | None) -> Explanation:
    unit = integer(path, line, "unit", row["unit"])
    if unit < 1:
        raise bad(path, line, "unit", f"{row['unit']!r}: NetDissect numbers units from 1")
    r = Explanation(unit=unit - 1, method="netdissect", formula=None,
                    iou=number(path, line, "score", row["score"]), layer=layer)
    label = row["label"]
    if label:
        try:
            f = parse(label) if label.startswith(("(", '"')) else Leaf(label)
        except InputError as e:
            raise bad(path, line, "label", f"{label!r} does not parse ({e})") from None
        r.formula, r.length = str(f), len(f)
        got = row["category"].split("+") if row["category"] else []
        r.categories = got if len(got) == r.length else None
    blocks = {}
    for c in cats:
        if not row[f"{c}-label"] and not row[f"{c}-iou"].strip():
            continue
        nums = [integer(path, line, f"{c}-{k}", row[f"{c}-{k}"]) for k in BLOCK[1:4]]
        blocks[c] = {"label": row[f"{c}-label"], "truth": nums[0], "activation": nums[1],
                     "intersect": nums[2], "iou": number(path, line, f"{c}-iou", row[f"{c}-iou"])}
    if blocks:
        r.extra["netdissect"] = blocks
    own = blocks.get(r.categories[0]) if r.length == 1 and r.categories else None
    if own and own["label"] == label:
        r.counts = {"unit": own["activation"], "formula": own["truth"], "intersection": own["intersect"],
                    "union": own["truth"] + own["activation"] - own["intersect"]}
    return r
