"""The dissection report at scale: paginated layer pages, compressed lazy strips drawn from TopImages,
an index listing every unit in a sortable table, and a report size that stays small for thousands of
units."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neurcore.activations._top import TopImages
from neurcore.probe import SyntheticWorld
from neurcore.report import write_report
from neurcore.report._dissection import EAGER_STRIPS
from neurcore.report._html import THUMB, image_format, image_strip
from neurcore.results import Explanation
from neurcore.rules import ConceptSet, parse


class _Page(HTMLParser):
    """Every tag's attributes, in order, and the text of the page."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path) -> _Page:
    p = _Page()
    p.feed(Path(path).read_text())
    return p


def fake_run(n_images: int, layers: dict, k: int = 5, size: int = 32, planted_units: int = 0, seed: int = 0):
    """(probe, concepts, acts, tops, results): random activations [n_images, units, 4, 4] per layer and
    fake explanations over the probe's concept names (one unit in 7 without a formula)."""
    probe = SyntheticWorld(n_images=n_images, size=size, seed=seed)
    concepts = ConceptSet(probe.concept_masks(), probe.concept_names, probe.concept_categories)
    cat = dict(zip(probe.concept_names, probe.concept_categories))
    rng = np.random.default_rng(seed)
    acts, tops, results = {}, {}, []
    for layer, units in layers.items():
        acts[layer] = rng.random((n_images, units, 4, 4), dtype=np.float32) ** 3
        tops[layer] = TopImages.from_acts(acts[layer], k)
        for u in range(units):
            names = list(rng.choice(probe.concept_names, size=1 + u % 3, replace=False))
            formula = None if u % 7 == 3 else str(parse(" OR ".join(names)))
            planted = None
            if u < planted_units:
                iou = round(float(rng.random()) * 0.5, 3)
                planted = {"formula": str(parse(names[0])), "iou": iou, "mask_iou": 0.5, "recovered": bool(u % 2),
                           "iou_not_worse": True}
            iou = float(rng.random()) * 0.3 if formula else 0.0
            cats = [cat[n] for n in parse(formula).leaves()] if formula else None
            results.append(Explanation(unit=u, method="beam", formula=formula, iou=iou, length=len(names),
                                       layer=layer, categories=cats, detector=iou > 0.04, planted=planted))
    return probe, concepts, acts, tops, results


def cards_of(path) -> list[int]:
    """The units of a layer page's cards, in page order."""
    return [int(a["id"][4:]) for t, a in parse_page(path).tags if t == "div" and a.get("id", "").startswith("unit")]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """600 units of layer ``conv.3`` and 10 of ``fc``, 256 units a page, 3 planted units per layer (1 of
    each recovered)."""
    out = tmp_path_factory.mktemp("big")
    probe, concepts, _, tops, results = fake_run(40, {"conv.3": 600, "fc": 10}, planted_units=3)
    index = write_report(str(out), results, {"model": "fake", "k": None}, probe, concepts, tops,
                         units_per_page=256)
    return Path(index).parent, results, tops


def test_layer_pages_are_paginated_best_first_with_working_links(big):
    root, results, _ = big
    files = ["conv_3.html", "conv_3-2.html", "conv_3-3.html"]
    assert all((root / f).is_file() for f in files) and not (root / "conv_3-4.html").exists()
    assert (root / "fc.html").is_file() and not (root / "fc-2.html").exists()
    units = [cards_of(root / f) for f in files]
    assert [len(u) for u in units] == [256, 256, 88]
    iou = {r.unit: r.iou for r in results if r.layer == "conv.3"}
    order = [u for page in units for u in page]
    assert sorted(order) == list(range(600))
    assert order == sorted(iou, key=lambda u: (-iou[u], u))  # best IoU first, across pages
    for p, f in enumerate(files):
        rel = {a["rel"]: a["href"] for t, a in parse_page(root / f).tags if t == "a" and "rel" in a}
        assert rel.get("prev") == (files[p - 1] if p else None)
        assert rel.get("next") == (files[p + 1] if p + 1 < len(files) else None)
        hrefs = [a["href"] for t, a in parse_page(root / f).tags if t == "a"]
        assert all(g in hrefs for g in files if g != f) and "index.html" in hrefs
    assert "page 2 of 3" in (root / files[1]).read_text()
    assert "page 1 of" not in (root / "fc.html").read_text()


