"""Files, shared by every stage: atomic writes, JSON, run manifests and the user cache directory.

A file written here appears whole under its name, or the old one stays: long runs can be killed at
any moment and resume from what is on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

from .errors import InputError

__all__ = ["atomic_path", "atomic_open", "write_json", "write_text", "write_image", "write_png", "create_npy", "read_json",
           "check_manifest", "cache_dir", "safe_name"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs):
    """``open(path, mode)`` whose content replaces ``path`` only once the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_json(path: str | os.PathLike, data: Any, **kwargs) -> None:
    """``json.dump(data)`` to ``path``, atomically (``kwargs`` go to ``json.dump``)."""
    with atomic_open(path) as f:
        json.dump(data, f, **kwargs)


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text to ``path``, atomically."""
    with atomic_open(path, encoding="utf-8") as f:
        f.write(text)


def write_image(path: str | os.PathLike, image, format: str = "PNG", **options) -> None:
    """An image, uint8 numpy array [h, w, 3], written by Pillow at ``path`` in ``format`` (with Pillow's
    save ``options``, e.g. ``quality``), atomically."""
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(image).save(f, format=format, **options)


def write_png(path: str | os.PathLike, image) -> None:
    """An image, uint8 numpy array [h, w, 3], as a PNG file at ``path``, atomically."""
    write_image(path, image, "PNG")


def create_npy(path: str | os.PathLike, shape: tuple, dtype) -> int:
    """Create ``path`` as a .npy file of ``shape`` and ``dtype`` (contents zero) to be filled by
    positioned writes rather than a memory map; returns the byte offset of its data."""
    import numpy as np

    header = np.lib.format.header_data_from_array_1_0(np.zeros((0,) + tuple(shape)[1:], dtype))
    header["shape"] = tuple(int(d) for d in shape)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return offset


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON value in ``path``, or None when the file is missing or not valid JSON (a progress
    file is only a hint: without it a stage starts over)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def check_manifest(out_dir: str, settings: dict, name: str = "manifest.json", what: str = "") -> None:
    """Record a run's ``settings`` in ``out_dir/name``, refusing a directory made with other settings.

    ``settings["layers"]`` may differ (a rerun can add layers; the record keeps their union); any
    other difference is an :class:`~neurcore.errors.InputError` naming the settings that changed.
    ``what`` names the stage in the error (e.g. ``"labels "``).
    """
    path = os.path.join(out_dir, name)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        changed = {k for k in settings if k != "layers" and old.get(k) != settings[k]}
        if changed:
            raise InputError(f"{out_dir}: {what}made with other settings ({', '.join(sorted(changed))}); "
                             "choose another --out to start afresh")
        settings = dict(settings, layers=list(dict.fromkeys(old.get("layers", []) + settings["layers"])))
    write_json(path, settings, indent=2)


def cache_dir() -> str:
    """Where trained embedded models are cached: ``$NEURCORE_CACHE``, else ``~/.cache/neurcore``."""
    return os.environ.get("NEURCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "neurcore")


def safe_name(name: str) -> str:
    """A layer or model name as a file name: ``/`` becomes ``_``."""
    return name.replace("/", "_")
