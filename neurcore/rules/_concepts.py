"""``ConceptSet``: the concept masks rules are built from, with their names and categories."""

from __future__ import annotations

from typing import Sequence

from ..engine import BitMasks
from ..errors import InputError
from .formula import Formula, parse

__all__ = ["ConceptSet"]


class ConceptSet:
    """Concept masks (``BitMasks`` [n_concepts, n_images, *image_shape], one row per concept) with
    unique names and optional categories (``object``, ``color``, ... as a probe labels them), aligned
    with the rows."""

    def __init__(self, masks: BitMasks, names: Sequence[str], categories: Sequence[str] | None = None):
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
        """Number of concepts."""
        return self.masks.n

    def evaluate(self, formula: Formula | str) -> BitMasks:
        """The mask of a formula (object or string) as a one-row BitMasks."""
        return (parse(formula) if isinstance(formula, str) else formula).evaluate(self.masks, self.index)

    def to(self, device: str) -> "ConceptSet":
        """The same concepts with their masks on ``device`` ("cpu", "cuda", "cuda:1")."""
        return ConceptSet(self.masks.to(device), self.names, self.categories)
