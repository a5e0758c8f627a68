"""Clustered Compositional Explanations with the MMESH heuristic (La Rosa, Gilpin, Capobianco,
NeurIPS 2023; https://arxiv.org/abs/2310.18120).

Per unit, its raw activations (zeros dropped when all are >= 0) are clustered
into ``n_clusters`` ranges by KMeans (scikit-learn, ``random_state=0``); each
range becomes a binary mask and gets its own compositional explanation.

Ranges. The anchor keeps a pixel in range k when ``lo_k < a < hi_k`` (the
cluster's own min and max, strict), which leaves cluster extremes and the
gaps between clusters in no mask. By default neurcore uses
``lo_k <= a < lo_{k+1}`` (the top range unbounded), so the range masks
partition the pixels whose activation reaches the lowest cluster;
``strict_ranges=True`` gives the anchor's masks.

Search (the anchor's ``heuristic_search``): the first beam is the ``2 beam``
best single concepts; each step extends every beam formula by every concept
not already in it with OR, AND and AND NOT; candidates are visited in order
of their estimated IoU and scored exactly until the beam is full and the
estimate falls below the beam's minimum; the last step keeps one formula.
The estimate (MMESH) is, per image x, from |A_x|, |F_x|, |C_x|, |F_x ∧ A_x|,
|C_x ∧ A_x|, bounding boxes and inscribed rectangles: an upper bound on the
intersection over a lower bound on the area, summed over images. neurcore
computes it without the anchor's rounding to 4 decimals, so it is an
admissible bound and skipping candidates never changes the result (tested);
the rectangles of beam formulas are derived from their concepts' (a box that
contains the formula, a rectangle inside it), which keeps admissibility but
is looser than the anchor's, which re-measures each beam formula's mask.
Ties between equal IoUs go to the formula first in order (beam position,
concept index, operator OR, AND, AND NOT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..engine import (
    BitMasks,
    BitMasksBuilder,
    combine_rows,
    intersect_counts,
    largest_rectangles,
    unpack_words,
)
from ..errors import InputError
from ..results import Explanation
from ._concepts import ConceptSet
from ._counts import OP_NODE, OPERATORS, OPS_CODE, candidate_counts, explanations, host, iou_of
from .formula import Formula, Leaf

__all__ = ["activation_ranges", "range_masks", "ClusteredSearch", "mmesh_estimates"]

EMPTY_RECT = np.array([0, 0, -1, -1], np.int32)


def activation_ranges(values: np.ndarray, n_clusters: int = 5, seed: int = 0) -> list[tuple[float, float]]:
    """KMeans ranges (min, max) of a unit's raw activations, lowest first (zeros dropped when all >= 0)."""
    from sklearn.cluster import KMeans

    v = np.asarray(values, np.float64).reshape(-1)
    if v.size and v.min() >= 0:
        v = v[v > 0]
    if v.size == 0:
        return []
    k = min(n_clusters, len(np.unique(v)))
    labels = KMeans(n_clusters=k, random_state=seed, n_init="auto").fit(v.reshape(-1, 1)).labels_
    ranges = [(float(v[labels == j].min()), float(v[labels == j].max())) for j in range(k)]
    return sorted(ranges)


def range_masks(maps: np.ndarray, ranges: Sequence[tuple[float, float]], mask_shape: tuple[int, int], *,
                strict: bool = False, batch_size: int = 64) -> BitMasks:
    """Masks [len(ranges), n_images, *mask_shape] of one unit's maps [n_images, h, w], upsampled
    bilinearly (torch, align_corners=False) then cut by the ranges (lo, hi) of
    :func:`activation_ranges` (see the module docstring); ``batch_size`` images at a time."""
    import torch
    import torch.nn.functional as F

    k = len(ranges)
    builder = BitMasksBuilder(k, mask_shape, layout="auto")
    lows = np.array([r[0] for r in ranges])
    for s in range(0, len(maps), batch_size):
        a = torch.from_numpy(np.array(maps[s : s + batch_size], dtype=np.float32))
        up = F.interpolate(a[:, None], size=tuple(mask_shape), mode="bilinear", align_corners=False)
        up = up[:, 0].numpy()
        out = np.zeros((k, len(a), *mask_shape), bool)
        for j, (lo, hi) in enumerate(ranges):
            if strict:
                out[j] = (up > lo) & (up < hi)
            else:
                upper = lows[j + 1] if j + 1 < k else np.inf
                out[j] = (up >= lo) & (up < upper)
        builder.append(out)
    return builder.finish()


