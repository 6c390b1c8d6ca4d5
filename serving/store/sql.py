"""The signal store on SQL: one implementation for SQLite and PostgreSQL.

Everything the store does is written once here in SQL both databases run (``?`` placeholders,
``INSERT ... ON CONFLICT ... DO UPDATE``, ``RETURNING``); a backend
(:mod:`serving.store.sqlite`, :mod:`serving.store.postgres`) supplies its connections, how a write
transaction begins, the few words that differ and its versioned migrations.

One writer (the catalogue shard) and any number of readers: writes go through one connection
under a lock, each :meth:`write` one transaction; reads have a connection of their own, so a GET
never waits for a write in progress.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import numpy as np

from serving.sinks.events import retract_event, signal_event
from serving.store.base import (
    DeepJob,
    Edge,
    ItemKind,
    StoredItem,
    WriteBatch,
    decode_features,
    encode_features,
)
from signals.schemas import EntityType, Label

PENDING_PREFIX = "index_pending\x1f"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """A connection in autocommit mode taking ``?`` placeholders (transactions are explicit)."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any: ...
    def close(self) -> None: ...


def _pending_key(tenant: str, kind: str, item_id: str) -> str:
    return f"{PENDING_PREFIX}{tenant}\x1f{kind}\x1f{item_id}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _upsert(table: str, cols: Sequence[str], key: Sequence[str]) -> str:
    """``INSERT`` a row, replacing the one with the same ``key`` (SQLite and PostgreSQL alike)."""
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key)
    action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT ({', '.join(key)}) {action}"
    )


_ITEMS = (
    "tenant",
    "kind",
    "item_id",
    "owner",
    "grp",
    "price",
    "currency",
    "record",
    "features",
    "facts",
    "seq",
    "created_at",
    "updated_at",
)
UPSERT_ITEM = _upsert("items", _ITEMS, ("tenant", "kind", "item_id"))
UPSERT_TOMBSTONE = _upsert(
    "tombstones", ("tenant", "entity_type", "entity_id", "deleted_at"), ("tenant", "entity_type", "entity_id")
)
UPSERT_META = _upsert("meta", ("key", "value"), ("key",))
UPSERT_EDGE = _upsert(
    "edges", ("tenant", "kind", "a", "b", "modality", "score"), ("tenant", "kind", "a", "b", "modality")
)
UPSERT_LATEST = _upsert(
    "latest",
    ("tenant", "entity_type", "entity_id", "name", "source", "signal", "observed_at"),
    ("tenant", "entity_type", "entity_id", "name", "source"),
)


UPSERT_DEEP = _upsert(
    "deep_jobs",
    ("tenant", "kind", "item_id", "record", "images", "bytes", "enqueued_at", "lease_until"),
    ("tenant", "kind", "item_id"),
)


def _images_blob(images: Sequence[bytes]) -> bytes:
    """Image bytes as one ``.npz`` (uint8 arrays: never pickled objects)."""
    return encode_features({f"i{k}": np.frombuffer(b, dtype=np.uint8) for k, b in enumerate(images)})


def _images_of(blob: Any) -> list[bytes]:
    arrays = decode_features(bytes(blob))
    return [arrays[f"i{k}"].tobytes() for k in range(len(arrays))]


def _micros(wire: dict[str, Any]) -> int:
    """A signal's ``observed_at`` in microseconds since the epoch."""
    stamp = datetime.fromisoformat(str(wire["observed_at"]).replace("Z", "+00:00"))
    return int(stamp.timestamp() * 1_000_000)


