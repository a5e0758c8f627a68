"""The field's result formats, out and in: neurcore's explanations as the files other tools write, and
those files read back as :class:`~neurcore.results.Explanation` lists.

- ``netdissect``: NetDissect-Lite's ``tally.csv`` (one per layer).
- ``compexp``: compexp's ``tally_{layer}.csv``, formulas in compexp's syntax.
- ``clip-dissect``: CLIP-Dissect's ``descriptions.csv``.
- ``neuronpedia``: Neuronpedia-style explanation JSONL (``explanations.jsonl``).

:func:`export_results` writes a results directory (or JSONL file, or list) in one format;
:func:`import_results` reads a file (format detected from its header) or a directory of exported files.
Each format's module docstring gives its columns, the source it was checked against, and what it loses.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from .._io import safe_name
from ..errors import InputError
from ..results import Explanation
from ..rules import METHODS as RULE_METHODS
from ._clip_dissect import HEADER as _CLIP_HEADER
from ._clip_dissect import from_clip_dissect, to_clip_dissect
from ._common import is_neurcore_results, layers_of, load_source, pick_method
from ._compexp import from_compexp, from_compexp_formula, tally_name, to_compexp, to_compexp_formula
from ._netdissect import BASE as _NETDISSECT_BASE
from ._netdissect import Tallies, category_tallies, from_netdissect, to_netdissect
from ._neuronpedia import from_neuronpedia, to_neuronpedia

__all__ = ["FORMATS", "export_results", "import_results", "read_results", "is_neurcore_results",
           "detect_format", "to_netdissect", "from_netdissect",
           "to_compexp", "from_compexp", "to_clip_dissect", "from_clip_dissect", "to_neuronpedia",
           "from_neuronpedia", "to_compexp_formula", "from_compexp_formula", "category_tallies"]

#: The formats :func:`export_results` writes and :func:`import_results` reads.
FORMATS = ("netdissect", "compexp", "clip-dissect", "neuronpedia")

_READERS = {"netdissect": from_netdissect, "compexp": from_compexp, "clip-dissect": from_clip_dissect,
            "neuronpedia": from_neuronpedia}


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")


def export_results(source: str | os.PathLike | Sequence[Explanation], out: str | os.PathLike, format: str, *,
                   layer: str | None = None, method: str | None = None,
                   model_id: str | None = None) -> list[str]:
    """Write explanations in another tool's format into the directory ``out``; returns the paths written.

    source: a results directory of ``neurcore dissect``/``label`` (``results.jsonl``, then the rows of
    ``labels.jsonl`` not already there), a neurcore JSONL file, or a list of Explanations.
    format: one of :data:`FORMATS`. layer: export only this layer. method: export only this method's rows;
    default: the rule rows (dissect, beam, optimal, clustered; the first present per layer) for
    ``netdissect``/``compexp``, the ``clip-dissect`` rows for ``clip-dissect``, every row with a
    formula for ``neuronpedia``. model_id: Neuronpedia's ``modelId`` (default: the run's model, else
    ``neurcore``). Files: ``tally.csv`` (one layer) or ``<layer>/tally.csv`` (several), ``tally_<layer>.csv``
    per layer, ``descriptions.csv``, ``explanations.jsonl``; each written atomically. NetDissect's
    per-category blocks are computed from the directory's concept and unit masks when it has them.
    """
    _check_format(format)
    src = load_source(source, layer)
    if not src.rows:
        raise InputError(f"{format}: nothing to export" + (f" in layer {layer!r}" if layer else ""))
    out = os.fspath(out)
    if format == "neuronpedia":
        rows = [r for r in src.rows if method is None or r.method == method]
        if not any(r.formula is not None for r in rows):
            raise InputError(f"neuronpedia: no row with a formula to export (method {method!r})")
        mid = model_id or src.manifest.get("model") or "neurcore"
        return [to_neuronpedia(os.path.join(out, "explanations.jsonl"), rows, mid)]
    if format == "clip-dissect":
        rows = pick_method(src.rows, ("clip-dissect",), method, format)
        return [to_clip_dissect(os.path.join(out, "descriptions.csv"), rows)]
    rows = pick_method(src.rows, RULE_METHODS, method, format)
    layers = layers_of(rows)
    paths = []
    for name in layers:
        mine = [r for r in rows if r.layer == name]
        got = category_tallies(src.run_dir, name) if src.run_dir else None
        if format == "netdissect":
            sub = "" if len(layers) == 1 else safe_name(name or "layer")
            path = os.path.join(out, sub, "tally.csv")
            paths.append(to_netdissect(path, mine, *(got or (None, None))))
        else:
            paths.append(to_compexp(os.path.join(out, tally_name(name)), mine, _best_single(got)))
    return paths


def _best_single(got: tuple[list[str], Tallies] | None) -> dict[int, tuple[str, str, float]] | None:
    """unit -> (concept, category, IoU) of its best single concept over every category."""
    if got is None:
        return None
    out = {}
    for unit, blocks in got[1].items():
        cat, b = max(blocks.items(), key=lambda kv: kv[1][4])  # first category on ties
        if b[4] > 0:
            out[unit] = (b[0], cat, b[4])
    return out


def read_results(source: str | os.PathLike, layer: str | None = None) -> list[Explanation]:
    """neurcore's own explanations, as :func:`export_results` reads them: a results directory
    (``results.jsonl``, then the rows of ``labels.jsonl`` not already there) or a neurcore JSONL file;
    only ``layer``'s rows when given. A malformed line is an InputError naming the file and row."""
    return load_source(source, layer).rows


