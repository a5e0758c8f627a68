"""The field's formats: NetDissect-Lite, compexp, CLIP-Dissect and Neuronpedia files written from neurcore's
results and read back, checked by a reader of our own, detected by header, and refused when malformed."""

import csv
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurcore.errors import InputError
from neurcore.formats import (
    FORMATS,
    detect_format,
    export_results,
    from_compexp_formula,
    import_results,
    to_compexp_formula,
)
from neurcore.results import Explanation, write_jsonl
from neurcore.rules.formula import And, AndNot, Leaf, Not, Or, equivalent, parse

# Concept names compexp prints bare, and ones it cannot (quoted on the way out, read back all the same).
NAMES = ["water", "river", "blue", "street-s", "red-c", "shop window", "sky blue", "x(y)", 'say "hi"', "NOT",
         "a AND b", "NONE", "back\\slash", "two  spaces"]
CATEGORIES = dict(zip(NAMES, ["stuff", "scene", "color", "scene", "color", "object", "color", "object",
                              "object", "texture", "texture", "object", "stuff", "stuff"]))


def rule_rows(layer: str, formulas: list[str | None]) -> list[Explanation]:
    """Rule-search rows with made-up but consistent counts (iou = intersection / union)."""
    out = []
    for u, text in enumerate(formulas):
        if text is None:
            out.append(Explanation(unit=u, method="beam", formula=None, iou=0.0, layer=layer,
                                   counts={"unit": 7}))
            continue
        f = parse(text)
        a, fc, i = 100 + u, 50 + 3 * u, 10 + u
        out.append(Explanation(unit=u, method="beam", formula=str(f), iou=i / (a + fc - i), length=len(f),
                               layer=layer, categories=[CATEGORIES[n] for n in f.leaves()],
                               counts={"unit": a, "formula": fc, "intersection": i, "union": a + fc - i},
                               metrics={"iou": i / (a + fc - i), "activation_rate": 0.25 + u / 100}))
    return out


FORMULAS = ["((water OR river) AND NOT blue)", None, '"shop window"', "(NOT water OR street-s)",
            '(("sky blue" AND "x(y)") OR "say \\"hi\\"")', '"NOT"', '("a AND b" AND NOT "NONE")',
            '("back\\\\slash" OR "two  spaces")', "red-c", "water", "(water AND NOT river)"]


def rows_two_layers() -> list[Explanation]:
    return rule_rows("layer3", FORMULAS) + rule_rows("layer4", FORMULAS[::-1])


def label_rows() -> list[Explanation]:
    words = ["blue", "sky blue", None, "a, quoted \"word\"", "water"]
    return [Explanation(unit=u, method="clip-dissect", formula=w, iou=None, length=int(w is not None),
                        layer=layer, metrics={"similarity": 1.0 / (u + 3), "cosy_auc": 0.5 + u / 10})
            for layer in ("conv3", "conv4") for u, w in enumerate(words)]


def by_key(rows):
    return {(r.layer, r.unit): r for r in rows}


# ---- compexp's formula syntax -----------------------------------------------------------------------

def test_compexp_formula_syntax_matches_compexps_printer():
    assert to_compexp_formula("((water OR river) AND NOT blue)") == "((water OR river) AND (NOT blue))"
    assert to_compexp_formula("(NOT water OR street-s)") == "((NOT water) OR street-s)"
    assert to_compexp_formula('"shop window"') == "shop window"
    assert to_compexp_formula("(a AND b)", ["object", "color"]) == "(object AND color)"
    assert str(from_compexp_formula("((water OR river) AND (NOT blue))")) == "((water OR river) AND NOT blue)"
    assert str(from_compexp_formula("(shop window AND (NOT car wash-s))")) == \
        '("shop window" AND NOT "car wash-s")'
    assert str(from_compexp_formula("water OR river AND NOT blue")) == "(water OR (river AND NOT blue))"


def formulas(depth=3):
    leaf = st.sampled_from(NAMES).map(Leaf)
    return st.recursive(leaf, lambda sub: st.one_of(
        sub.map(Not), st.tuples(sub, sub).map(lambda p: And(*p)), st.tuples(sub, sub).map(lambda p: Or(*p)),
        st.tuples(sub, sub).map(lambda p: AndNot(*p))), max_leaves=5)


