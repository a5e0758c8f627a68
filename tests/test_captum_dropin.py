"""neurcore's IntegratedGradients, LayerIntegratedGradients and NeuronIntegratedGradients are drop-in
replacements for Captum's: same constructor arguments, properties and methods, same values (compared
with Captum's own classes on fresh random small models), usable inside Captum's NoiseTunnel, and
computed by neurcore's fused kernel."""

import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
nn = torch.nn

from captum.attr._utils.attribution import GradientAttribution  # noqa: E402

from neurcore import attribution as A  # noqa: E402
from neurcore.attribution import _integral  # noqa: E402

TOL = 2e-5


def close(ours, ref, tol=TOL):
    """Relative error in float32: both sides sum the same float32 gradients in another order."""
    if isinstance(ref, (tuple, list)):
        assert type(ours) is type(ref) and len(ours) == len(ref)
        for o, r in zip(ours, ref):
            close(o, r, tol)
        return
    ours, ref = ours.detach(), ref.detach()
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (ours.shape, ref.shape, ours.dtype, ref.dtype)
    err = (ours.double() - ref.double()).norm() / max(ref.double().norm().item(), 1e-12)
    assert err <= tol, f"relative error {err:.2e}"


def mlp(seed=0, d_in=5, d_out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, 6), nn.Softplus(),
                         nn.Linear(6, d_out)).eval()


class TwoInputs(nn.Module):
    """f(a, b, scale, shift) with a tensor and a Python additional argument."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.la, self.lb, self.head = nn.Linear(4, 6), nn.Linear(3, 6), nn.Linear(6, 3)

    def forward(self, a, b, scale, shift=0.0):
        return self.head(torch.tanh(self.la(a) * scale + self.lb(b)) + shift)


class SplitLayer(nn.Module):
    """A layer with two tensor outputs, and a model calling a layer with two tensor inputs."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.first, self.second = nn.Linear(4, 5), nn.Linear(4, 5)

    def forward(self, x):
        return torch.sigmoid(self.first(x)), torch.tanh(self.second(x))


class Join(nn.Module):
    def forward(self, u, v):
        return u * v + u


class TupleModel(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        self.split, self.join = SplitLayer(seed), Join()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.join(*self.split(x)))


class Tokens(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)).mean(1))


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ class surface
def test_instances_of_captums_classes_with_captums_properties():
    net = mlp()
    pairs = [(A.IntegratedGradients(net), captum_attr.IntegratedGradients, True),
             (A.LayerIntegratedGradients(net, net[2]), captum_attr.LayerIntegratedGradients, True),
             (A.NeuronIntegratedGradients(net, net[2]), captum_attr.NeuronIntegratedGradients, False)]
    for ours, cls, has_delta in pairs:
        assert isinstance(ours, cls) and isinstance(ours, GradientAttribution)
        assert ours.has_convergence_delta() is has_delta
        assert ours.multiplies_by_inputs is True
        assert hasattr(ours.attribute, "__wrapped__")  # what Captum's wrappers call
    for cls in (A.IntegratedGradients,):
        assert cls(net, multiply_by_inputs=False).multiplies_by_inputs is False
    assert A.LayerIntegratedGradients(net, net[2], None, False).multiplies_by_inputs is False
    assert A.NeuronIntegratedGradients(net, net[2], None, False).multiplies_by_inputs is False
    with pytest.raises(NotImplementedError):
        A.IntegratedGradients(net).attribute_future()


def test_the_fused_kernel_does_the_sum(monkeypatch):
    calls = []
    real = _integral.ig_accumulate
    monkeypatch.setattr(_integral, "ig_accumulate", lambda *a, **k: calls.append(1) or real(*a, **k))
    net, x = mlp(), randn(3, 5)
    A.IntegratedGradients(net).attribute(x, target=1, n_steps=8, internal_batch_size=6)
    assert len(calls) == 4  # 2 steps per forward pass
    A.LayerIntegratedGradients(net, net[2]).attribute(x, target=1, n_steps=8)
    A.NeuronIntegratedGradients(net, net[2]).attribute(x, 1, n_steps=8)
    assert len(calls) == 6


# ------------------------------------------------------------------ IntegratedGradients
@pytest.mark.parametrize("method", A.METHODS)
def test_multiply_by_inputs_false_is_the_path_integral(method):
    net, x, base = mlp(1), randn(4, 5), randn(1, 5, seed=2)
    ref = captum_attr.IntegratedGradients(net, multiply_by_inputs=False).attribute(
        x, base, target=2, n_steps=12, method=method)
    ours = A.IntegratedGradients(net, multiply_by_inputs=False).attribute(x, base, target=2, n_steps=12,
                                                                         method=method)
    close(ours, ref)
    full = A.IntegratedGradients(net).attribute(x, base, target=2, n_steps=12, method=method)
    close(full, ours * (x - base), 1e-6)


