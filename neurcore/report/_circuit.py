"""The HTML view of a concept circuit: one band per layer, class logit on top, one card per node.

Input is the content of ``circuit.json`` (written by the circuit methods, NeurFlow or NeuCEPT) and the
exemplar crops it names, PNG files under the same directory. The page is one static file,
``circuit.html``, beside them: no network, no JavaScript library, only the small script that counts
loaded images for the browser test. Cards sit on a grid whose coordinates are computed here, so the
edges are an inline SVG drawn in Python: a line from the bottom of each upper node to the top of each
lower node it feeds from, its stroke width proportional to the edge weight, its weight in a tooltip.

Schema (fields beyond ``layers``, ``nodes`` and ``edges`` are optional)::

    {"model": str, "class": str, "class_index": int, "method": "neurflow" | "neucept",
     "layers": [str, ...],                       # top (the logit) to bottom
     "nodes": [{"id": str, "layer": str, "group": int, "neurons": [int, ...], "exemplars": [path, ...],
                "importance": float, "label": str | None}, ...],
     "edges": [{"source": id, "target": id, "weight": float >= 0}, ...],   # source: upper node
     "truth": {layer: [neuron, ...]},            # planted true core neurons
     "metrics": {layer: {"precision": float, "recall": float,
                         "tau": int,                        # NeurFlow: core neurons kept per neuron
                         "target_fdr": float,               # NeuCEPT: the knockoffs' target FDR
                         "empirical_fdr": float | None}},   # None: not checkable on this layer
     "fidelity": [{"layer": str, "scope": str, "mode": "mask" | "retain", "k": int, "core": float,
                   "random_mean": float, "random_std": float, "core_logit": float,
                   "random_logit_mean": float, "random_logit_std": float, "core_logit_drop": float,
                   "random_logit_drop": float, "logit_z": float | None}, ...]}

The fidelity rows' logit fields (see :func:`neurcore.circuits.fidelity`) are optional; the table shows
them where present.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from urllib.parse import quote

from .._io import write_text
from ..errors import InputError
from ._html import page

__all__ = ["write_circuit_html"]

CARD_W = 252  # pixels; every card has the same size so the edge coordinates are known here
CARD_H = 196
GAP_X = 28  # least horizontal gap between cards
LABEL_H = 30  # the layer's title above its cards
EDGE_GAP = 120  # vertical room for the edges between two bands
THUMB = 40  # exemplar thumbnail side
MAX_THUMBS = 5
MAX_STROKE = 10.0  # stroke width of the heaviest edge; the others are proportional
MAX_NEURONS = 24  # member neuron ids listed on a card (all of them in its tooltip)
MAX_LINKS = 4  # lower nodes linked from a card, heaviest first

_CSS = f"""
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
.muted {{ color: #777; }} .ok {{ color: #070; font-weight: bold; }} .miss {{ color: #a00; }}
.scroll {{ overflow-x: auto; border: 1px solid #eee; }}
.canvas {{ position: relative; }}
.canvas svg {{ position: absolute; left: 0; top: 0; }}
.canvas line {{ stroke: #3465a4; stroke-opacity: 0.55; stroke-linecap: round; }}
.band {{ position: absolute; left: 0; border-top: 1px dashed #ccc; pointer-events: none; }}
.band h2 {{ position: sticky; left: 0; display: inline-block; margin: 0; padding: 4px 8px; font-size: 1em;
  background: #fff; }}
.card {{ position: absolute; box-sizing: border-box; width: {CARD_W}px; height: {CARD_H}px; overflow: hidden;
  border: 1px solid #bbb; border-radius: 4px; background: #fafafa; padding: 6px; font-size: 12px; }}
.card:target {{ outline: 3px solid #f57900; }}
.card .title {{ font-weight: bold; }} .card .label {{ font-style: italic; }}
.card .bar {{ height: 4px; background: #3465a4; margin: 3px 0; }}
.card .thumbs {{ white-space: nowrap; }} \
.card .thumbs img {{ margin: 2px 2px 2px 0; border: 1px solid #ddd; }}
.card a {{ color: #204a87; }}
#fidelity td {{ white-space: nowrap; }}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(x, fmt: str = ".3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else _e(x)


def _real(value, where: str, *, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"circuit.json: {where} must be a finite number, got {value!r}")
    if nonnegative and value < 0:
        raise InputError(f"circuit.json: {where} must be >= 0, got {value!r}")
    return float(value)


def _check_fields(circuit) -> list[str]:
    """The circuit is an object with list fields ``layers``, ``nodes`` and ``edges``; returns the layers,
    distinct strings."""
    if not isinstance(circuit, dict):
        raise InputError(f"circuit.json: expected an object, got {type(circuit).__name__}")
    for field in ("layers", "nodes", "edges"):
        if field not in circuit:
            raise InputError(f"circuit.json: missing field {field!r}")
        if not isinstance(circuit[field], list):
            raise InputError(f"circuit.json: field {field!r} must be a list, "
                             f"got {type(circuit[field]).__name__}")
    layers = circuit["layers"]
    if not layers:
        raise InputError("circuit.json: field 'layers' is empty")
    for i, name in enumerate(layers):
        if not isinstance(name, str):
            raise InputError(f"circuit.json: layers[{i}] must be a string, got {name!r}")
    if len(set(layers)) != len(layers):
        raise InputError(f"circuit.json: layers has duplicates: {layers!r}")
    return layers


def _check_node(i: int, node, layers: list[str], ids: dict[str, dict]) -> None:
    """``nodes[i]``: a new string id, a listed layer, integer neurons, path exemplars, a real importance."""
    if not isinstance(node, dict):
        raise InputError(f"circuit.json: nodes[{i}] must be an object, got {node!r}")
    for field in ("id", "layer"):
        if field not in node:
            raise InputError(f"circuit.json: nodes[{i}] is missing field {field!r}")
    if not isinstance(node["id"], str) or node["id"] in ids:
        raise InputError(f"circuit.json: nodes[{i}].id {node['id']!r} is not a string or is not unique")
    if node["layer"] not in layers:
        raise InputError(f"circuit.json: nodes[{i}].layer {node['layer']!r} is not in layers {layers!r}")
    for field in ("neurons", "exemplars"):
        if not isinstance(node.get(field, []), list):
            raise InputError(f"circuit.json: nodes[{i}].{field} must be a list, got {node[field]!r}")
    for j, n in enumerate(node.get("neurons", [])):
        if isinstance(n, bool) or not isinstance(n, int):
            raise InputError(f"circuit.json: nodes[{i}].neurons[{j}] must be an integer, got {n!r}")
    for j, path in enumerate(node.get("exemplars", [])):
        if not isinstance(path, str):
            raise InputError(f"circuit.json: nodes[{i}].exemplars[{j}] must be a path string, got {path!r}")
    if node.get("importance") is not None:
        _real(node["importance"], f"nodes[{i}].importance")


def _check_edge(i: int, edge, ids: dict[str, dict], rank: dict[str, int]) -> None:
    """``edges[i]``: known source and target nodes, a weight >= 0, from an upper to a lower layer."""
    if not isinstance(edge, dict):
        raise InputError(f"circuit.json: edges[{i}] must be an object, got {edge!r}")
    for field in ("source", "target", "weight"):
        if field not in edge:
            raise InputError(f"circuit.json: edges[{i}] is missing field {field!r}")
    for field in ("source", "target"):
        if not isinstance(edge[field], str) or edge[field] not in ids:
            raise InputError(f"circuit.json: edges[{i}].{field} {edge[field]!r} is not the id of a node")
    _real(edge["weight"], f"edges[{i}].weight", nonnegative=True)
    upper, lower = ids[edge["source"]]["layer"], ids[edge["target"]]["layer"]
    if rank[upper] >= rank[lower]:
        raise InputError(f"circuit.json: edges[{i}].source {edge['source']!r} (layer {upper!r}) is not above "
                         f"its target {edge['target']!r} (layer {lower!r})")


def _check_optional(circuit: dict) -> None:
    """The optional fields: ``truth`` and ``metrics`` objects by layer, ``fidelity`` a list of objects."""
    for field in ("truth", "metrics"):
        value = circuit.get(field)
        if value is not None and not isinstance(value, dict):
            raise InputError(f"circuit.json: field {field!r} must be an object by layer, got {value!r}")
    for name, true in (circuit.get("truth") or {}).items():
        if not isinstance(true, list) or not all(isinstance(n, int) and not isinstance(n, bool)
                                                 for n in true):
            raise InputError(f"circuit.json: truth[{name!r}] must be a list of neuron ids, got {true!r}")
    for name, m in (circuit.get("metrics") or {}).items():
        if not isinstance(m, dict):
            raise InputError(f"circuit.json: metrics[{name!r}] must be an object, got {m!r}")
    fidelity = circuit.get("fidelity")
    if fidelity is not None and not (isinstance(fidelity, list)
                                     and all(isinstance(f, dict) for f in fidelity)):
        raise InputError(f"circuit.json: field 'fidelity' must be a list of objects, got {fidelity!r}")


def _validate(circuit) -> tuple[list[str], list[dict], list[dict]]:
    """Checks the fields the page uses; each error names the field. Returns (layers, nodes, edges)."""
    layers = _check_fields(circuit)
    ids: dict[str, dict] = {}
    for i, node in enumerate(circuit["nodes"]):
        _check_node(i, node, layers, ids)
        ids[node["id"]] = node
    rank = {name: k for k, name in enumerate(layers)}
    for i, edge in enumerate(circuit["edges"]):
        _check_edge(i, edge, ids, rank)
    _check_optional(circuit)
    return layers, circuit["nodes"], circuit["edges"]


def _layout(layers, nodes, edges) -> tuple[dict[str, tuple[float, float]], int, int, dict[str, float]]:
    """Card top-left corners by node id, the canvas size, and each band's top.

    Cards are evenly spaced across the canvas in each band. The top band keeps the input order; each
    lower band is ordered by the weighted mean position of the upper nodes feeding it (fewer crossings),
    nodes fed by nothing last, ties by group then id.
    """
    by_layer = {name: [n for n in nodes if n["layer"] == name] for name in layers}
    widest = max([len(v) for v in by_layer.values()] + [1])
    width = widest * (CARD_W + GAP_X) + GAP_X
    band_h = LABEL_H + CARD_H + EDGE_GAP
    height = len(layers) * band_h - EDGE_GAP + GAP_X
    parents: dict[str, list[tuple[str, float]]] = {}
    for edge in edges:
        parents.setdefault(edge["target"], []).append((edge["source"], float(edge["weight"])))
    pos: dict[str, tuple[float, float]] = {}
    band_top: dict[str, float] = {}
    for k, name in enumerate(layers):
        row = by_layer[name]
        if k > 0:
            def key(node):
                placed = [(pos[s][0], w) for s, w in parents.get(node["id"], []) if s in pos]
                total = sum(w for _, w in placed)
                if placed and total > 0:
                    centre = sum(x * w for x, w in placed) / total
                elif placed:
                    centre = sum(x for x, _ in placed) / len(placed)
                else:
                    centre = math.inf
                group = node.get("group")
                return centre, (0, group) if isinstance(group, (int, float)) else (1, 0), node["id"]
            row = sorted(row, key=key)
        top = k * band_h
        band_top[name] = top
        slot = width / max(len(row), 1)
        for i, node in enumerate(row):
            pos[node["id"]] = (round(slot * (i + 0.5) - CARD_W / 2, 1), top + LABEL_H)
    return pos, width, height, band_top


def _neurons_html(neurons, true_set) -> str:
    shown = neurons[:MAX_NEURONS]
    parts = []
    for n in shown:
        if true_set is None:
            parts.append(_e(n))
        else:
            parts.append(f"<span class='{'ok' if n in true_set else 'miss'}'>{_e(n)}</span>")
    more = f" … (+{len(neurons) - len(shown)})" if len(neurons) > len(shown) else ""
    return ", ".join(parts) + more


def _card(node, index, pos, children, id_index, true_set, max_importance) -> str:
    x, y = pos
    nid = node["id"]
    neurons = node.get("neurons") or []
    head = (f"<div class='title'>{_e(node['layer'])} · group {_e(node.get('group', '?'))}</div>"
            f"<div class='muted'>{_e(nid)}</div>")
    label = f"<div class='label'>{_e(node['label'])}</div>" if node.get("label") else ""
    imp = node.get("importance")
    bar = ""
    if imp is not None:
        frac = max(0.0, float(imp)) / max_importance if max_importance > 0 else 0.0
        bar = (f"<div>importance {float(imp):.3f}</div>"
               f"<div class='bar' style='width:{100 * frac:.1f}%'></div>")
    nlist = (f"<div title='{_e(', '.join(map(str, neurons)))}'>{len(neurons)} "
             f"neuron{'s' * (len(neurons) != 1)}: {_neurons_html(neurons, true_set)}</div>")
    exemplars = node.get("exemplars") or []
    thumbs = "".join(
        f"<a href='{src}'><img src='{src}' width='{THUMB}' height='{THUMB}' "
        f"alt='exemplar {j + 1} of {_e(nid)}'></a>"
        for j, src in enumerate(_e(quote(p.replace(os.sep, "/"), safe="/")) for p in exemplars[:MAX_THUMBS]))
    if len(exemplars) > MAX_THUMBS:
        thumbs += f"<span class='muted'>+{len(exemplars) - MAX_THUMBS}</span>"
    links = ""
    if children:
        heavy = sorted(children, key=lambda c: -c[1])
        shown = ", ".join(f"<a href='#node-{id_index[t]}'>{_e(t)}</a> {w:.2f}" for t, w in heavy[:MAX_LINKS])
        more = f" … (+{len(heavy) - MAX_LINKS})" if len(heavy) > MAX_LINKS else ""
        links = f"<div>→ {shown}{more}</div>"
    return (f"<div class='card' id='node-{index}' data-node='{_e(nid)}' data-layer='{_e(node['layer'])}' "
            f"style='left:{x}px;top:{y}px'>{head}{label}{bar}{nlist}<div class='thumbs'>{thumbs}</div>"
            f"{links}</div>")


def _truth_html(layers, circuit, nodes) -> str:
    truth = circuit.get("truth") or {}
    metrics = circuit.get("metrics") or {}
    with_fdr = any(isinstance(m, dict) and "empirical_fdr" in m for m in metrics.values())
    rows = []
    for name in layers:
        if name not in truth and name not in metrics:
            continue
        found = {n for node in nodes if node["layer"] == name for n in node.get("neurons") or []}
        true = list(truth.get(name) or [])
        missed = [n for n in true if n not in found]
        m = metrics.get(name) or {}
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{len(found)}</td>"
            f"<td>{_e(', '.join(map(str, true))) if name in truth else '-'}</td>"
            f"<td class='{'miss' if missed else 'ok'}'>"
            f"{_e(', '.join(map(str, missed))) if missed else 'none'}</td>"
            f"<td>{_num(m['precision']) if 'precision' in m else '-'}</td>"
            f"<td>{_num(m['recall']) if 'recall' in m else '-'}</td>"
            f"<td>{_setting(m)}</td>" + (f"<td>{_fdr_cell(m)}</td>" if with_fdr else "") + "</tr>")
    if not rows:
        return ""
    return ("<h2>Planted core neurons</h2><p>Neurons on the cards: <span class='ok'>green</span> are planted "
            "core neurons, <span class='miss'>red</span> are not. Precision and recall are at the method's "
            "setting (NeurFlow's tau, NeuCEPT's target FDR). NeuCEPT's empirical FDR (selections outside the "
            "planted circuit) is checkable only on a layer where every other channel is an exact knockoff "
            "null; where the output depends on other channels too, they are true discoveries for the "
            "knockoffs.</p><table id='truth'><tr><th>layer</th>"
            "<th>neurons in circuit</th><th>true core</th><th>missed</th><th>precision</th>"
            "<th>recall</th><th>at</th>" + ("<th>empirical FDR</th>" if with_fdr else "") + "</tr>"
            + "".join(rows) + "</table>")


def _setting(m: dict) -> str:
    """The method's setting behind a layer's metrics: tau or target FDR."""
    if "tau" in m:
        return f"tau {_e(m['tau'])}"
    if "target_fdr" in m:
        return f"target FDR {_num(m['target_fdr'])}"
    return "-"


def _fdr_cell(m: dict) -> str:
    """A layer's empirical FDR, 'not checkable' where the planted truth is not the knockoffs' nulls."""
    if "empirical_fdr" not in m:
        return "-"
    if m["empirical_fdr"] is None:
        return "<span class='muted'>not checkable</span>"
    return _num(m["empirical_fdr"])


def _fidelity_html(circuit) -> str:
    fidelity = circuit.get("fidelity") or []
    if not fidelity:
        return ""
    return ("<h2>Fidelity</h2><p>The class output with the circuit's neurons masked (<i>mask</i>) or with "
            "only them kept (<i>retain</i>), against the same for random sets of k neurons (mean ± sample "
            "std): the share of the class's images still predicted, and the class's mean logit as a fraction "
            "of its unmasked value. Where the decision is saturated (accuracy 1.000 for core and random sets "
            "alike), the logit still separates them: <i>logit drop</i> is the share of the logit lost, "
            "<i>sds</i> the core's distance from the random sets in their standard deviations (bold beyond "
            "3).</p><table id='fidelity'><tr><th>layer</th><th>scope</th><th>mode</th><th>k</th>"
            "<th>accuracy, core</th><th>accuracy, random</th><th>(core − mean) / std</th>"
            "<th>logit, core</th><th>logit, random</th><th>logit drop, core / random</th>"
            "<th>logit sds</th></tr>"
            + "".join(_fidelity_row(f) for f in fidelity) + "</table>")


def _is_real(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _fidelity_row(f: dict) -> str:
    """One fidelity row: accuracy and logit, core against random sets; fields that are absent show '-'."""
    core, mean, std = f.get("core"), f.get("random_mean"), f.get("random_std")
    z = f"{(core - mean) / std:+.1f}" if _is_real(core, mean, std) and std > 0 else "-"
    lcore, lmean, lstd = f.get("core_logit"), f.get("random_logit_mean"), f.get("random_logit_std")
    drops = "-"
    if _is_real(lcore, lmean):
        drops = f"{f.get('core_logit_drop', 1 - lcore):.1%} / {f.get('random_logit_drop', 1 - lmean):.1%}"
    lz = f.get("logit_z")
    sds = (f"<b>{lz:+.1f}</b>" if abs(lz) > 3 else f"{lz:+.1f}") if _is_real(lz) else "-"
    cells = [_e(f.get("layer", "")), _e(f.get("scope", "")), _e(f.get("mode", "")), _e(f.get("k", "")),
             _num(core), _pm(mean, std), z, _num(lcore) if lcore is not None else "-", _pm(lmean, lstd),
             drops, sds]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _pm(mean, std) -> str:
    """'mean ± std', or what is known of it."""
    if mean is None:
        return "-"
    return f"{_num(mean)} ± {_num(std)}" if std is not None else _num(mean)


def _edges_svg(edges, pos, width: int, height: int) -> str:
    """The edges as an SVG of the canvas's size: one line per edge, from the bottom of its upper card to
    the top of its lower card, its width proportional to its weight, heaviest drawn last (on top)."""
    heaviest = max([float(e["weight"]) for e in edges] + [0.0])
    lines = []
    for edge in sorted(edges, key=lambda e: float(e["weight"])):
        (sx, sy), (tx, ty) = pos[edge["source"]], pos[edge["target"]]
        w = float(edge["weight"])
        stroke = MAX_STROKE * w / heaviest if heaviest > 0 else 0.0
        lines.append(
            f"<line x1='{sx + CARD_W / 2:.1f}' y1='{sy + CARD_H}' x2='{tx + CARD_W / 2:.1f}' y2='{ty}' "
            f"stroke-width='{stroke:.3f}' data-source='{_e(edge['source'])}' "
            f"data-target='{_e(edge['target'])}' "
            f"data-weight='{w:.6g}'><title>{_e(edge['source'])} → {_e(edge['target'])}: weight {w:.3f}"
            f"</title></line>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}'>{''.join(lines)}</svg>")


def _bands_html(layers, nodes, band_top, width: int) -> str:
    """One band per layer: its title and node count, behind its cards."""
    bands = []
    for name in layers:
        count = sum(n["layer"] == name for n in nodes)
        bands.append(f"<section class='band' style='top:{band_top[name]}px;width:{width}px;"
                     f"height:{LABEL_H + CARD_H}px'><h2>{_e(name)} <span class='muted'>({count} node"
                     f"{'s' * (count != 1)})</span></h2></section>")
    return "".join(bands)


def _cards_html(circuit, nodes, edges, pos) -> str:
    """Every node's card, in the order of ``nodes``."""
    id_index = {node["id"]: i for i, node in enumerate(nodes)}
    children: dict[str, list[tuple[str, float]]] = {}
    for edge in edges:
        children.setdefault(edge["source"], []).append((edge["target"], float(edge["weight"])))
    truth = circuit.get("truth") or {}
    importances = [float(n["importance"]) for n in nodes if n.get("importance") is not None]
    max_importance = max(importances + [0.0])
    cards = []
    for node in nodes:
        true_set = set(truth[node["layer"]]) if node["layer"] in truth else None
        cards.append(_card(node, id_index[node["id"]], pos[node["id"]], children.get(node["id"], []),
                           id_index, true_set, max_importance))
    return "".join(cards)


def write_circuit_html(out_dir: str | os.PathLike, circuit: dict) -> Path:
    """Write ``out_dir/circuit.html``, a view of ``circuit`` (the content of ``circuit.json``); returns
    its path.

    Exemplar paths are relative to ``out_dir`` and used as they are. Raises ``InputError`` naming the
    field when ``layers``, ``nodes`` or ``edges`` is missing or malformed, a node's layer is not listed,
    or an edge names an unknown node, has a negative weight, or does not go from an upper to a lower
    layer.
    """
    layers, nodes, edges = _validate(circuit)
    pos, width, height, band_top = _layout(layers, nodes, edges)
    svg = _edges_svg(edges, pos, width, height)
    bands = _bands_html(layers, nodes, band_top, width)
    cards = _cards_html(circuit, nodes, edges, pos)

    cls = circuit.get("class", "?")
    facts = [f"class <b>{_e(cls)}</b>"
             + (f" (index {_e(circuit['class_index'])})" if "class_index" in circuit else "")]
    for field in ("model", "method"):
        if circuit.get(field) is not None:
            facts.append(f"{field} <b>{_e(circuit[field])}</b>")
    title = f"Circuit for {cls}"
    body = (f"<h1>{_e(title)}</h1><p>{' · '.join(facts)} · {len(nodes)} nodes in {len(layers)} layers, "
            f"{len(edges)} edges</p><p class='muted'>Read from the top (the class logit) down: each card is "
            "a group of neurons with its top exemplar crops; a line joins an upper node to a lower node it "
            "draws on, its width proportional to the edge weight (weights sum to 1 over each upper node's "
            "edges; hover a line for its weight). Links on a card jump to its heaviest lower nodes.</p>"
            + _truth_html(layers, circuit, nodes) + _fidelity_html(circuit)
            + f"<h2>Circuit</h2><div class='scroll'><div class='canvas' id='circuit' style='width:{width}px;"
            f"height:{height}px'>{svg}{bands}{cards}</div></div>")
    path = Path(out_dir) / "circuit.html"
    write_text(path, page(f"{title} — neurcore", body, css=_CSS))
    return path