def and_not(f):
    """``f`` with every And(x, Not(y)) as AndNot(x, y): compexp prints both alike."""
    if isinstance(f, Leaf):
        return f
    if isinstance(f, Not):
        return Not(and_not(f.operand))
    left, right = and_not(f.left), and_not(f.right)
    if isinstance(f, And) and isinstance(right, Not):
        return AndNot(left, right.operand)
    return type(f)(left, right)


@settings(max_examples=150, deadline=None)
@given(formulas())
def test_compexp_formula_round_trip(f):
    back = from_compexp_formula(to_compexp_formula(f))
    assert back == and_not(f) and equivalent(back, f)


# ---- round trips ------------------------------------------------------------------------------------

def test_netdissect_round_trip_two_layers(tmp_path):
    rows = rows_two_layers()
    paths = export_results(rows, tmp_path, "netdissect")
    assert paths == [str(tmp_path / "layer3" / "tally.csv"), str(tmp_path / "layer4" / "tally.csv")]
    back = import_results(tmp_path)
    assert {r.method for r in back} == {"netdissect"}
    want, got = by_key(rows), by_key(back)
    assert set(got) == set(want)
    for k, r in want.items():
        g = got[k]
        assert (g.formula, g.iou, g.length, g.categories) == (r.formula, r.iou, r.length, r.categories)
        assert g.counts == (r.counts if r.length == 1 else {})
    one = import_results(paths[0], layer="layer3")
    assert [r.unit for r in one] == list(range(len(FORMULAS))) and one[0].layer == "layer3"


def test_compexp_round_trip_two_layers(tmp_path):
    rows = rows_two_layers()
    paths = export_results(rows, tmp_path, "compexp")
    assert [os.path.basename(p) for p in paths] == ["tally_layer3.csv", "tally_layer4.csv"]
    back = import_results(tmp_path)
    want, got = by_key(rows), by_key(back)
    assert set(got) == set(want) and {r.method for r in back} == {"compexp"}
    for k, r in want.items():
        g = got[k]
        assert (g.formula, g.iou, g.length, g.categories) == (r.formula, r.iou, r.length, r.categories)
        if r.length == 1:  # a single concept is its own best single concept
            assert g.extra["label_noncomp"] == next(parse(r.formula).leaves())
            assert g.extra["score_noncomp"] == r.iou
    with open(paths[0], newline="") as f:
        table = list(csv.DictReader(f))
    assert table[0]["label"] == "((water OR river) AND (NOT blue))"
    assert table[0]["category"] == "((stuff OR scene) AND (NOT color))"
    assert table[1]["label"] == "NONE" and table[1]["score"] == "0.0"
    assert table[2]["label"] == "shop window"


def test_clip_dissect_round_trip(tmp_path):
    rows = label_rows() + rule_rows("conv4", ["water"])
    (path,) = export_results(rows, tmp_path, "clip-dissect")
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["layer", "unit", "description", "similarity"]
    assert [(t[0], t[1]) for t in table[1:]] == \
        [(layer, str(u)) for layer in ("conv3", "conv4") for u in range(5)]
    back = import_results(path)
    want = by_key(r for r in rows if r.method == "clip-dissect")
    assert by_key(back).keys() == want.keys()
    for k, g in by_key(back).items():
        assert (g.method, g.formula, g.iou, g.metrics) == ("clip-dissect", want[k].formula, None,
                                                           {"similarity": want[k].metrics["similarity"]})
    assert [r.layer for r in import_results(path, layer="conv3")] == ["conv3"] * 5


def test_neuronpedia_round_trip(tmp_path):
    rows = rows_two_layers() + label_rows()
    (path,) = export_results(rows, tmp_path, "neuronpedia", model_id="tiny-net")
    with open(path) as f:
        first = json.loads(f.readline())
    assert set(first) == {"modelId", "layer", "index", "description", "typeName", "explanationModelName",
                          "scores"}
    assert (first["modelId"], first["index"], first["typeName"]) == ("tiny-net", "0", "neurcore-beam")
    back = import_results(path)
    want = {(r.layer, r.unit, r.method): r for r in rows if r.formula is not None}
    got = {(r.layer, r.unit, r.extra["typeName"][len("neurcore-"):]): r for r in back}
    assert got.keys() == want.keys()
    for k, r in want.items():
        g = got[k]
        assert (g.method, g.formula, g.iou) == ("neuronpedia", r.formula, r.iou)
        assert g.metrics == {m: v for m, v in r.metrics.items() if m != "iou"}
        assert g.length == (r.length if r.iou is not None else 1)


