"""The HTTP ingress deployment: the FastAPI app, and the fast extractors in-process behind
``@serve.batch`` (one DeploymentHandle hop fewer than a separate extractor deployment; the
measurement behind that choice is in docs/serving.md).

Concurrent requests' records are gathered into one extractor call (``batch_max_size``,
``batch_wait_s`` from ``user_config``), then each request's records go to the catalogue
shard that owns their tenant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from indexes.config import Modality
from serving.api.app import create_app
from serving.api.backend import bank_items, merge_sink_stats
from serving.config import MarketGuardConfig, configure_process
from serving.scoring.engine import Extracted, Scored
from serving.scoring.extraction import FastExtraction
from serving.scoring.prefetch import PrefetchedUrls
from signals.errors import InvalidInput
from signals.schemas import EntityType, Label, Listing, RecordKind, Review


def _without_image_bytes(item: Extracted) -> Extracted:
    record = item.record
    if isinstance(record, Listing) and record.images:
        return dataclasses.replace(item, record=record.model_copy(update={"images": []}))
    return item


def shard_of(tenant: str, shards: int) -> int:
    """The shard that owns a tenant: a stable hash, the same in every replica and process."""
    return zlib.crc32(tenant.encode()) % shards


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """FastAPI ingress; implements :class:`~serving.api.backend.Backend` with the catalogue handles."""

    def __init__(self, config: MarketGuardConfig, catalogues: list[DeploymentHandle],
                 deep: DeploymentHandle | None = None) -> None:
        from serving.image_fetch import url_fetcher_for

        self.config = config
        configure_process(config)
        self.catalogues = catalogues
        self.deep = deep  # the deep tier: when it runs, readable image bytes go with their listing
        fetcher = url_fetcher_for(config.signals.images.decode)
        # URL images are fetched asynchronously before extraction (never on the event loop).
        self.prefetched = PrefetchedUrls(fetcher) if fetcher is not None else None
        self.extraction = FastExtraction.build(config.signals, config.data_dir, fetch_url=self.prefetched,
                                               shadow=config.shadow)
        self.extraction.warm_up()  # readiness means the models are loaded, not loading on request 1
        self._ready = False

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self, self.config.service)
        self.metrics = app.state.api.metrics  # the extractor batches are observed here
        return app

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # @serve.batch adds these setters to the method at runtime; Ray's types do not declare them.
        extract: Any = self._extract
        extract.set_max_batch_size(int(user_config.get("batch_max_size", 16)))
        extract.set_batch_wait_timeout_s(float(user_config.get("batch_wait_s", 0.002)))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _extract(self, items: list[tuple[RecordKind, Listing | Review]]) -> list[Extracted]:
        if getattr(self, "metrics", None) is not None:
            self.metrics.batch_size.labels("extract").observe(len(items))
        out: list[Extracted | None] = [None] * len(items)
        for kind in ("listing", "review"):
            idx = [i for i, (k, _) in enumerate(items) if k == kind]
            if idx:
                done = await asyncio.to_thread(self.extraction.extract, kind, [items[i][1] for i in idx])
                for i, e in zip(idx, done, strict=True):
                    out[i] = e
        return [e for e in out if e is not None]

    def _shard(self, tenant: str) -> DeploymentHandle:
        return self.catalogues[shard_of(tenant, len(self.catalogues))]

    # ------------------------------------------------------------- Backend
    async def score(self, kind: RecordKind, records: Sequence[Listing | Review]) -> list[Scored]:
        urls: list[str] = []
        if self.prefetched is not None:
            urls = await self.prefetched.fetch(records, self.config.signals.images.decode.max_image_bytes)
        try:
            extracted = await asyncio.gather(*(self._extract((kind, r)) for r in records))
            if self.deep is not None:
                max_bytes = self.config.signals.images.decode.max_image_bytes
                for e in extracted:
                    e.deep_images = self._readable_images(e, max_bytes)
        finally:
            if self.prefetched is not None:
                self.prefetched.forget(urls)
        by_shard: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            by_shard.setdefault(shard_of(r.tenant, len(self.catalogues)), []).append(i)
        out: list[Scored | None] = [None] * len(records)
        for shard, idx in by_shard.items():
            # The catalogue never reads image bytes (features carry the images): not shipped,
            # which keeps a listing's call under Ray's inline-argument size (~4 ms a listing).
            lean = [_without_image_bytes(extracted[i]) for i in idx]
            done = await self.catalogues[shard].score.remote(kind, lean)
            for i, s in zip(idx, done, strict=True):
                out[i] = s
        return [s for s in out if s is not None]

    def _readable_images(self, item: Extracted, max_bytes: int) -> list[bytes]:
        """The bytes of the listing's images that the fast tier could read (the deep tier's input)."""
        record = item.record
        if not isinstance(record, Listing) or not record.images:
            return []
        bad = {e.field for e in item.errors if e.field is not None and e.field.startswith("images[")}
        out = []
        for k, im in enumerate(record.images):
            if f"images[{k}]" in bad:
                continue
            data = im.data
            if data is None and im.url is not None and self.prefetched is not None:
                data = self.prefetched(im.url, max_bytes)  # the prefetched bytes: never fetched twice
            if data is not None:
                out.append(data)
        return out

    async def delete(self, tenant: str, kind: RecordKind, item_id: str) -> bool:
        return bool(await self._shard(tenant).delete.remote(tenant, kind, item_id))

    async def entity(self, tenant: str, entity_type: EntityType, entity_id: str,
                     history: bool) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._shard(tenant).entity.remote(tenant, entity_type, entity_id,
                                                                               history)
        return found

    async def add_label(self, label: Label) -> int:
        return int(await self._shard(label.tenant).add_label.remote(label))

    async def labels(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._shard(tenant).labels.remote(tenant, entity_type, entity_id)
        return found

    async def bank_add(self, tenant: str, bank: str, modality: Modality | None, kind: str,
                       items: list[dict[str, Any]]) -> int:
        shard = self._shard(tenant)
        modality = modality or await shard.bank_modality.remote(tenant, bank)
        if modality is None:
            raise InvalidInput("modality", f"bank {bank!r} does not exist yet: say its modality", "missing")
        parsed = await asyncio.to_thread(bank_items, self.extraction, modality, items)
        return int(await shard.bank_add.remote(tenant, bank, modality, kind, parsed))

    async def bank_remove(self, tenant: str, bank: str, item_id: str) -> int:
        return int(await self._shard(tenant).bank_remove.remote(tenant, bank, item_id))

    async def ready(self) -> bool:
        if not self._ready:
            parts = [c.ready.remote() for c in self.catalogues]
            if self.deep is not None:
                parts.append(self.deep.ready.remote())
            self._ready = all(await asyncio.gather(*parts))
        return self._ready

    async def deep_stats(self) -> dict[str, float]:
        parts = await asyncio.gather(*(c.deep_stats.remote() for c in self.catalogues))
        return {k: sum(p.get(k, 0.0) for p in parts) for k in ("queued", "bytes", "skipped_total")}

    async def sink_stats(self) -> dict[str, dict[str, float]]:
        return merge_sink_stats(await asyncio.gather(*(c.sink_stats.remote() for c in self.catalogues)))

    async def index_sizes(self) -> dict[tuple[str, str], int]:
        sizes: dict[tuple[str, str], int] = {}
        for part in await asyncio.gather(*(c.index_sizes.remote() for c in self.catalogues)):
            sizes.update(part)
        return sizes
