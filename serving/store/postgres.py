"""The signal store on PostgreSQL, for service replicas on a cluster (no shared volume needed).

The store's logic is :class:`~serving.store.sql.SqlSignalStore`; this module connects. Each
catalogue shard keeps its tables in a schema of its own (``<store.schema>`` with one shard,
``<store.schema>_shard_<i>`` with several), so shards never see each other's rows and a shard
behaves exactly as with SQLite. Migrations are versioned (``schema_version``) and run at start-up
under an advisory lock, so replicas starting together migrate once. Commits are synchronous
(the server's ``synchronous_commit`` default): a 2xx is durable.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from serving.store.base import StoreUnavailable
from serving.store.sql import Cursor, SqlSignalStore, migrate

log = logging.getLogger(__name__)

MIGRATIONS: list[tuple[int, list[str]]] = [(1, [
    """CREATE TABLE items (
        tenant TEXT NOT NULL, kind TEXT NOT NULL, item_id TEXT NOT NULL,
        owner TEXT NOT NULL, grp TEXT, price DOUBLE PRECISION, currency TEXT,
        record TEXT NOT NULL, features BYTEA, facts TEXT NOT NULL DEFAULT '{}',
        seq BIGINT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (tenant, kind, item_id))""",
    "CREATE INDEX items_owner ON items (tenant, kind, owner)",
    "CREATE INDEX items_group ON items (tenant, kind, grp, currency)",
    "CREATE INDEX items_updated ON items (updated_at)",
    "CREATE INDEX items_seq ON items (seq)",
    """CREATE TABLE edges (
        tenant TEXT NOT NULL, kind TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL,
        modality TEXT NOT NULL, score DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, kind, a, b, modality))""",
    "CREATE INDEX edges_b ON edges (tenant, kind, b)",
    """CREATE TABLE latest (
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL,
        name TEXT NOT NULL, source TEXT NOT NULL, signal TEXT NOT NULL, observed_at TEXT NOT NULL,
        PRIMARY KEY (tenant, entity_type, entity_id, name, source))""",
    """CREATE TABLE history (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL,
        name TEXT NOT NULL, source TEXT NOT NULL, signal TEXT NOT NULL, observed_at TEXT NOT NULL)""",
    "CREATE INDEX history_entity ON history (tenant, entity_type, entity_id, id)",
    """CREATE TABLE tombstones (
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, deleted_at TEXT NOT NULL,
        PRIMARY KEY (tenant, entity_type, entity_id))""",
    """CREATE TABLE labels (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, label TEXT NOT NULL,
        record TEXT NOT NULL, received_at TEXT NOT NULL)""",
    "CREATE INDEX labels_entity ON labels (tenant, entity_type, entity_id, id)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE entity_seq (
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, seq BIGINT NOT NULL,
        PRIMARY KEY (tenant, entity_type, entity_id))""",
    """CREATE TABLE outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sink TEXT NOT NULL, event TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, delivery TEXT)""",
    "CREATE INDEX outbox_sink ON outbox (sink, id)",
    """CREATE TABLE dead_letters (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sink TEXT NOT NULL, event TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, dead_at DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL)""",
]), (2, [
    """CREATE TABLE deep_jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL,
        item_id TEXT NOT NULL, record TEXT NOT NULL, images BYTEA NOT NULL, bytes BIGINT NOT NULL,
        enqueued_at DOUBLE PRECISION NOT NULL, lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        UNIQUE (tenant, kind, item_id))""",
]), (3, [
    # a label's money at stake (``marketguard report``), also kept in its record JSON
    "ALTER TABLE labels ADD COLUMN loss_amount DOUBLE PRECISION",
    "ALTER TABLE labels ADD COLUMN currency TEXT",
]), (4, [
    # a product's last reviews in stored order (the per-review ring update's LIMIT)
    "CREATE INDEX items_group_seq ON items (tenant, kind, grp, seq)",
])]

WRITER_LOCK_WAIT_S = 60.0
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class WriterFenced(StoreUnavailable, RuntimeError):
    """Another replica holds the schema's writer lock: this one must not write."""


CONNECT_TIMEOUT_S = 5
"""How long one connection attempt waits for the server."""


class _NoRows:
    """The result of a ``ROLLBACK`` on a lost connection (the server rolled it back already)."""

    rowcount = 0

    def fetchone(self) -> Any:
        return None

    def fetchall(self) -> list[Any]:
        return []


