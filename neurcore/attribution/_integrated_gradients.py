"""Captum's ``IntegratedGradients``, ``LayerIntegratedGradients`` and ``NeuronIntegratedGradients``,
with the integral accumulated by the fused kernel (:func:`~neurcore.attribution.ig_accumulate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

from ..errors import InputError
from ..models import resolve_layer
from ._fused import ig_accumulate

if TYPE_CHECKING:
    import torch

    #: One tensor, or a tuple of tensors that share dimension 0 (the examples).
    TensorOrTuple = Union[torch.Tensor, tuple[torch.Tensor, ...]]
    #: Captum's baselines: None, a number or a tensor, or a tuple of those, one per input.
    Baselines = Union[None, int, float, torch.Tensor, tuple[Union[int, float, torch.Tensor], ...]]
    #: Captum's target: None, an output index (int or tuple), or one per example (list or tensor).
    Target = Union[None, int, tuple[int, ...], torch.Tensor, list[int], list[tuple[int, ...]]]

__all__ = ["IntegratedGradients", "LayerIntegratedGradients", "NeuronIntegratedGradients", "quadrature",
           "METHODS", "CHUNK_BYTES"]

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
#: Default bound on one chunk's interpolated input (bytes); gradients take as much again.
CHUNK_BYTES = 256 * 2**20


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights), float64 [n_steps]: the points in [0, 1] and their weights, as Captum's
    ``approximation_parameters`` defines them (Riemann rules need n_steps > 1). As in Captum, the
    trapezoid rule keeps the step 1/n and halves the end weights (they sum to 1 - 1/n)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    n = int(n_steps)
    if n < 1 or (method != "gausslegendre" and n < 2):
        least = 1 if method == "gausslegendre" else 2
        raise InputError(f"n_steps must be >= {least} for {method}, got {n_steps}")
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (x + 1), 0.5 * w
    weights = np.full(n, 1.0 / n)
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        alphas = np.linspace(0, 1, n)
    elif method == "riemann_left":
        alphas = np.linspace(0, 1 - 1 / n, n)
    elif method == "riemann_right":
        alphas = np.linspace(1 / n, 1, n)
    else:
        alphas = np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    return alphas, weights


# ---------------------------------------------------------------- shared pieces
def _tuple(x):
    return (tuple(x), True) if isinstance(x, (tuple, list)) else ((x,), False)


def _check_inputs(inputs):
    import torch

    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"inputs[{i}] must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[0] != inputs[0].shape[0]:
            raise InputError(f"inputs[{i}] has shape {tuple(x.shape)}; every input needs the same batch "
                             f"size in dimension 0 ({inputs[0].shape[0]})")
        if not x.is_floating_point():
            raise InputError(f"inputs[{i}] must be floating point, got {x.dtype}")


def _baselines(baselines, inputs):
    """Captum's baselines: None (zeros), a scalar, or a tensor broadcastable to the input, per input."""
    import torch

    if baselines is None:
        return tuple(torch.zeros_like(x) for x in inputs)
    bases, _ = _tuple(baselines)
    if len(bases) != len(inputs):
        raise InputError(f"baselines: {len(bases)} given for {len(inputs)} inputs")
    out = []
    for i, (b, x) in enumerate(zip(bases, inputs)):
        if isinstance(b, (int, float)):
            out.append(torch.full_like(x, float(b)))
            continue
        try:
            out.append(torch.broadcast_to(b.to(x.device, x.dtype), x.shape).contiguous())
        except RuntimeError:
            raise InputError(f"baselines[{i}] of shape {tuple(b.shape)} does not broadcast to the input's "
                             f"shape {tuple(x.shape)}") from None
    return tuple(out)


def _prepare(inputs, baselines, method: str, n_steps: int):
    """Captum's argument handling shared by every variant: (inputs as a tuple, whether they were
    one, baselines per input), after checking inputs, baselines, method and n_steps."""
    inputs_t, is_tuple = _tuple(inputs)
    _check_inputs(inputs_t)
    bases = _baselines(baselines, inputs_t)
    quadrature(method, n_steps)
    return inputs_t, is_tuple, bases


