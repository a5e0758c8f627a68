"""Broden-format probes, as NetDissect-Lite reads them (Bau et al., "Network Dissection: Quantifying
Interpretability of Deep Visual Representations", CVPR 2017).

A directory with ``index.csv`` (``image, split, ih, iw, sh, sw`` then one
column per category; several values separated by ``;``: an integer is an
image-level label, a file name a segmentation PNG under ``images/`` whose
pixel label is ``R + 256 * G``, 0 unlabelled), ``category.csv``
(``name, first, last, count, frequency``), ``label.csv`` (``number, name,
category, frequency, coverage, syns`` with category like
``material(36);object(3)``) and ``c_<category>.csv`` (``code, number, name,
frequency, coverage``). Rows are read lazily: images and PNGs are opened only
when their batch is needed. A concept's category is its primary category, the
one where it has the largest coverage (as NetDissect).
"""

from __future__ import annotations

import csv
import os
import re
from typing import Sequence

import numpy as np

from ..errors import ProbeError
from .base import Probe, resize_nearest

META = ("image", "split", "ih", "iw", "sh", "sw")
_CATEGORY_FIELD = re.compile(r"^([^(]+)\((\d+)\)$")


def _read_csv(path: str, required: tuple[str, ...]) -> list[dict]:
    if not os.path.isfile(path):
        raise ProbeError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ProbeError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = []
        for k, row in enumerate(reader, start=2):  # line 1 is the header
            if None in row or any(v is None for v in row.values()):
                raise ProbeError(f"{path}: row {k}: expected {len(reader.fieldnames)} fields")
            row["_line"] = k
            rows.append(row)
    return rows


