"""Catalogue input for the batch job: find the files, cut them into resumable units, read a unit.

``marketguard batch`` reads JSONL, CSV or Parquet, one file or a folder of files. To be
resumable the input is planned into deterministic *units* (byte ranges cut at record
ends for JSONL/CSV, row ranges for Parquet): each unit is processed and checkpointed on
its own, and a re-run over the same input yields exactly the same units.

:func:`read_unit` turns a unit into :class:`RawRow` dicts shaped the same whatever the
format, ready for ``signals.schemas.parse_record``; a row that cannot be read becomes a
row with an error, never a lost row. No validation and no Ray here: units and rows are
plain picklable dataclasses so Ray Data tasks can call :func:`read_unit` remotely.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from signals.errors import InvalidInput

Format = Literal["jsonl", "csv", "parquet"]

SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",  # a .json file is read as JSON lines
    ".csv": "csv",
    ".parquet": "parquet", ".pq": "parquet",
}

_BLOCK = 1 << 20
_HEADER_MAX_BYTES = 1 << 20


def discover_inputs(path: Path) -> list[Path]:
    """The input files under ``path``: the file itself, or every known file below a folder.

    A folder is walked recursively and sorted by relative path; names starting with ``.``
    or ``_`` (``.git``, ``_SUCCESS``, ``_temporary``) are skipped, files and folders alike.
    """
    if not path.exists():
        raise InvalidInput("input", f"{path}: no such file or folder", "not_found")
    if path.is_file():
        _format(path)
        return [path]
    found: list[Path] = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        found += [Path(folder) / f for f in files
                  if not f.startswith((".", "_")) and Path(f).suffix.lower() in SUFFIXES]
    if not found:
        raise InvalidInput("input", f"{path}: the folder holds no {', '.join(SUFFIXES)} file", "not_found")
    return sorted(found, key=lambda p: p.relative_to(path).parts)


def _format(path: Path) -> Format:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInput("input", f"{path}: unknown file type {path.suffix!r}; "
                                    f"expected one of {', '.join(SUFFIXES)}")
    return fmt


def fingerprint(paths: list[Path]) -> list[dict[str, object]]:
    """Path, size and modification time of each file: a changed input is detected on resume."""
    out: list[dict[str, object]] = []
    for p in paths:
        resolved = p.resolve()
        st = resolved.stat()
        out.append({"path": str(resolved), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


@dataclass(frozen=True)
class Unit:
    """One work item: a byte range (JSONL, CSV) or a row range (Parquet) of one file."""

    index: int
    path: str
    fmt: Format
    start: int  # jsonl/csv: byte offset of the first record; parquet: first row
    stop: int  # jsonl/csv: byte offset just past the unit; parquet: row stop (exclusive)
    first_row: int  # 1-based line (jsonl), data row (csv, header excluded) or row (parquet)

    @property
    def key(self) -> str:
        """Stable name for this unit's checkpoint files."""
        return f"{self.index:06d}"


@dataclass(frozen=True)
class RawRow:
    """One record of a unit: its raw dict, or ``None`` and why it could not be read."""

    unit: int
    row: int  # 0-based position within the unit
    where: str  # "listings.jsonl line 17", "part-2.csv row 5", "x.parquet row 12"
    data: dict[str, Any] | None
    error: str | None


def plan_units(paths: list[Path], *, target_bytes: int = 4 << 20, target_rows: int = 5000) -> list[Unit]:
    """Cut the files into units of about ``target_bytes`` (JSONL, CSV) or ``target_rows`` (Parquet).

    Deterministic: the same files give the same units. Text files are scanned in blocks,
    never held whole; CSV cuts only at a newline outside quotes. Empty files give no unit.
    """
    if target_bytes < 1 or target_rows < 1:
        raise ValueError(f"target_bytes and target_rows must be >= 1, got {target_bytes}, {target_rows}")
    units: list[Unit] = []
    for p in paths:
        path, fmt = p.resolve(), _format(p)
        if path.stat().st_size == 0:
            continue
        if fmt == "parquet":
            n = _parquet_file(path).metadata.num_rows
            ranges = [(s, min(s + target_rows, n), s + 1) for s in range(0, n, target_rows)]
        else:
            start = _csv_header(path)[1] if fmt == "csv" else 0
            ranges = _split_text(path, start, target_bytes, quote_aware=fmt == "csv")
        units += [Unit(len(units) + i, str(path), fmt, *r) for i, r in enumerate(ranges)]
    return units


