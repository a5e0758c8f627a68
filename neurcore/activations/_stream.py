"""Unit masks of whole networks in bounded memory: two passes over the probe, no float cache needed.

Pass 1 runs the probe through the model and keeps, per unit, the exact top values it needs for its
top-``quantile`` threshold (``quantile x images x h x w`` values, :class:`TopValues`) and its top
images (:class:`TopImages`); pass 2 runs the probe again and binarizes every map straight into
image-sparse ``BitMasks`` spilled to disk, one per block of units. Running the forward pass twice
costs far less than storing the activations (about 200 GB for ResNet-50's ``layer1`` on Broden);
with ``cache=True`` pass 1 also writes them (``layers/<layer>/acts.npy``, the cache :func:`extract`
writes) and pass 2 reads them back instead.

These are the passes as one process runs them, batch after batch; ``_shards`` runs them by image
shards on an engine, and :func:`stream_unit_masks` (``_unit_masks``) picks. Thresholds equal
:func:`thresholds` on the whole cache (numpy's linear quantile, bit for bit) and the
masks equal :func:`unit_masks`. Both passes checkpoint every ``checkpoint_images`` images (state
files replaced atomically), so a killed run resumes where it stopped with byte-identical results.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .._io import atomic_path, create_npy, read_json, write_json
from ..engine import BitMasks, BitMasksBuilder
from ..errors import InputError
from ._binarize import binarize
from ._extract import layer_batches
from ._top import TopImages

__all__ = ["StreamedLayer", "TopValues", "linear_quantile", "unit_mask_blocks"]


def _kept(n_values: int, quantile: float) -> tuple[float, int, int]:
    """numpy's linear (1 - quantile) quantile of ``n_values`` values: its virtual index, the lower
    ascending index and how many of the largest values reach down to it."""
    q = 1 - quantile
    virtual = n_values * q + (1 + q * (1 - 1 - 1)) - 1  # numpy's _compute_virtual_index, alpha = beta = 1
    lower = min(max(math.floor(virtual), 0), n_values - 1)
    return virtual, lower, n_values - lower


def linear_quantile(top: np.ndarray, n_values: int, quantile: float) -> np.ndarray:
    """Per row, ``np.quantile(values, 1 - quantile)`` (linear) of ``n_values`` values of which ``top``
    float32 [rows, >= kept] holds the largest, in descending order -> float32 [rows], bit for bit."""
    virtual, lower, kept = _kept(n_values, quantile)
    if top.shape[1] < kept:
        raise InputError(f"linear_quantile: need the {kept} largest values, got {top.shape[1]}")
    if virtual >= n_values - 1:
        return top[:, 0].astype(np.float32)
    a = top[:, n_values - 1 - lower].astype(np.float32)
    b = top[:, n_values - 2 - lower].astype(np.float32)
    t = float(virtual - lower)
    diff = b - a
    out = a + diff * t  # numpy's _lerp, with the weight as a Python float as np.quantile passes it
    if t >= 0.5:
        out = b - diff * (1 - t)
    return out.astype(np.float32)


class TopValues:
    """The ``k`` largest values of each of ``units`` rows seen so far, exactly: ``values`` float32
    [units, <=k], each row's minimum first once the row is full (a partition, not a sort)."""

    def __init__(self, units: int, k: int, values: np.ndarray | None = None):
        self.k = int(k)
        self.values = np.empty((units, 0), np.float32) if values is None else np.asarray(values, np.float32)

    def update(self, maps: np.ndarray) -> None:
        """Take in a batch of maps, float32 [b, units, h, w] (or [b, units, m])."""
        if self.values.shape[1] < self.k:  # filling up: keep everything, then the k largest
            flat = np.moveaxis(maps, 1, 0).reshape(maps.shape[1], -1)
            merged = np.concatenate([self.values, flat], axis=1)
            if merged.shape[1] >= self.k:  # full: the k largest, each row's minimum first
                merged = np.partition(merged, merged.shape[1] - self.k, axis=1)[:, -self.k:]
            self.values = np.ascontiguousarray(merged)
            return
        floor = self.values[:, 0]
        above = maps > floor.reshape(1, -1, *([1] * (maps.ndim - 2)))
        # only rows with a value above their k-th largest change; each merges its few candidates
        for u in np.flatnonzero(above.any(axis=tuple(i for i in range(maps.ndim) if i != 1))):
            merged = np.concatenate([self.values[u], maps[:, u][above[:, u]]])
            self.values[u] = np.partition(merged, len(merged) - self.k)[-self.k:]

    def merge(self, values: np.ndarray) -> None:
        """Take in another ``values`` array of the same units (the top values of another shard of the
        probe, float32 [units, <=k]): the multiset kept is what one pass over both would keep."""
        merged = np.concatenate([self.values, np.asarray(values, np.float32)], axis=1)
        if merged.shape[1] >= self.k:
            merged = np.partition(merged, merged.shape[1] - self.k, axis=1)[:, -self.k:]
        self.values = np.ascontiguousarray(merged)

    def descending(self) -> np.ndarray:
        """The values kept, largest first: float32 [units, <=k]."""
        return -np.sort(-self.values, axis=1)


