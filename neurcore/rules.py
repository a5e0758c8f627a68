"""Rule search over concepts: Network Dissection and compositional beam search.

Both score every unit of a layer at once from intersection counts (SPEC.md,
"Why counts are enough"). For unit masks A, beam formulas F and concepts C,
``intersect_counts`` gives |F∧C| and |(F∧A)∧C| for all pairs, and

- F AND C:     I = |F∧C∧A|,                 U = |F∧C| + |A| − I
- F OR C:      I = |F∧A| + |C∧A| − |F∧C∧A|, U = |F| + |C| − |F∧C| + |A| − I
- F AND NOT C: I = |F∧A| − |F∧C∧A|,         U = |F| − |F∧C| + |A| − I

with IoU = I / U (0 when U = 0). No mask is built per candidate; only the
formulas kept in the beam are materialized.

Network Dissection: Bau et al., CVPR 2017. Compositional explanations:
Mu & Andreas, NeurIPS 2020 (https://arxiv.org/abs/2006.14032), whose
``vision/dissection/neuron.py`` this beam search reproduces.
"""

from __future__ import annotations

import numpy as np

from . import _ops
from ._bitmasks import BitMasks
from ._ops import intersect_counts
from .formula import And, AndNot, Formula, Leaf, Or
from .results import Explanation

__all__ = [
    "ConceptSet",
    "NetworkDissection",
    "BeamSearch",
    "search",
    "candidate_counts",
    "OPERATORS",
    "DETECTOR_THRESHOLD",
]

#: Operators of the beam search, in compexp's order of generation.
OPERATORS = ("OR", "AND", "AND NOT")
_NODE = {"OR": Or, "AND": And, "AND NOT": AndNot}
#: NetDissect's SCORE_THRESHOLD: a unit detects its best concept when IoU > 0.04.
DETECTOR_THRESHOLD = 0.04


class ConceptSet:
    """Concept masks (``BitMasks``, one row per concept) with unique names and optional categories."""

    def __init__(self, masks: BitMasks, names, categories=None):
        if not isinstance(masks, BitMasks):
            raise TypeError(f"ConceptSet: masks must be a BitMasks, got {type(masks).__name__}")
        names = [str(n) for n in names]
        if len(names) != masks.n:
            raise ValueError(f"ConceptSet: {len(names)} names for {masks.n} concept masks")
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            if n in seen:
                raise ValueError(f"ConceptSet: duplicate concept name {n!r} (concepts {seen[n]} and {i})")
            seen[n] = i
        if categories is not None:
            categories = [str(c) for c in categories]
            if len(categories) != masks.n:
                raise ValueError(f"ConceptSet: {len(categories)} categories for {masks.n} concept masks")
        self.masks, self.names, self.categories, self.index = masks, names, categories, seen

    @property
    def n(self) -> int:
        return self.masks.n

    def evaluate(self, formula: Formula | str) -> BitMasks:
        """The mask of a formula (object or string) as a one-row BitMasks."""
        from .formula import parse

        return (parse(formula) if isinstance(formula, str) else formula).evaluate(self.masks, self.index)

    def to(self, device) -> "ConceptSet":
        return ConceptSet(self.masks.to(device), self.names, self.categories)


def candidate_counts(op: str, f, fa, c, ca, fc, fca, a):
    """(intersection, union) of ``F op C`` with the unit mask A, from counts (broadcasting arrays).

    f = |F|, fa = |F∧A|, c = |C|, ca = |C∧A|, fc = |F∧C|, fca = |F∧C∧A|, a = |A|.
    """
    if op == "AND":
        inter = fca
        union = fc + a - inter
    elif op == "OR":
        inter = fa + ca - fca
        union = f + c - fc + a - inter
    elif op == "AND NOT":
        inter = fa - fca
        union = f - fc + a - inter
    else:
        raise ValueError(f"op: expected one of {OPERATORS}, got {op!r}")
    return inter, union


