"""The ``neurcore`` command line: ``search`` (the backend other tools call), ``dissect``, ``label``,
``circuit``, ``layers``, ``export``, ``import``, ``compare``, ``demo`` and ``backends``.

Every subcommand is one row of :data:`_COMMANDS`: its one-line description, the function that adds
its options and the function that runs it. Options several subcommands share are added by the
``_add_*`` helpers. A :class:`~neurcore.errors.NeurcoreError` (bad input, a backend that is not
usable) becomes one line on stderr and exit code 2, with no partial output file left behind;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, NamedTuple

from . import __version__
from .errors import InputError, NeurcoreError
from .results import planted_summary

#: Rule-search methods of ``search`` and ``dissect``.
_RULE_METHODS = ["dissect", "beam", "optimal", "clustered"]
#: The formats of ``export`` and ``import`` (:data:`neurcore.formats.FORMATS`; listed here so that the
#: parser is built without importing the package's families).
_FORMATS = ["netdissect", "compexp", "clip-dissect", "neuronpedia"]
_SIMILARITIES = ["soft_wpmi", "wpmi", "rank_reorder", "cos_similarity", "cos_similarity_cubed"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


class _UsageError(InputError):
    """A combination of options that argparse cannot check; reported the way argparse reports its own."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {value}")
    return value


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _rgb(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}")
    return values


# Options shared by several subcommands.


def _add_network_options(parser: argparse.ArgumentParser, *, model_help: str, layer_help: str,
                         probe_images_help: str) -> None:
    """--model, --weights, --layer (repeatable), --probe, --probe-images, --input-size, --mean and --std
    (dissect, label)."""
    parser.add_argument("--model", default="default", help=model_help)
    _add_weights_option(parser)
    parser.add_argument("--layer", action="append", required=True, metavar="NAME", help=layer_help)
    _add_probe_option(parser)
    parser.add_argument("--probe-images", type=_positive_int, default=None, help=probe_images_help)
    _add_preprocessing_options(parser)


def _add_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="the model's weights: a torch state dict or a .safetensors file "
                             "(default: random weights, the same in every run)")


def _add_preprocessing_options(parser: argparse.ArgumentParser, *, mean_std: bool = True) -> None:
    """--input-size, and with ``mean_std`` --mean and --std: override the model's own preprocessing."""
    parser.add_argument("--input-size", type=_positive_int, default=None, metavar="N",
                        help="input images are N x N pixels (default: the model's own, 224 for a "
                             "python: factory's module)")
    if mean_std:
        parser.add_argument("--mean", type=_rgb, default=None, metavar="R,G,B",
                            help="per-channel mean on [0, 1] (default: the model's own, else ImageNet's)")
        parser.add_argument("--std", type=_rgb, default=None, metavar="R,G,B",
                            help="per-channel std on [0, 1] (default: the model's own, else ImageNet's)")


def _model(args: argparse.Namespace, weights: str | None = None):
    """``args.model`` as given, or, with preprocessing options, the ModelSpec they change (loaded here)."""
    overrides = {k: getattr(args, k, None) for k in ("input_size", "mean", "std")}
    if all(v is None for v in overrides.values()):
        return args.model
    from .models import load_model

    return load_model(args.model, weights, progress=not getattr(args, "quiet", False), **overrides)


def _add_probe_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe", default="default",
                        help="default (synthetic world), synthetic-broden (the synthetic world at Broden's "
                             "scale), broden:DIR, folder:DIR, or coco:FILE[:IMAGE_DIR] (COCO-format "
                             "annotations; images beside FILE or in its images/ folder by default)")


def _add_batch_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=64)


