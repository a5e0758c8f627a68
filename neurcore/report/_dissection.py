"""The HTML report of a dissection: a summary page and the pages of each layer.

Per unit: its explanation, IoU and metrics, and its top activating images
with the activation map drawn over them (red, by the unit's maximum over the
probe) and the outline of the explanation's mask (cyan). The summary counts
units per concept category, shows the planted-unit recovery where there are
planted units and lists every unit in a table sortable by layer, IoU,
explanation and category. A layer's units, best IoU first, fill pages of at
most ``units_per_page`` (``<layer>.html``, ``<layer>-2.html``, ...). Pages are
static, self-contained files; images are compressed strips (WebP, or JPEG
where Pillow lacks WebP), one per unit under ``report/img``, loaded lazily:
3,840 units make a report of about 25 MB.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from .._io import write_text
from ..results import planted_summary
from ..rules import EXACT_MASK_IOU
from ._html import (
    CSS,
    SORT_CSS,
    SORT_SCRIPT,
    image_strip,
    img_tag,
    page,
    page_name,
    pager,
    sortable_header,
    thumbnail,
    write_image,
)

if TYPE_CHECKING:
    from ..activations import TopImages
    from ..probe import Probe
    from ..results import Explanation
    from ..rules import ConceptSet

__all__ = ["write_report"]

UNITS_PER_PAGE = 256  # unit cards per layer page
EAGER_STRIPS = 8  # strips at the top of a page load with it; the rest (lazy) when scrolled near


def _categories(results) -> list[tuple[str, int, int]]:
    """(category, units whose explanation leads with it, units whose explanation uses it), most led first."""
    lead, uses = Counter(), Counter()
    for r in results:
        cats = r.categories or (["concept"] if r.formula else ["(none)"])
        lead[cats[0]] += 1
        uses.update(set(cats))
    return [(c, lead[c], uses[c]) for c in sorted(uses, key=lambda c: (-lead[c], -uses[c], c))]


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


def _unit_card(r, strip_html: str) -> str:
    """One unit's card (``id='unit<N>'``): explanation, IoU, metrics, planted truth and its strip."""
    u = r.unit
    planted = ""
    if r.planted:
        ok = r.planted["recovered"]
        same = r.planted.get("mask_iou")
        planted = (f"<div class='{'ok' if ok else 'miss'}'>planted: <span class='formula'>"
                   f"{html.escape(r.planted['formula'])}</span> (IoU {r.planted['iou']:.3f}) — "
                   f"{'recovered' if ok else 'not recovered'}"
                   f"{'' if same is None else f' (masks overlap at IoU {same:.3f})'}</div>")
    return (f"<div class='unit' id='unit{u}'><b>unit {u}</b> — <span class='formula'>"
            f"{html.escape(r.formula or '(no concept overlaps this unit)')}</span> — IoU {r.iou:.3f}"
            f"{' — detector' if r.detector else ''}<div class='muted'>{_metrics_html(r)}</div>{planted}"
            f"{strip_html}</div>")


def _best_first(rows: list) -> list:
    """A layer's results, best IoU first (then by unit)."""
    return sorted(rows, key=lambda r: (-r.iou, r.unit))


