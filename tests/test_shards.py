"""The streaming passes by image shards (the driver side of the Ray engine, run here in process):
exact merges in any order, byte-identical files, and a killed driver resuming without redoing shards."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurcore.activations import TopImages, TopValues, stream_unit_masks
from neurcore.activations import _shards as shards
from neurcore.distributed import InProcessEngine, open_engine
from neurcore.engine import BitMasksBuilder
from neurcore.errors import InputError
from neurcore.probe import SyntheticWorld

torch = pytest.importorskip("torch")

from test_stream import _files, _Killed, _tiny_model, fail_after


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 30), sizes=st.lists(st.integers(0, 25), min_size=1, max_size=6),
       order=st.randoms(use_true_random=False), seed=st.integers(0, 2**31 - 1))
def test_top_values_merged_in_any_order_keep_the_exact_k_largest(k, sizes, order, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.integers(-3, 3, (m, 4, 2)).astype(np.float32) for m in sizes]  # ties on purpose
    per_part = []
    for p in parts:
        tv = TopValues(4, k)
        tv.update(p)
        per_part.append(tv.values)
    order.shuffle(per_part)
    merged = TopValues(4, k, per_part[0])
    for v in per_part[1:]:
        merged.merge(v)
    allv = np.concatenate([np.moveaxis(p, 1, 0).reshape(4, -1) for p in parts], axis=1)
    assert np.array_equal(merged.descending(), -np.sort(-allv, axis=1)[:, :k])


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 5), cuts=st.lists(st.integers(1, 9), min_size=1, max_size=5),
       order=st.randoms(use_true_random=False), seed=st.integers(0, 2**31 - 1))
def test_top_images_merged_in_any_order_equal_one_pass(k, cuts, order, seed):
    rng = np.random.default_rng(seed)
    n = sum(cuts)
    acts = rng.integers(0, 4, (n, 3, 2, 2)).astype(np.float32)  # many tied peaks: the index breaks them
    want = TopImages.from_acts(acts, k)
    starts = np.cumsum([0, *cuts])
    tops = []
    for s, e in zip(starts[:-1], starts[1:]):
        t = TopImages.empty(3, k, (2, 2))
        t.update(acts[s:e], int(s))
        tops.append(t)
    order.shuffle(tops)
    got = tops[0]
    for t in tops[1:]:
        got.merge(t)
    for field in ("index", "peak", "maps", "unit_max"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), cuts=st.lists(st.integers(0, 6), min_size=1, max_size=4),
       side=st.sampled_from([1, 7, 8, 13]), density=st.sampled_from([0.0, 0.1, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_builder_records_extend_equal_appending_the_masks(tmp_path_factory, n, cuts, side, density, seed):
    """Records of shards (empty masks, all-ones masks, sizes not multiples of 64, empty shards) extend a
    spilling builder into the same bytes as appending the whole masks."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, sum(cuts), side, side)) < density
    whole = BitMasksBuilder(n, (side, side), layout="sparse")
    whole.append(masks)
    want = whole.finish()
    path = str(tmp_path_factory.mktemp("b") / "m")
    built = BitMasksBuilder(n, (side, side), layout="sparse", path=path)
    for s, e in zip(np.cumsum([0, *cuts])[:-1], np.cumsum(cuts)):
        part = BitMasksBuilder(n, (side, side), layout="sparse")
        part.append(masks[:, s:e])
        built.extend(*part.records())
    got = built.finish()
    assert np.array_equal(got.to_dense(), want.to_dense())
    for k, a in want.layout_arrays().items():
        assert np.array_equal(np.asarray(got.layout_arrays()[k]), a), k


def test_extend_names_what_is_wrong():
    b = BitMasksBuilder(2, (8, 8), layout="sparse")
    with pytest.raises(InputError, match="sorted by row"):
        b.extend(2, np.array([1, 0]), np.array([0, 0]), np.zeros((2, 1), np.uint64))
    with pytest.raises(InputError, match="images in"):
        b.extend(1, np.array([0]), np.array([1]), np.zeros((1, 1), np.uint64))
    with pytest.raises(InputError, match="uint64"):
        b.extend(1, np.array([0]), np.array([0]), np.zeros((1, 1), np.int64))


