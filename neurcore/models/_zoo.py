"""Models by name: the embedded default models and torchvision classifiers (weights from a local file)."""

from __future__ import annotations

import os

from ..errors import InputError
from ._default import default_model, planted_circuit_model
from ._spec import ModelSpec

__all__ = ["TORCHVISION_MODELS", "load_model"]

TORCHVISION_MODELS = ("resnet18", "resnet50", "vit_b_16")


def load_model(name: str, weights: str | None = None, *, progress: bool = True) -> ModelSpec:
    """``default`` (trained and cached on first use) or a torchvision model by name.

    weights: a local state-dict file (``torch.save(model.state_dict())``);
    without it torchvision models keep random weights, seeded so that every run draws the same.
    """
    if name in ("default", "default-circuit"):
        if weights:
            raise InputError("--weights: the default model brings its own weights")
        spec = default_model(progress=progress)
        return planted_circuit_model(spec) if name == "default-circuit" else spec
    if name not in TORCHVISION_MODELS:
        raise InputError(f"model {name!r}: expected default, default-circuit or one of "
                         f"{', '.join(TORCHVISION_MODELS)}")
    import torch
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(0)  # random weights, but the same in every run (resumes must agree)
        module = torchvision.models.get_model(name, weights=None)
    if weights:
        if not os.path.isfile(weights):
            raise InputError(f"{weights}: no such weights file")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a bad file
            raise InputError(f"{weights}: not a readable torch state dict ({exc})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(f"{weights}: does not fit {name}: {first}") from None
    module.eval()
    return ModelSpec(module=module, name=name, input_size=224)