# ------------------------------------------------------------------ MMESH
def _area(r):
    return np.maximum(r[..., 2] - r[..., 0] + 1, 0) * np.maximum(r[..., 3] - r[..., 1] + 1, 0)


def _overlap(p, q):
    h = np.maximum(np.minimum(p[..., 2], q[..., 2]) - np.maximum(p[..., 0], q[..., 0]) + 1, 0)
    w = np.maximum(np.minimum(p[..., 3], q[..., 3]) - np.maximum(p[..., 1], q[..., 1]) + 1, 0)
    return h * w


def _intersect(p, q):
    r = np.concatenate([np.maximum(p[..., :2], q[..., :2]), np.minimum(p[..., 2:], q[..., 2:])], axis=-1)
    return np.where((_area(r) > 0)[..., None], r, EMPTY_RECT)


def _hull(p, q):
    r = np.concatenate([np.minimum(p[..., :2], q[..., :2]), np.maximum(p[..., 2:], q[..., 2:])], axis=-1)
    r = np.where((_area(p) == 0)[..., None], q, r)
    return np.where((_area(q) == 0)[..., None], p, r)


class MaskStats:
    """Per-image quantities of rows of masks, for MMESH: areas int64 [n, N] (pixels), bounding boxes
    and inscribed rectangles int32 [n, N, 4] ``(y0, x0, y1, x1)`` inclusive, ``(0, 0, -1, -1)`` when
    empty."""

    def __init__(self, area: np.ndarray, box: np.ndarray, rect: np.ndarray):
        self.area, self.box, self.rect = area, box, rect

    @classmethod
    def measure(cls, masks: BitMasks) -> "MaskStats":
        """Measure every row and image of ``masks`` (image shape (h, w)): exact areas, bounding boxes
        and a largest inscribed rectangle."""
        n, n_img = masks.n, masks.n_images
        h, w = masks.image_shape
        area = host(masks.count(per_image=True)).astype(np.int64)
        box = np.tile(EMPTY_RECT, (n, n_img, 1))
        rect = np.tile(EMPTY_RECT, (n, n_img, 1))
        sparse = masks.to("cpu").as_layout("sparse")
        arrays = sparse.layout_arrays()
        rows = np.repeat(np.arange(n), np.diff(arrays["indptr"]))
        images = arrays["images"]
        for s in range(0, len(images), 4096):
            dense = unpack_words(arrays["words"][s : s + 4096], h * w).reshape(-1, h, w)
            r, x = rows[s : s + 4096], images[s : s + 4096]
            rect[r, x] = largest_rectangles(dense)
            ys, xs = dense.any(axis=2), dense.any(axis=1)
            box[r, x] = np.stack([ys.argmax(1), xs.argmax(1), h - 1 - ys[:, ::-1].argmax(1),
                                  w - 1 - xs[:, ::-1].argmax(1)], axis=1)
        box[area == 0] = EMPTY_RECT
        rect[area == 0] = EMPTY_RECT
        return cls(area, box, rect)

    def derive(self, idx_left: np.ndarray, other: "MaskStats", idx_right: np.ndarray, ops: list[str],
               area: np.ndarray) -> "MaskStats":
        """Stats of formulas left op right: exact areas given, a box that contains the formula and a
        rectangle inside it derived from the operands'."""
        lb, lr = self.box[idx_left], self.rect[idx_left]
        rb, rr = other.box[idx_right], other.rect[idx_right]
        box, rect = np.empty_like(lb), np.empty_like(lr)
        for k, op in enumerate(ops):
            if op == "OR":
                box[k] = _hull(lb[k], rb[k])
                rect[k] = np.where((_area(lr[k]) >= _area(rr[k]))[..., None], lr[k], rr[k])
            elif op == "AND":
                box[k] = _intersect(lb[k], rb[k])
                rect[k] = _intersect(lr[k], rr[k])
            else:
                box[k] = lb[k]
                rect[k] = np.where((_overlap(lr[k], rb[k]) == 0)[..., None], lr[k], EMPTY_RECT)
        return MaskStats(area, box, rect)


