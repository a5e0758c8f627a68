"""Models by reference: the embedded default models, torchvision and timm classifiers by name, and any
module a Python factory builds; weights from a local file (torch state dict or ``.safetensors``)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import pkgutil
from typing import Callable, Sequence

from ..errors import BackendUnavailable, InputError
from ._default import default_model, planted_circuit_model
from ._spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from ._weights import load_weights

__all__ = ["TORCHVISION_MODELS", "MODEL_FORMS", "load_model"]

#: Bare torchvision names, aliases of ``torchvision:NAME``.
TORCHVISION_MODELS = ("resnet18", "resnet50", "vit_b_16")
#: The model references :func:`load_model` accepts, as one line.
MODEL_FORMS = ("default, default-circuit, resnet18, resnet50, vit_b_16, torchvision:NAME, timm:NAME or "
               "python:MODULE:FACTORY")


def load_model(name: str, weights: str | None = None, *, input_size: int | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               progress: bool = True) -> ModelSpec:
    """The model a reference names, in eval mode: ``default`` or ``default-circuit`` (embedded, trained and
    cached on first use), ``resnet18``, ``resnet50``, ``vit_b_16`` (aliases of torchvision's),
    ``torchvision:NAME`` (any torchvision classifier), ``timm:NAME`` (any timm model) or
    ``python:MODULE:FACTORY`` (``MODULE.FACTORY()`` returning an ``nn.Module`` or a ModelSpec).

    Models are built with random weights, the same in every run (seeded), unless ``weights`` names a
    local file: a torch state dict or a ``.safetensors`` file. Input size, mean and std come from the
    model (torchvision's and timm's preprocessing; 224 and ImageNet's for a bare module); ``input_size``
    (pixels), ``mean`` and ``std`` (3 floats each, on [0, 1]) override them (a ViT is built for
    ``input_size``). The spec's ``name`` is the reference, followed by the overrides that change the
    model's own preprocessing, e.g. ``timm:resnet18 (input_size=64)``: run manifests record it, so a
    resume with another model or preprocessing is refused. A bad reference is an InputError naming
    what was not found and the closest names.
    """
    ref = name.strip()
    mean, std = _triple(mean, "mean"), _triple(std, "std")
    if input_size is not None and input_size < 1:
        raise InputError(f"--input-size must be >= 1, got {input_size}")
    if ref in ("default", "default-circuit"):
        if weights:
            raise InputError("--weights: the default model brings its own weights")
        spec = default_model(progress=progress)
        spec = planted_circuit_model(spec) if ref == "default-circuit" else spec
    else:
        import torch

        with torch.random.fork_rng():
            torch.manual_seed(0)  # random weights, but the same in every run (resumes must agree)
            spec = _build(ref, input_size)
        if weights:
            load_weights(spec.module, weights, ref)
        spec.module.eval()
    return _override(spec, input_size, mean, std)


def _build(ref: str, input_size: int | None) -> ModelSpec:
    """The ModelSpec of a reference other than the default models, named ``ref``."""
    prefix, sep, target = ref.partition(":")
    if not sep:
        if ref in TORCHVISION_MODELS:
            return _torchvision(ref, ref, input_size)
        raise InputError(f"model {ref!r}: expected {MODEL_FORMS}{_bare_hint(ref)}")
    builders: dict[str, Callable[[str, str, int | None], ModelSpec]] = {
        "torchvision": _torchvision, "timm": _timm, "python": _python}
    if prefix not in builders:
        raise InputError(f"model {ref!r}: unknown prefix {prefix + ':'!r}; expected {MODEL_FORMS}")
    if not target:
        raise InputError(f"model {ref!r}: name the model after {prefix + ':'!r}")
    return builders[prefix](ref, target, input_size)


def _torchvision(ref: str, name: str, input_size: int | None) -> ModelSpec:
    """A torchvision classifier with random weights and the preprocessing of its default weights."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise InputError(f"model {ref!r}: torchvision has no classification model {name!r}"
                         f"{_hint(name, known, 'torchvision:')}")
    kwargs = {"image_size": input_size} if input_size and name.startswith("vit_") else {}
    try:
        module = torchvision.models.get_model(name, weights=None, **kwargs)
    except AssertionError as exc:  # a ViT's image size that its patch size does not divide
        raise InputError(f"model {ref!r} at --input-size {input_size}: {exc}") from None
    size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
    try:
        preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        size, mean, std = preset.crop_size[0], tuple(preset.mean), tuple(preset.std)
    except (AttributeError, ValueError, TypeError, IndexError):
        pass  # no weights with an ImageClassification preset: 224 and ImageNet's
    return ModelSpec(module=module, name=ref, input_size=int(size), mean=mean, std=std)


def _timm(ref: str, name: str, input_size: int | None) -> ModelSpec:
    """A timm model with random weights (``pretrained=False``) and the preprocessing of its pretrained_cfg."""
    try:
        import timm
        import timm.data
    except ImportError:
        raise BackendUnavailable(f"model {ref!r}: timm is not installed (pip install 'neurcore[torch]')") \
            from None
    if not timm.is_model(name):
        hint = _hint(name, timm.list_models(), "timm:")
        raise InputError(f"model {ref!r}: timm has no model {name!r}{hint}")
    cfg = timm.models.get_pretrained_cfg(name)
    kwargs = {"img_size": input_size} if input_size and cfg is not None and cfg.fixed_input_size else {}
    module = timm.create_model(name, pretrained=False, **kwargs)
    data = timm.data.resolve_data_config({}, model=module)
    return ModelSpec(module=module, name=ref, input_size=int(data["input_size"][-1]),
                     mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]))


