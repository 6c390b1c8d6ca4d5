"""Crash-safe persistence: a snapshot plus an fsynced, checksummed mutation log.

Layout of a directory (one writer at a time, held by an ``flock`` on ``LOCK``)::

    CURRENT          {"generation": g}    written tmp + os.replace + fsync
    snap-<g>/        the index's own save() (faiss.write_index, streamed / raw hashes) + items.json
    log-<g>.bin      mutations since snap-<g>, one record each

A record is ``b"MGL1" | u32 length | u32 crc32 | payload``, the payload a JSON header
line (op, ids, dtype, shape, per-item metadata) followed by the raw array bytes:
no pickle. ``add`` and ``remove`` validate, append one record, ``fsync`` and only
then apply to memory and return, so an acknowledged mutation is on disk. What is
applied is decoded from the record's own bytes, exactly what a replay will see; if
applying raises, the log is truncated back (``ftruncate`` + ``fsync``) and memory is
reloaded from disk before the error propagates, so a failed mutation is never on
disk and can never make a later open fail.

Loading = snapshot ``g`` + replay of ``log-g``. A bad record (wrong magic, length
past the end, checksum mismatch) with no valid record anywhere after it is a torn
tail, the write a crash interrupted and never acknowledged: it is cut off. A bad
record *followed by* valid records is corruption in the middle of acknowledged
history: opening raises :class:`CorruptLog` naming the file and offset, and touches
nothing, so an operator decides (restore, or cut the log at that offset knowingly).
Compaction writes ``snap-<g+1>`` and an empty ``log-<g+1>``, flips ``CURRENT``
atomically, then deletes generation ``g``. A crash before the flip loads ``g``
(still complete); after it, ``g+1``; leftovers of the other are removed on open.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, Protocol, Self, TypeVar

import numpy as np

from indexes.atomic import fsync_dir, read_json, write_json_atomic
from indexes.config import PersistenceConfig
from signals.errors import InvalidInput

MAGIC = b"MGL1"
_HEAD = struct.Struct("<4sII")
Meta = dict[str, Any]


class MutableIndex(Protocol):
    """What an index offers to be made durable (VectorIndex and PdqIndex both do)."""

    def __len__(self) -> int: ...
    def __contains__(self, item_id: object) -> bool: ...
    def prepare(self, ids: list[str], data: Any) -> tuple[list[str], np.ndarray]: ...
    def add(self, ids: list[str], data: Any) -> None: ...
    def remove(self, ids: list[str]) -> int: ...
    def save(self, directory: Path) -> None: ...


IndexT = TypeVar("IndexT", bound=MutableIndex)


class CorruptLog(RuntimeError):
    """A log record in the middle of a log is damaged while valid records follow it.

    Not a torn tail: cutting the log there would silently drop acknowledged
    mutations, so loading stops and an operator decides.
    """

    def __init__(self, path: Path, offset: int, next_valid: int) -> None:
        self.path, self.offset, self.next_valid = path, offset, next_valid
        super().__init__(
            f"{path}: corrupt record at byte offset {offset}, followed by valid records "
            f"(the next at offset {next_valid}); not truncating acknowledged mutations"
        )


def encode_record(header: dict[str, Any], array: np.ndarray | None = None) -> bytes:
    """One framed, checksummed log record."""
    if array is not None:
        header = {**header, "dtype": str(array.dtype), "shape": list(array.shape)}
    payload = json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n"
    if array is not None:
        payload += np.ascontiguousarray(array).tobytes()
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> tuple[dict[str, Any], np.ndarray | None]:
    """The header and array of one record's (checksummed) payload."""
    nl = payload.index(b"\n")
    header = json.loads(payload[:nl])
    array = None
    if "dtype" in header:
        array = np.frombuffer(payload[nl + 1 :], dtype=np.dtype(header["dtype"]))
        array = array.reshape(header["shape"])
    return header, array