@dataclass
class StreamedLayer:
    """A layer after both passes: thresholds float32 [units], its units' top images, its unit-mask
    blocks (directories of saved ``BitMasks``, ``block_units`` units each, in unit order) and, with
    ``cache=True``, its activation cache (read-only memmap [n_images, units, h, w])."""

    thresholds: np.ndarray
    top: TopImages
    blocks: list[str]
    acts: np.ndarray | None = None


def unit_mask_blocks(layer: StreamedLayer | list[str], units: range) -> BitMasks:
    """The unit masks of ``units`` (a range of the layer's units), read from its blocks on disk (the
    layer's, or a list of block directories)."""
    picked, first = [], 0
    for d in (layer if isinstance(layer, list) else layer.blocks):
        if first >= units.stop:
            break
        m = BitMasks.load(d)
        lo, hi = max(units.start, first), min(units.stop, first + m.n)
        if lo < hi:
            picked.append(m[lo - first : hi - first])
        first += m.n
    if not picked:
        raise InputError(f"unit_mask_blocks: units {units.start}..{units.stop - 1} are not in the layer")
    return picked[0] if len(picked) == 1 else BitMasks.concat(picked)


@dataclass
class _Pass:
    spec: object
    layers: list[str]
    probe: object
    root: str
    dirs: dict[str, str]
    batch_size: int
    cache: bool
    checkpoint_images: int
    progress: bool

    def batches(self, start: int, from_cache: bool) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Batches of maps from image ``start``: a forward pass, or the activation cache."""
        if not from_cache:
            yield from layer_batches(self.spec, self.layers, self.probe, start, self.batch_size)
            return
        yield from cache_batches({name: _cache_file(d) for name, d in self.dirs.items()}, start,
                                 self.probe.n_images, self.batch_size)

    def bar(self, desc: str, start: int):
        """A progress bar over the probe's images."""
        from tqdm import tqdm

        return tqdm(total=self.probe.n_images, initial=start, desc=desc, unit="img", leave=False,
                    disable=not self.progress)


def _cache_file(layer_dir: str) -> str:
    return os.path.join(layer_dir, "acts.npy")


def _pass1(run: _Pass, quantile: float, top_images: int) -> tuple[dict, dict]:
    """Pass 1: thresholds and top images of every layer (read back when a previous run finished it)."""
    state_file = os.path.join(run.root, "pass1.json")
    state = read_json(state_file) or {}
    if state.get("finished"):
        return _load_finished_pass1(run)
    start = int(state.get("done", 0))
    values, tops = _load_pass1(run, state) if start else ({}, {})
    n, last = run.probe.n_images, start
    bar = run.bar("pass 1: thresholds", start)
    for s, e, maps_by_layer in run.batches(start, from_cache=False):
        for name, maps in maps_by_layer.items():
            _take_in(run, name, maps, s, values, tops, quantile, top_images)
        bar.update(e - s)
        if e - last >= run.checkpoint_images and e < n:
            _save_pass1(run, state_file, f"pass1-{e:010d}.npz", values, tops, done=e)
            last = e
    bar.close()
    return _finish_pass1(run, values, tops, quantile)


def _finish_pass1(run: _Pass, values: dict, tops: dict, quantile: float) -> tuple[dict, dict]:
    """Every layer's thresholds from its top values, saved with its top images; pass 1 marked finished."""
    n, thr = run.probe.n_images, {}
    for name, d in run.dirs.items():
        hw = int(np.prod(tops[name].maps.shape[2:]))
        thr[name] = linear_quantile(values[name].descending(), n * hw, quantile)
        with atomic_path(os.path.join(d, "thresholds.npy")) as tmp:
            np.save(tmp, thr[name])
        tops[name].save(os.path.join(d, "top.npz"))
        if run.cache:
            write_json(os.path.join(d, "progress.json"), {"done": n, "shape": [n, *_cache_shape(d)]})
    write_json(os.path.join(run.root, "pass1.json"), {"finished": True, "cache": run.cache})
    _clear_checkpoints(run.root, "pass1-")
    return thr, tops