def test_export_from_a_results_file_and_a_layer(tmp_path):
    path = tmp_path / "results.jsonl"
    write_jsonl(path, rows_two_layers() + label_rows())
    (tally,) = export_results(path, tmp_path / "nd", "netdissect", layer="layer4")
    assert tally == str(tmp_path / "nd" / "tally.csv")
    assert len(import_results(tally)) == len(FORMULAS)
    with pytest.raises(InputError, match="no rows of method 'linex'"):
        export_results(path, tmp_path / "x", "compexp", method="linex")
    with pytest.raises(InputError, match="format must be one of"):
        export_results(path, tmp_path / "x", "milan")


# ---- NetDissect-Lite's layout, read by a reader of our own -----------------------------------------

def read_tally_like_netdissect(path, categories):
    """A tally.csv as NetDissect-Lite writes it: exact column order, five columns per category, units
    from 1, rows by score, highest first."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    blocks = [f"{c}-{k}" for c in categories for k in ("label", "truth", "activation", "intersect", "iou")]
    assert reader.fieldnames == ["unit", "category", "label", "score"] + blocks
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert sorted(int(r["unit"]) for r in rows) == list(range(1, len(rows) + 1))
    return {int(r["unit"]) - 1: r for r in rows}


def test_own_netdissect_reader_reads_the_export(tmp_path):
    rows = rule_rows("conv4", FORMULAS)
    (path,) = export_results(rows, tmp_path, "netdissect")
    table = read_tally_like_netdissect(path, ["stuff", "scene", "color", "object", "texture"])
    for r in rows:
        t = table[r.unit]
        assert float(t["score"]) == r.iou
        if r.length == 1:
            name, cat = next(parse(r.formula).leaves()), r.categories[0]
            assert (t["label"], t["category"], t[f"{cat}-label"]) == (name, cat, name)
            assert [int(t[f"{cat}-{k}"]) for k in ("truth", "activation", "intersect")] == \
                [r.counts["formula"], r.counts["unit"], r.counts["intersection"]]
            assert float(t[f"{cat}-iou"]) == r.iou
        elif r.formula is None:
            assert (t["label"], t["category"], t["score"]) == ("", "", "0.0")
        else:
            assert t["label"] == r.formula and t["category"] == "+".join(r.categories)


def tiny_dissection(out_dir, method):
    import torch

    from neurcore.models import ModelSpec
    from neurcore.pipelines import dissect
    from neurcore.probe import SyntheticWorld

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                 torch.nn.Conv2d(8, 6, 3, padding=1))
    spec = ModelSpec(module, name="tiny", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    return dissect(spec, ["3"], SyntheticWorld(60, 32, seed=7), method=method, length=2, out_dir=str(out_dir),
                   progress=False, report=False)


@pytest.mark.parametrize("method", ["dissect", "beam"])
def test_real_results_directory(tmp_path, method):
    """From a real run: NetDissect's per-category blocks come from the run's masks, and for ``dissect``
    the best of them is the unit's explanation; compexp's best single concept is the same."""
    rows = tiny_dissection(tmp_path / "run", method)
    (tally,) = export_results(tmp_path / "run", tmp_path / "nd", "netdissect")
    with open(tmp_path / "run" / "concepts.json") as f:
        cats = list(dict.fromkeys(json.load(f)["categories"]))
    table = read_tally_like_netdissect(tally, cats)
    back = by_key(import_results(tally, layer="3"))
    (comp,) = export_results(tmp_path / "run", tmp_path / "ce", "compexp")
    singles = by_key(import_results(comp))
    for r in rows:
        g, t = back[("3", r.unit)], table[r.unit]
        assert (g.formula, g.iou) == (r.formula, r.iou) and set(g.extra["netdissect"]) == set(cats)
        best = max(cats, key=lambda c: float(t[f"{c}-iou"]))
        if r.formula is not None:
            assert singles[("3", r.unit)].extra["label_noncomp"] == t[f"{best}-label"]
        if method == "dissect" and r.formula is not None:
            assert (t[f"{best}-label"], float(t[f"{best}-iou"])) == (r.formula, r.iou)
            assert g.counts == r.counts


# ---- detection and bad input ------------------------------------------------------------------------

def test_formats_are_detected_from_the_header(tmp_path):
    rows = rule_rows("conv4", FORMULAS) + label_rows()
    for fmt in FORMATS:
        for path in export_results(rows, tmp_path / fmt, fmt):
            assert detect_format(path) == fmt
            assert import_results(path) == import_results(path, fmt)
    write_jsonl(tmp_path / "own.jsonl", rows)
    with pytest.raises(InputError, match="neurcore's own results"):
        detect_format(tmp_path / "own.jsonl")
    (tmp_path / "other.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match=r"other\.csv: row 1: header: not a NetDissect"):
        import_results(tmp_path / "other.csv")
    with pytest.raises(InputError, match="no exported file"):
        import_results(tmp_path / "clip-dissect", "compexp")


ND_HEADER = "unit,category,label,score,color-label,color-truth,color-activation,color-intersect,color-iou\n"


@pytest.mark.parametrize("name, text, message", [
    ("tally.csv", ND_HEADER + "1,color,red,0.5,red,10,20,5,0.2\n2,color,blue,0.4,,,,,\n"
                  "3,color,sky,abc,,,,,\n",
     "tally.csv: row 4: score: 'abc' is not a number"),
    ("tally.csv", "unit,category,label\n1,color,red\n", "tally.csv: row 1: header: missing column 'score'"),
    ("tally.csv", ND_HEADER.replace(",color-intersect", "") + "1,color,red,0.5,red,10,20,0.2\n",
     "tally.csv: row 1: header: missing column 'color-intersect'"),
    ("tally.csv", ND_HEADER + "1,color,red,0.5,red,10,2.5,5,0.2\n",
     "tally.csv: row 2: color-activation: '2.5' is not a whole number"),
    ("tally.csv", ND_HEADER + "0,color,red,0.5,red,10,20,5,0.2\n", "tally.csv: row 2: unit: '0'"),
    ("tally.csv", ND_HEADER + "1,color,red,0.5\n", "tally.csv: row 2: color-label: missing value"),
    ("tally.csv", ND_HEADER + "1,color,red,0.5,,,,,\n1,color,red,0.5,,,,,\n",
     "tally.csv: row 3: unit: unit 1 is also on row 2"),
    ("tally_conv4.csv", "unit,category,label,score,length\n0,color,red,0.5,1\n1,color,((a AND b),0.5,2\n",
     "tally_conv4.csv: row 3: label: '((a AND b)' does not parse"),
    ("tally_conv4.csv", "unit,category,label,score,length\n0,color,red,0.5,one\n",
     "tally_conv4.csv: row 2: length: 'one' is not a number"),
    ("descriptions.csv", "layer,unit,description,similarity\nconv4,0,blue,0.5\nconv4,x,red,0.5\n",
     "descriptions.csv: row 3: unit: 'x' is not a number"),
    ("descriptions.csv", 'layer,unit,description,similarity\nconv4,0,"two\nlines",0.5\nconv4,x,red,0.5\n',
     "descriptions.csv: row 4: unit: 'x' is not a number"),
    ("descriptions.csv", "layer,unit,description\nconv4,0,blue\n",
     "descriptions.csv: row 1: header: missing column 'similarity'"),
    ("explanations.jsonl", '{"layer": "a", "index": "0", "description": "x"}\n{"layer": "a", "index": \n',
     "explanations.jsonl: row 2: json: not valid JSON"),
    ("explanations.jsonl", '{"layer": "a", "description": "x"}\n',
     "explanations.jsonl: row 1: index: missing field"),
    ("explanations.jsonl", '\n{"layer": "a", "index": "-1", "description": "x"}\n',
     "explanations.jsonl: row 2: index: '-1' is not a unit index"),
    ("explanations.jsonl", ('{"layer": "a", "index": 3, "description": "x", "scores": '
                            '[{"explanationScoreTypeName": "iou", "value": "high"}]}\n'),
     "explanations.jsonl: row 1: scores[0].value: 'high' is not a number"),
])
def test_malformed_files_name_the_file_row_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as e:
        import_results(path)
    assert message in str(e.value)
    assert str(e.value).startswith(str(path))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        import_results(tmp_path / "tally.csv")
    (tmp_path / "tally.csv").write_text("")
    with pytest.raises(InputError, match=r"row 1: header: the file is empty"):
        import_results(tmp_path / "tally.csv", "netdissect")
    with pytest.raises(InputError, match="no results.jsonl"):
        export_results(tmp_path, tmp_path / "out", "netdissect")