def mmesh_estimates(f: MaskStats, fa_img: np.ndarray, c: MaskStats, ca_img: np.ndarray, a_img: np.ndarray,
                    pixels: int) -> np.ndarray:
    """MMESH upper bounds on the IoU of F op C for beam formulas F and concepts C -> [n_f, n_c, 3]
    (operators OR, AND, AND NOT). fa_img [n_f, N], ca_img [n_c, N]: per-image intersections with A."""
    n_f, n_c = len(f.area), len(c.area)
    a = a_img.sum()
    out = np.zeros((n_f, n_c, 3))
    scene_c = np.all((c.area == 0) | (c.area == pixels), axis=1)
    for i in range(n_f):
        l, il = f.area[i][None, :], fa_img[i][None, :]
        r, ir = c.area, ca_img
        scene = scene_c | bool(np.all((f.area[i] == 0) | (f.area[i] == pixels)))
        lb, lr = f.box[i][None], f.rect[i][None]
        for k, op in enumerate(OPERATORS):
            if op == "OR":
                present = (l > 0) | (r > 0)
                il_, ir_ = il * present, ir * present
                max_i = np.minimum(a_img, il_ + ir_)
                min_a = np.maximum(np.maximum(l, r), l + r - _overlap(lb, c.box))
                exact_a = np.maximum(l, r)
                exact_i = np.where(exact_a == pixels, a_img, il_ + ir_)
            elif op == "AND":
                present = (l > 0) & (r > 0)
                il_, ir_ = il * present, ir * present
                max_i = np.minimum(il_, ir_)
                min_a = _overlap(lr, c.rect)
                exact_a, exact_i = np.minimum(l, r), max_i
            else:
                present = (l > 0) & (r < pixels)
                il_, ir_ = il * present, (a_img - ir) * present
                max_i = np.minimum(il_, ir_)
                min_a = l - _overlap(lb, c.box)
                exact_a, exact_i = np.minimum(l, pixels - r), max_i
            min_a = np.maximum(min_a, max_i)
            # Where one side fills or misses every image, area and intersection are exact (the anchor's
            # scene case).
            max_i = np.where(scene[:, None], exact_i, max_i)
            min_a = np.where(scene[:, None], exact_a, min_a)
            si, sa = max_i.sum(1), min_a.sum(1)
            out[i, :, k] = iou_of(si, a + sa - si)
    return out


# ------------------------------------------------------------------ search
@dataclass
class _RangeCounts:
    """A range mask A and its counts against the concepts C: per image [N] / [n_c, N] and in all."""

    A: BitMasks
    CA: BitMasks            # rows C ∧ A
    a_img: np.ndarray       # |A_x| [N]
    a: int                  # |A|
    ca_img: np.ndarray      # |C_x ∧ A_x| [n_c, N]
    ca: np.ndarray          # |C ∧ A| [n_c]
    c_cnt: np.ndarray       # |C| [n_c]


