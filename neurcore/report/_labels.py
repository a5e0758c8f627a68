"""The HTML view of vision-language labels: ``report/labels.html`` (per layer and method: mean
Activation Rate, CoSy AUC and MAD, simulation r, beside the papers' figures; planted-unit recovery;
the VLM's zero-shot concept quality) and ``report/labels-<layer>.html`` (per unit: its top probe
images with the activation map, then every method's label with its scores and a strip of the
images generated to verify it; SIEVE's hypotheses with their Activation Rates)."""

from __future__ import annotations

import glob
import hashlib
import html
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from .._io import safe_name, write_png, write_text
from ..activations import unit_scores
from ..results import read_jsonl
from ._html import THUMB, image_strip, page, page_name

if TYPE_CHECKING:
    from ..probe import Probe

__all__ = ["write_label_report"]

#: For scale: the papers' figures (SIEVE: mean AR on ResNet-50 penultimate layer; LinEx: mean
#: simulation r, ResNet-50 ImageNet second-to-last layer).
PAPER = {"activation_rate": {"sieve": 0.858, "clip-dissect": 0.583, "dissect": 0.450},
         "simulation_r": {"linex": 0.377, "clip-dissect": 0.187, "dissect": 0.124}}
_METHOD_ORDER = ("sieve", "clip-dissect", "linex", "dissect", "beam", "optimal", "clustered")


def _fmt(v, pct=False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _generated(layer_dir: str) -> dict[str, np.ndarray]:
    """prompt -> the verification images kept in the layer's verify cache."""
    out = {}
    for path in sorted(glob.glob(os.path.join(layer_dir, "verify", "*.npz"))):
        with np.load(path, allow_pickle=False) as z:
            if "prompt" in z and z["images"].size:
                out[str(z["prompt"])] = z["images"]
    return out


def _thumbs(images: np.ndarray, size: int = THUMB // 2) -> np.ndarray:
    from PIL import Image

    tiles = []
    for img in images:
        tiles.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)))
        tiles.append(np.full((size, 2, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def _label_text(r) -> str:
    if r.method == "linex":
        return r.formula or "(no concept)"
    return r.formula or ("(not selected)" if r.method == "sieve" else "(none)")


def _method_rank(method: str) -> int:
    return _METHOD_ORDER.index(method) if method in _METHOD_ORDER else 99


def write_label_report(out_dir: str, probe: Probe, acts: dict[str, np.ndarray], *,
                       top_images: int = 5) -> str:
    """Write the labels pages from ``out_dir/labels/`` and ``labels_summary.json``; returns the index
    path.

    Args:
        out_dir: the run's directory, holding ``labels_summary.json``, ``labels/<layer>/labels.jsonl``
            and the verification caches; the pages go to ``out_dir/report`` (strips under ``img``).
        probe: the probe the units were labelled on (their top images are drawn).
        acts: {layer: activations [n_images, units, h, w]} over the probe.
        top_images: probe images shown per unit.
    """
    root = os.path.join(out_dir, "report")
    img_dir = os.path.join(root, "img")
    os.makedirs(img_dir, exist_ok=True)
    with open(os.path.join(out_dir, "labels_summary.json")) as f:
        summary = json.load(f)
    sections = []
    for layer, s in summary["layers"].items():
        safe = page_name(layer)
        layer_dir = os.path.join(out_dir, "labels", safe_name(layer))
        rows = read_jsonl(os.path.join(layer_dir, "labels.jsonl"))
        sections.append(_summary_section(layer, safe, s))
        scores_path = os.path.join(out_dir, "layers", safe_name(layer), "scores.npy")
        score = unit_scores(acts[layer], scores_path)
        layer_page = _layerpage(layer, safe, rows, acts[layer], score, probe, _generated(layer_dir), img_dir,
                                top_images)
        write_text(os.path.join(root, f"labels-{safe}.html"), layer_page)
    auc_html = _vlm_section(summary.get("vlm_concept_auc"))
    params = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                     for k, v in summary["settings"].items() if v is not None)
    index = os.path.join(root, "labels.html")
    write_text(index, page("neurcore labels", f"<h1>Vision-language labels</h1><table>{params}</table>"
                                              f"{auc_html}" + "".join(sections)))
    return index


def _vlm_section(auc: dict | None) -> str:
    """The vision-language model's zero-shot concept quality (ROC-AUC per concept); "" without it."""
    if not auc:
        return ""
    mean = float(np.mean([v for v in auc.values() if v is not None]))
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(auc.items()))
    return (f"<h2>Vision-language model</h2><p id='vlm-auc'>Zero-shot concept presence, ROC-AUC on "
            f"held-out images of the synthetic world: mean <b>{mean:.3f}</b>. A label is only as good as "
            "this.</p>"
            f"<details><summary>per concept</summary><table>{cells}</table></details>")


def _summary_section(layer: str, safe: str, s: dict) -> str:
    methods = sorted(s["methods"], key=_method_rank)
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{v['labelled']}/{v['units']}</td>"
        f"<td>{_fmt(v['activation_rate'], True)}</td><td>{_fmt(v['cosy_auc'])}</td>"
        f"<td>{_fmt(v['cosy_mad'])}</td><td>{_fmt(v['simulation_r'])}</td>"
        f"<td class='muted'>{_fmt(PAPER['activation_rate'].get(m), True)} / "
        f"{_fmt(PAPER['simulation_r'].get(m))}</td></tr>" for m in methods for v in [s["methods"][m]])
    out = (f"<h2><a href='labels-{safe}.html'>Layer {html.escape(layer)}</a></h2>"
           "<table class='methods'><tr><th>method</th><th>labelled</th><th>mean AR</th><th>CoSy AUC</th>"
           "<th>CoSy MAD</th><th>simulation r</th><th>papers (AR / r)</th></tr>" + rows + "</table>"
           "<p class='muted'>Means over the layer's own (not planted) units. Papers: SIEVE and LinEx on "
           "ResNet-50 / ImageNet, for scale only.</p>")
    su = s.get("sieve_units")
    if su:
        cells = "".join(f"<tr><td>{html.escape(m)}</td><td>{_fmt(v, True)}</td></tr>"
                        for m, v in sorted(su["activation_rate"].items()))
        hyp = su.get("sieve_hypotheses_mean_ar") or {}
        out += (f"<p id='sieve-units-{safe}'>On the {su['selected']} units SIEVE selects: mean Activation "
                f"Rate per method (same units, same generator). SIEVE's hypotheses: mean AR "
                f"{_fmt(hyp.get('initial'), True)} "
                f"before and {_fmt(hyp.get('retained'), True)} after discarding those below the mean.</p>"
                f"<table><tr><th>method</th><th>mean AR</th></tr>{cells}</table>")
    p = s.get("planted")
    if p:
        items = []
        for m in ("clip-dissect", "sieve"):
            if m in p:
                items.append(f"<li>{m}: {p[m]['labelled_as_planted']} of {p[m]['detectors']} planted "
                             f"detectors labelled with their concept ({p[m]['scored_units']} scored)</li>")
        if "linex" in p:
            items.append(f"<li>linex: {p['linex']['found_with_right_sign']} of "
                         f"{p['linex']['planted_concepts']} "
                         "planted concepts of the linear units found with the right sign</li>")
        out += f"<h3>Planted units</h3><ul class='planted'>{''.join(items)}</ul>"
    return out


