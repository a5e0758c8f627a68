"""Neuronpedia-style explanations, one JSON object per line.

Field names follow Neuronpedia's ``Explanation`` and ``ExplanationScore`` tables
(github.com/hijohnnylin/neuronpedia, ``apps/webapp/prisma/schema.prisma``), which its explanation
exports and API return row by row::

    {"modelId": "default", "layer": "conv4", "index": "12", "description": "(water AND NOT blue)",
     "typeName": "neurcore-beam", "explanationModelName": "neurcore",
     "scores": [{"explanationScoreTypeName": "iou", "explanationScoreModelName": "neurcore",
                 "value": 0.31}, ...]}

``index`` is a string, as Neuronpedia stores it; ``layer`` is neurcore's layer name (Neuronpedia's
is a source id such as ``6-res-jb``); ``modelId`` the run's model; ``typeName`` ``neurcore-<method>``.
``scores`` holds the IoU (type ``iou``) and every numeric metric under its own name
(``activation_rate``, ``cosy_auc``, ``similarity``, ...).

Lossy: units without a formula (Neuronpedia has no empty explanation); pixel counts, categories, the
beam and method-specific fields; the formula's length is recomputed on import where the row has an
IoU (a rule formula), else taken as 1.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from .._io import atomic_open
from ..errors import InputError
from ..results import Explanation
from ..rules.formula import parse
from ._common import bad, json_lines

REQUIRED = ("layer", "index", "description")
KEPT = ("modelId", "typeName", "explanationModelName", "authorId", "notes", "scoreV1", "scoreV2", "id")


def neuronpedia_record(r: Explanation, model_id: str) -> dict:
    """One explanation as a Neuronpedia explanation object (see the module's docstring)."""
    scores = [] if r.iou is None else [("iou", r.iou)]
    scores += [(k, v) for k, v in r.metrics.items()
               if k != "iou" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return {"modelId": model_id, "layer": r.layer or "", "index": str(r.unit), "description": r.formula,
            "typeName": f"neurcore-{r.method}", "explanationModelName": "neurcore",
            "scores": [{"explanationScoreTypeName": k, "explanationScoreModelName": "neurcore",
                        "value": float(v)} for k, v in scores]}


def to_neuronpedia(path: str | os.PathLike, rows: Sequence[Explanation],
                      model_id: str = "neurcore") -> str:
    """Explanations with a formula as Neuronpedia JSONL at ``path``, atomically; returns the path."""
    with atomic_open(path, encoding="utf-8") as f:
        for r in rows:
            if r.formula is not None:
                f.write(json.dumps(neuronpedia_record(r, model_id), allow_nan=False) + "\n")
    return os.fspath(path)


def from_neuronpedia(path: str | os.PathLike, layer: str | None = None) -> list[Explanation]:
    """The explanations of a Neuronpedia JSONL file: method ``neuronpedia``, ``description`` in ``formula``,
    the ``iou`` score in ``iou`` and the other scores in ``metrics``, ``modelId``, ``typeName`` and
    ``explanationModelName`` in ``extra``; only ``layer``'s rows when given."""
    path = os.fspath(path)
    out = []
    for line, d in json_lines(path):
        if not isinstance(d, dict):
            raise bad(path, line, "json", f"expected an object, got {type(d).__name__}")
        r = _record(path, line, d)
        if layer is None or r.layer == layer:
            out.append(r)
    return out


def _record(path: str, line: int, d: dict) -> Explanation:
    for k in REQUIRED:
        if k not in d:
            raise bad(path, line, k, "missing field")
    index = d["index"]
    whole = isinstance(index, int) and not isinstance(index, bool) and index >= 0
    if not (whole or (isinstance(index, str) and index.isdigit())):
        raise bad(path, line, "index", f"{index!r} is not a unit index (0, 1, ...)")
    if not isinstance(d["description"], str):
        raise bad(path, line, "description", f"expected a string, got {d['description']!r}")
    if not isinstance(d["layer"], str):
        raise bad(path, line, "layer", f"expected a string, got {d['layer']!r}")
    r = Explanation(unit=int(index), method="neuronpedia", formula=d["description"] or None, iou=None,
                    layer=d["layer"] or None, extra={k: d[k] for k in KEPT if k in d})
    scores = d.get("scores", [])
    if not isinstance(scores, list):
        raise bad(path, line, "scores", f"expected a list, got {scores!r}")
    for i, s in enumerate(scores):
        name, value = _score(path, line, i, s)
        if name == "iou":
            r.iou = value
        else:
            r.metrics[name] = value
    r.length = 1 if r.formula else 0
    if r.formula and r.iou is not None:
        try:
            r.length = len(parse(r.formula))
        except InputError:
            pass
    return r


def _score(path: str, line: int, i: int, s) -> tuple[str, float]:
    where = f"scores[{i}]"
    if not isinstance(s, dict):
        raise bad(path, line, where, f"expected an object, got {s!r}")
    name, value = s.get("explanationScoreTypeName"), s.get("value")
    if not isinstance(name, str) or not name:
        raise bad(path, line, f"{where}.explanationScoreTypeName", f"expected a name, got {name!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(path, line, f"{where}.value", f"{value!r} is not a number")
    return name, float(value)
