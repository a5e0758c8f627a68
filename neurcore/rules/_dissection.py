"""Network Dissection (Bau et al., "Network Dissection: Quantifying Interpretability of Deep Visual
Representations", CVPR 2017): the best single concept of every unit by IoU, all units at once."""

from __future__ import annotations

import numpy as np

from ..engine import BitMasks, intersect_counts
from ..errors import InputError
from ..results import Explanation
from ._concepts import ConceptSet
from ._counts import DETECTOR_THRESHOLD, check_units, explanations, host, iou_of
from .formula import Leaf

__all__ = ["NetworkDissection"]


class NetworkDissection:
    """Best single concept per unit by IoU (Bau et al., "Network Dissection: Quantifying
    Interpretability of Deep Visual Representations", CVPR 2017), all units against all concepts at once.

    >>> NetworkDissection(concepts).explain(units, threshold=0.04)
    """

    def __init__(self, concepts: ConceptSet):
        self.concepts = concepts

    def explain(self, units: BitMasks, *, threshold: float = DETECTOR_THRESHOLD, category: str | None = None,
                layer: str | None = None) -> list[Explanation]:
        """One Explanation per unit (row of ``units``, masks over the concepts' sample space).

        threshold: a unit is a detector of its best concept when IoU > threshold.
        category: consider only concepts of this category (needs categories).
        Ties go to the concept listed first. ``extra["ious"]`` is not stored; the
        full unit x concept IoU matrix comes from :meth:`iou_matrix`.
        """
        concepts = self.concepts
        check_units(units, concepts)
        iou = self.iou_matrix(units)
        if category is not None:
            if concepts.categories is None:
                raise InputError("category: this concept set has no categories")
            keep = np.array([c == category for c in concepts.categories])
            if not keep.any():
                raise InputError(f"category: no concept has category {category!r}; "
                                 f"known: {sorted(set(concepts.categories))}")
            iou = np.where(keep[None, :], iou, -1.0)
        best = iou.argmax(axis=1) if concepts.n else np.zeros(units.n, np.int64)
        a_cnt = host(units.count())
        formulas = [Leaf(concepts.names[b]) if concepts.n and iou[u, b] > 0 else None
                    for u, b in enumerate(best)]
        rows = concepts.masks[best] if concepts.n else BitMasks.zeros(units.n, units.sample_shape)
        out = explanations("dissect", units, concepts, formulas, rows, rows & units, a_cnt, layer=layer)
        for r in out:
            r.detector = r.iou > threshold
        return out

    def iou_matrix(self, units: BitMasks) -> np.ndarray:
        """IoU of every unit with every concept -> float64 [units.n, concepts.n]."""
        c = self.concepts.masks
        inter = host(intersect_counts(units, c))
        a, cc = host(units.count()), host(c.count())
        return iou_of(inter, a[:, None] + cc[None, :] - inter)
