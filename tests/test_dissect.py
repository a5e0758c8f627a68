"""End-to-end dissection: results, report, resume after a kill, bad inputs, and the report in a browser."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from neurcore.pipelines import dissect
from neurcore.rules import parse
from neurcore.models import ModelSpec, PlantedUnit
from neurcore.probe import SyntheticWorld, write_broden


def tiny_spec(planted=()):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                 torch.nn.Conv2d(8, 6, 3, padding=1))
    return ModelSpec(module, name="tiny", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                     planted=[PlantedUnit("3", parse(f)) for f in planted])


# Formulas whose region fits the top quantile (DEFAULT_PLANTED's rule); beam search cannot reach the OR
# one, whose prefix (green OR blue) is far larger than the unit.
PLANTED = ["(circle AND purple)", "(street AND circle)", "((square AND blue) AND NOT room)",
           "((triangle AND red) AND NOT striped)", "((green OR blue) AND circle)"]


def test_dissect_python_api_with_planted_units(tmp_path):
    world = SyntheticWorld(200, 32, seed=5)
    out = dissect(tiny_spec(PLANTED), ["3"], world, method="beam", out_dir=str(tmp_path / "d"), progress=False,
                  batch_size=32)
    assert len(out) == 6 + len(PLANTED)
    planted = [r for r in out if r.planted]
    assert [r.planted["formula"] for r in planted] == [str(parse(f)) for f in PLANTED]
    assert [r.planted["recovered"] for r in planted] == [True] * 4 + [False]
    assert all(r.planted["iou_not_worse"] for r in planted[:4]) and planted[4].planted["mask_iou"] < 0.9
    lines = (tmp_path / "d" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["unit"] for line in lines] == list(range(len(out)))
    header = (tmp_path / "d" / "results.csv").read_text().splitlines()[0]
    assert header.startswith("layer,unit,method,formula,iou")
    assert header.endswith("planted_formula,planted_iou,planted_mask_iou,recovered,iou_not_worse")
    index = (tmp_path / "d" / "report" / "index.html").read_text()
    assert "Recovered 4 of 5 planted units exactly (80.0%); " in index
    assert len(os.listdir(tmp_path / "d" / "report" / "img")) == len(out)


@pytest.mark.parametrize("method", ["optimal", "clustered"])
def test_dissect_optimal_and_clustered(tmp_path, method):
    world = SyntheticWorld(80, 32, seed=7)
    out = dissect(tiny_spec(PLANTED[:2]), ["3"], world, method=method, length=2, out_dir=str(tmp_path / "d"),
                  progress=False)
    assert len(out) == 8 and all(r.method == method for r in out)
    if method == "optimal":
        assert all(r.extra["optimal"] for r in out)
    else:
        assert all(r.ranges for r in out)
    assert all(r.planted and "recovered" in r.planted for r in out[-2:])
    assert (tmp_path / "d" / "report" / "index.html").is_file()


def test_default_model_trains_once_and_is_cached(tmp_path, monkeypatch):
    import neurcore.models._default as models

    monkeypatch.setenv("NEURCORE_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "DEFAULT_TRAIN_IMAGES", 128)
    monkeypatch.setattr(models, "DEFAULT_EPOCHS", 1)
    first = models.default_model(progress=False)
    assert len(os.listdir(tmp_path)) == 1 and first.input_size == 64
    assert [u.formula is not None for u in first.planted] == [True] * 28 + [False] * 4
    assert [u.identifiable for u in first.planted[:28]] == [True] * 20 + [False] * 8
    second = models.default_model(progress=False)
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values()):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def broden_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("broden") / "b"
    write_broden(d, SyntheticWorld(24, 64, seed=2), image_size=96)
    return d


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "neurcore", "dissect", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_resnet18_on_a_broden_directory(broden_dir, tmp_path):
    res = cli("--model", "resnet18", "--layer", "layer4", "--probe", f"broden:{broden_dir}", "--out", tmp_path / "r",
              "--quiet")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 512 and rows[0]["layer"] == "layer4" and rows[0]["method"] == "dissect"
    assert (tmp_path / "r" / "report" / "layer4.html").is_file()


def test_killed_dissection_resumes_to_the_same_results(broden_dir, tmp_path):
    args = ["--model", "resnet18", "--layer", "layer3", "--layer", "layer4", "--probe", f"broden:{broden_dir}",
            "--method", "beam", "--length", "2", "--batch-size", "4", "--quiet"]
    whole = cli(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    expect = (tmp_path / "whole" / "results.jsonl").read_text()
    for k, delay in enumerate([2.5, 4.0, 6.0]):
        out = tmp_path / f"killed{k}"
        proc = subprocess.Popen([sys.executable, "-m", "neurcore", "dissect", *args, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = cli(*args, "--out", out)
        assert again.returncode == 0, again.stderr
        assert (out / "results.jsonl").read_text() == expect


def test_bad_inputs_give_one_clear_error(broden_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(broden_dir, bad)
    cases = {
        "unknown layer": (["--model", "resnet18", "--layer", "layer5", "--probe", f"broden:{broden_dir}"],
                          "layer 'layer5' not found in the model; did you mean layer4"),
        "missing Broden file": (["--model", "resnet18", "--layer", "layer4", "--probe", f"broden:{tmp_path / 'nope'}"],
                                "nope: no such directory"),
        "empty probe": (["--model", "resnet18", "--layer", "layer4", "--probe", f"folder:{tmp_path}"],
                        "no images"),
    }
    for case, (args, message) in cases.items():
        res = cli(*args, "--out", tmp_path / "o", "--quiet")
        assert res.returncode == 2, (case, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (case, res.stderr)
    os.remove(bad / "c_color.csv")
    res = cli("--model", "resnet18", "--layer", "layer4", "--probe", f"broden:{bad}", "--out", tmp_path / "o2", "--quiet")
    assert res.returncode == 2 and "c_color.csv: no such file" in res.stderr
    shutil.rmtree(bad)
    shutil.copytree(broden_dir, bad)
    png = next(p for p in sorted(os.listdir(bad / "images")) if p.endswith(".png"))
    (bad / "images" / png).write_bytes(b"\x89PNG broken")
    res = cli("--model", "resnet18", "--layer", "layer4", "--probe", f"broden:{bad}", "--out", tmp_path / "o3", "--quiet")
    assert res.returncode == 2 and f"{png}: corrupt segmentation PNG" in res.stderr and len(res.stderr.splitlines()) == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's chromium (.ci/run does) to test the "
                                            "report in a real browser")
def test_report_loads_in_a_headless_browser(tmp_path):
    world = SyntheticWorld(120, 32, seed=6)
    dissect(tiny_spec(PLANTED[:2]), ["3"], world, method="dissect", out_dir=str(tmp_path / "d"), progress=False)
    for page in ("index.html", "3.html"):
        url = (tmp_path / "d" / "report" / page).as_uri()
        res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                              "--disable-component-update", "--disable-sync", "--no-first-run",
                              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        dom = res.stdout
        import re

        total = re.search(r'data-images-total="(\d+)"', dom)
        loaded = re.search(r'data-images-loaded="(\d+)"', dom)
        assert total and loaded, dom[:500]
        assert loaded.group(1) == total.group(1)
        if page == "3.html":
            assert int(total.group(1)) == 8  # one strip per unit: 6 units + 2 planted
        else:
            assert re.search(r"Recovered [0-2] of 2 planted units", dom)