def _load_finished_pass1(run: _Pass) -> tuple[dict, dict]:
    return ({n: np.load(os.path.join(d, "thresholds.npy")) for n, d in run.dirs.items()},
            {n: TopImages.load(os.path.join(d, "top.npz")) for n, d in run.dirs.items()})


def _take_in(run: _Pass, name: str, maps: np.ndarray, s: int, values: dict, tops: dict, quantile: float,
             top_images: int) -> None:
    """One batch of one layer into its top values, top images and (with a cache) the cache file."""
    take_in(name, maps, s, values, tops, n_images=run.probe.n_images, quantile=quantile,
            top_images=top_images, cache_file=_cache_file(run.dirs[name]) if run.cache else None)


def take_in(name: str, maps: np.ndarray, s: int, values: dict, tops: dict, *, n_images: int, quantile: float,
            top_images: int, cache_file: str | None = None, create: bool | None = None) -> None:
    """A batch of layer ``name``'s maps float32 [b, units, h, w], images ``s..``, into ``values``
    ({layer: :class:`TopValues`}) and ``tops`` ({layer: :class:`TopImages`}), made on its first batch,
    and into ``cache_file`` when given (:func:`_write_rows`' ``create``)."""
    if name not in values:
        values[name] = new_top_values(n_images, maps, quantile)
        tops[name] = TopImages.empty(maps.shape[1], top_images, maps.shape[2:])
    values[name].update(maps)
    tops[name].update(maps, s)
    if cache_file:
        _write_rows(cache_file, maps, s, n_images, create=create)


def cache_batches(files: dict[str, str], start: int, stop: int,
                  batch_size: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Images ``start .. stop - 1`` of the activation caches ``files`` ({layer: path}) in batches, as
    :func:`layer_batches` gives them from the model."""
    for s in range(start, stop, batch_size):
        e = min(stop, s + batch_size)
        yield s, e, {name: _read_rows(path, s, e) for name, path in files.items()}


def _save_pass1(run: _Pass, state_file: str, file_name: str, values: dict, tops: dict, **pointer) -> None:
    """Pass 1's state (every layer's top values and top images) in one file, ``file_name``, then
    ``state_file`` pointing at it with ``pointer``; older state files of the same prefix removed."""
    arrays = {}
    for name in run.layers:
        t = tops[name]
        arrays.update({f"{name}|values": values[name].values, f"{name}|index": t.index,
                       f"{name}|peak": t.peak, f"{name}|maps": t.maps, f"{name}|unit_max": t.unit_max})
    if run.cache:
        for name in run.layers:
            _sync(_cache_file(run.dirs[name]))
    with atomic_path(os.path.join(run.root, file_name)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    write_json(state_file, {**pointer, "file": file_name, "cache": run.cache,
                            "kept": {name: values[name].k for name in run.layers}})
    _clear_checkpoints(run.root, file_name.rsplit("-", 1)[0] + "-", keep=file_name)


def _load_pass1(run: _Pass, state: dict) -> tuple[dict, dict]:
    with np.load(os.path.join(run.root, state["file"])) as z:
        values = {n: TopValues(0, state["kept"][n], z[f"{n}|values"]) for n in run.layers}
        tops = {n: TopImages(z[f"{n}|index"], z[f"{n}|peak"], z[f"{n}|maps"], z[f"{n}|unit_max"])
                for n in run.layers}
    return values, tops


def _pass2(run: _Pass, thr: dict, mask_shape: tuple[int, int], block_units: int) -> dict[str, list[str]]:
    """Pass 2: every layer's maps binarized into unit-mask blocks spilled to disk."""
    blocks, state = _pass2_blocks(run, thr, block_units)
    if state.get("finished"):
        return blocks
    n, start = run.probe.n_images, int(state.get("done", 0))
    builders = _pass2_builders(run, blocks, state, thr, mask_shape, block_units)
    last = start
    bar = run.bar("pass 2: unit masks", start)
    for s, e, maps_by_layer in run.batches(start, from_cache=run.cache):
        for name, maps in maps_by_layer.items():
            binarize_into([builders[p] for p in blocks[name]], maps, thr[name], mask_shape, block_units)
        bar.update(e - s)
        if (e - last >= run.checkpoint_images or e == n) and e > last:
            # the last checkpoint (e == n) lets a run killed while the blocks are finished redo only the rest
            _save_pass2(run, e, builders)
            last = e
    bar.close()
    _finish_pass2(run, builders)
    return blocks


