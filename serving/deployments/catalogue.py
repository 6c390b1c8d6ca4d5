"""The catalogue deployment (one shard's store and indexes, one writer: the engine, no HTTP) and
the index-shard deployment (a hash partition of large tenants' indexes, see
:mod:`serving.scoring.index_shards`).

Writes run one at a time on a dedicated thread, so the indexes have one writer; reads
(entity signals, labels) run on other threads against the store's read connection, so a
GET never waits for a write. Index snapshots (compaction) and retention run on a timer,
off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from indexes.banks import BankItem
from indexes.config import Modality
from indexes.pdq import PdqHit
from indexes.vector import Hit
from serving.config import MarketGuardConfig, configure_process
from serving.scoring.deep import deep_sources, pending_names
from serving.scoring.engine import (
    CatalogueEngine,
    DeepQueue,
    Extracted,
    NearDuplicateRules,
    Scored,
    ShadowNearDuplicates,
)
from serving.scoring.index_shards import HandleShardClient, IndexShardCore, index_shard_dir
from serving.scoring.indexes import ShardClient
from serving.scoring.review_behaviour import StoredReviewBehaviour
from serving.sinks.publisher import Publisher, build_sinks, sink_names
from serving.store.base import DeepJob
from serving.store.sql import SqlSignalStore
from serving.store.sqlite import SqliteSignalStore
from signals.registry import build_registry
from signals.schemas import EntityType, Label, RecordKind, Signal

log = logging.getLogger(__name__)
T = TypeVar("T")


def shard_dir(data_dir: Path, shard: int, shards: int) -> Path:
    """Where a shard keeps its store, indexes and banks (the data dir itself with one shard)."""
    return Path(data_dir) if shards == 1 else Path(data_dir) / f"shard-{shard}"


def open_store(config: MarketGuardConfig, shard: int = 0, shards: int = 1, *,
               with_sinks: bool = True, exclusive: bool = True) -> SqlSignalStore:
    """The store of one catalogue shard: its SQLite file, or its schema on the PostgreSQL server.
    ``with_sinks``: queue events for the configured sinks (the service); off for offline tools.
    ``exclusive``: the shard's one writer (PostgreSQL fences others); off for a tool beside it."""
    sinks = sink_names(config.sinks) if with_sinks else []
    shadow = sink_names(config.sinks, shadow_only=True) if with_sinks else []
    if config.store.backend == "postgres":
        from serving.store.postgres import PostgresSignalStore

        schema = config.store.pg_schema if shards == 1 else f"{config.store.pg_schema}_shard_{shard}"
        return PostgresSignalStore(str(config.store.url), schema, sinks, shadow, exclusive=exclusive)
    return SqliteSignalStore(shard_dir(config.data_dir, shard, shards) / "store.sqlite3", sinks, shadow)


def shadow_near_duplicates(config: MarketGuardConfig) -> ShadowNearDuplicates | None:
    """The shadow near-duplicate rule of ``shadow.thresholds`` / ``shadow.near_duplicates``, if any."""
    candidate = config.shadow.candidate_indexes(config.indexes)
    if candidate is None:
        return None
    return ShadowNearDuplicates(NearDuplicateRules.from_config(candidate), config.shadow.label)


def open_engine(config: MarketGuardConfig, models: dict[Modality, str], dims: dict[Modality, int],
                shard: int = 0, shards: int = 1, index_shards: Sequence[ShardClient] = ()) -> CatalogueEngine:
    """The engine of one shard over its directory, reconciled with its store.

    ``index_shards``: clients of the index shards that the tenants of ``service.index_shards.tenants``
    are split over (none: every tenant's indexes are local).
    """
    root = shard_dir(config.data_dir, shard, shards)
    store = open_store(config, shard, shards)
    graph = config.signals.review_graph.graph_settings()
    engine = CatalogueEngine(store, root / "indexes", root / "banks",
                             config.indexes, models, dims, global_banks=config.service.global_banks,
                             auto_bank=config.labels.banks(),
                             index_shards=index_shards, split_tenants=config.service.index_shards.tenants,
                             deep=deep_queue(config), shadow=shadow_near_duplicates(config),
                             review_behaviour=[StoredReviewBehaviour(
                                 graph, config.signals.review_graph.ring_product_reviews)],
                             review_graph=graph)
    engine.reconcile()
    engine.indexes.shards_restarted()  # records the index shards' boots
    store.deep_release()  # the previous process's deep workers are gone: their jobs are free again
    return engine


