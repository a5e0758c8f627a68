"""The two streaming passes split into image shards that workers run anywhere, merged by the driver.

A shard is a run of probe images (a multiple of the batch size, so every batch is the batch a
single process would run). Pass 1 of a shard (:func:`pass1_shard`) returns each unit's top values
over the shard and its top images; the driver merges them, exactly, in whatever order the shards
finish (the largest ``k`` values of a union are the largest ``k`` of the parts' largest ``k``; the
top images are ordered by a total order), so the thresholds equal one pass's bit for bit. Pass 2 of
a shard (:func:`pass2_shard`) returns the packed unit-mask records of each block of units over the
shard; the driver appends them to the blocks' spilling builders in image order, so the blocks are
byte-identical to one pass's.

Where the work runs is the engine's business (:class:`neurcore.distributed.ShardEngine`: a Ray
cluster, :class:`neurcore.distributed.RayEngine`, or this process). The driver keeps its state where a
re-run finds it: pass 1's merged state and the shards merged into it (``shards-pass1.json``), pass
2's builders at the last shard appended in order (``pass2.json``, as one process writes it) and the
shards that finished out of order (``pass2-shards/``), so a killed driver resumes without redoing
the shards it has.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from .._io import atomic_path, create_npy, read_json
from ..engine import BitMasksBuilder
from ._extract import layer_batches, layer_shapes
from ._stream import (
    TopValues,
    _cache_file,
    _clear_checkpoints,
    _finish_pass1,
    _finish_pass2,
    _kept,
    _load_finished_pass1,
    _load_pass1,
    _Pass,
    _pass2_blocks,
    _pass2_builders,
    _save_pass1,
    _save_pass2,
    _write_rows,
    binarize_into,
    cache_batches,
    take_in,
)
from ._top import TopImages

if TYPE_CHECKING:
    from ..distributed import ShardEngine
    from ..models import ModelSpec
    from ..probe import Probe

__all__ = ["pass1_shard", "pass2_shard", "shard_ranges", "shard_size", "sharded_pass1", "sharded_pass2"]


def shard_ranges(start: int, n_images: int, shard_images: int) -> list[tuple[int, int]]:
    """Images ``start .. n_images - 1`` in shards of ``shard_images``: [(first, stop), ...]."""
    return [(s, min(n_images, s + shard_images)) for s in range(start, n_images, shard_images)]


def pass1_shard(spec: ModelSpec, probe: Probe, *, layers: list[str], start: int, stop: int,
                quantile: float, top_images: int, batch_size: int, keep_maps: bool = False,
                cache_files: dict[str, str] | None = None, device: str | None = None) -> dict[str, dict]:
    """Pass 1 over images ``start .. stop - 1`` -> {layer: {"values": float32 [units, <=k] (the shard's
    share of the top values the layer's thresholds need over the whole probe), "top":
    :class:`TopImages` of the shard, "maps": float32 [stop - start, units, h, w] with ``keep_maps``
    (for the activation cache), else None}}. ``cache_files``: {layer: its activation cache, already
    created}, where the shard writes its rows itself."""
    values: dict[str, TopValues] = {}
    tops: dict[str, TopImages] = {}
    maps_out: dict[str, list] = {name: [] for name in layers}
    for s, _e, maps_by_layer in layer_batches(spec, layers, probe, start, batch_size, stop=stop,
                                              device=device):
        for name, maps in maps_by_layer.items():
            take_in(name, maps, s, values, tops, n_images=probe.n_images, quantile=quantile,
                    top_images=top_images, cache_file=cache_files[name] if cache_files else None,
                    create=False)
            if keep_maps:
                maps_out[name].append(maps)
    return {name: {"values": values[name].values, "top": tops[name],
                   "maps": np.concatenate(maps_out[name]) if keep_maps else None} for name in layers}


def pass2_shard(spec: ModelSpec, probe: Probe, *, layers: list[str], start: int, stop: int,
                thresholds: dict[str, np.ndarray], mask_shape: tuple[int, int], block_units: int,
                batch_size: int, cache_files: dict[str, str] | None = None,
                device: str | None = None) -> dict[str, list[tuple]]:
    """Pass 2 over images ``start .. stop - 1`` -> {layer: [records of each block of ``block_units``
    units]}, each as :meth:`BitMasksBuilder.records` of the block's masks over these images. The maps
    come from a forward pass, or from ``cache_files`` ({layer: its activation cache}) when given."""
    out = {}
    builders = {name: [BitMasksBuilder(min(block_units, len(thr) - u), mask_shape, layout="sparse")
                       for u in range(0, len(thr), block_units)] for name, thr in thresholds.items()}
    if cache_files:
        batches = cache_batches({name: cache_files[name] for name in layers}, start, stop, batch_size)
    else:
        batches = layer_batches(spec, layers, probe, start, batch_size, stop=stop, device=device)
    for _s, _e, maps_by_layer in batches:
        for name, maps in maps_by_layer.items():
            binarize_into(builders[name], maps, thresholds[name], mask_shape, block_units)
    for name in layers:
        out[name] = [b.records() for b in builders[name]]
    return out


def shard_size(checkpoint_images: int, batch_size: int, n_images: int | None = None, workers: int = 1) -> int:
    """Images per shard: ``checkpoint_images``, or fewer where the probe would otherwise give fewer than
    four shards a worker (so that the last round leaves few workers idle), in whole batches."""
    size = checkpoint_images
    if n_images is not None:
        size = min(size, -(-n_images // (4 * workers)))
    return max(1, -(-size // batch_size)) * batch_size


def sharded_pass1(run: _Pass, engine: ShardEngine, quantile: float, top_images: int) -> tuple[dict, dict]:
    """Pass 1 of every layer by shards on ``engine``: thresholds and top images, as :func:`_pass1` gives."""
    if (read_json(os.path.join(run.root, "pass1.json")) or {}).get("finished"):
        return _load_finished_pass1(run)
    state_file = os.path.join(run.root, "shards-pass1.json")
    state = read_json(state_file) or {}
    if state.get("cache") != run.cache:
        state = {}  # none yet, or the shards of a run that kept the cache otherwise
    size = state.get("shard_images") or _shard_size(run, engine)
    merged = set(state.get("merged", []))
    values, tops = _load_pass1(run, state) if merged else ({}, {})
    cache_files = _cache_files(run, engine)
    if cache_files and not merged:  # workers write their rows into files made here, first
        for name, (c, h, w) in layer_shapes(run.spec, run.layers, run.probe).items():
            create_npy(cache_files[name], (run.probe.n_images, c, h, w), np.float32)
    calls = [{"layers": run.layers, "start": s, "stop": e, "quantile": quantile, "top_images": top_images,
              "batch_size": run.batch_size, "keep_maps": run.cache and not cache_files,
              "cache_files": cache_files}
             for s, e in shard_ranges(0, run.probe.n_images, size) if s not in merged]
    fresh = not merged  # the cache files are created with the first shard to arrive, whichever it is
    bar = run.bar("pass 1: thresholds", sum(min(size, run.probe.n_images - s) for s in merged))
    for call, result in engine.map_model(pass1_shard, calls, "pass 1"):
        for name, r in result.items():
            if name not in values:
                values[name] = TopValues(r["values"].shape[0], _k(run, r, quantile), r["values"])
                tops[name] = r["top"]
            else:
                values[name].merge(r["values"])
                tops[name].merge(r["top"])
            if r["maps"] is not None:  # activations sent back: the driver writes the cache
                _write_rows(_cache_file(run.dirs[name]), r["maps"], call["start"], run.probe.n_images,
                            create=fresh)
        fresh = False
        merged.add(call["start"])
        _save_pass1(run, state_file, f"shards-pass1-{len(merged):06d}.npz", values, tops, shard_images=size,
                    merged=sorted(merged))
        bar.update(call["stop"] - call["start"])
    bar.close()
    thr_tops = _finish_pass1(run, values, tops, quantile)
    _clear_checkpoints(run.root, "shards-pass1-")
    os.remove(state_file)
    return thr_tops


def _shard_size(run: _Pass, engine: ShardEngine) -> int:
    return shard_size(run.checkpoint_images, run.batch_size, run.probe.n_images,
                      getattr(engine, "workers", 1))


def _cache_files(run: _Pass, engine: ShardEngine) -> dict[str, str] | None:
    """{layer: its activation cache (absolute path)} when the run keeps a cache that the workers can
    read and write themselves; None when there is no cache or the activations must travel."""
    if not (run.cache and getattr(engine, "shares_disk", False)):
        return None
    return {name: os.path.abspath(_cache_file(d)) for name, d in run.dirs.items()}


def _k(run: _Pass, result: dict, quantile: float) -> int:
    """How many top values a layer's threshold needs, from one of its shard results."""
    return _kept(run.probe.n_images * int(np.prod(result["top"].maps.shape[2:])), quantile)[2]


def sharded_pass2(run: _Pass, engine: ShardEngine, thr: dict, mask_shape: tuple[int, int],
                  block_units: int) -> dict[str, list[str]]:
    """Pass 2 of every layer by shards on ``engine``: the unit-mask blocks :func:`_pass2` writes."""
    blocks, state = _pass2_blocks(run, thr, block_units)
    if state.get("finished"):
        return blocks
    n, done = run.probe.n_images, int(state.get("done", 0))
    builders = _pass2_builders(run, blocks, state, thr, mask_shape, block_units)
    size = _shard_size(run, engine)
    pending_dir = os.path.join(run.root, "pass2-shards")
    os.makedirs(pending_dir, exist_ok=True)
    shards = shard_ranges(done, n, size)
    pending = {s: e for s, e in shards if os.path.isfile(_pending_file(pending_dir, s, e))}
    for f in os.listdir(pending_dir):  # shards of another split, or already appended
        if f.endswith(".npz") and _pending_start(f) not in pending:
            os.remove(os.path.join(pending_dir, f))
    cache_files = _cache_files(run, engine)
    calls = [{"layers": run.layers, "start": s, "stop": e, "thresholds": thr, "mask_shape": mask_shape,
              "block_units": block_units, "batch_size": run.batch_size, "cache_files": cache_files}
             for s, e in shards if s not in pending]
    bar = run.bar("pass 2: unit masks", done)

    def append_ready(done: int) -> int:
        """Append the shards that continue the blocks in image order; checkpoint after each."""
        while done in pending:
            stop = pending.pop(done)
            path = _pending_file(pending_dir, done, stop)
            records = _load_records(path)
            _extend(builders, blocks, records)
            _save_pass2(run, stop, builders)
            os.remove(path)
            bar.update(stop - done)
            done = stop
        return done

    done = append_ready(done)
    for call, result in engine.map_model(pass2_shard, calls, "pass 2"):
        s, e = call["start"], call["stop"]
        if s == done:  # next in order: straight into the blocks
            _extend(builders, blocks, result)
            _save_pass2(run, e, builders)
            bar.update(e - s)
            done = append_ready(e)
        else:  # kept on disk until the shards before it are in
            _save_records(_pending_file(pending_dir, s, e), result)
            pending[s] = e
    bar.close()
    _finish_pass2(run, builders)
    os.rmdir(pending_dir)
    return blocks


def _extend(builders: dict[str, BitMasksBuilder], blocks: dict[str, list[str]], result: dict) -> None:
    for name, records in result.items():
        for path, rec in zip(blocks[name], records):
            if path in builders:
                builders[path].extend(*rec)


def _pending_file(directory: str, start: int, stop: int) -> str:
    return os.path.join(directory, f"{start:010d}-{stop:010d}.npz")


def _pending_start(file: str) -> int:
    return int(file.split("-")[0])


def _save_records(path: str, result: dict) -> None:
    arrays = {}
    for name, records in result.items():
        for k, (n_images, rows, images, words) in enumerate(records):
            arrays.update({f"{name}|{k}|n": np.int64(n_images), f"{name}|{k}|rows": rows,
                           f"{name}|{k}|images": images, f"{name}|{k}|words": words})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_records(path: str) -> dict:
    out: dict[str, dict[int, tuple]] = {}
    with np.load(path) as z:
        for key in z.files:
            name, k, field = key.rsplit("|", 2)
            if field == "n":
                k = int(k)
                out.setdefault(name, {})[k] = (int(z[key]), z[f"{name}|{k}|rows"], z[f"{name}|{k}|images"],
                                               z[f"{name}|{k}|words"])
    return {name: [blocks[k] for k in sorted(blocks)] for name, blocks in out.items()}
