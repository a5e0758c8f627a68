"""The BitMasks API: packing, layouts, counts, indexing, ops, save/load and the streaming builder."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

import neurcore
from neurcore import BitMasks, BitMasksBuilder
from conftest import IMAGE_SHAPES, flat, random_masks

seeds = st.integers(0, 2**32 - 1)
LAYOUTS = ["dense", "sparse"]


@given(seed=seeds, n=st.integers(0, 6), n_images=st.integers(1, 8), image_shape=st.sampled_from(IMAGE_SHAPES))
def test_roundtrip_and_counts(seed, n, n_images, image_shape):
    rng = np.random.default_rng(seed)
    m = random_masks(rng, n, (n_images, *image_shape))
    for layout in ["dense", "sparse", "auto"]:
        bm = BitMasks.from_dense(m, layout)
        assert bm.shape == m.shape and bm.n == len(bm) == n
        assert bm.sample_shape == (n_images, *image_shape)
        assert np.array_equal(bm.to_dense(), m)
        assert np.array_equal(bm.count(), flat(m).sum(1))
        assert np.array_equal(bm.count(per_image=True), m.reshape(n, n_images, -1).sum(2) if n else
                              np.zeros((0, n_images), np.int64))
        for other in LAYOUTS:
            assert np.array_equal(bm.as_layout(other).to_dense(), m)


def test_padding_bits_stay_zero():
    m = np.ones((2, 3, 70), bool)
    for layout in LAYOUTS:
        bm = BitMasks.from_dense(m, layout)
        words = bm.layout_arrays()["words"].reshape(-1, 2)
        assert np.all(words[:, 1] == (1 << 6) - 1)  # 70 = 64 + 6 pixels
        inv = ~(~bm)
        assert np.all(inv.layout_arrays()["words"].reshape(-1, 2)[:, 1] == (1 << 6) - 1)
        assert not (~bm).to_dense().any() and (~bm).count().sum() == 0


def test_sparse_layout_stores_only_touched_images():
    m = np.zeros((3, 100, 16, 16), bool)
    m[0, [3, 50], 1, 1] = True
    m[2, 99] = True
    bm = BitMasks.from_dense(m, "auto")
    assert bm.layout == "sparse" and bm.nnz_blocks == 3
    arrays = bm.layout_arrays()
    assert arrays["indptr"].tolist() == [0, 2, 2, 3] and arrays["images"].tolist() == [3, 50, 99]
    assert BitMasks.from_dense(np.ones((3, 100, 16, 16), bool), "auto").layout == "dense"
    assert bm.occupancy() == pytest.approx(3 / 300)
    # Small images pay the per-block cost sooner: the same occupancy is dense at 8 x 8.
    m[1, :3] = True
    assert neurcore.sparse_threshold(1) < 6 / 300 < neurcore.sparse_threshold(4)
    assert BitMasks.from_dense(m[:, :, :8, :8], "auto").layout == "dense"


@given(seed=seeds, n=st.integers(1, 7))
def test_indexing(seed, n):
    rng = np.random.default_rng(seed)
    m = random_masks(rng, n, (5, 9))
    for layout in LAYOUTS:
        bm = BitMasks.from_dense(m, layout)
        assert np.array_equal(bm[-1].to_dense(), m[-1:])
        assert np.array_equal(bm[1:4].to_dense(), m[1:4])
        assert np.array_equal(bm[::-2].to_dense(), m[::-2])
        idx = rng.integers(-n, n, size=4)
        assert np.array_equal(bm[idx].to_dense(), m[idx])
        sel = rng.random(n) < 0.5
        assert np.array_equal(bm[sel].to_dense(), m[sel])
        assert bm[[]].n == 0
    with pytest.raises(IndexError, match=f"row {n + 7} out of range for {n} rows"):
        BitMasks.from_dense(m)[n + 7]
    with pytest.raises(IndexError, match="boolean row index must have shape"):
        BitMasks.from_dense(m)[np.ones(n + 1, bool)]


def test_concat_mixed_layouts():
    rng = np.random.default_rng(0)
    parts = [random_masks(rng, k, (6, 10)) for k in (2, 0, 3)]
    bms = [BitMasks.from_dense(p, layout) for p, layout in zip(parts, ["dense", "sparse", "dense"])]
    out = BitMasks.concat(bms)
    assert np.array_equal(out.to_dense(), np.concatenate(parts))
    with pytest.raises(ValueError, match=r"part 1 is over \(6, 11\), part 0 over \(6, 10\)"):
        BitMasks.concat([bms[0], BitMasks.from_dense(np.zeros((1, 6, 11), bool))])


OPS = {
    "and": (lambda x, y: x & y, np.logical_and),
    "or": (lambda x, y: x | y, np.logical_or),
    "and_not": (lambda x, y: x.and_not(y), lambda x, y: x & ~y),
}


@pytest.mark.parametrize("op", sorted(OPS))
@given(seed=seeds, n=st.integers(1, 5), image_shape=st.sampled_from(IMAGE_SHAPES),
       shape=st.sampled_from(["same", "left one", "right one"]))
def test_elementwise_ops(op, seed, n, image_shape, shape):
    rng = np.random.default_rng(seed)
    sample = (int(rng.integers(1, 7)), *image_shape)
    a = random_masks(rng, 1 if shape == "left one" else n, sample)
    b = random_masks(rng, 1 if shape == "right one" else n, sample)
    ours, numpys = OPS[op]
    for la in LAYOUTS:
        for lb in LAYOUTS:
            out = ours(BitMasks.from_dense(a, la), BitMasks.from_dense(b, lb))
            assert np.array_equal(out.to_dense(), numpys(a, b)), (la, lb)
            if op != "or" and out.layout == "sparse":  # no stored block is empty
                assert out.nnz_blocks == int((out.count(per_image=True) > 0).sum())


def test_and_keeps_large_sparse_operands_sparse():
    concepts = BitMasks.from_dense(np.zeros((4, 50, 8), bool), "sparse")
    unit = BitMasks.from_dense(np.ones((1, 50, 8), bool), "dense")
    assert (unit & concepts).layout == "sparse" and (unit.and_not(concepts)).layout == "sparse"


@given(seed=seeds, n=st.integers(0, 4), image_shape=st.sampled_from(IMAGE_SHAPES))
def test_invert(seed, n, image_shape):
    m = random_masks(np.random.default_rng(seed), n, (3, *image_shape))
    for layout in LAYOUTS:
        assert np.array_equal((~BitMasks.from_dense(m, layout)).to_dense(), ~m)


def test_op_errors_name_the_problem():
    a = BitMasks.from_dense(np.zeros((2, 4, 8), bool))
    with pytest.raises(ValueError, match=r"left is over \(4, 8\), right over \(4, 9\)"):
        a & BitMasks.from_dense(np.zeros((2, 4, 9), bool))
    with pytest.raises(ValueError, match="row counts 2 and 3 must match, or one must be 1"):
        a | BitMasks.from_dense(np.zeros((3, 4, 8), bool))


def test_from_dense_and_constructor_errors():
    with pytest.raises(TypeError, match="masks must be a bool array, got dtype float64"):
        BitMasks.from_dense(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"masks must have shape \[n, n_images, \*image_shape\], got \(5,\)"):
        BitMasks.from_dense(np.zeros(5, bool))
    with pytest.raises(TypeError, match="words must have dtype uint64, got int64"):
        BitMasks((3, 8), np.zeros((1, 3, 1), np.int64))
    with pytest.raises(ValueError, match="words must be C-contiguous"):
        BitMasks((3, 8), np.zeros((1, 3, 2), np.uint64)[:, :, ::2])
    with pytest.raises(ValueError, match=r"dense words must have shape \[n, 3, 1\]"):
        BitMasks((3, 8), np.zeros((1, 3, 2), np.uint64))
    with pytest.raises(ValueError, match="images must be strictly increasing within each row"):
        BitMasks((3, 8), np.zeros((2, 1), np.uint64), np.array([0, 2]), np.array([2, 1]))
    with pytest.raises(ValueError, match=r"images must lie in \[0, 3\)"):
        BitMasks((3, 8), np.zeros((1, 1), np.uint64), np.array([0, 1]), np.array([3]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_save_load_memory_mapped(tmp_path, layout):
    rng = np.random.default_rng(1)
    m = random_masks(rng, 5, (7, 5, 13))
    bm = BitMasks.from_dense(m, layout)
    bm.save(tmp_path / "masks")
    loaded = BitMasks.load(tmp_path / "masks")
    assert isinstance(loaded.layout_arrays()["words"], np.memmap)
    assert loaded.layout == layout and np.array_equal(loaded.to_dense(), m)
    assert np.array_equal(neurcore.intersect_counts(loaded, bm), flat(m) @ flat(m).T)
    assert np.array_equal(loaded[1:3].to_dense(), m[1:3])
    # Saving again over an existing copy replaces it whole and leaves no temporaries.
    (~bm).save(tmp_path / "masks")
    assert np.array_equal(BitMasks.load(tmp_path / "masks", mmap=False).to_dense(), ~m)
    assert sorted(os.listdir(tmp_path)) == ["masks"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        BitMasks.load(tmp_path)
    BitMasks.from_dense(np.zeros((1, 2, 3), bool), "sparse").save(tmp_path / "m")
    os.remove(tmp_path / "m" / "images.npy")
    with pytest.raises(FileNotFoundError, match=r"images.npy is missing"):
        BitMasks.load(tmp_path / "m")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="has format 'other'"):
        BitMasks.load(tmp_path / "bad")


def test_failed_save_keeps_the_old_copy(tmp_path, monkeypatch):
    bm = BitMasks.from_dense(np.ones((1, 2, 3), bool))
    bm.save(tmp_path / "m")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        BitMasks.from_dense(np.zeros((1, 2, 3), bool)).save(tmp_path / "m")
    monkeypatch.undo()
    assert BitMasks.load(tmp_path / "m").to_dense().all()
    assert sorted(os.listdir(tmp_path)) == ["m"]


@pytest.mark.parametrize("to_disk", [False, True])
@pytest.mark.parametrize("layout", ["auto", "dense", "sparse"])
def test_builder_streams_batches(tmp_path, to_disk, layout):
    rng = np.random.default_rng(2)
    n, shape = 6, (9, 10)
    full = random_masks(rng, n, (23, *shape), kind="image-sparse")
    b = BitMasksBuilder(n, shape, layout=layout, path=tmp_path / "built" if to_disk else None)
    b.append(full[:, :5])
    rows, images = np.nonzero(full[:, 5:17].reshape(n, 12, -1).any(2))
    b.append_sparse(12, rows[::-1], images[::-1], full[:, 5:17][rows[::-1], images[::-1]])
    b.append(full[:, 17:])
    out = b.finish()
    assert out.sample_shape == (23, *shape)
    assert np.array_equal(out.to_dense(), full)
    if layout != "auto":
        assert out.layout == layout
    if to_disk:
        assert isinstance(out.layout_arrays()["words"], np.memmap)
        assert np.array_equal(BitMasks.load(tmp_path / "built").to_dense(), full)
        assert sorted(os.listdir(tmp_path)) == ["built"]


def test_builder_errors():
    b = BitMasksBuilder(3, (4, 4))
    with pytest.raises(ValueError, match=r"masks must have shape \[3, b, \*\(4, 4\)\], got \(2, 1, 4, 4\)"):
        b.append(np.zeros((2, 1, 4, 4), bool))
    with pytest.raises(ValueError, match=r"images must lie in \[0, 2\)"):
        b.append_sparse(2, [0], [2], np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="listed twice"):
        b.append_sparse(2, [0, 0], [1, 1], np.ones((2, 4, 4), bool))
    with pytest.raises(TypeError, match="masks must be bool"):
        b.append(np.zeros((3, 1, 4, 4), np.uint8))


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_to_cuda_without_a_usable_gpu_is_backend_unavailable(device):
    """Every spelling of a CUDA device says the backend is unavailable (not torch's own error)."""
    if neurcore.backends()["cuda"]["devices"]:
        pytest.skip("a CUDA device is usable here")
    masks = BitMasks.from_dense(np.ones((1, 2, 3, 3), bool))
    with pytest.raises(neurcore.BackendUnavailable):
        masks.to(device)
