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


#: The planted circuit of ``default-circuit``: the class, and how many channels feed each node.
CIRCUIT_CLASS = "circle"
CIRCUIT_FAN_IN = {"conv4": 12, "conv3": 3}  # 12 >= 1 / fdr: knockoff+ at fdr 0.1 selects no fewer than 10


def planted_circuit_model(spec: ModelSpec, class_name: str = CIRCUIT_CLASS,
                          fan_in: dict[str, int] | None = None) -> ModelSpec:
    """A copy of the default model in which ``class_name``'s logit is wired through known channels:
    its head row keeps only the ``fan_in["conv4"]`` conv4 channels of largest weight x mean activation
    on rendered images of the class, and each of those keeps only its ``fan_in["conv3"]`` conv3
    input channels of largest weight norm x mean activation
    (every other weight of those rows is set to zero). The logit then depends on those conv4
    channels alone (pooling and the head are linear), and each of them on its conv3 channels alone
    (batch norm and ReLU act per channel), so ``spec.circuit`` holds the true core neurons.
    ``fan_in`` defaults to :data:`CIRCUIT_FAN_IN`."""
    import copy

    import torch

    fan_in = fan_in or CIRCUIT_FAN_IN
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
    out = copy.copy(spec)
    out.module, out.name = module.eval(), "default-circuit"
    # The knockoff null "y independent of X_j given the rest" holds exactly for conv4's channel means
    # (the logit is linear in them); conv3's channel means do not determine the logit, so there a
    # non-circuit channel can carry information about it and NeuCEPT's FDR is not checkable.
    out.circuit = {"class": class_name, "conv4": sorted(top4.tolist()), "conv3": sorted(truth3),
                   "exact_null_layers": ["conv4"]}
    return out


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
