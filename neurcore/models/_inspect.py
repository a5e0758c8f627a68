"""The layers of a model as a table: every named submodule with its output shape and unit count."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ._layers import as_maps, block_outputs, hooked
from ._spec import ModelSpec

__all__ = ["LayerInfo", "layer_table"]


@dataclass(frozen=True)
class LayerInfo:
    """One named submodule after a forward pass. name: dotted path; type: the module's class name;
    shape: its output's shape (a tuple or list output: its first element's), None when the module did
    not run or gave no tensor; units: the channels dissection sees, ``as_maps(output).shape[1]``, None
    where the output is not maps; block: whether ``--layer all`` picks it (:func:`block_outputs`)."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    units: int | None
    block: bool

    def as_dict(self) -> dict:
        """The row as JSON-ready values: name, type, shape (list or None), units, block."""
        return {"name": self.name, "type": self.type, "shape": list(self.shape) if self.shape else None,
                "units": self.units, "block": self.block}


def layer_table(spec: ModelSpec, *, depth: int | None = None) -> list[LayerInfo]:
    """Every named submodule of ``spec.module`` in model order, to ``depth`` dotted segments (None: all),
    with its output on one forward pass of a zero batch float32 [1, 3, S, S], S = ``spec.input_size``
    (in eval mode, without gradients). A forward pass that fails (an input size the model cannot take)
    is an InputError."""
    import torch

    module = spec.module
    types = {n: type(m).__name__ for n, m in module.named_modules() if n}
    names = [n for n in types if depth is None or n.count(".") < depth]
    try:
        blocks = set(block_outputs(module))
    except InputError:  # no blocks and no conv stages: nothing is picked by --layer all
        blocks = set()
    param = next(module.parameters(), None)
    x = torch.zeros(1, 3, spec.input_size, spec.input_size,
                    device=param.device if param is not None else "cpu")
    training = module.training
    module.eval()
    try:
        with torch.no_grad(), hooked(module, names) as outputs:
            module(x)
    except (RuntimeError, AssertionError) as exc:  # shape errors of torch and the asserts of timm
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{spec.name}: a forward pass at input size {spec.input_size} failed: {first}") \
            from None
    finally:
        module.train(training)
    return [LayerInfo(n, types[n], *_shape_and_units(outputs.get(n)), block=n in blocks) for n in names]


def _shape_and_units(out: object) -> tuple[tuple[int, ...] | None, int | None]:
    """(shape, units) of one hooked output."""
    import torch

    first = out[0] if isinstance(out, (tuple, list)) and out else out
    if not isinstance(first, torch.Tensor):
        return None, None
    try:
        units = int(as_maps(first).shape[1])
    except InputError:
        units = None
    return tuple(first.shape), units