def _method_row(r, safe: str, generated: dict[str, np.ndarray], img_dir: str) -> str:
    """One method's label of a unit: its scores, SIEVE's hypotheses, and a strip of the images generated
    to verify it (written under ``img_dir`` once per label)."""
    m = r.metrics
    scores = " · ".join(f"{k.replace('_', ' ')} {_fmt(m[k], k == 'activation_rate')}"
                        for k in ("activation_rate", "cosy_auc", "cosy_mad", "simulation_r", "similarity",
                                  "val_r") if m.get(k) is not None)
    gen = ""
    if r.formula and r.formula in generated and r.method != "linex":
        gname = f"labels-{safe}-gen-{hashlib.sha1(r.formula.encode()).hexdigest()[:12]}.png"
        gpath = os.path.join(img_dir, gname)
        if not os.path.isfile(gpath):
            write_png(gpath, _thumbs(generated[r.formula]))
        gen = f"<img class='gen' src='img/{gname}' alt='generated images of {html.escape(r.formula)}'>"
    hyps = ""
    if r.method == "sieve" and r.extra.get("hypotheses"):
        hyps = "<div class='muted'>hypotheses: " + ", ".join(
            f"{html.escape(h['concept'])} (AR {_fmt(h.get('activation_rate'), True)}"
            f"{'' if h.get('retained', True) else ', discarded'})" for h in r.extra["hypotheses"]) + "</div>"
    return (f"<tr><td>{html.escape(r.method)}</td><td class='formula'>{html.escape(_label_text(r))}</td>"
            f"<td class='muted'>{scores}{hyps}</td><td>{gen}</td></tr>")


def _layerpage(layer, safe, rows, a, score, probe, generated, img_dir, top_images) -> str:
    c = a.shape[1]
    top = np.argsort(-score, axis=0, kind="stable")[:top_images].T
    peak = np.asarray(a[np.unique(top)]).max(axis=(0, 2, 3)) if len(top) else np.ones(c)
    images = {int(i): probe.images(int(i), int(i) + 1)[0] for i in np.unique(top)}
    by_unit: dict[int, list] = {}
    for r in rows:
        by_unit.setdefault(r.unit, []).append(r)
    cards = []
    for u in sorted(by_unit):
        idx = top[u]
        strip = image_strip([images[int(i)] for i in idx], [np.asarray(a[int(i), u]) for i in idx],
                            [None] * len(idx), float(peak[u]))
        fname = f"labels-{safe}-unit{u:05d}.png"
        write_png(os.path.join(img_dir, fname), strip)
        lines = [_method_row(r, safe, generated, img_dir)
                 for r in sorted(by_unit[u], key=lambda r: _method_rank(r.method))]
        cards.append(f"<div class='unit' id='unit{u}'><b>unit {u}</b><img src='img/{fname}' "
                     f"width='{strip.shape[1]}' height='{strip.shape[0]}' alt='top images of unit {u}'>"
                     f"<table>{''.join(lines)}</table></div>")
    return page(f"{layer} — neurcore labels",
                f"<p><a href='labels.html'>summary</a></p><h1>Layer {html.escape(layer)}: labels</h1>"
                f"<p>Per unit: its top {top_images} probe images (red: activation map), then each method's "
                "label, its scores and images generated from it to verify it.</p>" + "".join(cards))
