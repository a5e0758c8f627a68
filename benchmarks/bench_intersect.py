"""intersect_counts for 20 x 600 rows over 1,000 images x 56 x 56, against (a) a float32 BLAS GEMM
on the same 0/1 data and (b) compexp's per-pair ``np.logical_and(a, b).sum()``, in the same run.

Two row sets: dense rows (5% fill everywhere) and image-sparse rows (each touches 2-10% of the
images, 30% fill inside), which is what real concept masks look like.
"""

import numpy as np
import pytest

import neurcore
from neurcore import intersect_counts
from _data import as_float32, intersect_case, random_rows

N_A, N_B, N_IMAGES, SIDE = 20, 600, 1000, 56
PAIR_SUBSET = (4, 10)  # the per-pair loop is timed on 4 x 10 pairs


@pytest.fixture(scope="module", params=["dense", "image-sparse"])
def case(request):
    a, b = intersect_case(request.param, N_A, N_B, N_IMAGES, SIDE)
    fa, fb = as_float32(a), as_float32(b)
    expect = (fa @ fb.T).astype(np.int64)  # exact: counts < 2^24
    yield request.param, a, b, fa, fb, expect
    del fa, fb


def test_neurcore(benchmark, case):
    name, a, b, _, _, expect = case
    benchmark.group = f"{N_A}x{N_B} rows over {N_IMAGES}x{SIDE}x{SIDE}, {name}"
    benchmark.extra_info.update(role="neurcore", per="row pair", work=N_A * N_B,
                                layouts=f"{a.layout} x {b.layout}",
                                cpu_level=neurcore.cpu_level(), mib=round((a.nbytes + b.nbytes) / 2**20, 1))
    out = benchmark(intersect_counts, a, b)
    assert np.array_equal(out, expect)


def test_blas_float32_gemm(benchmark, case):
    name, _, _, fa, fb, expect = case
    benchmark.group = f"{N_A}x{N_B} rows over {N_IMAGES}x{SIDE}x{SIDE}, {name}"
    benchmark.extra_info.update(role="baseline", per="row pair", work=N_A * N_B)
    out = benchmark.pedantic(lambda: fa @ fb.T, rounds=3, iterations=1, warmup_rounds=1)
    assert np.array_equal(out.astype(np.int64), expect)


def test_numpy_pair_loop(benchmark, case):
    name, a, b, _, _, expect = case
    benchmark.group = f"{N_A}x{N_B} rows over {N_IMAGES}x{SIDE}x{SIDE}, {name}"
    na, nb = PAIR_SUBSET
    da, db = a[:na].to_dense(), b[:nb].to_dense()
    benchmark.extra_info.update(role="baseline", per="row pair", work=na * nb)

    def loop():
        return np.array([[np.logical_and(x, y).sum() for y in db] for x in da])

    out = benchmark.pedantic(loop, rounds=3, iterations=1)
    assert np.array_equal(out, expect[:na, :nb])


@pytest.mark.parametrize("level", neurcore.usable_cpu_levels())
def test_dense_by_cpu_level(benchmark, level):
    """The dense case at each instruction-set level (ratios against the generic SWAR level)."""
    rng = np.random.default_rng(7)
    a = random_rows(rng, N_A, N_IMAGES, SIDE, fill=0.05, layout="dense")
    b = random_rows(rng, 120, N_IMAGES, SIDE, fill=0.05, layout="dense")
    before = neurcore.cpu_level()
    neurcore.set_cpu_level(level)
    try:
        benchmark.group = f"dense {N_A}x120 rows by CPU level"
        benchmark.extra_info.update(role="baseline" if level == "generic" else "neurcore", per="row pair",
                                    work=N_A * 120)
        out = benchmark(intersect_counts, a, b)
    finally:
        neurcore.set_cpu_level(before)
    neurcore.set_cpu_level("generic")
    try:
        assert np.array_equal(out, intersect_counts(a, b))
    finally:
        neurcore.set_cpu_level(before)
