"""The fused integrated-gradients kernel (neurcore.attribution.ig_accumulate) equals the numpy reference on
every backend here: the CPU module always, Triton under TRITON_INTERPRET=1 (set by conftest when no
GPU is present) or on a GPU, and the CUDA module when a device is usable; absent ones are skipped.

Float results are compared with a bound derived from the summation error of the dtype: a sum of
n terms in precision eps is off by at most about n * eps * sum(|terms|), so each check allows
(n + 2) * eps * (|out before| + sum of |terms|), with n the longest chain of additions (S + P in
reduce mode, S otherwise). A kernel that drops a step, a position or the previous out misses by a
whole term, far beyond that.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import neurcore
from neurcore.attribution import _fused as _ig
from neurcore.engine import backends as _backends
from neurcore.attribution import reference as ref
from neurcore.engine.backends import _C

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TRITON_OK, _TRITON_WHY = neurcore.backends()["triton"]["usable"], neurcore.backends()["triton"]["detail"]
_N_CUDA, _CUDA_WHY = _backends.cuda_devices()
_CUDA_OK = _N_CUDA > 0 and torch.cuda.is_available()

# (backend, device of its tensors)
BACKENDS = [
    pytest.param(("cpu", "cpu"), id="cpu"),
    pytest.param(("triton", "cpu" if INTERPRET else "cuda"), id="triton",
                 marks=pytest.mark.skipif(not _TRITON_OK, reason=f"Triton cannot run here: {_TRITON_WHY}")),
    pytest.param(("cuda", "cuda"), id="cuda",
                 marks=pytest.mark.skipif(not _CUDA_OK, reason=f"no usable CUDA device: {_CUDA_WHY or 'torch sees none'}")),
]
DTYPES = [torch.float32, torch.float64]
# Positions that hit every CUDA lane-group width (1, 2, 4, 8, 16, 32 lanes per row), tails of 32 / 64 /
# 128 and, for the larger ones, more than one Triton tile per row.
POSITIONS = [0, 1, 2, 3, 5, 8, 9, 17, 31, 33, 49, 64, 65, 129, 200]


def make_case(rng, shape, dtype, device, reduce_spatial):
    T, S, U, C, P = shape
    scale = 10.0 ** rng.integers(-3, 4)  # the bound is relative: vary the magnitude
    g = rng.standard_normal((T, S, U, C, P)) * scale
    w = rng.uniform(-0.5, 1.0, S)
    d = rng.standard_normal((U, C, P))
    out0 = rng.standard_normal((T, U, C) if reduce_spatial else (T, U, C, P)) * scale
    return tuple(torch.from_numpy(x).to(device=device, dtype=dtype) for x in (g, w, d, out0))


def increment_bound(g, w, d, reduce_spatial):
    """(exact increment, sum of |terms|), both float64 numpy, from the dtype-rounded inputs."""
    g, w, d = (x.double().cpu().numpy() for x in (g, w, d))
    return (ref.ig_accumulate(g, w, d, reduce_spatial),
            ref.ig_accumulate(np.abs(g), np.abs(w), np.abs(d), reduce_spatial))


def check_close(got, base, inc, abs_terms, n_adds, dtype, what):
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny * 16
    err = np.abs(got - (base + inc))
    tol = (n_adds + 2) * eps * (np.abs(base) + abs_terms) + tiny
    bad = err > tol
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} outside tolerance; worst error "
                           f"{err.max():.3g} against tolerance {tol[np.unravel_index(err.argmax(), err.shape)]:.3g}")


def run_and_check(backend_device, dtype, shape, reduce_spatial, seed, calls=2):
    """Accumulate `calls` times into a non-zero out, checking each call's increment."""
    backend, device = backend_device
    rng = np.random.default_rng(seed)
    g, w, d, out = make_case(rng, shape, dtype, device, reduce_spatial)
    inc, abs_terms = increment_bound(g, w, d, reduce_spatial)
    S, P = shape[1], shape[4]
    n_adds = S + P if reduce_spatial else S
    for call in range(calls):
        base = out.double().cpu().numpy().copy()  # .double() of a float64 tensor is the tensor itself
        ret = _ig.ig_accumulate(g, w, d, out, reduce_spatial=reduce_spatial, backend=backend)
        assert ret is out
        if device == "cuda":
            torch.cuda.synchronize()
        check_close(out.double().cpu().numpy(), base, inc, abs_terms, n_adds, dtype,
                    f"{backend} {dtype} shape {shape} reduce_spatial={reduce_spatial} call {call + 1}")


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reduce_spatial", [True, False], ids=["reduce", "elementwise"])
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), T=st.integers(0, 3), S=st.integers(1, 9), U=st.integers(0, 3),
       C=st.integers(1, 70), P=st.sampled_from(POSITIONS))