def _add_output_options(parser: argparse.ArgumentParser, *, out_help: str | None = None) -> None:
    """--out DIR and --quiet (dissect, label, circuit)."""
    parser.add_argument("--out", required=True, metavar="DIR", help=out_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_vision_language_options(parser: argparse.ArgumentParser) -> None:
    """The vision-language label options (dissect, label); :func:`_vision_language_kwargs` reads them back."""
    group = parser.add_argument_group("vision-language labels (clip-dissect, linex, sieve)")
    group.add_argument("--vlm", default="default",
                       help="explainer VLM: default (embedded tiny CLIP) or an open_clip name")
    group.add_argument("--vlm-weights", default=None, metavar="PATH",
                       help="open_clip weights (file or directory)")
    group.add_argument("--sim-vlm", default="default-2",
                       help="second VLM for LinEx's simulation score (default-2)")
    group.add_argument("--sim-vlm-weights", default=None, metavar="PATH")
    group.add_argument("--vocabulary", default=None, metavar="FILE",
                       help="one word or phrase per line (default: the probe's concept names)")
    group.add_argument("--generator", default="synthetic",
                       help="verification images: synthetic or diffusers:DIR")
    group.add_argument("--generated", type=_positive_int, default=50,
                       help="images generated per label (default 50)")
    group.add_argument("--generator-steps", type=_positive_int, default=None, metavar="N",
                       help="diffusers: denoising steps (default: the pipeline's own)")
    group.add_argument("--similarity", default="soft_wpmi", choices=_SIMILARITIES,
                       help="clip-dissect similarity function (default soft_wpmi)")
    group.add_argument("--tau", type=float, default=10.0,
                       help="sieve: p99/median ratio that selects a unit (default 10)")
    group.add_argument("--top-n", type=_positive_int, default=20,
                       help="sieve: top samples per unit (default 20)")
    group.add_argument("--top-k", type=_positive_int, default=3,
                       help="sieve: concepts per cluster (default 3)")


def _vision_language_kwargs(args: argparse.Namespace) -> dict:
    generator_options = {"num_inference_steps": args.generator_steps} if args.generator_steps else None
    return {"vlm": args.vlm, "vlm_weights": args.vlm_weights, "sim_vlm": args.sim_vlm,
            "sim_vlm_weights": args.sim_vlm_weights, "vocabulary": args.vocabulary,
            "generator": args.generator, "generator_options": generator_options,
            "n_generated": args.generated, "similarity": args.similarity, "tau": args.tau,
            "top_n": args.top_n, "top_k": args.top_k}


# search


def _search_options(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Explain every unit of U.npz by a formula over the concepts of C.npz; "
                          "one JSON object per unit in the output.")
    parser.add_argument("--concepts", required=True, metavar="C.npz",
                        help="masks: bool [n_concepts, n_images, ...]; names: strings [n_concepts]; "
                             "optional categories")
    parser.add_argument("--units", required=True, metavar="U.npz",
                        help="masks: bool [n_units, n_images, ...], or activations: real, same shape")
    parser.add_argument("--out", required=True, metavar="R.jsonl", help="output, one JSON object per unit")
    parser.add_argument("--method", choices=_RULE_METHODS, default="beam",
                        help="default: beam; clustered needs activations in U.npz")
    parser.add_argument("--length", type=_positive_int, default=3, help="maximum formula length (default 3)")
    parser.add_argument("--beam", type=_positive_int, default=5, help="beam width (default 5, as compexp)")
    parser.add_argument("--quantile", type=_fraction, default=0.005,
                        help="top quantile that binarizes activations (default 0.005)")
    parser.add_argument("--threshold", type=float, default=0.04, help="detector IoU threshold (default 0.04)")
    parser.add_argument("--category", default=None, help="dissect: consider only concepts of this category")
    parser.add_argument("--layer", default=None, help="layer name to record in the results")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where to count (default cpu)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="optimal: per-unit time budget; when it runs out the result reports its gap")
    _add_engine_options(parser)