def _valid_record_at(data: bytes, pos: int) -> int | None:
    """The end offset of a complete, checksum-valid record starting at ``pos``, else None."""
    if pos + _HEAD.size > len(data):
        return None
    magic, length, crc = _HEAD.unpack_from(data, pos)
    start, end = pos + _HEAD.size, pos + _HEAD.size + length
    if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
        return None
    return end


def _next_valid_record(data: bytes, after: int) -> int | None:
    """The offset of the first valid record starting after ``after``, if any."""
    pos = data.find(MAGIC, after + 1)
    while pos >= 0:
        if _valid_record_at(data, pos) is not None:
            return pos
        pos = data.find(MAGIC, pos + 1)
    return None


def read_records(path: Path) -> tuple[list[tuple[dict[str, Any], np.ndarray | None]], int]:
    """All valid records of a log and the byte length they span.

    A bad record with no valid record after it is a torn tail (a write a crash
    interrupted before its fsync returned, so nobody was told it happened): reading
    stops there and the returned length excludes it. A bad record followed by a
    valid one raises :class:`CorruptLog`: acknowledged mutations follow it.
    """
    data = path.read_bytes() if path.exists() else b""
    out: list[tuple[dict[str, Any], np.ndarray | None]] = []
    pos = 0
    while pos < len(data):
        end = _valid_record_at(data, pos)
        if end is None:
            later = _next_valid_record(data, pos)
            if later is not None:
                raise CorruptLog(path, pos, later)
            break
        out.append(decode_payload(data[pos + _HEAD.size : end]))
        pos = end
    return out, pos


def _read_generation(current: Path) -> int:
    """The generation a ``CURRENT`` file names (``{"generation": n}``); InvalidInput if it is bad."""
    data = read_json(current)
    gen = data.get("generation") if isinstance(data, dict) else None
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
        raise InvalidInput(current.name, f"expected {{\"generation\": n >= 0}}, got {data!r:.80}")
    return gen


def read_index(directory: Path, empty: Callable[[], IndexT], load: Callable[[Path], IndexT]) -> IndexT:
    """The index of a durable directory, read-only: snapshot plus log, without the metadata.

    For readers that only search (the batch job's all-pairs stage): no lock is taken and
    the per-item metadata, as large as the index's id map again, is never loaded.
    """
    directory = Path(directory)
    gen = _read_generation(directory / "CURRENT")
    snap = directory / f"snap-{gen}"
    index = load(snap) if snap.exists() else empty()
    records, _ = read_records(directory / f"log-{gen}.bin")
    for header, array in records:
        if header["op"] == "add":
            index.add(header["ids"], array)
        elif header["op"] == "remove":
            index.remove(header["ids"])
    return index


def _write_items(path: Path, items: Iterable[tuple[str, Meta]]) -> None:
    """``items.json``, one item at a time: never the whole document as one string."""
    with open(path, "wb") as f:
        f.write(b"{")
        for k, (item_id, meta) in enumerate(items):
            f.write(b"," if k else b"")
            f.write(json.dumps(item_id).encode("utf-8") + b":"
                    + json.dumps(meta, separators=(",", ":")).encode("utf-8"))
        f.write(b"}")
        f.flush()
        os.fsync(f.fileno())


