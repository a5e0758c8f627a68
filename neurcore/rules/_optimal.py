"""Guaranteed-optimal compositional explanations by branch and bound over counts.

The space (La Rosa & Gilpin, "Guaranteed Optimal Compositional Explanations for Neurons", 2025):
left-deep formulas of up to ``length`` distinct concepts joined by OR, AND and AND NOT. The
optimum maximizes IoU; ties go to the shorter formula, then to the first in enumeration order: the
smallest tuple (c1, op1, c2, op2, c3, ...) of concept indices and operator
indices (OR 0, AND 1, AND NOT 2).

Every formula of length 1 and 2 is scored exactly from two count matrices,
|C_i ∧ C_j| (shared by all units) and |C_i ∧ C_j ∧ A| per unit. A formula F
of length k < ``length`` is expanded (all F op C scored exactly by two
``intersect_counts`` calls on materialized F rows) only if an admissible
upper bound on its subtree beats the best IoU found:

- children F AND C, F AND NOT C: I <= |F∧A|, U >= |A|, so IoU <= |F∧A| / |A|;
- children F OR C: I <= |F∧A| + m with m = max_C |C∧A|, U >= |F ∪ A|;
- deeper descendants (r operators left): I <= min(|A|, |F∧A| + r m), U >= |A|.

Nodes are expanded best bound first, in batches. The certificate is the
largest bound among the nodes not expanded; when a node or time budget runs
out the result says so (``optimal`` false) with the remaining gap.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from ..engine import BitMasks, combine_rows, intersect_counts
from ..errors import InputError
from ..results import Explanation
from ._concepts import ConceptSet
from ._counts import OPERATORS, OPS_CODE, candidate_counts, check_units, explanations, host, iou_of
from .formula import And, AndNot, Formula, Leaf, Or

__all__ = ["OptimalSearch"]

_NODE = {0: Or, 1: And, 2: AndNot}  # operator index in OPERATORS order
_CODE = np.array([OPS_CODE[op] for op in OPERATORS], np.uint8)  # operator index -> combine kernel code


def _formula(names, leaves, ops) -> Formula:
    f: Formula = Leaf(names[leaves[0]])
    for c, o in zip(leaves[1:], ops):
        f = _NODE[o](f, Leaf(names[c]))
    return f


@dataclass
class _Search:
    """The branch and bound of one unit: counts it scores from, the incumbent, the queue and tallies."""

    CA: BitMasks            # rows C ∧ A
    a: int                  # |A|
    ca: np.ndarray          # |C ∧ A| [n]
    c_cnt: np.ndarray       # |C| [n]
    f2: np.ndarray          # |F| of the length-2 formulas [n, n, 3]
    m: int                  # max_C |C ∧ A|
    length: int
    best: tuple             # (iou, length, key)
    scored: int
    certificate: float = 0.0  # largest bound of a subtree not expanded
    queue: list = field(default_factory=list)  # heap of (-bound, leaves, ops)
    expanded: int = 0


def _settled(scored: int) -> dict:
    """The certificate fields of an exhaustive answer: nothing left unexplored."""
    return {"optimal": True, "certificate": 0.0, "gap": 0.0, "nodes_expanded": 0, "candidates": scored}


def _best_pair(f2: np.ndarray, fa2: np.ndarray, a: int, best: tuple) -> tuple:
    """The incumbent after scoring every length-2 formula (i, j, op), i != j, exactly."""
    n = len(f2)
    iou2 = iou_of(fa2, f2 + a - fa2)
    iou2[np.arange(n), np.arange(n)] = -np.inf
    by_key = iou2.transpose(0, 2, 1)  # enumeration order (i, op, j): argmax takes the first maximum
    k2 = int(np.argmax(by_key))
    if by_key.flat[k2] > best[0]:
        i, o, j = np.unravel_index(k2, by_key.shape)
        best = (float(by_key.flat[k2]), 2, (int(i), int(o), int(j)))
    return best


class OptimalSearch:
    """Best formula of up to ``length`` concepts for every unit, with a certificate of optimality (La Rosa
    & Gilpin, "Guaranteed Optimal Compositional Explanations for Neurons", 2025), by branch and bound
    over intersection counts."""

    #: Largest |F ∧ C| table (length-2 formulas x concepts) kept for all units of a concept set.
    TABLE_LIMIT = 20_000_000

    def __init__(self, concepts: ConceptSet):
        self.concepts = concepts
        self._fc2 = None

    def _pair_table(self) -> np.ndarray | None:
        """|(C_i op C_j) ∧ C_k| for every length-2 formula and concept, [n, 3, n, n] (i, op, j, k),
        computed once per concept set (it does not depend on the unit); None when too large."""
        n = self.concepts.n
        if 3 * n * n * n > self.TABLE_LIMIT:
            return None
        if self._fc2 is None:
            C = self.concepts.masks
            table = np.zeros((n, 3, n, n), np.int64)
            grid = np.meshgrid(np.arange(n), np.arange(3), np.arange(n), indexing="ij")
            ii, oo, jj = (x.reshape(-1) for x in grid)
            for s in range(0, len(ii), 256):
                rows = combine_rows(_CODE[oo[s : s + 256]], C, ii[s : s + 256], C, jj[s : s + 256])
                table[ii[s : s + 256], oo[s : s + 256], jj[s : s + 256]] = host(intersect_counts(rows, C))
            self._fc2 = table
        return self._fc2

    def explain(self, units: BitMasks, *, length: int = 3, max_nodes: int | None = None,
                time_budget: float | None = None, batch: int = 256,
                layer: str | None = None) -> list[Explanation]:
        """One Explanation per unit; ``extra`` holds ``optimal`` (bool), ``certificate`` (the largest
        upper bound among unexpanded subtrees, <= iou when optimal), ``gap``, ``nodes_expanded`` and
        ``candidates`` (formulas scored exactly).

        length: maximum formula length, >= 1. max_nodes / time_budget (seconds): per-unit budget on
        expanded formulas / time; when it runs out the best formula so far is returned with
        ``optimal`` false and the remaining gap.
        """
        if length < 1:
            raise InputError(f"length must be >= 1, got {length}")
        concepts = self.concepts
        check_units(units, concepts)
        C = concepts.masks
        n = concepts.n
        c_cnt = host(C.count()).astype(np.int64)
        cc = host(intersect_counts(C, C)).astype(np.int64) if length > 1 else None
        ca_all = host(intersect_counts(units, C)).astype(np.int64)
        a_all = host(units.count()).astype(np.int64)
        best_formulas, extras = [], []
        for u in range(units.n):
            f, extra = self._unit(units[u], a_all[u], ca_all[u], c_cnt, cc, n, length, max_nodes, time_budget,
                                  batch)
            best_formulas.append(f)
            extras.append(extra)
        rows = [concepts.evaluate(f) if f is not None else BitMasks.zeros(1, units.sample_shape)
                for f in best_formulas]
        f_rows = BitMasks.concat([r.to(units.device) if r.device != units.device else r for r in rows])
        out = explanations("optimal", units, concepts, best_formulas, f_rows, f_rows & units, a_all,
                           layer=layer)
        for r, extra in zip(out, extras):
            r.extra.update(extra)
        return out

    def _unit(self, A: BitMasks, a: int, ca: np.ndarray, c_cnt: np.ndarray, cc: np.ndarray | None, n: int,
              length: int, max_nodes: int | None, time_budget: float | None,
              batch: int) -> tuple[Formula | None, dict]:
        """Best formula and certificate fields for one unit A (|A| = a, |C ∧ A| = ca [n])."""
        names = self.concepts.names
        t0 = time.perf_counter()
        # best = (iou, length, key); key orders formulas of one length by enumeration.
        iou1 = iou_of(ca, c_cnt + a - ca)
        if n == 0 or a == 0 or iou1.max() <= 0:
            return None, _settled(n)
        k1 = int(np.argmax(iou1))
        best = (float(iou1[k1]), 1, (k1,))
        if length == 1:
            return Leaf(names[k1]), _settled(n)
        CA = combine_rows("and", self.concepts.masks, np.arange(n), A, np.zeros(n, np.int64))
        f2, fa2 = self._pair_counts(CA, ca, c_cnt, cc)
        best = _best_pair(f2, fa2, a, best)
        scored = n + n * (n - 1) * 3
        if length == 2:
            return self._result(best, names), _settled(scored)
        search = _Search(CA=CA, a=a, ca=ca, c_cnt=c_cnt, f2=f2, m=int(ca.max()), length=length, best=best,
                         scored=scored)
        self._seed_queue(search, fa2, max_nodes)
        budget_hit = self._branch_and_bound(search, max_nodes, time_budget, batch, t0)
        gap = max(0.0, search.certificate - search.best[0]) if budget_hit else 0.0
        return self._result(search.best, names), {
            "optimal": not budget_hit, "certificate": search.certificate, "gap": gap,
            "nodes_expanded": search.expanded, "candidates": search.scored}

    def _pair_counts(self, CA: BitMasks, ca: np.ndarray, c_cnt: np.ndarray,
                     cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """|F| and |F ∧ A| of every length-2 formula F = C_i op C_j -> two int64 [n, n, 3] (i, j, op)."""
        cca = host(intersect_counts(CA, self.concepts.masks)).astype(np.int64)  # |C_i ∧ C_j ∧ A|
        f2 = np.stack([c_cnt[:, None] + c_cnt[None, :] - cc, cc, c_cnt[:, None] - cc], axis=-1)
        fa2 = np.stack([ca[:, None] + ca[None, :] - cca, cca, ca[:, None] - cca], axis=-1)
        return f2, fa2

    def _seed_queue(self, search: "_Search", fa2: np.ndarray, max_nodes: int | None) -> None:
        """Queue the length-2 nodes whose subtree can beat the best so far (it only improves); the
        others' bounds go to the certificate. The cheap bound screens the nodes before the tighter
        table bound is computed."""
        n = self.concepts.n
        bound2 = self._bounds(search.f2, fa2, search.a, search.m, search.length - 2)
        bound2[np.arange(n), np.arange(n)] = -np.inf
        if search.best[1] == 2 and (max_nodes is None or max_nodes > 0):
            self._expand_incumbent(search, bound2)
        live = self._worth(bound2, search.best, 2)
        table = self._pair_table() if search.length == 3 else None
        if table is not None and live.any():
            i, j, o = np.nonzero(live)
            bound2[i, j, o] = self._child_bounds(table, search.f2, fa2, search.a, search.ca, search.c_cnt,
                                                 i, j, o)
            live = self._worth(bound2, search.best, 2)
        dead = np.isfinite(bound2) & ~live
        if dead.any():
            search.certificate = max(search.certificate, float(bound2[dead].max()))
        i, j, o = np.nonzero(live)
        search.queue += [(-float(b), (int(x), int(y)), (int(z),))
                         for b, x, y, z in zip(bound2[i, j, o], i, j, o)]
        heapq.heapify(search.queue)

    def _expand_incumbent(self, search: "_Search", bound2: np.ndarray) -> None:
        """The best length-2 formula's children first: a strong incumbent prunes most nodes unseen.
        Its node leaves ``bound2`` (set to -inf) either way."""
        i, o, j = search.best[2]
        if self._worth(bound2[i, j, o], search.best, 2):
            search.best, search.scored, search.queue, search.certificate = self._expand(
                [(0.0, (i, j), (o,))], search.CA, search.a, search.ca, search.c_cnt, search.f2, search.m,
                search.length, search.best, search.scored)
            search.expanded = 1
        else:
            search.certificate = float(bound2[i, j, o])
        bound2[i, j, o] = -np.inf

    def _branch_and_bound(self, search: "_Search", max_nodes: int | None, time_budget: float | None,
                          batch: int, t0: float) -> bool:
        """Expand queued nodes best bound first, in batches, until none can win or a budget runs out
        (then True)."""
        queue = search.queue
        while queue:
            top = -queue[0][0]
            if not self._worth(top, search.best, len(queue[0][1])):
                search.certificate = max(search.certificate, top)
                if top < search.best[0]:
                    break  # bounds only fall from here on: nothing left can win
                # A tie that cannot win for this node's length; a shorter node behind it still might.
                heapq.heappop(queue)
                continue
            if (max_nodes is not None and search.expanded >= max_nodes) or \
                    (time_budget is not None and time.perf_counter() - t0 > time_budget):
                search.certificate = max(search.certificate, top)
                return True
            group = self._pop_group(search, batch)
            search.expanded += len(group)
            search.best, search.scored, children, pruned = self._expand(
                group, search.CA, search.a, search.ca, search.c_cnt, search.f2, search.m, search.length,
                search.best, search.scored)
            search.certificate = max(search.certificate, pruned)
            for child in children:
                heapq.heappush(queue, child)
        return False

    def _pop_group(self, search: "_Search", batch: int) -> list:
        """Up to ``batch`` queued nodes of the top node's length that could still win, best first."""
        queue = search.queue
        group = [heapq.heappop(queue)]
        while (queue and len(group) < batch and len(queue[0][1]) == len(group[0][1])
               and self._worth(-queue[0][0], search.best, len(queue[0][1]))):
            group.append(heapq.heappop(queue))
        return group

    @staticmethod
    def _bounds(f, fa, a, m, remaining):
        """Upper bound on the IoU of every formula in the subtree of F (excluding F)."""
        child_and = fa / a
        child_or = np.minimum(a, fa + m) / np.maximum(f + a - fa, 1)
        bound = np.maximum(child_and, child_or)
        if remaining > 1:
            bound = np.maximum(bound, np.minimum(a, fa + remaining * m) / a)
        return np.minimum(bound, 1.0)

    @staticmethod
    def _child_bounds(table, f2, fa2, a, ca, c_cnt, i, j, o) -> np.ndarray:
        """Tighter bounds for the children of the length-2 formulas F = (i[g] op o[g] j[g]) -> [g].

        With |F ∧ C| known (the table), the only unknown of a child's IoU is x = |F ∧ C ∧ A|, and
        IoU is monotone in x: increasing for F AND C, decreasing for F OR C and F AND NOT C. So each
        child is bounded at x's extreme: x <= min(|F∧A|, |C∧A|, |F∧C|) and
        x >= max(0, |F∧A| + |C∧A| - |A|, |F∧C| - min(|F| - |F∧A|, |C| - |C∧A|)).
        """
        fc = table[i, o, j]  # [g, n]
        f, fa = f2[i, j, o][:, None], fa2[i, j, o][:, None]
        c, cA = c_cnt[None, :], ca[None, :]
        x_hi = np.minimum(np.minimum(fa, cA), fc)
        x_lo = np.maximum(np.maximum(fa + cA - a, 0), fc - np.minimum(f - fa, c - cA))
        # Every union below is at least |A| >= 1, so plain division is exact IoU.
        hit = fa + cA - x_lo
        bound = hit / (f + c - fc + a - hit)                        # F OR C
        np.maximum(bound, x_hi / (fc + a - x_hi), out=bound)      # F AND C
        hit = fa - x_lo
        np.maximum(bound, hit / (f - fc + a - hit), out=bound)    # F AND NOT C
        g = np.arange(len(i))
        bound[g, i] = bound[g, j] = -np.inf  # children use distinct concepts
        return bound.max(axis=1).clip(max=1.0)

    @staticmethod
    def _worth(bound, best, node_len: int):
        """Could the subtree of a node of this length hold a formula that wins over ``best``? (A float
        bound gives a bool, an array of bounds a bool array.) An equal IoU wins only against a formula
        of the same length that comes later in order."""
        return (bound > best[0]) | ((bound == best[0]) & (best[1] > node_len))

    def _expand(self, group, CA, a, ca, c_cnt, f2, m, length, best, scored):
        """Score every child of a group of nodes of one length exactly; return the new best, the
        children worth a place in the queue and the largest bound among those that are not."""
        C = self.concepts.masks
        leaves = [g[1] for g in group]
        ops = [g[2] for g in group]
        k = len(leaves[0])  # one length per group
        # F ∧ A is the same formula over the rows C ∧ A, which are as small as the unit's mask.
        fa_rows = self._materialize(CA, leaves, ops)
        fca = host(intersect_counts(fa_rows, C)).astype(np.int64)
        fa = host(fa_rows.count()).astype(np.int64)[:, None]
        table = self._pair_table() if k == 2 else None
        if table is not None:
            i, j = np.array(leaves).T
            o = np.array(ops)[:, 0]
            fc, f = table[i, o, j], f2[i, j, o][:, None]  # both exact, from pair counts
        else:
            f_rows = self._materialize(C, leaves, ops)
            fc = host(intersect_counts(f_rows, C)).astype(np.int64)
            f = host(f_rows.count()).astype(np.int64)[:, None]
        cand = np.stack([iou_of(*candidate_counts(op, f, fa, c_cnt[None, :], ca[None, :], fc, fca, a))
                         for op in OPERATORS], axis=-1)  # [g, n, 3]
        for g, lv in enumerate(leaves):
            cand[g, list(lv)] = -np.inf  # distinct concepts
        scored += int(np.isfinite(cand).sum())
        top = float(cand.max()) if cand.size else -np.inf
        if top > best[0] or (top == best[0] and best[1] >= k + 1):  # a longer tie cannot win
            for g, c, o in zip(*np.nonzero(cand == top)):
                key = tuple(_interleave(leaves[g], ops[g])) + (int(o), int(c))
                cand_best = (top, k + 1, key)
                if _better(cand_best, best):
                    best = cand_best
        children, pruned = [], 0.0
        if k + 1 < length:
            remaining = length - (k + 1)
            sizes = np.stack([f + c_cnt[None, :] - fc, fc, f - fc], axis=-1)
            hits = np.stack([fa + ca[None, :] - fca, fca, fa - fca], axis=-1)
            bounds = self._bounds(sizes, hits, a, m, remaining)
            bounds[~np.isfinite(cand)] = -np.inf
            for g, c, o in zip(*np.nonzero(np.isfinite(bounds))):
                b = float(bounds[g, c, o])
                if self._worth(b, best, k + 1):
                    children.append((-b, leaves[g] + (int(c),), ops[g] + (int(o),)))
                else:
                    pruned = max(pruned, b)
        return best, scored, children, pruned

    @staticmethod
    def _materialize(base: BitMasks, leaves, ops) -> BitMasks:
        """The rows of left-deep formulas over the rows of ``base`` (C, or C ∧ A)."""
        g = len(leaves)
        rows = base[np.array([lv[0] for lv in leaves])]
        for level in range(len(ops[0])):
            codes = _CODE[[op[level] for op in ops]]
            right = np.array([lv[level + 1] for lv in leaves])
            rows = combine_rows(codes, rows, np.arange(g), base, right)
        return rows

    @staticmethod
    def _result(best, names) -> Formula:
        _, length, key = best
        leaves = [key[0]] + [key[p] for p in range(2, len(key), 2)]
        ops = [key[p] for p in range(1, len(key), 2)]
        return _formula(names, leaves, ops)


def _interleave(leaves, ops):
    """(c0, op1, c1, op2, c2, ...): the enumeration key of a left-deep formula."""
    out = [leaves[0]]
    for o, c in zip(ops, leaves[1:]):
        out += [o, c]
    return out


def _better(x, y) -> bool:
    """Whether candidate x = (iou, length, key) beats y: higher IoU, then shorter, then first in order."""
    if x[0] != y[0]:
        return x[0] > y[0]
    if x[1] != y[1]:
        return x[1] < y[1]
    return x[2] < y[2]
