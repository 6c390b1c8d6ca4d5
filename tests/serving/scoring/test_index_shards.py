"""A tenant split over index shards, in process: the same decisions as one index, crash repair,
a change of shard count, and `marketguard reindex` over the shards' directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexes.config import IndexesConfig
from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.scoring.engine import CatalogueEngine
from serving.scoring.extraction import FastExtraction
from serving.scoring.index_shards import close_local_clients, local_shard_clients
from serving.scoring.indexes import ShardedTenantIndex
from serving.scoring.reindex import reindex
from tests.serving.scoring.test_engine import TITLE, listing, text_only

OTHER = "Garden hose reel 30m with wall bracket"
CATALOGUE = [("A", "s1", TITLE), ("B", "s2", TITLE), ("C", "s3", TITLE + " and case"),
             ("D", "s1", OTHER), ("E", "s4", OTHER), ("F", "s5", "Oak dining table, six chairs")]


def split_config(data_dir: Path, count: int, tenants: list[str] | None = None) -> MarketGuardConfig:
    cfg = text_only(data_dir)
    split = {"count": count, "tenants": tenants or ["*"]}
    return cfg.model_copy(update={"service": cfg.service.model_copy(
        update={"index_shards": cfg.service.index_shards.model_validate(split)})})


def signals_of(engine: CatalogueEngine, ids: list[str]) -> dict[tuple[str, str], object]:
    out: dict[tuple[str, str], object] = {}
    for lid in ids:
        found = engine.entity_signals("default", "listing", lid, False)
        assert found is not None
        for s in found["signals"]:
            if s["name"].startswith("near_duplicate."):
                matches = sorted(m["id"] for m in s["evidence"].get("matches", []))
                out[(lid, s["name"])] = (s["value"], matches)
    return out


def open_split(cfg: MarketGuardConfig, ex: FastExtraction) -> tuple[CatalogueEngine, list]:
    models, dims = ex.models()
    clients = local_shard_clients(cfg.data_dir, cfg.service.index_shards.count, cfg.indexes, models, dims)
    return open_engine(cfg, models, dims, index_shards=clients), clients


def close(engine: CatalogueEngine, clients: list) -> None:
    engine.close()
    close_local_clients(clients)


@pytest.fixture
def ex(data_dir: Path) -> FastExtraction:
    return FastExtraction.build(text_only(data_dir).signals, data_dir)


def test_a_split_tenant_decides_as_one_index(tmp_path: Path, data_dir: Path, ex: FastExtraction) -> None:
    rows = [listing(lid, seller, title) for lid, seller, title in CATALOGUE]
    one = open_engine(text_only(data_dir), *ex.models())
    one.score_listings(ex.extract("listing", rows))
    expected = signals_of(one, [r.listing_id for r in rows])
    one.close()

    split_dir = tmp_path / "split"
    split_dir.mkdir()
    (split_dir / "models").symlink_to(data_dir / "models")
    engine, clients = open_split(split_config(split_dir, 3), ex)
    engine.score_listings(ex.extract("listing", rows))
    idx = engine.indexes.get("default", "listing_text")
    assert isinstance(idx, ShardedTenantIndex) and len(idx) == len(rows)
    held = [c.core.size("default", "listing_text") for c in clients]
    assert sum(held) == len(rows) and max(held) < len(rows)  # spread, not all on one shard
    assert not (split_dir / "indexes" / "default").exists()  # nothing in the catalogue's own dir
    assert signals_of(engine, [r.listing_id for r in rows]) == expected
    assert expected[("A", "near_duplicate.count")][0] == 2  # the catalogue has copies to find
    # a delete reaches the shard that holds the item; its partners learn of it
    engine.delete("default", "listing", "B")
    assert "B" not in idx.ids() and len(idx) == len(rows) - 1
    assert signals_of(engine, ["A"])[("A", "near_duplicate.count")][0] == 1
    close(engine, clients)


def test_crash_repair_and_a_new_shard_count(data_dir: Path, ex: FastExtraction) -> None:
    rows = [listing(lid, seller, title) for lid, seller, title in CATALOGUE]
    engine, clients = open_split(split_config(data_dir, 3), ex)
    engine.score_listings(ex.extract("listing", rows[:4]))
    engine._index_item = lambda *a, **k: None  # type: ignore[method-assign]  # dies before the index log
    engine.score_listings(ex.extract("listing", rows[4:]))
    close(engine, clients)

    engine, clients = open_split(split_config(data_dir, 3), ex)  # start-up repairs from the store
    idx = engine.indexes.get("default", "listing_text")
    assert isinstance(idx, ShardedTenantIndex) and not idx.missing([r.listing_id for r in rows])
    close(engine, clients)

    engine, clients = open_split(split_config(data_dir, 2), ex)  # re-sharded: 3 -> 2
    idx = engine.indexes.get("default", "listing_text")
    assert isinstance(idx, ShardedTenantIndex)
    assert sorted(idx.ids()) == sorted(r.listing_id for r in rows) and len(idx) == len(rows)
    assert engine.reconcile() == {"added": 0, "removed": 0}
    engine.score_listings(ex.extract("listing", [listing("G", "s9")]))
    assert signals_of(engine, ["G"])[("G", "near_duplicate.count")][0] == 3  # A, B and C still match
    close(engine, clients)


def test_only_listed_tenants_are_split_and_reindex_rebuilds_the_shards(data_dir: Path,
                                                                         ex: FastExtraction) -> None:
    cfg = split_config(data_dir, 2, ["big"])
    engine, clients = open_split(cfg, ex)
    big = [listing(lid, seller, title).model_copy(update={"tenant": "big"})
           for lid, seller, title in CATALOGUE]
    engine.score_listings(ex.extract("listing", big + [listing("S1", "s1")]))
    assert isinstance(engine.indexes.get("big", "listing_text"), ShardedTenantIndex)
    assert not isinstance(engine.indexes.get("default", "listing_text"), ShardedTenantIndex)
    close(engine, clients)
    counts = reindex(cfg)
    assert counts["embedded"] == len(big) + 1 and counts["indexed"] == len(big) + 1
    engine, clients = open_split(cfg, ex)
    assert engine.reconcile() == {"added": 0, "removed": 0}
    sizes = engine.index_sizes()
    assert sizes[("big", "listing_text")] == len(big) and sizes[("default", "listing_text")] == 1
    close(engine, clients)


def test_the_sharded_index_sends_each_id_to_one_shard(data_dir: Path) -> None:
    config = IndexesConfig()
    models = {"listing_text": "m@1", "review_text": "m@1", "image_pdq": "pdq@1", "image_sscd": "s@1"}
    dims = {"listing_text": 8, "review_text": 8, "image_sscd": 8, "image_pdq": 256}
    clients = local_shard_clients(data_dir, 4, config, models, dims)  # type: ignore[arg-type]
    idx = ShardedTenantIndex("t", "image_pdq", clients)
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    ids = [f"L{i}/0" for i in range(40)]
    idx.add(ids, hashes, [{"owner": "s"}] * 40)
    assert len(idx) == 40 and sorted(idx.ids()) == sorted(ids)
    assert [h.id for h in idx.range_search(hashes[:5], 0)[0]] == ["L0/0"]
    assert idx.remove(ids[:10] + ["nope"]) == 10 and len(idx) == 30
    assert idx.missing(ids[:12]) == ids[:10]
    close_local_clients(clients)


def test_a_restarted_shard_and_a_failed_index_call_are_repaired_between_writes(
        tmp_path: Path, data_dir: Path, ex: FastExtraction) -> None:
    from serving.scoring.index_shards import IndexShardCore, LocalShardClient

    cfg = split_config(data_dir, 2)
    engine, clients = open_split(cfg, ex)
    rows = [listing(lid, seller, title) for lid, seller, title in CATALOGUE]
    engine.score_listings(ex.extract("listing", rows))
    assert engine.repair() == {"added": 1, "removed": 0}  # the last write's mark: logged again, idempotent
    # index shard 1 comes back on another node with an empty disk
    models, dims = ex.models()
    clients[1].core.close()
    clients[1].core = IndexShardCore(tmp_path / "elsewhere", cfg.indexes, models, dims)
    idx = engine.indexes.get("default", "listing_text")
    assert isinstance(idx, ShardedTenantIndex) and idx.missing([r.listing_id for r in rows])
    assert engine.repair()["added"] > 0  # noticed the restart: reconciled
    idx = engine.indexes.get("default", "listing_text")
    assert isinstance(idx, ShardedTenantIndex) and not idx.missing([r.listing_id for r in rows])
    assert len(idx) == len(rows)
    # an index call that fails after the commit: the item is re-indexed by the next repair
    real = engine._index_item

    def failing(*args: object) -> None:
        raise TimeoutError("index shard did not answer")
    engine._index_item = failing  # type: ignore[method-assign,assignment]
    with pytest.raises(TimeoutError):
        engine.score_listings(ex.extract("listing", [listing("G", "s9")]))
    engine._index_item = real  # type: ignore[method-assign]
    assert "G" in idx.missing(["G"])
    engine.repair()
    assert not idx.missing(["G"]) and isinstance(clients[0], LocalShardClient)
    close(engine, clients)