def _run_search(args: argparse.Namespace) -> int:
    from .rules import search_npz

    t0 = time.perf_counter()
    options = {"method": args.method, "length": args.length, "beam": args.beam, "quantile": args.quantile,
               "threshold": args.threshold, "category": args.category, "layer": args.layer,
               "device": args.device, "time_budget": args.time_budget}
    if args.engine == "local" and not (args.ray_address or args.workers):
        results = search_npz(args.concepts, args.units, args.out, **options)
    else:
        from .distributed import engine_for  # only here: the search path imports no more than it needs

        with engine_for(args.engine, args.ray_address, args.workers) as engine:
            results = search_npz(args.concepts, args.units, args.out, engine=engine, **options)
    print(f"neurcore search: {len(results)} units, method {args.method}, {time.perf_counter() - t0:.2f} s "
          f"-> {args.out}", file=sys.stderr)
    return 0


# dissect


def _dissect_options(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run a model over a probe, binarize each unit at its top quantile and explain it "
                          "by rules over the probe's concepts. Re-running with the same --out resumes.")
    _add_network_options(parser, model_help="default (embedded, trained on first use), resnet18, resnet50 "
                         "or vit_b_16; or any torchvision:NAME, timm:NAME or python:MODULE:FACTORY (a "
                         "function of no arguments returning an nn.Module); see neurcore layers",
                         layer_help="dotted layer name (repeat for several), e.g. conv4 or layer4; 'all' "
                         "for every block output; or a glob such as 'layer4.*'",
                         probe_images_help="images of the synthetic world (default 3000; synthetic-broden "
                         "22210), or the first N of a broden:, folder: or coco: probe (default all)")
    parser.add_argument("--method", choices=_RULE_METHODS, default="dissect", help="default: dissect")
    parser.add_argument("--length", type=_positive_int, default=3,
                        help="beam: maximum formula length (default 3)")
    parser.add_argument("--beam", type=_positive_int, default=5, help="beam: width (default 5)")
    parser.add_argument("--quantile", type=_fraction, default=0.005,
                        help="top quantile per unit (default 0.005)")
    _add_batch_size_option(parser)
    parser.add_argument("--methods", default="rules", metavar="LIST", help="comma-separated: rules (always) "
                        "and any of clip-dissect, linex, sieve (default rules)")
    parser.add_argument("--activation-cache", choices=("auto", "on", "off"), default="auto",
                        help="keep the float activations on disk and read them back instead of a second "
                             "forward pass: auto (where they take at most half the free disk and half the "
                             "available memory), on, off "
                             "(always kept for --methods beyond rules and for clustered)")
    parser.add_argument("--checkpoint-images", type=_positive_int, default=1024, metavar="N",
                        help="save the activation passes' state every N probe images (default 1024); "
                             "with --engine ray, the images of a shard (fewer on a probe too small for "
                             "four shards a worker)")
    _add_engine_options(parser)
    _add_output_options(parser, out_help="output directory (results, cache, report)")
    _add_vision_language_options(parser)


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distributed execution (pip install 'neurcore[distributed]')")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local (this process, the default) or ray: shards over a Ray cluster, same "
                            "results")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="ray: join the cluster at HOST:PORT (or ray://HOST:PORT, auto); default: start a "
                            "local one")
    group.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                       help="ray: workers (model actors and concurrent tasks); default: the cluster's CPUs")


def _engine_kwargs(args: argparse.Namespace) -> dict:
    return {"engine": args.engine, "ray_address": args.ray_address, "workers": args.workers}


def _run_dissect(args: argparse.Namespace) -> int:
    from .pipelines import dissect

    t0 = time.perf_counter()
    results = dissect(_model(args, args.weights), args.layer, args.probe, method=args.method,
                      length=args.length, beam=args.beam, out_dir=args.out, weights=args.weights,
                      quantile=args.quantile, batch_size=args.batch_size, probe_images=args.probe_images,
                      progress=not args.quiet,
                      cache={"auto": None, "on": True, "off": False}[args.activation_cache],
                      checkpoint_images=args.checkpoint_images,
                      methods=_comma_list(args.methods),
                      label_options=_vision_language_kwargs(args), **_engine_kwargs(args))
    planted = [r for r in results if r.planted]
    results = [r for r in results if r.method == args.method]
    n_layers = len({r.layer for r in results})
    summary = f"{len(results)} units in {n_layers} layer(s), {time.perf_counter() - t0:.1f} s"
    if planted:
        summary += f"; {planted_summary(planted)}"
    print(f"neurcore dissect: {summary}\n  report: {os.path.join(args.out, 'report', 'index.html')}")
    return 0


