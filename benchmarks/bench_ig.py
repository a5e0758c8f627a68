"""The fused integrated-gradients accumulation (neurcore.attribution.ig_accumulate) at a realistic size,
T=16 targets x S=50 steps x U=8 examples x C=128 channels x P=64 positions (8 x 8) in float32
(grads: 210 MB), in both modes, against in the same run:

- the numpy reference (``neurcore.attribution.reference.ig_accumulate``, float64 einsum), and
- the plain torch expression ``(grads * weights[:, None, None, None]).sum(1) * delta`` (then
  ``.sum(-1)`` in reduce mode), which materialises a product the size of grads.

On the CPU the neurcore kernel is timed against both; on a GPU (skipped where none is usable) the
cuda and triton backends are timed against the torch expression on the device. Each benchmark
checks its result against the reference, within float32's summation error bound.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import neurcore
from neurcore.attribution import _fused as _ig
from neurcore.attribution import reference as ref

T, S, U, C, P = 16, 50, 8, 128, 64
SHAPE = f"T={T} S={S} U={U} C={C} P={P} float32"
MODES = {"reduce": True, "elementwise": False}
_GPU = neurcore.backends()["cuda"]["devices"] > 0 and torch.cuda.is_available()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20240601)
    g = rng.standard_normal((T, S, U, C, P), dtype=np.float32)
    w = np.full(S, 1.0 / S, dtype=np.float32)  # Riemann midpoint weights
    d = rng.standard_normal((U, C, P), dtype=np.float32)
    expect = {m: ref.ig_accumulate(g, w, d, r) for m, r in MODES.items()}
    abs_terms = {m: ref.ig_accumulate(np.abs(g), w, np.abs(d), r) for m, r in MODES.items()}
    yield torch.from_numpy(g), torch.from_numpy(w), torch.from_numpy(d), expect, abs_terms


def check(got, mode, data):
    _, _, _, expect, abs_terms = data
    got = got.detach().double().cpu().numpy()
    n_adds = S + P if MODES[mode] else S
    assert (np.abs(got - expect[mode]) <= (n_adds + 2) * np.finfo(np.float32).eps * abs_terms[mode] + 1e-30).all()


def out_like(g, reduce_spatial):
    return torch.zeros((T, U, C) if reduce_spatial else (T, U, C, P), dtype=g.dtype, device=g.device)


def torch_expression(g, w, d, reduce_spatial):
    summed = (g * w[:, None, None, None]).sum(1) * d
    return summed.sum(-1) if reduce_spatial else summed


def synced(fn):
    def run():
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out
    return run


def _group(mode, where):
    return f"ig_accumulate {where}, {mode}, {SHAPE}"


@pytest.mark.parametrize("mode", MODES)
def test_cpu_neurcore(benchmark, data, mode):
    g, w, d, _, _ = data
    r = MODES[mode]
    benchmark.group = _group(mode, "CPU")
    benchmark.extra_info.update(role="neurcore", per="call", work=1, threads=torch.get_num_threads(),
                                mb_read=round(g.numel() * 4 / 1e6))

    def run():
        out = out_like(g, r)
        return _ig.ig_accumulate(g, w, d, out, reduce_spatial=r)

    check(benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1), mode, data)


@pytest.mark.parametrize("mode", MODES)
def test_cpu_numpy_reference(benchmark, data, mode):
    g, w, d, _, _ = data
    gn, wn, dn = g.numpy(), w.numpy(), d.numpy()
    benchmark.group = _group(mode, "CPU")
    benchmark.extra_info.update(role="baseline", per="call", work=1)
    out = benchmark.pedantic(ref.ig_accumulate, (gn, wn, dn, MODES[mode]), rounds=3, iterations=1)
    check(torch.from_numpy(out), mode, data)


@pytest.mark.parametrize("mode", MODES)
def test_cpu_torch_expression(benchmark, data, mode):
    g, w, d, _, _ = data
    benchmark.group = _group(mode, "CPU")
    benchmark.extra_info.update(role="baseline", per="call", work=1)
    out = benchmark.pedantic(torch_expression, (g, w, d, MODES[mode]), rounds=5, iterations=1, warmup_rounds=1)
    check(out, mode, data)


@pytest.fixture(scope="module")
def gpu_data(data):
    if not _GPU:
        pytest.skip("no usable CUDA device")
    g, w, d, _, _ = data
    yield tuple(x.to("cuda") for x in (g, w, d))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("mode", MODES)
def test_gpu_neurcore(benchmark, data, gpu_data, mode, backend):
    g, w, d = gpu_data
    r = MODES[mode]
    benchmark.group = _group(mode, "GPU")
    benchmark.extra_info.update(role="neurcore", per="call", work=1, device=torch.cuda.get_device_name(),
                                backend=backend)
    out = out_like(g, r)

    def run():
        out.zero_()
        return _ig.ig_accumulate(g, w, d, out, reduce_spatial=r, backend=backend)

    res = benchmark.pedantic(synced(run), rounds=50, iterations=1, warmup_rounds=3)
    check(res, mode, data)
    # achieved bandwidth over the grads read (the rest is < 1% of the traffic)
    benchmark.extra_info["grads_GB_per_s"] = round(g.numel() * 4 / benchmark.stats.stats.median / 1e9, 1)


@pytest.mark.parametrize("mode", MODES)
def test_gpu_torch_expression(benchmark, data, gpu_data, mode):
    g, w, d = gpu_data
    benchmark.group = _group(mode, "GPU")
    benchmark.extra_info.update(role="baseline", per="call", work=1)
    res = benchmark.pedantic(synced(lambda: torch_expression(g, w, d, MODES[mode])), rounds=20, iterations=1,
                             warmup_rounds=2)
    check(res, mode, data)
