"""Random concept masks and units planted with known formulas, to test and benchmark rule search.

Concepts mimic a segmented probe (scenes, objects that occlude each other,
colours of the objects), so they co-occur, overlap and exclude each other
as Broden's do. A planted unit is the mask of a known formula with a few
percent of its pixels flipped.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..engine import BitMasks
from ..errors import InputError
from ..rules import And, AndNot, ConceptSet, Formula, Leaf, Or

__all__ = ["blob_concepts", "random_formula", "plant_units"]


def blob_concepts(rng: np.random.Generator, n_concepts: int, n_images: int,
                  shape: tuple[int, int] = (16, 16), *, n_scenes: int | None = None,
                  n_colors: int | None = None) -> ConceptSet:
    """A segmentation-like concept set of ``n_concepts`` over ``n_images`` images of ``shape`` pixels.

    Three categories, as in Broden: ``scene`` (image-level; each image has one,
    filling it), ``object`` (elliptical blobs painted in turn, so a later
    object occludes an earlier one and objects exclude each other pixel-wise)
    and ``color`` (each object instance has one colour, so colours exclude
    each other and overlap objects). Objects appear with scene-dependent
    probabilities, zero for about a third of (object, scene) pairs, so
    concepts co-occur and exclude each other across images too. By default
    a quarter of the concepts are scenes and a quarter colours. Names are
    ``scene<i>``, ``object<i>``, ``color<i>``.
    """
    h, w = shape
    n_scenes = max(1, n_concepts // 4) if n_scenes is None else n_scenes
    n_colors = max(1, n_concepts // 4) if n_colors is None else n_colors
    n_objects = n_concepts - n_scenes - n_colors
    if n_objects < 1:
        raise InputError(f"blob_concepts: {n_concepts} concepts leave no objects after {n_scenes} scenes "
                         f"and {n_colors} colours")
    scene = rng.integers(n_scenes, size=n_images)
    p = rng.uniform(0.1, 0.6, (n_objects, n_scenes)) * (rng.random((n_objects, n_scenes)) > 0.33)
    label = np.full((n_images, h, w), -1, dtype=np.int64)   # object per pixel
    color = np.full((n_images, h, w), -1, dtype=np.int64)   # colour per pixel
    yy, xx = np.mgrid[0:h, 0:w]
    for obj in range(n_objects):
        images = np.flatnonzero(rng.random(n_images) < p[obj, scene])
        k = len(images)
        cy, cx = rng.uniform(0, h, (k, 1, 1)), rng.uniform(0, w, (k, 1, 1))
        ry, rx = rng.uniform(0.15, 0.45, (k, 1, 1)) * h, rng.uniform(0.15, 0.45, (k, 1, 1)) * w
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        label[images] = np.where(blob, obj, label[images])
        color[images] = np.where(blob, rng.integers(n_colors, size=(k, 1, 1)), color[images])
    masks = np.zeros((n_concepts, n_images, h, w), dtype=bool)
    masks[scene, np.arange(n_images)] = True
    masks[n_scenes : n_scenes + n_objects] = label[None] == np.arange(n_objects)[:, None, None, None]
    masks[n_scenes + n_objects :] = color[None] == np.arange(n_colors)[:, None, None, None]
    names = ([f"scene{i}" for i in range(n_scenes)] + [f"object{i}" for i in range(n_objects)]
             + [f"color{i}" for i in range(n_colors)])
    categories = ["scene"] * n_scenes + ["object"] * n_objects + ["color"] * n_colors
    return ConceptSet(BitMasks.from_dense(masks), names, categories)


_OPS = (Or, And, AndNot)


def random_formula(rng: np.random.Generator, names: Sequence[str], length: int) -> Formula:
    """A left-deep formula of ``length`` distinct concepts joined by OR, AND or AND NOT."""
    picks = rng.choice(len(names), size=length, replace=False)
    formula: Formula = Leaf(names[picks[0]])
    for c in picks[1:]:
        formula = _OPS[rng.integers(len(_OPS))](formula, Leaf(names[c]))
    return formula


def plant_units(rng: np.random.Generator, concepts: ConceptSet, n_units: int, *,
                lengths: Sequence[int] = (1, 2, 3), noise: float = 0.03, min_fill: float = 0.01,
                max_fill: float = 0.5) -> tuple[BitMasks, list[Formula]]:
    """Units whose masks are random formulas of the concepts with ``noise`` of their pixels flipped.

    Noise is relative to the formula's mask: round(noise * |F|) of its pixels
    are turned off and as many pixels outside it turned on, so the unit's mask
    has the formula's size and the planted formula's IoU is about
    (1 - noise) / (1 + noise). Formulas whose clean mask covers less than
    ``min_fill`` or more than ``max_fill`` of the pixels are redrawn.
    Returns (units BitMasks [n_units, *sample_shape], their formulas).
    """
    formulas, masks = [], []
    total = int(np.prod(concepts.masks.sample_shape))
    while len(formulas) < n_units:
        f = random_formula(rng, concepts.names, int(rng.choice(lengths)))
        clean = concepts.evaluate(f).to_dense()[0]
        size = int(clean.sum())
        if not min_fill <= size / total <= max_fill:
            continue
        flat = clean.reshape(-1).copy()
        k = int(round(noise * size))
        on, off = np.flatnonzero(flat), np.flatnonzero(~flat)
        flat[rng.choice(on, size=k, replace=False)] = False
        flat[rng.choice(off, size=min(k, len(off)), replace=False)] = True
        masks.append(flat.reshape(clean.shape))
        formulas.append(f)
    return BitMasks.from_dense(np.stack(masks)), formulas
