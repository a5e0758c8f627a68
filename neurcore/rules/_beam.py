"""Compositional beam search (Mu & Andreas, "Compositional Explanations of Neurons", NeurIPS 2020,
https://arxiv.org/abs/2006.14032), whose ``vision/dissection/neuron.py`` it reproduces, with every
unit of a layer advanced together and every candidate scored from counts (see ``_counts``)."""

from __future__ import annotations

import numpy as np

from ..engine import BitMasks, combine_rows, intersect_counts
from ..errors import InputError
from ..results import Explanation
from ._concepts import ConceptSet
from ._counts import OP_NODE, OPERATORS, OPS_CODE, candidate_counts, check_units, explanations, host, iou_of
from .formula import Formula, Leaf

__all__ = ["BeamSearch"]


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
    """Compositional beam search (Mu & Andreas, "Compositional Explanations of Neurons", NeurIPS 2020),
    every unit of a layer advanced together.

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
            raise InputError(f"length must be >= 1, got {length}")
        if beam < 1:
            raise InputError(f"beam must be >= 1, got {beam}")
        concepts = self.concepts
        check_units(units, concepts)
        C = concepts.masks
        c_cnt = host(C.count()).astype(np.int64)
        cc = host(intersect_counts(C, C)) if length > 1 else None  # |C_i ∧ C_j| for the first step
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
            blocks = np.sort(np.diff(host(C.layout_arrays()["indptr"])))[::-1][: max(1, C.n // 10)]
            concept_row = float(blocks.mean()) * (C.words_per_image * 8 + 8)
        unit_row = units.nbytes / max(units.n, 1)
        per_unit = beam * (2 * concept_row + unit_row)
        return max(1, int(budget // max(per_unit, 1)))

    def _explain_batch(self, units: BitMasks, length: int, beam: int, layer: str | None, c_cnt: np.ndarray,
                       cc: np.ndarray | None) -> list[Explanation]:
        """Explanations of one batch of units, their beams advanced together step by step.

        Beam slot (u, b) holds formulas[u][b]; its mask is row f_idx[slot] of f_src (-1: empty
        slot) and its mask AND the unit's is row slot of fa.
        """
        C = self.concepts.masks
        n_u, n_c, B = units.n, self.concepts.n, beam
        a_cnt = host(units.count()).astype(np.int64)
        ca = host(intersect_counts(units, C)).astype(np.int64)  # |C∧A| [n_u, n_c]
        slot_unit = np.repeat(np.arange(n_u), B)                # unit of beam slot u * B + b
        formulas, ious, f_idx = self._first_beam(ca, a_cnt, c_cnt, B)
        f_src = C  # first beam: the concept rows themselves, not copied
        fa = combine_rows("and", C, f_idx, units, np.where(f_idx >= 0, slot_unit, -1))
        scored = np.full(n_u, n_c, dtype=np.int64)
        for step in range(length - 1):
            live = f_idx >= 0
            cand = self._extension_ious(f_src if step else None, fa, f_idx, ca, a_cnt, c_cnt, cc, B)
            scored += live.reshape(n_u, B).sum(1) * n_c * len(OPERATORS)
            pool = np.concatenate([ious, cand.reshape(n_u, -1)], axis=1)
            formulas, ious, ops, left, right = self._next_beam(pool, formulas, f_idx, B)
            f_src = combine_rows(ops, f_src, left, C, right)
            f_idx = np.where(np.isfinite(ious.reshape(-1)), np.arange(n_u * B), -1)
            fa = combine_rows("and", f_src, f_idx, units, np.where(f_idx >= 0, slot_unit, -1))
        return self._report(units, formulas, ious, f_src, f_idx, fa, a_cnt, scored, B, layer)

    def _first_beam(self, ca: np.ndarray, a_cnt: np.ndarray, c_cnt: np.ndarray,
                    B: int) -> tuple[list[list[Formula]], np.ndarray, np.ndarray]:
        """Per unit the B concepts of highest non-zero IoU: (formulas, ious [n_u, B] (-inf: empty
        slot), concept row of each slot [n_u * B] (-1: empty))."""
        names = self.concepts.names
        n_u = len(ca)
        iou1 = iou_of(ca, a_cnt[:, None] + c_cnt[None, :] - ca)
        formulas: list[list[Formula]] = []
        ious = np.full((n_u, B), -np.inf)
        f_idx = np.full(n_u * B, -1, dtype=np.int64)
        for u in range(n_u):
            top = _ranked(np.where(iou1[u] > 0, iou1[u], -np.inf), B)
            formulas.append([Leaf(names[c]) for c in top])
            ious[u, : len(top)] = iou1[u, top]
            f_idx[u * B : u * B + len(top)] = top
        return formulas, ious, f_idx

    def _extension_ious(self, f_src: BitMasks | None, fa: BitMasks, f_idx: np.ndarray, ca: np.ndarray,
                        a_cnt: np.ndarray, c_cnt: np.ndarray, cc: np.ndarray | None, B: int) -> np.ndarray:
        """IoU of every F op C for the beam formulas F -> [n_u, B, n_c, 3], pool order (b, c, op);
        -inf for empty slots. f_src None: the first beam, whose |F∧C| are the concept pairs ``cc``."""
        C = self.concepts.masks
        n_u, n_c = len(ca), self.concepts.n
        live = f_idx >= 0
        if f_src is None:
            fc = np.where(live[:, None], cc[np.maximum(f_idx, 0)], 0)
            f = np.where(live, c_cnt[np.maximum(f_idx, 0)], 0)
        else:
            fc, f = host(intersect_counts(f_src, C)), host(f_src.count())
        fca, fa_cnt = host(intersect_counts(fa, C)), host(fa.count())
        cand = np.stack([iou_of(*candidate_counts(
            op, f.reshape(n_u, B, 1), fa_cnt.reshape(n_u, B, 1), c_cnt[None, None, :], ca[:, None, :],
            fc.reshape(n_u, B, n_c), fca.reshape(n_u, B, n_c), a_cnt[:, None, None])) for op in OPERATORS],
            axis=-1)
        cand[~live.reshape(n_u, B)] = -np.inf
        return cand

    def _next_beam(self, pool: np.ndarray, formulas: list[list[Formula]], f_idx: np.ndarray,
                   B: int) -> tuple[list[list[Formula]], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The best B of the old beam and its candidates ``pool`` [n_u, B + B * n_c * 3] per unit:
        (formulas, ious [n_u, B], and the combine plan of the new rows: op codes, left rows of the
        old beam, right concept rows [n_u * B]; kept formulas are copied as row OR nothing)."""
        names = self.concepts.names
        n_u, n_c = len(pool), self.concepts.n
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
                    formula = OP_NODE[OPERATORS[o]](formulas[u][b], Leaf(names[c]))
                    if formula in old:  # already in the beam, at an earlier position
                        continue
                    ops[slot], left[slot], right[slot] = OPS_CODE[OPERATORS[o]], f_idx[u * B + b], c
                new_ious[u, len(kept)] = pool[u, pos]
                kept.append(formula)
                if len(kept) == B:
                    break
            new_formulas.append(kept)
        return new_formulas, new_ious, ops, left, right

    def _report(self, units: BitMasks, formulas: list[list[Formula]], ious: np.ndarray, f_src: BitMasks,
                f_idx: np.ndarray, fa: BitMasks, a_cnt: np.ndarray, scored: np.ndarray, B: int,
                layer: str | None) -> list[Explanation]:
        """One Explanation per unit from its final beam (best formula first)."""
        n_u = units.n
        best = [fs[0] if fs else None for fs in formulas]
        first_slots = np.arange(n_u) * B
        best_f = combine_rows("or", f_src, f_idx[first_slots], f_src, np.full(n_u, -1))
        beams = [[{"formula": str(fm), "iou": float(ious[u, k])} for k, fm in enumerate(formulas[u])]
                 for u in range(n_u)]
        out = explanations("beam", units, self.concepts, best, best_f, fa[first_slots], a_cnt, beams=beams,
                           layer=layer)
        for r, n in zip(out, scored):
            r.extra["candidates"] = int(n)
        return out
