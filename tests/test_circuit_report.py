"""The circuit view: cards, edges drawn to scale, escaping, bad input, and the page in a real browser."""

import copy
import re
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from neurcore.errors import InputError
from neurcore.report import write_circuit_html
from neurcore.report._circuit import CARD_H, CARD_W, MAX_THUMBS

ODD = 'layer<1>&"x"'  # a layer name that must be escaped everywhere it appears
CROP_COLOUR = (255, 0, 255)  # magenta: nothing else on the page has it


def write_crop(out_dir, rel, seed):
    rng = np.random.default_rng(seed)
    crop = np.empty((32, 32, 3), np.uint8)
    crop[:] = CROP_COLOUR
    crop[8:24, 8:24] = rng.integers(0, 256, (16, 16, 3))
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(crop).save(path)
    return rel


def small_circuit(out_dir):
    """Three layers (one with an odd name), six nodes, one node with more crops than a card shows."""
    def node(layer, group, neurons, n_crops, importance, label=None):
        nid = f"{layer}/{group}"
        stem = f"crops/{layer.replace('/', '_')}_{group}"
        crops = [write_crop(out_dir, f"{stem}_{j} x.png", 100 * group + 10 * j + len(layer)) for j in range(n_crops)]
        return {"id": nid, "layer": layer, "group": group, "neurons": neurons, "exemplars": crops,
                "importance": importance, "label": label}

    nodes = [node("head", 0, [5], 1, 1.0, "circle"),
             node(ODD, 0, [12, 40, 77], 7, 0.42, "<b>round</b> & edges"),
             node(ODD, 1, [3], 2, 0.3),
             node(ODD, 2, [8, 9], 0, 0.1),
             node("conv3", 0, [3, 9], 5, 0.5),
             node("conv3", 1, [11], 3, 0.2)]
    up, a, b, c, d, e = (n["id"] for n in nodes)
    edges = [{"source": up, "target": a, "weight": 0.55}, {"source": up, "target": b, "weight": 0.3},
             {"source": up, "target": c, "weight": 0.15}, {"source": a, "target": d, "weight": 0.8},
             {"source": a, "target": e, "weight": 0.2}, {"source": b, "target": d, "weight": 1.0},
             {"source": c, "target": e, "weight": 0.0}]
    return {"model": "default", "class": "circle", "class_index": 5, "method": "neurflow",
            "layers": ["head", ODD, "conv3"], "nodes": nodes, "edges": edges,
            "truth": {ODD: [12, 40], "conv3": [3, 9]},
            "metrics": {ODD: {"precision": 0.5, "recall": 1.0, "tau": 16},
                        "conv3": {"precision": 2 / 3, "recall": 1.0, "target_fdr": 0.1,
                                  "empirical_fdr": None}},
            "fidelity": [{"layer": ODD, "mode": "mask", "core": 0.12, "random_mean": 0.85, "random_std": 0.03,
                          "k": 16},
                         {"layer": "conv3", "scope": "layer", "mode": "mask", "core": 1.0, "random_mean": 1.0,
                          "random_std": 0.0, "k": 8, "core_logit": 0.125, "random_logit_mean": 0.979,
                          "random_logit_std": 0.030, "core_logit_drop": 0.875, "random_logit_drop": 0.021,
                          "logit_z": -28.36},
                         {"layer": "conv3", "scope": "layer", "mode": "retain", "core": 0.7,
                          "random_mean": 0.2, "random_std": 0.0, "k": 8, "core_logit": 0.9,
                          "random_logit_mean": 0.7,
                          "random_logit_std": 0.1, "core_logit_drop": 0.1, "random_logit_drop": 0.3,
                          "logit_z": 2.0}]}


class Page(HTMLParser):
    """Cards, edge lines, images and links of a written page, attribute values unescaped."""

    def __init__(self):
        super().__init__()
        self.cards, self.lines, self.srcs, self.refs, self.h2 = {}, [], [], [], []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "card":
            style = dict(kv.split(":") for kv in a["style"].split(";"))
            self.cards[a["data-node"]] = {"layer": a["data-layer"], "id": a["id"],
                                          "x": float(style["left"][:-2]), "y": float(style["top"][:-2])}
        elif tag == "line":
            self.lines.append({k: a[k] for k in ("data-source", "data-target", "x1", "y1", "x2", "y2")}
                              | {"stroke": float(a["stroke-width"]), "weight": float(a["data-weight"])})
        elif tag == "img":
            self.srcs.append(a["src"])
        elif tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        for key in ("src", "href"):
            if key in a:
                self.refs.append(a[key])
        if tag in ("link", "script") and ("src" in a or "href" in a):
            self.refs.append("EXTERNAL " + tag)

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


