"""Scoring rules from counts, shared by every rule-search method.

For unit masks A, formulas F and concepts C, :func:`neurcore.engine.intersect_counts` gives
|F∧C| and |(F∧A)∧C| for all pairs, and

- F AND C:     I = |F∧C∧A|,                 U = |F∧C| + |A| − I
- F OR C:      I = |F∧A| + |C∧A| − |F∧C∧A|, U = |F| + |C| − |F∧C| + |A| − I
- F AND NOT C: I = |F∧A| − |F∧C∧A|,         U = |F| − |F∧C| + |A| − I

with IoU = I / U (0 when U = 0). No mask is built per candidate.
"""

from __future__ import annotations

import numpy as np

from ..engine import OP_CODES, BitMasks, check_same_space, to_host
from ..errors import InputError
from ..results import Explanation
from ._concepts import ConceptSet
from .formula import And, AndNot, Or

__all__ = ["OPERATORS", "OP_NODE", "OPS_CODE", "DETECTOR_THRESHOLD", "candidate_counts", "iou_of", "host",
           "check_units", "explanations"]

#: Operators of formula search, in compexp's order of generation.
OPERATORS = ("OR", "AND", "AND NOT")
#: The formula node of each operator.
OP_NODE = {"OR": Or, "AND": And, "AND NOT": AndNot}
#: Operator codes of the native combine kernel, by name and by formula operator.
OPS_CODE = {**OP_CODES, "AND": OP_CODES["and"], "OR": OP_CODES["or"], "AND NOT": OP_CODES["and_not"]}
#: NetDissect's SCORE_THRESHOLD: a unit detects its best concept when IoU > 0.04.
DETECTOR_THRESHOLD = 0.04


def candidate_counts(op: str, f: np.ndarray, fa: np.ndarray, c: np.ndarray, ca: np.ndarray, fc: np.ndarray,
                     fca: np.ndarray, a: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union) in pixels of ``F op C`` (op in :data:`OPERATORS`) with the unit mask A,
    from int64 pixel counts that broadcast together.

    f = |F|, fa = |F∧A|, c = |C|, ca = |C∧A|, fc = |F∧C|, fca = |F∧C∧A|, a = |A|.
    """
    if op == "AND":
        inter = fca
        union = fc + a - inter
    elif op == "OR":
        inter = fa + ca - fca
        union = f + c - fc + a - inter
    elif op == "AND NOT":
        inter = fa - fca
        union = f - fc + a - inter
    else:
        raise InputError(f"op: expected one of {OPERATORS}, got {op!r}")
    return inter, union


def iou_of(inter: np.ndarray | float, union: np.ndarray | float) -> np.ndarray:
    """IoU = inter / union elementwise (arrays broadcast), 0 where union is 0 -> float64."""
    inter, union = np.asarray(inter, dtype=np.float64), np.asarray(union, dtype=np.float64)
    return np.divide(inter, union, out=np.zeros(np.broadcast(inter, union).shape), where=union > 0)


def host(x) -> np.ndarray:
    """Counts as a numpy array, wherever they were computed."""
    return np.asarray(to_host(x))


def check_units(units: BitMasks, concepts: ConceptSet) -> None:
    """Unit masks and concepts must be a BitMasks and a ConceptSet over one sample space and device."""
    if not isinstance(units, BitMasks):
        raise TypeError(f"units must be a BitMasks, got {type(units).__name__}")
    if not isinstance(concepts, ConceptSet):
        raise TypeError(f"concepts must be a ConceptSet, got {type(concepts).__name__}")
    check_same_space("rule search", units, concepts.masks, ("the unit masks", "the concept masks"))


def _coverage_metrics(units: BitMasks, f_rows: BitMasks, fa_rows: BitMasks):
    """Per row: sample coverage and explanation coverage from per-image counts."""
    a_img = host(units.count(per_image=True)) > 0
    f_img = host(f_rows.count(per_image=True)) > 0
    fa_img = host(fa_rows.count(per_image=True)) > 0
    hit = fa_img.sum(1)
    return iou_of(hit, f_img.sum(1)), iou_of(hit, a_img.sum(1))


def explanations(method, units, concepts, formulas, f_rows, fa_rows, a_cnt, beams=None, layer=None):
    """Explanation records for the best formula of each unit (None where there is none)."""
    f_cnt, fa_cnt = host(f_rows.count()), host(fa_rows.count())
    union = f_cnt + a_cnt - fa_cnt
    sample_cov, expl_cov = _coverage_metrics(units, f_rows, fa_rows)
    out = []
    for u, formula in enumerate(formulas):
        if formula is None:
            out.append(Explanation(unit=u, method=method, formula=None, iou=0.0, layer=layer,
                                   counts={"unit": int(a_cnt[u])}, beam=[]))
            continue
        inter, uni = int(fa_cnt[u]), int(union[u])
        iou = float(iou_of(inter, uni))
        cats = None
        if concepts.categories:
            cats = [concepts.categories[concepts.index[n]] for n in formula.leaves()]
        out.append(Explanation(
            unit=u, method=method, formula=str(formula), iou=iou, length=len(formula), layer=layer,
            categories=cats,
            counts={"unit": int(a_cnt[u]), "formula": int(f_cnt[u]), "intersection": inter, "union": uni},
            metrics={"iou": iou, "activation_coverage": float(iou_of(inter, a_cnt[u])),
                     "detection_accuracy": float(iou_of(inter, f_cnt[u])),
                     "sample_coverage": float(sample_cov[u]), "explanation_coverage": float(expl_cov[u])},
            beam=[] if beams is None else beams[u],
        ))
    return out
