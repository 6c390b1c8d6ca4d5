"""The embedded signal store: one SQLite file in WAL mode (``<data_dir>/store.sqlite3``).

One writer (the catalogue deployment) and any number of readers. Every
:meth:`SqliteSignalStore.write` is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``)
with ``synchronous=FULL``: when it returns, a power cut cannot lose it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.sinks.events import retract_event, signal_event
from serving.store.base import Edge, ItemKind, StoredItem, WriteBatch, decode_features, encode_features
from signals.schemas import EntityType, Label

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, item_id TEXT NOT NULL,
    owner TEXT NOT NULL, grp TEXT, price REAL, currency TEXT,
    record TEXT NOT NULL, features BLOB, facts TEXT NOT NULL DEFAULT '{}',
    seq INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, kind, item_id));
CREATE INDEX IF NOT EXISTS items_owner ON items (tenant, kind, owner);
CREATE INDEX IF NOT EXISTS items_group ON items (tenant, kind, grp, currency);
CREATE INDEX IF NOT EXISTS items_updated ON items (updated_at);
CREATE TABLE IF NOT EXISTS edges (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL,
    modality TEXT NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (tenant, kind, a, b, modality));
CREATE TABLE IF NOT EXISTS latest (
    tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL,
    name TEXT NOT NULL, source TEXT NOT NULL, signal TEXT NOT NULL, observed_at TEXT NOT NULL,
    PRIMARY KEY (tenant, entity_type, entity_id, name, source));
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL,
    name TEXT NOT NULL, source TEXT NOT NULL, signal TEXT NOT NULL, observed_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_entity ON history (tenant, entity_type, entity_id, id);
CREATE TABLE IF NOT EXISTS tombstones (
    tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, deleted_at TEXT NOT NULL,
    PRIMARY KEY (tenant, entity_type, entity_id));
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, label TEXT NOT NULL,
    record TEXT NOT NULL, received_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS labels_entity ON labels (tenant, entity_type, entity_id, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entity_seq (
    tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, entity_type, entity_id));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, event TEXT NOT NULL,
    created_at REAL NOT NULL, delivery TEXT);
CREATE INDEX IF NOT EXISTS outbox_sink ON outbox (sink, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, event TEXT NOT NULL,
    created_at REAL NOT NULL, dead_at REAL NOT NULL, reason TEXT NOT NULL);
"""


