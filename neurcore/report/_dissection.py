"""The HTML report of a dissection: a summary page and one page per layer.

Per unit: its explanation, IoU and metrics, and its top activating images
with the activation map drawn over them (red, by the unit's maximum over the
probe) and the outline of the explanation's mask (cyan). The summary counts
units per concept category and shows the planted-unit recovery where there
are planted units. Pages are static files; images are PNG strips, one per
unit, under ``report/img``.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from .._io import write_png, write_text
from ._html import image_strip, page, page_name

if TYPE_CHECKING:
    from ..engine import BitMasks
    from ..probe import Probe
    from ..results import Explanation
    from ..rules import ConceptSet

__all__ = ["write_report"]


def _categories(results) -> list[tuple[str, int, int]]:
    """(category, units whose explanation leads with it, units whose explanation uses it), most led first."""
    lead, uses = Counter(), Counter()
    for r in results:
        cats = r.categories or (["concept"] if r.formula else ["(none)"])
        lead[cats[0]] += 1
        uses.update(set(cats))
    return [(c, lead[c], uses[c]) for c in sorted(uses, key=lambda c: (-lead[c], -uses[c], c))]


def _top_images(a: np.ndarray, top_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit_max float32 [units], top int [units, top_images]): each unit's maximum over the probe and
    the images with its highest peak activation, from maps [n_images, units, h, w]."""
    n, c = a.shape[:2]
    peak = np.empty((n, c), np.float32)
    for s in range(0, n, 256):
        peak[s : s + 256] = np.asarray(a[s : s + 256]).max(axis=(2, 3))
    unit_max = peak.max(axis=0)
    top = np.argsort(-peak, axis=0, kind="stable")[:top_images].T  # [units, k]
    return unit_max, top


def _metrics_html(r) -> str:
    """The unit's metrics, its explanation per activation range (clustered search) and its certificate
    (optimal search), as HTML."""
    m = r.metrics
    metrics = (f"activation coverage {m['activation_coverage']:.3f} · detection accuracy "
               f"{m['detection_accuracy']:.3f} · sample coverage {m['sample_coverage']:.3f}") if m else ""
    if r.ranges:  # clustered: one explanation per activation range, highest last
        metrics += "".join(
            f"<div>range [{x['range'][0]:.3g}, {x['range'][1]:.3g}]: <span class='formula'>"
            f"{html.escape(x['formula'] or '-')}</span> IoU {x['iou']:.3f}</div>" for x in r.ranges)
    if "certificate" in r.extra:
        bound = "optimal" if r.extra["optimal"] else "best found, gap " + format(r.extra["gap"], ".3f")
        metrics += f"<div>{bound} (largest bound left: {r.extra['certificate']:.3f})</div>"
    return metrics


def _unit_card(r, strip: np.ndarray, fname: str) -> str:
    """One unit's card: explanation, IoU, metrics, planted truth and its strip of top images."""
    u = r.unit
    planted = ""
    if r.planted:
        ok = r.planted["recovered"]
        planted = (f"<div class='{'ok' if ok else 'miss'}'>planted: <span class='formula'>"
                   f"{html.escape(r.planted['formula'])}</span> (IoU {r.planted['iou']:.3f}) — "
                   f"{'recovered' if ok else 'not recovered'}</div>")
    return (f"<div class='unit' id='unit{u}'><b>unit {u}</b> — <span class='formula'>"
            f"{html.escape(r.formula or '(no concept overlaps this unit)')}</span> — IoU {r.iou:.3f}"
            f"{' — detector' if r.detector else ''}<div class='muted'>{_metrics_html(r)}</div>{planted}"
            f"<img src='img/{fname}' width='{strip.shape[1]}' height='{strip.shape[0]}' "
            f"alt='top images of unit {u}'></div>")


def _layer_page(root: str, layer: str, rows: list, probe, concepts, a: np.ndarray, top_images: int) -> None:
    """Write the layer's page ``root/<layer>.html``, best IoU first, and its units' strips under
    ``root/img``."""
    unit_max, top = _top_images(a, top_images)
    images = {int(i): probe.images(int(i), int(i) + 1)[0] for i in np.unique(top)}
    safe = page_name(layer)
    cards = []
    for r in sorted(rows, key=lambda r: (-r.iou, r.unit)):
        u = r.unit
        idx = top[u]
        expl = concepts.evaluate(r.formula) if r.formula else None
        masks = [None] * len(idx)
        if expl is not None:
            for j, i in enumerate(idx):
                masks[j] = expl.on_image(int(i))[0]
        strip = image_strip([images[int(i)] for i in idx], [np.asarray(a[int(i), u]) for i in idx], masks,
                            float(unit_max[u]))
        fname = f"{safe}-unit{u:05d}.png"
        write_png(os.path.join(root, "img", fname), strip)
        cards.append(_unit_card(r, strip, fname))
    write_text(os.path.join(root, f"{safe}.html"), page(
        f"{layer} — neurcore dissection",
        f"<p><a href='index.html'>summary</a></p><h1>Layer {html.escape(layer)}</h1>"
        f"<p>{len(rows)} units, best IoU first. Images: the top {top_images} by the unit's peak "
        "activation; red: activation map; cyan: the explanation's mask.</p>" + "".join(cards)))


