"""NeurFlow and NeuCEPT circuits end to end: the planted circuit is recovered, fidelity separates
core neurons from random ones, runs resume, and bad input gets one clear error."""

import csv
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from neurcore import circuits, clustering  # noqa: E402
from neurcore.pipelines import circuit  # noqa: E402
from neurcore.cli import main  # noqa: E402
from neurcore.errors import InputError  # noqa: E402

FAST = dict(max_images=16, n_steps=8, top_k=30, n_random=4, progress=False)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    return out, circuit("default-circuit", None, ["conv4", "conv3"], str(out), **FAST)


def test_planted_circuit_recovered(planted):
    out, doc = planted
    for layer in ("conv4", "conv3"):
        assert doc["metrics"][layer]["recall"] >= 0.9, doc["metrics"]
    on_disk = json.loads((out / "circuit.json").read_text())
    assert on_disk["truth"] == doc["truth"] and on_disk["layers"] == ["logit", "conv4", "conv3"]
    ids = {n["id"] for n in on_disk["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in on_disk["edges"])
    for source in {e["source"] for e in on_disk["edges"]}:
        assert abs(sum(e["weight"] for e in on_disk["edges"] if e["source"] == source) - 1) < 1e-4
    for n in on_disk["nodes"]:
        assert all((out / p).is_file() for p in n["exemplars"])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"neurflow"} and rows[0]["layer"] == "logit"
    assert set(rows[0]["extra"]["core"]) <= set(doc["truth"]["conv4"])
    assert (out / "circuit.html").is_file()
    with open(out / "fidelity.csv") as f:
        fid = list(csv.DictReader(f))
    mask = next(r for r in fid if r["layer"] == "conv4" and r["mode"] == "mask" and r["scope"] == "layer")
    # the class logit depends on the core conv4 channels alone: masking them leaves only the bias
    assert float(mask["core_logit"]) < 0.5 * float(mask["random_logit_mean"])


def test_rerun_reuses_finished_layers(planted, monkeypatch):
    out, doc = planted

    def boom(*a, **k):
        raise AssertionError("integrated gradients recomputed on a rerun")

    monkeypatch.setattr("neurcore.attribution.LayerToLayerIntegratedGradients.attribute", boom)
    again = circuit("default-circuit", None, ["conv4", "conv3"], str(out), **FAST)
    assert again["nodes"] == doc["nodes"] and again["edges"] == doc["edges"]
    with pytest.raises(InputError, match="other settings"):
        circuit("default-circuit", None, ["conv4", "conv3"], str(out), **{**FAST, "n_steps": 9})


def test_default_model_fidelity(tmp_path):
    """Masking the core neurons costs the class far more than masking random sets; retaining them
    keeps far more."""
    doc = circuit("default", "circle", ["conv4"], str(tmp_path), **{**FAST, "max_images": 24})
    rows = {(r["mode"]): r for r in doc["fidelity"] if r["scope"] == "layer"}
    assert rows["mask"]["core_logit"] < rows["mask"]["random_logit_mean"] - 0.2
    assert rows["retain"]["core_logit"] > rows["retain"]["random_logit_mean"] + 0.2


def test_neucept_planted(tmp_path):
    doc = circuit("default-circuit", None, ["conv4"], str(tmp_path), method="neucept", n_runs=4,
                  **{**FAST, "n_random": 2})
    m = doc["metrics"]["conv4"]
    assert m["recall"] >= 0.9 and m["precision"] >= 0.6 and m["empirical_fdr"] <= m["target_fdr"], m
    node = next(n for n in doc["nodes"] if n["layer"] == "conv4")
    assert set(doc["truth"]["conv4"]) - set(node["neurons"]) == set() or m["recall"] < 1


def test_crops_and_groups():
    boxes = circuits.crop_grid(64)
    assert len(boxes) == 59 and (boxes[:, 2] - boxes[:, 0]).tolist().count(16) == 49
    assert len(circuits.crop_grid(224)) == 59
    with pytest.raises(InputError, match="no crops"):
        circuits.crop_grid(0, (0.5,), 0.5)
    with pytest.raises(InputError, match="granularities"):
        circuits.crop_grid(64, (1.5,))
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    x = np.concatenate([c + rng.normal(0, 0.3, (15, 2)) for c in centres])
    labels, k = clustering.ward_silhouette(x, 5)
    assert k == 3 and len(set(zip(labels, np.repeat([0, 1, 2], 15)))) == 3


def test_group_metric():
    acts = np.array([[1.0, 2.0], [0.5, 1.0], [0.0, 2.0]])
    m = circuits.group_metric(acts, [0, 1], acts.max(0))
    assert np.isclose(m[0], 1.0) and np.isclose(m[1], 0.5) and m[2] < 1e-2


def test_bad_input(tmp_path, capsys):
    with pytest.raises(InputError, match="not an output"):
        circuit("default", "unicorn", ["conv4"], str(tmp_path / "a"), **FAST)
    with pytest.raises(InputError, match="not upstream"):
        circuit("default", "circle", ["conv3", "conv4"], str(tmp_path / "b"), **FAST)
    with pytest.raises(InputError, match="not found"):
        circuit("default", "circle", ["conv9"], str(tmp_path / "c"), **FAST)
    assert main(["circuit", "--class", "unicorn", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unicorn" in err[0]
    assert not os.path.exists(tmp_path / "d" / "circuit.json")
