"""One dispatch point per mask primitive: CPU (``neurcore.engine._C``), CUDA
(``neurcore.engine._cuda``) or Triton, chosen by where the data lives.

Arrays on the CPU are numpy (uint64 words, int64 indices); arrays on a CUDA
device are torch tensors (int64 holding the same bits). Nothing falls back
silently: data on a CUDA device without the CUDA module is an error.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from . import backends
from ._device import is_torch
from .backends import _C

#: Operator codes of the native elementwise kernels.
OP_CODES = {"and": 0, "or": 1, "and_not": 2}


# ---------------------------------------------------------------- CUDA helpers
def cuda_call(name: str, *tensors):
    """The CUDA module's function, run with the tensors' device current (a kernel launched while another
    device is current would run there), and that device's current stream."""
    import torch

    mod = backends.cuda_module()
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise InputError(f"{name}: all inputs must be on one device, got {dev} and {t.device}")
        if not t.is_contiguous():
            raise InputError(f"{name}: CUDA inputs must be contiguous")
        if t.dtype not in (torch.int64, torch.bool):
            raise TypeError(f"{name}: CUDA words and indices must be torch.int64, got {t.dtype}")
    fn = getattr(mod, name)

    def on_device(*args):
        with torch.cuda.device(dev):
            return fn(*args)

    return on_device, torch.cuda.current_stream(dev).cuda_stream


def ptr(t) -> int:
    return t.data_ptr()


# ------------------------------------------------------------------ primitives
def _per_row(name: str, words, dtype: str):
    """One value per row of words [m, k] from the kernel ``name`` -> [m] of ``dtype`` (torch's name)."""
    _check_words(name, words)
    if not is_torch(words):
        return getattr(_C, name)(words)
    import torch

    fn, stream = cuda_call(name, words)
    out = torch.empty(words.shape[0], dtype=getattr(torch, dtype), device=words.device)
    fn(ptr(words), words.shape[0], words.shape[1], ptr(out), stream)
    return out


def popcount_rows(words):
    """Set bits per row of words [m, k] -> int64 [m]."""
    return _per_row("popcount_rows", words, "int64")


def nonzero_blocks(words):
    """Whether each block of words [m, wpi] has a bit set -> bool [m]."""
    return _per_row("nonzero_blocks", words, "bool")


def binary_dense(op: str, a, b):
    """Elementwise a op b over words [na, k], [nb, k]; a single row broadcasts."""
    _check_binary(op, a, b)
    if not is_torch(a):
        return _C.binary_dense(OP_CODES[op], a, b)
    import torch

    fn, stream = cuda_call("binary_dense", a, b)
    n = max(a.shape[0], b.shape[0])
    out = torch.empty((n, a.shape[1]), dtype=torch.int64, device=a.device)
    fn(OP_CODES[op], ptr(a), a.shape[0], ptr(b), b.shape[0], a.shape[1], ptr(out), stream)
    return out


def not_blocks(words, pixels_per_image: int):
    """~words [m, wpi] per image block, padding bits zero."""
    _check_words("not_blocks", words)
    wpi = words.shape[1]
    if pixels_per_image < 1 or (pixels_per_image + 63) // 64 != wpi:
        raise InputError(f"not_blocks: pixels_per_image {pixels_per_image} does not fill {wpi} words per "
                         "image")
    if not is_torch(words):
        return _C.not_blocks(words, pixels_per_image)
    import torch

    fn, stream = cuda_call("not_blocks", words)
    out = torch.empty_like(words)
    fn(ptr(words), words.shape[0], words.shape[1], pixels_per_image, ptr(out), stream)
    return out


def combine_blocks(ops, a, ia, b, ib):
    """out[t] = A[ia[t]] op_t B[ib[t]] over blocks of words; -1 is a zero block.

    ops: one op name for every block, or a uint8 array of codes (0 and, 1 or,
    2 and_not), one per block. ia, ib: host int64 arrays. A "block" is any
    run of a.shape[1] words: an image block, or a whole dense row.
    """
    m = len(ia)
    if isinstance(ops, str):
        codes = np.full(m, OP_CODES[ops], dtype=np.uint8)
    else:
        codes = np.ascontiguousarray(ops, np.uint8)
    ia, ib = np.ascontiguousarray(ia, np.int64), np.ascontiguousarray(ib, np.int64)
    _check_combine(codes, a, ia, b, ib)
    if not is_torch(a):
        return _C.combine_blocks(codes, a, ia, b, ib)
    import torch

    ia_d, ib_d = (torch.from_numpy(x).to(a.device) for x in (ia, ib))
    ops_d = torch.from_numpy(codes).to(a.device)
    fn, stream = cuda_call("combine_blocks", a, b, ia_d, ib_d)
    out = torch.empty((m, a.shape[1]), dtype=torch.int64, device=a.device)
    fn(ptr(ops_d), ptr(a), ptr(ia_d), ptr(b), ptr(ib_d), m, a.shape[1], ptr(out), stream)
    return out


