"""Inputs of ``neurcore search`` as files: concept and unit arrays in ``.npz``.

``C.npz``: ``masks`` bool [n_concepts, n_images, ...], ``names`` strings
[n_concepts], optionally ``categories`` strings [n_concepts].
``U.npz``: ``masks`` bool [n_units, n_images, ...] over the same samples, or
``activations`` real [n_units, n_images, ...], binarized per unit at its top
quantile (``a > quantile(a, 1 - q)``, exact, as NetDissect's threshold T_k).
Every problem raises :class:`InputError` naming the file and array.
"""

from __future__ import annotations

import os
import zipfile
from typing import TYPE_CHECKING

import numpy as np

from ..engine import BitMasks
from ..errors import InputError
from ..results import Explanation, write_jsonl
from ._concepts import ConceptSet
from ._search import search

if TYPE_CHECKING:
    from ..distributed import ShardEngine

__all__ = ["load_concepts", "load_units", "load_activations", "binarize_top_quantile", "search_npz"]


class _Header:
    """Shape and dtype of an array left in its file, to be packed by ``_bits``."""

    def __init__(self, shape: tuple, dtype: np.dtype):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __len__(self) -> int:
        return self.shape[0]


#: Bytes of bool masks read at a time when packing a mask array straight from its file.
_CHUNK_BYTES = 8 << 20


def _read_header(f) -> tuple:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)  # shape, fortran_order, dtype


