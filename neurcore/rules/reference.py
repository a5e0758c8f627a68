"""Plain numpy references of rule search: every candidate's mask is built, one at a time.

Slow and obvious on purpose: the tests compare :class:`~neurcore.rules.BeamSearch` and
:class:`~neurcore.rules.OptimalSearch`, which score candidates from counts, with these.
"""

from __future__ import annotations

from itertools import permutations, product
from typing import Sequence

import numpy as np

from .formula import quote

__all__ = ["beam_search", "optimal_search"]


def beam_search(unit_mask: np.ndarray, concept_masks: np.ndarray, names: Sequence[str], length: int = 3,
                beam: int = 5) -> list[tuple[str, float]]:
    """Compositional beam search that builds every candidate's mask, one at a time, as compexp (the code
    of Mu & Andreas, "Compositional Explanations of Neurons", NeurIPS 2020) does.

    unit_mask: bool [...]; concept_masks: bool [n_concepts, ...] over the same
    samples. Same rules as ``neurcore.rules.BeamSearch``: first beam = the
    ``beam`` concepts of highest non-zero IoU; then F OR C, F AND C, F AND NOT C
    for every beam formula and concept; stable ordering (beam first, then
    candidates by beam position, concept, operator); IoU = I / U exactly.
    Returns the final beam as [(formula string, iou)], best first ([] when no
    concept overlaps the unit).
    """
    a = np.asarray(unit_mask, dtype=bool).reshape(-1)
    concepts = np.asarray(concept_masks, dtype=bool).reshape(len(concept_masks), -1)

    def iou_of(mask):
        union = int(np.logical_or(mask, a).sum())
        return int(np.logical_and(mask, a).sum()) / union if union else 0.0

    first = [(quote(str(n)), c, iou_of(c)) for n, c in zip(names, concepts)]
    current = sorted([f for f in first if f[2] > 0], key=lambda f: -f[2])[:beam]
    for _ in range(length - 1):
        pool = list(current)
        keys = {key for key, _, _ in current}
        for key, mask, _ in current:
            for name, c in zip(names, concepts):
                for op, new in (("OR", mask | c), ("AND", mask & c), ("AND NOT", mask & ~c)):
                    new_key = f"({key} {op} {quote(str(name))})"
                    if new_key not in keys:
                        keys.add(new_key)
                        pool.append((new_key, new, iou_of(new)))
        current = sorted(pool, key=lambda f: -f[2])[:beam]
    return [(key, score) for key, _, score in current]


def optimal_search(unit_mask: np.ndarray, concept_masks: np.ndarray, names: Sequence[str],
                   length: int = 3) -> tuple[str | None, float]:
    """Brute force over every left-deep formula of up to ``length`` distinct concepts (OR, AND,
    AND NOT), building each mask: the space of La Rosa & Gilpin, "Guaranteed Optimal Compositional
    Explanations for Neurons", 2025. unit_mask, concept_masks: as for :func:`beam_search`. The best
    IoU wins; ties go to the shorter formula, then to the smallest tuple (c1, op1, c2, op2, ...) with
    operators numbered OR 0, AND 1, AND NOT 2.
    Returns (formula string, iou), or (None, 0.0) when no concept overlaps the unit.
    """
    a = np.asarray(unit_mask, dtype=bool).reshape(-1)
    concepts = np.asarray(concept_masks, dtype=bool).reshape(len(concept_masks), -1)
    ops = (("OR", np.logical_or), ("AND", np.logical_and), ("AND NOT", lambda x, y: x & ~y))

    def iou_of(mask):
        union = int(np.logical_or(mask, a).sum())
        return int(np.logical_and(mask, a).sum()) / union if union else 0.0

    best = (-1.0, 0, ())
    text = {}
    for k in range(1, length + 1):
        for leaves in permutations(range(len(concepts)), k):
            for op_ids in product(range(3), repeat=k - 1):
                mask, s = concepts[leaves[0]], quote(str(names[leaves[0]]))
                for o, c in zip(op_ids, leaves[1:]):
                    mask = ops[o][1](mask, concepts[c])
                    s = f"({s} {ops[o][0]} {quote(str(names[c]))})"
                key = (leaves[0],) + tuple(x for pair in zip(op_ids, leaves[1:]) for x in pair)
                cand = (iou_of(mask), k, key)
                if cand[0] > best[0] or (cand[0] == best[0] and (k, key) < (best[1], best[2])):
                    best = cand
                    text[key] = s
    if best[0] <= 0:
        return None, 0.0
    return text[best[2]], best[0]
