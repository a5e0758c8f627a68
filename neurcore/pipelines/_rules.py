"""The rule stage of a dissection: concept masks, activations, unit masks and rule search per layer.

Every stage writes its artifact atomically under ``out_dir`` and is skipped when the artifact is
already there, so re-running with the same ``out_dir`` resumes: concept masks (``concepts/``), the
two streaming passes over the probe (:func:`neurcore.activations.stream_unit_masks`: per layer
thresholds, top images and unit masks in blocks of units under ``layers/<layer>/``, checkpointed as
they go; the float activation cache only when asked for or when the method needs it), results in
chunks of units (``layers/<layer>/parts/``) and the layer's ``results.jsonl``.
``manifest.json`` records the settings; re-running into an ``out_dir`` made with other settings is
refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._io import check_manifest, safe_name, write_json
from ..activations import StreamedLayer, TopImages, layer_shapes, stream_unit_masks, unit_mask_blocks
from ..engine import BitMasks
from ..errors import InputError
from ..models import PlantedUnit
from ..probe import Probe
from ..results import Explanation, read_jsonl, write_csv, write_jsonl
from ..rules import (
    METHODS,
    ClusteredSearch,
    ConceptSet,
    activation_ranges,
    planted_recovery,
    range_masks,
    search,
)
from ._setup import Setup
from ._stages import Stages

if TYPE_CHECKING:
    from ..distributed import ShardEngine

__all__ = ["RuleRun", "check_disk", "check_rule_method", "explain_rules", "search_part", "write_results"]


@dataclass
class RuleRun:
    """What the rule stage leaves for the stages after it: the manifest's settings, the concept set, each
    layer's top images (for the report), its activation cache where one was kept (read-only memmap
    [n_images, units, h, w]), and one explanation per unit of every layer, layer by layer."""

    settings: dict
    concepts: ConceptSet
    tops: dict[str, TopImages]
    acts: dict[str, np.ndarray]
    results: list[Explanation]


def check_rule_method(method: str) -> None:
    """``method`` must be one of the rule-search methods (:data:`neurcore.rules.METHODS`)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def explain_rules(setup: Setup, out_dir: str, *, method: str, length: int = 3, beam: int = 5,
                  weights: str | None = None, quantile: float = 0.005, batch_size: int = 64,
                  units_per_part: int = 64, top_images: int = 5, cache: bool | None = None,
                  checkpoint_images: int = 1024, progress: bool = True,
                  stage: Stages | None = None, engine: ShardEngine | None = None) -> RuleRun:
    """Explain every unit of ``setup.layers`` by rules over the probe's concepts, resuming from ``out_dir``.

    method: a rule-search method (``dissect``, ``beam``, ``optimal``, ``clustered``) with its
    ``length`` and ``beam``; quantile: the top quantile of each unit's activations that makes its
    mask (NetDissect's 0.005). Activations stream in two passes, in memory that grows with the probe
    only by the exact top values the thresholds need (``quantile`` of each layer's activations),
    checkpointed every ``checkpoint_images`` images; ``cache`` also keeps them on disk and reads them
    back instead of a second forward pass: True, False, or None to keep them where they take at
    most half the free disk and half the available memory (``clustered``, which reads them, always
    keeps them).
    ``weights`` is only recorded in the manifest; ``stage`` times the stages (``stages.json``).
    ``engine``: a :class:`~neurcore.distributed.ShardEngine` (a Ray cluster) that runs the passes by
    image shards of ``checkpoint_images`` images and the searches by ``units_per_part`` units, with
    the same results; there ``cache`` None means no cache (the activations would cross the network).
    """
    check_rule_method(method)
    stage = stage or Stages(out_dir)
    settings = _settings(setup, method, length, beam, weights, quantile)
    check_manifest(out_dir, settings)
    if method == "clustered":
        cache = True
    elif engine is not None and cache is None:
        cache = False
    cache = check_disk(setup, out_dir, quantile, cache)
    with stage("concept masks"):
        concepts = _concepts(setup.probe, out_dir, progress)
    layer_root = os.path.join(out_dir, "layers")
    streamed = stream_unit_masks(setup.spec, setup.layers, setup.probe, layer_root, quantile=quantile,
                                 mask_shape=concepts.masks.image_shape, block_units=units_per_part,
                                 top_images=top_images, batch_size=batch_size, cache=cache,
                                 checkpoint_images=checkpoint_images, progress=progress, stage=stage,
                                 engine=engine)
    results = []
    with stage("search"):
        if engine is not None:
            _search_parts(engine, setup.layers, layer_root, streamed, concepts, method, length, beam,
                          units_per_part, progress)
        for name in setup.layers:
            d = os.path.join(layer_root, safe_name(name))
            planted = [u for u in setup.spec.planted if u.layer == name] \
                if hasattr(setup.probe, "concept_maps") else []
            results.extend(_search_layer(name, d, streamed[name], concepts, method, length, beam,
                                         units_per_part, planted))
    return RuleRun(settings, concepts, {n: s.top for n, s in streamed.items()},
                   {n: s.acts for n, s in streamed.items() if s.acts is not None}, results)


