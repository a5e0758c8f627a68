"""Every CPU kernel of neurcore.engine._C equals its numpy reference, at every usable instruction-set level."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from neurcore.engine import reference as ref
from neurcore.engine.backends import _C

seeds = st.integers(0, 2**32 - 1)


def random_words(rng, m, k, density):
    """uint64 [m, k] with bits set at the given density (0 and 1 included)."""
    if density in (0.0, 1.0):
        return np.full((m, k), np.uint64(0 if density == 0.0 else 2**64 - 1), dtype=np.uint64)
    bits = rng.random((m, k * 64)) < density
    return ref.pack_bits(bits) if k else np.zeros((m, 0), np.uint64)


densities = st.sampled_from([0.0, 0.03, 0.5, 1.0])


@given(seed=seeds, m=st.integers(0, 9), k=st.integers(0, 70), density=densities)
def test_popcount_rows(cpu_level, seed, m, k, density):
    w = random_words(np.random.default_rng(seed), m, k, density)
    assert np.array_equal(_C.popcount_rows(w), ref.popcount_rows(w))


@given(seed=seeds, na=st.integers(0, 11), nb=st.integers(0, 11), k=st.integers(0, 1100),
       da=densities, db=densities)
def test_intersect_dense_dense(cpu_level, seed, na, nb, k, da, db):
    # k up to 1100 crosses the 512-word chunk; na, nb cross the register tiles' tails.
    rng = np.random.default_rng(seed)
    a, b = random_words(rng, na, k, da), random_words(rng, nb, k, db)
    assert np.array_equal(_C.intersect_dense_dense(a, b), ref.intersect_counts(a, b))


def random_sparse(rng, n, n_images, wpi, density, touch):
    """(indptr, images, words) of an image-sparse row set touching ~touch of the images."""
    indptr, images, words = [0], [], []
    for _ in range(n):
        imgs = np.flatnonzero(rng.random(n_images) < touch)
        images.append(imgs)
        words.append(random_words(rng, len(imgs), wpi, density))
        indptr.append(indptr[-1] + len(imgs))
    return (np.array(indptr, np.int64), np.concatenate(images).astype(np.int64) if images else np.zeros(0, np.int64),
            np.concatenate(words) if words else np.zeros((0, wpi), np.uint64))


touches = st.sampled_from([0.0, 0.1, 0.5, 1.0])
# Block widths below, at and past the 4- and 8-word vectors (49 words = a 56 x 56 image).
wpis = st.sampled_from([1, 2, 3, 5, 8, 9, 17, 49])


@given(seed=seeds, na=st.integers(0, 9), nb=st.integers(0, 9), n_images=st.integers(1, 30),
       wpi=wpis, da=densities, db=densities, ta=touches)
def test_intersect_sparse_dense(cpu_level, seed, na, nb, n_images, wpi, da, db, ta):
    rng = np.random.default_rng(seed)
    ip, im, w = random_sparse(rng, na, n_images, wpi, da, ta)
    b = random_words(rng, nb, n_images * wpi, db).reshape(nb, n_images, wpi)
    expect = ref.intersect_counts(ref.sparse_to_dense_words(ip, im, w, n_images).reshape(na, -1) if na else
                                  np.zeros((0, n_images * wpi), np.uint64), b.reshape(nb, n_images * wpi))
    assert np.array_equal(_C.intersect_sparse_dense(ip, im, w, b), expect)


@given(seed=seeds, na=st.integers(0, 12), nb=st.integers(0, 9), n_images=st.integers(1, 30),
       wpi=wpis, da=densities, db=densities, ta=touches, tb=touches)
def test_intersect_sparse_sparse(cpu_level, seed, na, nb, n_images, wpi, da, db, ta, tb):
    # na < 4 threads' worth takes the split-blocks path, larger na the per-row path.
    rng = np.random.default_rng(seed)
    a = random_sparse(rng, na, n_images, wpi, da, ta)
    b = random_sparse(rng, nb, n_images, wpi, db, tb)
    dense = [ref.sparse_to_dense_words(*x, n_images).reshape(n, n_images * wpi) for x, n in ((a, na), (b, nb))]
    assert np.array_equal(_C.intersect_sparse_sparse(*a, *b, n_images), ref.intersect_counts(*dense))


def test_intersect_sparse_sparse_many_blocks_one_row(cpu_level):
    """One A row with many blocks: the threads split its blocks and merge private rows."""
    rng = np.random.default_rng(7)
    a = random_sparse(rng, 1, 400, 3, 0.5, 0.9)
    b = random_sparse(rng, 50, 400, 3, 0.5, 0.3)
    dense = [ref.sparse_to_dense_words(*x, 400).reshape(n, -1) for x, n in ((a, 1), (b, 50))]
    assert np.array_equal(_C.intersect_sparse_sparse(*a, *b, 400), ref.intersect_counts(*dense))


@pytest.mark.parametrize("op", ["and", "or", "and_not"])
@given(seed=seeds, n=st.integers(1, 6), k=st.integers(0, 70), broadcast=st.sampled_from(["none", "a", "b"]))
def test_binary_dense(op, seed, n, k, broadcast):
    rng = np.random.default_rng(seed)
    a = random_words(rng, 1 if broadcast == "a" else n, k, 0.5)
    b = random_words(rng, 1 if broadcast == "b" else n, k, 0.5)
    assert np.array_equal(_C.binary_dense(ref.OPS[op], a, b), ref.binary_op(op, a, b))


@given(seed=seeds, m=st.integers(0, 6), pixels=st.integers(1, 200), density=densities)
def test_not_blocks(seed, m, pixels, density):
    rng = np.random.default_rng(seed)
    w = ref.pack_bits(rng.random((m, pixels)) < density)
    assert np.array_equal(_C.not_blocks(w, pixels), ref.not_blocks(w, pixels))


@given(seed=seeds, m=st.integers(0, 12), wpi=st.integers(1, 4))
def test_combine_blocks(seed, m, wpi):
    rng = np.random.default_rng(seed)
    a, b = random_words(rng, 5, wpi, 0.5), random_words(rng, 4, wpi, 0.5)
    ia, ib, ops = rng.integers(-1, 5, m), rng.integers(-1, 4, m), rng.integers(0, 3, m).astype(np.uint8)
    assert np.array_equal(_C.combine_blocks(ops, a, ia, b, ib), ref.combine_blocks(ops, a, ia, b, ib))


@given(seed=seeds, m=st.integers(0, 12), wpi=st.integers(1, 4))
def test_nonzero_blocks(seed, m, wpi):
    rng = np.random.default_rng(seed)
    w = random_words(rng, m, wpi, 0.02)
    w[rng.random(m) < 0.5] = 0
    assert np.array_equal(_C.nonzero_blocks(w), ref.nonzero_blocks(w))


# ----------------------------------------------------------- the boundary
def test_boundary_rejects_wrong_dtype():
    with pytest.raises(TypeError, match=r"A\.words: expected dtype uint64, got int64"):
        _C.intersect_dense_dense(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.uint64))


def test_boundary_rejects_non_contiguous():
    a = np.zeros((4, 6), np.uint64)[:, ::2]
    with pytest.raises(ValueError, match=r"A\.words: array must be C-contiguous \(shape \(4, 3\)\)"):
        _C.intersect_dense_dense(a, np.zeros((2, 3), np.uint64))


def test_boundary_rejects_mismatched_words():
    with pytest.raises(ValueError, match=r"B\.words: axis 1 must be A's words per row = 3, got shape \(2, 4\)"):
        _C.intersect_dense_dense(np.zeros((2, 3), np.uint64), np.zeros((2, 4), np.uint64))


def test_boundary_rejects_bad_sparse_indices():
    w = np.zeros((2, 1), np.uint64)
    with pytest.raises(ValueError, match=r"A\.images: image index 9 outside \[0, 4\)"):
        _C.intersect_sparse_dense(np.array([0, 2]), np.array([0, 9]), w, np.zeros((1, 4, 1), np.uint64))
    with pytest.raises(ValueError, match=r"A\.indptr: must start at 0 and end at len\(images\) = 2"):
        _C.intersect_sparse_dense(np.array([0, 1]), np.array([0, 1]), w, np.zeros((1, 4, 1), np.uint64))
    with pytest.raises(ValueError, match=r"ia: block index 7 outside \[-1, 2\)"):
        _C.combine_blocks(np.zeros(1, np.uint8), w, np.array([7]), w, np.array([0]))
    with pytest.raises(ValueError, match=r"op: expected 0 \(and\), 1 \(or\) or 2 \(and_not\), got 3"):
        _C.combine_blocks(np.full(1, 3, np.uint8), w, np.array([0]), w, np.array([0]))


def test_cpu_levels_are_reported_and_settable():
    levels = {lv["name"]: lv for lv in _C.cpu_levels()}
    assert list(levels) == ["generic", "popcnt", "avx2", "avx512"]
    assert levels["generic"]["compiled"] and levels["generic"]["cpu_supports"]
    with pytest.raises(ValueError, match="cpu level 'sse9'"):
        _C.set_cpu_level("sse9")


def test_combine_blocks_is_checked_once_before_any_backend():
    """The dispatcher checks combine_blocks' arguments itself (the CUDA binding takes plain pointers), with
    the CPU binding's messages, so every backend refuses the same input the same way."""
    from neurcore.engine import _dispatch
    from neurcore.errors import InputError

    w = np.zeros((2, 1), np.uint64)
    with pytest.raises(InputError, match=r"ia: block index 7 outside \[-1, 2\)"):
        _dispatch.combine_blocks("and", w, np.array([7]), w, np.array([0]))
    with pytest.raises(InputError, match=r"ib: block index -2 outside \[-1, 2\)"):
        _dispatch.combine_blocks("or", w, np.array([0]), w, np.array([-2]))
    with pytest.raises(InputError, match=r"codes must be 0 \(and\), 1 \(or\) or 2 \(and_not\)"):
        _dispatch.combine_blocks(np.full(1, 3, np.uint8), w, np.array([0]), w, np.array([0]))
    with pytest.raises(InputError, match=r"ops, ia and ib must be \[m\]"):
        _dispatch.combine_blocks("and", w, np.array([0, 1]), w, np.array([0]))
    with pytest.raises(InputError, match=r"of one width"):
        _dispatch.combine_blocks("and", w, np.array([0]), np.zeros((2, 3), np.uint64), np.array([0]))
    got = _dispatch.combine_blocks("and_not", w + np.uint64(5), np.array([1, -1]), w + np.uint64(4),
                                   np.array([0, 1]))
    assert got.tolist() == [[1], [0]]


