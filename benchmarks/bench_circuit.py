"""The NeurFlow workload per layer pair: importance of every lower channel for every upper neuron
of the circuit, each over its top-50 crops, 50 Gauss-Legendre steps, against a Captum loop on the
same crops that returns the same scores (one ``IntegratedGradients`` call per upper neuron, its
crops' lower activations computed for it, as a per-neuron tool does). A second baseline gives
Captum the precomputed activations, to separate the two sources of gain.

Pairs: the default model's logit <- conv4 (1 upper neuron, 128 x 8 x 8 below) and conv4 <- conv3
(16 upper neurons), and a ResNet-18 block pair layer3.0 -> layer3.1 (256 x 14 x 14, random
weights, 2 upper neurons: the Captum loop costs seconds per neuron there). Peak memory is the
process's resident set sampled every millisecond, minus its value before the call (after freed heap
pages are given back to the OS, so memory the allocator reuses counts).
Devices: cpu, and cuda when a GPU is usable (set NEURCORE_BENCH_DEVICES=cuda to run only that).

``test_planted_circuit`` runs ``neurcore circuit`` at its defaults on ``default-circuit`` (the planted
circuit with distractors) by NeurFlow and NeuCEPT and reports precision and recall per layer and the
fidelity rows (``-k planted_circuit`` runs it alone, about 3 minutes here).
"""

import contextlib
import os
import threading
import time

import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from neurcore.attribution import LayerToLayerIntegratedGradients, layer_function  # noqa: E402

DEVICES = os.environ.get("NEURCORE_BENCH_DEVICES", "cpu,cuda" if torch.cuda.is_available() else "cpu").split(",")
K, STEPS = 50, 50


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim():
    """Give freed heap pages back to the OS, so that memory reused from earlier work counts in the RSS."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn):
    """(result, peak bytes above the start): RSS on the CPU, the allocator's peak on a GPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_gpu = torch.cuda.memory_allocated()
    _trim()
    start, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss() - start)
            time.sleep(0.001)

    t = threading.Thread(target=sample)
    t.start()
    try:
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    finally:
        done.set()
        t.join()
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > start_gpu:
        return out, max(peak[0], torch.cuda.max_memory_allocated() - start_gpu)
    return out, peak[0]


def _workload(name, device):
    """(net_a, lower, upper, model, crops, targets, examples)."""
    g = torch.Generator().manual_seed(0)
    if name.startswith("resnet18"):
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval().to(device)
        crops = torch.randn(120, 3, 224, 224, generator=g).to(device)
        lower, upper, n_targets = "layer3.0", "layer3.1", 2
    else:
        from neurcore.circuits import crop_grid, make_crops
        from neurcore.models import load_model
        from neurcore.probe import open_probe

        spec = load_model("default", progress=False)
        model = spec.module.to(device)
        images = open_probe("default").images(0, 20)
        crops = make_crops(spec, images, crop_grid(64)).to(device)     # 1,180 crops
        lower, upper = ("conv4", None) if name == "default logit<-conv4" else ("conv3", "conv4")
        n_targets = 1 if upper is None else 16
    net_a = _upto(model, lower)
    with torch.no_grad():
        acts = torch.cat([net_a(crops[s : s + 64]) for s in range(0, len(crops), 64)])
        net_b = layer_function(model, lower, upper)
        y = torch.cat([net_b(acts[s : s + 64]) for s in range(0, len(acts), 64)])
        y = y.mean((2, 3)) if y.dim() == 4 else y
    targets = torch.argsort(y.mean(0), descending=True)[:n_targets].cpu()
    examples = torch.stack([torch.argsort(y[:, t], descending=True)[:K] for t in targets.tolist()]).cpu()
    return model, net_a, net_b, lower, upper, crops, acts, targets, examples


def _upto(model, lower):
    """The model from its input to ``lower``'s output (hooks stop the forward pass there)."""
    from neurcore.models import resolve_layer

    layer = resolve_layer(model, lower)

    class Stop(Exception):
        pass

    def run(x):
        seen = {}

        def hook(_m, _i, out):
            seen["out"] = out
            raise Stop

        h = layer.register_forward_hook(hook)
        try:
            model(x)
        except Stop:
            pass
        finally:
            h.remove()
        return seen["out"]

    return run


PAIRS = ["default logit<-conv4", "default conv4<-conv3", "resnet18 layer3.1<-layer3.0"]


