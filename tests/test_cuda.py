"""The CUDA kernels equal the reference. Skipped cleanly where no GPU is usable."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import neurcore
from neurcore import BitMasks, intersect_counts
from conftest import IMAGE_SHAPES, flat, random_masks

pytestmark = pytest.mark.cuda
_cuda = neurcore.backends()["cuda"]
if _cuda["devices"] == 0:
    pytest.skip(f"no usable CUDA device: {_cuda['detail']}", allow_module_level=True)

torch = pytest.importorskip("torch")
LAYOUTS = ["dense", "sparse"]


def host(x):
    return x.cpu().numpy()


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), na=st.integers(0, 70), nb=st.integers(0, 70),
       n_images=st.integers(1, 9), image_shape=st.sampled_from(IMAGE_SHAPES))
def test_cuda_intersect_counts(seed, na, nb, n_images, image_shape):
    rng = np.random.default_rng(seed)
    sample = (n_images, *image_shape)
    a, b = random_masks(rng, na, sample), random_masks(rng, nb, sample)
    expect = flat(a) @ flat(b).T
    for la in LAYOUTS:
        for lb in LAYOUTS:
            A, B = BitMasks.from_dense(a, la).to("cuda"), BitMasks.from_dense(b, lb).to("cuda")
            for backend in ["cuda", "triton"]:
                got = intersect_counts(A, B, backend=backend)
                assert got.is_cuda and np.array_equal(host(got), expect), (la, lb, backend)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), image_shape=st.sampled_from(IMAGE_SHAPES))
def test_cuda_counts_ops_and_layouts(seed, n, image_shape):
    rng = np.random.default_rng(seed)
    sample = (int(rng.integers(1, 8)), *image_shape)
    a, b, one = random_masks(rng, n, sample), random_masks(rng, n, sample), random_masks(rng, 1, sample)
    for la in LAYOUTS:
        A = BitMasks.from_dense(a, la).to("cuda")
        assert A.device.startswith("cuda")
        assert np.array_equal(host(A.count()), flat(a).sum(1))
        assert np.array_equal(host(A.count(per_image=True)), a.reshape(n, sample[0], -1).sum(2))
        assert np.array_equal((~A).to_dense(), ~a)
        for other in LAYOUTS:
            assert np.array_equal(A.as_layout(other).to_dense(), a)
        for lb in LAYOUTS:
            B, O = BitMasks.from_dense(b, lb).to("cuda"), BitMasks.from_dense(one, lb).to("cuda")
            assert np.array_equal((A[:7] & B).to_dense(), a[:7] & b)  # row-wise AND needs matching rows
            assert np.array_equal((A | O).to_dense(), a | one)
            assert np.array_equal(A.and_not(B).to_dense(), a & ~b)
        assert np.array_equal(A[::2].to_dense(), a[::2])


def test_cuda_large_dense_tiles():
    """Sizes across the 64 x 64 output tiles and 32-word stages of the dense kernel."""
    rng = np.random.default_rng(0)
    a, b = random_masks(rng, 130, (3, 700), "dense"), random_masks(rng, 67, (3, 700), "dense")
    got = intersect_counts(BitMasks.from_dense(a, "dense").to("cuda"), BitMasks.from_dense(b, "dense").to("cuda"))
    assert np.array_equal(host(got), flat(a) @ flat(b).T)


@pytest.mark.parametrize("n_a,n_b", [(1, 1), (3, 5), (70, 2)])
def test_cuda_dense_split_words(n_a, n_b):
    """Few output tiles over many words: the dense kernel splits the words across blocks (split-K)."""
    rng = np.random.default_rng(n_a * 100 + n_b)
    a, b = random_masks(rng, n_a, (40, 4001), "dense"), random_masks(rng, n_b, (40, 4001), "dense")
    got = intersect_counts(BitMasks.from_dense(a, "dense").to("cuda"), BitMasks.from_dense(b, "dense").to("cuda"))
    assert np.array_equal(host(got), flat(a) @ flat(b).T)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_rule_search_equals_cpu(layout):
    from neurcore import BeamSearch, ConceptSet, NetworkDissection
    from neurcore.testing import blob_concepts, plant_units

    rng = np.random.default_rng(3)
    concepts = blob_concepts(rng, 20, 60, (8, 8))
    concepts = ConceptSet(concepts.masks.as_layout(layout), concepts.names, concepts.categories)
    units, _ = plant_units(rng, concepts, 9)
    gpu_concepts, gpu_units = concepts.to("cuda"), units.as_layout(layout).to("cuda")
    for explainer in (BeamSearch, NetworkDissection):
        cpu = [r.to_dict() for r in explainer(concepts).explain(units)]
        gpu = [r.to_dict() for r in explainer(gpu_concepts).explain(gpu_units)]
        assert gpu == cpu


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_no_images_gives_zero_counts(layout):
    """A sample space of zero images (BitMasks allows it): zeros, as on the CPU, not a crash."""
    a = BitMasks.zeros(3, (0, 8, 8), layout).to("cuda")
    b = BitMasks.zeros(5, (0, 8, 8), layout).to("cuda")
    for lb in LAYOUTS:
        got = intersect_counts(a, b.as_layout(lb))
        assert got.is_cuda and host(got).shape == (3, 5) and not host(got).any()
    assert not host(a.count()).any()


@pytest.mark.parametrize("image_shape", [(40, 40), (63, 64)])  # 25 and 63 words per image
def test_cuda_sparse_sparse_wide_images(image_shape):
    """Images of 25 and 63 words: the warp-cooperative sparse x sparse branch (16 words or more)."""
    rng = np.random.default_rng(image_shape[0])
    sample = (9, *image_shape)
    a, b = random_masks(rng, 11, sample), random_masks(rng, 7, sample)
    A, B = BitMasks.from_dense(a, "sparse").to("cuda"), BitMasks.from_dense(b, "sparse").to("cuda")
    assert A.words_per_image in (25, 63)
    got = intersect_counts(A, B)
    assert np.array_equal(host(got), flat(a) @ flat(b).T)
    assert np.array_equal((A[:7] & B).to_dense(), a[:7] & b)  # row-wise AND needs matching rows


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_cuda_second_device_while_the_first_is_current():
    """Masks on cuda:1 while cuda:0 is current: the kernels run on cuda:1 (the dispatcher's device guard)."""
    rng = np.random.default_rng(1)
    a, b = random_masks(rng, 6, (5, 9, 9)), random_masks(rng, 4, (5, 9, 9))
    with torch.cuda.device(0):
        for layout in LAYOUTS:
            A = BitMasks.from_dense(a, layout).to("cuda:1")
            B = BitMasks.from_dense(b, layout).to("cuda:1")
            got = intersect_counts(A, B)
            assert got.device == torch.device("cuda:1")
            assert np.array_equal(host(got), flat(a) @ flat(b).T)
            assert np.array_equal((A | B[:1]).to_dense(), a | b[:1])


def test_cuda_primitives_refuse_bad_shapes_before_the_kernel():
    """The CUDA bindings take plain pointers: the dispatcher's checks must stop what the CPU binding would."""
    from neurcore.engine import _dispatch
    from neurcore.errors import InputError

    w = torch.zeros((3, 2), dtype=torch.int64, device="cuda")
    with pytest.raises(InputError, match="words per row differ"):
        _dispatch.binary_dense("and", w, w[:, :1].contiguous())
    with pytest.raises(InputError, match="must match, or one must be 1"):
        _dispatch.binary_dense("or", w, w[:2])
    with pytest.raises(InputError, match="does not fill 2 words per image"):
        _dispatch.not_blocks(w, 200)
    with pytest.raises(InputError, match=r"outside \[-1, 3\)"):
        _dispatch.combine_blocks("and", w, np.array([3]), w, np.array([0]))
    with pytest.raises(InputError, match="popcount_rows: words must be"):
        _dispatch.popcount_rows(w.reshape(-1))


def test_cuda_channel_mask_on_a_model_on_the_gpu():
    """Fidelity's masks are made on the CPU; they must follow a layer's output to the GPU (the circuit
    pipeline's --device cuda failed here on the first GPU run)."""
    from neurcore.circuits import ChannelMask

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with ChannelMask(model, {"1": mask}):
        got = model(x)
    hidden = model[1](model[0](x)) * mask.cuda().view(1, -1, 1, 1)
    assert torch.allclose(got, model[2](hidden))
