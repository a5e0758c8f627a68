"""Vision-language labels of a layer's units: CLIP-Dissect, LinEx and SIEVE, every label scored by
one verifier, side by side with Network Dissection's rules.

``label(model, layers, probe, methods=...)`` runs the model over the probe (the activation cache
of :func:`neurcore.dissect`, shared), embeds the probe once per vision-language model
(``vlm/<model>/images.npy``), and per layer writes each method's rows under
``labels/<layer>/`` (SIEVE unit by unit, so an interrupted run resumes without regenerating
what it verified). Then every label, and the rule-search explanations when given, is verified
(:class:`neurcore.labels.Verifier`: Activation Rate, CoSy AUC and MAD on generated images, cached
per prompt) and simulated (Pearson r of the unit's activation on LinEx's test split against the
label's concept probabilities under a second, independent VLM). Outputs: ``labels.jsonl`` (the
shared schema, one row per method and unit), ``linex.csv`` (LinEx's table), ``clip_dissect.csv``
(``layer, unit, description, similarity``) and ``labels_summary.json`` (per layer and method: mean
Activation Rate, CoSy, simulation r; planted-unit recovery).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._io import atomic_open, check_manifest, safe_name, write_json
from ..activations import extract, unit_scores
from ..distributed import ShardEngine, engine_for
from ..errors import InputError
from ..labels import (
    METHODS,
    SIMILARITY_FUNCTIONS,
    ClipDissect,
    Generator,
    LinEx,
    Sieve,
    Verifier,
    VisionLanguageModel,
    concept_auc,
    concept_probabilities,
    concept_prompt,
    embed_images,
    embed_texts,
    image_text_similarity,
    label_simulation_r,
    load_generator,
    load_vlm,
    simulation_r,
    split_indices,
    vlm_cache_dir,
    write_linex_table,
)
from ..models import ModelSpec
from ..probe import Probe, SyntheticWorld
from ..report import write_label_report
from ..results import Explanation, read_jsonl, write_jsonl
from ._rules import explain_rules, write_results
from ._setup import Setup, set_up, unique_names

__all__ = ["label", "read_vocabulary"]


def read_vocabulary(path: str) -> list[str]:
    """One word or phrase per line (blank lines and ``#`` comments skipped, duplicates dropped)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such vocabulary file")
    with open(path, encoding="utf-8") as f:
        words = [line.strip() for line in f]
    words = list(dict.fromkeys(w for w in words if w and not w.startswith("#")))
    if not words:
        raise InputError(f"{path}: the vocabulary file is empty (expected one word or phrase per line)")
    return words


@dataclass
class _Labelling:
    """What labelling a layer needs, fixed for the run: the inputs, the method settings, the vision-language
    models' embeddings of the probe and the vocabulary, and the simulator's concept probabilities."""

    setup: Setup
    out_dir: str
    methods: list[str]
    vocab: list[str]
    generator: Generator
    explainer: VisionLanguageModel
    image_emb: np.ndarray          # explainer's probe embeddings [n_images, D]
    text_emb: np.ndarray           # explainer's vocabulary embeddings [n_vocab, D]
    sim_p: np.ndarray | None       # simulator's P(concept | image) [n_images, n_vocab], or None
    similarity: str
    tau: float
    top_n: int
    crop: float
    top_k: int
    max_k: int
    n_generated: int
    seed: int
    batch_size: int
    progress: bool
    engine: ShardEngine | None = None  # where verification images are generated (None: here)


def label(model: str | ModelSpec = "default", layers: Sequence[str] = ("conv4",),
          probe: str | Probe = "default", *, methods: Sequence[str] = METHODS, out_dir: str = "labels",
          weights: str | None = None, vlm: str | VisionLanguageModel = "default",
          vlm_weights: str | None = None, sim_vlm: str | VisionLanguageModel | None = "default-2",
          sim_vlm_weights: str | None = None, vocabulary: str | list[str] | None = None,
          generator: str | Generator = "synthetic", generator_options: dict | None = None,
          n_generated: int = 50, similarity: str = "soft_wpmi", tau: float = 10.0, top_n: int = 20,
          crop: float = 0.5, top_k: int = 3, max_k: int = 5,
          rules: str | dict[str, list[Explanation]] | None = None, probe_images: int | None = None,
          batch_size: int = 64, seed: int = 0, report: bool = True,
          progress: bool = True, engine: str | ShardEngine = "local", ray_address: str | None = None,
          workers: int | None = None) -> list[Explanation]:
    """Label ``layers`` of ``model`` with ``methods`` (clip-dissect, linex, sieve) and verify every label.

    CLIP-Dissect: Oikarinen & Weng, "CLIP-Dissect: Automatic Description of Neuron Representations in
    Deep Vision Networks", ICLR 2023; LinEx: Oikarinen & Weng, "Linear Explanations for Individual
    Neurons", ICML 2024; SIEVE: "Select, Hypothesize and Verify: Towards Verified Neuron Concept
    Interpretation". vlm / sim_vlm: the explainer's vision-language model and the independent one that
    scores simulation (``default`` and ``default-2`` are the embedded tiny CLIPs; any open_clip name with
    ``*_weights``; or a :class:`~neurcore.labels.VisionLanguageModel`; sim_vlm None: no simulation).
    vocabulary: a list of phrases, a file path (one per line), or None for the probe's concept names.
    generator: ``synthetic``, ``diffusers:DIR`` or a :class:`~neurcore.labels.Generator`
    (``generator_options``: keyword arguments of its backend, e.g. ``num_inference_steps``).
    rules: rule explanations to verify beside the labels: {layer: [Explanation]} (as
    :func:`neurcore.dissect` passes), or a rule method (``dissect``, ``beam``) to run first into the
    same ``out_dir``, or None. engine: where the verification images are generated and scored:
    "local" (here), "ray" (a task per label on the Ray cluster at ``ray_address`` or a local one of
    ``workers`` CPUs, on a GPU each where the cluster has them; same results) or a
    :class:`~neurcore.distributed.ShardEngine`. Returns every row written to ``labels.jsonl``.
    """
    methods = _check_methods(methods)
    layers = unique_names(layers, "label: give at least one layer")
    with engine_for(engine, ray_address, workers) as shard_engine:
        setup = set_up(model, layers, probe, weights=weights, probe_images=probe_images, progress=progress)
        layers = setup.layers  # "all" and globs expanded
        vocab = _vocabulary(vocabulary, setup.probe)
        world = setup.probe if isinstance(setup.probe, SyntheticWorld) else None
        gen = generator if isinstance(generator, Generator) else \
            load_generator(generator, world=world, **(generator_options or {}))
        explainer = vlm if isinstance(vlm, VisionLanguageModel) else \
            load_vlm(vlm, vlm_weights, progress=progress)
        simulator = None
        if sim_vlm is not None and "linex" in methods:
            simulator = sim_vlm if isinstance(sim_vlm, VisionLanguageModel) else \
                load_vlm(sim_vlm, sim_vlm_weights, progress=progress)
        settings = {"model": setup.spec.name, "probe": setup.probe.name, "probe_images": setup.probe.n_images,
                    "vlm": explainer.cache_key, "sim_vlm": simulator.cache_key if simulator else None,
                    "generator": gen.describe(), "n_generated": n_generated, "similarity": similarity,
                    "tau": tau,
                    "top_n": top_n, "crop": crop, "top_k": top_k, "max_k": max_k, "seed": seed,
                    "vocabulary": len(vocab), "layers": layers}
        if weights:  # recorded only when given, so folders of runs without weights still resume
            settings["weights"] = os.path.abspath(weights)
        check_manifest(out_dir, settings, name=os.path.join("labels", "manifest.json"), what="labels ")
        rules = _rules_to_verify(rules, setup, out_dir, batch_size, progress)
        acts = extract(setup.spec, layers, setup.probe, os.path.join(out_dir, "layers"),
                       batch_size=batch_size,
                       progress=progress)
        image_emb, text_emb, sim_p = _embeddings(explainer, simulator, setup.probe, vocab, out_dir,
                                                 batch_size,
                                                 progress)
        run = _Labelling(setup, out_dir, methods, vocab, gen, explainer, image_emb, text_emb, sim_p,
                         similarity, tau, top_n, crop, top_k, max_k, n_generated, seed, batch_size, progress,
                         shard_engine)
        rows, summary = [], {}
        for name in layers:
            layer_rows, summary[name] = _label_layer(run, name, acts[name], (rules or {}).get(name, []),
                                                     world)
            rows.extend(layer_rows)
        _write_labels(out_dir, rows, {"settings": settings, "layers": summary,
                                      "vlm_concept_auc": _concept_auc_if_tiny(explainer, world, out_dir)})
        if report:
            write_label_report(out_dir, setup.probe, acts)
        return rows


def _check_methods(methods: Sequence[str]) -> list[str]:
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"label methods must be among {', '.join(METHODS)}, got "
                         f"{', '.join(unknown) or 'none'}")
    return methods


