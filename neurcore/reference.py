"""Plain numpy references for every mask kernel.

Slow and obvious on purpose: the tests compare each native, CUDA and Triton
kernel with these on fresh random inputs. Packed layout (see ``BitMasks``):
an image of P pixels is ``wpi = ceil(P / 64)`` uint64 words; bit ``j`` of word
``w`` is pixel ``64 * w + j`` of the image in C order; padding bits are 0.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "pack_bits",
    "unpack_bits",
    "popcount_rows",
    "intersect_counts",
    "binary_op",
    "not_blocks",
    "combine_blocks",
    "nonzero_blocks",
    "sparse_to_dense_words",
    "OPS",
]

OPS = {"and": 0, "or": 1, "and_not": 2}


def words_per_image(pixels_per_image: int) -> int:
    return (pixels_per_image + 63) // 64


def pack_bits(masks: np.ndarray) -> np.ndarray:
    """bool [m, P] -> uint64 [m, ceil(P / 64)], little-endian bit order, zero padding."""
    masks = np.asarray(masks, dtype=bool)
    m, p = masks.shape
    wpi = words_per_image(p)
    padded = np.zeros((m, wpi * 64), dtype=bool)
    padded[:, :p] = masks
    out = np.zeros((m, wpi), dtype=np.uint64)
    for bit in range(64):
        out |= padded[:, bit::64].astype(np.uint64) << np.uint64(bit)
    return out


def unpack_bits(words: np.ndarray, pixels_per_image: int) -> np.ndarray:
    """uint64 [m, wpi] -> bool [m, P]."""
    words = np.asarray(words, dtype=np.uint64)
    m, wpi = words.shape
    bits = np.zeros((m, wpi, 64), dtype=bool)
    for bit in range(64):
        bits[:, :, bit] = (words >> np.uint64(bit)) & np.uint64(1)
    return bits.reshape(m, wpi * 64)[:, :pixels_per_image]


def _bits(words: np.ndarray) -> np.ndarray:
    """uint64 [m, k] -> 0/1 int64 [m, 64 k] (all bits, padding included)."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    return unpack_bits(words, words.shape[1] * 64).astype(np.int64)


def popcount_rows(words: np.ndarray) -> np.ndarray:
    """uint64 [m, k] -> int64 [m]: set bits per row."""
    return _bits(words).sum(axis=1)


def intersect_counts(a_words: np.ndarray, b_words: np.ndarray) -> np.ndarray:
    """uint64 [na, k], [nb, k] -> int64 [na, nb]: |A_i & B_j| as an integer matrix product."""
    return _bits(a_words) @ _bits(b_words).T


def binary_op(op: str, a_words: np.ndarray, b_words: np.ndarray) -> np.ndarray:
    """Elementwise ``a op b`` (op in and, or, and_not) with numpy broadcasting of rows."""
    a, b = np.asarray(a_words, np.uint64), np.asarray(b_words, np.uint64)
    if op == "and":
        return a & b
    if op == "or":
        return a | b
    if op == "and_not":
        return a & ~b
    raise ValueError(f"op: expected one of {sorted(OPS)}, got {op!r}")


def not_blocks(words: np.ndarray, pixels_per_image: int) -> np.ndarray:
    """uint64 [m, wpi] -> the complement of each image block, padding bits zero."""
    bits = unpack_bits(words, pixels_per_image)
    return pack_bits(~bits)


def combine_blocks(ops, a_words, ia, b_words, ib) -> np.ndarray:
    """out[t] = A[ia[t]] op_t B[ib[t]] (ops: a name, or one code 0/1/2 per block); -1 is a zero block."""
    names = {v: k for k, v in OPS.items()}
    wpi = a_words.shape[1]
    out = np.zeros((len(ia), wpi), dtype=np.uint64)
    for t, (i, j) in enumerate(zip(ia, ib)):
        op = ops if isinstance(ops, str) else names[int(ops[t])]
        x = a_words[i] if i >= 0 else np.zeros(wpi, np.uint64)
        y = b_words[j] if j >= 0 else np.zeros(wpi, np.uint64)
        out[t] = binary_op(op, x, y)
    return out


def nonzero_blocks(words: np.ndarray) -> np.ndarray:
    """uint64 [m, wpi] -> bool [m]: block has a set bit."""
    return popcount_rows(words) > 0


def sparse_to_dense_words(indptr, images, words, n_images: int) -> np.ndarray:
    """An image-sparse row set (CSR over images) -> dense words uint64 [n, n_images, wpi]."""
    n = len(indptr) - 1
    wpi = words.shape[1]
    out = np.zeros((n, n_images, wpi), dtype=np.uint64)
    for r in range(n):
        for q in range(indptr[r], indptr[r + 1]):
            out[r, images[q]] |= words[q]
    return out


