"""The embedded default model: a small CNN trained on the synthetic concept world, with planted units
and, as ``default-circuit``, a planted circuit."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from .._io import atomic_path, cache_dir
from ..probe import SyntheticWorld
from ..rules.formula import parse
from ._layers import hooked
from ._spec import ModelSpec, PlantedUnit

__all__ = ["DEFAULT_PLANTED", "DEFAULT_PLANTED_DETECTORS", "DEFAULT_PLANTED_LINEAR", "CIRCUIT_CLASS",
           "CIRCUIT_FAN_IN", "default_model", "planted_circuit_model"]

DEFAULT_TRAIN_IMAGES = 4000
DEFAULT_TRAIN_SEED = 12345
DEFAULT_EPOCHS = 6
_DEFAULT_VERSION = 1

#: Planted formula units of the default model, appended to conv4, each identifiable at the dissection's
#: own thresholding (top quantile 0.005): on the default probe the cells each formula covers are
#: fewer than the quantile, so the unit's mask is the formula's whole region (see
#: :func:`neurcore.activations.planted_maps`). Only formulas that fit were chosen: ``cloud`` is the one
#: concept rare enough, so most are conjunctions; they cover lengths 1-3 and every operator. Each is a
#: left-deep formula whose prefixes are good explanations (the regime beam search covers), except the
#: two OR units ``((A OR B) AND C)``, whose prefix ``A OR B`` is too large to enter a beam: only
#: optimal search can find them.
DEFAULT_PLANTED = [
    "cloud", "(circle AND purple)", "(triangle AND red)", "(square AND dotted)", "(field AND yellow)",
    "(beach AND white)", "(street AND circle)", "(square AND blue)", "(bar AND red)", "(triangle AND orange)",
    "(cloud AND NOT beach)", "((triangle AND red) AND NOT striped)", "((square AND blue) AND NOT room)",
    "((circle AND white) AND NOT dotted)", "((red AND checkered) AND NOT square)",
    "((triangle AND yellow) AND mountain)", "((yellow AND dotted) AND NOT beach)",
    "((cloud AND NOT beach) AND NOT field)", "((green OR blue) AND circle)", "((orange OR gray) AND square)",
]
#: Planted single-concept detectors of the default model, appended to conv4 after the formula units:
#: truths for labelling (CLIP-Dissect, SIEVE), not for rule search, as each concept covers more of the
#: probe than the top quantile (the unit's mask is then only part of the concept).
DEFAULT_PLANTED_DETECTORS = ["sky", "grass", "water", "circle", "triangle", "red", "striped", "room"]
#: Planted linear units of the default model, appended to conv4 after the detectors: mixtures of
#: concept maps with mixed signs (weights make each concept's share of the variance comparable:
#: stuff covers about 40% of an image, an object about 5%).
DEFAULT_PLANTED_LINEAR = [
    (("sky", 1.0), ("circle", 2.0), ("red", -2.0)),
    (("grass", 1.0), ("square", 2.0), ("purple", -2.0)),
    (("water", 1.5), ("triangle", 2.0), ("yellow", -2.0)),
    (("wall", 1.0), ("ring", 2.0), ("green", -2.0)),
]


def _build_cnn(n_outputs: int):
    import torch.nn as nn

    def block(cin, cout, pool):
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        return nn.Sequential(*(layers + [nn.MaxPool2d(2)] if pool else layers))

    return nn.Sequential(
        OrderedDict(
            conv1=block(3, 32, True), conv2=block(32, 64, True), conv3=block(64, 128, True),
            conv4=block(128, 128, False), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
            head=nn.Linear(128, n_outputs),
        )
    )


def default_model(*, progress: bool = True) -> ModelSpec:
    """The embedded default model: trained on first use (about a minute on 2 cores), then cached."""
    import torch

    world = SyntheticWorld(n_images=DEFAULT_TRAIN_IMAGES, size=64, seed=DEFAULT_TRAIN_SEED)
    path = os.path.join(cache_dir(), f"default-model-v{_DEFAULT_VERSION}.pt")
    module = _build_cnn(len(world.concept_names))
    if os.path.isfile(path):
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        _train(module, world, progress=progress)
        with atomic_path(path) as tmp:
            torch.save(module.state_dict(), tmp)
    module.eval()
    planted = ([PlantedUnit("conv4", parse(f)) for f in DEFAULT_PLANTED]
               + [PlantedUnit("conv4", parse(f), identifiable=False) for f in DEFAULT_PLANTED_DETECTORS]
               + [PlantedUnit("conv4", weights=w) for w in DEFAULT_PLANTED_LINEAR])
    return ModelSpec(module=module, name="default", input_size=64, mean=(0.5, 0.5, 0.5),
                     std=(0.25, 0.25, 0.25), planted=planted, classes=list(world.concept_names),
                     multilabel=True)


#: The planted circuit of ``default-circuit``: the class, and how many channels carry it per layer
#: (``conv4``: the channels that carry the class logit; ``conv3``: the inputs that carry each of them).
#: 16 is NeurFlow's default tau, and >= 1 / fdr, as knockoff+ at fdr 0.1 selects no fewer than 10.
CIRCUIT_CLASS = "circle"
CIRCUIT_FAN_IN = {"conv4": 16, "conv3": 16}
#: The zeroed construction (``distractors=False``, for unit tests and the NeuCEPT FDR benchmark): the
#: conv4 channels wired to the logit, and the conv3 inputs kept by each of them.
CIRCUIT_ZEROED_FAN_IN = {"conv4": 12, "conv3": 3}
#: How far the circuit dominates, per layer: each true input's mean contribution (to the logit, or to a
#: circuit channel's pre-activation) on crops of the class's images is raised to at least this many
#: times the 99th percentile of |contribution| of any other input. conv3's is larger: attribution
#: through batch norm and ReLU, over each channel's own top crops, meets heavier tails than the head.
CIRCUIT_MARGIN = {"conv4": 1.0, "conv3": 3.0}
#: Distractors: conv4 channels wired to the pool as the circuit is (correlated with it; their head weights
#: stay as trained), and decoys: conv4 channels quiet on the class given a large negative weight on it.
CIRCUIT_TWINS = 8
CIRCUIT_DECOYS = 5
#: The conv3 pool the circuit's channels (and the twins) draw their inputs from.
CIRCUIT_POOL = 24
_CIRCUIT_VERSION = 2
_CIRCUIT_IMAGES = 12  # training images of the class whose crops the circuit is wired on
_QUIET_IMAGES = 96  # training images of the class on which decoys must be quiet


def planted_circuit_model(spec: ModelSpec, class_name: str = CIRCUIT_CLASS,
                          fan_in: dict[str, int] | None = None, *, distractors: bool = True) -> ModelSpec:
    """A copy of the default model in which ``class_name``'s logit is carried by known channels, recorded
    in ``spec.circuit``: ``{"class": name, "conv4": [...], "conv3": [...], "exact_null_layers": [...]}``
    and, with distractors, ``"distractors": {"conv4": {"correlated": [...], "decoys": [...]}}``.

    With distractors (``default-circuit``, the default) no weight is zeroed: the circuit is made to
    dominate while the other channels keep their trained weights, so finding it means ranking it above
    them. On crops (cut as NeurFlow cuts them) of training images of the class:

    - conv4: the ``fan_in["conv4"]`` channels of largest head weight x mean activation carry the logit:
      their head weights are raised until each one's mean contribution is ``CIRCUIT_MARGIN["conv4"]``
      times the 99th percentile of |contribution| of any other channel.
    - conv3: each circuit channel is carried by its own ``fan_in["conv3"]`` channels of a pool of
      :data:`CIRCUIT_POOL` (the conv3 channels of largest positive contribution to the circuit), those
      of largest contribution to it: each of their kernels into it is scaled up (a constant added
      where the contribution is not positive) until its mean contribution to the pre-activation is
      ``CIRCUIT_MARGIN["conv3"]`` times the 99th percentile of |contribution| of any other conv3
      channel; the batch-norm statistics of the rewired channels are then re-estimated on training
      images. The truth at conv3 is the union of those inputs (``"inputs"`` holds them per channel).
    - Distractors: :data:`CIRCUIT_TWINS` channels active on the class, of the smallest head weights,
      are wired to the pool in the same way (they correlate with circuit channels, 5 of 8 above 0.9 on
      the probe, yet carry little of the logit), and :data:`CIRCUIT_DECOYS` channels of other classes,
      quiet on the class, get a negative head weight as large as the circuit's median (a large
      gradient, a small contribution).
    - The class's bias is refitted (best accuracy on training images).

    Measured on the default probe's images of the class: masking the 16 circuit channels lowers the
    class logit by 37.6 (unmasked 14.9), masking the 16 other channels that lower it most one by one
    by 1.3; at conv3 41.0 against 4.6; the circuit carries 83% of |head weight x activation| there.
    Ranking conv4 by head weight finds 11 of the 16, by activation on the class 9, by correlation with
    the logit over the probe 12. The class's probe ROC-AUC is 0.73 (0.79 before).

    Built once (seconds), then cached in ``cache_dir()`` under a hash of the base weights and the
    settings. Every conv4 channel with a head weight is a conditional dependence of the logit, so no
    layer has the non-circuit channels as knockoff nulls: ``exact_null_layers`` is empty, and
    NeuCEPT's FDR cannot be checked against this truth (its precision and recall can).

    Without distractors (the zeroed construction, for unit tests; ``fan_in`` defaults to
    :data:`CIRCUIT_ZEROED_FAN_IN`): the head row keeps only the ``fan_in["conv4"]`` conv4 channels of
    largest weight x mean activation on rendered images of the class, each of those keeps only its
    ``fan_in["conv3"]`` conv3 inputs of largest weight norm x mean activation, every other weight of
    those rows is set to zero. Non-circuit channels then have exactly zero attribution, and the knockoff
    null "logit independent of channel j given the rest" holds exactly for conv4's channel means (the
    logit is linear in them): ``exact_null_layers`` is ``["conv4"]``. conv3's channel means do not
    determine the logit, so there a non-circuit channel can carry information about it.
    """
    import copy

    out = copy.copy(spec)
    if distractors:
        out.module, out.circuit = _cached_circuit(spec, class_name, fan_in or CIRCUIT_FAN_IN)
        out.name = "default-circuit"
    else:
        out.module, out.circuit = _zeroed_circuit(spec, class_name, fan_in or CIRCUIT_ZEROED_FAN_IN)
        out.name = "default-circuit-zeroed"
    out.module.eval()
    return out


def _zeroed_circuit(spec: ModelSpec, class_name: str, fan_in: dict[str, int]):
    """(module, truth) of the zeroed construction (see :func:`planted_circuit_model`)."""
    import copy

    import torch

    module = copy.deepcopy(spec.module)
    c = spec.classes.index(class_name)
    # Wire through channels that are active on images of the class (weight x mean activation), so
    # that every true core neuron carries signal.
    world = SyntheticWorld(n_images=64, size=spec.input_size, seed=777)
    images, _ = world.render(class_name, 64, seed=777)
    with torch.no_grad(), hooked(module, ["conv3", "conv4"]) as outs:
        module(spec.preprocess(images))
        act3, act4 = outs["conv3"].mean((0, 2, 3)), outs["conv4"].mean((0, 2, 3))
    with torch.no_grad():
        head = module.head.weight
        conv4 = module.conv4[0].weight  # [out, in, 3, 3]
        top4 = torch.argsort(head[c] * act4, descending=True)[: fan_in["conv4"]]
        keep = torch.zeros_like(head[c], dtype=torch.bool)
        keep[top4] = True
        head[c][~keep] = 0
        truth3 = set()
        for s in top4.tolist():
            norms = conv4[s].flatten(1).norm(dim=1) * act3
            top3 = torch.argsort(norms, descending=True)[: fan_in["conv3"]]
            mask = torch.zeros_like(norms, dtype=torch.bool)
            mask[top3] = True
            conv4[s][~mask] = 0
            truth3 |= set(top3.tolist())
    return module, {"class": class_name, "conv4": sorted(top4.tolist()), "conv3": sorted(truth3),
                    "exact_null_layers": ["conv4"]}


def _cached_circuit(spec: ModelSpec, class_name: str, fan_in: dict[str, int]):
    """(module, truth) of the construction with distractors, from the cache when built before with the
    same base weights and settings."""
    import copy
    import hashlib

    import torch

    settings = (_CIRCUIT_VERSION, class_name, sorted(fan_in.items()), sorted(CIRCUIT_MARGIN.items()),
                CIRCUIT_TWINS, CIRCUIT_DECOYS, CIRCUIT_POOL, _CIRCUIT_IMAGES, _QUIET_IMAGES)
    key = hashlib.sha256(repr(settings).encode())
    for name, tensor in spec.module.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().numpy().tobytes())
    path = os.path.join(cache_dir(), f"default-circuit-v{_CIRCUIT_VERSION}-{key.hexdigest()[:16]}.pt")
    module = copy.deepcopy(spec.module).cpu().eval()
    if os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(saved["state"])
        return module, saved["circuit"]
    truth = _plant_with_distractors(spec, module, class_name, fan_in)
    with atomic_path(path) as tmp:
        torch.save({"state": module.state_dict(), "circuit": truth}, tmp)
    return module, truth


def _plant_with_distractors(spec: ModelSpec, module, class_name: str, fan_in: dict[str, int]) -> dict:
    """Wire ``module`` (a copy of the default model) in place: pool -> circuit channels -> logit, as
    :func:`planted_circuit_model` describes; returns the truth."""
    import torch

    world = SyntheticWorld(n_images=DEFAULT_TRAIN_IMAGES, size=spec.input_size, seed=DEFAULT_TRAIN_SEED)
    k = world.concept_names.index(class_name)
    images = _class_examples(world, k, _QUIET_IMAGES)
    crops = _crops(spec, images[:_CIRCUIT_IMAGES])
    train = world.images(0, 512)
    present = np.array([k in world.image_concepts(i)[0] for i in range(len(train))])
    c = spec.classes.index(class_name)
    with torch.no_grad():
        x3, x4, _ = _conv_outputs(module, crops)
        top4, twins = _circuit_channels(module.head.weight[c], x4.mean((0, 2, 3)), fan_in["conv4"])
        wired = torch.cat([top4, twins])
        inputs = _wire_pool(module.conv4[0], x3, wired, len(top4), fan_in["conv3"])
        with hooked(module, ["conv4.0"]) as outs:
            module(spec.preprocess(train))
            z = outs["conv4.0"]
        module.conv4[1].running_mean[wired] = z.mean((0, 2, 3))[wired]
        module.conv4[1].running_var[wired] = z.var((0, 2, 3))[wired]
        decoys = _wire_head(module, crops, spec.preprocess(images), c, top4, twins)
        logits = module(spec.preprocess(train))[:, c].numpy()
        cuts = np.sort(logits)
        cuts = (cuts[1:] + cuts[:-1]) / 2
        accuracy = ((logits[None, :] > cuts[:, None]) == present[None, :]).mean(1)
        module.head.bias[c] -= float(cuts[int(np.argmax(accuracy))])
    truth3 = sorted({s for a in top4.tolist() for s in inputs[a]})
    return {"class": class_name, "conv4": sorted(top4.tolist()), "conv3": truth3,
            "inputs": {"conv3": {str(a): inputs[a] for a in sorted(top4.tolist())}}, "exact_null_layers": [],
            "distractors": {"conv4": {"correlated": sorted(twins.tolist()),
                                      "decoys": sorted(decoys.tolist())}}}


def _circuit_channels(weights, activation, size: int):
    """(circuit, twins): the ``size`` conv4 channels of largest head weight x mean activation on the
    class's crops, and the CIRCUIT_TWINS others, active on the class (above the median activation), of
    smallest |head weight|."""
    import torch

    top4 = torch.argsort(weights * activation, descending=True)[:size]
    rest = torch.ones(len(weights), dtype=torch.bool)
    rest[top4] = False
    rest &= activation > activation.median()
    candidates = torch.nonzero(rest).flatten()
    twins = candidates[torch.argsort(weights[candidates].abs())[:CIRCUIT_TWINS]]
    return top4, twins


def _class_examples(world: SyntheticWorld, concept: int, n_images: int) -> np.ndarray:
    """uint8 [n_images, S, S, 3]: the first ``n_images`` images of ``world`` that show ``concept``."""
    images = []
    for i in range(world.n_images):
        image, masks = world.sample(i)
        if masks[concept].any():
            images.append(image)
            if len(images) == n_images:
                break
    return np.stack(images)


def _crops(spec: ModelSpec, images: np.ndarray):
    """Model inputs [n_images * 59, 3, S, S]: ``images`` cut as NeurFlow cuts them (granularities 1, 0.5,
    0.25 of the side, stride half a crop; the whole images first)."""
    import torch

    size, parts = spec.input_size, []
    for g in (1.0, 0.5, 0.25):
        side = int(round(g * size))
        for y in range(0, size - side + 1, side // 2):
            for x in range(0, size - side + 1, side // 2):
                parts.append(spec.preprocess(np.ascontiguousarray(images[:, y : y + side, x : x + side])))
    return torch.cat(parts)


def _conv_outputs(module, x):
    """(conv3 maps, conv4 maps, logits) of model inputs ``x``."""
    with hooked(module, ["conv3", "conv4"]) as outs:
        logits = module(x)
        return outs["conv3"], outs["conv4"], logits


def _wire_pool(conv, x3, wired, n_circuit: int, fan_in: int):
    """Choose the pool (CIRCUIT_POOL conv3 channels of largest positive contribution to the first
    ``n_circuit`` channels of ``wired``, the circuit) and wire each ``wired`` channel to its own
    ``fan_in`` pool channels of largest contribution to it: each of those kernels is scaled up (or,
    where its contribution is not positive, a constant is added to it) until its mean contribution is
    CIRCUIT_MARGIN["conv3"] x the 99th percentile of |contribution| of any other conv3 channel.
    Returns {wired channel: its inputs}."""
    import torch
    import torch.nn.functional as F

    channels = x3.shape[1]
    # contribution of each input channel to each wired channel's pre-activation, spatial mean [n, T, C]
    parts = torch.stack([F.conv2d(x3, conv.weight[a].unsqueeze(1), padding=conv.padding, groups=channels)
                         .mean((2, 3)) for a in wired.tolist()], 1)
    mean = parts.mean(0)  # [T, C]
    pool = torch.argsort(mean[:n_circuit].clamp(min=0).sum(0), descending=True)[:CIRCUIT_POOL]
    # mean response of a constant kernel of sum 1 to each channel (zero padding, as the conv)
    box = F.avg_pool2d(x3, 3, 1, 1, count_include_pad=True).mean((0, 2, 3)).clamp(min=1e-6)
    inputs = {}
    for i, a in enumerate(wired.tolist()):
        own = pool[torch.argsort(mean[i, pool], descending=True)[:fan_in]]
        others = torch.ones(channels, dtype=torch.bool)
        others[own] = False
        floor = CIRCUIT_MARGIN["conv3"] * torch.quantile(parts[:, i, others].abs(), 0.99, dim=0).max()
        for s in own.tolist():
            if mean[i, s] > 0:
                conv.weight[a, s] *= max(1.0, float(floor / mean[i, s]))
            else:
                conv.weight[a, s] += float((floor - mean[i, s]) / box[s] / 9)
        inputs[a] = sorted(own.tolist())
    return inputs


def _wire_head(module, crops, images, c: int, top4, twins):
    """Raise the circuit channels' head weights on class ``c`` until each one's mean contribution on
    ``crops`` is CIRCUIT_MARGIN["conv4"] x the 99th percentile of |contribution| of any other channel;
    give the CIRCUIT_DECOYS decoys (of the other channels in the quietest tenth of the layer on the class,
    by 99th percentile of activation on the crops and on ``images``, more images of the class, those of
    largest weight on another class) a negative weight of the circuit's median size. Returns the
    decoys."""
    import torch

    _, x4, _ = _conv_outputs(module, crops)
    x4 = x4.mean((2, 3))
    head = module.head.weight
    contribution = x4 * head[c]
    others = torch.ones(head.shape[1], dtype=torch.bool)
    others[top4] = False
    floor = CIRCUIT_MARGIN["conv4"] * torch.quantile(contribution[:, others].abs(), 0.99, dim=0).max()
    head[c, top4] *= (floor / contribution[:, top4].mean(0).clamp(min=1e-6)).clamp(min=1)
    others[twins] = False
    _, whole, _ = _conv_outputs(module, images)
    # quiet on the class: low at the 99th percentile over its crops and over its whole images
    peak = torch.maximum(torch.quantile(x4, 0.99, dim=0), torch.quantile(whole.mean((2, 3)), 0.99, dim=0))
    candidates = torch.nonzero(others & (peak <= torch.quantile(peak, 0.1))).flatten()
    elsewhere = torch.cat([head[:c], head[c + 1 :]]).abs().max(0).values
    decoys = candidates[torch.argsort(elsewhere[candidates], descending=True)[:CIRCUIT_DECOYS]]
    head[c, decoys] = -head[c, top4].median()
    return decoys


def _train(module, world, *, progress: bool) -> None:
    """Multi-label concept presence with BCE; Adam; fixed seed, so the model is reproducible."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(0)
    images = world.images(0, world.n_images)
    targets = np.stack([world.sample(i)[1].any(axis=(1, 2)) for i in range(world.n_images)])
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    y = torch.from_numpy(targets).float()
    opt = torch.optim.Adam(module.parameters(), lr=2e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    module.train()
    steps = tqdm(range(DEFAULT_EPOCHS), desc="training the default model", disable=not progress, leave=False)
    g = torch.Generator().manual_seed(0)
    for _ in steps:
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 64):
            idx = order[s : s + 64]
            opt.zero_grad()
            loss = loss_fn(module(x[idx]), y[idx])
            loss.backward()
            opt.step()
        steps.set_postfix(loss=f"{loss.item():.3f}")
    module.eval()