def _vocabulary(vocabulary: str | list[str] | None, probe: Probe) -> list[str]:
    """The phrases to label with: read from a file, given, or the probe's concept names; never empty."""
    if isinstance(vocabulary, str):
        vocab = read_vocabulary(vocabulary)
    elif vocabulary is None:
        vocab = list(probe.concept_names)
    else:
        vocab = list(dict.fromkeys(vocabulary))
    if not vocab:
        raise InputError("label: the vocabulary is empty")
    return vocab


def _rules_to_verify(rules, setup: Setup, out_dir: str, batch_size: int,
                     progress: bool) -> dict[str, list[Explanation]] | None:
    """Rule explanations per layer to score beside the labels; a method name runs that rule search first,
    into ``out_dir``, with its results files (after every check of the labelling run)."""
    if not isinstance(rules, str):
        return rules
    if not hasattr(setup.probe, "concept_masks") or rules == "none":
        return None
    nested = Setup(setup.spec, setup.layers, setup.probe, setup.probe.name)
    found = explain_rules(nested, out_dir, method=rules, batch_size=batch_size, cache=True,
                          progress=progress).results
    write_results(out_dir, found)
    return {name: [r for r in found if r.layer == name] for name in setup.layers}


def _embeddings(explainer: VisionLanguageModel, simulator: VisionLanguageModel | None, probe: Probe,
                vocab: list[str], out_dir: str, batch_size: int, progress: bool):
    """(explainer's probe embeddings [n_images, D], its vocabulary embeddings [n_vocab, D], the simulator's
    concept probabilities [n_images, n_vocab] or None), each cached under ``out_dir/vlm``."""
    vlm_dir = os.path.join(out_dir, "vlm")
    image_emb = embed_images(explainer, probe, vlm_dir, batch_size=batch_size, progress=progress)
    prompts = [concept_prompt(v) for v in vocab]
    text_emb = embed_texts(explainer, prompts, vlm_dir)
    sim_p = None
    if simulator is not None:
        sim_p = concept_probabilities(embed_images(simulator, probe, vlm_dir, batch_size=batch_size,
                                                   progress=progress),
                                      embed_texts(simulator, prompts, vlm_dir), *simulator.calibration)
    return image_emb, text_emb, sim_p


