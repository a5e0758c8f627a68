"""Wall time and peak memory of a run's stages, for the benchmarks and the curious: ``stages.json``."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator

from .._io import write_json

__all__ = ["Stages"]


class Stages:
    """Times the stages of one process's run and writes ``out_dir/stages.json`` after each:
    {stage: {"seconds": wall time, "peak_rss_gib": the process's peak resident memory so far}}.
    A resumed run records only what it did itself."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, "stages.json")
        self.rows: dict[str, dict] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name``."""
        t0 = time.perf_counter()
        yield
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        self.rows[name] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_gib": round(peak, 3)}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        write_json(self.path, self.rows)
