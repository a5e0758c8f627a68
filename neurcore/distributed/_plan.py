"""A scaling plan from a measured run: the makespan its shards imply on more workers.

The log of a run on an engine (``engine.json``: every shard's and task's seconds on its worker,
bytes in and out, and the driver's seconds handling its result) is replayed on ``workers`` simulated
workers: within a stage (pass 1, pass 2, search, generate), calls go in log order to the first free
worker and take their measured seconds plus a per-task overhead (Ray's scheduling, measured) plus
their bytes over the network's bandwidth; the driver handles results one at a time as they arrive;
stages follow each other. :func:`split_shards` re-cuts the image shards finer, for plans with more
workers than shards.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

__all__ = ["simulate_makespan", "split_shards"]


def simulate_makespan(calls: Iterable[dict], *, workers: int, task_overhead: float = 0.0,
                      bandwidth: float | None = None) -> dict[str, float]:
    """Seconds each stage of ``calls`` (dicts with ``kind``, ``seconds`` and optionally ``bytes_in``,
    ``bytes_out``, ``driver_seconds``) takes on ``workers`` workers -> {kind: seconds}, in the order
    the kinds first appear. task_overhead: seconds added to every call; bandwidth: bytes a second
    between driver and workers (None: free)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    stages: dict[str, list[dict]] = {}
    for c in calls:
        stages.setdefault(c["kind"], []).append(c)
    out = {}
    for kind, stage in stages.items():
        free = [0.0] * workers
        done = []
        for c in stage:
            start = heapq.heappop(free)
            moved = (c.get("bytes_in", 0) + c.get("bytes_out", 0)) / bandwidth if bandwidth else 0.0
            end = start + c["seconds"] + task_overhead + moved
            heapq.heappush(free, end)
            done.append((end, c.get("driver_seconds", 0.0)))
        driver = 0.0
        for end, handling in sorted(done):
            driver = max(driver, end) + handling
        out[kind] = max(driver, max(end for end, _ in done))
    return out


def split_shards(calls: Iterable[dict], pieces: int, kinds: tuple[str, ...] = ("pass 1", "pass 2"),
                 fixed_driver: tuple[str, ...] = ("pass 1",)) -> list[dict]:
    """``calls`` with every call of ``kinds`` cut into ``pieces`` equal calls: its seconds and bytes
    divided evenly, and the driver's handling too, but for ``fixed_driver`` kinds, whose handling
    is the same for any piece (merging a shard's top values costs about the same whatever its size;
    appending pass 2's masks scales with them); other calls as they are."""
    out = []
    for c in calls:
        if c["kind"] not in kinds or pieces == 1:
            out.append(dict(c))
            continue
        driver = c.get("driver_seconds", 0.0)
        piece = dict(c, seconds=c["seconds"] / pieces, bytes_in=c.get("bytes_in", 0) / pieces,
                     bytes_out=c.get("bytes_out", 0) / pieces,
                     driver_seconds=driver if c["kind"] in fixed_driver else driver / pieces)
        out.extend(dict(piece) for _ in range(pieces))
    return out
