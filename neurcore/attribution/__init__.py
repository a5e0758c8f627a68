"""Integrated gradients with Captum's API, accumulated by a fused kernel (Sundararajan, Taly, Yan,
"Axiomatic Attribution for Deep Networks", ICML 2017, https://arxiv.org/abs/1703.01365).

:class:`IntegratedGradients`, :class:`LayerIntegratedGradients` and
:class:`NeuronIntegratedGradients` are drop-in replacements for Captum's classes: subclasses of
them, with the same constructor arguments (``multiply_by_inputs``, ``device_ids``), methods
(``attribute``, ``compute_convergence_delta``, ``has_convergence_delta``), properties
(``multiplies_by_inputs``) and values, usable in Captum's wrappers such as ``NoiseTunnel``. What
differs is how the integral is accumulated: gradients are produced a chunk of interpolation steps
at a time and folded into the result by :func:`ig_accumulate` (one pass over the gradients: step
weight, sum over steps, times input - baseline; C++, CUDA or Triton), so the steps x batch x
features product tensor Captum builds never exists and memory is bounded by the chunk, whatever
``n_steps``. They need Captum (the ``torch`` extra) and load on first use, so the rest of this
package works without it.

:class:`LayerToLayerIntegratedGradients` is the form NeurFlow needs: the importance of every
channel of a lower layer for many channels of an upper layer at once, each upper channel over its
own examples (crops), reduced over space in the same pass. The function between the two layers is
cut out of the model with ``torch.fx`` (:func:`layer_function`); when it ends in a convolution or
linear layer followed by channel-wise operations, or in a torchvision ResNet block, only the target
channels of that layer are computed (:func:`restrict_output`), which removes most of the backward
pass's work. :mod:`neurcore.attribution.reference` holds the kernel's numpy reference.
"""

from __future__ import annotations

import importlib

from ._fused import ig_accumulate
from ._layer_function import layer_function, restrict_output
from ._layer_to_layer import LayerToLayerIntegratedGradients
from ._quadrature import CHUNK_BYTES, METHODS, quadrature

#: The Captum-compatible classes, loaded (with Captum) on first use.
_CAPTUM_CLASSES = ("IntegratedGradients", "LayerIntegratedGradients", "NeuronIntegratedGradients")

__all__ = [
    "IntegratedGradients",
    "LayerIntegratedGradients",
    "NeuronIntegratedGradients",
    "LayerToLayerIntegratedGradients",
    "layer_function",
    "restrict_output",
    "quadrature",
    "ig_accumulate",
    "METHODS",
    "CHUNK_BYTES",
]


def __getattr__(name: str):
    if name in _CAPTUM_CLASSES:
        value = getattr(importlib.import_module("neurcore.attribution._integrated_gradients"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'neurcore.attribution' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CAPTUM_CLASSES))