def test_every_primitive_is_checked_once_before_any_backend():
    """binary_dense, not_blocks and the per-row kernels refuse bad shapes in the dispatcher, before the
    CPU or CUDA binding, with messages naming the argument."""
    from neurcore.engine import _dispatch
    from neurcore.errors import InputError

    w = np.zeros((3, 2), np.uint64)
    with pytest.raises(InputError, match=r"binary_dense: A and B words per row differ"):
        _dispatch.binary_dense("and", w, np.zeros((3, 1), np.uint64))
    with pytest.raises(InputError, match=r"row counts 3 and 2 must match, or one must be 1"):
        _dispatch.binary_dense("or", w, w[:2])
    with pytest.raises(InputError, match=r"op must be one of"):
        _dispatch.binary_dense("xor", w, w)
    with pytest.raises(InputError, match=r"pixels_per_image 200 does not fill 2 words per image"):
        _dispatch.not_blocks(w, 200)
    with pytest.raises(InputError, match=r"popcount_rows: words must be \[rows, words per row\], got shape \(6,\)"):
        _dispatch.popcount_rows(w.reshape(-1))
    with pytest.raises(InputError, match=r"nonzero_blocks: words must be"):
        _dispatch.nonzero_blocks(w[None])
    assert _dispatch.binary_dense("or", w[:1] + np.uint64(1), w).tolist() == [[1, 1]] * 3
    assert _dispatch.not_blocks(w[:1], 65).tolist() == [[2**64 - 1, 1]]
