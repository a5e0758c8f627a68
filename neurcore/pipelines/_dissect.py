"""End-to-end dissection: a model, its layers and a probe in; results and an HTML report out.

Every stage writes its artifact atomically under ``out_dir`` and is skipped
when the artifact is already there, so re-running with the same ``out_dir``
resumes: concept masks (``concepts/``), per layer the activation cache
(``layers/<layer>/acts.npy`` with its progress file), thresholds, unit masks,
results in chunks of units (``layers/<layer>/parts/``) and the layer's
``results.jsonl``; then ``results.jsonl``, ``results.csv`` and ``report/``
for all layers. ``manifest.json`` records the settings; re-running into an
``out_dir`` made with other settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from .. import activations as acts_mod
from .._io import atomic_path, check_manifest, safe_name, write_json
from ..engine import BitMasks, intersect_counts
from ..errors import InputError
from ..labels import METHODS as LABEL_METHODS
from ..models import ModelSpec, load_model, resolve_layer
from ..probe import Probe, open_probe
from ..report import write_label_report, write_report
from ..results import Explanation, read_jsonl, write_csv, write_jsonl
from ..rules import METHODS, ClusteredSearch, ConceptSet, activation_ranges, range_masks, search

__all__ = ["dissect"]


def _concepts(probe, out_dir: str, progress: bool) -> ConceptSet:
    path = os.path.join(out_dir, "concepts")
    names_file = os.path.join(out_dir, "concepts.json")
    if os.path.isfile(names_file) and os.path.isdir(path):
        with open(names_file) as f:
            meta = json.load(f)
        return ConceptSet(BitMasks.load(path), meta["names"], meta["categories"])
    masks = probe.concept_masks(progress=progress)
    if masks.n == 0:
        raise InputError(f"{probe.name}: the probe has no concepts to explain units with")
    masks.save(path)
    write_json(names_file, {"names": probe.concept_names, "categories": probe.concept_categories})
    return ConceptSet(BitMasks.load(path), probe.concept_names, probe.concept_categories)


def _planted_iou(formula, unit_row: BitMasks, concepts: ConceptSet) -> float:
    f = concepts.evaluate(formula)
    inter = int(intersect_counts(f, unit_row)[0, 0])
    union = int(f.count()[0]) + int(unit_row.count()[0]) - inter
    return inter / union if union else 0.0


def dissect(model="default", layers=("conv4",), probe="default", *, method: str = "dissect", length: int = 3,
            beam: int = 5, out_dir: str = "dissection", weights: str | None = None, quantile: float = 0.005,
            batch_size: int = 64, units_per_part: int = 64, probe_images: int | None = None,
            top_images: int = 5, report: bool = True, progress: bool = True, methods=("rules",),
            label_options: dict | None = None) -> list[Explanation]:
    """Dissect ``layers`` of ``model`` on ``probe`` and write results and a report to ``out_dir``.

    model: "default", a torchvision name, or a :class:`~neurcore.models.ModelSpec`.
    probe: "default", "broden:DIR", "folder:DIR", or a :class:`~neurcore.probe.Probe`.
    method: "dissect" (best single concept), "beam" (compositional, ``length``, ``beam``),
    "optimal" (guaranteed-optimal formulas up to ``length``) or "clustered" (one formula per
    activation range).
    quantile: top quantile of each unit's activations that makes its mask (0.005).
    methods: method families to run: ``rules`` (the rule search ``method``, always) and any of
    :data:`neurcore.label.METHODS` (clip-dissect, linex, sieve), which run on the same activation
    cache, are verified beside the rules and added to the report (``label_options``: keyword
    arguments of :func:`neurcore.label.label`).
    Returns the explanations of every unit of every layer (rules first, then the labels).
    """
    t0 = time.perf_counter()
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise InputError("dissect: give at least one --layer")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m != "rules" and m not in LABEL_METHODS]
    if bad or "rules" not in methods:
        raise InputError(f"--methods: expected rules and any of {', '.join(LABEL_METHODS)}, got "
                         f"{', '.join(methods)} (neurcore label runs the labelling methods alone)")
    label_methods = [m for m in methods if m != "rules"]
    spec = model if isinstance(model, ModelSpec) else load_model(model, weights, progress=progress)
    for name in layers:
        resolve_layer(spec.module, name)
    if isinstance(probe, Probe):
        the_probe, probe_label = probe, probe.name
    else:
        the_probe, probe_label = open_probe(probe, image_size=spec.input_size if probe.startswith(("broden", "folder"))
                                            else None, n_images=probe_images), probe
    settings = {"model": spec.name, "weights": os.path.abspath(weights) if weights else None, "probe": probe_label,
                "probe_images": the_probe.n_images, "method": method, "length": length if method == "beam" else None,
                "beam": beam if method == "beam" else None, "quantile": quantile, "layers": layers}
    check_manifest(out_dir, settings)
    concepts = _concepts(the_probe, out_dir, progress)
    layer_root = os.path.join(out_dir, "layers")
    acts = acts_mod.extract(spec, layers, the_probe, layer_root, batch_size=batch_size, progress=progress)

    all_results: list[Explanation] = []
    masks_by_layer = {}
    for name in layers:
        d = os.path.join(layer_root, safe_name(name))
        a = acts[name]
        t_file = os.path.join(d, "thresholds.npy")
        if os.path.isfile(t_file):
            thr = np.load(t_file)
        else:
            thr = acts_mod.thresholds(a, quantile)
            with atomic_path(t_file) as tmp:
                np.save(tmp, thr)
        m_dir = os.path.join(d, "unit_masks")
        if os.path.isfile(os.path.join(m_dir, "meta.json")):
            masks = BitMasks.load(m_dir)
        else:
            masks = acts_mod.unit_masks(a, thr, concepts.masks.image_shape, batch_size=batch_size, progress=progress)
            masks.save(m_dir)
            masks = BitMasks.load(m_dir)
        masks_by_layer[name] = masks
        planted = [u for u in spec.planted if u.layer == name] if hasattr(the_probe, "concept_maps") else []
        all_results.extend(_search_layer(name, d, masks, a, concepts, method, length, beam, units_per_part, planted))

    labels: list[Explanation] = []
    if label_methods:
        from ._label import label

        by_layer = {name: [r for r in all_results if r.layer == name] for name in layers}
        labels = label(spec, layers, the_probe, methods=label_methods, out_dir=out_dir, rules=by_layer,
                       batch_size=batch_size, report=False, progress=progress, **(label_options or {}))
    write_jsonl(os.path.join(out_dir, "results.jsonl"), all_results + labels)
    write_csv(os.path.join(out_dir, "results.csv"), all_results)
    if report:
        write_report(out_dir, all_results, settings, the_probe, concepts, acts, masks_by_layer,
                     top_images=top_images, seconds=time.perf_counter() - t0)
        if labels:
            write_label_report(out_dir, the_probe, acts, top_images=top_images)
    return all_results + labels


def _search_layer(name, d, masks, acts, concepts, method, length, beam, units_per_part, planted) -> list[Explanation]:
    final = os.path.join(d, "results.jsonl")
    if os.path.isfile(final):
        return read_jsonl(final)
    parts = os.path.join(d, "parts")
    os.makedirs(parts, exist_ok=True)
    out: list[Explanation] = []
    for start in range(0, masks.n, units_per_part):
        part = os.path.join(parts, f"units-{start:06d}.jsonl")
        if os.path.isfile(part):
            out.extend(read_jsonl(part))
            continue
        stop = min(masks.n, start + units_per_part)
        if method == "clustered":
            chunk = ClusteredSearch(concepts).explain(acts, length=length, beam=beam, layer=name,
                                                      units=range(start, stop))
        else:
            chunk = search(masks[start:stop], concepts, method=method, length=length, beam=beam, layer=name)
            for r in chunk:
                r.unit += start
        write_jsonl(part, chunk)
        out.extend(chunk)
    if planted:
        first = masks.n - len(planted)
        for k, unit in enumerate(planted):
            if unit.formula is None:  # a linear unit: LinEx's truth, not a formula's
                continue
            r = out[first + k]
            target = masks[first + k]
            if method == "clustered" and r.ranges:  # judged on the highest range, the one reported
                maps = np.asarray(acts[:, first + k])
                ranges = activation_ranges(maps, len(r.ranges))
                target = range_masks(maps, ranges, concepts.masks.image_shape)[len(ranges) - 1]
            p_iou = _planted_iou(unit.formula, target, concepts)
            r.planted = {"formula": str(unit.formula), "iou": p_iou, "recovered": r.iou >= p_iou}
    write_jsonl(final, out)
    return out
