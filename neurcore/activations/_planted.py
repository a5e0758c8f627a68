"""Activations of planted units: known functions of a probe's exact concept maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..models import PlantedUnit

__all__ = ["planted_maps", "EDGE"]

#: The cover of a cell at which a planted formula unit crosses 0, the edge of its mask (0.3 keeps thin
#: shapes such as bars and rings, which rarely cover half an 8-pixel cell).
EDGE = 0.3


def planted_maps(planted: Sequence[PlantedUnit], concept_maps: np.ndarray, names: list[str],
                 size: tuple[int, int], first_image: int, seed: int = 0) -> np.ndarray:
    """Activations [b, k, h, w] of planted units from exact concept maps [b, n_concepts, H, W].

    A formula unit is identifiable at the dissection's own thresholding: in a cell where its formula
    covers a fraction f > 0 of the pixels (the mask area-averaged to ``size``) it is f - EDGE, in a
    cell the formula misses it is uniform in (-EDGE, 0), plus Gaussian noise of sd
    ``noise * EDGE``. Wherever the cells the formula covers more than EDGE are fewer than the top
    quantile, the threshold falls among the spread negative values, just below 0, and the unit's
    mask is the formula's region with its edge at a cover of about EDGE: all of it, in every image,
    not its strongest part (see :data:`neurcore.models.DEFAULT_PLANTED`). A formula unit marked not
    ``identifiable`` (a detector of a concept larger than the quantile, a truth for labelling) is its
    cover times a strength drawn per image in [0.5, 1.5], plus Gaussian noise of sd ``noise``.
    A linear unit is its weighted sum of area-averaged concept maps plus Gaussian noise of sd ``noise``.
    Draws come from (seed, image index, unit), so a resumed run redraws them.
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
        cover = pool(np.stack([unit.formula.evaluate(concept_maps[j], index) for j in range(b)]))
        for j in range(b):
            rng = np.random.default_rng([seed, first_image + j, k])
            if not unit.identifiable:
                out[j, k] = cover[j] * rng.uniform(0.5, 1.5) + rng.normal(0, unit.noise, size)
                continue
            off = -EDGE * rng.uniform(0, 1, size)
            out[j, k] = np.where(cover[j] > 0, cover[j] - EDGE, off) + rng.normal(0, unit.noise * EDGE, size)
    return out
