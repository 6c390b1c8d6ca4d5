"""Stage 1 of the batch job: read, validate and run the extractors over every unit, on Ray Data.

The pipeline is ``units -> read + validate (tasks) -> extractors (actor pool) -> driver``:

* a read task reads one :class:`~serving.batch.inputs.Unit` and validates each row
  with :func:`signals.schemas.parse_record`, the same boundary the HTTP path uses;
  an invalid row travels on as a rejection (its reason named), it never fails the job;
* an actor pool runs the very :class:`~signals.registry.ExtractorRegistry` the
  service builds (:func:`signals.registry.build_registry`), in sub-batches of
  ``batch.batch_size`` rows taken in row order within a unit, so a unit's batches
  are the same whatever else runs and a resumed job extracts what an uninterrupted
  one would;
* the driver gathers each unit's rows and, once all of them are in, writes the
  unit's part file atomically: ``work/units/<unit>.parquet``. That file is the
  checkpoint; a re-run skips every unit whose part exists.

A part holds, per row: where it came from, the validated record (images reduced to
their count), the rejection or extractor errors, the extractor signals (JSON), and
the features the catalogue-wide stages need (text vector, PDQ hashes, SSCD vectors and
their regions', the images' local features)
as raw little-endian bytes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexes.atomic import write_file_atomic
from serving.batch.inputs import Unit, read_unit
from serving.config import MarketGuardConfig, configure_process
from signals.config import SignalsConfig
from signals.errors import InvalidInput
from signals.schemas import Listing, Review, parse_record

log = logging.getLogger(__name__)

Kind = Literal["listing", "review"]

# Features carried from the extractors to the catalogue-wide stages.
PDQ_FEATURES = ("image_pdq", "image_pdq_flip", "image_pdq_trimmed")
SSCD_FEATURES = ("image_sscd", "image_sscd_distilled")

PART_SCHEMA = pa.schema([
    ("unit", pa.int32()),
    ("row", pa.int32()),
    ("unit_rows", pa.int32()),
    ("where", pa.string()),
    ("entity_id", pa.string()),
    ("record", pa.string()),      # validated record as JSON (images: only their number)
    ("reject", pa.string()),      # {"field", "code", "message"} when the row is invalid
    ("errors", pa.string()),      # JSON list of extractor errors (the row still counts)
    ("signals", pa.string()),     # JSON list of the extractors' signals
    ("text", pa.binary()),        # float32 unit vector
    ("text_feature", pa.string()),
    ("images", pa.int32()),       # images whose features are below (0 when any failed)
    ("pdq", pa.binary()),         # images x 32 bytes, then the mirrored, then the trimmed hashes
    ("pdq_quality", pa.binary()),  # float32 per image
    ("sscd", pa.binary()),        # images x dim float32
    ("sscd_regions", pa.binary()),  # images x regions x dim float32 (image_sscd*_regions)
    ("local", pa.binary()),       # images x the image_local block (uint8; 2 x K x 36)
])


def model_of(kind: Kind) -> type[Listing] | type[Review]:
    return Listing if kind == "listing" else Review


# --------------------------------------------------------------------------- read tasks
def read_and_validate(batch: pa.Table, kind: Kind) -> pa.Table:
    """Ray Data task: read each unit of the batch and validate its rows."""
    model = model_of(kind)
    cols: dict[str, list[Any]] = {k: [] for k in ("unit", "row", "unit_rows", "where", "entity_id",
                                                   "record", "reject")}
    for spec in batch.column("unit").to_pylist():
        unit = Unit(**json.loads(spec))
        rows = read_unit(unit)
        if not rows:  # an empty unit still reports in, so the driver can mark it done
            _append(cols, unit.index, -1, 0, "", None, None, None)
        for r in rows:
            entity_id = record = reject = None
            if r.error is not None:
                reject = json.dumps({"field": None, "code": "unreadable", "message": r.error})
            else:
                try:
                    rec = parse_record(model, r.data)
                    entity_id = rec.entity_id
                    record = rec.model_dump_json(by_alias=True)
                except InvalidInput as exc:
                    entity_id = _raw_id(r.data, kind)
                    reject = json.dumps({"field": exc.field, "code": exc.code, "message": exc.reason})
            _append(cols, unit.index, r.row, len(rows), r.where, entity_id, record, reject)
    return pa.table(cols)


def _append(cols: dict[str, list[Any]], unit: int, row: int, unit_rows: int, where: str,
            entity_id: str | None, record: str | None, reject: str | None) -> None:
    for k, v in (("unit", unit), ("row", row), ("unit_rows", unit_rows), ("where", where),
                 ("entity_id", entity_id), ("record", record), ("reject", reject)):
        cols[k].append(v)


def _raw_id(data: Any, kind: Kind) -> str | None:
    key = "listing_id" if kind == "listing" else "review_id"
    value = data.get(key) if isinstance(data, dict) else None
    return value[:200] if isinstance(value, str) else None


# --------------------------------------------------------------------------- actors
class ExtractActor:
    """Ray Data actor: the service's extractor registry over validated rows."""

    def __init__(self, config_json: str, kind: Kind, path_root: str, threads: int) -> None:
        from serving.image_fetch import url_fetcher_for
        from signals.registry import build_registry

        config = MarketGuardConfig.model_validate_json(config_json)
        configure_process(config)  # once in each actor's process, before any model loads
        signals_config = with_threads(config.signals, threads).model_copy(deep=True)
        # Batch input names local or mounted image files; the HTTP path keeps this off. Unless
        # the config names the folders images may come from, that is the input's own folder.
        signals_config.images.decode.allow_paths = True
        if signals_config.images.decode.path_roots is None:
            signals_config.images.decode.path_roots = [path_root]
        self.kind: Kind = kind
        self.batch_size = config.batch.batch_size
        self.registry = build_registry(signals_config, config.data_dir,
                                       fetch_url=url_fetcher_for(signals_config.images.decode))
        names = {e.name for e in self.registry.for_kind(kind)}
        self.want_pdq = "image_pdq" in names
        self.want_sscd = bool(names & set(SSCD_FEATURES))
        self.want_local = "image_local" in names

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = [extract_row_stub(r) for r in rows]
        model = model_of(self.kind)
        todo = [i for i, r in enumerate(rows) if r["record"] is not None]
        # Sub-batches follow (unit, row // batch_size): the same rows meet whatever Ray bundled.
        groups: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            groups.setdefault((rows[i]["unit"], rows[i]["row"] // self.batch_size), []).append(i)
        for key in sorted(groups):
            idx = groups[key]
            records = [parse_record(model, json.loads(rows[i]["record"])) for i in idx]
            for i, rec, res in zip(idx, records,
                                   self.registry.extract_batch(self.kind, records), strict=True):
                fill_features(out[i], res, want_pdq=self.want_pdq, want_sscd=self.want_sscd,
                              want_local=self.want_local)
                # The part keeps the record without its images' bytes (they are features now).
                out[i]["record"] = rec.model_dump_json(by_alias=True, exclude={"images"})
        return pa.Table.from_pylist(out, schema=PART_SCHEMA)


def extract_row_stub(row: dict[str, Any]) -> dict[str, Any]:
    """A part row with the read stage's columns and empty feature columns."""
    out: dict[str, Any] = {name: None for name in PART_SCHEMA.names}
    for k in ("unit", "row", "unit_rows", "where", "entity_id", "record", "reject"):
        out[k] = row[k]
    out["images"] = 0
    return out


def fill_features(out: dict[str, Any], result: Any, *,
                  want_pdq: bool = False, want_sscd: bool = False, want_local: bool = False) -> None:
    """Copy one registry result into a part row (signals as JSON, features as bytes)."""
    out["signals"] = json.dumps([s.to_json_dict() for s in result.signals], ensure_ascii=False)
    if result.errors:
        out["errors"] = json.dumps([e.to_dict() for e in result.errors], ensure_ascii=False)
    feats: dict[str, np.ndarray] = result.features
    for name, vec in feats.items():
        if name.startswith("text_"):
            out["text"] = np.asarray(vec, dtype="<f4").tobytes()
            out["text_feature"] = name
    if all(f in feats for f in PDQ_FEATURES):
        n = len(feats["image_pdq"])
        out["images"] = n
        out["pdq"] = b"".join(np.asarray(feats[f], dtype=np.uint8).tobytes() for f in PDQ_FEATURES)
        out["pdq_quality"] = np.asarray(feats["image_pdq_quality"], dtype="<f4").tobytes()
    counts: set[int] = set()
    if out["pdq"] is not None:
        counts.add(len(feats["image_pdq"]))
    for f in SSCD_FEATURES:
        if f in feats:
            out["images"] = len(feats[f])
            counts.add(len(feats[f]))
            out["sscd"] = np.asarray(feats[f], dtype="<f4").tobytes()
            if f"{f}_regions" in feats:
                counts.add(len(feats[f"{f}_regions"]))
                out["sscd_regions"] = np.asarray(feats[f"{f}_regions"], dtype="<f4").tobytes()
    if "image_local" in feats:
        counts.add(len(feats["image_local"]))
        out["local"] = np.asarray(feats["image_local"], dtype=np.uint8).tobytes()
    has_pdq, has_sscd = out["pdq"] is not None, out["sscd"] is not None
    if (want_pdq and not has_pdq) or (want_sscd and not has_sscd) or (want_local and out["local"] is None) \
            or len(counts) > 1:
        # One image kind failed where the other did not (its error is in errors.jsonl): the
        # catalogue keeps one row per image with every configured kind, or none of them.
        # An error of another extractor (OCR, NSFW, text) leaves the image features alone.
        out["images"] = 0
        out["pdq"] = out["pdq_quality"] = out["sscd"] = out["sscd_regions"] = out["local"] = None


# --------------------------------------------------------------------------- driver
class PartWriter:
    """Gathers the rows of each unit on the driver; writes a unit's part once all are in."""

    def __init__(self, directory: Path, on_unit: Callable[[int, int], None]) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pending: dict[int, list[pa.Table]] = {}
        self._seen: dict[int, int] = {}
        self._on_unit = on_unit

    def add(self, table: pa.Table) -> None:
        units = table.column("unit").to_numpy()
        for unit in np.unique(units).tolist():
            part = table.filter(pc.equal(table.column("unit"), unit))
            self._pending.setdefault(unit, []).append(part)
            expected = int(part.column("unit_rows")[0].as_py())
            self._seen[unit] = self._seen.get(unit, 0) + part.num_rows
            if self._seen[unit] >= max(1, expected):
                self._write(unit, expected)

    def _write(self, unit: int, rows: int) -> None:
        table = pa.concat_tables(self._pending.pop(unit)).cast(PART_SCHEMA)
        del self._seen[unit]
        table = table.filter(pc.greater_equal(table.column("row"), 0))
        table = table.sort_by([("row", "ascending")])
        if table.num_rows != rows:
            raise RuntimeError(f"unit {unit}: {table.num_rows} rows gathered, {rows} expected")
        write_parquet_atomic(part_path(self.directory, unit), table)
        self._on_unit(unit, rows)

    @property
    def pending(self) -> int:
        return len(self._pending)


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    """A Parquet file written whole or not at all (tmp, fsync, rename): a checkpoint or an output."""
    write_file_atomic(path, lambda f: pq.write_table(table, f))


def part_path(directory: Path, unit: int) -> Path:
    return directory / f"{unit:06d}.parquet"


READ_TASKS_PER_CPU = 1 / 16
"""Read tasks at once per CPU of the cluster (at least two): a read task validates ~7k listings
a second (20k in 2.9 s of two tasks, 2026-12-01), an extractor actor embeds ~110 a second a CPU,
so one read task feeds ~60 actor CPUs; one per 16 CPUs leaves four times that margin."""


def read_tasks_at_once(cpus: float) -> int:
    return max(2, int(cpus * READ_TASKS_PER_CPU))


def actor_pool(cpus: float, actor_cpus: float, wanted: int | None, units: int,
               node_cpus: float | None = None) -> tuple[int, float]:
    """(actors, CPUs each): as many whole actors of ``actor_cpus`` as fit in ``cpus`` (at least
    one), never more actors than units; where the wanted CPUs per actor do not fit (an
    explicit count, or less than one actor's worth), each actor asks for a share instead,
    rounded down to Ray's resource grain (1e-4) so that the shares always fit. When there are
    fewer units than actors (a small catalogue: one unit on 2 CPUs), the actors that have work
    share the free CPUs instead, at most ``node_cpus`` (the largest node's) each, and run that
    many model threads: one actor of one thread left a core idle (image extraction at 0.88
    of the raw rate, 2026-12-01 11:14).

    The read tasks reserve no CPU (their number at once is capped instead,
    :func:`read_tasks_at_once`): a pool that held every CPU would otherwise starve them and
    the job would wait forever, and any CPU set aside for them is either idle (one of two
    cores, on a laptop) or, in fractions, stranded on a node where no read task fits (a pool
    of 0.92-CPU actors on nodes of 1 and 2 CPUs hung). On 2 CPUs that is two actors, each
    with one model thread (:func:`actor_threads`): an actor's Python (parsing, results to
    rows) then runs beside the other's inference. One actor of two threads left a core idle
    for that part (145 % CPU, 2026-12-01: extraction of 20k listings 80 s against 92-100 s).
    """
    planned = wanted or max(1, int(cpus / actor_cpus + 1e-9))
    actors = max(1, min(planned, units))
    share = math.floor(cpus / actors * 1e4) / 1e4
    spread = wanted is None and actors < planned  # fewer units than actors: take the free CPUs
    most = max(actor_cpus, math.floor(node_cpus or actor_cpus)) if spread else actor_cpus
    return actors, min(most, share)


def actor_threads(config: MarketGuardConfig, actor_cpus: float) -> int:
    """Intra-op threads of each extractor actor's models: ``batch.actor_threads``, or the CPUs
    the actor reserves, rounded, at least one (the actors share the node's cores; the
    service's ``signals.*.threads`` are for one replica alone on its cores)."""
    wanted = config.batch.actor_threads
    return wanted if wanted is not None else max(1, round(actor_cpus))


def with_threads(signals: SignalsConfig, threads: int) -> SignalsConfig:
    """``signals`` with every model's intra-op threads set to ``threads``."""
    images = signals.images
    return signals.model_copy(update={
        "text_embedding": signals.text_embedding.model_copy(update={"threads": threads}),
        "images": images.model_copy(update={
            name: getattr(images, name).model_copy(update={"threads": threads})
            for name in ("sscd", "ocr", "nsfw")})})


def run_extract(units: list[Unit], config: MarketGuardConfig, kind: Kind, parts_dir: Path,
                on_unit: Callable[[int, int], None], path_root: Path) -> None:
    """Run stage 1 over ``units`` (those without a part yet) on the connected Ray cluster."""
    import ray
    import ray.data

    if not units:
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines are noise here
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job draws its own (serving/batch/progress.py)
    ctx.enable_operator_progress_bars = False
    # What is free, not the cluster's total: CPUs another workload holds (a Serve app on the
    # same cluster) would otherwise be counted, and actors sized for them would never start.
    cpus = min(float(ray.cluster_resources().get("CPU", 1)), float(ray.available_resources().get("CPU", 1)))
    cfg = config.batch
    node_cpus = max((float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
                    default=cpus)
    actors, actor_cpus = actor_pool(cpus, cfg.actor_cpus, cfg.actors, len(units), node_cpus)
    threads = actor_threads(config, actor_cpus)
    log.info("extract: %d units, %d extractor actors x %.2f CPU (%d model threads) on a %.0f-CPU cluster",
             len(units), actors, actor_cpus, threads, cpus)
    items = [{"unit": json.dumps(asdict(u))} for u in units]
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=len(items))
    # Ray types a batch function as one-argument; fn_kwargs passes read_and_validate its ``kind``.
    ds = ds.map_batches(read_and_validate, fn_kwargs={"kind": kind},  # type: ignore[arg-type]  # see above
                        batch_size=1, batch_format="pyarrow", num_cpus=0,
                        compute=ray.data.TaskPoolStrategy(size=min(read_tasks_at_once(cpus), len(units))))
    ds = ds.map_batches(ExtractActor,
                        fn_constructor_args=(config.model_dump_json(), kind, str(path_root), threads),
                        batch_size=None, batch_format="pyarrow", num_cpus=actor_cpus,
                        compute=ray.data.ActorPoolStrategy(size=actors))
    writer = PartWriter(parts_dir, on_unit)
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        writer.add(block)
    if writer.pending:
        raise RuntimeError(f"{writer.pending} units were not complete when the pipeline ended")


PART_READ_ROWS = 2048


def iter_part_rows(parts_dir: Path, unit: Unit) -> Iterator[list[dict[str, Any]]]:
    """A unit's part as Python rows, :data:`PART_READ_ROWS` at a time, in order.

    Streamed: a whole part read at once (``pq.read_table``, threaded) then turned into
    Python rows held ~4x its ~58 MB of Arrow (a 4 MB unit of short listings, 22k rows)
    and left the heap fragmented, so the catalogue stage's peak grew with each part
    folded (+316 MB over one part, +455 MB over three, 2026-12-01).
    """
    with pq.ParquetFile(part_path(parts_dir, unit.index)) as f:
        if not f.schema_arrow.equals(PART_SCHEMA):
            raise RuntimeError(f"{part_path(parts_dir, unit.index)}: not a unit part of this version "
                               f"(schema {f.schema_arrow}); re-run with --restart")
        for batch in f.iter_batches(batch_size=PART_READ_ROWS, use_threads=False):
            yield batch.to_pylist()


def rewrite_observed_at(signals_json: str | None, observed_at: datetime) -> list[dict[str, Any]]:
    """A part's signals with the job's own observation time (the same on every re-run)."""
    if not signals_json:
        return []
    stamp = observed_at.isoformat().replace("+00:00", "Z")
    out = json.loads(signals_json)
    for s in out:
        s["observed_at"] = stamp
    return out
