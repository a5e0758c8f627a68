"""Activations of model layers over a probe: hooks, an on-disk cache, thresholds and unit masks.

- :func:`extract` runs the probe through the model in batches with forward
  hooks (removed in ``finally``) and streams each layer's maps into a
  memory-mapped ``.npy`` cache ``[n_images, units, h, w]`` (float32), so a
  layer larger than RAM works; a progress file, replaced atomically after
  every batch, lets an interrupted run resume at the next batch.
- :func:`thresholds`: per unit, the exact top-``quantile`` threshold
  ``T_k`` over all images and positions (NetDissect's 0.005), read a few units
  at a time from the cache.
- :func:`unit_masks`: maps upsampled bilinearly (torch, align_corners=False)
  to the mask resolution and binarized ``a > T_k`` into image-sparse
  ``BitMasks``; a map whose maximum is at most ``T_k`` is skipped, exactly,
  since bilinear values never exceed the map's maximum (upsampled values are
  clamped to it, so float rounding cannot say otherwise).
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np

from ._atomic import write_json
from ._bitmasks import BitMasks, BitMasksBuilder
from .errors import InputError

__all__ = ["extract", "thresholds", "unit_masks", "as_maps", "hooked"]


@contextlib.contextmanager
def hooked(module, layers: list[str]):
    """Forward hooks on ``layers`` (dotted paths) that keep each output; removed on exit."""
    from .models import resolve_layer

    outputs: dict[str, object] = {}
    handles = []
    try:
        for name in layers:
            sub = resolve_layer(module, name)
            handles.append(sub.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out)))
        yield outputs
    finally:
        for h in handles:
            h.remove()


def as_maps(out):
    """A layer output as spatial maps [B, C, h, w]: conv maps as they are, ViT tokens [B, T, C]
    (T = 1 + s^2 with a class token, or s^2) reshaped to [B, C, s, s], vectors [B, C] as 1 x 1."""
    import torch

    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise InputError(f"layer output must be a tensor, got {type(out).__name__}")
    if out.dim() == 4:
        return out
    if out.dim() == 2:
        return out[:, :, None, None]
    if out.dim() == 3:
        b, t, c = out.shape
        s = math.isqrt(t)
        if s * s != t:
            s = math.isqrt(t - 1)
            if s * s != t - 1:
                raise InputError(f"layer output of {t} tokens is not a square grid (with or without a class token)")
            out = out[:, 1:]
        return out.reshape(b, s, s, c).permute(0, 3, 1, 2)
    raise InputError(f"layer output has shape {tuple(out.shape)}; expected [B, C, h, w], [B, T, C] or [B, C]")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _inputs(spec, images: np.ndarray):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (spec.input_size, spec.input_size):
        x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def planted_maps(planted, concept_maps: np.ndarray, names: list[str], size: tuple[int, int], first_image: int,
                 seed: int = 0):
    """Activations [b, k, h, w] of planted units from exact concept maps [b, n_concepts, H, W].

    Each is its formula's mask, area-averaged to ``size``, times a strength
    drawn per image in [0.5, 1.5], plus Gaussian noise of the unit's ``noise``;
    both drawn from (seed, image index, unit), so a resumed run redraws them.
    A linear unit is its weighted sum of area-averaged concept maps plus the noise.
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


def extract(spec, layers: list[str], probe, out_dir: str, *, batch_size: int = 64, progress: bool = True):
    """Activations of ``layers`` over the whole probe, cached in ``out_dir/<layer>/acts.npy``.

    Returns {layer: read-only memmap [n_images, units, h, w]}. Planted units of
    ``spec`` are appended after the layer's own units. Resumes an interrupted run.
    """
    import torch
    from tqdm import tqdm

    from .models import resolve_layer

    for name in layers:
        resolve_layer(spec.module, name)  # fail before any work on an unknown layer
    n = probe.n_images
    if n == 0:
        raise InputError(f"{probe.name}: the probe has no images")
    paths = {name: os.path.join(out_dir, name.replace("/", "_")) for name in layers}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    states = {name: _read_json(os.path.join(paths[name], "progress.json")) for name in layers}
    start = min((s or {}).get("done", 0) for s in states.values())
    planted = {name: [u for u in spec.planted if u.layer == name] for name in layers}
    if any(planted.values()) and not hasattr(probe, "concept_maps"):
        planted = {name: [] for name in layers}  # planted units need exact concept maps
    caches: dict[str, np.ndarray] = {}
    if start >= n:
        return {name: np.load(os.path.join(paths[name], "acts.npy"), mmap_mode="r") for name in layers}
    spec.module.eval()
    bar = tqdm(total=n, initial=start, desc="activations", unit="img", disable=not progress, leave=False)
    with torch.no_grad(), hooked(spec.module, layers) as outputs:
        for s in range(start - start % batch_size, n, batch_size):
            e = min(n, s + batch_size)
            spec.module(_inputs(spec, probe.images(s, e)))
            cmaps = probe.concept_maps(s, e) if any(planted.values()) else None
            for name in layers:
                maps = as_maps(outputs[name]).float().numpy()
                if planted[name]:
                    extra = planted_maps(planted[name], cmaps, probe.concept_names, maps.shape[2:], s)
                    maps = np.concatenate([maps, extra], axis=1)
                if name not in caches:
                    caches[name] = _open_cache(paths[name], (n, *maps.shape[1:]))
                caches[name][s:e] = maps
            for name in layers:
                caches[name].flush()
                write_json(os.path.join(paths[name], "progress.json"), {"done": e, "shape": list(caches[name].shape)})
            bar.n = e
            bar.refresh()
    bar.close()
    del caches
    return {name: np.load(os.path.join(paths[name], "acts.npy"), mmap_mode="r") for name in layers}


def _open_cache(path: str, shape: tuple) -> np.ndarray:
    file = os.path.join(path, "acts.npy")
    if os.path.exists(file):
        cache = np.load(file, mmap_mode="r+")
        if cache.shape == tuple(shape):
            return cache
        del cache
    return np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=tuple(shape))


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
