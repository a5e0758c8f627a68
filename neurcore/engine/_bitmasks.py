"""``BitMasks``: n binary masks over one sample space, bit-packed.

The sample space is ``[n_images, *image_shape]``; its first axis is the image
axis. Each image's ``P = prod(image_shape)`` pixels are packed into
``wpi = ceil(P / 64)`` uint64 words (bit ``j`` of word ``w`` is pixel
``64 w + j`` in C order; padding bits are always zero). Two layouts:

- dense: ``words`` uint64 ``[n, n_images, wpi]``, every image's words stored.
- image-sparse: a CSR over images. ``indptr`` int64 ``[n + 1]``, ``images``
  int64 ``[nnz]`` (strictly increasing within a row), ``words`` uint64
  ``[nnz, wpi]``; only images where a row has a set bit are stored.

Probe concepts touch a few percent of the images, so the image-sparse layout is what makes a
Broden-scale concept set (1,100 concepts x 22,210 images x 112 x 112, ~38 GB as dense bits) fit in
memory. ``layout="auto"`` picks image-sparse when few enough of the
(row, image) blocks are non-empty (see :func:`sparse_threshold`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .._io import create_npy
from ..errors import BackendUnavailable, InputError
from . import _dispatch, backends
from ._device import device_of, is_torch, to_host

if TYPE_CHECKING:
    import torch

__all__ = ["BitMasks", "BitMasksBuilder", "SPARSE_OCCUPANCY", "sparse_threshold", "unpack_words",
           "check_same_space"]

#: ``layout="auto"`` stores masks image-sparse when at most this fraction of
#: their (row, image) blocks is non-empty, for blocks of 32 words or more.
SPARSE_OCCUPANCY = 0.4


def sparse_threshold(words_per_image: int) -> float:
    """Occupancy up to which ``layout="auto"`` stores masks image-sparse.

    Image-sparse kernels pay a fixed cost per block, so small images need
    lower occupancy to win. Measured with intersect_counts on AVX-512 (20 x 300
    rows): sparse beats dense up to ~0.5 occupancy at 49 and 196 words per
    image (56 x 56, 112 x 112) but only up to ~0.02 at 1 word (8 x 8).
    """
    return SPARSE_OCCUPANCY * min(1.0, words_per_image / 32)

_FORMAT = "neurcore.BitMasks"
_FORMAT_VERSION = 1


def _words_per_image(pixels: int) -> int:
    return (pixels + 63) // 64


def _pack(masks2d: np.ndarray) -> np.ndarray:
    """bool [m, P] -> uint64 [m, wpi] (little-endian bit order, zero padding)."""
    m, p = masks2d.shape
    wpi = _words_per_image(p)
    packed = np.packbits(masks2d, axis=1, bitorder="little")
    if packed.shape[1] != wpi * 8:
        padded = np.zeros((m, wpi * 8), dtype=np.uint8)
        padded[:, : packed.shape[1]] = packed
        packed = padded
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_words(words2d: np.ndarray, pixels: int) -> np.ndarray:
    """Packed words uint64 [m, wpi] (host) -> bool [m, pixels]: one mask per row of words."""
    as_bytes = np.ascontiguousarray(words2d).astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, count=pixels, bitorder="little").view(bool)


def _row_of_block(indptr) -> np.ndarray:
    """The row of each block, on the host: int64 [nnz]."""
    return _dispatch.block_rows(to_host(indptr))


def _indptr_from_rows(rows: np.ndarray, n: int) -> np.ndarray:
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr


def _as_row_index(idx, n: int) -> np.ndarray | slice:
    if isinstance(idx, (int, np.integer)):
        i = int(idx)
        if not -n <= i < n:
            raise IndexError(f"BitMasks: row {i} out of range for {n} rows")
        return np.array([i % n], dtype=np.int64)
    if isinstance(idx, slice):
        return idx
    arr = np.asarray(idx)
    if arr.ndim == 1 and arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"BitMasks: boolean row index must have shape ({n},), got {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise IndexError(f"BitMasks: rows are indexed by int, slice, 1-d int or bool array; got {idx!r}")
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"BitMasks: row index out of range for {n} rows")
    return (arr % n).astype(np.int64)


def check_same_space(what: str, a: BitMasks, b: BitMasks, names: tuple[str, str]) -> None:
    """Two BitMasks must share one sample space and one device; the error (an
    :class:`~neurcore.errors.InputError` saying ``what`` failed) names both by ``names``."""
    if a.sample_shape != b.sample_shape:
        raise InputError(f"{what}: operands must share one sample space; {names[0]} is over "
                         f"{a.sample_shape}, {names[1]} over {b.sample_shape}")
    if a.device != b.device:
        raise InputError(f"{what}: {names[0]} is on {a.device} and {names[1]} on {b.device}; "
                         "move one with .to()")


class BitMasks:
    """n binary masks over one sample space ``[n_images, *image_shape]``, bit-packed.

    Build with :meth:`from_dense`, :class:`BitMasksBuilder` (streaming) or
    :meth:`load`; read back with :meth:`to_dense`. Rows index and slice like
    a sequence (``masks[3]`` is a one-row ``BitMasks``); ``&``, ``|``,
    :meth:`and_not` and ``~`` are elementwise, a one-row operand broadcasts.
    Pairwise counts come from :func:`neurcore.intersect_counts`.
    """

    __slots__ = ("_sample_shape", "_layout", "_words", "_indptr", "_images")

    def __init__(self, sample_shape: Sequence[int], words: np.ndarray | torch.Tensor,
                 indptr: np.ndarray | torch.Tensor | None = None,
                 images: np.ndarray | torch.Tensor | None = None, *, validate: bool = True):
        """Low-level constructor from layout arrays (dense when indptr is None).

        Dense: ``words`` uint64 [n, n_images, wpi]. Image-sparse: ``indptr``
        int64 [n + 1], ``images`` int64 [nnz], ``words`` uint64 [nnz, wpi].
        Arrays are used as given (numpy, possibly memory-mapped, or torch
        int64 tensors on a CUDA device), never copied.
        """
        self._sample_shape = tuple(int(s) for s in sample_shape)
        self._layout = "dense" if indptr is None else "sparse"
        self._words, self._indptr, self._images = words, indptr, images
        if validate:
            self._validate()

    # ------------------------------------------------------------ validation
    def _validate(self) -> None:
        if len(self._sample_shape) < 1 or any(s < 0 for s in self._sample_shape):
            raise InputError(
                f"BitMasks: sample_shape must be [n_images, *image_shape], got {self._sample_shape}")
        if self.pixels_per_image < 1:
            raise InputError(
                f"BitMasks: images must have at least one pixel, got image shape {self.image_shape}")
        wpi, n_img = self.words_per_image, self.n_images
        w = self._words
        if is_torch(w):
            import torch

            for name, arr in (("words", w), ("indptr", self._indptr), ("images", self._images)):
                if arr is None:
                    continue
                if arr.dtype != torch.int64:
                    raise TypeError(f"BitMasks: {name} on {arr.device} must be torch.int64, got {arr.dtype}")
                if not arr.is_contiguous():
                    raise InputError(f"BitMasks: {name} must be contiguous")
        else:
            for name, arr, dt in (
                ("words", w, np.uint64),
                ("indptr", self._indptr, np.int64),
                ("images", self._images, np.int64),
            ):
                if arr is None:
                    continue
                if not isinstance(arr, np.ndarray):
                    raise TypeError(f"BitMasks: {name} must be a numpy array, got {type(arr).__name__}")
                if arr.dtype != dt:
                    raise TypeError(f"BitMasks: {name} must have dtype {np.dtype(dt)}, got {arr.dtype}")
                if not arr.flags.c_contiguous:
                    raise InputError(
                        f"BitMasks: {name} must be C-contiguous (shape {arr.shape}); "
                        "pass numpy.ascontiguousarray(...)"
                    )
        if self._layout == "dense":
            if w.ndim != 3 or tuple(w.shape[1:]) != (n_img, wpi):
                raise InputError(
                    f"BitMasks: dense words must have shape [n, {n_img}, {wpi}] for sample shape "
                    f"{self._sample_shape}, got {tuple(w.shape)}"
                )
            return
        indptr, images = to_host(self._indptr), to_host(self._images)
        if indptr.ndim != 1 or len(indptr) < 1:
            raise InputError(
                f"BitMasks: indptr must be 1-d with n + 1 >= 1 entries, got shape {indptr.shape}")
        nnz = int(indptr[-1])
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise InputError("BitMasks: indptr must start at 0 and be non-decreasing")
        if images.shape != (nnz,):
            raise InputError(f"BitMasks: images must have shape ({nnz},) = (indptr[-1],), got {images.shape}")
        if w.ndim != 2 or tuple(w.shape) != (nnz, wpi):
            raise InputError(f"BitMasks: sparse words must have shape ({nnz}, {wpi}), got {tuple(w.shape)}")
        if nnz:
            if images.min() < 0 or images.max() >= n_img:
                raise InputError(f"BitMasks: images must lie in [0, {n_img})")
            keys = _row_of_block(indptr) * max(n_img, 1) + images
            if np.any(np.diff(keys) <= 0):
                raise InputError("BitMasks: images must be strictly increasing within each row")

    # ---------------------------------------------------------- constructors
    @classmethod
    def from_dense(cls, masks: np.ndarray, layout: str = "auto") -> "BitMasks":
        """Pack a bool array ``[n, n_images, *image_shape]``; layout "auto", "dense" or "sparse"."""
        masks = np.asarray(masks)
        if masks.dtype != bool:
            raise TypeError(f"BitMasks.from_dense: masks must be a bool array, got dtype {masks.dtype}")
        if masks.ndim < 2:
            raise InputError(
                f"BitMasks.from_dense: masks must have shape [n, n_images, *image_shape], got {masks.shape}"
            )
        n, sample_shape = masks.shape[0], masks.shape[1:]
        pixels = math.prod(sample_shape[1:])
        if pixels < 1:
            raise InputError(
                f"BitMasks.from_dense: images must have at least one pixel, got shape {masks.shape}")
        words = _pack(masks.reshape(n * sample_shape[0], pixels))
        dense = cls(sample_shape, words.reshape(n, sample_shape[0], _words_per_image(pixels)), validate=False)
        return dense.as_layout(layout)

    @classmethod
    def zeros(cls, n: int, sample_shape: Sequence[int], layout: str = "sparse") -> "BitMasks":
        """n empty masks over ``sample_shape`` = (n_images, *image_shape), in ``layout``."""
        sample_shape = tuple(sample_shape)
        wpi = _words_per_image(math.prod(sample_shape[1:]))
        if layout == "dense":
            return cls(sample_shape, np.zeros((n, sample_shape[0], wpi), np.uint64))
        return cls(
            sample_shape,
            np.zeros((0, wpi), np.uint64),
            np.zeros(n + 1, np.int64),
            np.zeros(0, np.int64),
        )

    # ------------------------------------------------------------ properties
    @property
    def layout(self) -> str:
        """"dense" or "sparse" (image-sparse)."""
        return self._layout

    @property
    def n(self) -> int:
        """Number of masks (rows)."""
        return int(self._words.shape[0]) if self._layout == "dense" else int(self._indptr.shape[0]) - 1

    def __len__(self) -> int:
        return self.n

    @property
    def sample_shape(self) -> tuple:
        """``(n_images, *image_shape)``."""
        return self._sample_shape

    @property
    def shape(self) -> tuple:
        """``(n, n_images, *image_shape)``: the shape of :meth:`to_dense`."""
        return (self.n, *self._sample_shape)

    @property
    def n_images(self) -> int:
        """Images in the sample space (its first axis)."""
        return self._sample_shape[0]

    @property
    def image_shape(self) -> tuple:
        """Shape of one image's mask, e.g. ``(h, w)``."""
        return self._sample_shape[1:]

    @property
    def pixels_per_image(self) -> int:
        """``prod(image_shape)``: pixels (bits) of one image's mask."""
        return math.prod(self._sample_shape[1:])

    @property
    def words_per_image(self) -> int:
        """uint64 words holding one image's mask: ``ceil(pixels_per_image / 64)``."""
        return _words_per_image(self.pixels_per_image)

    @property
    def nnz_blocks(self) -> int:
        """Stored image blocks: n * n_images when dense."""
        return self.n * self.n_images if self._layout == "dense" else int(self._images.shape[0])

    @property
    def device(self) -> str:
        """"cpu", or the CUDA device the words live on."""
        return device_of(self._words)

    @property
    def nbytes(self) -> int:
        """Bytes held by the layout arrays."""
        arrays = [self._words, self._indptr, self._images]
        return int(sum(a.numel() * a.element_size() if is_torch(a) else a.nbytes
                       for a in arrays if a is not None))

    def layout_arrays(self) -> dict:
        """The arrays behind the layout (views, not copies): words, and indptr/images if sparse."""
        out = {"words": self._words}
        if self._layout == "sparse":
            out.update(indptr=self._indptr, images=self._images)
        return out

    def occupancy(self) -> float:
        """Fraction of (row, image) blocks with a set bit."""
        total = self.n * self.n_images
        if total == 0:
            return 0.0
        if self._layout == "sparse":
            nz = _dispatch.nonzero_blocks(self._words) if self.nnz_blocks else np.zeros(0, bool)
            return float(int(nz.sum())) / total
        nz = _dispatch.nonzero_blocks(self._words.reshape(total, self.words_per_image))
        return float(int(nz.sum())) / total

    def __repr__(self) -> str:
        return (
            f"BitMasks(n={self.n}, sample_shape={self._sample_shape}, layout={self._layout!r}, "
            f"nnz_blocks={self.nnz_blocks}, device={self.device!r})"
        )

    # ------------------------------------------------------------ conversion
    def as_layout(self, layout: str) -> "BitMasks":
        """The same masks in layout "dense", "sparse" or "auto" (by occupancy); self if unchanged."""
        if layout == "auto":
            layout = "sparse" if self.occupancy() <= sparse_threshold(self.words_per_image) else "dense"
        if layout not in ("dense", "sparse"):
            raise InputError(f"layout must be 'auto', 'dense' or 'sparse', got {layout!r}")
        if layout == self._layout:
            return self
        if layout == "sparse":
            return self._dense_to_sparse()
        return self._sparse_to_dense()

    def _dense_to_sparse(self) -> "BitMasks":
        n, n_img, wpi = self.n, self.n_images, self.words_per_image
        flat = self._words.reshape(n * n_img, wpi)
        keep = to_host(_dispatch.nonzero_blocks(flat)) if n * n_img else np.zeros(0, bool)
        flat_idx = np.flatnonzero(keep).astype(np.int64)
        rows, images = flat_idx // max(n_img, 1), flat_idx % max(n_img, 1)
        indptr = _indptr_from_rows(rows, n)
        words = flat[self._index_like(flat_idx)]
        return BitMasks(self._sample_shape, words, *self._like((indptr, images)), validate=False)

    def _sparse_to_dense(self) -> "BitMasks":
        n, n_img, wpi = self.n, self.n_images, self.words_per_image
        dense = self._zeros_like((n * n_img, wpi))
        rows = _row_of_block(self._indptr)
        flat_idx = rows * n_img + to_host(self._images)
        if len(flat_idx):
            dense[self._index_like(flat_idx)] = self._words
        return BitMasks(self._sample_shape, dense.reshape(n, n_img, wpi), validate=False)

    def to_dense(self) -> np.ndarray:
        """The masks as a numpy bool array ``[n, n_images, *image_shape]`` (copied to the host)."""
        host = self.to("cpu").as_layout("dense")
        n, n_img, pixels = self.n, self.n_images, self.pixels_per_image
        bits = unpack_words(host._words.reshape(n * n_img, self.words_per_image), pixels)
        return bits.reshape(self.shape)

    def on_image(self, i: int) -> np.ndarray:
        """Every row's mask on image ``i``: bool ``[n, *image_shape]`` (copied to the host)."""
        if not -self.n_images <= i < self.n_images:
            raise IndexError(f"BitMasks.on_image: image {i} out of range for {self.n_images} images")
        i %= self.n_images
        host = self.to("cpu")
        out = np.zeros((self.n, self.pixels_per_image), bool)
        if host.layout == "dense":
            out[:] = unpack_words(host._words[:, i], self.pixels_per_image)
        else:
            hit = np.flatnonzero(host._images == i)
            if len(hit):
                out[_row_of_block(host._indptr)[hit]] = unpack_words(host._words[hit], self.pixels_per_image)
        return out.reshape(self.n, *self.image_shape)

    def to(self, device: str | torch.device) -> "BitMasks":
        """A copy on ``device`` ("cpu", "cuda", "cuda:1", or a torch.device); self if already there.
        :class:`~neurcore.errors.BackendUnavailable` when CUDA cannot be used here."""
        device = str(device)
        if device.startswith("cuda"):
            device = _usable_cuda_device(device)
        if device == self.device:
            return self
        arrays = [self._words, self._indptr, self._images]
        if device == "cpu":
            moved = [None if a is None else a.detach().cpu().numpy() for a in arrays]
            moved[0] = moved[0].view(np.uint64)
        else:
            import torch

            if not device.startswith("cuda"):
                raise InputError(f"BitMasks.to: device must be 'cpu' or a CUDA device, got {device!r}")
            hosts = [self.to("cpu")._words.view(np.int64)] + arrays[1:]
            moved = [None if a is None else
                     (a if is_torch(a) else torch.from_numpy(np.ascontiguousarray(a))).to(device)
                     for a in hosts]
        return BitMasks(self._sample_shape, *moved, validate=False)

    # ------------------------------------------------ array-namespace helpers
    def _like(self, arrays):
        """Host index arrays moved to this mask's device (as torch) if it is not the CPU."""
        if not is_torch(self._words):
            return arrays
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(self._words.device) for a in arrays)

    def _index_like(self, idx: np.ndarray):
        return self._like((idx,))[0] if is_torch(self._words) else idx

    def _zeros_like(self, shape):
        if is_torch(self._words):
            import torch

            return torch.zeros(shape, dtype=torch.int64, device=self._words.device)
        return np.zeros(shape, dtype=np.uint64)

    def _new_sparse(self, keys: np.ndarray, words, n: int) -> "BitMasks":
        """Sparse masks from sorted block keys (row * n_images + image) and their words."""
        n_img = max(self.n_images, 1)
        rows, images = keys // n_img, keys % n_img
        return BitMasks(self._sample_shape, words, *self._like((_indptr_from_rows(rows, n), images)),
                        validate=False)

    # -------------------------------------------------------------- counting
    def count(self, per_image: bool = False) -> np.ndarray | torch.Tensor:
        """Set bits (pixels) per row -> int64 [n]; with ``per_image``, per row and image -> int64
        [n, n_images]. numpy for CPU masks, a torch tensor on the masks' device otherwise."""
        n, n_img, wpi = self.n, self.n_images, self.words_per_image
        if self._layout == "dense":
            if per_image:
                return _dispatch.popcount_rows(self._words.reshape(n * n_img, wpi)).reshape(n, n_img)
            return _dispatch.popcount_rows(self._words.reshape(n, n_img * wpi))
        blocks = _dispatch.popcount_rows(self._words)
        if per_image:
            if is_torch(blocks):
                import torch

                out = torch.zeros(n * n_img, dtype=torch.int64, device=blocks.device)
            else:
                out = np.zeros(n * n_img, dtype=np.int64)
            if len(blocks):
                flat = _row_of_block(self._indptr) * n_img + to_host(self._images)
                out[self._index_like(flat)] = blocks
            return out.reshape(n, n_img)
        indptr = self._indptr
        if is_torch(blocks):
            import torch

            csum = torch.cat([blocks.new_zeros(1), torch.cumsum(blocks, 0)])
            return csum[indptr[1:]] - csum[indptr[:-1]]
        csum = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
        return csum[indptr[1:]] - csum[indptr[:-1]]

    # -------------------------------------------------------------- indexing
    def __getitem__(self, idx) -> "BitMasks":
        sel = _as_row_index(idx, self.n)
        if self._layout == "dense":
            words = self._words[sel] if isinstance(sel, slice) else self._words[self._index_like(sel)]
            if isinstance(sel, slice) and not is_torch(words) and not words.flags.c_contiguous:
                words = np.ascontiguousarray(words)
            elif is_torch(words):
                words = words.contiguous()
            return BitMasks(self._sample_shape, words, validate=False)
        indptr = to_host(self._indptr)
        if isinstance(sel, slice):
            start, stop, step = sel.indices(self.n)
            if step == 1:  # contiguous rows: views, also of memory-mapped masks
                stop = max(stop, start)
                p0, p1 = int(indptr[start]), int(indptr[stop])
                new_indptr = indptr[start : stop + 1] - p0
                return BitMasks(self._sample_shape, self._words[p0:p1],
                                *self._like((new_indptr,)), self._images[p0:p1], validate=False)
            sel = np.arange(start, stop, step, dtype=np.int64)
        counts = np.diff(indptr)[sel]
        new_indptr = np.zeros(len(sel) + 1, dtype=np.int64)
        np.cumsum(counts, out=new_indptr[1:])
        blocks = np.repeat(indptr[sel] - new_indptr[:-1], counts) + np.arange(new_indptr[-1], dtype=np.int64)
        b = self._index_like(blocks)
        return BitMasks(self._sample_shape, self._words[b], *self._like((new_indptr,)), self._images[b],
                        validate=False)

    @staticmethod
    def concat(parts: Sequence["BitMasks"]) -> "BitMasks":
        """Stack the rows of several BitMasks over one sample space (layout kept when all agree)."""
        parts = list(parts)
        if not parts:
            raise InputError("BitMasks.concat: need at least one BitMasks")
        first = parts[0]
        for k, p in enumerate(parts):
            if not isinstance(p, BitMasks):
                raise TypeError(f"BitMasks.concat: part {k} is a {type(p).__name__}, not a BitMasks")
            if p.sample_shape != first.sample_shape:
                raise InputError(
                    f"BitMasks.concat: part {k} is over {p.sample_shape}, part 0 over {first.sample_shape}"
                )
            if p.device != first.device:
                raise InputError(f"BitMasks.concat: part {k} is on {p.device}, part 0 on {first.device}")
        cat = _concat_fn(first._words)
        layout = first.layout if all(p.layout == first.layout for p in parts) else "sparse"
        parts = [p.as_layout(layout) for p in parts]
        if layout == "dense":
            return BitMasks(first.sample_shape, cat([p._words for p in parts]), validate=False)
        offsets = np.cumsum([0] + [p.nnz_blocks for p in parts])
        indptr = np.concatenate(
            [[0]] + [to_host(p._indptr)[1:] + off for p, off in zip(parts, offsets)]
        ).astype(np.int64)
        return BitMasks(first.sample_shape, cat([p._words for p in parts]), *first._like((indptr,)),
                        cat([p._images for p in parts]), validate=False)

    # ----------------------------------------------------------- elementwise
    def _binary(self, op: str, other: "BitMasks") -> "BitMasks":
        if not isinstance(other, BitMasks):
            return NotImplemented
        check_same_space(f"BitMasks {op}", self, other, ("left", "right"))
        if self.n != other.n and 1 not in (self.n, other.n):
            raise InputError(f"BitMasks {op}: row counts {self.n} and {other.n} must match, or one must be 1")
        n = max(self.n, other.n)
        if self.n == 0 or other.n == 0:
            n = 0
        # Result layout: AND and AND NOT never grow beyond a sparse operand, so
        # they stay image-sparse (never densify a large sparse set); OR does.
        if op == "or":
            layout = "sparse" if self.layout == other.layout == "sparse" else "dense"
        else:
            layout = "sparse" if "sparse" in (self.layout, other.layout) else "dense"
        a, b = self.as_layout(layout), other.as_layout(layout)
        if layout == "dense":
            k = self.n_images * self.words_per_image
            if n == 0:
                return BitMasks(self.sample_shape, self._zeros_like((0, self.n_images, self.words_per_image)))
            words = _dispatch.binary_dense(op, a._words.reshape(a.n, k), b._words.reshape(b.n, k))
            return BitMasks(self.sample_shape, words.reshape(n, self.n_images, self.words_per_image),
                            validate=False)
        keys, ia, ib = _plan_sparse(op, a, b, n)
        words = _dispatch.combine_blocks(op, a._words, ia, b._words, ib) if len(keys) else a._words[:0]
        if op != "or" and len(keys):
            keep = to_host(_dispatch.nonzero_blocks(words))
            if not keep.all():
                keys, words = keys[keep], words[self._index_like(np.flatnonzero(keep))]
        return self._new_sparse(keys, words, n)

    def __and__(self, other: "BitMasks") -> "BitMasks":
        return self._binary("and", other)

    def __or__(self, other: "BitMasks") -> "BitMasks":
        return self._binary("or", other)

    def and_not(self, other: "BitMasks") -> "BitMasks":
        """``self AND NOT other``, elementwise (padding stays zero)."""
        return self._binary("and_not", other)

    def __invert__(self) -> "BitMasks":
        """Complement within each image (padding bits stay zero); the result is dense."""
        d = self.as_layout("dense")
        wpi = self.words_per_image
        if d.nnz_blocks:
            words = _dispatch.not_blocks(d._words.reshape(-1, wpi), self.pixels_per_image)
        else:
            words = d._words
        return BitMasks(self.sample_shape, words.reshape(d._words.shape), validate=False)

    # ------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> None:
        """Write to directory ``path`` (meta.json + .npy arrays), atomically: a crash leaves the old copy."""
        path = os.fspath(path)
        host = self.to("cpu")
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
        try:
            for name, arr in host.layout_arrays().items():
                np.save(os.path.join(tmp, f"{name}.npy"), arr)
            meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "layout": host.layout,
                    "n": host.n, "sample_shape": list(host.sample_shape)}
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f)
            _replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "BitMasks":
        """Read masks written by :meth:`save`; with ``mmap`` the arrays are memory-mapped read-only."""
        path = os.fspath(path)
        meta_path = os.path.join(path, "meta.json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"BitMasks.load: {meta_path} not found (not a saved BitMasks)") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"BitMasks.load: {meta_path} is not valid JSON: {exc}") from None
        if meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
            raise InputError(
                f"BitMasks.load: {meta_path} has format {meta.get('format')!r} "
                f"version {meta.get('version')!r}, expected {_FORMAT!r} version {_FORMAT_VERSION}"
            )
        names = ["words"] + (["indptr", "images"] if meta.get("layout") == "sparse" else [])
        arrays = {}
        for name in names:
            file = os.path.join(path, f"{name}.npy")
            if not os.path.exists(file):
                raise FileNotFoundError(f"BitMasks.load: {file} is missing")
            arrays[name] = np.load(file, mmap_mode="r" if mmap else None)
        try:
            masks = cls(meta["sample_shape"], arrays["words"], arrays.get("indptr"), arrays.get("images"))
        except (TypeError, ValueError) as exc:
            raise InputError(f"BitMasks.load: {path}: {exc}") from None
        if masks.n != meta.get("n"):
            raise InputError(
                f"BitMasks.load: {meta_path} says n = {meta.get('n')}, arrays hold {masks.n} rows")
        return masks


def _usable_cuda_device(device: str) -> str:
    """``device`` ("cuda" read as torch's current device, "cuda:<index>" as given), once the CUDA kernels
    are built and torch sees a CUDA device; BackendUnavailable otherwise."""
    backends.cuda_module()  # raise now if the CUDA kernels were not built
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("no usable CUDA device here (torch.cuda.is_available() is False); "
                                 "keep the masks on the CPU")
    return f"cuda:{torch.cuda.current_device()}" if device == "cuda" else device


def _concat_fn(like):
    if is_torch(like):
        import torch

        return lambda xs: torch.cat(xs)
    return lambda xs: np.concatenate(xs)


def _block_keys(m: BitMasks, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys row * n_images + image, block index) of m's blocks, rows broadcast to n."""
    indptr, images = to_host(m._indptr), to_host(m._images)
    n_img = max(m.n_images, 1)
    if m.n == 1 and n != 1:
        k = len(images)
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        return rows * n_img + np.tile(images, n), np.tile(np.arange(k, dtype=np.int64), n)
    return _row_of_block(indptr) * n_img + images, np.arange(len(images), dtype=np.int64)


def _lookup(keys: np.ndarray, table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """For each key, the matching entry of idx where table (sorted) holds it, else -1."""
    if len(table) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    pos = np.searchsorted(table, keys)
    pos_c = np.minimum(pos, len(table) - 1)
    hit = table[pos_c] == keys
    return np.where(hit, idx[pos_c], -1).astype(np.int64)


def _plan_sparse(op: str, a: BitMasks, b: BitMasks, n: int):
    """Output block keys and source blocks (ia, ib; -1 = none) of ``a op b``, both image-sparse."""
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    ka, ia = _block_keys(a, n)
    kb, ib = _block_keys(b, n)
    if op == "or":
        keys = np.union1d(ka, kb)
        return keys, _lookup(keys, ka, ia), _lookup(keys, kb, ib)
    jb = _lookup(ka, kb, ib)
    if op == "and":
        hit = jb >= 0
        return ka[hit], ia[hit], jb[hit]
    return ka, ia, jb  # and_not: every block of a


def _replace_dir(src: str, dst: str) -> None:
    """Move directory src to dst, replacing dst; dst is never missing or half-written."""
    if not os.path.exists(dst):
        os.replace(src, dst)
        return
    old = dst + ".old-" + os.path.basename(src)
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


class BitMasksBuilder:
    """Builds ``BitMasks`` by appending images in batches, never holding the dense set.

    >>> b = BitMasksBuilder(n=1100, image_shape=(112, 112))
    >>> for batch in batches:            # bool [1100, batch, 112, 112]
    ...     b.append(batch)
    >>> concepts = b.finish()            # image-sparse unless layout says otherwise

    :meth:`append_sparse` adds a batch given only its non-empty (row, image)
    masks, which is how label maps stream in. Only non-empty image blocks are
    kept. With ``path``, blocks are spilled to disk as they arrive and
    :meth:`finish` writes the result there (as :meth:`BitMasks.save` would) and
    returns it memory-mapped, so sets larger than RAM can be built in flat
    memory; :meth:`checkpoint` returns how far a spilling build got, and a
    builder made with ``resume=`` that state continues from there.
    """

    def __init__(self, n: int, image_shape: Iterable[int], *, layout: str = "auto",
                 path: str | os.PathLike | None = None, resume: dict | None = None):
        self.n = int(n)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.layout = layout
        self.pixels = math.prod(self.image_shape)
        if self.n < 0 or self.pixels < 1:
            raise InputError(f"BitMasksBuilder: need n >= 0 and images of >= 1 pixel, got n={n}, "
                             f"image_shape={self.image_shape}")
        if layout not in ("auto", "dense", "sparse"):
            raise InputError(f"BitMasksBuilder: layout must be 'auto', 'dense' or 'sparse', got {layout!r}")
        self.wpi = _words_per_image(self.pixels)
        self.n_images = 0
        self._rows: list[np.ndarray] = []
        self._images: list[np.ndarray] = []
        self._words: list[np.ndarray] = []
        self._nnz = 0
        self._path = None if path is None else os.fspath(path)
        self._spill: dict | None = None
        if self._path is not None:
            self._open_spill(resume)

    # Spilled blocks go to ``<path>.partial/``: rows, images and words appended as raw int64/uint64
    # records, so memory stays flat however many images arrive, and a checkpoint (record counts in
    # state.json) lets a killed build resume by truncating the files back to it.
    def _open_spill(self, resume: dict | None) -> None:
        self._spill_dir = self._path + ".partial"
        if resume is not None and (resume.get("n") != self.n or
                                   resume.get("image_shape") != list(self.image_shape)):
            raise InputError(f"BitMasksBuilder: cannot resume {self._path}: the checkpoint is of "
                             f"{resume.get('n')} rows of {resume.get('image_shape')}, not {self.n} of "
                             f"{list(self.image_shape)}")
        if resume is None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            os.makedirs(self._spill_dir)
        self._spill = {}
        for name, width in (("rows", 1), ("images", 1), ("words", self.wpi)):
            file = os.path.join(self._spill_dir, f"{name}.bin")
            if resume is not None and os.path.getsize(file) < 8 * width * resume["nnz"]:
                raise InputError(f"BitMasksBuilder: cannot resume {self._path}: {file} is shorter than its "
                                 "checkpoint")
            f = open(file, "r+b" if resume is not None else "w+b")
            f.truncate(8 * width * (resume["nnz"] if resume is not None else 0))
            f.seek(0, os.SEEK_END)
            self._spill[name] = f
        if resume is not None:
            self._nnz, self.n_images = int(resume["nnz"]), int(resume["n_images"])

    def checkpoint(self) -> dict:
        """Flush a spilling builder's files to disk and return how far it got; a builder made later with
        the same path and ``resume=`` this state continues from here (records after it are dropped)."""
        if self._spill is None:
            raise InputError("BitMasksBuilder.checkpoint: only a builder with a path can checkpoint")
        for f in self._spill.values():
            f.flush()
            os.fsync(f.fileno())
        return {"n": self.n, "image_shape": list(self.image_shape), "nnz": self._nnz,
                "n_images": self.n_images}

    def _add(self, rows: np.ndarray, images: np.ndarray, words: np.ndarray) -> None:
        keep = _dispatch.nonzero_blocks(words) if len(words) else np.zeros(0, bool)
        if not keep.all():
            rows, images, words = rows[keep], images[keep], words[keep]
        if self._spill is not None:
            self._spill["rows"].write(np.ascontiguousarray(rows, np.int64).tobytes())
            self._spill["images"].write(np.ascontiguousarray(images, np.int64).tobytes())
            self._spill["words"].write(np.ascontiguousarray(words).tobytes())
        else:
            self._rows.append(rows)
            self._images.append(images)
            self._words.append(words)
        self._nnz += len(rows)

    def append(self, masks: np.ndarray) -> None:
        """The next b images for every row: bool ``[n, b, *image_shape]``."""
        masks = np.asarray(masks)
        if masks.dtype != bool:
            raise TypeError(f"BitMasksBuilder.append: masks must be bool, got dtype {masks.dtype}")
        if masks.ndim != 2 + len(self.image_shape) or masks.shape[0] != self.n or \
                tuple(masks.shape[2:]) != self.image_shape:
            raise InputError(
                f"BitMasksBuilder.append: masks must have shape [{self.n}, b, *{self.image_shape}], "
                f"got {masks.shape}"
            )
        b = masks.shape[1]
        words = _pack(masks.reshape(self.n * b, self.pixels))
        flat = np.arange(self.n * b, dtype=np.int64)
        self._add(flat // b, self.n_images + flat % b, words)
        self.n_images += b

    def append_sparse(self, n_new_images: int, rows: np.ndarray, images: np.ndarray,
                      masks: np.ndarray) -> None:
        """The next ``n_new_images`` images, given only their non-empty masks.

        rows: int [m] (mask row), images: int [m] (image within this batch,
        0 <= image < n_new_images), masks: bool [m, *image_shape]. Pairs not
        listed are empty; a (row, image) pair may appear once.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        images = np.asarray(images, dtype=np.int64).reshape(-1)
        masks = np.asarray(masks)
        if masks.dtype != bool:
            raise TypeError(f"BitMasksBuilder.append_sparse: masks must be bool, got dtype {masks.dtype}")
        m = len(rows)
        if images.shape != (m,) or masks.shape != (m, *self.image_shape):
            raise InputError(
                f"BitMasksBuilder.append_sparse: rows {rows.shape}, images {images.shape} and masks "
                f"{masks.shape} must be [m], [m] and [m, *{self.image_shape}]"
            )
        if m and (rows.min() < 0 or rows.max() >= self.n):
            raise InputError(f"BitMasksBuilder.append_sparse: rows must lie in [0, {self.n})")
        if m and (images.min() < 0 or images.max() >= n_new_images):
            raise InputError(f"BitMasksBuilder.append_sparse: images must lie in [0, {n_new_images})")
        order = np.lexsort((images, rows))
        rows, images, masks = rows[order], images[order], masks[order]
        if m > 1 and np.any((np.diff(rows) == 0) & (np.diff(images) == 0)):
            raise InputError("BitMasksBuilder.append_sparse: a (row, image) pair is listed twice")
        words = _pack(masks.reshape(m, self.pixels)) if m else np.zeros((0, self.wpi), np.uint64)
        self._add(rows, self.n_images + images, words)
        self.n_images += int(n_new_images)

    def records(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """What an in-memory builder holds, for another builder's :meth:`extend` (a shard of images built
        on one machine, merged into the whole on another): (n_images, rows int64 [m], images int64 [m],
        words uint64 [m, words per image]), one record per non-empty (row, image), sorted by row, then
        image."""
        if self._spill is not None:
            raise InputError("BitMasksBuilder.records: only an in-memory builder (no path) gives its records")
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        images = np.concatenate(self._images) if self._images else np.zeros(0, np.int64)
        words = np.concatenate(self._words) if self._words else np.zeros((0, self.wpi), np.uint64)
        order = np.lexsort((images, rows))
        return self.n_images, rows[order], images[order], np.ascontiguousarray(words[order])

    def extend(self, n_new_images: int, rows: np.ndarray, images: np.ndarray, words: np.ndarray) -> None:
        """The next ``n_new_images`` images as another builder's :meth:`records`: rows, images (within
        those images) and packed words, sorted by row, then image. The result is what appending the
        same masks here would give."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        images = np.asarray(images, np.int64).reshape(-1)
        words = np.asarray(words)
        m = len(rows)
        if images.shape != (m,) or words.dtype != np.uint64 or words.shape != (m, self.wpi):
            raise InputError(f"BitMasksBuilder.extend: rows {rows.shape}, images {images.shape} and words "
                             f"{words.shape} ({words.dtype}) must be [m], [m] and uint64 [m, {self.wpi}]")
        if m and (rows.min() < 0 or rows.max() >= self.n or images.min() < 0 or
                  images.max() >= n_new_images):
            raise InputError(f"BitMasksBuilder.extend: rows must lie in [0, {self.n}) and images in "
                             f"[0, {n_new_images})")
        if m > 1 and np.any((np.diff(rows) < 0) | ((np.diff(rows) == 0) & (np.diff(images) <= 0))):
            raise InputError("BitMasksBuilder.extend: records must be sorted by row, then image, once each")
        self._add(rows, self.n_images + images, words)
        self.n_images += int(n_new_images)

    def finish(self) -> BitMasks:
        """The masks built so far, in the builder's layout (memory-mapped under ``path`` if given)."""
        if self._spill is not None:
            return self._finish_spilled()
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        images = np.concatenate(self._images) if self._images else np.zeros(0, np.int64)
        order = np.argsort(rows, kind="stable")  # chunks arrive in image order; rows sorted within each
        indptr = _indptr_from_rows(rows, self.n)
        words = np.concatenate(self._words) if self._words else np.zeros((0, self.wpi), np.uint64)
        masks = BitMasks((self.n_images, *self.image_shape), np.ascontiguousarray(words[order]), indptr,
                         images[order])
        return masks.as_layout(self.layout)

    def _finish_spilled(self) -> BitMasks:
        for f in self._spill.values():
            f.close()
        spill = self._spill_dir
        rows = np.fromfile(os.path.join(spill, "rows.bin"), np.int64, count=self._nnz)
        images = np.fromfile(os.path.join(spill, "images.bin"), np.int64, count=self._nnz)
        order = np.argsort(rows, kind="stable")  # chunks arrive in image order; rows sorted within each
        indptr = _indptr_from_rows(rows, self.n)
        sample_shape = (self.n_images, *self.image_shape)
        out_dir = os.path.join(spill, "out")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        _scatter_words(os.path.join(spill, "words.bin"), os.path.join(out_dir, "words.npy"), order,
                       self.wpi)
        np.save(os.path.join(out_dir, "indptr.npy"), indptr)
        np.save(os.path.join(out_dir, "images.npy"), images[order])
        with open(os.path.join(out_dir, "meta.json"), "w") as f:
            json.dump({"format": _FORMAT, "version": _FORMAT_VERSION, "layout": "sparse", "n": self.n,
                       "sample_shape": list(sample_shape)}, f)
        _replace_dir(out_dir, self._path)
        shutil.rmtree(spill, ignore_errors=True)
        self._spill = None
        masks = BitMasks.load(self._path)
        total = self.n * self.n_images
        if self.layout == "dense" or (self.layout == "auto" and total and
                                      self._nnz / total > sparse_threshold(self.wpi)):
            masks.as_layout("dense").save(self._path)
            masks = BitMasks.load(self._path)
        return masks


def _scatter_words(src: str, dst: str, order: np.ndarray, wpi: int, chunk_bytes: int = 64 << 20) -> None:
    """Write ``words[order]`` of the raw uint64 [nnz, wpi] file ``src`` as the .npy file ``dst``,
    reading ``src`` in order, a chunk at a time, and writing each record at its place with positioned
    writes: neither file is mapped, so memory stays at one chunk whatever the size."""
    nnz, rec = len(order), 8 * wpi
    where = np.empty(nnz, np.int64)
    where[order] = np.arange(nnz, dtype=np.int64)  # record i of src goes to slot where[i]
    base = create_npy(dst, (nnz, wpi), np.uint64)
    with open(dst, "r+b") as out:
        step = max(1, chunk_bytes // rec)
        with open(src, "rb") as f:
            for s in range(0, nnz, step):
                block = np.fromfile(f, np.uint8, count=min(step, nnz - s) * rec).reshape(-1, rec)
                slots = where[s : s + len(block)]
                # runs of consecutive slots go out in one write (rows arrive image by image, so a row's
                # records are scattered, but a chunk of one row is often contiguous)
                breaks = np.flatnonzero(np.diff(slots) != 1) + 1
                for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(slots)]):
                    os.pwrite(out.fileno(), block[a:b].tobytes(), base + int(slots[a]) * rec)
