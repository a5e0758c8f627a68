"""COCO-format probes: a folder of images and one JSON file of instance or segmentation annotations.

The JSON has ``images`` (``id, file_name, height, width``), ``annotations``
(``id, image_id, category_id, segmentation``; ``iscrowd``, ``area`` and
``bbox`` are optional and unused) and ``categories`` (``id, name``, optionally
``supercategory``), as COCO (Lin et al., "Microsoft COCO: Common Objects in
Context", ECCV 2014) writes them.

- Concepts are the categories in the order of their ids; a concept's name is the category's name and
  its category is ``"object"``, or with ``category_field="supercategory"`` (any field name) that
  field of the category (``"object"`` where it is missing).
- Images are the JSON's ``images`` in the order of their ids. ``file_name`` is resolved against
  ``image_dir``; by default against the JSON's folder, else its sibling ``images/`` folder (the
  first of the two that holds the first image).
- A segmentation is a list of polygons ``[[x1, y1, x2, y2, ...], ...]`` (pixel coordinates, at
  least 3 points each), an uncompressed RLE ``{"counts": [ints], "size": [h, w]}`` (run lengths
  over the column-major mask, starting with a run of 0s) or a compressed RLE
  ``{"counts": "string", "size": [h, w]}``; pycocotools decodes them. Crowd annotations count as
  their category's pixels, and all the masks of one category in one image are OR-ed. An empty
  polygon list is an empty mask.
- The whole file is checked when the probe is opened (structure, ids, run lengths, that each image
  file exists), so a long run does not fail half-way; an error names the file, the entry
  (``annotations[3] (id 17)``) and the field. Images are decoded only when their batch is needed,
  and an image whose pixel size differs from its ``height``, ``width`` is an error then.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np

from ..errors import BackendUnavailable, ProbeError
from .base import Probe, resize_nearest

__all__ = ["CocoProbe", "parse_coco_spec"]


class CocoProbe(Probe):
    """A COCO-format probe (see the module docstring): images resized to ``image_size`` x ``image_size``
    pixels, uint8 [b, H, W, 3]; concept masks bool [h, w] at ``mask_shape`` (nearest-neighbour).

    annotations: the JSON file. image_dir: where ``file_name`` is resolved (default: the JSON's
    folder, else its ``images/`` folder). category_field: the categories' field that names a
    concept's category (default: every concept is an ``"object"``). Needs pycocotools
    (``pip install 'neurcore[coco]'``).
    """

    name = "coco"

    def __init__(self, annotations: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 image_size: int = 224, mask_shape: tuple[int, int] = (112, 112),
                 category_field: str | None = None):
        _mask_api()  # fail now, not when the first masks are needed
        self.path = os.fspath(annotations)
        data = _load_json(self.path)
        self.records = _check_images(self.path, _section(data, self.path, "images"))
        if not self.records:
            raise ProbeError(f"{self.path}: images: no images listed")
        cats = _check_categories(self.path, _section(data, self.path, "categories"), category_field)
        row_of = {c["id"]: k for k, c in enumerate(cats)}
        self.concept_names = [c["name"] for c in cats]
        self.concept_categories = [str(c.get(category_field) or "object") if category_field else "object"
                                   for c in cats]
        position = {r["id"]: i for i, r in enumerate(self.records)}
        self._segments: list[list[tuple[int, object]]] = [[] for _ in self.records]
        for k, ann in enumerate(_section(data, self.path, "annotations")):
            image, row, seg = _check_annotation(self.path, k, ann, self.records, position, row_of)
            self._segments[image].append((row, seg))
        self.n_images = len(self.records)
        self.image_dir = _image_dir(self.path, image_dir, self.records)
        self.image_size = (image_size, image_size)
        self.mask_shape = (int(mask_shape[0]), int(mask_shape[1]))

    def images(self, start: int, stop: int) -> np.ndarray:
        """RGB images ``start..stop-1`` resized to ``image_size``: uint8 [b, H, W, 3]."""
        from PIL import Image, UnidentifiedImageError

        out = []
        for r in self.records[start:stop]:
            path = os.path.join(self.image_dir, r["file_name"])
            try:
                with Image.open(path) as im:
                    if im.size != (r["width"], r["height"]):
                        raise ProbeError(f"{path}: the image is {im.size[0]} x {im.size[1]} pixels (w x h), "
                                         f"but {self.path}: images[{r['_index']}] (id {r['id']}) says "
                                         f"width {r['width']}, height {r['height']}")
                    out.append(np.asarray(im.convert("RGB").resize(self.image_size[::-1], Image.BILINEAR)))
            except (UnidentifiedImageError, OSError) as exc:
                raise ProbeError(f"{path}: cannot read image: {exc}") from None
        return np.stack(out)

    def image_concepts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Concepts present in image i: (rows int64 [m], ascending; masks bool [m, h, w] at
        ``mask_shape``), each the OR of the category's annotations in the image."""
        r = self.records[i]
        found: dict[int, np.ndarray] = {}
        mask_api = _mask_api()
        for row, seg in self._segments[i]:
            mask = _decode(mask_api, seg, r["height"], r["width"])
            found[row] = found[row] | mask if row in found else mask
        resized = {row: resize_nearest(m, self.mask_shape) for row, m in found.items()}
        rows = np.array(sorted(row for row, m in resized.items() if m.any()), dtype=np.int64)
        masks = (np.stack([resized[k] for k in rows]) if len(rows)
                 else np.zeros((0, *self.mask_shape), bool))
        return rows, masks


