"""Guaranteed-optimal search: equal to brute force over every formula, with a certificate."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from neurcore import BitMasks, ConceptSet
from neurcore.rules import reference as ref
from neurcore.rules import OptimalSearch
from neurcore.testing import blob_concepts, plant_units


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 4), batch=st.integers(1, 9))
def test_optimal_equals_brute_force(layout, seed, length, batch):
    rng = np.random.default_rng(seed)
    n_c = int(rng.integers(1, 6 if length < 4 else 5))
    n_img, side = int(rng.integers(1, 4)), int(rng.integers(2, 7))
    C = rng.random((n_c, n_img, side, side)) < rng.uniform(0.05, 0.6, (n_c, 1, 1, 1))
    U = rng.random((3, n_img, side, side)) < rng.uniform(0.0, 0.5, (3, 1, 1, 1))
    names = [f"c{i}" for i in range(n_c)]
    concepts = ConceptSet(BitMasks.from_dense(C, layout), names)
    results = OptimalSearch(concepts).explain(BitMasks.from_dense(U, layout), length=length, batch=batch)
    for u, r in enumerate(results):
        assert (r.formula, r.iou) == ref.optimal_search(U[u], C, names, length)
        assert r.extra["optimal"] and r.extra["gap"] == 0.0
        assert r.extra["certificate"] <= r.iou  # no pruned subtree could have beaten the answer


def test_optimal_beats_or_matches_beam_and_recovers_planted():
    from neurcore import BeamSearch

    rng = np.random.default_rng(0)
    concepts = blob_concepts(rng, 20, 200, (8, 8))
    units, planted = plant_units(rng, concepts, 30)
    opt = OptimalSearch(concepts).explain(units)
    beam = BeamSearch(concepts).explain(units)
    A = units.to_dense()
    for o, b, f, a in zip(opt, beam, planted, A):
        assert o.iou >= b.iou
        m = concepts.evaluate(f).to_dense()[0]
        assert o.iou >= (m & a).sum() / (m | a).sum()
        mask = concepts.evaluate(o.formula).to_dense()[0]
        assert o.iou == (mask & a).sum() / (mask | a).sum()


def test_budget_reports_the_gap():
    rng = np.random.default_rng(4)
    concepts = blob_concepts(rng, 16, 120, (8, 8))
    units, _ = plant_units(rng, concepts, 4, lengths=(3,))
    full = OptimalSearch(concepts).explain(units)
    cut = OptimalSearch(concepts).explain(units, max_nodes=1, batch=1)
    for f, c in zip(full, cut):
        assert c.iou <= f.iou
        if not c.extra["optimal"]:
            assert c.extra["certificate"] >= c.iou and c.extra["gap"] == c.extra["certificate"] - c.iou
            assert f.iou <= c.iou + c.extra["gap"]  # the true optimum lies within the gap
    assert not all(c.extra["optimal"] for c in cut)
