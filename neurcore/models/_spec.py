"""``ModelSpec``: a module to explain and how to feed it; ``PlantedUnit``: a unit of known truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..rules.formula import Formula

if TYPE_CHECKING:
    import torch

__all__ = ["ModelSpec", "PlantedUnit", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSpec:
    """A module to dissect and how to feed it: input size (pixels), per-channel mean and std on [0, 1]."""

    module: object
    name: str = "model"
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    planted: list["PlantedUnit"] = field(default_factory=list)
    classes: list[str] | None = None   # output names, when known
    multilabel: bool = False           # outputs are independent logits (predicted when > 0), not argmax
    circuit: dict | None = None        # planted circuit truth: {"class": name, layer: [channels], ...}

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images [B, H, W, 3] -> the module's input, float32 [B, 3, S, S] with S = ``input_size``:
        scaled to [0, 1], resized bilinearly when H, W differ from S, normalised by ``mean``/``std``."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class PlantedUnit:
    """A unit appended to ``layer`` whose activation is ``formula`` of the probe's concept maps
    (a concept detector when the formula is one concept), or, when ``weights`` is given instead,
    the linear mixture sum_k w_k * map_k of concept maps ((name, weight) pairs; LinEx's truth).

    identifiable: whether rule search is judged on the unit: true when the formula's region fits
    the dissection's top quantile and the unit is built so that its mask is the whole region; a
    detector of a concept that covers more of the probe (its cover times a per-image strength) is a
    truth for labelling (CLIP-Dissect, SIEVE) but not for rule search (see
    :func:`neurcore.activations.planted_maps`)."""

    layer: str
    formula: Formula | None = None
    noise: float = 0.05
    weights: tuple[tuple[str, float], ...] | None = None
    identifiable: bool = True

    def __post_init__(self):
        if (self.formula is None) == (self.weights is None):
            raise InputError("PlantedUnit: give exactly one of formula and weights")

    @property
    def label(self) -> str:
        """The planted truth as text: the formula, or the mixture as ``1*sky + 2*circle - 2*red``."""
        if self.formula is not None:
            return str(self.formula)
        return " ".join(f"{'-' if w < 0 else '+'} {abs(w):g}*{n}" for n, w in self.weights).lstrip("+ ")
