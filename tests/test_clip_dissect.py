"""CLIP-Dissect: the batched similarity functions against a plain per-unit numpy loop written from the
anchor's ``similarity.py`` (Trustworthy-ML-Lab/CLIP-dissect), edge cases and bad input."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from neurcore.labels import SIMILARITY_FUNCTIONS, ClipDissect, image_text_similarity, similarity_matrix
from neurcore.errors import InputError
from neurcore.results import Explanation

# ---------------------------------------------------------------------------------------------------------
# the reference: one unit at a time, numpy float64, the anchor's formulas written out


def _softmax_rows(x):
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def _top_images(col, k):
    return np.argsort(-col, kind="stable")[:k]   # descending, ties to the lower image index


def _logsumexp(x):
    m = x.max(axis=0)
    return m + np.log(np.exp(x - m).sum(axis=0))


def reference_soft_wpmi(sim, acts, top_k=100, a=10, lam=1, p_start=0.998, p_end=0.97):
    P = _softmax_rows(a * sim)
    p = np.array([p_start - i / top_k * (p_start - p_end) for i in range(top_k)])
    rows = []
    for u in range(acts.shape[1]):
        top = _top_images(acts[:, u], top_k)
        rows.append(np.log(1 + p[:, None] * (P[top] - 1) + 1e-7).sum(axis=0))
    log_p_given = np.array(rows)
    return log_p_given - lam * (_logsumexp(log_p_given) - math.log(acts.shape[1]))


def reference_wpmi(sim, acts, top_k=28, a=2, lam=0.6):
    P = _softmax_rows(a * sim)
    log_p_given = np.array([np.log(P[_top_images(acts[:, u], top_k)] + 1e-7).sum(axis=0)
                            for u in range(acts.shape[1])])
    return log_p_given - lam * (_logsumexp(log_p_given) - math.log(acts.shape[1]))


def reference_rank_reorder(sim, acts, p=3, top_fraction=0.05, scale_p=0.5):
    n, C = sim.shape
    top_n = int(n * top_fraction)
    out = np.zeros((acts.shape[1], C))
    for u in range(acts.shape[1]):
        top = _top_images(acts[:, u], top_n)
        target = acts[top, u]                          # descending
        ascending = target[::-1]
        baseline = np.mean([np.abs(x - y) ** p for x in target for y in target])
        baseline = baseline if baseline > 0 else 1.0
        for c in range(C):
            s = sim[top, c]
            rank = np.argsort(np.argsort(s, kind="stable"), kind="stable")   # the anchor's double argsort
            err = np.mean(np.abs(target - ascending[rank]) ** p) / baseline
            out[u, c] = -err / max(s.mean(), 1e-6) ** scale_p
    return out


def reference_cos_similarity(sim, acts):
    out = np.zeros((acts.shape[1], sim.shape[1]))
    for u in range(acts.shape[1]):
        a = acts[:, u]
        for c in range(sim.shape[1]):
            s = sim[:, c]
            na, ns = np.linalg.norm(a), np.linalg.norm(s)
            out[u, c] = 0.0 if na == 0 or ns == 0 else a @ s / (na * ns)
    return out


def reference_cos_similarity_cubed(sim, acts, min_norm=1e-3):
    out = np.zeros((acts.shape[1], sim.shape[1]))
    for u in range(acts.shape[1]):
        a = (acts[:, u] - acts[:, u].mean()) ** 3
        a = a / max(np.linalg.norm(a), min_norm)
        for c in range(sim.shape[1]):
            s = (sim[:, c] - sim[:, c].mean()) ** 3
            out[u, c] = a @ (s / max(np.linalg.norm(s), min_norm))
    return out


REFERENCES = {"soft_wpmi": reference_soft_wpmi, "wpmi": reference_wpmi, "rank_reorder": reference_rank_reorder,
              "cos_similarity": reference_cos_similarity, "cos_similarity_cubed": reference_cos_similarity_cubed}


def _data(seed, n, C, U, rounding=None):
    rng = np.random.default_rng(seed)
    sim = rng.uniform(0.05, 0.4, (n, C))
    acts = rng.gamma(1.0, 1.0, (n, U))
    if rounding is not None:   # coarse values: ties in activations and similarities
        sim, acts = np.round(sim, rounding), np.round(acts, rounding)
    return sim, acts


def _params(fn, n, top_k):
    if fn in ("soft_wpmi", "wpmi"):
        return dict(top_k=top_k)
    if fn == "rank_reorder":
        return dict(top_fraction=max(top_k, 2) / n)
    return {}


def _assert_labels_match(got, want, atol):
    """Same argmax wherever the reference's best concept wins by more than the tolerance."""
    best = want.argmax(axis=1)
    srt = np.sort(want, axis=1)
    clear = (srt[:, -1] - srt[:, -2] > atol) if want.shape[1] > 1 else np.ones(len(want), bool)
    np.testing.assert_array_equal(got.argmax(axis=1)[clear], best[clear])


