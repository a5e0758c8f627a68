"""Models by reference: torchvision:NAME, timm:NAME and python:MODULE:FACTORY built and dissected end to
end, weights from a state dict or a safetensors file, preprocessing overrides, ``neurcore layers``, and
one-line errors with the closest names for a bad reference."""

import json
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("timm")

from neurcore.cli import main  # noqa: E402
from neurcore.errors import InputError  # noqa: E402
from neurcore.models import IMAGENET_MEAN, LayerInfo, ModelSpec, layer_table, load_model  # noqa: E402
from conftest import one_error_line  # noqa: E402

MODULE = "neurcore_zoo_factories"
FACTORIES = '''
import torch.nn as nn

from neurcore.models import ModelSpec


class Tiny(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 6, 3, padding=1, stride=2)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.conv2(self.relu(self.conv1(x))).mean((2, 3)))


def tiny():
    return Tiny()


def wide():
    return Tiny(width=16)


def tiny_spec():
    return ModelSpec(Tiny(), name="ignored", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)


def not_a_model():
    return 42
'''
TINY = f"python:{MODULE}:tiny"


@pytest.fixture(scope="module", autouse=True)
def factories(tmp_path_factory):
    """A module of model factories on sys.path for python: references."""
    root = tmp_path_factory.mktemp("factories")
    (root / f"{MODULE}.py").write_text(FACTORIES)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    sys.modules.pop(MODULE, None)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("ref, layer, units", [("torchvision:resnet18", "layer1.0", 64),
                                               ("timm:resnet10t", "layer1.0", 64),
                                               (TINY, "conv1", 8)])