def _iou(inter, union):
    inter, union = np.asarray(inter, dtype=np.float64), np.asarray(union, dtype=np.float64)
    return np.divide(inter, union, out=np.zeros(np.broadcast(inter, union).shape), where=union > 0)


def _host(x) -> np.ndarray:
    return np.asarray(_ops.to_host(x))


def _check_units(units: BitMasks, concepts: ConceptSet) -> None:
    if not isinstance(units, BitMasks):
        raise TypeError(f"units must be a BitMasks, got {type(units).__name__}")
    if not isinstance(concepts, ConceptSet):
        raise TypeError(f"concepts must be a ConceptSet, got {type(concepts).__name__}")
    _ops.check_pair("rule search", units, concepts.masks, ("the unit masks", "the concept masks"))


def _coverage_metrics(units: BitMasks, f_rows: BitMasks, fa_rows: BitMasks):
    """Per row: sample coverage and explanation coverage from per-image counts."""
    a_img = _host(units.count(per_image=True)) > 0
    f_img = _host(f_rows.count(per_image=True)) > 0
    fa_img = _host(fa_rows.count(per_image=True)) > 0
    hit = fa_img.sum(1)
    return _iou(hit, f_img.sum(1)), _iou(hit, a_img.sum(1))


def _explanations(method, units, concepts, formulas, f_rows, fa_rows, a_cnt, beams=None, layer=None):
    """Explanation records for the best formula of each unit (None where there is none)."""
    f_cnt, fa_cnt = _host(f_rows.count()), _host(fa_rows.count())
    union = f_cnt + a_cnt - fa_cnt
    sample_cov, expl_cov = _coverage_metrics(units, f_rows, fa_rows)
    out = []
    for u, formula in enumerate(formulas):
        if formula is None:
            out.append(Explanation(unit=u, method=method, formula=None, iou=0.0, layer=layer,
                                   counts={"unit": int(a_cnt[u])}, beam=[]))
            continue
        inter, uni = int(fa_cnt[u]), int(union[u])
        iou = float(_iou(inter, uni))
        cats = [concepts.categories[concepts.index[n]] for n in formula.leaves()] if concepts.categories else None
        out.append(Explanation(
            unit=u, method=method, formula=str(formula), iou=iou, length=len(formula), layer=layer,
            categories=cats,
            counts={"unit": int(a_cnt[u]), "formula": int(f_cnt[u]), "intersection": inter, "union": uni},
            metrics={"iou": iou, "activation_coverage": float(_iou(inter, a_cnt[u])),
                     "detection_accuracy": float(_iou(inter, f_cnt[u])),
                     "sample_coverage": float(sample_cov[u]), "explanation_coverage": float(expl_cov[u])},
            beam=[] if beams is None else beams[u],
        ))
    return out


class NetworkDissection:
    """Best single concept per unit by IoU (Bau et al. 2017), all units against all concepts at once.

    >>> NetworkDissection(concepts).explain(units, threshold=0.04)
    """

    def __init__(self, concepts: ConceptSet):
        self.concepts = concepts

    def explain(self, units: BitMasks, *, threshold: float = DETECTOR_THRESHOLD, category: str | None = None,
                layer: str | None = None) -> list[Explanation]:
        """One Explanation per unit (row of ``units``, masks over the concepts' sample space).

        threshold: a unit is a detector of its best concept when IoU > threshold.
        category: consider only concepts of this category (needs categories).
        Ties go to the concept listed first. ``extra["ious"]`` is not stored; the
        full unit x concept IoU matrix comes from :meth:`iou_matrix`.
        """
        concepts = self.concepts
        _check_units(units, concepts)
        iou = self.iou_matrix(units)
        if category is not None:
            if concepts.categories is None:
                raise ValueError("category: this concept set has no categories")
            keep = np.array([c == category for c in concepts.categories])
            if not keep.any():
                raise ValueError(f"category: no concept has category {category!r}; "
                                 f"known: {sorted(set(concepts.categories))}")
            iou = np.where(keep[None, :], iou, -1.0)
        best = iou.argmax(axis=1) if concepts.n else np.zeros(units.n, np.int64)
        a_cnt = _host(units.count())
        formulas = [Leaf(concepts.names[b]) if concepts.n and iou[u, b] > 0 else None for u, b in enumerate(best)]
        rows = concepts.masks[best] if concepts.n else BitMasks.zeros(units.n, units.sample_shape)
        out = _explanations("dissect", units, concepts, formulas, rows, rows & units, a_cnt, layer=layer)
        for r in out:
            r.detector = r.iou > threshold
        return out

    def iou_matrix(self, units: BitMasks) -> np.ndarray:
        """IoU of every unit with every concept -> float64 [units.n, concepts.n]."""
        c = self.concepts.masks
        inter = _host(intersect_counts(units, c))
        a, cc = _host(units.count()), _host(c.count())
        return _iou(inter, a[:, None] + cc[None, :] - inter)


