"""Network Dissection and beam search: exact against plain numpy searches that build every mask."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from neurcore import BeamSearch, BitMasks, ConceptSet, Explanation, NetworkDissection, search
from neurcore.rules import reference as ref
from neurcore.testing import blob_concepts, plant_units
from neurcore.rules import quote
from neurcore.results import read_jsonl, write_jsonl
from neurcore.rules import OPERATORS, candidate_counts

seeds = st.integers(0, 2**32 - 1)


def iou_of(mask, unit):
    union = int((mask | unit).sum())
    return int((mask & unit).sum()) / union if union else 0.0


@given(seed=seeds)
def test_candidate_counts_are_the_iou_of_the_built_mask(seed):
    rng = np.random.default_rng(seed)
    F, C, A = (rng.random((3, 50)) < rng.uniform(0, 1, (3, 1)))
    for op, build in zip(OPERATORS, (F | C, F & C, F & ~C)):
        inter, union = candidate_counts(op, F.sum(), (F & A).sum(), C.sum(), (C & A).sum(), (F & C).sum(),
                                        (F & C & A).sum(), A.sum())
        assert inter == (build & A).sum() and union == (build | A).sum()


def random_problem(rng, layout):
    n_images, side = int(rng.integers(1, 5)), int(rng.integers(3, 9))
    n_c, n_u = int(rng.integers(1, 10)), int(rng.integers(1, 6))
    C = rng.random((n_c, n_images, side, side)) < rng.uniform(0.02, 0.5, (n_c, 1, 1, 1))
    U = rng.random((n_u, n_images, side, side)) < rng.uniform(0.0, 0.4, (n_u, 1, 1, 1))
    names = [f"c{i}" if i % 3 else f"c {i}" for i in range(n_c)]
    return C, U, names, ConceptSet(BitMasks.from_dense(C, layout), names), BitMasks.from_dense(U, layout)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@settings(max_examples=40)
@given(seed=seeds, length=st.integers(1, 3), beam=st.integers(1, 6))
def test_beam_search_equals_numpy_beam_search(layout, seed, length, beam):
    """Same beams, same order, same IoUs as the reference that builds every candidate's mask."""
    rng = np.random.default_rng(seed)
    C, U, names, concepts, units = random_problem(rng, layout)
    results = BeamSearch(concepts).explain(units, length=length, beam=beam)
    for u, r in enumerate(results):
        expect = ref.beam_search(U[u], C, names, length, beam)
        assert [(b["formula"], b["iou"]) for b in r.beam] == expect
        if expect:
            assert (r.formula, r.iou) == expect[0]
            mask = concepts.evaluate(r.formula).to_dense()[0]   # the IoU recomputed from the string
            assert r.iou == iou_of(mask, U[u])
            assert r.counts["intersection"] / r.counts["union"] == r.iou
        else:
            assert r.formula is None and r.iou == 0.0


@given(seed=seeds)
def test_dissection_is_the_best_single_concept(seed):
    rng = np.random.default_rng(seed)
    C, U, names, concepts, units = random_problem(rng, "dense")
    results = NetworkDissection(concepts).explain(units, threshold=0.1)
    for u, r in enumerate(results):
        ious = [iou_of(c, U[u]) for c in C]
        best = int(np.argmax(ious))  # first of the ties
        assert r.formula == (quote(names[best]) if ious[best] > 0 else None)
        assert r.iou == ious[best] and r.detector == (ious[best] > 0.1)


def test_dissection_by_category():
    rng = np.random.default_rng(0)
    concepts = blob_concepts(rng, 24, 200, (8, 8))
    units, _ = plant_units(rng, concepts, 10, lengths=(1,))
    out = NetworkDissection(concepts).explain(units, category="color")
    assert all(r.categories == ["color"] for r in out if r.formula)
    with pytest.raises(ValueError, match="no concept has category 'texture'"):
        NetworkDissection(concepts).explain(units, category="texture")


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(1)
    concepts = blob_concepts(rng, 16, 100, (8, 8))
    units, _ = plant_units(rng, concepts, 6)
    A = units.to_dense()
    for r in BeamSearch(concepts).explain(units, length=2):
        F = concepts.evaluate(r.formula).to_dense()[0]
        a, fa = A[r.unit], F & A[r.unit]
        m = r.metrics
        assert m["iou"] == r.iou
        assert m["activation_coverage"] == fa.sum() / a.sum()
        assert m["detection_accuracy"] == fa.sum() / F.sum()
        img = lambda x: x.reshape(len(x), -1).any(1)
        assert m["sample_coverage"] == img(fa).sum() / img(F).sum()
        assert m["explanation_coverage"] == img(fa).sum() / img(a).sum()


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_planted_units_are_recovered(layout):
    rng = np.random.default_rng(7)
    concepts = blob_concepts(rng, 24, 300, (8, 8))
    concepts = ConceptSet(concepts.masks.as_layout(layout), concepts.names, concepts.categories)
    units, planted = plant_units(rng, concepts, 60, lengths=(1, 2), noise=0.03)
    A = units.to_dense()
    results = BeamSearch(concepts).explain(units, length=3)
    found = [r.iou >= iou_of(concepts.evaluate(f).to_dense()[0], A[u]) for u, (r, f) in enumerate(zip(results, planted))]
    assert all(found)


