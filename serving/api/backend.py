"""What the routes need from the rest of the service: extraction, scoring, reads.

The Serve ingress implements it with deployment handles; :class:`LocalBackend` runs the
same objects in one process (the in-process benchmark, and a laptop without Ray Serve).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from indexes.banks import BankItem
from indexes.config import Modality
from serving.scoring.engine import CatalogueEngine, Scored, text_feature
from serving.scoring.extraction import FastExtraction
from serving.sinks.publisher import Publisher
from signals.schemas import EntityType, Label, Listing, RecordKind, Review


class Backend(Protocol):
    async def score(self, kind: RecordKind, records: Sequence[Listing | Review]) -> list[Scored]: ...
    async def delete(self, tenant: str, kind: RecordKind, item_id: str) -> bool: ...
    async def entity(self, tenant: str, entity_type: EntityType, entity_id: str,
                     history: bool) -> dict[str, Any] | None: ...
    async def add_label(self, label: Label) -> int: ...
    async def labels(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]: ...
    async def bank_add(self, tenant: str, bank: str, modality: Modality | None, kind: str,
                       items: list[dict[str, Any]]) -> int: ...
    async def bank_remove(self, tenant: str, bank: str, item_id: str) -> int: ...
    async def ready(self) -> bool: ...
    async def index_sizes(self) -> dict[tuple[str, str], int]: ...
    async def sink_stats(self) -> dict[str, dict[str, float]]: ...
    async def deep_stats(self) -> dict[str, float]: ...


def merge_sink_stats(parts: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Sink stats of several catalogue shards as one: counts summed, lag the largest."""
    out: dict[str, dict[str, float]] = {}
    for part in parts:
        for sink, row in part.items():
            acc = out.setdefault(sink, {})
            for key, value in row.items():
                acc[key] = max(acc.get(key, 0.0), value) if key == "lag_s" else acc.get(key, 0.0) + value
    return out


def bank_items(extraction: FastExtraction, modality: Modality, items: list[dict[str, Any]]) -> list[BankItem]:
    """Bank items from content (a listing, a review, an image): embedded or hashed by the
    fast extractors, so a bank item matches exactly like the records it stands for."""
    from signals.errors import InvalidInput
    from signals.schemas import parse_record

    out: list[BankItem] = []
    for k, raw in enumerate(items):
        if not isinstance(raw, dict):
            raise InvalidInput(f"items[{k}]", "must be a JSON object")
        meta = {f: raw[f] for f in ("source", "reason", "added_by", "tags") if f in raw}
        content = {f: v for f, v in raw.items() if f not in meta}
        try:
            if modality in ("listing_text", "image_pdq", "image_sscd"):
                if modality == "listing_text":
                    listing = parse_record(Listing, {"seller_id": "bank", **content})
                else:
                    item_id = content.pop("id", None) or content.pop("listing_id", None)
                    listing = parse_record(Listing, {"listing_id": item_id, "seller_id": "bank",
                                                     "title": "bank image", "images": [content]})
                res = extraction.extract("listing", [listing])[0]
                item_id = listing.listing_id
            else:
                review = parse_record(Review, {"product_id": "bank", "seller_id": "bank",
                                               "reviewer_id": "bank", "rating": 1,
                                               "created_at": "2000-01-01T00:00:00Z", **content})
                res = extraction.extract("review", [review])[0]
                item_id = review.review_id
        except InvalidInput as exc:
            raise InvalidInput(f"items[{k}].{exc.field}" if exc.field else f"items[{k}]", exc.reason,
                               exc.code) from None
        feats = res.features
        if modality in ("listing_text", "review_text"):
            vec = text_feature(feats)
            if vec is None:
                raise InvalidInput(f"items[{k}]", "has no text to embed")
            # a review bank keeps its texts: the review text model learns from them
            text = review.text if modality == "review_text" else None
            out.append(BankItem(id=item_id, vector=[float(x) for x in vec], text=text, **meta))
        elif modality == "image_pdq":
            if "image_pdq" not in feats or not len(feats["image_pdq"]):
                raise InvalidInput(f"items[{k}]", _image_reason(res.errors))
            out.append(BankItem(id=item_id, pdq=bytes(feats["image_pdq"][0]).hex(), **meta))
        else:
            vec = next((feats[f][0] for f in ("image_sscd", "image_sscd_distilled")
                        if f in feats and len(feats[f])), None)
            if vec is None:
                raise InvalidInput(f"items[{k}]", _image_reason(res.errors))
            out.append(BankItem(id=item_id, vector=[float(x) for x in vec], **meta))
    return out


def _image_reason(errors: Sequence[Any]) -> str:
    return errors[0].reason if errors else "has no readable image"


class LocalBackend:
    """The backend in one process: extraction and the engine, writes on one thread."""

    def __init__(self, extraction: FastExtraction, engine: CatalogueEngine,
                 publisher: Publisher | None = None) -> None:
        self.extraction, self.engine, self.publisher = extraction, engine, publisher
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="marketguard-writer")

    async def _write(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def score(self, kind: RecordKind, records: Sequence[Listing | Review]) -> list[Scored]:
        extracted = await asyncio.to_thread(self.extraction.extract, kind, records)
        fn = self.engine.score_listings if kind == "listing" else self.engine.score_reviews
        return list(await self._write(fn, extracted))

    async def delete(self, tenant: str, kind: RecordKind, item_id: str) -> bool:
        return bool(await self._write(self.engine.delete, tenant, kind, item_id))

    async def entity(self, tenant: str, entity_type: EntityType, entity_id: str,
                     history: bool) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.engine.entity_signals, tenant, entity_type, entity_id, history)

    async def add_label(self, label: Label) -> int:
        return int(await self._write(self.engine.add_label, label))

    async def labels(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]:
        return self.engine.store.labels(tenant, entity_type, entity_id)

    async def bank_add(self, tenant: str, bank: str, modality: Modality | None, kind: str,
                       items: list[dict[str, Any]]) -> int:
        from signals.errors import InvalidInput

        modality = modality or self.engine.bank_modality(tenant, bank)
        if modality is None:
            raise InvalidInput("modality", f"bank {bank!r} does not exist yet: say its modality", "missing")
        parsed = await asyncio.to_thread(bank_items, self.extraction, modality, items)
        return int(await self._write(self.engine.bank_add, tenant, bank, modality, kind, parsed))

    async def bank_remove(self, tenant: str, bank: str, item_id: str) -> int:
        return int(await self._write(self.engine.bank_remove, tenant, bank, item_id))

    async def ready(self) -> bool:
        return True

    async def index_sizes(self) -> dict[tuple[str, str], int]:
        return self.engine.index_sizes()

    async def sink_stats(self) -> dict[str, dict[str, float]]:
        return self.publisher.stats() if self.publisher is not None else {}

    async def deep_stats(self) -> dict[str, float]:
        jobs, size = self.engine.deep_backlog()
        return {"queued": float(jobs), "bytes": float(size), "skipped_total": float(self.engine.deep_skipped)}
