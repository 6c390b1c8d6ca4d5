"""``marketguard reindex``: rebuild the text indexes from the stored records with the configured model.

After a text model change the stored vectors and the index stamps name the old model and
the service refuses to start. Reindex embeds every stored listing and review again, writes
the new vectors into the store, and rebuilds each tenant's ``listing_text`` / ``review_text``
index stamped with the new model. PDQ hashes do not depend on a model; SSCD vectors need the
image bytes, which the store does not keep: an SSCD index made by another model is dropped
(its listings match again as they are re-posted) and the count is reported.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from indexes.config import Modality
from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_store, shard_dir
from serving.scoring.engine import CatalogueEngine, text_feature
from serving.scoring.extraction import FastExtraction
from serving.scoring.index_shards import close_local_clients, index_shard_dir, local_shard_clients
from serving.scoring.indexes import MODEL_STAMP
from serving.store.base import ItemKind
from serving.store.sql import SqlSignalStore
from signals.schemas import Listing, Review

_CHUNK = 64


def reindex(config: MarketGuardConfig) -> dict[str, Any]:
    extraction = FastExtraction.build(config.signals, config.data_dir)
    models, dims = extraction.models()
    counts: dict[str, Any] = {"embedded": 0, "sscd_indexes_dropped": 0}
    split = config.service.index_shards
    for shard in range(config.service.catalogue.shards):
        root = shard_dir(config.data_dir, shard, config.service.catalogue.shards)
        if config.store.backend == "sqlite" and not (root / "store.sqlite3").exists():
            continue
        store = open_store(config, shard, config.service.catalogue.shards, with_sinks=False)
        try:
            for tenant in store.tenants():
                text_modalities: tuple[tuple[ItemKind, Modality], ...] = (
                    ("listing", "listing_text"), ("review", "review_text"))
                for kind, modality in text_modalities:
                    counts["embedded"] += _reembed(extraction, store, tenant, kind, modality)
                    for directory in _index_dirs(config, root, tenant, modality):
                        shutil.rmtree(directory, ignore_errors=True)
                for sscd in _index_dirs(config, root, tenant, "image_sscd"):
                    stamp = sscd / MODEL_STAMP
                    if stamp.exists() and models.get("image_sscd", "") not in stamp.read_text("utf-8"):
                        shutil.rmtree(sscd)
                        counts["sscd_indexes_dropped"] += 1
        finally:
            store.close()
        # The engine's start-up reconciliation rebuilds the dropped indexes from the store (a split
        # tenant's into the index shards' directories, opened here in-process).
        shards = local_shard_clients(config.data_dir, split.count, config.indexes, models, dims)
        engine = CatalogueEngine(open_store(config, shard, config.service.catalogue.shards, with_sinks=False),
                                 root / "indexes", root / "banks",
                                 config.indexes, models, dims, index_shards=shards,
                                 split_tenants=split.tenants)
        try:
            counts.setdefault("indexed", 0)
            counts["indexed"] += engine.reconcile()["added"]
        finally:
            engine.close()
            close_local_clients(shards)
    counts["models"] = dict(models)
    return counts


def _index_dirs(config: MarketGuardConfig, root: Path, tenant: str, modality: Modality) -> list[Path]:
    """Where a tenant's index of ``modality`` may be: its shard's directory, or the index shards'."""
    return [root / "indexes" / tenant / modality,
            *(index_shard_dir(config.data_dir, j) / tenant / modality
              for j in range(config.service.index_shards.count))]


def _reembed(extraction: FastExtraction, store: SqlSignalStore, tenant: str, kind: ItemKind,
             modality: Modality) -> int:
    n = 0
    batch: list[tuple[str, Listing | Review, dict[str, np.ndarray]]] = []

    def flush() -> None:
        nonlocal n
        if not batch:
            return
        done = extraction.extract(kind, [r for _, r, _ in batch])
        updates = {}
        for (item_id, _, feats), ext in zip(batch, done, strict=True):
            vec = text_feature(ext.features)
            feats = {k: v for k, v in feats.items() if k != "text"}
            if vec is not None:
                feats["text"] = np.asarray(vec, dtype=np.float32)
            updates[item_id] = feats
        store.set_features(tenant, kind, updates)
        n += len(batch)
        batch.clear()

    for it in store.iter_items(tenant, kind):
        record: Listing | Review = (Listing if kind == "listing" else Review).model_validate_json(it.record)
        batch.append((it.item_id, record, it.features))
        if len(batch) >= _CHUNK:
            flush()
    flush()
    return n