def _pending_key(tenant: str, kind: str, item_id: str) -> str:
    return f"index_pending\x1f{tenant}\x1f{kind}\x1f{item_id}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SqliteSignalStore:
    """The :class:`~serving.store.base.SignalStore` on SQLite (WAL, fsynced commits)."""

    def __init__(self, path: Path, sinks: Sequence[str] = (), shadow_sinks: Sequence[str] = ()) -> None:
        """``sinks``: the names of the configured sinks; every signal written is queued for each
        (a shadow signal only for those of ``shadow_sinks``)."""
        self.path = Path(path)
        self.sinks = list(sinks)
        self.shadow_sinks = [s for s in shadow_sinks if s in self.sinks]
        self._listeners: list[Callable[[], None]] = []
        self._queued = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The connection is used from the deployment's event-loop thread and its worker
        # threads, one at a time (the lock), so SQLite's same-thread check is off.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=OFF")
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()
        meta = self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        self._seq = max(int(row[0]), int(meta[0]) if meta else 0)
        # Reads have their own connection: in WAL mode they see the last commit and never
        # wait for a write transaction in progress (a GET is not held up by a POST).
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)

    # ------------------------------------------------------------------ writing
    def write(self, batch: WriteBatch) -> None:
        """Commit one request's changes atomically (all or nothing)."""
        t, k = batch.tenant, batch.kind
        now = _now()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for item_id in batch.delete:
                    self._drop_edges(t, k, item_id)
                    db.execute("DELETE FROM items WHERE tenant=? AND kind=? AND item_id=?", (t, k, item_id))
                    db.execute("INSERT OR REPLACE INTO tombstones VALUES (?,?,?,?)", (t, k, item_id, now))
                for it in batch.upsert:
                    old = db.execute("SELECT seq, created_at FROM items "
                                     "WHERE tenant=? AND kind=? AND item_id=?",
                                     (t, k, it.item_id)).fetchone()
                    if old is None:
                        self._seq += 1
                        seq, created = self._seq, now
                    else:
                        seq, created = int(old[0]), str(old[1])  # a re-post keeps its place
                    it.seq = seq
                    db.execute(
                        "INSERT OR REPLACE INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (t, k, it.item_id, it.owner, it.group, it.price, it.currency, it.record,
                         encode_features(it.features), json.dumps(it.facts, sort_keys=True), seq, created,
                         now))
                    db.execute("DELETE FROM tombstones WHERE tenant=? AND entity_type=? AND entity_id=?",
                               (t, k, it.item_id))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(self._seq),))
                for dt, dk, did in batch.index_done:
                    db.execute("DELETE FROM meta WHERE key=?", (_pending_key(dt, dk, did),))
                for item_id in batch.index_pending:
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               (_pending_key(t, k, item_id), now))
                for item_id, edges in batch.edges.items():
                    self._drop_edges(t, k, item_id)
                    for e in edges:
                        for a, b in ((e.a, e.b), (e.b, e.a)):
                            db.execute("INSERT OR REPLACE INTO edges VALUES (?,?,?,?,?,?)",
                                       (t, k, a, b, e.modality, float(e.score)))
                for item_id, facts in batch.facts.items():
                    db.execute("UPDATE items SET facts=? WHERE tenant=? AND kind=? AND item_id=?",
                               (json.dumps(facts, sort_keys=True), t, k, item_id))
                for etype, eid in batch.retract:
                    db.execute("DELETE FROM latest WHERE tenant=? AND entity_type=? AND entity_id=?",
                               (t, etype, eid))
                    self._enqueue(retract_event(t, etype, eid, self._next_seq(t, etype, eid), now))
                for s in batch.signals:
                    wire = s.to_json_dict()
                    body = json.dumps(wire, sort_keys=True, ensure_ascii=False)
                    row = (s.tenant, s.entity_type, s.entity_id, s.name, s.source, body, wire["observed_at"])
                    db.execute("INSERT OR REPLACE INTO latest VALUES (?,?,?,?,?,?,?)", row)
                    db.execute("INSERT INTO history (tenant, entity_type, entity_id, name, source, signal, "
                               "observed_at) VALUES (?,?,?,?,?,?,?)", row)
                    self._enqueue(signal_event(wire, self._next_seq(s.tenant, s.entity_type, s.entity_id)))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._queued = False
                raise
        if self._queued:
            self._queued = False
            for listener in self._listeners:
                listener()

    def _next_seq(self, tenant: str, entity_type: str, entity_id: str) -> int:
        """The entity's next event sequence number (inside the write transaction): strictly
        increasing per entity, and at least the commit time in microseconds, so events of one
        entity from different stores (a batch run's ``--publish``, then the service started from
        it) still order by time."""
        row = self._db.execute(
            "INSERT INTO entity_seq VALUES (?,?,?,?) ON CONFLICT (tenant, entity_type, entity_id) "
            "DO UPDATE SET seq = MAX(seq + 1, excluded.seq) RETURNING seq",
            (tenant, entity_type, entity_id, time.time_ns() // 1000)).fetchone()
        return int(row[0])

    def queue_signals(self, signals: Sequence[dict[str, Any]], meta: dict[str, str] | None = None) -> int:
        """Queue events for signals (their wire form) without storing them, with ``meta`` updated in
        the same transaction (a batch run's ``--publish`` keeps its place this way)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for wire in signals:
                    self._enqueue(signal_event(dict(wire), self._next_seq(
                        wire["tenant"], wire["entity_type"], wire["entity_id"])))
                for key, value in (meta or {}).items():
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._queued = False
                raise
        if self._queued:
            self._queued = False
            for listener in self._listeners:
                listener()
        return len(signals)

    def _enqueue(self, event: dict[str, Any]) -> None:
        """Queue an event for every sink (inside the write transaction: committed with the signal)."""
        targets = self.shadow_sinks if (event.get("signal") or {}).get("shadow") else self.sinks
        if not targets:
            return
        body = json.dumps(event, sort_keys=True, ensure_ascii=False)
        created = time.time()
        self._db.executemany("INSERT INTO outbox (sink, event, created_at) VALUES (?,?,?)",
                             [(sink, body, created) for sink in targets])
        self._queued = True

    def on_queued(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit that queued events (the publisher wakes on it)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------- outbox
    def outbox_next(self, sink: str, limit: int) -> tuple[str, list[tuple[int, str]]]:
        """The sink's next delivery: its id and its (row id, event JSON) rows, oldest first.

        A delivery keeps its id and its rows until acknowledged, across retries and restarts
        (the id is a webhook's ``Idempotency-Key``); a new one takes up to ``limit`` rows.
        """
        with self._lock:
            head = self._db.execute("SELECT delivery FROM outbox WHERE sink=? ORDER BY id LIMIT 1",
                                    (sink,)).fetchone()
            if head is None:
                return "", []
            if head[0] is not None:
                rows = self._db.execute("SELECT id, event FROM outbox WHERE sink=? AND delivery=? "
                                        "ORDER BY id", (sink, head[0])).fetchall()
                return str(head[0]), [(int(r[0]), str(r[1])) for r in rows]
            delivery = uuid.uuid4().hex
            rows = self._db.execute("SELECT id, event FROM outbox WHERE sink=? AND delivery IS NULL "
                                    "ORDER BY id LIMIT ?", (sink, limit)).fetchall()
            self._in_transaction(lambda db: db.executemany(
                "UPDATE outbox SET delivery=? WHERE id=?", [(delivery, r[0]) for r in rows]))
            return delivery, [(int(r[0]), str(r[1])) for r in rows]

    def outbox_ack(self, sink: str, ids: Sequence[int]) -> None:
        """Delivered: the rows leave the outbox (one transaction)."""
        with self._lock:
            self._in_transaction(lambda db: db.executemany(
                "DELETE FROM outbox WHERE sink=? AND id=?", [(sink, i) for i in ids]))

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``fn`` on the write connection in one transaction (one fsync, not one a statement)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            fn(self._db)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def outbox_dead_letter(self, sink: str, created_before: float, reason: str) -> int:
        """Move the sink's events queued before ``created_before`` (unix seconds) to the dead letters."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                cur = self._db.execute(
                    "INSERT INTO dead_letters (sink, event, created_at, dead_at, reason) "
                    "SELECT sink, event, created_at, ?, ? FROM outbox WHERE sink=? AND created_at < ? "
                    "ORDER BY id",
                    (now, reason, sink, created_before))
                moved = cur.rowcount
                self._db.execute("DELETE FROM outbox WHERE sink=? AND created_at < ?", (sink, created_before))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(moved)

    def replay_dead_letters(self, sink: str | None = None) -> int:
        """Queue dead letters again (same event ids and sequence numbers; consumers keep the newest)."""
        where, args = ("WHERE sink=?", (sink,)) if sink is not None else ("", ())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                cur = self._db.execute(f"INSERT INTO outbox (sink, event, created_at) "  # noqa: S608 - fixed text
                                       f"SELECT sink, event, ? FROM dead_letters {where} ORDER BY id",
                                       (now, *args))
                moved = cur.rowcount
                self._db.execute(f"DELETE FROM dead_letters {where}", args)  # noqa: S608 - fixed text
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(moved)

    def outbox_stats(self) -> dict[str, dict[str, float]]:
        """Per sink: events queued, the age in seconds of the oldest one, dead letters."""
        now = time.time()
        out: dict[str, dict[str, float]] = {
            s: {"queued": 0.0, "lag_s": 0.0, "dead_letters": 0.0} for s in self.sinks}
        queued = self._rows("SELECT sink, COUNT(*), MIN(created_at) FROM outbox GROUP BY sink", ())
        for sink, n, oldest in queued:
            out.setdefault(sink, {"queued": 0.0, "lag_s": 0.0, "dead_letters": 0.0})
            out[sink].update(queued=float(n), lag_s=max(0.0, now - float(oldest)))
        for sink, n in self._rows("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink", ()):
            out.setdefault(sink, {"queued": 0.0, "lag_s": 0.0, "dead_letters": 0.0})
            out[sink]["dead_letters"] = float(n)
        return out

    def add_edges(self, tenant: str, kind: ItemKind, edges: Sequence[Edge]) -> None:
        """Add edges (both directions) without touching the items' other edges: a backfill."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO edges VALUES (?,?,?,?,?,?)",
                    [(tenant, kind, a, b, e.modality, float(e.score))
                     for e in edges for a, b in ((e.a, e.b), (e.b, e.a))])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def pending_index(self) -> list[tuple[str, ItemKind, str]]:
        """Items marked by :attr:`WriteBatch.index_pending` and not cleared since."""
        rows = self._rows("SELECT key FROM meta WHERE key LIKE 'index_pending\x1f%'", ())
        out: list[tuple[str, ItemKind, str]] = []
        for (key,) in rows:
            _, tenant, kind, item_id = str(key).split("\x1f", 3)
            out.append((tenant, kind, item_id))  # type: ignore[arg-type]  # written from an ItemKind
        return out

    def clear_pending_index(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM meta WHERE key LIKE 'index_pending\x1f%'")

    def get_meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def set_features(self, tenant: str, kind: ItemKind, features: dict[str, dict[str, np.ndarray]]) -> None:
        """Replace stored items' features (``marketguard reindex`` after a model change), one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for item_id, feats in features.items():
                    self._db.execute("UPDATE items SET features=? WHERE tenant=? AND kind=? AND item_id=?",
                                     (encode_features(feats), tenant, kind, item_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _drop_edges(self, t: str, k: str, item_id: str) -> None:
        self._db.execute("DELETE FROM edges WHERE tenant=? AND kind=? AND (a=? OR b=?)",
                         (t, k, item_id, item_id))

    # ------------------------------------------------------------------ reading
    def _rows(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, tuple(args)).fetchall()

    _ITEM_COLS = ("tenant, kind, item_id, owner, grp, price, currency, record, {feat}, facts, seq, "
                  "created_at, updated_at")

    def _items(self, where: str, args: Sequence[Any], with_features: bool = True) -> list[StoredItem]:
        cols = self._ITEM_COLS.format(feat="features" if with_features else "NULL")
        return [self._item(r) for r in self._rows(f"SELECT {cols} FROM items WHERE {where}", args)]

    @staticmethod
    def _item(r: tuple[Any, ...]) -> StoredItem:
        return StoredItem(tenant=r[0], kind=r[1], item_id=r[2], owner=r[3], group=r[4], price=r[5],
                          currency=r[6], record=r[7], features=decode_features(r[8]), facts=json.loads(r[9]),
                          seq=int(r[10]), created_at=datetime.fromisoformat(r[11]),
                          updated_at=datetime.fromisoformat(r[12]))

    def get_item(self, tenant: str, kind: ItemKind, item_id: str) -> StoredItem | None:
        found = self._items("tenant=? AND kind=? AND item_id=?", (tenant, kind, item_id))
        return found[0] if found else None

    def get_items(self, tenant: str, kind: ItemKind, item_ids: Sequence[str],
                  with_features: bool = False) -> dict[str, StoredItem]:
        out: dict[str, StoredItem] = {}
        ids = list(dict.fromkeys(item_ids))
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            for it in self._items(f"tenant=? AND kind=? AND item_id IN ({marks})", (tenant, kind, *part),
                                  with_features):
                out[it.item_id] = it
        return out

    def edges_of(self, tenant: str, kind: ItemKind, item_ids: Sequence[str]) -> dict[str, list[Edge]]:
        out: dict[str, list[Edge]] = {i: [] for i in item_ids}
        ids = list(out)
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            for a, b, m, s in self._rows(
                    f"SELECT a, b, modality, score FROM edges WHERE tenant=? AND kind=? AND a IN ({marks}) "
                    "ORDER BY a, b, modality", (tenant, kind, *part)):
                out[a].append(Edge(a, b, m, float(s)))
        return out

    def items_of_owner(self, tenant: str, kind: ItemKind, owner: str) -> list[StoredItem]:
        return self._items("tenant=? AND kind=? AND owner=? ORDER BY seq", (tenant, kind, owner), False)

    def items_of_group(self, tenant: str, kind: ItemKind, group: str | None) -> list[StoredItem]:
        return self._items("tenant=? AND kind=? AND grp IS ? ORDER BY seq", (tenant, kind, group), False)

    def group_prices(self, tenant: str, group: str | None, currency: str, limit: int) -> list[float]:
        rows = self._rows("SELECT price FROM items WHERE tenant=? AND kind='listing' AND grp IS ? "
                          "AND currency=? AND price > 0 ORDER BY seq DESC LIMIT ?",
                          (tenant, group, currency, limit))
        return [float(r[0]) for r in rows]

    def iter_items(self, tenant: str | None = None, kind: ItemKind | None = None,
                   with_features: bool = True) -> Iterator[StoredItem]:
        where, args = ["1=1"], []
        if tenant is not None:
            where.append("tenant=?")
            args.append(tenant)
        if kind is not None:
            where.append("kind=?")
            args.append(kind)
        last = -1
        while True:  # pages by seq: memory stays one page whatever the store holds
            page = self._items(" AND ".join([*where, "seq > ?"]) + " ORDER BY seq LIMIT 1000",
                               (*args, last), with_features)
            if not page:
                return
            yield from page
            last = page[-1].seq

    def tenants(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT DISTINCT tenant FROM items ORDER BY tenant", ())]

    def expired(self, before: datetime, limit: int) -> list[tuple[str, ItemKind, str]]:
        rows = self._rows("SELECT tenant, kind, item_id FROM items WHERE updated_at < ? "
                          "ORDER BY updated_at LIMIT ?", (before.astimezone(UTC).isoformat(), limit))
        return [(r[0], r[1], r[2]) for r in rows]

    def latest(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT signal FROM latest WHERE tenant=? AND entity_type=? AND entity_id=? "
                          "ORDER BY name, source", (tenant, entity_type, entity_id))
        return [json.loads(r[0]) for r in rows]

    def history(self, tenant: str, entity_type: EntityType, entity_id: str,
                limit: int) -> list[dict[str, Any]]:
        rows = self._rows("SELECT signal FROM history WHERE tenant=? AND entity_type=? AND entity_id=? "
                          "ORDER BY id DESC LIMIT ?", (tenant, entity_type, entity_id, limit))
        return [json.loads(r[0]) for r in reversed(rows)]

    def tombstone(self, tenant: str, entity_type: EntityType, entity_id: str) -> datetime | None:
        rows = self._rows("SELECT deleted_at FROM tombstones "
                          "WHERE tenant=? AND entity_type=? AND entity_id=?",
                          (tenant, entity_type, entity_id))
        return datetime.fromisoformat(rows[0][0]) if rows else None

    def add_label(self, label: Label) -> int:
        body = label.model_dump_json()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO labels (tenant, entity_type, entity_id, label, record, received_at) "
                "VALUES (?,?,?,?,?,?)",
                (label.tenant, label.entity_type, label.entity_id, label.label, body, _now()))
            return int(cur.lastrowid or 0)

    def labels(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT id, record, received_at FROM labels WHERE tenant=? AND entity_type=? "
                          "AND entity_id=? ORDER BY id", (tenant, entity_type, entity_id))
        return [{"id": r[0], **json.loads(r[1]), "received_at": r[2]} for r in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """Live items per (tenant, kind)."""
        rows = self._rows("SELECT tenant, kind, COUNT(*) FROM items GROUP BY tenant, kind", ())
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