def _pass2_blocks(run: _Pass, thr: dict, block_units: int) -> tuple[dict[str, list[str]], dict]:
    """Every layer's unit-mask block directories and pass 2's state (``pass2.json``)."""
    blocks = {name: [os.path.join(run.dirs[name], "unit_masks", f"units-{u:06d}")
                     for u in range(0, len(thr[name]), block_units)] for name in run.layers}
    return blocks, read_json(os.path.join(run.root, "pass2.json")) or {}


def _pass2_builders(run: _Pass, blocks: dict, state: dict, thr: dict, mask_shape: tuple[int, int],
                    block_units: int) -> dict[str, BitMasksBuilder]:
    """The spilling builder of every block not yet finished, resumed at pass 2's last checkpoint."""
    n, start = run.probe.n_images, int(state.get("done", 0))
    saved = state.get("builders", {})
    builders = {}
    for name in run.layers:
        for k, path in enumerate(blocks[name]):
            if start == n and not os.path.isdir(path + ".partial"):
                continue  # finished before the run was killed
            builders[path] = BitMasksBuilder(min(block_units, len(thr[name]) - k * block_units), mask_shape,
                                             layout="sparse", path=path,
                                             resume=saved[_key(run, path)] if start else None)
    return builders


def _save_pass2(run: _Pass, done: int, builders: dict[str, BitMasksBuilder]) -> None:
    write_json(os.path.join(run.root, "pass2.json"),
               {"done": done, "builders": {_key(run, p): bld.checkpoint() for p, bld in builders.items()}})


def _finish_pass2(run: _Pass, builders: dict[str, BitMasksBuilder]) -> None:
    for bld in builders.values():
        bld.finish()
    write_json(os.path.join(run.root, "pass2.json"), {"finished": True})


def binarize_into(builders: list[BitMasksBuilder], maps: np.ndarray, thresholds_: np.ndarray,
                  mask_shape: tuple[int, int], block_units: int) -> None:
    """A batch of a layer's maps float32 [b, units, h, w] binarized (:func:`binarize`) and appended to
    the builders of its unit blocks (``block_units`` units each, in unit order)."""
    for b, units, images, masks in binarize(maps, thresholds_, mask_shape):
        which = units // block_units
        for k, builder in enumerate(builders):
            sel = which == k
            builder.append_sparse(b, units[sel] - k * block_units, images[sel], masks[sel])


def new_top_values(n_images: int, maps: np.ndarray, quantile: float) -> TopValues:
    """An empty :class:`TopValues` for a layer whose batches look like ``maps`` [b, units, h, w], keeping
    the values its top-``quantile`` threshold over ``n_images`` images needs."""
    _, _, kept = _kept(n_images * int(np.prod(maps.shape[2:])), quantile)
    return TopValues(maps.shape[1], kept)


def _key(run: _Pass, path: str) -> str:
    return os.path.relpath(path, run.root)


def _clear_checkpoints(root: str, prefix: str, keep: str | None = None) -> None:
    for f in os.listdir(root):
        if f.startswith(prefix) and f.endswith(".npz") and f != keep:
            os.remove(os.path.join(root, f))


# The activation cache is a plain .npy file written with positioned writes and read with positioned
# reads, never memory-mapped by the streaming passes, so it adds nothing to the process's memory.
def _write_rows(path: str, maps: np.ndarray, start: int, n: int, create: bool | None = None) -> None:
    """Write images ``start..`` of a layer's cache [n, units, h, w], creating the file when ``create``
    (by default, on first use or with the first images)."""
    if create or (create is None and (not os.path.exists(path) or start == 0)):
        create_npy(path, (n, *maps.shape[1:]), np.float32)
    with open(path, "r+b") as f:
        offset = _header_size(f) + start * maps[0].nbytes
        os.pwrite(f.fileno(), np.ascontiguousarray(maps, np.float32).tobytes(), offset)


def _read_rows(path: str, start: int, stop: int) -> np.ndarray:
    with open(path, "rb") as f:
        shape = _cache_header(f)
        row = int(np.prod(shape[1:]))
        f.seek(_header_size(f) + start * row * 4)
        return np.fromfile(f, np.float32, count=(stop - start) * row).reshape(stop - start, *shape[1:])


def _cache_header(f) -> tuple:
    f.seek(0)
    np.lib.format.read_magic(f)
    shape, _, _ = np.lib.format.read_array_header_1_0(f)
    return shape


def _header_size(f) -> int:
    _cache_header(f)
    return f.tell()


def _cache_shape(layer_dir: str) -> tuple:
    with open(_cache_file(layer_dir), "rb") as f:
        return _cache_header(f)[1:]


def _sync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
