"""Triton kernels for ``intersect_counts`` in every pair of layouts.

They run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``
(set it before neurcore imports this module). Popcount is SWAR arithmetic on
int64 lanes, portable since ``libdevice.popc`` does not exist in the
interpreter; on a GPU the dense kernel takes the hardware popcount and splits K
over programs when its tiles alone would not fill the chip (tuned on an H200 by
``benchmarks/triton_dense_sweep.py``: 6.4 ms -> 1.4 ms on 20 x 600 rows over
1,000 x 56 x 56 words, 110 -> 70 ms on 256 x 2,048 rows over 2,000 images).
Imported lazily by :func:`neurcore.engine.intersect_counts`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..errors import BackendUnavailable
from ._device import is_torch, to_host
from ._dispatch import block_rows, image_major_index


@triton.jit
def _popcount64(x):
    # Hacker's Delight 5-2 on int64 lanes. Arithmetic shifts are harmless: each
    # shifted term is masked to clear high bits, and the final byte sum <= 64.
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


@triton.jit
def _popcount(x, HARDWARE: tl.constexpr):
    if HARDWARE:  # popc.b64 on a GPU, 3-5x the SWAR's speed in the dense kernel on an H200
        return libdevice.popc(x).to(tl.int64)
    else:
        return _popcount64(x)


@triton.jit
def _dense_dense_kernel(a_ptr, b_ptr, out_ptr, na, nb, k, k_per_split, HARDWARE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Program (i, j, s) adds the counts of words [s * k_per_split, (s + 1) * k_per_split) of its tile.
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    k_lo = tl.program_id(2).to(tl.int64) * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, k)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int64)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rm[:, None] * k + rk[None, :], mask=(rm[:, None] < na) & (rk[None, :] < k_hi),
                    other=0)
        b = tl.load(b_ptr + rn[:, None] * k + rk[None, :], mask=(rn[:, None] < nb) & (rk[None, :] < k_hi),
                    other=0)
        acc += tl.sum(_popcount(a[:, None, :] & b[None, :, :], HARDWARE), axis=2)
    tl.atomic_add(out_ptr + rm[:, None] * nb + rn[None, :], acc, mask=(rm[:, None] < na) & (rn[None, :] < nb))


@triton.jit
def _sparse_dense_kernel(a_row_ptr, a_img_ptr, a_words_ptr, b_ptr, out_ptr, nb, n_images, wpi,
                         BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    # One program per (A block, tile of B rows): B is read only at A's image.
    p = tl.program_id(0).to(tl.int64)
    i = tl.load(a_row_ptr + p)
    x = tl.load(a_img_ptr + p)
    rn = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    acc = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for w0 in range(0, wpi, BLOCK_W):
        rw = w0 + tl.arange(0, BLOCK_W)
        a = tl.load(a_words_ptr + p * wpi + rw, mask=rw < wpi, other=0)
        b = tl.load(b_ptr + rn[:, None] * (n_images * wpi) + x * wpi + rw[None, :],
                    mask=(rn[:, None] < nb) & (rw[None, :] < wpi), other=0)
        acc += tl.sum(_popcount64(a[None, :] & b), axis=1)
    tl.atomic_add(out_ptr + i * nb + rn, acc, mask=rn < nb)


@triton.jit
def _sparse_sparse_kernel(a_row_ptr, a_img_ptr, a_words_ptr, by_image_ptr, b_row_ptr, b_block_ptr,
                          b_words_ptr, out_ptr, nb, wpi, BLOCK_Q: tl.constexpr, BLOCK_W: tl.constexpr):
    # One program per A block; it visits the B blocks of the same image.
    p = tl.program_id(0).to(tl.int64)
    i = tl.load(a_row_ptr + p)
    x = tl.load(a_img_ptr + p)
    q_start = tl.load(by_image_ptr + x)
    q_end = tl.load(by_image_ptr + x + 1)
    for q0 in range(q_start, q_end, BLOCK_Q):
        rq = q0 + tl.arange(0, BLOCK_Q)
        live = rq < q_end
        rows = tl.load(b_row_ptr + rq, mask=live, other=0)
        blocks = tl.load(b_block_ptr + rq, mask=live, other=0)
        acc = tl.zeros((BLOCK_Q,), dtype=tl.int64)
        for w0 in range(0, wpi, BLOCK_W):
            rw = w0 + tl.arange(0, BLOCK_W)
            a = tl.load(a_words_ptr + p * wpi + rw, mask=rw < wpi, other=0)
            b = tl.load(b_words_ptr + blocks[:, None] * wpi + rw[None, :],
                        mask=live[:, None] & (rw[None, :] < wpi), other=0)
            acc += tl.sum(_popcount64(a[None, :] & b), axis=1)
        tl.atomic_add(out_ptr + i * nb + rows, acc, mask=live)


_TILE = 16  # BLOCK_M = BLOCK_N = BLOCK_K: the fastest tile of the H200 sweep on the small case


def dense_splits(na: int, nb: int, k: int, device: torch.device) -> int:
    """How many programs share K for each output tile: enough for about 8 programs a multiprocessor,
    at most one per 8 K-steps; 1 under the interpreter (its programs run one by one)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiles = triton.cdiv(na, _TILE) * triton.cdiv(nb, _TILE)
    return max(1, min(triton.cdiv(8 * sms, tiles), triton.cdiv(k, _TILE) // 8))


def dense_counts(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, splits: int = 1) -> torch.Tensor:
    """``out[i, j] += popcount(a_i & b_j)`` summed over words: a int64 [na, k], b int64 [nb, k], out int64
    [na, nb] (zeros in), K cut into ``splits`` ranges whose programs add atomically."""
    na, k = a.shape
    nb = b.shape[0]
    per = triton.cdiv(triton.cdiv(k, max(1, splits)), _TILE) * _TILE
    grid = (triton.cdiv(na, _TILE), triton.cdiv(nb, _TILE), triton.cdiv(k, per) if k else 1)
    _dense_dense_kernel[grid](a, b, out, na, nb, k, per, HARDWARE=a.device.type == "cuda",
                              BLOCK_M=_TILE, BLOCK_N=_TILE, BLOCK_K=_TILE)
    return out


def _tensor(x, device) -> torch.Tensor:
    if is_torch(x):
        return x
    return torch.from_numpy(np.ascontiguousarray(x).view(np.int64)).to(device)


def _block_width(wpi: int) -> int:
    return min(64, triton.next_power_of_2(max(wpi, 1)))


def intersect_counts(A, B):
    """``|A_i & B_j|`` with the Triton kernels -> int64 [A.n, B.n] (numpy for CPU masks)."""
    on_cpu = A.device == "cpu"
    if on_cpu and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailable(
            "intersect_counts(backend='triton') on CPU masks needs TRITON_INTERPRET=1 set before "
            "neurcore is imported; otherwise move the masks to a CUDA device with .to('cuda')"
        )
    device = torch.device("cpu") if on_cpu else torch.device(A.device)
    out = _intersect(A, B, device)
    return out.numpy() if on_cpu else out


def _intersect(A, B, device) -> torch.Tensor:
    n_img, wpi = A.n_images, A.words_per_image
    out = torch.zeros((A.n, B.n), dtype=torch.int64, device=device)
    if A.n == 0 or B.n == 0:
        return out
    if A.layout == "dense" and B.layout == "sparse":
        return _intersect(B, A, device).T.contiguous()
    bw = _block_width(wpi)
    if A.layout == "dense":  # and B dense
        k = n_img * wpi
        a, b = _tensor(A._words, device).reshape(A.n, k), _tensor(B._words, device).reshape(B.n, k)
        return dense_counts(a, b, out, dense_splits(A.n, B.n, k, device))
    indptr = to_host(A._indptr)
    nnz = int(indptr[-1])
    if nnz == 0:
        return out
    a_row = _tensor(block_rows(indptr), device)
    a_img, a_words = _tensor(A._images, device), _tensor(A._words, device)
    if B.layout == "dense":
        grid = (nnz, triton.cdiv(B.n, 32))
        _sparse_dense_kernel[grid](a_row, a_img, a_words, _tensor(B._words, device), out, B.n, n_img, wpi,
                                   BLOCK_N=32, BLOCK_W=bw)
        return out
    by_image, b_row, b_block = image_major_index(_tensor(B._indptr, device), _tensor(B._images, device),
                                                 n_img)
    _sparse_sparse_kernel[(nnz,)](a_row, a_img, a_words, by_image, b_row, b_block, _tensor(B._words, device),
                                  out, B.n, wpi, BLOCK_Q=16, BLOCK_W=bw)
    return out
