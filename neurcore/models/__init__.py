"""Models to explain: any ``torch.nn.Module`` with layers named by dotted paths, how to feed it
(:class:`ModelSpec`), models by reference (:func:`load_model`: torchvision and timm classifiers by
name, a Python factory, weights from a state dict or a safetensors file), a model's layers as a table
(:func:`layer_table`), and the embedded default models.

The default model is a small CNN trained on the synthetic concept world to predict which concepts an
image contains (multi-label), on the CPU in about a minute, and cached. It comes with planted units:
extra channels appended to ``conv4`` whose activation is a known function of the probe's exact
concept maps (formulas whose region fits the dissection's top quantile, concept detectors, linear
mixtures; see :func:`neurcore.activations.planted_maps`), so every run can report how many planted
explanations it recovered. They exist only where
the probe has exact concept maps (the synthetic world). ``default-circuit`` is the same model with
a class wired through known channels (:func:`planted_circuit_model`).
"""

from ._default import (
                       CIRCUIT_CLASS,
                       CIRCUIT_FAN_IN,
                       DEFAULT_PLANTED,
                       DEFAULT_PLANTED_DETECTORS,
                       DEFAULT_PLANTED_LINEAR,
                       default_model,
                       planted_circuit_model,
)
from ._inspect import LayerInfo, layer_table
from ._layers import as_maps, block_outputs, expand_layers, hooked, resolve_layer
from ._spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, PlantedUnit
from ._zoo import MODEL_FORMS, TORCHVISION_MODELS, load_model

__all__ = [
    "ModelSpec",
    "PlantedUnit",
    "load_model",
    "layer_table",
    "LayerInfo",
    "resolve_layer",
    "expand_layers",
    "block_outputs",
    "hooked",
    "as_maps",
    "default_model",
    "planted_circuit_model",
    "TORCHVISION_MODELS",
    "MODEL_FORMS",
    "DEFAULT_PLANTED",
    "DEFAULT_PLANTED_DETECTORS",
    "DEFAULT_PLANTED_LINEAR",
    "CIRCUIT_CLASS",
    "CIRCUIT_FAN_IN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