def _ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best finite scores, by score descending then index ascending."""
    finite = np.isfinite(scores)
    if finite.sum() <= k:
        idx = np.flatnonzero(finite)
    else:
        kth = -np.partition(-scores, k - 1)[k - 1]
        idx = np.flatnonzero(finite & (scores >= kth))
    return idx[np.argsort(-scores[idx], kind="stable")][:k]


class BeamSearch:
    """Compositional beam search (Mu & Andreas 2020), every unit of a layer advanced together.

    The first beam is the ``beam`` concepts of highest non-zero IoU. Each of
    the ``length - 1`` later steps scores every beam formula F with every
    concept C and operator (F OR C, F AND C, F AND NOT C), adds the
    candidates to the beam and keeps the best ``beam``. Ties are broken as
    compexp's ordered dictionaries do: formulas already in the beam first,
    then new candidates in order of beam position, concept index, operator
    (OR, AND, AND NOT); a candidate equal to a formula already in the beam
    is not added twice. IoU is I / U exactly (compexp adds 1e-10 to U).
    """

    def __init__(self, concepts: ConceptSet):
        self.concepts = concepts

    def explain(self, units: BitMasks, *, length: int = 3, beam: int = 5, layer: str | None = None,
                memory_budget: int = 1 << 30) -> list[Explanation]:
        """One Explanation per unit, with the final beam and the counts behind the IoU.

        length: maximum formula length (concepts), >= 1. beam: beam width, >= 1
        (compexp's BEAM_SIZE = 5). memory_budget: bytes the materialized beam
        formulas may take; units are searched in batches that fit it (each
        batch reads every concept row once per step). ``extra["candidates"]``
        is the number of candidate formulas scored for the unit.
        """
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        concepts = self.concepts
        _check_units(units, concepts)
        C = concepts.masks
        c_cnt = _host(C.count()).astype(np.int64)
        cc = _host(intersect_counts(C, C)) if length > 1 else None  # |C_i ∧ C_j| for the first step
        batch = self._units_per_batch(units, beam, memory_budget)
        out: list[Explanation] = []
        for start in range(0, units.n, batch):
            part = self._explain_batch(units[start : start + batch], length, beam, layer, c_cnt, cc)
            for r in part:
                r.unit += start
            out.extend(part)
        return out

    def _units_per_batch(self, units: BitMasks, beam: int, budget: int) -> int:
        """Units whose beam rows (F and F AND A per slot) fit in ``budget`` bytes, estimated from the
        mean size of the largest tenth of the concept rows (beam formulas favour common concepts)."""
        C = self.concepts.masks
        if C.layout == "dense" or C.n == 0:
            concept_row = C.n_images * C.words_per_image * 8
        else:
            blocks = np.sort(np.diff(_host(C._indptr)))[::-1][: max(1, C.n // 10)]
            concept_row = float(blocks.mean()) * (C.words_per_image * 8 + 8)
        unit_row = units.nbytes / max(units.n, 1)
        per_unit = beam * (2 * concept_row + unit_row)
        return max(1, int(budget // max(per_unit, 1)))

    def _explain_batch(self, units, length, beam, layer, c_cnt, cc) -> list[Explanation]:
        concepts = self.concepts
        C, names = concepts.masks, concepts.names
        n_u, n_c, B = units.n, concepts.n, beam
        a_cnt = _host(units.count()).astype(np.int64)
        ca = _host(intersect_counts(units, C)).astype(np.int64)  # |C∧A| [n_u, n_c]
        iou1 = _iou(ca, a_cnt[:, None] + c_cnt[None, :] - ca)
        slot_unit = np.repeat(np.arange(n_u), B)                # unit of beam slot u * B + b

        # Beam slot (u, b) holds formulas[u][b]; its mask is row f_idx[slot] of
        # f_src (-1: empty slot) and its mask AND the unit's is row slot of fa.
        formulas: list[list[Formula]] = []
        ious = np.full((n_u, B), -np.inf)
        f_idx = np.full(n_u * B, -1, dtype=np.int64)
        for u in range(n_u):
            top = _ranked(np.where(iou1[u] > 0, iou1[u], -np.inf), B)
            formulas.append([Leaf(names[c]) for c in top])
            ious[u, : len(top)] = iou1[u, top]
            f_idx[u * B : u * B + len(top)] = top
        f_src = C  # first beam: the concept rows themselves, not copied
        fa = _combine_rows("and", C, f_idx, units, np.where(f_idx >= 0, slot_unit, -1))
        scored = np.full(n_u, n_c, dtype=np.int64)

        for step in range(length - 1):
            live = f_idx >= 0
            if step == 0:
                fc = np.where(live[:, None], cc[np.maximum(f_idx, 0)], 0)
                f = np.where(live, c_cnt[np.maximum(f_idx, 0)], 0)
            else:
                fc, f = _host(intersect_counts(f_src, C)), _host(f_src.count())
            fca, fa_cnt = _host(intersect_counts(fa, C)), _host(fa.count())
            cand = np.stack([_iou(*candidate_counts(
                op, f.reshape(n_u, B, 1), fa_cnt.reshape(n_u, B, 1), c_cnt[None, None, :], ca[:, None, :],
                fc.reshape(n_u, B, n_c), fca.reshape(n_u, B, n_c), a_cnt[:, None, None])) for op in OPERATORS],
                axis=-1)  # [n_u, B, n_c, 3], pool order (b, c, op)
            cand[~live.reshape(n_u, B)] = -np.inf
            scored += live.reshape(n_u, B).sum(1) * n_c * len(OPERATORS)
            pool = np.concatenate([ious, cand.reshape(n_u, -1)], axis=1)

            new_formulas, new_ious = [], np.full((n_u, B), -np.inf)
            ops = np.full(n_u * B, OPS_CODE["or"], dtype=np.uint8)  # kept slots: row | nothing = copy
            left, right = np.full(n_u * B, -1, dtype=np.int64), np.full(n_u * B, -1, dtype=np.int64)
            for u in range(n_u):
                old = set(formulas[u])
                kept: list[Formula] = []
                for pos in _ranked(pool[u], 2 * B):
                    slot = u * B + len(kept)
                    if pos < B:
                        formula = formulas[u][pos]
                        left[slot] = f_idx[u * B + pos]
                    else:
                        b, c, o = np.unravel_index(pos - B, (B, n_c, len(OPERATORS)))
                        formula = _NODE[OPERATORS[o]](formulas[u][b], Leaf(names[c]))
                        if formula in old:  # already in the beam, at an earlier position
                            continue
                        ops[slot], left[slot], right[slot] = OPS_CODE[OPERATORS[o]], f_idx[u * B + b], c
                    new_ious[u, len(kept)] = pool[u, pos]
                    kept.append(formula)
                    if len(kept) == B:
                        break
                new_formulas.append(kept)
            f_src = _combine_rows(ops, f_src, left, C, right)
            formulas, ious = new_formulas, new_ious
            f_idx = np.where(np.isfinite(ious.reshape(-1)), np.arange(n_u * B), -1)
            fa = _combine_rows("and", f_src, f_idx, units, np.where(f_idx >= 0, slot_unit, -1))

        best = [fs[0] if fs else None for fs in formulas]
        first_slots = np.arange(n_u) * B
        best_f = _combine_rows("or", f_src, f_idx[first_slots], f_src, np.full(n_u, -1))
        beams = [[{"formula": str(fm), "iou": float(ious[u, k])} for k, fm in enumerate(formulas[u])]
                 for u in range(n_u)]
        out = _explanations("beam", units, concepts, best, best_f, fa[first_slots], a_cnt, beams=beams, layer=layer)
        for r, n in zip(out, scored):
            r.extra["candidates"] = int(n)
        return out


#: Operator codes of the native combine kernel, by name and by formula operator.
OPS_CODE = {**_ops.OPS, "AND": _ops.OPS["and"], "OR": _ops.OPS["or"], "AND NOT": _ops.OPS["and_not"]}


def _combine_rows(ops, left: BitMasks, ia, right: BitMasks, ib) -> BitMasks:
    """Rows ``left[ia[t]] op_t right[ib[t]]`` (index -1: an empty row), one pass.

    ops: an op name for all rows, or uint8 codes (0 and, 1 or, 2 and_not).
    Dense rows go through the native combine kernel with whole rows as
    blocks, so no row is gathered or copied on the way; image-sparse rows
    through BitMasks ops, grouped by operator.
    """
    m = len(ia)
    codes = np.full(m, _ops.OPS[ops], np.uint8) if isinstance(ops, str) else np.asarray(ops, np.uint8)
    shape = left.sample_shape
    if left.layout == right.layout == "dense":
        k = left.n_images * left.words_per_image
        words = _ops.combine_blocks(codes, left._words.reshape(left.n, k), ia, right._words.reshape(right.n, k), ib)
        return BitMasks(shape, words.reshape(m, left.n_images, left.words_per_image), validate=False)
    empty = BitMasks.zeros(1, shape, layout="sparse")
    empty = empty if left.device == "cpu" else empty.to(left.device)
    lx, rx = BitMasks.concat([left, empty]), BitMasks.concat([right, empty])
    ia = np.where(np.asarray(ia) >= 0, ia, left.n)
    ib = np.where(np.asarray(ib) >= 0, ib, right.n)
    parts, order = [], []
    for name, code in _ops.OPS.items():
        sel = np.flatnonzero(codes == code)
        if len(sel):
            parts.append(lx[ia[sel]]._binary(name, rx[ib[sel]]))
            order.append(sel)
    if not parts:
        return BitMasks.zeros(0, shape, layout="sparse")
    return BitMasks.concat(parts)[np.argsort(np.concatenate(order), kind="stable")]


METHODS = ("dissect", "beam", "optimal", "clustered")


def search(units: BitMasks, concepts: ConceptSet, *, method: str = "beam", length: int = 3, beam: int = 5,
           threshold: float = DETECTOR_THRESHOLD, category: str | None = None, layer: str | None = None,
           activations=None, time_budget: float | None = None) -> list[Explanation]:
    """Explain every unit with one method family of rules over concepts.

    method: "dissect" (Network Dissection), "beam" (compositional beam search), "optimal"
    (guaranteed-optimal search, with ``time_budget`` seconds per unit if given) or "clustered"
    (one formula per activation range; needs the raw ``activations`` [n_images, units, h, w], and
    ``units`` may then be None).
    """
    if method == "dissect":
        return NetworkDissection(concepts).explain(units, threshold=threshold, category=category, layer=layer)
    if method == "beam":
        out = BeamSearch(concepts).explain(units, length=length, beam=beam, layer=layer)
    elif method == "optimal":
        from .optimal import OptimalSearch

        out = OptimalSearch(concepts).explain(units, length=length, time_budget=time_budget, layer=layer)
    elif method == "clustered":
        from .clustered import ClusteredSearch

        if activations is None:
            raise ValueError("method 'clustered' needs the units' raw activations, not binary masks")
        out = ClusteredSearch(concepts).explain(activations, length=length, beam=beam, layer=layer)
    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for r in out:
        r.detector = r.iou > threshold
    return out
