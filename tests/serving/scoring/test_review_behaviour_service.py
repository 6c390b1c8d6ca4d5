"""The service's behavioural review signals and graph recomputation agree with the batch job's
analysis (serving/scoring/review_behaviour.py)."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from serving.batch.signals import review_analysis
from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.scoring.engine import CatalogueEngine
from serving.scoring.extraction import FastExtraction
from serving.scoring.review_behaviour import state_key
from signals.review_analysis import ReviewRow, analyse_reviews
from signals.review_graph import GraphSettings
from signals.schemas import Label, Review
from tests.serving.scoring.test_engine import text_only

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
GRAPH_NAMES = ("reviewer.ring_score", "reviewer.burst_participation", "review.rating_burst",
               "reviewer.rating_burst", "product.rating_burst", "review.spam_score", "reviewer.spam_score",
               "product.spam_score", "seller.review_spam_share")


@pytest.fixture
def setup(data_dir: Path) -> tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]:
    cfg = text_only(data_dir)
    ex = FastExtraction.build(cfg.signals, data_dir)
    models, dims = ex.models()
    return cfg, ex, open_engine(cfg, models, dims)


def history(seed: int = 0) -> list[Review]:
    """Organic reviews over 60 days, and a ring of five fresh accounts hitting three products."""
    rng = random.Random(seed)
    out = []
    for k in range(80):
        out.append(Review(review_id=f"R{k:03d}", product_id=f"P{rng.randint(0, 5)}", seller_id=f"S{k % 2}",
                          reviewer_id=f"U{rng.randint(0, 20)}", rating=rng.randint(2, 5),
                          created_at=T0 + timedelta(days=rng.uniform(0, 60)),
                          reviewer_created_at=T0 - timedelta(days=rng.randint(30, 400))))
    for p, day in (("P7", 20), ("P8", 35), ("P9", 50)):
        for m in range(5):
            out.append(Review(review_id=f"F{p}{m}", product_id=p, seller_id="S9", reviewer_id=f"X{m}",
                              rating=5,
                              created_at=T0 + timedelta(days=day, hours=m),
                              reviewer_created_at=T0 + timedelta(days=19)))
    return sorted(out, key=lambda r: (r.created_at, r.review_id))


def comparable(s: dict[str, Any]) -> tuple[Any, Any]:
    v = s["value"]
    return (round(v, 4) if isinstance(v, float) else v, None if s["score"] is None else round(s["score"], 4))


def latest(engine: CatalogueEngine, etype: str, eid: str) -> dict[str, dict[str, Any]]:
    found = engine.entity_signals("default", etype, eid, False)  # type: ignore[arg-type]
    assert found is not None
    return {s["name"]: s for s in found["signals"]}


def test_service_behaviour_equals_batch_and_recompute_equals_batch(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    _, ex, engine = setup
    reviews = history()
    for r in reviews:  # one at a time, in time order, as they would arrive
        assert engine.score_reviews(ex.extract("review", [r]))[0].error is None
    batch = analyse_reviews([ReviewRow.of(r) for r in reviews], (), engine.review_graph)
    expected: dict[tuple[str, str, str], dict[str, Any]] = {}
    for k in range(len(reviews)):
        for s in batch.review_signals(k, NOW):
            expected[(s.entity_type, s.entity_id, s.name)] = s.to_json_dict()
    for s in batch.entity_signals(NOW):
        expected[(s.entity_type, s.entity_id, s.name)] = s.to_json_dict()

    def served() -> dict[tuple[str, str, str], dict[str, Any]]:
        got = {}
        for etype, eid, _ in {(k[0], k[1], None) for k in expected}:
            for name, s in latest(engine, etype, eid).items():
                got[(etype, eid, name)] = s
        return got

    # 1. behavioural signals: the per-review fold is the batch job's
    before = served()
    behavioural = [k for k in expected if k[2] not in GRAPH_NAMES]
    assert len(behavioural) > 500
    diff = [k for k in behavioural if comparable(before[k]) != comparable(expected[k])
            or before[k]["evidence"] != expected[k]["evidence"]]
    assert not diff, diff[:5]
    # the collective scores wait for the recomputation; the ring score of a review's reviewer is
    # updated from its neighbourhood: the ring's last member has its final score already
    assert not any(k[2] in GRAPH_NAMES and k[2] != "reviewer.ring_score" for k in before)
    ring = ("reviewer", "X4", "reviewer.ring_score")
    assert comparable(before[ring]) == comparable(expected[ring]) and before[ring]["value"] > 0.5
    first = ("reviewer", "X0", "reviewer.ring_score")
    assert comparable(before[first]) != comparable(expected[first])  # its partners came after it

    # 2. the periodic recomputation gives every signal of the batch analysis, graph ones included
    assert engine.recompute_reviews() >= len(expected)
    after = served()
    diff = [k for k in expected if comparable(after[k]) != comparable(expected[k])]
    assert not diff, [(k, after.get(k), expected[k]) for k in diff[:3]]
    assert after[("reviewer", "X0", "reviewer.ring_score")]["value"] > 0.5
    # ...and rewrites the states the per-review path folds into next
    state = json.loads(engine.store.get_meta(state_key("default", "reviewer", "X0")) or "{}")
    assert state["n"] == 3
    engine.close()


def test_recompute_takes_the_stored_labels(setup: tuple[MarketGuardConfig, FastExtraction,
                                                        CatalogueEngine]) -> None:
    _, ex, engine = setup
    reviews = history(1)
    engine.score_reviews(ex.extract("review", reviews))
    engine.recompute_reviews()
    plain = latest(engine, "reviewer", "U3")["reviewer.spam_score"]["value"]
    engine.add_label(Label(entity_type="reviewer", entity_id="U3", label="fraud"))
    engine.recompute_reviews()
    seeded = latest(engine, "reviewer", "U3")["reviewer.spam_score"]["value"]
    assert seeded > plain
    expected = analyse_reviews([ReviewRow.of(r) for r in reviews],
                               [Label(entity_type="reviewer", entity_id="U3", label="fraud")],
                               engine.review_graph)
    row = next(s for s in expected.entity_signals(NOW)
               if s.entity_id == "U3" and s.name == "reviewer.spam_score")
    assert seeded == row.value
    engine.close()


def test_a_repost_is_not_folded_twice(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    _, ex, engine = setup
    r = history()[0]
    engine.score_reviews(ex.extract("review", [r]))
    engine.score_reviews(ex.extract("review", [r]))
    assert latest(engine, "reviewer", r.reviewer_id)["reviewer.review_count"]["value"] == 1
    engine.close()


class _Catalogue:
    """What the batch job's review analysis reads of its catalogue: the records' JSON."""

    def __init__(self, reviews: list[Review]) -> None:
        self.records = [r.model_dump_json() for r in reviews]

    def iter_rows(self, names: tuple[str, ...]) -> Any:
        assert names == ("record",)
        return ((rec,) for rec in self.records)


def test_the_batch_jobs_analysis_reads_its_catalogue_like_the_service() -> None:
    reviews = history(2)
    shuffled = reviews[:]
    random.Random(0).shuffle(shuffled)
    settings = GraphSettings()
    via_job = review_analysis(_Catalogue(shuffled), [], settings)  # type: ignore[arg-type]  # duck-typed
    direct = analyse_reviews([ReviewRow.of(r) for r in reviews], (), settings)
    assert ([s.to_json_dict() for s in via_job.entity_signals(NOW)]
            == [s.to_json_dict() for s in direct.entity_signals(NOW)])


def test_recomputation_is_idempotent(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    """Roll-ups and graph signals are rewritten under the same keys: twice gives the same latest values."""
    _, ex, engine = setup
    engine.score_reviews(ex.extract("review", history(3)))
    engine.recompute_reviews()
    first = {n: comparable(s) for n, s in latest(engine, "seller", "S9").items()}
    first_ring = comparable(latest(engine, "reviewer", "X1")["reviewer.ring_score"])
    engine.recompute_reviews()
    assert {n: comparable(s) for n, s in latest(engine, "seller", "S9").items()} == first
    assert comparable(latest(engine, "reviewer", "X1")["reviewer.ring_score"]) == first_ring
    assert set(first) >= {"seller.review_burst", "seller.review_spam_share"}
    engine.close()


def test_batch_labels_file(tmp_path: Path) -> None:
    from serving.batch.signals import read_labels
    from signals.errors import InvalidInput

    good = tmp_path / "labels.jsonl"
    good.write_text('{"entity_type": "reviewer", "entity_id": "U1", "label": "fraud"}\n\n')
    assert read_labels(good)[0].entity_id == "U1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"entity_type": "reviewer", "entity_id": "U1", "label": "fraud"}\n{"label": "maybe"}\n')
    with pytest.raises(InvalidInput, match="line 2"):
        read_labels(bad)


def test_the_per_review_ring_update_reads_a_bounded_slice_of_each_product(data_dir: Path) -> None:
    """``signals.review_graph.ring_product_reviews`` reaches the store's query: a product with
    more stored reviews hands the ring update only its last ones, whatever its size."""
    cfg = text_only(data_dir)
    cfg.signals.review_graph.ring_product_reviews = 3
    ex = FastExtraction.build(cfg.signals, data_dir)
    models, dims = ex.models()
    engine = open_engine(cfg, models, dims)
    asked: list[tuple[int | None, int]] = []
    real = engine.store.group_records

    def spy(tenant, kind, group, limit=None):  # type: ignore[no-untyped-def]
        got = real(tenant, kind, group, limit)
        if kind == "review":
            asked.append((limit, len(got)))
        return got

    engine.store.group_records = spy  # type: ignore[method-assign]
    for k in range(8):
        r = Review(review_id=f"R{k}", product_id="P1", seller_id="S1", reviewer_id=f"U{k}", rating=5,
                   created_at=T0 + timedelta(hours=k))
        assert engine.score_reviews(ex.extract("review", [r]))[0].error is None
    assert len(asked) == 8 and all(limit == 3 and n <= 3 for limit, n in asked)
    assert max(n for _, n in asked) == 3  # the product did outgrow the bound
    engine.close()


def test_the_maintenance_timer_recomputes_the_review_graph_on_its_period(data_dir: Path) -> None:
    """The catalogue replica's timer: index repair and snapshot every round, the review graph's
    recomputation once ``recompute_s`` has passed (not every round), retention when it is set,
    and a failing round does not stop the next. Judged by the calls' own times, so a slow box
    makes fewer rounds, not a failure."""
    import asyncio
    from concurrent.futures import Future, ThreadPoolExecutor

    from serving.deployments.catalogue import Catalogue

    cfg = text_only(data_dir)
    cfg.service.catalogue.compact_interval_s = 0.02
    cfg.signals.review_graph.recompute_s = 0.15
    cfg.service.retention_days = 30
    calls: list[tuple[str, float]] = []

    class Engine:
        def _call(self, name: str) -> int:
            calls.append((name, time.monotonic()))
            return 0

        def repair(self) -> None:
            self._call("repair")
            if sum(c == "repair" for c, _ in calls) == 2:
                raise RuntimeError("a bad round")

        def compact(self) -> None:
            self._call("compact")

        def recompute_reviews(self) -> int:
            return self._call("recompute_reviews")

        def expire(self, before: datetime) -> int:
            assert before < datetime.now(UTC) - timedelta(days=29)
            return self._call("expire")

    replica = Catalogue.func_or_class.__new__(Catalogue.func_or_class)
    replica.config = cfg
    replica._writer = ThreadPoolExecutor(1)
    opened: Future[Any] = Future()
    opened.set_result(Engine())
    replica._opening = opened

    async def run() -> float:
        start = time.monotonic()
        task = asyncio.get_running_loop().create_task(replica._maintain())
        replica._timer = task  # as the first write would have started it
        while sum(c == "recompute_reviews" for c, _ in calls) < 3 and time.monotonic() - start < 60:
            await asyncio.sleep(0.01)
        task.cancel()
        return start

    start = asyncio.run(run())
    replica._writer.shutdown(wait=True)
    rounds: list[list[str]] = []
    for call, _ in calls:
        if call == "repair":
            rounds.append([])
        rounds[-1].append(call)
    done = rounds[:-1]  # the last round may have been cut by the cancel
    assert done[1] == ["repair"]  # the failed round stopped there; the next ran
    plain, full = ["repair", "compact", "expire"], ["repair", "compact", "recompute_reviews", "expire"]
    assert all(r in (plain, full) for k, r in enumerate(done) if k != 1)
    assert plain in done[2:]  # some rounds did not recompute
    at = [t for c, t in calls if c == "recompute_reviews"]
    assert len(at) >= 3 and at[0] - start >= 0.15
    assert all(b - a >= 0.12 for a, b in zip(at, at[1:], strict=False))  # about recompute_s apart
