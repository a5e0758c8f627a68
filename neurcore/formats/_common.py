"""What every format shares: reading neurcore results, CSV rows with line numbers, numbers that name
the file, row and field when they are wrong."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import InputError
from ..results import Explanation


def bad(path: str, row: int, column: str, message: str) -> InputError:
    """The error of one field: ``"{path}: row {row}: {column}: {message}"`` (rows are file lines, from 1)."""
    return InputError(f"{path}: row {row}: {column}: {message}")


@dataclass
class Source:
    """Explanations to export and, when they come from a results directory, that directory and its
    manifest (the model's name, the concept masks for NetDissect's per-category tallies)."""

    rows: list[Explanation]
    run_dir: str | None = None
    manifest: dict = field(default_factory=dict)


def load_source(source: str | os.PathLike | Sequence[Explanation], layer: str | None = None) -> Source:
    """Explanations from a results directory (``results.jsonl``, then the rows of ``labels.jsonl`` not
    already there), a neurcore JSONL file, or a list; only ``layer``'s rows when given."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            files = [os.path.join(path, n) for n in ("results.jsonl", "labels.jsonl")]
            files = [f for f in files if os.path.isfile(f)]
            if not files:
                raise InputError(f"{path}: no results.jsonl or labels.jsonl in this directory")
            run_dir = path
        elif os.path.isfile(path):
            files, run_dir = [path], os.path.dirname(os.path.abspath(path))
        else:
            raise InputError(f"{path}: no such file or directory")
        rows = read_results_jsonl(files[0])
        if len(files) > 1:  # labels.jsonl: only the rows results.jsonl does not already hold
            seen = {(r.layer, r.unit, r.method) for r in rows}
            rows += [r for r in read_results_jsonl(files[1]) if (r.layer, r.unit, r.method) not in seen]
        manifest = read_manifest(run_dir)
    else:
        rows, run_dir, manifest = list(source), None, {}
    if layer is not None:
        rows = [r for r in rows if r.layer == layer]
    return Source(rows, run_dir, manifest)


def read_manifest(run_dir: str) -> dict:
    """A run's ``manifest.json`` (empty when there is none or it is unreadable)."""
    try:
        with open(os.path.join(run_dir, "manifest.json")) as f:
            got = json.load(f)
        return got if isinstance(got, dict) else {}
    except (OSError, ValueError):
        return {}


def read_results_jsonl(path: str) -> list[Explanation]:
    """neurcore's own JSONL, with a malformed line reported by file and row."""
    out = []
    for n, d in json_lines(path):
        try:
            out.append(Explanation.from_dict(d))
        except TypeError as e:
            raise bad(path, n, "explanation", f"not a neurcore explanation ({e})") from None
    return out


def json_lines(path: str) -> Iterator[tuple[int, object]]:
    """(line number from 1, parsed value) of each non-empty line of a JSONL file; a line that is not
    JSON is an InputError naming the file and row."""
    for n, line in read_lines(path):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError as e:
            raise bad(path, n, "json", f"not valid JSON ({e.msg})") from None


def is_neurcore_results(path: str) -> bool:
    """Whether a file is neurcore's own JSONL: its first non-empty line is an object with ``unit`` and
    ``method`` (an Explanation), which no exported format writes."""
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
    except (OSError, UnicodeDecodeError):
        return False
    if not first.lstrip().startswith("{"):
        return False
    try:
        d = json.loads(first)
    except ValueError:
        return False
    return isinstance(d, dict) and "unit" in d and "method" in d


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of a UTF-8 text file; a missing or undecodable file is an InputError."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            yield from enumerate(f, 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_csv(path: str, required: Sequence[str]) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header of a CSV file and its rows as (line number, {column: text}); a missing column
    in the header, or a row with more or fewer fields than the header, is an InputError."""
    try:
        f = open(path, encoding="utf-8", newline="")  # noqa: SIM115 (closed by the rows' generator)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    reader = csv.reader(f)
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as e:
        f.close()
        raise bad(path, 1, "header", f"not a readable CSV header ({e})") from None
    if not header:
        f.close()
        raise bad(path, 1, "header", "the file is empty (expected a header row)")
    missing = [c for c in required if c not in header]
    if missing:
        f.close()
        raise bad(path, 1, "header", f"missing column {missing[0]!r} (columns: {','.join(header)})")
    return header, _rows(path, f, reader, header)


def _rows(path, f, reader, header) -> Iterator[tuple[int, dict[str, str]]]:
    with f:
        start = 2
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except (UnicodeDecodeError, csv.Error) as e:
                raise bad(path, start, "row", f"not readable CSV ({e})") from None
            if values:
                if len(values) < len(header):
                    raise bad(path, start, header[len(values)], "missing value (the row is short)")
                if len(values) > len(header):
                    raise bad(path, start, "row", f"{len(values)} fields for {len(header)} columns")
                yield start, dict(zip(header, values))
            start = reader.line_num + 1


def number(path: str, row: int, column: str, text: str, *, empty_ok: bool = False) -> float | None:
    """A finite float from a field (None for an empty field where ``empty_ok``)."""
    text = text.strip()
    if not text and empty_ok:
        return None
    try:
        value = float(text)
    except ValueError:
        raise bad(path, row, column, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise bad(path, row, column, f"{text!r} is not a finite number")
    return value


def integer(path: str, row: int, column: str, text: str, *, empty_ok: bool = False) -> int | None:
    """A whole number from a field (``"12"`` or ``"12.0"``; None for an empty field where ``empty_ok``)."""
    value = number(path, row, column, text, empty_ok=empty_ok)
    if value is None:
        return None
    if value != int(value):
        raise bad(path, row, column, f"{text.strip()!r} is not a whole number")
    return int(value)


def fmt(value: float | None) -> str:
    """A number as a CSV field: shortest round-tripping repr, ``""`` for None."""
    if value is None:
        return ""
    return repr(int(value)) if isinstance(value, (bool, int)) else repr(float(value))


def write_rows(f, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """``header`` then ``rows`` as CSV to the open file ``f``."""
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)


def layers_of(rows: Sequence[Explanation]) -> list[str | None]:
    """The layers of ``rows`` in order of first appearance."""
    return list(dict.fromkeys(r.layer for r in rows))


def pick_method(rows: Sequence[Explanation], methods: Sequence[str], method: str | None,
                what: str) -> list[Explanation]:
    """The rows of ``method``, or else of the first of ``methods`` present (per layer); none is an error
    naming ``what`` (the format)."""
    if method is not None:
        got = [r for r in rows if r.method == method]
        if not got:
            present = sorted({r.method for r in rows})
            raise InputError(f"{what}: no rows of method {method!r} to export "
                             f"(present: {', '.join(present)})")
        return got
    out = []
    for layer in layers_of(rows):
        mine = [r for r in rows if r.layer == layer]
        first = next((m for m in methods if any(r.method == m for r in mine)), None)
        out += [r for r in mine if r.method == first] if first else []
    if not out:
        present = sorted({r.method for r in rows})
        raise InputError(f"{what}: no rows of method {' or '.join(methods)} to export "
                         f"(present: {', '.join(present) or 'none'})")
    return out
