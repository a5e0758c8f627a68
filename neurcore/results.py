"""One result schema for every explanation method: one JSON object per unit.

Every method fills the common fields (``unit``, ``method``, ``formula``,
``iou``); the rest is optional, and a method that needs more adds a field
here (with a default) rather than a format of its own. ``formula`` is the
canonical string of :mod:`neurcore.rules.formula` (null when no concept overlaps
the unit at all).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

from ._io import atomic_open

__all__ = ["Explanation", "write_jsonl", "read_jsonl", "write_csv", "CSV_COLUMNS", "planted_summary"]


@dataclass
class Explanation:
    """The explanation of one unit.

    unit: index of the unit in its layer. method: "dissect", "beam", ...
    formula: canonical formula string, or None. iou: its IoU with the unit mask; None where no IoU is
    computed (vision-language labels, scored by Activation Rate and CoSy instead; circuit rows).
    length: concepts in the formula. layer: layer name, when known.
    categories: category of each concept in the formula, when the probe has them.
    detector: Network Dissection's verdict, iou > threshold.
    counts: pixel counts behind the IoU: ``unit`` |A|, ``formula`` |F|,
    ``intersection`` |F and A|, ``union`` |F or A| (iou = intersection / union).
    metrics: ``activation_coverage`` |F and A| / |A|, ``detection_accuracy``
    |F and A| / |F|, ``sample_coverage`` (images where F meets A over images
    with F), ``explanation_coverage`` (same over images with A).
    beam: the final beam, best first: ``[{"formula": str, "iou": float}, ...]``.
    planted: for a planted unit, ``{"formula": its known formula, "iou": that formula's IoU with the
    unit mask, "mask_iou": IoU of the found and planted formulas' masks on the probe, "recovered": the
    planted formula was found (equivalent, or mask_iou >= 0.95), "iou_not_worse": iou >= planted
    iou}`` (:func:`neurcore.rules.planted_recovery`).
    ranges: clustered explanations, one per activation range, lowest first: ``{"range": [lo, hi],
    "formula", "iou", "length", "categories", "counts", "metrics"}``.
    extra: method-specific values that do not deserve a field yet.
    """

    unit: int
    method: str
    formula: str | None
    iou: float | None
    length: int = 0
    layer: str | None = None
    categories: list[str] | None = None
    detector: bool | None = None
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    beam: list[dict[str, Any]] = field(default_factory=list)
    planted: dict[str, Any] | None = None
    ranges: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Every field, as plain dicts and lists (a deep copy)."""
        return asdict(self)

    def to_json(self) -> str:
        """One line of JSON (NaN and infinity are refused, not written)."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Explanation":
        """The Explanation of a dict from :meth:`to_dict`; keys of a newer neurcore land in ``extra``."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:  # written by a newer neurcore: keep what we do not know in extra
            extras = {k: d[k] for k in unknown}
            d = {k: v for k, v in d.items() if k in known}
            d["extra"] = {**d.get("extra", {}), **extras}
        return cls(**d)


def write_jsonl(path: str | os.PathLike, results: Iterable[Explanation]) -> None:
    """Write one JSON object per line, atomically: the file appears whole or not at all."""
    with atomic_open(path) as f:
        for r in results:
            f.write(r.to_json() + "\n")


def read_jsonl(path: str | os.PathLike) -> list[Explanation]:
    """The explanations of a file written by :func:`write_jsonl`, one per non-empty line."""
    with open(path) as f:
        return [Explanation.from_dict(json.loads(line)) for line in f if line.strip()]


CSV_COLUMNS = ["layer", "unit", "method", "formula", "iou", "length", "categories", "detector", "unit_pixels",
               "formula_pixels", "intersection", "union", "activation_coverage", "detection_accuracy",
               "sample_coverage", "explanation_coverage", "planted_formula", "planted_iou",
               "planted_mask_iou", "recovered", "iou_not_worse"]


def planted_summary(results: Iterable[Explanation]) -> str:
    """How many planted units were recovered, in words: exactly (the planted formula found) and by score
    (the explanation found scores at least the planted formula's IoU); "" without planted units."""
    planted = [r.planted for r in results if r.planted]
    if not planted:
        return ""
    n = len(planted)
    exact = sum(bool(p.get("recovered")) for p in planted)
    score = sum(bool(p.get("iou_not_worse")) for p in planted)
    return (f"recovered {exact} of {n} planted units exactly ({100.0 * exact / n:.1f}%); "
            f"{score} of {n} ({100.0 * score / n:.1f}%) scored at least the planted formula's IoU")


def write_csv(path: str | os.PathLike, results: Iterable[Explanation]) -> None:
    """The results as one CSV row per unit (columns ``CSV_COLUMNS``), written atomically."""
    import csv

    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results:
            c, m, p = r.counts, r.metrics, r.planted or {}
            w.writerow([r.layer or "", r.unit, r.method, r.formula or "", "" if r.iou is None else r.iou, r.length,
                        ";".join(r.categories or []), "" if r.detector is None else int(r.detector),
                        c.get("unit", ""), c.get("formula", ""), c.get("intersection", ""),
                        c.get("union", ""), m.get("activation_coverage", ""), m.get("detection_accuracy", ""),
                        m.get("sample_coverage", ""), m.get("explanation_coverage", ""),
                        p.get("formula", ""), p.get("iou", ""), p.get("mask_iou", ""),
                        *("" if k not in p else int(p[k]) for k in ("recovered", "iou_not_worse"))])