class SqlSignalStore:
    """The :class:`~serving.store.base.SignalStore` over a :class:`Db`; subclasses connect."""

    BEGIN: ClassVar[str] = "BEGIN"
    GREATEST: ClassVar[str] = "GREATEST"
    NULL_SAFE_EQ: ClassVar[str] = "IS NOT DISTINCT FROM"  # = that also matches NULL to NULL

    def __init__(
        self, writer: Db, reader: Db, sinks: Sequence[str] = (), shadow_sinks: Sequence[str] = ()
    ) -> None:
        """``sinks``: the configured sinks; every signal written is queued for each (a shadow
        signal only for those of ``shadow_sinks``)."""
        self._db = writer
        self._reader = reader
        self.sinks = list(sinks)
        self.shadow_sinks = [s for s in shadow_sinks if s in self.sinks]
        self._listeners: list[Callable[[], None]] = []
        self._queued = False
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()
        meta = self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        self._seq = max(int(row[0]), int(meta[0]) if meta else 0)

    # ------------------------------------------------------------------ writing
    @contextmanager
    def _tx(self) -> Iterator[Db]:
        """One write transaction (one fsync): committed when the block ends, rolled back on error."""
        with self._lock:
            self._db.execute(self.BEGIN)
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._queued = False
                raise
        if self._queued:
            self._queued = False
            for listener in self._listeners:
                listener()

    def write(self, batch: WriteBatch) -> None:
        """Commit one request's changes atomically (all or nothing), their events included."""
        t, k = batch.tenant, batch.kind
        now = _now()
        with self._tx() as db:
            for item_id in batch.delete:
                self._drop_edges(t, k, item_id)
                db.execute("DELETE FROM deep_jobs WHERE tenant=? AND kind=? AND item_id=?", (t, k, item_id))
                db.execute("DELETE FROM items WHERE tenant=? AND kind=? AND item_id=?", (t, k, item_id))
                db.execute(UPSERT_TOMBSTONE, (t, k, item_id, now))
            for it in batch.upsert:
                if not any(j.item_id == it.item_id for j in batch.deep):  # new content: the old job is moot
                    db.execute(
                        "DELETE FROM deep_jobs WHERE tenant=? AND kind=? AND item_id=?", (t, k, it.item_id)
                    )
                old = db.execute(
                    "SELECT seq, created_at FROM items WHERE tenant=? AND kind=? AND item_id=?",
                    (t, k, it.item_id),
                ).fetchone()
                if old is None:
                    self._seq += 1
                    seq, created = self._seq, now
                else:
                    seq, created = int(old[0]), str(old[1])  # a re-post keeps its place
                it.seq = seq
                db.execute(
                    UPSERT_ITEM,
                    (
                        t,
                        k,
                        it.item_id,
                        it.owner,
                        it.group,
                        it.price,
                        it.currency,
                        it.record,
                        encode_features(it.features),
                        json.dumps(it.facts, sort_keys=True),
                        seq,
                        created,
                        now,
                    ),
                )
                db.execute(
                    "DELETE FROM tombstones WHERE tenant=? AND entity_type=? AND entity_id=?",
                    (t, k, it.item_id),
                )
            db.execute(UPSERT_META, ("seq", str(self._seq)))
            for dt, dk, did in batch.index_done:
                db.execute("DELETE FROM meta WHERE key=?", (_pending_key(dt, dk, did),))
            for item_id in batch.index_pending:
                db.execute(UPSERT_META, (_pending_key(t, k, item_id), now))
            for key, value in sorted(batch.meta.items()):
                db.execute(UPSERT_META, (key, value))
            for item_id, edges in batch.edges.items():
                self._drop_edges(t, k, item_id)
                rows = {
                    (a, b, e.modality): float(e.score) for e in edges for a, b in ((e.a, e.b), (e.b, e.a))
                }
                db.executemany(UPSERT_EDGE, [(t, k, a, b, m, s) for (a, b, m), s in rows.items()])
            for item_id, facts in batch.facts.items():
                db.execute(
                    "UPDATE items SET facts=? WHERE tenant=? AND kind=? AND item_id=?",
                    (json.dumps(facts, sort_keys=True), t, k, item_id),
                )
            for job in batch.deep:
                db.execute(
                    UPSERT_DEEP,
                    (
                        job.tenant,
                        job.kind,
                        job.item_id,
                        job.record,
                        _images_blob(job.images),
                        job.size,
                        job.enqueued_at,
                        0.0,
                    ),
                )
            for job_id, enqueued_at in batch.deep_done:
                db.execute("DELETE FROM deep_jobs WHERE id=? AND enqueued_at=?", (job_id, enqueued_at))
            for etype, eid in batch.retract:
                db.execute(
                    "DELETE FROM latest WHERE tenant=? AND entity_type=? AND entity_id=?", (t, etype, eid)
                )
                self._enqueue_retract(t, etype, eid, now)
            for item_id, sources in batch.withdraw.items():
                for source in sources:
                    # source >= "x@" and < "xA" ('A' follows '@'): every version of extractor x
                    db.execute(
                        "DELETE FROM latest WHERE tenant=? AND entity_type=? AND entity_id=? "
                        "AND source >= ? AND source < ?",
                        (t, k, item_id, f"{source}@", f"{source}A"),
                    )
                self._enqueue_retract(t, k, item_id, now, sources)
            for s in batch.signals:
                wire = s.to_json_dict()
                body = json.dumps(wire, sort_keys=True, ensure_ascii=False)
                row = (s.tenant, s.entity_type, s.entity_id, s.name, s.source, body, wire["observed_at"])
                db.execute(UPSERT_LATEST, row)
                db.execute(
                    "INSERT INTO history (tenant, entity_type, entity_id, name, source, signal, "
                    "observed_at) VALUES (?,?,?,?,?,?,?)",
                    row,
                )
                self._enqueue_signal(wire)

    def _next_seq(self, tenant: str, entity_type: str, entity_id: str, floor_us: int | None = None) -> int:
        """The entity's next event sequence number (inside the write transaction): strictly
        increasing per entity, and at least ``floor_us``, by default the commit time in microseconds,
        so events of one entity from different stores (a batch run's ``--publish``, the service)
        order by when they were observed."""
        row = self._db.execute(
            "INSERT INTO entity_seq (tenant, entity_type, entity_id, seq) VALUES (?,?,?,?) "
            "ON CONFLICT (tenant, entity_type, entity_id) "
            f"DO UPDATE SET seq = {self.GREATEST}(entity_seq.seq + 1, excluded.seq) RETURNING seq",
            (tenant, entity_type, entity_id, time.time_ns() // 1000 if floor_us is None else floor_us),
        ).fetchone()
        return int(row[0])

    def queue_signals(self, signals: Sequence[dict[str, Any]], meta: dict[str, str] | None = None) -> int:
        """Queue events for signals (their wire form) without storing them, with ``meta`` updated in
        the same transaction (a batch run's ``--publish`` keeps its place this way). Their sequence
        numbers follow their ``observed_at``: a run published after the service wrote newer values
        never outranks them."""
        with self._tx() as db:
            for wire in signals:
                self._enqueue_signal(dict(wire), _micros(wire))
            for key, value in (meta or {}).items():
                db.execute(UPSERT_META, (key, value))
        return len(signals)

    def _enqueue_signal(self, wire: dict[str, Any], floor_us: int | None = None) -> None:
        """Queue a signal's event for every sink that takes it (a shadow signal: the shadow sinks);
        without one, nothing is written, not even a sequence number (time-based: none is lost)."""
        targets = self.shadow_sinks if wire.get("shadow") else self.sinks
        if targets:
            seq = self._next_seq(wire["tenant"], wire["entity_type"], wire["entity_id"], floor_us)
            self._enqueue(targets, signal_event(wire, seq))

    def _enqueue_retract(
        self, tenant: str, entity_type: str, entity_id: str, now: str, sources: Sequence[str] = ()
    ) -> None:
        if self.sinks:
            seq = self._next_seq(tenant, entity_type, entity_id)
            self._enqueue(self.sinks, retract_event(tenant, entity_type, entity_id, seq, now, sources))

    def _enqueue(self, targets: Sequence[str], event: dict[str, Any]) -> None:
        """Queue an event for ``targets`` (inside the write transaction: committed with the signal)."""
        body = json.dumps(event, sort_keys=True, ensure_ascii=False)
        created = time.time()
        self._db.executemany(
            "INSERT INTO outbox (sink, event, created_at) VALUES (?,?,?)",
            [(sink, body, created) for sink in targets],
        )
        self._queued = True

    def on_queued(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit that queued events (the publisher wakes on it)."""
        self._listeners.append(listener)

    def add_edges(self, tenant: str, kind: ItemKind, edges: Sequence[Edge]) -> None:
        """Add edges (both directions) without touching the items' other edges: a backfill."""
        rows = {(a, b, e.modality): float(e.score) for e in edges for a, b in ((e.a, e.b), (e.b, e.a))}
        with self._tx() as db:
            db.executemany(UPSERT_EDGE, [(tenant, kind, a, b, m, s) for (a, b, m), s in rows.items()])

    def pending_index(self) -> list[tuple[str, ItemKind, str]]:
        """Items marked by :attr:`WriteBatch.index_pending` and not cleared since."""
        rows = self._rows("SELECT key FROM meta WHERE key LIKE ?", (PENDING_PREFIX + "%",))
        out: list[tuple[str, ItemKind, str]] = []
        for (key,) in rows:
            _, tenant, kind, item_id = str(key).split("\x1f", 3)
            out.append((tenant, kind, item_id))  # type: ignore[arg-type]  # written from an ItemKind
        return out

    def clear_pending_index(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM meta WHERE key LIKE ?", (PENDING_PREFIX + "%",))

    def get_meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(UPSERT_META, (key, value))

    def set_features(self, tenant: str, kind: ItemKind, features: dict[str, dict[str, np.ndarray]]) -> None:
        """Replace stored items' features (``marketguard reindex`` after a model change), one transaction."""
        with self._tx() as db:
            for item_id, feats in features.items():
                db.execute(
                    "UPDATE items SET features=? WHERE tenant=? AND kind=? AND item_id=?",
                    (encode_features(feats), tenant, kind, item_id),
                )

    def _drop_edges(self, t: str, k: str, item_id: str) -> None:
        self._db.execute(
            "DELETE FROM edges WHERE tenant=? AND kind=? AND (a=? OR b=?)", (t, k, item_id, item_id)
        )

    TABLES: ClassVar[tuple[str, ...]] = (
        "items",
        "edges",
        "latest",
        "history",
        "tombstones",
        "labels",
        "meta",
        "entity_seq",
        "outbox",
        "dead_letters",
        "deep_jobs",
    )

    def clear(self) -> None:
        """Delete every row (an import that died part-way starts afresh); the schema stays."""
        with self._tx() as db:
            for table in self.TABLES:
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - the store's own table names
        self._seq = 0

    # --------------------------------------------------------------- deep tier
    def deep_backlog(self) -> tuple[int, int]:
        """Jobs queued for the deep tier and their image bytes."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM deep_jobs").fetchone()
        return int(row[0]), int(row[1])

    def deep_take(self, limit: int, lease_s: float) -> list[DeepJob]:
        """Up to ``limit`` jobs, oldest first, leased for ``lease_s`` seconds: a worker that dies
        with them leaves them to be taken again when the lease ends (and a restart's first take)."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, tenant, kind, item_id, record, images, enqueued_at FROM deep_jobs "
                "WHERE lease_until < ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE deep_jobs SET lease_until=? WHERE id=?", [(now + lease_s, r[0]) for r in rows]
            )
        return [DeepJob(r[1], r[2], r[3], r[4], _images_of(r[5]), float(r[6]), int(r[0])) for r in rows]

    def deep_current(self, job_id: int, enqueued_at: float) -> bool:
        """Whether the job is still queued as it was taken (not replaced by a re-post, not deleted)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM deep_jobs WHERE id=? AND enqueued_at=?", (job_id, enqueued_at)
            ).fetchone()
        return row is not None

    def deep_release(self) -> None:
        """End every lease (at start-up: the previous process's workers are gone)."""
        with self._tx() as db:
            db.execute("UPDATE deep_jobs SET lease_until=0")

    # ------------------------------------------------------------------- outbox
    def outbox_next(self, sink: str, limit: int) -> tuple[str, list[tuple[int, str]]]:
        """The sink's next delivery: its id and its (row id, event JSON) rows, oldest first.

        A delivery keeps its id and its rows until acknowledged, across retries and restarts
        (the id is a webhook's ``Idempotency-Key``); a new one takes up to ``limit`` rows.
        """
        with self._lock:
            head = self._db.execute(
                "SELECT delivery FROM outbox WHERE sink=? ORDER BY id LIMIT 1", (sink,)
            ).fetchone()
            if head is None:
                return "", []
            if head[0] is not None:
                rows = self._db.execute(
                    "SELECT id, event FROM outbox WHERE sink=? AND delivery=? ORDER BY id", (sink, head[0])
                ).fetchall()
                return str(head[0]), [(int(r[0]), str(r[1])) for r in rows]
            delivery = uuid.uuid4().hex
            rows = self._db.execute(
                "SELECT id, event FROM outbox WHERE sink=? AND delivery IS NULL ORDER BY id LIMIT ?",
                (sink, limit),
            ).fetchall()
            with self._tx() as db:
                db.executemany("UPDATE outbox SET delivery=? WHERE id=?", [(delivery, r[0]) for r in rows])
            return delivery, [(int(r[0]), str(r[1])) for r in rows]

    def outbox_ack(self, sink: str, ids: Sequence[int]) -> None:
        """Delivered: the rows leave the outbox (one transaction)."""
        with self._tx() as db:
            db.executemany("DELETE FROM outbox WHERE sink=? AND id=?", [(sink, i) for i in ids])

    def outbox_dead_letter(self, sink: str, created_before: float, reason: str) -> int:
        """Move the sink's events queued before ``created_before`` (unix seconds) to the dead letters."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO dead_letters (sink, event, created_at, dead_at, reason) "
                "SELECT sink, event, created_at, ?, ? FROM outbox WHERE sink=? AND created_at < ? "
                "ORDER BY id",
                (time.time(), reason, sink, created_before),
            )
            moved = cur.rowcount
            db.execute("DELETE FROM outbox WHERE sink=? AND created_at < ?", (sink, created_before))
        return int(moved)

    def replay_dead_letters(self, sink: str | None = None, meta: dict[str, str] | None = None) -> int:
        """Queue dead letters again (same event ids and sequence numbers; consumers keep the newest),
        with ``meta`` updated in the same transaction."""
        where, args = ("WHERE sink=?", (sink,)) if sink is not None else ("", ())
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (sink, event, created_at) "  # noqa: S608 - fixed text
                f"SELECT sink, event, ? FROM dead_letters {where} ORDER BY id",
                (time.time(), *args),
            )
            moved = cur.rowcount
            db.execute(f"DELETE FROM dead_letters {where}", args)  # noqa: S608 - fixed text
            if moved:
                for key, value in (meta or {}).items():
                    db.execute(UPSERT_META, (key, value))
        return int(moved)

    def outbox_stats(self) -> dict[str, dict[str, float]]:
        """Per sink: events queued, the age in seconds of the oldest one, dead letters."""
        now = time.time()
        out: dict[str, dict[str, float]] = {
            s: {"queued": 0.0, "lag_s": 0.0, "dead_letters": 0.0} for s in self.sinks
        }
        for sink, n, oldest in self._rows(
            "SELECT sink, COUNT(*), MIN(created_at) FROM outbox GROUP BY sink", ()
        ):
            out.setdefault(sink, {"queued": 0.0, "lag_s": 0.0, "dead_letters": 0.0})
            out[sink].update(queued=float(n), lag_s=max(0.0, now - float(oldest)))
        for sink, n in self._rows("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink", ()):
            out.setdefault(sink, {"queued": 0.0, "lag_s": 0.0, "dead_letters": 0.0})
            out[sink]["dead_letters"] = float(n)
        return out

    # ------------------------------------------------------------------ reading
    def _rows(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return list(self._reader.execute(sql, tuple(args)).fetchall())

    _ITEM_COLS = (
        "tenant, kind, item_id, owner, grp, price, currency, record, {feat}, facts, seq, "
        "created_at, updated_at"
    )

    def _items(self, where: str, args: Sequence[Any], with_features: bool = True) -> list[StoredItem]:
        cols = self._ITEM_COLS.format(feat="features" if with_features else "NULL")
        return [self._item(r) for r in self._rows(f"SELECT {cols} FROM items WHERE {where}", args)]

    @staticmethod
    def _item(r: tuple[Any, ...]) -> StoredItem:
        return StoredItem(
            tenant=r[0],
            kind=r[1],
            item_id=r[2],
            owner=r[3],
            group=r[4],
            price=r[5],
            currency=r[6],
            record=r[7],
            features=decode_features(None if r[8] is None else bytes(r[8])),
            facts=json.loads(r[9]),
            seq=int(r[10]),
            created_at=datetime.fromisoformat(r[11]),
            updated_at=datetime.fromisoformat(r[12]),
        )

    def get_item(self, tenant: str, kind: ItemKind, item_id: str) -> StoredItem | None:
        found = self._items("tenant=? AND kind=? AND item_id=?", (tenant, kind, item_id))
        return found[0] if found else None

    def get_items(
        self, tenant: str, kind: ItemKind, item_ids: Sequence[str], with_features: bool = False
    ) -> dict[str, StoredItem]:
        out: dict[str, StoredItem] = {}
        ids = list(dict.fromkeys(item_ids))
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for it in self._items(
                f"tenant=? AND kind=? AND item_id IN ({marks})", (tenant, kind, *part), with_features
            ):
                out[it.item_id] = it
        return out

    def edges_of(self, tenant: str, kind: ItemKind, item_ids: Sequence[str]) -> dict[str, list[Edge]]:
        out: dict[str, list[Edge]] = {i: [] for i in item_ids}
        ids = list(out)
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for a, b, m, s in self._rows(
                f"SELECT a, b, modality, score FROM edges WHERE tenant=? AND kind=? AND a IN ({marks}) "
                "ORDER BY a, b, modality",
                (tenant, kind, *part),
            ):
                out[a].append(Edge(a, b, m, float(s)))
        return out

    def items_of_owner(self, tenant: str, kind: ItemKind, owner: str) -> list[StoredItem]:
        return self._items("tenant=? AND kind=? AND owner=? ORDER BY seq", (tenant, kind, owner), False)

    def _group_query(self, tenant: str, kind: ItemKind, group: str | None,
                     limit: int | None) -> tuple[str, tuple[Any, ...], bool]:
        """The WHERE clause (order and limit included) of a group's items, its arguments, and
        whether the rows come back newest first."""
        # ``grp = ?`` rather than a NULL-safe comparison when there is a group: PostgreSQL's
        # IS NOT DISTINCT FROM cannot use an index, and (tenant, kind, grp, seq) serves both the
        # filter and the order, so a LIMIT reads only the rows it returns
        grp, args = ("grp IS NULL", (tenant, kind)) if group is None else ("grp = ?", (tenant, kind, group))
        where = f"tenant=? AND kind=? AND {grp}"
        if limit is None:
            return f"{where} ORDER BY seq", args, False
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        return f"{where} ORDER BY seq DESC LIMIT ?", (*args, limit), True

    def items_of_group(self, tenant: str, kind: ItemKind, group: str | None) -> list[StoredItem]:
        """The group's items in the order they were first stored."""
        where, args, _ = self._group_query(tenant, kind, group, None)
        return self._items(where, args, False)

    def group_records(self, tenant: str, kind: ItemKind, group: str | None,
                      limit: int | None = None) -> list[tuple[str, str]]:
        """``(item_id, record)`` of the group's items in the order they were first stored, nothing
        else read or decoded (the per-review ring update reads thousands of them); with
        ``limit``, only the last ``limit`` of them (the database sorts, only those rows come back)."""
        where, args, newest_first = self._group_query(tenant, kind, group, limit)
        found = self._rows(f"SELECT item_id, record FROM items WHERE {where}", args)
        rows = [(str(i), str(r)) for i, r in found]
        return rows[::-1] if newest_first else rows

    def group_prices(self, tenant: str, group: str | None, currency: str, limit: int) -> list[float]:
        rows = self._rows(
            f"SELECT price FROM items WHERE tenant=? AND kind='listing' AND grp {self.NULL_SAFE_EQ} ? "
            "AND currency=? AND price > 0 ORDER BY seq DESC LIMIT ?",
            (tenant, group, currency, limit),
        )
        return [float(r[0]) for r in rows]

    def iter_items(
        self, tenant: str | None = None, kind: ItemKind | None = None, with_features: bool = True
    ) -> Iterator[StoredItem]:
        where, args = ["1=1"], []
        if tenant is not None:
            where.append("tenant=?")
            args.append(tenant)
        if kind is not None:
            where.append("kind=?")
            args.append(kind)
        last = -1
        while True:  # pages by seq: memory stays one page whatever the store holds
            page = self._items(
                " AND ".join([*where, "seq > ?"]) + " ORDER BY seq LIMIT 1000", (*args, last), with_features
            )
            if not page:
                return
            yield from page
            last = page[-1].seq

    def tenants(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT DISTINCT tenant FROM items ORDER BY tenant", ())]

    def expired(self, before: datetime, limit: int) -> list[tuple[str, ItemKind, str]]:
        rows = self._rows(
            "SELECT tenant, kind, item_id FROM items WHERE updated_at < ? ORDER BY updated_at LIMIT ?",
            (before.astimezone(UTC).isoformat(), limit),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def latest(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT signal FROM latest WHERE tenant=? AND entity_type=? AND entity_id=? "
            "ORDER BY name, source",
            (tenant, entity_type, entity_id),
        )
        return [json.loads(r[0]) for r in rows]

    def history(
        self, tenant: str, entity_type: EntityType, entity_id: str, limit: int
    ) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT signal FROM history WHERE tenant=? AND entity_type=? AND entity_id=? "
            "ORDER BY id DESC LIMIT ?",
            (tenant, entity_type, entity_id, limit),
        )
        return [json.loads(r[0]) for r in reversed(rows)]

    def tombstone(self, tenant: str, entity_type: EntityType, entity_id: str) -> datetime | None:
        rows = self._rows(
            "SELECT deleted_at FROM tombstones WHERE tenant=? AND entity_type=? AND entity_id=?",
            (tenant, entity_type, entity_id),
        )
        return datetime.fromisoformat(rows[0][0]) if rows else None

    def add_label(self, label: Label) -> int:
        return self.add_labels([label])[0]

    def add_labels(self, labels: Sequence[Label]) -> list[int]:
        """Store labels in one transaction (all or none); earlier labels of an entity are kept."""
        ids: list[int] = []
        now = _now()
        with self._tx() as db:
            for label in labels:
                row = db.execute(
                    "INSERT INTO labels (tenant, entity_type, entity_id, label, record, received_at, "
                    "loss_amount, currency) VALUES (?,?,?,?,?,?,?,?) RETURNING id",
                    (label.tenant, label.entity_type, label.entity_id, label.label,
                     label.model_dump_json(), now, label.loss_amount, label.currency),
                ).fetchone()
                ids.append(int(row[0]))
        return ids

    def all_labels(self, page: int = 5000) -> Iterator[dict[str, Any]]:
        """Every label of every tenant, oldest first (with ``id`` and ``received_at``), a page at a time."""
        last = 0
        while True:
            rows = self._rows(
                "SELECT id, record, received_at FROM labels WHERE id > ? ORDER BY id LIMIT ?", (last, page)
            )
            if not rows:
                return
            for r in rows:
                yield {"id": int(r[0]), **json.loads(r[1]), "received_at": r[2]}
            last = int(rows[-1][0])

    def iter_signals(self, history: bool = False, page: int = 5000) -> Iterator[dict[str, Any]]:
        """Every latest signal (or, with ``history``, every value ever stored, oldest first), in
        their wire form, a page at a time."""
        if not history:
            yield from (json.loads(r[0]) for r in self._rows("SELECT signal FROM latest", ()))
            return
        last = 0
        while True:
            rows = self._rows("SELECT id, signal FROM history WHERE id > ? ORDER BY id LIMIT ?", (last, page))
            if not rows:
                return
            yield from (json.loads(r[1]) for r in rows)
            last = int(rows[-1][0])

    def labels(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT id, record, received_at FROM labels WHERE tenant=? AND entity_type=? "
            "AND entity_id=? ORDER BY id",
            (tenant, entity_type, entity_id),
        )
        return [{"id": r[0], **json.loads(r[1]), "received_at": r[2]} for r in rows]

    def tenant_labels(self, tenant: str, entity_types: Sequence[EntityType]) -> list[Label]:
        """Every label of ``tenant`` on entities of ``entity_types``, oldest first."""
        if not entity_types:
            return []
        marks = ", ".join("?" * len(entity_types))
        rows = self._rows(
            f"SELECT record FROM labels WHERE tenant=? AND entity_type IN ({marks}) ORDER BY id",
            (tenant, *entity_types),
        )
        return [Label.model_validate_json(r[0]) for r in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """Live items per (tenant, kind)."""
        rows = self._rows("SELECT tenant, kind, COUNT(*) FROM items GROUP BY tenant, kind", ())
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()


def migrate(db: Db, migrations: Sequence[tuple[int, Sequence[str]]], begin: str) -> int:
    """Apply the migrations newer than the database's ``schema_version``, each in its own
    transaction with its version; returns the version reached. A database made before versions
    were recorded is at 0 (the first migration only creates what is missing)."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    for version, statements in migrations:
        if version <= current:
            continue
        db.execute(begin)
        try:
            for sql in statements:
                db.execute(sql)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        current = version
    return current
