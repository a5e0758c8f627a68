"""Models to dissect: any ``torch.nn.Module`` with layers named by dotted paths, torchvision
models by name (weights from a local file), and the embedded default model.

The default model is a small CNN trained on the synthetic concept world to
predict which concepts an image contains (multi-label), on the CPU in about a
minute, and cached. It comes with planted units: extra channels appended to
``conv4`` whose activation is a known formula of the probe's exact concept
maps (area-averaged to the layer's resolution, scaled by a random strength
per image, plus noise), so every run can report how many planted
explanations it recovered. They exist only where the probe has exact concept
maps (the synthetic world).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

import numpy as np

from ._atomic import atomic_path
from .errors import InputError
from .formula import Formula, parse

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_MODELS = ("resnet18", "resnet50", "vit_b_16")


@dataclass
class ModelSpec:
    """A module to dissect and how to feed it: input size (pixels), per-channel mean and std on [0, 1]."""

    module: object
    name: str = "model"
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    planted: list["PlantedUnit"] = field(default_factory=list)
    classes: list[str] | None = None   # output names, when known
    multilabel: bool = False           # outputs are independent logits (predicted when > 0), not argmax
    circuit: dict | None = None        # planted circuit truth: {"class": name, layer: [channels], ...}


@dataclass(frozen=True)
class PlantedUnit:
    """A unit appended to ``layer`` whose activation is ``formula`` of the probe's concept maps
    (a concept detector when the formula is one concept), or, when ``weights`` is given instead,
    the linear mixture sum_k w_k * map_k of concept maps ((name, weight) pairs; LinEx's truth)."""

    layer: str
    formula: Formula | None = None
    noise: float = 0.05
    weights: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self):
        if (self.formula is None) == (self.weights is None):
            raise ValueError("PlantedUnit: give exactly one of formula and weights")

    @property
    def label(self) -> str:
        """The planted truth as text: the formula, or the mixture as ``1*sky + 2*circle - 2*red``."""
        if self.formula is not None:
            return str(self.formula)
        return " ".join(f"{'-' if w < 0 else '+'} {abs(w):g}*{n}" for n, w in self.weights).lstrip("+ ")


def resolve_layer(module, name: str):
    """The submodule at dotted path ``name``; an unknown name lists close matches."""
    modules = dict(module.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"layer {name!r} not found in the model{hint}")


def cache_dir() -> str:
    return os.environ.get("NEURCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "neurcore")


def load_model(name: str, weights: str | None = None, *, progress: bool = True) -> ModelSpec:
    """``default`` (trained and cached on first use) or a torchvision model by name.

    weights: a local state-dict file (``torch.save(model.state_dict())``);
    without it torchvision models keep random weights, seeded so that every run draws the same.
    """
    if name in ("default", "default-circuit"):
        if weights:
            raise InputError("--weights: the default model brings its own weights")
        spec = default_model(progress=progress)
        return planted_circuit_model(spec) if name == "default-circuit" else spec
    if name not in TORCHVISION_MODELS:
        raise InputError(f"model {name!r}: expected default, default-circuit or one of "
                         f"{', '.join(TORCHVISION_MODELS)}")
    import torch
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(0)  # random weights, but the same in every run (resumes must agree)
        module = torchvision.models.get_model(name, weights=None)
    if weights:
        if not os.path.isfile(weights):
            raise InputError(f"{weights}: no such weights file")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a bad file
            raise InputError(f"{weights}: not a readable torch state dict ({exc})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(f"{weights}: does not fit {name}: {first}") from None
    module.eval()
    return ModelSpec(module=module, name=name, input_size=224)


# ------------------------------------------------------------ the default model
DEFAULT_TRAIN_IMAGES = 4000
DEFAULT_TRAIN_SEED = 12345
DEFAULT_EPOCHS = 6
_DEFAULT_VERSION = 1

#: Planted units of the default model, appended to conv4: single concepts and length-2/3
#: formulas whose every prefix is itself a good explanation (the regime beam search covers).
DEFAULT_PLANTED = [
    "sky", "grass", "water", "circle", "triangle", "red", "striped", "room",
    "(red AND circle)", "(sky OR water)", "(blue AND NOT sky)", "(square AND dotted)", "(grass OR sand)",
    "(triangle AND NOT green)", "(wall AND NOT room)", "(yellow AND circle)",
    "((sky OR cloud) AND NOT beach)", "((circle OR ring) AND NOT blue)", "((water OR sand) OR road)",
    "((red AND square) OR bar)",
]
#: Planted linear units of the default model, appended to conv4 after the formula units: mixtures of
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
        __import__("collections").OrderedDict(
            conv1=block(3, 32, True), conv2=block(32, 64, True), conv3=block(64, 128, True),
            conv4=block(128, 128, False), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
            head=nn.Linear(128, n_outputs),
        )
    )


def default_model(*, progress: bool = True) -> ModelSpec:
    """The embedded default model: trained on first use (about a minute on 2 cores), then cached."""
    import torch

    from .probe.synthetic import SyntheticWorld

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
               + [PlantedUnit("conv4", weights=w) for w in DEFAULT_PLANTED_LINEAR])
    return ModelSpec(module=module, name="default", input_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     planted=planted, classes=list(world.concept_names), multilabel=True)


#: The planted circuit of ``default-circuit``: the class, and how many channels feed each node.
CIRCUIT_CLASS = "circle"
CIRCUIT_FAN_IN = {"conv4": 12, "conv3": 3}  # 12 >= 1 / fdr: knockoff+ at fdr 0.1 selects no fewer than 10


def planted_circuit_model(spec: ModelSpec, class_name: str = CIRCUIT_CLASS, fan_in=None) -> ModelSpec:
    """A copy of the default model in which ``class_name``'s logit is wired through known channels:
    its head row keeps only the ``fan_in["conv4"]`` conv4 channels of largest weight x mean activation
    on rendered images of the class, and each of those keeps only its ``fan_in["conv3"]`` conv3
    input channels of largest weight norm x mean activation
    (every other weight of those rows is set to zero). The logit then depends on those conv4
    channels alone (pooling and the head are linear), and each of them on its conv3 channels alone
    (batch norm and ReLU act per channel), so ``spec.circuit`` holds the true core neurons."""
    import copy

    import torch

    from .activations import _inputs, hooked
    from .probe.synthetic import SyntheticWorld

    fan_in = fan_in or CIRCUIT_FAN_IN
    module = copy.deepcopy(spec.module)
    c = spec.classes.index(class_name)
    # Wire through channels that are active on images of the class (weight x mean activation), so
    # that every true core neuron carries signal.
    world = SyntheticWorld(n_images=64, size=spec.input_size, seed=777)
    images, _ = world.render(class_name, 64, seed=777)
    with torch.no_grad(), hooked(module, ["conv3", "conv4"]) as outs:
        module(_inputs(spec, images))
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
