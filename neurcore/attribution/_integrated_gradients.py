"""Captum's ``IntegratedGradients``, ``LayerIntegratedGradients`` and ``NeuronIntegratedGradients``,
subclasses of Captum's own, with the integral accumulated by the fused kernel
(:func:`~neurcore.attribution.ig_accumulate`) a chunk of steps at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Union

from ..errors import InputError
from ..models import resolve_layer
from ._integral import as_tuple, baselines_like, check_inputs, integrate, row_bytes, steps_per_chunk
from ._quadrature import CHUNK_BYTES, check_quadrature, quadrature

try:
    import torch
    from captum._utils.common import (
        _expand_additional_forward_args,
        _expand_target,
        _format_additional_forward_args,
        _format_output,
        _run_forward,
    )
    from captum._utils.gradient import construct_neuron_grad_fn
    from captum.attr import IntegratedGradients as CaptumIntegratedGradients
    from captum.attr import LayerIntegratedGradients as CaptumLayerIntegratedGradients
    from captum.attr import NeuronIntegratedGradients as CaptumNeuronIntegratedGradients
    from captum.log import log_usage
except ImportError as err:  # pragma: no cover - exercised only without captum
    raise ImportError("neurcore's IntegratedGradients, LayerIntegratedGradients and "
                      "NeuronIntegratedGradients build on Captum: pip install 'neurcore[torch]' "
                      "(or 'captum>=0.7')") from err

if TYPE_CHECKING:
    #: One tensor, or a tuple of tensors that share dimension 0 (the examples).
    TensorOrTuple = Union[torch.Tensor, tuple[torch.Tensor, ...]]
    #: Captum's baselines: None, a number or a tensor, or a tuple of those, one per input.
    Baselines = Union[None, int, float, torch.Tensor, tuple[Union[int, float, torch.Tensor], ...]]
    #: Captum's target: None, an output index (int or tuple), or one per example (list or tensor).
    Target = Union[None, int, tuple[int, ...], torch.Tensor, list[int], list[tuple[int, ...]]]
    #: A layer: a module, or its dotted name when forward_func is a module.
    LayerLike = Union[torch.nn.Module, str]
    #: What a layer's attributions come as: a tensor, a tuple (layers with several tensors), or a
    #: list of those (a list of layers).
    LayerAttributions = Union[torch.Tensor, tuple[torch.Tensor, ...], list]

__all__ = ["IntegratedGradients", "LayerIntegratedGradients", "NeuronIntegratedGradients"]


class _ArgumentError(InputError, AssertionError):
    """neurcore's InputError for a bad argument, also an AssertionError: what Captum raises there."""


def input_gradients(forward_fn: Callable, inputs: tuple, target_ind: Target = None,
                    additional_forward_args: Any = None) -> tuple:
    """Captum's ``compute_gradients``: gradients of the per-example target outputs with respect to
    ``inputs``; None for an input the output does not use (integrated as zeros)."""
    with torch.autograd.set_grad_enabled(True):
        out = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            raise _ArgumentError("forward_func must return a tensor whose dimension 0 holds the examples")
        if out[0].numel() != 1:
            raise _ArgumentError(f"target is needed: the forward function returns {tuple(out.shape[1:])} "
                             "values per example")
        return torch.autograd.grad(out.sum(), inputs, allow_unused=True)


def _start_point(baselines, inputs_t: tuple, bases: tuple):
    """The baselines as given when Captum's ``compute_convergence_delta`` accepts them (so the delta
    equals the one it computes from them), else their tensors of the inputs' shapes (same values)."""
    def accepted(b, x):
        return isinstance(b, (int, float)) or (
            isinstance(b, torch.Tensor) and b.dim() == x.dim() and b.shape[1:] == x.shape[1:]
            and b.shape[0] in (1, x.shape[0]))

    given = baselines if isinstance(baselines, tuple) else (baselines,)
    ok = baselines is None or (len(given) == len(inputs_t) and all(map(accepted, given, inputs_t)))
    return baselines if ok else bases


def _check_quadrature_and_inputs(inputs, baselines, method: str, n_steps: int) -> tuple:
    """neurcore's argument errors (InputError, AssertionError as in Captum) before Captum's; the
    inputs as a tuple and their full baselines."""
    try:
        inputs_t = as_tuple(inputs)
        check_inputs(inputs_t)
        bases = baselines_like(baselines, inputs_t)
        check_quadrature(method, n_steps)
    except InputError as err:
        raise _ArgumentError(str(err)) from None
    return inputs_t, bases