def deep_queue(config: MarketGuardConfig) -> DeepQueue | None:
    """The deep tier's queue settings, or None when it does not run (disabled, or no OCR / NSFW)."""
    if not config.service.deep.enabled:
        return None
    registry = build_registry(config.signals, config.data_dir)
    pending = pending_names(registry)
    if not pending:
        return None
    deep = config.service.deep
    return DeepQueue(pending, deep.max_jobs, deep.max_bytes, deep_sources(registry))


class RequestActivity:
    """When the shard last served a request, and how many it serves now (one event loop: no lock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.in_flight = 0
        self.last_end = -math.inf

    @contextmanager
    def serving(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.last_end = self.clock()

    def quiet_for(self) -> float:
        return 0.0 if self.in_flight else self.clock() - self.last_end


@serve.deployment(name="catalogue")
class Catalogue:
    """Serve deployment around :class:`~serving.scoring.engine.CatalogueEngine` (one replica a shard)."""

    def __init__(self, config: MarketGuardConfig, models: dict[Modality, str], dims: dict[Modality, int],
                 shard: int = 0, shards: int = 1, index_shards: Sequence[DeploymentHandle] = ()) -> None:
        self.config = config
        configure_process(config)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="catalogue-writer")
        # Opened (and reconciled) on the writer thread, like every write after it: with index
        # shards the engine waits there on their answers, never on the replica's event loop.
        self._opening: Future[CatalogueEngine] = self._writer.submit(
            self._open, models, dims, shard, shards, [HandleShardClient(h) for h in index_shards])
        self._timer: asyncio.Task[None] | None = None
        self.publisher: Publisher | None = None
        self.requests = RequestActivity()  # what the deep tier waits on (DeepWorker.yield_s)

    def _open(self, models: dict[Modality, str], dims: dict[Modality, int], shard: int, shards: int,
              index_shards: list[ShardClient]) -> CatalogueEngine:
        engine = open_engine(self.config, models, dims, shard, shards, index_shards)
        sinks = build_sinks(self.config.sinks)
        if sinks:  # the shard's outbox, delivered from here (what a SIGKILL left queued goes first)
            self.publisher = Publisher(engine.store, sinks, self.config.sinks)
            self.publisher.start()
        return engine

    async def _engine(self) -> CatalogueEngine:
        return await asyncio.wrap_future(self._opening)

    async def _write(self, method: str, *args: Any) -> Any:
        engine = await self._engine()
        if self._timer is None:  # started on the first call: the replica's event loop exists by then
            self._timer = asyncio.get_running_loop().create_task(self._maintain())
        return await asyncio.get_running_loop().run_in_executor(self._writer, getattr(engine, method), *args)

    async def _maintain(self) -> None:
        interval = self.config.service.catalogue.compact_interval_s
        recompute_s = self.config.signals.review_graph.recompute_s
        last_recompute = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._write("repair")
                await self._write("compact")
                if recompute_s > 0 and time.monotonic() - last_recompute >= recompute_s:
                    last_recompute = time.monotonic()
                    n = await self._write("recompute_reviews")
                    log.info("review graph recomputed: %d signals", n)
                days = self.config.service.retention_days
                if days is not None:
                    before = datetime.now(UTC) - timedelta(days=days)
                    n = await self._write("expire", before)
                    if n:
                        log.info("retention: deleted %d items not written since %s", n, before.isoformat())
            except Exception:  # noqa: BLE001 - maintenance must never kill the replica
                log.exception("index maintenance failed")

    async def score(self, kind: RecordKind, items: Sequence[Extracted]) -> list[Scored]:
        with self.requests.serving():
            done: list[Scored] = await self._write("score_listings" if kind == "listing" else "score_reviews",
                                                   list(items))
        return done

    async def delete(self, tenant: str, kind: RecordKind, item_id: str) -> bool:
        with self.requests.serving():
            return bool(await self._write("delete", tenant, kind, item_id))

    async def deep_quiet_for(self) -> float:
        """Seconds since this shard last answered a request (0 while one is in flight)."""
        return self.requests.quiet_for()

    async def entity(self, tenant: str, entity_type: EntityType, entity_id: str,
                     history: bool) -> dict[str, Any] | None:
        engine = await self._engine()
        return await asyncio.to_thread(engine.entity_signals, tenant, entity_type, entity_id, history)

    async def add_label(self, label: Label) -> int:
        return int(await self._write("add_label", label))

    async def labels(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]:
        engine = await self._engine()
        return await asyncio.to_thread(engine.store.labels, tenant, entity_type, entity_id)

    async def bank_modality(self, tenant: str, bank: str) -> Modality | None:
        found: Modality | None = await self._write("bank_modality", tenant, bank)
        return found

    async def bank_add(self, tenant: str, bank: str, modality: Modality, kind: str,
                       items: list[BankItem]) -> int:
        return int(await self._write("bank_add", tenant, bank, modality, kind, items))

    async def bank_remove(self, tenant: str, bank: str, item_id: str) -> int:
        return int(await self._write("bank_remove", tenant, bank, item_id))

    async def index_sizes(self) -> dict[tuple[str, str], int]:
        return (await self._engine()).index_sizes()

    async def deep_take(self, limit: int, lease_s: float) -> list[DeepJob]:
        jobs: list[DeepJob] = await self._write("deep_take", limit, lease_s)
        return jobs

    async def deep_done(self, results: list[tuple[DeepJob, list[Signal]]]) -> int:
        """Store each job's deep signals (a job whose item changed since is dropped); how many stored."""
        engine = await self._engine()

        def store_all() -> int:
            return sum(engine.deep_done(job, signals) for job, signals in results)
        return int(await asyncio.get_running_loop().run_in_executor(self._writer, store_all))

    async def deep_stats(self) -> dict[str, float]:
        engine = await self._engine()
        jobs, size = await self._write("deep_backlog")
        return {"queued": float(jobs), "bytes": float(size), "skipped_total": float(engine.deep_skipped)}

    async def sink_stats(self) -> dict[str, dict[str, float]]:
        await self._engine()
        return await asyncio.to_thread(self.publisher.stats) if self.publisher is not None else {}

    async def ready(self) -> bool:
        """True once the engine is open and reconciled (an opening that failed raises here)."""
        if not self._opening.done():
            return False
        self._opening.result()
        return True


