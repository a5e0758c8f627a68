"""Streaming dissection: exact thresholds and masks in two passes, checkpoints, resume after SIGKILL,
--layer all and globs, and the disk check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurcore.activations import (
    TopImages,
    TopValues,
    extract,
    linear_quantile,
    stream_unit_masks,
    thresholds,
    unit_mask_blocks,
    unit_masks,
)
from neurcore.engine import BitMasks
from neurcore.errors import InputError
from neurcore.models import ModelSpec, block_outputs, expand_layers
from neurcore.probe import SyntheticWorld

torch = pytest.importorskip("torch")


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 3000), q=st.sampled_from([0.005, 0.01, 0.1, 0.25, 0.5, 0.9, 0.999, 1e-4]),
       ties=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_linear_quantile_equals_numpy_bit_for_bit(n, q, ties, seed):
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 5, (3, n)) if ties else rng.normal(size=(3, n))).astype(np.float32)
    top = -np.sort(-x, axis=1)
    got = linear_quantile(top, n, q)
    want = np.quantile(x, 1 - q, axis=1).astype(np.float32)
    assert got.tobytes() == want.tobytes()


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 40), sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6),
       seed=st.integers(0, 2**31 - 1))
def test_top_values_keeps_the_exact_k_largest(k, sizes, seed):
    rng = np.random.default_rng(seed)
    batches = [rng.integers(-3, 3, (m, 4, 2)).astype(np.float32) for m in sizes]  # [b, units, pixels]
    tv = TopValues(4, k)
    for b in batches:
        tv.update(b)
    allv = np.concatenate([np.moveaxis(b, 1, 0).reshape(4, -1) for b in batches], axis=1)
    want = -np.sort(-allv, axis=1)[:, :k]
    assert np.array_equal(tv.descending(), want)


def _tiny_model():
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2, padding=1),
                           nn.ReLU())
    return ModelSpec(module=module.eval(), name="tiny", input_size=24)


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(n_images=37, size=24, seed=3)


def _dense(masks: BitMasks) -> np.ndarray:
    return masks.to_dense()


@pytest.mark.parametrize("cache", [False, True])
def test_streamed_masks_equal_the_in_memory_path(tmp_path, world, cache):
    spec = _tiny_model()
    layers = ["1", "3"]
    acts = extract(spec, layers, world, str(tmp_path / "cache"), batch_size=8, progress=False)
    out = stream_unit_masks(spec, layers, world, str(tmp_path / "s"), quantile=0.05,
                            mask_shape=world.mask_shape, block_units=2, top_images=4, batch_size=8,
                            cache=cache, checkpoint_images=16, progress=False)
    for name in layers:
        thr = thresholds(acts[name], 0.05)
        assert out[name].thresholds.tobytes() == thr.tobytes()
        want = unit_masks(acts[name], thr, world.mask_shape)
        got = unit_mask_blocks(out[name], range(len(thr)))
        assert got.n == want.n and np.array_equal(_dense(got), _dense(want))
        assert len(out[name].blocks) == -(-len(thr) // 2)
        ref = TopImages.from_acts(acts[name], 4)
        assert np.array_equal(out[name].top.index, ref.index)
        assert np.array_equal(out[name].top.maps, ref.maps)
        if cache:
            assert np.array_equal(np.asarray(out[name].acts), np.asarray(acts[name]))
        else:
            assert out[name].acts is None and not os.path.exists(tmp_path / "s" / name / "acts.npy")


class _Killed(Exception):
    pass


def fail_after(monkeypatch, owner, attr: str, after: int):
    """Make ``owner.attr`` raise _Killed from its call ``after + 1`` on (a run killed there); returns the
    real function, to put back."""
    real, calls = getattr(owner, attr), {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, failing)
    return real


def _files(root) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith((".npy", ".npz", ".json")) and not f.startswith("pass"):
                with open(os.path.join(d, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("where", ["pass 1", "pass 2", "finish"])
def test_a_killed_stream_resumes_byte_identical(tmp_path, monkeypatch, where, cache):
    import neurcore.activations._stream as stream
    from neurcore.engine import BitMasksBuilder

    spec = _tiny_model()
    world = SyntheticWorld(n_images=37, size=24, seed=3)
    kw = {"quantile": 0.05, "mask_shape": (24, 24), "block_units": 2, "top_images": 3, "batch_size": 4,
          "checkpoint_images": 8, "progress": False, "cache": cache}
    stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "whole"), **kw)
    # pass 1 takes in a batch per layer (_take_in), pass 2 binarizes one (binarize): fail in the 6th
    # batch, after a checkpoint at 8 images; "finish" fails after 2 of the 6 mask blocks are written
    owner, attr, after = {"pass 1": (stream, "_take_in", 10), "pass 2": (stream, "binarize", 10),
                          "finish": (BitMasksBuilder, "finish", 2)}[where]
    real = fail_after(monkeypatch, owner, attr, after)
    with pytest.raises(_Killed):
        stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "resumed"), **kw)
    with open(tmp_path / "resumed" / ("pass1.json" if where == "pass 1" else "pass2.json")) as f:
        assert json.load(f)["done"] > 0  # a checkpoint was taken
    monkeypatch.setattr(owner, attr, real)
    stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "resumed"), **kw)
    assert _files(tmp_path / "whole") == _files(tmp_path / "resumed")


def test_layer_all_and_globs():
    import torchvision

    resnet = torchvision.models.resnet18()
    assert block_outputs(resnet) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert expand_layers(resnet, ["layer4.*", "layer4.0", "layer[12].1"]) == \
        ["layer4.0", "layer4.1", "layer1.1", "layer2.1"]
    assert expand_layers(resnet, ["**.downsample"]) == [f"layer{i}.0.downsample" for i in (2, 3, 4)]
    vit = torchvision.models.vit_b_16()
    assert block_outputs(vit) == [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert block_outputs(_tiny_model().module) == ["0", "2"]
    with pytest.raises(InputError, match=r"top-level modules are: 0 \(Linear\), 1 \(ReLU\)"):
        block_outputs(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    with pytest.raises(InputError, match="'lyer4.\\*' matches no layer.*layer4"):
        expand_layers(resnet, ["lyer4.*"])


def test_a_probe_too_big_for_the_disk_is_refused_before_any_work(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from neurcore.pipelines import dissect

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(InputError, match=r"needs about .* GiB on disk .*unit masks.*500 probe images"):
        dissect(_tiny_model(), ["all"], SyntheticWorld(n_images=500, size=24), out_dir=str(tmp_path / "d"),
                progress=False, report=False)
    assert not os.path.exists(tmp_path / "d" / "concepts")


def _wait_for(path, key, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with open(path) as f:
                if json.load(f).get(key):
                    return True
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    return False


def test_sigkill_at_several_points_then_rerun_is_byte_identical(tmp_path):
    """A whole-network run of the default model killed with SIGKILL in pass 1, in pass 2 and in the
    search, re-run each time, ends with the files of an uninterrupted run."""
    cmd = [sys.executable, "-m", "neurcore", "dissect", "--layer", "all", "--probe-images", "256",
           "--batch-size", "16", "--method", "beam", "--length", "2", "--checkpoint-images", "32", "--activation-cache", "off", "--quiet"]
    env = dict(os.environ)
    subprocess.run(cmd + ["--out", str(tmp_path / "whole")], check=True, env=env)
    out = tmp_path / "killed"
    layers = out / "layers"
    for marker, key in ((layers / "pass1.json", "done"), (layers / "pass2.json", "done"),
                        (layers / "conv2" / "results.jsonl", None)):
        proc = subprocess.Popen(cmd + ["--out", str(out)], env=env)
        if key is None:
            while not marker.exists() and proc.poll() is None:
                time.sleep(0.02)
        else:
            assert _wait_for(marker, key)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run(cmd + ["--out", str(out)], check=True, env=env)
    assert (out / "results.jsonl").read_bytes() == (tmp_path / "whole" / "results.jsonl").read_bytes()
    assert _files(out / "layers") == _files(tmp_path / "whole" / "layers")


def test_streamed_dissection_equals_the_in_memory_path_on_the_broden_scale_probe(tmp_path):
    """Beam search through the streaming pipeline (no activation cache) gives the results of the
    in-memory path (whole float cache -> thresholds -> unit_masks -> search) on a Broden-scale subset."""
    from neurcore.pipelines import dissect
    from neurcore.probe import open_probe
    from neurcore.rules import ConceptSet, search

    probe = open_probe("synthetic-broden", n_images=24)
    spec = _tiny_model()
    got = dissect(spec, ["3"], probe, method="beam", length=2, beam=3, out_dir=str(tmp_path / "s"),
                  cache=False, report=False, progress=False, batch_size=8, units_per_part=2)
    acts = extract(spec, ["3"], probe, str(tmp_path / "c"), batch_size=8, progress=False)["3"]
    units = unit_masks(acts, thresholds(acts, 0.005), probe.mask_shape)
    concepts = ConceptSet(probe.concept_masks(), probe.concept_names, probe.concept_categories)
    want = search(units, concepts, method="beam", length=2, beam=3, layer="3")
    assert [r.to_dict() for r in got] == [r.to_dict() for r in want]


def test_a_resumed_run_keeps_the_cache_choice_its_first_pass_made(tmp_path, monkeypatch):
    """Killed in pass 1 without a cache and resumed asking for one, the passes stay cache-free (the
    file would be half written) and the cache asked for is built afterwards, equal to extract's."""
    import neurcore.activations._stream as stream

    spec, world = _tiny_model(), SyntheticWorld(n_images=21, size=24, seed=5)
    kw = {"quantile": 0.05, "mask_shape": (24, 24), "block_units": 4, "top_images": 2, "batch_size": 4,
          "checkpoint_images": 8, "progress": False}
    whole = stream_unit_masks(spec, ["3"], world, str(tmp_path / "whole"), cache=False, **kw)
    real = fail_after(monkeypatch, stream, "_take_in", 3)
    with pytest.raises(_Killed):
        stream_unit_masks(spec, ["3"], world, str(tmp_path / "r"), cache=False, **kw)
    monkeypatch.setattr(stream, "_take_in", real)
    got = stream_unit_masks(spec, ["3"], world, str(tmp_path / "r"), cache=True, **kw)["3"]
    assert got.thresholds.tobytes() == whole["3"].thresholds.tobytes()
    want = extract(spec, ["3"], world, str(tmp_path / "c"), batch_size=4, progress=False)["3"]
    assert np.array_equal(np.asarray(got.acts), np.asarray(want))