def parse(path):
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_cards_edges_and_images(tmp_path):
    circuit = small_circuit(tmp_path)
    path = write_circuit_html(tmp_path, circuit)
    assert path == tmp_path / "circuit.html"
    page = parse(path)

    assert set(page.cards) == {n["id"] for n in circuit["nodes"]}
    assert {n["id"]: n["layer"] for n in circuit["nodes"]} == {k: c["layer"] for k, c in page.cards.items()}
    assert any(h.startswith(ODD) for h in page.h2)

    # One line per edge, from the bottom centre of the upper card to the top centre of the lower one.
    assert sorted((ln["data-source"], ln["data-target"]) for ln in page.lines) == sorted(
        (e["source"], e["target"]) for e in circuit["edges"])
    for ln in page.lines:
        up, low = page.cards[ln["data-source"]], page.cards[ln["data-target"]]
        assert float(ln["x1"]) == pytest.approx(up["x"] + CARD_W / 2, abs=0.1)
        assert float(ln["y1"]) == pytest.approx(up["y"] + CARD_H)
        assert float(ln["x2"]) == pytest.approx(low["x"] + CARD_W / 2, abs=0.1)
        assert float(ln["y2"]) == pytest.approx(low["y"])
        assert low["y"] > up["y"] + CARD_H

    # Stroke widths proportional to the weights: same order, same ratios, zero for a zero weight.
    by_weight = sorted(page.lines, key=lambda ln: ln["weight"])
    strokes = [ln["stroke"] for ln in by_weight]
    assert strokes == sorted(strokes) and len(set(strokes)) == len({ln["weight"] for ln in page.lines})
    heaviest = by_weight[-1]
    for ln in page.lines:
        assert ln["stroke"] == pytest.approx(heaviest["stroke"] * ln["weight"] / heaviest["weight"], abs=2e-3)
    assert by_weight[0]["stroke"] == 0

    # Cards of one band are evenly spaced and do not overlap.
    for layer in circuit["layers"]:
        xs = sorted(c["x"] for c in page.cards.values() if c["layer"] == layer)
        steps = np.diff(xs)
        assert np.all(steps >= CARD_W) and (len(steps) == 0 or np.ptp(steps) <= 0.2)

    # Up to MAX_THUMBS crops per card; every src is a relative path to a file that exists.
    assert len(page.srcs) == sum(min(len(n["exemplars"]), MAX_THUMBS) for n in circuit["nodes"])
    assert all((tmp_path / unquote(src)).is_file() for src in page.srcs)
    assert all(not re.match(r"^[a-z]+:|^//", ref) for ref in page.refs), page.refs

    text = path.read_text(encoding="utf-8")
    assert ODD not in text and "<b>round</b>" not in text
    assert html_escaped(ODD) in text and "&lt;b&gt;round&lt;/b&gt; &amp; edges" in text
    assert "data-images-loaded" in text
    assert "<table id='truth'>" in text and "<table id='fidelity'>" in text and "0.667" in text
    assert "tau 16" in text and "target FDR 0.100" in text and "not checkable" in text


def test_fidelity_shows_the_logit_where_accuracy_saturates(tmp_path):
    """A mask row whose accuracy is 1.000 for core and random sets alike still shows the core apart:
    its logit, the random sets' mean ± std, the drops and the distance in random sds (bold beyond 3);
    a row without logit fields shows dashes."""
    path = write_circuit_html(tmp_path, small_circuit(tmp_path))
    table = re.search(r"<table id='fidelity'>(.*?)</table>", path.read_text(encoding="utf-8")).group(1)
    rows = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", table)[1:]]
    assert len(rows) == 3 and all(len(r) == 11 for r in rows)
    old, saturated, retain = rows
    assert old[7:] == ["-", "-", "-", "-"] and old[6] == "-24.3"
    assert saturated[4:7] == ["1.000", "1.000 ± 0.000", "-"]
    assert saturated[7:] == ["0.125", "0.979 ± 0.030", "87.5% / 2.1%", "<b>-28.4</b>"]
    assert retain[10] == "+2.0"


