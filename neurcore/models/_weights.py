"""Weights from a local file into a module: a torch state dict or a ``.safetensors`` file."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["load_weights"]


def load_weights(module: torch.nn.Module, path: str, model_name: str) -> None:
    """Load ``path`` into ``module`` in place: ``.safetensors`` (safetensors.torch.load_file), else a torch
    state dict (``weights_only``; under a "state_dict" key or not; a DataParallel "module." prefix is
    dropped). Every key must match in name and shape; an InputError names the file and the first key that
    does not (``model_name`` names the model)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such weights file")
    state = _read_state(path)
    state = _strip_prefix(state, module.state_dict().keys())
    _check_keys(state, module.state_dict(), path, model_name)
    module.load_state_dict(state)


def _read_state(path: str) -> dict:
    """The file's tensors by name."""
    import torch

    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            from ..errors import BackendUnavailable

            raise BackendUnavailable(f"{path}: reading .safetensors needs safetensors "
                                     "(pip install 'neurcore[torch]')") from None
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own kinds for a bad header
            raise InputError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise InputError(f"{path}: not a readable torch state dict ({_first_line(exc)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict (a dict of tensors by name), got {type(state).__name__}")
    return state


def _strip_prefix(state: dict, model_keys) -> dict:
    """``state`` without DataParallel's ``module.`` prefix, when every key has it and the model's do not."""
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys) and not any(
            k.startswith("module.") for k in model_keys):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _check_keys(state: dict, expected: dict, path: str, model_name: str) -> None:
    """An InputError naming the first key of the model (in model order) that the file lacks or holds in
    another shape, else the first key of the file the model does not have."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape"
    bad = set(missing) | set(reshaped)
    first = next((k for k in expected if k in bad), None)
    if first is None:
        detail = f"unexpected key {unexpected[0]!r}"
    elif first in state:
        detail = (f"key {first!r} has shape {list(state[first].shape)} in the file, "
                  f"{list(expected[first].shape)} in the model")
    else:
        detail = f"missing key {first!r}"
    raise InputError(f"{path}: does not fit {model_name}: {detail} ({counts})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
