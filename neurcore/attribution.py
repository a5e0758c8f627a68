"""Integrated gradients (Sundararajan et al., 2017) with Captum's API, accumulated by a fused kernel.

``IntegratedGradients``, ``LayerIntegratedGradients`` and ``NeuronIntegratedGradients`` take the
same arguments as Captum's classes and return the same values (same quadratures, same target
semantics, same convergence delta). What differs is how the integral is accumulated: gradients
are produced a chunk of interpolation steps at a time and folded into the result by
``neurcore._ig.ig_accumulate`` (one pass over the gradients: step weight, sum over steps, times
input - baseline), so the steps x batch x features product tensor Captum builds never exists and
memory is bounded by the chunk, whatever ``n_steps``.

``LayerToLayerIntegratedGradients`` is the form NeurFlow needs: the importance of every channel of
a lower layer for many channels of an upper layer at once, each upper channel over its own
examples (crops), reduced over space in the same pass. The function between the two layers is
cut out of the model with ``torch.fx`` (:func:`layer_function`); when it ends in a convolution or
linear layer followed by channel-wise operations, or in a torchvision ResNet block, only the target
channels of that layer are computed (:func:`restrict_output`), which removes most of the backward
pass's work.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np

from .errors import InputError

__all__ = ["IntegratedGradients", "LayerIntegratedGradients", "NeuronIntegratedGradients",
           "LayerToLayerIntegratedGradients", "quadrature", "layer_function", "restrict_output", "METHODS"]

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
        raise InputError(f"n_steps must be >= {1 if method == 'gausslegendre' else 2} for {method}, got {n_steps}")
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
    return tuple(a.repeat(repeats, *([1] * (a.dim() - 1))) if isinstance(a, torch.Tensor) else a for a in args)


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
            raise InputError(f"target is needed: the forward function returns {tuple(output.shape[1:])} values "
                             "per example")
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

    from . import _ig

    alphas, weights = quadrature(method, n_steps)
    n = points[0].shape[0]
    deltas = [(p - b).detach().contiguous() for p, b in zip(points, bases)]
    outs = [torch.zeros((1, n, 1, max(1, d[0].numel()) if n else 1), dtype=d.dtype, device=d.device) for d in deltas]
    for s0 in range(0, n_steps, steps_per_chunk):
        a = alphas[s0 : s0 + steps_per_chunk]
        scaled = tuple(torch.cat([b + float(al) * d for al in a]).requires_grad_() for b, d in zip(bases, deltas))
        grads = grads_at(scaled, len(a))
        for g, d, o in zip(grads, deltas, outs):
            if g is None:
                g = torch.zeros_like(d).expand(len(a), *d.shape)
            w = torch.as_tensor(weights[s0 : s0 + len(a)], dtype=d.dtype, device=d.device)
            _ig.ig_accumulate(g.detach().reshape(1, len(a), n, 1, -1).contiguous(), w, d.reshape(n, 1, -1), o,
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
    def __init__(self, forward_func: Callable, *, backend: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        self.forward_func = forward_func
        self.backend = backend
        self.chunk_bytes = int(chunk_bytes)


class IntegratedGradients(_Base):
    """Captum's ``IntegratedGradients(forward_func)``: attributions of the inputs for a target output.

    ``attribute`` returns a tensor (or tuple, like ``inputs``) of the inputs' shapes, and with
    ``return_convergence_delta`` also float64 [N] deltas. ``backend``: None picks the CPU or CUDA
    kernel by device; "triton" asks for the Triton one.
    """

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: int | None = None,
                  return_convergence_delta: bool = False):
        import torch

        inputs_t, is_tuple, bases = _prepare(inputs, baselines, method, n_steps)
        steps = _steps_per_chunk(n_steps, inputs_t[0].shape[0], _row_bytes(inputs_t), internal_batch_size,
                                 self.chunk_bytes)

        def grads_at(scaled, k):
            with torch.enable_grad():
                out = _select(self.forward_func(*scaled, *_expand_args(additional_forward_args, k)),
                              _expand_target(target, k))
                return torch.autograd.grad(out.sum(), scaled, allow_unused=True)

        attr = _integrate(inputs_t, bases, grads_at, n_steps, method, steps, self.backend)
        result = attr if is_tuple else attr[0]
        if return_convergence_delta:
            return result, _delta(self.forward_func, inputs_t, bases, target, additional_forward_args, attr)
        return result


def _layer_module(forward_func, layer):
    import torch

    if isinstance(layer, torch.nn.Module):
        return layer
    if isinstance(layer, str) and isinstance(forward_func, torch.nn.Module):
        from .models import resolve_layer

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
    """Captum's ``LayerIntegratedGradients(forward_func, layer)``: attributions of ``layer``'s
    output, integrated from its value at the baselines to its value at the inputs."""

    def __init__(self, forward_func: Callable, layer, *, backend: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        super().__init__(forward_func, backend=backend, chunk_bytes=chunk_bytes)
        self.layer = _layer_module(forward_func, layer)

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: int | None = None,
                  return_convergence_delta: bool = False):
        import torch

        inputs_t, _, bases = _prepare(inputs, baselines, method, n_steps)
        args = _expand_args(additional_forward_args, 1)
        with torch.no_grad():
            at_input = _layer_output(self.layer, lambda: self.forward_func(*inputs_t, *args)).detach()
            at_base = _layer_output(self.layer, lambda: self.forward_func(*bases, *args)).detach()
        steps = _steps_per_chunk(n_steps, inputs_t[0].shape[0], _row_bytes((at_input, *inputs_t)),
                                 internal_batch_size, self.chunk_bytes)

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

        (attr,) = _integrate((at_input,), (at_base,), grads_at, n_steps, method, steps, self.backend)
        if return_convergence_delta:
            return attr, _delta(self.forward_func, inputs_t, bases, target, additional_forward_args, (attr,))
        return attr


class NeuronIntegratedGradients(_Base):
    """Captum's ``NeuronIntegratedGradients(forward_func, layer)``: attributions of the inputs for one
    neuron of ``layer``, picked by ``neuron_selector`` (an int or tuple indexing the layer's output
    without the batch dimension, or a callable from that output to [N] values)."""

    def __init__(self, forward_func: Callable, layer, *, backend: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        super().__init__(forward_func, backend=backend, chunk_bytes=chunk_bytes)
        self.layer = _layer_module(forward_func, layer)

    def attribute(self, inputs, neuron_selector, baselines=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: int | None = None):
        import torch

        inputs_t, is_tuple, bases = _prepare(inputs, baselines, method, n_steps)
        steps = _steps_per_chunk(n_steps, inputs_t[0].shape[0], _row_bytes(inputs_t), internal_batch_size,
                                 self.chunk_bytes)

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

        attr = _integrate(inputs_t, bases, grads_at, n_steps, method, steps, self.backend)
        return attr if is_tuple else attr[0]


# ------------------------------------------------------------- layer to layer
def _resolve_name(model, layer) -> str | None:
    if layer is None or layer == "":
        return None
    if not isinstance(layer, str):
        raise InputError(f"layers are named by dotted paths, got {type(layer).__name__}")
    from .models import resolve_layer

    resolve_layer(model, layer)
    return layer


def layer_function(model, lower: str, upper: str | None = None):
    """The part of ``model`` from the output of ``lower`` to the output of ``upper`` (None: the
    model's output), as a ``torch.fx.GraphModule`` taking ``lower``'s output.

    Raises InputError when ``upper`` is not computed from ``lower`` alone (not downstream of it,
    or also fed by the input through another path), or when the model cannot be traced.
    """
    import torch.fx as fx

    lower = _resolve_name(model, lower)
    upper = _resolve_name(model, upper)
    if lower is None:
        raise InputError("layer_function: the lower layer must be named")
    leaves = {lower} | ({upper} if upper else set())

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return qualname in leaves or (super().is_leaf_module(m, qualname) and not
                                          any(q.startswith(qualname + ".") for q in leaves))

    try:
        graph = Tracer().trace(model)
    except Exception as err:  # fx raises many kinds on untraceable code
        raise InputError(f"the model cannot be traced with torch.fx to cut out {lower} -> "
                         f"{upper or 'output'}: {err}") from None
    nodes = {n.name: n for n in graph.nodes}
    by_target = {n.target: n for n in graph.nodes if n.op == "call_module"}
    if lower not in by_target:
        raise InputError(f"layer {lower!r} is not called in the model's forward pass")
    lower_node = by_target[lower]
    if upper is None:
        (end,) = [n for n in graph.nodes if n.op == "output"]
        end = end.args[0]
    else:
        if upper not in by_target:
            raise InputError(f"layer {upper!r} is not called in the model's forward pass")
        end = by_target[upper]
    if isinstance(end, (tuple, list)):
        raise InputError("the model returns several outputs; name the upper layer")

    downstream = {lower_node.name}
    for node in graph.nodes:  # topological order
        if any(a.name in downstream for a in node.all_input_nodes):
            downstream.add(node.name)
    if end.name not in downstream:
        raise InputError(f"layer {lower!r} is not upstream of {upper or 'the output'!r}")

    new = fx.Graph()
    env = {lower_node.name: new.placeholder("x")}

    def copy(node):
        if node.name in env:
            return env[node.name]
        if node.op == "placeholder":
            raise InputError(f"layer {upper or 'output'!r} is not a function of layer {lower!r} alone: it "
                             "also depends on the input through another path")
        for arg in node.all_input_nodes:
            copy(arg)
        env[node.name] = new.node_copy(node, lambda a: env[a.name])
        return env[node.name]

    new.output(copy(nodes[end.name]))
    module = fx.GraphModule(model, new)
    module.eval()
    return module


_CHANNELWISE = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "ELU", "Hardswish", "Identity",
                "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Dropout", "Dropout2d")


def _is_residual_block(module) -> bool:
    """torchvision's ResNet ``BasicBlock`` or ``Bottleneck`` (by class and module name, so torchvision
    is not imported): ``relu(bn_last(conv_last(...)) + identity)``, identity = x or downsample(x)."""
    kind = type(module)
    return kind.__module__ == "torchvision.models.resnet" and kind.__name__ in ("BasicBlock", "Bottleneck")


@functools.cache
def _residual_class():  # torch is imported lazily, so the class is built on first use
    import torch
    import torch.nn as nn

    class RestrictedResidual(nn.Module):
        """``relu(head(body(x)) + identity)`` with identity = x[:, idx] or downsample(x): a ResNet
        block whose head (last convolution and batch norm) and downsample compute only ``idx``."""

        def __init__(self, body, head, downsample, relu, idx):
            super().__init__()
            self.body, self.head, self.downsample, self.relu = nn.Sequential(*body), head, downsample, relu
            self.register_buffer("idx", torch.as_tensor(list(idx), dtype=torch.int64,
                                                        device=next(head.parameters()).device))

        def forward(self, x):
            identity = x.index_select(1, self.idx) if self.downsample is None else self.downsample(x)
            return self.relu(self.head(self.body(x)) + identity)

    return RestrictedResidual


def _restricted_residual(block, idx):
    """A torchvision ResNet block computing only output channels ``idx``, or None."""
    import torch.nn as nn

    last = 2 if type(block).__name__ == "BasicBlock" else 3
    head = _restricted_module(nn.Sequential(getattr(block, f"conv{last}"), getattr(block, f"bn{last}")), idx)
    downsample = None if block.downsample is None else _restricted_module(block.downsample, idx)
    if head is None or (block.downsample is not None and downsample is None):
        return None
    body = [nn.Sequential(getattr(block, f"conv{k}"), getattr(block, f"bn{k}"), block.relu) for k in range(1, last)]
    return _residual_class()(body, head, downsample, block.relu, idx).eval()


def _restricted_module(module, channels):
    """``module`` computing only output ``channels``, or None where that is not known to be exact."""
    import torch.nn as nn

    idx = channels

    def rows_of(out):  # ``out`` holding ``module``'s weight and bias rows idx
        out.weight = nn.Parameter(module.weight.detach()[idx], requires_grad=False)
        if module.bias is not None:
            out.bias = nn.Parameter(module.bias.detach()[idx], requires_grad=False)
        return out.to(module.weight.device)

    if isinstance(module, nn.Linear):
        return rows_of(nn.Linear(module.in_features, len(idx), bias=module.bias is not None))
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return rows_of(nn.Conv2d(module.in_channels, len(idx), module.kernel_size, module.stride, module.padding,
                                 module.dilation, 1, module.bias is not None, module.padding_mode))
    if _is_residual_block(module):
        return _restricted_residual(module, idx)
    if isinstance(module, nn.Sequential) and len(module) > 0:
        tail = []
        for i in range(len(module) - 1, -1, -1):
            m = module[i]
            if type(m).__name__ in _CHANNELWISE:
                tail.append(m)
                continue
            if isinstance(m, nn.BatchNorm2d) and not m.training and m.track_running_stats:
                bn = nn.BatchNorm2d(len(idx), m.eps, affine=m.affine).to(m.running_mean.device).eval()
                bn.running_mean.copy_(m.running_mean[idx])
                bn.running_var.copy_(m.running_var[idx])
                if m.affine:
                    bn.weight = nn.Parameter(m.weight.detach()[idx], requires_grad=False)
                    bn.bias = nn.Parameter(m.bias.detach()[idx], requires_grad=False)
                tail.append(bn)
                continue
            head = _restricted_module(m, idx)
            if head is None:
                return None
            return nn.Sequential(*module[:i], head, *reversed(tail))
        return None
    return None


def restrict_output(net, channels: Sequence[int]):
    """A copy of ``net`` (from :func:`layer_function`) whose output holds only ``channels`` (dim 1),
    in that order, computing only those channels of its last convolution or linear layer (or of the
    last convolution and the identity path of a torchvision ResNet block); None when the graph does
    not end in such a layer followed by channel-wise operations, or in such a block."""
    import copy

    import torch.fx as fx

    if not isinstance(net, fx.GraphModule):
        return None
    (out,) = [n for n in net.graph.nodes if n.op == "output"]
    last = out.args[0]
    if not isinstance(last, fx.Node) or last.op != "call_module" or len(last.users) != 1:
        return None
    restricted = _restricted_module(net.get_submodule(last.target), list(channels))
    if restricted is None:
        return None
    clone = fx.GraphModule(net, copy.deepcopy(net.graph))
    (node,) = [n for n in clone.graph.nodes if n.op == "call_module" and n.name == last.name]
    clone.add_submodule(node.target, restricted)
    clone.eval()
    return clone


def _channel_means(y):
    return y.mean(dim=tuple(range(2, y.dim()))) if y.dim() > 2 else y


class LayerToLayerIntegratedGradients:
    """NeurFlow's importance of the channels of a lower layer for channels of an upper layer.

    For each target (upper channel t, its spatial mean) and each of its examples u (rows of the
    lower layer's activations), the integrated gradients of t with respect to the lower activation
    x_u from a zero (or given) baseline, reduced over space in the kernel:

        score[t, j, c] = mean_p (x_u - b_u)[c, p] * sum_s w_s d t / d x[c, p] (b_u + alpha_s (x_u - b_u))

    for u = examples[t, j]. Returned as float [T, k, C_lower]; NeurFlow takes |.| and averages over
    the k examples. Equal to Captum's ``IntegratedGradients(net).attribute(x[examples[t]], target=t)``
    (with net's output averaged over space) averaged over space (tested). All (target, example) pairs are batched
    together; each chunk of pairs computes only its own targets' channels when the upper end of
    the layer function allows it (a last convolution or linear layer, or a ResNet block), and its
    size is bounded by ``chunk_bytes``. The default (None) bounds a chunk's interpolated rows by
    ``AUTO_CHUNK_FRACTION`` of one target's k x n_steps (what one per-neuron Captum call holds at
    once) and by ``CHUNK_BYTES``, so peak memory stays a small fraction of that call's.
    """

    #: With ``chunk_bytes=None``: a chunk holds at most this fraction of one target's k x n_steps rows.
    AUTO_CHUNK_FRACTION = 1 / 8

    def __init__(self, model, lower: str, upper: str | None = None, *, net=None, backend: str | None = None,
                 chunk_bytes: int | None = None, restrict: bool = True):
        self.net = net if net is not None else layer_function(model, lower, upper)
        self.backend = backend
        self.chunk_bytes = None if chunk_bytes is None else int(chunk_bytes)
        self.restrict = restrict

    def attribute(self, lower_activations, targets, examples, baselines=None, n_steps: int = 50,
                  method: str = "gausslegendre"):
        import torch

        x = lower_activations
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            raise InputError("lower_activations must be a float tensor [N, C, ...]")
        targets = torch.as_tensor(targets, dtype=torch.int64).reshape(-1)
        examples = torch.as_tensor(examples, dtype=torch.int64)
        if examples.dim() != 2 or examples.shape[0] != len(targets):
            raise InputError(f"examples must be [T, k] with T = {len(targets)} targets, got {tuple(examples.shape)}")
        if examples.numel() and (examples.min() < 0 or examples.max() >= x.shape[0]):
            raise InputError(f"examples index rows 0..{x.shape[0] - 1} of lower_activations, got "
                             f"{int(examples.min())}..{int(examples.max())}")
        alphas, weights = quadrature(method, n_steps)
        n_t, k = examples.shape
        c = x.shape[1]
        spatial = math.prod(x.shape[2:]) if x.dim() > 2 else 1
        out = torch.zeros((n_t * k, c), dtype=x.dtype, device=x.device)
        if out.numel() == 0:
            return out.reshape(n_t, k, c)
        base = None if baselines is None else torch.broadcast_to(
            torch.as_tensor(baselines, dtype=x.dtype, device=x.device), x.shape[1:])
        pair_target = targets.repeat_interleave(k)
        pair_row = examples.reshape(-1)
        row_bytes = c * spatial * x.element_size()
        # Pairs per chunk and steps per chunk: interpolated rows <= chunk_bytes / row_bytes.
        if self.chunk_bytes is None:
            rows = max(1, min(CHUNK_BYTES // max(1, row_bytes), int(k * n_steps * self.AUTO_CHUNK_FRACTION)))
        else:
            rows = max(1, self.chunk_bytes // max(1, row_bytes))
        pairs_per_chunk = max(1, min(len(pair_row), rows // n_steps if rows >= n_steps else 1))
        steps_per_chunk = max(1, min(n_steps, rows // pairs_per_chunk))
        w_all = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
        from . import _ig

        restricted = {}  # target channels -> the net computing only them, shared by the chunks
        for p0 in range(0, len(pair_row), pairs_per_chunk):
            sel = slice(p0, p0 + pairs_per_chunk)
            tgt = pair_target[sel]
            chunk_targets, column = torch.unique(tgt, return_inverse=True)
            key = tuple(chunk_targets.tolist())
            if self.restrict and key not in restricted:
                restricted[key] = restrict_output(self.net, list(key))
            net = restricted.get(key)
            if net is None:
                net, column = self.net, tgt
            pts = x[pair_row[sel].to(x.device)]
            b = torch.zeros_like(pts) if base is None else base.expand_as(pts)
            delta = (pts - b).contiguous()
            m = len(pts)
            col = column.to(x.device)
            for s0 in range(0, n_steps, steps_per_chunk):
                a = alphas[s0 : s0 + steps_per_chunk]
                scaled = torch.cat([b + float(al) * delta for al in a]).requires_grad_()
                with torch.enable_grad():
                    y = _channel_means(net(scaled))
                    y = y.reshape(len(a), m, -1)[:, torch.arange(m, device=x.device), col]
                    (g,) = torch.autograd.grad(y.sum(), scaled)
                _ig.ig_accumulate(g.reshape(1, len(a), m, c, spatial), w_all[s0 : s0 + len(a)].contiguous(),
                                  delta.reshape(m, c, spatial), out[p0 : p0 + m].view(1, m, c),
                                  reduce_spatial=True, backend=self.backend)
        return (out / spatial).reshape(n_t, k, c)