def test_result_schema_round_trips_as_json_lines(tmp_path):
    r = Explanation(unit=3, method="beam", formula="(a OR b)", iou=0.5, length=2, counts={"unit": 4},
                    beam=[{"formula": "(a OR b)", "iou": 0.5}])
    write_jsonl(tmp_path / "r.jsonl", [r, Explanation(unit=4, method="dissect", formula=None, iou=0.0)])
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["formula"] == "(a OR b)" and json.loads(lines[1])["formula"] is None
    back = read_jsonl(tmp_path / "r.jsonl")
    assert back[0] == r
    newer = dict(r.to_dict(), future_field=[1, 2])
    assert Explanation.from_dict(newer).extra["future_field"] == [1, 2]


def test_search_dispatch_and_errors():
    rng = np.random.default_rng(2)
    concepts = blob_concepts(rng, 12, 20, (4, 4))
    units, _ = plant_units(rng, concepts, 3, lengths=(1,))
    assert [r.method for r in search(units, concepts, method="dissect")] == ["dissect"] * 3
    with pytest.raises(ValueError, match="method must be one of dissect, beam, optimal, clustered"):
        search(units, concepts, method="magic")
    with pytest.raises(ValueError, match="method 'clustered' needs the units' raw activations"):
        search(units, concepts, method="clustered")
    with pytest.raises(ValueError, match="length must be >= 1"):
        BeamSearch(concepts).explain(units, length=0)
    other = BitMasks.from_dense(np.zeros((2, 20, 4, 5), bool))
    with pytest.raises(ValueError, match=r"the unit masks is over \(20, 4, 5\), the concept masks over \(20, 4, 4\)"):
        search(other, concepts)
    with pytest.raises(ValueError, match="duplicate concept name 'a'"):
        ConceptSet(BitMasks.from_dense(np.zeros((2, 1, 1), bool)), ["a", "a"])


def test_batches_of_units_give_the_same_results():
    rng = np.random.default_rng(5)
    concepts = blob_concepts(rng, 16, 40, (8, 8))
    units, _ = plant_units(rng, concepts, 11)
    whole = BeamSearch(concepts).explain(units)
    bs = BeamSearch(concepts)
    assert bs._units_per_batch(units, 5, 30_000) < 11
    batched = bs.explain(units, memory_budget=30_000)
    assert [r.to_dict() for r in batched] == [r.to_dict() for r in whole]


def test_planted_recovery_means_the_formula_was_found():
    from neurcore.rules import EXACT_MASK_IOU, parse, planted_recovery

    rng = np.random.default_rng(4)
    concepts = blob_concepts(rng, 12, 60, (16, 16))
    a, c = concepts.names[4], concepts.names[9]
    planted = parse(f"({a} AND {c})")
    unit = concepts.evaluate(planted)
    size = int(unit.count()[0])
    # b removes between 5% and 60% of the planted region
    b = next(n for n in concepts.names if n not in (a, c)
             and 0.05 < 1 - concepts.evaluate(parse(f"(({a} AND {c}) AND NOT {n})")).count()[0] / size < 0.6)
    same = planted_recovery(f"({c} AND {a})", 1.0, planted, unit, concepts)
    assert same["recovered"] and same["iou_not_worse"] and same["mask_iou"] == 1.0 and same["iou"] == 1.0
    # A subset that scores as well on a unit mask that is only part of the formula is not the formula.
    subset = parse(f"(({a} AND {c}) AND NOT {b})")
    part = concepts.evaluate(subset)
    got = planted_recovery(subset, 1.0, planted, part, concepts)
    truth_iou = int(part.count()[0]) / size
    assert got["iou"] == pytest.approx(truth_iou) and got["mask_iou"] == pytest.approx(truth_iou, abs=1e-4)
    assert got["iou_not_worse"] and truth_iou < EXACT_MASK_IOU and not got["recovered"]
    # An equivalent formula is recovered even when both masks are empty on the probe.
    empty = parse(f"({a} AND NOT {a})")
    assert planted_recovery(f"({b} AND NOT {b})", 0.0, empty, concepts.evaluate(empty), concepts)["recovered"]
    assert planted_recovery(None, None, planted, unit, concepts) == {
        "formula": str(planted), "iou": 1.0, "mask_iou": 0.0, "recovered": False, "iou_not_worse": False}
