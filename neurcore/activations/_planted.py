"""Activations of planted units: known functions of a probe's exact concept maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..models import PlantedUnit

__all__ = ["planted_maps"]


def planted_maps(planted: Sequence[PlantedUnit], concept_maps: np.ndarray, names: list[str],
                 size: tuple[int, int], first_image: int, seed: int = 0) -> np.ndarray:
    """Activations [b, k, h, w] of planted units from exact concept maps [b, n_concepts, H, W].

    Each is its formula's mask, area-averaged to ``size``, times a strength
    drawn per image in [0.5, 1.5], plus Gaussian noise of the unit's ``noise``;
    both drawn from (seed, image index, unit), so a resumed run redraws them.
    A linear unit is its weighted sum of area-averaged concept maps plus the noise.
    Returns float32 [b, len(planted), *size]; ``first_image`` is the probe index of the first map.
    """
    import torch
    import torch.nn.functional as F

    index = {n: i for i, n in enumerate(names)}
    b = len(concept_maps)
    out = np.zeros((b, len(planted), *size), np.float32)

    def pool(masks):
        return F.adaptive_avg_pool2d(torch.from_numpy(masks[:, None].astype(np.float32)), size)[:, 0].numpy()

    for k, unit in enumerate(planted):
        if unit.weights is not None:  # linear: sum_k w_k * area-averaged concept map, plus noise
            missing = [n for n, _ in unit.weights if n not in index]
            if missing:
                raise InputError(f"planted unit {unit.label!r}: concepts {missing} are not in the probe")
            mix = sum(w * pool(concept_maps[:, index[n]]) for n, w in unit.weights)
            for j in range(b):
                rng = np.random.default_rng([seed, first_image + j, k])
                out[j, k] = mix[j] + rng.normal(0, unit.noise, size)
            continue
        pooled = pool(np.stack([unit.formula.evaluate(concept_maps[j], index) for j in range(b)]))
        for j in range(b):
            rng = np.random.default_rng([seed, first_image + j, k])
            out[j, k] = pooled[j] * rng.uniform(0.5, 1.5) + rng.normal(0, unit.noise, size)
    return out