def _split_text(path: Path, start: int, target_bytes: int, *,
                quote_aware: bool) -> list[tuple[int, int, int]]:
    """``(start, stop, first_record)`` of chunks of about target_bytes, cut just after a record end.

    A record ends at a ``\\n``; with ``quote_aware`` only where the count of ``"`` since
    ``start`` is even (RFC 4180: a quoted field may hold newlines, ``""`` keeps the parity).
    Vectorised per block: a Python loop per quote or per line is ~100x slower on big CSVs.
    """
    out: list[tuple[int, int, int]] = []
    unit_start, unit_first, records, odd, base = start, 1, 0, 0, start
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(_BLOCK):
            arr = np.frombuffer(block, dtype=np.uint8)
            ends = np.flatnonzero(arr == ord("\n"))
            if quote_aware:  # uint8 wraps at 256, which keeps the parity
                quotes = np.cumsum(arr == ord('"'), dtype=np.uint8) + np.uint8(odd)
                ends = ends[quotes[ends] % 2 == 0]
                odd = int(quotes[-1]) % 2
            ends += base + 1  # offsets just past each record end
            while (k := int(np.searchsorted(ends, unit_start + target_bytes))) < len(ends):
                out.append((unit_start, int(ends[k]), unit_first))
                unit_start, unit_first = int(ends[k]), records + k + 2
            records += len(ends)
            base += len(block)
    if unit_start < base:
        out.append((unit_start, base, unit_first))
    return out


def _records(f: BinaryIO, pos: int, stop: int, max_bytes: int, *,
             quote_aware: bool) -> Iterator[bytes | None]:
    """Each record from ``pos`` to ``stop`` without its newline, or ``None`` when over max_bytes.

    The same record ends as :func:`_split_text`; an over-long record is skipped, not held.
    """
    f.seek(pos)
    while pos < stop:
        parts: list[bytes] = []
        size, odd, line = 0, False, b""
        while pos < stop:
            line = f.readline(min(_BLOCK, stop - pos))
            if not line:  # the file shrank since it was planned
                stop = pos
                break
            pos += len(line)
            size += len(line)
            odd ^= quote_aware and line.count(b'"') % 2 == 1
            if size <= max_bytes + 1:
                parts.append(line)
            if line.endswith(b"\n") and not odd:
                break
        content = size - line.endswith(b"\n")
        yield b"".join(parts)[:content] if content <= max_bytes else None