@pytest.fixture(scope="module", params=[(p, d) for p in PAIRS for d in DEVICES], ids=lambda v: f"{v[0]}-{v[1]}")
def pair(request):
    name, device = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU")
    return (name, device, *_workload(name, device))


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def test_neurcore(benchmark, pair):
    name, device, model, net_a, net_b, lower, upper, crops, acts, targets, examples = pair
    ig = LayerToLayerIntegratedGradients(model, lower, upper)

    def run():
        out = ig.attribute(acts, targets, examples, n_steps=STEPS).abs().mean(1)
        _sync(device)
        return out

    ours, peak = peak_memory(run)
    benchmark.group = f"NeurFlow IG {name} ({device})"
    out = benchmark.pedantic(run, rounds=1 if "resnet" in name and device == "cpu" else 3, iterations=1)
    ref = pair_reference(pair)
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    benchmark.extra_info.update(role="neurcore", per="upper neuron", work=len(targets), peak_mib=round(peak / 2**20, 1),
                                relative_error_vs_captum=f"{err:.1e}", **_throughput(net_b, acts, examples, benchmark))
    assert err < 1e-4


_REFERENCE = {}


def _captum_scores(net_b, acts_of, targets, examples, device):
    """NeurFlow's importance [T, C_lower] (|IG| averaged over each target's examples), the Captum way."""
    return _captum_per_neuron(net_b, acts_of, targets, examples, device, STEPS).mean(1)


def pair_reference(pair):
    name, device = pair[0], pair[1]
    if (name, device) not in _REFERENCE:
        _, _, _, net_a, net_b, _, _, crops, acts, targets, examples = pair
        _REFERENCE[(name, device)] = _captum_scores(net_b, lambda e: acts[e.to(acts.device)], targets, examples, device)
    return _REFERENCE[(name, device)]


def test_captum_loop(benchmark, pair):
    name, device, model, net_a, net_b, lower, upper, crops, acts, targets, examples = pair

    def run():
        with torch.no_grad():
            return _captum_scores(net_b, lambda e: net_a(crops[e.to(crops.device)]).detach(), targets, examples,
                                  device)

    out, peak = peak_memory(run)
    benchmark.group = f"NeurFlow IG {name} ({device})"
    benchmark.pedantic(run, rounds=1 if "resnet" in name and device == "cpu" else 3, iterations=1)
    benchmark.extra_info.update(role="baseline", per="upper neuron", work=len(targets), peak_mib=round(peak / 2**20, 1))
    assert torch.allclose(out, pair_reference(pair), rtol=1e-4, atol=1e-7)


def test_captum_loop_precomputed(benchmark, pair):
    name, device, model, net_a, net_b, lower, upper, crops, acts, targets, examples = pair
    benchmark.group = f"NeurFlow IG {name} ({device})"
    benchmark.pedantic(_captum_scores, (net_b, lambda e: acts[e.to(acts.device)], targets, examples, device),
                       rounds=1 if "resnet" in name and device == "cpu" else 3, iterations=1)
    benchmark.extra_info.update(role="baseline", per="upper neuron", work=len(targets))


