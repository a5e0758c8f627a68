"""The rule stage of a dissection: concept masks, activations, unit masks and rule search per layer.

Every stage writes its artifact atomically under ``out_dir`` and is skipped when the artifact is
already there, so re-running with the same ``out_dir`` resumes: concept masks (``concepts/``), per
layer the activation cache (``layers/<layer>/acts.npy`` with its progress file), thresholds, unit
masks, results in chunks of units (``layers/<layer>/parts/``) and the layer's ``results.jsonl``.
``manifest.json`` records the settings; re-running into an ``out_dir`` made with other settings is
refused rather than mixed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .._io import atomic_path, check_manifest, safe_name, write_json
from ..activations import extract, thresholds, unit_masks
from ..engine import BitMasks, intersect_counts
from ..errors import InputError
from ..models import PlantedUnit
from ..probe import Probe
from ..results import Explanation, read_jsonl, write_csv, write_jsonl
from ..rules import METHODS, ClusteredSearch, ConceptSet, activation_ranges, range_masks, search
from ._setup import Setup

__all__ = ["RuleRun", "check_rule_method", "explain_rules", "write_results"]


@dataclass
class RuleRun:
    """What the rule stage leaves for the stages after it: the manifest's settings, the concept set, each
    layer's activation cache (read-only memmap [n_images, units, h, w]) and unit masks, and one
    explanation per unit of every layer, layer by layer."""

    settings: dict
    concepts: ConceptSet
    acts: dict[str, np.ndarray]
    masks: dict[str, BitMasks]
    results: list[Explanation]


def check_rule_method(method: str) -> None:
    """``method`` must be one of the rule-search methods (:data:`neurcore.rules.METHODS`)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def explain_rules(setup: Setup, out_dir: str, *, method: str, length: int = 3, beam: int = 5,
                  weights: str | None = None, quantile: float = 0.005, batch_size: int = 64,
                  units_per_part: int = 64, progress: bool = True) -> RuleRun:
    """Explain every unit of ``setup.layers`` by rules over the probe's concepts, resuming from ``out_dir``.

    method: a rule-search method (``dissect``, ``beam``, ``optimal``, ``clustered``) with its
    ``length`` and ``beam``; quantile: the top quantile of each unit's activations that makes its
    mask (NetDissect's 0.005). ``weights`` is only recorded in the manifest.
    """
    check_rule_method(method)
    settings = _settings(setup, method, length, beam, weights, quantile)
    check_manifest(out_dir, settings)
    concepts = _concepts(setup.probe, out_dir, progress)
    layer_root = os.path.join(out_dir, "layers")
    acts = extract(setup.spec, setup.layers, setup.probe, layer_root, batch_size=batch_size,
                   progress=progress)
    masks, results = {}, []
    for name in setup.layers:
        d = os.path.join(layer_root, safe_name(name))
        masks[name] = _unit_masks(acts[name], d, quantile, concepts, batch_size, progress)
        planted = [u for u in setup.spec.planted if u.layer == name] \
            if hasattr(setup.probe, "concept_maps") else []
        results.extend(_search_layer(name, d, masks[name], acts[name], concepts, method, length, beam,
                                     units_per_part, planted))
    return RuleRun(settings, concepts, acts, masks, results)


def write_results(out_dir: str, rules: list[Explanation], labels: list[Explanation] = ()) -> None:
    """``results.jsonl`` (the rules, then any labels) and ``results.csv`` (the rules), atomically."""
    write_jsonl(os.path.join(out_dir, "results.jsonl"), list(rules) + list(labels))
    write_csv(os.path.join(out_dir, "results.csv"), rules)


def _settings(setup: Setup, method: str, length: int, beam: int, weights: str | None,
              quantile: float) -> dict:
    beam_search = method == "beam"
    return {"model": setup.spec.name, "weights": os.path.abspath(weights) if weights else None,
            "probe": setup.probe_label, "probe_images": setup.probe.n_images, "method": method,
            "length": length if beam_search else None, "beam": beam if beam_search else None,
            "quantile": quantile, "layers": setup.layers}


def _concepts(probe: Probe, out_dir: str, progress: bool) -> ConceptSet:
    """The probe's concept masks, saved under ``out_dir/concepts`` the first time and read back after."""
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


def _unit_masks(acts: np.ndarray, layer_dir: str, quantile: float, concepts: ConceptSet, batch_size: int,
                progress: bool) -> BitMasks:
    """A layer's thresholds and binary unit masks at the concepts' resolution, cached in ``layer_dir``."""
    t_file = os.path.join(layer_dir, "thresholds.npy")
    if os.path.isfile(t_file):
        thr = np.load(t_file)
    else:
        thr = thresholds(acts, quantile)
        with atomic_path(t_file) as tmp:
            np.save(tmp, thr)
    m_dir = os.path.join(layer_dir, "unit_masks")
    if not os.path.isfile(os.path.join(m_dir, "meta.json")):
        masks = unit_masks(acts, thr, concepts.masks.image_shape, batch_size=batch_size, progress=progress)
        masks.save(m_dir)
    return BitMasks.load(m_dir)


def _search_layer(name: str, d: str, masks: BitMasks, acts: np.ndarray, concepts: ConceptSet, method: str,
                  length: int, beam: int, units_per_part: int,
                  planted: list[PlantedUnit]) -> list[Explanation]:
    """A layer's explanations: read back when finished, else searched ``units_per_part`` units at a time
    (each part written as soon as it is done), planted units judged, and the layer's file written."""
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
        chunk = _search_units(name, masks, acts, concepts, method, length, beam,
                              range(start, min(masks.n, start + units_per_part)))
        write_jsonl(part, chunk)
        out.extend(chunk)
    _judge_planted(out, planted, masks, acts, concepts, method)
    write_jsonl(final, out)
    return out


def _search_units(name: str, masks: BitMasks, acts: np.ndarray, concepts: ConceptSet, method: str,
                  length: int, beam: int, units: range) -> list[Explanation]:
    if method == "clustered":
        return ClusteredSearch(concepts).explain(acts, length=length, beam=beam, layer=name, units=units)
    chunk = search(masks[units.start : units.stop], concepts, method=method, length=length, beam=beam,
                   layer=name)
    for r in chunk:
        r.unit += units.start
    return chunk


def _judge_planted(results: list[Explanation], planted: list[PlantedUnit], masks: BitMasks, acts: np.ndarray,
                   concepts: ConceptSet, method: str) -> None:
    """Record, on each planted formula unit (the layer's last units), its formula, that formula's IoU with the
    unit's mask and whether the explanation found scores at least as well."""
    first = masks.n - len(planted)
    for k, unit in enumerate(planted):
        if unit.formula is None:  # a linear unit: LinEx's truth, not a formula's
            continue
        r = results[first + k]
        target = masks[first + k]
        if method == "clustered" and r.ranges:  # judged on the highest range, the one reported
            maps = np.asarray(acts[:, first + k])
            ranges = activation_ranges(maps, len(r.ranges))
            target = range_masks(maps, ranges, concepts.masks.image_shape)[len(ranges) - 1]
        p_iou = _planted_iou(unit.formula, target, concepts)
        r.planted = {"formula": str(unit.formula), "iou": p_iou, "recovered": r.iou >= p_iou}


def _planted_iou(formula, unit_row: BitMasks, concepts: ConceptSet) -> float:
    f = concepts.evaluate(formula)
    inter = int(intersect_counts(f, unit_row)[0, 0])
    union = int(f.count()[0]) + int(unit_row.count()[0]) - inter
    return inter / union if union else 0.0
