"""The path integral of integrated gradients, a chunk of steps at a time, folded into the result by the
fused kernel (:func:`~neurcore.attribution.ig_accumulate`); and the argument checks shared by the
Captum-compatible classes. Torch only: nothing here needs Captum."""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

from ..errors import InputError
from ._fused import ig_accumulate


def as_tuple(x) -> tuple:
    """A tuple of ``x``'s items when ``x`` is a tuple or list, else ``(x,)``."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check_inputs(inputs: tuple) -> None:
    """Every input is a tensor [N, ...] with the same N."""
    import torch

    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"inputs[{i}] must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[0] != inputs[0].shape[0]:
            raise InputError(f"inputs[{i}] has shape {tuple(x.shape)}; every input needs the same batch "
                             f"size in dimension 0 ({inputs[0].shape[0]})")


def baselines_like(baselines, inputs: tuple) -> tuple:
    """Captum's baselines as full tensors, one per input, each of its input's shape, dtype and device:
    None (zeros), a number, or a tensor broadcastable to the input; a tuple of those for a tuple."""
    import torch

    if baselines is None:
        return tuple(torch.zeros_like(x) for x in inputs)
    bases = as_tuple(baselines)
    if len(bases) != len(inputs):
        raise InputError(f"baselines: {len(bases)} given for {len(inputs)} inputs")
    out = []
    for i, (b, x) in enumerate(zip(bases, inputs)):
        if isinstance(b, (int, float)):
            out.append(torch.full_like(x, float(b)))
            continue
        if not isinstance(b, torch.Tensor):
            raise InputError(f"baselines[{i}] must be a number or a tensor, got {type(b).__name__}")
        try:
            out.append(torch.broadcast_to(b.detach().to(x.device, x.dtype), x.shape).contiguous())
        except RuntimeError:
            raise InputError(f"baselines[{i}] of shape {tuple(b.shape)} does not broadcast to the input's "
                             f"shape {tuple(x.shape)}") from None
    return tuple(out)


def row_bytes(tensors: Sequence, n: int) -> int:
    """Bytes of one example across the tensors among ``tensors`` that hold n examples (at least 1)."""
    import torch

    rows = [x for x in tensors if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == n]
    return max(1, sum(x[0].numel() * x.element_size() for x in rows)) if n else 1


def steps_per_chunk(n_steps: int, n: int, row_size: int, internal_batch_size: int | None,
                    chunk_bytes: int) -> int:
    """Steps per forward pass: Captum's ``internal_batch_size // n`` (at least 1, with Captum's warning
    when it is below n), or as many as fit in ``chunk_bytes`` when it is None."""
    if internal_batch_size is not None:
        if internal_batch_size < 1:
            raise InputError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        if internal_batch_size < n:
            warnings.warn("Internal batch size cannot be less than the number of input examples. "
                          f"Defaulting to internal batch size of {n} equal to the number of examples.",
                          stacklevel=4)
        return max(1, min(n_steps, internal_batch_size // max(1, n)))
    return max(1, min(n_steps, chunk_bytes // max(1, n * row_size)))


def _accumulate(grads, weights, factor, out, backend: str | None) -> None:
    """out [1, N, 1, F] += factor * sum_s weights[s] * grads[s]; grads [k * N, ...] (step-major),
    factor [N, ...]; both read in out's dtype. The fused kernel on CPU and CUDA (or Triton), else torch."""
    import torch

    k, n = len(weights), out.shape[1]
    g = grads.detach().to(out.dtype).reshape(1, k, n, 1, -1)
    w = torch.as_tensor(weights, dtype=out.dtype, device=out.device)
    f = factor.reshape(n, 1, -1).to(out.dtype)
    if backend == "triton" or out.device.type in ("cpu", "cuda"):
        ig_accumulate(g.contiguous(), w, f.contiguous(), out, reduce_spatial=False, backend=backend)
    else:
        out += (f * torch.tensordot(w, g[0], dims=1))[None]


def _sum_dtype(x):
    """float32 or float64: where the sum over steps is kept (Captum's result dtype for x)."""
    import torch

    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return torch.promote_types(dtype, torch.float32)


def integrate(inputs: tuple, bases: tuple, grads_at: Callable, alphas, weights, steps: int,
              multiply: bool, backend: str | None) -> tuple:
    """Integrated gradients of every input, one tensor per input, of its shape [N, ...]:

        weight_sum[i] = sum_s weights[s] * grad_s, grad_s the gradient at bases + alphas[s] (inputs - bases)
        result[i] = (inputs[i] - bases[i]) * weight_sum[i]  if ``multiply``, else weight_sum[i]

    ``steps`` steps at a time: grads_at(scaled, k) takes a tuple of tensors [k * N, ...] (k steps,
    step-major, requiring grad) and returns their gradients (None for an unused one: zeros).
    """
    import torch

    n = inputs[0].shape[0]
    dtypes = [x.dtype if x.is_floating_point() else torch.get_default_dtype() for x in inputs]
    bases = tuple(b.detach().to(dt) for b, dt in zip(bases, dtypes))
    deltas = tuple(x.detach().to(dt) - b for x, b, dt in zip(inputs, bases, dtypes))
    factors = deltas if multiply else tuple(torch.ones_like(d) for d in deltas)
    outs = [torch.zeros((1, n, 1, d.numel() // n if n else 0), dtype=_sum_dtype(d), device=d.device)
            for d in deltas]
    for s0 in range(0, len(alphas), steps):
        a, w = alphas[s0 : s0 + steps], weights[s0 : s0 + steps]
        scaled = tuple(torch.cat([b + float(al) * d for al in a]).requires_grad_()
                       for b, d in zip(bases, deltas))
        grads = grads_at(scaled, len(a))
        for g, f, o in zip(grads, factors, outs):
            if g is not None and o.numel():
                _accumulate(g, w, f, o, backend)
    return tuple(o.reshape(d.shape) for o, d in zip(outs, deltas))
