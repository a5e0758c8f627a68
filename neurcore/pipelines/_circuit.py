"""``neurcore circuit``: the circuit of one class, by NeurFlow or NeuCEPT, written to a folder.

Outputs (each replaced atomically): ``circuit.json`` (layers top to bottom, nodes with member
neurons and exemplar crops, weighted edges, the fidelity rows, and, when the model has a planted
circuit of the class, its truth and per layer ``metrics``: precision and recall of the core
neurons at NeurFlow's ``tau`` or NeuCEPT's target ``fdr``, and NeuCEPT's empirical false discovery
rate on layers where the knockoff null holds exactly), ``fidelity.csv``, ``results.jsonl`` (one
row per circuit neuron in the shared schema), ``circuit.html`` and ``crops/``. Finished layers are
kept under ``parts/`` and reused by a rerun with the same settings.

``fidelity.csv`` (:func:`neurcore.circuits.fidelity`) has one row per layer, scope and mode, on the
class's images when the core neurons are masked or alone retained, against random sets of equal
size, per layer and cumulatively from the classifier down. Columns: ``layer``; ``scope`` ("layer" or
"cumulative"); ``mode`` ("mask" or "retain"); ``k`` (core neurons of the layer); ``core``,
``random_mean``, ``random_std`` (fraction of the images still predicted as the class: core set,
random sets' mean and sample std); ``core_logit``, ``random_logit_mean``, ``random_logit_std``
(the class's mean logit as a fraction of ``base_logit``); ``core_logit_drop``,
``random_logit_drop`` (1 - those fractions: the share of the logit lost); ``logit_z``
((core_logit - random_logit_mean) / random_logit_std, empty when the std is 0: how many random
standard deviations the core set is from chance, which still separates them where accuracy is
saturated); ``base_logit`` (the unmasked mean class logit); ``n_random``; ``n_images``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from .._io import atomic_open, write_json, write_png
from ..attribution import layer_function
from ..circuits import (
    NeurFlow,
    NeurFlowConfig,
    class_images,
    class_index,
    critical_neurons,
    fidelity,
    layer_means,
    mechanisms,
    output_shapes,
)
from ..errors import BackendUnavailable, InputError
from ..models import ModelSpec, load_model, resolve_layer
from ..probe import Probe
from ..report import write_circuit_html
from ..results import Explanation, write_jsonl
from ._setup import open_probe_for

__all__ = ["circuit"]

METHODS = ("neurflow", "neucept")
FIDELITY_COLUMNS = ["layer", "scope", "mode", "k", "core", "random_mean", "random_std", "core_logit",
                    "random_logit_mean", "random_logit_std", "core_logit_drop", "random_logit_drop",
                    "logit_z", "base_logit", "n_random", "n_images"]


def _precision_recall(found, truth) -> dict:
    found, truth = set(found), set(truth)
    hit = len(found & truth)
    return {"precision": round(hit / len(found), 4) if found else 0.0,
            "recall": round(hit / len(truth), 4) if truth else 1.0, "found": len(found), "true": len(truth)}


def _empirical_fdr(runs: list[list[int]], truth: list[int], layer: str, planted: dict) -> float | None:
    """NeuCEPT's false discovery proportion against the planted truth, averaged over the runs, on a layer
    where every non-circuit channel is an exact knockoff null (``planted["exact_null_layers"]``); None
    elsewhere: there a non-circuit channel the output depends on is a true discovery for the knockoffs,
    so the FDR they control is not the share of selections outside the planted circuit."""
    if layer not in planted.get("exact_null_layers", []):
        return None
    return round(float(np.mean([len(set(r) - set(truth)) / max(1, len(r)) for r in runs])), 4)


def _save_png(path: str, image: np.ndarray) -> None:
    """An exemplar image, scaled to 96 x 96 (nearest), as a PNG at ``path``."""
    from PIL import Image

    write_png(path, np.asarray(Image.fromarray(image).resize((96, 96), Image.NEAREST)))


def circuit(model: str | ModelSpec = "default", class_name: str | None = None,
            layers: Sequence[str] = ("conv4", "conv3"), out: str = "circuit", *, method: str = "neurflow",
            probe: str | Probe = "default", max_images: int = 40, tau: int = 16, top_k: int = 50,
            n_steps: int = 50, fdr: float = 0.1, n_runs: int = 10, n_random: int = 20, device: str = "cpu",
            backend: str | None = None, weights: str | None = None, progress: bool = True) -> dict:
    """Build the circuit of ``class_name`` over ``layers`` (top to bottom) and write it to ``out``.

    method: "neurflow" (core concept neurons by integrated gradients over ``top_k`` crops per neuron,
    ``tau`` per neuron, ``n_steps`` steps; "NeurFlow: Interpreting Neural Networks through Neuron Groups
    and Functional Interactions", ICLR 2025) or "neucept" (critical neurons by model-X knockoffs at
    false discovery rate ``fdr`` over ``n_runs`` runs; Vu, Nguyen, Thai, "NeuCEPT: Locally Discover
    Neural Networks' Mechanism via Critical Neurons Identification with Precision Guarantee").
    model: a reference :func:`~neurcore.models.load_model` takes (with ``weights``, a state dict or
    safetensors file) or a :class:`~neurcore.models.ModelSpec`.
    class_name: a class of the model or an output index (None: the planted circuit's class).
    max_images: probe images of the class the model gets right that are explained; n_random: random
    neuron sets of equal size that fidelity compares the core neurons with. Returns the circuit as
    written to ``circuit.json``.
    """
    spec, layers, class_name = _set_up(model, weights, class_name, layers, method, progress)
    _check_device(device)
    spec.module.to(device).eval()
    n_outputs, channels = output_shapes(spec, layers, device)
    c = class_index(spec, class_name, n_outputs)
    probe = open_probe_for(spec, probe) if isinstance(probe, str) else probe
    settings = {"model": spec.name, "class": class_name, "layers": layers, "method": method, "tau": tau,
                "top_k": top_k, "n_steps": n_steps, "fdr": fdr, "n_runs": n_runs, "max_images": max_images}
    if weights:  # recorded only when given, so folders of runs without weights still resume
        settings["weights"] = weights
    _check_manifest(out, settings)
    images, _ = class_images(spec, probe, c, max_images=max_images, device=device)
    parts = os.path.join(out, "parts")
    if method == "neurflow":
        doc, rows, core = _neurflow(spec, images, c, layers, out, parts, tau, top_k, n_steps, device, backend,
                                    progress)
    else:
        doc, rows, core = _neucept(spec, probe, images, c, layers, out, parts, fdr, n_runs, device)
    doc.update({"model": spec.name, "class": class_name, "class_index": c, "method": method,
                "n_images": int(len(images))})
    _add_truth(doc, spec, class_name, layers, core,
               {"tau": tau} if method == "neurflow" else {"target_fdr": fdr})
    doc["fidelity"] = fidelity(spec, images, c, {k: v for k, v in core.items() if v}, channels,
                               n_random=n_random, device=device)
    _write_circuit(out, doc, rows)
    return doc


def _set_up(model: str | ModelSpec, weights: str | None, class_name: str | None, layers: Sequence[str],
            method: str, progress: bool) -> tuple[ModelSpec, list[str], str]:
    """(model, layers, class name), checked before any work: each layer feeds the one above it."""
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    spec = load_model(model, weights, progress=progress) if isinstance(model, str) else model
    layers = list(layers)
    if not layers:
        raise InputError("--layers: name at least one layer")
    for upper, lower in zip([None] + layers[:-1], layers):
        resolve_layer(spec.module, lower)
        layer_function(spec.module, lower, upper if method == "neurflow" else None)
    if class_name is None:
        if not spec.circuit:
            raise InputError("--class is needed for a model without a planted circuit")
        class_name = spec.circuit["class"]
    return spec, layers, class_name


def _check_device(device: str) -> None:
    """A CUDA device must be usable here before the model moves to it."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(f"--device {device}: no usable CUDA device here (torch sees none)")


def _check_manifest(out: str, settings: dict) -> None:
    """Record the settings in ``out/manifest.json``; a folder with a circuit of other settings is refused."""
    os.makedirs(out, exist_ok=True)
    manifest = os.path.join(out, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            if json.load(f) != settings:
                raise InputError(f"{out} holds a circuit made with other settings; choose another --out or "
                                 "remove it")
    write_json(manifest, settings)


def _add_truth(doc: dict, spec: ModelSpec, class_name: str, layers: list[str], core: dict,
               setting: dict) -> None:
    """With a planted circuit of this class: its truth per layer, and the precision and recall of the
    core at ``setting`` (NeurFlow's tau or NeuCEPT's fdr), beside any metrics the method added."""
    if not (spec.circuit and spec.circuit.get("class") == class_name):
        return
    truth = {k: v for k, v in spec.circuit.items() if k in layers}
    doc["truth"] = truth
    metrics = doc.get("metrics", {})
    doc["metrics"] = {name: {**_precision_recall(core.get(name, []), t), **setting, **metrics.get(name, {})}
                      for name, t in truth.items()}


def _write_circuit(out: str, doc: dict, rows: list[Explanation]) -> None:
    """``fidelity.csv``, ``results.jsonl``, ``circuit.json`` and ``circuit.html``, each atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, FIDELITY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(doc["fidelity"])
    with atomic_open(os.path.join(out, "fidelity.csv"), "w") as f:
        f.write(buf.getvalue())
    write_jsonl(os.path.join(out, "results.jsonl"), rows)
    write_json(os.path.join(out, "circuit.json"), doc)
    write_circuit_html(out, doc)


def _neurflow(spec: ModelSpec, images: np.ndarray, c: int, layers: list[str], out: str, parts: str, tau: int,
              top_k: int, n_steps: int, device: str, backend: str | None, progress: bool):
    """NeurFlow's circuit as nodes (neuron groups, with exemplar crops saved under ``out/crops``) and edges
    normalised per source, one result row per circuit neuron, and the core neurons per layer."""
    nf = NeurFlow(spec, layers, NeurFlowConfig(tau=tau, top_k=top_k, n_steps=n_steps), backend=backend,
                  device=device, progress=progress, parts_dir=parts)
    levels = nf.run(images, c)
    names = ["logit"] + layers
    nodes, edges, rows = [], [], []
    for i, level in enumerate(levels):
        for node in nf.nodes(i):
            crops = []
            for j, crop in enumerate(node["exemplar_crops"]):
                rel = f"crops/{names[i]}_{node['group']}_{j}.png"
                _save_png(os.path.join(out, rel), nf.crop_image(crop))
                crops.append(rel)
            nodes.append({"id": f"{names[i]}/{node['group']}", "layer": names[i], "group": node["group"],
                          "neurons": node["neurons"], "exemplars": crops, "label": None,
                          "importance": 1.0 if i == 0 else None})
        if i + 1 < len(levels):
            for u, low, w in nf.edges(i):
                edges.append({"source": f"{names[i]}/{u}", "target": f"{names[i + 1]}/{low}", "weight": w})
    # a node's importance: the total weight flowing into it from above
    inflow = {}
    for e in edges:
        inflow[e["target"]] = inflow.get(e["target"], 0.0) + e["weight"]
    for n in nodes:
        if n["importance"] is None:
            n["importance"] = round(inflow.get(n["id"], 0.0), 6)
    for i, level in enumerate(levels[:-1]):
        for a in level.neurons:
            rows.append(Explanation(unit=int(a), method="neurflow", formula=None, iou=None, layer=names[i],
                                    extra={"class": int(c), "core": level.children[a],
                                           "importance": [round(float(level.importance[a][s]), 8)
                                                          for s in level.children[a]],
                                           "semantic_groups": int(level.edge_weights[a].shape[0])}))
    # normalise each source's outgoing weights to sum to 1 (L1), as the view expects
    out_sum = {}
    for e in edges:
        out_sum[e["source"]] = out_sum.get(e["source"], 0.0) + e["weight"]
    for e in edges:
        e["weight"] = round(e["weight"] / out_sum[e["source"]], 6) if out_sum[e["source"]] > 0 else 0.0
    core = nf.core_neurons()
    return {"layers": names, "nodes": nodes, "edges": edges}, rows, core


def _neucept(spec: ModelSpec, probe: Probe, class_imgs: np.ndarray, c: int, layers: list[str], out: str,
             parts: str, fdr: float, n_runs: int, device: str):
    """NeuCEPT's critical neurons per layer (on up to 1,000 probe images; each layer's runs saved under
    ``parts`` and reused), one node per layer with its mechanisms, one result row per selected neuron."""
    n = min(probe.n_images, 1000)
    images = probe.images(0, n)
    means, logits = layer_means(spec, images, layers, device)
    class_means, _ = layer_means(spec, class_imgs, layers, device)
    names = ["logit"] + layers
    nodes = [{"id": "logit/0", "layer": "logit", "group": 0, "neurons": [int(c)], "exemplars": [],
              "label": None, "importance": 1.0}]
    edges, rows, core, metrics = [], [], {}, {}
    for depth, layer in enumerate(layers):
        path = os.path.join(parts, f"neucept-{layer}.json")
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
        else:
            res = critical_neurons(means[layer], logits[:, c], fdr=fdr, n_runs=n_runs, seed=depth)
            saved = {"frequency": res.frequency.tolist(), "selected": res.selected.tolist(),
                     "runs": [r.tolist() for r in res.runs]}
            write_json(path, saved)
        selected = saved["selected"]
        core[layer] = selected
        planted = spec.circuit or {}
        truth = planted.get(layer) if planted.get("class") == spec.classes[c] else None
        if truth is not None:
            metrics[layer] = {"empirical_fdr": _empirical_fdr(saved["runs"], truth, layer, spec.circuit)}
        order = np.argsort(-class_means[layer][:, selected].mean(1), kind="stable")[:5] if selected else []
        crops = []
        for j, i in enumerate(order):
            rel = f"crops/{layer}_0_{j}.png"
            _save_png(os.path.join(out, rel), class_imgs[i])
            crops.append(rel)
        mech = mechanisms(class_means[layer], selected, seed=depth) \
            if len(selected) and len(class_imgs) >= 4 else None
        nodes.append({"id": f"{layer}/0", "layer": layer, "group": 0, "neurons": selected, "exemplars": crops,
                      "label": f"{len(selected)} critical neurons"
                               + (f", {mech.k} mechanisms" if mech else ""),
                      "importance": 1.0})
        edges.append({"source": f"{names[depth]}/0", "target": f"{layer}/0", "weight": 1.0})
        for u, f in enumerate(saved["frequency"]):
            if f > 0:
                extra = {"class": int(c), "frequency": round(f, 4), "critical": u in selected, "fdr": fdr}
                rows.append(Explanation(unit=u, method="neucept", formula=None, iou=None, layer=layer,
                                        extra=extra))
    return {"layers": names, "nodes": nodes, "edges": edges, "metrics": metrics}, rows, core
