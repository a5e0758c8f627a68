"""``ConceptSet``: the concept masks rules are built from, with their names and categories."""

from __future__ import annotations

from ..engine import BitMasks
from ..errors import InputError
from .formula import Formula, parse

__all__ = ["ConceptSet"]


class ConceptSet:
    """Concept masks (``BitMasks``, one row per concept) with unique names and optional categories."""

    def __init__(self, masks: BitMasks, names, categories=None):
        if not isinstance(masks, BitMasks):
            raise TypeError(f"ConceptSet: masks must be a BitMasks, got {type(masks).__name__}")
        names = [str(n) for n in names]
        if len(names) != masks.n:
            raise InputError(f"ConceptSet: {len(names)} names for {masks.n} concept masks")
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            if n in seen:
                raise InputError(f"ConceptSet: duplicate concept name {n!r} (concepts {seen[n]} and {i})")
            seen[n] = i
        if categories is not None:
            categories = [str(c) for c in categories]
            if len(categories) != masks.n:
                raise InputError(f"ConceptSet: {len(categories)} categories for {masks.n} concept masks")
        self.masks, self.names, self.categories, self.index = masks, names, categories, seen

    @property
    def n(self) -> int:
        return self.masks.n

    def evaluate(self, formula: Formula | str) -> BitMasks:
        """The mask of a formula (object or string) as a one-row BitMasks."""
        return (parse(formula) if isinstance(formula, str) else formula).evaluate(self.masks, self.index)

    def to(self, device) -> "ConceptSet":
        return ConceptSet(self.masks.to(device), self.names, self.categories)
