"""Triton kernels for the fused integrated-gradients accumulation
(:func:`neurcore.attribution.ig_accumulate`).

They run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (set it before this
module is imported). Sums are kept in the input precision (float32 or float64). Imported lazily
by the dispatcher (``_fused``), which has checked shapes, dtypes, devices and contiguity.

Layout: for one target t, ``grads[t]`` is S slices of N = U * C * P contiguous values, R = U * C
rows of P positions. Each program owns a block of outputs of one target, so it loads, adds and
stores them without atomics.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..errors import BackendUnavailable


@triton.jit
def _elementwise_kernel(g_ptr, w_ptr, d_ptr, out_ptr, S, N, blocks_per_target,
                        BLOCK: tl.constexpr, F64: tl.constexpr):
    # out[t, n] += delta[n] * sum_s w[s] * g[t, s, n] for a block of n; loads are contiguous in n.
    pid = tl.program_id(0)
    t = (pid // blocks_per_target).to(tl.int64)
    n = (pid % blocks_per_target).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = n < N
    acc = tl.zeros((BLOCK,), dtype=tl.float64 if F64 else tl.float32)
    g_row = g_ptr + t * S * N + n
    for s in range(S):
        w = tl.load(w_ptr + s)
        acc += w * tl.load(g_row, mask=live, other=0.0)
        g_row += N  # pointer steps: s * N could overflow int32
    d = tl.load(d_ptr + n, mask=live, other=0.0)
    o = tl.load(out_ptr + t * N + n, mask=live, other=0.0)
    tl.store(out_ptr + t * N + n, o + d * acc, mask=live)


@triton.jit
def _reduce_kernel(g_ptr, w_ptr, d_ptr, out_ptr, S, R, P, blocks_per_target,
                   BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, F64: tl.constexpr):
    # out[t, r] += sum_p delta[r, p] * sum_s w[s] * g[t, s, r, p] for a block of rows r; a tile
    # [BLOCK_R, BLOCK_P] is contiguous along p, and consecutive rows are adjacent in memory.
    pid = tl.program_id(0)
    t = (pid // blocks_per_target).to(tl.int64)
    r = (pid % blocks_per_target).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    N = R * P
    total = tl.zeros((BLOCK_R,), dtype=tl.float64 if F64 else tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        live = (r[:, None] < R) & (p[None, :] < P)
        offs = r[:, None] * P + p[None, :]
        acc = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float64 if F64 else tl.float32)
        for s in range(S):
            w = tl.load(w_ptr + s)
            acc += w * tl.load(g_ptr + (t * S + s) * N + offs, mask=live, other=0.0)
        d = tl.load(d_ptr + offs, mask=live, other=0.0)
        total += tl.sum(d * acc, axis=1)
    o = tl.load(out_ptr + t * R + r, mask=r < R, other=0.0)
    tl.store(out_ptr + t * R + r, o + total, mask=r < R)


def ig_accumulate(grads: torch.Tensor, weights: torch.Tensor, delta: torch.Tensor, out: torch.Tensor,
                  reduce_spatial: bool) -> None:
    """``out += ...`` with the Triton kernels; the arguments were validated by the dispatcher."""
    if grads.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailable(
            "ig_accumulate(backend='triton') on CPU tensors needs TRITON_INTERPRET=1 set before "
            "neurcore.attribution._triton is imported; otherwise move the tensors to a CUDA device"
        )
    T, S, U, C, P = grads.shape
    R = U * C
    if T == 0 or R * P == 0:
        return
    f64 = grads.dtype == torch.float64
    if reduce_spatial:
        block_p = min(128, triton.next_power_of_2(P))
        block_r = max(1, min(64, 1024 // block_p, triton.next_power_of_2(R)))
        per_target = triton.cdiv(R, block_r)
        _reduce_kernel[(T * per_target,)](grads, weights, delta, out, S, R, P, per_target,
                                          BLOCK_R=block_r, BLOCK_P=block_p, F64=f64)
    else:
        n = R * P
        block = min(1024, triton.next_power_of_2(n))
        per_target = triton.cdiv(n, block)
        _elementwise_kernel[(T * per_target,)](grads, weights, delta, out, S, n, per_target,
                                               BLOCK=block, F64=f64)