@serve.deployment(name="index-shard")
class IndexShard:
    """Serve deployment around one :class:`~serving.scoring.index_shards.IndexShardCore`.

    Its callers are the catalogue shards owning the split tenants (one writer per tenant);
    calls run one at a time on one thread, and snapshots run on a timer between them.
    """

    def __init__(self, config: MarketGuardConfig, models: dict[Modality, str], dims: dict[Modality, int],
                 shard: int) -> None:
        self.config = config
        configure_process(config)
        self.core = IndexShardCore(index_shard_dir(config.data_dir, shard), config.indexes, models, dims)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="index-shard")
        self._timer: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._maintain())
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.service.index_shards.compact_interval_s)
            try:
                await self._run(self.core.compact)
            except Exception:  # noqa: BLE001 - maintenance must never kill the replica
                log.exception("index shard maintenance failed")

    async def search(self, tenant: str, modality: Modality, queries: np.ndarray, k: int) -> list[list[Hit]]:
        return await self._run(self.core.search, tenant, modality, queries, k)

    async def range_search(self, tenant: str, modality: Modality, hashes: np.ndarray,
                           threshold: int | None) -> list[list[PdqHit]]:
        return await self._run(self.core.range_search, tenant, modality, hashes, threshold)

    async def add(self, tenant: str, modality: Modality, ids: list[str], data: np.ndarray,
                  meta: list[dict[str, Any]] | None) -> int:
        return await self._run(self.core.add, tenant, modality, ids, data, meta)

    async def remove(self, tenant: str, modality: Modality, ids: list[str]) -> tuple[int, int]:
        return await self._run(self.core.remove, tenant, modality, ids)

    async def missing(self, tenant: str, modality: Modality, ids: list[str]) -> list[str]:
        return await self._run(self.core.missing, tenant, modality, ids)

    async def ids(self, tenant: str, modality: Modality) -> list[str]:
        return await self._run(self.core.ids, tenant, modality)

    async def size(self, tenant: str, modality: Modality) -> int:
        return await self._run(self.core.size, tenant, modality)

    async def drop_misplaced(self, tenant: str, modality: Modality, shard: int, shards: int) -> int:
        return await self._run(self.core.drop_misplaced, tenant, modality, shard, shards)

    async def boot_id(self) -> str:
        return self.core.boot_id()
