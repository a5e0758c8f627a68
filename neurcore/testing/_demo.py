"""A short demo of the mask engine on synthetic data (``neurcore demo``).

It streams a concept set of random blobs with Zipf-like image frequencies into
image-sparse ``BitMasks``, plants units whose masks are known formulas of the
concepts (plus noise), then explains each unit from intersection counts
alone: the best single concept by IoU, and the best one-step extension
``F OP C`` (OP in OR, AND, AND NOT) using the identities of :mod:`neurcore.rules` (IoU of
``F op C`` from ``|F∧C|``, ``|F∧C∧A|`` and row counts). Finally it times ``intersect_counts``
against numpy's per-pair ``logical_and(...).sum()``.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..engine import BitMasks, BitMasksBuilder, cpu_level, intersect_counts

# Planted units: (label, formula over concept indices). Names are c<index>.
_PLANTED = [
    ("c3", lambda c: c[3]),
    ("(c5 OR c8)", lambda c: c[5] | c[8]),
    ("(c1 AND NOT c4)", lambda c: c[1].and_not(c[4])),
    ("(c0 OR c9)", lambda c: c[0] | c[9]),
    ("c12", lambda c: c[12]),
    ("(c2 OR c6)", lambda c: c[2] | c[6]),
]


def concept_world(n_images: int, n_concepts: int, side: int, seed: int) -> BitMasks:
    """Image-sparse masks [n_concepts, n_images, side, side] of random elliptical blobs; concept r
    appears in ~0.4 r^-0.9 of the images (Zipf-like)."""
    rng = np.random.default_rng(seed)
    freq = np.clip(0.4 * (np.arange(n_concepts) + 1.0) ** -0.9, 2.0 / n_images, 1.0)
    yy, xx = np.mgrid[0:side, 0:side]
    builder = BitMasksBuilder(n_concepts, (side, side), layout="sparse")
    batch = 250
    for start in range(0, n_images, batch):
        b = min(batch, n_images - start)
        present = rng.random((n_concepts, b)) < freq[:, None]
        rows, images = np.nonzero(present)
        m = len(rows)
        cy, cx = rng.uniform(0, side, (2, m, 1, 1))
        ry, rx = rng.uniform(side / 10, side / 3, (2, m, 1, 1))
        masks = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        builder.append_sparse(b, rows, images, masks)
    return builder.finish()


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def run_demo(n_images: int = 2000, n_concepts: int = 300, side: int = 56, seed: int = 0,
             out: Callable[[str], object] = print) -> dict:
    """Build a synthetic concept set, plant units with known formulas, explain them from counts and
    time :func:`~neurcore.engine.intersect_counts` against numpy; every line of the report goes to
    ``out``. Images are ``side`` x ``side`` pixels.

    Returns ``{"found": planted formulas recovered, "planted": units planted,
    "speedup_vs_numpy_pairs": intersect_counts' speed over numpy's per-pair loop}``.
    """
    t0 = time.perf_counter()
    concepts = concept_world(n_images, n_concepts, side, seed)
    t_build = time.perf_counter() - t0
    units = _planted_units(concepts, seed)
    out(f"neurcore demo: {n_concepts} concepts over {n_images} images x {side} x {side} "
        f"({concepts.layout}, {concepts.nbytes / 2**20:.1f} MiB, occupancy {concepts.occupancy():.3f}), "
        f"built in {t_build:.2f} s; CPU level {cpu_level()}")
    t0 = time.perf_counter()
    rows = _explain(units, concepts)
    t_explain = time.perf_counter() - t0
    found = _report_recovered(rows, out)
    out(f"recovered {found} of {len(rows)} planted explanations in {t_explain:.3f} s")
    ratio = _speed_against_numpy(units, concepts, out)
    return {"found": found, "planted": len(rows), "speedup_vs_numpy_pairs": ratio}


def _planted_units(concepts: BitMasks, seed: int) -> BitMasks:
    """One unit per planted formula: its mask with ~10% of the pixels dropped and ~0.2% added."""
    rng = np.random.default_rng(seed + 1)
    shape = (1, *concepts.sample_shape)
    units = []
    for _, formula in _PLANTED:
        f = formula(concepts)
        drop = BitMasks.from_dense(rng.random(shape) < 0.1)
        add = BitMasks.from_dense(rng.random(shape) < 0.002)
        units.append(f.and_not(drop) | add)
    return BitMasks.concat(units)


def _explain(units: BitMasks, concepts: BitMasks) -> list[tuple]:
    """Per unit (planted label, best concept, best length-2 formula, the better of the two), each
    formula as (text, IoU), scored from counts only."""
    # Best single concept: IoU = |A&C| / (|A| + |C| - |A&C|), all pairs from one call.
    a_cnt, c_cnt = units.count(), concepts.count()
    inter = intersect_counts(units, concepts)
    iou1 = _iou(inter, a_cnt[:, None] + c_cnt[None, :] - inter)
    best = iou1.argmax(axis=1)
    # One extension step F OP C for F = the best concept.
    rows = []
    for u in range(units.n):
        f, a = concepts[int(best[u])], units[u]
        fa = f & a
        f_c = intersect_counts(f, concepts)[0]       # |F & C|
        fa_c = intersect_counts(fa, concepts)[0]     # |F & A & C|
        nf, na, nfa, nc, nca = int(f.count()[0]), int(a_cnt[u]), int(fa.count()[0]), c_cnt, inter[u]
        cand = {
            "OR": _iou(nfa + nca - fa_c, nf + nc - f_c + na - (nfa + nca - fa_c)),
            "AND": _iou(fa_c, f_c + na - fa_c),
            "AND NOT": _iou(nfa - fa_c, nf - f_c + na - (nfa - fa_c)),
        }
        cand["OR"][best[u]] = cand["AND"][best[u]] = cand["AND NOT"][best[u]] = -1.0  # skip F OP F
        op, c = max(((k, int(v.argmax())) for k, v in cand.items()), key=lambda kc: cand[kc[0]][kc[1]])
        two = (f"(c{best[u]} {op} c{c})", float(cand[op][c]))
        one = (f"c{best[u]}", float(iou1[u, best[u]]))
        rows.append((_PLANTED[u][0], one, two, max(one, two, key=lambda x: x[1])))
    return rows


def _report_recovered(rows: list[tuple], out: Callable[[str], object]) -> int:
    """Print one line per unit; the number of planted formulas found."""
    out(f"{'unit':>4}  {'planted':<18} {'best concept':<16} {'best length 2':<24} found")
    found = 0
    for u, (planted, one, two, pick) in enumerate(rows):
        ok = _same_formula(pick[0], planted)
        found += ok
        out(f"{u:>4}  {planted:<18} {one[0]:<6} IoU {one[1]:.3f}  {two[0]:<16} IoU {two[1]:.3f}  "
            f"{'yes' if ok else 'no'}")
    return found


def _speed_against_numpy(units: BitMasks, concepts: BitMasks, out: Callable[[str], object]) -> float:
    """Time intersect_counts against numpy's per-pair loop on the same masks; the speed-up."""
    sub = concepts[:40]
    t0 = time.perf_counter()
    fast = intersect_counts(units, concepts)
    t_fast = time.perf_counter() - t0
    dense_u, dense_c = units.to_dense(), sub.to_dense()
    t0 = time.perf_counter()
    slow = np.array([[np.logical_and(x, y).sum() for y in dense_c] for x in dense_u])
    t_pair = (time.perf_counter() - t0) / slow.size
    assert np.array_equal(slow, fast[:, :40]), "intersect_counts disagrees with numpy"
    ratio = t_pair * fast.size / t_fast
    out(f"intersect_counts {units.n} x {concepts.n}: {t_fast * 1e3:.1f} ms; numpy per-pair loop "
        f"{t_pair * 1e3:.2f} ms/pair -> {ratio:.0f}x faster (same run, same masks)")
    return ratio


def _same_formula(got: str, planted: str) -> bool:
    """Equal up to the order of OR's operands (the only commutative operator planted)."""
    if got == planted:
        return True
    if " OR " in got and " OR " in planted:
        return sorted(got.strip("()").split(" OR ")) == sorted(planted.strip("()").split(" OR "))
    return False
