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


def check_all(eng: CatalogueEngine, products: list[str], step: int) -> None:
    for p in products:
        want = recount(eng, p)
        stored = eng.store.get_meta(product_tally_key("default", p))
        if stored is None:
            assert want["reviews"] == 0, (step, p)
            continue
        assert json.loads(stored) == want, (step, p)
        if want["reviews"]:
            assert served(eng, p) == want, (step, p)


def test_the_tallies_follow_writes_reposts_moves_and_deletes(
        engine: tuple[FastExtraction, CatalogueEngine]) -> None:
    """45 random steps over three products; after each, every product's tally and served share
    equal a recount of its stored reviews. Reviewers repeat (a reviewer's own copies are not
    near-duplicates), re-posts replay a review exactly or change its product and text."""
    ex, eng = engine
    rng = random.Random(0)
    products = ["P0", "P1", "P2"]
    live: dict[str, Review] = {}
    texts = [TEMPLATE, EDITED, HONEST, *OTHER]
    replays = 0
    for step in range(45):
        op = rng.random()
        if live and op < 0.15:  # a delete
            rid = rng.choice(sorted(live))
            live.pop(rid)
            assert eng.delete("default", "review", rid)
        elif live and op < 0.25:  # an exact replay (at-least-once delivery)
            review = live[rng.choice(sorted(live))]
            assert eng.score_reviews(ex.extract("review", [review]))[0].error is None
            replays += 1
        else:  # a new review, or a re-post that may move it to another product or change its text
            rid = rng.choice(sorted(live)) if live and op < 0.4 else f"R{step}"
            review = Review(review_id=rid, product_id=rng.choice(products), seller_id="S",
                            reviewer_id=f"U{rng.randint(0, 5)}", rating=rng.randint(1, 5),
                            text=rng.choice(texts), created_at=T0 + timedelta(hours=step))
            assert eng.score_reviews(ex.extract("review", [review]))[0].error is None
            live[rid] = review
        check_all(eng, products, step)
    assert replays >= 3
    assert max(recount(eng, p)["templated_reviews"] for p in products) >= 2  # the templates were found
    eng.close()


def test_the_recomputation_repairs_a_wrong_tally(engine: tuple[FastExtraction, CatalogueEngine]) -> None:
    """A tally that went wrong without going below zero (say, writes by a release without
    tallies) is moved by writes as it is; the periodic recomputation counts it again and
    publishes the product's share anew."""
    ex, eng = engine
    for k, text in enumerate([TEMPLATE, EDITED, HONEST]):
        review = Review(review_id=f"R{k}", product_id="P", seller_id="S", reviewer_id=f"U{k}", rating=5,
                        text=text, created_at=T0 + timedelta(hours=k))
        assert eng.score_reviews(ex.extract("review", [review]))[0].error is None
    eng.store.set_meta(product_tally_key("default", "P"), json.dumps({"reviews": 40, "templated_reviews": 1}))
    review = Review(review_id="R3", product_id="P", seller_id="S", reviewer_id="U3", rating=5, text=OTHER[0],
                    created_at=T0 + timedelta(hours=3))
    assert eng.score_reviews(ex.extract("review", [review]))[0].error is None
    assert served(eng, "P") == {"reviews": 41, "templated_reviews": 1}  # moved, still wrong
    eng.recompute_reviews()
    assert served(eng, "P") == recount(eng, "P") == {"reviews": 4, "templated_reviews": 2}
    assert json.loads(eng.store.get_meta(product_tally_key("default", "P")) or "") == recount(eng, "P")
    eng.close()


def test_a_write_reads_the_products_reviews_only_when_it_has_no_tally(
        engine: tuple[FastExtraction, CatalogueEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    ex, eng = engine
    whole: list[str | None] = []
    real = eng.store.items_of_group

    def spy(tenant: str, kind: Any, group: str | None) -> Any:
        whole.append(group)
        return real(tenant, kind, group)

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
