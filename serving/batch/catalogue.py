"""Stage 2 of the batch job: the extracted catalogue as columns on disk, read through memory maps.

The unit parts are folded, in plan order, into ``work/catalogue/``: one row per
accepted record (global row numbers follow the input's order), with

* ``meta.arrow``: tenant, id, owner (seller or reviewer), group (category or
  product), title, text (truncated), price, currency; an Arrow IPC file read
  through a memory map, so random access to a million rows costs page cache, not
  process memory;
* ``text.f32``: the text vectors, ``n x dim`` float32 (zeros where a record had no text);
* ``image_rows.i64``, ``pdq0.u8``/``pdq1.u8``/``pdq2.u8`` (``m x 32``: hash, mirror, trimmed),
  ``pdq_quality.f32``, ``sscd.f32``, ``sscd_regions.f32`` (``m x regions x dim``),
  ``local.u8`` (``m x`` the ``image_local`` block): one row per image with features.

A record id seen twice in one tenant is rejected the second time ("duplicate"); the
keys seen are kept as digests (:class:`serving.batch.seen_ids.SeenIds`, ~24-70 bytes a key,
not a Python dict's ~350).
Rejections are written to ``rejected.jsonl`` here, in input order, and the extractor
errors of accepted records (an image that failed to decode, say: the record keeps its
other signals) to ``errors.jsonl``. The folder is
built into ``catalogue.tmp`` and renamed when complete: a crash rebuilds it (cheap).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from indexes.atomic import fsync_dir, read_json, write_json_atomic
from indexes.pair_features import PAIR_TEXT_CHARS
from serving.batch.extract import Kind, iter_part_rows, part_path
from serving.batch.inputs import Unit
from serving.batch.memory_release import release_free_memory
from serving.batch.seen_ids import SeenIds

META_SCHEMA = pa.schema([
    ("tenant", pa.string()),
    ("entity_id", pa.string()),
    ("owner", pa.string()),
    ("group", pa.string()),
    ("title", pa.string()),
    ("text", pa.string()),
    ("price", pa.float64()),
    ("currency", pa.string()),
    ("record", pa.string()),
    ("signals", pa.string()),
])


@dataclass
class Catalogue:
    """The accepted records of a run and their features, memory-mapped."""

    directory: Path
    kind: Kind
    n: int
    rejected: int
    with_errors: int              # accepted records an extractor reported an error for
    meta: pa.Table
    text: np.ndarray | None       # (n, dim) float32 memmap
    text_feature: str | None
    image_rows: np.ndarray        # (m,) int64: the record row of each image
    image_index: np.ndarray       # (m,) int32: the image's position in its listing
    pdq: list[np.ndarray] | None  # hash, mirror, trimmed: (m, 32) uint8 each
    pdq_quality: np.ndarray | None
    sscd: np.ndarray | None       # (m, dim) float32
    sscd_regions: np.ndarray | None = None  # (m, regions, dim) float32
    local: np.ndarray | None = None  # (m, 2, K, 36) uint8: image_local blocks

    def value(self, name: str, row: int) -> Any:
        """One cell of ``meta.arrow`` (random access through the memory map)."""
        return self.meta.column(name)[int(row)].as_py()

    def iter_rows(self, names: Sequence[str], chunk: int = 65_536, start: int = 0,
                  end: int | None = None) -> Iterator[tuple[Any, ...]]:
        """Tuples of the named columns for rows ``start`` to ``end`` (default: all), row after
        row, ``chunk`` rows in memory at a time."""
        stop = self.n if end is None else min(end, self.n)
        for at in range(max(0, start), stop, chunk):
            part = self.meta.slice(at, min(chunk, stop - at))
            yield from zip(*(part.column(n).to_pylist() for n in names), strict=True)

    def image_id(self, i: int) -> str:
        """The index id of image ``i``: ``<record id>/<position>``."""
        return f"{self.meta.column('entity_id')[int(self.image_rows[i])].as_py()}/{int(self.image_index[i])}"


def build_catalogue(work: Path, units: list[Unit], kind: Kind, rejected_path: Path) -> Catalogue:
    """Fold the unit parts into ``work/catalogue`` (or load it when already built)."""
    final = work / "catalogue"
    if (final / "DONE").exists():
        return load_catalogue(final, kind)
    tmp = work / "catalogue.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    errors_path = rejected_path.with_name("errors.jsonl")
    stats = _fold(work / "units", units, kind, tmp, rejected_path.with_suffix(".jsonl.tmp"),
                  errors_path.with_suffix(".jsonl.tmp"))
    # The two reports first: once the catalogue is renamed into place it counts as done.
    os.replace(rejected_path.with_suffix(".jsonl.tmp"), rejected_path)
    os.replace(errors_path.with_suffix(".jsonl.tmp"), errors_path)
    write_json_atomic(tmp / "DONE", stats)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(work)
    return load_catalogue(final, kind)


class _Appender:
    """Raw arrays appended to a file, row after row."""

    def __init__(self, path: Path) -> None:
        self.fh: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes | None) -> None:
        if data:
            self.fh.write(data)

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


def _fold(parts_dir: Path, units: Iterable[Unit], kind: Kind, out: Path,
          rejected_tmp: Path, errors_tmp: Path) -> dict[str, Any]:
    seen = SeenIds()  # (tenant, id) -> where first seen, as (unit << 32 | row in its part)
    wheres = _wheres(parts_dir)
    n = m = rejected = with_errors = no_text_yet = 0
    text_dim = sscd_dim = regions = 0
    local_shape: list[int] = []
    text_feature: str | None = None
    files = {name: _Appender(out / name) for name in
             ("text.f32", "image_rows.i64", "image_index.i32", "pdq0.u8", "pdq1.u8", "pdq2.u8",
              "pdq_quality.f32", "sscd.f32", "sscd_regions.f32", "local.u8")}
    sink = pa.OSFile(str(out / "meta.arrow"), "wb")
    writer = ipc.new_file(sink, META_SCHEMA)
    with open(rejected_tmp, "w", encoding="utf-8") as rej, open(errors_tmp, "w", encoding="utf-8") as errs:
        for unit in units:
            cols: dict[str, list[Any]] = {name: [] for name in META_SCHEMA.names}
            for pos, row in enumerate(row for rows in iter_part_rows(parts_dir, unit) for row in rows):
                if row["reject"] is not None:
                    rej.write(_reject_line(row, json.loads(row["reject"])))
                    rejected += 1
                    continue
                rec = json.loads(row["record"])
                tenant = rec.get("tenant", "default")
                first = seen.add(tenant, row["entity_id"], (unit.index << 32) | pos)
                if first is not None:
                    where = wheres(first >> 32)[first & 0xFFFFFFFF]
                    rej.write(_reject_line(row, {
                        "field": "listing_id" if kind == "listing" else "review_id", "code": "duplicate",
                        "message": f"id already seen in tenant {tenant!r} at {where}"}))
                    rejected += 1
                    continue
                if row["errors"]:
                    errs.write(json.dumps({"where": row["where"], "entity_id": row["entity_id"],
                                           "errors": json.loads(row["errors"])}, ensure_ascii=False) + "\n")
                    with_errors += 1
                _meta_row(cols, kind, rec, row)
                if row["text"] is not None:
                    dim = len(row["text"]) // 4
                    if text_dim and dim != text_dim:
                        raise RuntimeError(f"text vectors of {dim} and {text_dim} dimensions in one run")
                    if not text_dim:  # rows before the first vector get their zeros now
                        files["text.f32"].write(b"\0" * 4 * dim * no_text_yet)
                    text_dim, text_feature = dim, row["text_feature"]
                    files["text.f32"].write(row["text"])
                elif text_dim:
                    files["text.f32"].write(b"\0" * 4 * text_dim)
                else:
                    no_text_yet += 1
                k = row["images"] or 0
                if k and (row["pdq"] is not None or row["sscd"] is not None):
                    files["image_rows.i64"].write(np.full(k, n, dtype="<i8").tobytes())
                    files["image_index.i32"].write(np.arange(k, dtype="<i4").tobytes())
                    if row["pdq"] is not None:
                        pdq = row["pdq"]
                        for v in range(3):
                            files[f"pdq{v}.u8"].write(pdq[v * 32 * k:(v + 1) * 32 * k])
                        files["pdq_quality.f32"].write(row["pdq_quality"])
                    if row["sscd"] is not None:
                        sscd_dim = len(row["sscd"]) // (4 * k)
                        files["sscd.f32"].write(row["sscd"])
                        if row["sscd_regions"] is not None:
                            regions = len(row["sscd_regions"]) // (4 * k * sscd_dim)
                            files["sscd_regions.f32"].write(row["sscd_regions"])
                    if row["local"] is not None:
                        per = len(row["local"]) // k
                        local_shape = [2, per // 72, 36]  # image_local: (2, K, 36) uint8
                        files["local.u8"].write(row["local"])
                    m += k
                n += 1
            if cols["entity_id"]:
                writer.write_table(pa.table(cols, schema=META_SCHEMA))
            del cols
            release_free_memory()  # the part's rows: freed pages back, so parts do not stack up
    writer.close()
    sink.close()
    for path in (out / "meta.arrow", rejected_tmp, errors_tmp):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    for f in files.values():
        f.close()
    return {"n": n, "m": m, "rejected": rejected, "with_errors": with_errors, "text_dim": text_dim,
            "text_feature": text_feature, "sscd_dim": sscd_dim, "sscd_regions": regions,
            "local_shape": local_shape}


def _wheres(parts_dir: Path) -> Callable[[int], list[str]]:
    """A unit's ``where`` column read back from its part, the last 8 units cached."""
    @functools.lru_cache(maxsize=8)
    def of(unit: int) -> list[str]:
        return pq.read_table(part_path(parts_dir, unit), columns=["where"]).column("where").to_pylist()
    return of