def _row_bytes(tensors) -> int:
    """Bytes of one example across ``tensors`` (1 when there are no examples)."""
    return sum(x[0].numel() * x.element_size() for x in tensors) if tensors[0].shape[0] else 1


def _expand_args(args, repeats: int):
    """Captum's expansion of additional forward arguments: tensors repeated along dim 0."""
    import torch

    if args is None:
        return ()
    args, _ = _tuple(args)
    return tuple(a.repeat(repeats, *([1] * (a.dim() - 1))) if isinstance(a, torch.Tensor) else a
                 for a in args)


def _expand_target(target, repeats: int):
    import torch

    if isinstance(target, list):
        return target * repeats
    if isinstance(target, torch.Tensor) and target.numel() > 1:
        return target.repeat(repeats)
    return target


def _select(output, target):
    """Captum's target semantics: one scalar per example."""
    import torch

    n = output.shape[0]
    if target is None:
        if output[0].numel() != 1:
            raise InputError(f"target is needed: the forward function returns {tuple(output.shape[1:])} "
                             "values per example")
        return output.reshape(n)
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        target = int(target.item())
    if isinstance(target, int):
        return output[:, target]
    if isinstance(target, tuple):
        return output[(slice(None), *target)]
    if isinstance(target, torch.Tensor):
        target = target.tolist()
    if isinstance(target, list):
        if len(target) != n:
            raise InputError(f"target: {len(target)} entries for {n} examples")
        if target and isinstance(target[0], tuple):
            return torch.stack([output[(i, *t)] for i, t in enumerate(target)])
        return output[torch.arange(n, device=output.device), torch.as_tensor(target, device=output.device)]
    raise InputError(f"target must be None, an int, a tuple, a list or a tensor, got {type(target).__name__}")