# ---------------------------------------------------------------------------------------------------------
# batched == per-unit reference


@pytest.mark.parametrize("fn", sorted(SIMILARITY_FUNCTIONS))
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 40), C=st.integers(1, 12), U=st.integers(1, 9),
       k=st.integers(1, 40), rounding=st.sampled_from([None, 1, 2]))
def test_batched_equals_reference(fn, seed, n, C, U, k, rounding):
    k = min(k, n)
    sim, acts = _data(seed, n, C, U, rounding)
    params = _params(fn, n, k)
    want = REFERENCES[fn](sim, acts, **params)
    got = similarity_matrix(sim, acts, similarity=fn, dtype="float64", **params)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # labels in float64: a concept within rounding of the reference's best (exact ties: test_ties_*)
    label = got.argmax(axis=1)
    assert np.all(want[np.arange(len(want)), label] >= want.max(axis=1) - 1e-9 * (1 + np.abs(want).max()))
    # float32 (the default): close values, same label unless the reference's top two are within noise
    got32 = similarity_matrix(sim, acts, similarity=fn, **params)
    scale = np.abs(want).max() + 1.0
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4 * scale)
    _assert_labels_match(got32, want, 1e-3 * scale)


@pytest.mark.parametrize("fn", sorted(SIMILARITY_FUNCTIONS))
def test_defaults_equal_reference(fn):
    sim, acts = _data(1, 300, 50, 16)
    want = REFERENCES[fn](sim, acts)
    got = similarity_matrix(sim, acts, similarity=fn, dtype="float64")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_chunked_blocks_equal_one_block(monkeypatch):
    """Units split into many tiny blocks give the same matrix (log p(t) still over the whole layer)."""
    import neurcore.labels._clip_dissect as cd

    sim, acts = _data(2, 60, 30, 25)
    whole = similarity_matrix(sim, acts, top_k=20, dtype="float64")
    monkeypatch.setattr(cd, "_BLOCK_BYTES", 1)
    for fn in SIMILARITY_FUNCTIONS:
        params = _params(fn, 60, 20)
        np.testing.assert_allclose(similarity_matrix(sim, acts, similarity=fn, dtype="float64", **params),
                                   REFERENCES[fn](sim, acts, **params), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(similarity_matrix(sim, acts, top_k=20, dtype="float64"), whole, rtol=1e-12)


def test_units_subset_uses_the_whole_layer_for_log_p():
    sim, acts = _data(3, 80, 20, 12)
    full = reference_soft_wpmi(sim, acts, top_k=30)
    sub = similarity_matrix(sim, acts, top_k=30, units=[7, 2], dtype="float64")
    np.testing.assert_allclose(sub, full[[7, 2]], rtol=1e-9)
    res = ClipDissect(sim, [f"c{i}" for i in range(20)]).explain(acts, top_k=30, units=[7, 2], dtype="float64")
    assert [r.unit for r in res] == [7, 2]
    assert [r.formula for r in res] == [f"c{full[u].argmax()}" for u in (7, 2)]


# ---------------------------------------------------------------------------------------------------------
# explanations


def test_planted_detectors_get_their_concept():
    """Units that fire on the images most similar to one concept are labelled with it."""
    rng = np.random.default_rng(4)
    n, C = 600, 40
    present = rng.random((n, C)) < 0.1
    sim = 0.2 + 0.1 * present + rng.normal(0, 0.01, (n, C))
    planted = rng.choice(C, 15, replace=False)
    acts = present[:, planted] * 2.0 + rng.normal(0, 0.1, (n, 15))
    names = [f"concept {i}" for i in range(C)]
    res = ClipDissect(sim, names).explain(acts, layer="layer4")
    assert [r.formula for r in res] == [names[c] for c in planted]
    r = res[0]
    assert r.method == "clip-dissect" and r.layer == "layer4" and r.length == 1 and r.iou is None
    assert r.extra["top"][0] == [r.formula, r.metrics["similarity"]]
    assert len(r.extra["top"]) == 5
    assert all(a[1] >= b[1] for a, b in zip(r.extra["top"], r.extra["top"][1:]))
    assert r.extra["similarity_fn"] == "soft_wpmi" and r.extra["params"]["top_k"] == 100
    Explanation.from_dict(json.loads(r.to_json()))          # JSON-clean


@pytest.mark.parametrize("fn", sorted(SIMILARITY_FUNCTIONS))
def test_every_function_labels_planted_units(fn):
    rng = np.random.default_rng(5)
    n, C = 800, 25
    present = rng.random((n, C)) < 0.15
    strength = present * rng.random((n, C))                     # how much of the concept an image shows
    sim = 0.2 + 0.1 * strength + rng.normal(0, 0.002, (n, C))
    planted = rng.choice(C, 8, replace=False)
    acts = 3.0 * strength[:, planted] + rng.normal(0, 0.02, (n, 8))   # graded: rank_reorder needs the order
    names = [f"c{i}" for i in range(C)]
    kw = dict(top_k=50) if fn in ("wpmi",) else {}
    res = ClipDissect(sim, names).explain(acts, similarity=fn, **kw)
    assert [r.formula for r in res] == [names[c] for c in planted]


def test_edge_one_unit_one_concept_constant_activations():
    rng = np.random.default_rng(6)
    sim = rng.uniform(0, 0.3, (20, 1))
    acts = np.ones((20, 1))
    for fn in SIMILARITY_FUNCTIONS:
        params = _params(fn, 20, 20)
        got = similarity_matrix(sim, acts, similarity=fn, dtype="float64", **params)
        np.testing.assert_allclose(got, REFERENCES[fn](sim, acts, **params), rtol=1e-9, atol=1e-12)
        assert np.isfinite(got).all()
        res = ClipDissect(sim, ["only"]).explain(acts, similarity=fn, **({"top_k": 20} if "wpmi" in fn else {}))
        assert res[0].formula == "only" and len(res[0].extra["top"]) == 1
    # one unit: log p(t) = log p(t|B), so soft_wpmi with lam = 1 is 0 everywhere; ties -> first concept
    sim, acts = _data(7, 30, 6, 1)
    got = similarity_matrix(sim, acts, top_k=30, dtype="float64")
    np.testing.assert_allclose(got, 0.0, atol=1e-9)
    assert ClipDissect(sim, list("abcdef")).explain(acts, top_k=30, lam=1)[0].formula == "a"
    # constant activations pick the first top_k images
    sim, _ = _data(8, 30, 6, 1)
    np.testing.assert_allclose(similarity_matrix(sim, np.zeros((30, 2)), top_k=5, lam=0, dtype="float64")[0],
                               reference_soft_wpmi(sim[:5], np.zeros((5, 1)), top_k=5, lam=0)[0], rtol=1e-12)


@pytest.mark.parametrize("fn", ["soft_wpmi", "wpmi"])
def test_ties_go_to_the_first_concept(fn):
    """Duplicated concept columns tie (up to rounding); the label is the first of them."""
    sim, acts = _data(13, 40, 5, 6)
    sim = np.concatenate([sim[:, [3]], sim, sim], axis=1)       # concept 0 == 4 == 9, 1 == 6, ...
    for dtype in ("float32", "float64"):
        res = ClipDissect(sim, [f"c{i}" for i in range(11)]).explain(acts, similarity=fn, top_k=10, dtype=dtype)
        got = similarity_matrix(sim, acts, similarity=fn, top_k=10, dtype=dtype)
        for r in res:
            best = np.flatnonzero(np.isclose(got[r.unit], got[r.unit].max(), rtol=1e-5, atol=0))
            assert best.size >= 2                                    # the tie: the same concept twice
            assert r.formula == f"c{best[0]}"
            assert r.extra["top"][0][0] == r.formula
            assert r.extra["top"][1][1] == pytest.approx(r.extra["top"][0][1], rel=1e-5)


def test_top_k_equal_to_n_images():
    sim, acts = _data(9, 25, 7, 4)
    np.testing.assert_allclose(similarity_matrix(sim, acts, top_k=25, dtype="float64"),
                               reference_soft_wpmi(sim, acts, top_k=25), rtol=1e-9)


def test_zero_columns_give_zero_cosine():
    sim, acts = _data(10, 30, 4, 3)
    sim[:, 1] = 0
    acts[:, 2] = 0
    got = similarity_matrix(sim, acts, similarity="cos_similarity")
    assert np.all(got[:, 1] == 0) and np.all(got[2] == 0)


def test_image_text_similarity_is_cosine_without_centring():
    rng = np.random.default_rng(11)
    img, txt = rng.normal(size=(5, 8)) * 3, rng.normal(size=(4, 8)) + 2
    want = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    np.testing.assert_allclose(image_text_similarity(img, txt), want, rtol=1e-5)
    with pytest.raises(InputError, match="dimension"):
        image_text_similarity(img, txt[:, :3])
    with pytest.raises(InputError, match="zero vector"):
        image_text_similarity(np.zeros((2, 8)), txt)


def test_bad_input():
    sim, acts = _data(12, 30, 5, 3)
    names = list("abcde")
    with pytest.raises(InputError, match="5 concept columns but 4 names"):
        ClipDissect(sim, names[:4])
    with pytest.raises(InputError, match="duplicate concept name 'a'"):
        ClipDissect(sim, ["a", "b", "a", "d", "e"])
    with pytest.raises(InputError, match="2-d"):
        ClipDissect(sim[0], names)
    bad = sim.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match=r"image_text_sim has a non-finite value \(nan\) at \(3, 2\)"):
        ClipDissect(bad, names)
    cd = ClipDissect(sim, names)
    with pytest.raises(InputError, match="29 image rows but image_text_sim has 30"):
        cd.explain(acts[:29])
    with pytest.raises(InputError, match="unit_acts has a non-finite value"):
        cd.explain(np.where(acts > 2, np.inf, acts))
    with pytest.raises(InputError, match="top_k = 100 exceeds the probe's 30 images"):
        cd.explain(acts)
    with pytest.raises(InputError, match="top_k must be an integer"):
        cd.explain(acts, top_k=0)
    with pytest.raises(InputError, match="unknown function 'soft'"):
        cd.explain(acts, similarity="soft")
    with pytest.raises(InputError, match="not to 'cos_similarity'"):
        cd.explain(acts, similarity="cos_similarity", top_k=3)
    with pytest.raises(InputError, match="rank_reorder: top_fraction"):
        ClipDissect(sim[:19], names).explain(acts[:19], similarity="rank_reorder")   # 5% of 19 images: none
    with pytest.raises(InputError, match="outside the layer's 3 units"):
        cd.explain(acts, top_k=10, units=[0, 3])
    with pytest.raises(InputError, match="p_start must lie in"):
        cd.explain(acts, top_k=10, p_start=1.5)
    with pytest.raises(InputError, match="takes parameters"):
        cd.explain(acts, top_k=10, bogus=1)
