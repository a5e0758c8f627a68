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

import numpy as np

from .._io import write_text
from ._html import image_strip, page

__all__ = ["write_report"]

def _categories(results) -> list[tuple[str, int, int]]:
    """(category, units whose explanation leads with it, units whose explanation uses it), most led first."""
    lead, uses = Counter(), Counter()
    for r in results:
        cats = r.categories or (["concept"] if r.formula else ["(none)"])
        lead[cats[0]] += 1
        uses.update(set(cats))
    return [(c, lead[c], uses[c]) for c in sorted(uses, key=lambda c: (-lead[c], -uses[c], c))]


def write_report(out_dir, results, settings, probe, concepts, acts, masks_by_layer, *, top_images=5,
                 seconds=None) -> str:
    """Write ``out_dir/report/index.html`` and a page per layer; returns the index path."""
    from PIL import Image

    root = os.path.join(out_dir, "report")
    img_dir = os.path.join(root, "img")
    os.makedirs(img_dir, exist_ok=True)
    by_layer: dict[str, list] = {}
    for r in results:
        by_layer.setdefault(r.layer, []).append(r)

    layer_sections, planted_rows = [], []
    for layer, rows in by_layer.items():
        a = acts[layer]
        n, c = a.shape[:2]
        peak = np.empty((n, c), np.float32)
        for s in range(0, n, 256):
            peak[s : s + 256] = np.asarray(a[s : s + 256]).max(axis=(2, 3))
        unit_max = peak.max(axis=0)
        top = np.argsort(-peak, axis=0, kind="stable")[:top_images].T  # [units, k]
        needed = np.unique(top)
        images = {int(i): probe.images(int(i), int(i) + 1)[0] for i in needed}
        cards = []
        safe = layer.replace("/", "_").replace(".", "_")
        for r in sorted(rows, key=lambda r: (-r.iou, r.unit)):
            u = r.unit
            idx = top[u]
            expl = concepts.evaluate(r.formula) if r.formula else None
            masks = [None] * len(idx)
            if expl is not None:
                for j, i in enumerate(idx):
                    masks[j] = expl.on_image(int(i))[0]
            strip_png = image_strip([images[int(i)] for i in idx], [np.asarray(a[int(i), u]) for i in idx], masks,
                           float(unit_max[u]))
            fname = f"{safe}-unit{u:05d}.png"
            Image.fromarray(strip_png).save(os.path.join(img_dir, fname))
            m = r.metrics
            planted = ""
            if r.planted:
                ok = r.planted["recovered"]
                planted = (f"<div class='{'ok' if ok else 'miss'}'>planted: <span class='formula'>"
                           f"{html.escape(r.planted['formula'])}</span> (IoU {r.planted['iou']:.3f}) — "
                           f"{'recovered' if ok else 'not recovered'}</div>")
                planted_rows.append((layer, r))
            metrics = (f"activation coverage {m['activation_coverage']:.3f} · detection accuracy "
                       f"{m['detection_accuracy']:.3f} · sample coverage {m['sample_coverage']:.3f}") if m else ""
            if r.ranges:  # clustered: one explanation per activation range, highest last
                metrics += "".join(
                    f"<div>range [{x['range'][0]:.3g}, {x['range'][1]:.3g}]: <span class='formula'>"
                    f"{html.escape(x['formula'] or '-')}</span> IoU {x['iou']:.3f}</div>" for x in r.ranges)
            if "certificate" in r.extra:
                metrics += (f"<div>{'optimal' if r.extra['optimal'] else 'best found, gap ' + format(r.extra['gap'], '.3f')}"
                            f" (largest bound left: {r.extra['certificate']:.3f})</div>")
            cards.append(
                f"<div class='unit' id='unit{u}'><b>unit {u}</b> — <span class='formula'>"
                f"{html.escape(r.formula or '(no concept overlaps this unit)')}</span> — IoU {r.iou:.3f}"
                f"{' — detector' if r.detector else ''}<div class='muted'>{metrics}</div>{planted}"
                f"<img src='img/{fname}' width='{strip_png.shape[1]}' height='{strip_png.shape[0]}' "
                f"alt='top images of unit {u}'></div>")
        write_text(os.path.join(root, f"{safe}.html"), page(
            f"{layer} — neurcore dissection",
            f"<p><a href='index.html'>summary</a></p><h1>Layer {html.escape(layer)}</h1>"
            f"<p>{len(rows)} units, best IoU first. Images: the top {top_images} by the unit's peak "
            "activation; red: activation map; cyan: the explanation's mask.</p>" + "".join(cards)))
        detectors = sum(bool(r.detector) for r in rows)
        table = "".join(f"<tr><td>{html.escape(c)}</td><td>{n_lead}</td><td>{n_use}</td></tr>"
                        for c, n_lead, n_use in _categories(rows))
        layer_sections.append(
            f"<h2><a href='{safe}.html'>Layer {html.escape(layer)}</a></h2><p>{len(rows)} units; {detectors} "
            f"detectors (IoU &gt; 0.04).</p><table><tr><th>concept category</th><th>units led by it</th>"
            f"<th>units using it</th></tr>{table}</table>")

    planted_html = ""
    if planted_rows:
        found = sum(r.planted["recovered"] for _, r in planted_rows)
        total = len(planted_rows)
        rows_html = "".join(
            f"<tr><td>{html.escape(layer)}</td><td>{r.unit}</td><td class='formula'>{html.escape(r.planted['formula'])}"
            f"</td><td>{r.planted['iou']:.3f}</td><td class='formula'>{html.escape(r.formula or '')}</td>"
            f"<td>{r.iou:.3f}</td><td class='{'ok' if r.planted['recovered'] else 'miss'}'>"
            f"{'yes' if r.planted['recovered'] else 'no'}</td></tr>" for layer, r in planted_rows)
        planted_html = (
            f"<h2>Planted units</h2><p id='planted-recovery'>Recovered {found} of {total} planted units "
            f"({100.0 * found / total:.1f}%): the explanation found scores at least the planted formula's IoU."
            f"</p><table><tr><th>layer</th><th>unit</th><th>planted</th><th>IoU</th><th>found</th><th>IoU</th>"
            f"<th>recovered</th></tr>{rows_html}</table>")
    s = settings
    params = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                     for k, v in s.items() if v is not None)
    took = f"<p class='muted'>{seconds:.1f} s</p>" if seconds is not None else ""
    index = os.path.join(root, "index.html")
    write_text(index, page("neurcore dissection", f"<h1>neurcore dissection</h1><table>{params}</table>{took}"
                        + planted_html + "".join(layer_sections)))
    return index
