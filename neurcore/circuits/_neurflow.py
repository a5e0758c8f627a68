"""NeurFlow ("NeurFlow: Interpreting Neural Networks through Neuron Groups and Functional
Interactions", ICLR 2025; anchor repo tue147/neurflow): core concept neurons, semantic groups, neuron
groups and the concept circuit of a class, plus the group metric and fidelity by masking / retaining.

Shapes: crops [n_crops, 3, S, S] (normalised model inputs); a layer's channel means
[n_crops, C]; its maps [n_crops, C, h, w]. Levels of the circuit: level 0 is the class logit,
level i >= 1 holds core neurons of ``layers[i - 1]`` (top to bottom).

- Crops: granularities [1, 0.5, 0.25] of the image, stride 0.5 of the crop side (1 + 9 + 49 = 59
  per image), each resized to the model's input size.
- A neuron's concept: its top-k crops by channel mean (the logit for the class neuron).
- Importance of a lower neuron s for a: mean over a's crops of |spatial mean of the integrated
  gradients of a w.r.t. the lower layer| (zero baseline, 50 Gauss-Legendre steps), by
  :class:`neurcore.attribution.LayerToLayerIntegratedGradients`; core neurons = top tau.
- Semantic groups of a: its crops clustered (Ward, k in 2..5 by silhouette) by their channel
  means one layer down (own layer for the bottom level); edge weight of child s for group j =
  importance over that group's crops, L1-normalised over a's core neurons (equation 4).
- Neuron groups of a level: the semantic groups of its neurons re-clustered by their mean vectors
  (Ward, k up to 100 by silhouette); a node is one cluster and holds the neurons whose groups
  fell in it; node-to-node weight = sum of the member edge weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .._io import atomic_path
from ..attribution import LayerToLayerIntegratedGradients
from ..clustering import ward_silhouette
from ..errors import InputError
from ..models import as_maps, hooked, resolve_layer

if TYPE_CHECKING:
    import torch

    from ..models import ModelSpec

__all__ = ["NeurFlowConfig", "crop_grid", "make_crops", "NeurFlow", "group_metric", "CircuitLevel"]


@dataclass
class NeurFlowConfig:
    """NeurFlow's settings.

    granularities, stride: the crops (:func:`crop_grid`). top_k: crops in a neuron's concept.
    tau: core neurons kept per upper neuron. n_steps, method: the integrated-gradients quadrature.
    max_semantic_groups, max_neuron_groups: the largest k tried when clustering a neuron's crops and
    a level's semantic groups. exemplars: crops shown per node. batch_size: crops per forward pass.
    """

    granularities: tuple = (1.0, 0.5, 0.25)
    stride: float = 0.5
    top_k: int = 50
    tau: int = 16
    n_steps: int = 50
    method: str = "gausslegendre"
    max_semantic_groups: int = 5
    max_neuron_groups: int = 100
    exemplars: int = 5
    batch_size: int = 128


def crop_grid(size: int, granularities: Sequence[float] = (1.0, 0.5, 0.25),
              stride: float = 0.5) -> np.ndarray:
    """int [n_boxes, 4] (top, left, bottom, right) of square crops of an image ``size`` pixels wide.

    Per granularity g in (0, 1], squares of side ``round(g * size)`` pixels, ``stride`` of the side
    apart, row-major; granularities in the given order.
    """
    boxes = []
    for g in granularities:
        if not 0 < g <= 1:
            raise InputError(f"crop granularities must be in (0, 1], got {g}")
        side = max(1, int(round(g * size)))
        step = max(1, int(round(stride * side)))
        starts = list(range(0, size - side + 1, step))
        boxes += [(y, x, y + side, x + side) for y in starts for x in starts]
    if not boxes:
        raise InputError(f"the crop configuration (granularities {granularities}, stride {stride}) yields "
                         f"no crops of a {size}-pixel image")
    return np.array(boxes, dtype=np.int64)


def make_crops(spec: ModelSpec, images: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
    """Normalised model inputs [n_images * n_boxes, 3, S, S] (image-major) from uint8 [N, H, W, 3]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    out = []
    for t, l, b, r in boxes:
        out.append(F.interpolate(x[:, :, t:b, l:r], size=(spec.input_size, spec.input_size), mode="bilinear",
                                 align_corners=False))
    crops = torch.stack(out, 1).reshape(-1, 3, spec.input_size, spec.input_size)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (crops - mean) / std