def _steps_per_chunk(n_steps: int, n: int, row_bytes: int, internal_batch_size, chunk_bytes: int) -> int:
    if internal_batch_size is not None:
        if internal_batch_size < 1:
            raise InputError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        return max(1, min(n_steps, internal_batch_size // max(1, n)))
    return max(1, min(n_steps, chunk_bytes // max(1, n * row_bytes)))


def _integrate(points, bases, grads_at, n_steps, method, steps_per_chunk, backend):
    """sum_s w_s * grad(baseline + alpha_s (point - baseline)) * (point - baseline), chunk by chunk.

    points, bases: tuples of tensors [N, ...]; grads_at(scaled_tuple, n_chunk_steps) returns the
    gradients of the per-example outputs w.r.t. each scaled tensor (shape [steps * N, ...], step-major).
    """
    import torch

    alphas, weights = quadrature(method, n_steps)
    n = points[0].shape[0]
    deltas = [(p - b).detach().contiguous() for p, b in zip(points, bases)]
    outs = [torch.zeros((1, n, 1, max(1, d[0].numel()) if n else 1), dtype=d.dtype, device=d.device)
            for d in deltas]
    for s0 in range(0, n_steps, steps_per_chunk):
        a = alphas[s0 : s0 + steps_per_chunk]
        scaled = tuple(torch.cat([b + float(al) * d for al in a]).requires_grad_()
                       for b, d in zip(bases, deltas))
        grads = grads_at(scaled, len(a))
        for g, d, o in zip(grads, deltas, outs):
            if g is None:
                g = torch.zeros_like(d).expand(len(a), *d.shape)
            w = torch.as_tensor(weights[s0 : s0 + len(a)], dtype=d.dtype, device=d.device)
            ig_accumulate(g.detach().reshape(1, len(a), n, 1, -1).contiguous(), w, d.reshape(n, 1, -1), o,
                              reduce_spatial=False, backend=backend)
    return tuple(o.reshape(d.shape) for o, d in zip(outs, deltas))


def _delta(forward, inputs, bases, target, args, attributions):
    """Captum's convergence delta: sum of attributions - (F(inputs) - F(baselines)), per example."""
    import torch

    with torch.no_grad():
        end = _select(forward(*inputs, *_expand_args(args, 1)), target).double()
        start = _select(forward(*bases, *_expand_args(args, 1)), target).double()
    total = sum(a.reshape(a.shape[0], -1).double().sum(1) for a in attributions)
    return total - (end - start)


class _Base:
    """What every variant holds: the function, the kernel backend and the bound on one chunk."""

    def __init__(self, forward_func: Callable, *, backend: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        self.forward_func = forward_func
        self.backend = backend
        self.chunk_bytes = int(chunk_bytes)


class IntegratedGradients(_Base):
    """Captum's ``IntegratedGradients(forward_func)``: attributions of the inputs for a target output.

    Integrated gradients (Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML
    2017) attribute ``F(x) - F(x')`` to the input features as
    ``(x - x') * integral_0^1 dF(x' + a (x - x')) / dx da``, the integral taken by a quadrature of
    ``n_steps`` points. The quadratures, target semantics and convergence delta are Captum's; the
    gradients of a chunk of steps at a time are folded into the result by the fused kernel
    (:func:`~neurcore.attribution.ig_accumulate`), so memory is bounded by the chunk.

    Args:
        forward_func: the model, or any callable taking the input tensors (then the additional
            forward arguments) and returning a tensor whose dimension 0 is the examples.
        backend: the kernel, see :func:`~neurcore.attribution.ig_accumulate`: None picks the CPU or
            CUDA kernel by the tensors' device; ``"triton"`` asks for the Triton one.
        chunk_bytes: bound on one chunk's interpolated inputs, in bytes, when ``internal_batch_size``
            is not given (the gradients take as much again).
    """

    def attribute(self, inputs: TensorOrTuple, baselines: Baselines = None, target: Target = None,
                  additional_forward_args: Any = None, n_steps: int = 50, method: str = "gausslegendre",
                  internal_batch_size: int | None = None, return_convergence_delta: bool = False
                  ) -> TensorOrTuple | tuple[TensorOrTuple, torch.Tensor]:
        """Integrated gradients of ``forward_func``'s ``target`` output with respect to ``inputs``.

        Args:
            inputs: a float tensor [N, ...], or a tuple of them when ``forward_func`` takes several;
                dimension 0 holds the N examples in every input.
            baselines: the reference point x' of each input: None (zeros), a number, or a tensor
                broadcastable to the input's shape; a tuple of those, one per input, when ``inputs``
                is a tuple.
            target: which output is explained, one scalar per example: None (``forward_func``
                returns one value per example), an int or a tuple indexing the output without its
                batch dimension (the same for every example), or a list or tensor of N such indices
                (one per example).
            additional_forward_args: passed to ``forward_func`` after the inputs (a value or a
                tuple); tensors among them are repeated along dimension 0 with the steps.
            n_steps: points of the quadrature (at least 2 for the Riemann rules).
            method: the quadrature, one of :data:`~neurcore.attribution.METHODS`
                (``"gausslegendre"``, ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``,
                ``"riemann_trapezoid"``); see :func:`~neurcore.attribution.quadrature`.
            internal_batch_size: examples per forward pass (steps x N), as in Captum; None bounds a
                chunk of steps by ``chunk_bytes`` instead.
            return_convergence_delta: also return Captum's convergence delta.

        Returns:
            The attributions, a tensor (or tuple of tensors, like ``inputs``) of the inputs' shapes
            and dtypes; with ``return_convergence_delta``, the pair (attributions, delta), delta
            float64 [N]: the sum of each example's attributions minus
            ``F(input) - F(baseline)`` at the target (near 0 when the quadrature is accurate).
        """
        inputs_t, is_tuple, bases = _prepare(inputs, baselines, method, n_steps)
        steps = _steps_per_chunk(n_steps, inputs_t[0].shape[0], _row_bytes(inputs_t), internal_batch_size,
                                 self.chunk_bytes)
        grads_at = self._input_gradients(target, additional_forward_args)
        attr = _integrate(inputs_t, bases, grads_at, n_steps, method, steps, self.backend)
        result = attr if is_tuple else attr[0]
        if return_convergence_delta:
            return result, _delta(self.forward_func, inputs_t, bases, target, additional_forward_args, attr)
        return result

    def _input_gradients(self, target, additional_forward_args) -> Callable:
        """grads_at(scaled, k) for :func:`_integrate`: gradients of the target outputs at k steps."""
        import torch

        def grads_at(scaled, k):
            with torch.enable_grad():
                out = _select(self.forward_func(*scaled, *_expand_args(additional_forward_args, k)),
                              _expand_target(target, k))
                return torch.autograd.grad(out.sum(), scaled, allow_unused=True)

        return grads_at


def _layer_module(forward_func, layer):
    import torch

    if isinstance(layer, torch.nn.Module):
        return layer
    if isinstance(layer, str) and isinstance(forward_func, torch.nn.Module):
        return resolve_layer(forward_func, layer)
    raise InputError("layer must be a torch.nn.Module (or a dotted name when forward_func is a module)")


def _layer_output(layer, fn):
    """Run fn() and return what ``layer`` output during it (a tensor)."""
    import torch

    seen = {}

    def keep(_m, _i, out):
        seen["out"] = out

    handle = layer.register_forward_hook(keep)
    try:
        fn()
    finally:
        handle.remove()
    if "out" not in seen:
        raise InputError("the layer was not called by the forward function")
    if not isinstance(seen["out"], torch.Tensor):
        raise InputError(f"the layer's output must be a tensor, got {type(seen['out']).__name__}")
    return seen["out"]


class LayerIntegratedGradients(_Base):
    """Captum's ``LayerIntegratedGradients(forward_func, layer)``: attributions of ``layer``'s output.

    The layer's output is integrated from its value at the baselines to its value at the inputs
    (Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017): during the
    integration a forward hook replaces the layer's output by the interpolated one, so the
    attributions explain the target through that layer.

    Args:
        forward_func: the model, or a callable taking the inputs (then the additional forward
            arguments) and returning a tensor whose dimension 0 is the examples.
        layer: a ``torch.nn.Module`` that ``forward_func`` calls once per forward pass, with one
            tensor output, or its dotted name when ``forward_func`` is a module.
        backend, chunk_bytes: as for :class:`IntegratedGradients`.
    """

    def __init__(self, forward_func: Callable, layer: torch.nn.Module | str, *, backend: str | None = None,
                 chunk_bytes: int = CHUNK_BYTES):
        super().__init__(forward_func, backend=backend, chunk_bytes=chunk_bytes)
        self.layer = _layer_module(forward_func, layer)

    def attribute(self, inputs: TensorOrTuple, baselines: Baselines = None, target: Target = None,
                  additional_forward_args: Any = None, n_steps: int = 50, method: str = "gausslegendre",
                  internal_batch_size: int | None = None,
                  return_convergence_delta: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Integrated gradients of the ``target`` output with respect to ``layer``'s output.

        Args:
            inputs: a float tensor [N, ...], or a tuple of them; dimension 0 holds the N examples.
            baselines: the inputs' reference points, as for :meth:`IntegratedGradients.attribute`;
                the layer's output at them is the start of the path.
            target: which output is explained, as for :meth:`IntegratedGradients.attribute`.
            additional_forward_args: passed to ``forward_func`` after the inputs; tensors among
                them are repeated along dimension 0 with the steps.
            n_steps, method: the quadrature (see :func:`~neurcore.attribution.quadrature`).
            internal_batch_size: examples per forward pass (steps x N); None bounds a chunk of
                steps by ``chunk_bytes``.
            return_convergence_delta: also return Captum's convergence delta.

        Returns:
            The attributions, a tensor of the layer output's shape [N, ...] and dtype (one tensor,
            also when ``inputs`` is a tuple); with ``return_convergence_delta``, the pair
            (attributions, delta), delta float64 [N]: the sum of each example's attributions minus
            ``F(input) - F(baseline)`` at the target.
        """
        import torch

        inputs_t, _, bases = _prepare(inputs, baselines, method, n_steps)
        args = _expand_args(additional_forward_args, 1)
        with torch.no_grad():
            at_input = _layer_output(self.layer, lambda: self.forward_func(*inputs_t, *args)).detach()
            at_base = _layer_output(self.layer, lambda: self.forward_func(*bases, *args)).detach()
        steps = _steps_per_chunk(n_steps, inputs_t[0].shape[0], _row_bytes((at_input, *inputs_t)),
                                 internal_batch_size, self.chunk_bytes)
        grads_at = self._layer_gradients(inputs_t, target, additional_forward_args)
        (attr,) = _integrate((at_input,), (at_base,), grads_at, n_steps, method, steps, self.backend)
        if return_convergence_delta:
            return attr, _delta(self.forward_func, inputs_t, bases, target, additional_forward_args, (attr,))
        return attr

    def _layer_gradients(self, inputs_t, target, additional_forward_args) -> Callable:
        """grads_at(scaled, k) for :func:`_integrate`: the inputs run k times with the layer's output
        replaced by the k interpolated ones; gradients of the target outputs with respect to them."""
        import torch

        def grads_at(scaled, k):
            (acts,) = scaled
            expanded = tuple(x.repeat(k, *([1] * (x.dim() - 1))) for x in inputs_t)
            handle = self.layer.register_forward_hook(lambda _m, _i, _o: acts)
            try:
                with torch.enable_grad():
                    out = _select(self.forward_func(*expanded, *_expand_args(additional_forward_args, k)),
                                  _expand_target(target, k))
                    return torch.autograd.grad(out.sum(), scaled, allow_unused=True)
            finally:
                handle.remove()

        return grads_at


class NeuronIntegratedGradients(_Base):
    """Captum's ``NeuronIntegratedGradients(forward_func, layer)``: attributions of the inputs for one
    neuron of ``layer`` (Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017).

    Args:
        forward_func: the model, or a callable taking the inputs (then the additional forward
            arguments).
        layer: a ``torch.nn.Module`` that ``forward_func`` calls, with one tensor output, or its
            dotted name when ``forward_func`` is a module.
        backend, chunk_bytes: as for :class:`IntegratedGradients`.
    """

    def __init__(self, forward_func: Callable, layer: torch.nn.Module | str, *, backend: str | None = None,
                 chunk_bytes: int = CHUNK_BYTES):
        super().__init__(forward_func, backend=backend, chunk_bytes=chunk_bytes)
        self.layer = _layer_module(forward_func, layer)

    def attribute(self, inputs: TensorOrTuple,
                  neuron_selector: int | tuple[int, ...] | Callable[[torch.Tensor], torch.Tensor],
                  baselines: Baselines = None, additional_forward_args: Any = None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: int | None = None) -> TensorOrTuple:
        """Integrated gradients of one neuron of ``layer`` with respect to ``inputs``.

        Args:
            inputs: a float tensor [N, ...], or a tuple of them; dimension 0 holds the N examples.
            neuron_selector: the neuron, an int or a tuple indexing the layer's output without its
                batch dimension, or a callable from the layer's output [N, ...] to N values.
            baselines: the inputs' reference points, as for :meth:`IntegratedGradients.attribute`.
            additional_forward_args: passed to ``forward_func`` after the inputs; tensors among
                them are repeated along dimension 0 with the steps.
            n_steps, method: the quadrature (see :func:`~neurcore.attribution.quadrature`).
            internal_batch_size: examples per forward pass (steps x N); None bounds a chunk of
                steps by ``chunk_bytes``.

        Returns:
            The attributions, a tensor (or tuple of tensors, like ``inputs``) of the inputs' shapes
            and dtypes. There is no convergence delta (as in Captum).
        """
        inputs_t, is_tuple, bases = _prepare(inputs, baselines, method, n_steps)
        steps = _steps_per_chunk(n_steps, inputs_t[0].shape[0], _row_bytes(inputs_t), internal_batch_size,
                                 self.chunk_bytes)
        grads_at = self._neuron_gradients(neuron_selector, additional_forward_args)
        attr = _integrate(inputs_t, bases, grads_at, n_steps, method, steps, self.backend)
        return attr if is_tuple else attr[0]

    def _neuron_gradients(self, neuron_selector, additional_forward_args) -> Callable:
        """grads_at(scaled, k) for :func:`_integrate`: gradients of the selected neuron at k steps."""
        import torch

        def neuron(out):
            if callable(neuron_selector):
                return neuron_selector(out)
            index = neuron_selector if isinstance(neuron_selector, tuple) else (neuron_selector,)
            return out[(slice(None), *index)]

        def grads_at(scaled, k):
            with torch.enable_grad():
                out = _layer_output(self.layer, lambda: self.forward_func(
                    *scaled, *_expand_args(additional_forward_args, k)))
                return torch.autograd.grad(neuron(out).sum(), scaled, allow_unused=True)

        return grads_at
