"""Probe datasets: images with concept masks, behind one interface (:class:`Probe`).

``open_probe("default" | "synthetic" | "synthetic-broden" | "broden:DIR" | "folder:DIR")``.
"""

from __future__ import annotations

from ..errors import ProbeError
from .base import Probe
from .broden import BrodenProbe, write_broden
from .folder import FolderProbe
from .synthetic import SyntheticWorld

__all__ = ["BrodenProbe", "FolderProbe", "Probe", "ProbeError", "SyntheticBroden", "SyntheticWorld",
           "open_probe", "write_broden"]


def __getattr__(name: str):
    """``SyntheticBroden``, imported on first use (it brings numba)."""
    if name == "SyntheticBroden":
        from .synthetic_broden import SyntheticBroden

        return SyntheticBroden
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_probe(spec: str, *, image_size: int | None = None, n_images: int | None = None,
               seed: int = 0) -> Probe:
    """A probe from its command-line spec: ``default`` (the synthetic world), ``synthetic-broden`` (the
    Broden-scale synthetic probe, 224-px images, default 22,210 of them), ``broden:DIR`` or ``folder:DIR``.
    image_size: side of the images in pixels; n_images and seed: of the synthetic probes."""
    kind, _, arg = spec.partition(":")
    if kind in ("default", "synthetic") and not arg:
        return SyntheticWorld(n_images=n_images or 3000, size=image_size or 64, seed=seed)
    if kind == "synthetic-broden" and not arg:
        if image_size not in (None, 224):
            raise ProbeError(f"probe {spec!r}: draws 224-px images, got image_size={image_size}")
        from .synthetic_broden import SyntheticBroden

        return SyntheticBroden(n_images=22210 if n_images is None else n_images, seed=seed)
    if kind == "broden" and arg:
        return BrodenProbe(arg, image_size=image_size or 224)
    if kind == "folder" and arg:
        return FolderProbe(arg, image_size=image_size or 224)
    raise ProbeError(f"probe {spec!r}: expected default, broden:DIR or folder:DIR, or synthetic or "
                     "synthetic-broden")
