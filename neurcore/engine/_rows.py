"""``combine_rows``: many binary row operations of two mask sets in one pass."""

from __future__ import annotations

import numpy as np

from ._bitmasks import BitMasks
from ._dispatch import OP_CODES, combine_blocks

__all__ = ["combine_rows"]


def combine_rows(ops: str | np.ndarray, left: BitMasks, ia: np.ndarray, right: BitMasks,
                 ib: np.ndarray) -> BitMasks:
    """Rows ``left[ia[t]] op_t right[ib[t]]`` -> BitMasks [len(ia)] (index -1: an empty row).

    ops: an op name ("and", "or", "and_not") for all rows, or uint8 codes per row
    (:data:`OP_CODES`: 0 and, 1 or, 2 and_not). ia, ib: int arrays [m] of rows of ``left``
    and ``right``, over one sample space and device. Dense rows go through the native combine
    kernel with whole rows as blocks, so no row is gathered or copied on the way; image-sparse
    rows through BitMasks ops, grouped by operator.
    """
    m = len(ia)
    codes = np.full(m, OP_CODES[ops], np.uint8) if isinstance(ops, str) else np.asarray(ops, np.uint8)
    shape = left.sample_shape
    if left.layout == right.layout == "dense":
        k = left.n_images * left.words_per_image
        left_rows, right_rows = left._words.reshape(left.n, k), right._words.reshape(right.n, k)
        words = combine_blocks(codes, left_rows, ia, right_rows, ib)
        return BitMasks(shape, words.reshape(m, left.n_images, left.words_per_image), validate=False)
    empty = BitMasks.zeros(1, shape, layout="sparse")
    empty = empty if left.device == "cpu" else empty.to(left.device)
    lx, rx = BitMasks.concat([left, empty]), BitMasks.concat([right, empty])
    ia = np.where(np.asarray(ia) >= 0, ia, left.n)
    ib = np.where(np.asarray(ib) >= 0, ib, right.n)
    parts, order = [], []
    for name, code in OP_CODES.items():
        sel = np.flatnonzero(codes == code)
        if len(sel):
            parts.append(lx[ia[sel]]._binary(name, rx[ib[sel]]))
            order.append(sel)
    if not parts:
        return BitMasks.zeros(0, shape, layout="sparse")
    return BitMasks.concat(parts)[np.argsort(np.concatenate(order), kind="stable")]