def _csv_header(path: Path) -> tuple[list[str], int]:
    """The CSV's column names and the byte offset just past the header record."""
    with open(path, "rb") as f:
        raw = next(_records(f, 0, path.stat().st_size, _HEADER_MAX_BYTES, quote_aware=True), b"")
        end = f.tell()
    if raw is None:
        raise InvalidInput("input", f"{path}: CSV header over {_HEADER_MAX_BYTES} bytes")
    try:
        columns = next(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput("input", f"{path}: unreadable CSV header ({exc})") from None
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise InvalidInput("input", f"{path}: CSV header repeats column(s) {', '.join(map(repr, dupes))}")
    return columns, end


def _parquet_file(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput("input", f"{path}: not a readable Parquet file ({exc})") from None


def read_unit(unit: Unit, *, max_row_bytes: int = 32 << 20) -> list[RawRow]:
    """The rows of one unit, normalised for ``parse_record``; unreadable rows carry an error.

    Empty CSV cells and null/NaN Parquet values are dropped (missing means default);
    ``images`` given as a JSON string is parsed, ``image_paths`` (``a.jpg|b.jpg``) becomes
    ``images``, and relative image paths are resolved against the input file's folder.
    """
    path = Path(unit.path)
    kind = "line" if unit.fmt == "jsonl" else "row"
    rows: list[RawRow] = []
    for n, (data, error) in _read_raw(unit, path, max_row_bytes):
        if data is not None and error is None:
            error = _normalise_images(data, path.parent)
        rows.append(RawRow(unit.index, len(rows), f"{path.name} {kind} {n}",
                           None if error else data, error))
    return rows


_Parsed = tuple[int, tuple[dict[str, Any] | None, str | None]]


def _read_raw(unit: Unit, path: Path, max_row_bytes: int) -> Iterator[_Parsed]:
    """``(row number, (data, error))`` of each non-blank record of the unit."""
    if unit.fmt == "parquet":
        yield from _read_parquet(unit, path)
        return
    columns = _csv_header(path)[0] if unit.fmt == "csv" else []
    with open(path, "rb") as f:
        records = _records(f, unit.start, unit.stop, max_row_bytes, quote_aware=unit.fmt == "csv")
        for n, raw in enumerate(records, start=unit.first_row):
            if raw is None:
                yield n, (None, f"{'line' if unit.fmt == 'jsonl' else 'row'} over {max_row_bytes} bytes")
            elif raw.strip() and unit.fmt == "jsonl":
                yield n, _parse_jsonl(raw, first=n == 1)
            elif raw.strip():
                yield n, _parse_csv(raw, columns)


def _parse_jsonl(raw: bytes, *, first: bool) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value = json.loads(raw.decode("utf-8-sig" if first else "utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8: {exc}"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"a record must be a JSON object, not {type(value).__name__}"
    return value, None


def _parse_csv(raw: bytes, columns: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8: {exc}"
    except csv.Error as exc:
        return None, f"not valid CSV: {exc}"
    if len(rows) != 1:
        # Records are cut RFC 4180-style: a bare '"' inside an unquoted field (55" TV) opens a
        # quoted section and glues the next lines on. Never keep one row and drop the rest.
        return None, (f"spans {len(rows)} CSV rows: a double quote inside an unquoted field; quote "
                      "the field and double its quotes (RFC 4180)")
    cells = rows[0]
    if len(cells) != len(columns):
        return None, f"row has {len(cells)} fields, the header has {len(columns)}"
    # Every cell stays a string (pydantic converts "12.50" and "true"); empty means missing.
    return {c: v for c, v in zip(columns, cells, strict=True) if v != ""}, None


def _read_parquet(unit: Unit, path: Path) -> Iterator[_Parsed]:
    # Only the row groups overlapping [start, stop) are read; a unit may span several.
    pf = _parquet_file(path)
    groups: list[int] = []
    pos = first = 0  # pos: the row number of the first row of groups[0]
    for g in range(pf.metadata.num_row_groups):
        size = pf.metadata.row_group(g).num_rows
        if first < unit.stop and first + size > unit.start:
            pos = first if not groups else pos
            groups.append(g)
        first += size
    for batch in pf.iter_batches(batch_size=min(unit.stop - unit.start, 65536), row_groups=groups):
        lo, hi = max(unit.start - pos, 0), min(unit.stop - pos, batch.num_rows)
        for k, rec in enumerate(batch.slice(lo, max(hi - lo, 0)).to_pylist()):
            yield pos + lo + k + 1, ({c: v for c, v in rec.items() if not _is_null(v)}, None)
        pos += batch.num_rows
        if pos >= unit.stop:
            break


def _is_null(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _normalise_images(data: dict[str, Any], base: Path) -> str | None:
    """Bring ``images``/``image_paths`` to ``[{"path": ...}, ...]`` form; the error, if any."""
    if "image_paths" in data:
        if "images" in data:
            return "give either images or image_paths, not both"
        paths = data.pop("image_paths")
        if isinstance(paths, str):
            paths = paths.split("|")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            return "image_paths: must be paths separated by '|'"
        data["images"] = [{"path": p.strip()} for p in paths if p.strip()]
    images = data.get("images")
    if isinstance(images, str):
        try:
            images = data["images"] = json.loads(images)
        except json.JSONDecodeError as exc:
            return f"images: not a JSON array ({exc})"
    if isinstance(images, list):  # Parquet structs carry every field, null where unused
        data["images"] = [{k: v for k, v in i.items() if v is not None} if isinstance(i, dict) else i
                          for i in images]
    resolve_image_paths(data, base)
    return None


def resolve_image_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative ``images[].path`` values absolute against ``base`` (in place)."""
    images = raw.get("images")
    if not isinstance(images, list):
        return
    for img in images:
        if isinstance(img, dict) and isinstance(img.get("path"), str) and img["path"]:
            p = Path(img["path"])
            if not p.is_absolute():
                img["path"] = str(base / p)