@dataclass
class _Beam:
    """Beam entries (formula, iou, leaves), with their rows and per-image stats in step with the list."""

    entries: list
    f_rows: BitMasks
    fa_rows: BitMasks
    f_stats: MaskStats | None
    fa_img: np.ndarray


def _visit(exact: np.ndarray, est: np.ndarray, valid: np.ndarray, entries: list,
           limit: int) -> tuple[list, int]:
    """Visit candidates in order of their estimate, scoring them exactly, until the pool of the best
    ``limit`` is full and the estimate falls below its minimum -> (pool of (iou, order key), number
    evaluated). Beam entries come first in the order keys."""
    order = [p for p in np.argsort(-est, kind="stable") if valid[p]]
    kept = sorted(range(len(entries)), key=lambda i: (-entries[i][1], i))[:limit]
    pool = [(entries[i][1], i) for i in kept]
    flat = exact.reshape(-1)
    evaluated = 0
    for p in order:
        full = len(pool) >= limit
        worst = min(v for v, _ in pool) if pool else -np.inf
        if full and est[p] < worst:
            break
        evaluated += 1
        pool.append((flat[p], len(entries) + p))
        pool = sorted(pool, key=lambda t: (-t[0], t[1]))[:limit]
    return pool, evaluated


class ClusteredSearch:
    """Clustered compositional explanations: one formula per activation range of each unit (La Rosa,
    Gilpin, Capobianco, "Towards a fuller understanding of neurons with Clustered Compositional
    Explanations", NeurIPS 2023), searched with the MMESH heuristic."""

    def __init__(self, concepts: ConceptSet):
        self.concepts = concepts
        self._stats = None

    def concept_stats(self) -> MaskStats:
        """The concepts' per-image stats for MMESH, measured once per search object."""
        if self._stats is None:
            self._stats = MaskStats.measure(self.concepts.masks)
        return self._stats

    def explain(self, activations: np.ndarray, *, n_clusters: int = 5, length: int = 3, beam: int = 5,
                heuristic: str = "mmesh", strict_ranges: bool = False, layer: str | None = None,
                units: Iterable[int] | None = None) -> list[Explanation]:
        """One Explanation per unit of ``activations`` [n_images, units, h, w] (raw maps).

        ``ranges`` holds, lowest first, each range's bounds, formula, IoU, counts and metrics; the
        top-level formula and IoU are those of the highest range; ``extra`` has the mean IoU over
        ranges, and the candidates evaluated exactly versus the whole search space.
        heuristic: "mmesh" or "none" (visit every candidate). units: which units (indices into the
        second axis) to explain, default all. length: most concepts per formula; beam: beam width.
        """
        if heuristic not in ("mmesh", "none"):
            raise InputError(f"heuristic must be 'mmesh' or 'none', got {heuristic!r}")
        if length < 1 or beam < 1 or n_clusters < 1:
            raise InputError("length, beam and n_clusters must be >= 1")
        concepts = self.concepts
        n_img = activations.shape[0]
        if n_img != concepts.masks.n_images:
            raise InputError(f"activations cover {n_img} images, the concepts {concepts.masks.n_images}")
        out = []
        for u in (range(activations.shape[1]) if units is None else units):
            maps = np.asarray(activations[:, u])
            ranges = activation_ranges(maps, n_clusters)
            masks = None
            if ranges:
                masks = range_masks(maps, ranges, concepts.masks.image_shape, strict=strict_ranges)
            per_range = []
            evaluated = space = 0
            for j, rg in enumerate(ranges):
                res = self._search(masks[j], length, beam, heuristic)
                evaluated += res.pop("evaluated")
                space += res.pop("space")
                per_range.append({"range": [rg[0], rg[1]], **res})
            top = per_range[-1] if per_range else {"formula": None, "iou": 0.0, "length": 0}
            r = Explanation(unit=u, method="clustered", formula=top["formula"], iou=top["iou"],
                            length=top.get("length", 0), layer=layer, counts=top.get("counts", {}),
                            metrics=top.get("metrics", {}), categories=top.get("categories"))
            r.ranges = per_range
            r.extra.update(mean_iou=float(np.mean([p["iou"] for p in per_range])) if per_range else 0.0,
                           candidates_evaluated=int(evaluated), candidates_in_space=int(space),
                           heuristic=heuristic)
            out.append(r)
        return out

    def _search(self, A: BitMasks, length: int, beam: int, heuristic: str) -> dict:
        """The explanation of one range mask A (the anchor's ``heuristic_search``), with the number of
        candidates evaluated exactly and the size of the search space."""
        n = self.concepts.n
        counts = self._range_counts(A)
        iou1 = iou_of(counts.ca, counts.c_cnt + counts.a - counts.ca)
        first = [int(k) for k in np.argsort(-iou1, kind="stable")[: 2 * beam] if iou1[k] > 0]
        if not first:
            return {"formula": None, "iou": 0.0, "length": 0, "evaluated": n, "space": n}
        c_stats = self.concept_stats() if heuristic == "mmesh" else None
        state = self._first_beam(first, iou1, counts, c_stats)
        evaluated = space = n
        for step in range(1, length):
            limit = beam if step < length - 1 else 1
            exact = self._exact_ious(state, counts)
            valid = np.isfinite(exact).reshape(-1)
            space += int(valid.sum())
            est = self._estimates(state, counts, c_stats, heuristic, exact.size)
            pool, visited = _visit(exact, est, valid, state.entries, limit)
            evaluated += visited
            state = self._next_beam(state, pool, exact.shape, limit, counts, c_stats, heuristic)
        return self._describe(state.entries[0][0], A) | {"evaluated": evaluated, "space": space}

    def _range_counts(self, A: BitMasks) -> "_RangeCounts":
        """The counts of a range mask A against the concepts that every step scores from."""
        C, n = self.concepts.masks, self.concepts.n
        a_img = host(A.count(per_image=True))[0].astype(np.int64)
        CA = combine_rows("and", C, np.arange(n), A, np.zeros(n, np.int64))
        ca_img = host(CA.count(per_image=True)).astype(np.int64)
        return _RangeCounts(A=A, CA=CA, a_img=a_img, a=int(a_img.sum()), ca_img=ca_img, ca=ca_img.sum(1),
                            c_cnt=host(C.count()).astype(np.int64))

    def _first_beam(self, first: list[int], iou1: np.ndarray, counts: "_RangeCounts",
                    c_stats: MaskStats | None) -> "_Beam":
        """The beam of the single concepts ``first``."""
        C, names = self.concepts.masks, self.concepts.names
        entries = [(Leaf(names[k]), float(iou1[k]), (k,)) for k in first]
        f_stats = MaskStats(c_stats.area[first], c_stats.box[first], c_stats.rect[first]) if c_stats else None
        return _Beam(entries, C[np.array(first)], counts.CA[np.array(first)], f_stats, counts.ca_img[first])

    def _exact_ious(self, state: "_Beam", counts: "_RangeCounts") -> np.ndarray:
        """IoU of every F op C -> [n_beam, n_c, 3]; -inf where C is already in F (skipped)."""
        C = self.concepts.masks
        fc = host(intersect_counts(state.f_rows, C)).astype(np.int64)
        fca = host(intersect_counts(state.fa_rows, C)).astype(np.int64)
        f = host(state.f_rows.count()).astype(np.int64)[:, None]
        fa = host(state.fa_rows.count()).astype(np.int64)[:, None]
        exact = np.stack([iou_of(*candidate_counts(op, f, fa, counts.c_cnt[None], counts.ca[None], fc, fca,
                                                   counts.a)) for op in OPERATORS], axis=-1)
        for i, e in enumerate(state.entries):
            exact[i, list(e[2])] = -np.inf  # concepts already in the formula are skipped
        return exact

    def _estimates(self, state: "_Beam", counts: "_RangeCounts", c_stats: MaskStats | None, heuristic: str,
                   size: int) -> np.ndarray:
        """The flat order keys of the candidates: MMESH estimates, or +inf for all (visit every one)."""
        if heuristic != "mmesh":
            return np.full(size, np.inf)
        pixels = int(np.prod(self.concepts.masks.image_shape))
        est = mmesh_estimates(state.f_stats, state.fa_img, c_stats, counts.ca_img, counts.a_img, pixels)
        return est.reshape(-1)

    def _next_beam(self, state: "_Beam", pool: list, shape: tuple, limit: int, counts: "_RangeCounts",
                   c_stats: MaskStats | None, heuristic: str) -> "_Beam":
        """The new beam: the best ``limit`` of the old beam and the evaluated candidates ``pool``
        (flat keys past the old entries index candidates of ``shape`` [n_beam, n_c, 3])."""
        names, entries = self.concepts.names, state.entries
        candidates = sorted({(v, key) for v, key in pool} | {(e[1], i) for i, e in enumerate(entries)},
                            key=lambda t: (-t[0], t[1]))[:limit]
        new_entries, sel_old, new_specs = [], [], []
        for v, key in candidates:
            if key < len(entries):
                new_entries.append(entries[key])
                sel_old.append(key)
            else:
                i, c, o = np.unravel_index(key - len(entries), shape)
                op = OPERATORS[o]
                new_entries.append((OP_NODE[op](entries[i][0], Leaf(names[c])), float(v),
                                    entries[i][2] + (int(c),)))
                new_specs.append((int(i), int(c), op))
        f_rows, fa_rows, f_stats, fa_img = self._next_rows(
            state.f_rows, state.fa_rows, state.f_stats, state.fa_img, sel_old, new_specs, counts.A, counts.CA,
            c_stats, heuristic)
        return _Beam(new_entries, f_rows, fa_rows, f_stats, fa_img)

    def _next_rows(self, f_rows, fa_rows, f_stats, fa_img, sel_old, new_specs, A, CA, c_stats, heuristic):
        C = self.concepts.masks
        parts_f, parts_fa = [], []
        if sel_old:
            parts_f.append(f_rows[np.array(sel_old)])
            parts_fa.append(fa_rows[np.array(sel_old)])
        if new_specs:
            li = np.array([s[0] for s in new_specs])
            ci = np.array([s[1] for s in new_specs])
            codes = np.array([OPS_CODE[s[2]] for s in new_specs], np.uint8)
            parts_f.append(combine_rows(codes, f_rows, li, C, ci))
            parts_fa.append(combine_rows(codes, fa_rows, li, CA, ci))
        nf, nfa = BitMasks.concat(parts_f), BitMasks.concat(parts_fa)
        new_fa_img = host(nfa.count(per_image=True)).astype(np.int64)
        if heuristic != "mmesh":
            return nf, nfa, None, new_fa_img
        area = host(nf.count(per_image=True)).astype(np.int64)
        old = MaskStats(f_stats.area[sel_old], f_stats.box[sel_old], f_stats.rect[sel_old])
        if new_specs:
            derived = f_stats.derive(li, c_stats, ci, [s[2] for s in new_specs], area[len(sel_old):])
            stats = MaskStats(area, np.concatenate([old.box, derived.box]),
                              np.concatenate([old.rect, derived.rect]))
        else:
            stats = MaskStats(area, old.box, old.rect)
        return nf, nfa, stats, new_fa_img

    def _describe(self, formula: Formula, A: BitMasks) -> dict:
        """The range's explanation fields, as every method reports them (rules' explanations helper)."""
        F = self.concepts.evaluate(formula)
        r = explanations("clustered", A, self.concepts, [formula], F, F & A, host(A.count()))[0]
        return {k: getattr(r, k) for k in ("formula", "iou", "length", "categories", "counts", "metrics")}
