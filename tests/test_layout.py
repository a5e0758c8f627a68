"""The package's layout as an architecture: no import circles, no private name crossing a package
boundary, short functions, and a documented, typed public surface.

The imports are read from the source (ast), every ``import`` and ``from ... import`` of the package,
module level and inside functions alike, so a lazy import that closes a circle is caught too.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import neurcore

ROOT = Path(neurcore.__file__).parent
#: Shared helper modules: private, yet meant to be imported by every package.
SHARED = {"neurcore._io"}
#: Longest function body allowed (lines, docstring excluded): longer ones become named steps.
MAX_FUNCTION_LINES = 60
#: Modules whose ``__all__`` is the public surface checked for docstrings and type hints.
PUBLIC = ["neurcore", "neurcore.engine", "neurcore.engine.backends", "neurcore.engine.reference",
          "neurcore.rules", "neurcore.rules.formula", "neurcore.rules.npz", "neurcore.rules.reference",
          "neurcore.probe", "neurcore.models", "neurcore.activations", "neurcore.attribution",
          "neurcore.attribution.reference", "neurcore.circuits", "neurcore.labels", "neurcore.pipelines",
          "neurcore.report", "neurcore.results", "neurcore.errors", "neurcore.clustering", "neurcore.testing",
          "neurcore.distributed", "neurcore.formats"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _is_module(name: str) -> bool:
    """A module of the package: Python source, or a compiled extension such as ``neurcore.engine._C``."""
    if name in MODULES:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(target module, imported names, line) for every import of the package in module ``name``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "neurcore"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "neurcore":
                continue
            names = [a.name for a in node.names]
            submodules = [n for n in names if _is_module(f"{target}.{n}")]
            out += [(f"{target}.{n}", [], node.lineno) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                out.append((target, rest, node.lineno))
    return out


def _package(name: str) -> str:
    """The unit a module belongs to: its subpackage under neurcore, or the top-level module itself."""
    parts = name.split(".")
    if len(parts) == 1:
        return name
    return ".".join(parts[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), or with a self-loop."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_circle_and_a_private_import():
    """The checks below can fail: a planted circle and a planted private import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _private_crossing("neurcore.rules._beam", "neurcore.engine._bitmasks", ["BitMasks"])
    assert _private_crossing("neurcore.rules._beam", "neurcore.engine", ["_unpack"])
    assert not _private_crossing("neurcore.rules._beam", "neurcore.rules._counts", ["_x"])
    assert not _private_crossing("neurcore.rules._beam", "neurcore._io", ["atomic_path"])


def test_no_import_circle_between_modules():
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}
    assert _cycles(graph) == []


def test_no_import_circle_between_packages():
    """Packages form layers: engine below rules below ..., pipelines and the command line on top."""
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        src = _package(m)
        for t, _, _ in _imports(m):
            dst = _package(t)
            if t in MODULES and dst != src:
                graph.setdefault(src, set()).add(dst)
    assert _cycles(graph) == []


def _private_crossing(importer: str, target: str, names: list[str]) -> bool:
    if _package(importer) == _package(target) or target in SHARED:
        private_path = False
    else:
        private_path = any(p.startswith("_") and not p.startswith("__") for p in target.split(".")[1:])
    crossing = _package(importer) != _package(target)
    return crossing and (private_path or any(n.startswith("_") and not n.startswith("__") for n in names))


def test_no_private_name_crosses_a_package_boundary():
    bad = [f"{m}:{line} imports {', '.join(names) or 'the module'} from {t}"
           for m in MODULES for t, names, line in _imports(m) if _private_crossing(m, t, names)]
    assert bad == []


def test_functions_are_short():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                first = body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(body) > 1:
                    first = body[1]
                lines = node.end_lineno - first.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} (line {node.lineno}): {lines} lines")
    assert long == []


def _public_objects():
    seen = set()
    for module in PUBLIC:
        mod = importlib.import_module(module)
        for attr in mod.__all__:
            obj = getattr(mod, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and id(obj) not in seen:
                seen.add(id(obj))
                yield f"{module}.{attr}", obj


def _members(qual: str, cls):
    """Public methods and properties a class defines itself (``__init__`` included)."""
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if isinstance(func, property) or inspect.isfunction(func):
            yield f"{qual}.{name}", func


def _undocumented_and_untyped():
    missing_doc, missing_hints = [], []
    for qual, obj in _public_objects():
        items = [(qual, obj)]
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            items += list(_members(qual, obj))
        for q, f in items:
            is_init = q.endswith(".__init__")
            if not is_init and not (getattr(f, "__doc__", None) or "").strip():
                missing_doc.append(q)
            if inspect.isfunction(f):
                sig = inspect.signature(f)
                params = [p for n, p in sig.parameters.items() if n not in ("self", "cls")
                          and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
                untyped = [p.name for p in params if p.annotation is inspect.Parameter.empty]
                if untyped or (not is_init and sig.return_annotation is inspect.Signature.empty):
                    missing_hints.append(f"{q}({', '.join(untyped)})")
    return missing_doc, missing_hints


def test_public_api_is_documented_and_typed():
    missing_doc, missing_hints = _undocumented_and_untyped()
    assert missing_doc == [], "no docstring"
    assert missing_hints == [], "parameters or return without a type hint"


def test_docstrings_point_inside_the_repository():
    """Papers are cited by title; nothing refers to SPEC.md or papers/ files that ship elsewhere."""
    bad = [f"{name}:{i}" for name, path in MODULES.items()
           for i, line in enumerate(path.read_text().splitlines(), 1) if "SPEC" in line or "papers/" in line]
    assert bad == []


def test_top_level_exports_the_entry_points():
    for name in ("BitMasks", "intersect_counts", "ConceptSet", "NetworkDissection", "BeamSearch",
                 "OptimalSearch", "ClusteredSearch", "Explanation", "dissect", "label", "circuit",
                 "NeurcoreError", "InputError", "BackendUnavailable", "search_npz"):
        assert name in neurcore.__all__ and getattr(neurcore, name) is not None
    assert neurcore.dissect is neurcore.pipelines.dissect
    assert neurcore.InputError.__mro__[1:3] == (neurcore.NeurcoreError, ValueError)
    assert issubclass(neurcore.BackendUnavailable, neurcore.NeurcoreError)
    assert issubclass(neurcore.FormulaSyntaxError, neurcore.InputError)
    assert issubclass(neurcore.ProbeError, neurcore.InputError)


def test_import_neurcore_is_light():
    """``import neurcore`` and rule search from .npz load neither torch nor the heavy families."""
    code = ("import sys, neurcore; neurcore.search_npz; neurcore.BeamSearch; "
            "heavy = [m for m in ('torch', 'neurcore.attribution', 'neurcore.labels', 'neurcore.circuits', "
            "'neurcore.pipelines') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("family", ["attribution", "labels", "circuits"])
def test_heavy_families_load_as_sub_namespaces(family):
    code = f"import neurcore; print(type(neurcore.{family}).__name__, neurcore.{family}.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["module", f"neurcore.{family}"]