def parse_coco_spec(arg: str) -> tuple[str, str | None]:
    """The (annotation file, image folder or None) of the ``ARG`` in a ``coco:ARG`` probe spec.

    ``ARG`` is the file when a file of that name exists; else it is split at the colon whose left
    part is an existing file and right part an existing folder (so paths with colons work). Anything
    else is a ProbeError."""
    if os.path.isfile(arg):
        return arg, None
    cuts = [k for k, ch in enumerate(arg) if ch == ":"]
    for k in reversed(cuts):
        if os.path.isfile(arg[:k]) and os.path.isdir(arg[k + 1:]):
            return arg[:k], arg[k + 1:]
    if cuts and os.path.isfile(arg[:cuts[-1]]):
        raise ProbeError(f"{arg[cuts[-1] + 1:]}: no such image directory (probe coco:{arg})")
    raise ProbeError(f"{arg}: no such annotation file (probe coco:FILE or coco:FILE:IMAGE_DIR)")


def _mask_api():
    """pycocotools.mask, or BackendUnavailable saying how to install it."""
    try:
        from pycocotools import mask
    except ImportError:
        raise BackendUnavailable("COCO probes need pycocotools: pip install 'neurcore[coco]'") from None
    return mask


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ProbeError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, "
                         f"column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbeError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ProbeError(f"{path}: expected a JSON object with images, annotations and categories")
    return data


def _section(data: dict, path: str, key: str) -> list:
    if key not in data:
        raise ProbeError(f"{path}: missing key {key!r} (a COCO file has images, annotations and categories)")
    if not isinstance(data[key], list):
        raise ProbeError(f"{path}: {key}: expected a list, got {type(data[key]).__name__}")
    return data[key]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _entry(path: str, key: str, k: int, item: object) -> str:
    """How an error names an entry: ``FILE: annotations[3] (id 17)``."""
    where = f"{path}: {key}[{k}]"
    if isinstance(item, dict) and "id" in item:
        where += f" (id {item['id']!r})"
    return where


def _field(where: str, item: dict, name: str, kind: str) -> object:
    """``item[name]``, checked to be an int (kind "id"), a positive int ("size") or a non-empty str."""
    if name not in item:
        raise ProbeError(f"{where}: {name}: missing")
    value = item[name]
    ok = {"id": _is_int(value), "size": _is_int(value) and value > 0,
          "str": isinstance(value, str) and value != ""}[kind]
    if not ok:
        expected = {"id": "an integer", "size": "a positive integer", "str": "a non-empty string"}[kind]
        raise ProbeError(f"{where}: {name}: expected {expected}, got {value!r}")
    return value


def _check_images(path: str, images: list) -> list[dict]:
    """The image records sorted by id, each {id, file_name, height, width, _index}."""
    records, seen = [], {}
    for k, item in enumerate(images):
        where = _entry(path, "images", k, item)
        if not isinstance(item, dict):
            raise ProbeError(f"{where}: expected an object, got {type(item).__name__}")
        rec = {"id": _field(where, item, "id", "id"), "file_name": _field(where, item, "file_name", "str"),
               "height": _field(where, item, "height", "size"), "width": _field(where, item, "width", "size"),
               "_index": k}
        if rec["id"] in seen:
            raise ProbeError(f"{where}: id: {rec['id']} repeats images[{seen[rec['id']]}]")
        seen[rec["id"]] = k
        records.append(rec)
    return sorted(records, key=lambda r: r["id"])


def _check_categories(path: str, categories: list, category_field: str | None) -> list[dict]:
    """The categories sorted by id, with unique ids and names."""
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for k, item in enumerate(categories):
        where = _entry(path, "categories", k, item)
        if not isinstance(item, dict):
            raise ProbeError(f"{where}: expected an object, got {type(item).__name__}")
        cid, name = _field(where, item, "id", "id"), _field(where, item, "name", "str")
        if cid in ids:
            raise ProbeError(f"{where}: id: {cid} repeats categories[{ids[cid]}]")
        if name in names:
            raise ProbeError(f"{where}: name: {name!r} repeats categories[{names[name]}]")
        label = item.get(category_field) if category_field else None
        if label is not None and not isinstance(label, str):
            raise ProbeError(f"{where}: {category_field}: expected a string, got {item[category_field]!r}")
        ids[cid], names[name] = k, k
    if not categories:
        raise ProbeError(f"{path}: categories: no categories, so no concepts")
    return sorted(categories, key=lambda c: c["id"])


