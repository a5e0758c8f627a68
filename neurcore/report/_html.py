"""Pieces shared by the HTML reports: a self-contained page, image strips with maps drawn over (and
written compressed), links between the pages of a long list, and a table sortable by its headers."""

from __future__ import annotations

import html
import json

import numpy as np

from .._io import write_image as _write_image

__all__ = ["CSS", "SORT_CSS", "SORT_SCRIPT", "THUMB", "image_format", "image_strip", "img_tag", "page",
           "page_name", "pager", "resize", "sortable_header", "thumbnail", "write_image"]

THUMB = 96  # pixels per image in the strips

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
.unit { border: 1px solid #ddd; padding: 8px; margin: 8px 0; } .unit img { display: block; margin-top: 4px; }
.formula { font-family: monospace; font-size: 1.1em; } .ok { color: #070; } .miss { color: #a00; }
.muted { color: #777; }
"""
# Records on <body> how many images the page has and how many loaded; lazy images load after the page
# (when scrolled near), so the count is updated as each one arrives.
LOADED_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  function count() {
    document.body.setAttribute('data-images-loaded',
      imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
  }
  document.body.setAttribute('data-images-total', imgs.length);
  count();
  imgs.forEach(function (i) { i.addEventListener('load', count); });
});
</script>"""


def page(title: str, body: str, css: str = CSS) -> str:
    """A self-contained page; its script records on <body> how many images loaded (browser tests)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body>{body}{LOADED_SCRIPT}</body></html>")


def page_name(layer: str) -> str:
    """A layer's name in the report's file names (its page, its image strips)."""
    return layer.replace("/", "_").replace(".", "_")


def resize(a: np.ndarray, size: int, bilinear: bool) -> np.ndarray:
    """A 2-d map resized to ``size`` x ``size`` (bilinear, or nearest for masks) -> float32."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.array(a, np.float32))[None, None]
    mode = {"mode": "bilinear", "align_corners": False} if bilinear else {"mode": "nearest"}
    return F.interpolate(t, size=(size, size), **mode)[0, 0].numpy()


def thumbnail(image: np.ndarray) -> np.ndarray:
    """An image uint8 [H, W, 3] resized to THUMB x THUMB (bilinear), as :func:`image_strip` draws it (a
    thumbnail given to it again is drawn unchanged)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((THUMB, THUMB), Image.BILINEAR))


def image_strip(images, maps, masks, vmax: float) -> np.ndarray:
    """Images [k, H, W, 3] with activation maps [k, h, w] and explanation masks [k, mh, mw] (or None)
    drawn over -> uint8 [THUMB, k * THUMB + 3 * (k - 1), 3] (tiles 3 white pixels apart)."""
    tiles = []
    for img, amap, mask in zip(images, maps, masks):
        base = thumbnail(img).astype(np.float32)
        heat = np.clip(resize(amap, THUMB, True) / max(vmax, 1e-12), 0, 1)[..., None]
        out = base * (1 - 0.6 * heat) + np.array([255.0, 30, 30]) * 0.6 * heat
        if mask is not None:
            m = resize(mask.astype(np.float32), THUMB, False) > 0.5
            inner = m.copy()
            inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            out[m & ~inner] = (0, 230, 255)
        tiles.append(np.clip(out, 0, 255).astype(np.uint8))
        tiles.append(np.full((THUMB, 3, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


IMAGE_QUALITY = 80  # WebP/JPEG quality of the strips: the outlines stay sharp, ~6 kB per 5-image strip


def image_format() -> tuple[str, str]:
    """(Pillow format, file suffix) of the reports' compressed images: WebP where this Pillow writes it
    (about half JPEG's size at the same quality), else JPEG."""
    from PIL import features

    return ("WEBP", ".webp") if features.check("webp") else ("JPEG", ".jpg")


def write_image(stem: str, image: np.ndarray, quality: int = IMAGE_QUALITY) -> str:
    """Write an image uint8 [h, w, 3] to ``stem`` + ``.webp`` (``.jpg`` without WebP), atomically, at
    ``quality`` (0-100); returns the file's path."""
    fmt, suffix = image_format()
    _write_image(stem + suffix, image, fmt, quality=quality)
    return stem + suffix


def img_tag(src: str, shape: tuple[int, ...], alt: str, lazy: bool = True) -> str:
    """An <img> of an image of ``shape`` (h, w, ...) with its size set, so the page does not reflow;
    ``lazy``: loaded only when scrolled near."""
    loading = "loading='lazy' " if lazy else ""
    return (f"<img src='{html.escape(src)}' width='{shape[1]}' height='{shape[0]}' {loading}"
            f"alt='{html.escape(alt)}'>")


def pager(files: list[str], current: int) -> str:
    """Links between the pages ``files`` of a long list, on page ``current`` (0-based): previous, every
    page by number, next; "" for a single page."""
    if len(files) < 2:
        return ""
    nums = " ".join(f"<b>{p + 1}</b>" if p == current else f"<a href='{html.escape(f)}'>{p + 1}</a>"
                    for p, f in enumerate(files))
    prev = f"<a href='{html.escape(files[current - 1])}' rel='prev'>previous</a>" if current > 0 else "previous"
    nxt = (f"<a href='{html.escape(files[current + 1])}' rel='next'>next</a>" if current + 1 < len(files)
           else "next")
    return f"<nav class='pager'>page {current + 1} of {len(files)}: {prev} · {nums} · {nxt}</nav>"


SORT_CSS = """
table.sortable th { cursor: pointer; user-select: none; } table.sortable th::after { content: ' \\2195'; color: #bbb; }
table.sortable th[aria-sort=ascending]::after { content: ' \\25B2'; color: #222; }
table.sortable th[aria-sort=descending]::after { content: ' \\25BC'; color: #222; }
.pager { margin: 1em 0; }
"""

# Sorts a <table class='sortable'> by the column whose header is clicked (again: the other way). A
# header's data-sort: 'num' (numbers, largest first), 'order' (the order of the JSON list in its
# data-order), else text (natural order: layer2 before layer10). Ties keep the current order.
SORT_SCRIPT = """<script>
(function () {
  var coll = new Intl.Collator(undefined, {numeric: true});
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (t) {
    var heads = t.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, c) {
      th.addEventListener('click', function () {
        var kind = th.getAttribute('data-sort'), state = th.getAttribute('aria-sort');
        var order = kind === 'order' ? JSON.parse(th.getAttribute('data-order')) : null;
        var desc = state ? state === 'ascending' : kind === 'num';
        var body = t.tBodies[0];
        var rows = Array.prototype.map.call(body.rows, function (r, i) {
          var s = r.cells[c].textContent;
          return [kind === 'num' ? parseFloat(s) : order ? order.indexOf(s) : s, i, r];
        });
        rows.sort(function (a, b) {
          var d = typeof a[0] === 'string' ? coll.compare(a[0], b[0]) : a[0] - b[0];
          return (desc ? -d : d) || a[1] - b[1];
        });
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
        var f = document.createDocumentFragment();
        rows.forEach(function (x) { f.appendChild(x[2]); });
        body.appendChild(f);
      });
    });
  });
})();
</script>"""


def sortable_header(columns: list[tuple[str, str, list[str] | None]], sorted_by: int | None = None,
                    descending: bool = True) -> str:
    """The <thead> of a table sortable with :data:`SORT_SCRIPT`: per column (title, kind, order), kind
    ``"num"``, ``"text"`` or ``"order"`` (sorted by the list ``order``); ``sorted_by``: the column the
    rows come sorted by (``descending`` or not)."""
    cells = []
    for c, (title, kind, order) in enumerate(columns):
        attrs = f" data-sort='{kind}'"
        if order is not None:
            attrs += f" data-order='{html.escape(json.dumps(order), quote=True)}'"
        if c == sorted_by:
            attrs += f" aria-sort='{'descending' if descending else 'ascending'}'"
        cells.append(f"<th{attrs}>{html.escape(title)}</th>")
    return f"<thead><tr>{''.join(cells)}</tr></thead>"
