"""One dispatch point per mask primitive: CPU (``neurcore._C``), CUDA
(``neurcore._cuda``) or Triton, chosen by where the data lives.

Arrays on the CPU are numpy (uint64 words, int64 indices); arrays on a CUDA
device are torch tensors (int64 holding the same bits). Nothing falls back
silently: data on a CUDA device without the CUDA module is an error.
"""

from __future__ import annotations

import numpy as np

from . import _backends
from ._backends import _C

OPS = {"and": 0, "or": 1, "and_not": 2}


def is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def device_of(x) -> str:
    return str(x.device) if is_torch(x) else "cpu"


def to_host(x) -> np.ndarray:
    """x itself if numpy, else a host copy as numpy (used for small index arrays)."""
    return x.detach().cpu().numpy() if is_torch(x) else x


# ---------------------------------------------------------------- CUDA helpers
def _cuda_call(name: str, *tensors):
    """The CUDA module's function and the current stream for these tensors."""
    import torch

    mod = _backends.cuda_module()
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"{name}: all inputs must be on one device, got {dev} and {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: CUDA inputs must be contiguous")
        if t.dtype not in (torch.int64, torch.bool):
            raise TypeError(f"{name}: CUDA words and indices must be torch.int64, got {t.dtype}")
    return getattr(mod, name), torch.cuda.current_stream(dev).cuda_stream


def _ptr(t) -> int:
    return t.data_ptr()


def check_pair(what: str, a, b, names: tuple[str, str]) -> None:
    """Two BitMasks must share one sample space and one device; the error names both."""
    if a.sample_shape != b.sample_shape:
        raise ValueError(f"{what}: operands must share one sample space; {names[0]} is over {a.sample_shape}, "
                         f"{names[1]} over {b.sample_shape}")
    if a.device != b.device:
        raise ValueError(f"{what}: {names[0]} is on {a.device} and {names[1]} on {b.device}; move one with .to()")


# ------------------------------------------------------------------ primitives
def popcount_rows(words):
    """Set bits per row of words [m, k] -> int64 [m]."""
    if not is_torch(words):
        return _C.popcount_rows(words)
    import torch

    fn, stream = _cuda_call("popcount_rows", words)
    out = torch.empty(words.shape[0], dtype=torch.int64, device=words.device)
    fn(_ptr(words), words.shape[0], words.shape[1], _ptr(out), stream)
    return out


def nonzero_blocks(words):
    """Whether each block of words [m, wpi] has a bit set -> bool [m]."""
    if not is_torch(words):
        return _C.nonzero_blocks(words)
    import torch

    fn, stream = _cuda_call("nonzero_blocks", words)
    out = torch.empty(words.shape[0], dtype=torch.bool, device=words.device)
    fn(_ptr(words), words.shape[0], words.shape[1], _ptr(out), stream)
    return out


def binary_dense(op: str, a, b):
    """Elementwise a op b over words [na, k], [nb, k]; a single row broadcasts."""
    if not is_torch(a):
        return _C.binary_dense(OPS[op], a, b)
    import torch

    fn, stream = _cuda_call("binary_dense", a, b)
    n = max(a.shape[0], b.shape[0])
    out = torch.empty((n, a.shape[1]), dtype=torch.int64, device=a.device)
    fn(OPS[op], _ptr(a), a.shape[0], _ptr(b), b.shape[0], a.shape[1], _ptr(out), stream)
    return out


def not_blocks(words, pixels_per_image: int):
    """~words [m, wpi] per image block, padding bits zero."""
    if not is_torch(words):
        return _C.not_blocks(words, pixels_per_image)
    import torch

    fn, stream = _cuda_call("not_blocks", words)
    out = torch.empty_like(words)
    fn(_ptr(words), words.shape[0], words.shape[1], pixels_per_image, _ptr(out), stream)
    return out


