"""End-to-end dissection: a model, its layers and a probe in; results and an HTML report out.

set-up -> rules (concepts, activations, unit masks, rule search; see ``_rules``) -> labels (optional)
-> ``results.jsonl``, ``results.csv`` and ``report/``. A re-run with the same ``out_dir`` resumes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from .._io import write_json
from ..distributed import ShardEngine, engine_for
from ..errors import InputError
from ..labels import METHODS as LABEL_METHODS
from ..models import ModelSpec
from ..probe import Probe
from ..report import write_label_report, write_report
from ..results import Explanation
from ._label import label
from ._rules import RuleRun, check_rule_method, explain_rules, write_results
from ._setup import Setup, set_up, unique_names
from ._stages import Stages

__all__ = ["dissect"]


def dissect(model: str | ModelSpec = "default", layers: Sequence[str] = ("conv4",),
            probe: str | Probe = "default", *, method: str = "dissect", length: int = 3, beam: int = 5,
            out_dir: str = "dissection", weights: str | None = None, quantile: float = 0.005,
            batch_size: int = 64, units_per_part: int = 64, probe_images: int | None = None,
            top_images: int = 5, report: bool = True, progress: bool = True, cache: bool | None = None,
            checkpoint_images: int = 1024,
            methods: Sequence[str] = ("rules",), label_options: dict | None = None,
            engine: str | ShardEngine = "local", ray_address: str | None = None,
            workers: int | None = None) -> list[Explanation]:
    """Dissect ``layers`` of ``model`` on ``probe`` and write results and a report to ``out_dir``.

    model: a reference (:func:`~neurcore.models.load_model`: "default", "torchvision:NAME", "timm:NAME",
    "python:MODULE:FACTORY", ...) or a :class:`~neurcore.models.ModelSpec`.
    layers: dotted layer names (a sequence of str). probe: "default", "broden:DIR", "folder:DIR", or a
    :class:`~neurcore.probe.Probe`. method: "dissect" (Network Dissection's best single concept:
    Bau et al., "Network Dissection: Quantifying Interpretability of Deep Visual Representations",
    CVPR 2017), "beam" (compositional, ``length``, ``beam``: Mu & Andreas, "Compositional
    Explanations of Neurons", NeurIPS 2020), "optimal" (guaranteed-optimal formulas up to
    ``length``) or "clustered" (one formula per activation range).
    quantile: top quantile of each unit's activations that makes its mask (0.005).
    cache: keep the float activations on disk (``layers/<layer>/acts.npy``) and read them back
    instead of running the model twice: True, False, or None (where they take at most half the free
    disk and half the available memory). Either way memory is flat in the probe's size but for the
    exact top values the thresholds need; labelling methods and ``clustered`` read the cache, so
    they keep it. checkpoint_images: how often (in probe images) the two passes save their state,
    so a killed run resumes there.
    methods: method families to run: ``rules`` (the rule search ``method``, always) and any of
    :data:`neurcore.labels.METHODS` (clip-dissect, linex, sieve), which run on the same activation
    cache, are verified beside the rules and added to the report (``label_options``: keyword
    arguments of :func:`neurcore.label`).
    engine: where the rule stage runs: "local" (this process), "ray" (image shards of
    ``checkpoint_images`` images and searches of ``units_per_part`` units on a Ray cluster: the one
    at ``ray_address``, or a local one of ``workers`` CPUs; :mod:`neurcore.distributed`; the
    labelling methods' verification images are generated there too), or a
    :class:`~neurcore.distributed.ShardEngine`. Results are byte-identical whatever the engine; with
    one, each call's time and bytes are listed in ``engine.json``.
    Returns the explanations of every unit of every layer (rules first, then the labels).
    """
    t0 = time.perf_counter()
    layers = unique_names(layers, "dissect: give at least one --layer")
    label_methods = _label_methods(method, methods)
    stage = Stages(out_dir)
    with engine_for(engine, ray_address, workers) as shard_engine:
        with stage("set-up: model, probe"):
            setup = set_up(model, layers, probe, weights=weights, probe_images=probe_images,
                           progress=progress)
        run = explain_rules(setup, out_dir, method=method, length=length, beam=beam, weights=weights,
                            quantile=quantile, batch_size=batch_size, units_per_part=units_per_part,
                            top_images=top_images, cache=True if label_methods else cache,
                            checkpoint_images=checkpoint_images, progress=progress, stage=stage,
                            engine=shard_engine)
        labels = _labels(setup, run, out_dir, label_methods, batch_size, progress, label_options,
                         shard_engine)
        if shard_engine is not None:
            write_json(os.path.join(out_dir, "engine.json"),
                       {"engine": type(shard_engine).__name__, "workers": getattr(shard_engine, "workers", 1),
                        "calls": shard_engine.log}, indent=0)
    write_results(out_dir, run.results, labels)
    if report:
        with stage("report"):
            write_report(out_dir, run.results, run.settings, setup.probe, run.concepts, run.tops,
                         top_images=top_images, seconds=time.perf_counter() - t0)
        if labels:
            write_label_report(out_dir, setup.probe, run.acts, top_images=top_images)
    return run.results + labels


def _label_methods(method: str, methods: Sequence[str]) -> list[str]:
    """The labelling methods among ``methods``, after checking the rule method and that rules are in it."""
    check_rule_method(method)
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m != "rules" and m not in LABEL_METHODS]
    if bad or "rules" not in methods:
        raise InputError(f"--methods: expected rules and any of {', '.join(LABEL_METHODS)}, got "
                         f"{', '.join(methods)} (neurcore label runs the labelling methods alone)")
    return [m for m in methods if m != "rules"]


def _labels(setup: Setup, run: RuleRun, out_dir: str, methods: list[str], batch_size: int, progress: bool,
            options: dict | None, engine: ShardEngine | None) -> list[Explanation]:
    """The vision-language labels of the same layers, verified beside the rules (none without methods)."""
    if not methods:
        return []
    by_layer = {name: [r for r in run.results if r.layer == name] for name in setup.layers}
    return label(setup.spec, setup.layers, setup.probe, methods=methods, out_dir=out_dir, rules=by_layer,
                 batch_size=batch_size, report=False, progress=progress, engine=engine or "local",
                 **(options or {}))
