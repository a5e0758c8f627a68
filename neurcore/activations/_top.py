"""Each unit's top images: what a report draws, kept while the activations stream by.

:class:`TopImages` holds, per unit, the ``k`` probe images of highest peak activation (ties to the
lower image index), their activation maps and the unit's maximum over the probe. It is built either
from a full activation cache (:meth:`TopImages.from_acts`) or batch by batch (:meth:`TopImages.update`)
with memory of ``units x k`` maps, independent of the number of images; both give the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._io import atomic_path

__all__ = ["TopImages"]


@dataclass
class TopImages:
    """Per unit: ``index`` int64 [units, k] (image indices, best first; -1 where the probe has fewer
    than k images), ``peak`` float32 [units, k] (their peak activations), ``maps`` float32
    [units, k, h, w] (their activation maps) and ``unit_max`` float32 [units] (the unit's maximum)."""

    index: np.ndarray
    peak: np.ndarray
    maps: np.ndarray
    unit_max: np.ndarray

    @classmethod
    def empty(cls, units: int, k: int, map_shape: tuple[int, int]) -> TopImages:
        """No image seen yet: ``units`` units, ``k`` slots, maps of ``map_shape`` (h, w)."""
        return cls(np.full((units, k), -1, np.int64), np.full((units, k), -np.inf, np.float32),
                   np.zeros((units, k, *map_shape), np.float32), np.full(units, -np.inf, np.float32))

    @property
    def k(self) -> int:
        """Images kept per unit."""
        return self.index.shape[1]

    def update(self, maps: np.ndarray, start: int) -> None:
        """Take in a batch: maps float32 [b, units, h, w] of images ``start .. start+b-1``."""
        b = maps.shape[0]
        if b == 0:
            return
        peak = maps.max(axis=(2, 3)).T  # [units, b]
        self.unit_max = np.maximum(self.unit_max, peak.max(axis=1))
        idx = np.broadcast_to(np.arange(start, start + b, dtype=np.int64), peak.shape)
        all_peak = np.concatenate([self.peak, peak], axis=1)
        all_idx = np.concatenate([self.index, idx], axis=1)
        # best first: highest peak, then the lower image index (empty slots, -inf, go last)
        key_idx = np.where(all_idx < 0, np.iinfo(np.int64).max, all_idx)
        order = np.lexsort((key_idx, -all_peak), axis=1)[:, : self.k]
        new_idx = np.take_along_axis(all_idx, order, axis=1)
        new_maps = np.empty_like(self.maps)
        rows = np.arange(self.index.shape[0])
        for j in range(self.k):
            src = order[:, j]
            old = src < self.k
            new_maps[old, j] = self.maps[rows[old], src[old]]
            new_maps[~old, j] = np.moveaxis(maps, 1, 0)[rows[~old], src[~old] - self.k]
        self.index, self.peak = new_idx, np.take_along_axis(all_peak, order, axis=1)
        self.maps = new_maps

    def merge(self, other: TopImages) -> None:
        """Take in ``other``, the top images of the same units over other images (another shard of the
        probe): the result is what one pass over both would keep, whatever the order of merging."""
        self.unit_max = np.maximum(self.unit_max, other.unit_max)
        all_peak = np.concatenate([self.peak, other.peak], axis=1)
        all_idx = np.concatenate([self.index, other.index], axis=1)
        key_idx = np.where(all_idx < 0, np.iinfo(np.int64).max, all_idx)
        order = np.lexsort((key_idx, -all_peak), axis=1)[:, : self.k]
        all_maps = np.concatenate([self.maps, other.maps], axis=1)
        self.index = np.take_along_axis(all_idx, order, axis=1)
        self.peak = np.take_along_axis(all_peak, order, axis=1)
        self.maps = np.take_along_axis(all_maps, order[:, :, None, None], axis=1)

    @classmethod
    def from_acts(cls, acts: np.ndarray, k: int, block: int = 256) -> TopImages:
        """From a whole activation cache [n_images, units, h, w] (read ``block`` images at a time)."""
        top = cls.empty(acts.shape[1], k, acts.shape[2:])
        for s in range(0, len(acts), block):
            top.update(np.asarray(acts[s : s + block], dtype=np.float32), s)
        return top

    def save(self, path: str) -> None:
        """Write to ``path`` (.npz), atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, index=self.index, peak=self.peak, maps=self.maps, unit_max=self.unit_max)

    @classmethod
    def load(cls, path: str) -> TopImages:
        """Read what :meth:`save` wrote."""
        with np.load(path) as z:
            return cls(z["index"], z["peak"], z["maps"], z["unit_max"])