def combine_blocks(ops, a, ia, b, ib):
    """out[t] = A[ia[t]] op_t B[ib[t]] over blocks of words; -1 is a zero block.

    ops: one op name for every block, or a uint8 array of codes (0 and, 1 or,
    2 and_not), one per block. ia, ib: host int64 arrays. A "block" is any
    run of a.shape[1] words: an image block, or a whole dense row.
    """
    m = len(ia)
    codes = np.full(m, OPS[ops], dtype=np.uint8) if isinstance(ops, str) else np.ascontiguousarray(ops, np.uint8)
    if not is_torch(a):
        return _C.combine_blocks(codes, a, np.ascontiguousarray(ia, np.int64), b, np.ascontiguousarray(ib, np.int64))
    import torch

    if codes.size and codes.max() > 2:
        raise ValueError("ops: codes must be 0 (and), 1 (or) or 2 (and_not)")
    ia_d, ib_d = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(a.device) for x in (ia, ib))
    ops_d = torch.from_numpy(codes).to(a.device)
    fn, stream = _cuda_call("combine_blocks", a, b, ia_d, ib_d)
    out = torch.empty((m, a.shape[1]), dtype=torch.int64, device=a.device)
    fn(_ptr(ops_d), _ptr(a), _ptr(ia_d), _ptr(b), _ptr(ib_d), m, a.shape[1], _ptr(out), stream)
    return out


# ------------------------------------------------------------ intersect_counts
def image_major_index(indptr: np.ndarray, images: np.ndarray, n_images: int):
    """B's blocks ordered by image: (by_image [n_images + 1], row [nnz], block [nnz])."""
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    order = np.argsort(images, kind="stable").astype(np.int64)
    by_image = np.zeros(n_images + 1, dtype=np.int64)
    np.cumsum(np.bincount(images, minlength=n_images), out=by_image[1:])
    return by_image, rows[order], order


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
        fn, stream = _cuda_call("intersect_dense_dense", A._words, B._words)
        fn(_ptr(A._words), A.n, _ptr(B._words), B.n, n_img * wpi, _ptr(out), stream)
    elif A.layout == "sparse" and B.layout == "dense":
        fn, stream = _cuda_call("intersect_sparse_dense", A._indptr, A._images, A._words, B._words)
        fn(_ptr(A._indptr), _ptr(A._images), _ptr(A._words), A.n, A.nnz_blocks,
           _ptr(B._words), B.n, n_img, wpi, _ptr(out), stream)
    elif A.layout == "dense" and B.layout == "sparse":
        return _intersect_cuda(B, A).T.contiguous()
    else:
        indptr_a = to_host(A._indptr)
        a_row = np.repeat(np.arange(A.n, dtype=np.int64), np.diff(indptr_a))
        by_image, b_row, b_block = image_major_index(to_host(B._indptr), to_host(B._images), n_img)
        a_row, by_image, b_row, b_block = (
            torch.from_numpy(x).to(dev) for x in (a_row, by_image, b_row, b_block)
        )
        fn, stream = _cuda_call("intersect_sparse_sparse", A._indptr, A._images, A._words, B._words)
        fn(_ptr(A._indptr), _ptr(A._images), _ptr(A._words), A.n, A.nnz_blocks, _ptr(a_row),
           _ptr(B._words), B.n, _ptr(by_image), _ptr(b_row), _ptr(b_block), wpi, _ptr(out), stream)
    return out


def intersect_counts(A, B, *, backend: str | None = None):
    """Pairwise intersection counts ``Z[i, j] = |A_i & B_j|`` -> int64 [A.n, B.n].

    A, B: ``BitMasks`` over the same sample space, in any pair of layouts
    (dense or image-sparse; only images present in both rows are visited).
    backend: None picks by device (``"cpu"`` for numpy-backed masks, ``"cuda"``
    for masks on a CUDA device); ``"triton"`` runs the Triton kernels on the
    masks' device (a CUDA device, or the CPU under ``TRITON_INTERPRET=1``).
    Returns a numpy array for CPU masks, a torch tensor on the device otherwise.
    """
    from ._bitmasks import BitMasks

    for name, x in (("A", A), ("B", B)):
        if not isinstance(x, BitMasks):
            raise TypeError(
                f"intersect_counts: {name} must be a BitMasks (see BitMasks.from_dense), "
                f"got {type(x).__name__}"
            )
    check_pair("intersect_counts", A, B, ("A", "B"))
    if backend is None:
        backend = "cpu" if A.device == "cpu" else "cuda"
    if backend == "triton":
        from . import _triton

        return _triton.intersect_counts(A, B)
    if backend == "cpu":
        if A.device != "cpu":
            raise ValueError(f"intersect_counts: backend 'cpu' needs CPU masks, got {A.device}")
        return _intersect_cpu(A, B)
    if backend == "cuda":
        if not A.device.startswith("cuda"):
            raise ValueError("intersect_counts: backend 'cuda' needs masks on a CUDA device; use .to('cuda')")
        return _intersect_cuda(A, B)
    raise ValueError(f"intersect_counts: backend must be None, 'cpu', 'cuda' or 'triton', got {backend!r}")
