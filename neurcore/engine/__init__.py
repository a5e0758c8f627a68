"""The mask engine: bit-packed mask sets and the counts every rule over concepts is scored from.

- :class:`BitMasks`: n binary masks over one sample space ``[n_images, *image_shape]``, packed 64
  pixels to a word, dense or image-sparse (a CSR over images); :class:`BitMasksBuilder` streams
  them in by batches of images.
- :func:`intersect_counts`: ``Z[i, j] = |A_i & B_j|`` for every pair of rows, in any pair of
  layouts. The IoU of any formula ``F op C`` with a unit's mask follows from these counts and row
  popcounts, so no mask is built per candidate (Mu & Andreas, "Compositional Explanations of
  Neurons", NeurIPS 2020, score candidates by building each mask; neurcore does not).
- :func:`combine_rows`: many row operations (AND, OR, AND NOT) of two mask sets in one pass.
- Native kernels: C++ (``neurcore.engine._C``, always built), CUDA (``neurcore.engine._cuda``,
  optional) and Triton; :mod:`neurcore.engine.backends` says which are usable and hands out the
  native modules. :mod:`neurcore.engine.reference` holds the plain numpy reference of every kernel.
"""

from . import backends
from ._bitmasks import (
    SPARSE_OCCUPANCY,
    BitMasks,
    BitMasksBuilder,
    check_same_space,
    sparse_threshold,
    unpack_words,
)
from ._device import device_of, is_torch, to_host
from ._dispatch import OP_CODES, largest_rectangles
from ._intersect import intersect_counts
from ._rows import combine_rows
from .backends import cpu_level, set_cpu_level, usable_cpu_levels

__all__ = [
    "BitMasks",
    "BitMasksBuilder",
    "SPARSE_OCCUPANCY",
    "sparse_threshold",
    "intersect_counts",
    "combine_rows",
    "OP_CODES",
    "check_same_space",
    "largest_rectangles",
    "unpack_words",
    "is_torch",
    "device_of",
    "to_host",
    "backends",
    "cpu_level",
    "set_cpu_level",
    "usable_cpu_levels",
]
