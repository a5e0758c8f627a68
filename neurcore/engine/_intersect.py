"""``intersect_counts``: pairwise intersection counts of two mask sets, the engine's one fast
primitive, dispatched to the CPU, CUDA or Triton kernels by where the masks live."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ._bitmasks import BitMasks, check_same_space
from ._dispatch import block_rows, cuda_call, image_major_index, ptr
from .backends import _C

if TYPE_CHECKING:
    import torch

__all__ = ["intersect_counts"]


def _intersect_cpu(A, B):
    if A.layout == "dense" and B.layout == "dense":
        k = A.n_images * A.words_per_image
        return _C.intersect_dense_dense(A._words.reshape(A.n, k), B._words.reshape(B.n, k))
    if A.layout == "sparse" and B.layout == "dense":
        return _C.intersect_sparse_dense(A._indptr, A._images, A._words, B._words)
    if A.layout == "dense" and B.layout == "sparse":
        return np.ascontiguousarray(_intersect_cpu(B, A).T)
    return _C.intersect_sparse_sparse(
        A._indptr, A._images, A._words, B._indptr, B._images, B._words, A.n_images
    )


def _intersect_cuda(A, B):
    import torch

    dev = A._words.device
    out = torch.empty((A.n, B.n), dtype=torch.int64, device=dev)
    if A.n == 0 or B.n == 0:
        return out
    wpi, n_img = A.words_per_image, A.n_images
    if A.layout == "dense" and B.layout == "dense":
        fn, stream = cuda_call("intersect_dense_dense", A._words, B._words)
        fn(ptr(A._words), A.n, ptr(B._words), B.n, n_img * wpi, ptr(out), stream)
    elif A.layout == "sparse" and B.layout == "dense":
        fn, stream = cuda_call("intersect_sparse_dense", A._indptr, A._images, A._words, B._words)
        fn(ptr(A._indptr), ptr(A._images), ptr(A._words), A.n, A.nnz_blocks,
           ptr(B._words), B.n, n_img, wpi, ptr(out), stream)
    elif A.layout == "dense" and B.layout == "sparse":
        return _intersect_cuda(B, A).T.contiguous()
    else:
        a_row = block_rows(A._indptr)
        by_image, b_row, b_block = image_major_index(B._indptr, B._images, n_img)
        fn, stream = cuda_call("intersect_sparse_sparse", A._indptr, A._images, A._words, B._words)
        fn(ptr(A._indptr), ptr(A._images), ptr(A._words), A.n, A.nnz_blocks, ptr(a_row),
           ptr(B._words), B.n, ptr(by_image), ptr(b_row), ptr(b_block), wpi, ptr(out), stream)
    return out


def intersect_counts(A: BitMasks, B: BitMasks, *, backend: str | None = None) -> np.ndarray | torch.Tensor:
    """Pairwise intersection counts ``Z[i, j] = |A_i & B_j|`` -> int64 [A.n, B.n].

    A, B: ``BitMasks`` over the same sample space, in any pair of layouts
    (dense or image-sparse; only images present in both rows are visited).
    backend: None picks by device (``"cpu"`` for numpy-backed masks, ``"cuda"``
    for masks on a CUDA device); ``"triton"`` runs the Triton kernels on the
    masks' device (a CUDA device, or the CPU under ``TRITON_INTERPRET=1``).
    Returns a numpy array for CPU masks, a torch tensor on the device otherwise.
    """
    for name, x in (("A", A), ("B", B)):
        if not isinstance(x, BitMasks):
            raise TypeError(
                f"intersect_counts: {name} must be a BitMasks (see BitMasks.from_dense), "
                f"got {type(x).__name__}"
            )
    check_same_space("intersect_counts", A, B, ("A", "B"))
    if backend is None:
        backend = "cpu" if A.device == "cpu" else "cuda"
    if backend == "triton":
        from . import _triton

        return _triton.intersect_counts(A, B)
    if backend == "cpu":
        if A.device != "cpu":
            raise InputError(f"intersect_counts: backend 'cpu' needs CPU masks, got {A.device}")
        return _intersect_cpu(A, B)
    if backend == "cuda":
        if not A.device.startswith("cuda"):
            raise InputError("intersect_counts: backend 'cuda' needs masks on a CUDA device; use .to('cuda')")
        return _intersect_cuda(A, B)
    raise InputError(f"intersect_counts: backend must be None, 'cpu', 'cuda' or 'triton', got {backend!r}")
