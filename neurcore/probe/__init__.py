"""Probe datasets: images with concept masks, behind one interface (:class:`Probe`).

``open_probe("default" | "synthetic" | "broden:DIR" | "folder:DIR")``.
"""

from __future__ import annotations

from ..errors import ProbeError
from .base import Probe
from .broden import BrodenProbe, write_broden
from .folder import FolderProbe
from .synthetic import SyntheticWorld

__all__ = ["Probe", "ProbeError", "SyntheticWorld", "BrodenProbe", "FolderProbe", "write_broden",
           "open_probe"]


def open_probe(spec: str, *, image_size: int | None = None, n_images: int | None = None,
               seed: int = 0) -> Probe:
    """A probe from its command-line spec: ``default`` (the synthetic world), ``broden:DIR`` or
    ``folder:DIR``. image_size: side of the images in pixels; n_images and seed: of the synthetic world."""
    kind, _, arg = spec.partition(":")
    if kind in ("default", "synthetic") and not arg:
        return SyntheticWorld(n_images=n_images or 3000, size=image_size or 64, seed=seed)
    if kind == "broden" and arg:
        return BrodenProbe(arg, image_size=image_size or 224)
    if kind == "folder" and arg:
        return FolderProbe(arg, image_size=image_size or 224)
    raise ProbeError(f"probe {spec!r}: expected default, broden:DIR or folder:DIR")
