"""The ``neurcore`` command line: ``search`` (the backend other tools call), ``demo`` and ``backends``.

Bad input gets one line on stderr naming the problem and exit code 2; no
partial output file is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="neurcore", description="Explain what the units of deep networks have learned.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="explain units by rules over concepts (Network Dissection, beam search)",
                       description="Explain every unit of U.npz by a formula over the concepts of C.npz; "
                                   "one JSON object per unit in the output.")
    s.add_argument("--concepts", required=True, metavar="C.npz",
                   help="masks: bool [n_concepts, n_images, ...]; names: strings [n_concepts]; optional categories")
    s.add_argument("--units", required=True, metavar="U.npz",
                   help="masks: bool [n_units, n_images, ...], or activations: real, same shape")
    s.add_argument("--out", required=True, metavar="R.jsonl", help="output, one JSON object per unit")
    s.add_argument("--method", choices=["dissect", "beam", "optimal", "clustered"], default="beam",
                   help="default: beam; clustered needs activations in U.npz")
    s.add_argument("--length", type=_positive_int, default=3, help="maximum formula length (default 3)")
    s.add_argument("--beam", type=_positive_int, default=5, help="beam width (default 5, as compexp)")
    s.add_argument("--quantile", type=_fraction, default=0.005,
                   help="top quantile that binarizes activations (default 0.005)")
    s.add_argument("--threshold", type=float, default=0.04, help="detector IoU threshold (default 0.04)")
    s.add_argument("--category", default=None, help="dissect: consider only concepts of this category")
    s.add_argument("--layer", default=None, help="layer name to record in the results")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to count (default cpu)")
    s.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="optimal: per-unit time budget; when it runs out the result reports its gap")

    d = sub.add_parser("dissect", help="dissect layers of a model on a probe: results and an HTML report",
                       description="Run a model over a probe, binarize each unit at its top quantile and explain "
                                   "it by rules over the probe's concepts. Re-running with the same --out resumes.")
    d.add_argument("--model", default="default", help="default (embedded, trained on first use), resnet18, "
                   "resnet50 or vit_b_16")
    d.add_argument("--weights", default=None, metavar="FILE", help="state dict for a torchvision model")
    d.add_argument("--layer", action="append", required=True, metavar="NAME",
                   help="dotted layer name (repeat for several), e.g. conv4 or layer4")
    d.add_argument("--probe", default="default", help="default (synthetic world), broden:DIR or folder:DIR")
    d.add_argument("--probe-images", type=_positive_int, default=None,
                   help="images in the synthetic world (default 3000)")
    d.add_argument("--method", choices=["dissect", "beam", "optimal", "clustered"], default="dissect",
                   help="default: dissect")
    d.add_argument("--length", type=_positive_int, default=3, help="beam: maximum formula length (default 3)")
    d.add_argument("--beam", type=_positive_int, default=5, help="beam: width (default 5)")
    d.add_argument("--quantile", type=_fraction, default=0.005, help="top quantile per unit (default 0.005)")
    d.add_argument("--batch-size", type=_positive_int, default=64)
    d.add_argument("--methods", default="rules", metavar="LIST",
                   help="comma-separated: rules (always) and any of clip-dissect, linex, sieve (default rules)")
    d.add_argument("--out", required=True, metavar="DIR", help="output directory (results, cache, report)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    _label_options(d)

    lb = sub.add_parser("label", help="label units with a vision-language model: CLIP-Dissect, LinEx, SIEVE",
                        description="Label every unit of the layers with CLIP-Dissect, LinEx and/or SIEVE, verify "
                                    "every label by generating images of it (Activation Rate, CoSy) and simulate it "
                                    "with a second VLM; Network Dissection's labels are scored beside them. "
                                    "Re-running with the same --out resumes.")
    lb.add_argument("--model", default="default", help="default, resnet18, resnet50 or vit_b_16")
    lb.add_argument("--weights", default=None, metavar="FILE", help="state dict for a torchvision model")
    lb.add_argument("--layer", action="append", required=True, metavar="NAME", help="dotted layer name (repeat)")
    lb.add_argument("--probe", default="default", help="default (synthetic world), broden:DIR or folder:DIR")
    lb.add_argument("--probe-images", type=_positive_int, default=None, help="images in the synthetic world")
    lb.add_argument("--method", default="clip-dissect,linex,sieve", metavar="LIST",
                    help="comma-separated among clip-dissect, linex, sieve (default all three)")
    lb.add_argument("--rules", choices=["dissect", "beam", "none"], default="dissect",
                    help="rule explanations to score beside the labels, when the probe has masks (default dissect)")
    lb.add_argument("--batch-size", type=_positive_int, default=64)
    lb.add_argument("--out", required=True, metavar="DIR")
    lb.add_argument("--quiet", action="store_true", help="no progress bars")
    _label_options(lb)

    c = sub.add_parser("circuit", help="the circuit of a class: NeurFlow concept circuits or NeuCEPT critical neurons",
                       description="Find the neurons that carry a class from layer to layer, write circuit.json, "
                                   "fidelity.csv, results.jsonl and circuit.html. Re-running with the same --out "
                                   "reuses finished layers.")
    c.add_argument("--model", default="default", help="default, default-circuit (a planted circuit for class "
                   "circle), resnet18, resnet50 or vit_b_16")
    c.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                   help="class name or output index (default: the planted circuit's class)")
    c.add_argument("--layers", default="conv4,conv3", help="comma-separated layers, top to bottom (default conv4,conv3)")
    c.add_argument("--method", choices=["neurflow", "neucept"], default="neurflow")
    c.add_argument("--probe", default="default", help="default (synthetic world), broden:DIR or folder:DIR")
    c.add_argument("--images", type=_positive_int, default=40, help="class images to crop (default 40)")
    c.add_argument("--tau", type=_positive_int, default=16, help="neurflow: core neurons per neuron (default 16)")
    c.add_argument("--top-k", type=_positive_int, default=50, help="neurflow: crops per neuron concept (default 50)")
    c.add_argument("--steps", type=_positive_int, default=50, help="neurflow: integration steps (default 50)")
    c.add_argument("--fdr", type=_fraction, default=0.1, help="neucept: target false discovery rate (default 0.1)")
    c.add_argument("--runs", type=_positive_int, default=10, help="neucept: knockoff runs (default 10)")
    c.add_argument("--random-sets", type=_positive_int, default=20, help="fidelity: random sets (default 20)")
    c.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    c.add_argument("--out", required=True, metavar="DIR")
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="explain planted units of a synthetic concept set with the mask engine")
    demo.add_argument("--images", type=_positive_int, default=2000, help="probe images (default 2000)")
    demo.add_argument("--concepts", type=int, default=300, help="concepts (default 300, at least 13)")
    demo.add_argument("--side", type=_positive_int, default=56, help="mask side in pixels (default 56)")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("backends", help="print which native backends are built and usable, as JSON")
    return parser


def _label_options(p) -> None:
    g = p.add_argument_group("vision-language labels (clip-dissect, linex, sieve)")
    g.add_argument("--vlm", default="default", help="explainer VLM: default (embedded tiny CLIP) or an open_clip name")
    g.add_argument("--vlm-weights", default=None, metavar="PATH", help="open_clip weights (file or directory)")
    g.add_argument("--sim-vlm", default="default-2", help="second VLM for LinEx's simulation score (default-2)")
    g.add_argument("--sim-vlm-weights", default=None, metavar="PATH")
    g.add_argument("--vocabulary", default=None, metavar="FILE",
                   help="one word or phrase per line (default: the probe's concept names)")
    g.add_argument("--generator", default="synthetic", help="verification images: synthetic or diffusers:DIR")
    g.add_argument("--generated", type=_positive_int, default=50, help="images generated per label (default 50)")
    g.add_argument("--generator-steps", type=_positive_int, default=None, metavar="N",
                   help="diffusers: denoising steps (default: the pipeline's own)")
    g.add_argument("--similarity", default="soft_wpmi",
                   choices=["soft_wpmi", "wpmi", "rank_reorder", "cos_similarity", "cos_similarity_cubed"],
                   help="clip-dissect similarity function (default soft_wpmi)")
    g.add_argument("--tau", type=float, default=10.0, help="sieve: p99/median ratio that selects a unit (default 10)")
    g.add_argument("--top-n", type=_positive_int, default=20, help="sieve: top samples per unit (default 20)")
    g.add_argument("--top-k", type=_positive_int, default=3, help="sieve: concepts per cluster (default 3)")


def _label_kwargs(args) -> dict:
    return {"vlm": args.vlm, "vlm_weights": args.vlm_weights, "sim_vlm": args.sim_vlm,
            "sim_vlm_weights": args.sim_vlm_weights, "vocabulary": args.vocabulary, "generator": args.generator,
            "generator_options": {"num_inference_steps": args.generator_steps} if args.generator_steps else None,
            "n_generated": args.generated, "similarity": args.similarity, "tau": args.tau, "top_n": args.top_n,
            "top_k": args.top_k}


def _methods(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "search":
        return _search(args)
    if args.command == "dissect":
        return _dissect(args)
    if args.command == "circuit":
        return _circuit(args)
    if args.command == "label":
        return _label(args)
    if args.command == "backends":
        from . import backends

        print(json.dumps(backends(), indent=2))
        return 0
    if args.concepts < 13:
        parser.error("demo needs --concepts >= 13 (the planted units use c0..c12)")
    from .testing import run_demo

    result = run_demo(n_images=args.images, n_concepts=args.concepts, side=args.side, seed=args.seed)
    return 0 if result["found"] == result["planted"] else 1


def _search(args) -> int:
    from .errors import InputError
    from .rules import search_npz

    t0 = time.perf_counter()
    try:
        results = search_npz(args.concepts, args.units, args.out, method=args.method, length=args.length,
                             beam=args.beam, quantile=args.quantile, threshold=args.threshold,
                             category=args.category, layer=args.layer, device=args.device,
                             time_budget=args.time_budget)
    except (InputError, ValueError, RuntimeError, ImportError) as exc:
        print(f"neurcore search: error: {exc}", file=sys.stderr)
        return 2
    print(f"neurcore search: {len(results)} units, method {args.method}, {time.perf_counter() - t0:.2f} s "
          f"-> {args.out}", file=sys.stderr)
    return 0


def _dissect(args) -> int:
    from .errors import InputError
    from .pipelines import dissect

    t0 = time.perf_counter()
    try:
        results = dissect(args.model, args.layer, args.probe, method=args.method, length=args.length,
                          beam=args.beam, out_dir=args.out, weights=args.weights, quantile=args.quantile,
                          batch_size=args.batch_size, probe_images=args.probe_images, progress=not args.quiet,
                          methods=_methods(args.methods), label_options=_label_kwargs(args))
    except (InputError, ValueError, RuntimeError) as exc:
        print(f"neurcore dissect: error: {exc}", file=sys.stderr)
        return 2
    planted = [r for r in results if r.planted]
    results = [r for r in results if r.method == args.method]
    summary = f"{len(results)} units in {len(args.layer)} layer(s), {time.perf_counter() - t0:.1f} s"
    if planted:
        found = sum(r.planted["recovered"] for r in planted)
        summary += f"; recovered {found} of {len(planted)} planted units ({100.0 * found / len(planted):.1f}%)"
    print(f"neurcore dissect: {summary}\n  report: {os.path.join(args.out, 'report', 'index.html')}")
    return 0


def _label(args) -> int:
    from .errors import InputError
    from .pipelines import label

    t0 = time.perf_counter()
    try:
        rows = label(args.model, args.layer, args.probe, methods=_methods(args.method), out_dir=args.out,
                     weights=args.weights, rules=None if args.rules == "none" else args.rules,
                     batch_size=args.batch_size, probe_images=args.probe_images, progress=not args.quiet,
                     **_label_kwargs(args))
    except (InputError, ValueError, RuntimeError) as exc:
        print(f"neurcore label: error: {exc}", file=sys.stderr)
        return 2
    with open(os.path.join(args.out, "labels_summary.json")) as f:
        summary = json.load(f)
    lines = [f"neurcore label: {len(rows)} labels in {len(args.layer)} layer(s), {time.perf_counter() - t0:.1f} s"]
    for layer, s in summary["layers"].items():
        for m, v in s["methods"].items():
            ar = "-" if v["activation_rate"] is None else f"{100 * v['activation_rate']:.1f}%"
            r = "-" if v["simulation_r"] is None else f"{v['simulation_r']:.3f}"
            lines.append(f"  {layer} {m}: {v['labelled']}/{v['units']} units labelled, mean AR {ar}, mean sim r {r}")
    lines.append(f"  report: {os.path.join(args.out, 'report', 'labels.html')}")
    print("\n".join(lines))
    return 0


def _circuit(args) -> int:
    from .errors import InputError
    from .pipelines import circuit

    t0 = time.perf_counter()
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    try:
        doc = circuit(args.model, args.class_name, layers, args.out, method=args.method, probe=args.probe,
                      max_images=args.images, tau=args.tau, top_k=args.top_k, n_steps=args.steps, fdr=args.fdr,
                      n_runs=args.runs, n_random=args.random_sets, device=args.device, progress=not args.quiet)
    except (InputError, ValueError, RuntimeError) as exc:
        print(f"neurcore circuit: error: {exc}", file=sys.stderr)
        return 2
    summary = f"class {doc['class']}, {len(doc['nodes'])} nodes, {len(doc['edges'])} edges"
    for layer, m in doc.get("metrics", {}).items():
        summary += "; " + layer + ": " + ", ".join(f"{k} {v}" for k, v in m.items())
    print(f"neurcore circuit: {summary}, {time.perf_counter() - t0:.1f} s\n"
          f"  view: {os.path.join(args.out, 'circuit.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
