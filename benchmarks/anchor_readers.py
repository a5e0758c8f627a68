"""neurcore's exports read by the anchors' own code (not a pytest benchmark: it needs their checkouts).

    python benchmarks/anchor_readers.py RESULTS_DIR --netdissect-lite DIR --compexp DIR

RESULTS_DIR: a ``neurcore dissect`` folder (e.g. ``neurcore dissect --layer conv4 --method beam --out d``);
the two DIRs: git checkouts of CSAILVision/NetDissect-Lite and jayelm/compexp, whose files are loaded
from there at run time. The run exports RESULTS_DIR as NetDissect-Lite's ``tally.csv`` and compexp's
``tally_{layer}.csv``, then
- reads the tally with NetDissect-Lite's own ``load_csv`` (``loader/data_loader.py``; only that function
  is loaded, the module imports scipy.misc, gone from SciPy) and checks every record's unit, label,
  score and the order by score against the results;
- parses every compexp label with compexp's own formula parser (``vision/loader/data_loader/formula.py``)
  and prints it back with its ``to_str``, which must give the label unchanged. pyeda, which that module
  imports for simplification only, is stubbed, and pyparsing 3's ``infixNotation`` stands in for the
  ``operatorPrecedence`` alias it removed.
"""

import argparse
import ast
import csv
import importlib.util
import re
import sys
import tempfile
import types
import warnings
from pathlib import Path

from neurcore.formats import export_results, read_results


def netdissect_load_csv(checkout: Path):
    source = (checkout / "loader" / "data_loader.py").read_text()
    fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "load_csv")
    namespace = {"re": re, "csv": csv}
    exec(compile(ast.Module([fn], []), "data_loader.py", "exec"), namespace)
    return namespace["load_csv"]


def compexp_formula(checkout: Path):
    import pyparsing

    pyparsing.operatorPrecedence = getattr(pyparsing, "operatorPrecedence", pyparsing.infixNotation)
    expr = types.ModuleType("pyeda.boolalg.expr")
    expr.Not = expr.Or = expr.And = expr.exprvar = None
    boolalg = types.ModuleType("pyeda.boolalg")
    boolalg.expr = expr
    pyeda = types.ModuleType("pyeda")
    pyeda.boolalg = boolalg
    sys.modules.update({"pyeda": pyeda, "pyeda.boolalg": boolalg, "pyeda.boolalg.expr": expr})
    path = checkout / "vision" / "loader" / "data_loader" / "formula.py"
    spec = importlib.util.spec_from_file_location("compexp_formula", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--netdissect-lite", type=Path, required=True)
    p.add_argument("--compexp", type=Path, required=True)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    rows = [r for r in read_results(args.results) if r.method in ("dissect", "beam", "optimal")]
    best = {r.unit: r for r in rows}
    with tempfile.TemporaryDirectory() as d:
        (tally,) = export_results(args.results, d + "/nd", "netdissect")
        records = netdissect_load_csv(args.netdissect_lite)(tally)
        same = sum(best[int(r["unit"]) - 1].formula == r["label"] and
                   abs(float(r["score"]) - best[int(r["unit"]) - 1].iou) < 1e-12 for r in records)
        ordered = all(float(a["score"]) >= float(b["score"]) for a, b in zip(records, records[1:]))
        print(f"NetDissect-Lite load_csv: {len(records)} records, {same} with the unit's label and score, "
              f"sorted by score: {ordered}")
        (tally,) = export_results(args.results, d + "/cx", "compexp")
        formula = compexp_formula(args.compexp)
        with open(tally, newline="") as f:
            labels = [r["label"] for r in csv.DictReader(f)]
        back = sum(formula.parse(x).to_str(lambda name: name) == x for x in labels)
        print(f"compexp parse + to_str: {back} of {len(labels)} labels printed back unchanged")
    return 0 if same == len(records) == len(best) and ordered and back == len(labels) else 1


if __name__ == "__main__":
    sys.exit(main())
