"""The CUDA mask kernels on a GPU, against numpy in the same run (and the CPU kernels and a float16
tensor-core GEMM on the same 0/1 data as context). Skipped where no GPU is usable.

1. intersect_counts, 20 x 600 rows over 1,000 x 56 x 56 (the bench_intersect cases), dense and
   image-sparse, on the cuda and triton backends.
2. A dense product that fills the chip, 256 x 2,048 rows over 2,000 x 56 x 56, reported as the
   fraction of the chip's 64-bit popcount rate (16 32-bit popcounts per SM per clock on sm_80/sm_90).
3. The planted rule-search layer of bench_search (400 units x 48 concepts), beam search on the GPU.
"""

import numpy as np
import pytest

import neurcore
from neurcore import BeamSearch, intersect_counts
from neurcore.engine import reference as ref
from neurcore.testing import blob_concepts, plant_units
from _data import intersect_case

if neurcore.backends()["cuda"]["devices"] == 0:
    pytest.skip("no usable CUDA device", allow_module_level=True)
torch = pytest.importorskip("torch")

N_A, N_B, N_IMAGES, SIDE = 20, 600, 1000, 56


def synced(fn, *args, **kwargs):
    def run():
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out
    return run


@pytest.fixture(scope="module", params=["dense", "image-sparse"])
def case(request):
    a, b = intersect_case(request.param, N_A, N_B, N_IMAGES, SIDE)
    expect = intersect_counts(a, b)
    return request.param, a, b, expect


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_intersect(benchmark, case, backend):
    name, a, b, expect = case
    A, B = a.to("cuda"), b.to("cuda")
    benchmark.group = f"GPU {N_A}x{N_B} rows over {N_IMAGES}x{SIDE}x{SIDE}, {name}"
    benchmark.extra_info.update(role="neurcore", per="row pair", work=N_A * N_B, device=torch.cuda.get_device_name())
    out = benchmark.pedantic(synced(intersect_counts, A, B, backend=backend), rounds=50, iterations=1,
                             warmup_rounds=3)
    assert np.array_equal(out.cpu().numpy(), expect)


def test_gpu_cpu_kernels(benchmark, case):
    name, a, b, expect = case
    benchmark.group = f"GPU {N_A}x{N_B} rows over {N_IMAGES}x{SIDE}x{SIDE}, {name}"
    benchmark.extra_info.update(role="neurcore-cpu", per="row pair", work=N_A * N_B, cpu_level=neurcore.cpu_level())
    out = benchmark.pedantic(intersect_counts, (a, b), rounds=5, iterations=1, warmup_rounds=1)
    assert np.array_equal(out, expect)


def test_gpu_float16_gemm(benchmark, case):
    name, a, b, expect = case
    benchmark.group = f"GPU {N_A}x{N_B} rows over {N_IMAGES}x{SIDE}x{SIDE}, {name}"
    fa = torch.from_numpy(a.to_dense().reshape(a.n, -1)).to("cuda", torch.float16)
    fb = torch.from_numpy(b.to_dense().reshape(b.n, -1)).to("cuda", torch.float16)
    benchmark.extra_info.update(role="context", per="row pair", work=N_A * N_B)
    out = benchmark.pedantic(synced(lambda: (fa @ fb.T)), rounds=20, iterations=1, warmup_rounds=2)
    assert out.shape == expect.shape  # float16 cannot hold counts above 2048 exactly


def test_gpu_numpy_pair_loop(benchmark, case):
    name, a, b, expect = case
    benchmark.group = f"GPU {N_A}x{N_B} rows over {N_IMAGES}x{SIDE}x{SIDE}, {name}"
    da, db = a[:2].to_dense(), b[:10].to_dense()
    benchmark.extra_info.update(role="baseline", per="row pair", work=20)
    out = benchmark.pedantic(lambda: np.array([[np.logical_and(x, y).sum() for y in db] for x in da]),
                             rounds=2, iterations=1)
    assert np.array_equal(out, expect[:2, :10])


def test_gpu_dense_roofline(benchmark):
    rng = torch.Generator(device="cuda").manual_seed(0)
    n_a, n_b, n_images, wpi = 256, 2048, 2000, 56 * 56 // 64
    words = n_images * wpi
    # Random 64-bit words made on the GPU (host generation of 1 GB would dominate the run).
    wa = torch.randint(-2**62, 2**62, (n_a, n_images, wpi), device="cuda", dtype=torch.int64, generator=rng)
    wb = torch.randint(-2**62, 2**62, (n_b, n_images, wpi), device="cuda", dtype=torch.int64, generator=rng)
    from neurcore import BitMasks

    A = BitMasks((2000, 56, 56), wa, None, None, validate=False)
    B = BitMasks((2000, 56, 56), wb, None, None, validate=False)
    out = benchmark.pedantic(synced(intersect_counts, A, B), rounds=10, iterations=1, warmup_rounds=2)
    # Spot check against numpy on a few pairs.
    ha = wa[:3].reshape(3, -1).cpu().numpy().view(np.uint64)
    hb = wb[:4].reshape(4, -1).cpu().numpy().view(np.uint64)
    assert np.array_equal(out[:3, :4].cpu().numpy(), ref.intersect_counts(ha, hb))
    props = torch.cuda.get_device_properties(0)
    clock_hz = 1.98e9  # boost clock of the H100/H200 SXM; nvidia-smi read 1980 MHz under load
    peak_words = props.multi_processor_count * 16 * clock_hz / 2  # one 64-bit word = two 32-bit popc
    achieved = n_a * n_b * words / benchmark.stats.stats.median
    benchmark.group = f"GPU dense roofline {n_a}x{n_b} rows over 2000x56x56"
    benchmark.extra_info.update(role="neurcore", per="word pair", work=n_a * n_b * words,
                                word_pairs_per_s=f"{achieved:.3e}",
                                popcount_roofline_fraction=round(achieved / peak_words, 3),
                                device=torch.cuda.get_device_name())


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    concepts = blob_concepts(rng, 48, 1500, (16, 16))
    units, _ = plant_units(rng, concepts, 400, lengths=(1, 2, 3), noise=0.03)
    return concepts, units


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_gpu_planted_beam_search(benchmark, planted, device):
    concepts, units = planted
    c, u = (concepts.to("cuda"), units.to("cuda")) if device == "cuda" else (concepts, units)
    benchmark.group = "GPU planted layer 400 units x 48 concepts, beam search"
    benchmark.extra_info.update(role="neurcore" if device == "cuda" else "baseline", per="unit", work=units.n)
    out = benchmark.pedantic(synced(BeamSearch(c).explain, u), rounds=3, iterations=1, warmup_rounds=1)
    if device == "cuda":
        cpu = BeamSearch(concepts).explain(units)
        assert [r.to_dict() for r in out] == [r.to_dict() for r in cpu]
