"""Unit masks of whole networks, the entry point: the two streaming passes here, batch after batch
(:mod:`._stream`), or by image shards on an engine such as a Ray cluster (:mod:`._shards`), with the
same files either way."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .._io import read_json, safe_name
from ..errors import InputError
from ._extract import extract
from ._shards import sharded_pass1, sharded_pass2
from ._stream import StreamedLayer, _cache_file, _Pass, _pass1, _pass2

if TYPE_CHECKING:
    from ..distributed import ShardEngine
    from ..models import ModelSpec
    from ..probe import Probe

__all__ = ["stream_unit_masks"]


def stream_unit_masks(spec: ModelSpec, layers: list[str], probe: Probe, root: str, *, quantile: float,
                      mask_shape: tuple[int, int], block_units: int = 64, top_images: int = 5,
                      batch_size: int = 64, cache: bool = False, checkpoint_images: int = 1024,
                      progress: bool = True,
                      stage: Callable[[str], contextlib.AbstractContextManager] | None = None,
                      engine: ShardEngine | None = None) -> dict[str, StreamedLayer]:
    """Thresholds, top images and unit masks of ``layers`` over ``probe``, under ``root/<layer>/``.

    quantile: each unit's top quantile (NetDissect's 0.005); mask_shape: the concept masks' (h, w);
    block_units: units per saved mask block. Memory: the per-unit top values
    (``quantile x n_images x h x w`` floats a unit), a batch of maps, and ``top_images`` maps a unit.
    Resumes from the last checkpoint of either pass. ``stage(name)``, when given, is a context manager
    around each pass (a :class:`~neurcore.pipelines.Stages`-like timer). ``engine``: run both passes
    as image shards of ``checkpoint_images`` images on a :class:`~neurcore.distributed.ShardEngine`
    (a Ray cluster), with the same results; by default they run here, batch after batch.
    """
    if not 0 < quantile < 1:
        raise InputError(f"quantile must lie in (0, 1), got {quantile}")
    if probe.n_images == 0:
        raise InputError(f"{probe.name}: the probe has no images")
    dirs = {name: os.path.join(root, safe_name(name)) for name in layers}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    # a resumed run keeps the cache choice its pass 1 started with (its cache file is half written)
    started = (read_json(os.path.join(root, "pass1.json")) or {}).get("cache")
    run = _Pass(spec, layers, probe, root, dirs, batch_size, cache if started is None else started,
                checkpoint_images, progress)
    stage = stage or (lambda _name: contextlib.nullcontext())
    if engine is None:
        with stage("pass 1: activations, thresholds, top images"):
            thr, tops = _pass1(run, quantile, top_images)
        with stage("pass 2: activations, unit masks"):
            blocks = _pass2(run, thr, mask_shape, block_units)
    else:
        engine.open_model(spec, probe)
        try:
            with stage("pass 1: activations, thresholds, top images"):
                thr, tops = sharded_pass1(run, engine, quantile, top_images)
            with stage("pass 2: activations, unit masks"):
                blocks = sharded_pass2(run, engine, thr, mask_shape, block_units)
        finally:
            engine.close_model()
    acts = {n: np.load(_cache_file(d), mmap_mode="r") for n, d in dirs.items()} if run.cache else {}
    if cache and not run.cache:  # asked for now, not kept by the run that did the passes
        acts = extract(spec, layers, probe, root, batch_size=batch_size, progress=progress)
    return {name: StreamedLayer(thr[name], tops[name], blocks[name], acts.get(name)) for name in layers}
