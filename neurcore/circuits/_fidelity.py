"""A class's images, the model's predictions on them, and NeurFlow's fidelity: how well a set of core
neurons alone carries (or, masked, removes) the class, against random sets of equal size."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InputError
from ..models import as_maps, hooked, resolve_layer

if TYPE_CHECKING:
    import torch

    from ..models import ModelSpec
    from ..probe import Probe

__all__ = ["class_index", "output_shapes", "predicted", "forward_logits", "class_images", "ChannelMask",
           "fidelity", "layer_means"]


def class_index(spec: ModelSpec, name: str, n_outputs: int | None = None) -> int:
    """The output index of class ``name`` (a class name of the model, or an index given as text).

    n_outputs: the model's output count, when known (else one forward pass finds it).
    """
    n_out = n_outputs if n_outputs is not None else output_shapes(spec, [])[0]
    if spec.classes and name in spec.classes:
        return spec.classes.index(name)
    if str(name).isdigit() and int(name) < n_out:
        return int(name)
    known = ""
    if spec.classes:
        known = f"; classes: {', '.join(spec.classes[:12])}{' ...' if len(spec.classes) > 12 else ''}"
    raise InputError(f"class {name!r} is not an output of model {spec.name!r} ({n_out} outputs){known}")


def output_shapes(spec: ModelSpec, layers: Sequence[str],
                  device: str | torch.device = "cpu") -> tuple[int, dict[str, int]]:
    """(model outputs, {layer: channels}) from one forward pass of a blank image."""
    import torch

    with torch.no_grad(), hooked(spec.module, layers) as outs:
        logits = spec.module(torch.zeros(1, 3, spec.input_size, spec.input_size, device=device))
        return int(logits.shape[1]), {name: as_maps(outs[name]).shape[1] for name in layers}


def predicted(spec: ModelSpec, logits: torch.Tensor, c: int) -> torch.Tensor:
    """bool [n] from logits [n, classes]: the model predicts class c (logit > 0 for multi-label
    models, argmax otherwise)."""
    return logits[:, c] > 0 if spec.multilabel else logits.argmax(1) == c


def forward_logits(spec: ModelSpec, images: np.ndarray, device: str | torch.device = "cpu",
                   batch: int = 128) -> torch.Tensor:
    """The model's logits, float32 [n, classes] on the CPU, for uint8 images [n, H, W, 3], ``batch``
    at a time (float32 [0] when there are no images)."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            out.append(spec.module(spec.preprocess(images[s : s + batch]).to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def class_images(spec: ModelSpec, probe: Probe, c: int, *, max_images: int = 60,
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_images`` probe images of class c that the model gets right: predicted as c and,
    where the probe annotates a concept of the class's name, containing it. uint8 [n, H, W, 3] and
    their probe indices."""
    names = getattr(probe, "concept_names", None) or []
    concept = names.index(spec.classes[c]) if spec.classes and spec.classes[c] in names else None
    keep, idx = [], []
    for start, images in probe.batches(128):
        ok = predicted(spec, forward_logits(spec, images, device), c).numpy()
        for j in np.flatnonzero(ok):
            if concept is None or concept in probe.image_concepts(start + j)[0]:
                keep.append(images[j])
                idx.append(start + j)
        if len(keep) >= max_images:
            break
    if not keep:
        raise InputError(f"no probe image is classified as class {c} correctly: nothing to explain")
    return np.stack(keep[:max_images]), np.array(idx[:max_images])


class ChannelMask:
    """Forward hooks that multiply layers' outputs by per-channel 0/1 masks; a context manager that
    removes them on exit.

    Args:
        module: the model.
        masks: {dotted layer name: float [C] mask}, one value per channel of the layer's output.
    """

    def __init__(self, module: torch.nn.Module, masks: dict[str, torch.Tensor]):
        self.handles = [resolve_layer(module, name).register_forward_hook(
            lambda _m, _i, out, m=m: out * m.view(1, -1, *([1] * (out.dim() - 2))).to(out.dtype))
            for name, m in masks.items()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def fidelity(spec: ModelSpec, images: np.ndarray, c: int, core: dict[str, list[int]],
             channels: dict[str, int], *, n_random: int = 20, seed: int = 0,
             device: str | torch.device = "cpu") -> list[dict]:
    """NeurFlow's fidelity: the fraction of ``images`` (of class c, all right before) still predicted
    as c when a layer's core neurons are masked (set to 0) or alone retained, against ``n_random``
    random sets of the same size; per layer and cumulatively (every layer from the top down to it).
    Also the class's mean logit as a fraction of its unmasked mean (``core_logit``,
    ``random_logit_mean``), which still moves where a positive bias keeps every image predicted.
    ``core``: {layer: neurons}, top to bottom; ``channels``: {layer: channel count}.

    NeurFlow ("NeurFlow: Interpreting Neural Networks through Neuron Groups and Functional
    Interactions", ICLR 2025). One row per layer, scope ("layer", "cumulative") and mode ("mask",
    "retain"): the core set's score, the random sets' mean and std, their logit fractions, k, and
    the numbers of random sets and images; scores rounded to 4 decimals.
    """
    import torch

    rng = np.random.default_rng(seed)
    rows = []

    base_logit = float(forward_logits(spec, images, device)[:, c].mean())

    def scores(masks):
        """(fraction still predicted as c, mean class logit as a fraction of the unmasked mean)"""
        with ChannelMask(spec.module, masks):
            logits = forward_logits(spec, images, device)
        return float(predicted(spec, logits, c).float().mean()), float(logits[:, c].mean()) / base_logit

    def mask_of(layer, neurons, mode):
        m = torch.zeros(channels[layer]) if mode == "retain" else torch.ones(channels[layer])
        m[list(neurons)] = 1.0 if mode == "retain" else 0.0
        return m

    layers = list(core)
    for depth, layer in enumerate(layers):
        for scope in ("layer", "cumulative"):
            if scope == "cumulative" and depth == 0:
                continue
            scope_layers = layers[: depth + 1] if scope == "cumulative" else [layer]
            for mode in ("mask", "retain"):
                got, got_logit = scores({name: mask_of(name, core[name], mode) for name in scope_layers})
                randoms = np.array([scores({name: mask_of(name, rng.choice(channels[name], len(core[name]),
                                                                           replace=False), mode)
                                            for name in scope_layers}) for _ in range(n_random)])
                rows.append({"layer": layer, "scope": scope, "mode": mode, "k": len(core[layer]),
                             "core": round(got, 4), "random_mean": round(float(randoms[:, 0].mean()), 4),
                             "random_std": round(float(randoms[:, 0].std()), 4),
                             "core_logit": round(got_logit, 4),
                             "random_logit_mean": round(float(randoms[:, 1].mean()), 4), "n_random": n_random,
                             "n_images": len(images)})
    return rows


def layer_means(spec: ModelSpec, images: np.ndarray, layers: Sequence[str],
                device: str | torch.device) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({layer: channel means float32 [n, C]}, logits float32 [n, classes]) of uint8 images
    [n, H, W, 3], 128 at a time."""
    import torch

    means, logits = {n: [] for n in layers}, []
    with torch.no_grad(), hooked(spec.module, layers) as outs:
        for s in range(0, len(images), 128):
            logits.append(spec.module(spec.preprocess(images[s : s + 128]).to(device)).float().cpu())
            for n in layers:
                means[n].append(as_maps(outs[n]).float().mean((2, 3)).cpu())
    return {n: torch.cat(v).numpy() for n, v in means.items()}, torch.cat(logits).numpy()
