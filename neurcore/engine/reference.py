"""Plain numpy references for every kernel of the mask engine.

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
    "largest_rectangles",
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


def combine_blocks(ops: str | np.ndarray, a_words: np.ndarray, ia: np.ndarray, b_words: np.ndarray,
                   ib: np.ndarray) -> np.ndarray:
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


def sparse_to_dense_words(indptr: np.ndarray, images: np.ndarray, words: np.ndarray,
                          n_images: int) -> np.ndarray:
    """An image-sparse row set (CSR over images) -> dense words uint64 [n, n_images, wpi]."""
    n = len(indptr) - 1
    wpi = words.shape[1]
    out = np.zeros((n, n_images, wpi), dtype=np.uint64)
    for r in range(n):
        for q in range(indptr[r], indptr[r + 1]):
            out[r, images[q]] |= words[q]
    return out


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
                        filled = csum[y1 + 1, x1 + 1] - csum[y0, x1 + 1] - csum[y1 + 1, x0] + csum[y0, x0]
                        if area > best and filled == area:
                            best = area
                            out[t] = (y0, x0, y1, x1)
    return out
