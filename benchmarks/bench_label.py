"""Vision-language labelling on plain arrays, against per-unit loops in the same run.

1. CLIP-Dissect soft-WPMI (the anchor's defaults) for a 512-unit layer against a 20,000-phrase
   vocabulary over 3,000 probe images (random cosine similarities, embeddings taken as cached):
   ``ClipDissect.explain`` on all units (softmax, top-k, scores, labels), against a per-unit numpy loop
   and the anchor's per-unit torch loop, both timed on 8 units with the softmax computed beforehand
   (so the loops are credited with a shared step they would also pay) and compared per unit. Target: < 20 s.
2. LinEx on 128 units x 40 concepts x 3,000 images (planted linear units with noise): the batched
   ``LinEx.explain`` against the straightforward per-unit loop of the tests (scikit-learn ElasticNet
   per unit, then the greedy search with one least-squares fit per candidate), timed on 16 units.
3. LinEx's ranking stage alone: coordinate descent on one shared Gram matrix against the anchor's
   GLM-SAGA (PyPI ``glm-saga``, the anchor's settings), when it is installed.

Run: ``.venv/bin/python -m pytest benchmarks/bench_label.py --benchmark-only``.
"""

import contextlib
import importlib.util
import io
import pathlib
import warnings

import numpy as np
import pytest

from neurcore.labels import ClipDissect
from neurcore.labels import LinEx, split_indices
from neurcore.labels._linex import _enet_weights, _zscore_train

TESTS = pathlib.Path(__file__).resolve().parent.parent / "tests"


def _tests_module(name):
    """The per-unit references live in the tests; load them by path (no package, no name clash)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", TESTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------------------
# CLIP-Dissect

N_IMAGES, N_CONCEPTS, N_UNITS, LOOP_UNITS = 3000, 20_000, 512, 8
CD_GROUP = f"CLIP-Dissect soft-WPMI: {N_UNITS} units x {N_CONCEPTS:,} concepts x {N_IMAGES:,} images"


@pytest.fixture(scope="module")
def clip_data():
    rng = np.random.default_rng(7)
    sim = rng.uniform(0.1, 0.35, (N_IMAGES, N_CONCEPTS)).astype(np.float32)
    acts = rng.gamma(1.0, 1.0, (N_IMAGES, N_UNITS)).astype(np.float32)
    names = [f"phrase {i}" for i in range(N_CONCEPTS)]
    return sim, acts, names


@pytest.fixture(scope="module")
def softmax_probs(clip_data):
    """P = softmax over concepts of 10 * sim, computed once outside the loops' timings (float64, float32)."""
    import torch

    sim = clip_data[0]
    P32 = torch.softmax(10 * torch.from_numpy(sim), dim=1)
    P64 = torch.softmax(10 * torch.from_numpy(sim).double(), dim=1).numpy()
    return P64, P32


P_IN = 0.998 - np.arange(100) / 100 * (0.998 - 0.97)   # soft-WPMI's inclusion probabilities, top_k 100