def _int(value: str, path: str, line: int, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ProbeError(f"{path}: row {line}: {field} must be an integer, got {value!r}") from None


class BrodenProbe(Probe):
    """A Broden-format directory, the probe of Bau et al., "Network Dissection: Quantifying
    Interpretability of Deep Visual Representations", CVPR 2017, read as NetDissect-Lite reads it.

    categories: which to use (default: all in category.csv). index_file: the image list. Images are
    resized to ``image_size`` x ``image_size`` pixels; masks come at ``mask_shape`` (h, w), by default
    the segmentation size of the first image listed.
    """

    name = "broden"

    def __init__(self, directory: str | os.PathLike, categories: Sequence[str] | None = None,
                 index_file: str = "index.csv", image_size: int = 224,
                 mask_shape: tuple[int, int] | None = None):
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise ProbeError(f"{self.directory}: no such directory")
        self.categories = self._read_categories(categories)
        labels = self._read_labels()
        coverage = self._read_coverage(labels)
        numbers = sorted(coverage)
        self._row_of = {n: k for k, n in enumerate(numbers)}
        self.label_numbers = numbers
        self.concept_names = [labels[n][0] for n in numbers]
        # Primary category: largest coverage (NetDissect), then largest count in label.csv.
        self.concept_categories = [
            max(coverage[n], key=lambda c: (coverage[n][c], labels[n][1].get(c, 0))) for n in numbers
        ]
        self._labels = labels
        self._index_path = os.path.join(self.directory, index_file)
        self.rows = self._read_index(self._index_path)
        self.n_images = len(self.rows)
        self.image_size = (image_size, image_size)
        self.mask_shape = tuple(mask_shape) if mask_shape else (self.rows[0]["sh"], self.rows[0]["sw"])

    def _read_categories(self, categories: Sequence[str] | None) -> list[str]:
        """The categories to use, checked against category.csv (default: all of them)."""
        path = os.path.join(self.directory, "category.csv")
        all_categories = [r["name"] for r in _read_csv(path, ("name",))]
        if categories is None:
            categories = all_categories
        unknown = [c for c in categories if c not in all_categories]
        if unknown:
            raise ProbeError(f"{path}: unknown categories {unknown}; known: {all_categories}")
        return list(categories)

    def _read_labels(self) -> dict[int, tuple[str, dict[str, int]]]:
        """label.csv: label number -> (name, {category: count})."""
        label_path = os.path.join(self.directory, "label.csv")
        labels = {}
        for r in _read_csv(label_path, ("number", "name", "category")):
            number = _int(r["number"], label_path, r["_line"], "number")
            cats = {}
            for part in filter(None, r["category"].split(";")):
                m = _CATEGORY_FIELD.match(part.strip())
                if not m:
                    raise ProbeError(f"{label_path}: row {r['_line']}: category {part!r} "
                                     "is not like 'object(3)'")
                cats[m.group(1)] = int(m.group(2))
            labels[number] = (r["name"], cats)
        return labels

    def _read_coverage(self, labels: dict) -> dict[int, dict[str, float]]:
        """c_<category>.csv of the categories in use: label number -> {category: coverage}."""
        coverage: dict[int, dict[str, float]] = {}
        for cat in self.categories:
            path = os.path.join(self.directory, f"c_{cat}.csv")
            for r in _read_csv(path, ("code", "number")):
                number = _int(r["number"], path, r["_line"], "number")
                if number == 0:
                    continue
                if number not in labels:
                    raise ProbeError(f"{path}: row {r['_line']}: label {number} is not in label.csv")
                try:
                    cov = float(r.get("coverage") or 0.0)
                except ValueError:
                    raise ProbeError(f"{path}: row {r['_line']}: coverage must be a number") from None
                coverage.setdefault(number, {})[cat] = cov
        return coverage

    @staticmethod
    def _read_index(index_path: str) -> list[dict]:
        """The rows of the image list, sizes as integers; at least one."""
        rows = _read_csv(index_path, META)
        for r in rows:
            for f in ("ih", "iw", "sh", "sw"):
                r[f] = _int(r[f], index_path, r["_line"], f)
        if not rows:
            raise ProbeError(f"{index_path}: no images listed")
        return rows

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, "images", name)

    def images(self, start: int, stop: int) -> np.ndarray:
        """RGB images ``start..stop-1`` resized to ``image_size``: uint8 [b, H, W, 3]."""
        from PIL import Image, UnidentifiedImageError

        out = []
        for r in self.rows[start:stop]:
            path = self._path(r["image"])
            try:
                with Image.open(path) as im:
                    out.append(np.asarray(im.convert("RGB").resize(self.image_size[::-1], Image.BILINEAR)))
            except FileNotFoundError:
                raise ProbeError(f"{path}: no such file (index.csv row {r['_line']})") from None
            except (UnidentifiedImageError, OSError) as exc:
                raise ProbeError(f"{path}: cannot read image (index.csv row {r['_line']}): {exc}") from None
        return np.stack(out)

    def _segmentation(self, name: str, line: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self._path(name)
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
        except FileNotFoundError:
            raise ProbeError(f"{path}: no such file (index.csv row {line})") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ProbeError(f"{path}: corrupt segmentation PNG (index.csv row {line}): {exc}") from None
        return rgb[:, :, 0] + 256 * rgb[:, :, 1]

    def image_concepts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Concepts present in image i: (rows int64 [m], ascending; masks bool [m, h, w] at
        ``mask_shape``). An image-level label fills its mask."""
        r = self.rows[i]
        h, w = self.mask_shape
        found: dict[int, np.ndarray] = {}
        for cat in self.categories:
            if cat not in r:
                raise ProbeError(f"{self._index_path}: no column for category {cat!r}")
            for value in filter(None, r[cat].split(";")):
                if re.fullmatch(r"\d+", value):  # image-level label
                    number = int(value)
                    self._check_label(number, f"{self._index_path}: row {r['_line']}")
                    if number in self._row_of:
                        found[self._row_of[number]] = np.ones((h, w), bool)
                    continue
                seg = resize_nearest(self._segmentation(value, r["_line"]), (h, w))
                for number in np.unique(seg):
                    number = int(number)
                    if number == 0:
                        continue
                    self._check_label(number, self._path(value))
                    row = self._row_of.get(number)
                    if row is not None:
                        found[row] = found.get(row, np.zeros((h, w), bool)) | (seg == number)
        rows = np.array(sorted(found), dtype=np.int64)
        masks = np.stack([found[k] for k in rows]) if len(rows) else np.zeros((0, h, w), bool)
        return rows, masks

    def _check_label(self, number: int, where: str) -> None:
        if number not in self._labels:
            raise ProbeError(f"{where}: unknown label {number} (not in label.csv)")


def write_broden(directory: str | os.PathLike, world: Probe, n_images: int | None = None,
                 image_size: int | None = None) -> None:
    """Export a probe (the synthetic worlds, or any other) as a Broden-format directory.

    Scenes become image-level labels; every other category a segmentation PNG
    per image (label = R + 256 G), written from each image's sparse concept masks. Used by the tests
    and to try Broden-reading tools on data with known masks. n_images: the first images of ``world`` (default all);
    image_size: side in pixels the JPEG images are resized to (default: as drawn).
    """
    n = world.n_images if n_images is None else n_images
    names, cats = world.concept_names, world.concept_categories
    categories = list(dict.fromkeys(cats))
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    number = {k: k + 1 for k in range(len(names))}  # label 0 is unlabelled
    pixels = np.zeros(len(names))
    freq = np.zeros(len(names), np.int64)
    index_rows = []
    for start in range(0, n, 64):
        stop = min(n, start + 64)
        imgs = world.images(start, stop)
        for j in range(stop - start):
            name = f"img{start + j:05d}"
            image = _save_image(directory, name, imgs[j], image_size)
            rows, masks = world.image_concepts(start + j)  # sparse: only the concepts present
            rows = np.asarray(rows, np.int64)
            keep = np.flatnonzero(masks.reshape(len(rows), -1).any(axis=1))
            keep = keep[np.argsort(rows[keep], kind="stable")]  # concepts in label order, as they layer
            rows, masks = rows[keep], masks[keep]
            h, w = world.mask_shape
            row = {"image": f"{name}.jpg", "split": "train", "ih": image.shape[0], "iw": image.shape[1],
                   "sh": h, "sw": w}
            freq[rows] += 1
            pixels[rows] += masks.mean(axis=(1, 2))
            for cat in categories:
                row[cat] = _category_cell(directory, name, cat,
                                          [(number[int(k)], m) for k, m in zip(rows, masks) if cats[k] == cat])
            index_rows.append(row)
    _write_index(directory, index_rows, categories)
    _write_categories(directory, categories, cats, number, freq)
    _write_labels(directory, names, cats, number, freq, pixels)
    _write_category_codes(directory, categories, names, cats, number, freq, pixels)


def _save_image(directory: str | os.PathLike, name: str, image: np.ndarray,
                image_size: int | None) -> np.ndarray:
    """Write ``images/<name>.jpg`` (resized to image_size x image_size when given); the image written."""
    from PIL import Image

    if image_size is not None:
        image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
    Image.fromarray(image).save(os.path.join(directory, "images", f"{name}.jpg"), quality=95)
    return image


def _category_cell(directory: str | os.PathLike, name: str, cat: str,
                   concepts: list[tuple[int, np.ndarray]]) -> str:
    """The index.csv cell of one image and category from its (label number, mask [h, w]) pairs: the
    numbers for scenes, else the segmentation PNGs written for them."""
    if cat == "scene":
        return ";".join(str(label) for label, _ in concepts)
    layers = []  # pixel labels may overlap within a category: one PNG per layer
    for label, mask in concepts:
        for layer in layers:
            if not (layer > 0)[mask].any():
                layer[mask] = label
                break
        else:
            layer = np.zeros(mask.shape, np.int64)
            layer[mask] = label
            layers.append(layer)
    files = []
    for li, layer in enumerate(layers):
        fname = f"{name}_{cat}_{li + 1}.png"
        _save_labels(os.path.join(directory, "images", fname), layer)
        files.append(fname)
    return ";".join(files)


def _save_labels(path: str, layer: np.ndarray) -> None:
    """A label map int [h, w] as an RGB PNG with label = R + 256 G."""
    from PIL import Image

    rgb = np.zeros((*layer.shape, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = layer % 256, layer // 256
    Image.fromarray(rgb).save(path)


def _write_index(directory: str | os.PathLike, index_rows: list[dict], categories: list[str]) -> None:
    with open(os.path.join(directory, "index.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(META) + categories)
        wr.writeheader()
        wr.writerows(index_rows)


def _write_categories(directory: str | os.PathLike, categories: list[str], cats: list[str], number: dict,
                      freq: np.ndarray) -> None:
    with open(os.path.join(directory, "category.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["name", "first", "last", "count", "frequency"])
        for cat in categories:
            ks = [number[k] for k in range(len(cats)) if cats[k] == cat]
            wr.writerow([cat, min(ks), max(ks), len(ks), int(sum(freq[k - 1] for k in ks))])


def _write_labels(directory: str | os.PathLike, names: list[str], cats: list[str], number: dict,
                  freq: np.ndarray, pixels: np.ndarray) -> None:
    with open(os.path.join(directory, "label.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        wr.writerow([0, "-", "", 0, 0, ""])
        for k in range(len(names)):
            wr.writerow([number[k], names[k], f"{cats[k]}({int(freq[k])})", int(freq[k]), f"{pixels[k]:.4f}",
                         ""])


def _write_category_codes(directory: str | os.PathLike, categories: list[str], names: list[str],
                          cats: list[str], number: dict, freq: np.ndarray, pixels: np.ndarray) -> None:
    for cat in categories:
        with open(os.path.join(directory, f"c_{cat}.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["code", "number", "name", "frequency", "coverage"])
            wr.writerow([0, 0, "-", 0, 0])
            code = 1
            for k in range(len(names)):
                if cats[k] == cat:
                    wr.writerow([code, number[k], names[k], int(freq[k]), f"{pixels[k]:.4f}"])
                    code += 1
