"""At the scale of compexp's vision job: 1,100 synthetic concepts over 22,210 images x 112 x 112 (the
shape of Broden's ADE20K subset), built by streaming into image-sparse BitMasks, and
intersect_counts of 20 rows against all of it. No compexp code runs here.

The 20 rows are 10 unit masks (top-0.5%-like: ~20% of the images, 2.5% fill inside) and 10 beam
formulas ``c_i OR c_j`` over frequent concepts, the two kinds of rows a compositional search
counts against the concept set. From the time per row this projects how long neurcore's counting
would take for a search of compexp's size (512 units, length 3, beam 5): per unit 1 row for the
first beam, then 2 rows (F and F AND A) per beam formula in each of the 2 later steps, so 21 rows x
1,100 concepts per unit. A projection of neurcore, not a measurement of compexp.

The baseline is a numpy loop over pairs of dense bool masks (``np.logical_and(a, b).sum()``), timed
on 2 x 2 pairs. compexp itself counts pycocotools run-length masks; that is not what is timed here.
"""

import resource
import time

import numpy as np
import pytest
from _data import broden_like_concepts, random_rows

import neurcore
from neurcore import BitMasks, intersect_counts

N_IMAGES, SIDE = 22210, 112
UNITS, LENGTH, BEAM = 512, 3, 5
ROWS_PER_UNIT = 1 + 2 * BEAM * (LENGTH - 1)
GROUP = f"1,100 concepts over {N_IMAGES}x{SIDE}x{SIDE}"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(2024)
    rss_before = peak_rss_gib()
    t0 = time.perf_counter()
    concepts = broden_like_concepts(rng, N_IMAGES, SIDE)
    build_s = time.perf_counter() - t0
    rss_after = peak_rss_gib()
    units = random_rows(rng, 10, N_IMAGES, SIDE, touch=(0.15, 0.25), fill=0.025, layout="sparse")
    pairs = [rng.choice(40, size=2, replace=False) for _ in range(10)]
    formulas = BitMasks.concat([concepts[int(i)] | concepts[int(j)] for i, j in pairs])
    rows = BitMasks.concat([units, formulas])
    info = {"build_s": round(build_s, 1), "concepts_gib": round(concepts.nbytes / 2**30, 3),
            "peak_rss_gib_before_build": round(rss_before, 2),
            "peak_rss_gib_after_build": round(rss_after, 2),
            "occupancy": round(concepts.occupancy(), 4), "dense_bits_gib": round(
                concepts.n * N_IMAGES * concepts.words_per_image * 8 / 2**30, 1)}
    assert concepts.layout == "sparse" and concepts.n == 1100
    assert concepts.nbytes < 4 * 2**30
    return concepts, rows, info


def test_neurcore(benchmark, world):
    concepts, rows, info = world
    benchmark.group = GROUP
    out = benchmark.pedantic(intersect_counts, (rows, concepts), rounds=5, iterations=1, warmup_rounds=1)
    per_row = benchmark.stats.stats.median / rows.n
    projected = per_row * UNITS * ROWS_PER_UNIT
    benchmark.extra_info.update(info, role="neurcore", per="row pair", work=rows.n * concepts.n,
                                cpu_level=neurcore.cpu_level(),
                                seconds_per_row=round(per_row, 5),
                                row_pairs_per_s=round(rows.n * concepts.n / benchmark.stats.stats.median),
                                projected_neurcore_search_s_at_compexp_size=round(projected, 1))
    # Spot-check exact counts on a few pairs against numpy on the unpacked masks.
    for i, j in [(0, 0), (3, 1099), (12, 5), (19, 1050)]:
        expect = np.logical_and(rows[i].to_dense(), concepts[j].to_dense()).sum()
        assert out[i, j] == expect


def test_numpy_pair_loop_dense_masks(benchmark, world):
    concepts, rows, _ = world
    benchmark.group = GROUP
    a = [rows[i].to_dense() for i in (0, 15)]
    b = [concepts[j].to_dense() for j in (0, 700)]
    benchmark.extra_info.update(role="baseline", per="row pair", work=len(a) * len(b))
    out = benchmark.pedantic(lambda: [[np.logical_and(x, y).sum() for y in b] for x in a], rounds=2,
                             iterations=1)
    assert out[1][0] == intersect_counts(rows[15], concepts[0])[0, 0]
