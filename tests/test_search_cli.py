"""`neurcore search`, the backend interface: results, activations, bad input, start-up."""

import json
import subprocess
import sys

import numpy as np
import pytest

from neurcore import search_npz
from neurcore.testing import blob_concepts, plant_units


def run(*args):
    return subprocess.run([sys.executable, "-m", "neurcore", "search", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(11)
    concepts = blob_concepts(rng, 20, 120, (8, 8))
    units, planted = plant_units(rng, concepts, 12)
    np.savez(d / "C.npz", masks=concepts.masks.to_dense(), names=np.array(concepts.names),
             categories=np.array(concepts.categories))
    np.savez(d / "U.npz", masks=units.to_dense())
    return d, concepts, units, planted


def test_search_writes_one_json_object_per_unit(files):
    d, concepts, units, planted = files
    out = run("--concepts", d / "C.npz", "--units", d / "U.npz", "--out", d / "R.jsonl", "--layer", "layer4")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (d / "R.jsonl").read_text().splitlines()]
    assert [r["unit"] for r in rows] == list(range(units.n))
    A = units.to_dense()
    for r in rows:
        mask = concepts.evaluate(r["formula"]).to_dense()[0]
        a = A[r["unit"]]
        assert r["iou"] == (mask & a).sum() / (mask | a).sum()  # recomputed from the string
        assert r["layer"] == "layer4" and r["method"] == "beam" and len(r["beam"]) <= 5


def test_search_dissect_method_and_python_function(files):
    d, concepts, units, _ = files
    out = run("--concepts", d / "C.npz", "--units", d / "U.npz", "--out", d / "D.jsonl", "--method", "dissect")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (d / "D.jsonl").read_text().splitlines()]
    same = search_npz(d / "C.npz", d / "U.npz", method="dissect")
    assert [(r["formula"], r["iou"]) for r in rows] == [(r.formula, r.iou) for r in same]
    assert all(r["length"] == 1 for r in rows)


def test_activations_are_binarized_at_the_top_quantile(files, tmp_path):
    d, concepts, units, _ = files
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(5, *units.sample_shape)).astype(np.float32)
    np.savez(tmp_path / "A.npz", activations=acts)
    thresholds = np.quantile(acts.reshape(5, -1), 1 - 0.01, axis=1)
    np.savez(tmp_path / "M.npz", masks=acts > thresholds[:, None, None, None])
    by_acts = search_npz(d / "C.npz", tmp_path / "A.npz", quantile=0.01)
    by_masks = search_npz(d / "C.npz", tmp_path / "M.npz")
    assert [(r.formula, r.iou, r.counts) for r in by_acts] == [(r.formula, r.iou, r.counts) for r in by_masks]
    assert all(r.counts["unit"] == round(0.01 * acts[0].size) for r in by_acts)


def bad_inputs(d, tmp):
    C, U = d / "C.npz", d / "U.npz"
    masks = np.load(C)["masks"]
    names = np.load(C)["names"]
    np.savez(tmp / "nomasks.npz", names=names)
    np.savez(tmp / "float.npz", masks=masks.astype(np.float32), names=names)
    np.savez(tmp / "fewnames.npz", masks=masks, names=names[:-1])
    np.savez(tmp / "dupnames.npz", masks=masks, names=np.array(["x"] * len(names)))
    np.savez(tmp / "shape.npz", masks=np.zeros((3, masks.shape[1], 8, 9), bool))
    acts = np.zeros((3, *masks.shape[1:]), np.float32)
    acts[1, 0, 0, 0] = np.nan
    np.savez(tmp / "nan.npz", activations=acts)
    acts[1, 0, 0, 0] = np.inf
    np.savez(tmp / "inf.npz", activations=acts)
    np.savez(tmp / "empty.npz", other=np.zeros(3))
    (tmp / "junk.npz").write_text("not a zip")
    return {
        "missing file": (["--concepts", tmp / "nope.npz", "--units", U], "nope.npz: no such file"),
        "missing key": (["--concepts", tmp / "nomasks.npz", "--units", U], "missing array 'masks'"),
        "units without arrays": (["--concepts", C, "--units", tmp / "empty.npz"], "needs an array 'masks' or 'activations'"),
        "not an npz": (["--concepts", tmp / "junk.npz", "--units", U], "not a readable .npz"),
        "non-bool masks": (["--concepts", tmp / "float.npz", "--units", U], "'masks' must be a bool array, got dtype float32"),
        "names count": (["--concepts", tmp / "fewnames.npz", "--units", U], "'names' has 19 entries but 'masks' has 20"),
        "duplicate names": (["--concepts", tmp / "dupnames.npz", "--units", U], "duplicate concept name 'x'"),
        "mismatched shapes": (["--concepts", C, "--units", tmp / "shape.npz"], r"is over samples \(120, 8, 9\) but the concept masks are over \(120, 8, 8\)"),
        "NaN activations": (["--concepts", C, "--units", tmp / "nan.npz"], "1 NaN or infinite values \\(first in unit 1\\)"),
        "infinite activations": (["--concepts", C, "--units", tmp / "inf.npz"], "NaN or infinite"),
        "length < 1": (["--concepts", C, "--units", U, "--length", "0"], "--length: must be >= 1, got 0"),
        "beam < 1": (["--concepts", C, "--units", U, "--beam", "-2"], "--beam: must be >= 1, got -2"),
        "bad quantile": (["--concepts", C, "--units", U, "--quantile", "1.5"], "--quantile: must lie in \\(0, 1\\)"),
        "missing option": (["--concepts", C], "the following arguments are required: --units"),
    }