def _check_annotation(path: str, k: int, ann: object, records: list[dict], position: dict[int, int],
                      row_of: dict[int, int]) -> tuple[int, int, object]:
    """(image position, concept row, segmentation) of ``annotations[k]``, every field checked."""
    where = _entry(path, "annotations", k, ann)
    if not isinstance(ann, dict):
        raise ProbeError(f"{where}: expected an object, got {type(ann).__name__}")
    image_id = _field(where, ann, "image_id", "id")
    if image_id not in position:
        raise ProbeError(f"{where}: image_id: {image_id} is not the id of any entry of images")
    category_id = _field(where, ann, "category_id", "id")
    if category_id not in row_of:
        raise ProbeError(f"{where}: category_id: {category_id} is not the id of any entry of categories")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise ProbeError(f"{where}: iscrowd: expected 0 or 1, got {ann['iscrowd']!r}")
    if "segmentation" not in ann:
        raise ProbeError(f"{where}: segmentation: missing (a probe needs masks, not only boxes)")
    image = position[image_id]
    seg = _check_segmentation(f"{where}: segmentation", ann["segmentation"], records[image])
    return image, row_of[category_id], seg


def _check_segmentation(where: str, seg: object, image: dict) -> object:
    """A polygon list or an RLE, checked against its image's height and width; RLE counts of a string
    come back as they are, in a dict of their own."""
    if isinstance(seg, list):
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(x) for x in poly):
                raise ProbeError(f"{where}: polygon {j} is not a list of numbers")
            if len(poly) % 2:
                raise ProbeError(f"{where}: polygon {j} has an odd number of coordinates ({len(poly)})")
            if len(poly) < 6:
                raise ProbeError(f"{where}: polygon {j} has {len(poly) // 2} points, a polygon needs 3")
        return seg
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise ProbeError(f"{where}: expected a list of polygons or an RLE {{counts, size}}, got "
                         f"{type(seg).__name__}")
    size = seg["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
        raise ProbeError(f"{where}: size: expected [height, width], got {size!r}")
    if size != [image["height"], image["width"]]:
        raise ProbeError(f"{where}: size {size} differs from the image's [height, width] "
                         f"[{image['height']}, {image['width']}] of images[{image['_index']}] "
                         f"(id {image['id']})")
    counts = seg["counts"]
    if isinstance(counts, str):
        runs = _string_counts(where, counts)
    elif isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts):
        runs = counts
    else:
        raise ProbeError(f"{where}: counts: expected a list of non-negative integers or a string")
    if sum(runs) != size[0] * size[1]:
        raise ProbeError(f"{where}: counts: the runs cover {sum(runs)} pixels, the mask has "
                         f"{size[0]} x {size[1]} = {size[0] * size[1]}")
    return {"counts": counts, "size": list(size)}


def _string_counts(where: str, s: str) -> list[int]:
    """The run lengths of a compressed RLE string (COCO's 6-bit variable-length, delta-coded form).

    Only to check them: pycocotools decodes runs that do not cover the mask into uninitialised
    memory without an error."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, shift, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ProbeError(f"{where}: counts: the compressed RLE string ends inside a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ProbeError(f"{where}: counts: {s[p]!r} (position {p}) is not a character of a "
                                 "compressed RLE")
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p, shift = p + 1, shift + 5
            if not more and c & 0x10:
                x |= -1 << shift
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ProbeError(f"{where}: counts: run {len(counts)} of the compressed RLE is negative ({x})")
        counts.append(x)
    return counts


def _image_dir(path: str, image_dir: str | os.PathLike | None, records: list[dict]) -> str:
    """The folder the images' file names are relative to; every image must be there."""
    if image_dir is not None:
        directory = os.fspath(image_dir)
        if not os.path.isdir(directory):
            raise ProbeError(f"{directory}: no such image directory")
    else:
        base = os.path.dirname(os.path.abspath(path))
        candidates = [base, os.path.join(base, "images")]
        first = records[0]["file_name"]
        directory = next((d for d in candidates if os.path.isfile(os.path.join(d, first))), None)
        if directory is None:
            raise ProbeError(f"{path}: images[{records[0]['_index']}] (id {records[0]['id']}): file_name: "
                             f"{first!r} is neither in {candidates[0]} nor in {candidates[1]}")
    for r in records:
        if not os.path.isfile(os.path.join(directory, r["file_name"])):
            raise ProbeError(f"{path}: images[{r['_index']}] (id {r['id']}): file_name: "
                             f"{os.path.join(directory, r['file_name'])}: no such file")
    return directory


def _decode(mask_api, seg: object, h: int, w: int) -> np.ndarray:
    """A checked segmentation as bool [h, w]."""
    if isinstance(seg, list):
        if not seg:
            return np.zeros((h, w), bool)
        rle = mask_api.merge(mask_api.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_api.frPyObjects(seg, h, w)
    else:
        rle = {"size": [h, w], "counts": seg["counts"].encode("ascii")}
    with warnings.catch_warnings():  # pycocotools' own numpy 2 DeprecationWarning, not the caller's
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_api.decode(rle).astype(bool)
