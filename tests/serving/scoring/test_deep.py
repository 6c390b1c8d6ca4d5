"""The deep tier in process: jobs queued with their listing, bounded, leased, done once, dropped when
the listing changed, kept across a restart; OCR and NSFW on real images."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.scoring.deep import DeepWork, pending_names
from serving.scoring.engine import CatalogueEngine, DeepQueue
from serving.scoring.extraction import FastExtraction
from serving.store.base import DeepJob
from signals.registry import build_registry
from signals.schemas import Signal
from tests.serving.api.helpers import photo_b64, text_photo_b64
from tests.serving.scoring.test_engine import listing, text_only

PENDING = ("content.offplatform_contact@image_ocr", "image.nsfw")


@pytest.fixture
def setup(data_dir: Path) -> tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]:
    cfg = text_only(data_dir)
    ex = FastExtraction.build(cfg.signals, data_dir)
    engine = open_engine(cfg, *ex.models())
    engine.deep = DeepQueue(PENDING, max_jobs=2, max_bytes=10 << 20)
    return cfg, ex, engine


def scored(engine: CatalogueEngine, ex: FastExtraction, lid: str, images: list[bytes],
           title: str = "") -> list[str]:
    item = ex.extract("listing", [listing(lid, "s1", title or f"Item {lid} for sale")])[0]
    item.deep_images = images
    result = engine.score_listings([item])[0]
    assert result.error is None
    return result.pending


def nsfw_signal(lid: str, value: float) -> Signal:
    return Signal(entity_type="listing", entity_id=lid, name="image.nsfw", value=value, source="image_nsfw@1")


def test_jobs_are_queued_bounded_done_once_and_dropped_when_the_listing_changes(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    cfg, ex, engine = setup
    assert scored(engine, ex, "A", [b"jpeg-a"]) == list(PENDING)
    assert scored(engine, ex, "B", [b"jpeg-b1", b"jpeg-b2"]) == list(PENDING)
    assert scored(engine, ex, "N", []) == []  # no readable image: no deep work
    assert engine.deep_backlog() == (2, 6 + 14)
    assert scored(engine, ex, "C", [b"jpeg-c"]) == []  # the queue is full: skipped, never waited for
    assert engine.deep_skipped == 1
    skipped = engine.store.get_item("default", "listing", "C")
    assert skipped is not None and skipped.facts["deep_skipped"]["reason"] == "deep queue full"
    jobs = engine.deep_take(10, lease_s=60)
    assert [(j.item_id, j.images) for j in jobs] == [("A", [b"jpeg-a"]), ("B", [b"jpeg-b1", b"jpeg-b2"])]
    assert engine.deep_take(10, lease_s=60) == []  # leased
    assert engine.deep_done(jobs[0], [nsfw_signal("A", 0.1)])
    found = engine.entity_signals("default", "listing", "A", False)
    assert found is not None and any(s["name"] == "image.nsfw" for s in found["signals"])
    assert not engine.deep_done(jobs[0], [nsfw_signal("A", 0.9)])  # done once
    scored(engine, ex, "B", [b"jpeg-b3"], title="Item B, new photo")  # re-posted while being worked on
    assert not engine.deep_done(jobs[1], [nsfw_signal("B", 0.9)])  # the old content's result is dropped
    found = engine.entity_signals("default", "listing", "B", False)
    assert found is not None and not any(s["name"] == "image.nsfw" for s in found["signals"])
    assert [j.images for j in engine.deep_take(10, 60)] == [[b"jpeg-b3"]]
    engine.delete("default", "listing", "B")  # taken down: its deep work goes too
    assert engine.deep_backlog() == (0, 0)
    engine.close()


def test_a_repost_whose_photos_will_not_be_read_withdraws_the_old_deep_values(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    cfg, ex, engine = setup
    scored(engine, ex, "A", [b"jpeg-a"])
    job = engine.deep_take(1, 60)[0]
    assert engine.deep_done(job, [nsfw_signal("A", 0.97)])
    names = {s["name"] for s in engine.entity_signals("default", "listing", "A", False)["signals"]}  # type: ignore[index]
    assert "image.nsfw" in names
    scored(engine, ex, "A", [], title="Item A, photos removed")  # re-posted without a readable photo
    found = engine.entity_signals("default", "listing", "A", True)
    assert found is not None and not any(s["name"] == "image.nsfw" for s in found["signals"])
    assert any(h["name"] == "image.nsfw" for h in found["history"])  # the history keeps it
    assert any(s["name"] == "near_duplicate.count" for s in found["signals"])  # the rest stays
    engine.close()


def test_deep_work_queued_before_a_crash_is_done_after_the_restart(
        setup: tuple[MarketGuardConfig, FastExtraction, CatalogueEngine]) -> None:
    cfg, ex, engine = setup
    scored(engine, ex, "A", [b"jpeg-a"])
    assert len(engine.deep_take(10, lease_s=3600)) == 1  # a worker took it, then everything died
    engine.close()
    engine = open_engine(cfg, *ex.models())  # start-up ends the dead workers' leases
    jobs = engine.deep_take(10, lease_s=60)
    assert [j.item_id for j in jobs] == ["A"] and engine.deep_done(jobs[0], [nsfw_signal("A", 0.2)])
    engine.close()


def test_ocr_and_nsfw_run_on_the_jobs_images(data_dir: Path) -> None:
    cfg = MarketGuardConfig.model_validate({"data_dir": str(data_dir)})
    registry = build_registry(cfg.signals, data_dir)
    assert pending_names(registry) == PENDING
    work = DeepWork(registry.extractors)
    from serving.store.base import DeepJob

    rec = listing("A", "s1").model_dump_json(exclude={"images"})
    phone = base64.b64decode(text_photo_b64("Call +44 7700 900123"))
    shapes = base64.b64decode(photo_b64(5))
    jobs = [DeepJob("default", "listing", "A", rec, [phone]),
            DeepJob("default", "listing", "B", rec.replace('"A"', '"B"'), [shapes, b"junk"])]
    out = work.run(jobs)
    ocr = next(s for s in out[0] if s.name == "content.offplatform_contact")
    assert ocr.source.startswith("image_ocr@") and ocr.value == 1
    assert any(m["normalized"] == "+447700900123" for m in ocr.evidence["matches"])
    nsfw = next(s for s in out[1] if s.name == "image.nsfw")
    assert nsfw.entity_id == "B" and float(nsfw.value) < 0.5  # shapes, not skin; the junk image is named


class FakeShard:
    """A catalogue shard's deep queue with a request-activity clock the test moves."""

    def __init__(self, jobs: list[DeepJob]) -> None:
        self.jobs = list(jobs)
        self.quiet = 10.0
        self.stored: list[str] = []

    def take(self, limit: int, lease_s: float) -> list[DeepJob]:
        taken, self.jobs = self.jobs[:limit], self.jobs[limit:]
        return taken

    def done(self, results: list[tuple[DeepJob, list[Signal]]]) -> int:
        self.stored += [job.item_id for job, _ in results]
        return len(results)

    def quiet_for(self) -> float:
        return self.quiet