def check_disk(setup: Setup, out_dir: str, quantile: float, cache: bool | None) -> bool:
    """Refuse, before any long work, a run whose outputs would not fit on ``out_dir``'s disk: concept masks
    (estimated from the probe's first images), unit masks (at most ``min(1, quantile x h x w)`` of a
    unit's images hold any of its top values) and, with ``cache``, the float activations. Returns
    whether to keep the cache: ``cache`` as given, or for None (auto) whether it takes at most half of
    the disk space the rest leaves free and half the memory available to the page cache: read back
    from the page cache it is cheaper than a second forward pass, read back from disk often not."""
    shapes = layer_shapes(setup.spec, setup.layers, setup.probe)
    n = setup.probe.n_images
    wpi_bytes = 8 * -(-int(np.prod(setup.probe.mask_shape)) // 64)
    need = {"unit masks": sum(c * n * min(1.0, quantile * h * w) for c, h, w in shapes.values())
            * (wpi_bytes + 16)}
    if not os.path.isfile(os.path.join(out_dir, "concepts.json")):
        sample = range(min(16, n))
        present = sum(len(setup.probe.image_concepts(i)[0]) for i in sample) / len(sample)
        need["concept masks"] = present * n * (wpi_bytes + 8)
    acts_bytes = sum(4 * n * c * h * w for c, h, w in shapes.values())
    parent = os.path.abspath(out_dir)
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    free = shutil.disk_usage(parent).free
    if cache is None:
        cache = acts_bytes <= min((free - sum(need.values())) / 2, _available_memory() / 2)
    if cache:
        need["activation cache"] = acts_bytes
    if sum(need.values()) > free:
        parts = ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in need.items())
        raise InputError(f"{out_dir}: this run needs about {sum(need.values()) / 2**30:.1f} GiB on disk "
                         f"({parts}; {n} probe images) and {parent} has {free / 2**30:.1f} GiB free: "
                         "free space, or give fewer --probe-images")
    return cache