def test_every_link_and_image_resolves_and_nothing_is_external(big):
    root, _, _ = big
    ids = {f.name: {a["id"] for t, a in parse_page(f).tags if "id" in a} for f in root.glob("*.html")}
    for f in root.glob("*.html"):
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "<link" not in text
        assert "<script src" not in text
        for t, a in parse_page(f).tags:
            target = a.get("href") if t == "a" else a.get("src") if t == "img" else None
            if target is None:
                continue
            name, _, anchor = target.partition("#")
            assert (root / name).is_file(), (f.name, target)
            assert not anchor or anchor in ids[name], (f.name, target)


def test_strips_are_compressed_lazy_and_decodable(big):
    root, _, _ = big
    fmt, suffix = image_format()
    assert fmt in ("WEBP", "JPEG")
    imgs = [a for t, a in parse_page(root / "conv_3-2.html").tags if t == "img"]
    assert len(imgs) == 256
    for n, a in enumerate(imgs):
        assert a["src"].endswith(suffix)
        with Image.open(root / a["src"]) as im:
            assert im.format == fmt and im.size == (5 * THUMB + 4 * 3, THUMB)
            assert (int(a["width"]), int(a["height"])) == im.size
            im.load()
        assert (a.get("loading") == "lazy") == (n >= EAGER_STRIPS)
    files = os.listdir(root / "img")
    assert len(files) == 610 and all(f.endswith(suffix) for f in files)


def test_index_lists_every_unit_once_with_a_link_to_its_card(big):
    root, results, _ = big
    index = parse_page(root / "index.html")
    table = (root / "index.html").read_text().split("<table id='units' class='sortable'>")[1]
    links = re.findall(r"<a href='([^'#]+)#unit(\d+)'>(\d+)</a>", table.split("</table>")[0])
    assert len(links) == len(results) == 610
    pages = {"conv.3": {u: f for f in ("conv_3.html", "conv_3-2.html", "conv_3-3.html") for u in cards_of(root / f)},
             "fc": {u: "fc.html" for u in range(10)}}
    seen = set()
    for fname, unit, text in links:
        layer = "fc" if fname.startswith("fc") else "conv.3"
        assert unit == text and pages[layer][int(unit)] == fname
        seen.add((layer, int(unit)))
    assert seen == {(r.layer, r.unit) for r in results}
    heads = [a for t, a in index.tags if t == "th" and "data-sort" in a]
    assert [h["data-sort"] for h in heads] == ["order", "num", "text", "text", "num"]
    assert heads[0]["data-order"] == '["conv.3", "fc"]' and heads[4]["aria-sort"] == "descending"
    assert "table.sortable" in (root / "index.html").read_text() and "Intl.Collator" in (root / "index.html").read_text()
    ious = [float(x) for x in re.findall(r"<td>(\d\.\d{3})(?=<tr>|</tbody>)", table)]
    assert len(ious) == 610 and ious == sorted(ious, reverse=True)


def test_index_keeps_the_planted_table_and_layer_sections(big):
    root, results, _ = big
    text = (root / "index.html").read_text()
    assert ("<p id='planted-recovery'>Recovered 2 of 6 planted units exactly (33.3%); 6 of 6 (100.0%) scored "
            "at least the planted formula's IoU. Recovered means") in text
    assert text.count("<td class='miss'>no</td>") == 4 and text.count("<td class='ok'>yes</td>") == 2 + 6
    planted = sorted((r for r in results if r.planted), key=lambda r: (r.layer != "conv.3", -r.iou, r.unit))
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td><td class='formula'>([^<]*)</td>", text)
    assert rows == [(r.layer, str(r.unit), r.planted["formula"]) for r in planted]  # by layer, best first
    assert "<h2><a href='conv_3.html'>Layer conv.3</a></h2><p>pages: <a href='conv_3.html'>1</a>" in text
    assert "<h2><a href='fc.html'>Layer fc</a></h2><p>10 units;" in text
    assert "<th>concept category</th><th>units led by it</th><th>units using it</th>" in text


