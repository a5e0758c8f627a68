"""The Broden-scale synthetic probe: vocabulary, reproducibility, exact masks, fast path, Broden export."""

import numpy as np
import pytest

from neurcore.errors import InputError
from neurcore.probe import BrodenProbe, Probe, ProbeError, open_probe, write_broden
from neurcore.probe import synthetic_broden as sb
from neurcore.probe.synthetic_broden import COLORS, SyntheticBroden
from neurcore.rules.formula import Leaf, parse

BRODEN_COLORS = {"black", "blue", "brown", "gray", "green", "orange", "pink", "purple", "red", "white", "yellow"}


@pytest.fixture(scope="module")
def probe():
    return SyntheticBroden(n_images=24, seed=7)


@pytest.fixture(scope="module")
def batch(probe):
    """(rows, images, masks) of all 24 images, image-sparse."""
    return probe.concept_batch(0, probe.n_images)


def _same_masks(a, b):
    """Two BitMasks hold the same masks (compared layout array by layout array in one layout)."""
    la, lb = a.as_layout("sparse").layout_arrays(), b.as_layout("sparse").layout_arrays()
    return a.shape == b.shape and all(np.array_equal(la[k], lb[k]) for k in ("words", "indptr", "images"))


def test_vocabulary_has_broden_categories_and_proportions(probe):
    cats = np.array(probe.concept_categories)
    counts = {c: int((cats == c).sum()) for c in ("object", "part", "scene", "material", "texture", "color")}
    assert counts == sb.COUNTS and set(cats) == set(counts)
    assert len(probe.concept_names) == len(cats) >= 1000
    broden = {"scene": 468, "object": 584, "part": 234, "material": 32, "texture": 47, "color": 11}
    for c, n in broden.items():  # within a factor 1.5 of Broden's share
        share, target = counts[c] / len(cats), n / sum(broden.values())
        assert target / 1.5 <= share <= target * 1.5, c
    assert len(set(probe.concept_names)) == len(probe.concept_names)
    assert all(parse(n) == Leaf(n) for n in probe.concept_names)
    assert set(np.array(probe.concept_names)[cats == "color"]) == BRODEN_COLORS == set(COLORS)
    parts = sb._tables().obj_parts  # every part belongs to some thing class, stuff has none
    assert set(parts[parts >= 0]) == set(range(counts["part"])) and (parts[: sb.N_STUFF] < 0).all()


def test_reproducible_random_access_and_seeded(probe):
    again = SyntheticBroden(n_images=24, seed=7, threads=1)
    streamed = np.concatenate([img for _, img in probe.batches(batch_size=5)])
    assert streamed.shape == (24, 224, 224, 3) and streamed.dtype == np.uint8
    assert np.array_equal(again.images(13, 14)[0], streamed[13])
    assert np.array_equal(again.images(0, 24), streamed)  # one thread or several: the same bytes
    rows, masks = probe.image_concepts(13)
    rows2, masks2 = again.image_concepts(13)
    assert np.array_equal(rows, rows2) and np.array_equal(masks, masks2)
    assert np.all(np.diff(rows) > 0) and masks.shape == (len(rows), 112, 112) and masks.dtype == bool
    other = SyntheticBroden(n_images=24, seed=8)
    assert not np.array_equal(other.images(13, 14)[0], streamed[13])
    assert not all(np.array_equal(probe.image_concepts(i)[0], other.image_concepts(i)[0]) for i in range(4))


def _per_image(probe, batch, i, category):
    rows, images, masks = batch
    cats = np.array(probe.concept_categories)
    keep = (images == i) & (cats[rows] == category)
    return rows[keep], masks[keep]


def test_masks_are_exact_and_consistent(probe, batch):
    tables = sb._tables()
    n_objects = n_parts = 0
    for i in range(probe.n_images):
        scene, scene_mask = _per_image(probe, batch, i, "scene")
        assert len(scene) == 1 and scene_mask.all()  # image-level
        for category in ("object", "material", "color"):  # every pixel has exactly one
            assert np.all(_per_image(probe, batch, i, category)[1].sum(0) == 1), category
        assert np.all(_per_image(probe, batch, i, "texture")[1].sum(0) <= 1)
        objects, object_masks = _per_image(probe, batch, i, "object")
        parts, part_masks = _per_image(probe, batch, i, "part")
        for p, pm in zip(parts, part_masks):  # inside objects of a class that has that part
            classes = objects - sb._OBJ
            owners = np.isin(classes, np.flatnonzero((tables.obj_parts == p - sb._PART).any(1)))
            assert owners.any() and not (pm & ~object_masks[owners].any(0)).any()
        # background stuff comes from the scene's layout
        stuff = classes[classes < sb.N_STUFF]
        s = scene[0] - sb._SCENE
        assert len(stuff) and set(stuff) <= set(tables.scene_bands[s, : tables.scene_nb[s]])
        n_objects += len(objects)
        n_parts += len(parts)
    assert n_objects > 3 * probe.n_images and n_parts > probe.n_images  # the checks above are not vacuous