def test_matches_reference(backend_device, dtype, reduce_spatial, seed, T, S, U, C, P):
    run_and_check(backend_device, dtype, (T, S, U, C, P), reduce_spatial, seed)


# Named shapes: single targets / steps / examples / positions, empty dimensions (nothing to add:
# out must come back unchanged), tiles of the CPU kernel (4,096 values: several tiles per target,
# rows longer than a tile, the OpenMP path), and CUDA's split paths (few rows, long rows, many steps).
EDGE_SHAPES = {
    "all-ones": (1, 1, 1, 1, 1),
    "T=1,S=1": (1, 1, 2, 3, 7),
    "U=1,P=1": (2, 5, 1, 33, 1),
    "T=0": (0, 4, 2, 3, 5),
    "U=0": (2, 4, 0, 3, 5),
    "C=0": (2, 4, 2, 0, 5),
    "P=0": (2, 4, 2, 3, 0),
    "S=0": (2, 0, 2, 3, 5),
    "cpu-tiles": (2, 8, 2, 70, 65),
    "row>tile": (2, 3, 1, 2, 4100),
    "few-long-rows": (1, 40, 1, 3, 3000),
    "many-steps": (1, 300, 1, 2, 33),
    "odd-everything": (3, 7, 3, 13, 97),
}


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reduce_spatial", [True, False], ids=["reduce", "elementwise"])
@pytest.mark.parametrize("shape", list(EDGE_SHAPES.values()), ids=list(EDGE_SHAPES))
def test_edge_shapes(backend_device, dtype, reduce_spatial, shape):
    if backend_device == ("triton", "cpu") and np.prod(shape) > 2_000_000:
        pytest.skip("too slow for the Triton interpreter")
    run_and_check(backend_device, dtype, shape, reduce_spatial, seed=sum(shape))


@pytest.mark.parametrize("reduce_spatial", [True, False], ids=["reduce", "elementwise"])
@pytest.mark.parametrize("shape", [(0, 4, 2, 3, 5), (2, 4, 0, 3, 5), (2, 4, 2, 3, 0), (2, 0, 2, 3, 5)],
                         ids=["T=0", "U=0", "P=0", "S=0"])
def test_empty_is_a_no_op_cpu_bits(shape, reduce_spatial):
    """Nothing to add: out keeps its exact bits (a kernel that rewrites out would still pass the bound)."""
    g, w, d, out = make_case(np.random.default_rng(1), shape, torch.float32, "cpu", reduce_spatial)
    before = out.clone()
    _ig.ig_accumulate(g, w, d, out, reduce_spatial=reduce_spatial)
    assert torch.equal(out, before)


@pytest.mark.parametrize("reduce_spatial", [True, False], ids=["reduce", "elementwise"])
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), S=st.integers(1, 60), P=st.sampled_from(POSITIONS[1:]))
def test_cpu_float32_sums_in_float64(reduce_spatial, seed, S, P):
    """The CPU kernel's documented precision: float32 inputs, float64 sums, one rounding per output."""
    rng = np.random.default_rng(seed)
    g, w, d, out = make_case(rng, (2, S, 2, 5, P), torch.float32, "cpu", reduce_spatial)
    inc, abs_terms = increment_bound(g, w, d, reduce_spatial)
    exact = out.double().numpy() + inc  # a new array: out is float32
    _ig.ig_accumulate(g, w, d, out, reduce_spatial=reduce_spatial)
    eps32, eps64 = np.finfo(np.float32).eps, np.finfo(np.float64).eps
    tol = eps32 / 2 * np.abs(exact) + (S + P + 2) * eps64 * (np.abs(exact) + abs_terms) + 1e-40
    assert (np.abs(out.double().numpy() - exact) <= tol).all()