class IntegratedGradients(CaptumIntegratedGradients):
    """Captum's ``IntegratedGradients(forward_func, multiply_by_inputs=True)``: attributions of the
    inputs for a target output; an instance of Captum's class, usable in Captum's wrappers
    (``NoiseTunnel``) and in place of Captum's class, with Captum's arguments, values and delta.

    Integrated gradients (Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML
    2017) attribute ``F(x) - F(x')`` to the input features as
    ``(x - x') * integral_0^1 dF(x' + a (x - x')) / dx da``, the integral taken by a quadrature of
    ``n_steps`` points. The gradients of a chunk of steps at a time are folded into the result by
    the fused kernel (:func:`~neurcore.attribution.ig_accumulate`), so memory is bounded by the chunk.

    Args:
        forward_func: the model, or any callable taking the input tensors (then the additional
            forward arguments) and returning a tensor whose dimension 0 is the examples.
        multiply_by_inputs: Captum's: True multiplies the path integral by ``x - x'`` (global
            attribution); False returns the integral of the gradients alone (local attribution).
        backend: the kernel, see :func:`~neurcore.attribution.ig_accumulate`: None picks the CPU or
            CUDA kernel by the tensors' device; ``"triton"`` asks for the Triton one. Dtypes other
            than float32/float64 and other devices are summed by torch.
        chunk_bytes: bound on one chunk's interpolated inputs, in bytes, when ``internal_batch_size``
            is not given (the gradients take as much again).

    ``gradient_func`` (Captum's attribute) computes the gradients of one chunk; Captum's layer and
    neuron classes replace it, as they do in Captum.
    """

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True, *, backend: str | None = None,
                 chunk_bytes: int = CHUNK_BYTES):
        super().__init__(forward_func, multiply_by_inputs)
        self.gradient_func = input_gradients
        self.backend = backend
        self.chunk_bytes = int(chunk_bytes)

    @log_usage(part_of_slo=True)
    def attribute(self, inputs: TensorOrTuple, baselines: Baselines = None, target: Target = None,
                  additional_forward_args: Any = None, n_steps: int = 50, method: str = "gausslegendre",
                  internal_batch_size: int | None = None, return_convergence_delta: bool = False
                  ) -> TensorOrTuple | tuple[TensorOrTuple, torch.Tensor]:
        """Integrated gradients of ``forward_func``'s ``target`` output with respect to ``inputs``.

        Args:
            inputs: a tensor [N, ...], or a tuple of them when ``forward_func`` takes several;
                dimension 0 holds the N examples in every input.
            baselines: the reference point x' of each input: None (zeros), a number, or a tensor
                broadcastable to the input's shape (Captum: the input's shape or [1, ...]); a tuple
                of those, one per input, when ``inputs`` is a tuple.
            target: which output is explained, one scalar per example: None (``forward_func``
                returns one value per example), an int or a tuple indexing the output without its
                batch dimension, or a list or tensor of N such indices (one per example).
            additional_forward_args: passed to ``forward_func`` after the inputs (a value or a
                tuple); tensors among them are repeated along dimension 0 with the steps.
            n_steps: points of the quadrature (at least 2 for the Riemann rules).
            method: the quadrature, one of :data:`~neurcore.attribution.METHODS`; see
                :func:`~neurcore.attribution.quadrature`.
            internal_batch_size: examples per forward pass (steps x N), as in Captum; None bounds a
                chunk of steps by ``chunk_bytes`` instead (Captum: all steps at once).
            return_convergence_delta: also return Captum's convergence delta.

        Returns:
            The attributions, a tensor (or tuple of tensors, like ``inputs``) of the inputs' shapes;
            with ``return_convergence_delta``, the pair (attributions, delta), delta [N] in the
            output's dtype: :meth:`compute_convergence_delta`, the sum of each example's
            attributions minus ``F(input) - F(baseline)`` at the target.
        """
        inputs_t, bases = _check_quadrature_and_inputs(inputs, baselines, method, n_steps)
        attributions = self._attribute(inputs_t, bases, target, additional_forward_args, n_steps, method,
                                       internal_batch_size=internal_batch_size)
        result = _format_output(isinstance(inputs, (tuple, list)), attributions)
        if not return_convergence_delta:
            return result
        start = _start_point(baselines, inputs_t, bases)
        delta = self.compute_convergence_delta(attributions, start, inputs_t, target=target,
                                               additional_forward_args=additional_forward_args)
        return result, delta

    def _attribute(self, inputs: tuple, baselines: tuple, target: Target = None,
                   additional_forward_args: Any = None, n_steps: int = 50, method: str = "gausslegendre",
                   step_sizes_and_alphas: tuple | None = None,
                   internal_batch_size: int | None = None) -> tuple:
        """Captum's ``_attribute`` (formatted inputs and baselines, optionally a slice of the
        quadrature as (step sizes, alphas)): the integral, a chunk of steps per forward pass."""
        if step_sizes_and_alphas is None:
            alphas, weights = quadrature(method, n_steps)
        else:
            weights, alphas = step_sizes_and_alphas
        bases = baselines_like(baselines, inputs)
        args = _format_additional_forward_args(additional_forward_args)
        n = inputs[0].shape[0]
        size = row_bytes((*inputs, *(args or ())), n)
        steps = steps_per_chunk(len(alphas), n, size, internal_batch_size, self.chunk_bytes)

        def grads_at(scaled, k):
            expanded = _expand_additional_forward_args(args, k) if args is not None else None
            return self.gradient_func(forward_fn=self.forward_func, inputs=scaled,
                                      target_ind=_expand_target(target, k), additional_forward_args=expanded)

        return integrate(inputs, bases, grads_at, alphas, weights, steps, self.multiplies_by_inputs,
                         self.backend)