# label


def _label_options(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Label every unit of the layers with CLIP-Dissect, LinEx and/or SIEVE, verify "
                          "every label by generating images of it (Activation Rate, CoSy) and simulate it "
                          "with a second VLM; Network Dissection's labels are scored beside them. Re-running "
                          "with the same --out resumes.")
    _add_network_options(parser, model_help="default, resnet18, resnet50 or vit_b_16; or any "
                         "torchvision:NAME, timm:NAME or python:MODULE:FACTORY",
                         layer_help="dotted layer name (repeat)",
                         probe_images_help="images of the synthetic world, or the first N of a broden:, "
                         "folder: or coco: probe")
    parser.add_argument("--method", default="clip-dissect,linex,sieve", metavar="LIST",
                        help="comma-separated among clip-dissect, linex, sieve (default all three)")
    parser.add_argument("--rules", choices=["dissect", "beam", "none"], default="dissect",
                        help="rule explanations to score beside the labels, when the probe has masks "
                             "(default dissect)")
    _add_batch_size_option(parser)
    _add_engine_options(parser)
    _add_output_options(parser)
    _add_vision_language_options(parser)


def _run_label(args: argparse.Namespace) -> int:
    from .pipelines import label

    t0 = time.perf_counter()
    rows = label(_model(args, args.weights), args.layer, args.probe, methods=_comma_list(args.method),
                 out_dir=args.out, weights=args.weights, rules=None if args.rules == "none" else args.rules,
                 batch_size=args.batch_size, probe_images=args.probe_images, progress=not args.quiet,
                 **_vision_language_kwargs(args), **_engine_kwargs(args))
    with open(os.path.join(args.out, "labels_summary.json")) as f:
        summary = json.load(f)
    seconds = time.perf_counter() - t0
    lines = [f"neurcore label: {len(rows)} labels in {len(args.layer)} layer(s), {seconds:.1f} s"]
    for layer, layer_summary in summary["layers"].items():
        for method, scores in layer_summary["methods"].items():
            rate = "-" if scores["activation_rate"] is None else f"{100 * scores['activation_rate']:.1f}%"
            sim_r = "-" if scores["simulation_r"] is None else f"{scores['simulation_r']:.3f}"
            lines.append(f"  {layer} {method}: {scores['labelled']}/{scores['units']} units labelled, "
                         f"mean AR {rate}, mean sim r {sim_r}")
    lines.append(f"  report: {os.path.join(args.out, 'report', 'labels.html')}")
    print("\n".join(lines))
    return 0


# circuit


