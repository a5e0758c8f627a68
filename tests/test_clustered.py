"""Clustered compositional explanations: ranges, masks, MMESH admissibility and exactness."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from neurcore import BitMasks
from neurcore.engine import reference as ref
from neurcore.engine import largest_rectangles
from neurcore.rules import ClusteredSearch, MaskStats, activation_ranges, mmesh_estimates, range_masks
from neurcore.testing import blob_concepts
from neurcore.rules import OPERATORS, candidate_counts, iou_of


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1))
def test_largest_rectangles_kernel(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 9, 2)
    masks = rng.random((4, h, w)) < rng.uniform(0.2, 1.0)
    masks[0] = False
    got, expect = largest_rectangles(masks), ref.largest_rectangles(masks)
    area = lambda r: np.maximum(r[:, 2] - r[:, 0] + 1, 0) * np.maximum(r[:, 3] - r[:, 1] + 1, 0)
    assert np.array_equal(area(got), area(expect))
    for m, (y0, x0, y1, x1) in zip(masks, got):
        assert m[y0 : y1 + 1, x0 : x1 + 1].all()


def test_ranges_partition_the_non_zero_activations():
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(30, 4, 4)), 0).astype(np.float32)
    ranges = activation_ranges(maps, 5)
    assert len(ranges) == 5 and all(lo <= hi for lo, hi in ranges)
    assert all(ranges[k][1] < ranges[k + 1][0] for k in range(4))  # disjoint, ordered
    v = maps[maps > 0]
    lows = [lo for lo, _ in ranges]
    member = [(v >= lo) & (v < (lows[k + 1] if k + 1 < 5 else np.inf)) for k, lo in enumerate(lows)]
    assert np.array_equal(np.sum(member, axis=0), np.ones(len(v)))  # every non-zero value in one range
    masks = range_masks(maps, ranges, (8, 8)).to_dense()
    up = F.interpolate(torch.from_numpy(maps)[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0].numpy()
    assert np.array_equal(masks.sum(0), (up >= lows[0]).astype(int))  # disjoint and covering
    strict = range_masks(maps, ranges, (8, 8), strict=True).to_dense()
    for k, (lo, hi) in enumerate(ranges):
        assert np.array_equal(strict[k], (up > lo) & (up < hi))  # the anchor's masks


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1))
def test_mmesh_is_an_upper_bound(seed):
    rng = np.random.default_rng(seed)
    concepts = blob_concepts(rng, 12, 20, (8, 8))
    C = concepts.masks
    A = BitMasks.from_dense(rng.random((1, 20, 8, 8)) < 0.2)
    f_idx = rng.choice(12, size=3, replace=False)
    stats = MaskStats.measure(C)
    F_rows = C[f_idx]
    fa = F_rows & A
    CA = C & A
    est = mmesh_estimates(MaskStats(stats.area[f_idx], stats.box[f_idx], stats.rect[f_idx]),
                          fa.count(per_image=True), stats, CA.count(per_image=True),
                          A.count(per_image=True)[0], 64)
    from neurcore import intersect_counts

    fc, fca = intersect_counts(F_rows, C), intersect_counts(fa, C)
    f, fa_cnt, a = F_rows.count()[:, None], fa.count()[:, None], int(A.count()[0])
    for k, op in enumerate(OPERATORS):
        exact = iou_of(*candidate_counts(op, f, fa_cnt, C.count()[None], CA.count()[None], fc, fca, a))
        assert np.all(est[:, :, k] >= exact - 1e-12), op


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmesh_never_changes_the_result_and_evaluates_fewer(seed):
    rng = np.random.default_rng(seed)
    world = blob_concepts(rng, 16, 60, (8, 8))
    acts = np.maximum(rng.normal(size=(60, 3, 4, 4)), 0).astype(np.float32)
    search = ClusteredSearch(world)
    with_h = search.explain(acts, n_clusters=3, heuristic="mmesh")
    without = search.explain(acts, n_clusters=3, heuristic="none")
    for a, b in zip(with_h, without):
        assert [(r["formula"], r["iou"]) for r in a.ranges] == [(r["formula"], r["iou"]) for r in b.ranges]
        assert a.extra["candidates_evaluated"] <= b.extra["candidates_evaluated"] == b.extra["candidates_in_space"]
        assert (a.formula, a.iou) == (a.ranges[-1]["formula"], a.ranges[-1]["iou"])


def test_clustered_range_formulas_score_what_they_claim():
    rng = np.random.default_rng(3)
    world = blob_concepts(rng, 12, 40, (8, 8))
    acts = np.maximum(rng.normal(size=(40, 2, 4, 4)), 0).astype(np.float32)
    out = ClusteredSearch(world).explain(acts, n_clusters=4)
    for r in out:
        maps = acts[:, r.unit]
        masks = range_masks(maps, [tuple(x["range"]) for x in r.ranges], (8, 8)).to_dense()
        for k, x in enumerate(r.ranges):
            if x["formula"] is None:
                continue
            m = world.evaluate(x["formula"]).to_dense()[0]
            assert x["iou"] == (m & masks[k]).sum() / (m | masks[k]).sum()
