"""Two sets of explanations of the same units side by side, both re-scored by neurcore's own verifier.

Each source is a neurcore results folder or JSONL file, or a file of another tool (NetDissect-Lite's
``tally.csv``, compexp's ``tally_{layer}.csv``, CLIP-Dissect's ``descriptions.csv``, Neuronpedia-style
JSONL; read by :func:`neurcore.formats.import_results`). With a model, its layers and a probe, every
label of both is scored the same way, so a score says how good the label is, not which tool made it:

- **IoU**: a label that reads as a formula over the probe's concepts (a concept name is one) against
  the unit's mask at its top ``quantile`` (Network Dissection's binarization), on the probe's masks;
- **Activation Rate** and **CoSy** (AUC, MAD) of images generated from the label
  (:class:`~neurcore.labels.Verifier`).

Without a model the table holds both labels and the scores their files reported.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._io import atomic_open, check_manifest, safe_name
from ..activations import extract, thresholds, unit_masks, unit_scores
from ..errors import FormulaSyntaxError, InputError
from ..formats import import_results, is_neurcore_results, read_results
from ..labels import Generator, Verifier, load_generator
from ..models import ModelSpec
from ..probe import Probe, SyntheticWorld
from ..results import Explanation
from ..rules import ConceptSet, mask_iou, parse
from ._setup import Setup, set_up

__all__ = ["compare", "COMPARE_COLUMNS", "read_explanations"]

#: Per side (prefix ``a_`` or ``b_``): the label, the method that made it, the score its file reported,
#: and neurcore's re-scoring.
_SIDE = ["label", "method", "reported", "iou", "activation_rate", "cosy_auc", "cosy_mad"]
COMPARE_COLUMNS = ["layer", "unit"] + [f"{s}_{k}" for s in "ab" for k in _SIDE]


def read_explanations(source: str | os.PathLike, method: str | None = None) -> list[Explanation]:
    """The explanations of ``source``: a neurcore results folder (``results.jsonl``, then the rows of
    ``labels.jsonl`` not already there) or JSONL file (:func:`neurcore.formats.read_results`), or a file
    or folder of another tool's format (auto-detected, :func:`neurcore.formats.import_results`).
    method: keep only rows of this method; without it the source must hold one method (else an
    InputError lists them)."""
    path = os.fspath(source)
    if os.path.isdir(path):  # neurcore's results folder, else a folder of another tool's files
        ours = any(os.path.isfile(os.path.join(path, f)) for f in ("results.jsonl", "labels.jsonl"))
    elif os.path.isfile(path):
        ours = is_neurcore_results(path)
    else:
        raise InputError(f"{path}: no such file or folder")
    rows = read_results(path) if ours else import_results(path)
    methods = list(dict.fromkeys(r.method for r in rows))
    if method is not None:
        rows = [r for r in rows if r.method == method]
        if not rows:
            raise InputError(f"{path}: no rows of method {method!r}; it holds {', '.join(methods) or 'none'}")
    elif len(methods) > 1:
        raise InputError(f"{path}: holds the methods {', '.join(methods)}; choose one "
                         "(--a-method/--b-method)")
    return rows


@dataclass
class _Scorer:
    """What re-scoring one layer needs: its unit masks and per-image scores, the probe's concepts and a
    verifier of generated images."""

    layer: str
    masks: object        # BitMasks [units, n_images, *mask_shape]
    concepts: ConceptSet | None
    verifier: Verifier

    def score(self, label: str | None, unit: int) -> dict:
        """IoU, Activation Rate and CoSy of ``label`` for ``unit`` (None where they do not apply)."""
        out = {"iou": None, "activation_rate": None, "cosy_auc": None, "cosy_mad": None}
        if not label:
            return out
        if not 0 <= unit < self.masks.n:
            raise InputError(f"compare: unit {unit} of layer {self.layer} is out of range "
                             f"(the layer has {self.masks.n} units)")
        formula = _formula_over(label, self.concepts)
        if formula is not None:
            out["iou"] = mask_iou(self.concepts.evaluate(formula), self.masks[unit : unit + 1])
        got = self.verifier.score(label, [unit])[0]
        out.update({k: got[k] for k in ("activation_rate", "cosy_auc", "cosy_mad")})
        return out


def _formula_over(label: str, concepts: ConceptSet | None):
    """``label`` as a formula when it is one over the probe's concept names, else None."""
    if concepts is None:
        return None
    try:
        formula = parse(label)
    except FormulaSyntaxError:
        return None
    names = set(concepts.names)
    return formula if all(leaf in names for leaf in formula.leaves()) else None


