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
            lambda _m, _i, out, m=m: out * m.view(1, -1, *([1] * (out.dim() - 2))).to(out.device,
                                                                                        out.dtype))
            for name, m in masks.items()]  # the mask follows the output to its device (found on a GPU)

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
    ``core``: {layer: neurons}, top to bottom; ``channels``: {layer: channel count}.

    Where the decision is saturated (every image still predicted, core and random alike), accuracy
    cannot tell the core from chance, so each row also has the class's mean logit as a fraction of its
    unmasked mean ``base_logit`` (``core_logit``; ``random_logit_mean``, ``random_logit_std``), the
    fraction of the logit lost (``core_logit_drop``, ``random_logit_drop`` = 1 - the fraction) and the
    core's distance from the random sets in random standard deviations, ``logit_z`` =
    (core_logit - random_logit_mean) / random_logit_std (None when the std is 0).

    NeurFlow ("NeurFlow: Interpreting Neural Networks through Neuron Groups and Functional
    Interactions", ICLR 2025). One row per layer, scope ("layer", "cumulative") and mode ("mask",
    "retain"): the core set's accuracy, the random sets' mean and sample standard deviation, the
    logit columns above, k, and the numbers of random sets and images; scores rounded to 4 decimals.
    """
    rng = np.random.default_rng(seed)
    base_logit = float(forward_logits(spec, images, device)[:, c].mean())
    rows = []
    layers = list(core)
    for depth, layer in enumerate(layers):
        for scope in ("layer", "cumulative"):
            if scope == "cumulative" and depth == 0:
                continue
            scope_layers = layers[: depth + 1] if scope == "cumulative" else [layer]
            for mode in ("mask", "retain"):
                core_masks = {name: _mask_of(channels[name], core[name], mode) for name in scope_layers}
                got = _masked_scores(spec, images, c, base_logit, core_masks, device)
                randoms = np.array([
                    _masked_scores(spec, images, c, base_logit,
                                   {name: _mask_of(channels[name], rng.choice(channels[name], len(core[name]),
                                                                              replace=False), mode)
                                    for name in scope_layers}, device)
                    for _ in range(n_random)])
                rows.append({"layer": layer, "scope": scope, "mode": mode, "k": len(core[layer]),
                             **_fidelity_scores(got, randoms), "base_logit": round(base_logit, 4),
                             "n_random": n_random, "n_images": len(images)})
    return rows


def _mask_of(n_channels: int, neurons, mode: str):
    """float [n_channels]: 1 on ``neurons`` and 0 elsewhere ("retain"), or the reverse ("mask")."""
    import torch

    m = torch.zeros(n_channels) if mode == "retain" else torch.ones(n_channels)
    m[list(neurons)] = 1.0 if mode == "retain" else 0.0
    return m


def _masked_scores(spec: ModelSpec, images: np.ndarray, c: int, base_logit: float, masks: dict,
                   device) -> tuple[float, float]:
    """(fraction of ``images`` still predicted as c, mean class logit as a fraction of ``base_logit``)
    with ``masks`` applied."""
    with ChannelMask(spec.module, masks):
        logits = forward_logits(spec, images, device)
    return float(predicted(spec, logits, c).float().mean()), float(logits[:, c].mean()) / base_logit


def _fidelity_scores(got: tuple[float, float], randoms: np.ndarray) -> dict:
    """A fidelity row's scores from the core set's (accuracy, logit fraction) and the random sets'
    [n_random, 2]: means, sample standard deviations (0 for one set), drops and the logit's z."""
    std = randoms.std(0, ddof=1) if len(randoms) > 1 else np.zeros(2)
    mean = randoms.mean(0)
    z = (got[1] - mean[1]) / std[1] if std[1] > 0 else None
    return {"core": round(got[0], 4), "random_mean": round(float(mean[0]), 4),
            "random_std": round(float(std[0]), 4), "core_logit": round(got[1], 4),
            "random_logit_mean": round(float(mean[1]), 4), "random_logit_std": round(float(std[1]), 4),
            "core_logit_drop": round(1 - got[1], 4), "random_logit_drop": round(1 - float(mean[1]), 4),
            "logit_z": None if z is None else round(float(z), 2)}


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
