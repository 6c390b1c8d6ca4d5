"""``product.templated_review_share`` in the service: each product's tally moves with every write,
re-post, move and delete, and equals a recount of the stored reviews (serving/scoring/engine.py)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from serving.deployments.catalogue import open_engine
from serving.scoring.engine import CatalogueEngine, product_tally_key
from serving.scoring.extraction import FastExtraction
from signals.schemas import Review
from tests.indexes.test_review_templates import EDITED, HONEST, TEMPLATE
from tests.serving.scoring.test_engine import text_only

T0 = datetime(2026, 3, 1, tzinfo=UTC)
OTHER = ["Arrived late and the box was dented, but the kettle works and boils fast enough for us.",
         "The handle gets hot after a few minutes. Otherwise fine for the money, nothing special.",
         "Returned it: the lid did not close properly and customer service took a week to answer."]


@pytest.fixture
def engine(data_dir: Path) -> tuple[FastExtraction, CatalogueEngine]:
    cfg = text_only(data_dir)
    ex = FastExtraction.build(cfg.signals, data_dir)
    models, dims = ex.models()
    return ex, open_engine(cfg, models, dims)


def recount(engine: CatalogueEngine, product: str) -> dict[str, int]:
    """The oracle: the product's stored reviews, and those with a near-duplicate by another reviewer."""
    items = engine.store.items_of_group("default", "review", product)
    return {"reviews": len(items),
            "templated_reviews": sum(int(it.facts.get("near_duplicates", 0)) >= 1 for it in items)}


def served(engine: CatalogueEngine, product: str) -> dict[str, Any] | None:
    found = engine.entity_signals("default", "product", product, False)
    for s in (found or {"signals": []})["signals"]:
        if s["name"] == "product.templated_review_share":
            return dict(s["evidence"])
    return None


def test_the_tallies_follow_writes_reposts_moves_and_deletes(
        engine: tuple[FastExtraction, CatalogueEngine]) -> None:
    ex, eng = engine
    rng = random.Random(0)
    products = ["P0", "P1", "P2"]
    live: dict[str, Review] = {}
    texts = [TEMPLATE, EDITED, HONEST, *OTHER]
    for step in range(45):
        op = rng.random()
        if live and op < 0.15:  # a delete
            rid = rng.choice(sorted(live))
            gone = live.pop(rid)
            assert eng.delete("default", "review", rid)
            touched = {gone.product_id}
        else:  # a new review, or a re-post that may move it to another product or change its text
            rid = rng.choice(sorted(live)) if live and op < 0.35 else f"R{step}"
            before = live.get(rid)
            review = Review(review_id=rid, product_id=rng.choice(products), seller_id="S",
                            reviewer_id=f"U{step}", rating=rng.randint(1, 5), text=rng.choice(texts),
                            created_at=T0 + timedelta(hours=step))
            assert eng.score_reviews(ex.extract("review", [review]))[0].error is None
            live[rid] = review
            touched = {review.product_id} | ({before.product_id} if before else set())
        for p in touched:
            want = recount(eng, p)
            stored = eng.store.get_meta(product_tally_key("default", p))
            assert stored is not None and json.loads(stored) == want, (step, p)
            if want["reviews"]:
                assert served(eng, p) == want, (step, p)
    assert max(recount(eng, p)["templated_reviews"] for p in products) >= 2  # the templates were found
    eng.close()


def test_a_write_reads_the_products_reviews_only_when_it_has_no_tally(
        engine: tuple[FastExtraction, CatalogueEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    ex, eng = engine
    whole: list[str | None] = []
    real = eng.store.items_of_group

    def spy(tenant: str, kind: Any, group: str | None, limit: int | None = None) -> Any:
        if limit is None:
            whole.append(group)
        return real(tenant, kind, group, limit)

    monkeypatch.setattr(eng.store, "items_of_group", spy)

    def post(k: int, text: str) -> None:
        review = Review(review_id=f"R{k}", product_id="P", seller_id="S", reviewer_id=f"U{k}", rating=5,
                        text=text, created_at=T0 + timedelta(hours=k))
        assert eng.score_reviews(ex.extract("review", [review]))[0].error is None

    post(0, TEMPLATE)
    assert whole == ["P"]  # the product's first review: no tally yet, counted once
    for k, text in enumerate([EDITED, HONEST, TEMPLATE], start=1):
        post(k, text)
    assert whole == ["P"]  # then kept up without reading the product's reviews
    # a tally that no longer adds up (say, a store restored from an older copy) is counted again
    eng.store.set_meta(product_tally_key("default", "P"), json.dumps({"reviews": 0, "templated_reviews": 0}))
    eng.delete("default", "review", "R2")
    assert whole == ["P", "P"]
    assert json.loads(eng.store.get_meta(product_tally_key("default", "P")) or "") == recount(eng, "P")
    eng.close()
