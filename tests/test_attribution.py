"""Integrated gradients equal Captum's for every method and variant; completeness holds; the
layer-to-layer form equals a Captum loop over target neurons."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
nn = torch.nn

import neurcore  # noqa: E402
from neurcore import attribution as A  # noqa: E402
from neurcore.errors import InputError  # noqa: E402

BACKENDS = ["cpu"] + (["triton"] if neurcore.backends()["triton"]["usable"] else [])


def small_cnn(seed=0, width=6):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.Softplus(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))
    with torch.no_grad():
        net[4].running_mean.uniform_(-0.2, 0.2)
        net[4].running_var.uniform_(0.5, 1.5)
    return net.eval()


def close(ours, ref, tol=2e-5):
    """Relative error against Captum in float32: each attribution is a 50-term float32 sum of
    gradients computed in float32 in both, so differences are rounding (~1e-6 relative)."""
    ours, ref = ours.detach().double(), ref.detach().double()
    err = (ours - ref).norm() / max(ref.norm().item(), 1e-12)
    assert ours.shape == ref.shape and err <= tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("method", A.METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_integrated_gradients_equals_captum(method, backend):
    net = small_cnn()
    g = torch.Generator().manual_seed(1)
    x, base = torch.randn(3, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g) * 0.1
    for target in (2, [0, 3, 1], torch.tensor([1, 1, 2])):
        ref, ref_delta = captum_attr.IntegratedGradients(net).attribute(
            x, base, target=target, n_steps=20, method=method, return_convergence_delta=True)
        ours, delta = A.IntegratedGradients(net, backend=backend).attribute(
            x, base, target=target, n_steps=20, method=method, return_convergence_delta=True)
        close(ours, ref)
        assert delta.dtype == ref_delta.dtype and torch.allclose(delta, ref_delta, atol=1e-4)


def test_chunking_and_internal_batch_size_do_not_change_results():
    net = small_cnn(2)
    x = torch.randn(5, 3, 8, 8)
    full = A.IntegratedGradients(net).attribute(x, target=1, n_steps=17)
    for kwargs in ({"internal_batch_size": 5}, {"internal_batch_size": 12}, {"internal_batch_size": 1000}):
        close(A.IntegratedGradients(net).attribute(x, target=1, n_steps=17, **kwargs), full, 1e-6)
    close(A.IntegratedGradients(net, chunk_bytes=1).attribute(x, target=1, n_steps=17), full, 1e-6)


def test_tuple_inputs_additional_args_and_scalar_outputs():
    torch.manual_seed(3)
    lin = nn.Linear(5, 1)

    def f(a, b, scale):
        return (lin(a * b) * scale).squeeze(1)

    a, b, scale = torch.randn(4, 5), torch.randn(4, 5), torch.rand(4, 1) + 0.5
    ref = captum_attr.IntegratedGradients(f).attribute((a, b), baselines=(0.0, 0.5),
                                                       additional_forward_args=(scale,))
    ours = A.IntegratedGradients(f).attribute((a, b), baselines=(0.0, 0.5), additional_forward_args=(scale,))
    assert isinstance(ours, tuple) and len(ours) == 2
    for o, r in zip(ours, ref):
        close(o, r)


def test_completeness_and_truthful_delta():
    """Sum of attributions = F(x) - F(baseline) up to the quadrature error, and the reported delta
    is exactly that difference (recomputed here independently, in float64)."""
    net = small_cnn(4).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    attr, delta = A.IntegratedGradients(net).attribute(x, target=0, n_steps=64, return_convergence_delta=True)
    with torch.no_grad():
        diff = net(x)[:, 0] - net(torch.zeros_like(x))[:, 0]
    assert torch.allclose(delta, attr.sum((1, 2, 3)) - diff, atol=1e-12)
    assert delta.abs().max() <= 1e-3 * diff.abs().max() + 1e-6


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_layer_integrated_gradients_equals_captum(method):
    net = small_cnn(5)
    x = torch.randn(2, 3, 8, 8)
    base = torch.full((2, 3, 8, 8), 0.2)
    ref, ref_delta = captum_attr.LayerIntegratedGradients(net, net[3]).attribute(
        x, base, target=[1, 2], n_steps=24, method=method, return_convergence_delta=True)
    ours, delta = A.LayerIntegratedGradients(net, net[3]).attribute(
        x, base, target=[1, 2], n_steps=24, method=method, return_convergence_delta=True)
    close(ours, ref)
    assert delta.dtype == ref_delta.dtype and torch.allclose(delta, ref_delta, atol=1e-4)
    by_name = A.LayerIntegratedGradients(net, "3").attribute(x, base, target=[1, 2], n_steps=24,
                                                             method=method)
    close(by_name, ours, 1e-7)


@pytest.mark.parametrize("selector", [(2, 1, 3), 3, "callable"])
def test_neuron_integrated_gradients_equals_captum(selector):
    net = small_cnn(6)
    x = torch.randn(3, 3, 8, 8)
    layer = net[3] if selector != 3 else net[8]
    if selector == "callable":
        selector = lambda out: out[:, 1].sum((1, 2))  # noqa: E731
    ref = captum_attr.NeuronIntegratedGradients(net, layer).attribute(x, selector, n_steps=16)
    ours = A.NeuronIntegratedGradients(net, layer).attribute(x, selector, n_steps=16)
    close(ours, ref)


def test_quadrature_matches_captum():
    from captum.attr._utils.approximation_methods import approximation_parameters

    for method in A.METHODS:
        steps, alphas = approximation_parameters(method)
        a, w = A.quadrature(method, 9)
        assert np.allclose(a, alphas(9)) and np.allclose(w, steps(9))
        # Captum's trapezoid keeps step 1/n and halves the end weights, so its weights sum to 1 - 1/n.
        assert np.isclose(w.sum(), 1.0 - (1 / 9 if method == "riemann_trapezoid" else 0))


# ---------------------------------------------------------------- layer to layer
def stacked(seed=0):
    torch.manual_seed(seed)

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    net = nn.Sequential(__import__("collections").OrderedDict(
        a=block(3, 8), b=block(8, 12), c=block(12, 10), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
        head=nn.Linear(10, 5)))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def captum_loop(net_b, x, targets, examples, n_steps, method="gausslegendre"):
    """The reference NeurFlow computation: one Captum call per upper neuron over its own examples."""
    def f(z):
        y = net_b(z)
        return y.mean((2, 3)) if y.dim() == 4 else y

    ig = captum_attr.IntegratedGradients(f)
    rows = [ig.attribute(x[examples[i]], target=int(t), n_steps=n_steps, method=method).mean((2, 3))
            for i, t in enumerate(targets)]
    return torch.stack(rows)


@pytest.mark.parametrize("lower,upper", [("b", "c"), ("a", "c"), ("c", None)])
@pytest.mark.parametrize("restrict", [True, False])
def test_layer_to_layer_equals_captum_loop(lower, upper, restrict):
    net = stacked()
    with torch.no_grad():
        acts = {}
        hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
                 for n in ("a", "b", "c")]
        net(torch.randn(9, 3, 6, 6))
        for h in hooks:
            h.remove()
    x = acts[lower]
    g = torch.Generator().manual_seed(0)
    n_up = 5 if upper is None else 10
    targets = torch.randperm(n_up, generator=g)[:4]
    examples = torch.stack([torch.randperm(9, generator=g)[:3] for _ in targets])
    ig = A.LayerToLayerIntegratedGradients(net, lower, upper, restrict=restrict)
    ours = ig.attribute(x, targets, examples, n_steps=12)
    ref = captum_loop(ig.net, x, targets, examples, 12)
    close(ours, ref)
    small = A.LayerToLayerIntegratedGradients(net, lower, upper, restrict=restrict, chunk_bytes=1)
    close(small.attribute(x, targets, examples, n_steps=12), ours, 1e-6)


def test_restricted_output_equals_full_columns():
    net = stacked(1)
    for lower, upper in [("b", "c"), ("c", None)]:
        full = A.layer_function(net, lower, upper)
        x = torch.randn(4, 12 if lower == "b" else 10, 5, 5)
        part = A.restrict_output(full, [3, 0])
        assert part is not None
        with torch.no_grad():
            assert torch.allclose(part(x), full(x)[:, [3, 0]], atol=1e-6)


def test_layer_function_errors():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.b(self.a(x)) + x   # b's sum also reads the input directly

    net = stacked()
    with pytest.raises(InputError, match="not upstream"):
        A.layer_function(net, "c", "a")
    with pytest.raises(InputError, match="not found"):
        A.layer_function(net, "nope", "c")
    with pytest.raises(InputError, match="depends on the input"):
        A.layer_function(Skip(), "a", None)
    assert A.layer_function(Skip(), "a", "b") is not None


def test_argument_errors():
    net = small_cnn()
    ig = A.IntegratedGradients(net)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(InputError, match="method"):
        ig.attribute(x, target=0, method="simpson")
    with pytest.raises(InputError, match="n_steps"):
        ig.attribute(x, target=0, n_steps=1, method="riemann_left")
    with pytest.raises(InputError, match="target is needed"):
        ig.attribute(x)
    with pytest.raises(InputError, match="baselines"):
        ig.attribute(x, torch.zeros(3, 3, 8, 8), target=0)
    l2l = A.LayerToLayerIntegratedGradients(stacked(), "b", "c")
    with pytest.raises(InputError, match="examples"):
        l2l.attribute(torch.randn(4, 12, 5, 5), [0, 1], torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(InputError, match="rows 0..3"):
        l2l.attribute(torch.randn(4, 12, 5, 5), [0], torch.tensor([[7]]))


@pytest.mark.parametrize("arch, lower, upper", [("resnet18", "layer1.0", "layer1.1"),
                                                ("resnet50", "layer1.2", "layer2.0")])
def test_residual_blocks_are_restricted(arch, lower, upper):
    """A ResNet block ending the layer function (add + ReLU) computes only the asked channels, with the
    identity sliced or the downsample path restricted; the IG through it still equals Captum's."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    full = A.layer_function(model, lower, upper)
    seen = {}
    hook = model.get_submodule(lower).register_forward_hook(lambda _m, _i, out: seen.update(x=out))
    with torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    hook.remove()
    x = seen["x"]
    part = A.restrict_output(full, [5, 1, 7])
    assert part is not None and "RestrictedResidual" in {type(m).__name__ for m in part.modules()}
    with torch.no_grad():
        assert torch.allclose(part(x), full(x)[:, [5, 1, 7]], atol=1e-5)
    targets, examples = torch.tensor([5, 1]), torch.tensor([[0, 2], [1, 0]])
    ours = A.LayerToLayerIntegratedGradients(model, lower, upper).attribute(x, targets, examples, n_steps=6)
    close(ours, captum_loop(full, x, targets, examples, 6))