def group_metric(channel_means: np.ndarray, neurons: Sequence[int] | np.ndarray, max_activation: np.ndarray,
                 eps: float = 1e-6) -> np.ndarray:
    """NeurFlow's M(v) = exp(mean_s log(phi_s(v) / max phi_s)) over a group's neurons s, float [n]:
    near 1 only when every neuron of the group is near its maximum on v.

    channel_means: [n, C], phi_s(v) for n inputs v; max_activation: [C], each channel's maximum;
    ratios are clipped below at ``eps``.
    """
    neurons = np.asarray(neurons, dtype=np.int64)
    ratio = channel_means[:, neurons] / np.maximum(max_activation[neurons], eps)
    return np.exp(np.log(np.clip(ratio, eps, None)).mean(axis=1))


@dataclass
class CircuitLevel:
    """One level of the circuit: its layer (None for the logit), its neurons with their concepts
    (top crops), semantic groups, importance of their children and the neuron groups (nodes)."""

    layer: str | None
    neurons: list[int]
    top_crops: dict[int, np.ndarray] = field(default_factory=dict)
    #: neuron -> group label per top crop
    groups: dict[int, np.ndarray] = field(default_factory=dict)
    #: neuron -> [n_groups, d], each group's mean vector
    group_vectors: dict[int, np.ndarray] = field(default_factory=dict)
    #: neuron -> core neurons one level down
    children: dict[int, list[int]] = field(default_factory=dict)
    #: neuron -> [C_lower] mean |IG|
    importance: dict[int, np.ndarray] = field(default_factory=dict)
    #: neuron -> [n_groups, len(children)]
    edge_weights: dict[int, np.ndarray] = field(default_factory=dict)
    #: (neuron, semantic group) -> neuron-group node
    node_of_group: dict[tuple[int, int], int] = field(default_factory=dict)
    n_nodes: int = 0


