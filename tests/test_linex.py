"""LinEx: the batched fit against a plain per-unit loop (scikit-learn ElasticNet per unit, the anchor's
greedy search with np.linalg.lstsq), planted linear units, simulation scores, the table, bad input."""

import csv
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from neurcore.errors import InputError
from neurcore.labels._linex import (
    LinEx,
    concept_probabilities,
    format_linear,
    label_simulation_r,
    pearson_columns,
    simulation_r,
    split_indices,
    write_linex_table,
)
from neurcore.results import Explanation

# ---------------------------------------------------------------------------------------------------------
# the reference: one unit at a time, written from the anchor's explain_neurons.py / greedy_search


def _r(pred, y):
    """np.corrcoef, with r = 0 for a constant side (the module's documented rule)."""
    if np.ptp(pred) <= 1e-12 * np.sqrt(len(pred)) * np.abs(pred).max() or np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(pred, y)[0, 1])


def reference_linex(P, acts, lam=0.05, alpha=0.99, max_concepts=10, min_gain=0.02, candidates=10,
                    split=(0.7, 0.1, 0.2), seed=0, ranking="abs", tol=1e-6):
    """Per unit: (selected concept columns of P, weights, bias, val r), None for a constant unit."""
    from sklearn.linear_model import ElasticNet

    top5 = np.sort(P, axis=0)[-5:].mean(axis=0)
    kept = np.flatnonzero((top5 >= 0.5) & (P.std(axis=0, ddof=1) >= 1e-5))
    Pk = P[:, kept]
    train, val, _ = split_indices(len(P), split, seed)
    X = Pk[train]
    sd = X.std(axis=0, ddof=1)
    Xz = np.where(sd > 0, (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1), 0.0)
    out = []
    for u in range(acts.shape[1]):
        y = acts[:, u]
        if y.std(ddof=1) == 0:
            out.append(None)
            continue
        yz = (y[train] - y.mean()) / y.std(ddof=1)
        enet = ElasticNet(alpha=lam / alpha, l1_ratio=alpha, tol=tol, max_iter=10000).fit(Xz, yz)
        w = enet.coef_
        xy = Xz.T @ (yz - yz.mean())
        keys = (-np.abs(w), -np.abs(xy)) if ranking == "abs" else (-w, -xy)
        top = sorted(range(len(w)), key=lambda c: (keys[0][c], keys[1][c], c))
        # greedy_search, positions into ``top``
        selected, bad, best_r, best = [], [], 0.0, None
        while len(selected) < max_concepts:
            window = [i for i in range(len(top)) if i not in selected and i not in bad][:candidates]
            if not window:
                break
            cur, cur_r = None, -np.inf
            for i in window:
                cols = [top[j] for j in selected + [i]]
                D = np.column_stack([Pk[train][:, cols], np.ones(len(train))])
                coef = np.linalg.lstsq(D, y[train], rcond=None)[0]
                r = _r(Pk[val][:, cols] @ coef[:-1] + coef[-1], y[val])
                if selected and r - best_r < min_gain:
                    bad.append(i)
                elif r > cur_r:
                    cur, cur_r, cur_fit = i, r, coef
            if cur is None:
                break
            selected.append(cur)
            best_r, best = cur_r, cur_fit
        out.append(([int(kept[top[j]]) for j in selected], best[:-1], float(best[-1]), best_r))
    return out


def _planted(seed, n=2000, C=30, U=12, k=3, noise=0.05, mixed=True):
    rng = np.random.default_rng(seed)
    P = 1 / (1 + np.exp(-rng.normal(-1, 2, (n, C))))
    W = np.zeros((C, U))
    for u in range(U):
        cs = rng.choice(C, k, replace=False)
        mags = rng.uniform(0.6, 1.5, k)
        signs = np.where(np.arange(k) % 2 == 1, -1.0, 1.0) if mixed else np.ones(k)
        W[cs, u] = mags * signs
    acts = P @ W + 0.3 + rng.normal(0, noise, (n, U))
    return P, acts, W


def _compare(res, ref, names, atol=1e-6):
    for e, want in zip(res, ref):
        if want is None:
            assert e.formula is None and e.extra["concepts"] == []
            continue
        cols, w, b, r = want
        assert sorted(e.extra["concepts"]) == sorted(names[c] for c in cols), (e.unit, e.extra["concepts"], cols)
        got_w = dict(zip(e.extra["concepts"], e.extra["weights"]))
        np.testing.assert_allclose([got_w[names[c]] for c in cols], w, rtol=1e-6, atol=atol)
        assert e.extra["bias"] == pytest.approx(b, rel=1e-6, abs=atol)
        assert e.metrics["val_r"] == pytest.approx(r, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------
# batched == per-unit reference


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(40, 160), C=st.integers(1, 14), U=st.integers(1, 6),
       max_concepts=st.integers(1, 4), candidates=st.integers(1, 5), min_gain=st.sampled_from([0.0, 0.02, 0.1]),
       ranking=st.sampled_from(["abs", "signed"]), planted=st.booleans())
