"""CLIP-Dissect's ``descriptions.csv`` (Oikarinen & Weng, "CLIP-Dissect: Automatic Description of Neuron
Representations in Deep Vision Networks", ICLR 2023; github.com/Trustworthy-ML-Lab/CLIP-dissect,
``describe_neurons.py``, which saves a pandas frame without index).

Columns ``layer,unit,description,similarity``: one row per unit of each layer, layers in the order
given and units from 0; ``similarity`` is the winning concept's score under the chosen similarity
function (soft WPMI by default). neurcore's own ``clip_dissect.csv`` has the same columns.

Lossy: everything but the label and its similarity (Activation Rate, CoSy, the top concepts, the
similarity function's name and parameters). A unit without a label is written with an empty
description.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._io import atomic_open
from ..results import Explanation
from ._common import bad, fmt, integer, number, read_csv, write_rows

HEADER = ["layer", "unit", "description", "similarity"]


def to_clip_dissect(path: str | os.PathLike, rows: Sequence[Explanation]) -> str:
    """Explanations (label in ``formula``, ``metrics["similarity"]``) as ``descriptions.csv`` at ``path``,
    atomically, by layer (in order of first appearance) then unit; returns the path."""
    layers = list(dict.fromkeys(r.layer for r in rows))
    ordered = sorted(rows, key=lambda r: (layers.index(r.layer), r.unit))
    with atomic_open(path, newline="", encoding="utf-8") as f:
        write_rows(f, HEADER, ([r.layer or "", str(r.unit), r.formula or "", fmt(r.metrics.get("similarity"))]
                               for r in ordered))
    return os.fspath(path)


def from_clip_dissect(path: str | os.PathLike, layer: str | None = None) -> list[Explanation]:
    """The explanations of a CLIP-Dissect ``descriptions.csv``: method ``clip-dissect``, the description
    in ``formula`` (as text, like neurcore's own CLIP-Dissect rows), ``iou`` None, the similarity in
    ``metrics["similarity"]``; only ``layer``'s rows when given."""
    path = os.fspath(path)
    _, rows = read_csv(path, HEADER)
    out = []
    for line, row in rows:
        unit = integer(path, line, "unit", row["unit"])
        if unit < 0:
            raise bad(path, line, "unit", f"{row['unit']!r} is not a unit index (0, 1, ...)")
        sim = number(path, line, "similarity", row["similarity"], empty_ok=True)
        text = row["description"]
        if layer is not None and row["layer"] != layer:
            continue
        out.append(Explanation(unit=unit, method="clip-dissect", formula=text or None, iou=None,
                               length=1 if text else 0, layer=row["layer"] or None,
                               metrics={} if sim is None else {"similarity": sim}))
    return out
