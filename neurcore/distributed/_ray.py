"""The Ray engine: a whole-network run's shards as Ray actors and tasks, on one machine or a cluster.

Image shards of the two streaming passes run on actors that each hold the model and the probe
(one CPU each, or one GPU where the cluster has GPUs; restarted and their calls retried when a
worker dies); rule searches of (layer, unit block) run as tasks (retried when a worker dies) that
read the concept masks from Ray's object store, put there once (numpy arrays come back zero-copy
on a node). The driver merges results and writes every file (:mod:`neurcore.activations._shards`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import InputError
from ._engines import call_key, nbytes

__all__ = ["RayEngine", "import_ray"]

_RETRIES = 3


def import_ray():
    """The ``ray`` module, or an InputError saying which extra installs it."""
    try:
        import ray
    except ImportError as e:
        raise InputError("--engine ray needs Ray, which is not installed here: "
                         "pip install 'neurcore[distributed]'") from e
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming ``address``, when nothing listens at a Ray cluster's ``host:port``
    (``ray://host:port`` for Ray Client); ``auto`` (the cluster ``ray start`` left on this machine)
    is left to Ray."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise InputError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}); "
                         "start one with `ray start --head`, or leave out --ray-address for a local "
                         "one") from e


class RayEngine:
    """Runs shards on a Ray cluster: a new local one (``address`` None; ``workers`` CPUs, this machine's
    count by default), or the existing one at ``address``. ``workers``: model actors and concurrent
    tasks (by default the cluster's CPUs). Each call's seconds on its worker and bytes moved are
    listed in ``log``. On a cluster of one node (this machine) the workers read and write the
    activation cache in place (``shares_disk``). Use as a context manager, or call :meth:`shutdown`."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        ray = import_ray()
        if workers is not None and workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        self._owns = False
        if not ray.is_initialized():
            if address:
                check_reachable(address)
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False,
                         logging_level=logging.ERROR, log_to_driver=False)
            self._owns = True
        resources = ray.cluster_resources()
        self.workers = int(workers or max(1, resources.get("CPU", 1)))
        self.gpus = int(resources.get("GPU", 0))
        # a cluster that is this machine alone: workers read and write the driver's files (the
        # activation cache) instead of sending activations through the object store
        alive = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        self.shares_disk = alive == [ray.get_runtime_context().get_node_id()]
        self.log: list[dict] = []
        self._model_refs = None
        self._actors: list = []

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the actors, and the local cluster if this engine started it."""
        import ray

        self.close_model()
        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = False

    def open_model(self, spec: Any, probe: Any) -> None:
        """Share the model and the probe with the workers (actors start with the first shard)."""
        import ray

        self._model_refs = (ray.put(spec), ray.put(probe))

    def close_model(self) -> None:
        """Stop the model actors, freeing their CPUs or GPUs for the tasks that follow."""
        import ray

        for a in self._actors:
            ray.kill(a)
        self._actors, self._model_refs = [], None

    def map_model(self, fn: Callable, calls: list[dict], kind: str) -> Iterator[tuple[dict, Any]]:
        """``fn(spec, probe, device=..., **call)`` for each call on the model actors, two calls queued per
        actor; yields (call, result) as they finish."""
        if not calls:
            return iter(())
        while len(self._actors) < min(self.workers, len(calls)):  # kept from pass to pass
            self._actors.append(self._new_actor())
        return self._drain(calls, kind, lambda slot, call: self._actors[slot].run.remote(fn, call),
                           per_slot=2, slots=len(self._actors), on_actor_death=self._replace_actor)

    def map_tasks(self, fn: Callable, calls: Iterable[dict], shared: dict, kind: str,
                  gpu: bool = False) -> Iterator[tuple[dict, Any]]:
        """``fn(**shared, **call)`` for each call (an iterable, read as calls are submitted) as a Ray task
        (``shared`` put in the object store once), on a GPU each with ``gpu`` where the cluster has
        GPUs; yields (call, result) as they finish."""
        import ray

        keys = list(shared)
        refs = [ray.put(shared[k]) for k in keys]
        task = _task_function().options(name=f"neurcore {kind}", num_gpus=1 if gpu and self.gpus else 0)
        return self._drain(calls, kind, lambda _i, call: task.remote(fn, keys, call, *refs), per_slot=2,
                           slots=self.workers)

    def _drain(self, calls, kind, submit, *, per_slot: int, slots: int, on_actor_death=None):
        """Submit ``calls`` with at most ``per_slot`` in flight on each of ``slots`` (the next call goes to
        the slot that has the fewest); yield results as they come. When the actor of a slot dies,
        ``on_actor_death(slot)`` replaces it and its calls go again (at most ``_RETRIES`` times each)."""
        import ray
        from ray.exceptions import RayActorError

        queue = iter(calls)  # read as submitted: a task's inputs are made only when it goes out
        inflight: dict = {}
        load = [0] * slots

        def refill():
            while min(load) < per_slot:
                call = next(queue, None)
                if call is None:
                    return
                slot = load.index(min(load))
                inflight[submit(slot, call)] = (call, slot, time.perf_counter())
                load[slot] += 1

        refill()
        tries: dict[int, int] = {}
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            call, slot, t_submit = inflight.pop(ref)
            try:
                result, where = ray.get(ref)
            except RayActorError:
                if on_actor_death is None or tries.get(id(call), 0) >= _RETRIES:
                    raise
                tries[id(call)] = tries.get(id(call), 0) + 1
                on_actor_death(slot)
                inflight[submit(slot, call)] = (call, slot, time.perf_counter())
                continue
            load[slot] -= 1
            entry = {"kind": kind, "key": call_key(call), "seconds": round(where["seconds"], 4),
                     "round_trip": round(time.perf_counter() - t_submit, 4),
                     "bytes_in": nbytes(call), "bytes_out": nbytes(result), "node": where["node"],
                     "pid": where["pid"]}
            self.log.append(entry)
            refill()
            t_driver = time.perf_counter()
            yield call, result
            entry["driver_seconds"] = round(time.perf_counter() - t_driver, 4)  # merging, writing

    def _new_actor(self):
        """A model actor on one CPU, or on one GPU where the cluster has GPUs. Ray does not restart it
        (its arguments live in the object store, which Ray's restarts do not track): :meth:`_drain`
        replaces a dead one."""
        import ray

        gpu = 1 if self.gpus else 0
        return ray.remote(num_cpus=0 if gpu else 1, num_gpus=gpu)(_ModelWorker).remote(*self._model_refs)

    def _replace_actor(self, slot: int) -> None:
        """A new actor in ``slot`` unless the one there is alive (replaced already, for an earlier call)."""
        import ray

        try:
            ray.get(self._actors[slot].ping.remote())
        except ray.exceptions.RayActorError:
            self._actors[slot] = self._new_actor()


class _ModelWorker:
    """A Ray actor holding the model and the probe (on its GPU when it has one)."""

    def __init__(self, spec, probe):
        import ray

        self.spec, self.probe = spec, probe
        self.device = "cuda" if ray.get_gpu_ids() else None

    def ping(self) -> bool:
        return True

    def run(self, fn: Callable, call: dict) -> tuple[Any, dict]:
        t0 = time.perf_counter()
        out = fn(self.spec, self.probe, device=self.device, **call)
        return out, _where(t0)


def _where(t0: float) -> dict:
    """Seconds since ``t0`` on this worker, and the worker's node and process."""
    import ray

    return {"seconds": time.perf_counter() - t0, "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid()}


_TASK = None


def _task_function():
    """The Ray remote function that runs one task (made once, on first use)."""
    global _TASK
    if _TASK is None:
        import ray

        @ray.remote(num_cpus=1, max_retries=_RETRIES)
        def run_task(fn: Callable, keys: list[str], call: dict, *shared) -> tuple[Any, dict]:
            t0 = time.perf_counter()
            out = fn(**dict(zip(keys, shared)), **call)
            return out, _where(t0)

        _TASK = run_task
    return _TASK
