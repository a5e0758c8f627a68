"""Probe datasets: images with concept masks, behind one interface (:class:`Probe`).

``open_probe("default" | "synthetic" | "synthetic-broden" | "broden:DIR" | "folder:DIR" | "coco:FILE"
| "coco:FILE:IMAGE_DIR")``; users' own data also as :class:`CocoProbe` (COCO-format annotations) and
:class:`DatasetProbe` (any (image, masks) pairs in Python).
"""

from __future__ import annotations

from ..errors import ProbeError
from .base import Probe
from .broden import BrodenProbe, write_broden
from .coco import CocoProbe, parse_coco_spec
from .dataset import DatasetProbe
from .folder import FolderProbe
from .synthetic import SyntheticWorld

__all__ = ["BrodenProbe", "CocoProbe", "DatasetProbe", "FolderProbe", "Probe", "ProbeError",
           "SyntheticBroden", "SyntheticWorld", "open_probe", "write_broden"]


def __getattr__(name: str):
    """``SyntheticBroden``, imported on first use (it brings numba)."""
    if name == "SyntheticBroden":
        from .synthetic_broden import SyntheticBroden

        return SyntheticBroden
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_probe(spec: str, *, image_size: int | None = None, n_images: int | None = None,
               seed: int = 0) -> Probe:
    """A probe from its command-line spec: ``default`` (the synthetic world), ``synthetic-broden`` (the
    Broden-scale synthetic probe, 224-px images, default 22,210 of them), ``broden:DIR``, ``folder:DIR``,
    ``coco:FILE`` or ``coco:FILE:IMAGE_DIR`` (a COCO annotation file; the spec is split at a colon only
    when no file has the whole name, where an existing file is left of it and a folder right of it:
    :func:`~neurcore.probe.coco.parse_coco_spec`). image_size: side of the images in pixels;
    n_images: images of a synthetic probe, or the first n_images of a broden, folder or coco probe
    (:meth:`Probe.limit`); seed: of the synthetic probes."""
    kind, _, arg = spec.partition(":")
    if kind in ("default", "synthetic") and not arg:
        return SyntheticWorld(n_images=n_images or 3000, size=image_size or 64, seed=seed)
    if kind == "synthetic-broden" and not arg:
        if image_size not in (None, 224):
            raise ProbeError(f"probe {spec!r}: draws 224-px images, got image_size={image_size}")
        from .synthetic_broden import SyntheticBroden

        return SyntheticBroden(n_images=22210 if n_images is None else n_images, seed=seed)
    if kind == "broden" and arg:
        return BrodenProbe(arg, image_size=image_size or 224).limit(n_images)
    if kind == "folder" and arg:
        return FolderProbe(arg, image_size=image_size or 224).limit(n_images)
    if kind == "coco" and arg:
        annotations, image_dir = parse_coco_spec(arg)
        return CocoProbe(annotations, image_dir, image_size=image_size or 224).limit(n_images)
    raise ProbeError(f"probe {spec!r}: expected default, broden:DIR or folder:DIR, coco:FILE or "
                     "coco:FILE:IMAGE_DIR, or synthetic or synthetic-broden")