def _label_layer(run: _Labelling, name: str, acts: np.ndarray, rule_rows: list[Explanation],
                 world: SyntheticWorld | None) -> tuple[list[Explanation], dict]:
    """One layer: each method's labels (resumed from ``labels/<layer>/``), every label and rule verified and
    simulated, the layer's summary, and ``labels/<layer>/labels.jsonl``. Returns (labels, summary)."""
    d = os.path.join(run.out_dir, "labels", safe_name(name))
    os.makedirs(d, exist_ok=True)
    scores = unit_scores(acts, os.path.join(run.out_dir, "layers", safe_name(name), "scores.npy"))
    verifier = Verifier(run.setup.spec, name, scores, run.generator, n_images=run.n_generated, seed=run.seed,
                        cache_dir=os.path.join(d, "verify"), batch_size=run.batch_size, engine=run.engine)
    layer_rows = _run_methods(run, name, d, acts, scores, verifier)
    rows = layer_rows + list(rule_rows)
    _verify(rows, verifier, d)
    if run.sim_p is not None:
        _simulate(rows, run.sim_p, run.vocab, scores, run.seed)
    planted = [u for u in run.setup.spec.planted if u.layer == name] if world is not None else []
    summary = _summarize(rows, scores.shape[1], planted)
    write_jsonl(os.path.join(d, "labels.jsonl"), rows)
    return layer_rows, summary