def detect_format(path: str | os.PathLike) -> str:
    """The format of an exported file, from its first line: a CSV header (``layer,unit,description,...``
    is CLIP-Dissect's; ``unit,category,label,score,length`` compexp's; ``unit,category,label,score``
    NetDissect's) or, for ``.jsonl``/``.json``, a Neuronpedia explanation object; failing that, from the
    file name (``descriptions.csv``, ``tally_<layer>.csv``, ``tally.csv``)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            first = next((line for line in f if line.strip()), "")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if path.endswith((".jsonl", ".json", ".ndjson")) or first.lstrip().startswith("{"):
        if is_neurcore_results(path):
            raise InputError(f"{path}: neurcore's own results, not an export: read it with "
                             "neurcore.results.read_jsonl")
        return "neuronpedia"  # a line that is not JSON: the reader names the row
    head = next(csv.reader([first]), [])
    if head[: len(_CLIP_HEADER)] == _CLIP_HEADER:
        return "clip-dissect"
    if head[:5] == _NETDISSECT_BASE + ["length"]:
        return "compexp"
    if head[:4] == _NETDISSECT_BASE:
        return "netdissect"
    name = os.path.basename(path)  # a header that lost a column: the reader names the missing one
    if name == "descriptions.csv":
        return "clip-dissect"
    if name.startswith("tally") and name.endswith(".csv"):
        return "compexp" if name.startswith("tally_") else "netdissect"
    raise InputError(f"{path}: row 1: header: not a NetDissect, compexp or CLIP-Dissect header "
                     f"({','.join(head)[:120]})")


def import_results(path: str | os.PathLike, format: str | None = None, *,
                   layer: str | None = None) -> list[Explanation]:
    """Explanations read from an exported file, or from every exported file in a directory.

    path: a file (``format`` None detects it, :func:`detect_format`), or a directory as
    :func:`export_results` writes it (``tally.csv``, ``<layer>/tally.csv``, ``tally_*.csv``,
    ``descriptions.csv``, ``explanations.jsonl``). layer: the layer of a NetDissect tally (which does
    not name it; ``<layer>/tally.csv`` takes the folder's name) or compexp tally (default: from
    ``tally_<layer>.csv``); for CLIP-Dissect and Neuronpedia files, keep only that layer's rows.
    Returns Explanations whose ``method`` is the source format (``netdissect``, ``compexp``,
    ``clip-dissect``, ``neuronpedia``). Malformed input raises :class:`~neurcore.errors.InputError`
    naming the file, the row (line) and the field.
    """
    if format is not None:
        _check_format(format)
    path = os.fspath(path)
    if not os.path.isdir(path):
        return _READERS[format or detect_format(path)](path, layer)
    found = _exported_files(path, layer)
    found = [(p, f, name) for p, f, name in found if format is None or f == format]
    if not found:
        raise InputError(f"{path}: no exported file here (tally.csv, <layer>/tally.csv, tally_*.csv, "
                         "descriptions.csv, explanations.jsonl)" + (f" of format {format}" if format else ""))
    out: list[Explanation] = []
    for p, f, name in found:
        out.extend(_READERS[f](p, name))
    return out


def _exported_files(path: str, layer: str | None) -> list[tuple[str, str, str | None]]:
    """(file, format, layer argument) of every exported file in the directory ``path``."""
    out = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name == "tally.csv" or (name.startswith("tally_") and name.endswith(".csv")):
            if layer is None or name == "tally.csv" or name == tally_name(layer):
                out.append((full, detect_format(full), layer))
        elif name in ("descriptions.csv", "explanations.jsonl"):
            out.append((full, detect_format(full), layer))
        elif os.path.isfile(os.path.join(full, "tally.csv")) and (layer is None or name == safe_name(layer)):
            out.append((os.path.join(full, "tally.csv"), "netdissect", name if layer is None else layer))
    return out
