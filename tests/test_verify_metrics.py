"""The verification metrics (SIEVE's Activation Rate, CoSy's AUC and MAD) against plain loops and sklearn."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import roc_auc_score

from neurcore.errors import InputError
from neurcore.labels import activation_rate, cosy_scores, mean_activation_rate_filtered, probe_thresholds

# Values from a small grid (many ties and constant columns) or free floats.
_VALUES = st.one_of(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]),
                    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32))


def _acts(n_min=1, n_max=12, u=None):
    units = st.just(u) if u is not None else st.integers(1, 4)
    return units.flatmap(lambda k: hnp.arrays(np.float64, st.tuples(st.integers(n_min, n_max), st.just(k)),
                                              elements=_VALUES))


def _pair(n_gen_min=1):
    return st.integers(1, 4).flatmap(lambda k: st.tuples(_acts(n_gen_min, 10, k), _acts(1, 12, k)))


# ----------------------------------------------------------------- activation rate
def _rate_loop(gen, thresholds):
    out = []
    for u in range(gen.shape[1]):
        hits = 0
        for i in range(gen.shape[0]):
            if gen[i, u] > thresholds[u]:
                hits += 1
        out.append(hits / gen.shape[0])
    return np.array(out)


@given(_pair())
def test_activation_rate_matches_a_loop(pair):
    gen, probe = pair
    t = probe_thresholds(probe)
    np.testing.assert_array_equal(activation_rate(gen, t), _rate_loop(gen, t))


def test_activation_rate_is_strict_and_single_image():
    gen = np.array([[1.0, 2.0, 0.5]])  # one generated image, three units
    np.testing.assert_array_equal(activation_rate(gen, [1.0, 1.0, 1.0]), [0.0, 1.0, 0.0])
    assert activation_rate(np.array([0.0, 3.0, 3.0, 1.0]), 1.0) == 0.5  # one unit: a float
    assert isinstance(activation_rate(np.array([0.0, 3.0]), np.float64(1.0)), float)


def test_activation_rate_rejects_bad_shapes():
    with pytest.raises(InputError, match="one value per unit"):
        activation_rate(np.zeros((4, 3)), [0.0, 1.0])
    with pytest.raises(InputError, match="at least 1 image"):
        activation_rate(np.zeros((0, 3)), [0.0, 1.0, 2.0])
    with pytest.raises(InputError, match="NaN"):
        activation_rate(np.array([[np.nan]]), [0.0])


# ----------------------------------------------------------------- thresholds
@given(_acts(1, 300), st.sampled_from([0.01, 0.05, 0.5]))
def test_probe_thresholds_is_the_upper_quantile(acts, top):
    t = probe_thresholds(acts, top=top)
    assert t.shape == (acts.shape[1],)
    for u in range(acts.shape[1]):
        col = np.sort(acts[:, u])
        assert t[u] == pytest.approx(np.quantile(col, 1 - top))
        # at most about a ``top`` fraction of the probe lies strictly above it
        assert (col > t[u]).mean() <= top + 1.0 / len(col)
        assert col[0] <= t[u] <= col[-1]


def test_probe_thresholds_top_1_percent():
    acts = np.arange(1000, dtype=float)[:, None] * [1.0, -1.0]
    t = probe_thresholds(acts)
    assert (acts[:, 0] > t[0]).sum() == 10 and (acts[:, 1] > t[1]).sum() == 10
    with pytest.raises(InputError, match="top"):
        probe_thresholds(acts, top=0.0)
    with pytest.raises(InputError, match=r"\[n_images, n_units\]"):
        probe_thresholds(np.zeros((2, 3, 4)))


# ----------------------------------------------------------------- SIEVE's filter
@given(st.lists(st.one_of(st.sampled_from([0.0, 0.1, 0.3, 1.0]), st.floats(0, 1)), min_size=1, max_size=30))
def test_filtered_mean_rate_matches_the_rule(rates):
    initial, kept, final = mean_activation_rate_filtered(rates)
    assert initial == pytest.approx(sum(rates) / len(rates))
    expect = [r >= initial - 1e-12 for r in rates]
    assert kept.tolist() == expect
    assert final == pytest.approx(np.mean([r for r, k in zip(rates, expect) if k]))
    assert final >= initial - 1e-12


def test_filtered_mean_rate_edge_cases():
    # equal rates are all kept although their mean rounds above them
    initial, kept, final = mean_activation_rate_filtered([0.1, 0.1, 0.1])
    assert kept.all() and final == pytest.approx(0.1)
    initial, kept, final = mean_activation_rate_filtered([1.0, 0.0, np.nan, 0.8])
    assert initial == pytest.approx(0.6) and kept.tolist() == [True, False, False, True]
    assert final == pytest.approx(0.9)
    with pytest.raises(InputError, match="no"):
        mean_activation_rate_filtered([np.nan])
    with pytest.raises(InputError, match="no"):
        mean_activation_rate_filtered([])


# ----------------------------------------------------------------- CoSy
def _mad_loop(g, c):
    mean_c = sum(c) / len(c)
    std_c = (sum((x - mean_c) ** 2 for x in c) / len(c)) ** 0.5
    return (sum(g) / len(g) - mean_c) / std_c


@given(_pair())
def test_cosy_auc_equals_sklearn_and_mad_a_loop(pair):
    gen, ctrl = pair
    auc, mad = cosy_scores(gen, ctrl)
    assert auc.shape == mad.shape == (gen.shape[1],)
    for u in range(gen.shape[1]):
        labels = np.r_[np.ones(len(gen)), np.zeros(len(ctrl))]
        expect = roc_auc_score(labels, np.r_[gen[:, u], ctrl[:, u]])
        assert auc[u] == pytest.approx(expect, abs=1e-12)
        if np.all(ctrl[:, u] == ctrl[0, u]):
            if np.all(gen[:, u] == ctrl[0, u]):
                assert mad[u] == 0.0
            else:
                assert np.isnan(mad[u])
        else:
            assert mad[u] == pytest.approx(_mad_loop(gen[:, u], ctrl[:, u]), rel=1e-9, abs=1e-9)


def test_cosy_ties_count_half_and_perfect_separation():
    auc, _ = cosy_scores(np.ones((3, 1)), np.ones((5, 1)))  # all equal
    assert auc[0] == 0.5
    auc, _ = cosy_scores(np.array([[1.0], [2.0]]), np.array([[1.0], [0.0]]))  # pairs: 0.5, 1, 1, 1
    assert auc[0] == pytest.approx(3.5 / 4)
    gen = np.array([[5.0, -5.0]])  # a single generated image, U = 2
    ctrl = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    auc, mad = cosy_scores(gen, ctrl)
    np.testing.assert_allclose(auc, [1.0, 0.0])
    np.testing.assert_allclose(mad, [(5 - 1) / np.std([0, 1, 2]), (-5 - 1) / np.std([0, 1, 2])])


def test_cosy_constant_control():
    ctrl = np.full((6, 3), 0.1)  # a dead unit on the probe; 0.1 * 6 does not sum exactly
    gen = np.array([[0.1, 0.1, 0.1], [0.1, 0.3, 0.0]])
    auc, mad = cosy_scores(gen, ctrl)
    assert mad[0] == 0.0 and np.isnan(mad[1]) and np.isnan(mad[2])
    np.testing.assert_allclose(auc, [0.5, 0.75, 0.25])
    _, mad = cosy_scores(gen, ctrl, zero_std=0.0)
    np.testing.assert_array_equal(mad, [0.0, 0.0, 0.0])


def test_cosy_vectorized_over_many_units():
    rng = np.random.default_rng(0)
    gen, ctrl = rng.normal(1, 1, (50, 300)), rng.normal(0, 1, (400, 300))
    auc, mad = cosy_scores(gen, ctrl)
    for u in (0, 123, 299):
        labels = np.r_[np.ones(50), np.zeros(400)]
        assert auc[u] == pytest.approx(roc_auc_score(labels, np.r_[gen[:, u], ctrl[:, u]]))
    assert 0.7 < auc.mean() < 0.8 and 0.8 < mad.mean() < 1.2  # Phi(1/sqrt 2) = 0.76; shift of 1 sd


def test_cosy_rejects_bad_input():
    with pytest.raises(InputError, match="units"):
        cosy_scores(np.zeros((3, 2)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="control: need at least 1 image"):
        cosy_scores(np.zeros((3, 2)), np.zeros((0, 2)))
    with pytest.raises(InputError, match="NaN"):
        cosy_scores(np.array([[np.inf]]), np.zeros((2, 1)))