def _layer_section(layer: str, rows: list) -> str:
    """The index's section of a layer: its detectors and units per concept category."""
    detectors = sum(bool(r.detector) for r in rows)
    table = "".join(f"<tr><td>{html.escape(c)}</td><td>{n_lead}</td><td>{n_use}</td></tr>"
                    for c, n_lead, n_use in _categories(rows))
    return (f"<h2><a href='{page_name(layer)}.html'>Layer {html.escape(layer)}</a></h2>"
            f"<p>{len(rows)} units; {detectors} detectors (IoU &gt; 0.04).</p><table><tr>"
            f"<th>concept category</th><th>units led by it</th><th>units using it</th></tr>{table}</table>")


def _planted_table(planted_rows: list) -> str:
    """The index's table of planted units (layer, result) and how many were recovered; "" without any."""
    if not planted_rows:
        return ""
    found = sum(r.planted["recovered"] for _, r in planted_rows)
    total = len(planted_rows)
    rows_html = "".join(
        f"<tr><td>{html.escape(layer)}</td><td>{r.unit}</td><td class='formula'>"
        f"{html.escape(r.planted['formula'])}</td><td>{r.planted['iou']:.3f}</td><td class='formula'>"
        f"{html.escape(r.formula or '')}</td><td>{r.iou:.3f}</td>"
        f"<td class='{'ok' if r.planted['recovered'] else 'miss'}'>"
        f"{'yes' if r.planted['recovered'] else 'no'}</td></tr>" for layer, r in planted_rows)
    return (f"<h2>Planted units</h2><p id='planted-recovery'>Recovered {found} of {total} planted units "
            f"({100.0 * found / total:.1f}%): the explanation found scores at least the planted formula's "
            "IoU.</p><table><tr><th>layer</th><th>unit</th><th>planted</th><th>IoU</th><th>found</th><th>IoU</th>"
            f"<th>recovered</th></tr>{rows_html}</table>")


def _index_page(settings: dict, seconds: float | None, planted_html: str, layer_sections: list[str]) -> str:
    """The summary page: the run's settings and time, the planted units, a section per layer."""
    params = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                     for k, v in settings.items() if v is not None)
    took = f"<p class='muted'>{seconds:.1f} s</p>" if seconds is not None else ""
    return page("neurcore dissection", f"<h1>neurcore dissection</h1><table>{params}</table>{took}"
                + planted_html + "".join(layer_sections))


def write_report(out_dir: str, results: list[Explanation], settings: dict, probe: Probe,
                 concepts: ConceptSet, acts: dict[str, np.ndarray],
                 masks_by_layer: dict[str, BitMasks] | None, *, top_images: int = 5,
                 seconds: float | None = None) -> str:
    """Write a dissection's report, ``out_dir/report/index.html`` and a page per layer; returns the
    index path.

    The report of Network Dissection (Bau et al., "Network Dissection: Quantifying Interpretability
    of Deep Visual Representations", CVPR 2017): per unit, its explanation, IoU and metrics, and its
    ``top_images`` probe images of highest peak activation with the activation map (red, scaled by
    the unit's maximum over the probe) and the explanation's mask outlined (cyan); per layer, the
    units led by and using each concept category; planted-unit recovery where there are planted
    units.

    Args:
        out_dir: the run's directory; the report goes to ``out_dir/report`` (strips under ``img``).
        results: the explanations of every unit, of the layers in ``acts``.
        settings: the run's settings, listed on the summary page (None values left out).
        probe: the probe the units were explained on (its images are drawn).
        concepts: the probe's concept masks, to draw each explanation's mask.
        acts: {layer: activations [n_images, units, h, w]} over the probe.
        masks_by_layer: the unit masks by layer (not used by the report).
        top_images: images per unit.
        seconds: the run's duration, shown on the summary page when given.
    """
    root = os.path.join(out_dir, "report")
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    by_layer: dict[str, list] = {}
    for r in results:
        by_layer.setdefault(r.layer, []).append(r)
    layer_sections, planted_rows = [], []
    for layer, rows in by_layer.items():
        _layer_page(root, layer, rows, probe, concepts, acts[layer], top_images)
        planted_rows += [(layer, r) for r in sorted(rows, key=lambda r: (-r.iou, r.unit)) if r.planted]
        layer_sections.append(_layer_section(layer, rows))
    index = os.path.join(root, "index.html")
    write_text(index, _index_page(settings, seconds, _planted_table(planted_rows), layer_sections))
    return index
