"""neurcore: explains what the neurons of deep networks have learned, at whole-network scale.

The engine's core is a bit-packed mask set, :class:`BitMasks`, and one fast
primitive over it, :func:`intersect_counts` (``Z[i, j] = |A_i & B_j|``), from
which every IoU of rule-based explanations follows (see SPEC.md, "Why counts
are enough"). Native kernels: C++ (``neurcore._C``, always built), CUDA
(``neurcore._cuda``, optional) and Triton; :func:`backends` says which are usable.
"""

from ._backends import backends, cpu_level, set_cpu_level, usable_cpu_levels
from ._bitmasks import SPARSE_OCCUPANCY, BitMasks, BitMasksBuilder, sparse_threshold
from ._ops import intersect_counts
from ._npz import search_npz
from .errors import InputError
from .formula import Formula, parse
from .results import Explanation
from .rules import BeamSearch, ConceptSet, NetworkDissection, search

__version__ = "0.1.0"

__all__ = [
    "BitMasks",
    "BitMasksBuilder",
    "SPARSE_OCCUPANCY",
    "sparse_threshold",
    "intersect_counts",
    "Formula",
    "parse",
    "ConceptSet",
    "NetworkDissection",
    "BeamSearch",
    "search",
    "search_npz",
    "Explanation",
    "InputError",
    "backends",
    "cpu_level",
    "set_cpu_level",
    "usable_cpu_levels",
]