def _circuit_options(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Find the neurons that carry a class from layer to layer, write circuit.json, "
                          "fidelity.csv, results.jsonl and circuit.html. Re-running with the same --out "
                          "reuses finished layers.")
    parser.add_argument("--model", default="default", help="default, default-circuit (a planted circuit for "
                        "class circle), resnet18, resnet50 or vit_b_16; or any torchvision:NAME, timm:NAME "
                        "or python:MODULE:FACTORY")
    _add_weights_option(parser)
    _add_preprocessing_options(parser)
    parser.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                        help="class name or output index (default: the planted circuit's class)")
    parser.add_argument("--layers", default="conv4,conv3",
                        help="comma-separated layers, top to bottom (default conv4,conv3)")
    parser.add_argument("--method", choices=["neurflow", "neucept"], default="neurflow")
    _add_probe_option(parser)
    parser.add_argument("--images", type=_positive_int, default=40, help="class images to crop (default 40)")
    parser.add_argument("--tau", type=_positive_int, default=16,
                        help="neurflow: core neurons per neuron (default 16)")
    parser.add_argument("--top-k", type=_positive_int, default=50,
                        help="neurflow: crops per neuron concept (default 50)")
    parser.add_argument("--steps", type=_positive_int, default=50,
                        help="neurflow: integration steps (default 50)")
    parser.add_argument("--fdr", type=_fraction, default=0.1,
                        help="neucept: target false discovery rate (default 0.1)")
    parser.add_argument("--runs", type=_positive_int, default=10, help="neucept: knockoff runs (default 10)")
    parser.add_argument("--random-sets", type=_positive_int, default=20,
                        help="fidelity: random sets (default 20)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    _add_output_options(parser)


def _run_circuit(args: argparse.Namespace) -> int:
    from .pipelines import circuit

    t0 = time.perf_counter()
    doc = circuit(_model(args, args.weights), args.class_name, _comma_list(args.layers), args.out,
                  method=args.method, weights=args.weights,
                  probe=args.probe, max_images=args.images, tau=args.tau, top_k=args.top_k,
                  n_steps=args.steps, fdr=args.fdr, n_runs=args.runs, n_random=args.random_sets,
                  device=args.device, progress=not args.quiet)
    summary = f"class {doc['class']}, {len(doc['nodes'])} nodes, {len(doc['edges'])} edges"
    for layer, metrics in doc.get("metrics", {}).items():
        summary += "; " + layer + ": " + ", ".join(f"{k} {v}" for k, v in metrics.items())
    print(f"neurcore circuit: {summary}, {time.perf_counter() - t0:.1f} s\n"
          f"  view: {os.path.join(args.out, 'circuit.html')}")
    return 0


# layers


def _layers_options(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Build a model, run one forward pass on a zero image at its input size and list "
                          "every named layer: its type, output shape, units (the channels dissect "
                          "explains) and whether --layer all picks it.")
    parser.add_argument("--model", default="default",
                        help="default, default-circuit, resnet18, resnet50, vit_b_16, torchvision:NAME, "
                             "timm:NAME or python:MODULE:FACTORY")
    _add_weights_option(parser)
    _add_preprocessing_options(parser, mean_std=False)
    parser.add_argument("--depth", type=_positive_int, default=None, metavar="D",
                        help="only layers of at most D dotted segments (default: every layer)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table: {model, input_size, layers: "
                             "[{name, type, shape, units, block}]}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (training the default model)")


def _run_layers(args: argparse.Namespace) -> int:
    from .models import layer_table, load_model

    spec = load_model(args.model, args.weights, input_size=args.input_size, progress=not args.quiet)
    rows = layer_table(spec, depth=args.depth)
    if args.json:
        print(json.dumps({"model": spec.name, "input_size": spec.input_size,
                          "layers": [row.as_dict() for row in rows]}, indent=2))
        return 0
    cells = [("layer", "type", "output", "units", "all")]
    cells += [(r.name, r.type, "-" if r.shape is None else "x".join(map(str, r.shape)),
               "-" if r.units is None else str(r.units), "*" if r.block else "") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = [f"{spec.name}: input 3x{spec.input_size}x{spec.input_size}, {len(rows)} layers; "
             "* = picked by --layer all"]
    for row in cells:
        line = "  ".join(cell.rjust(w) if i == 3 else cell.ljust(w) for i, (cell, w) in
                         enumerate(zip(row[:4], widths)))
        lines.append(f"{line}  {row[4]}".rstrip())
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # a reader that stopped early (| head) is no error; keep exit from flushing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# export, import and compare: the field's file formats


def _export_options(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write a results folder of neurcore dissect/label (or a neurcore JSONL file) in "
                          "another tool's format: NetDissect-Lite's tally.csv, compexp's tally_{layer}.csv, "
                          "CLIP-Dissect's descriptions.csv or Neuronpedia-style explanations.jsonl.")
    parser.add_argument("results", metavar="RESULTS", help="results folder or neurcore JSONL file")
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--format", required=True, choices=_FORMATS)
    parser.add_argument("--layer", default=None, help="export only this layer")
    parser.add_argument("--method", default=None,
                        help="export this method's rows (default: the rule rows for netdissect and "
                             "compexp, clip-dissect's for clip-dissect, every labelled row for neuronpedia)")
    parser.add_argument("--model-id", default=None, help="neuronpedia: modelId (default: the run's model)")


def _run_export(args: argparse.Namespace) -> int:
    from .formats import export_results

    paths = export_results(args.results, args.out, args.format, layer=args.layer, method=args.method,
                           model_id=args.model_id)
    print(f"neurcore export: {args.format}: " + ", ".join(paths))
    return 0


def _import_options(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Read another tool's results (a tally.csv, tally_{layer}.csv, descriptions.csv or "
                          "Neuronpedia JSONL file, or a folder of them; the format is detected) into "
                          "neurcore's schema: OUT/results.jsonl and OUT/results.csv.")
    parser.add_argument("source", metavar="FILE", help="file or folder of another tool's results")
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--format", default=None, choices=_FORMATS, help="default: detected")
    parser.add_argument("--layer", default=None,
                        help="the layer to record where the file names none (NetDissect's tally.csv)")


def _run_import(args: argparse.Namespace) -> int:
    from .formats import import_results
    from .results import write_csv, write_jsonl

    rows = import_results(args.source, args.format, layer=args.layer)
    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "results.jsonl"), rows)
    write_csv(os.path.join(args.out, "results.csv"), rows)
    methods = ", ".join(dict.fromkeys(r.method for r in rows))
    out = os.path.join(args.out, "results.jsonl")
    print(f"neurcore import: {len(rows)} explanations ({methods}) -> {out}")
    return 0


