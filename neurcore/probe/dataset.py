"""A probe from (image, masks) pairs in memory: a list, a generator, or a ``torch.utils.data.Dataset``.

A sample is a pair ``(image, masks)``:

- image: uint8 numpy [H, W, 3], a PIL image (converted to RGB) or a torch tensor [3, H, W], float
  in [0, 1] or uint8;
- masks: bool (or 0/1 integer) [n_concepts, h, w], row k the mask of ``concept_names[k]``, or a
  dict {concept name: bool [h, w]} naming only the concepts present; numpy arrays or torch tensors.
  Masks cover the whole image at any resolution; they are resized nearest-neighbour to the
  probe's ``mask_shape``.

Data with ``__len__`` and ``__getitem__`` (a list, a map-style Dataset) is read lazily, sample by
sample, when a batch needs it; any other iterable is read once, when the probe is made, and kept
(images at ``image_size``, masks at ``mask_shape``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import ProbeError
from .base import Probe, resize_nearest

__all__ = ["DatasetProbe"]


class DatasetProbe(Probe):
    """Images with concept masks from Python data (see the module docstring for the sample forms).

    data: a sequence / map-style Dataset of (image, masks) pairs, read lazily, or any iterable of
    them, read once here. concept_names: the concepts, str [n_concepts]. concept_categories: one per
    concept (default ``"concept"``). image_size: side (int) or (H, W) the images are resized to
    (bilinear); default: the size of the first image. mask_shape: (h, w) of the masks (default: the
    size of the first sample's masks, else of its image). n_images: use only the first images.
    """

    def __init__(self, data: Iterable, concept_names: Sequence[str], *,
                 concept_categories: Sequence[str] | None = None,
                 image_size: int | tuple[int, int] | None = None, mask_shape: tuple[int, int] | None = None,
                 n_images: int | None = None, name: str = "dataset"):
        self.name = name
        self.concept_names = [str(c) for c in concept_names]
        if len(set(self.concept_names)) != len(self.concept_names):
            raise ProbeError(f"{name}: concept_names repeat a name")
        if concept_categories is None:
            concept_categories = ["concept"] * len(self.concept_names)
        self.concept_categories = [str(c) for c in concept_categories]
        if len(self.concept_categories) != len(self.concept_names):
            raise ProbeError(f"{name}: {len(self.concept_categories)} concept_categories for "
                             f"{len(self.concept_names)} concept_names")
        self._row_of = {c: k for k, c in enumerate(self.concept_names)}
        if n_images is not None and n_images < 0:
            raise ProbeError(f"{name}: n_images must be >= 0, got {n_images}")
        self._data = data if _random_access(data) else None
        samples = None
        if self._data is None:
            samples = iter(data) if n_images is None else itertools.islice(data, n_images)
            first = next(samples, None)
            self.n_images = 0 if first is None else 1
        else:
            self.n_images = len(data) if n_images is None else min(n_images, len(data))
            first = self._data[0] if self.n_images else None
        if first is None:
            raise ProbeError(f"{name}: the data has no samples")
        image, masks = self._unpack(0, first)
        self.image_size = _size(image_size) if image_size is not None else image.shape[:2]
        self.mask_shape = (_size(mask_shape) if mask_shape is not None
                           else _first_mask_shape(masks, image))
        sample0 = self._normalise(0, image, masks)  # bad data fails here, not in the middle of a run
        self._last: tuple[int, tuple] | None = (0, sample0)
        self._cache: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        if samples is not None:
            self._cache = [sample0]
            self._cache += [self._normalise(i, *self._unpack(i, s)) for i, s in enumerate(samples, start=1)]
            self.n_images = len(self._cache)

    def images(self, start: int, stop: int) -> np.ndarray:
        """Images ``start..stop-1`` at ``image_size``: uint8 [b, H, W, 3]."""
        return np.stack([self._sample(i)[0] for i in range(start, min(stop, self.n_images))])

    def image_concepts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Concepts present in image i: (rows int64 [m], ascending; masks bool [m, h, w] at
        ``mask_shape``)."""
        return self._sample(i)[1:]

    def _sample(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image uint8 [H, W, 3], rows int64 [m], masks bool [m, h, w]) of sample i, normalised."""
        if self._cache is not None:
            return self._cache[i]
        if self._last is not None and self._last[0] == i:
            return self._last[1]
        if not 0 <= i < self.n_images:
            raise IndexError(f"{self.name}: sample {i} out of range 0..{self.n_images - 1}")
        out = self._normalise(i, *self._unpack(i, self._data[i]))
        self._last = (i, out)
        return out

    def _unpack(self, i: int, sample: object) -> tuple[np.ndarray, object]:
        """(image uint8 [H, W, 3], masks as given) of a sample, the image checked."""
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise ProbeError(f"{self.name}: sample {i}: expected a pair (image, masks), "
                             f"got {type(sample).__name__}")
        return _image_array(f"{self.name}: sample {i}: image", sample[0]), sample[1]

    def _normalise(self, i: int, image: np.ndarray,
                   masks: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A sample at the probe's sizes: (image, rows of the concepts present, their masks)."""
        where = f"{self.name}: sample {i}: masks"
        if image.shape[:2] != tuple(self.image_size):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize(self.image_size[::-1], Image.BILINEAR))
        else:
            image = image.copy()  # a generator may reuse its buffer for the next sample
        if isinstance(masks, dict):
            unknown = [k for k in masks if k not in self._row_of]
            if unknown:
                raise ProbeError(f"{where}: unknown concept {unknown[0]!r} (not in concept_names)")
            pairs = [(self._row_of[k], _mask_array(f"{where}[{k!r}]", m, 2)) for k, m in masks.items()]
        else:
            stack = _mask_array(where, masks, 3)
            if stack.shape[0] != len(self.concept_names):
                raise ProbeError(f"{where}: {stack.shape[0]} masks for {len(self.concept_names)} "
                                 "concept_names (expected bool [n_concepts, h, w])")
            pairs = list(enumerate(stack))
        kept = sorted(((row, resize_nearest(m, self.mask_shape)) for row, m in pairs), key=lambda p: p[0])
        kept = [(row, m) for row, m in kept if m.any()]
        rows = np.array([row for row, _ in kept], dtype=np.int64)
        out = np.stack([m for _, m in kept]) if kept else np.zeros((0, *self.mask_shape), bool)
        return image, rows, out