def test_batched_equals_reference(seed, n, C, U, max_concepts, candidates, min_gain, ranking, planted):
    rng = np.random.default_rng(seed)
    if planted:
        P, acts, _ = _planted(seed, n=n, C=C, U=U, k=min(C, 2), noise=0.3)
    else:
        P = rng.uniform(0, 1, (n, C))
        acts = rng.normal(size=(n, U))
    names = [f"c{i}" for i in range(C)]
    kw = dict(max_concepts=max_concepts, candidates=candidates, min_gain=min_gain, ranking=ranking, seed=seed % 5,
              tol=1e-10)
    res = LinEx(P, names).explain(acts, **kw)
    _compare(res, reference_linex(P, acts, **kw), names)


def test_defaults_equal_reference_on_a_wider_layer():
    P, acts, _ = _planted(3, n=1500, C=60, U=20, k=4, noise=0.5)
    names = [f"concept {i}" for i in range(60)]
    res = LinEx(P, names).explain(acts, tol=1e-10)
    _compare(res, reference_linex(P, acts, tol=1e-10), names)
    assert max(len(e.extra["concepts"]) for e in res) >= 3


def test_small_greedy_batches_equal_one_batch(monkeypatch):
    """Units split into greedy batches over the union of their ranked concepts give the same result."""
    import neurcore.labels._linex as lx

    P, acts, _ = _planted(4, n=600, C=40, U=9, noise=0.4)
    names = [f"c{i}" for i in range(40)]
    whole = LinEx(P, names).explain(acts, max_concepts=3, candidates=4)
    monkeypatch.setattr(lx, "_GREEDY_CONCEPTS", 10)       # one unit per batch
    monkeypatch.setattr(lx, "_PREDICTION_BUDGET", 1)       # one unit per prediction block
    monkeypatch.setattr(lx, "_GRAM_LIMIT", 5)              # elastic net without the shared Gram matrix
    parts = LinEx(P, names).explain(acts, max_concepts=3, candidates=4)
    for a, b in zip(whole, parts):
        assert a.extra["concepts"] == b.extra["concepts"]
        np.testing.assert_allclose(a.extra["weights"], b.extra["weights"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# planted linear units


def test_planted_linear_units_are_recovered_with_their_signs():
    P, acts, W = _planted(5, n=3000, C=40, U=16, k=3, noise=0.05)
    names = [f"c{i}" for i in range(40)]
    res = LinEx(P, names).explain(acts, layer="fc")
    for e in res:
        truth = {names[c]: W[c, e.unit] for c in np.flatnonzero(W[:, e.unit])}
        got = dict(zip(e.extra["concepts"], e.extra["weights"]))
        assert set(got) == set(truth), (e.unit, e.formula, truth)
        for c, w in truth.items():
            assert np.sign(got[c]) == np.sign(w) and got[c] == pytest.approx(w, abs=0.05)
        assert e.extra["bias"] == pytest.approx(0.3, abs=0.05)
        assert e.metrics["val_r"] > 0.98
        assert e.method == "linex" and e.layer == "fc" and e.length == 3 and e.iou is None
        assert e.extra["weights"] == sorted(e.extra["weights"], reverse=True)
        assert e.formula == format_linear(e.extra["concepts"], e.extra["weights"])
        assert " - " in e.formula                                   # the negative concept is there
        Explanation.from_dict(json.loads(e.to_json()))               # JSON-clean


def test_the_anchors_signed_ranking_misses_negative_concepts():
    """ranking="signed" puts negative weights behind every zero one: the documented reason for "abs"."""
    P, acts, _ = _planted(6, n=3000, C=40, U=8, k=3, noise=0.05)
    names = [f"c{i}" for i in range(40)]
    signed = LinEx(P, names).explain(acts, ranking="signed", candidates=3, max_concepts=3)
    absolute = LinEx(P, names).explain(acts, ranking="abs", candidates=3, max_concepts=3)
    neg = lambda res: sum(w < 0 for e in res for w in e.extra["weights"])
    assert neg(absolute) == 8 and neg(signed) < 8
    assert np.mean([e.metrics["val_r"] for e in absolute]) > np.mean([e.metrics["val_r"] for e in signed])


def test_simulation_with_another_model_and_labels():
    P, acts, W = _planted(7, n=3000, C=30, U=10, noise=0.05)
    names = [f"c{i}" for i in range(30)]
    res = LinEx(P, names).explain(acts, seed=3)
    _, _, test = split_indices(3000, (0.7, 0.1, 0.2), 3)
    # a second "VLM": the same concepts, noisier, other column order and an extra concept
    rng = np.random.default_rng(8)
    P2 = np.clip(P + rng.normal(0, 0.05, P.shape), 0, 1)
    perm = rng.permutation(30)
    P2 = np.concatenate([P2[:, perm], rng.random((3000, 1))], axis=1)
    names2 = [names[i] for i in perm] + ["extra"]
    r = simulation_r(res, P2, names2, acts, test)
    assert r.shape == (10,) and np.all(r > 0.9)
    # the same by hand for one unit
    e = res[4]
    pred = sum(w * P2[test, names2.index(c)] for c, w in zip(e.extra["concepts"], e.extra["weights"])) + e.extra["bias"]
    assert r[4] == pytest.approx(np.corrcoef(pred, acts[test, 4])[0, 1], abs=1e-12)
    # explanations of a unit subset, out of order, index their unit's column
    sub = LinEx(P, names).explain(acts, seed=3, units=[6, 2])
    np.testing.assert_allclose(simulation_r(sub, P2, names2, acts, test), r[[6, 2]], rtol=1e-12)
    # one-concept labels: the strongest planted concept beats a wrong one
    strongest = [names[int(np.argmax(W[:, u]))] for u in range(10)]
    r_lab = label_simulation_r(strongest, P2, names2, acts, test)
    r_wrong = label_simulation_r(["extra"] * 10, P2, names2, acts, test)
    assert np.all(r_lab > r_wrong + 0.2) and np.all(r_lab < r)
    assert label_simulation_r([None] * 10, P2, names2, acts, test).tolist() == [0.0] * 10
    drop = names2.index(res[0].extra["concepts"][0])
    keep = [i for i in range(31) if i != drop]
    with pytest.raises(InputError, match=r"names2 lacks 1 concept\(s\) the explanations use: \['c"):
        simulation_r(res, P2[:, keep], [names2[i] for i in keep], acts, test)
    with pytest.raises(InputError, match="names2 lacks 1 label"):
        label_simulation_r(["nope"] + strongest[1:], P2, names2, acts, test)
    with pytest.raises(InputError, match="9 labels for the 10 units"):
        label_simulation_r(strongest[1:], P2, names2, acts, test)
    with pytest.raises(InputError, match="unit_acts has only 3 units"):
        simulation_r(res, P2, names2, acts[:, :3], test)


def test_constant_cases_give_r_zero():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(50, 3))
    y = x.copy()
    x[:, 1] = 2.5
    y[:, 2] = -1.0
    r = pearson_columns(x, y)
    assert r[0] == pytest.approx(1.0) and r[1] == 0.0 and r[2] == 0.0
    P = rng.uniform(0, 1, (200, 6))
    acts = np.column_stack([P[:, 0] + rng.normal(0, 0.1, 200), np.full(200, 4.0)])
    res = LinEx(P, list("abcdef")).explain(acts)
    assert res[1].formula is None and res[1].extra["reason"] == "constant activation"
    assert res[1].extra["bias"] == 4.0 and res[1].metrics["val_r"] == 0.0
    assert simulation_r(res, P, list("abcdef"), acts, np.arange(200))[1] == 0.0


def test_concept_filter():
    rng = np.random.default_rng(10)
    P = rng.uniform(0, 1, (100, 4))
    P[:, 1] = rng.uniform(0, 0.3, 100)          # never confidently present: top-5 mean < 0.5
    P[:, 2] = 0.7                               # constant: std < 1e-5
    lx = LinEx(P, list("abcd"))
    assert lx.kept.tolist() == [0, 3]
    res = lx.explain(rng.normal(size=(100, 3)), min_gain=-1.0, max_concepts=4)
    assert all(set(e.extra["concepts"]) <= {"a", "d"} for e in res)
    none = LinEx(P[:, 1:3], ["b", "c"]).explain(rng.normal(size=(100, 2)))
    assert all(e.formula is None and e.extra["concepts"] == [] and "filter" in e.extra["reason"] for e in none)


def test_concept_probabilities_is_the_calibrated_sigmoid_of_the_cosine():
    rng = np.random.default_rng(11)
    img, txt = rng.normal(size=(6, 16)) * 2, rng.normal(size=(5, 16))
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    want = 1 / (1 + np.exp(-60 * (cos - 0.09)))
    got = concept_probabilities(img, txt, 60, -0.09)
    assert got.dtype == np.float32 and got.shape == (6, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.all(concept_probabilities(img, txt, 1e4, 0.0) >= 0)      # no overflow
    with pytest.raises(InputError, match="dimension"):
        concept_probabilities(img, txt[:, :4], 1, 0)
    with pytest.raises(InputError, match="zero vector"):
        concept_probabilities(np.zeros((1, 16)), txt, 1, 0)


def test_split_is_the_anchors_70_10_20_and_reproducible():
    tr, va, te = split_indices(1000, (0.7, 0.1, 0.2), 5)
    assert (len(tr), len(va), len(te)) == (700, 100, 200)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(1000))
    assert all(np.all(np.diff(x) > 0) for x in (tr, va, te))
    assert np.array_equal(split_indices(1000, (0.7, 0.1, 0.2), 5)[2], te)
    assert not np.array_equal(split_indices(1000, (0.7, 0.1, 0.2), 6)[2], te)
    assert [len(x) for x in split_indices(20, (0.7, 0.1, 0.2), 0)] == [14, 2, 4]    # 0.7 + 0.1 rounds down
    with pytest.raises(InputError, match="sum to 1"):
        split_indices(100, (0.7, 0.2, 0.2))
    with pytest.raises(InputError, match="leaves 7 train and 1 val"):
        split_indices(10, (0.7, 0.1, 0.2))


def test_table_columns(tmp_path):
    P, acts, _ = _planted(12, n=800, C=20, U=4, noise=0.05)
    names = [f"c{i}" for i in range(20)]
    res = LinEx(P, names).explain(acts, layer="layer4")
    res.append(Explanation(unit=9, method="linex", formula=None, iou=0.0, layer="layer4", metrics={"val_r": 0.0},
                           extra={"concepts": [], "weights": [], "bias": 1.5}))
    path = tmp_path / "le.csv"
    write_linex_table(path, res)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = ["layer", "unit", "val correlation"] + [f"{k}{i}" for i in range(10) for k in ("weight", "concept")] + ["bias"]
    assert rows[0] == header
    assert len(rows) == 6
    first = dict(zip(header, rows[1]))
    e = res[0]
    assert first["layer"] == "layer4" and int(first["unit"]) == e.unit
    assert float(first["val correlation"]) == e.metrics["val_r"]
    for i, (c, w) in enumerate(zip(e.extra["concepts"], e.extra["weights"])):
        assert first[f"concept{i}"] == c and float(first[f"weight{i}"]) == w
    k = len(e.extra["concepts"])
    assert first[f"concept{k}"] == "0" and first[f"weight{k}"] == "0"      # the anchor's empty slot
    assert float(first["bias"]) == e.extra["bias"]
    assert rows[-1][:4] == ["layer4", "9", "0.0", "0"] and rows[-1][-1] == "1.5"
    # longer explanations widen the table
    long = Explanation(unit=0, method="linex", formula="x", iou=0.0,
                       extra={"concepts": [f"k{i}" for i in range(12)], "weights": [1.0] * 12, "bias": 0.0})
    write_linex_table(path, [long])
    with open(path, newline="") as f:
        assert next(csv.reader(f))[-3:] == ["weight11", "concept11", "bias"]


def test_format_linear():
    assert format_linear(["sky", "red", "room"], [0.834, 0.41, -0.3]) == "0.83*sky + 0.41*red - 0.30*room"
    assert format_linear(["room"], [-0.3]) == "-0.30*room"
    assert format_linear([], []) is None


def test_bad_input():
    rng = np.random.default_rng(13)
    P = rng.uniform(0, 1, (50, 4))
    names = list("abcd")
    acts = rng.normal(size=(50, 2))
    with pytest.raises(InputError, match="4 concept columns but 3 names"):
        LinEx(P, names[:3])
    with pytest.raises(InputError, match=r"values span \[-0.5"):
        LinEx(np.where(P > 0.5, P, -0.5), names)
    with pytest.raises(InputError, match="P has a non-finite value"):
        LinEx(np.where(P > 0.9, np.nan, P), names)
    with pytest.raises(InputError, match="duplicate concept name 'a'"):
        LinEx(P, ["a", "b", "a", "d"])
    lx = LinEx(P, names)
    with pytest.raises(InputError, match="49 image rows but P has 50"):
        lx.explain(acts[:49])
    with pytest.raises(InputError, match="unit_acts has a non-finite value"):
        lx.explain(np.where(acts > 1, np.inf, acts))
    with pytest.raises(InputError, match="unit_acts must be 2-d"):
        lx.explain(acts[:, 0])
    with pytest.raises(InputError, match="lam must be > 0"):
        lx.explain(acts, lam=0)
    with pytest.raises(InputError, match=r"alpha .* must lie in \(0, 1\]"):
        lx.explain(acts, alpha=1.5)
    with pytest.raises(InputError, match="max_concepts must be an integer"):
        lx.explain(acts, max_concepts=0)
    with pytest.raises(InputError, match="ranking must be"):
        lx.explain(acts, ranking="weight")
    with pytest.raises(InputError, match="outside the layer's 2 units"):
        lx.explain(acts, units=[2])
    with pytest.raises(InputError, match="rows must be a 1-d array"):
        simulation_r([], P, names, acts, [1])