def _compare_options(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Two sets of explanations of the same units side by side (neurcore results or "
                          "another tool's files), each label re-scored by neurcore when a model is given: "
                          "IoU with the unit's mask on the probe, Activation Rate and CoSy of generated "
                          "images. Writes OUT/compare.csv.")
    parser.add_argument("a", metavar="A", help="results folder or file (any format neurcore imports)")
    parser.add_argument("b", metavar="B", help="the same for the other side")
    parser.add_argument("--a-method", default=None, help="the method to take from A when it holds several")
    parser.add_argument("--b-method", default=None, help="the same for B")
    parser.add_argument("--model", default=None, help="re-score with this model (any form neurcore dissect "
                        "takes); without it only the scores the files report are shown")
    _add_weights_option(parser)
    parser.add_argument("--layer", action="append", default=None, metavar="NAME",
                        help="the layers to compare (repeat); a file naming no layer belongs to the only one")
    _add_probe_option(parser)
    parser.add_argument("--probe-images", type=_positive_int, default=None,
                        help="images of the synthetic world, or the first N of a broden:, folder: or coco: "
                             "probe")
    _add_preprocessing_options(parser)
    parser.add_argument("--quantile", type=_fraction, default=0.005,
                        help="top quantile that makes a unit's mask (default 0.005)")
    parser.add_argument("--generator", default="synthetic", help="verification images: synthetic or "
                        "diffusers:DIR")
    parser.add_argument("--generated", type=_positive_int, default=50, help="images generated per label")
    _add_batch_size_option(parser)
    _add_output_options(parser, out_help="output folder (compare.csv and caches)")


def _run_compare(args: argparse.Namespace) -> int:
    from .pipelines import compare

    model = None if args.model is None else _model(args, args.weights)
    rows = compare(args.a, args.b, out_dir=args.out, a_method=args.a_method, b_method=args.b_method,
                   model=model, layers=args.layer, probe=args.probe, weights=args.weights,
                   generator=args.generator, n_generated=args.generated, quantile=args.quantile,
                   probe_images=args.probe_images, batch_size=args.batch_size, progress=not args.quiet)
    lines = [f"neurcore compare: {len(rows)} units"]
    for side, source in (("a", args.a), ("b", args.b)):
        labelled = [r for r in rows if r[f"{side}_label"]]
        means = []
        for key, name in (("iou", "IoU"), ("activation_rate", "AR"), ("cosy_auc", "CoSy AUC"),
                          ("reported", "reported score")):
            values = [r[f"{side}_{key}"] for r in labelled if r[f"{side}_{key}"] is not None]
            if values:
                means.append(f"{name} {sum(values) / len(values):.3f} ({len(values)} units)")
        summary = "; ".join(means) or "-"
        lines.append(f"  {side.upper()} {source}: {len(labelled)} labelled; mean {summary}")
    both = [r for r in rows if r["a_iou"] is not None and r["b_iou"] is not None]
    if both:
        wins = sum(r["a_iou"] > r["b_iou"] for r in both), sum(r["b_iou"] > r["a_iou"] for r in both)
        lines.append(f"  IoU: A higher on {wins[0]}, B higher on {wins[1]}, equal on "
                     f"{len(both) - sum(wins)} of {len(both)} units")
    lines.append(f"  table: {os.path.join(args.out, 'compare.csv')}")
    print("\n".join(lines))
    return 0


# demo and backends


def _demo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=_positive_int, default=2000, help="probe images (default 2000)")
    parser.add_argument("--concepts", type=int, default=300, help="concepts (default 300, at least 13)")
    parser.add_argument("--side", type=_positive_int, default=56, help="mask side in pixels (default 56)")
    parser.add_argument("--seed", type=int, default=0)


