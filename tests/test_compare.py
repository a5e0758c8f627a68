"""``neurcore.compare``: two sources of explanations side by side, both re-scored by neurcore's verifier."""

import csv

import pytest
from test_dissect import PLANTED, tiny_spec

from neurcore.errors import InputError
from neurcore.pipelines import COMPARE_COLUMNS, compare, dissect, read_explanations
from neurcore.probe import SyntheticWorld
from neurcore.results import Explanation, read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A beam dissection of the tiny model with planted units, and a second source that names each planted
    unit's truth (written in another order of its concepts) and 'sky' for every other unit."""
    root = tmp_path_factory.mktemp("compare")
    world = SyntheticWorld(200, 32, seed=5)
    found = dissect(tiny_spec(PLANTED), ["3"], world, method="beam", out_dir=str(root / "d"), progress=False,
                    batch_size=32)
    other = read_jsonl(root / "d" / "results.jsonl")
    for r in other:
        r.method, r.iou = "other", None
        r.formula = r.planted["formula"] if r.planted else "sky"
        r.layer = None  # a tool that does not name the layer, as NetDissect's tally.csv
    write_jsonl(root / "b.jsonl", other)
    return root, world, found


def test_rescored_ious_are_the_dissections_own(run):
    root, world, found = run
    rows = compare(root / "d", root / "b.jsonl", out_dir=str(root / "c"), model=tiny_spec(PLANTED),
                   layers=["3"], probe=world, n_generated=10, progress=False)
    assert [(r["layer"], r["unit"]) for r in rows] == [("3", u) for u in range(len(found))]
    for row, r in zip(rows, found):
        assert row["a_label"] == r.formula and row["a_reported"] == r.iou
        assert row["a_iou"] == pytest.approx(r.iou, abs=1e-12)  # the same IoU, recomputed from the masks
        if r.planted:  # the truth, scored by compare, is the planted IoU the dissection recorded
            assert row["b_iou"] == pytest.approx(r.planted["iou"], abs=1e-12)
        else:
            assert row["b_label"] == "sky" and row["b_iou"] < row["a_iou"]
        for side in "ab":
            assert 0 <= row[f"{side}_activation_rate"] <= 1 and 0 <= row[f"{side}_cosy_auc"] <= 1
    # the planted OR unit: beam misses it, the truth scores higher by every measure
    miss = rows[-1]
    assert miss["b_iou"] > miss["a_iou"] + 0.2
    with open(root / "c" / "compare.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COMPARE_COLUMNS and len(table) == len(rows)
    assert float(table[6]["b_iou"]) == pytest.approx(rows[6]["b_iou"])


def test_without_a_model_the_reported_scores_only(run):
    root, _, found = run
    rows = compare(root / "d", root / "b.jsonl", layers=["3"])
    assert [r["a_reported"] for r in rows] == [r.iou for r in found]
    assert all(r["a_iou"] is None and r["b_activation_rate"] is None for r in rows)


def test_sources_are_checked(run, tmp_path):
    root, _, _ = run
    mixed = read_jsonl(root / "d" / "results.jsonl")
    mixed.append(Explanation(unit=0, method="clip-dissect", formula="sky", iou=None, layer="3"))
    write_jsonl(tmp_path / "mixed.jsonl", mixed)
    with pytest.raises(InputError, match="holds the methods beam, clip-dissect"):
        read_explanations(tmp_path / "mixed.jsonl")
    assert {r.method for r in read_explanations(tmp_path / "mixed.jsonl", "clip-dissect")} == {"clip-dissect"}
    with pytest.raises(InputError, match="no rows of method 'linex'"):
        read_explanations(tmp_path / "mixed.jsonl", "linex")
    with pytest.raises(InputError, match=str(tmp_path)):
        read_explanations(tmp_path)  # neither neurcore's results nor another tool's files
    label_run = tmp_path / "label_run"  # a label run: rules in results.jsonl, labels in labels.jsonl
    label_run.mkdir()
    write_jsonl(label_run / "results.jsonl", read_jsonl(root / "d" / "results.jsonl"))
    write_jsonl(label_run / "labels.jsonl", [Explanation(1, "clip-dissect", "red", None, layer="3")])
    with pytest.raises(InputError, match="holds the methods beam, clip-dissect"):
        read_explanations(label_run)
    assert [r.formula for r in read_explanations(label_run, "clip-dissect")] == ["red"]
    with pytest.raises(InputError, match="needs its layers"):
        compare(root / "d", root / "b.jsonl", model=tiny_spec(PLANTED), out_dir=str(tmp_path / "c"))
    with pytest.raises(InputError, match="b names no layer for its units"):
        compare(root / "d", root / "b.jsonl", layers=["3", "1"])
    write_jsonl(tmp_path / "twice.jsonl", [Explanation(0, "x", "sky", None), Explanation(0, "x", "red", None)])
    with pytest.raises(InputError, match="b holds two explanations of unit 0"):
        compare(root / "d", tmp_path / "twice.jsonl", layers=["3"])


def test_another_tools_files_are_rescored_alike(run, tmp_path):
    """compexp's tally and NetDissect's tally.csv written from the run, read back and re-scored: the same
    labels get the same scores as the run's own JSONL."""
    from neurcore.formats import export_results

    root, world, found = run
    export_results(root / "d", tmp_path / "compexp", "compexp")
    export_results(root / "b.jsonl", tmp_path / "netdissect", "netdissect", method="other")
    rows = compare(tmp_path / "compexp", tmp_path / "netdissect", out_dir=str(tmp_path / "c"),
                   model=tiny_spec(PLANTED), layers=["3"], probe=world, n_generated=10, progress=False)
    own = compare(root / "d", root / "b.jsonl", out_dir=str(tmp_path / "own"), model=tiny_spec(PLANTED),
                  layers=["3"], probe=world, n_generated=10, progress=False)
    assert [r["a_method"] for r in rows] == ["compexp"] * len(found)
    assert [r["b_method"] for r in rows] == ["netdissect"] * len(found)
    for mine, theirs in zip(own, rows):
        for side in "ab":
            assert theirs[f"{side}_label"] == mine[f"{side}_label"]
            for key in ("iou", "activation_rate", "cosy_auc"):
                assert theirs[f"{side}_{key}"] == pytest.approx(mine[f"{side}_{key}"], abs=1e-12)


def test_cli_export_import_compare(run, tmp_path, capsys):
    from neurcore.cli import main

    root, _, found = run
    assert main(["export", "--format", "compexp", str(root / "d"), str(tmp_path / "cx")]) == 0
    assert main(["import", str(tmp_path / "cx"), str(tmp_path / "imp")]) == 0
    back = read_jsonl(tmp_path / "imp" / "results.jsonl")
    assert [(r.unit, r.formula, r.iou) for r in back] == [(r.unit, r.formula, r.iou) for r in found]
    assert (tmp_path / "imp" / "results.csv").read_text().startswith("layer,unit,method,formula,iou")
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "imp"), str(root / "b.jsonl"), "--layer", "3",
                 "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"neurcore compare: {len(found)} units" in out and "reported score" in out
    bad = tmp_path / "cx" / "tally_3.csv"
    with open(bad, newline="") as f:
        table = list(csv.reader(f))
    table[2][table[0].index("score")] = "abc"  # the second unit's row: line 3 of the file
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows(table)
    assert main(["import", str(bad), str(tmp_path / "imp2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "row 3" in err and "score" in err