_KW = {"quantile": 0.05, "mask_shape": (24, 24), "block_units": 2, "top_images": 3, "batch_size": 4,
       "checkpoint_images": 8, "progress": False}


@pytest.mark.parametrize(("cache", "shares_disk"), [(False, True), (True, True), (True, False)])
def test_shards_in_reverse_order_give_the_files_of_one_pass(tmp_path, cache, shares_disk):
    """With a cache, workers that share the driver's disk write and read it in place; others send the
    activations to the driver, and pass 2 runs the model again."""
    spec, world = _tiny_model(), SyntheticWorld(n_images=37, size=24, seed=3)
    stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "one"), cache=cache, **_KW)
    engine = InProcessEngine(reverse=True, shares_disk=shares_disk)
    out = stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "shards"), cache=cache, engine=engine,
                            **_KW)
    assert _files(tmp_path / "one") == _files(tmp_path / "shards")
    # 37 images in shards of 8: 5 shards a pass, the last one short
    assert [c["kind"] for c in engine.log] == ["pass 1"] * 5 + ["pass 2"] * 5
    assert (out["3"].acts is not None) == cache
    sent = sum(c["bytes_out"] for c in engine.log if c["kind"] == "pass 1")
    maps_bytes = 37 * sum(4 * int(np.prod(out[n].top.maps.shape[2:])) * len(out[n].thresholds) for n in out)
    assert (sent > maps_bytes) == (cache and not shares_disk)  # the activations travelled only then
    assert not os.path.exists(tmp_path / "shards" / "pass2-shards")
    assert not [f for f in os.listdir(tmp_path / "shards") if f.startswith("shards-pass1")]


class _DyingEngine(InProcessEngine):
    """Dies (as a killed driver would) after ``after`` calls of pass ``kind``."""

    def __init__(self, kind: str, after: int):
        super().__init__(reverse=True)
        self.kind, self.after = kind, after

    def map_model(self, fn, calls, kind):
        for i, item in enumerate(super().map_model(fn, calls, kind)):
            if kind == self.kind and i == self.after:
                raise _Killed
            yield item


@pytest.mark.parametrize("kind", ["pass 1", "pass 2"])
def test_a_killed_sharded_driver_resumes_byte_identical_without_redoing_shards(tmp_path, kind):
    """Shards come back last first, so in pass 2 the ones that finished are kept on disk, out of order,
    until the driver dies; the re-run runs only the shards it has not got."""
    spec, world = _tiny_model(), SyntheticWorld(n_images=37, size=24, seed=3)
    stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "one"), **_KW)
    root = tmp_path / "killed"
    with pytest.raises(_Killed):
        stream_unit_masks(spec, ["1", "3"], world, str(root), engine=_DyingEngine(kind, 3), **_KW)
    if kind == "pass 1":
        with open(root / "shards-pass1.json") as f:
            assert len(json.load(f)["merged"]) == 3
    else:
        assert len(os.listdir(root / "pass2-shards")) == 3  # the last three shards, waiting for the first
    again = InProcessEngine()
    stream_unit_masks(spec, ["1", "3"], world, str(root), engine=again, **_KW)
    assert _files(tmp_path / "one") == _files(root)
    redone = [c for c in again.log if c["kind"] == kind]
    assert len(redone) == 2  # of 5
    if kind == "pass 2":
        assert not [c for c in again.log if c["kind"] == "pass 1"]


def test_a_local_pass2_checkpoint_resumes_on_an_engine(tmp_path, monkeypatch):
    """pass2.json is the same for both engines: a local run killed in pass 2 finishes on shards."""
    import neurcore.activations._stream as stream

    spec, world = _tiny_model(), SyntheticWorld(n_images=37, size=24, seed=3)
    stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "one"), **_KW)
    real = fail_after(monkeypatch, stream, "binarize", 10)
    with pytest.raises(_Killed):
        stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "mixed"), **_KW)
    monkeypatch.setattr(stream, "binarize", real)
    with open(tmp_path / "mixed" / "pass2.json") as f:
        done = json.load(f)["done"]
    assert 0 < done < 37
    engine = InProcessEngine()
    stream_unit_masks(spec, ["1", "3"], world, str(tmp_path / "mixed"), engine=engine, **_KW)
    assert _files(tmp_path / "one") == _files(tmp_path / "mixed")
    assert [c["key"].split(",")[0] for c in engine.log] == [f"start={s}" for s in range(done, 37, 8)]


