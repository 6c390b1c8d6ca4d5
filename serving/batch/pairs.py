"""Stages 3 and 4 of the batch job: the service's index snapshots, then the all-pairs search.

Stage 3 builds, per tenant and modality, the very index objects the service serves
(:class:`~indexes.vector.VectorIndex` for text and SSCD, :class:`~indexes.pdq.PdqIndex`)
and writes them as :class:`~indexes.persistence.DurableIndex` snapshots under
``DIR/indexes/<tenant>/<modality>/``, each built in ``<modality>.tmp`` and renamed
when complete, with per-item metadata (owner, price, ...) the service needs to
compute cross-seller signals. ``marketguard serve --data-dir DIR`` opens them.

Stage 4 queries each snapshot with the catalogue itself, ``batch.query_block``
records at a time, and keeps what :mod:`indexes.near_duplicates` decides, the same
rule the service applies to a new listing. For listing text with a pair scorer, every
record is first parsed once into ``work/pair_records/`` (:func:`parsed_records`).
Each block's pairs (record rows ``a < b``, score) go to
``work/pairs/<tenant>/<modality>/<block>.parquet`` atomically; a block whose file
exists is not searched again. Memory: the index, one block of queries and its
candidates.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from indexes.arrow_rows import take_rows
from indexes.atomic import write_file_atomic
from indexes.clustering import Pairs
from indexes.config import IndexesConfig, Modality
from indexes.near_duplicates import (
    REGION_SEPARATOR,
    ImageNearDuplicates,
    TextNearDuplicates,
    canonical_pairs,
    pdq_near_duplicates,
    region_entries,
)
from indexes.pair_features import PARSED_SCHEMA, PairRecord, ParsedRecords
from indexes.pdq import PdqIndex
from indexes.persistence import read_index, write_snapshot
from indexes.review_templates import ReviewTemplateRule
from indexes.vector import VectorIndex
from serving.batch.catalogue import Catalogue
from serving.batch.extract import write_parquet_atomic
from signals.errors import InvalidInput

log = logging.getLogger(__name__)

PAIR_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("score", pa.float32())])
_BUILD_CHUNK = 50_000
_PARSE_CHUNK = 20_000  # records parsed (and held as Python objects) at a time


def modalities(cat: Catalogue) -> list[Modality]:
    """The modalities this catalogue has features for."""
    if cat.kind == "review":
        return ["review_text"] if cat.text is not None else []
    out: list[Modality] = []
    if cat.text is not None:
        out.append("listing_text")
    if cat.pdq is not None and len(cat.image_rows):
        out.append("image_pdq")
    if cat.sscd is not None and len(cat.image_rows):
        out.append("image_sscd")
    return out


def tenants(cat: Catalogue) -> dict[str, np.ndarray]:
    """Record rows of each tenant, in row order."""
    col = np.asarray(cat.meta.column("tenant").to_numpy(zero_copy_only=False))
    return {t: np.flatnonzero(col == t) for t in sorted(set(col.tolist()))}


class ModalityView:
    """One tenant's items of one modality: index ids, their record rows, their data."""

    def __init__(self, cat: Catalogue, modality: Modality, rows: np.ndarray, config: IndexesConfig) -> None:
        self.cat, self.modality = cat, modality
        if modality in ("listing_text", "review_text"):
            assert cat.text is not None
            has = np.zeros(len(rows), dtype=bool)
            for start in range(0, len(rows), _BUILD_CHUNK):  # chunks: never all vectors at once
                part = np.asarray(cat.text[rows[start:start + _BUILD_CHUNK]])
                has[start:start + len(part)] = np.einsum("ij,ij->i", part, part) > 0.5
            self.items = rows[has]  # rows with a text vector (the others are zeros)
            self.record_rows = self.items
            ids = cat.meta.column("entity_id")
            self.ids = [ids[int(r)].as_py() for r in self.items]
        else:
            in_tenant = np.isin(cat.image_rows, rows)
            items = np.flatnonzero(in_tenant)
            if modality == "image_pdq":
                assert cat.pdq_quality is not None
                items = items[cat.pdq_quality[items] >= config.near_duplicates.pdq_min_quality]
            self.items = items
            self.record_rows = np.asarray(cat.image_rows[items], dtype=np.int64)
            self.ids = [cat.image_id(int(i)) for i in items]

    def __len__(self) -> int:
        return len(self.items)

    def data(self, pos: np.ndarray) -> np.ndarray:
        """Vectors (or packed hashes) of the items at positions ``pos``."""
        idx = self.items[pos]
        if self.modality in ("listing_text", "review_text"):
            assert self.cat.text is not None
            return np.asarray(self.cat.text[idx])
        if self.modality == "image_sscd":
            assert self.cat.sscd is not None
            return np.asarray(self.cat.sscd[idx])
        assert self.cat.pdq is not None
        return np.asarray(self.cat.pdq[0][idx])

    def entries(self, pos: np.ndarray, config: IndexesConfig) -> tuple[list[str], np.ndarray]:
        """Index ids and vectors of the items at ``pos``: for ``image_sscd`` with regions, each
        image's whole vector then its regions' (:func:`indexes.near_duplicates.region_entries`)."""
        data = self.data(pos)
        if not self.with_regions(config):
            return [self.ids[i] for i in pos], data
        assert self.cat.sscd_regions is not None
        regions = np.asarray(self.cat.sscd_regions[self.items[pos]])
        rows = [e for i, p in enumerate(pos) for e in region_entries(self.ids[p], data[i], regions[i])]
        return [r[0] for r in rows], np.stack([r[1] for r in rows]) if rows else data[:0]

    def queries(self, pos: np.ndarray, config: IndexesConfig) -> list[np.ndarray]:
        """``image_sscd``: each image's whole vector, then its regions' (when indexed)."""
        data = self.data(pos)
        if not self.with_regions(config):
            return [data[i:i + 1] for i in range(len(pos))]
        assert self.cat.sscd_regions is not None
        regions = np.asarray(self.cat.sscd_regions[self.items[pos]])
        return [np.concatenate([data[i:i + 1], regions[i]]) for i in range(len(pos))]

    def texts(self, pos: np.ndarray) -> list[str]:
        """The review texts of the items at ``pos`` (read from the records)."""
        part = take_rows(self.cat.meta.select(["record"]), self.record_rows[pos])
        return [str(json.loads(r).get("text") or "") for r in part.column("record").to_pylist()]

    def local(self, pos: np.ndarray) -> list[np.ndarray | None]:
        """``image_local`` blocks of the items at ``pos`` (None when the run has none)."""
        if self.cat.local is None:
            return [None] * len(pos)
        return list(np.asarray(self.cat.local[self.items[pos]]))

    def with_regions(self, config: IndexesConfig) -> bool:
        return (self.modality == "image_sscd" and config.near_duplicates.image_regions
                and self.cat.sscd_regions is not None)

    def variants(self, pos: np.ndarray, with_variants: bool) -> list[np.ndarray]:
        assert self.cat.pdq is not None
        idx = self.items[pos]
        return [np.asarray(v[idx]) for v in (self.cat.pdq if with_variants else self.cat.pdq[:1])]

    def iter_items(self, chunk: int = 65_536, regions: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
        """(index id, per-item metadata) of every item, in order, ``chunk`` rows read at a time
        (with ``regions``, each image's region entries follow it with the same metadata)."""
        fields = _ITEM_META.get(self.modality, _IMAGE_META)  # metadata key -> catalogue column
        keys, columns = list(fields), list(fields.values())
        table = self.cat.meta.select(columns)
        for start in range(0, len(self), chunk):
            part = take_rows(table, self.record_rows[start:start + chunk])
            values = zip(*(part.column(c).to_pylist() for c in columns), strict=True)
            for item_id, row in zip(self.ids[start:start + chunk], values, strict=True):
                meta = dict(zip(keys, row, strict=True))
                yield item_id, meta
                for r in range(1, regions + 1):
                    yield f"{item_id}{REGION_SEPARATOR}{r}", meta


# What the service needs of each indexed item (cross-seller counts, cluster prices),
# by modality: the snapshot's metadata key and the catalogue column it comes from.
_ITEM_META: dict[str, dict[str, str]] = {
    "listing_text": {"owner": "owner", "price": "price", "currency": "currency", "category": "group"},
    "review_text": {"owner": "owner", "product_id": "group"},
}
_IMAGE_META = {"owner": "owner", "record_id": "entity_id"}


def index_dir(indexes_dir: Path, tenant: str, modality: Modality) -> Path:
    return indexes_dir / tenant / modality


def _empty_index(view: ModalityView, config: IndexesConfig) -> VectorIndex | PdqIndex:
    if view.modality == "image_pdq":
        return PdqIndex(config.pdq)
    dim = view.data(np.arange(1)).shape[1]
    return VectorIndex(config.vector.model_copy(update={"dim": dim}))


def _loader(view: ModalityView, config: IndexesConfig) -> Callable[[Path], VectorIndex | PdqIndex]:
    if view.modality == "image_pdq":
        return lambda p: PdqIndex.load(p, config.pdq)
    return lambda p: VectorIndex.load(p)


def build_index(view: ModalityView, config: IndexesConfig, final: Path) -> None:
    """Write the snapshot of one tenant's modality index (skipped when already there)."""
    if (final / "CURRENT").exists() or not len(view):
        return
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    index = _empty_index(view, config)
    n = len(view)
    # image_sscd with regions: each image is 1 + regions entries (its whole vector first).
    regions = 0
    if view.modality == "image_sscd" and view.with_regions(config):
        assert view.cat.sscd_regions is not None
        regions = int(view.cat.sscd_regions.shape[1])

    def entries(pos: np.ndarray) -> tuple[list[str], np.ndarray]:
        return view.entries(pos, config) if regions else ([view.ids[i] for i in pos], view.data(pos))

    if isinstance(index, VectorIndex) and n * (1 + regions) > index.config.exact_max:
        # Train the IVF on a seeded random sample (representative, and the same on a re-run),
        # then add the rest in chunks so no copy of all the vectors is ever made.
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, index.config.train_sample), replace=False))
        index.build(*entries(sample), expected_size=n * (1 + regions))
        rest = np.setdiff1d(np.arange(n), sample)
    else:
        rest = np.arange(n)
    for start in range(0, len(rest), _BUILD_CHUNK):
        index.add(*entries(rest[start:start + _BUILD_CHUNK]))
    write_snapshot(tmp, index, view.iter_items(regions=regions) if regions else view.iter_items())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)


