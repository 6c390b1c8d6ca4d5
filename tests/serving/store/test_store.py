"""The store, on SQLite and on PostgreSQL: idempotent latest, full history, atomic writes,
tombstones, labels, no pickle."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from serving.store.base import Edge, StoredItem, WriteBatch, decode_features
from serving.store.sql import SqlSignalStore
from signals.errors import InvalidInput
from signals.schemas import Label, Signal


def sig(value: int, eid: str = "L1") -> Signal:
    return Signal(entity_type="listing", entity_id=eid, name="near_duplicate.count", value=value,
                  source="listing_near_duplicate@1")


def item(iid: str) -> StoredItem:
    return StoredItem("default", "listing", iid, "s1", "audio", 10.0, "GBP", "{}",
                      {"text": np.ones(4, dtype=np.float32)})


def test_latest_wins_history_keeps_every_value(open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store()
    store.write(WriteBatch("default", "listing", upsert=[item("L1")], signals=[sig(0)]))
    store.write(WriteBatch("default", "listing", signals=[sig(2)]))
    assert [s["value"] for s in store.latest("default", "listing", "L1")] == [2]
    assert [s["value"] for s in store.history("default", "listing", "L1", 10)] == [0, 2]
    store.close()


def test_a_failed_write_leaves_nothing(open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store()
    bad = WriteBatch("default", "listing", upsert=[item("L1")], signals=[sig(1)],
                     facts={"L1": {"x": object()}})  # not JSON: fails inside the transaction
    with pytest.raises(TypeError):
        store.write(bad)
    assert store.get_item("default", "listing", "L1") is None
    assert store.latest("default", "listing", "L1") == []
    store.close()


def test_edges_both_ways_deletes_tombstone_and_reposts_keep_their_place(
        open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store()
    store.write(WriteBatch("default", "listing", upsert=[item("A")]))
    store.write(WriteBatch("default", "listing", upsert=[item("B")],
                           edges={"B": [Edge("B", "A", "listing_text", .9)]}))
    assert [e.b for e in store.edges_of("default", "listing", ["A"])["A"]] == ["B"]
    seq = store.get_item("default", "listing", "A").seq  # type: ignore[union-attr]
    store.write(WriteBatch("default", "listing", upsert=[item("A")]))
    assert store.get_item("default", "listing", "A").seq == seq  # type: ignore[union-attr]
    store.write(WriteBatch("default", "listing", delete=["A"], retract=[("listing", "A")]))
    assert store.edges_of("default", "listing", ["B"])["B"] == []
    assert store.tombstone("default", "listing", "A") is not None
    store.close()
    reopened = open_store()  # durable across a restart
    assert reopened.get_item("default", "listing", "B") is not None
    reopened.close()


def test_labels_keep_history(open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store()
    for lab in ("fraud", "legit"):
        store.add_label(Label(entity_type="seller", entity_id="S", label=lab))
    assert [x["label"] for x in store.labels("default", "seller", "S")] == ["fraud", "legit"]
    store.close()


def test_labels_in_one_transaction_with_money_and_every_signal_for_the_report(
        open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store()
    ids = store.add_labels([Label(entity_type="listing", entity_id="L1", label="legit"),
                            Label(entity_type="listing", entity_id="L1", label="fraud", loss_amount=250.0,
                                  currency="GBP")])
    assert ids == sorted(ids) and len(ids) == 2
    got = list(store.all_labels(page=1))  # paged
    assert [(x["entity_id"], x["label"], x["loss_amount"]) for x in got] == [("L1", "legit", None),
                                                                             ("L1", "fraud", 250.0)]
    assert all(x["received_at"] for x in got)
    import sqlite3

    import psycopg

    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):  # all or nothing
        store.add_labels([Label(entity_type="listing", entity_id="L2", label="fraud"),
                          Label.model_construct(entity_type="listing", entity_id="L3", label="fraud",
                                                tenant=None)])  # type: ignore[arg-type]
    assert len(list(store.all_labels())) == 2
    store.write(WriteBatch("default", "listing", upsert=[item("L1")], signals=[sig(0)]))
    store.write(WriteBatch("default", "listing", signals=[sig(3)]))
    assert [s["value"] for s in store.iter_signals()] == [3]
    assert [s["value"] for s in store.iter_signals(history=True, page=1)] == [0, 3]
    store.close()


def test_a_store_made_before_label_money_is_migrated(tmp_path: Any) -> None:
    import sqlite3

    from serving.report.inputs import label_record
    from serving.store.sql import migrate
    from serving.store.sqlite import MIGRATIONS, SqliteSignalStore

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, MIGRATIONS[:2], "BEGIN") == 2  # as the previous release left it
    db.execute("INSERT INTO labels (tenant, entity_type, entity_id, label, record, received_at) VALUES "
               "('default', 'listing', 'L1', 'fraud', ?, '2026-11-01T00:00:00+00:00')",
               ('{"entity_type": "listing", "entity_id": "L1", "label": "fraud", "tenant": "default"}',))
    db.close()
    store = SqliteSignalStore(path)
    old, = store.all_labels()
    rec = label_record(old, old["id"], old["received_at"])
    assert (rec.label, rec.loss_amount) == ("fraud", None)
    store.add_label(Label(entity_type="listing", entity_id="L1", label="legit", loss_amount=3,
                          currency="EUR"))
    assert [x.get("loss_amount") for x in store.all_labels()] == [None, 3]
    store.close()


def test_features_never_unpickle() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput):
        decode_features(buf.getvalue())


def test_one_writer_a_postgres_schema(postgres: Any) -> None:
    from serving.store.postgres import PostgresSignalStore
    from tests.serving.servers import pg_schema

    schema = pg_schema()
    first = PostgresSignalStore(postgres.url, schema)
    with pytest.raises(RuntimeError, match="another writer"):
        PostgresSignalStore(postgres.url, schema, lock_wait_s=0.5)  # a second replica of the shard
    tool = PostgresSignalStore(postgres.url, schema, exclusive=False)  # sinks replay, beside it
    tool.close()
    first.close()
    PostgresSignalStore(postgres.url, schema, lock_wait_s=5).close()  # the first one gone: free


def test_postgres_restart_the_store_reconnects_and_keeps_its_writer_lock() -> None:
    """A PostgreSQL restart (or failover) mid-service: writes while it is down raise
    StoreUnavailable (the API's 503, nothing acknowledged), the first write after it is back
    succeeds on a new connection that holds the schema's writer lock again, and what was
    committed before is all there."""
    from serving.store.base import StoreUnavailable
    from serving.store.postgres import PostgresSignalStore, WriterFenced
    from tests.serving.servers import PostgresServer, pg_schema

    server = PostgresServer()  # its own server: restarting the session's would cut other tests off
    server.start()
    try:
        schema = pg_schema()
        store = PostgresSignalStore(server.url, schema, sinks=["redis"])
        store.write(WriteBatch("default", "listing", upsert=[item("L1")], signals=[sig(1)]))
        server.stop()  # immediate: every session is cut, as in a crash
        with pytest.raises(StoreUnavailable):
            store.write(WriteBatch("default", "listing", upsert=[item("L2")], signals=[sig(2, "L2")]))
        with pytest.raises(StoreUnavailable):
            store.latest("default", "listing", "L1")
        server.start()
        store.write(WriteBatch("default", "listing", upsert=[item("L2")], signals=[sig(2, "L2")]))
        assert [s["value"] for s in store.latest("default", "listing", "L1")] == [1]
        assert [s["value"] for s in store.latest("default", "listing", "L2")] == [2]
        assert store.outbox_stats()["redis"]["queued"] == 2
        with pytest.raises(WriterFenced):  # the reconnected writer took its lock back
            PostgresSignalStore(server.url, schema, lock_wait_s=0.5)
        store.close()
    finally:
        server.remove()


def test_postgres_a_connection_lost_mid_transaction_is_not_retried(postgres: Any) -> None:
    """Cut inside a write: the server rolls it back and the store says so (never re-sends half a
    transaction on a new connection); the next write goes through."""
    import psycopg

    from serving.store.base import StoreUnavailable
    from serving.store.postgres import PostgresSignalStore
    from tests.serving.servers import pg_schema

    store = PostgresSignalStore(postgres.url, pg_schema())
    writer: Any = store._db  # noqa: SLF001 - the test cuts the writer's own session

    def cut() -> None:
        with psycopg.connect(postgres.url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (writer.conn.info.backend_pid,))

    batch = WriteBatch("default", "listing", upsert=[item("L1")], signals=[sig(1)])
    original = writer.execute

    def execute(sql: str, args: Any = ()) -> Any:
        if writer.in_tx:  # the first statement after BEGIN: the session is gone under it
            cut()
        return original(sql, args)

    writer.execute = execute
    with pytest.raises(StoreUnavailable):
        store.write(batch)
    writer.execute = original
    assert store.latest("default", "listing", "L1") == []
    store.write(batch)
    assert [s["value"] for s in store.latest("default", "listing", "L1")] == [1]
    store.close()


def test_a_groups_last_items_come_back_in_stored_order(open_store: Callable[..., SqlSignalStore]) -> None:
    store = open_store()
    for k in range(6):
        store.write(WriteBatch("default", "listing", upsert=[item(f"L{k}")]))
    every = store.items_of_group("default", "listing", "audio")
    assert [it.item_id for it in every] == [f"L{k}" for k in range(6)]
    # the records alone, the same items in the same order; with a limit, the last ones
    records = [(it.item_id, it.record) for it in every]
    assert store.group_records("default", "listing", "audio") == records
    assert store.group_records("default", "listing", "audio", 2) == records[4:]
    assert store.group_records("default", "listing", "audio", 0) == []
    assert len(store.group_records("default", "listing", "audio", 99)) == 6
    with pytest.raises(ValueError, match="limit"):
        store.group_records("default", "listing", "audio", limit=-1)
    store.close()
