"""The Triton kernels equal the reference: on a GPU if there is one, else on the CPU under TRITON_INTERPRET=1."""

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("torch")
pytest.importorskip("triton")

from neurcore import BitMasks, backends, intersect_counts  # noqa: E402
from conftest import flat, random_masks  # noqa: E402

pytestmark = pytest.mark.triton

if not backends()["triton"]["usable"]:
    pytest.skip(f"Triton cannot run here: {backends()['triton']['detail']}", allow_module_level=True)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def on_device(masks: BitMasks) -> BitMasks:
    return masks if DEVICE == "cpu" else masks.to("cuda")


def counts(x):
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()


# Small sizes: the interpreter runs each program in Python.
@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), na=st.integers(0, 5), nb=st.integers(0, 5),
       n_images=st.integers(1, 5), image_shape=st.sampled_from([(), (7,), (8, 8), (65,), (3, 5, 7)]))
def test_triton_equals_matmul(seed, na, nb, n_images, image_shape):
    rng = np.random.default_rng(seed)
    sample = (n_images, *image_shape)
    a, b = random_masks(rng, na, sample), random_masks(rng, nb, sample)
    expect = flat(a) @ flat(b).T
    for la in ["dense", "sparse"]:
        for lb in ["dense", "sparse"]:
            A, B = on_device(BitMasks.from_dense(a, la)), on_device(BitMasks.from_dense(b, lb))
            got = counts(intersect_counts(A, B, backend="triton"))
            assert np.array_equal(got, expect), (la, lb)


def test_triton_edge_cases():
    rng = np.random.default_rng(5)
    for sample in [(1, 9, 9), (6, 130), (40,)]:  # a single image; > 64-word blocks; 1-pixel images
        a = random_masks(rng, 3, sample)
        a[0], a[1] = False, True
        b = random_masks(rng, 1, sample)
        for la in ["dense", "sparse"]:
            got = counts(intersect_counts(on_device(BitMasks.from_dense(a, la)),
                                          on_device(BitMasks.from_dense(b, "sparse")), backend="triton"))
            assert np.array_equal(got, flat(a) @ flat(b).T)


@pytest.mark.parametrize("splits", [1, 3, 7])
def test_triton_dense_counts_split_over_k(splits):
    """The dense kernel with K cut into ranges that add atomically (how it fills a GPU) gives the same
    counts; K not a multiple of the 16-word tile, rows not multiples of the tile."""
    import torch

    from neurcore.engine._triton import dense_counts

    rng = np.random.default_rng(splits)
    na, nb, k = 5, 18, 101
    a = torch.from_numpy(rng.integers(-2**62, 2**62, (na, k), dtype=np.int64)).to(DEVICE)
    b = torch.from_numpy(rng.integers(-2**62, 2**62, (nb, k), dtype=np.int64)).to(DEVICE)
    out = dense_counts(a, b, torch.zeros((na, nb), dtype=torch.int64, device=DEVICE), splits)
    bits = lambda x: np.unpackbits(x.cpu().numpy().view(np.uint8), axis=1).astype(np.int64)  # noqa: E731
    assert np.array_equal(counts(out), bits(a) @ bits(b).T)
