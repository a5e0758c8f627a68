"""A short demo of the mask engine on synthetic data (``neurcore demo``).

It streams a concept set of random blobs with Zipf-like image frequencies into
image-sparse ``BitMasks``, plants units whose masks are known formulas of the
concepts (plus noise), then explains each unit from intersection counts
alone: the best single concept by IoU, and the best one-step extension
``F OP C`` (OP in OR, AND, AND NOT) using the identities of
:mod:`neurcore.rules` (IoU of ``F op C`` from ``|F∧C|``, ``|F∧C∧A|`` and row counts). Finally it times ``intersect_counts`` against numpy's
per-pair ``logical_and(...).sum()``.
"""

from __future__ import annotations

import time

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
    """Random elliptical blobs; concept r appears in ~0.4 r^-0.9 of the images (Zipf-like)."""
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


def _iou(inter, union):
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def run_demo(n_images: int = 2000, n_concepts: int = 300, side: int = 56, seed: int = 0, out=print) -> dict:
    t0 = time.perf_counter()
    concepts = concept_world(n_images, n_concepts, side, seed)
    t_build = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    units = []
    for _, formula in _PLANTED:
        f = formula(concepts)
        drop = BitMasks.from_dense(rng.random((1, n_images, side, side)) < 0.1)
        add = BitMasks.from_dense(rng.random((1, n_images, side, side)) < 0.002)
        units.append(f.and_not(drop) | add)
    units = BitMasks.concat(units)
    out(f"neurcore demo: {n_concepts} concepts over {n_images} images x {side} x {side} "
        f"({concepts.layout}, {concepts.nbytes / 2**20:.1f} MiB, occupancy {concepts.occupancy():.3f}), "
        f"built in {t_build:.2f} s; CPU level {cpu_level()}")

    # Best single concept: IoU = |A&C| / (|A| + |C| - |A&C|), all pairs from one call.
    t0 = time.perf_counter()
    a_cnt, c_cnt = units.count(), concepts.count()
    inter = intersect_counts(units, concepts)
    iou1 = _iou(inter, a_cnt[:, None] + c_cnt[None, :] - inter)
    best = iou1.argmax(axis=1)

    # One extension step F OP C for F = the best concept, scored from counts only.
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
    t_explain = time.perf_counter() - t0

    out(f"{'unit':>4}  {'planted':<18} {'best concept':<16} {'best length 2':<24} found")
    found = 0
    for u, (planted, one, two, pick) in enumerate(rows):
        ok = _same_formula(pick[0], planted)
        found += ok
        out(f"{u:>4}  {planted:<18} {one[0]:<6} IoU {one[1]:.3f}  {two[0]:<16} IoU {two[1]:.3f}  "
            f"{'yes' if ok else 'no'}")
    out(f"recovered {found} of {len(rows)} planted explanations in {t_explain:.3f} s")

    # Speed: intersect_counts against numpy's per-pair loop on the same masks.
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
    return {"found": found, "planted": len(rows), "speedup_vs_numpy_pairs": ratio}


def _same_formula(got: str, planted: str) -> bool:
    """Equal up to the order of OR's operands (the only commutative operator planted)."""
    if got == planted:
        return True
    if " OR " in got and " OR " in planted:
        return sorted(got.strip("()").split(" OR ")) == sorted(planted.strip("()").split(" OR "))
    return False
