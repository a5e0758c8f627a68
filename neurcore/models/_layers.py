"""Layers of a ``torch.nn.Module`` by dotted path, hooks that keep their outputs, and outputs as maps."""

from __future__ import annotations

import contextlib
import difflib
import math
from typing import TYPE_CHECKING, Iterator, Sequence

from ..errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_layer", "hooked", "as_maps"]


def resolve_layer(module: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule at dotted path ``name``; an unknown name lists close matches."""
    modules = dict(module.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"layer {name!r} not found in the model{hint}")


@contextlib.contextmanager
def hooked(module: torch.nn.Module, layers: Sequence[str]) -> Iterator[dict[str, object]]:
    """Forward hooks on ``layers`` (dotted paths) that keep each output; removed on exit."""
    outputs: dict[str, object] = {}
    handles = []
    try:
        for name in layers:
            sub = resolve_layer(module, name)
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
