"""The outbox: events queued with their signals in one transaction, delivered at least once in order,
retried with the same delivery, dead-lettered only when old, replayed, and kept across a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from serving.config import SinksConfig, WebhookSinkConfig
from serving.sinks.events import webhook_sink_name
from serving.sinks.publisher import Publisher, backoff_s
from serving.sinks.webhook import WebhookSink, verify_signature
from serving.store.base import WriteBatch
from serving.store.sql import SqlSignalStore
from serving.store.sqlite import SqliteSignalStore
from signals.schemas import Signal
from tests.serving.servers import Receiver

ROOT = Path(__file__).resolve().parents[3]


def sig(entity: str, name: str = "near_duplicate.count", value: float = 1, source: str = "index@1") -> Signal:
    return Signal(entity_type="listing", entity_id=entity, name=name, value=value, source=source)


class FlakySink:
    """Fails its first ``fail`` deliveries; records every attempt."""

    def __init__(self, name: str, fail: int = 0) -> None:
        self.name, self.fail = name, fail
        self.attempts: list[tuple[str, list[str]]] = []
        self.events: list[dict[str, Any]] = []

    def deliver(self, delivery_id: str, events: list[dict[str, Any]]) -> None:
        self.attempts.append((delivery_id, [e["event_id"] for e in events]))
        if self.fail:
            self.fail -= 1
            raise ConnectionError("down")
        self.events += events

    def close(self) -> None:
        pass


def test_events_are_queued_with_their_signals_for_each_sink(tmp_path: Path,
                                                           open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store(sinks=["a", "b"])
    store.write(WriteBatch("default", "listing", signals=[sig("L1"), sig("L1", "near_duplicate.cluster_size"),
                                                          sig("L2")]))
    store.write(WriteBatch("default", "listing", signals=[sig("L1", value=2)], retract=[("listing", "L2")]))
    for sink in ("a", "b"):
        delivery, rows = store.outbox_next(sink, 100)
        events = [json.loads(body) for _, body in rows]
        assert [(e["entity_id"], e["type"]) for e in events] == [
            ("L1", "signal"), ("L1", "signal"), ("L2", "signal"), ("L2", "retract"), ("L1", "signal")]
        seqs = {eid: [e["seq"] for e in events if e["entity_id"] == eid] for eid in ("L1", "L2")}
        assert all(a < b for s in seqs.values() for a, b in zip(s, s[1:], strict=False))  # per entity
        assert seqs["L1"][0] >= int(time.time() * 1e6) - 60e6  # at least the commit time in microseconds
        assert len({e["event_id"] for e in events}) == 5 and delivery
        assert events[-1]["signal"]["value"] == 2 and events[0]["schema"] == "marketguard.event/v1"
    a_ids = [json.loads(b)["event_id"] for _, b in store.outbox_next("a", 100)[1]]
    b_ids = [json.loads(b)["event_id"] for _, b in store.outbox_next("b", 100)[1]]
    assert a_ids == b_ids  # one event, the same id at every sink
    store.close()
    plain = SqliteSignalStore(tmp_path / "p.sqlite3")  # no sinks: nothing queued
    plain.write(WriteBatch("default", "listing", signals=[sig("L1")]))
    assert plain.outbox_next("a", 10) == ("", [])
    assert plain._db.execute("SELECT COUNT(*) FROM entity_seq").fetchone()[0] == 0  # no bookkeeping either
    plain.close()


def test_a_batch_runs_events_never_outrank_newer_service_values(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    service = SqliteSignalStore(tmp_path / "svc.sqlite3", sinks=["s"])
    service.write(WriteBatch("default", "listing", signals=[sig("L1", value=5)]))  # now
    run = SqliteSignalStore(tmp_path / "run.sqlite3", sinks=["s"])
    old = Signal(entity_type="listing", entity_id="L1", name="near_duplicate.count", value=1,
                 source="index@1", observed_at=datetime.now(UTC) - timedelta(days=2))
    run.queue_signals([old.to_json_dict()])  # published afterwards, observed before
    seq_service = json.loads(service.outbox_next("s", 10)[1][0][1])["seq"]
    seq_run = json.loads(run.outbox_next("s", 10)[1][0][1])["seq"]
    assert seq_run < seq_service
    service.close()
    run.close()


def test_a_failed_delivery_is_retried_whole_with_the_same_id(
        open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store(sinks=["flaky"])
    store.write(WriteBatch("default", "listing", signals=[sig(f"L{i}") for i in range(5)]))
    sink = FlakySink("flaky", fail=2)
    pub = Publisher(store, [sink], SinksConfig(batch_size=3))
    for _ in range(2):
        with pytest.raises(ConnectionError):
            pub.deliver_once(sink)
    store.write(WriteBatch("default", "listing", signals=[sig("L9")]))  # arrives during the outage
    assert pub.deliver_once(sink) == 3
    assert pub.deliver_once(sink) == 3 and pub.deliver_once(sink) == 0
    (d1, ids1), (d2, ids2), (d3, ids3), (d4, _) = sink.attempts
    assert d1 == d2 == d3 and ids1 == ids2 == ids3 and d4 != d1  # the same delivery until it is taken
    assert [e["entity_id"] for e in sink.events] == ["L0", "L1", "L2", "L3", "L4", "L9"]  # in order
    assert store.outbox_stats()["flaky"]["queued"] == 0
    store.close()


def test_only_old_events_of_a_failing_sink_are_dead_lettered_and_replay_requeues_them(
        open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store(sinks=["down", "up"])
    store.write(WriteBatch("default", "listing", signals=[sig("L1"), sig("L2")]))
    now = [time.time()]
    config = SinksConfig(dead_letter_after_s=3600, max_backoff_s=0.05, poll_interval_s=0.01)
    down, up = FlakySink("down", fail=10**9), FlakySink("up")
    pub = Publisher(store, [down, up], config, clock=lambda: now[0])
    pub.start()
    deadline = time.monotonic() + 10
    while len(up.events) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(up.events) == 2  # one sink down never holds up the other
    time.sleep(0.2)
    stats = pub.stats()
    assert stats["down"]["queued"] == 2 and stats["down"]["dead_letters"] == 0  # an hour-long outage: kept
    assert stats["down"]["failures_total"] >= 2
    now[0] += 7200  # two hours later the events are older than an hour
    deadline = time.monotonic() + 10
    while pub.stats()["down"]["dead_letters"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    pub.stop()
    stats = pub.stats()
    assert stats["down"]["dead_letters"] == 2 and stats["down"]["queued"] == 0
    assert stats["up"]["dead_letters"] == 0
    assert store.replay_dead_letters("down") == 2
    delivery, rows = store.outbox_next("down", 10)
    replayed = [json.loads(b) for _, b in rows]
    assert [(e["event_id"], e["seq"]) for e in replayed] == [(e["event_id"], e["seq"]) for e in up.events]
    store.close()


def test_a_commit_wakes_an_idle_publisher(tmp_path: Path) -> None:
    store = SqliteSignalStore(tmp_path / "s.sqlite3", sinks=["s"])
    sink = FlakySink("s")
    pub = Publisher(store, [sink], SinksConfig(poll_interval_s=60))  # polling alone would take a minute
    pub.start()
    time.sleep(0.2)  # the thread found nothing and waits
    store.write(WriteBatch("default", "listing", signals=[sig("L1")]))
    deadline = time.monotonic() + 5
    while not sink.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e["entity_id"] for e in sink.events] == ["L1"]
    pub.stop()
    store.close()


def test_a_store_outage_is_not_a_sink_failure(tmp_path: Path) -> None:
    """While the store's database is down (a PostgreSQL restart), the publisher waits and looks again:
    the sink's failure count and dead-letter clock do not move, and delivery resumes after."""
    from serving.store.base import StoreUnavailable

    store = SqliteSignalStore(tmp_path / "s.sqlite3", sinks=["s"])
    store.write(WriteBatch("default", "listing", signals=[sig("L1")]))
    real_next = store.outbox_next
    down = [3]

    def outbox_next(sink: str, limit: int) -> Any:
        if down[0]:
            down[0] -= 1
            raise StoreUnavailable("PostgreSQL unreachable")
        return real_next(sink, limit)

    store.outbox_next = outbox_next  # type: ignore[method-assign]
    sink = FlakySink("s")
    pub = Publisher(store, [sink], SinksConfig(poll_interval_s=0.05, max_backoff_s=0.05))
    pub.start()
    deadline = time.monotonic() + 10
    while not sink.events and time.monotonic() < deadline:
        time.sleep(0.01)
    pub.stop()
    assert [e["entity_id"] for e in sink.events] == ["L1"]
    assert down[0] == 0 and pub.failures["s"] == 0 and pub.dead_lettered["s"] == 0
    store.close()


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    assert backoff_s(1, 30, lambda: 1.0) == pytest.approx(0.2)
    assert backoff_s(5, 30, lambda: 1.0) == pytest.approx(3.2)
    assert backoff_s(50, 30, lambda: 1.0) == 30 and backoff_s(50, 30, lambda: 0.0) == 15


