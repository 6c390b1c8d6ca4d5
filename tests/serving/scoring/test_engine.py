"""The scoring engine in process (no Ray): crash repair, model stamps, retention, reindex."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.scoring.engine import CatalogueEngine
from serving.scoring.extraction import FastExtraction
from serving.scoring.indexes import MODEL_STAMP
from serving.scoring.reindex import reindex
from signals.errors import InvalidInput
from signals.schemas import Listing, Review

TITLE = "Sony WH-1000XM5 wireless noise cancelling headphones black, sealed box"


def text_only(data_dir: Path) -> MarketGuardConfig:
    return MarketGuardConfig.model_validate({
        "data_dir": str(data_dir),
        "signals": {"images": {"pdq": {"enabled": False}, "sscd": {"enabled": False},
                               "local": {"enabled": False}, "ocr": {"enabled": False},
                               "nsfw": {"enabled": False}}}})


@pytest.fixture
def setup(data_dir: Path) -> tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]:
    cfg = text_only(data_dir)
    ex = FastExtraction.build(cfg.signals, data_dir)
    models, dims = ex.models()
    return cfg, ex, open_engine(cfg, models, dims)


def listing(lid: str, seller: str, title: str = TITLE) -> Listing:
    return Listing(listing_id=lid, seller_id=seller, title=title, description="Brand new, quick sale",
                   price=250.0, currency="GBP", category="audio")


def value(engine: CatalogueEngine, etype: str, eid: str, name: str) -> object:
    found = engine.entity_signals("default", etype, eid, False)  # type: ignore[arg-type]
    assert found is not None
    return next(s["value"] for s in found["signals"] if s["name"] == name)


def test_a_crash_after_the_commit_is_repaired_at_start(setup: tuple[MarketGuardConfig, FastExtraction,
                                                                   CatalogueEngine]) -> None:
    cfg, ex, engine = setup
    engine.score_listings(ex.extract("listing", [listing("A", "s1")]))
    # SIGKILL after the store committed B but before its index entry was logged:
    engine._index_item = lambda *a, **k: None  # type: ignore[method-assign]  # the crash
    engine.score_listings(ex.extract("listing", [listing("B", "s2")]))
    idx = engine.indexes.get("default", "listing_text")
    assert idx is not None and "B" not in idx.index
    # ...and an index entry whose store commit never happened:
    idx.add(["GHOST"], ex.extract("listing", [listing("GHOST", "s9")])[0].features["text_minilm"][None, :])
    models, dims = ex.models()
    engine.close()
    engine = open_engine(cfg, models, dims)  # start-up reconciles: the store is authoritative
    idx = engine.indexes.get("default", "listing_text")
    assert idx is not None and "B" in idx.index and "GHOST" not in idx.index
    engine.score_listings(ex.extract("listing", [listing("C", "s3")]))
    assert value(engine, "listing", "C", "near_duplicate.count") == 2
    engine.close()


def test_an_index_made_by_another_model_is_refused(setup: tuple[MarketGuardConfig, FastExtraction,
                                                               CatalogueEngine]) -> None:
    cfg, ex, engine = setup
    engine.score_listings(ex.extract("listing", [listing("A", "s1")]))
    engine.close()
    stamp = cfg.data_dir / "indexes" / "default" / "listing_text" / MODEL_STAMP
    made_by = json.loads(stamp.read_text())["model"]
    stamp.write_text(json.dumps({"modality": "listing_text", "model": "usem3@1"}))
    models, dims = ex.models()
    with pytest.raises(InvalidInput, match=r"built by model 'usem3@1'.*configured model is") as err:
        open_engine(cfg, models, dims)
    assert made_by in str(err.value) and "marketguard reindex" in str(err.value)
    counts = reindex(cfg)  # rebuilds from the stored records with the configured model
    assert counts["embedded"] == 1 and counts["indexed"] >= 1
    assert json.loads(stamp.read_text())["model"] == made_by
    open_engine(cfg, models, dims).close()


def test_retention_deletes_old_content_and_keeps_history(setup: tuple[MarketGuardConfig, FastExtraction,
                                                                      CatalogueEngine]) -> None:
    _, ex, engine = setup
    engine.score_listings(ex.extract("listing", [listing("OLD", "s1"), listing("NEW", "s2")]))
    assert value(engine, "listing", "NEW", "near_duplicate.count") == 1
    assert engine.expire(datetime.now(UTC) + timedelta(seconds=1), limit=1) == 1  # the oldest first
    assert engine.store.get_item("default", "listing", "OLD") is None
    assert value(engine, "listing", "NEW", "near_duplicate.count") == 0
    gone = engine.entity_signals("default", "listing", "OLD", True)
    assert gone is not None and gone["signals"] == [] and gone["history"] and "deleted_at" in gone
    engine.close()


def test_review_behaviour_seam_adds_signals(setup: tuple[MarketGuardConfig, FastExtraction,
                                                         CatalogueEngine]) -> None:
    _, ex, engine = setup
    seen = []

    class Velocity:
        def signals(self, review: Review, store: object, observed_at: datetime) -> tuple[list, dict]:
            seen.append(review.review_id)
            return [], {}

    engine.review_behaviour.append(Velocity())
    r = Review(review_id="R1", product_id="P", seller_id="S", reviewer_id="U", rating=5, text="Great!",
               created_at=datetime.now(UTC))
    assert engine.score_reviews(ex.extract("review", [r]))[0].error is None
    assert seen == ["R1"]
    engine.close()


def test_compaction_retrains_grown_vector_indexes_and_snapshots(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from indexes.vector import VectorIndex

    _, ex, engine = setup
    engine.score_listings(ex.extract("listing", [listing("A", "s1")]))
    idx = engine.indexes.get("default", "listing_text")
    assert idx is not None
    generation = idx.generation
    asked: list[int] = []
    monkeypatch.setattr(VectorIndex, "compact", lambda self, force=False: asked.append(len(self)) or True)
    engine.compact()
    assert asked == [1] and idx.generation == generation + 1  # retrained, then snapshotted
    engine.compact()
    assert idx.generation == generation + 2  # a retrain always ends in a snapshot
    engine.close()


def test_a_listing_reposted_under_another_seller_leaves_the_first_sellers_rollup(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    _, ex, engine = setup
    first = [listing("A", "s1"), listing("B", "s1", "Garden hose reel 30m"), listing("C", "s2")]
    engine.score_listings(ex.extract("listing", first))
    assert engine.entity_signals("default", "seller", "s1", False) is not None
    rollup = engine.entity_signals("default", "seller", "s1", False)
    assert rollup is not None
    ratio = next(s for s in rollup["signals"] if s["name"] == "seller.duplicate_listing_ratio")
    assert ratio["evidence"]["listings"] == 2
    engine.score_listings(ex.extract("listing", [listing("A", "s3")]))  # A moves to seller s3
    rollup = engine.entity_signals("default", "seller", "s1", False)
    assert rollup is not None
    ratio = next(s for s in rollup["signals"] if s["name"] == "seller.duplicate_listing_ratio")
    assert ratio["evidence"]["listings"] == 1 and ratio["value"] == 0.0
    engine.delete("default", "listing", "B")  # s1's last listing: its roll-ups are withdrawn
    assert engine.entity_signals("default", "seller", "s1", False) is None


def test_own_old_images_never_crowd_out_partners() -> None:
    from indexes.vector import Hit

    found = [[Hit("L1/0", 1.0), Hit("L1/1", 0.99), Hit("L1/2", 0.98), Hit("L2/0", 0.9)]]
    edges = CatalogueEngine._image_hits("L1", "image_sscd", found, limit=1)
    assert [(e.b, e.score) for e in edges] == [("L2", 0.9)]


def test_a_crash_after_a_reposts_commit_leaves_no_stale_vector(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    import numpy as np

    cfg, ex, engine = setup
    engine.score_listings(ex.extract("listing", [listing("A", "s1")]))
    new = ex.extract("listing", [listing("A", "s1", "Vintage oak dining table with six chairs")])
    engine._index_item = lambda *a, **k: None  # type: ignore[method-assign]  # dies before the index log
    engine.score_listings(new)
    models, dims = ex.models()
    engine.close()
    engine = open_engine(cfg, models, dims)  # the pending mark makes start-up re-index A from the store
    idx = engine.indexes.get("default", "listing_text")
    assert idx is not None
    hits = idx.index.search(np.asarray(new[0].features["text_minilm"], dtype=np.float32)[None, :], 1)[0]
    assert hits[0].id == "A" and hits[0].score > 0.99
    assert engine.store.pending_index() == []
    engine.close()


def test_confirmed_labels_feed_the_tenants_banks_when_asked(data_dir: Path) -> None:
    from serving.config import LabelsConfig
    from signals.schemas import Label

    cfg = text_only(data_dir).model_copy(update={"labels": LabelsConfig(auto_bank=True)})
    ex = FastExtraction.build(cfg.signals, data_dir)
    engine = open_engine(cfg, *ex.models())
    engine.score_listings(ex.extract("listing", [listing("A", "s1")]))
    engine.add_label(Label(entity_type="listing", entity_id="A", label="fraud", reason="chargeback"))
    banks = engine.tenant_banks("default")
    assert banks.get("confirmed-fraud-listings").info.kind == "fraud"
    assert "A" in [it.id for it in banks.get("confirmed-fraud-listings").items()]
    # from then on a copy matches the confirmed case
    engine.score_listings(ex.extract("listing", [listing("B", "s2")]))
    assert value(engine, "listing", "B", "bank.match") >= 1
    # a later legit label wins: out of the fraud bank, into the benign one
    engine.add_label(Label(entity_type="listing", entity_id="A", label="legit"))
    assert "A" not in [it.id for it in banks.get("confirmed-fraud-listings").items()]
    assert "A" in [it.id for it in banks.get("confirmed-legit-listings").items()]
    assert banks.get("confirmed-legit-listings").info.kind == "benign"
    engine.add_label(Label(entity_type="seller", entity_id="s1", label="fraud"))  # not an item: no bank
    engine.add_label(Label(entity_type="listing", entity_id="GONE", label="fraud"))  # not stored
    assert sorted(banks.names()) == ["confirmed-fraud-listings", "confirmed-legit-listings"]
    # a confirmed fake review goes in with its text (what the review banks' text model learns from)
    words = "Best purchase ever, arrived in two days, works perfectly, five stars from me and my family"
    engine.score_reviews(ex.extract("review", [Review(review_id="R1", product_id="P1", seller_id="s1",
                                                      reviewer_id="u1", rating=5, text=words,
                                                      created_at="2026-11-01T10:00:00Z")]))
    engine.add_label(Label(entity_type="review", entity_id="R1", label="fraud"))
    [banked] = banks.get("confirmed-fraud-reviews").items()
    assert banked.id == "R1" and banked.text == words
    engine.close()


def test_labels_stay_out_of_the_banks_by_default(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    from signals.schemas import Label

    _, ex, engine = setup
    engine.score_listings(ex.extract("listing", [listing("A", "s1")]))
    engine.add_label(Label(entity_type="listing", entity_id="A", label="fraud"))
    assert engine.tenant_banks("default").names() == []
    assert [x["label"] for x in engine.store.labels("default", "listing", "A")] == ["fraud"]
    engine.close()