def _random_access(data: object) -> bool:
    return (hasattr(data, "__len__") and hasattr(data, "__getitem__")
            and not isinstance(data, (str, bytes, dict)))


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    return (int(image_size[0]), int(image_size[1]))


def _first_mask_shape(masks: object, image: np.ndarray) -> tuple[int, int]:
    """(h, w) of a sample's masks, or of its image when it has none."""
    if isinstance(masks, dict):
        masks = next(iter(masks.values()), None)
    shape = np.shape(_to_numpy(masks)) if masks is not None else ()
    return tuple(int(s) for s in shape[-2:]) if len(shape) >= 2 else tuple(image.shape[:2])


def _to_numpy(x: object) -> np.ndarray:
    """A numpy array of x; a torch tensor (any device) is detached and copied to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _image_array(where: str, image: object) -> np.ndarray:
    """uint8 [H, W, 3] of a numpy array [H, W, 3], a PIL image, or a tensor [3, H, W]."""
    if hasattr(image, "convert") and hasattr(image, "size") and not hasattr(image, "shape"):
        return np.asarray(image.convert("RGB"))
    is_tensor = hasattr(image, "detach")
    a = _to_numpy(image)
    if is_tensor:
        if a.ndim != 3 or a.shape[0] != 3:
            raise ProbeError(f"{where}: a tensor image must be [3, H, W], got shape {list(a.shape)}")
        if np.issubdtype(a.dtype, np.floating):
            if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1 or np.isnan(a).any()):
                raise ProbeError(f"{where}: a float tensor image must have values in [0, 1]")
            a = np.round(a * 255)
        elif a.dtype != np.uint8:
            raise ProbeError(f"{where}: a tensor image must be float in [0, 1] or uint8, got {a.dtype}")
        return np.ascontiguousarray(a.transpose(1, 2, 0).astype(np.uint8))
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ProbeError(f"{where}: expected uint8 [H, W, 3], a PIL image or a tensor [3, H, W], "
                         f"got {a.dtype} shape {list(a.shape)}")
    return a


def _mask_array(where: str, masks: object, ndim: int) -> np.ndarray:
    """bool masks of ``ndim`` dimensions from bool or 0/1 integer data."""
    a = _to_numpy(masks)
    if a.ndim != ndim:
        expected = "[n_concepts, h, w]" if ndim == 3 else "[h, w]"
        raise ProbeError(f"{where}: expected bool {expected}, got shape {list(a.shape)}")
    if a.dtype != bool:
        if not np.issubdtype(a.dtype, np.integer) or (a.size and not np.isin(a, (0, 1)).all()):
            raise ProbeError(f"{where}: expected bool (or 0/1 integer) masks, got {a.dtype}")
        a = a.astype(bool)
    return a