def _layer_module(forward_func, layer):
    if isinstance(layer, torch.nn.Module):
        return layer
    if isinstance(layer, str) and isinstance(forward_func, torch.nn.Module):
        return resolve_layer(forward_func, layer)
    raise InputError("layer must be a torch.nn.Module (or a dotted name when forward_func is a module), "
                     f"got {type(layer).__name__}")


class LayerIntegratedGradients(CaptumLayerIntegratedGradients):
    """Captum's ``LayerIntegratedGradients(forward_func, layer, device_ids=None, multiply_by_inputs=True)``:
    attributions of a layer's output (or input) for a target output; an instance of Captum's class.

    The layer's output is integrated from its value at the baselines to its value at the inputs
    (Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017): during the
    integration forward hooks replace the layer's output by the interpolated one. Captum's code runs
    the layers and hooks; the integral is :class:`IntegratedGradients`'s (fused kernel, chunks).

    Args:
        forward_func: the model, or a callable taking the inputs (then the additional forward
            arguments) and returning a tensor whose dimension 0 is the examples.
        layer: a ``torch.nn.Module`` that ``forward_func`` calls once per forward pass (or its dotted
            name when ``forward_func`` is a module), or a list of them: then the attributions are
            a list, one entry per layer.
        device_ids: Captum's: the devices of a ``DataParallel`` forward function.
        multiply_by_inputs: as for :class:`IntegratedGradients` (the factor is the layer's value at
            the inputs minus at the baselines).
        backend, chunk_bytes: as for :class:`IntegratedGradients`.
    """

    def __init__(self, forward_func: Callable, layer: LayerLike | list[LayerLike],
                 device_ids: list[int] | None = None, multiply_by_inputs: bool = True, *,
                 backend: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        layers = ([_layer_module(forward_func, m) for m in layer] if isinstance(layer, list)
                  else _layer_module(forward_func, layer))
        super().__init__(forward_func, layers, device_ids=device_ids, multiply_by_inputs=multiply_by_inputs)
        self.backend = backend
        self.chunk_bytes = int(chunk_bytes)
        self.ig = IntegratedGradients(forward_func, multiply_by_inputs, backend=backend,
                                      chunk_bytes=chunk_bytes)

    @log_usage(part_of_slo=True)
    def attribute(self, inputs: TensorOrTuple, baselines: Baselines = None, target: Target = None,
                  additional_forward_args: Any = None, n_steps: int = 50, method: str = "gausslegendre",
                  internal_batch_size: int | None = None, return_convergence_delta: bool = False,
                  attribute_to_layer_input: bool = False, grad_kwargs: dict[str, Any] | None = None
                  ) -> LayerAttributions | tuple[LayerAttributions, torch.Tensor]:
        """Integrated gradients of the ``target`` output with respect to ``layer``'s output (or input).

        Args:
            inputs: a tensor [N, ...], or a tuple of them; dimension 0 holds the N examples (any
                dtype: integer token ids for an embedding layer are fine).
            baselines: the inputs' reference points, as for :meth:`IntegratedGradients.attribute`;
                the layer's value at them is the start of the path.
            target: which output is explained, as for :meth:`IntegratedGradients.attribute`.
            additional_forward_args: passed to ``forward_func`` after the inputs; tensors among
                them are repeated along dimension 0 with the steps.
            n_steps, method: the quadrature (see :func:`~neurcore.attribution.quadrature`).
            internal_batch_size: examples per forward pass (steps x N); None bounds a chunk of
                steps by ``chunk_bytes``.
            return_convergence_delta: also return Captum's convergence delta.
            attribute_to_layer_input: attribute to the layer's input(s) instead of its output(s).
            grad_kwargs: extra keyword arguments for ``torch.autograd.grad`` (Captum >= 0.8).

        Returns:
            As Captum: for one layer with one tensor, a tensor of its shape [N, ...]; for a layer
            with several tensors, a tuple of them; for a list of layers, a list of those. With
            ``return_convergence_delta``, the pair (attributions, delta), delta [N]: the sum of each
            example's attributions minus ``F(input) - F(baseline)`` at the target.
        """
        inputs_t, bases = _check_quadrature_and_inputs(inputs, baselines, method, n_steps)
        self.ig.backend, self.ig.chunk_bytes = self.backend, self.chunk_bytes
        extra = {} if grad_kwargs is None else {"grad_kwargs": grad_kwargs}
        base_arg = _start_point(baselines, inputs_t, bases)
        return CaptumLayerIntegratedGradients.attribute.__wrapped__(
            self, inputs, base_arg, target=target, additional_forward_args=additional_forward_args,
            n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
            return_convergence_delta=return_convergence_delta,
            attribute_to_layer_input=attribute_to_layer_input, **extra)


class NeuronIntegratedGradients(CaptumNeuronIntegratedGradients):
    """Captum's ``NeuronIntegratedGradients(forward_func, layer, device_ids=None, multiply_by_inputs=True)``:
    attributions of the inputs for one neuron of ``layer`` (Sundararajan, Taly, Yan, "Axiomatic
    Attribution for Deep Networks", ICML 2017); an instance of Captum's class.

    Args:
        forward_func: the model, or a callable taking the inputs (then the additional forward
            arguments).
        layer: a ``torch.nn.Module`` that ``forward_func`` calls, or its dotted name when
            ``forward_func`` is a module.
        device_ids: Captum's: the devices of a ``DataParallel`` forward function.
        multiply_by_inputs: as for :class:`IntegratedGradients`.
        backend, chunk_bytes: as for :class:`IntegratedGradients`.
    """

    def __init__(self, forward_func: Callable, layer: LayerLike, device_ids: list[int] | None = None,
                 multiply_by_inputs: bool = True, *, backend: str | None = None,
                 chunk_bytes: int = CHUNK_BYTES):
        super().__init__(forward_func, _layer_module(forward_func, layer), device_ids, multiply_by_inputs)
        self.backend = backend
        self.chunk_bytes = int(chunk_bytes)

    @log_usage(part_of_slo=True)
    def attribute(self, inputs: TensorOrTuple,
                  neuron_selector: int | tuple[int | slice, ...] | Callable[[Any], torch.Tensor],
                  baselines: Baselines = None, additional_forward_args: Any = None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: int | None = None,
                  attribute_to_neuron_input: bool = False) -> TensorOrTuple:
        """Integrated gradients of one neuron of ``layer`` with respect to ``inputs``.

        Args:
            inputs: a tensor [N, ...], or a tuple of them; dimension 0 holds the N examples.
            neuron_selector: the neuron, as in Captum: an int or a tuple indexing the layer's output
                without its batch dimension (slices in the tuple sum the neurons they cover), or a
                callable from the layer's output [N, ...] (a tuple for several tensors) to N values
                (or their sum).
            baselines: the inputs' reference points, as for :meth:`IntegratedGradients.attribute`.
            additional_forward_args: passed to ``forward_func`` after the inputs; tensors among
                them are repeated along dimension 0 with the steps.
            n_steps, method: the quadrature (see :func:`~neurcore.attribution.quadrature`).
            internal_batch_size: examples per forward pass (steps x N); None bounds a chunk of
                steps by ``chunk_bytes``.
            attribute_to_neuron_input: select the neuron in the layer's input instead of its output.

        Returns:
            The attributions, a tensor (or tuple of tensors, like ``inputs``) of the inputs' shapes.
            There is no convergence delta (as in Captum).
        """
        ig = IntegratedGradients(self.forward_func, self.multiplies_by_inputs, backend=self.backend,
                                 chunk_bytes=self.chunk_bytes)
        ig.gradient_func = construct_neuron_grad_fn(self.layer, neuron_selector, self.device_ids,
                                                    attribute_to_neuron_input)
        return ig.attribute.__wrapped__(ig, inputs, baselines,
                                        additional_forward_args=additional_forward_args, n_steps=n_steps,
                                        method=method, internal_batch_size=internal_batch_size)
