"""Broden-format probes, as NetDissect-Lite reads them (Bau et al. 2017).

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
    """A Broden-format directory. categories: which to use (default: all in category.csv)."""

    name = "broden"

    def __init__(self, directory: str, categories=None, index_file: str = "index.csv",
                 image_size: int = 224, mask_shape: tuple[int, int] | None = None):
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise ProbeError(f"{self.directory}: no such directory")
        d = self.directory
        cat_rows = _read_csv(os.path.join(d, "category.csv"), ("name",))
        all_categories = [r["name"] for r in cat_rows]
        if categories is None:
            categories = all_categories
        unknown = [c for c in categories if c not in all_categories]
        if unknown:
            raise ProbeError(f"{os.path.join(d, 'category.csv')}: unknown categories {unknown}; "
                             f"known: {all_categories}")
        self.categories = list(categories)
        label_path = os.path.join(d, "label.csv")
        labels = {}
        for r in _read_csv(label_path, ("number", "name", "category")):
            number = _int(r["number"], label_path, r["_line"], "number")
            cats = {}
            for part in filter(None, r["category"].split(";")):
                m = _CATEGORY_FIELD.match(part.strip())
                if not m:
                    raise ProbeError(f"{label_path}: row {r['_line']}: category {part!r} is not like 'object(3)'")
                cats[m.group(1)] = int(m.group(2))
            labels[number] = (r["name"], cats)
        coverage: dict[int, dict[str, float]] = {}
        for cat in self.categories:
            path = os.path.join(d, f"c_{cat}.csv")
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
        numbers = sorted(coverage)
        self._row_of = {n: k for k, n in enumerate(numbers)}
        self.label_numbers = numbers
        self.concept_names = [labels[n][0] for n in numbers]
        # Primary category: largest coverage (NetDissect), then largest count in label.csv.
        self.concept_categories = [
            max(coverage[n], key=lambda c: (coverage[n][c], labels[n][1].get(c, 0))) for n in numbers
        ]
        self._labels = labels
        index_path = os.path.join(d, index_file)
        self._index_path = index_path
        self.rows = _read_csv(index_path, META)
        for r in self.rows:
            for f in ("ih", "iw", "sh", "sw"):
                r[f] = _int(r[f], index_path, r["_line"], f)
        self.n_images = len(self.rows)
        if self.n_images == 0:
            raise ProbeError(f"{index_path}: no images listed")
        self.image_size = (image_size, image_size)
        self.mask_shape = tuple(mask_shape) if mask_shape else (self.rows[0]["sh"], self.rows[0]["sw"])

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, "images", name)

    def images(self, start: int, stop: int) -> np.ndarray:
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

    def image_concepts(self, i: int):
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


def write_broden(directory: str, world, n_images: int | None = None, image_size: int | None = None) -> None:
    """Export a synthetic world (or any probe with ``concept_maps``) as a Broden-format directory.

    Scenes become image-level labels; every other category a segmentation PNG
    per image (label = R + 256 G). Used by the tests and to try Broden-reading
    tools on data with known masks.
    """
    from PIL import Image

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
        imgs, maps = world.images(start, stop), world.concept_maps(start, stop)
        for j in range(stop - start):
            i = start + j
            name = f"img{i:05d}"
            image = imgs[j] if image_size is None else np.asarray(
                Image.fromarray(imgs[j]).resize((image_size, image_size), Image.BILINEAR))
            Image.fromarray(image).save(os.path.join(directory, "images", f"{name}.jpg"), quality=95)
            h, w = maps.shape[2:]
            row = {"image": f"{name}.jpg", "split": "train", "ih": image.shape[0], "iw": image.shape[1],
                   "sh": h, "sw": w}
            present = maps[j].any(axis=(1, 2))
            freq += present
            pixels += maps[j].mean(axis=(1, 2))
            for cat in categories:
                ks = [k for k in range(len(names)) if cats[k] == cat and present[k]]
                if cat == "scene":
                    row[cat] = ";".join(str(number[k]) for k in ks)
                    continue
                layers = []  # pixel labels may overlap within a category: one PNG per layer
                for k in ks:
                    for layer in layers:
                        if not (layer > 0)[maps[j, k]].any():
                            layer[maps[j, k]] = number[k]
                            break
                    else:
                        layer = np.zeros((h, w), np.int64)
                        layer[maps[j, k]] = number[k]
                        layers.append(layer)
                files = []
                for li, layer in enumerate(layers):
                    rgb = np.zeros((h, w, 3), np.uint8)
                    rgb[..., 0], rgb[..., 1] = layer % 256, layer // 256
                    fname = f"{name}_{cat}_{li + 1}.png"
                    Image.fromarray(rgb).save(os.path.join(directory, "images", fname))
                    files.append(fname)
                row[cat] = ";".join(files)
            index_rows.append(row)
    with open(os.path.join(directory, "index.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(META) + categories)
        wr.writeheader()
        wr.writerows(index_rows)
    with open(os.path.join(directory, "category.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["name", "first", "last", "count", "frequency"])
        for cat in categories:
            ks = [number[k] for k in range(len(names)) if cats[k] == cat]
            wr.writerow([cat, min(ks), max(ks), len(ks), int(sum(freq[k - 1] for k in ks))])
    with open(os.path.join(directory, "label.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        wr.writerow([0, "-", "", 0, 0, ""])
        for k in range(len(names)):
            wr.writerow([number[k], names[k], f"{cats[k]}({int(freq[k])})", int(freq[k]), f"{pixels[k]:.4f}", ""])
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
