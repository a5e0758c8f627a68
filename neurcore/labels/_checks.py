"""Input checks shared by the vision-language methods (CLIP-Dissect, LinEx): each error names the
array or field and the entry that is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

from ..errors import InputError

__all__ = ["UnitIndices", "unit_indices", "finite_2d", "unit_rows", "concept_matrix", "check_names"]

#: Unit indices into a layer's columns: a list or 1-d integer array, or None for every unit.
UnitIndices = Union[Sequence[int], np.ndarray, None]


def unit_indices(units: UnitIndices, n_units: int) -> np.ndarray:
    """The unit indices asked for, int64 [k] (every unit when ``units`` is None), each in range."""
    if units is None:
        return np.arange(n_units)
    ids = np.asarray(units)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise InputError(f"units must be a 1-d list of unit indices, got {units!r}")
    if ids.size == 0:
        raise InputError("units is empty")
    bad = ids[(ids < 0) | (ids >= n_units)]
    if bad.size:
        raise InputError(f"units: index {int(bad[0])} is outside the layer's {n_units} units")
    return ids.astype(np.int64)


def finite_2d(x, name: str) -> np.ndarray:
    """``x`` as a real, finite 2-d array; the error names the array ``name`` and the bad entry."""
    try:
        arr = np.asarray(x, dtype=np.float64) if not isinstance(x, np.ndarray) else x
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a numeric array: {e}") from None
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-d, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"{name} has a non-finite value ({arr[tuple(bad)]}) at {tuple(int(i) for i in bad)}")
    return arr


def unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm; a zero row is an error naming ``name``."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        raise InputError(f"{name}: row {int(np.argmin(norm[:, 0]))} is the zero vector; it has no direction")
    return x / norm


def concept_matrix(x, names: Sequence[str], field: str) -> tuple[np.ndarray, list[str]]:
    """A finite 2-d [n_images, n_concepts] matrix and its n_concepts unique, non-empty names."""
    arr = finite_2d(x, field)
    names = [str(n) for n in names]
    if len(names) != arr.shape[1]:
        raise InputError(f"{field} has {arr.shape[1]} concept columns but {len(names)} names were given")
    check_names(names, "names")
    return arr, names


def check_names(names: list[str], field: str) -> None:
    """Concept names must be non-empty and unique; the error names ``field`` and the positions."""
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if not n.strip():
            raise InputError(f"{field}[{i}] is empty")
        if n in seen:
            raise InputError(f"{field}: duplicate concept name {n!r} (positions {seen[n]} and {i})")
        seen[n] = i
