"""From activations to unit masks: exact top-quantile thresholds and binarized, upsampled maps.

- :func:`thresholds`: per unit, the exact top-``quantile`` threshold ``T_k`` over all images and
  positions (NetDissect's 0.005), read a few units at a time from the cache.
- :func:`unit_masks`: maps upsampled bilinearly (torch, align_corners=False) to the mask
  resolution and binarized ``a > T_k`` into image-sparse ``BitMasks``; a map whose maximum is at
  most ``T_k`` is skipped, exactly, since bilinear values never exceed the map's maximum
  (upsampled values are clamped to it, so float rounding cannot say otherwise).
"""

from __future__ import annotations

import numpy as np

from ..engine import BitMasks, BitMasksBuilder
from ..errors import InputError

__all__ = ["thresholds", "unit_masks"]


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
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    n, c = acts.shape[:2]
    builder = BitMasksBuilder(c, mask_shape, layout="auto")
    t = torch.from_numpy(np.asarray(thresholds_, np.float32))
    for s in tqdm(range(0, n, batch_size), desc="unit masks", disable=not progress, leave=False):
        a = torch.from_numpy(np.array(acts[s : s + batch_size], dtype=np.float32))
        b = a.shape[0]
        img, unit = torch.nonzero(a.amax(dim=(2, 3)) > t[None, :], as_tuple=True)
        if len(img) == 0:
            builder.append_sparse(b, [], [], np.zeros((0, *mask_shape), bool))
            continue
        maps = a[img, unit]
        up = F.interpolate(maps[:, None], size=mask_shape, mode="bilinear", align_corners=False)[:, 0]
        # Bilinear values lie within the map's range; clamping removes rounding excursions past its
        # maximum, so the skip of maps whose maximum is at most T_k above is exact.
        up = torch.minimum(up, maps.amax(dim=(1, 2))[:, None, None])
        masks = (up > t[unit][:, None, None]).numpy()
        builder.append_sparse(b, unit.numpy(), img.numpy(), masks)
    return builder.finish()