class NeurFlow:
    """The NeurFlow pipeline for one class over ``layers`` (top to bottom) of ``spec.module``.

    NeurFlow ("NeurFlow: Interpreting Neural Networks through Neuron Groups and Functional
    Interactions", ICLR 2025): from the class logit down, each level's core neurons are the lower
    neurons of highest integrated-gradients importance for the neurons above; each neuron's concept
    (its top crops) is split into semantic groups, and the semantic groups of a level are clustered
    into neuron groups, the nodes of the circuit. ``run(images, class_index)`` with uint8
    [N, H, W, 3] images of the class that the model gets right returns the list of
    :class:`CircuitLevel`; the crops and each layer's channel means stay on the object (``crops``,
    ``means``) for exemplars, the group metric and reports.

    Args:
        spec: the model and how to feed it.
        layers: dotted names of the layers below the logit, top to bottom.
        config: the settings (defaults: :class:`NeurFlowConfig`).
        backend: the integrated-gradients kernel (:func:`~neurcore.attribution.ig_accumulate`).
        device: where the model runs.
        progress: show a progress bar over the layer pairs.
        parts_dir: a directory where finished layer pairs are saved and reused on a rerun.
    """

    def __init__(self, spec: ModelSpec, layers: Sequence[str], config: NeurFlowConfig | None = None, *,
                 backend: str | None = None, device: str | torch.device = "cpu", progress: bool = False,
                 parts_dir: str | None = None):
        self.spec, self.layers = spec, list(layers)
        if not self.layers:
            raise InputError("NeurFlow needs at least one layer below the logit")
        for name in self.layers:
            resolve_layer(spec.module, name)
        self.config = config or NeurFlowConfig()
        self.backend, self.device, self.progress = backend, device, progress
        self.parts_dir = parts_dir  # finished layer pairs are saved here and reused on a rerun
        self.ig = {}  # (lower, upper) -> LayerToLayerIntegratedGradients

    def _pair(self, lower, upper):
        if (lower, upper) not in self.ig:
            self.ig[(lower, upper)] = LayerToLayerIntegratedGradients(self.spec.module, lower, upper,
                                                                      backend=self.backend)
        return self.ig[(lower, upper)]

    def forward_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Every crop [n, 3, S, S] through the model once; returns the logits [n, classes] (float32,
        CPU) and keeps them (``logits``), each layer's maps [n, C, h, w] (``maps``) and channel means
        [n, C] (``means``, numpy) on the object."""
        import torch

        module = self.spec.module.to(self.device)
        logits, means, maps = [], {n: [] for n in self.layers}, {n: [] for n in self.layers}
        with torch.no_grad(), hooked(module, self.layers) as outs:
            for s in range(0, len(crops), self.config.batch_size):
                logits.append(module(crops[s : s + self.config.batch_size].to(self.device)).float().cpu())
                for n in self.layers:
                    m = as_maps(outs[n]).float()
                    maps[n].append(m.cpu())
                    means[n].append(m.mean((2, 3)).cpu())
        self.logits = torch.cat(logits)
        self.maps = {n: torch.cat(v) for n, v in maps.items()}
        self.means = {n: torch.cat(v).numpy() for n, v in means.items()}
        return self.logits

    def run(self, images: np.ndarray, class_index: int) -> list[CircuitLevel]:
        """The concept circuit of class ``class_index`` on ``images``, uint8 [N, H, W, 3] (square).

        Steps: the images are cut into crops (:func:`crop_grid`, :func:`make_crops`) and run through
        the model; level 0 holds the class logit; going down the layers, each neuron's concept is
        its ``top_k`` crops, the importance of the lower layer's channels for it is their mean
        |integrated gradients| over those crops, its core neurons are the ``tau`` most important
        (non-zero) ones and form the next level, and its crops are split into semantic groups with
        the edge weights of its core neurons per group; the bottom level's concepts and groups are
        taken in its own layer. Last, each level's semantic groups are clustered into neuron groups.

        Returns the levels, top (the logit) to bottom, also kept as ``levels``.
        """
        cfg = self.config
        self.boxes = crop_grid(images.shape[1], cfg.granularities, cfg.stride)
        self.crops = make_crops(self.spec, images, self.boxes)
        self.forward_crops(self.crops)
        n_classes = self.logits.shape[1]
        if not 0 <= class_index < n_classes:
            raise InputError(f"class index {class_index} is not an output of the model ({n_classes} outputs)")
        k = min(cfg.top_k, len(self.crops))
        levels = [CircuitLevel(None, [int(class_index)])]
        scores_of = {None: self.logits.numpy()}
        scores_of.update(self.means)
        from tqdm import tqdm

        for lower in tqdm(self.layers, desc="NeurFlow layer pairs", disable=not self.progress, leave=False):
            levels.append(self._level_below(levels[-1], lower, scores_of[levels[-1].layer], k))
        self._bottom_concepts(levels[-1], k)
        for level in levels:
            self._neuron_groups(level)
        self.levels = levels
        return levels

    def _level_below(self, level: CircuitLevel, lower: str, ranking: np.ndarray, k: int) -> CircuitLevel:
        """Fill in ``level``'s concepts (top k crops by ``ranking`` [n_crops, C]), importance, core
        neurons, semantic groups (in ``lower``'s space) and edge weights; returns the level of
        ``lower``, holding the core neurons."""
        for a in level.neurons:
            level.top_crops[a] = np.argsort(-ranking[:, a], kind="stable")[:k]
        targets = list(level.neurons)
        if not targets:  # no neuron above had a non-zero importance: the circuit ends here
            return CircuitLevel(lower, [])
        examples = np.stack([level.top_crops[a] for a in targets])
        ig = self._importance(lower, level.layer, targets, examples)   # |IG| [T, k, C_lower]
        next_neurons = []
        for i, a in enumerate(targets):
            imp = ig[i].mean(0)
            order = np.argsort(-imp, kind="stable")
            core = [int(s) for s in order[: self.config.tau] if imp[s] > 0]
            level.importance[a] = imp
            level.children[a] = core
            labels, n_groups = self._semantic_groups(level, a, self.means[lower])
            w = np.stack([ig[i][labels == j][:, core].mean(0) if core else np.zeros(0)
                          for j in range(n_groups)])
            level.edge_weights[a] = w / np.maximum(w.sum(1, keepdims=True), 1e-30)
            next_neurons += [s for s in core if s not in next_neurons]
        return CircuitLevel(lower, sorted(next_neurons))

    def _bottom_concepts(self, bottom: CircuitLevel, k: int) -> None:
        """The bottom level's concepts and semantic groups, in its own layer's space."""
        own = self.means[bottom.layer]
        for a in bottom.neurons:
            bottom.top_crops[a] = np.argsort(-own[:, a], kind="stable")[:k]
            self._semantic_groups(bottom, a, own)

    def _semantic_groups(self, level: CircuitLevel, a: int, space: np.ndarray) -> tuple[np.ndarray, int]:
        """Neuron ``a``'s top crops clustered (Ward, k by silhouette) by their rows of ``space``
        [n_crops, d]; sets ``level.groups[a]`` and ``level.group_vectors[a]``, returns (labels, k)."""
        vectors = space[level.top_crops[a]]
        labels, n_groups = ward_silhouette(vectors, self.config.max_semantic_groups)
        level.groups[a] = labels
        level.group_vectors[a] = np.stack([vectors[labels == j].mean(0) for j in range(n_groups)])
        return labels, n_groups

    def _importance(self, lower, upper, targets, examples) -> np.ndarray:
        import hashlib
        import os

        import torch

        path = None
        if self.parts_dir:
            key = hashlib.sha256(repr((lower, upper, targets, examples.tolist(), self.config.n_steps,
                                       self.config.method)).encode()).hexdigest()[:16]
            path = os.path.join(self.parts_dir, f"ig-{lower}-{key}.npy")
            if os.path.isfile(path):
                return np.load(path)
        ig = self._pair(lower, upper).attribute(self.maps[lower].to(self.device), torch.as_tensor(targets),
                                                torch.as_tensor(examples), n_steps=self.config.n_steps,
                                                method=self.config.method).abs().cpu().numpy()
        if path:
            os.makedirs(self.parts_dir, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, ig)
        return ig

    def _neuron_groups(self, level: CircuitLevel) -> None:
        keys = [(a, j) for a in level.neurons for j in range(len(level.group_vectors.get(a, [])))]
        if level.layer is None or not keys:
            level.node_of_group = {key: 0 for key in keys}
            level.n_nodes = 1 if keys else 0
            return
        vectors = np.stack([level.group_vectors[a][j] for a, j in keys])
        labels, n = ward_silhouette(vectors, self.config.max_neuron_groups)
        level.node_of_group = {key: int(lab) for key, lab in zip(keys, labels)}
        level.n_nodes = n

    # ----------------------------------------------------------------- circuit
    def nodes(self, level_index: int) -> list[dict]:
        """The neuron-group nodes of a level: members and exemplar crops (nearest their centre)."""
        level = self.levels[level_index]
        layer = self.layers[level_index] if level_index < len(self.layers) else level.layer
        space = self.means[layer]
        out = []
        for g in range(level.n_nodes):
            members = [(a, j) for (a, j), node in level.node_of_group.items() if node == g]
            neurons = sorted({a for a, _ in members})
            crops = np.unique(np.concatenate([level.top_crops[a][level.groups[a] == j] for a, j in members]))
            centre = np.mean([level.group_vectors[a][j] for a, j in members], axis=0)
            nearest = crops[np.argsort(np.linalg.norm(space[crops] - centre, axis=1), kind="stable")]
            out.append({"group": g, "neurons": neurons,
                        "exemplar_crops": nearest[: self.config.exemplars].tolist(),
                        "semantic_groups": [[int(a), int(j)] for a, j in members]})
        return out

    def edges(self, level_index: int) -> list[tuple[int, int, float]]:
        """(upper node, lower node, weight) between level i and i + 1: the sum of member edge weights
        w(a, s, V_aj) over semantic groups (a, j) of the upper node and children s in the lower node."""
        upper, lower = self.levels[level_index], self.levels[level_index + 1]
        lower_nodes = {}
        for (s, _), node in lower.node_of_group.items():
            lower_nodes.setdefault(s, set()).add(node)
        total = {}
        for (a, j), node in upper.node_of_group.items():
            for ci, s in enumerate(upper.children.get(a, [])):
                for ln in lower_nodes.get(s, ()):
                    total[(node, ln)] = total.get((node, ln), 0.0) + float(upper.edge_weights[a][j, ci])
        return [(u, low, w) for (u, low), w in sorted(total.items())]

    def core_neurons(self) -> dict[str, list[int]]:
        """Core neurons per layer: the union of the children found for the level above."""
        return {lv.layer: list(lv.neurons) for lv in self.levels[1:]}

    def crop_image(self, crop: int) -> np.ndarray:
        """uint8 [S, S, 3] picture of a crop (de-normalised)."""
        mean = np.array(self.spec.mean).reshape(3, 1, 1)
        std = np.array(self.spec.std).reshape(3, 1, 1)
        x = self.crops[crop].numpy() * std + mean
        return (np.clip(x, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)

