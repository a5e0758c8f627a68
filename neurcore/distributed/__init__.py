"""Whole-network runs beyond one process: the same shards and results on a Ray cluster.

- :class:`RayEngine`: a local Ray cluster (``ray.init(num_cpus=N)``) or an existing one by
  address; image shards of the two streaming passes on actors that hold the model, rule searches
  of (layer, unit block) as tasks, concept masks shared once through the object store.
- :class:`InProcessEngine`: the same shards run in this process, one after another.
- :func:`open_engine`: the engine a ``--engine`` option names (None for ``local``, today's
  single-process path); :func:`engine_for`, the same as a context that shuts it down after.
- :func:`simulate_makespan`, :func:`split_shards`: a scaling plan from a run's measured shards
  (``engine.json``).

Results do not depend on the engine, the number of workers or failures: ``results.jsonl`` is
byte-identical to a local run's. Ray is an optional extra (``pip install 'neurcore[distributed]'``);
nothing imports it unless ``--engine ray`` is asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import InputError
from ._engines import InProcessEngine, ShardEngine
from ._plan import simulate_makespan, split_shards

__all__ = ["ENGINES", "InProcessEngine", "RayEngine", "ShardEngine", "engine_for", "open_engine",
           "simulate_makespan", "split_shards"]

ENGINES = ("local", "ray")


def open_engine(engine: str = "local", address: str | None = None,
                workers: int | None = None) -> ShardEngine | None:
    """The engine named by ``engine`` ("local": None, the single-process path; "ray": a
    :class:`RayEngine` joining ``address`` or starting a local cluster of ``workers`` CPUs)."""
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local":
        if address is not None or workers is not None:
            raise InputError("--ray-address and --workers need --engine ray")
        return None
    from ._ray import RayEngine

    return RayEngine(address, workers)


@contextlib.contextmanager
def engine_for(engine: str | ShardEngine, address: str | None = None,
               workers: int | None = None) -> Iterator[ShardEngine | None]:
    """The engine to run with: the one ``engine`` names (:func:`open_engine`), shut down on leaving, or
    ``engine`` itself when it is a :class:`ShardEngine` (whoever made it shuts it down)."""
    if not isinstance(engine, str):
        yield engine
        return
    opened = open_engine(engine, address, workers)
    try:
        yield opened
    finally:
        if opened is not None:
            opened.shutdown()


def __getattr__(name: str):
    if name == "RayEngine":  # imported on use: the local engine never imports ray
        from ._ray import RayEngine

        return RayEngine
    raise AttributeError(name)