def _run_demo(args: argparse.Namespace) -> int:
    if args.concepts < 13:
        raise _UsageError("demo needs --concepts >= 13 (the planted units use c0..c12)")
    from .testing import run_demo

    result = run_demo(n_images=args.images, n_concepts=args.concepts, side=args.side, seed=args.seed)
    return 0 if result["found"] == result["planted"] else 1


def _no_options(parser: argparse.ArgumentParser) -> None:
    pass


def _run_backends(args: argparse.Namespace) -> int:
    from . import backends

    print(json.dumps(backends(), indent=2))
    return 0


class _Command(NamedTuple):
    description: str
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, _Command] = {
    "search": _Command("explain units by rules over concepts (Network Dissection, beam search)",
                       _search_options, _run_search),
    "dissect": _Command("dissect layers of a model on a probe: results and an HTML report",
                        _dissect_options, _run_dissect),
    "label": _Command("label units with a vision-language model: CLIP-Dissect, LinEx, SIEVE",
                      _label_options, _run_label),
    "circuit": _Command("the circuit of a class: NeurFlow concept circuits or NeuCEPT critical neurons",
                        _circuit_options, _run_circuit),
    "layers": _Command("list a model's layers: type, output shape, units, and which --layer all picks",
                       _layers_options, _run_layers),
    "export": _Command("write results in another tool's format: netdissect, compexp, clip-dissect or "
                       "neuronpedia",
                       _export_options, _run_export),
    "import": _Command("read another tool's results files into neurcore's schema",
                       _import_options, _run_import),
    "compare": _Command("two sets of explanations side by side, both re-scored by neurcore's verifier",
                        _compare_options, _run_compare),
    "demo": _Command("explain planted units of a synthetic concept set with the mask engine",
                     _demo_options, _run_demo),
    "backends": _Command("print which native backends are built and usable, as JSON",
                         _no_options, _run_backends),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="neurcore", description="Explain what the units of deep networks have learned.")
    parser.add_argument("--version", action="version", version=f"neurcore {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, command in _COMMANDS.items():
        command.add_options(sub.add_parser(name, help=command.description))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    No subcommand prints the usage with every subcommand's description (exit 0). A NeurcoreError
    raised by a subcommand becomes one line ``neurcore <cmd>: error: <message>`` on stderr and
    exit code 2; every other exception propagates.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _COMMANDS[args.command].run(args)
    except _UsageError as exc:
        parser.error(str(exc))
    except NeurcoreError as exc:
        print(f"neurcore {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
