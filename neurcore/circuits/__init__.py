"""Circuits: the neurons that carry a class from layer to layer.

- NeurFlow (Cao et al., "NeurFlow: Interpreting Neural Networks through Neuron Groups and Functional
  Interactions", ICLR 2025): core concept neurons by integrated gradients
  (:class:`~neurcore.attribution.LayerToLayerIntegratedGradients`), semantic groups, neuron groups,
  the concept circuit (:class:`NeurFlow`), the group metric and fidelity (:func:`fidelity`).
- NeuCEPT (Vu, Nguyen, Thai, "NeuCEPT: Locally Discover Neural Networks' Mechanism via Critical
  Neurons Identification with Precision Guarantee", ICDM 2022, arXiv:2209.08448): critical neurons by
  model-X knockoffs at a target false discovery rate (:func:`critical_neurons`) and the mechanisms they
  reveal (:func:`mechanisms`).
"""

from ._fidelity import (
                        ChannelMask,
                        class_images,
                        class_index,
                        fidelity,
                        forward_logits,
                        layer_means,
                        output_shapes,
                        predicted,
)
from ._neucept import (
                        CLUSTER_METHODS,
                        KNOCKOFF_METHODS,
                        SAMPLERS,
                        STATISTICS,
                        CriticalNeurons,
                        Mechanisms,
                        critical_neurons,
                        label_entropy,
                        mechanisms,
)
from ._neurflow import CircuitLevel, NeurFlow, NeurFlowConfig, crop_grid, group_metric, make_crops

__all__ = [
    "NeurFlow",
    "NeurFlowConfig",
    "CircuitLevel",
    "crop_grid",
    "make_crops",
    "group_metric",
    "critical_neurons",
    "CriticalNeurons",
    "mechanisms",
    "Mechanisms",
    "label_entropy",
    "STATISTICS",
    "SAMPLERS",
    "KNOCKOFF_METHODS",
    "CLUSTER_METHODS",
    "class_index",
    "class_images",
    "predicted",
    "forward_logits",
    "output_shapes",
    "layer_means",
    "fidelity",
    "ChannelMask",
]
