"""One dispatch point for the fused integrated-gradients accumulation: CPU (``neurcore.engine._C``),
CUDA (``neurcore.engine._cuda``) or Triton (``neurcore.attribution._triton``).

Integrated gradients (Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML
2017) attributes ``F(x) - F(x')`` to the inputs as ``(x - x') * integral_0^1 dF(x' + a (x - x'))/dx
da``; with a quadrature over S steps the integral is ``sum_s weights[s] * grads[s]``. This kernel forms that
sum, times ``delta = x - x'``, in one pass over the gradients, without materialising a
gradient-sized product, and adds it to ``out`` so callers can loop over chunks of steps or
examples.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..engine.backends import cpu_module, cuda_module
from ..errors import BackendUnavailable, InputError

if TYPE_CHECKING:
    import torch


def _check_tensor(name: str, x) -> None:
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ig_accumulate: {name} must be a torch.Tensor, got {type(x).__name__}")


def _check_shape(name: str, x, expected: tuple, layout: str, grads) -> None:
    if tuple(x.shape) != expected:
        raise InputError(
            f"ig_accumulate: {name} must have shape {layout} = {expected} to match grads "
            f"[T, S, U, C, P] = {tuple(grads.shape)}, got {tuple(x.shape)}"
        )


def _span(x) -> tuple[int, int]:
    return x.data_ptr(), x.data_ptr() + x.numel() * x.element_size()


def _validate(grads, weights, delta, out, reduce_spatial) -> None:
    import torch

    args = (("grads", grads), ("weights", weights), ("delta", delta), ("out", out))
    for name, x in args:
        _check_tensor(name, x)
    if not isinstance(reduce_spatial, bool):
        raise TypeError(f"ig_accumulate: reduce_spatial must be a bool, got {type(reduce_spatial).__name__}")
    if grads.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"ig_accumulate: grads must be torch.float32 or torch.float64, got {grads.dtype}")
    for name, x in args[1:]:
        if x.dtype != grads.dtype:
            raise TypeError(f"ig_accumulate: {name} has dtype {x.dtype} but grads has {grads.dtype}; "
                            "all four tensors must share one dtype")
    if grads.dim() != 5:
        raise InputError(f"ig_accumulate: grads must have shape [T, S, U, C, P] (5-d), "
                         f"got {tuple(grads.shape)}")
    T, S, U, C, P = grads.shape
    _check_shape("weights", weights, (S,), "[S]", grads)
    _check_shape("delta", delta, (U, C, P), "[U, C, P]", grads)
    if reduce_spatial:
        _check_shape("out", out, (T, U, C), "[T, U, C] (reduce_spatial=True)", grads)
    else:
        _check_shape("out", out, (T, U, C, P), "[T, U, C, P] (reduce_spatial=False)", grads)
    for name, x in args[1:]:
        if x.device != grads.device:
            raise InputError(f"ig_accumulate: {name} is on {x.device} but grads is on {grads.device}; "
                             "all four tensors must be on one device")
    for name, x in args:
        if not x.is_contiguous():
            fix = ("out is written in place, so pass a contiguous tensor and copy back yourself"
                   if name == "out" else f"pass {name}.contiguous()")
            raise InputError(f"ig_accumulate: {name} must be contiguous (shape {tuple(x.shape)}, "
                             f"strides {x.stride()}); {fix}")
    if out.numel() and out.device.type in ("cpu", "cuda"):  # meta tensors have no addresses
        lo, hi = _span(out)
        for name, x in args[:3]:
            if x.numel():
                a, b = _span(x)
                if a < hi and lo < b:
                    raise InputError(f"ig_accumulate: out overlaps {name} in memory; "
                                     "out must be a separate tensor")


def ig_accumulate(grads: torch.Tensor, weights: torch.Tensor, delta: torch.Tensor, out: torch.Tensor, *,
                  reduce_spatial: bool, backend: str | None = None) -> torch.Tensor:
    """Add the integrated-gradients sum over steps to ``out``, in place, in one pass over ``grads``.

    Args:
        grads: ``[T, S, U, C, P]`` gradients of T target outputs at S interpolation steps, for U
            examples, C channels and P spatial positions (P = H * W, or 1).
        weights: ``[S]`` quadrature weights of the steps, step size included.
        delta: ``[U, C, P]`` input minus baseline.
        out: ``[T, U, C]`` when ``reduce_spatial``, else ``[T, U, C, P]``; accumulated in place:

            - ``reduce_spatial=True``:
              ``out[t,u,c] += sum_s weights[s] * sum_p delta[u,c,p] * grads[t,s,u,c,p]``
            - ``reduce_spatial=False``:
              ``out[t,u,c,p] += delta[u,c,p] * sum_s weights[s] * grads[t,s,u,c,p]``
        reduce_spatial: keyword only, see ``out``.
        backend: None picks ``"cpu"`` for CPU tensors and ``"cuda"`` for CUDA tensors (an error if
            the CUDA module was not built, never a fallback); ``"triton"`` runs the Triton kernels
            on the tensors' device (a CUDA device, or the CPU under ``TRITON_INTERPRET=1``).

    All four tensors: torch, one dtype (float32 or float64), one device, contiguous; out must not
    overlap the inputs. Zero-size dimensions are allowed (T = 0 or U = 0 writes nothing).

    Precision: the CPU kernel sums in float64 and rounds each output once (out + increment). The
    CUDA and Triton kernels sum in the input precision with fused multiply-adds; the CUDA kernel
    splits small problems over more blocks that atomically add partial sums, so its float32 result
    can differ from run to run in the last bits. Not differentiable: autograd does not see the write.

    Returns ``out``.
    """
    _validate(grads, weights, delta, out, reduce_spatial)
    device = grads.device
    if backend is None:
        if device.type not in ("cpu", "cuda"):
            raise InputError(f"ig_accumulate: tensors on {device} are not supported; "
                             "use a CPU or CUDA device")
        backend = device.type
    if backend == "cpu":
        if device.type != "cpu":
            raise InputError(f"ig_accumulate: backend 'cpu' needs CPU tensors, got tensors on {device}")
        cpu_module().ig_accumulate(grads.detach().numpy(), weights.detach().numpy(), delta.detach().numpy(),
                         out.detach().numpy(), reduce_spatial)
    elif backend == "cuda":
        if device.type != "cuda":
            raise InputError(f"ig_accumulate: backend 'cuda' needs tensors on a CUDA device, got {device}; "
                             "use .to('cuda')")
        _cuda_run(grads, weights, delta, out, reduce_spatial)
    elif backend == "triton":
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise BackendUnavailable("ig_accumulate: backend 'triton' on CPU tensors needs "
                                     "TRITON_INTERPRET=1 set before neurcore.attribution._triton is "
                                     "imported; otherwise use CUDA tensors")
        from . import _triton

        _triton.ig_accumulate(grads.detach(), weights.detach(), delta.detach(), out.detach(), reduce_spatial)
    else:
        raise InputError(f"ig_accumulate: backend must be None, 'cpu', 'cuda' or 'triton', got {backend!r}")
    return out


def _cuda_run(grads, weights, delta, out, reduce_spatial: bool) -> None:
    import torch

    mod = cuda_module()  # raises "not compiled with CUDA support" when it is missing
    T, S, U, C, P = grads.shape
    with torch.cuda.device(grads.device):
        stream = torch.cuda.current_stream(grads.device).cuda_stream
        mod.ig_accumulate(grads.dtype == torch.float64, grads.data_ptr(), weights.data_ptr(),
                          delta.data_ptr(), out.data_ptr(), T, S, U, C, P, reduce_spatial, stream)
