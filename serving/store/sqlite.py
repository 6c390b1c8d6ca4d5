"""The embedded signal store: one SQLite file in WAL mode (``<data_dir>/store.sqlite3``).

The store's logic is :class:`~serving.store.sql.SqlSignalStore`; this module connects. Every
write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) with ``synchronous=FULL``: when it
returns, a power cut cannot lose it. Reads have their own connection: in WAL mode they see the
last commit and never wait for a write in progress.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from serving.store.sql import Db, SqlSignalStore, migrate

# Versioned; applied in order at start-up. Version 1 is every table as of the first release that
# recorded versions (IF NOT EXISTS: a file made before that is brought up to it as it is).
MIGRATIONS: list[tuple[int, list[str]]] = [(1, [
    """CREATE TABLE IF NOT EXISTS items (
        tenant TEXT NOT NULL, kind TEXT NOT NULL, item_id TEXT NOT NULL,
        owner TEXT NOT NULL, grp TEXT, price REAL, currency TEXT,
        record TEXT NOT NULL, features BLOB, facts TEXT NOT NULL DEFAULT '{}',
        seq INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (tenant, kind, item_id))""",
    "CREATE INDEX IF NOT EXISTS items_owner ON items (tenant, kind, owner)",
    "CREATE INDEX IF NOT EXISTS items_group ON items (tenant, kind, grp, currency)",
    "CREATE INDEX IF NOT EXISTS items_updated ON items (updated_at)",
    """CREATE TABLE IF NOT EXISTS edges (
        tenant TEXT NOT NULL, kind TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL,
        modality TEXT NOT NULL, score REAL NOT NULL,
        PRIMARY KEY (tenant, kind, a, b, modality))""",
    """CREATE TABLE IF NOT EXISTS latest (
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL,
        name TEXT NOT NULL, source TEXT NOT NULL, signal TEXT NOT NULL, observed_at TEXT NOT NULL,
        PRIMARY KEY (tenant, entity_type, entity_id, name, source))""",
    """CREATE TABLE IF NOT EXISTS history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL,
        name TEXT NOT NULL, source TEXT NOT NULL, signal TEXT NOT NULL, observed_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS history_entity ON history (tenant, entity_type, entity_id, id)",
    """CREATE TABLE IF NOT EXISTS tombstones (
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, deleted_at TEXT NOT NULL,
        PRIMARY KEY (tenant, entity_type, entity_id))""",
    """CREATE TABLE IF NOT EXISTS labels (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, label TEXT NOT NULL,
        record TEXT NOT NULL, received_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS labels_entity ON labels (tenant, entity_type, entity_id, id)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS entity_seq (
        tenant TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (tenant, entity_type, entity_id))""",
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, event TEXT NOT NULL,
        created_at REAL NOT NULL, delivery TEXT)""",
    "CREATE INDEX IF NOT EXISTS outbox_sink ON outbox (sink, id)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, event TEXT NOT NULL,
        created_at REAL NOT NULL, dead_at REAL NOT NULL, reason TEXT NOT NULL)""",
]), (2, [
    """CREATE TABLE deep_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, kind TEXT NOT NULL, item_id TEXT NOT NULL,
        record TEXT NOT NULL, images BLOB NOT NULL, bytes INTEGER NOT NULL, enqueued_at REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0, UNIQUE (tenant, kind, item_id))""",
]), (3, [
    # a label's money at stake (``marketguard report``), also kept in its record JSON
    "ALTER TABLE labels ADD COLUMN loss_amount REAL",
    "ALTER TABLE labels ADD COLUMN currency TEXT",
]), (4, [
    # a product's last reviews in stored order (the per-review ring update's LIMIT)
    "CREATE INDEX IF NOT EXISTS items_group_seq ON items (tenant, kind, grp, seq)",
])]


MIN_SQLITE = (3, 35, 0)


def _connect(path: Path) -> sqlite3.Connection:
    # Used from the deployment's event-loop thread and its worker threads, one at a time (the
    # store's locks), so SQLite's same-thread check is off; transactions are explicit.
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)


class SqliteSignalStore(SqlSignalStore):
    """The :class:`~serving.store.base.SignalStore` on SQLite (WAL, fsynced commits)."""

    BEGIN = "BEGIN IMMEDIATE"
    GREATEST = "MAX"  # SQLite's two-argument MAX is PostgreSQL's GREATEST
    NULL_SAFE_EQ = "IS"  # SQLite's IS compares NULLs too (IS NOT DISTINCT FROM needs 3.39)

    def __init__(self, path: Path, sinks: Sequence[str] = (), shadow_sinks: Sequence[str] = ()) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            need = ".".join(map(str, MIN_SQLITE))
            raise RuntimeError(f"the store needs SQLite >= {need} (RETURNING, upserts); this Python has "
                               f"{sqlite3.sqlite_version}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = _connect(self.path)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA synchronous=FULL")
        migrate(writer, MIGRATIONS, self.BEGIN)
        db: Db = writer
        reader: Db = _connect(self.path)
        super().__init__(db, reader, sinks, shadow_sinks)
