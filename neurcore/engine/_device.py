"""Where mask arrays live: numpy on the host, or torch tensors on a CUDA device.

The engine's one device helper: every module that must tell the two apart asks here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["is_torch", "device_of", "to_host"]


def is_torch(x: object) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch)."""
    return type(x).__module__.split(".")[0] == "torch"


def device_of(x: np.ndarray | torch.Tensor) -> str:
    """"cpu" for numpy arrays, else the tensor's device as a string ("cuda:0")."""
    return str(x.device) if is_torch(x) else "cpu"


def to_host(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """x itself if numpy, else a host copy as numpy (used for small index arrays and counts)."""
    return x.detach().cpu().numpy() if is_torch(x) else x
