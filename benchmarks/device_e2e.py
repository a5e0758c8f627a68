"""End-to-end runs on a GPU against the same runs on the CPU, for a session lent a device machine
(``benchmarks/device.sh`` runs it with ``E2E=1``): the command line's rule search (``--device cuda``) on
the planted layer of bench_search, and the NeurFlow circuit of ``default-circuit``. Each pair must give
the same results; the wall-clock times of both are printed (one run each, whole commands)."""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from neurcore.testing import blob_concepts, plant_units


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def search(d: str) -> list[tuple]:
    rng = np.random.default_rng(0)
    concepts = blob_concepts(rng, 48, 1500, (16, 16))
    units, truth = plant_units(rng, concepts, 400, lengths=(1, 2, 3), noise=0.03)
    np.savez(os.path.join(d, "C.npz"), masks=concepts.masks.to_dense(), names=np.array(concepts.names))
    np.savez(os.path.join(d, "U.npz"), masks=units.to_dense())
    rows, results = [], {}
    for method in ("beam", "optimal"):
        for device in ("cuda", "cpu"):
            out = os.path.join(d, f"{method}-{device}.jsonl")
            seconds = timed([sys.executable, "-m", "neurcore", "search", "--concepts", f"{d}/C.npz", "--units",
                             f"{d}/U.npz", "--method", method, "--device", device, "--out", out])
            with open(out) as f:
                results[method, device] = [(r["formula"], r["iou"]) for r in map(json.loads, f)]
            rows.append((f"search {method} 400 units", device, seconds))
        assert results[method, "cuda"] == results[method, "cpu"], f"{method}: cuda and cpu differ"
    return rows


def circuit(d: str) -> list[tuple]:
    rows, nodes = [], {}
    for device in ("cuda", "cpu"):
        out = os.path.join(d, f"circuit-{device}")
        seconds = timed([sys.executable, "-m", "neurcore", "circuit", "--model", "default-circuit", "--device",
                         device, "--out", out, "--quiet"])
        with open(os.path.join(out, "circuit.json")) as f:
            doc = json.load(f)
        layers = {n["layer"] for n in doc["nodes"]}
        nodes[device] = {layer: sorted({u for n in doc["nodes"] if n["layer"] == layer for u in n["neurons"]})
                         for layer in layers}
        rows.append((f"circuit neurflow default-circuit {doc.get('metrics')}", device, seconds))
    assert nodes["cuda"] == nodes["cpu"], "circuit: cuda and cpu found different circuits"
    return rows


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        rows = search(d) + circuit(d)
    print(f"{'run':40s} {'device':6s} {'seconds':>8s}")
    for name, device, seconds in rows:
        print(f"{name:40s} {device:6s} {seconds:8.2f}")
