"""A Broden-scale synthetic probe: 1,146 concepts in Broden's six categories, exact masks, fast.

The synthetic world of :mod:`neurcore.probe.synthetic` grown to the shape of
Broden, the probe of Network Dissection (Bau et al., "Network Dissection:
Quantifying Interpretability of Deep Visual Representations", CVPR 2017):
380 scenes, 480 objects, 200 parts, 30 materials, 45 textures and Broden's 11
colours, images of 224 x 224 pixels and masks of 112 x 112.

- **Scenes** are image-level. A scene fixes the background layout (2-4 bands of
  *stuff* objects, the first 40 object classes, like Broden's sky, wall or
  floor, with wavy boundaries) and which objects it holds (a pool of 16
  classes, most shared within a family of 10 scenes), so concepts co-occur.
- **Objects** each have their own silhouette, a star-shaped radial profile
  (random harmonics and/or a superformula) drawn from a per-class seed, and an
  aspect ratio; instances get a random size, position and mirror and are
  painted in depth order, so later objects occlude earlier ones and object
  masks exclude each other pixel-wise. Every pixel shows an object (stuff or thing).
- **Parts** come from a shared vocabulary; a class has 0-4 of them, each a
  region of its silhouette (the core, or one of 8 outer sectors) in the
  object's own frame, so a part mask lies inside its object's mask.
- **Materials** set the micro appearance (grain, streaks, blotches, sheen,
  shading) of every region (stuff band, object body, part); **textures** are
  procedural macro patterns (stripes, dots, checks, zigzags, grids, waves,
  blocks, crosshatch, rings) painted over some regions in a second "ink"
  colour; **colours** are per pixel: the colour the pixel shows.

The class vocabulary (silhouettes, parts, priors) is fixed; ``seed`` draws the
images. Image ``i`` is a pure function of ``(seed, i)`` (a counter-based hash
random stream, no global state), so the probe is reproducible, streamable and
randomly accessible. Labels are computed from the same geometry as the image:
mask pixel ``(u, v)`` carries the concepts of image pixel ``(2u, 2v)``, as
:func:`neurcore.probe.base.resize_nearest` samples it. The per-pixel work runs
in numba kernels that release the GIL; a batch's images are split over ``threads`` threads.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numba import njit

from ..engine import BitMasks, unpack_words
from ..errors import InputError
from .base import Probe

COLORS = ("black", "blue", "brown", "gray", "green", "orange", "pink", "purple", "red", "white", "yellow")
#: Concepts per category, in the order of ``concept_names``.
COUNTS = {"object": 480, "part": 200, "scene": 380, "material": 30, "texture": 45, "color": len(COLORS)}
N_STUFF = 40  # object classes 0..39 are background stuff (bands), the rest things
IMAGE_SIZE, MASK_SIZE = 224, 112
_TEMPLATE = 128  # silhouette template side
_MAX_OBJECTS, _MAX_REGIONS, _MAX_BANDS = 8, 48, 4
_RGB = np.array([(22, 22, 22), (40, 80, 215), (122, 78, 40), (128, 128, 128), (45, 160, 60), (240, 140, 30),
                 (240, 150, 190), (135, 60, 170), (210, 35, 35), (238, 238, 238), (235, 212, 45)], np.float64)
_OFFSET = np.cumsum([0] + list(COUNTS.values()))[:-1]
_OBJ, _PART, _SCENE, _MAT, _TEX, _COL = (int(o) for o in _OFFSET)
_N_CONCEPTS = sum(COUNTS.values())
_N_OBJECTS, _N_SCENES, _N_COLORS = COUNTS["object"], COUNTS["scene"], COUNTS["color"]
_VOCAB_SEED = 20170721  # the class vocabulary is fixed; the probe's seed only draws images

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN, _P1, _P2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD6E8FEB86659FD93), np.uint64(0xCA5A826395121157)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)


class _Tables(NamedTuple):
    """The fixed class vocabulary as arrays for the kernels (cumulative probabilities for draws)."""

    templates: np.ndarray  # uint8 [objects, T, T]: 0 outside, 1 body, 2 + j part slot j
    aspect: np.ndarray  # float [objects]: height / width
    obj_parts: np.ndarray  # int64 [objects, 4]: part per slot, -1 none
    obj_col: np.ndarray  # float [objects, colours] cumulative
    obj_mat: np.ndarray  # float [objects, materials] cumulative
    obj_texp: np.ndarray  # float [objects]: probability of a texture
    obj_tex: np.ndarray  # float [objects, textures] cumulative
    part_col: np.ndarray
    part_mat: np.ndarray
    part_texp: np.ndarray
    part_tex: np.ndarray
    mat: np.ndarray  # float [materials, 3]: grain kind, grain amplitude, vertical shading
    tex: np.ndarray  # float [textures, 6]: kind, cos, sin, period, duty, aux
    scene_nb: np.ndarray  # int64 [scenes]: bands
    scene_bands: np.ndarray  # int64 [scenes, 4]: stuff class per band, top to bottom
    scene_pos: np.ndarray  # float [scenes, 3]: band boundaries as fractions of the height
    scene_lam: np.ndarray  # float [scenes]: mean number of things
    scene_pool: np.ndarray  # int64 [scenes, 16]: thing classes
    scene_pool_cum: np.ndarray  # float [scenes, 16] cumulative
    rgb: np.ndarray  # float [colours, 3]
    noise: np.ndarray  # float [256, 256, 4] uniform in [-1, 1]: sensor noise (3) and material grain


# ---------------------------------------------------------------- the vocabulary (numpy, once)
def _cumulative(rng: np.random.Generator, n: int, k: int, alpha: float) -> np.ndarray:
    """n sparse categorical distributions over k outcomes (Dirichlet(alpha)), cumulative, last = 1."""
    p = rng.dirichlet(np.full(k, alpha), size=n) + 1e-12
    cum = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
    cum[:, -1] = 1.0
    return cum


def _profiles(rng: np.random.Generator, n: int, bins: int = 256) -> np.ndarray:
    """Radial profiles r(theta) in [0.25, 1] of n star-shaped silhouettes: float [n, bins]."""
    theta = np.arange(bins) * (2 * np.pi / bins)
    out = np.empty((n, bins))
    for c in range(n):
        kind = rng.integers(3)
        r = np.ones(bins)
        if kind != 1:  # random smooth harmonics
            for h in range(1, 7):
                r += rng.normal(0, 0.3 / h) * np.cos(h * theta + rng.uniform(0, 2 * np.pi))
        if kind != 0:  # superformula: polygons, stars, lobes
            m = rng.integers(3, 9)
            n1, n2 = rng.uniform(0.6, 6), rng.uniform(0.6, 6)
            q = m * (theta + rng.uniform(0, 2 * np.pi)) / 4
            r = r * (np.abs(np.cos(q)) ** n2 + np.abs(np.sin(q)) ** n2) ** (-1 / n1)
        r = np.maximum(r, 1e-3)
        out[c] = np.maximum(r / r.max(), 0.25)
    return out


def _silhouettes(rng: np.random.Generator, parts: np.ndarray) -> np.ndarray:
    """Templates uint8 [objects, T, T] of every class: silhouette, parts as core or outer sectors."""
    t = _TEMPLATE
    g = (np.arange(t) + 0.5) / t * 2 - 1
    yy, xx = np.meshgrid(g, g, indexing="ij")
    rho, ang = np.hypot(yy, xx), np.arctan2(-yy, xx) % (2 * np.pi)
    bins = 256
    idx = np.minimum((ang / (2 * np.pi) * bins).astype(np.int64), bins - 1)
    profiles = _profiles(rng, COUNTS["object"], bins)
    out = np.zeros((COUNTS["object"], t, t), np.uint8)
    sector = np.minimum((((ang + np.pi / 8) % (2 * np.pi)) / (np.pi / 4)).astype(np.int64), 7)
    off = np.abs(((ang + np.pi / 8) % (np.pi / 4)) - np.pi / 8)  # angle from the sector's axis
    for c in range(N_STUFF, COUNTS["object"]):
        rel = rho / profiles[c][idx]  # 1 on the outline
        tpl = np.where(rel <= 1, 1, 0).astype(np.uint8)
        for j, p in enumerate(parts[c]):
            if p < 0:
                continue
            kind = p % 9
            region = rel < 0.45 if kind == 0 else \
                (rel > 0.55) & (sector == kind - 1) & (off < np.radians(17))
            tpl[region & (tpl == 1)] = 2 + j
        out[c] = tpl
    return out


def _part_assignment(rng: np.random.Generator) -> np.ndarray:
    """int64 [objects, 4]: each thing class's parts (distinct region kinds), every part used."""
    n_obj, n_part = COUNTS["object"], COUNTS["part"]
    by_kind = [np.arange(k, n_part, 9) for k in range(9)]
    parts = np.full((n_obj, 4), -1, np.int64)
    for c in range(N_STUFF, n_obj):
        n = rng.choice(5, p=(0.15, 0.2, 0.25, 0.2, 0.2))
        for j, kind in enumerate(rng.choice(9, size=n, replace=False)):
            pool = by_kind[kind]
            w = 1.0 / (1 + np.arange(len(pool)))
            parts[c, j] = pool[rng.choice(len(pool), p=w / w.sum())]
    for p in np.setdiff1d(np.arange(n_part), parts):  # every part belongs to some class: take the
        uses = np.bincount(parts[parts >= 0], minlength=n_part)  # slot of a part that others also have
        same = np.argwhere((parts >= 0) & (parts % 9 == p % 9) & (uses[np.maximum(parts, 0)] > 1))
        c, j = same[rng.integers(len(same))]
        parts[c, j] = p
    return parts