def test_completeness_of_integrated_gradients():
    """captum's property: attributions add up to F(x) - F(baseline). For F(x) = sum(a * x^2) the
    gradient is linear along the path, so the trapezoid rule over S >= 2 steps is exact."""
    rng = np.random.default_rng(7)
    T, S, U, C, P = 3, 5, 2, 4, 6
    a = torch.from_numpy(rng.standard_normal((T, C, P)))
    x = torch.from_numpy(rng.standard_normal((U, C, P)))
    x0 = torch.from_numpy(rng.standard_normal((U, C, P)))
    alphas = torch.linspace(0, 1, S, dtype=torch.float64)
    weights = torch.full((S,), 1.0 / (S - 1), dtype=torch.float64)
    weights[0] = weights[-1] = 0.5 / (S - 1)
    path = x0 + alphas[:, None, None, None] * (x - x0)  # [S, U, C, P]
    grads = 2 * a[:, None, None] * path[None]  # dF_t/dx at each step: [T, S, U, C, P]

    def F(z):  # [T, U]
        return (a[:, None] * z[None] ** 2).sum(dim=(2, 3))

    for reduce_spatial in (True, False):
        out = torch.zeros((T, U, C) if reduce_spatial else (T, U, C, P), dtype=torch.float64)
        _ig.ig_accumulate(grads.contiguous(), weights, x - x0, out, reduce_spatial=reduce_spatial)
        total = out.sum(dim=2) if reduce_spatial else out.sum(dim=(2, 3))
        torch.testing.assert_close(total, F(x) - F(x0), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ errors
def _args(reduce_spatial=True, dtype=torch.float32, T=2, S=3, U=2, C=4, P=5):
    g = torch.zeros((T, S, U, C, P), dtype=dtype)
    w = torch.zeros(S, dtype=dtype)
    d = torch.zeros((U, C, P), dtype=dtype)
    out = torch.zeros((T, U, C) if reduce_spatial else (T, U, C, P), dtype=dtype)
    return {"grads": g, "weights": w, "delta": d, "out": out}


@pytest.mark.parametrize("name", ["grads", "weights", "delta", "out"])
def test_error_wrong_dtype_names_the_argument(name):
    args = _args()
    args[name] = args[name].to(torch.float64 if name != "grads" else torch.int64)
    with pytest.raises(TypeError, match=rf"{name}.*(float|int)"):
        _ig.ig_accumulate(**args, reduce_spatial=True)


def test_error_float16_grads():
    args = {k: v.half() for k, v in _args().items()}
    with pytest.raises(TypeError, match=r"grads must be torch.float32 or torch.float64, got torch.float16"):
        _ig.ig_accumulate(**args, reduce_spatial=True)


@pytest.mark.parametrize("name", ["grads", "weights", "delta", "out"])
def test_error_not_a_tensor(name):
    args = _args()
    args[name] = args[name].numpy()
    with pytest.raises(TypeError, match=rf"{name} must be a torch.Tensor, got ndarray"):
        _ig.ig_accumulate(**args, reduce_spatial=True)


@pytest.mark.parametrize("name,bad,pattern", [
    ("grads", torch.zeros((2, 3, 2, 4)), r"grads must have shape \[T, S, U, C, P\] \(5-d\), got \(2, 3, 2, 4\)"),
    ("weights", torch.zeros(4), r"weights must have shape \[S\] = \(3,\).*got \(4,\)"),
    ("delta", torch.zeros((2, 4, 6)), r"delta must have shape \[U, C, P\] = \(2, 4, 5\).*got \(2, 4, 6\)"),
    ("out", torch.zeros((2, 2, 4, 5)), r"out must have shape \[T, U, C\] \(reduce_spatial=True\) = \(2, 2, 4\)"),
])
def test_error_shape_names_the_argument(name, bad, pattern):
    args = _args()
    args[name] = bad
    with pytest.raises(ValueError, match=pattern):
        _ig.ig_accumulate(**args, reduce_spatial=True)


def test_error_out_shape_elementwise():
    args = _args(reduce_spatial=True)
    with pytest.raises(ValueError, match=r"out must have shape \[T, U, C, P\] \(reduce_spatial=False\) = \(2, 2, 4, 5\) "
                                         r"to match grads .* = \(2, 3, 2, 4, 5\), got \(2, 2, 4\)"):
        _ig.ig_accumulate(**args, reduce_spatial=False)


@pytest.mark.parametrize("name", ["grads", "weights", "delta", "out"])
def test_error_non_contiguous_names_the_argument(name):
    args = _args(reduce_spatial=False, T=2, S=2, U=2, C=2, P=2)
    x = args[name]
    # Same shape, reversed memory order: not contiguous (a 1-d tensor takes every other element).
    args[name] = (torch.zeros(2 * x.numel())[::2] if x.dim() == 1
                  else torch.zeros(tuple(reversed(x.shape))).permute(*reversed(range(x.dim()))))
    assert args[name].shape == x.shape and not args[name].is_contiguous()
    with pytest.raises(ValueError, match=rf"{name} must be contiguous"):
        _ig.ig_accumulate(**args, reduce_spatial=False)


@pytest.mark.parametrize("name", ["weights", "delta", "out"])
def test_error_mixed_devices_names_the_argument(name):
    args = _args()
    other = "cuda" if _CUDA_OK else "meta"  # meta tensors have shapes and no data: enough for the checks
    args[name] = args[name].to(other)
    with pytest.raises(ValueError, match=rf"{name} is on {other}.* but grads is on cpu"):
        _ig.ig_accumulate(**args, reduce_spatial=True)


@pytest.mark.parametrize("overlap", ["grads", "delta"])
def test_error_out_overlaps_an_input(overlap):
    args = _args(reduce_spatial=True)
    src = args[overlap]
    args["out"] = src.reshape(-1)[: args["out"].numel()].view(args["out"].shape)
    with pytest.raises(ValueError, match=rf"out overlaps {overlap}"):
        _ig.ig_accumulate(**args, reduce_spatial=True)


def test_error_backend_choice():
    args = _args()
    with pytest.raises(ValueError, match=r"backend must be None, 'cpu', 'cuda' or 'triton', got 'tpu'"):
        _ig.ig_accumulate(**args, reduce_spatial=True, backend="tpu")
    with pytest.raises(ValueError, match=r"backend 'cuda' needs tensors on a CUDA device, got cpu"):
        _ig.ig_accumulate(**args, reduce_spatial=True, backend="cuda")
    meta = {k: v.to("meta") for k, v in args.items()}
    with pytest.raises(ValueError, match=r"backend 'cpu' needs CPU tensors, got tensors on meta"):
        _ig.ig_accumulate(**meta, reduce_spatial=True, backend="cpu")
    with pytest.raises(ValueError, match=r"tensors on meta are not supported"):
        _ig.ig_accumulate(**meta, reduce_spatial=True)
    with pytest.raises(TypeError, match=r"reduce_spatial must be a bool"):
        _ig.ig_accumulate(**args, reduce_spatial=1)


def test_error_cuda_module_missing(monkeypatch):
    """Without the CUDA module the CUDA path raises 'not compiled with CUDA support', never falls back."""
    monkeypatch.setattr(_backends, "_cuda", None)
    monkeypatch.setattr(_backends, "_cuda_error", "No module named 'neurcore.engine._cuda'")
    args = _args()
    with pytest.raises(RuntimeError, match=r"not compiled with CUDA support"):
        _ig._cuda_run(*args.values(), reduce_spatial=True)


@pytest.mark.parametrize("name", ["weights", "delta", "out"])
def test_cpu_binding_checks_its_arguments(name):
    """The pybind11 boundary validates on its own too (dtype, rank, shape), naming the argument."""
    args = {k: v.numpy() for k, v in _args().items()}
    wrong_dtype = dict(args, **{name: args[name].astype(np.float64)})
    with pytest.raises(TypeError, match=rf"{name}: expected dtype float32"):
        _C.ig_accumulate(*wrong_dtype.values(), True)
    wrong_shape = dict(args, **{name: np.zeros(args[name].shape[:-1] + (9,), np.float32)})
    with pytest.raises(ValueError, match=rf"{name}: axis \d must be"):
        _C.ig_accumulate(*wrong_shape.values(), True)
    read_only = np.zeros_like(args["out"])
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"out: array is read-only"):
        _C.ig_accumulate(args["grads"], args["weights"], args["delta"], read_only, True)
