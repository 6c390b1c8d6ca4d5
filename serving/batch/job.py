"""``marketguard batch``: the Ray job over a whole catalogue, resumable, on a laptop or a cluster.

Stages, each checkpointed in ``DIR`` so a killed job re-run with the same arguments
finishes without redoing finished work and writes what an uninterrupted run writes:

1. extract (Ray Data, :mod:`serving.batch.extract`): read + validate each input unit,
   run the service's extractors in an actor pool -> ``work/units/<unit>.parquet``;
2. catalogue (:mod:`serving.batch.catalogue`): fold the parts into memory-mapped
   columns -> ``work/catalogue/``, ``rejected.jsonl``;
3. indexes (:mod:`serving.batch.pairs`): the service's index snapshots ->
   ``indexes/<tenant>/<modality>/``;
4. pairs: the catalogue searched against itself, block by block ->
   ``work/pairs/<tenant>/<modality>/<block>.parquet``;
5. outputs (:mod:`serving.batch.signals`): ``pairs.parquet``, ``clusters.parquet``,
   ``signals.jsonl``, then ``summary.json`` last: its presence means the run is complete.

Stages 3 to 5 run as Ray tasks on the cluster's nodes with ``batch.pairs_on: cluster`` (the
default, :mod:`serving.batch.distributed`), or in this process with ``driver`` (the reference:
both write the same bytes).

``manifest.json`` records the input's files (size, mtime), the settings that shape
the outputs and the run's ``observed_at`` (every signal of the run carries it, so a
resumed run writes byte-identical outputs). A re-run over changed input or settings
is refused unless ``--restart`` is given.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexes.arrow_rows import take_rows
from indexes.atomic import read_json, write_file_atomic, write_json_atomic
from indexes.banks import ReviewBankJudge
from indexes.clustering import Pairs
from indexes.config import Modality
from indexes.near_duplicates import ImageNearDuplicates, TextNearDuplicates
from serving.batch.catalogue import Catalogue, build_catalogue
from serving.batch.extract import Kind, part_path, run_extract, write_parquet_atomic
from serving.batch.inputs import Unit, discover_inputs, fingerprint, plan_units
from serving.batch.memory_release import release_free_memory
from serving.batch.pairs import (
    ModalityView,
    block_path,
    build_index,
    index_dir,
    modalities,
    open_index,
    parsed_records,
    read_pairs,
    search_blocks,
    tenants,
    write_block,
)
from serving.batch.progress import Progress
from serving.batch.signals import (
    Adjacency,
    SignalTally,
    bank_hits,
    iter_signals,
    make_clusters,
    open_review_judge,
    read_labels,
    review_analysis,
    write_jsonl,
)
from serving.config import MarketGuardConfig
from signals.errors import InvalidInput

log = logging.getLogger(__name__)

FORMAT = "marketguard.batch/1"
KINDS: dict[str, Kind] = {"listings": "listing", "reviews": "review"}


@dataclass(frozen=True)
class BatchRequest:
    """What ``marketguard batch`` was asked to do."""

    kind: Literal["listings", "reviews"]
    input: Path
    out: Path
    address: str | None = None
    restart: bool = False
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    labels: Path | None = None
    """Reviews only: a JSONL of :class:`~signals.schemas.Label` records seeding the collective scores."""


def run_batch(request: BatchRequest, config: MarketGuardConfig) -> dict[str, Any]:
    """Run (or resume) the job; returns the summary (also ``DIR/summary.json``)."""
    kind = KINDS[request.kind]
    out = request.out
    progress = Progress(mode=request.progress)
    files = discover_inputs(request.input)
    if out.resolve().is_relative_to(request.input.resolve()):
        raise InvalidInput("--out", f"{out} is inside --input {request.input}: a re-run would read the "
                                    "run's own files as input; put it elsewhere")
    units = plan_units(files, target_bytes=config.batch.unit_bytes, target_rows=config.batch.unit_rows)
    manifest = _manifest(request, config, files, len(units))
    lock = _lock(out)
    try:
        return _run(request, config, kind, units, manifest, progress)
    finally:
        os.close(lock)


def _run(request: BatchRequest, config: MarketGuardConfig, kind: Kind, units: list[Unit],
         manifest: dict[str, Any], progress: Progress) -> dict[str, Any]:
    out = request.out
    observed_at = _claim(out, manifest, request.restart)
    done_summary = out / "summary.json"
    if done_summary.exists():
        progress.note(f"{out} already holds a complete run; nothing to do")
        summary = read_json(done_summary)
        if not isinstance(summary, dict):
            raise RuntimeError(f"{done_summary} does not hold a JSON object; remove it to run again")
        return summary

    timings: dict[str, float] = {}
    work = out / "work"
    parts = work / "units"
    parts.mkdir(parents=True, exist_ok=True)
    todo = [u for u in units if not part_path(parts, u.index).exists()]

    t0 = time.monotonic()
    if todo:
        stage = progress.stage("extract", len(units), "units", done=len(units) - len(todo))
        with _ray(request.address):
            root = request.input if request.input.is_dir() else request.input.parent
            run_extract(todo, config, kind, parts, lambda _unit, rows: stage.update(1, rows), root.resolve())
        stage.close()
    timings["extract_s"] = time.monotonic() - t0

    release_free_memory()  # each stage's peak starts from what is live, not from the last peak
    t0 = time.monotonic()
    cat = build_catalogue(work, units, kind, out / "rejected.jsonl")
    timings["catalogue_s"] = time.monotonic() - t0
    release_free_memory()
    progress.note(f"catalogue: {cat.n:,} records, {cat.rejected:,} rejected, {len(cat.image_rows):,} images")

    if config.batch.pairs_on == "cluster":
        from serving.batch.distributed import run_pairs_and_outputs

        t0 = time.monotonic()
        with _ray(request.address):
            got = run_pairs_and_outputs(cat, config, out, progress, observed_at, timings, request.labels)
        summary = summary_of(cat, got["pairs"], got["clusters"], got["signals"], got["top_sellers"],
                             got["bank_rows"])
        timings["outputs_s"] = time.monotonic() - t0 - timings["pairs_s"]
    else:
        t0 = time.monotonic()
        pairs = _pairs(cat, config, out, progress)
        timings["pairs_s"] = time.monotonic() - t0
        release_free_memory()

        t0 = time.monotonic()
        summary = _outputs(cat, config, out, pairs, observed_at, request.labels)
        timings["outputs_s"] = time.monotonic() - t0
    summary.update(kind=request.kind, input=str(request.input), observed_at=_stamp(observed_at),
                   units=len(units), timings={k: round(v, 2) for k, v in timings.items()})
    write_json_atomic(done_summary, summary)  # the run's completion mark
    progress.note(format_summary(summary))
    return summary


# ------------------------------------------------------------------------ manifest
def _manifest(request: BatchRequest, config: MarketGuardConfig, files: list[Path],
              units: int) -> dict[str, Any]:
    # What shapes the outputs (the extractors, the index rules, the job's own settings); not where
    # state lives, how many actors run it, nor the service's settings (sinks, store, shadow, ...):
    # configuring a webhook must not make a finished run's --publish look like another run.
    shaping = config.model_dump(mode="json", include={"signals": True, "indexes": True, "batch": True},
                                exclude={"batch": {"actors", "actor_cpus", "actor_threads", "top", "pairs_on",
                                                       "task_cpus"}})
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    # Always a key, so a run begun with --labels is not resumed without them (None: no labels,
    # which is also what a manifest written before the key reads as).
    labels = fingerprint([request.labels]) if request.labels is not None else None
    return {"format": FORMAT, "kind": request.kind, "files": fingerprint(files), "units": units,
            "labels": labels, "settings_sha256": digest, "marketguard": _version(),
            "pair_scorer_sha256": _scorer_digest(config.indexes.near_duplicates.pair_scorer)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("marketguard")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "source"


def _scorer_digest(setting: str) -> str | None:
    """The scorer file's content (a path setting alone would miss a refit in place)."""
    from indexes.pair_scorer import DEFAULT_MODEL_PATH

    if setting == "none":
        return None
    path = DEFAULT_MODEL_PATH if setting == "default" else Path(setting)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


