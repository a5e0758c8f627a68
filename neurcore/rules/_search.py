"""``search``: one entry point for every rule-search method."""

from __future__ import annotations

import numpy as np

from ..engine import BitMasks
from ..errors import InputError
from ..results import Explanation
from ._beam import BeamSearch
from ._clustered import ClusteredSearch
from ._concepts import ConceptSet
from ._counts import DETECTOR_THRESHOLD
from ._dissection import NetworkDissection
from ._optimal import OptimalSearch

__all__ = ["METHODS", "search"]

METHODS = ("dissect", "beam", "optimal", "clustered")


def search(units: BitMasks | None, concepts: ConceptSet, *, method: str = "beam", length: int = 3,
           beam: int = 5, threshold: float = DETECTOR_THRESHOLD, category: str | None = None,
           layer: str | None = None, activations: np.ndarray | None = None,
           time_budget: float | None = None) -> list[Explanation]:
    """Explain every unit with one method family of rules over concepts.

    units: unit masks [n_units, n_images, *image_shape] over the concepts' sample space.
    method: "dissect" (Bau et al., "Network Dissection: Quantifying Interpretability of Deep Visual
    Representations", CVPR 2017), "beam" (Mu & Andreas, "Compositional Explanations of Neurons",
    NeurIPS 2020), "optimal" (La Rosa & Gilpin, "Guaranteed Optimal Compositional Explanations for
    Neurons", 2025; with ``time_budget`` seconds per unit if given) or "clustered" (La Rosa, Gilpin,
    Capobianco, "Towards a fuller understanding of neurons with Clustered Compositional
    Explanations", NeurIPS 2023; needs the raw ``activations`` [n_images, units, h, w], and ``units``
    may then be None). length: most concepts per formula; beam: beam width. Every result's
    ``detector`` is ``iou > threshold``.
    """
    if method == "dissect":
        return NetworkDissection(concepts).explain(units, threshold=threshold, category=category, layer=layer)
    if method == "beam":
        out = BeamSearch(concepts).explain(units, length=length, beam=beam, layer=layer)
    elif method == "optimal":
        out = OptimalSearch(concepts).explain(units, length=length, time_budget=time_budget, layer=layer)
    elif method == "clustered":
        if activations is None:
            raise InputError("method 'clustered' needs the units' raw activations, not binary masks")
        out = ClusteredSearch(concepts).explain(activations, length=length, beam=beam, layer=layer)
    else:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for r in out:
        r.detector = r.iou > threshold
    return out
