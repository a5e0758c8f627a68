"""``neurcore circuit``: the circuit of one class, by NeurFlow or NeuCEPT, written to a folder.

Outputs (each replaced atomically): ``circuit.json`` (layers top to bottom, nodes with member
neurons and exemplar crops, weighted edges, planted truth and precision/recall when the model has
a planted circuit), ``fidelity.csv`` (accuracy on the class's images when the core neurons are
masked or alone retained, against random sets of equal size, per layer and cumulatively from the
classifier down), ``results.jsonl`` (one row per circuit neuron in the shared schema),
``circuit.html`` and ``crops/``. Finished layers are kept under ``parts/`` and reused by a rerun
with the same settings.
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from .._io import atomic_open, write_json
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
from ..errors import InputError
from ..models import load_model, resolve_layer
from ..probe import open_probe
from ..report import write_circuit_html
from ..results import Explanation, write_jsonl

__all__ = ["circuit"]

METHODS = ("neurflow", "neucept")
FIDELITY_COLUMNS = ["layer", "scope", "mode", "k", "core", "random_mean", "random_std", "core_logit",
                    "random_logit_mean", "n_random", "n_images"]


def _precision_recall(found, truth) -> dict:
    found, truth = set(found), set(truth)
    hit = len(found & truth)
    return {"precision": round(hit / len(found), 4) if found else 0.0,
            "recall": round(hit / len(truth), 4) if truth else 1.0, "found": len(found), "true": len(truth)}


def _save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(image).resize((96, 96), Image.NEAREST).save(f, format="PNG")


def circuit(model="default", class_name: str | None = None, layers=("conv4", "conv3"), out: str = "circuit", *,
            method: str = "neurflow", probe="default", max_images: int = 40, tau: int = 16, top_k: int = 50,
            n_steps: int = 50, fdr: float = 0.1, n_runs: int = 10, n_random: int = 20, device: str = "cpu",
            backend: str | None = None, progress: bool = True) -> dict:
    """Build the circuit of ``class_name`` over ``layers`` (top to bottom) and write it to ``out``."""

    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    spec = load_model(model, progress=progress) if isinstance(model, str) else model
    layers = list(layers)
    if not layers:
        raise InputError("--layers: name at least one layer")
    for upper, lower in zip([None] + layers[:-1], layers):  # fail fast: each layer feeds the one above
        resolve_layer(spec.module, lower)
        layer_function(spec.module, lower, upper if method == "neurflow" else None)
    if class_name is None:
        if not spec.circuit:
            raise InputError("--class is needed for a model without a planted circuit")
        class_name = spec.circuit["class"]
    spec.module.to(device).eval()
    n_outputs, channels = output_shapes(spec, layers, device)
    c = class_index(spec, class_name, n_outputs)
    probe = open_probe(probe) if isinstance(probe, str) else probe
    os.makedirs(out, exist_ok=True)
    parts = os.path.join(out, "parts")
    settings = {"model": spec.name, "class": class_name, "layers": layers, "method": method, "tau": tau,
                "top_k": top_k, "n_steps": n_steps, "fdr": fdr, "n_runs": n_runs, "max_images": max_images}
    manifest = os.path.join(out, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            if json.load(f) != settings:
                raise InputError(f"{out} holds a circuit made with other settings; choose another --out or remove it")
    write_json(manifest, settings)
    images, _ = class_images(spec, probe, c, max_images=max_images, device=device)

    if method == "neurflow":
        doc, rows, core = _neurflow(spec, images, c, layers, out, parts, tau, top_k, n_steps, device, backend, progress)
    else:
        doc, rows, core = _neucept(spec, probe, images, c, layers, out, parts, fdr, n_runs, device)
    doc.update({"model": spec.name, "class": class_name, "class_index": c, "method": method,
                "n_images": int(len(images))})
    if spec.circuit and spec.circuit.get("class") == class_name:
        truth = {k: v for k, v in spec.circuit.items() if k in layers}
        doc["truth"] = truth
        metrics = doc.get("metrics", {})
        doc["metrics"] = {name: {**_precision_recall(core.get(name, []), t), **metrics.get(name, {})}
                          for name, t in truth.items()}
    fid = fidelity(spec, images, c, {k: v for k, v in core.items() if v}, channels, n_random=n_random,
                   device=device)
    doc["fidelity"] = fid
    buf = io.StringIO()
    writer = csv.DictWriter(buf, FIDELITY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(fid)
    with atomic_open(os.path.join(out, "fidelity.csv"), "w") as f:
        f.write(buf.getvalue())
    write_jsonl(os.path.join(out, "results.jsonl"), rows)
    write_json(os.path.join(out, "circuit.json"), doc)
    write_circuit_html(out, doc)
    return doc


def _neurflow(spec, images, c, layers, out, parts, tau, top_k, n_steps, device, backend, progress):
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
            rows.append(Explanation(unit=int(a), method="neurflow", formula=None, iou=0.0, layer=names[i],
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


def _neucept(spec, probe, class_imgs, c, layers, out, parts, fdr, n_runs, device):
    n = min(probe.n_images, 1000)
    images = probe.images(0, n)
    means, logits = layer_means(spec, images, layers, device)
    class_means, _ = layer_means(spec, class_imgs, layers, device)
    names = ["logit"] + layers
    nodes = [{"id": "logit/0", "layer": "logit", "group": 0, "neurons": [int(c)], "exemplars": [], "label": None,
              "importance": 1.0}]
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
        truth = (spec.circuit or {}).get(layer) if (spec.circuit or {}).get("class") == spec.classes[c] else None
        if truth is not None and layer in spec.circuit.get("exact_null_layers", []):
            false = [len(set(r) - set(truth)) / max(1, len(r)) for r in saved["runs"]]
            metrics[layer] = {"empirical_fdr": round(float(np.mean(false)), 4), "target_fdr": fdr}
        order = np.argsort(-class_means[layer][:, selected].mean(1), kind="stable")[:5] if selected else []
        crops = []
        for j, i in enumerate(order):
            rel = f"crops/{layer}_0_{j}.png"
            _save_png(os.path.join(out, rel), class_imgs[i])
            crops.append(rel)
        mech = mechanisms(class_means[layer], selected, seed=depth) if len(selected) and len(class_imgs) >= 4 else None
        nodes.append({"id": f"{layer}/0", "layer": layer, "group": 0, "neurons": selected, "exemplars": crops,
                      "label": f"{len(selected)} critical neurons" + (f", {mech.k} mechanisms" if mech else ""),
                      "importance": 1.0})
        edges.append({"source": f"{names[depth]}/0", "target": f"{layer}/0", "weight": 1.0})
        for u, f in enumerate(saved["frequency"]):
            if f > 0:
                rows.append(Explanation(unit=u, method="neucept", formula=None, iou=0.0, layer=layer,
                                        extra={"class": int(c), "frequency": round(f, 4), "critical": u in selected,
                                               "fdr": fdr}))
    return {"layers": names, "nodes": nodes, "edges": edges, "metrics": metrics}, rows, core