def test_dissect_on_an_engine_equals_local_for_every_method(tmp_path):
    from neurcore import dissect

    kw = {"layers": ["conv4"], "probe_images": 120, "report": False, "progress": False, "units_per_part": 16,
          "checkpoint_images": 40}
    for method in ("dissect", "beam", "clustered"):
        dissect(method=method, out_dir=str(tmp_path / f"local-{method}"), **kw)
        dissect(method=method, out_dir=str(tmp_path / f"shards-{method}"), engine=InProcessEngine(reverse=True),
                **kw)
        with open(tmp_path / f"local-{method}" / "results.jsonl", "rb") as a, \
                open(tmp_path / f"shards-{method}" / "results.jsonl", "rb") as b:
            assert a.read() == b.read(), method
        with open(tmp_path / f"shards-{method}" / "engine.json") as f:
            log = json.load(f)["calls"]
        assert {c["kind"] for c in log} == {"pass 1", "pass 2", "search"}


def test_engine_options_are_checked():
    with pytest.raises(InputError, match="--engine must be one of local, ray"):
        open_engine("spark")
    with pytest.raises(InputError, match="need --engine ray"):
        open_engine("local", workers=2)
    assert open_engine("local") is None


def test_shard_ranges_cover_the_probe_in_whole_batches():
    assert shards.shard_ranges(0, 37, 8) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 37)]
    assert shards.shard_size(1000, 64) == 1024 and shards.shard_size(64, 64) == 64
    # at least four shards a worker where the probe is small: 22,210 images on 2 workers keep 1,024
    assert shards.shard_size(1024, 64, 22210, 2) == 1024
    assert shards.shard_size(1024, 64, 444, 2) == 64 and shards.shard_size(1024, 64, 2221, 2) == 320
    assert shards.shard_size(8, 4, 37, 1) == 8 and shards.shard_size(1024, 64, 10, 8) == 64


def test_makespan_replays_the_measured_calls():
    from neurcore.distributed import simulate_makespan, split_shards

    calls = [{"kind": "pass 1", "seconds": s, "driver_seconds": 0.5} for s in (4, 3, 2, 1)] + \
            [{"kind": "search", "seconds": 1.0, "bytes_in": 100, "bytes_out": 0}] * 3
    # one worker: everything in a row; the driver's last merge follows the last shard
    assert simulate_makespan(calls, workers=1) == {"pass 1": 10.5, "search": 3.0}
    # two workers: 4 | 3, then 2 after 3 (ends 5), 1 after 4 (ends 5); merges at 3.5, 4.5, 5.5, 6
    two = simulate_makespan(calls, workers=2, task_overhead=0.0, bandwidth=100.0)
    assert two == {"pass 1": 6.0, "search": 4.0}  # searches take 1 s + 1 s of transfer each
    assert simulate_makespan(calls, workers=8)["pass 1"] == 4.5
    halves = split_shards([{"kind": "pass 2", "seconds": 2.0, "driver_seconds": 1.0, "bytes_out": 8}], 2)
    assert halves == [{"kind": "pass 2", "seconds": 1.0, "driver_seconds": 0.5, "bytes_in": 0, "bytes_out": 4}] * 2
    finer = split_shards(calls, 4)
    assert len(finer) == 16 + 3 and sum(c["seconds"] for c in finer if c["kind"] == "pass 1") == 10
    # the first pieces end at 0.25 s; from there the driver merges 16 pieces of 0.5 s: driver-bound
    assert simulate_makespan(finer, workers=16)["pass 1"] == pytest.approx(0.25 + 16 * 0.5)
    with pytest.raises(ValueError):
        simulate_makespan(calls, workers=0)
