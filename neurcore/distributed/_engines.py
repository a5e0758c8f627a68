"""What an engine is (:class:`ShardEngine`), and the one that runs shards in this process."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np

__all__ = ["InProcessEngine", "ShardEngine", "call_key", "nbytes"]


class ShardEngine(Protocol):
    """Where a run's shards go, on ``workers`` workers.

    ``log`` lists each finished call: its kind, key, seconds on the worker and bytes moved.
    ``shares_disk``: whether every worker sees the driver's files (one machine), so that workers
    read and write the activation cache and the unit masks themselves instead of sending them."""

    log: list[dict]
    shares_disk: bool
    workers: int

    def open_model(self, spec: Any, probe: Any) -> None:
        """Share a :class:`~neurcore.models.ModelSpec` and a probe with the workers of :meth:`map_model`."""

    def close_model(self) -> None:
        """Let the model's workers go (their CPUs or GPUs are free for tasks after)."""

    def shutdown(self) -> None:
        """Release everything the engine holds."""

    def map_model(self, fn: Callable, calls: list[dict], kind: str) -> Iterator[tuple[dict, Any]]:
        """``fn(spec, probe, device=..., **call)`` for each call on workers that hold the model and the
        probe; (call, result) pairs in the order the calls finish."""

    def map_tasks(self, fn: Callable, calls: Iterable[dict], shared: dict, kind: str,
                  gpu: bool = False) -> Iterator[tuple[dict, Any]]:
        """``fn(**shared, **call)`` for each call (``shared`` sent once; on a GPU each with ``gpu``,
        where there are GPUs); (call, result) pairs in the order the calls finish."""


class InProcessEngine:
    """A :class:`ShardEngine` that runs every shard in this process, one after the other (in reverse
    order with ``reverse=True``, to exercise merging out of order): the sharded pipeline without a
    cluster, for tests and for checking an engine against. ``shares_disk=False`` makes it act as a
    cluster whose workers cannot see the driver's files."""

    def __init__(self, reverse: bool = False, shares_disk: bool = True):
        self.reverse, self.shares_disk = reverse, shares_disk
        self.workers = 1
        self.log: list[dict] = []
        self._model = None

    def open_model(self, spec: Any, probe: Any) -> None:
        """Keep the model and the probe for :meth:`map_model`."""
        self._model = (spec, probe)

    def close_model(self) -> None:
        """Drop the model and the probe."""
        self._model = None

    def shutdown(self) -> None:
        """Drop the model and the probe."""
        self.close_model()

    def map_model(self, fn: Callable, calls: list[dict], kind: str) -> Iterator[tuple[dict, Any]]:
        """``fn(spec, probe, device=None, **call)`` for each call, here."""
        return self._run(lambda call: fn(*self._model, device=None, **call), calls, kind)

    def map_tasks(self, fn: Callable, calls: Iterable[dict], shared: dict, kind: str,
                  gpu: bool = False) -> Iterator[tuple[dict, Any]]:
        """``fn(**shared, **call)`` for each call, here."""
        return self._run(lambda call: fn(**shared, **call), calls, kind)

    def _run(self, run: Callable, calls: Iterable[dict], kind: str) -> Iterator[tuple[dict, Any]]:
        calls = list(calls)
        for call in (calls[::-1] if self.reverse else calls):
            t0 = time.perf_counter()
            result = run(call)
            self.log.append({"kind": kind, "key": call_key(call), "seconds": time.perf_counter() - t0,
                             "bytes_in": nbytes(call), "bytes_out": nbytes(result)})
            yield call, result


def call_key(call: dict) -> str:
    """A short name of a call for the log: its scalar arguments, ``name=value`` joined by commas."""
    return ",".join(f"{k}={v}" for k, v in call.items() if isinstance(v, (int, str, float)))


def nbytes(obj: Any) -> int:
    """Bytes of the arrays and text in ``obj`` (nested dicts, lists, tuples, dataclasses; objects with
    an ``nbytes`` such as BitMasks): about what moving it between machines costs."""
    if isinstance(obj, np.ndarray) or hasattr(obj, "nbytes"):
        return int(obj.nbytes)
    if isinstance(obj, str):
        return len(obj.encode())
    if isinstance(obj, dict):
        return sum(nbytes(k) + nbytes(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 8 if isinstance(obj, (int, float)) else 0
