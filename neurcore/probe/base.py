"""The probe interface: images in order, and concept masks as ``BitMasks``."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..engine import BitMasks, BitMasksBuilder
from ..errors import ProbeError


class Probe:
    """Images with per-pixel concept masks.

    Subclasses set ``name``, ``n_images``, ``mask_shape`` (h, w),
    ``concept_names`` and ``concept_categories`` and implement
    :meth:`images` and :meth:`image_concepts`.
    """

    name = "probe"
    n_images: int
    mask_shape: tuple[int, int]
    concept_names: list[str]
    concept_categories: list[str]

    def images(self, start: int, stop: int) -> np.ndarray:
        """RGB images ``start..stop-1`` as uint8 [b, H, W, 3] (one size within a batch)."""
        raise NotImplementedError

    def image_concepts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Concepts present in image i: (rows int [m], masks bool [m, h, w] at ``mask_shape``)."""
        raise NotImplementedError

    def limit(self, n_images: int | None) -> "Probe":
        """This probe cut to its first ``n_images`` images (fewer when it has fewer; None: all), in place;
        returns it. A probe's images are addressed by index below ``n_images``, so the rest are unread."""
        if n_images is not None:
            if n_images < 1:
                raise ProbeError(f"{self.name}: n_images must be >= 1, got {n_images}")
            self.n_images = min(self.n_images, int(n_images))
        return self

    def batches(self, batch_size: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        """(start, images) over the whole probe, in order."""
        for start in range(0, self.n_images, batch_size):
            yield start, self.images(start, min(self.n_images, start + batch_size))

    def concept_masks(self, progress: bool = False) -> BitMasks:
        """All concept masks, streamed image by image into image-sparse BitMasks
        [n_concepts, n_images, *mask_shape]."""
        from tqdm import tqdm

        if self.n_images == 0:
            raise ProbeError(f"{self.name}: the probe has no images")
        builder = BitMasksBuilder(len(self.concept_names), self.mask_shape, layout="auto")
        for i in tqdm(range(self.n_images), desc=f"{self.name}: concept masks", disable=not progress,
                      leave=False):
            rows, masks = self.image_concepts(i)
            builder.append_sparse(1, rows, np.zeros(len(rows), np.int64), masks)
        return builder.finish()


def resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-d label map (segmentations are never interpolated)."""
    h, w = labels.shape
    if (h, w) == tuple(shape):
        return labels
    ys = (np.arange(shape[0]) * h // shape[0]).clip(0, h - 1)
    xs = (np.arange(shape[1]) * w // shape[1]).clip(0, w - 1)
    return labels[ys[:, None], xs[None, :]]
