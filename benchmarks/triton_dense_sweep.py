"""Tuning notes for the Triton dense intersect kernel on a GPU (not a pytest benchmark): variants of
``neurcore.engine._triton._dense_dense_kernel`` timed on the two dense cases of ``bench_cuda.py``, each
checked against the CUDA backend's counts. Variants: the popcount (the portable SWAR the kernel uses,
libdevice's popc, PTX popc.b64), the tile (BLOCK_M x BLOCK_N x BLOCK_K) and a split of K over programs
(atomic adds). Run by a session lent a GPU, after benchmarks/device.sh has built neurcore:
``python3 benchmarks/triton_dense_sweep.py``. Prints one line per variant, fastest last."""

import itertools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

import neurcore
from neurcore import BitMasks


@triton.jit
def _swar(x):
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


@triton.jit
def _popc(x, HOW: tl.constexpr):
    if HOW == 0:
        return _swar(x)
    elif HOW == 1:
        return libdevice.popc(x).to(tl.int64)
    else:
        return tl.inline_asm_elementwise("popc.b64 $0, $1;", "=r,l", [x], dtype=tl.int32, is_pure=True,
                                         pack=1).to(tl.int64)


@triton.jit
def _dense(a_ptr, b_ptr, out_ptr, na, nb, k, k_per_split, HOW: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
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
        acc += tl.sum(_popc(a[:, None, :] & b[None, :, :], HOW), axis=2)
    tl.atomic_add(out_ptr + rm[:, None] * nb + rn[None, :], acc, mask=(rm[:, None] < na) & (rn[None, :] < nb))


def run(a, b, how, bm, bn, bk, splits):
    na, k = a.shape
    nb = b.shape[0]
    out = torch.zeros((na, nb), dtype=torch.int64, device="cuda")
    per = triton.cdiv(triton.cdiv(k, splits), bk) * bk
    grid = (triton.cdiv(na, bm), triton.cdiv(nb, bn), triton.cdiv(k, per))
    _dense[grid](a, b, out, na, nb, k, per, HOW=how, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return out


def case(na, nb, n_images, wpi):
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randint(-2**62, 2**62, (na, n_images * wpi), device="cuda", dtype=torch.int64, generator=g)
    b = torch.randint(-2**62, 2**62, (nb, n_images * wpi), device="cuda", dtype=torch.int64, generator=g)
    shape = (n_images, 56, 56)
    ref = neurcore.intersect_counts(BitMasks(shape, a.view(na, n_images, wpi), None, None, validate=False),
                                    BitMasks(shape, b.view(nb, n_images, wpi), None, None, validate=False))
    return a, b, ref


if __name__ == "__main__":
    hows = {0: "swar", 1: "libdevice", 2: "ptx"}
    for name, (na, nb, n_images) in {"20x600 over 1000x56x56": (20, 600, 1000),
                                     "256x2048 over 2000x56x56": (256, 2048, 2000)}.items():
        a, b, ref = case(na, nb, n_images, 49)
        cuda_ms = triton.testing.do_bench(lambda: neurcore.intersect_counts(
            BitMasks((n_images, 56, 56), a.view(na, n_images, 49), None, None, validate=False),
            BitMasks((n_images, 56, 56), b.view(nb, n_images, 49), None, None, validate=False)),
            return_mode="median")
        rows = []
        for how, (bm, bn, bk), splits in itertools.product(
                (0, 1, 2), [(16, 16, 16), (32, 32, 16), (32, 64, 8), (16, 64, 16)], (1, 16)):
            try:
                got = run(a, b, how, bm, bn, bk, splits)
                ok = torch.equal(got, ref)
                ms = triton.testing.do_bench(lambda: run(a, b, how, bm, bn, bk, splits), return_mode="median")
            except Exception as exc:  # a variant that does not compile is reported, not fatal
                rows.append((float("inf"), f"{hows[how]} {bm}x{bn}x{bk} split {splits}: "
                                           f"{type(exc).__name__}"))
                continue
            verdict = "ok" if ok else "WRONG"
            rows.append((ms, f"{hows[how]} {bm}x{bn}x{bk} split {splits}: {ms:.3f} ms {verdict}"))
        print(f"== {name}: CUDA backend {cuda_ms:.3f} ms")
        for _, line in sorted(rows, reverse=True):
            print(line)