def _write_snap(final: Path, index: MutableIndex, items: Iterable[tuple[str, Meta]]) -> None:
    """Write a snapshot folder as ``<final>.tmp``, then rename it to ``final``."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    index.save(tmp)
    _write_items(tmp / "items.json", items)
    fsync_dir(tmp)
    os.replace(tmp, final)


def write_snapshot(directory: Path, index: MutableIndex, items: Iterable[tuple[str, Meta]]) -> None:
    """A new durable directory whose first snapshot is ``index`` with per-item metadata ``items``.

    For bulk loads (the batch job builds millions of items at once): one snapshot
    instead of a log record per batch, and the metadata streamed to disk from
    ``items`` rather than held as a dict of dicts (~400 bytes an item in Python).
    :class:`DurableIndex` opens the result. ``directory`` must not exist or be empty.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise InvalidInput("directory", f"{str(directory)!r} is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    _write_snap(directory / "snap-1", index, items)
    fd = os.open(directory / "log-1.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.fsync(fd)
    os.close(fd)
    fsync_dir(directory)
    write_json_atomic(directory / "CURRENT", {"generation": 1})  # the commit point


def lock_directory(directory: Path, read_only: bool, field: str, busy: str) -> int:
    """``directory/LOCK`` held: shared by readers, exclusive for the one writer; its descriptor.

    A writer creates the directory and the lock file; a reader creates nothing (it may read a
    folder it cannot write) and gets -1, nothing locked, where no writer ever made the lock
    file. Held elsewhere: :class:`InvalidInput` (``field``, ``busy``); any other failure of the
    lock (a file system without ``flock``) propagates, the descriptor closed."""
    path = directory / "LOCK"
    if read_only:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return -1
    else:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise InvalidInput(field, busy) from None
        raise
    return fd


class DurableIndex(Generic[IndexT]):
    """An index plus per-item metadata that survives crashes: snapshot + replayed log."""

    def __init__(
        self,
        directory: Path,
        empty: Callable[[], IndexT],
        load: Callable[[Path], IndexT],
        config: PersistenceConfig | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        """``read_only``: a reader that shares the directory with other readers (never with a
        writer), loads the last committed state and writes nothing, not even a torn log's cut."""
        self.directory = Path(directory)
        self.config = config or PersistenceConfig()
        self.read_only = read_only
        self._empty, self._load = empty, load
        self._lock_fd = lock_directory(self.directory, read_only, "directory",
                                       f"{str(self.directory)!r} is open by another writer")
        self.meta: dict[str, Meta] = {}
        self._log_fd: int | None = None
        try:
            self._open()
        except BaseException:
            self.close()  # a directory that fails to load must not stay locked
            raise

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        current = self.directory / "CURRENT"
        gen = _read_generation(current) if current.exists() else 0
        if not current.exists() and not self.read_only:
            (self.directory / "log-0.bin").touch()
            write_json_atomic(current, {"generation": 0})
        self.generation = gen
        log = self._log_path(gen)
        valid = self._load_state()
        self._log_bytes = valid
        if self.read_only:
            return
        if log.exists() and log.stat().st_size != valid:
            with open(log, "r+b") as f:  # cut the torn tail so new records follow good ones
                f.truncate(valid)
                os.fsync(f.fileno())
        self._log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._remove_stale()

    def _load_state(self) -> int:
        """Load snapshot + replay the log of this generation; the valid log length."""
        snap = self.directory / f"snap-{self.generation}"
        self.meta = {}
        if snap.exists():
            self.index: IndexT = self._load(snap)
            items = snap / "items.json"
            self.meta = json.loads(items.read_bytes()) if items.exists() else {}
        else:
            self.index = self._empty()
        records, valid = read_records(self._log_path(self.generation))
        for header, array in records:
            self._apply(header, array)
        self.replayed = len(records)
        return valid

    def _log_path(self, gen: int) -> Path:
        return self.directory / f"log-{gen}.bin"

    def _remove_stale(self) -> None:
        keep = {f"snap-{self.generation}", f"log-{self.generation}.bin", "CURRENT", "LOCK"}
        for p in self.directory.iterdir():
            if p.name in keep:
                continue
            if p.name.startswith(("snap-", "log-", "CURRENT.")):
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    # ---------------------------------------------------------------- mutations
    def _apply(self, header: dict[str, Any], array: np.ndarray | None) -> None:
        ids = header["ids"]
        if header["op"] == "add":
            self.index.add(ids, array)
            metas = header.get("meta")
            for k, i in enumerate(ids):
                if metas is not None:
                    self.meta[i] = metas[k]
                else:
                    self.meta.pop(i, None)
        elif header["op"] == "remove":
            self.index.remove(ids)
            for i in ids:
                self.meta.pop(i, None)
        else:
            raise InvalidInput("log", f"unknown op {header['op']!r}")

    def _log(self) -> int:
        """The open log's file descriptor; RuntimeError once the index is closed."""
        if self.read_only:
            raise InvalidInput("directory", f"{str(self.directory)!r} is open read-only", "invalid")
        if self._log_fd is None:
            raise RuntimeError(f"the durable index at {self.directory} is closed")
        return self._log_fd

    def _append(self, record: bytes) -> None:
        fd = self._log()
        view = memoryview(record)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]
        if self.config.fsync:
            os.fsync(fd)
        self._log_bytes += len(record)

    def _commit(self, record: bytes) -> None:
        """Append + fsync ``record``, then apply what it decodes to (as a replay would).

        If applying raises, the log is cut back to its previous length (and fsynced)
        and memory is reloaded from disk, then the error propagates: a mutation that
        failed is neither on disk nor half-applied in memory.
        """
        before = self._log_bytes
        self._append(record)
        try:
            header, array = decode_payload(record[_HEAD.size :])
            self._apply(header, array)
        except BaseException:
            self._rollback(before)
            raise

    def _rollback(self, length: int) -> None:
        fd = self._log()
        os.ftruncate(fd, length)
        os.fsync(fd)
        self._log_bytes = length
        self._load_state()  # the failed apply may have changed memory part-way

    def add(self, ids: list[str], data: Any, meta: list[Meta] | None = None) -> None:
        """Add or replace items; durable (fsynced) and searchable when this returns."""
        self._log()  # refused read-only or closed, even when there is nothing to add
        ids, arr = self.index.prepare(list(ids), data)
        if meta is not None and len(meta) != len(ids):
            raise InvalidInput("meta", f"{len(meta)} metadata records for {len(ids)} ids")
        if not ids:
            return
        header: dict[str, Any] = {"op": "add", "ids": ids}
        if meta is not None:
            header["meta"] = meta
        self._commit(encode_record(header, arr))
        self._maybe_compact()

    def remove(self, ids: list[str]) -> int:
        """Remove items (unknown and repeated ids ignored); returns how many were present."""
        self._log()  # refused read-only or closed, even when nothing is present
        present = [i for i in dict.fromkeys(ids) if i in self.index]
        if not present:
            return 0
        self._commit(encode_record({"op": "remove", "ids": present}))
        self._maybe_compact()
        return len(present)

    @property
    def log_bytes(self) -> int:
        """Bytes in the mutation log since the last snapshot (0: nothing to snapshot)."""
        return self._log_bytes

    def _maybe_compact(self) -> None:
        if self._log_bytes >= self.config.compact_log_bytes:
            self.compact()

    def compact(self) -> None:
        """Snapshot the current state as the next generation and start an empty log."""
        self._log()  # refused read-only or closed
        new = self.generation + 1
        _write_snap(self.directory / f"snap-{new}", self.index, self.meta.items())
        new_log = self._log_path(new)
        fd = os.open(new_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        os.fsync(fd)
        fsync_dir(self.directory)
        write_json_atomic(self.directory / "CURRENT", {"generation": new})  # the commit point
        old_fd, self._log_fd = self._log_fd, fd
        if old_fd is not None:
            os.close(old_fd)
        self.generation, self._log_bytes = new, 0
        self._remove_stale()

    def iter_items(self) -> Iterator[tuple[str, Meta]]:
        """(id, metadata) of every item."""
        for i in list(self.meta):
            yield i, self.meta[i]

    # ----------------------------------------------------------------- closing
    def close(self) -> None:
        """Close the log and release the writer lock (the data is already durable)."""
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
