"""The sinks against real servers: Redis (stream + latest-value hashes, an outage that loses nothing)
and signed webhooks (signatures through a key rotation, idempotent retries, no redirects)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from serving.config import RedisSinkConfig, SinksConfig, WebhookSinkConfig
from serving.sinks.events import retract_event, signal_event, webhook_sink_name
from serving.sinks.publisher import Publisher
from serving.sinks.redis_sink import RedisSink, entity_key, stream_key
from serving.sinks.webhook import SIGNATURE_HEADER, WebhookError, WebhookSink, sign, verify_signature
from serving.store.base import WriteBatch
from serving.store.sqlite import SqliteSignalStore
from signals.schemas import Signal
from tests.serving.servers import Receiver, RedisServer


def wire(entity: str, name: str, value: float, source: str = "index@1") -> dict[str, Any]:
    s = Signal(entity_type="listing", entity_id=entity, name=name, value=value, source=source)
    return s.to_json_dict()


def test_redis_keeps_every_event_and_the_newest_value_of_each_signal(redis_server: RedisServer) -> None:
    sink = RedisSink(RedisSinkConfig(url=redis_server.url, stream_maxlen=1000))
    newer = signal_event(wire("L1", "near_duplicate.count", 3), seq=5)
    older = signal_event(wire("L1", "near_duplicate.count", 1), seq=2)  # a replayed dead letter, say
    other_source = signal_event(wire("L1", "near_duplicate.count", 7, source="shadow@2"), seq=3)
    sink.deliver("d1", [newer, older, other_source])
    r = redis_server.client()
    h = r.hgetall(entity_key("marketguard", "default", "listing", "L1"))
    assert json.loads(h["near_duplicate.count@index@1"])["value"] == 3  # the older never overwrites it
    assert h["near_duplicate.count@index@1#seq"] == "5"
    assert json.loads(h["near_duplicate.count@shadow@2"])["value"] == 7  # two sources of one name coexist
    entries = r.xrange(stream_key("marketguard", "default"))
    assert [json.loads(f["event"])["event_id"] for _, f in entries] == [
        newer["event_id"], older["event_id"], other_source["event_id"]]
    sink.deliver("d2", [retract_event("default", "listing", "L1", 4, "2026-11-30T00:00:00Z")])
    h = r.hgetall(entity_key("marketguard", "default", "listing", "L1"))
    assert "near_duplicate.count@shadow@2" not in h  # seq 3 < 4: withdrawn
    assert json.loads(h["near_duplicate.count@index@1"])["value"] == 3  # seq 5 > 4: newer than the retract
    nsfw = signal_event(wire("L1", "image.nsfw", 0.9, source="image_nsfw@1"), seq=6)
    sink.deliver("d4", [nsfw, retract_event("default", "listing", "L1", 7, "2026-11-30T00:00:00Z",
                                            sources=["image_nsfw"])])
    h = r.hgetall(entity_key("marketguard", "default", "listing", "L1"))
    assert "image.nsfw@image_nsfw@1" not in h  # only that extractor's values went
    assert json.loads(h["near_duplicate.count@index@1"])["value"] == 3
    sink.deliver("d3", [signal_event(wire("L1", "price.anomaly", 0.5), seq=4)])  # not newer than the retract
    assert "price.anomaly@index@1" not in r.hgetall(entity_key("marketguard", "default", "listing", "L1"))
    sink.close()


def test_a_redis_outage_loses_and_dead_letters_nothing(tmp_path: Any, redis_server: RedisServer) -> None:
    store = SqliteSignalStore(tmp_path / "s.sqlite3", sinks=["redis"])
    config = SinksConfig(redis=RedisSinkConfig(url=redis_server.url, timeout_s=1), max_backoff_s=0.3,
                         poll_interval_s=0.01)
    pub = Publisher(store, [RedisSink(config.redis)], config)  # type: ignore[arg-type]  # set just above
    pub.start()

    def post(i: int) -> None:
        store.write(WriteBatch("default", "listing", signals=[
            Signal(entity_type="listing", entity_id=f"L{i}", name="near_duplicate.count", value=i,
                   source="index@1")]))

    def wait_for(cond: Any, what: str) -> None:
        deadline = time.monotonic() + 20
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    for i in range(5):
        post(i)
    wait_for(lambda: pub.stats()["redis"]["queued"] == 0, "delivered before the outage")
    redis_server.stop()
    for i in range(5, 12):
        post(i)
    wait_for(lambda: pub.stats()["redis"]["failures_total"] >= 2, "failing while Redis is down")
    assert pub.stats()["redis"]["queued"] == 7 and pub.stats()["redis"]["lag_s"] > 0
    redis_server.start()  # an empty Redis on the same port (no persistence): the rest must arrive
    wait_for(lambda: pub.stats()["redis"]["queued"] == 0, "delivered after the outage")
    pub.stop()
    r = redis_server.client()
    got = {json.loads(f["event"])["entity_id"] for _, f in r.xrange(stream_key("marketguard", "default"))}
    assert got == {f"L{i}" for i in range(5, 12)}
    assert pub.stats()["redis"]["dead_letters"] == 0
    store.close()


def test_signatures_verify_through_a_key_rotation_and_reject_tampering_and_staleness() -> None:
    body = b'{"events": []}'
    header = sign(body, ["old", "new"], 1_000_000)
    assert verify_signature(body, header, ["old"], now=1_000_010)  # a receiver not yet rotated
    assert verify_signature(body, header, ["new"], now=1_000_010)  # a receiver already rotated
    assert not verify_signature(body, header, ["other"], now=1_000_010)
    assert not verify_signature(body + b" ", header, ["new"], now=1_000_010)  # tampered
    assert not verify_signature(body, header, ["new"], now=1_000_000 + 301)  # stale: a replayed request
    assert not verify_signature(body, "v1=abc", ["new"], now=1_000_000)  # no timestamp


def test_a_webhook_delivery_is_signed_and_retried_with_the_same_idempotency_key(
        tmp_path: Any, receiver: Receiver) -> None:
    name = webhook_sink_name(receiver.url)
    store = SqliteSignalStore(tmp_path / "s.sqlite3", sinks=[name])
    store.write(WriteBatch("default", "listing", signals=[
        Signal(entity_type="listing", entity_id=f"L{i}", name="near_duplicate.count", value=i, source="i@1")
        for i in range(3)]))
    sink = WebhookSink(WebhookSinkConfig(url=receiver.url, secrets=["s1", "s2"]))
    pub = Publisher(store, [sink], SinksConfig())
    receiver.answers = [500, 302]  # a failure, then a redirect (never followed: a failure too)
    for _ in range(2):
        with pytest.raises(WebhookError):
            pub.deliver_once(sink)
    assert pub.deliver_once(sink) == 3
    keys = [h["Idempotency-Key"] for h, _ in receiver.got]
    assert len(receiver.got) == 3 and len(set(keys)) == 1  # the same delivery, retried
    for headers, body in receiver.got:
        assert verify_signature(body, headers[SIGNATURE_HEADER], ["s2"])
        payload = json.loads(body)
        assert payload["event_ids"] == [e["event_id"] for e in payload["events"]]
        assert payload["delivery_id"] == headers["Idempotency-Key"]
    assert [e["entity_id"] for e in receiver.events()[-3:]] == ["L0", "L1", "L2"]
    pub.stop()
    store.close()
