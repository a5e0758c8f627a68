"""Pieces shared by the HTML reports: a self-contained page, and image strips with maps drawn over."""

from __future__ import annotations

import html

import numpy as np

__all__ = ["THUMB", "CSS", "page", "page_name", "resize", "image_strip"]

THUMB = 96  # pixels per image in the strips

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
.unit { border: 1px solid #ddd; padding: 8px; margin: 8px 0; } .unit img { display: block; margin-top: 4px; }
.formula { font-family: monospace; font-size: 1.1em; } .ok { color: #070; } .miss { color: #a00; }
.muted { color: #777; }
"""
LOADED_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-loaded',
    imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
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


def image_strip(images, maps, masks, vmax: float) -> np.ndarray:
    """Images [k, H, W, 3] with activation maps [k, h, w] and explanation masks [k, mh, mw] drawn over."""
    from PIL import Image

    tiles = []
    for img, amap, mask in zip(images, maps, masks):
        base = np.asarray(Image.fromarray(img).resize((THUMB, THUMB), Image.BILINEAR), np.float32)
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