def test_every_reference_form_dissects_a_layer_end_to_end(ref, layer, units, tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["dissect", "--model", ref, "--input-size", "64", "--layer", layer, "--probe-images", "60",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == units and {r["layer"] for r in rows} == {layer}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] in (ref, f"{ref} (input_size=64)")


def test_a_resume_with_other_preprocessing_is_refused(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["dissect", "--model", TINY, "--layer", "conv2", "--probe-images", "40", "--out", str(out),
            "--quiet"]
    assert main([*argv, "--input-size", "32"]) == 0
    assert main([*argv, "--input-size", "32"]) == 0  # the same model resumes
    capsys.readouterr()
    assert main([*argv, "--input-size", "48"]) == 2
    assert "made with other settings (model)" in one_error_line(capsys, "dissect")
    assert main([*argv, "--input-size", "32", "--mean", "0.5,0.5,0.5"]) == 2


def test_layers_lists_a_resnet_with_units_and_block_outputs(capsys):
    assert main(["layers", "--model", "torchvision:resnet18", "--input-size", "64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "torchvision:resnet18 (input_size=64)" and doc["input_size"] == 64
    rows = {r["name"]: r for r in doc["layers"]}
    assert rows["layer4"] == {"name": "layer4", "type": "Sequential", "shape": [1, 512, 2, 2], "units": 512,
                              "block": False}
    assert rows["layer4.1"]["type"] == "BasicBlock" and rows["layer4.1"]["block"]
    assert rows["fc"] == {"name": "fc", "type": "Linear", "shape": [1, 1000], "units": 1000, "block": False}
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert [n for n, r in rows.items() if r["block"]] == blocks
    assert main(["layers", "--model", "resnet18", "--input-size", "64", "--depth", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "resnet18 (input_size=64): input 3x64x64, 10 layers; * = picked by --layer all"
    assert lines[1].split() == ["layer", "type", "output", "units", "all"]
    assert lines[-1].split() == ["fc", "Linear", "1x1000", "1000"]
    assert ["layer4", "Sequential", "1x512x2x2", "512"] in [line.split() for line in lines]


def test_layers_lists_a_vit_built_for_the_input_size():
    spec = load_model("timm:vit_tiny_patch16_224", input_size=64)
    table = layer_table(spec, depth=2)
    assert all(isinstance(row, LayerInfo) for row in table)
    rows = {row.name: row for row in table}
    assert [n for n, r in rows.items() if r.block] == [f"blocks.{i}" for i in range(12)]
    assert rows["blocks.11"].shape == (1, 17, 192) and rows["blocks.11"].units == 192  # 4 x 4 patches + class
    assert rows["head"].shape == (1, 1000) and rows["head"].units == 1000
    assert all(name.count(".") < 2 for name in rows)


def test_python_factory_preprocessing_and_overrides():
    spec = load_model(TINY)
    assert (spec.name, spec.input_size, spec.mean) == (TINY, 224, IMAGENET_MEAN) and not spec.module.training
    spec = load_model(f"python:{MODULE}:tiny_spec")  # a factory's ModelSpec keeps its preprocessing
    assert (spec.name, spec.input_size, spec.mean) == (f"python:{MODULE}:tiny_spec", 32, (0.5,) * 3)
    assert load_model(f"python:{MODULE}:tiny_spec", input_size=32, mean=[0.5] * 3).name == spec.name
    spec = load_model(TINY, input_size=48, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2))
    assert spec.name == f"{TINY} (input_size=48, mean=0.4,0.5,0.6, std=0.2,0.2,0.2)"
    assert (spec.input_size, spec.mean, spec.std) == (48, (0.4, 0.5, 0.6), (0.2, 0.2, 0.2))
    timm_spec = load_model("timm:resnet10t")
    assert (timm_spec.input_size, timm_spec.mean) == (176, IMAGENET_MEAN)  # timm's pretrained_cfg
    assert all(torch.equal(a, b) for a, b in zip(_params(timm_spec.module).values(),
                                                 _params(load_model("timm:resnet10t").module).values()))
    with pytest.raises(InputError, match="--std: every value must be > 0"):
        load_model(TINY, std=(0.2, 0.0, 0.2))
    assert isinstance(load_model(f"python:{MODULE}:tiny_spec"), ModelSpec)


@pytest.mark.parametrize("ref, build", [
    ("torchvision:resnet18", lambda: __import__("torchvision").models.resnet18()),
    ("timm:resnet10t", lambda: __import__("timm").create_model("resnet10t")),
    (TINY, lambda: sys.modules[MODULE].tiny())])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_weights_round_trip(ref, build, fmt, tmp_path):
    load_model(TINY)  # imports the factories' module
    torch.manual_seed(123)  # weights unlike the seeded random ones
    src = build()
    state = _params(src)
    path = tmp_path / f"w.{fmt}"
    if fmt == "pt":  # wrapped and prefixed, as DataParallel checkpoints often are
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    got = _params(load_model(ref, str(path)).module)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert not all(torch.equal(got[k], v) for k, v in _params(load_model(ref).module).items())


def test_weights_that_do_not_fit_name_the_file_and_the_first_key(tmp_path, capsys):
    load_model(TINY)
    wide = sys.modules[MODULE].wide()
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(InputError, match=r"wide\.pt: does not fit python:\S+:tiny: key 'conv1\.weight' has "
                                         r"shape \[16, 3, 3, 3\] in the file, \[8, 3, 3, 3\] in the model"):
        load_model(TINY, str(tmp_path / "wide.pt"))
    torch.save({"conv1.weight": wide.conv1.weight}, tmp_path / "part.pt")
    with pytest.raises(InputError, match=r"part\.pt: does not fit .*: key 'conv1\.weight'.*\(5 missing, "):
        load_model(TINY, str(tmp_path / "part.pt"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert main(["layers", "--model", TINY, "--weights", str(tmp_path / "junk.safetensors")]) == 2
    assert "junk.safetensors: not a readable safetensors file" in one_error_line(capsys, "layers")
    assert main(["layers", "--model", TINY, "--weights", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: no such weights file" in one_error_line(capsys, "layers")


@pytest.mark.parametrize("ref, message", [
    ("torchvision:resnet19",
     "torchvision has no classification model 'resnet19'; closest: torchvision:resnet18"),
    ("timm:resnt18", "timm has no model 'resnt18'; closest: timm:resnet18"),
    ("python:nosuchmod:f", "no module named 'nosuchmod'"),
    ("python:json:dumps", "the factory is called with no arguments but needs obj"),
    ("python:json:JSONEncoder", "json.JSONEncoder() returned JSONEncoder"),
    (f"python:{MODULE}:not_a_model", f"{MODULE}.not_a_model() returned int 42, not a torch.nn.Module"),
    (f"python:{MODULE}:tinny", f"module '{MODULE}' has no attribute 'tinny'; closest: tiny"),
    ("python:json", "expected python:MODULE:FACTORY"),
    ("onnx:model.onnx", "unknown prefix 'onnx:'; expected default, default-circuit, resnet18, resnet50, "
                        "vit_b_16, torchvision:NAME, timm:NAME or python:MODULE:FACTORY"),
    ("alexnet", "closest: torchvision:alexnet"),
])
def test_a_bad_reference_is_one_line_with_the_closest_names(ref, message, capsys):
    assert main(["layers", "--model", ref]) == 2
    line = one_error_line(capsys, "layers")
    assert f"model {ref!r}: " in line and message in line


def test_dissect_reports_a_bad_reference_in_one_line(tmp_path, capsys):
    assert main(["dissect", "--model", "timm:resnt18", "--layer", "layer1", "--out", str(tmp_path / "d"),
                 "--quiet"]) == 2
    assert "closest: timm:resnet18" in one_error_line(capsys, "dissect")
    with pytest.raises(SystemExit):
        main(["dissect", "--model", TINY, "--layer", "conv1", "--mean", "0.5,0.5", "--out", "d"])
    assert "--mean: expected three numbers R,G,B" in capsys.readouterr().err


def test_layer_all_finds_the_blocks_of_mobile_networks():
    """``--layer all`` on inverted-residual networks: one output per block, not the stage containers."""
    import timm
    import torchvision

    from neurcore.models import block_outputs

    mobilenet = block_outputs(torchvision.models.mobilenet_v2())
    assert mobilenet[0] == "features.1" and len(mobilenet) == 17
    tv_efficientnet = block_outputs(torchvision.models.efficientnet_b0())
    assert tv_efficientnet[:2] == ["features.1.0", "features.2.0"] and len(tv_efficientnet) == 16
    timm_efficientnet = block_outputs(timm.create_model("efficientnet_b0", pretrained=False))
    assert timm_efficientnet[:2] == ["blocks.0.0", "blocks.1.0"] and len(timm_efficientnet) == 16
