"""Per-image unit scores: one number per (image, unit), the input of the vision-language methods."""

from __future__ import annotations

import os

import numpy as np

from .._io import atomic_path

__all__ = ["unit_scores"]


def unit_scores(acts: np.ndarray, path: str | None = None, block: int = 256) -> np.ndarray:
    """Per-image unit activations [n_images, U]: the spatial mean of the maps [n_images, U, h, w]
    (LinEx's and CLIP-Dissect's convention), cached in ``path``."""
    if path and os.path.isfile(path):
        return np.load(path)
    out = np.empty(acts.shape[:2], np.float32)
    for s in range(0, len(acts), block):
        out[s : s + block] = np.asarray(acts[s : s + block], dtype=np.float32).mean(axis=(2, 3))
    if path:
        with atomic_path(path) as tmp:
            np.save(tmp, out)
    return out
