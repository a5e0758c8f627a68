"""The set-up every run shares: the model, its layers and the probe, checked before any work starts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import InputError
from ..models import ModelSpec, expand_layers, load_model
from ..probe import Probe, open_probe

__all__ = ["Setup", "set_up", "open_probe_for", "unique_names"]


@dataclass
class Setup:
    """A run's inputs, resolved: the model to explain, its layers (each one found in the model) and the
    probe; ``probe_label`` is how the run's manifest names the probe (the spec it was opened from,
    ``"default"``, or a given Probe's name)."""

    spec: ModelSpec
    layers: list[str]
    probe: Probe
    probe_label: str


def unique_names(names: Iterable[str], what: str) -> list[str]:
    """``names`` in order without repeats; an empty list is an InputError saying ``what`` to give."""
    names = list(dict.fromkeys(names))
    if not names:
        raise InputError(what)
    return names


def set_up(model: str | ModelSpec, layers: Sequence[str], probe: str | Probe, *, weights: str | None = None,
           probe_images: int | None = None, progress: bool = True) -> Setup:
    """Load ``model`` (a name or a :class:`~neurcore.models.ModelSpec`), expand ``layers`` (names, ``all``
    for every block output, or globs such as ``layer4.*``: :func:`~neurcore.models.expand_layers`), and
    open ``probe`` (a spec such as ``default``, ``broden:DIR``, ``folder:DIR`` or ``coco:FILE``, or a
    :class:`~neurcore.probe.Probe`); images of a Broden, folder or COCO probe are read at the model's
    input size."""
    spec = model if isinstance(model, ModelSpec) else load_model(model, weights, progress=progress)
    layers = expand_layers(spec.module, layers)
    if isinstance(probe, Probe):
        return Setup(spec, layers, probe, probe.name)
    return Setup(spec, layers, open_probe_for(spec, probe, probe_images), probe)


def open_probe_for(spec: ModelSpec, probe: str, n_images: int | None = None) -> Probe:
    """The probe of a spec string, its images read at the model's input size where the probe holds
    images of its own (``broden:``, ``folder:``, ``coco:``); n_images: of a synthetic probe."""
    image_size = spec.input_size if probe.partition(":")[0] in ("broden", "folder", "coco") else None
    return open_probe(probe, image_size=image_size, n_images=n_images)