def test_convergence_delta_is_captums():
    net, x, base = mlp(2), randn(4, 5), randn(4, 5, seed=3)
    ig = A.IntegratedGradients(net)
    attr, delta = ig.attribute(x, base, target=[0, 2, 1, 0], n_steps=16, return_convergence_delta=True)
    ref_attr, ref_delta = captum_attr.IntegratedGradients(net).attribute(
        x, base, target=[0, 2, 1, 0], n_steps=16, return_convergence_delta=True)
    close(attr, ref_attr)
    assert delta.shape == (4,) and delta.dtype == ref_delta.dtype
    assert torch.allclose(delta, ref_delta, atol=1e-5)
    # the delta returned is exactly the one computed afterwards, by ours and by Captum's method
    assert torch.equal(delta, ig.compute_convergence_delta(attr, base, x, target=[0, 2, 1, 0]))
    captum_ig = captum_attr.IntegratedGradients(net)
    assert torch.equal(delta, captum_ig.compute_convergence_delta(attr, base, x, target=[0, 2, 1, 0]))
    with torch.no_grad():
        diff = net(x)[torch.arange(4), [0, 2, 1, 0]] - net(base)[torch.arange(4), [0, 2, 1, 0]]
    assert torch.allclose(delta, attr.sum(1) - diff, atol=1e-6)
    assert delta.abs().max() < 1e-3  # 16 Gauss-Legendre points integrate this path closely


def test_tuple_inputs_additional_args_and_internal_batch_size():
    model = TwoInputs()
    a, b, scale = randn(3, 4), randn(3, 3, seed=2), randn(3, 1, seed=3).abs() + 0.5
    kwargs = dict(baselines=(0.1, torch.zeros(1, 3)), target=torch.tensor([0, 2, 1]),
                  additional_forward_args=(scale, 0.25), n_steps=10, method="riemann_middle",
                  return_convergence_delta=True)
    ref, ref_delta = captum_attr.IntegratedGradients(model).attribute((a, b), **kwargs)
    for ibs in (None, 3, 7, 30):
        ours, delta = A.IntegratedGradients(model).attribute((a, b), internal_batch_size=ibs, **kwargs)
        assert isinstance(ours, tuple) and len(ours) == 2
        close(ours, ref)
        assert torch.allclose(delta, ref_delta, atol=1e-5)
    with pytest.warns(UserWarning, match="Internal batch size cannot be less"):
        A.IntegratedGradients(model).attribute((a, b), internal_batch_size=2, **kwargs)


def test_low_precision_inputs_sum_in_float32_like_captum():
    net, x = mlp(3).to(torch.bfloat16), randn(2, 5).to(torch.bfloat16)
    ref = captum_attr.IntegratedGradients(net).attribute(x, target=0, n_steps=8)
    ours = A.IntegratedGradients(net).attribute(x, target=0, n_steps=8)
    close(ours, ref, 1e-2)  # bfloat16 gradients; both sum them in float32


# ------------------------------------------------------------------ NoiseTunnel
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("multiply", [True, False])
def test_inside_noise_tunnel_equals_captum(nt_type, multiply):
    net, x = mlp(4), randn(3, 5)
    results = []
    for cls in (captum_attr.IntegratedGradients, A.IntegratedGradients):
        nt = captum_attr.NoiseTunnel(cls(net, multiply_by_inputs=multiply))
        assert nt.multiplies_by_inputs is multiply and nt.has_convergence_delta()
        torch.manual_seed(5)  # same noise for both
        results.append(nt.attribute(x, nt_type=nt_type, nt_samples=4, nt_samples_batch_size=3, stdevs=0.2,
                                    target=1, n_steps=10, return_convergence_delta=True))
    (ref, ref_delta), (ours, delta) = results
    close(ours, ref, 1e-4)
    assert delta.shape == (12,) and torch.allclose(delta, ref_delta, atol=1e-5)


# ------------------------------------------------------------------ LayerIntegratedGradients
@pytest.mark.parametrize("to_input", [False, True])
@pytest.mark.parametrize("multiply", [True, False])
def test_layer_output_and_input_equal_captum(to_input, multiply):
    net, x, base = mlp(5), randn(3, 5), randn(3, 5, seed=4)
    kwargs = dict(target=2, n_steps=12, return_convergence_delta=True, attribute_to_layer_input=to_input)
    ref, ref_delta = captum_attr.LayerIntegratedGradients(net, net[2], multiply_by_inputs=multiply).attribute(
        x, base, **kwargs)
    lig = A.LayerIntegratedGradients(net, "2", multiply_by_inputs=multiply)
    ours, delta = lig.attribute(x, base, **kwargs)
    close(ours, ref)
    assert ours.shape == (3, 8 if to_input else 6)
    assert torch.allclose(delta, ref_delta, atol=1e-5)
    assert torch.equal(delta, lig.compute_convergence_delta(ours, base, x, target=2))


