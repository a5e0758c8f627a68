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

from ._atomic import atomic_open, write_json
from .errors import InputError
from .results import Explanation, write_jsonl

__all__ = ["class_index", "class_images", "predicted", "fidelity", "circuit"]

METHODS = ("neurflow", "neucept")
FIDELITY_COLUMNS = ["layer", "scope", "mode", "k", "core", "random_mean", "random_std", "core_logit",
                    "random_logit_mean", "n_random", "n_images"]


def class_index(spec, name: str, n_outputs: int | None = None) -> int:
    """The output index of class ``name`` (a class name of the model, or an index)."""
    n_out = n_outputs if n_outputs is not None else _shapes(spec, [])[0]
    if spec.classes and name in spec.classes:
        return spec.classes.index(name)
    if str(name).isdigit() and int(name) < n_out:
        return int(name)
    known = f"; classes: {', '.join(spec.classes[:12])}{' ...' if len(spec.classes) > 12 else ''}" if spec.classes else ""
    raise InputError(f"class {name!r} is not an output of model {spec.name!r} ({n_out} outputs){known}")


def _shapes(spec, layers, device="cpu") -> tuple[int, dict]:
    """(model outputs, {layer: channels}) from one forward pass of a blank image."""
    import torch

    from .activations import as_maps, hooked

    with torch.no_grad(), hooked(spec.module, layers) as outs:
        logits = spec.module(torch.zeros(1, 3, spec.input_size, spec.input_size, device=device))
        return int(logits.shape[1]), {name: as_maps(outs[name]).shape[1] for name in layers}


def predicted(spec, logits, c: int):
    """bool [n]: the model predicts class c (logit > 0 for multi-label models, argmax otherwise)."""
    return logits[:, c] > 0 if spec.multilabel else logits.argmax(1) == c


def _forward(spec, images: np.ndarray, device="cpu", batch: int = 128):
    import torch

    from .activations import _inputs

    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            out.append(spec.module(_inputs(spec, images[s : s + batch]).to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def class_images(spec, probe, c: int, *, max_images: int = 60, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_images`` probe images of class c that the model gets right: predicted as c and,
    where the probe annotates a concept of the class's name, containing it. uint8 [n, H, W, 3] and
    their probe indices."""
    names = getattr(probe, "concept_names", None) or []
    concept = names.index(spec.classes[c]) if spec.classes and spec.classes[c] in names else None
    keep, idx = [], []
    for start, images in probe.batches(128):
        ok = predicted(spec, _forward(spec, images, device), c).numpy()
        for j in np.flatnonzero(ok):
            if concept is None or concept in probe.image_concepts(start + j)[0]:
                keep.append(images[j])
                idx.append(start + j)
        if len(keep) >= max_images:
            break
    if not keep:
        raise InputError(f"no probe image is classified as class {c} correctly: nothing to explain")
    return np.stack(keep[:max_images]), np.array(idx[:max_images])


class _ChannelMask:
    """Forward hooks that multiply layers' outputs by per-channel 0/1 masks."""

    def __init__(self, module, masks: dict):
        from .models import resolve_layer

        self.handles = [resolve_layer(module, name).register_forward_hook(
            lambda _m, _i, out, m=m: out * m.view(1, -1, *([1] * (out.dim() - 2))).to(out.dtype))
            for name, m in masks.items()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def fidelity(spec, images: np.ndarray, c: int, core: dict, channels: dict, *, n_random: int = 20, seed: int = 0,
             device="cpu") -> list[dict]:
    """NeurFlow's fidelity: the fraction of ``images`` (of class c, all right before) still predicted
    as c when a layer's core neurons are masked (set to 0) or alone retained, against ``n_random``
    random sets of the same size; per layer and cumulatively (every layer from the top down to it).
    Also the class's mean logit as a fraction of its unmasked mean (``core_logit``,
    ``random_logit_mean``), which still moves where a positive bias keeps every image predicted.
    ``core``: {layer: neurons}, top to bottom; ``channels``: {layer: channel count}."""
    import torch

    rng = np.random.default_rng(seed)
    rows = []

    base_logit = float(_forward(spec, images, device)[:, c].mean())

    def scores(masks):
        """(fraction still predicted as c, mean class logit as a fraction of the unmasked mean)"""
        with _ChannelMask(spec.module, masks):
            logits = _forward(spec, images, device)
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
                             "random_std": round(float(randoms[:, 0].std()), 4), "core_logit": round(got_logit, 4),
                             "random_logit_mean": round(float(randoms[:, 1].mean()), 4), "n_random": n_random,
                             "n_images": len(images)})
    return rows


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

    from .circuit_report import write_circuit_html
    from .models import load_model, resolve_layer
    from .probe import open_probe

    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    spec = load_model(model, progress=progress) if isinstance(model, str) else model
    layers = list(layers)
    if not layers:
        raise InputError("--layers: name at least one layer")
    from .attribution import layer_function

    for upper, lower in zip([None] + layers[:-1], layers):  # fail fast: each layer feeds the one above
        resolve_layer(spec.module, lower)
        layer_function(spec.module, lower, upper if method == "neurflow" else None)
    if class_name is None:
        if not spec.circuit:
            raise InputError("--class is needed for a model without a planted circuit")
        class_name = spec.circuit["class"]
    spec.module.to(device).eval()
    n_outputs, channels = _shapes(spec, layers, device)
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
    from .neurflow import NeurFlow, NeurFlowConfig

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


def _layer_means(spec, images, layers, device):
    import torch

    from .activations import _inputs, as_maps, hooked

    means, logits = {n: [] for n in layers}, []
    with torch.no_grad(), hooked(spec.module, layers) as outs:
        for s in range(0, len(images), 128):
            logits.append(spec.module(_inputs(spec, images[s : s + 128]).to(device)).float().cpu())
            for n in layers:
                means[n].append(as_maps(outs[n]).float().mean((2, 3)).cpu())
    return {n: torch.cat(v).numpy() for n, v in means.items()}, torch.cat(logits).numpy()


def _neucept(spec, probe, class_imgs, c, layers, out, parts, fdr, n_runs, device):
    from .neucept import critical_neurons, mechanisms

    n = min(probe.n_images, 1000)
    images = probe.images(0, n)
    means, logits = _layer_means(spec, images, layers, device)
    class_means, _ = _layer_means(spec, class_imgs, layers, device)
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