def _write_labels(out_dir: str, rows: list[Explanation], summary: dict) -> None:
    """``labels.jsonl``, ``linex.csv``, ``clip_dissect.csv`` and ``labels_summary.json``, atomically."""
    write_jsonl(os.path.join(out_dir, "labels.jsonl"), rows)
    _write_tables(out_dir, rows)
    write_json(os.path.join(out_dir, "labels_summary.json"), summary, indent=2)


def _concept_auc_if_tiny(vlm: VisionLanguageModel, world: SyntheticWorld | None, out_dir: str) -> dict | None:
    """The embedded tiny CLIP's zero-shot concept AUC on the synthetic world (else None)."""
    if world is None or not vlm.name.startswith("neurcore-tiny"):
        return None
    return _concept_auc(vlm, os.path.join(out_dir, "vlm"))


def _concept_auc(vlm: VisionLanguageModel, vlm_dir: str) -> dict:
    """The tiny CLIP's zero-shot concept-presence ROC-AUC (held-out synthetic images), once per model."""
    path = os.path.join(vlm_cache_dir(vlm_dir, vlm), "concept_auc.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    auc = {k: (None if np.isnan(v) else v) for k, v in concept_auc(vlm, n_images=300).items()}
    write_json(path, auc, indent=1)
    return auc


def _run_methods(run: _Labelling, name: str, d: str, acts: np.ndarray, scores: np.ndarray,
                 verifier: Verifier) -> list[Explanation]:
    """Each method's labels of the layer's units, read back from ``d/<method>.jsonl`` when already written."""
    out: list[Explanation] = []
    for method in run.methods:
        path = os.path.join(d, f"{method}.jsonl")
        if os.path.isfile(path):
            out.extend(read_jsonl(path))
            continue
        if method == "clip-dissect":
            sim = image_text_similarity(np.asarray(run.image_emb), np.asarray(run.text_emb))
            anchor_top_k = SIMILARITY_FUNCTIONS[run.similarity].get("top_k")  # top images, not SIEVE's top_k
            # a probe smaller than the anchor's top_k
            extra = {"top_k": min(anchor_top_k, len(scores))} if anchor_top_k else {}
            got = ClipDissect(sim, run.vocab).explain(scores, similarity=run.similarity, layer=name, **extra)
        elif method == "linex":
            p = concept_probabilities(np.asarray(run.image_emb), np.asarray(run.text_emb),
                                      *run.explainer.calibration)
            got = LinEx(p, run.vocab).explain(scores, seed=run.seed, layer=name)
        else:
            got = Sieve(run.explainer, run.vocab, verifier, text_emb=run.text_emb).explain(
                acts, run.setup.probe, scores=scores, tau=run.tau, top_n=run.top_n, crop=run.crop,
                max_k=run.max_k, top_k=run.top_k, layer=name, parts_dir=os.path.join(d, "sieve-parts"),
                progress=run.progress)
        write_jsonl(path, got)
        out.extend(got)
    return out


def _verify(rows: list[Explanation], verifier, d: str) -> None:
    """Activation Rate and CoSy for every row with a single label or formula (LinEx's mixtures are
    scored by simulation instead); SIEVE rows already carry their verified hypothesis."""
    rows = [r for r in rows if r.method not in ("linex", "sieve") and r.formula]
    verifier.prefetch(r.formula for r in rows)
    for r in rows:
        got = verifier.score(r.formula, [r.unit])[0]
        for key in ("activation_rate", "cosy_auc", "cosy_mad"):
            if got.get(key) is not None:
                r.metrics[key] = got[key]
        if got.get("error"):
            r.extra["verify_error"] = got["error"]
        images = verifier.cache_path(r.formula)
        run_dir = os.path.dirname(os.path.dirname(d))
        r.extra["verify_images"] = os.path.relpath(images, run_dir) if images else None


def _simulate(rows, sim_p, vocab, scores, seed) -> None:
    """Simulation r on LinEx's test split under the second VLM, for every method with a label."""
    test = split_indices(len(scores), seed=seed)[2]
    linex = [r for r in rows if r.method == "linex"]
    if linex:
        r_lin = simulation_r(linex, sim_p, vocab, scores, test)
        for r, v in zip(linex, r_lin):
            r.metrics["simulation_r"] = float(v)
    singles = [r for r in rows if r.method != "linex" and r.formula and r.formula in vocab]
    if singles:
        unit_acts = scores[:, [r.unit for r in singles]]
        r_one = label_simulation_r([r.formula for r in singles], sim_p, vocab, unit_acts, test)
        for r, v in zip(singles, r_one):
            r.metrics["simulation_r"] = float(v)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def _summarize(rows, n_units: int, planted) -> dict:
    """Per method: units labelled, mean Activation Rate / CoSy / simulation r over the real (not
    planted) units; SIEVE's selected units and the other methods' AR on those same units; recovery of
    planted detectors (CLIP-Dissect, SIEVE) and planted linear units (LinEx, concept and sign)."""
    first_planted = n_units - len(planted)
    real = [r for r in rows if r.unit < first_planted]
    by = {}
    for r in real:
        by.setdefault(r.method, []).append(r)
    out = {"methods": {}}
    for m, rs in by.items():
        out["methods"][m] = {
            "units": len(rs), "labelled": sum(r.formula is not None for r in rs),
            "activation_rate": _mean(r.metrics.get("activation_rate") for r in rs),
            "cosy_auc": _mean(r.metrics.get("cosy_auc") for r in rs),
            "cosy_mad": _mean(r.metrics.get("cosy_mad") for r in rs),
            "simulation_r": _mean(r.metrics.get("simulation_r") for r in rs)}
    sieve = [r for r in by.get("sieve", []) if r.extra.get("selected")]
    if sieve:
        units = {r.unit for r in sieve}
        same = {m: _mean(r.metrics.get("activation_rate") for r in rs if r.unit in units)
                for m, rs in by.items()}
        retained = next((r.extra["mean_activation_rate"] for r in sieve if "mean_activation_rate" in r.extra),
                        None)
        out["sieve_units"] = {"selected": len(units), "activation_rate": same,
                              "sieve_hypotheses_mean_ar": retained}
    if planted:
        out["planted"] = _planted_recovery(rows, first_planted, planted)
    return out


def _planted_recovery(rows, first: int, planted) -> dict:
    detectors = {first + k: str(u.formula) for k, u in enumerate(planted) if u.formula is not None
                 and len(u.formula) == 1}
    linear = {first + k: dict(u.weights) for k, u in enumerate(planted) if u.weights is not None}
    res: dict = {}
    for m in ("clip-dissect", "sieve"):
        got = {r.unit: r for r in rows if r.method == m and r.unit in detectors}
        if not got:
            continue
        hits = [u for u, r in got.items() if r.formula == detectors[u]]
        selected = [u for u, r in got.items() if m != "sieve" or r.extra.get("selected")]
        res[m] = {"detectors": len(detectors), "labelled_as_planted": len(hits),
                  "scored_units": len(selected),
                  "units": {str(u): {"planted": detectors[u], "label": got[u].formula} for u in sorted(got)}}
    lin = {r.unit: r for r in rows if r.method == "linex" and r.unit in linear}
    if lin:
        pairs, found, units = 0, 0, {}
        for u, r in sorted(lin.items()):
            weights = dict(zip(r.extra.get("concepts", []), r.extra.get("weights", [])))
            ok = {c: bool(c in weights and np.sign(weights[c]) == np.sign(w)) for c, w in linear[u].items()}
            pairs += len(ok)
            found += sum(ok.values())
            units[str(u)] = {"planted": linear[u], "found": weights, "right_sign": ok}
        res["linex"] = {"planted_concepts": pairs, "found_with_right_sign": found, "units": units}
    return res


def _write_tables(out_dir: str, rows: list[Explanation]) -> None:
    linex = [r for r in rows if r.method == "linex"]
    if linex:
        write_linex_table(os.path.join(out_dir, "linex.csv"), linex)
    cd = [r for r in rows if r.method == "clip-dissect"]
    if cd:
        with atomic_open(os.path.join(out_dir, "clip_dissect.csv"), newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", "unit", "description", "similarity"])
            for r in cd:
                w.writerow([r.layer or "", r.unit, r.formula or "", r.metrics.get("similarity", "")])