def _page_files(layer: str, n_units: int, per_page: int) -> list[str]:
    """The file names of a layer's pages: ``<layer>.html``, ``<layer>-2.html``, ..."""
    safe = page_name(layer)
    return [f"{safe}.html"] + [f"{safe}-{p + 1}.html" for p in range(1, max(1, -(-n_units // per_page)))]


def _strip(r, top: TopImages, images: dict, concepts, k: int) -> np.ndarray | None:
    """The unit's top images (empty slots, -1, skipped) with its maps and explanation's mask drawn over;
    None when it has no image."""
    slots = [j for j in range(min(k, top.k)) if top.index[r.unit, j] >= 0]
    if not slots:
        return None
    idx = [int(top.index[r.unit, j]) for j in slots]
    expl = concepts.evaluate(r.formula) if r.formula else None
    masks = [None if expl is None else expl.on_image(i)[0] for i in idx]
    return image_strip([images[i] for i in idx], [top.maps[r.unit, j] for j in slots], masks,
                       float(top.unit_max[r.unit]))


def _cards(root: str, layer: str, rows: list, probe, concepts, top: TopImages, k: int) -> list[str]:
    """The cards of ``rows`` (one page), their strips written under ``root/img``; the first
    ``EAGER_STRIPS`` load with the page, the others lazily."""
    used = np.unique(top.index[[r.unit for r in rows], : min(k, top.k)])
    images = {int(i): thumbnail(probe.images(int(i), int(i) + 1)[0]) for i in used if i >= 0}
    cards = []
    for n, r in enumerate(rows):
        strip = _strip(r, top, images, concepts, k)
        strip_html = ""
        if strip is not None:
            path = write_image(os.path.join(root, "img", f"{page_name(layer)}-unit{r.unit:05d}"), strip)
            strip_html = img_tag(f"img/{os.path.basename(path)}", strip.shape, f"top images of unit {r.unit}",
                                 lazy=n >= EAGER_STRIPS)
        cards.append(_unit_card(r, strip_html))
    return cards


def _layer_pages(root: str, layer: str, rows: list, probe, concepts, top: TopImages, top_images: int,
                 per_page: int) -> dict[int, str]:
    """Write the layer's pages, ``per_page`` units each, best IoU first, and their strips; returns the
    page of each unit."""
    rows = _best_first(rows)
    files = _page_files(layer, len(rows), per_page)
    k = min(top_images, top.k)
    where = {}
    for p, fname in enumerate(files):
        chunk = rows[p * per_page : (p + 1) * per_page]
        nav = pager(files, p)
        first = p * per_page + 1
        write_text(os.path.join(root, fname), page(
            f"{layer} — neurcore dissection" + (f" (page {p + 1})" if p else ""),
            f"<p><a href='index.html'>summary</a></p><h1>Layer {html.escape(layer)}</h1>"
            f"<p>{len(rows)} units, best IoU first; here {first}-{first + len(chunk) - 1}. Images: the top "
            f"{k} by the unit's peak activation; red: activation map; cyan: the explanation's mask.</p>"
            + nav + "".join(_cards(root, layer, chunk, probe, concepts, top, k)) + nav, css=CSS + SORT_CSS))
        where.update({r.unit: fname for r in chunk})
    return where


def _layer_section(layer: str, rows: list, files: list[str]) -> str:
    """The index's section of a layer: its pages, its detectors and units per concept category."""
    detectors = sum(bool(r.detector) for r in rows)
    table = "".join(f"<tr><td>{html.escape(c)}</td><td>{n_lead}</td><td>{n_use}</td></tr>"
                    for c, n_lead, n_use in _categories(rows))
    pages = ("<p>pages: " + " ".join(f"<a href='{html.escape(f)}'>{p + 1}</a>" for p, f in enumerate(files))
             + "</p>") if len(files) > 1 else ""
    return (f"<h2><a href='{html.escape(files[0])}'>Layer {html.escape(layer)}</a></h2>{pages}"
            f"<p>{len(rows)} units; {detectors} detectors (IoU &gt; 0.04).</p><table><tr>"
            f"<th>concept category</th><th>units led by it</th><th>units using it</th></tr>{table}</table>")


def _units_table(entries: list[tuple[str, object, str]], layers: list[str]) -> str:
    """The index's table of every unit, (layer, result, its page) each, best IoU first, sortable by
    clicking a header. End tags left out (HTML allows it): ~100 bytes a unit."""
    entries = sorted(entries, key=lambda e: -e[1].iou)  # stable: layer order, then best first in a layer
    rows = []
    for layer, r, fname in entries:
        cats = r.categories or (["concept"] if r.formula else ["(none)"])
        rows.append(f"<tr><td>{html.escape(layer)}<td><a href='{html.escape(fname)}#unit{r.unit}'>{r.unit}</a>"
                    f"<td>{html.escape(r.formula or '(none)')}<td>{html.escape(', '.join(dict.fromkeys(cats)))}"
                    f"<td>{r.iou:.3f}")
    head = sortable_header([("layer", "order", layers), ("unit", "num", None), ("explanation", "text", None),
                            ("category", "text", None), ("IoU", "num", None)], sorted_by=4)
    return (f"<h2>All units</h2><p class='muted'>{len(rows)} units; click a column's title to sort by it."
            f"</p><table id='units' class='sortable'>{head}<tbody>{''.join(rows)}</tbody></table>")


def _planted_table(planted_rows: list) -> str:
    """The index's table of planted units (layer, result) and how many were recovered; "" without any."""
    if not planted_rows:
        return ""

    def yes_no(ok):
        return f"<td class='{'ok' if ok else 'miss'}'>{'yes' if ok else 'no'}</td>"

    rows_html = "".join(
        f"<tr><td>{html.escape(layer)}</td><td>{r.unit}</td><td class='formula'>"
        f"{html.escape(r.planted['formula'])}</td><td>{r.planted['iou']:.3f}</td><td class='formula'>"
        f"{html.escape(r.formula or '')}</td><td>{r.iou:.3f}</td><td>{r.planted.get('mask_iou', '-')}</td>"
        f"{yes_no(r.planted['recovered'])}{yes_no(r.planted.get('iou_not_worse'))}</tr>"
        for layer, r in planted_rows)
    summary = planted_summary(r for _, r in planted_rows)
    return (f"<h2>Planted units</h2><p id='planted-recovery'>{summary[0].upper()}{summary[1:]}. Recovered "
            "means the planted formula was found: the found formula's mask on the probe equals the planted "
            f"one's (IoU &ge; {EXACT_MASK_IOU}) or the two are logically equivalent.</p><table><tr>"
            "<th>layer</th><th>unit</th><th>planted</th><th>IoU</th><th>found</th><th>IoU</th>"
            "<th>masks' IoU</th><th>recovered</th><th>IoU not worse</th></tr>"
            f"{rows_html}</table>")


def _index_page(settings: dict, seconds: float | None, sections: list[str]) -> str:
    """The summary page: the run's settings and time, then ``sections`` (planted units, layers, the unit
    table), and the table's sorting script."""
    params = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                     for k, v in settings.items() if v is not None)
    took = f"<p class='muted'>{seconds:.1f} s</p>" if seconds is not None else ""
    css = CSS + SORT_CSS + "#units td:nth-child(3) { font-family: monospace; }\n"
    return page("neurcore dissection", f"<h1>neurcore dissection</h1><table>{params}</table>{took}"
                + "".join(sections) + SORT_SCRIPT, css=css)


def write_report(out_dir: str, results: list[Explanation], settings: dict, probe: Probe,
                 concepts: ConceptSet, tops: dict[str, TopImages], *, top_images: int = 5,
                 seconds: float | None = None, units_per_page: int = UNITS_PER_PAGE) -> str:
    """Write a dissection's report, ``out_dir/report/index.html`` and the pages of each layer; returns
    the index path.

    The report of Network Dissection (Bau et al., "Network Dissection: Quantifying Interpretability
    of Deep Visual Representations", CVPR 2017): per unit, its explanation, IoU and metrics, and its
    ``top_images`` probe images of highest peak activation with the activation map (red, scaled by
    the unit's maximum over the probe) and the explanation's mask outlined (cyan); per layer, the
    units led by and using each concept category; planted-unit recovery where there are planted
    units; a table of every unit sortable by layer, unit, explanation, category and IoU. A layer's
    units, best IoU first, fill pages ``<layer>.html``, ``<layer>-2.html``, ... of ``units_per_page``
    each; strips are WebP (JPEG where Pillow lacks WebP), loaded lazily below the top of a page.

    Args:
        out_dir: the run's directory; the report goes to ``out_dir/report`` (strips under ``img``).
        results: the explanations of every unit, of the layers in ``tops``.
        settings: the run's settings, listed on the summary page (None values left out).
        probe: the probe the units were explained on (its images are drawn).
        concepts: the probe's concept masks, to draw each explanation's mask.
        tops: {layer: its units' top images} (:class:`~neurcore.activations.TopImages`, row = unit
            index, at least ``top_images`` slots to show that many; empty slots, -1, are skipped).
        top_images: images per unit (at most ``tops[layer].k``).
        seconds: the run's duration, shown on the summary page when given.
        units_per_page: unit cards per layer page (>= 1).
    """
    if units_per_page < 1:
        raise ValueError(f"write_report: units_per_page must be >= 1, got {units_per_page}")
    root = os.path.join(out_dir, "report")
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    by_layer: dict[str, list] = {}
    for r in results:
        by_layer.setdefault(r.layer, []).append(r)
    missing = [layer for layer in by_layer if layer not in tops]
    if missing:
        raise ValueError(f"write_report: no top images for layer(s) {', '.join(map(str, missing))}")
    layer_sections, planted_rows, entries = [], [], []
    for layer, rows in by_layer.items():
        where = _layer_pages(root, layer, rows, probe, concepts, tops[layer], top_images, units_per_page)
        planted_rows += [(layer, r) for r in _best_first(rows) if r.planted]
        layer_sections.append(_layer_section(layer, rows, _page_files(layer, len(rows), units_per_page)))
        entries += [(layer, r, where[r.unit]) for r in _best_first(rows)]
    index = os.path.join(root, "index.html")
    sections = [_planted_table(planted_rows), *layer_sections, _units_table(entries, list(by_layer))]
    write_text(index, _index_page(settings, seconds, sections))
    return index