def test_clip_dissect_neurcore(benchmark, clip_data):
    sim, acts, names = clip_data
    benchmark.group = CD_GROUP
    cd = ClipDissect(sim, names)
    res = benchmark.pedantic(cd.explain, (acts,), rounds=3, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(role="neurcore", per="unit", work=N_UNITS, seconds=round(median, 2),
                                under_20_s=bool(median < 20))
    assert len(res) == N_UNITS


def test_clip_dissect_numpy_per_unit_loop(benchmark, clip_data, softmax_probs):
    """One unit at a time in numpy float64 (the tests' reference loop), softmax excluded; checked against
    neurcore's log p(t|B) (lam = 0) on the same units."""
    sim, acts, names = clip_data
    P64 = softmax_probs[0]
    benchmark.group = CD_GROUP

    def loop():
        rows = []
        for u in range(LOOP_UNITS):
            top = np.argsort(-acts[:, u], kind="stable")[:100]
            rows.append(np.log(1 + P_IN[:, None] * (P64[top] - 1) + 1e-7).sum(axis=0))
        return np.array(rows)

    out = benchmark.pedantic(loop, rounds=1, iterations=1)
    benchmark.extra_info.update(role="baseline", per="unit", work=LOOP_UNITS)
    got = ClipDissect(sim, names).similarity(acts, units=list(range(LOOP_UNITS)), lam=0, dtype="float64",
                                             top_k=100, a=10, p_start=0.998, p_end=0.97)
    np.testing.assert_allclose(got, out, rtol=1e-9)


def test_clip_dissect_anchor_style_torch_loop(benchmark, clip_data, softmax_probs):
    """The anchor's structure in torch float32: per unit gather its top-100 rows of P, log, sum (softmax excluded)."""
    import torch

    acts = clip_data[1]
    P = softmax_probs[1]
    benchmark.group = CD_GROUP

    def loop():
        inds = torch.topk(torch.from_numpy(acts[:, :LOOP_UNITS]), k=100, dim=0)[1]
        p = torch.from_numpy(P_IN.astype(np.float32)).unsqueeze(1)
        rows = []
        for u in range(LOOP_UNITS):
            g = P.gather(0, inds[:, u:u + 1].expand(-1, P.shape[1]))
            rows.append(torch.log(1 + p * (g - 1) + 1e-7).sum(dim=0, keepdim=True))
        return torch.cat(rows)

    benchmark.pedantic(loop, rounds=2, iterations=1)
    benchmark.extra_info.update(role="baseline", per="unit", work=LOOP_UNITS)


# ---------------------------------------------------------------------------------------------------------
# LinEx

LX_IMAGES, LX_CONCEPTS, LX_UNITS, LX_LOOP_UNITS = 3000, 40, 128, 16
LX_GROUP = f"LinEx: {LX_UNITS} units x {LX_CONCEPTS} concepts x {LX_IMAGES:,} images"


@pytest.fixture(scope="module")
def linex_data():
    ref = _tests_module("test_linex")
    P, acts, _ = ref._planted(11, n=LX_IMAGES, C=LX_CONCEPTS, U=LX_UNITS, k=4, noise=0.3)
    return P, acts, [f"c{i}" for i in range(LX_CONCEPTS)], ref, {}


def test_linex_neurcore(benchmark, linex_data):
    P, acts, names, _, shared = linex_data
    benchmark.group = LX_GROUP
    lx = LinEx(P, names)
    res = benchmark.pedantic(lx.explain, (acts,), rounds=3, iterations=1, warmup_rounds=1)
    shared["res"] = res
    benchmark.extra_info.update(role="neurcore", per="unit", work=LX_UNITS,
                                mean_val_r=round(float(np.mean([r.metrics["val_r"] for r in res])), 3),
                                mean_length=round(float(np.mean([r.length for r in res])), 2))


def test_linex_per_unit_loop(benchmark, linex_data):
    P, acts, names, ref, shared = linex_data
    benchmark.group = LX_GROUP
    out = benchmark.pedantic(ref.reference_linex, (P, acts[:, :LX_LOOP_UNITS]), rounds=1, iterations=1)
    benchmark.extra_info.update(role="baseline", per="unit", work=LX_LOOP_UNITS)
    res = shared.get("res") or LinEx(P, names).explain(acts)
    same = sum(sorted(r.extra["concepts"]) == sorted(names[c] for c in o[0]) for r, o in zip(res, out))
    benchmark.extra_info.update(same_concepts=f"{same} of {LX_LOOP_UNITS}")


ENET_GROUP = f"LinEx ranking (elastic net, lam 0.05, alpha 0.99): {LX_UNITS} units x {LX_CONCEPTS} concepts"


@pytest.fixture(scope="module")
def enet_data(linex_data):
    P, acts, _, _, _ = linex_data
    train, _, _ = split_indices(LX_IMAGES, (0.7, 0.1, 0.2), 0)
    Xz = _zscore_train(P[train])
    Yz = (acts[train] - acts.mean(0)) / acts.std(0, ddof=1)
    return Xz, Yz


def _objective(Xz, Yz, W, lam=0.05, alpha=0.99):
    """The anchor's per-unit objective: 0.5 MSE + lam_eff (alpha |w|_1 + (1 - alpha) |w|^2 / 2), bias free."""
    lam_eff = lam / alpha
    b = Yz.mean(0) - Xz.mean(0) @ W
    r = Yz - Xz @ W - b
    return float(np.mean(0.5 * (r ** 2).mean(0) + lam_eff * (alpha * np.abs(W).sum(0)
                                                             + 0.5 * (1 - alpha) * (W ** 2).sum(0))))


def test_enet_neurcore(benchmark, enet_data):
    Xz, Yz = enet_data
    benchmark.group = ENET_GROUP
    W, _ = benchmark.pedantic(_enet_weights, (Xz, Yz, 0.05, 0.99, 1e-6), rounds=5, iterations=1)
    benchmark.extra_info.update(role="neurcore", per="unit", work=LX_UNITS, objective=round(_objective(Xz, Yz, W), 6))


def test_enet_glm_saga(benchmark, enet_data):
    glm = pytest.importorskip("glm_saga.elasticnet")
    import torch
    from torch.utils.data import DataLoader

    Xz, Yz = enet_data
    benchmark.group = ENET_GROUP

    def fit():   # the anchor's train_glm_model: batch 512, 500 epochs, step 5e-4, lookbehind 5
        ds = glm.IndexedTensorDataset(torch.tensor(Xz, dtype=torch.float32), torch.tensor(Yz, dtype=torch.float32))
        lin = torch.nn.Linear(Xz.shape[1], Yz.shape[1])
        lin.weight.data.zero_()
        lin.bias.data.zero_()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            out = glm.glm_saga(lin, DataLoader(ds, batch_size=512, shuffle=True), 5e-4, 500, 0.99, epsilon=1, k=1,
                               n_ex=len(ds), do_zero=False, metadata={"max_reg": {"nongrouped": 0.05}},
                               n_classes=Yz.shape[1], family="gaussian", lookbehind=5, tol=1e-5 * Yz.shape[1])
        return out["path"][0]["weight"].double().numpy().T

    W = benchmark.pedantic(fit, rounds=1, iterations=1)
    benchmark.extra_info.update(role="baseline", per="unit", work=LX_UNITS, objective=round(_objective(Xz, Yz, W), 6))
