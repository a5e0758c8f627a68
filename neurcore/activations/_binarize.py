"""From activations to unit masks: exact top-quantile thresholds and binarized, upsampled maps.

- :func:`thresholds`: per unit, the exact top-``quantile`` threshold ``T_k`` over all images and
  positions (NetDissect's 0.005), read a few units at a time from the cache.
- :func:`unit_masks`: maps upsampled bilinearly (torch, align_corners=False) to the mask
  resolution and binarized ``a > T_k`` into image-sparse ``BitMasks``; a map whose maximum is at
  most ``T_k`` is skipped, exactly, since bilinear values never exceed the map's maximum
  (upsampled values are clamped to it, so float rounding cannot say otherwise).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..engine import BitMasks, BitMasksBuilder
from ..errors import InputError

__all__ = ["thresholds", "unit_masks", "binarize"]


def thresholds(acts: np.ndarray, quantile: float = 0.005, units_per_read: int = 16) -> np.ndarray:
    """Exact per-unit threshold: the (1 - quantile) quantile of all of a unit's values -> float32 [units]."""
    if not 0 < quantile < 1:
        raise InputError(f"quantile must lie in (0, 1), got {quantile}")
    n, c = acts.shape[:2]
    out = np.empty(c, np.float32)
    for u0 in range(0, c, units_per_read):
        block = np.asarray(acts[:, u0 : u0 + units_per_read], dtype=np.float32)
        flat = np.moveaxis(block, 1, 0).reshape(block.shape[1], -1)
        out[u0 : u0 + flat.shape[0]] = np.quantile(flat, 1 - quantile, axis=1)
    return out


def unit_masks(acts: np.ndarray, thresholds_: np.ndarray, mask_shape: tuple[int, int], *,
               batch_size: int = 64, progress: bool = False) -> BitMasks:
    """Binary unit masks [units, n_images, *mask_shape]: bilinear upsampling, then a > T_k."""
    from tqdm import tqdm

    n, c = acts.shape[:2]
    builder = BitMasksBuilder(c, mask_shape, layout="auto")
    for s in tqdm(range(0, n, batch_size), desc="unit masks", disable=not progress, leave=False):
        for b, units, images, masks in binarize(np.asarray(acts[s : s + batch_size], np.float32),
                                                thresholds_, mask_shape):
            builder.append_sparse(b, units, images, masks)
    return builder.finish()


def binarize(maps: np.ndarray, thresholds_: np.ndarray, mask_shape: tuple[int, int],
             pixel_budget: int = 1 << 24) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """A batch of maps float32 [b, units, h, w] binarized as :func:`unit_masks` does, a few images at a
    time so that at most about ``pixel_budget`` upsampled pixels are held: yields
    (images in this piece, units int64 [m], images int64 [m] within the piece, masks bool
    [m, *mask_shape]) for the (image, unit) pairs whose map exceeds its threshold somewhere."""
    import torch
    import torch.nn.functional as F

    b, c = maps.shape[:2]
    t = torch.from_numpy(np.asarray(thresholds_, np.float32))
    step = max(1, pixel_budget // (c * int(np.prod(mask_shape))))
    for s in range(0, b, step):
        a = torch.from_numpy(np.require(maps[s : s + step], np.float32, ["C", "W"]))
        img, unit = torch.nonzero(a.amax(dim=(2, 3)) > t[None, :], as_tuple=True)
        if len(img) == 0:
            yield a.shape[0], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, *mask_shape), bool)
            continue
        sel = a[img, unit]
        up = F.interpolate(sel[:, None], size=mask_shape, mode="bilinear", align_corners=False)[:, 0]
        # Bilinear values lie within the map's range; clamping removes rounding excursions past its
        # maximum, so the skip of maps whose maximum is at most T_k above is exact.
        up = torch.minimum(up, sel.amax(dim=(1, 2))[:, None, None])
        yield a.shape[0], unit.numpy(), img.numpy(), (up > t[unit][:, None, None]).numpy()