WRITER = r'''
import sys, time
from pathlib import Path
from serving.store.base import WriteBatch
from serving.store.sql import SqlSignalStore
from serving.store.sqlite import SqliteSignalStore
from signals.schemas import Signal

store = SqliteSignalStore(Path(sys.argv[1]), sinks=[sys.argv[2]])
i = 0
while True:  # until SIGKILLed; each committed write is acknowledged on stdout
    store.write(WriteBatch("default", "listing", signals=[
        Signal(entity_type="listing", entity_id=f"L{i}", name="near_duplicate.count", value=i,
               source="t@1")]))
    print(f"L{i}", flush=True)
    i += 1
    time.sleep(0.002)
'''


def test_events_queued_before_a_sigkill_are_all_delivered_after_the_restart(
        tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "s.sqlite3"
    hook = WebhookSinkConfig(url=receiver.url, secrets=["k1"])
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(path), webhook_sink_name(receiver.url)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    acked = [proc.stdout.readline().strip() for _ in range(60)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)
    store = SqliteSignalStore(path, sinks=[webhook_sink_name(receiver.url)])
    pub = Publisher(store, [WebhookSink(hook)], SinksConfig(batch_size=25))
    pub.start()
    deadline = time.monotonic() + 20
    while store.outbox_stats()[webhook_sink_name(receiver.url)]["queued"] and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.stop()
    got = {e["entity_id"] for e in receiver.events()}
    assert set(acked) <= got  # every acknowledged write's event arrived
    assert all(verify_signature(body, headers["MarketGuard-Signature"], ["k1"])
               for headers, body in receiver.got)
    store.close()