def test_layer_lists_tuple_outputs_and_tuple_inputs():
    model, x = TupleModel(), randn(4, 4)
    for layer, to_input in ((lambda m: m.split, False), (lambda m: m.join, True),
                            (lambda m: [m.split.first, m.split.second], False),
                            (lambda m: [m.split.first, m.split.second], True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum warns about several layers
            ref = captum_attr.LayerIntegratedGradients(model, layer(model)).attribute(
                x, target=1, n_steps=10, attribute_to_layer_input=to_input)
            ours = A.LayerIntegratedGradients(model, layer(model)).attribute(
                x, target=1, n_steps=10, attribute_to_layer_input=to_input)
        close(ours, ref)
        assert isinstance(ours, list if isinstance(layer(model), list) else tuple) and len(ours) == 2


def test_layer_with_token_ids_additional_args_and_grad_kwargs():
    model = Tokens()
    ids = torch.tensor([[1, 4, 2], [7, 0, 3]])
    ref = captum_attr.LayerIntegratedGradients(model, model.emb).attribute(
        ids, baselines=0, target=[2, 0], n_steps=10, internal_batch_size=6)
    ours = A.LayerIntegratedGradients(model, "emb").attribute(ids, baselines=0, target=[2, 0], n_steps=10,
                                                             internal_batch_size=6)
    close(ours, ref)
    f = TwoInputs()
    a, b, scale = randn(2, 4), randn(2, 3, seed=2), randn(2, 1, seed=3)
    kwargs = dict(target=0, additional_forward_args=(scale,), n_steps=8, grad_kwargs={"retain_graph": False})
    close(A.LayerIntegratedGradients(f, f.lb).attribute((a, b), **kwargs),
          captum_attr.LayerIntegratedGradients(f, f.lb).attribute((a, b), **kwargs))


# ------------------------------------------------------------------ NeuronIntegratedGradients
@pytest.mark.parametrize("selector", [3, (4,), (slice(1, 4),), "callable"])
@pytest.mark.parametrize("multiply", [True, False])
def test_neuron_selectors_equal_captum(selector, multiply):
    net, x, base = mlp(6), randn(3, 5), randn(1, 5, seed=5)
    if selector == "callable":
        selector = lambda out: out[:, :3].pow(2).sum(1)  # noqa: E731
    kwargs = dict(baselines=base, n_steps=12, internal_batch_size=9)
    ref = captum_attr.NeuronIntegratedGradients(net, net[2], multiply_by_inputs=multiply).attribute(
        x, selector, **kwargs)
    ours = A.NeuronIntegratedGradients(net, "2", multiply_by_inputs=multiply).attribute(x, selector, **kwargs)
    close(ours, ref)


def test_neuron_input_and_tuple_inputs():
    model = TwoInputs()
    a, b, scale = randn(3, 4), randn(3, 3, seed=2), randn(3, 1, seed=3)
    for to_input in (False, True):
        kwargs = dict(additional_forward_args=(scale, 0.5), n_steps=10, attribute_to_neuron_input=to_input)
        ref = captum_attr.NeuronIntegratedGradients(model, model.head).attribute((a, b), (1,), **kwargs)
        ours = A.NeuronIntegratedGradients(model, model.head).attribute((a, b), (1,), **kwargs)
        close(ours, ref)


def test_argument_errors_are_input_errors_and_captums_assertion_errors():
    from neurcore.errors import InputError

    net, x = mlp(), randn(2, 5)
    for cls, call in ((A.IntegratedGradients, lambda m: m.attribute(x)),  # target needed
                      (A.IntegratedGradients, lambda m: m.attribute(x, target=0, method="simpson")),
                      (A.LayerIntegratedGradients, lambda m: m.attribute(x, torch.zeros(3, 5), target=0))):
        m = cls(net) if cls is A.IntegratedGradients else cls(net, net[2])
        with pytest.raises(InputError) as info:
            call(m)
        assert isinstance(info.value, AssertionError)


# ------------------------------------------------------------------ without Captum
def test_neurcore_imports_without_captum():
    """Only the three Captum classes need Captum; the rest of the package (NeurFlow's form) does not."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "captum" or name.startswith("captum."):
            raise ImportError("no captum here")
sys.meta_path.insert(0, Block())
import neurcore, neurcore.circuits
from neurcore.attribution import LayerToLayerIntegratedGradients, quadrature
try:
    from neurcore.attribution import IntegratedGradients
except ImportError as e:
    print("ImportError", "captum" in str(e))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ImportError", "True"]