def test_empty_slots_are_skipped_and_strips_show_the_top_maps(tmp_path):
    probe, concepts, acts, tops, results = fake_run(3, {"4": 6}, k=5)
    assert (tops["4"].index[:, 3:] == -1).all() and (tops["4"].index[:, :3] >= 0).all()
    write_report(str(tmp_path), results, {}, probe, concepts, tops)
    root = tmp_path / "report"
    imgs = {a["alt"]: a for t, a in parse_page(root / "4.html").tags if t == "img"}
    assert len(imgs) == 6

    def expected(u):
        top, r = tops["4"], results[u]
        idx = top.index[u, :3]
        expl = concepts.evaluate(r.formula) if r.formula else None
        masks = [None if expl is None else expl.on_image(int(i))[0] for i in idx]
        return image_strip(list(probe.images(0, 3)[idx]), list(acts["4"][idx, u]), masks,
                           float(acts["4"][:, u].max())).astype(np.float32)

    for u in range(6):
        a = imgs[f"top images of unit {u}"]
        with Image.open(root / a["src"]) as im:
            got = np.asarray(im.convert("RGB"), np.float32)
        assert got.shape == (THUMB, 3 * THUMB + 2 * 3, 3)
        own = np.abs(got - expected(u)).mean()
        other = np.abs(got - expected((u + 1) % 6)).mean()
        assert own < other  # its own top images and maps, not another unit's


def test_top_images_larger_than_k_are_cut_and_bad_inputs_refused(tmp_path):
    probe, concepts, _, tops, results = fake_run(12, {"a": 3}, k=8)
    write_report(str(tmp_path), results, {}, probe, concepts, tops, top_images=2)
    with Image.open(next((tmp_path / "report" / "img").iterdir())) as im:
        assert im.size == (2 * THUMB + 3, THUMB)
    with pytest.raises(ValueError, match="no top images for layer"):
        write_report(str(tmp_path), results, {}, probe, concepts, {})
    with pytest.raises(ValueError, match="units_per_page"):
        write_report(str(tmp_path), results, {}, probe, concepts, tops, units_per_page=0)


def test_report_of_3840_units_stays_small(tmp_path):
    """4 layers of 960 units: strips + pages per unit small enough for < 30 MB at 3,840 units."""
    probe, concepts, _, tops, results = fake_run(120, {f"layer{i}": 960 for i in range(1, 5)}, size=64)
    write_report(str(tmp_path), results, {"model": "fake"}, probe, concepts, tops)
    root = tmp_path / "report"
    strips = sum(f.stat().st_size for f in (root / "img").iterdir())
    pages = sum(f.stat().st_size for f in root.glob("*.html"))
    index = (root / "index.html").stat().st_size
    per_unit = (strips + pages) / len(results)
    print(f"\n3840 units: strips {strips / 1e6:.1f} MB, pages {pages / 1e6:.2f} MB (index {index / 1e6:.2f} MB), "
          f"{per_unit / 1e3:.1f} kB per unit, {len(list(root.glob('*.html')))} pages")
    assert len(results) == 3840 and len(list(root.glob("*.html"))) == 1 + 4 * 4
    assert per_unit * 3840 < 30e6
    assert index < 1e6


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _dump_dom(url: str, profile, *flags) -> str:
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run", *flags,
                          f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's chromium (.ci/run does) to test the "
                                            "report in a real browser")
def test_index_sorts_and_pages_load_in_a_headless_browser(big, tmp_path):
    """A harness page clicks the index's headers in a frame: sorted by unit, then by layer; the top of a
    layer page loads its strips (the rest are lazy)."""
    root = big[0]
    harness = root / "harness.html"
    harness.write_text(
        "<iframe id='f' src='index.html'></iframe><script>var f = document.getElementById('f');"
        "f.onload = function () { var d = f.contentDocument, th = d.querySelectorAll('#units th');"
        "th[1].click(); var a = Array.prototype.map.call(d.querySelectorAll('#units tbody tr'),"
        " function (r) { return r.cells[1].textContent; });"
        "th[0].click(); th[0].click(); var b = Array.prototype.map.call(d.querySelectorAll('#units tbody tr'),"
        " function (r) { return r.cells[0].textContent; });"
        "document.body.setAttribute('data-units', a.join(','));"
        "document.body.setAttribute('data-layers', b.join(',')); };</script>")
    try:
        dom = _dump_dom(harness.as_uri(), tmp_path / "profile", "--allow-file-access-from-files")
    finally:
        harness.unlink()
    units = [int(u) for u in re.search(r'data-units="([^"]*)"', dom).group(1).split(",")]
    assert units == sorted(units, reverse=True) and len(units) == 610  # numbers: largest first
    layers = re.search(r'data-layers="([^"]*)"', dom).group(1).split(",")
    assert layers == ["fc"] * 10 + ["conv.3"] * 600  # layer order, clicked twice: the other way
    dom = _dump_dom((root / "fc.html").as_uri(), tmp_path / "profile")
    total = re.search(r'data-images-total="(\d+)"', dom).group(1)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom).group(1)
    assert total == loaded == "10"