# Everything a run writes in DIR, in the order --restart deletes it: the completion mark
# first, the manifest (what makes DIR a run) last, so a killed restart can be restarted.
_RUN_FILES = ("summary.json", "signals.jsonl", "pairs.parquet", "clusters.parquet", "rejected.jsonl",
              "errors.jsonl")


def _discard(out: Path) -> None:
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for p in out.glob("*.tmp"):
        p.unlink(missing_ok=True)
    for name in ("work", "indexes"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "manifest.json").unlink(missing_ok=True)


def _lock(out: Path) -> int:
    """An exclusive lock on ``DIR/LOCK`` for the whole run: two drivers never share a DIR."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InvalidInput("--out", f"{out} is in use by another batch run") from None
    return fd


def _claim(out: Path, manifest: dict[str, Any], restart: bool) -> datetime:
    """Start a run in ``out`` or resume the one there; returns the run's observed_at."""
    path = out / "manifest.json"
    layout = {*_RUN_FILES, "manifest.json", "work", "indexes", "LOCK"}
    if restart and (path.exists() or all(p.name in layout or p.suffix == ".tmp" for p in out.iterdir())):
        _discard(out)
    if path.exists():
        old = read_json(path)
        if not isinstance(old, dict):
            raise InvalidInput("--out", f"{path} is not a batch run's manifest; use --restart to discard it")
        same = {k: old.get(k) for k in manifest} == manifest
        if not same:
            changed = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise InvalidInput("--out", f"{out} holds a run over other input or settings (changed: "
                                        f"{', '.join(changed)}); use another --out, or --restart to "
                                        "discard it")
        return datetime.fromisoformat(str(old["observed_at"]).replace("Z", "+00:00"))
    if any(p.name not in (".gitkeep", "LOCK") for p in out.iterdir()):
        raise InvalidInput("--out", f"{out} is not empty and holds no batch run; use an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    observed_at = datetime.now(UTC).replace(microsecond=0)
    write_json_atomic(path, {**manifest, "observed_at": _stamp(observed_at)})
    return observed_at


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _ray:
    """Connect to ``address`` (or start a local Ray) unless this process already is connected."""

    def __init__(self, address: str | None) -> None:
        self.address, self.owned = address, False

    def __enter__(self) -> _ray:
        import ray

        if not ray.is_initialized():
            # "local" starts a fresh local instance; it never joins a stale cluster that a
            # killed run left behind in Ray's ray_current_cluster file.
            ray.init(address=self.address or "local", include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
            self.owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            import ray

            ray.shutdown()


# ------------------------------------------------------------------------ pairs
def _pairs(cat: Catalogue, config: MarketGuardConfig, out: Path, progress: Progress) -> dict[Modality, Pairs]:
    """Stages 3 and 4: snapshots, then blockwise search; all pairs per modality."""
    views = [(t, m, ModalityView(cat, m, rows, config.indexes))
             for t, rows in tenants(cat).items() for m in modalities(cat)]
    _build_indexes(views, config, out, progress)
    _search(cat, views, config, out, progress)
    keys = [(tenant, m) for tenant, m, _ in views]
    del views  # their id lists: ~100 MB at 1M rows, not needed to read the pairs back
    release_free_memory()
    pairs_dir = out / "work" / "pairs"
    result: dict[Modality, list[Pairs]] = {}
    for tenant, m in keys:
        result.setdefault(m, []).append(read_pairs(pairs_dir / tenant / m))
    return {m: Pairs(np.concatenate([p.a for p in ps]), np.concatenate([p.b for p in ps]),
                     np.concatenate([p.score for p in ps])) for m, ps in result.items()}


_Views = list[tuple[str, Modality, ModalityView]]


def _build_indexes(views: _Views, config: MarketGuardConfig, out: Path, progress: Progress) -> None:
    """Stage 3: each tenant's modality snapshot, in the service's layout."""
    from serving.scoring.extraction import FastExtraction
    from serving.scoring.indexes import write_model_stamp

    # Which model made each modality's vectors: the service refuses a snapshot of another model.
    models, _ = FastExtraction.build(config.signals, config.data_dir).models()
    stage = progress.stage("indexes", len(views), "indexes")
    for tenant, m, view in views:
        directory = index_dir(out / "indexes", tenant, m)
        build_index(view, config.indexes, directory)
        if (directory / "CURRENT").exists():
            write_model_stamp(directory, m, models[m])
        release_free_memory()  # training samples and build buffers, before the search's own
        stage.update(1)
    stage.close()


def _search(cat: Catalogue, views: _Views, config: MarketGuardConfig, out: Path, progress: Progress) -> None:
    """Stage 4: every block not yet checkpointed searched against its index, its pairs written."""
    icfg = config.indexes
    block = config.batch.query_block
    text = any(m == "listing_text" for _, m, _ in views)
    text_rule = TextNearDuplicates.from_config(icfg) if text else None
    image_rule = ImageNearDuplicates.from_config(icfg)
    blocks = [(t, m, b) for t, m, v in views for b in range(-(-len(v) // block))]
    pairs_dir = out / "work" / "pairs"
    todo = [(t, m, b) for t, m, b in blocks if not block_path(pairs_dir, t, m, b).exists()]
    parsed = None
    scored = text_rule is not None and text_rule.scorer is not None
    if scored and any(m == "listing_text" for _, m, _ in todo):
        parsed = parsed_records(cat, out / "work" / "pair_records")
    stage = progress.stage("pairs", len(blocks), "blocks", done=len(blocks) - len(todo))
    for tenant, m, view in views:
        if not any(t == tenant and mm == m for t, mm, _ in todo):
            continue
        index = open_index(view, icfg, index_dir(out / "indexes", tenant, m))

        def pending(b: int, t: str = tenant, m: Modality = m) -> bool:
            return not block_path(pairs_dir, t, m, b).exists()

        for b, queries, found in search_blocks(
                view, icfg, index, text_rule, parsed if m == "listing_text" else None, block, pending,
                image_rule):
            write_block(block_path(pairs_dir, tenant, m, b), found)
            stage.update(1, queries)
        del index  # before the next one loads
        release_free_memory()
    stage.close()


# ------------------------------------------------------------------------ outputs
def _outputs(cat: Catalogue, config: MarketGuardConfig, out: Path, pairs: dict[Modality, Pairs],
             observed_at: datetime, labels: Path | None = None) -> dict[str, Any]:
    write_pairs_parquet(out / "pairs.parquet", cat.meta.select(["entity_id", "tenant"]), pairs)
    release_free_memory()
    ids = cat.meta.column("entity_id")
    tenant_col = cat.meta.column("tenant")
    clusters = make_clusters(cat, pairs, config.indexes)
    release_free_memory()
    order = clusters.member_rows()
    write_parquet_atomic(out / "clusters.parquet", pa.table({
        "entity_id": ids.take(pa.array(order, pa.int64())),
        "cluster_id": ids.take(pa.array(clusters.root[order], pa.int64())),
        "cluster_size": pa.array(clusters.size[order], pa.int64()),
        "tenant": tenant_col.take(pa.array(order, pa.int64())),
    }))
    tally = SignalTally()
    hits = bank_hits(cat, config.data_dir, config.indexes)
    adjacency = Adjacency(cat.n, pairs)
    analysis = None
    if cat.kind == "review":
        t0 = time.monotonic()
        analysis = review_analysis(cat, read_labels(labels) if labels is not None else [],
                                   config.signals.review_graph.graph_settings())
        log.info("review behaviour, rings and collective scores: %.1fs", time.monotonic() - t0)
    release_free_memory()
    review_banks = open_review_judge(cat, config.data_dir, config.indexes)
    try:
        judge = ReviewBankJudge([(review_banks, None)]) if review_banks is not None else None
        write_jsonl(out / "signals.jsonl",
                    iter_signals(cat, clusters, adjacency, hits, observed_at, tally, judge, analysis), tally)
    finally:
        if review_banks is not None:
            review_banks.close()
    del adjacency, analysis
    release_free_memory()
    return _summary(cat, pairs, clusters, tally, len(hits), config.batch.top)


PAIRS_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("modality", pa.string()),
                          ("score", pa.float32()), ("tenant", pa.string())])
_PAIRS_CHUNK = 1 << 18


def write_pairs_parquet(path: Path, meta: pa.Table, pairs: dict[Modality, Pairs]) -> None:
    """``pairs.parquet``, atomically: record rows turned into ids and tenants through
    ``meta`` (its ``entity_id`` and ``tenant`` columns), ``_PAIRS_CHUNK`` pairs a row group.
    Measured at ~4M pairs over a memory-mapped 1M-row catalogue: built as one table
    +282 MB at peak; 2^20 pairs a row group +248 MB, 2^18 +124 MB (3.5 s), 2^16 +74 MB."""
    write_pair_stream(path, meta, {m: iter([p]) for m, p in pairs.items()})


def write_pair_stream(path: Path, meta: pa.Table, streams: dict[Modality, Iterator[Pairs]]) -> None:
    """:func:`write_pairs_parquet` from each modality's pairs in pieces (read one at a time):
    the same row groups, so the same bytes, however the pairs were cut."""
    def write(f: Any) -> None:
        with pq.ParquetWriter(f, PAIRS_SCHEMA) as writer:
            for m, pieces in streams.items():
                for a_rows, b_rows, score in _rechunk(pieces, _PAIRS_CHUNK):
                    a, b = take_rows(meta, a_rows), take_rows(meta, b_rows)
                    writer.write_table(pa.table({
                        "a": a.column("entity_id"), "b": b.column("entity_id"),
                        "modality": pa.repeat(pa.scalar(m, pa.string()), a.num_rows),
                        "score": pa.array(score, pa.float32()),
                        "tenant": a.column("tenant")}, schema=PAIRS_SCHEMA))

    write_file_atomic(path, write)


def _rechunk(pieces: Iterator[Pairs], size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The pieces' pairs, concatenated, as slices of ``size`` (the last one shorter)."""
    held: list[Pairs] = []
    count = 0
    for piece in pieces:
        held.append(piece)
        count += len(piece.a)
        while count >= size:
            a, b, s = (np.concatenate(c) for c in zip(*((p.a, p.b, p.score) for p in held), strict=True))
            yield a[:size], b[:size], s[:size]
            held, count = [Pairs(a[size:], b[size:], s[size:])], count - size
    if count:
        a, b, s = (np.concatenate(c) for c in zip(*((p.a, p.b, p.score) for p in held), strict=True))
        yield a, b, s


def _summary(cat: Catalogue, pairs: dict[Modality, Pairs], clusters: Any, tally: SignalTally,
             bank_rows: int, top: int) -> dict[str, Any]:
    return summary_of(cat, {m: len(p.a) for m, p in pairs.items()},
                      cluster_summary(cat, clusters.root, int(clusters.result.blocked), top),
                      tally.signals, top_sellers(tally, top), bank_rows)


def summary_of(cat: Catalogue, pair_counts: dict[str, int], clusters: dict[str, Any], signals: int,
               sellers: list[dict[str, Any]], bank_rows: int) -> dict[str, Any]:
    """The run's summary from its parts (:func:`cluster_summary`, :func:`top_sellers`)."""
    return {
        "rows": cat.n + cat.rejected, "accepted": cat.n, "rejected": cat.rejected,
        "records_with_errors": cat.with_errors,
        "images": len(cat.image_rows),
        "pairs": pair_counts,
        "clusters": clusters["clusters"], "clusters_by_size": clusters["clusters_by_size"],
        "clustering_blocked_merges": clusters["clustering_blocked_merges"],
        "records_with_bank_matches": bank_rows, "signals": signals,
        "top_clusters": clusters["top_clusters"],
        "top_sellers": sellers,
    }


def cluster_summary(cat: Catalogue, root: np.ndarray, blocked: int, top: int) -> dict[str, Any]:
    """Clusters by size and the ``top`` biggest, with examples, from every row's cluster root."""
    sizes = Counter(int(s) for r, s in zip(*np.unique(root, return_counts=True), strict=True)
                    if s >= 2) if cat.n else Counter()
    buckets = {"2": 0, "3-5": 0, "6-10": 0, "11-50": 0, "51+": 0}
    for size, count in sizes.items():
        key = ("2" if size == 2 else "3-5" if size <= 5 else "6-10" if size <= 10
               else "11-50" if size <= 50 else "51+")
        buckets[key] += count
    roots, counts = np.unique(root, return_counts=True) if cat.n else (np.zeros(0), np.zeros(0))
    biggest = sorted(((int(c), int(r)) for r, c in zip(roots, counts, strict=True) if c >= 2),
                     key=lambda x: (-x[0], x[1]))[:top]
    text = "text" if cat.kind == "review" else "title"
    top_clusters = []
    for size, r in biggest:
        rows = np.flatnonzero(root == r)
        top_clusters.append({"cluster_id": cat.value("entity_id", r), "size": size,
                             "owners": len({cat.value("owner", x) for x in rows.tolist()}),
                             "examples": [(cat.value(text, x) or "")[:80] for x in rows[:3].tolist()]})
    return {"clusters": sum(sizes.values()), "clusters_by_size": buckets,
            "clustering_blocked_merges": blocked, "top_clusters": top_clusters}


def top_sellers(tally: SignalTally, top: int) -> list[dict[str, Any]]:
    """The ``top`` sellers by duplicated listings (those with any, or with bank matches)."""
    sellers = sorted(tally.by_owner.values(), key=lambda s: (-s.duplicated_listings, s.seller_id))[:top]
    return [{"seller_id": s.seller_id, "tenant": s.tenant, "listings": s.listings,
             "duplicated_listings": s.duplicated_listings, "clusters": len(s.cluster_ids),
             "cross_seller_matches": tally.cross_seller[(s.tenant, s.seller_id)],
             "bank_matches": s.bank_matches}
            for s in sellers if s.duplicated_listings or s.bank_matches]


def format_summary(s: dict[str, Any]) -> str:
    """The end-of-run summary for people: counts, clusters, the sellers most affected."""
    lines = [f"done: {s['rows']:,} rows, {s['accepted']:,} accepted, {s['rejected']:,} rejected, "
             f"{s['records_with_errors']:,} with extractor errors (errors.jsonl)"
             + (f", {s['images']:,} images" if s.get("images") else ""),
             "pairs: " + (", ".join(f"{m} {n:,}" for m, n in s["pairs"].items()) or "none"),
             f"clusters: {s['clusters']:,} (" + ", ".join(f"size {k}: {v:,}" for k, v in
                                                       s["clusters_by_size"].items() if v) + ")"]
    for c in s["top_clusters"]:
        lines.append(f"  cluster {c['cluster_id']}: {c['size']} items, {c['owners']} owners: "
                     + " | ".join(c["examples"]))
    if s["top_sellers"]:
        lines.append("sellers most affected:")
        for x in s["top_sellers"]:
            lines.append(f"  {x['seller_id']}: {x['duplicated_listings']}/{x['listings']} listings "
                         "duplicated, "
                         f"{x['clusters']} clusters, {x['cross_seller_matches']} cross-seller matches, "
                         f"{x['bank_matches']} bank matches")
    if "timings" in s:
        lines.append("time: " + ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in s["timings"].items()))
    return "\n".join(lines)