def _meta_row(cols: dict[str, list[Any]], kind: Kind, rec: dict[str, Any], row: dict[str, Any]) -> None:
    if kind == "listing":
        owner, group, title = rec.get("seller_id"), rec.get("category"), rec.get("title", "")
        text = (rec.get("description") or "")[:PAIR_TEXT_CHARS]
    else:
        owner, group, title = rec.get("reviewer_id"), rec.get("product_id"), ""
        text = (rec.get("text") or "")[:PAIR_TEXT_CHARS]
    values = {"tenant": rec.get("tenant", "default"), "entity_id": row["entity_id"], "owner": owner,
              "group": group, "title": title, "text": text, "price": rec.get("price"),
              "currency": rec.get("currency"), "record": row["record"], "signals": row["signals"]}
    for k, v in values.items():
        cols[k].append(v)


def _reject_line(row: dict[str, Any], reason: dict[str, Any]) -> str:
    return json.dumps({"where": row["where"], "entity_id": row["entity_id"], "error": reason},
                      ensure_ascii=False) + "\n"


def load_catalogue(directory: Path, kind: Kind) -> Catalogue:
    """Open a built catalogue folder through memory maps."""
    stats = read_json(directory / "DONE")
    if not isinstance(stats, dict):
        raise RuntimeError(f"{directory / 'DONE'} does not hold a JSON object")
    n, m = int(stats["n"]), int(stats["m"])
    meta = ipc.open_file(pa.memory_map(str(directory / "meta.arrow"))).read_all()
    text_dim, sscd_dim = int(stats["text_dim"]), int(stats["sscd_dim"])
    regions, local_shape = int(stats.get("sscd_regions", 0)), tuple(stats.get("local_shape") or ())

    def mm(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray | None:
        path = directory / name
        if not all(shape) or path.stat().st_size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            return None
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    text = mm("text.f32", "<f4", (n, text_dim)) if text_dim else None
    image_rows = mm("image_rows.i64", "<i8", (m,))
    image_index = mm("image_index.i32", "<i4", (m,))
    pdq_parts = [mm(f"pdq{v}.u8", "u1", (m, 32)) for v in range(3)]
    pdq = [p for p in pdq_parts if p is not None] if all(p is not None for p in pdq_parts) else None
    return Catalogue(
        directory=directory, kind=kind, n=n, rejected=int(stats["rejected"]),
        with_errors=int(stats.get("with_errors", 0)), meta=meta,
        text=text, text_feature=stats.get("text_feature"),
        image_rows=image_rows if image_rows is not None else np.zeros(0, dtype=np.int64),
        image_index=image_index if image_index is not None else np.zeros(0, dtype=np.int32),
        pdq=pdq, pdq_quality=mm("pdq_quality.f32", "<f4", (m,)),
        sscd=mm("sscd.f32", "<f4", (m, sscd_dim)) if sscd_dim else None,
        sscd_regions=mm("sscd_regions.f32", "<f4", (m, regions, sscd_dim)) if regions and sscd_dim else None,
        local=mm("local.u8", "u1", (m, *local_shape)) if local_shape else None,
    )