def test_bad_input_exits_2_with_one_line_and_no_output(files, tmp_path):
    import re

    d = files[0]
    for case, (args, message) in bad_inputs(d, tmp_path).items():
        out_file = tmp_path / f"out-{case.replace(' ', '_')}.jsonl"
        res = run(*args, "--out", out_file) if case != "missing option" else run(*args)
        assert res.returncode == 2, (case, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), (case, res.stderr)
        assert not out_file.exists(), case
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_cuda_device_without_gpu_is_a_clear_error(files, tmp_path):
    import neurcore

    if neurcore.backends()["cuda"]["devices"]:
        pytest.skip("a GPU is usable here")
    d = files[0]
    res = run("--concepts", d / "C.npz", "--units", d / "U.npz", "--out", tmp_path / "g.jsonl", "--device", "cuda")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g.jsonl").exists()


def test_search_path_does_not_import_torch(files, tmp_path):
    d = files[0]
    code = ("import sys; from neurcore.cli import main; "
            f"rc = main(['search', '--concepts', r'{d / 'C.npz'}', '--units', r'{d / 'U.npz'}', "
            f"'--out', r'{tmp_path / 'x.jsonl'}']); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_search_optimal_and_clustered_methods(files, tmp_path):
    d, concepts, units, _ = files
    out = run("--concepts", d / "C.npz", "--units", d / "U.npz", "--out", tmp_path / "o.jsonl", "--method", "optimal")
    assert out.returncode == 0, out.stderr
    opt = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    beam = [json.loads(line) for line in (d / "R.jsonl").read_text().splitlines()] if (d / "R.jsonl").exists() else None
    assert all(r["method"] == "optimal" and r["extra"]["optimal"] for r in opt)
    if beam:
        assert all(o["iou"] >= b["iou"] for o, b in zip(opt, beam))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "A.npz", activations=rng.random((3, *units.sample_shape)).astype(np.float32))
    out = run("--concepts", d / "C.npz", "--units", tmp_path / "A.npz", "--out", tmp_path / "c.jsonl",
              "--method", "clustered", "--length", "2")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["ranges"]) == 5 for r in rows)
    res = run("--concepts", d / "C.npz", "--units", d / "U.npz", "--out", tmp_path / "x.jsonl", "--method", "clustered")
    assert res.returncode == 2 and "needs an array 'activations'" in res.stderr


@pytest.mark.parametrize("compress", [False, True])
def test_masks_are_packed_from_the_file_in_chunks(tmp_path, monkeypatch, compress):
    """Masks are read a few rows at a time (never the whole bool array), compressed or not; the bits
    equal packing the loaded array, and a truncated file is a clear error."""
    from neurcore import BitMasks
    from neurcore.rules import npz as _npz

    monkeypatch.setattr(_npz, "_CHUNK_BYTES", 500)  # rows of 3 x 7 x 9 = 189 bytes: 2 rows a chunk
    rng = np.random.default_rng(5)
    masks = rng.random((11, 3, 7, 9)) < 0.3
    masks[4] = False
    masks[5] = True
    save = np.savez_compressed if compress else np.savez
    save(tmp_path / "C.npz", masks=masks, names=np.array([f"c{i}" for i in range(11)]))
    save(tmp_path / "U.npz", masks=np.asfortranarray(masks[:3]))  # Fortran order: read whole
    concepts = _npz.load_concepts(tmp_path / "C.npz")
    assert np.array_equal(concepts.masks.to_dense(), masks)
    assert concepts.masks.layout == BitMasks.from_dense(masks).layout
    assert np.array_equal(_npz.load_units(tmp_path / "U.npz", (3, 7, 9)).to_dense(), masks[:3])
    if not compress:
        data = (tmp_path / "C.npz").read_bytes()
        cut = 800  # inside the masks member's data (header ~200 bytes, then 11 x 189 bytes)
        assert data[:4] == b"PK\x03\x04" and data[30:39] == b"masks.npy"
        (tmp_path / "T.npz").write_bytes(data[:cut] + bytes(255 - b for b in data[cut:cut + 64]) + data[cut + 64:])
        with pytest.raises(_npz.InputError, match="T.npz"):
            _npz.load_concepts(tmp_path / "T.npz")
