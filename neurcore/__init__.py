"""neurcore: explains what the neurons of deep networks have learned, at whole-network scale.

The package follows the path of a run, probe -> activations -> masks -> search -> results -> report:

- :mod:`neurcore.probe`: images with concept masks (the synthetic concept world, Broden, folders).
- :mod:`neurcore.models` and :mod:`neurcore.activations`: a network's layers, its activations over
  the probe (cached on disk), thresholds and binary unit masks.
- :mod:`neurcore.engine`: the mask engine, :class:`BitMasks` and :func:`intersect_counts`
  (``Z[i, j] = |A_i & B_j|``), from which every IoU of a rule over concepts follows; native
  kernels in C++, CUDA and Triton (:func:`backends` says which are usable).
- :mod:`neurcore.rules`: rule search (:class:`NetworkDissection`, :class:`BeamSearch`,
  :class:`OptimalSearch`, :class:`ClusteredSearch`).
- :mod:`neurcore.labels`: vision-language labels (CLIP-Dissect, LinEx, SIEVE) and their verifier.
- :mod:`neurcore.attribution` and :mod:`neurcore.circuits`: integrated gradients with Captum's
  API, NeurFlow and NeuCEPT.
- :mod:`neurcore.results`: one result schema (:class:`Explanation`) for every method;
  :mod:`neurcore.report`: the HTML reports; :mod:`neurcore.pipelines`: the end-to-end runs
  :func:`dissect`, :func:`label`, :func:`circuit` and :func:`compare`; :mod:`neurcore.formats`: the
  field's result files (NetDissect-Lite, compexp, CLIP-Dissect, Neuronpedia), out and in.

``import neurcore`` is fast and does not import torch: the heavy families (attribution, labels,
circuits) and the end-to-end runs load on first use.
"""

from __future__ import annotations

import importlib

from .engine import SPARSE_OCCUPANCY, BitMasks, BitMasksBuilder, intersect_counts, sparse_threshold
from .engine.backends import backends, cpu_level, set_cpu_level, usable_cpu_levels
from .errors import BackendUnavailable, FormulaSyntaxError, InputError, NeurcoreError, ProbeError
from .results import Explanation
from .rules import (
    BeamSearch,
    ClusteredSearch,
    ConceptSet,
    Formula,
    NetworkDissection,
    OptimalSearch,
    parse,
    search,
    search_npz,
)

__version__ = "0.1.0"

#: Entry points that load their family on first use: name -> (module, attribute).
_LAZY = {
    "dissect": ("neurcore.pipelines", "dissect"),
    "label": ("neurcore.pipelines", "label"),
    "circuit": ("neurcore.pipelines", "circuit"),
    "compare": ("neurcore.pipelines", "compare"),
}
#: Subpackages reachable as attributes (``neurcore.labels``) without an explicit import.
_SUBPACKAGES = ("engine", "rules", "probe", "models", "activations", "attribution", "circuits", "labels",
                "pipelines", "report", "results", "errors", "clustering", "testing", "formats")

__all__ = [
    "BitMasks",
    "BitMasksBuilder",
    "SPARSE_OCCUPANCY",
    "sparse_threshold",
    "intersect_counts",
    "Formula",
    "parse",
    "ConceptSet",
    "NetworkDissection",
    "BeamSearch",
    "OptimalSearch",
    "ClusteredSearch",
    "search",
    "search_npz",
    "Explanation",
    "dissect",
    "label",
    "circuit",
    "compare",
    "NeurcoreError",
    "InputError",
    "FormulaSyntaxError",
    "ProbeError",
    "BackendUnavailable",
    "backends",
    "cpu_level",
    "set_cpu_level",
    "usable_cpu_levels",
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"neurcore.{name}")
    raise AttributeError(f"module 'neurcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))
