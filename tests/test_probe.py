"""Probes: the synthetic world, Broden directories and image folders."""

import csv
import os

import numpy as np
import pytest

from neurcore.probe import BrodenProbe, FolderProbe, ProbeError, SyntheticWorld, open_probe, write_broden
from neurcore.probe.synthetic import SCENES, STUFF


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(n_images=60, size=32, seed=3)


def test_world_is_reproducible_and_random_access(world):
    again = SyntheticWorld(n_images=60, size=32, seed=3)
    img, maps = world.sample(17)
    img2, maps2 = again.sample(17)
    assert np.array_equal(img, img2) and np.array_equal(maps, maps2)
    assert np.array_equal(world.images(10, 20)[7], img) and np.array_equal(world.concept_maps(10, 20)[7], maps)
    assert not np.array_equal(SyntheticWorld(60, 32, seed=4).sample(17)[0], img)


def test_world_masks_are_exact_and_structured(world):
    maps = world.concept_maps(0, world.n_images)  # [b, concepts, h, w]
    cats = np.array(world.concept_categories)
    scenes = maps[:, cats == "scene"]
    assert np.all(scenes.all(axis=(2, 3)).sum(1) == 1)  # one scene per image, filling it
    assert np.all(maps[:, cats == "color"].sum(1) == 1)  # every pixel has exactly one colour
    assert np.all(maps[:, cats == "object"].sum(1) <= 1)  # objects exclude each other
    objects = maps[:, cats == "object"].any(1)
    assert np.all(maps[:, cats == "stuff"].sum(1) == ~objects)  # stuff is what no object covers
    assert np.array_equal(maps[:, cats == "texture"].any(1), objects)
    # Concepts co-occur and exclude each other across images: sky never in a room.
    room, sky = world.concept_names.index("room"), world.concept_names.index("sky")
    in_room = maps[:, room].all(axis=(1, 2))
    assert in_room.any() and not maps[in_room, sky].any()
    masks = world.concept_masks()
    assert np.array_equal(masks.to_dense(), maps.transpose(1, 0, 2, 3))
    assert world.concept_names[: len(SCENES) + len(STUFF)] == list(SCENES + STUFF)


@pytest.mark.parametrize("formula", ["circle", "(red AND square)", "(sky AND NOT cloud)", "((blue OR green) AND triangle)"])
def test_render_contains_the_formula(world, formula):
    images, masks = world.render(formula, 4, seed=1)
    assert images.shape == (4, 32, 32, 3) and masks.shape == (4, 32, 32)
    assert (masks.mean(axis=(1, 2)) >= 0.01).all()
    with pytest.raises(ValueError, match="unknown concept 'zebra'"):
        world.render("zebra", 1)


def test_broden_round_trip(world, tmp_path):
    write_broden(tmp_path / "b", world, n_images=20)
    probe = BrodenProbe(tmp_path / "b")
    assert probe.n_images == 20 and probe.mask_shape == (32, 32)
    assert probe.concept_names == world.concept_names and probe.concept_categories == world.concept_categories
    assert np.array_equal(probe.concept_masks().to_dense(), world.concept_maps(0, 20).transpose(1, 0, 2, 3))
    assert probe.images(0, 3).shape == (3, 224, 224, 3)
    assert isinstance(open_probe(f"broden:{tmp_path / 'b'}"), BrodenProbe)


def _rewrite(path, fn):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = fn(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_broden_errors_name_file_and_row(world, tmp_path):
    d = tmp_path / "b"
    write_broden(d, world, n_images=6)

    os.rename(d / "label.csv", d / "label.bak")
    with pytest.raises(ProbeError, match=r"label\.csv: no such file"):
        BrodenProbe(d)
    os.rename(d / "label.bak", d / "label.csv")

    _rewrite(d / "index.csv", lambda rows: rows[:3] + [rows[3][:4]] + rows[4:])
    with pytest.raises(ProbeError, match=r"index\.csv: row 4: expected 11 fields"):
        BrodenProbe(d)
    write_broden(d, world, n_images=6)
    _rewrite(d / "index.csv", lambda rows: rows[:2] + [rows[2][:4] + ["x"] + rows[2][5:]] + rows[3:])
    with pytest.raises(ProbeError, match=r"index\.csv: row 3: sh must be an integer, got 'x'"):
        BrodenProbe(d)
    write_broden(d, world, n_images=6)

    # An unknown label inside a segmentation PNG.
    from PIL import Image

    probe = BrodenProbe(d)
    png = probe.rows[2]["object"].split(";")[0]
    rgb = np.array(Image.open(d / "images" / png))
    rgb[0, 0] = (200, 3, 0)
    Image.fromarray(rgb).save(d / "images" / png)
    with pytest.raises(ProbeError, match=rf"{png}: unknown label 968 \(not in label\.csv\)"):
        probe.image_concepts(2)
    (d / "images" / png).write_bytes(b"not a png")
    with pytest.raises(ProbeError, match=rf"{png}: corrupt segmentation PNG \(index\.csv row 4\)"):
        probe.concept_masks()
    os.remove(d / "images" / png)
    with pytest.raises(ProbeError, match=rf"{png}: no such file \(index\.csv row 4\)"):
        probe.image_concepts(2)


def test_folder_probe(world, tmp_path):
    from PIL import Image

    d = tmp_path / "f"
    (d / "masks").mkdir(parents=True)
    maps = world.concept_maps(0, 3)
    for i in range(3):
        Image.fromarray(world.images(i, i + 1)[0]).save(d / f"im{i}.png")
        label = np.zeros((32, 32, 3), np.uint8)
        label[..., 0] = np.where(maps[i, world.concept_names.index("circle")], 2, np.where(maps[i, 0], 1, 0))
        label[0, 0, 0] = 2  # every image shows label 2 somewhere
        Image.fromarray(label).save(d / "masks" / f"im{i}.png")
    (d / "labels.csv").write_text("number,name,category\n1,beach,scene\n2,circle,object\n")
    probe = FolderProbe(d, image_size=32, mask_shape=(32, 32))
    assert probe.n_images == 3 and probe.images(0, 3).shape == (3, 32, 32, 3)
    dense = probe.concept_masks().to_dense()
    circle = maps[:, world.concept_names.index("circle")].copy()
    circle[:, 0, 0] = True
    assert np.array_equal(dense[1], circle) and np.array_equal(dense[0], maps[:, 0] & ~circle)
    with pytest.raises(ProbeError, match="no images"):
        FolderProbe(tmp_path)  # holds no images
    (d / "labels.csv").write_text("number,name\n1,beach\n")
    with pytest.raises(ProbeError, match=r"unknown label 2 \(not in labels\.csv\)"):
        FolderProbe(d).concept_masks()


def test_open_probe_rejects_unknown_specs():
    with pytest.raises(ProbeError, match="expected default, broden:DIR or folder:DIR"):
        open_probe("imagenet")