def open_index(view: ModalityView, config: IndexesConfig, directory: Path) -> VectorIndex | PdqIndex:
    """The snapshot's index, as the service's loader reads it (its metadata left on disk)."""
    return read_index(directory, lambda: _empty_index(view, config), _loader(view, config))


def block_path(pairs_dir: Path, tenant: str, modality: Modality, block: int) -> Path:
    return pairs_dir / tenant / modality / f"{block:06d}.parquet"


def parsed_part_path(directory: Path, part: int, parts: int) -> Path:
    """Part ``part`` of ``parts``: its name carries the count, so runs cut differently (the
    driver path parses in one part) never mix their files."""
    return directory / f"{part:06d}-of-{parts:06d}.arrow"


def parse_part(cat: Catalogue, directory: Path, part: int, parts: int) -> None:
    """Parse the records of row range ``part`` of ``parts`` (equal ranges, the last one
    shorter) for the pair scorer into its :func:`parsed_part_path`, atomically, unless it is
    there: the ranges are independent, so the cluster path parses them as parallel tasks."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in 0..{parts - 1}")
    path = parsed_part_path(directory, part, parts)
    if path.exists():
        return
    span = max(1, -(-cat.n // parts))
    start, end = part * span, min(cat.n, (part + 1) * span)

    def write(f: Any) -> None:
        with ipc.new_file(f, PARSED_SCHEMA) as writer:
            rows_of = cat.iter_rows(["title", "text", "price"], start=start, end=end)
            for rows in _chunks(rows_of, _PARSE_CHUNK):
                records = [PairRecord(t or "", d or "", p) for t, d, p in rows]
                writer.write_table(ParsedRecords.parse(records).table)

    directory.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, write)


def parsed_records(cat: Catalogue, directory: Path, parts: int = 1) -> ParsedRecords:
    """Every record parsed once for the pair scorer, as the ``parts`` files of
    :func:`parse_part` in ``directory`` (Arrow files read through memory maps), each parsed
    unless it is already there.

    Row ``r`` is the catalogue's record row ``r``. The scorer then reads a candidate's
    parse instead of parsing it again for each of the (up to ``text_k``) queries that
    find it: one parse a record for the whole stage.
    """
    for part in range(parts):
        parse_part(cat, directory, part, parts)
    tables = [ipc.open_file(pa.memory_map(str(parsed_part_path(directory, p, parts)))).read_all()
              for p in range(parts)]
    parsed = ParsedRecords(pa.concat_tables(tables))
    if len(parsed) != cat.n:
        raise InvalidInput("parsed", f"{directory} holds {len(parsed)} parsed records for {cat.n} "
                                     "catalogue rows: delete it and run the job again")
    return parsed


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def search_blocks(view: ModalityView, config: IndexesConfig, index: VectorIndex | PdqIndex,
                  text_rule: TextNearDuplicates | None, parsed: ParsedRecords | None, block_size: int,
                  todo: Callable[[int], bool],
                  image_rule: ImageNearDuplicates | None = None) -> Iterator[tuple[int, int, Pairs]]:
    """(block, queries, pairs as record rows) for every block ``todo`` accepts.

    ``parsed``: the catalogue's :func:`parsed_records` when the text rule has a pair scorer.
    """
    n = len(view)
    id_pos = {item_id: i for i, item_id in enumerate(view.ids)}
    for block, start in enumerate(range(0, n, block_size)):
        if not todo(block):
            continue
        pos = np.arange(start, min(n, start + block_size))
        own = [view.ids[i] for i in pos]
        if view.modality == "listing_text":
            assert text_rule is not None and isinstance(index, VectorIndex)
            cands = text_rule.candidates(index, view.data(pos), own)
            found = text_rule.decide(
                parsed.take(view.record_rows[pos]) if parsed is not None else None, cands,
                # decide() calls this only when it was given records, i.e. when parsed is not None
                lambda ids: parsed.take(  # type: ignore[union-attr]  # see the line above
                    view.record_rows[[id_pos[i] for i in ids]]))
        elif view.modality == "image_pdq":
            assert isinstance(index, PdqIndex)
            nd = config.near_duplicates
            found = pdq_near_duplicates(index, view.variants(pos, nd.pdq_variants),
                                        config.thresholds.image_pdq, own, nd.max_neighbours)
        elif view.modality == "image_sscd":
            assert isinstance(index, VectorIndex)
            rule = image_rule or ImageNearDuplicates.from_config(config)
            cands = rule.candidates(index, view.queries(pos, config), own)
            found = rule.decide(own, view.local(pos), cands,
                                lambda ids: view.local(np.array([id_pos[i] for i in ids], dtype=np.int64)))
        else:
            assert isinstance(index, VectorIndex)
            review_rule = ReviewTemplateRule.from_config(config)
            cands = review_rule.candidates(index, view.data(pos), own)
            found = review_rule.decide(view.texts(pos), cands, lambda ids: view.texts(
                np.array([id_pos[i] for i in ids], dtype=np.int64)))
        a = [int(view.record_rows[p]) for p, hits in zip(pos, found, strict=True) for _ in hits]
        b = [int(view.record_rows[id_pos[h.id]]) for hits in found for h in hits]
        s = [h.score for hits in found for h in hits]
        yield block, len(pos), canonical_pairs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64),
                                               np.array(s, dtype=np.float32))


def write_block(path: Path, pairs: Pairs) -> None:
    """One block's pairs, written to ``path`` atomically (the block's checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"a": pairs.a, "b": pairs.b, "score": pairs.score}, schema=PAIR_SCHEMA)
    write_parquet_atomic(path, table)