def test_labels_and_image_share_one_geometry(probe, batch):
    """The 112-px labels are the 224-px render's labels at pixels (2u, 2v); colour masks show their colour."""
    tb = sb._tables()
    for i in range(4):
        meta, bands = np.zeros(4, np.int64), np.zeros((4, 4))
        regs, objs = np.zeros((48, 6), np.int64), np.zeros((8, 7))
        sb._sample(probe.seed, i, tb, meta, bands, regs, objs)
        full, half = np.zeros((224, 224), np.uint8), np.zeros((112, 112), np.uint8)
        sb._paint_regions(1, meta, bands, objs, tb.templates, full)
        sb._paint_regions(2, meta, bands, objs, tb.templates, half)
        assert np.array_equal(full[::2, ::2], half) and len(np.unique(half)) > 2
        cf, ch = np.zeros_like(full), np.zeros_like(half)
        sb._paint_colors(1, full, regs, tb.tex, cf)
        sb._paint_colors(2, half, regs, tb.tex, ch)
        assert np.array_equal(cf[::2, ::2], ch)
    images = probe.images(0, probe.n_images)[:, ::2, ::2].astype(float)
    rows, img, masks = batch
    hits = total = 0
    for r, j, m in zip(rows, img, masks):
        if probe.concept_categories[r] == "color" and m.sum() >= 50:
            mean = images[j][m].mean(0)
            hits += COLORS[np.argmin(((sb._RGB - mean) ** 2).sum(1))] == probe.concept_names[r]
            total += 1
    assert total > 50 and hits >= 0.9 * total


def test_fast_concept_masks_equal_the_image_by_image_build():
    small = SyntheticBroden(n_images=11, seed=3)
    fast = small.concept_masks(batch_size=4)
    assert fast.shape == (len(small.concept_names), 11, 112, 112)
    assert _same_masks(fast, Probe.concept_masks(small))
    per_image = fast.count(per_image=True)
    assert 10 <= (per_image > 0).sum(0).mean() <= 40  # image-sparse: tens of concepts per image


def test_round_trip_through_broden_format(tmp_path):
    small = SyntheticBroden(n_images=4, seed=11)
    write_broden(tmp_path / "b", small)
    back = BrodenProbe(tmp_path / "b")
    assert back.n_images == 4 and back.mask_shape == (112, 112) and back.images(0, 2).shape == (2, 224, 224, 3)
    assert back.concept_names == small.concept_names and back.concept_categories == small.concept_categories
    for i in range(4):
        rows, masks = small.image_concepts(i)
        rows_b, masks_b = back.image_concepts(i)
        assert np.array_equal(rows, rows_b) and np.array_equal(masks, masks_b)
    assert _same_masks(back.concept_masks(), small.concept_masks())


@pytest.mark.parametrize("kwargs, name", [({"n_images": 0}, "n_images"), ({"n_images": 2.5}, "n_images"),
                                          ({"n_images": True}, "n_images"), ({"seed": -1}, "seed"),
                                          ({"seed": "0"}, "seed"), ({"threads": 0}, "threads")])
def test_bad_arguments_raise_input_error(kwargs, name):
    with pytest.raises(InputError, match=name):
        SyntheticBroden(**kwargs)


def test_open_probe_and_ranges():
    p = open_probe("synthetic-broden", n_images=3, seed=2)
    assert isinstance(p, SyntheticBroden) and p.n_images == 3 and p.seed == 2 and p.name == "synthetic-broden"
    assert p.images(0, 3).shape == (3, 224, 224, 3) and p.images(1, 1).shape == (0, 224, 224, 3)
    with pytest.raises(IndexError):
        p.image_concepts(3)
    with pytest.raises(IndexError):
        p.images(2, 4)
    with pytest.raises(ProbeError, match="224"):
        open_probe("synthetic-broden", image_size=64)
    with pytest.raises(ProbeError, match="synthetic-broden"):
        open_probe("imagenet")