def html_escaped(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def test_optional_sections_are_left_out_and_hundreds_of_nodes_fit(tmp_path):
    crop = write_crop(tmp_path, "c.png", 0)
    nodes = [{"id": "head/0", "layer": "head", "group": 0, "neurons": [1], "exemplars": [crop]}]
    nodes += [{"id": f"l/{g}", "layer": "l", "group": g, "neurons": [g], "exemplars": [crop] * 6}
              for g in range(300)]
    edges = [{"source": "head/0", "target": f"l/{g}", "weight": 1 / 300} for g in range(300)]
    path = write_circuit_html(tmp_path, {"layers": ["head", "l"], "nodes": nodes, "edges": edges})
    page = parse(path)
    assert len(page.cards) == 301 and len(page.lines) == 300
    xs = sorted(c["x"] for c in page.cards.values() if c["layer"] == "l")
    assert xs[0] >= 0 and np.all(np.diff(xs) >= CARD_W)
    width = int(re.search(r"class='canvas' id='circuit' style='width:(\d+)px", path.read_text()).group(1))
    assert xs[-1] + CARD_W <= width
    text = path.read_text()
    assert "id='truth'" not in text and "id='fidelity'" not in text and "overflow-x: auto" in text


def broken(mutate):
    def make(tmp_path):
        circuit = copy.deepcopy(small_circuit(tmp_path))
        mutate(circuit)
        return circuit
    return make


@pytest.mark.parametrize("make, message", [
    (broken(lambda c: c.pop("nodes")), "missing field 'nodes'"),
    (broken(lambda c: c.pop("edges")), "missing field 'edges'"),
    (broken(lambda c: c["edges"][1].update(target="conv9/0")), "edges[1].target 'conv9/0' is not the id of a node"),
    (broken(lambda c: c["edges"][0].update(source="nope")), "edges[0].source 'nope'"),
    (broken(lambda c: c["edges"][2].update(weight=-0.1)), "edges[2].weight must be >= 0"),
    (broken(lambda c: c["edges"][3].update(source="conv3/0", target="head/0")), "edges[3].source 'conv3/0'"),
    (broken(lambda c: c["nodes"][4].update(layer="conv9")), "nodes[4].layer 'conv9' is not in layers"),
    (broken(lambda c: c["nodes"].append(dict(c["nodes"][0]))), "nodes[6].id 'head/0'"),
    (broken(lambda c: c["nodes"][1].pop("id")), "nodes[1] is missing field 'id'"),
    (broken(lambda c: c.update(truth={"conv3": "3, 9"})), "truth['conv3']"),
])
def test_bad_circuit_names_the_field(tmp_path, make, message):
    with pytest.raises(InputError) as err:
        write_circuit_html(tmp_path, make(tmp_path))
    assert message in str(err.value)
    assert not (tmp_path / "circuit.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def headless(tmp_path, *args, url):
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", *args, url],
                         check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's chromium (.ci/run does) to test the "
                                            "circuit view in a real browser")
def test_circuit_view_in_a_headless_browser(tmp_path):
    circuit = small_circuit(tmp_path)
    url = write_circuit_html(tmp_path, circuit).as_uri()
    dom = headless(tmp_path, "--dump-dom", url=url)
    total = re.search(r'data-images-total="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total and loaded, dom[:500]
    expect = sum(min(len(n["exemplars"]), MAX_THUMBS) for n in circuit["nodes"])
    assert int(total.group(1)) == int(loaded.group(1)) == expect
    assert len(re.findall(r'<div class="card"', dom)) == len(circuit["nodes"])
    assert len(re.findall(r"<line ", dom)) == len(circuit["edges"])

    shot = tmp_path / "shot.png"
    headless(tmp_path, f"--screenshot={shot}", "--window-size=1400,2200", url=url)
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert pixels.shape[:2] == (2200, 1400)
    assert pixels.std(axis=(0, 1)).max() > 10  # not a blank page
    magenta = np.all(np.abs(pixels - np.array(CROP_COLOUR)) < 8, axis=-1)
    assert magenta.sum() > 200  # the crops were drawn, not just counted as loaded