def read_pairs(directory: Path) -> Pairs:
    """Every block of one tenant's modality, as each unordered pair once (int32 rows).

    A pair is found from both of its blocks, so the files hold up to twice the pairs:
    read as one int64 table and canonicalised, 4.45M pairs over a 1M-row catalogue
    cost several copies of ~9M rows at 8 bytes a number; int32 rows halve each one.
    """
    files = sorted(directory.glob("*.parquet")) if directory.exists() else []
    a: list[np.ndarray] = []
    b: list[np.ndarray] = []
    s: list[np.ndarray] = []
    for f in files:  # one block at a time, rows narrowed to int32 as they come
        t = pq.read_table(f, schema=PAIR_SCHEMA)
        rows_a, rows_b = t.column("a").to_numpy(), t.column("b").to_numpy()
        if len(rows_a) and max(int(rows_a.max()), int(rows_b.max())) >= 2**31:
            raise InvalidInput("catalogue", "2^31 records or more in one job: split the input")
        a.append(rows_a.astype(np.int32))
        b.append(rows_b.astype(np.int32))
        s.append(t.column("score").to_numpy())
    if not a:
        z = np.zeros(0, dtype=np.int32)
        return Pairs(z, z, np.zeros(0, dtype=np.float32))
    return canonical_pairs(np.concatenate(a), np.concatenate(b), np.concatenate(s), rows=np.int32)
