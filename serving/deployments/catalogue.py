"""The catalogue deployment: one shard's store and indexes, one writer (the engine), no HTTP.

Writes run one at a time on a dedicated thread, so the indexes have one writer; reads
(entity signals, labels) run on other threads against the store's read connection, so a
GET never waits for a write. Index snapshots (compaction) and retention run on a timer,
off the request path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from ray import serve

from indexes.banks import BankItem
from indexes.config import Modality
from serving.config import MarketGuardConfig, configure_process
from serving.scoring.engine import CatalogueEngine, Extracted, Scored
from serving.store.sqlite import SqliteSignalStore
from signals.schemas import EntityType, Label, RecordKind

log = logging.getLogger(__name__)
T = TypeVar("T")


def shard_dir(data_dir: Path, shard: int, shards: int) -> Path:
    """Where a shard keeps its store, indexes and banks (the data dir itself with one shard)."""
    return Path(data_dir) if shards == 1 else Path(data_dir) / f"shard-{shard}"


def open_engine(config: MarketGuardConfig, models: dict[Modality, str], dims: dict[Modality, int],
                shard: int = 0, shards: int = 1) -> CatalogueEngine:
    """The engine of one shard over its directory, reconciled with its store."""
    root = shard_dir(config.data_dir, shard, shards)
    engine = CatalogueEngine(SqliteSignalStore(root / "store.sqlite3"), root / "indexes", root / "banks",
                             config.indexes, models, dims, global_banks=config.service.global_banks)
    engine.reconcile()
    return engine


@serve.deployment(name="catalogue")
class Catalogue:
    """Serve deployment around :class:`~serving.scoring.engine.CatalogueEngine` (one replica a shard)."""

    def __init__(self, config: MarketGuardConfig, models: dict[Modality, str], dims: dict[Modality, int],
                 shard: int = 0, shards: int = 1) -> None:
        self.config = config
        configure_process(config)
        self.engine = open_engine(config, models, dims, shard, shards)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="catalogue-writer")
        self._timer: asyncio.Task[None] | None = None

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        if self._timer is None:  # started on the first call: the replica's event loop exists by then
            self._timer = asyncio.get_running_loop().create_task(self._maintain())
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _maintain(self) -> None:
        interval = self.config.service.catalogue.compact_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.get_running_loop().run_in_executor(self._writer, self.engine.compact)
                days = self.config.service.retention_days
                if days is not None:
                    before = datetime.now(UTC) - timedelta(days=days)
                    n = await asyncio.get_running_loop().run_in_executor(self._writer, self.engine.expire,
                                                                         before)
                    if n:
                        log.info("retention: deleted %d items not written since %s", n, before.isoformat())
            except Exception:  # noqa: BLE001 - maintenance must never kill the replica
                log.exception("index maintenance failed")

    async def score(self, kind: RecordKind, items: Sequence[Extracted]) -> list[Scored]:
        fn = self.engine.score_listings if kind == "listing" else self.engine.score_reviews
        return await self._write(fn, list(items))

    async def delete(self, tenant: str, kind: RecordKind, item_id: str) -> bool:
        return await self._write(self.engine.delete, tenant, kind, item_id)

    async def entity(self, tenant: str, entity_type: EntityType, entity_id: str,
                     history: bool) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.engine.entity_signals, tenant, entity_type, entity_id, history)

    async def add_label(self, label: Label) -> int:
        return await self._write(self.engine.add_label, label)

    async def labels(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.engine.store.labels, tenant, entity_type, entity_id)

    async def bank_modality(self, tenant: str, bank: str) -> Modality | None:
        return await self._write(self.engine.bank_modality, tenant, bank)

    async def bank_add(self, tenant: str, bank: str, modality: Modality, kind: str,
                       items: list[BankItem]) -> int:
        return await self._write(self.engine.bank_add, tenant, bank, modality, kind, items)

    async def bank_remove(self, tenant: str, bank: str, item_id: str) -> int:
        return await self._write(self.engine.bank_remove, tenant, bank, item_id)

    async def index_sizes(self) -> dict[tuple[str, str], int]:
        return self.engine.index_sizes()

    async def ready(self) -> bool:
        return True