class CountingWork:
    """Stands in for OCR / NSFW: records what ran, and what the shards' activity was when it did."""

    def __init__(self, shard: FakeShard, busy_after: int | None = None) -> None:
        self.shard, self.busy_after = shard, busy_after
        self.ran: list[tuple[str, float]] = []

    def run(self, jobs: list[DeepJob]) -> list[list[Signal]]:
        for job in jobs:
            self.ran.append((job.item_id, self.shard.quiet))
        if self.busy_after is not None and len(self.ran) == self.busy_after:
            self.shard.quiet = 0.0  # a request came in while this job ran
        return [[nsfw_signal(job.item_id, 0.1)] for job in jobs]


def deep_job(lid: str) -> DeepJob:
    return DeepJob("default", "listing", lid, "{}", [b"x"], enqueued_at=1.0)


def test_the_deep_worker_runs_only_in_quiet_moments_and_one_job_at_a_time() -> None:
    """Before each job the worker waits until no shard has had a request for yield_s: a request that
    comes in overlaps at most the job already running, and the rest wait for the next quiet moment."""
    import threading

    from serving.scoring.deep import DeepWorker

    shard = FakeShard([deep_job(f"L{k}") for k in range(4)])
    work = CountingWork(shard, busy_after=2)
    stop = threading.Event()
    worker = DeepWorker(work, [shard], batch=4, lease_s=60, poll_s=0.01, yield_s=0.05,  # type: ignore[arg-type]
                        stop=stop)
    runner = threading.Thread(target=worker.round)
    runner.start()
    deadline = time.monotonic() + 5
    while len(work.ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert [lid for lid, _ in work.ran] == ["L0", "L1"]  # busy since L1 ran: L2 waits
    assert worker.yielded > 0
    shard.quiet = 10.0  # the requests stopped
    runner.join(5)
    assert [lid for lid, _ in work.ran] == ["L0", "L1", "L2", "L3"]
    assert all(quiet >= 0.05 for _, quiet in work.ran)  # no job started while a request was recent
    assert shard.stored == ["L0", "L1", "L2", "L3"] and worker.done == 4


def test_without_yielding_the_deep_worker_never_waits() -> None:
    from serving.scoring.deep import DeepWorker

    shard = FakeShard([deep_job("L0"), deep_job("L1")])
    shard.quiet = 0.0  # busy all along
    work = CountingWork(shard)
    worker = DeepWorker(work, [shard], batch=4, lease_s=60, poll_s=0.01, yield_s=0.0)  # type: ignore[arg-type]
    assert worker.round() == 2 and worker.yielded == 0


def test_request_activity_counts_in_flight_and_quiet_time() -> None:
    from serving.deployments.catalogue import RequestActivity

    now = [100.0]
    activity = RequestActivity(clock=lambda: now[0])
    assert activity.quiet_for() == float("inf")  # never served
    with activity.serving():
        now[0] = 101.0
        assert activity.quiet_for() == 0.0
        with pytest.raises(RuntimeError), activity.serving():
            raise RuntimeError("a failed request ends too")
        assert activity.quiet_for() == 0.0
    now[0] = 101.5
    assert activity.quiet_for() == pytest.approx(0.5)
