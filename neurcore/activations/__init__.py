"""Activations: a model run over a probe, cached on disk, thresholded and binarized into unit masks.

- :func:`extract`: every image of the probe through the model, the maps of the chosen layers
  streamed into a memory-mapped cache ``[n_images, units, h, w]`` that a killed run resumes;
  planted units (:func:`planted_maps`) are appended where the probe has exact concept maps.
- :func:`thresholds` and :func:`unit_masks`: each unit's exact top-quantile threshold and its maps
  binarized at the concept masks' resolution into image-sparse ``BitMasks``, as Network Dissection
  does (Bau et al., "Network Dissection", CVPR 2017).
- :func:`stream_unit_masks`: the same thresholds and unit masks in two passes over the probe with
  memory flat in its size but for the exact top values the thresholds need, and no float cache
  (:class:`TopValues`, :class:`TopImages`).
- :func:`unit_scores`: per-image activations (spatial means), the input of CLIP-Dissect, LinEx and
  SIEVE.
"""

from ._binarize import binarize, thresholds, unit_masks
from ._extract import extract, layer_batches, layer_shapes
from ._planted import EDGE, planted_maps
from ._scores import unit_scores
from ._stream import StreamedLayer, TopValues, linear_quantile, unit_mask_blocks
from ._top import TopImages
from ._unit_masks import stream_unit_masks

__all__ = ["extract", "layer_batches", "layer_shapes", "thresholds", "unit_masks", "binarize",
           "planted_maps", "EDGE", "unit_scores", "stream_unit_masks", "unit_mask_blocks", "StreamedLayer",
           "TopValues", "TopImages", "linear_quantile"]
