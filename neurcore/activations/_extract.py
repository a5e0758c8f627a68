"""Activations of model layers over a probe, streamed into an on-disk cache that a killed run resumes.

:func:`extract` runs the probe through the model in batches with forward hooks (removed in
``finally``) and streams each layer's maps into a memory-mapped ``.npy`` cache
``[n_images, units, h, w]`` (float32), so a layer larger than RAM works; a progress file, replaced
atomically after every batch, lets an interrupted run resume at the next batch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .._io import read_json, safe_name, write_json
from ..errors import InputError
from ..models import as_maps, hooked, resolve_layer
from ._planted import planted_maps

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..probe import Probe

__all__ = ["extract", "layer_batches", "layer_shapes"]


def extract(spec: ModelSpec, layers: list[str], probe: Probe, out_dir: str, *, batch_size: int = 64,
            progress: bool = True) -> dict[str, np.ndarray]:
    """Activations of ``layers`` over the whole probe, cached in ``out_dir/<layer>/acts.npy``.

    Returns {layer: read-only memmap [n_images, units, h, w]}. Planted units of
    ``spec`` are appended after the layer's own units. Resumes an interrupted run.
    """
    from tqdm import tqdm

    for name in layers:
        resolve_layer(spec.module, name)  # fail before any work on an unknown layer
    n = probe.n_images
    if n == 0:
        raise InputError(f"{probe.name}: the probe has no images")
    paths = {name: os.path.join(out_dir, safe_name(name)) for name in layers}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    states = {name: read_json(os.path.join(paths[name], "progress.json")) for name in layers}
    start = min((s or {}).get("done", 0) for s in states.values())
    caches: dict[str, np.ndarray] = {}
    if start >= n:
        return {name: np.load(os.path.join(paths[name], "acts.npy"), mmap_mode="r") for name in layers}
    bar = tqdm(total=n, initial=start, desc="activations", unit="img", disable=not progress, leave=False)
    for s, e, maps_by_layer in layer_batches(spec, layers, probe, start - start % batch_size, batch_size):
        for name, maps in maps_by_layer.items():
            if name not in caches:
                caches[name] = _open_cache(paths[name], (n, *maps.shape[1:]))
            caches[name][s:e] = maps
        for name in layers:
            caches[name].flush()
            write_json(os.path.join(paths[name], "progress.json"),
                       {"done": e, "shape": list(caches[name].shape)})
        bar.n = e
        bar.refresh()
    bar.close()
    del caches
    return {name: np.load(os.path.join(paths[name], "acts.npy"), mmap_mode="r") for name in layers}


def layer_batches(spec: ModelSpec, layers: list[str], probe: Probe, start: int = 0,
                  batch_size: int = 64, stop: int | None = None,
                  device: str | None = None) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """The probe through the model from image ``start`` (a multiple of ``batch_size``, so batches are
    the same in every run) up to ``stop`` (the probe's end by default) -> (first, stop, {layer: maps
    float32 [stop - first, units, h, w]}), with the planted units of ``spec`` appended after each
    layer's own units where the probe has exact concept maps. ``device``: where the module runs (it
    is moved there; the maps come back to the CPU)."""
    import torch

    n = probe.n_images if stop is None else min(probe.n_images, stop)
    planted = {name: [u for u in spec.planted if u.layer == name] for name in layers}
    if any(planted.values()) and not hasattr(probe, "concept_maps"):
        planted = {name: [] for name in layers}  # planted units need exact concept maps
    spec.module.eval()
    if device is not None:
        spec.module.to(device)
    with torch.no_grad(), hooked(spec.module, layers) as outputs:
        for s in range(start, n, batch_size):
            e = min(n, s + batch_size)
            x = spec.preprocess(probe.images(s, e))
            spec.module(x if device is None else x.to(device))
            cmaps = probe.concept_maps(s, e) if any(planted.values()) else None
            out = {}
            for name in layers:
                maps = as_maps(outputs[name]).float().cpu().numpy()
                if planted[name]:
                    extra = planted_maps(planted[name], cmaps, probe.concept_names, maps.shape[2:], s)
                    maps = np.concatenate([maps, extra], axis=1)
                out[name] = maps
            outputs.clear()
            yield s, e, out


def _open_cache(path: str, shape: tuple) -> np.ndarray:
    file = os.path.join(path, "acts.npy")
    if os.path.exists(file):
        cache = np.load(file, mmap_mode="r+")
        if cache.shape == tuple(shape):
            return cache
        del cache
    return np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=tuple(shape))


def layer_shapes(spec: ModelSpec, layers: list[str], probe: Probe) -> dict[str, tuple[int, int, int]]:
    """Each layer's maps as (units, h, w), planted units included, from the probe's first image."""
    batches = layer_batches(spec, layers, probe, 0, 1)
    try:
        _, _, maps = next(batches)
    finally:
        batches.close()
    return {name: tuple(m.shape[1:]) for name, m in maps.items()}
