"""The numpy references are the ground truth: check them against definitions."""

import numpy as np
from hypothesis import given, strategies as st

from neurcore.engine import reference as ref


@given(m=st.integers(0, 5), p=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_roundtrip_and_bit_order(m, p, seed):
    rng = np.random.default_rng(seed)
    bits = rng.random((m, p)) < 0.5
    words = ref.pack_bits(bits)
    assert words.shape == (m, (p + 63) // 64) and words.dtype == np.uint64
    assert np.array_equal(ref.unpack_bits(words, p), bits)
    for r in range(m):
        for j in map(int, np.flatnonzero(bits[r])):  # bit j of word w is pixel 64 w + j
            assert (int(words[r, j // 64]) >> (j % 64)) & 1 == 1
    if p % 64:  # padding bits zero
        assert np.all(words[:, -1] >> np.uint64(p % 64) == 0)


@given(seed=st.integers(0, 2**32 - 1), na=st.integers(0, 4), nb=st.integers(0, 4), k=st.integers(0, 3))
def test_reference_counts_match_definitions(seed, na, nb, k):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=(na, k), dtype=np.uint64)
    b = rng.integers(0, 2**64, size=(nb, k), dtype=np.uint64)
    expect = np.array([[sum(bin(int(x) & int(y)).count("1") for x, y in zip(ra, rb)) for rb in b] for ra in a],
                      dtype=np.int64).reshape(na, nb)
    assert np.array_equal(ref.intersect_counts(a, b), expect)
    assert np.array_equal(ref.popcount_rows(a), [sum(bin(int(x)).count("1") for x in ra) for ra in a])


def test_reference_not_blocks_keeps_padding_zero():
    words = ref.pack_bits(np.zeros((2, 70), bool))
    out = ref.not_blocks(words, 70)
    assert np.array_equal(ref.unpack_bits(out, 70), np.ones((2, 70), bool))
    assert int(out[0, 1]) == (1 << 6) - 1
