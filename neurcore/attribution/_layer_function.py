"""The function between two layers of a model, cut out with ``torch.fx``, and its restriction to a
few output channels (which removes most of the backward pass's work in NeurFlow's importance)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

from ..errors import InputError
from ..models import resolve_layer

if TYPE_CHECKING:
    import torch
    import torch.fx

__all__ = ["layer_function", "restrict_output"]


def _resolve_name(model, layer) -> str | None:
    if layer is None or layer == "":
        return None
    if not isinstance(layer, str):
        raise InputError(f"layers are named by dotted paths, got {type(layer).__name__}")
    resolve_layer(model, layer)
    return layer


def layer_function(model: torch.nn.Module, lower: str, upper: str | None = None) -> torch.fx.GraphModule:
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


_CHANNELWISE = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "ELU", "Hardswish",
                "Identity", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Dropout", "Dropout2d")


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
    body = [nn.Sequential(getattr(block, f"conv{k}"), getattr(block, f"bn{k}"), block.relu)
            for k in range(1, last)]
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
        return rows_of(nn.Conv2d(module.in_channels, len(idx), module.kernel_size, module.stride,
                                 module.padding, module.dilation, 1, module.bias is not None,
                                 module.padding_mode))
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


def restrict_output(net: torch.nn.Module, channels: Sequence[int]) -> torch.fx.GraphModule | None:
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
