"""Whole networks at Broden scale, end to end through ``neurcore dissect``: time and peak memory per stage.

(a) compexp's job: ResNet-18 (seeded random weights; ``--weights`` in NEURCORE_BENCH_WEIGHTS), ``layer4``
    (512 units), the Broden-scale synthetic probe (22,210 images of 224 px, masks of 112 px), beam
    search of length 3 and width 5 (Mu & Andreas, "Compositional Explanations of Neurons").
    compexp itself: about 14 h on 8 processes (its README), on Broden's ADE20K part.
(b) ResNet-50 ``--layer all`` (16 blocks, 15,104 units) on the same probe, single-concept Network
    Dissection. NetDissect-Lite: about 20 min for ResNet-18 single concepts on a GPU.
(c) ResNet-50 ``layer1..layer4`` (3,840 units) on the default probe, beam search, at two probe sizes:
    peak memory must stay flat as the probe grows.

Each runs the CLI in a fresh process (so its peak RSS is its own), once; ``stages.json`` gives the
per-stage wall time and the peak RSS reached by the end of each stage. The image counts default to
the sizes above and shrink with NEURCORE_BENCH_SCALE (a fraction, e.g. 0.1) for a quick look.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

SCALE = float(os.environ.get("NEURCORE_BENCH_SCALE", "1"))
BRODEN_IMAGES = max(64, int(22210 * SCALE))
WEIGHTS = os.environ.get("NEURCORE_BENCH_WEIGHTS")


def _dissect(out: str, *args: str) -> dict:
    """Run ``neurcore dissect ARGS --out OUT`` in a child process -> its stages, wall time and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cmd = [sys.executable, "-m", "neurcore", "dissect", *args, "--out", out, "--quiet"]
    subprocess.run(cmd, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.path.join(out, "stages.json")) as f:
        stages = json.load(f)
    # RUSAGE_CHILDREN is the largest child so far: only a new maximum is this child's own
    info = {"stages": stages, "seconds": round(sum(s["seconds"] for s in stages.values()), 1),
            "peak_rss_gib": round(max(s["peak_rss_gib"] for s in stages.values()), 3),
            "children_peak_rss_gib": round(peak / 2**20, 3) if peak > before else None}
    print(f"\n{' '.join(args)}: {info['seconds']} s, peak RSS {info['peak_rss_gib']} GiB")
    for name, s in stages.items():
        print(f"  {name:45s} {s['seconds']:9.1f} s   peak RSS so far {s['peak_rss_gib']:.2f} GiB")
    return info


def _once(benchmark, fn, *args):
    return benchmark.pedantic(fn, args, rounds=1, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="scale: compexp's job")
def test_compexp_job_resnet18_layer4_beam(benchmark, tmp_path):
    args = ["--model", "resnet18", "--layer", "layer4", "--probe", "synthetic-broden", "--probe-images",
            str(BRODEN_IMAGES), "--method", "beam", "--length", "3", "--beam", "5", "--activation-cache", "on"]
    if WEIGHTS:
        args += ["--weights", WEIGHTS]
    info = _once(benchmark, _dissect, str(tmp_path / "compexp"), *args)
    benchmark.extra_info.update(info, role="neurcore", images=BRODEN_IMAGES, per="unit", work=512,
                                anchor="compexp: ~14 h on 8 processes (its README)")


@pytest.mark.benchmark(group="scale: ResNet-50, every block")
def test_resnet50_all_blocks_network_dissection(benchmark, tmp_path):
    info = _once(benchmark, _dissect, str(tmp_path / "r50all"), "--model", "resnet50", "--layer", "all",
                 "--probe", "synthetic-broden", "--probe-images", str(BRODEN_IMAGES), "--method", "dissect")
    benchmark.extra_info.update(info, role="neurcore", images=BRODEN_IMAGES, per="unit", work=15104,
                                anchor="NetDissect-Lite: ~20 min for ResNet-18 on a GPU (its README)")


@pytest.mark.benchmark(group="scale: ResNet-50 four stages, memory as the probe grows")
@pytest.mark.parametrize("images", [max(64, int(3000 * SCALE)), max(256, int(12000 * SCALE))])
def test_resnet50_four_stages_memory_is_flat(benchmark, tmp_path, images):
    layers = [a for i in range(1, 5) for a in ("--layer", f"layer{i}")]
    info = _once(benchmark, _dissect, str(tmp_path / f"r50-{images}"), "--model", "resnet50", *layers,
                 "--probe-images", str(images), "--method", "beam")
    benchmark.extra_info.update(info, role="neurcore", images=images, per="unit", work=3840)


@pytest.mark.benchmark(group="scale: Broden-scale probe generation")
def test_synthetic_broden_images_and_concept_masks(benchmark):
    """All images (224 px) and concept masks (112 px) of the Broden-scale probe, as a run draws them."""
    from neurcore.probe import open_probe

    probe = open_probe("synthetic-broden", n_images=BRODEN_IMAGES)
    probe.images(0, 1)  # compile the numba kernels outside the timing

    def generate():
        for s in range(0, probe.n_images, 256):
            probe.images(s, min(probe.n_images, s + 256))
        return probe.concept_masks()

    masks = benchmark.pedantic(generate, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(role="neurcore", images=BRODEN_IMAGES, per="image", work=BRODEN_IMAGES,
                                concepts=masks.n, mask_bytes_per_image=round(masks.nbytes / BRODEN_IMAGES))
