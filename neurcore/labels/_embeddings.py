"""Embeddings of a probe's images and of texts, cached on disk and computed once per model."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from .._io import atomic_path, read_json, write_json
from ..errors import InputError
from ._vlm import VisionLanguageModel

if TYPE_CHECKING:
    from ..probe import Probe

__all__ = ["embed_images", "embed_texts", "vlm_cache_dir"]


def vlm_cache_dir(root: str, vlm: VisionLanguageModel) -> str:
    """The folder under ``root`` that holds ``vlm``'s cached embeddings (named by its cache key)."""
    return os.path.join(root, re.sub(r"[^A-Za-z0-9._-]+", "_", vlm.cache_key))


def embed_images(vlm: VisionLanguageModel, probe: Probe, cache_dir: str, *, batch_size: int = 64,
                 progress: bool = True) -> np.ndarray:
    """Image embeddings of the whole probe: read-only memmap float32 [n_images, D], L2-normalised.

    Computed once per model in batches (``probe.images``) and cached as
    ``cache_dir/<vlm.cache_key>/images.npy``; a progress file, replaced
    atomically after each batch, lets an interrupted run resume at the next one.
    """
    from tqdm import tqdm

    n = probe.n_images
    if n == 0:
        raise InputError(f"{probe.name}: the probe has no images")
    folder = vlm_cache_dir(cache_dir, vlm)
    os.makedirs(folder, exist_ok=True)
    file, state_file = os.path.join(folder, "images.npy"), os.path.join(folder, "progress.json")
    shape = [n, vlm.embed_dim]
    state = read_json(state_file) or {}
    start = state.get("done", 0) if state.get("shape") == shape and os.path.isfile(file) else 0
    if start >= n:
        return np.load(file, mmap_mode="r")
    if start == 0:
        cache = np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=tuple(shape))
    else:
        cache = np.load(file, mmap_mode="r+")
    start -= start % batch_size
    bar = tqdm(total=n, initial=start, desc=f"image embeddings ({vlm.name})", unit="img",
               disable=not progress, leave=False)
    for s in range(start, n, batch_size):
        e = min(n, s + batch_size)
        cache[s:e] = vlm.encode_image(probe.images(s, e), batch_size=batch_size)
        cache.flush()
        write_json(state_file, {"done": e, "shape": shape, "model": vlm.cache_key})
        bar.update(e - bar.n)
    bar.close()
    del cache
    return np.load(file, mmap_mode="r")


def embed_texts(vlm: VisionLanguageModel, texts: list[str], cache_dir: str | None = None) -> np.ndarray:
    """Text embeddings float32 [T, D], L2-normalised; with ``cache_dir`` cached as
    ``cache_dir/<vlm.cache_key>/texts-<hash of the texts>.npy``."""
    if cache_dir is None:
        return vlm.encode_text(texts)
    if isinstance(texts, str):
        raise InputError("embed_texts: expected a list of strings, got str")
    digest = hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]
    path = os.path.join(vlm_cache_dir(cache_dir, vlm), f"texts-{digest}.npy")
    if os.path.isfile(path):
        cached = np.load(path)
        if cached.shape == (len(texts), vlm.embed_dim):
            return cached
    out = vlm.encode_text(texts)
    with atomic_path(path) as tmp:
        np.save(tmp, out)
    return out
