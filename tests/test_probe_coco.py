"""Probes from what users have: COCO-format annotation files and (image, masks) pairs in Python."""

import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")
from pycocotools import mask as coco_mask  # noqa: E402

from neurcore.cli import main  # noqa: E402
from neurcore.errors import BackendUnavailable  # noqa: E402
from neurcore.pipelines import dissect  # noqa: E402
from neurcore.probe import CocoProbe, DatasetProbe, ProbeError, open_probe  # noqa: E402
from neurcore.probe.base import resize_nearest  # noqa: E402
from neurcore.rules import parse  # noqa: E402

SIZE = 64
N_IMAGES = 10
CATEGORIES = [{"id": 3, "name": "box", "supercategory": "shape"},
              {"id": 7, "name": "disc", "supercategory": "shape"},
              {"id": 9, "name": "hot dog", "supercategory": "stuff"}]
COLOURS = {"box": (220, 40, 40), "disc": (40, 200, 60), "hot dog": (40, 60, 230)}


def rect_polygon(x0, y0, x1, y1):
    """A rectangle polygon with corners on pixel edges: pycocotools fills exactly [y0:y1, x0:x1]."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def uncompressed_rle(mask):
    """COCO's uncompressed RLE of bool [h, w], computed here with numpy: column-major run lengths,
    starting with a run of 0s."""
    flat = mask.T.reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"counts": runs, "size": list(mask.shape)}


def draw(i, rng):
    """Image i (uint8 [64, 64, 3]), its segmentations {name: [segmentation, ...]} and true masks."""
    truth = {name: np.zeros((SIZE, SIZE), bool) for name in COLOURS}
    segs = {name: [] for name in COLOURS}
    if i % 3 != 2:  # boxes: one or two annotations, one of them with two polygons
        x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
        polys = [rect_polygon(x0, y0, x0 + 20, y0 + 14)]
        if i % 2:
            polys.append(rect_polygon(2, 50, 12, 62))
        segs["box"].append(polys)
        if i % 4 == 0:
            segs["box"].append([rect_polygon(40, 40, 60, 46)])
        for p in [q for s in segs["box"] for q in s]:
            truth["box"][p[1]:p[5], p[0]:p[2]] = True
    if i % 3 != 1:  # discs: uncompressed RLE
        cy, cx, r = *rng.integers(16, 48, 2), rng.integers(6, 14)
        yy, xx = np.mgrid[:SIZE, :SIZE]
        truth["disc"] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        segs["disc"].append(uncompressed_rle(truth["disc"]))
    if i % 2 == 0:  # hot dogs: compressed RLE from pycocotools
        truth["hot dog"] = (rng.random((SIZE // 8, SIZE // 8)) < 0.3).repeat(8, 0).repeat(8, 1)
        truth["hot dog"][0, 0] = True  # a mask starting with a 1 (an empty first run)
        rle = coco_mask.encode(np.asfortranarray(truth["hot dog"].astype(np.uint8)))
        segs["hot dog"].append({"counts": rle["counts"].decode("ascii"), "size": list(rle["size"]),
                                "iscrowd": 1})
    image = rng.integers(90, 140, (SIZE, SIZE, 3)).astype(np.uint8)
    for name, colour in COLOURS.items():
        image[truth[name]] = colour
    return image, segs, truth


def write_coco(directory, image_folder="images"):
    """A COCO probe on disk: (annotation file path, true masks [{name: bool [64, 64]}] in id order)."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(directory, image_folder), exist_ok=True)
    cat_id = {c["name"]: c["id"] for c in CATEGORIES}
    images, annotations, truths = [], [], []
    for i in range(N_IMAGES):
        image, segs, truth = draw(i, rng)
        image_id = 100 + (i * 7) % N_IMAGES  # ids not in file order
        Image.fromarray(image).save(os.path.join(directory, image_folder, f"im{image_id}.png"))
        images.append({"id": image_id, "file_name": f"im{image_id}.png", "height": SIZE, "width": SIZE})
        truths.append((image_id, truth))
        for name, seg_list in segs.items():
            for seg in seg_list:
                crowd = int(isinstance(seg, dict) and seg.pop("iscrowd", 0))
                annotations.append({"id": 1000 + len(annotations), "image_id": image_id,
                                    "category_id": cat_id[name], "segmentation": seg, "iscrowd": crowd})
    path = os.path.join(directory, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path, [t for _, t in sorted(truths, key=lambda p: p[0])]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_coco(str(tmp_path_factory.mktemp("coco")))


def test_masks_decode_exactly(coco):
    path, truths = coco
    probe = CocoProbe(path, image_size=SIZE, mask_shape=(SIZE, SIZE))
    assert probe.n_images == N_IMAGES and probe.concept_names == ["box", "disc", "hot dog"]
    assert probe.concept_categories == ["object"] * 3
    assert CocoProbe(path, category_field="supercategory").concept_categories == ["shape", "shape", "stuff"]
    dense = probe.concept_masks().to_dense()  # [concepts, images, h, w]
    for i, truth in enumerate(truths):
        for k, name in enumerate(probe.concept_names):
            assert np.array_equal(dense[k, i], truth[name]), (i, name)
    assert probe.images(0, 3).shape == (3, SIZE, SIZE, 3)
    assert tuple(probe.images(0, 1)[0, truths[0]["disc"]][0]) == COLOURS["disc"]
    small = CocoProbe(path, mask_shape=(32, 24))
    rows, masks = small.image_concepts(0)
    names = [small.concept_names[r] for r in rows]
    assert np.array_equal(masks, np.stack([resize_nearest(truths[0][n], (32, 24)) for n in names]))
    assert small.images(0, 2).shape == (2, 224, 224, 3)


def test_coco_specs(coco, tmp_path):
    path, _ = coco
    assert isinstance(open_probe(f"coco:{path}"), CocoProbe)  # images in the sibling images/ folder
    elsewhere, _ = write_coco(str(tmp_path / "a:b"), image_folder="pics")  # a colon in the path
    with pytest.raises(ProbeError, match=r"file_name: 'im100\.png' is neither in .* nor in"):
        open_probe(f"coco:{elsewhere}")
    probe = open_probe(f"coco:{elsewhere}:{tmp_path / 'a:b' / 'pics'}", image_size=SIZE)
    assert probe.image_dir == str(tmp_path / "a:b" / "pics")
    assert probe.images(0, 1).shape == (1, SIZE, SIZE, 3)
    with pytest.raises(ProbeError, match=r"nope: no such image directory"):
        open_probe(f"coco:{elsewhere}:{tmp_path / 'nope'}")
    with pytest.raises(ProbeError, match=r"missing\.json: no such annotation file"):
        open_probe(f"coco:{tmp_path / 'missing.json'}")


def _broken(path, tmp_path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    bad = tmp_path / "instances.json"
    with open(bad, "w") as f:
        json.dump(data, f)
    os.makedirs(tmp_path / "images", exist_ok=True)
    for name in os.listdir(os.path.join(os.path.dirname(path), "images")):
        if not (tmp_path / "images" / name).exists():
            os.link(os.path.join(os.path.dirname(path), "images", name), tmp_path / "images" / name)
    return bad


def _set(data, index, field, value):
    data["annotations"][index][field] = value


def _compressed(data, counts):
    k = next(k for k, a in enumerate(data["annotations"]) if isinstance(a["segmentation"], dict)
             and isinstance(a["segmentation"]["counts"], str))
    data["annotations"][k]["segmentation"]["counts"] = counts
    return k


MALFORMED = {
    "odd polygon": (lambda d: d["annotations"][0]["segmentation"][0].append(5),
                    r"annotations\[0\] \(id 1000\): segmentation: polygon 0 has an odd number of "
                    r"coordinates \(9\)"),
    "two-point polygon": (lambda d: _set(d, 0, "segmentation", [[1, 2, 3, 4]]),
                          r"annotations\[0\] \(id 1000\): segmentation: polygon 0 has 2 points"),
    "polygon of strings": (lambda d: _set(d, 0, "segmentation", [["1", 2, 3, 4, 5, 6]]),
                           r"annotations\[0\] \(id 1000\): segmentation: polygon 0 is not a list of numbers"),
    "unknown category": (lambda d: _set(d, 2, "category_id", 5),
                         r"annotations\[2\] \(id 1002\): category_id: 5 is not the id of any entry of "
                         r"categories"),
    "unknown image": (lambda d: _set(d, 1, "image_id", 99),
                      r"annotations\[1\] \(id 1001\): image_id: 99 is not the id of any entry of images"),
    "RLE size": (lambda d: _set(d, 1, "segmentation", {"counts": [4096], "size": [32, 128]}),
                 r"annotations\[1\] \(id 1001\): segmentation: size \[32, 128\] differs from the image's "
                 r"\[height, width\] \[64, 64\] of images\[\d\] \(id \d+\)"),
    "RLE runs": (lambda d: _set(d, 1, "segmentation", {"counts": [4000, 10], "size": [64, 64]}),
                 r"annotations\[1\] \(id 1001\): segmentation: counts: the runs cover 4010 pixels, "
                 r"the mask has 64 x 64 = 4096"),
    "compressed RLE runs": (lambda d: _compressed(d, "0"),
                            r"annotations\[\d+\] \(id \d+\): segmentation: counts: the runs cover 0 pixels"),
    "compressed RLE characters": (lambda d: _compressed(d, "1~2"),
                                  r"segmentation: counts: '~' \(position 1\) is not a character"),
    "no segmentation": (lambda d: d["annotations"][4].pop("segmentation"),
                        r"annotations\[4\] \(id 1004\): segmentation: missing"),
    "missing category_id": (lambda d: d["annotations"][3].pop("category_id"),
                         r"annotations\[3\] \(id 1003\): category_id: missing"),
    "image height": (lambda d: d["images"][2].update(height=0),
                     r"images\[2\] \(id \d+\): height: expected a positive integer, got 0"),
    "repeated category name": (lambda d: d["categories"][2].update(name="box"),
                               r"categories\[2\] \(id 9\): name: 'box' repeats categories\[0\]"),
    "missing image file": (lambda d: d["images"][4].update(file_name="gone.png"),
                           r"images\[4\] \(id \d+\): file_name: .*gone\.png: no such file"),
    "no categories key": (lambda d: d.pop("categories"), r"instances\.json: missing key 'categories'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_annotations_name_file_entry_and_field(coco, tmp_path, case):
    edit, message = MALFORMED[case]
    bad = _broken(coco[0], tmp_path, edit)
    with pytest.raises(ProbeError) as info:
        CocoProbe(bad)
    assert str(info.value).startswith(str(bad) + ": ")
    assert len(str(info.value).splitlines()) == 1
    assert re.search(message, str(info.value)), str(info.value)


def test_invalid_json_gives_line_and_column(tmp_path, coco):
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ProbeError, match=r"instances\.json: not valid JSON: .* \(line 2, column 12\)"):
        CocoProbe(bad)


def test_image_of_another_size_is_an_error_when_read(coco, tmp_path):
    bad = _broken(coco[0], tmp_path, lambda d: [im.update(height=65) for im in d["images"]
                                                  if im["id"] == 100])
    with open(bad) as f:
        data = json.load(f)
    for a in data["annotations"]:  # keep the masks consistent with the new height
        if a["image_id"] == 100:
            a["segmentation"] = [rect_polygon(0, 0, 4, 4)]
    bad.write_text(json.dumps(data))
    probe = CocoProbe(bad)
    with pytest.raises(ProbeError, match=r"im100\.png: the image is 64 x 64 pixels .* width 64, height 65"):
        probe.images(0, 1)


def test_missing_pycocotools_says_how_to_install(coco, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'neurcore\[coco\]'"):
        CocoProbe(coco[0])


def test_dissect_a_coco_probe_from_the_command_line(coco, tmp_path):
    out = tmp_path / "d"
    code = main(["dissect", "--model", "default", "--layer", "conv4", "--probe", f"coco:{coco[0]}",
                 "--out", str(out), "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    n_units = json.loads((out / "layers" / "conv4" / "progress.json").read_text())["shape"][1]
    assert len(rows) == n_units > 1 and [r["unit"] for r in rows] == list(range(n_units))
    assert all(r["layer"] == "conv4" and r["method"] == "dissect" for r in rows)
    leaves = {leaf for r in rows if r["formula"] for leaf in parse(r["formula"]).leaves()}
    assert leaves and leaves <= {"box", "disc", "hot dog"}
    assert json.loads((out / "concepts.json").read_text())["names"] == ["box", "disc", "hot dog"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["probe"] == f"coco:{coco[0]}" and manifest["probe_images"] == N_IMAGES
    assert (out / "report" / "index.html").is_file()


# DatasetProbe


def samples(n=12, seed=1):
    """(image uint8 [64, 64, 3], masks bool [3, 64, 64] of box, disc, hot dog) pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image, _, truth = draw(i, rng)
        out.append((image, np.stack([truth[name] for name in COLOURS])))
    return out


class TensorDataset(torch.utils.data.Dataset):
    """A map-style Dataset of (float tensor [3, H, W] in [0, 1], bool tensor [3, h, w]) pairs."""

    def __init__(self, pairs):
        self.pairs, self.reads = pairs, 0

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        self.reads += 1
        image, masks = self.pairs[i]
        return torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(masks)


def test_dataset_probe_reads_tensors_arrays_pil_and_dicts():
    pairs = samples()
    names = list(COLOURS)
    truth = np.stack([m for _, m in pairs], axis=1)  # [concepts, images, h, w]
    dataset = TensorDataset(pairs)
    lazy = DatasetProbe(dataset, names, name="tensors")
    assert (lazy.n_images, lazy.image_size, lazy.mask_shape) == (12, (SIZE, SIZE), (SIZE, SIZE))
    assert dataset.reads == 1  # only the first sample, to learn the sizes
    assert np.array_equal(lazy.images(0, 12), np.stack([im for im, _ in pairs]))
    assert np.array_equal(lazy.concept_masks().to_dense(), truth)
    as_dicts = ((Image.fromarray(im), {n: m[k] for k, n in enumerate(names) if m[k].any()})
                for im, m in pairs)
    once = DatasetProbe(as_dicts, names, concept_categories=["shape", "shape", "stuff"], mask_shape=(32, 32),
                        image_size=48)
    assert once.n_images == 12 and once.images(3, 5).shape == (2, 48, 48, 3)
    small = np.array([[resize_nearest(m, (32, 32)) for m in row] for row in truth])
    assert np.array_equal(once.concept_masks().to_dense(), small)
    first = DatasetProbe(iter(pairs), names, n_images=4)
    assert first.n_images == 4 and np.array_equal(first.images(0, 4)[3], pairs[3][0])
    assert DatasetProbe(pairs, names, n_images=5).n_images == 5


def test_dataset_probe_errors_name_the_sample():
    pairs = samples(3)
    names = list(COLOURS)
    with pytest.raises(ProbeError, match=r"dataset: sample 0: masks: unknown concept 'zebra'"):
        DatasetProbe([(pairs[0][0], {"zebra": pairs[0][1][0]})], names)
    bad = pairs[:2] + [(pairs[2][0], pairs[2][1][:2])]
    probe = DatasetProbe(bad, names)
    with pytest.raises(ProbeError, match=r"sample 2: masks: 2 masks for 3 concept_names"):
        probe.image_concepts(2)
    with pytest.raises(ProbeError, match=r"sample 0: image: expected uint8 \[H, W, 3\]"):
        DatasetProbe([(pairs[0][0].astype(np.float32), pairs[0][1])], names)
    with pytest.raises(ProbeError, match=r"sample 1: expected a pair"):
        DatasetProbe(iter([pairs[0], pairs[1][0]]), names)
    with pytest.raises(ProbeError, match=r"sample 0: image: a float tensor image must have values in \[0, 1"):
        DatasetProbe([(torch.full((3, 8, 8), 2.0), pairs[0][1])], names)
    with pytest.raises(ProbeError, match=r"concept_names repeat"):
        DatasetProbe(pairs, ["a", "a", "b"])


@pytest.mark.parametrize("kind", ["dataset", "generator"])
def test_dissect_a_dataset_probe(tmp_path, kind):
    pairs = samples(24, seed=2)
    data = TensorDataset(pairs) if kind == "dataset" else (p for p in pairs)
    probe = DatasetProbe(data, list(COLOURS), name=f"my-{kind}")
    out = dissect("default", ["conv4"], probe=probe, out_dir=str(tmp_path / "d"), progress=False,
                  report=False)
    rows = [json.loads(line) for line in (tmp_path / "d" / "results.jsonl").read_text().splitlines()]
    n_units = json.loads((tmp_path / "d" / "layers" / "conv4" / "progress.json").read_text())["shape"][1]
    assert len(rows) == len(out) == n_units > 1 and [r["unit"] for r in rows] == list(range(n_units))
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["probe"] == f"my-{kind}"
    leaves = {leaf for r in out if r.formula is not None for leaf in parse(str(r.formula)).leaves()}
    assert leaves and leaves <= set(COLOURS)


def test_probe_images_takes_the_first_images_of_a_probe_of_files(coco):
    """``--probe-images N`` on a probe of files (coco:, folder:, broden:): its first N images, masks
    unchanged."""
    whole = open_probe(f"coco:{coco[0]}", image_size=32)
    first = open_probe(f"coco:{coco[0]}", image_size=32, n_images=4)
    assert first.n_images == 4 and whole.n_images == N_IMAGES
    assert np.array_equal(first.images(0, 4), whole.images(0, 4))
    assert first.concept_masks().n_images == 4
    assert np.array_equal(first.concept_masks().to_dense(), whole.concept_masks().to_dense()[:, :4])
    assert open_probe(f"coco:{coco[0]}", n_images=10 * N_IMAGES).n_images == N_IMAGES
    with pytest.raises(ProbeError, match="n_images must be >= 1"):
        open_probe(f"coco:{coco[0]}", n_images=0)
