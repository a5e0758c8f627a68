"""The whole command a user of the peer package (PyPI ``compositional-explanations``, La Rosa & Gilpin)
runs to explain a layer given as ``neurcore search`` takes it: ``C.npz`` (``masks`` bool
[n_concepts, n_images, ...], ``names``) and ``U.npz`` (``masks`` bool [n_units, n_images, ...]).

    python benchmarks/_peer_search.py --concepts C.npz --units U.npz --method beam|optimal
                                      [--length 3] [--beam 5] [--workers 1] [--threads 0] --out R.jsonl

It loads the arrays, hands each mask to the peer as a torch tensor [n_images, pixels] (the shape its
README asks for), computes the disjointness matrix it needs from the masks, and calls its
``beam.compute_beam_explanations`` or ``optimal.compute_optimal_explanations`` unit by unit, with a
``cache_dir`` so that its dataset statistics are computed once, not per unit. ``--workers N`` splits
the units over N forked processes (it has no parallel driver of its own); ``--threads T`` sets torch's
threads in each (0: torch's default). Each output line:
``unit``, ``tree`` (the formula as nested lists: a concept index, ``["NOT", x]``, ``["AND", l, r]``,
``["OR", l, r]``; null when it finds none), ``formula`` (the peer's own string), ``iou`` (the peer's
``metrics.compute_iou_from_masks``) and ``seconds`` (that unit's search). Imports no neurcore.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import tempfile
import time

import numpy as np
import torch
from compositional_explanations import beam, formula, metrics, optimal
from package_utils import mask_utils  # installed by the same wheel

#: The loaded inputs, set before the workers fork.
_RUN: dict = {}


def tree(f):
    """The peer's formula as nested lists of concept indices."""
    if f is None:
        return None
    if isinstance(f, formula.Leaf):
        return int(f.val)
    if isinstance(f, formula.Not):
        return ["NOT", tree(f.val)]
    return [f.op, tree(f.left), tree(f.right)]


def disjoint_matrix(concepts: np.ndarray, chunk: int = 1 << 16) -> torch.Tensor:
    """[n, n] bool, True where two concept masks share no pixel (float32 products, pixels in chunks)."""
    flat = concepts.reshape(len(concepts), -1)
    shared = np.zeros((len(flat), len(flat)), np.float64)
    for s in range(0, flat.shape[1], chunk):
        part = flat[:, s : s + chunk].astype(np.float32)
        shared += part @ part.T
    return torch.from_numpy(shared == 0)


def explain(unit: int) -> dict:
    """One unit through the peer's search, as its README calls it."""
    r = _RUN
    bitmaps = torch.from_numpy(r["units"][unit].reshape(r["n_images"], -1))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        if r["method"] == "beam":
            f = beam.compute_beam_explanations(
                bitmaps=bitmaps, masks=r["masks"], disjoint_info=r["disjoint"], length=r["length"],
                beam_size=r["beam"], device=torch.device("cpu"), cache_dir=r["cache_dir"])
        else:
            f = optimal.compute_optimal_explanations(
                bitmaps=bitmaps, masks=r["masks"], disjoint_info=r["disjoint"], length=r["length"],
                device=torch.device("cpu"), cache_dir=r["cache_dir"])
    seconds = time.perf_counter() - t0
    iou = 0.0 if f is None else metrics.compute_iou_from_masks(formula=f, masks=r["masks"], bitmaps=bitmaps)
    text = None if f is None else formula.get_formula_str(f, r["names"])
    return {"unit": unit, "tree": tree(f), "formula": text, "iou": float(iou), "seconds": round(seconds, 4)}


def dataset_statistics(masks, cache_dir: str) -> None:
    """The peer's per-dataset statistics (which pixels no, one or several concepts cover), computed once
    into ``cache_dir``, where its searches look for them."""
    with contextlib.redirect_stdout(io.StringIO()):
        mask_utils.get_dataset_info(masks, cache_dir)


def _threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concepts", required=True)
    ap.add_argument("--units", required=True)
    ap.add_argument("--method", choices=("beam", "optimal"), default="beam")
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    with np.load(args.concepts) as c:
        C = c["masks"]
        names = [str(n) for n in c["names"]]
    with np.load(args.units) as u:
        A = u["masks"]
    n_images = C.shape[1]
    masks = [torch.from_numpy(m.reshape(n_images, -1)) for m in C]
    with tempfile.TemporaryDirectory() as cache_dir:
        dataset_statistics(masks, cache_dir)  # once, before any worker reads it
        _RUN.update(units=A, n_images=n_images, masks=masks, names=names, disjoint=disjoint_matrix(C),
                    method=args.method, length=args.length, beam=args.beam, cache_dir=cache_dir)
        if args.workers > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(args.workers, initializer=_threads, initargs=(args.threads,)) as pool:
                rows = list(pool.imap(explain, range(len(A)), chunksize=1))
        else:
            _threads(args.threads)
            rows = [explain(unit) for unit in range(len(A))]
    with open(args.out, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
