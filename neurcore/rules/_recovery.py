"""Whether a search recovered a planted formula: found it (or its mask), not only matched its score."""

from __future__ import annotations

from ..engine import BitMasks, intersect_counts
from ._concepts import ConceptSet
from .formula import Formula, equivalent, parse

__all__ = ["EXACT_MASK_IOU", "mask_iou", "planted_recovery"]

#: The found formula's mask must overlap the planted formula's mask on the probe at least this much
#: (IoU) to count as the planted formula, when the two are not logically equivalent.
EXACT_MASK_IOU = 0.95


def mask_iou(a: BitMasks, b: BitMasks) -> float:
    """IoU of two one-row masks (1.0 when both are empty)."""
    inter = int(intersect_counts(a, b)[0, 0])
    union = int(a.count()[0]) + int(b.count()[0]) - inter
    return inter / union if union else 1.0


def planted_recovery(found: Formula | str | None, found_iou: float | None, planted: Formula,
                     unit_mask: BitMasks, concepts: ConceptSet) -> dict:
    """How an explanation ``found`` (its IoU ``found_iou`` with the unit) fares against the unit's
    ``planted`` formula, given the unit's one-row mask and the probe's concepts.

    Returns ``{"formula": planted, "iou": the planted formula's IoU with the unit mask,
    "mask_iou": IoU of the found and planted formulas' masks on the probe, "recovered": the found
    formula is the planted one (logically equivalent, or mask_iou >= EXACT_MASK_IOU),
    "iou_not_worse": found_iou >= the planted formula's IoU}``.
    """
    truth = concepts.evaluate(planted)
    p_iou = mask_iou(truth, unit_mask)
    if found is None:
        return {"formula": str(planted), "iou": p_iou, "mask_iou": 0.0, "recovered": False,
                "iou_not_worse": False}
    found = parse(found) if isinstance(found, str) else found
    same = mask_iou(concepts.evaluate(found), truth)
    return {"formula": str(planted), "iou": p_iou, "mask_iou": round(same, 4),
            "recovered": bool(equivalent(found, planted) or same >= EXACT_MASK_IOU),
            "iou_not_worse": bool(found_iou is not None and found_iou >= p_iou)}