def _available_memory() -> int:
    """Bytes of memory available for new data and the page cache (Linux MemAvailable; else physical)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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


def _search_layer(name: str, d: str, layer: StreamedLayer, concepts: ConceptSet, method: str,
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
    n_units = len(layer.thresholds)
    for start in range(0, n_units, units_per_part):
        part = _part_file(d, start)
        if os.path.isfile(part):
            out.extend(read_jsonl(part))
            continue
        chunk = _search_units(name, layer, concepts, method, length, beam,
                              range(start, min(n_units, start + units_per_part)))
        write_jsonl(part, chunk)
        out.extend(chunk)
    _judge_planted(out, planted, layer, concepts, method)
    write_jsonl(final, out)
    return out


def _search_units(name: str, layer: StreamedLayer, concepts: ConceptSet, method: str, length: int,
                  beam: int, units: range) -> list[Explanation]:
    if method == "clustered":
        return search_part(concepts, layer=name, start=units.start, masks=None,
                           acts=layer.acts[:, units.start : units.stop], method=method, length=length,
                           beam=beam)  # a memmap's slice: read unit by unit
    return search_part(concepts, layer=name, start=units.start, masks=unit_mask_blocks(layer, units),
                       acts=None, method=method, length=length, beam=beam)


def search_part(concepts: ConceptSet, *, layer: str, start: int, masks: BitMasks | None,
                acts: np.ndarray | None, method: str, length: int, beam: int) -> list[Explanation]:
    """Explanations of a part of a layer's units, numbered from unit ``start``: ``masks`` (their unit
    masks) or, for ``clustered``, ``acts`` float32 [n_images, units, h, w] (their raw maps)."""
    if method == "clustered":
        chunk = ClusteredSearch(concepts).explain(acts, length=length, beam=beam, layer=layer)
    else:
        chunk = search(masks, concepts, method=method, length=length, beam=beam, layer=layer)
    for r in chunk:
        r.unit += start
    return chunk


def _search_parts(engine: ShardEngine, layers: list[str], layer_root: str, streamed: dict[str, StreamedLayer],
                  concepts: ConceptSet, method: str, length: int, beam: int, units_per_part: int,
                  progress: bool) -> None:
    """Every part of every layer not yet searched, as tasks on ``engine`` (the concept masks sent once),
    each written to its part file as it finishes: what :func:`_search_layer` then reads back."""
    from tqdm import tqdm

    calls = []
    for name in layers:
        d = os.path.join(layer_root, safe_name(name))
        if os.path.isfile(os.path.join(d, "results.jsonl")):
            continue
        os.makedirs(os.path.join(d, "parts"), exist_ok=True)
        n_units = len(streamed[name].thresholds)
        for start in range(0, n_units, units_per_part):
            if not os.path.isfile(_part_file(d, start)):
                calls.append((name, d, range(start, min(n_units, start + units_per_part))))

    def arguments(name, units):
        layer = streamed[name]
        if getattr(engine, "shares_disk", False):  # the task reads the masks or the cache itself
            return {"masks": None, "acts": None, "n_units": len(units), "on_disk":
                    [os.path.abspath(b) for b in layer.blocks] if method != "clustered" else
                    os.path.abspath(layer.acts.filename)}
        if method != "clustered":
            return {"masks": unit_mask_blocks(layer, units), "acts": None}
        return {"masks": None, "acts": np.ascontiguousarray(layer.acts[:, units.start : units.stop])}

    # the tasks' inputs are read as they are submitted (a few at a time), not all at once
    todo = ({"layer": name, "start": units.start, "directory": d, **arguments(name, units)}
            for name, d, units in calls)
    shared = {"concepts": concepts, "method": method, "length": length, "beam": beam}
    with tqdm(total=len(calls), desc="search", unit="part", leave=False, disable=not progress) as bar:
        for call, chunk in engine.map_tasks(_search_part_task, todo, shared, "search"):
            write_jsonl(_part_file(call["directory"], call["start"]), chunk)
            bar.update(1)


def _search_part_task(concepts: ConceptSet, *, layer: str, start: int, directory: str, masks, acts,
                      method: str, length: int, beam: int, on_disk: str | list[str] | None = None,
                      n_units: int = 0) -> list[Explanation]:
    """A part's search on a worker: its unit masks or raw maps given, or read from ``on_disk`` (the
    layer's mask blocks, or its activation cache for ``clustered``) where the worker sees the driver's
    files."""
    if isinstance(on_disk, list):
        masks = unit_mask_blocks(on_disk, range(start, start + n_units))
    elif on_disk is not None:
        acts = np.load(on_disk, mmap_mode="r")[:, start : start + n_units]
    return search_part(concepts, layer=layer, start=start, masks=masks, acts=acts, method=method,
                       length=length, beam=beam)


def _part_file(layer_dir: str, start: int) -> str:
    return os.path.join(layer_dir, "parts", f"units-{start:06d}.jsonl")


def _judge_planted(results: list[Explanation], planted: list[PlantedUnit], layer: StreamedLayer,
                   concepts: ConceptSet, method: str) -> None:
    """Record, on each planted formula unit (the layer's last units), whether the explanation found is
    the planted formula (:func:`~neurcore.rules.planted_recovery`)."""
    first = len(layer.thresholds) - len(planted)
    for k, unit in enumerate(planted):
        if unit.formula is None or not unit.identifiable:  # LinEx's or labelling's truth, not rules'
            continue
        r = results[first + k]
        target = unit_mask_blocks(layer, range(first + k, first + k + 1))
        if method == "clustered" and r.ranges:  # judged on the highest range, the one reported
            maps = np.asarray(layer.acts[:, first + k])
            ranges = activation_ranges(maps, len(r.ranges))
            target = range_masks(maps, ranges, concepts.masks.image_shape)[len(ranges) - 1]
        r.planted = planted_recovery(r.formula, r.iou, unit.formula, target, concepts)