def _open(path, stream: tuple = ()) -> dict:
    """The arrays of an .npz by name. C-ordered bool arrays named in ``stream`` are not read here
    but given as a ``_Header``: packing them chunk by chunk never holds the whole bool array."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a readable .npz file (not a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {}
            for k in data.files:
                if k in stream:
                    with data.zip.open(f"{k}.npy") as f:
                        shape, fortran, dtype = _read_header(f)
                    if dtype.kind == "b" and not fortran and len(shape) >= 2 and shape[0] > 0:
                        out[k] = _Header(shape, dtype)
                        continue
                out[k] = data[k]
            return out
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputError(f"{path}: holds object arrays; store names as a numpy string array") from None
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None


def _bits(arr, path, key: str) -> BitMasks:
    """BitMasks of a bool array, or of one left in the file (packed ``_CHUNK_BYTES`` at a time)."""
    if not isinstance(arr, _Header):
        return BitMasks.from_dense(arr)
    n, row = arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64))
    per = max(1, _CHUNK_BYTES // row)
    buf = np.empty(min(per, n) * row, np.uint8)
    parts = []
    try:
        with zipfile.ZipFile(os.fspath(path)) as z, z.open(f"{key}.npy") as f:
            _read_header(f)
            for s in range(0, n, per):
                view = buf[: min(per, n - s) * row]
                got = f.readinto(memoryview(view))
                if got != view.nbytes:
                    raise InputError(f"{path}: {key!r} is truncated (rows {s} onwards missing)")
                parts.append(BitMasks.from_dense(view.view(bool).reshape((-1,) + arr.shape[1:]), "dense"))
    except InputError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    return BitMasks.concat(parts).as_layout("auto")


def _require(data: dict, path, key: str) -> np.ndarray:
    if key not in data:
        raise InputError(f"{path}: missing array {key!r} (has: {', '.join(sorted(data)) or 'nothing'})")
    return data[key]


def _masks(arr: np.ndarray, path, key: str, what: str) -> np.ndarray:
    if arr.dtype != bool:
        raise InputError(f"{path}: {key!r} must be a bool array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise InputError(f"{path}: {key!r} must have shape [{what}, n_images, ...], got {arr.shape}")
    if int(np.prod(arr.shape[2:], dtype=np.int64)) < 1:
        raise InputError(f"{path}: {key!r} has images of no pixels, shape {arr.shape}")
    return arr


def _strings(arr: np.ndarray, path, key: str, n: int) -> list[str]:
    if arr.dtype.kind not in "US" or arr.ndim != 1:
        raise InputError(
            f"{path}: {key!r} must be a 1-d string array, got dtype {arr.dtype}, shape {arr.shape}")
    if len(arr) != n:
        raise InputError(f"{path}: {key!r} has {len(arr)} entries but 'masks' has {n} concepts")
    return [s.decode() if isinstance(s, bytes) else str(s) for s in arr.tolist()]


def load_concepts(path: str | os.PathLike) -> ConceptSet:
    """A ConceptSet from ``C.npz`` (masks, names, optional categories)."""
    data = _open(path, stream=("masks",))
    masks = _masks(_require(data, path, "masks"), path, "masks", "n_concepts")
    names = _strings(_require(data, path, "names"), path, "names", len(masks))
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise InputError(
                f"{path}: 'names' has duplicate concept name {name!r} (entries {seen[name]} and {i})")
        seen[name] = i
    cats = _strings(data["categories"], path, "categories", len(masks)) if "categories" in data else None
    return ConceptSet(_bits(masks, path, "masks"), names, cats)


def binarize_top_quantile(activations: np.ndarray, quantile: float = 0.005) -> BitMasks:
    """Unit masks ``a > T`` of activations real [n_units, n_images, ...] -> BitMasks of that shape, with
    T the exact ``1 - quantile`` quantile of each unit's values (NetDissect's threshold T_k)."""
    if not 0 < quantile < 1:
        raise InputError(f"quantile must lie in (0, 1), got {quantile}")
    n = len(activations)
    flat = activations.reshape(n, -1)
    thresholds = np.quantile(flat, 1 - quantile, axis=1)
    return BitMasks.from_dense(activations > thresholds.reshape((n,) + (1,) * (activations.ndim - 1)))


def load_units(path: str | os.PathLike, sample_shape: tuple, quantile: float = 0.005) -> BitMasks:
    """Unit masks [n_units, *sample_shape] from ``U.npz`` (``masks``, or ``activations`` binarized at
    the top ``quantile``, a fraction)."""
    data = _open(path, stream=("masks",))
    if "masks" in data and "activations" in data:
        raise InputError(f"{path}: holds both 'masks' and 'activations'; keep one")
    if "masks" in data:
        masks = _masks(data["masks"], path, "masks", "n_units")
        key = "masks"
    elif "activations" in data:
        acts = data["activations"]
        key = "activations"
        if acts.dtype.kind not in "fiu" or acts.ndim < 2:
            raise InputError(f"{path}: 'activations' must be a real array [n_units, n_images, ...], "
                             f"got dtype {acts.dtype}, shape {acts.shape}")
        bad = ~np.isfinite(acts) if acts.dtype.kind == "f" else np.zeros(acts.shape, bool)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise InputError(f"{path}: 'activations' has {int(bad.sum())} NaN or infinite values "
                             f"(first in unit {first})")
        masks = None
    else:
        raise InputError(f"{path}: needs an array 'masks' or 'activations' "
                         f"(has: {', '.join(sorted(data)) or 'nothing'})")
    shape = (masks if masks is not None else acts).shape[1:]
    if tuple(shape) != tuple(sample_shape):
        raise InputError(f"{path}: {key!r} is over samples {tuple(shape)} but the concept masks are over "
                         f"{tuple(sample_shape)}")
    return _bits(masks, path, "masks") if masks is not None else binarize_top_quantile(acts, quantile)


def search_npz(concepts_path: str | os.PathLike, units_path: str | os.PathLike,
               out: str | os.PathLike | None = None, *, method: str = "beam", length: int = 3, beam: int = 5,
               quantile: float = 0.005, threshold: float = 0.04, category: str | None = None,
               layer: str | None = None, device: str = "cpu",
               time_budget: float | None = None, engine: ShardEngine | None = None,
               units_per_task: int = 64) -> list[Explanation]:
    """``neurcore search`` as a function: load, explain every unit, write ``out`` (JSON lines,
    atomically) when given, and return the list of Explanation. ``engine``: None (here), or a
    :class:`~neurcore.distributed.ShardEngine` such as a ``neurcore.distributed.RayEngine`` that
    searches ``units_per_task`` units a task, the concept masks sent once (same results)."""
    if length < 1:
        raise InputError(f"length must be >= 1, got {length}")
    if beam < 1:
        raise InputError(f"beam must be >= 1, got {beam}")
    concepts = load_concepts(concepts_path)
    activations = None
    if method == "clustered":
        activations = load_activations(units_path, concepts.masks.sample_shape)
        units = BitMasks.zeros(activations.shape[1], concepts.masks.sample_shape)
    else:
        units = load_units(units_path, concepts.masks.sample_shape, quantile)
    options = {"method": method, "length": length, "beam": beam, "threshold": threshold,
               "category": category, "layer": layer, "time_budget": time_budget}
    if engine is None:
        if device != "cpu":
            concepts, units = concepts.to(device), units.to(device)
        results = search(units, concepts, activations=activations, **options)
    else:
        if device != "cpu":
            raise InputError(f"an engine searches on its workers' CPUs: leave out --device {device}")
        results = _search_on_engine(engine, units, concepts, activations, options, units_per_task)
    if out is not None:
        write_jsonl(out, results)
    return results


def load_activations(path: str | os.PathLike, sample_shape: tuple) -> np.ndarray:
    """Raw activations of ``U.npz`` as float32 [n_images, n_units, ...] (for clustered explanations)."""
    data = _open(path)
    if "activations" not in data:
        raise InputError(f"{path}: method 'clustered' needs an array 'activations' (has: "
                         f"{', '.join(sorted(data)) or 'nothing'})")
    acts = data["activations"]
    if acts.dtype.kind not in "fiu" or acts.ndim < 2 or tuple(acts.shape[1:]) != tuple(sample_shape):
        raise InputError(f"{path}: 'activations' must be real [n_units, *{tuple(sample_shape)}], "
                         f"got dtype {acts.dtype}, shape {acts.shape}")
    if acts.dtype.kind == "f" and not np.isfinite(acts).all():
        raise InputError(f"{path}: 'activations' has NaN or infinite values")
    return np.moveaxis(acts.astype(np.float32, copy=False), 0, 1)


def _search_on_engine(engine: ShardEngine, units: BitMasks, concepts: ConceptSet, activations: np.ndarray | None,
                      options: dict, units_per_task: int) -> list[Explanation]:
    """The search as tasks of ``units_per_task`` units on a shard engine, in unit order."""
    calls = ({"start": s, "masks": units[s : s + units_per_task],
              "acts": None if activations is None else np.ascontiguousarray(activations[:, s : s + units_per_task])}
             for s in range(0, units.n, units_per_task))
    parts = {call["start"]: chunk for call, chunk in
             engine.map_tasks(_search_task, calls, {"concepts": concepts, **options}, "search")}
    return [r for start in sorted(parts) for r in parts[start]]


def _search_task(concepts: ConceptSet, *, start: int, masks: BitMasks, acts: np.ndarray | None,
                 **options) -> list[Explanation]:
    out = search(masks, concepts, activations=acts, **options)
    for r in out:
        r.unit += start
    return out