def _texture_table(rng: np.random.Generator) -> np.ndarray:
    """float [textures, 6]: kind (9 kinds x 5), cos, sin of the angle, period (px), duty, aux."""
    n = COUNTS["texture"]
    kind = np.arange(n) % 9
    angle = rng.choice(np.radians([0, 30, 45, 60, 90, 120, 135, 150]), n)
    period = rng.uniform(5, 20, n)
    duty = rng.uniform(0.3, 0.6, n)
    aux = rng.uniform(2, 6, n)
    return np.stack([kind, np.cos(angle), np.sin(angle), period, duty, aux], axis=1)


def _scene_tables(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Scenes in families of 10 sharing layout and objects: nb, bands, boundaries, lambda, pool, cum."""
    n, fam_size = COUNTS["scene"], 10
    things = np.arange(N_STUFF, COUNTS["object"])
    perm = rng.permutation(things)
    nb = np.zeros(n, np.int64)
    bands = np.zeros((n, _MAX_BANDS), np.int64)
    pos = np.zeros((n, _MAX_BANDS - 1))
    pool = np.zeros((n, 16), np.int64)
    n_fam = -(-n // fam_size)
    chunk = len(things) // n_fam
    for f in range(n_fam):
        f_nb = rng.integers(2, _MAX_BANDS + 1)
        top = rng.integers(0, 10) if rng.random() < 0.7 else rng.integers(10, 25)
        f_bands = [top] + list(rng.integers(10, 25, f_nb - 2)) + [rng.integers(25, N_STUFF)]
        f_pos = np.sort(rng.uniform(0.2, 0.8, f_nb - 1))
        f_pool = np.concatenate([perm[f * chunk:(f + 1) * chunk], rng.choice(things, 30 - chunk)])
        for s in range(f * fam_size, min(n, (f + 1) * fam_size)):
            nb[s], bands[s, :f_nb], pos[s, :f_nb - 1] = f_nb, f_bands, f_pos + rng.uniform(-0.05, 0.05)
            if rng.random() < 0.5:  # vary one band
                k = rng.integers(f_nb)
                lo, hi = (0, 10) if k == 0 and f_bands[0] < 10 else (25, N_STUFF) if k == f_nb - 1 else (10, 25)
                bands[s, k] = rng.integers(lo, hi)
            pool[s] = np.concatenate([rng.choice(f_pool, 12, replace=False), rng.choice(things, 4)])
    w = 1.0 / (1 + np.arange(16)) ** 0.8
    pool_cum = np.tile(np.cumsum(w / w.sum()), (n, 1))
    pool_cum[:, -1] = 1.0
    return nb, bands, np.sort(pos, axis=1), rng.uniform(1.2, 4.0, n), pool, pool_cum


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    """The fixed vocabulary (built once per process, read-only)."""
    rng = np.random.default_rng(_VOCAB_SEED)
    n_obj, n_part, n_mat, n_tex, n_col = (COUNTS[c] for c in ("object", "part", "material", "texture", "color"))
    parts = _part_assignment(rng)
    texp = np.concatenate([rng.uniform(0.0, 0.3, N_STUFF), rng.uniform(0.05, 0.4, n_obj - N_STUFF)])
    mat = np.stack([np.arange(n_mat) % 7, rng.uniform(0.08, 0.3, n_mat), rng.uniform(-0.35, 0.35, n_mat)], 1)
    tables = _Tables(
        templates=_silhouettes(rng, parts), aspect=np.exp(rng.uniform(np.log(0.4), np.log(2.5), n_obj)),
        obj_parts=parts, obj_col=_cumulative(rng, n_obj, n_col, 0.1),
        obj_mat=_cumulative(rng, n_obj, n_mat, 0.03), obj_texp=texp,
        obj_tex=_cumulative(rng, n_obj, n_tex, 0.1), part_col=_cumulative(rng, n_part, n_col, 0.1),
        part_mat=_cumulative(rng, n_part, n_mat, 0.03), part_texp=rng.uniform(0.0, 0.25, n_part),
        part_tex=_cumulative(rng, n_part, n_tex, 0.1), mat=mat, tex=_texture_table(rng),
        **dict(zip(("scene_nb", "scene_bands", "scene_pos", "scene_lam", "scene_pool", "scene_pool_cum"),
                   _scene_tables(rng))),
        rgb=_RGB.copy(), noise=rng.uniform(-1, 1, (256, 256, 4)))
    for a in tables:
        a.setflags(write=False)
    return tables


# ------------------------------------------------------------------ kernels: random numbers
@njit(cache=True)
def _mix(z):
    """splitmix64's finaliser: a bijective 64-bit hash."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def _image_key(seed, i):
    return _mix(_mix(np.uint64(seed) * _GOLDEN + _P1) ^ (np.uint64(i) * _P2))


@njit(cache=True)
def _u(st):
    """The next uniform [0, 1) of the stream whose counter is st[0]."""
    st[0] += _GOLDEN
    return float(_mix(st[0]) >> _S11) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def _hash(key, a, b):
    return _mix(key ^ (np.uint64(a) * _P1 + np.uint64(b) * _P2))


@njit(cache=True)
def _pick(cum, u):
    """The outcome of a categorical draw from cumulative probabilities ``cum`` with uniform u."""
    k = 0
    while k < len(cum) - 1 and cum[k] <= u:
        k += 1
    return k


# ------------------------------------------------------------------ kernels: sampling an image
@njit(cache=True)
def _region(st, regs, r, obj, part, mat_cum, col_cum, texp, tex_cum, n_col):
    """Fill region r: object, part, material, texture (-1 none), colour, ink colour."""
    regs[r, 0], regs[r, 1] = obj, part
    regs[r, 2] = _pick(mat_cum, _u(st))
    regs[r, 4] = _pick(col_cum, _u(st))
    if _u(st) < texp:
        regs[r, 3] = _pick(tex_cum, _u(st))
        regs[r, 5] = (regs[r, 4] + 1 + int(_u(st) * (n_col - 1))) % n_col  # another colour
    else:
        regs[r, 3], regs[r, 5] = -1, regs[r, 4]


@njit(cache=True)
def _sample_objects(st, tb, s, objs):
    """Things of scene s, sorted by their bottom edge (painting order): cls, y0, x0, h, w, flip."""
    lam, n, p = tb.scene_lam[s] - 1.0, 1, 1.0
    limit = math.exp(-lam)
    while n < _MAX_OBJECTS:  # 1 + Poisson(lam - 1) things, Knuth's method
        p *= _u(st)
        if p <= limit:
            break
        n += 1
    for k in range(n):
        if _u(st) < 0.85:
            c = tb.scene_pool[s, _pick(tb.scene_pool_cum[s], _u(st))]
        else:
            c = N_STUFF + min(int(_u(st) * (_N_OBJECTS - N_STUFF)), _N_OBJECTS - N_STUFF - 1)
        h = IMAGE_SIZE * (0.15 + 0.45 * _u(st))
        w = min(h / tb.aspect[c] * (0.85 + 0.3 * _u(st)), 1.2 * IMAGE_SIZE)
        cy, cx = IMAGE_SIZE * (0.3 + 0.6 * _u(st)), IMAGE_SIZE * _u(st)
        objs[k, 0], objs[k, 1], objs[k, 2], objs[k, 3], objs[k, 4] = c, cy - h / 2, cx - w / 2, h, w
        objs[k, 5] = 1.0 if _u(st) < 0.5 else 0.0
    for k in range(1, n):  # insertion sort by bottom edge: nearer things are painted last
        j = k
        while j > 0 and objs[j - 1, 1] + objs[j - 1, 3] > objs[j, 1] + objs[j, 3]:
            tmp = objs[j - 1].copy()
            objs[j - 1] = objs[j]
            objs[j] = tmp
            j -= 1
    return n


@njit(cache=True)
def _object_regions(st, tb, objs, n_obj, regs, r):
    """Regions of each thing (body, then one per part) from region r on; the number of regions."""
    n_col = _N_COLORS
    for k in range(n_obj):
        c = int(objs[k, 0])
        objs[k, 6] = r
        _region(st, regs, r, c, -1, tb.obj_mat[c], tb.obj_col[c], tb.obj_texp[c], tb.obj_tex[c], n_col)
        body = r
        r += 1
        for j in range(4):
            p = tb.obj_parts[c, j]
            if p < 0:
                continue
            _region(st, regs, r, c, p, tb.part_mat[p], tb.part_col[p], tb.part_texp[p], tb.part_tex[p], n_col)
            if _u(st) < 0.6:
                regs[r, 2] = regs[body, 2]  # the object's material
            if regs[r, 3] < 0 and _u(st) < 0.4:
                regs[r, 4] = regs[r, 5] = regs[body, 4]  # the object's colour
            r += 1
    return r


@njit(cache=True)
def _sample(seed, i, tb, meta, bands, regs, objs):
    """Draw image i's scene, background bands, things and regions into the given arrays."""
    st = np.empty(1, np.uint64)
    st[0] = _image_key(seed, i)
    n_scenes = _N_SCENES
    s = min(int(_u(st) * n_scenes), n_scenes - 1)
    nb = tb.scene_nb[s]
    for k in range(nb - 1):  # boundary k: base row, amplitude, frequency, phase
        bands[k, 0] = (tb.scene_pos[s, k] + 0.1 * (_u(st) - 0.5)) * IMAGE_SIZE
        bands[k, 1] = 12.0 * _u(st)
        bands[k, 2] = 0.01 + 0.05 * _u(st)
        bands[k, 3] = 2 * np.pi * _u(st)
    for k in range(nb):
        c = tb.scene_bands[s, k]
        _region(st, regs, k, c, -1, tb.obj_mat[c], tb.obj_col[c], tb.obj_texp[c], tb.obj_tex[c], _N_COLORS)
    n_obj = _sample_objects(st, tb, s, objs)
    n_reg = _object_regions(st, tb, objs, n_obj, regs, nb)
    meta[0], meta[1], meta[2], meta[3] = s, nb, n_obj, n_reg


# ------------------------------------------------------------------ kernels: painting
@njit(cache=True)
def _paint_regions(stride, meta, bands, objs, templates, out):
    """Region of image pixel (stride u, stride v) into out[u, v]: bands, then things in order."""
    n = out.shape[0]
    nb, t = meta[1], templates.shape[1]
    edge = np.empty(_MAX_BANDS)
    for v in range(n):
        x = v * stride
        for k in range(nb - 1):  # the boundaries' rows in this column
            edge[k] = bands[k, 0] + bands[k, 1] * math.sin(bands[k, 2] * x + bands[k, 3])
        for u in range(n):
            y, r = u * stride + 0.5, 0
            for k in range(nb - 1):
                if y >= edge[k]:
                    r = k + 1
            out[u, v] = r
    for k in range(meta[2]):
        c, y0, x0, h, w = int(objs[k, 0]), objs[k, 1], objs[k, 2], objs[k, 3], objs[k, 4]
        flip, base = objs[k, 5] > 0.5, int(objs[k, 6])
        u0, u1 = max(0, math.ceil((y0 - 0.5) / stride)), min(n, int((y0 + h) / stride) + 1)
        v0, v1 = max(0, math.ceil((x0 - 0.5) / stride)), min(n, int((x0 + w) / stride) + 1)
        for u in range(u0, u1):
            ty = math.floor((u * stride + 0.5 - y0) / h * t)
            if ty < 0 or ty >= t:
                continue
            for v in range(v0, v1):
                tx = math.floor((v * stride + 0.5 - x0) / w * t)
                if tx < 0 or tx >= t:
                    continue
                code = templates[c, ty, t - 1 - tx if flip else tx]
                if code:
                    out[u, v] = base + code - 1


@njit(cache=True)
def _frac(a):
    return a - math.floor(a)


@njit(cache=True)
def _pattern(tex, t, y, x):
    """Whether texture t puts ink on image pixel (y, x)."""
    kind, ca, sa, period, duty, aux = tex[t, 0], tex[t, 1], tex[t, 2], tex[t, 3], tex[t, 4], tex[t, 5]
    px, py = x + 0.5, y + 0.5
    a, b = (px * ca + py * sa) / period, (py * ca - px * sa) / period
    if kind == 0:  # stripes
        return _frac(a) < duty
    if kind == 1:  # dots
        fa, fb = _frac(a) - 0.5, _frac(b) - 0.5
        return fa * fa + fb * fb < 0.25 * duty * duty * 1.6
    if kind == 2:  # checks
        return (math.floor(a) + math.floor(b)) % 2 == 0
    if kind == 3:  # zigzag
        return _frac(a + 0.25 * aux * abs(_frac(b / 2) - 0.5)) < duty
    if kind == 4:  # grid lines
        return _frac(a) < duty / 2 or _frac(b) < duty / 2
    if kind == 5:  # waves
        return _frac(a + 0.15 * aux * math.sin(b * 2.5)) < duty
    if kind == 6:  # random blocks
        return (_mix(np.uint64(math.floor(a) + 4096) * _P1 + np.uint64(math.floor(b) + 4096))
                >> np.uint64(63)) == 1
    if kind == 7:  # crosshatch
        return _frac(a) < duty / 2 or _frac((px * ca - py * sa) / period) < duty / 2
    r = math.sqrt((px - IMAGE_SIZE / 2) ** 2 + (py - IMAGE_SIZE / 2) ** 2) / period  # rings
    return _frac(r) < duty


@njit(cache=True)
def _paint_colors(stride, regions, regs, tex, out):
    """Colour of image pixel (stride u, stride v): the region's, or its ink where its texture inks."""
    n = out.shape[0]
    for u in range(n):
        for v in range(n):
            r = regions[u, v]
            t = regs[r, 3]
            out[u, v] = regs[r, 5] if t >= 0 and _pattern(tex, t, u * stride, v * stride) else regs[r, 4]


@njit(cache=True)
def _grain(kind, noise, oy, ox, y, x):
    """Material grain in [-1, 1] at pixel (y, x), read from the noise tile at offset (oy, ox)."""
    if kind == 0:  # smooth
        return 0.0
    if kind == 1:  # fine noise
        return noise[(y + oy) & 255, (x + ox) & 255, 3]
    if kind == 2:  # horizontal streaks
        return noise[(y + oy) & 255, ((x >> 4) + ox) & 255, 3]
    if kind == 3:  # vertical streaks
        return noise[((y >> 4) + oy) & 255, (x + ox) & 255, 3]
    if kind == 4:  # blotches
        return noise[((y >> 3) + oy) & 255, ((x >> 3) + ox) & 255, 3]
    if kind == 5:  # speckles
        return -1.0 if noise[(y + oy) & 255, (x + ox) & 255, 3] < -0.9 else 0.0
    return 4.0 * abs(_frac(0.014 * x + 0.008 * y) - 0.5) - 1.0  # sheen: a triangle wave


@njit(cache=True)
def _shade(key, regions, colors, regs, tb, out):
    """The RGB image from per-pixel regions and colours: palette, material grain and shading, and
    sensor noise (a fixed noise tile at per-image and per-region offsets)."""
    n = out.shape[0]
    rgb, mat, noise = tb.rgb, tb.mat, tb.noise
    offsets = np.empty((_MAX_REGIONS + 1, 2), np.int64)  # the last: the sensor noise's
    for r in range(_MAX_REGIONS + 1):
        h = _hash(key, r, 0)
        offsets[r, 0], offsets[r, 1] = np.int64(h & np.uint64(255)), np.int64((h >> np.uint64(8)) & np.uint64(255))
    sy, sx = offsets[_MAX_REGIONS, 0], offsets[_MAX_REGIONS, 1]
    for y in range(n):
        row = y / n - 0.5
        for x in range(n):
            r = regions[y, x]
            m = regs[r, 2]
            f = (1.0 + mat[m, 2] * row) * \
                (1.0 + mat[m, 1] * _grain(int(mat[m, 0]), noise, offsets[r, 0], offsets[r, 1], y, x))
            c = colors[y, x]
            for ch in range(3):
                val = rgb[c, ch] * f + 7.0 * noise[(y + sy) & 255, (x + sx) & 255, ch]
                out[y, x, ch] = np.uint8(np.int64(max(0.0, min(val, 255.0)) + 0.5))


# ------------------------------------------------------------------ kernels: batches
@njit(cache=True, nogil=True)
def _render_batch(seed, start, tb, out):
    """Images start .. start + len(out) - 1 into out uint8 [b, 224, 224, 3]."""
    for j in range(out.shape[0]):
        meta = np.zeros(4, np.int64)
        bands = np.zeros((_MAX_BANDS, 4))
        regs = np.zeros((_MAX_REGIONS, 6), np.int64)
        objs = np.zeros((_MAX_OBJECTS, 7))
        _sample(seed, start + j, tb, meta, bands, regs, objs)
        regions = np.empty((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        colors = np.empty((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        _paint_regions(1, meta, bands, objs, tb.templates, regions)
        _paint_colors(1, regions, regs, tb.tex, colors)
        _shade(_image_key(seed, start + j) ^ _P2, regions, colors, regs, tb, out[j])


@njit(cache=True)
def _region_concepts(regs, r, out):
    """The concept rows region r paints (object, part, material, texture; -1 for none)."""
    out[0] = _OBJ + regs[r, 0]
    out[1] = _PART + regs[r, 1] if regs[r, 1] >= 0 else -1
    out[2] = _MAT + regs[r, 2]
    out[3] = _TEX + regs[r, 3] if regs[r, 3] >= 0 else -1


@njit(cache=True)
def _nonzero(words):
    for w in words:
        if w:
            return True
    return False


@njit(cache=True, nogil=True)
def _label_batch(seed, start, tb, rwords, cwords, regs, n_regs, present):
    """Packed mask-resolution masks of each region (rwords) and colour (cwords) of a batch (bit p =
    mask pixel p in C order), and which concepts each image holds."""
    regions = np.empty((MASK_SIZE, MASK_SIZE), np.uint8)
    colors = np.empty((MASK_SIZE, MASK_SIZE), np.uint8)
    cs = np.empty(4, np.int64)
    for j in range(rwords.shape[0]):
        meta = np.zeros(4, np.int64)
        bands = np.zeros((_MAX_BANDS, 4))
        objs = np.zeros((_MAX_OBJECTS, 7))
        _sample(seed, start + j, tb, meta, bands, regs[j], objs)
        _paint_regions(IMAGE_SIZE // MASK_SIZE, meta, bands, objs, tb.templates, regions)
        _paint_colors(IMAGE_SIZE // MASK_SIZE, regions, regs[j], tb.tex, colors)
        for u in range(MASK_SIZE):
            for v in range(MASK_SIZE):
                p = u * MASK_SIZE + v
                bit = np.uint64(1) << np.uint64(p & 63)
                rwords[j, regions[u, v], p >> 6] |= bit
                cwords[j, colors[u, v], p >> 6] |= bit
        n_regs[j] = meta[3]
        present[j, _SCENE + meta[0]] = True
        for r in range(meta[3]):
            if _nonzero(rwords[j, r]):  # not occluded entirely
                _region_concepts(regs[j], r, cs)
                for c in cs:
                    if c >= 0:
                        present[j, c] = True
        for c in range(_N_COLORS):
            present[j, _COL + c] = _nonzero(cwords[j, c])


@njit(cache=True, nogil=True)
def _fill_words(rwords, cwords, regs, n_regs, present, slot, first, words):
    """words[first[j] + slot[j, c]] = concept c's packed mask in image j: the union of its regions'."""
    n_pix = MASK_SIZE * MASK_SIZE
    cs = np.empty(4, np.int64)
    for j in range(rwords.shape[0]):
        base = first[j]
        for c in range(_SCENE, _SCENE + _N_SCENES):  # the scene fills its image
            if present[j, c]:
                for p in range(n_pix):
                    words[base + slot[j, c], p >> 6] |= np.uint64(1) << np.uint64(p & 63)
        for r in range(n_regs[j]):
            _region_concepts(regs[j], r, cs)
            for c in cs:
                if c >= 0:
                    words[base + slot[j, c]] |= rwords[j, r]
        for c in range(_N_COLORS):
            if present[j, _COL + c]:
                words[base + slot[j, _COL + c]] = cwords[j, c]


# ------------------------------------------------------------------ the probe
def _split(kernel, n: int, threads: int, *args) -> None:
    """Run ``kernel(lo, hi, *args)`` over [0, n) in ``threads`` contiguous chunks (the kernels
    release the GIL, so the chunks run in parallel)."""
    cuts = np.linspace(0, n, min(threads, n) + 1).astype(np.int64)
    if len(cuts) <= 2:
        kernel(0, n, *args)
        return
    with ThreadPoolExecutor(len(cuts) - 1) as pool:
        for f in [pool.submit(kernel, int(lo), int(hi), *args) for lo, hi in itertools.pairwise(cuts)]:
            f.result()


def _render_chunk(lo: int, hi: int, seed: int, start: int, tb: _Tables, out: np.ndarray) -> None:
    _render_batch(seed, start + lo, tb, out[lo:hi])


def _label_chunk(lo: int, hi: int, seed: int, start: int, tb: _Tables, rwords: np.ndarray,
                 cwords: np.ndarray, regs: np.ndarray, n_regs: np.ndarray, present: np.ndarray) -> None:
    _label_batch(seed, start + lo, tb, rwords[lo:hi], cwords[lo:hi], regs[lo:hi], n_regs[lo:hi], present[lo:hi])


def _words_chunk(lo: int, hi: int, rwords: np.ndarray, cwords: np.ndarray, regs: np.ndarray,
                 n_regs: np.ndarray, present: np.ndarray, slot: np.ndarray, first: np.ndarray,
                 words: np.ndarray) -> None:
    _fill_words(rwords[lo:hi], cwords[lo:hi], regs[lo:hi], n_regs[lo:hi], present[lo:hi], slot[lo:hi],
                first[lo:hi], words)


class SyntheticBroden(Probe):
    """A Broden-shaped procedural probe: ``n_images`` images of 224 x 224 px, masks at 112 x 112.

    Concepts (``concept_names``, in this order): ``object_000`` .. ``object_479``
    (the first 40 background stuff), ``part_000`` .. ``part_199``,
    ``scene_000`` .. ``scene_379`` (image-level), ``material_00`` ..
    ``material_29``, ``texture_00`` .. ``texture_44`` and Broden's 11 colours
    (``black`` .. ``yellow``); ``concept_categories`` says which of
    "object", "part", "scene", "material", "texture", "color". Image i is a pure
    function of ``(seed, i)``. After Bau et al., "Network Dissection", CVPR 2017.

    n_images: number of images (>= 1; default 22,210, the size of the 224-px Broden set
    NetDissect uses); seed: non-negative integer drawing the images; threads: CPU threads
    generating a batch (default: the CPUs this process may use).
    """

    name = "synthetic-broden"

    def __init__(self, n_images: int = 22210, seed: int = 0, *, threads: int | None = None):
        _check_int("n_images", n_images, 1, None)
        _check_int("seed", seed, 0, 2**63)
        if threads is not None:
            _check_int("threads", threads, 1, None)
        self.n_images, self.seed = int(n_images), int(seed)
        self.threads = int(threads) if threads is not None else _usable_cpus()
        self.image_size = (IMAGE_SIZE, IMAGE_SIZE)
        self.mask_shape = (MASK_SIZE, MASK_SIZE)
        width = {"object": 3, "part": 3, "scene": 3, "material": 2, "texture": 2}
        self.concept_names = [f"{cat}_{k:0{width[cat]}d}" for cat in width for k in range(COUNTS[cat])]
        self.concept_names += list(COLORS)
        self.concept_categories = [cat for cat, n in COUNTS.items() for _ in range(n)]
        self._tables = _tables()

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.n_images:
            raise IndexError(f"{self.name}: images {start}..{stop} out of range for {self.n_images} images")

    def images(self, start: int, stop: int) -> np.ndarray:
        """RGB images ``start..stop-1``: uint8 [stop - start, 224, 224, 3]."""
        self._check_range(start, stop)
        out = np.empty((stop - start, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        _split(_render_chunk, stop - start, self.threads, self.seed, start, self._tables, out)
        return out

    def concept_words(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image-sparse packed masks of images ``start..stop-1``, ordered by image then ascending row:
        (rows int64 [m], images int64 [m] (within the batch), words uint64 [m, 196]), bit p of a
        mask's words is mask pixel p in C order, as in :class:`~neurcore.engine.BitMasks`."""
        self._check_range(start, stop)
        b, wpi = stop - start, (MASK_SIZE * MASK_SIZE + 63) // 64
        rwords = np.zeros((b, _MAX_REGIONS, wpi), np.uint64)
        cwords = np.zeros((b, _N_COLORS, wpi), np.uint64)
        regs, n_regs = np.zeros((b, _MAX_REGIONS, 6), np.int64), np.zeros(b, np.int64)
        present = np.zeros((b, _N_CONCEPTS), bool)
        _split(_label_chunk, b, self.threads, self.seed, start, self._tables, rwords, cwords, regs, n_regs,
               present)
        images, rows = np.nonzero(present)
        first = np.concatenate([[0], np.cumsum(present.sum(1))[:-1]]).astype(np.int64)
        slot = np.cumsum(present, axis=1, dtype=np.int64) - 1
        words = np.zeros((len(rows), wpi), np.uint64)
        _split(_words_chunk, b, self.threads, rwords, cwords, regs, n_regs, present, slot, first, words)
        return rows.astype(np.int64), images.astype(np.int64), words

    def concept_batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`concept_words` with the masks unpacked: bool [m, 112, 112]."""
        rows, images, words = self.concept_words(start, stop)
        return rows, images, unpack_words(words, MASK_SIZE * MASK_SIZE).reshape(-1, *self.mask_shape)

    def image_concepts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Concepts present in image i: (rows int64 [m], ascending; masks bool [m, 112, 112])."""
        if not 0 <= i < self.n_images:
            raise IndexError(f"{self.name}: image {i} out of range for {self.n_images} images")
        rows, _, masks = self.concept_batch(i, i + 1)
        return rows, masks

    def concept_maps(self, start: int, stop: int) -> np.ndarray:
        """Dense bool [stop - start, n_concepts, 112, 112], as :func:`write_broden` reads a world
        (~14 MB per image: for small exports)."""
        rows, images, masks = self.concept_batch(start, stop)
        out = np.zeros((stop - start, len(self.concept_names), *self.mask_shape), bool)
        out[images, rows] = masks
        return out

    def concept_masks(self, progress: bool = False, batch_size: int = 512) -> BitMasks:
        """All concept masks, BitMasks [n_concepts, n_images, 112, 112] (image-sparse unless dense is
        smaller), built ``batch_size`` images at a time: the masks the image-by-image build gives."""
        from tqdm import tqdm

        parts = []
        for start in tqdm(range(0, self.n_images, batch_size), desc=f"{self.name}: concept masks",
                          disable=not progress, leave=False):
            rows, images, words = self.concept_words(start, min(self.n_images, start + batch_size))
            parts.append((rows, images + start, words))
        rows, images, words = (np.concatenate(a) for a in zip(*parts))
        order = np.argsort(rows, kind="stable")  # images stay ascending within a row
        indptr = np.zeros(len(self.concept_names) + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=len(self.concept_names)), out=indptr[1:])
        del parts
        masks = BitMasks((self.n_images, *self.mask_shape), words[order], indptr, images[order])
        return masks.as_layout("auto")


def _usable_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _check_int(name: str, value, lo: int, hi: int | None) -> None:
    """InputError naming ``name`` unless value is an integer in [lo, hi)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= lo and \
        (hi is None or value < hi)
    if not ok:
        bound = f"in [{lo}, {hi})" if hi is not None else f">= {lo}"
        raise InputError(f"SyntheticBroden: {name} must be an integer {bound}, got {value!r}")