class _Connection:
    """A psycopg connection behind the store's ``?``-placeholder interface (autocommit: the store
    begins and commits its transactions itself), that survives a server restart or failover.

    A connection found broken is opened again before a statement outside a transaction (a read,
    or the ``BEGIN`` of a write), and that statement is sent once more: nothing of it can have
    taken effect. A connection lost inside a transaction (or on its ``COMMIT``) raises
    :class:`StoreUnavailable`: the server rolled the transaction back, or the outcome of the
    ``COMMIT`` is unknown, and either way the caller was not answered, so its retry is safe (every
    write is an upsert). A writer's connection takes the schema's writer lock again on reconnecting:
    if a replacement replica took it meanwhile, this one stays fenced off (every write raises).
    """

    def __init__(self, url: str, schema: str, writer_lock: str | None = None,
                 lock_wait_s: float = 0.0) -> None:
        self.url, self.schema = url, schema
        self.writer_lock, self.lock_wait_s = writer_lock, lock_wait_s
        self.in_tx = False
        self.reconnects = 0
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            conn.execute(f'SET search_path TO "{self.schema}"')
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL unreachable: {exc}".strip()) from exc
        if self.writer_lock is not None:
            # One writer a schema: a replacement replica waits for the old one's session to end (a
            # partitioned or dying one), so two never write the shard's rows at once.
            deadline = time.monotonic() + self.lock_wait_s
            while not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                   (self.writer_lock,)).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() > deadline:
                    conn.close()
                    raise WriterFenced(f"another writer holds the store schema {self.schema!r} "
                                       f"(waited {self.lock_wait_s:.0f} s)")
                time.sleep(0.5)
        return conn

    def _reconnect(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        self.in_tx = False
        self.conn = self._connect()
        self.reconnects += 1
        log.warning("store schema %s: reconnected to PostgreSQL (%d so far)", self.schema, self.reconnects)

    @property
    def _lost(self) -> bool:
        return bool(self.conn.closed or self.conn.broken)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, args: Sequence[Any] = (), /) -> Cursor:
        verb = sql.lstrip()[:8].upper()
        if verb.startswith("ROLLBACK") and self._lost:
            self.in_tx = False
            return _NoRows()
        retry = not self.in_tx  # a read, or the BEGIN of a write: nothing of it has happened
        if self._lost:
            if not retry:
                raise StoreUnavailable("the PostgreSQL connection was lost in a transaction")
            self._reconnect()
        try:
            cursor: Cursor = self.conn.execute(self._sql(sql), tuple(args))
        except psycopg.OperationalError as exc:
            if not self._lost:
                raise  # a statement's own failure (a lock timeout, a cancel), not the connection
            if not retry:
                raise StoreUnavailable(f"the PostgreSQL connection was lost: {exc}".strip()) from exc
            self._reconnect()
            cursor = self.conn.execute(self._sql(sql), tuple(args))
        if verb.startswith("BEGIN"):
            self.in_tx = True
        elif verb.startswith(("COMMIT", "ROLLBACK")):
            self.in_tx = False
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any:
        if not rows:
            return None
        if self._lost:
            raise StoreUnavailable("the PostgreSQL connection was lost in a transaction")
        try:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), [tuple(r) for r in rows])
        except psycopg.OperationalError as exc:
            if self._lost:
                raise StoreUnavailable(f"the PostgreSQL connection was lost: {exc}".strip()) from exc
            raise

    def close(self) -> None:
        self.conn.close()


class PostgresSignalStore(SqlSignalStore):
    """The :class:`~serving.store.base.SignalStore` on PostgreSQL, in schema ``schema``."""

    BEGIN = "BEGIN"
    GREATEST = "GREATEST"

    def __init__(self, url: str, schema: str = "marketguard", sinks: Sequence[str] = (),
                 shadow_sinks: Sequence[str] = (), *, exclusive: bool = True,
                 lock_wait_s: float = WRITER_LOCK_WAIT_S) -> None:
        """``exclusive``: be the schema's one writer (the catalogue shard; waits up to ``lock_wait_s``
        for a previous one's session to end); off for a tool beside it (``sinks replay``)."""
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"store schema {schema!r}: lower-case letters, digits and _ only")
        self.schema = schema
        setup = _Connection(url, schema)
        try:
            # One migrator at a time, whichever replica starts first.
            setup.execute("SELECT pg_advisory_lock(hashtext(?))", (f"marketguard:{schema}",))
            setup.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            migrate(setup, MIGRATIONS, self.BEGIN)
        finally:
            setup.close()
        writer_lock = f"marketguard-writer:{schema}" if exclusive else None
        writer = _Connection(url, schema, writer_lock, lock_wait_s)
        super().__init__(writer, _Connection(url, schema), sinks, shadow_sinks)