def beam_search(unit_mask: np.ndarray, concept_masks: np.ndarray, names, length: int = 3, beam: int = 5):
    """Compositional beam search that builds every candidate's mask, one at a time, as compexp does.

    unit_mask: bool [...]; concept_masks: bool [n_concepts, ...] over the same
    samples. Same rules as ``neurcore.rules.BeamSearch``: first beam = the
    ``beam`` concepts of highest non-zero IoU; then F OR C, F AND C, F AND NOT C
    for every beam formula and concept; stable ordering (beam first, then
    candidates by beam position, concept, operator); IoU = I / U exactly.
    Returns the final beam as [(formula string, iou)], best first ([] when no
    concept overlaps the unit).
    """
    from .formula import quote

    a = np.asarray(unit_mask, dtype=bool).reshape(-1)
    concepts = np.asarray(concept_masks, dtype=bool).reshape(len(concept_masks), -1)

    def iou(mask):
        union = int(np.logical_or(mask, a).sum())
        return int(np.logical_and(mask, a).sum()) / union if union else 0.0

    first = [(quote(str(n)), c, iou(c)) for n, c in zip(names, concepts)]
    current = sorted([f for f in first if f[2] > 0], key=lambda f: -f[2])[:beam]
    for _ in range(length - 1):
        pool = list(current)
        keys = {key for key, _, _ in current}
        for key, mask, _ in current:
            for name, c in zip(names, concepts):
                for op, new in (("OR", mask | c), ("AND", mask & c), ("AND NOT", mask & ~c)):
                    new_key = f"({key} {op} {quote(str(name))})"
                    if new_key not in keys:
                        keys.add(new_key)
                        pool.append((new_key, new, iou(new)))
        current = sorted(pool, key=lambda f: -f[2])[:beam]
    return [(key, score) for key, _, score in current]


def optimal_search(unit_mask: np.ndarray, concept_masks: np.ndarray, names, length: int = 3):
    """Brute force over every left-deep formula of up to ``length`` distinct concepts (OR, AND,
    AND NOT), building each mask. The best IoU wins; ties go to the shorter formula, then to the
    smallest tuple (c1, op1, c2, op2, ...) with operators numbered OR 0, AND 1, AND NOT 2.
    Returns (formula string, iou), or (None, 0.0) when no concept overlaps the unit.
    """
    from itertools import permutations, product

    from .formula import quote

    a = np.asarray(unit_mask, dtype=bool).reshape(-1)
    concepts = np.asarray(concept_masks, dtype=bool).reshape(len(concept_masks), -1)
    ops = (("OR", np.logical_or), ("AND", np.logical_and), ("AND NOT", lambda x, y: x & ~y))

    def iou(mask):
        union = int(np.logical_or(mask, a).sum())
        return int(np.logical_and(mask, a).sum()) / union if union else 0.0

    best = (-1.0, 0, ())
    text = {}
    for k in range(1, length + 1):
        for leaves in permutations(range(len(concepts)), k):
            for op_ids in product(range(3), repeat=k - 1):
                mask, s = concepts[leaves[0]], quote(str(names[leaves[0]]))
                for o, c in zip(op_ids, leaves[1:]):
                    mask = ops[o][1](mask, concepts[c])
                    s = f"({s} {ops[o][0]} {quote(str(names[c]))})"
                key = (leaves[0],) + tuple(x for pair in zip(op_ids, leaves[1:]) for x in pair)
                cand = (iou(mask), k, key)
                if cand[0] > best[0] or (cand[0] == best[0] and (k, key) < (best[1], best[2])):
                    best = cand
                    text[key] = s
    if best[0] <= 0:
        return None, 0.0
    return text[best[2]], best[0]


def largest_rectangles(masks: np.ndarray) -> np.ndarray:
    """Largest rectangle of set pixels of each mask bool [m, h, w] by trying every rectangle ->
    int32 [m, 4] (y0, x0, y1, x1) inclusive, (0, 0, -1, -1) when empty. Only its area is
    unique; tests compare areas and containment."""
    masks = np.asarray(masks, dtype=bool)
    out = np.tile(np.array([0, 0, -1, -1], np.int32), (len(masks), 1))
    for t, m in enumerate(masks):
        h, w = m.shape
        csum = np.zeros((h + 1, w + 1), np.int64)
        csum[1:, 1:] = m.cumsum(0).cumsum(1)
        best = 0
        for y0 in range(h):
            for y1 in range(y0, h):
                for x0 in range(w):
                    for x1 in range(x0, w):
                        area = (y1 - y0 + 1) * (x1 - x0 + 1)
                        if area > best and csum[y1 + 1, x1 + 1] - csum[y0, x1 + 1] - csum[y1 + 1, x0] + csum[y0, x0] == area:
                            best = area
                            out[t] = (y0, x0, y1, x1)
    return out


def ig_accumulate(grads, weights, delta, reduce_spatial: bool) -> np.ndarray:
    """The increment that the fused integrated-gradients kernel adds to ``out``, in float64.

    grads: [T, S, U, C, P], the gradients of T target outputs at S interpolation steps for U
    examples, C channels and P spatial positions (P = H * W, or 1). weights: [S], the quadrature
    weights of the steps (step size included). delta: [U, C, P], input minus baseline.

    Returns float64 [T, U, C] when ``reduce_spatial`` (sum over s and p of
    ``weights[s] * delta[u, c, p] * grads[t, s, u, c, p]``), else float64 [T, U, C, P]
    (``delta[u, c, p] * sum_s weights[s] * grads[t, s, u, c, p]``). Integrated gradients:
    Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365.
    """
    g = np.asarray(grads, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    d = np.asarray(delta, dtype=np.float64)
    if g.ndim != 5 or w.shape != (g.shape[1],) or d.shape != g.shape[2:]:
        raise ValueError(f"ig_accumulate: shapes grads {g.shape}, weights {w.shape}, delta {d.shape} do not agree")
    summed = np.einsum("s,tsucp->tucp", w, g) * d[None]
    return summed.sum(axis=3) if reduce_spatial else summed


__all__.append("ig_accumulate")