def _throughput(net_b, acts, examples, benchmark):
    """FLOPs of the full layer function's forward + input backward (2x forward) over every step and
    crop, per second: what the Captum loop must do; neurcore may do less (restricted outputs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net_b(acts[:1])
    per_row = 2 * counter.get_total_flops()  # the input backward of a conv costs what its forward does
    total = per_row * examples.numel() * STEPS
    return {"captum_equivalent_gflop_per_s": round(total / benchmark.stats.stats.median / 1e9, 1)}


def test_machine_conv_throughput(benchmark):
    """The CPU's measured convolution rate (forward + input backward of a 128-channel 3x3 conv),
    for the fraction of it reached above."""
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(512, 128, 8, 8, requires_grad=True)

    def run():
        (g,) = torch.autograd.grad(conv(x).sum(), x)
        return g

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        conv(x)
    benchmark.group = "machine"
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(gflop_per_s=round(2 * counter.get_total_flops() / benchmark.stats.stats.median / 1e9, 1))


def _captum_neurflow(spec, layers, config):
    """NeurFlow with its importance computed the per-neuron way: one Captum ``IntegratedGradients``
    call per upper neuron over its top-k crops, whose lower activations are computed for it."""
    from neurcore.attribution import layer_function
    from neurcore.circuits import NeurFlow

    class CaptumNeurFlow(NeurFlow):
        def _importance(self, lower, upper, targets, examples):
            net_a, net_b = _upto(self.spec.module, lower), layer_function(self.spec.module, lower, upper)
            with torch.no_grad():
                return _captum_per_neuron(net_b, lambda e: net_a(self.crops[e]).detach(), torch.as_tensor(targets),
                                          torch.as_tensor(examples), "cpu", self.config.n_steps).cpu().numpy()

    return CaptumNeurFlow(spec, layers, config)


def _captum_per_neuron(net_b, acts_of, targets, examples, device, n_steps):
    """|IG| [T, k, C] per (target, example), the layout NeurFlow's importance has: one Captum call
    per target over its examples, space averaged."""

    def f(z):
        y = net_b(z)
        return y.mean((2, 3)) if y.dim() == 4 else y

    ig = captum_attr.IntegratedGradients(f)
    rows = [ig.attribute(acts_of(examples[i]), target=t, n_steps=n_steps).mean((2, 3)).abs()
            for i, t in enumerate(targets.tolist())]
    _sync(device)
    return torch.stack(rows)


CIRCUIT = ["conv4", "conv3", "conv2"]


@pytest.fixture(scope="module")
def circuit_case():
    from neurcore.circuits import class_images
    from neurcore.models import load_model
    from neurcore.probe import open_probe

    spec = load_model("default", progress=False)
    c = spec.classes.index("circle")
    images, _ = class_images(spec, open_probe("default"), c, max_images=20)
    return spec, images, c, {}


@pytest.mark.parametrize("how", ["neurcore", "captum"])
def test_whole_circuit(benchmark, circuit_case, how):
    """The whole NeurFlow circuit of the default model's "circle" over conv4 > conv3 > conv2 (crops,
    forward pass, importance of every pair, groups), with neurcore's importance or the Captum loop."""
    from neurcore.circuits import NeurFlow, NeurFlowConfig

    spec, images, c, shared = circuit_case
    config = NeurFlowConfig(n_steps=STEPS, top_k=K)

    def run():
        flow = NeurFlow(spec, CIRCUIT, config) if how == "neurcore" else _captum_neurflow(spec, CIRCUIT, config)
        return flow, flow.run(images, c)

    (flow, levels), peak = peak_memory(run)
    benchmark.group = "NeurFlow whole circuit, default model (cpu)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    targets = sum(len(level.neurons) for level in levels[:-1])
    benchmark.extra_info.update(role="neurcore" if how == "neurcore" else "baseline", per="circuit", work=1,
                                peak_mib=round(peak / 2**20, 1), upper_neurons=targets,
                                neurons_per_level=[len(level.neurons) for level in levels])
    shared[how] = flow.core_neurons()
    if len(shared) == 2:  # the same circuit either way
        assert shared["neurcore"] == shared["captum"]


@pytest.mark.parametrize("method", ["neurflow", "neucept"])
def test_planted_circuit(benchmark, tmp_path, method):
    """``neurcore circuit`` at its defaults on ``default-circuit`` (the planted circuit with distractors,
    conv4 > conv3): precision and recall per layer at NeurFlow's tau (16) or NeuCEPT's target FDR (0.1),
    and the fidelity rows' logit drops. Checked: NeurFlow's recall >= 0.9 at precision >= 0.8 on both
    layers. NeuCEPT's FDR is not checkable on this model (every conv4 channel is a dependence of the
    logit); ``bench_neucept_fdr.py`` measures it where the knockoff null holds."""
    from neurcore.models import load_model
    from neurcore.pipelines import circuit

    load_model("default-circuit", progress=False)  # built and cached outside the timing

    def run():
        return circuit("default-circuit", None, ["conv4", "conv3"], str(tmp_path / method), method=method,
                       progress=False)

    benchmark.group = "planted circuit with distractors (default-circuit), CLI defaults"
    doc = benchmark.pedantic(run, rounds=1, iterations=1)
    info = {f"{layer} precision / recall": f"{m['precision']:.3f} / {m['recall']:.3f} (found {m['found']}, "
            f"true {m['true']})" for layer, m in doc["metrics"].items()}
    for r in doc["fidelity"]:
        info[f"fidelity {r['layer']} {r['scope']} {r['mode']}"] = (
            f"accuracy {r['core']:.3f} vs {r['random_mean']:.3f} +- {r['random_std']:.3f}; logit drop "
            f"{r['core_logit_drop']:.1%} vs {r['random_logit_drop']:.1%} (sd {r['random_logit_std']:.3f}), "
            f"{r['logit_z']} sds")
    benchmark.extra_info.update(role="neurcore", per="circuit", work=1, **info)
    if method == "neurflow":
        for layer, m in doc["metrics"].items():
            assert m["recall"] >= 0.9 and m["precision"] >= 0.8, (layer, m)