# Every primitive's arguments are checked here, once, before any backend: the CUDA bindings take plain
# pointers, so a shape the CPU binding would refuse must never reach them.
def _check_words(name: str, words) -> None:
    """words must be a 2-d array [rows, words per row]."""
    if len(words.shape) != 2:
        raise InputError(f"{name}: words must be [rows, words per row], got shape {tuple(words.shape)}")


def _check_binary(op: str, a, b) -> None:
    """binary_dense's arguments: a known op, [na, k] and [nb, k] with na == nb or one of them 1."""
    if op not in OP_CODES:
        raise InputError(f"binary_dense: op must be one of {sorted(OP_CODES)}, got {op!r}")
    _check_words("binary_dense", a)
    _check_words("binary_dense", b)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"binary_dense: A and B words per row differ: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise InputError(f"binary_dense: A and B row counts {a.shape[0]} and {b.shape[0]} must match, or one "
                         "must be 1")


def _check_combine(codes: np.ndarray, a, ia: np.ndarray, b, ib: np.ndarray) -> None:
    """The arguments of :func:`combine_blocks`, checked once before any backend: one op, ia and ib entry
    per block, op codes 0-2, block indices in [-1, rows), A and B blocks of the same width."""
    if ia.ndim != 1 or ib.shape != ia.shape or codes.shape != ia.shape:
        raise InputError(f"combine_blocks: ops, ia and ib must be [m], got {codes.shape}, {ia.shape} and "
                         f"{ib.shape}")
    if len(a.shape) != 2 or len(b.shape) != 2 or b.shape[1] != a.shape[1]:
        raise InputError(f"combine_blocks: A and B words must be [rows, words per block] of one width, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if codes.size and codes.max() > 2:
        raise InputError("ops: codes must be 0 (and), 1 (or) or 2 (and_not)")
    for name, index, rows in (("ia", ia, a.shape[0]), ("ib", ib, b.shape[0])):
        bad = (index < -1) | (index >= rows)
        if bad.any():
            raise InputError(f"{name}: block index {int(index[bad][0])} outside [-1, {rows})")


# ------------------------------------------------------------ sparse helpers
def block_rows(indptr):
    """The row of each block of an image-sparse BitMasks: int64 [nnz], from its indptr [n + 1]; a torch
    tensor stays on its device."""
    if is_torch(indptr):
        import torch

        counts = torch.diff(indptr)
        return torch.repeat_interleave(torch.arange(len(counts), device=indptr.device), counts)
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def image_major_index(indptr, images, n_images: int):
    """B's blocks ordered by image: (by_image [n_images + 1], row [nnz], block [nnz]), all int64. Torch
    tensors are indexed on their device (no round trip through the host, which dominated the GPU's
    sparse x sparse counts); numpy arrays on the host."""
    rows = block_rows(indptr)
    if is_torch(images):
        import torch

        order = torch.argsort(images, stable=True)
        by_image = torch.zeros(n_images + 1, dtype=torch.int64, device=images.device)
        by_image[1:] = torch.cumsum(torch.bincount(images, minlength=n_images), 0)
        return by_image, rows[order], order
    order = np.argsort(images, kind="stable").astype(np.int64)
    by_image = np.zeros(n_images + 1, dtype=np.int64)
    np.cumsum(np.bincount(images, minlength=n_images), out=by_image[1:])
    return by_image, rows[order], order


def largest_rectangles(masks: np.ndarray) -> np.ndarray:
    """Largest axis-aligned rectangle of set pixels of each mask bool [m, h, w] (host) -> int32 [m, 4]
    ``(y0, x0, y1, x1)`` inclusive, ``(0, 0, -1, -1)`` when empty (CPU kernel)."""
    return _C.largest_rectangles(np.ascontiguousarray(masks))