def compare(a: str | os.PathLike, b: str | os.PathLike, *, out_dir: str | None = None,
            a_method: str | None = None, b_method: str | None = None,
            model: str | ModelSpec | None = None, layers: Sequence[str] | None = None,
            probe: str | Probe = "default", weights: str | None = None,
            generator: str | Generator = "synthetic", n_generated: int = 50, quantile: float = 0.005,
            probe_images: int | None = None, batch_size: int = 64, seed: int = 0,
            progress: bool = True) -> list[dict]:
    """Per unit explained by ``a`` or ``b``: both labels and their scores (``COMPARE_COLUMNS``), written to
    ``out_dir/compare.csv`` when ``out_dir`` is given.

    a, b: results of neurcore or of another tool (:func:`read_explanations`; a_method / b_method pick a
    method in a source holding several). model (a name or reference as ``neurcore dissect`` takes, or a
    :class:`~neurcore.models.ModelSpec`), layers and probe: where to re-score every label (IoU against
    the unit masks at the top ``quantile``, Activation Rate and CoSy of ``n_generated`` images from
    ``generator``); None keeps the reported scores only. A row of a source without a layer (NetDissect's
    ``tally.csv`` names none) belongs to the only layer given. Returns the rows, as dicts of
    ``COMPARE_COLUMNS``, ordered by layer and unit.
    """
    sides = [read_explanations(a, a_method), read_explanations(b, b_method)]
    layer_names = list(layers or [])
    pairs = _pair(sides, layer_names)
    scorers = {}
    if model is not None:
        if not layer_names:
            raise InputError("compare: re-scoring with a model needs its layers (--layer)")
        if out_dir is None:
            raise InputError("compare: re-scoring with a model needs an output folder for its caches")
        setup = set_up(model, layer_names, probe, weights=weights, probe_images=probe_images,
                       progress=progress)
        scorers = _scorers(setup, out_dir, generator, n_generated, quantile, batch_size, seed, progress)
    rows = [_row(key, pair, scorers.get(key[0])) for key, pair in sorted(pairs.items(), key=_order)]
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with atomic_open(os.path.join(out_dir, "compare.csv"), newline="") as f:
            w = csv.DictWriter(f, COMPARE_COLUMNS)
            w.writeheader()
            w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return rows


def _order(item) -> tuple:
    (layer, unit), _ = item
    return (layer or "", unit)


def _pair(sides: list[list[Explanation]], layers: list[str]) -> dict:
    """{(layer, unit): [row of a or None, row of b or None]}; a row without a layer takes the only layer
    given, and one source's rows of a layer outside ``layers`` (when given) are dropped."""
    pairs: dict[tuple, list] = {}
    for side, rows in enumerate(sides):
        for r in rows:
            layer = r.layer
            if layer is None and len(layers) == 1:
                layer = layers[0]
            elif layer is None and layers:
                raise InputError(f"compare: {'ab'[side]} names no layer for its units, so it cannot be "
                                 f"matched to one of {', '.join(layers)}: compare one layer at a time")
            if layers and layer not in layers:
                continue
            key = (layer, int(r.unit))
            slot = pairs.setdefault(key, [None, None])
            if slot[side] is not None:
                raise InputError(f"compare: {'ab'[side]} holds two explanations of unit {r.unit}"
                                 f"{f' of layer {layer}' if layer else ''}")
            slot[side] = r
    if not pairs:
        raise InputError("compare: neither source explains a unit" + (f" of {', '.join(layers)}" if layers
                                                                        else ""))
    return pairs


def _row(key: tuple, pair: list, scorer: _Scorer | None) -> dict:
    layer, unit = key
    row = {"layer": layer, "unit": unit}
    for prefix, r in zip("ab", pair):
        label = r.formula if r is not None else None
        row[f"{prefix}_label"] = label
        row[f"{prefix}_method"] = r.method if r is not None else None
        row[f"{prefix}_reported"] = _reported(r)
        scores = scorer.score(label, unit) if scorer is not None else {}
        for k in ("iou", "activation_rate", "cosy_auc", "cosy_mad"):
            row[f"{prefix}_{k}"] = scores.get(k)
    return row


def _reported(r: Explanation | None) -> float | None:
    """The score the source reported: its IoU, else a similarity or score it carried."""
    if r is None:
        return None
    if r.iou is not None:
        return r.iou
    for key in ("score", "similarity"):
        for where in (r.metrics, r.extra):
            value = where.get(key)
            if isinstance(value, (int, float)):
                return float(value)
    return None


def _scorers(setup: Setup, out_dir: str, generator, n_generated: int, quantile: float, batch_size: int,
             seed: int, progress: bool) -> dict[str, _Scorer]:
    """One :class:`_Scorer` per layer: activations over the probe (cached under ``out_dir/layers``), unit
    masks at the top ``quantile``, the probe's concept masks, and a verifier of generated images."""
    probe = setup.probe
    world = probe if isinstance(probe, SyntheticWorld) else None
    gen = generator if isinstance(generator, Generator) else load_generator(generator, world=world)
    check_manifest(out_dir, {"model": setup.spec.name, "probe": probe.name, "probe_images": probe.n_images,
                             "quantile": quantile, "generator": gen.describe(), "n_generated": n_generated,
                             "seed": seed, "layers": setup.layers}, what="compare ")
    concepts = None
    if probe.concept_names:
        concepts = ConceptSet(probe.concept_masks(progress=progress), probe.concept_names,
                              probe.concept_categories)
    acts = extract(setup.spec, setup.layers, probe, os.path.join(out_dir, "layers"), batch_size=batch_size,
                   progress=progress)
    out = {}
    for name in setup.layers:
        d = os.path.join(out_dir, "layers", safe_name(name))
        masks = unit_masks(acts[name], thresholds(acts[name], quantile), probe.mask_shape,
                           batch_size=batch_size, progress=progress)
        scores = unit_scores(acts[name], os.path.join(d, "scores.npy"))
        verifier = Verifier(setup.spec, name, np.asarray(scores), gen, n_images=n_generated, seed=seed,
                            cache_dir=os.path.join(d, "verify"), batch_size=batch_size)
        out[name] = _Scorer(name, masks, concepts, verifier)
    return out
