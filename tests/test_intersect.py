"""intersect_counts on BitMasks: exactly the integer matrix product of the masks, in every layout pair."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from neurcore import BitMasks, intersect_counts
from conftest import IMAGE_SHAPES, flat, random_masks

LAYOUTS = ["dense", "sparse"]


@given(seed=st.integers(0, 2**32 - 1), na=st.integers(0, 10), nb=st.integers(0, 10),
       n_images=st.integers(1, 9), image_shape=st.sampled_from(IMAGE_SHAPES),
       kind=st.sampled_from(["mixed", "image-sparse", "dense"]))
def test_equals_integer_matmul(cpu_level, seed, na, nb, n_images, image_shape, kind):
    rng = np.random.default_rng(seed)
    sample = (n_images, *image_shape)
    a, b = random_masks(rng, na, sample, kind), random_masks(rng, nb, sample, "mixed")
    expect = flat(a) @ flat(b).T
    for la in LAYOUTS:
        for lb in LAYOUTS:
            got = intersect_counts(BitMasks.from_dense(a, la), BitMasks.from_dense(b, lb))
            assert got.dtype == np.int64 and got.shape == (na, nb)
            assert np.array_equal(got, expect), (la, lb)


@pytest.mark.parametrize("la", LAYOUTS)
@pytest.mark.parametrize("lb", LAYOUTS)
def test_edge_cases(la, lb):
    rng = np.random.default_rng(3)
    cases = {
        "single image": (1, 9, 9),
        "single pixel images": (50,),
        "one word exactly": (4, 8, 8),
        "one word plus one bit": (4, 65),
    }
    for sample in cases.values():
        a = random_masks(rng, 4, sample)
        a[0] = False   # empty row
        a[1] = True    # all-ones row
        b = random_masks(rng, 1, sample)  # single row
        expect = flat(a) @ flat(b).T
        got = intersect_counts(BitMasks.from_dense(a, la), BitMasks.from_dense(b, lb))
        assert np.array_equal(got, expect)
        assert np.array_equal(got[1], flat(b).sum(1))  # all-ones row counts B's bits
        assert not got[0].any()


def test_does_not_depend_on_layout_choice_of_empty_sets():
    a = BitMasks.zeros(3, (5, 70), layout="sparse")
    b = BitMasks.zeros(2, (5, 70), layout="dense")
    assert np.array_equal(intersect_counts(a, b), np.zeros((3, 2), np.int64))
    assert intersect_counts(a[:0], b).shape == (0, 2)


def test_mismatched_sample_spaces_are_named():
    a = BitMasks.from_dense(np.zeros((2, 10, 56, 56), bool))
    b = BitMasks.from_dense(np.zeros((2, 10, 56, 57), bool))
    with pytest.raises(ValueError, match=r"A is over \(10, 56, 56\), B over \(10, 56, 57\)"):
        intersect_counts(a, b)


def test_non_bitmasks_argument_is_named():
    a = BitMasks.from_dense(np.zeros((2, 10, 8), bool))
    with pytest.raises(TypeError, match="B must be a BitMasks .* got ndarray"):
        intersect_counts(a, np.zeros((2, 10, 8), bool))


def test_unknown_backend():
    a = BitMasks.from_dense(np.zeros((1, 2, 8), bool))
    with pytest.raises(ValueError, match="backend must be"):
        intersect_counts(a, a, backend="fpga")
    with pytest.raises(ValueError, match="needs masks on a CUDA device"):
        intersect_counts(a, a, backend="cuda")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 12), n_images=st.integers(1, 9))
def test_image_major_index_on_torch_tensors_equals_numpy(seed, n, n_images):
    """The sparse x sparse index built on a tensor's device (GPU path) equals the host's (numpy)."""
    torch = pytest.importorskip("torch")
    from neurcore.engine._dispatch import image_major_index

    rng = np.random.default_rng(seed)
    images = [np.sort(rng.choice(n_images, rng.integers(0, n_images + 1), replace=False)) for _ in range(n)]
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in images])]).astype(np.int64)
    flat_images = np.concatenate(images + [np.zeros(0)]).astype(np.int64)
    host = image_major_index(indptr, flat_images, n_images)
    device = image_major_index(torch.from_numpy(indptr), torch.from_numpy(flat_images), n_images)
    for h, d in zip(host, device):
        assert d.dtype == torch.int64 and np.array_equal(h, d.numpy())