def _python(ref: str, target: str, input_size: int | None) -> ModelSpec:
    """``MODULE.FACTORY()``: an ``nn.Module`` (224 pixels, ImageNet's mean and std) or a ModelSpec."""
    import torch.nn as nn

    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"model {ref!r}: expected python:MODULE:FACTORY, e.g. python:mypackage.models:build")
    module = _import(ref, module_name)
    factory = getattr(module, attr, None)
    if factory is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise InputError(f"model {ref!r}: module {module_name!r} has no attribute {attr!r}"
                         f"{_hint(attr, names, '')}")
    if not callable(factory):
        raise InputError(f"model {ref!r}: {module_name}.{attr} is a {type(factory).__name__}, not a factory")
    _check_no_arguments(ref, factory)
    built = factory()
    if isinstance(built, ModelSpec):
        return dataclasses.replace(built, name=ref)
    if not isinstance(built, nn.Module):
        text = repr(built)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise InputError(f"model {ref!r}: {module_name}.{attr}() returned {type(built).__name__} {text}, "
                         "not a torch.nn.Module or a neurcore.models.ModelSpec")
    return ModelSpec(module=built, name=ref)


def _import(ref: str, module_name: str):
    """The module ``module_name``; one that does not exist is an InputError with the closest names."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise  # the module exists but one of its own imports is missing: keep the traceback
        parent, _, leaf = missing.rpartition(".")
        path = getattr(importlib.import_module(parent), "__path__", None) if parent else None
        known = [m.name for m in pkgutil.iter_modules(path)]
        hint = _hint(leaf, known, parent + "." if parent else "")
        raise InputError(f"model {ref!r}: no module named {missing!r}{hint}") from None


def _check_no_arguments(ref: str, factory: Callable) -> None:
    """A factory is called with no arguments; one that needs some is an InputError naming them."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: just call them
        return
    try:
        signature.bind()
    except TypeError:
        needed = [p.name for p in signature.parameters.values()
                  if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                         p.KEYWORD_ONLY)]
        raise InputError(f"model {ref!r}: the factory is called with no arguments but needs "
                         f"{', '.join(needed)}") from None


def _override(spec: ModelSpec, input_size: int | None, mean: tuple | None, std: tuple | None) -> ModelSpec:
    """``spec`` with the preprocessing overrides that change it, recorded in its name."""
    own = {"input_size": spec.input_size, "mean": tuple(map(float, spec.mean)),
           "std": tuple(map(float, spec.std))}
    changes = {k: v for k, v in (("input_size", input_size), ("mean", mean), ("std", std))
               if v is not None and v != own[k]}
    if not changes:
        return spec
    text = ", ".join(f"{k}={v if k == 'input_size' else ','.join(f'{x:g}' for x in v)}"
                     for k, v in changes.items())
    return dataclasses.replace(spec, name=f"{spec.name} ({text})", **changes)


def _triple(values: Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    """``values`` as 3 floats (R, G, B); std must be positive."""
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise InputError(f"--{what}: expected 3 values (R,G,B), got {len(values)}")
    if what == "std" and min(values) <= 0:
        raise InputError(f"--std: every value must be > 0, got {','.join(f'{v:g}' for v in values)}")
    return values


def _hint(name: str, known: Sequence[str], prefix: str) -> str:
    """``; closest: a, b, c`` among ``known`` (each shown with ``prefix``), or nothing when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; closest: {', '.join(prefix + c for c in close)}" if close else ""


def _bare_hint(name: str) -> str:
    """Close names for a bare reference: the bare forms, then torchvision's and timm's models."""
    hint = _hint(name, ["default", "default-circuit", *TORCHVISION_MODELS], "")
    if hint:
        return hint
    try:
        import torchvision

        hint = _hint(name, torchvision.models.list_models(module=torchvision.models), "torchvision:")
        if not hint:
            import timm

            hint = _hint(name, timm.list_models(), "timm:")
    except ImportError:
        pass
    return hint
