"""Layers of a ``torch.nn.Module`` by dotted path, hooks that keep their outputs, and outputs as maps."""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from typing import TYPE_CHECKING, Iterator, Sequence

from ..errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_layer", "expand_layers", "block_outputs", "hooked", "as_maps"]


def resolve_layer(module: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule at dotted path ``name``; an unknown name lists close matches."""
    modules = dict(module.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"layer {name!r} not found in the model{hint}")


# Residual and transformer blocks by class name: torchvision's BasicBlock and Bottleneck (ResNets),
# EncoderBlock (ViT), InvertedResidual (MobileNets; timm's EfficientNets), MBConv (torchvision's), timm's
# DepthwiseSeparableConv (EfficientNet's first stage), and the Block / ResBlock / EncoderLayer names of
# timm and most model code.
_BLOCK = re.compile(r"(Block|Bottleneck|EncoderLayer|ResBlock|InvertedResidual|MBConv|"
                    r"DepthwiseSeparableConv)$")


def block_outputs(module: torch.nn.Module) -> list[str]:
    """The layers ``--layer all`` names, in model order: the outermost residual or transformer blocks
    (BasicBlock and Bottleneck of ResNets, the encoder blocks of ViT), else the top-level children that
    hold a convolution (the conv stages of a plain CNN such as the default model). An InputError lists
    the top-level modules when neither is found."""
    import torch.nn as nn

    blocks: list[str] = []
    for name, sub in module.named_modules():
        if name and _BLOCK.search(type(sub).__name__) and not any(name.startswith(b + ".") for b in blocks):
            blocks.append(name)
    if blocks:
        return blocks
    stages = [name for name, sub in module.named_children()
              if any(isinstance(m, nn.modules.conv._ConvNd) for m in sub.modules())]
    if stages:
        return stages
    found = ", ".join(f"{n} ({type(m).__name__})" for n, m in module.named_children()) or "no submodules"
    raise InputError(f"--layer all: no residual or transformer blocks and no convolution stages in the "
                     f"model; its top-level modules are: {found}. Name the layers with --layer")


def expand_layers(module: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    """Layer names from ``patterns``, in order, without repeats: ``all`` (:func:`block_outputs`), a glob
    whose ``*``, ``?`` and ``[...]`` match within one dotted segment (``layer4.*`` is layer4's blocks,
    ``**`` any number of segments), or a dotted name (checked by :func:`resolve_layer`)."""
    names = [n for n, _ in module.named_modules() if n]
    out: list[str] = []
    for pattern in patterns:
        if pattern == "all":
            out += block_outputs(module)
        elif any(ch in pattern for ch in "*?["):
            regex = re.compile(_glob_regex(pattern))
            hits = [n for n in names if regex.fullmatch(n)]
            if not hits:
                close = difflib.get_close_matches(pattern.replace("*", ""), names, n=5, cutoff=0.5)
                hint = f"; layers such as {', '.join(close)}" if close else ""
                raise InputError(f"layer pattern {pattern!r} matches no layer of the model{hint}")
            out += hits
        else:
            resolve_layer(module, pattern)
            out.append(pattern)
    return list(dict.fromkeys(out))


def _glob_regex(pattern: str) -> str:
    """A layer glob as a regex: ``**`` spans dotted segments, ``*`` and ``?`` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(r".+")
            i += 2
        elif pattern[i] in "*?":
            out.append("[^.]*" if pattern[i] == "*" else "[^.]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            j = pattern.index("]", i + 2)
            out.append("[" + pattern[i + 1 : j].replace("!", "^", 1) + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@contextlib.contextmanager
def hooked(module: torch.nn.Module, layers: Sequence[str]) -> Iterator[dict[str, object]]:
    """Forward hooks on ``layers`` (dotted paths) that keep each output; removed on exit."""
    outputs: dict[str, object] = {}
    handles = []
    modules = dict(module.named_modules())  # once: a lookup per layer would be quadratic in the layers
    try:
        for name in layers:
            sub = modules[name] if name in modules and name else resolve_layer(module, name)
            handles.append(sub.register_forward_hook(
                lambda _m, _i, out, name=name: outputs.__setitem__(name, out)))
        yield outputs
    finally:
        for h in handles:
            h.remove()


def as_maps(out: torch.Tensor | tuple | list) -> torch.Tensor:
    """A layer output as spatial maps [B, C, h, w]: conv maps as they are, ViT tokens [B, T, C]
    (T = 1 + s^2 with a class token, or s^2) reshaped to [B, C, s, s], vectors [B, C] as 1 x 1.
    A tuple or list output counts by its first element."""
    import torch

    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise InputError(f"layer output must be a tensor, got {type(out).__name__}")
    if out.dim() == 4:
        return out
    if out.dim() == 2:
        return out[:, :, None, None]
    if out.dim() == 3:
        b, t, c = out.shape
        s = math.isqrt(t)
        if s * s != t:
            s = math.isqrt(t - 1)
            if s * s != t - 1:
                raise InputError(f"layer output of {t} tokens is not a square grid "
                                 "(with or without a class token)")
            out = out[:, 1:]
        return out.reshape(b, s, s, c).permute(0, 3, 1, 2)
    raise InputError(f"layer output has shape {tuple(out.shape)}; expected [B, C, h, w], [B, T, C] or [B, C]")
