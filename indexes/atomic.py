"""Crash-safe file writes: write ``name.tmp``, fsync, ``os.replace``, fsync the folder.

A crash at any point leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from signals.errors import InvalidInput


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: object) -> None:
    """Replace ``path`` with the JSON of ``obj`` atomically and durably."""
    write_bytes_atomic(path, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def read_json(path: Path) -> object:
    """Read a JSON file written by :func:`write_json_atomic`."""
    return json.loads(path.read_bytes())


def write_file_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Like :func:`write_bytes_atomic`, but ``write`` streams into the open temporary file.

    For large payloads (an id map of millions of ids) that should not be built as one
    ``bytes`` object first.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_snapshot_meta(directory: Path, fmt: str) -> dict[str, object]:
    """A snapshot's ``meta.json``, refused unless it is of the format this code writes."""
    meta = json.loads((directory / "meta.json").read_bytes())
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise InvalidInput("meta.json", f"unknown format {got!r}, expected {fmt!r}")
    return meta
