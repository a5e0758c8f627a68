"""A plain folder of images, with optional masks, for users' own data.

``DIR/*.png|jpg|jpeg`` (sorted by name) are the images. Concept masks are
optional: ``DIR/labels.csv`` (``number, name[, category]``) and, per image,
``DIR/masks/<image stem>.png`` whose pixel label is ``R + 256 * G`` (0 is
unlabelled), the same encoding as Broden's segmentations.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from ..errors import ProbeError
from .base import Probe, resize_nearest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class FolderProbe(Probe):
    """Images of a folder, sorted by name, resized to ``image_size`` x ``image_size`` pixels; concept
    masks at ``mask_shape`` (h, w, default 112 x 112) when the folder has ``labels.csv`` (see the
    module docstring)."""

    name = "folder"

    def __init__(self, directory: str | os.PathLike, image_size: int = 224,
                 mask_shape: tuple[int, int] | None = None):
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise ProbeError(f"{self.directory}: no such directory")
        self.files = sorted(f for f in os.listdir(self.directory) if f.lower().endswith(IMAGE_SUFFIXES))
        self.n_images = len(self.files)
        if self.n_images == 0:
            raise ProbeError(f"{self.directory}: no images (*.png, *.jpg, *.jpeg)")
        self.image_size = (image_size, image_size)
        self.mask_shape = tuple(mask_shape) if mask_shape else (112, 112)
        labels = os.path.join(self.directory, "labels.csv")
        self.has_masks = os.path.isfile(labels)
        self.concept_names, self.concept_categories, self._row_of = [], [], {}
        if self.has_masks:
            with open(labels, newline="") as f:
                reader = csv.DictReader(f)
                if not {"number", "name"} <= set(reader.fieldnames or []):
                    raise ProbeError(f"{labels}: needs columns number, name (and optionally category)")
                for k, r in enumerate(reader, start=2):
                    try:
                        number = int(r["number"])
                    except (TypeError, ValueError):
                        raise ProbeError(f"{labels}: row {k}: number must be an integer") from None
                    if number <= 0 or number in self._row_of:
                        raise ProbeError(f"{labels}: row {k}: number {number} must be > 0 and unique")
                    self._row_of[number] = len(self.concept_names)
                    self.concept_names.append(r["name"])
                    self.concept_categories.append(r.get("category") or "concept")

    def images(self, start: int, stop: int) -> np.ndarray:
        """RGB images ``start..stop-1`` resized to ``image_size``: uint8 [b, H, W, 3]."""
        from PIL import Image, UnidentifiedImageError

        out = []
        for f in self.files[start:stop]:
            path = os.path.join(self.directory, f)
            try:
                with Image.open(path) as im:
                    out.append(np.asarray(im.convert("RGB").resize(self.image_size[::-1], Image.BILINEAR)))
            except (UnidentifiedImageError, OSError) as exc:
                raise ProbeError(f"{path}: cannot read image: {exc}") from None
        return np.stack(out)

    def image_concepts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Concepts present in image i: (rows int64 [m], ascending; masks bool [m, h, w] at
        ``mask_shape``); none when the image has no mask PNG."""
        from PIL import Image, UnidentifiedImageError

        if not self.has_masks:
            raise ProbeError(f"{self.directory}: no labels.csv, so this folder probe has no concept masks")
        h, w = self.mask_shape
        path = os.path.join(self.directory, "masks", os.path.splitext(self.files[i])[0] + ".png")
        if not os.path.isfile(path):
            return np.zeros(0, np.int64), np.zeros((0, h, w), bool)
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
        except (UnidentifiedImageError, OSError) as exc:
            raise ProbeError(f"{path}: corrupt mask PNG: {exc}") from None
        seg = resize_nearest(rgb[..., 0] + 256 * rgb[..., 1], (h, w))
        rows, masks = [], []
        for number in np.unique(seg):
            if number == 0:
                continue
            if int(number) not in self._row_of:
                raise ProbeError(f"{path}: unknown label {int(number)} (not in labels.csv)")
            rows.append(self._row_of[int(number)])
            masks.append(seg == number)
        order = np.argsort(rows)
        return (np.array(rows, np.int64)[order],
                np.stack(masks)[order] if masks else np.zeros((0, h, w), bool))
