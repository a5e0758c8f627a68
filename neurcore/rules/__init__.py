"""Rule search: explanations of units as logical formulas over concepts.

Every method scores all units of a layer at once from intersection counts (:mod:`neurcore.engine`),
and every result is an :class:`~neurcore.results.Explanation`.

- :class:`NetworkDissection`: the best single concept by IoU (Bau et al., "Network Dissection:
  Quantifying Interpretability of Deep Visual Representations", CVPR 2017).
- :class:`BeamSearch`: compositional beam search over AND, OR, AND NOT (Mu & Andreas,
  "Compositional Explanations of Neurons", NeurIPS 2020).
- :class:`OptimalSearch`: the best formula of bounded length by branch and bound, with a
  certificate (La Rosa & Gilpin, "Guaranteed Optimal Compositional Explanations for Neurons", 2025).
- :class:`ClusteredSearch`: one formula per activation range with the MMESH heuristic (La Rosa,
  Gilpin, Capobianco, "Towards a fuller understanding of neurons with Clustered Compositional
  Explanations", NeurIPS 2023).
- :func:`planted_recovery`: whether an explanation found a planted formula (its mask, not only its
  score).
- :func:`search`: one entry point for all four; :func:`search_npz` reads its inputs from ``.npz``
  files (``neurcore search``).
- :mod:`neurcore.rules.formula`: formula trees and their syntax; :mod:`neurcore.rules.reference`:
  the searches by brute force over masks, to test against.
"""

from ._beam import BeamSearch
from ._clustered import ClusteredSearch, MaskStats, activation_ranges, mmesh_estimates, range_masks
from ._concepts import ConceptSet
from ._counts import DETECTOR_THRESHOLD, OPERATORS, candidate_counts, iou_of
from ._dissection import NetworkDissection
from ._optimal import OptimalSearch
from ._recovery import EXACT_MASK_IOU, mask_iou, planted_recovery
from ._search import METHODS, search
from .formula import And, AndNot, Formula, Leaf, Not, Or, equivalent, parse, quote
from .npz import binarize_top_quantile, load_activations, load_concepts, load_units, search_npz

__all__ = [
    "ConceptSet",
    "NetworkDissection",
    "BeamSearch",
    "OptimalSearch",
    "ClusteredSearch",
    "search",
    "search_npz",
    "METHODS",
    "OPERATORS",
    "DETECTOR_THRESHOLD",
    "candidate_counts",
    "iou_of",
    "activation_ranges",
    "range_masks",
    "mmesh_estimates",
    "MaskStats",
    "Formula",
    "Leaf",
    "Not",
    "And",
    "Or",
    "AndNot",
    "parse",
    "quote",
    "equivalent",
    "planted_recovery",
    "mask_iou",
    "EXACT_MASK_IOU",
    "load_concepts",
    "load_units",
    "load_activations",
    "binarize_top_quantile",
]
