"""What the service keeps, as a small interface a second backend can implement.

The store is authoritative: an item's record and features, its near-duplicate edges,
the facts its owner's roll-up folds in, the latest signal of every key with every value
in the history, labels, and the outbox of events for the sinks. One :meth:`SignalStore.write`
commits everything one request changed, atomically (the events of its signals included): a
2xx is sent only after it returns, and the indexes are reconciled
with the store at start-up (:mod:`serving.scoring.engine`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np

from signals.errors import InvalidInput
from signals.schemas import EntityType, Label, Signal

ItemKind = Literal["listing", "review"]


class StoreUnavailable(Exception):
    """The store's database cannot be reached (a PostgreSQL restart or failover): nothing of the
    operation was acknowledged, and it can be tried again (the API answers 503 with ``Retry-After``)."""


@dataclass
class StoredItem:
    """One live listing or review as the store keeps it.

    ``record``: the record's JSON without image bytes; ``features``: what the indexes
    hold for it (so an index can be rebuilt from the store); ``facts``: what the item's
    derived signals and its owner's roll-up were computed from (bank hits, image
    problems, near-duplicate counts, cluster).
    """

    tenant: str
    kind: ItemKind
    item_id: str
    owner: str
    group: str | None
    price: float | None
    currency: str | None
    record: str
    features: dict[str, np.ndarray]
    facts: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Edge:
    """A decided near-duplicate pair seen from ``a``: ``b`` matched through ``modality``."""

    a: str
    b: str
    modality: str
    score: float


@dataclass
class DeepJob:
    """Deep-tier work (OCR, NSFW) for one item, queued with the item's own commit.

    ``images``: the item's image bytes (the only place the service keeps them, until the job is
    done); ``enqueued_at`` tells a job apart from the one a re-post of the item replaced it with.
    """

    tenant: str
    kind: ItemKind
    item_id: str
    record: str
    images: list[bytes]
    enqueued_at: float = 0.0
    id: int = 0

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.images)


@dataclass
class WriteBatch:
    """Everything one request changes, committed together by :meth:`SignalStore.write`."""

    tenant: str
    kind: ItemKind
    upsert: list[StoredItem] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    """Item ids taken down: their record, features and edges go, their history stays."""
    edges: dict[str, list[Edge]] = field(default_factory=dict)
    """Item id -> its complete edge list (replaces the stored one; both directions are kept)."""
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Item id -> its new facts."""
    signals: list[Signal] = field(default_factory=list)
    retract: list[tuple[EntityType, str]] = field(default_factory=list)
    """Entities whose latest signals are withdrawn (a deleted item): history kept."""
    index_pending: list[str] = field(default_factory=list)
    """Items whose index entries are logged after this commit: marked in the same transaction, so
    start-up re-indexes them from the store if the process died in between (a re-post keeps its
    ids, so an id check alone would not see the stale vector)."""
    index_done: list[tuple[str, ItemKind, str]] = field(default_factory=list)
    """Earlier marks whose indexing completed: cleared in this transaction (no extra commit)."""
    withdraw: dict[str, list[str]] = field(default_factory=dict)
    """Item id -> extractor names whose latest values of the item are withdrawn (history kept)."""
    deep: list[DeepJob] = field(default_factory=list)
    """Deep work queued with the items (replacing an item's earlier job); a deleted item's goes."""
    deep_done: list[tuple[int, float]] = field(default_factory=list)
    """(job id, enqueued_at) of finished deep work: removed with the signals it produced."""
    meta: dict[str, str] = field(default_factory=dict)
    """Key -> value written to the store's key-value table in this transaction (the behavioural
    review state of the entities a review touched: :mod:`serving.scoring.review_behaviour`)."""


class SignalStore(Protocol):
    """The store behind the service (SQLite here; a PostgreSQL backend implements the same)."""

    def write(self, batch: WriteBatch) -> None: ...
    def get_item(self, tenant: str, kind: ItemKind, item_id: str) -> StoredItem | None: ...
    def get_items(self, tenant: str, kind: ItemKind, item_ids: Sequence[str],
                  with_features: bool = False) -> dict[str, StoredItem]: ...
    def edges_of(self, tenant: str, kind: ItemKind, item_ids: Sequence[str]) -> dict[str, list[Edge]]: ...
    def items_of_owner(self, tenant: str, kind: ItemKind, owner: str) -> list[StoredItem]: ...
    def items_of_group(self, tenant: str, kind: ItemKind, group: str | None) -> list[StoredItem]: ...
    def group_records(self, tenant: str, kind: ItemKind, group: str | None,
                      limit: int | None = None) -> list[tuple[str, str]]: ...
    def group_prices(self, tenant: str, group: str | None, currency: str, limit: int) -> list[float]: ...
    def iter_items(self, tenant: str | None = None, kind: ItemKind | None = None,
                   with_features: bool = True) -> Iterable[StoredItem]: ...
    def tenants(self) -> list[str]: ...
    def expired(self, before: datetime, limit: int) -> list[tuple[str, ItemKind, str]]: ...
    def latest(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]: ...
    def history(self, tenant: str, entity_type: EntityType, entity_id: str,
                limit: int) -> list[dict[str, Any]]: ...
    def tombstone(self, tenant: str, entity_type: EntityType, entity_id: str) -> datetime | None: ...
    def add_label(self, label: Label) -> int: ...
    def labels(self, tenant: str, entity_type: EntityType, entity_id: str) -> list[dict[str, Any]]: ...
    def tenant_labels(self, tenant: str, entity_types: Sequence[EntityType]) -> list[Label]: ...
    def get_meta(self, key: str) -> str | None: ...
    def counts(self) -> dict[tuple[str, str], int]: ...
    def pending_index(self) -> list[tuple[str, ItemKind, str]]: ...
    def clear_pending_index(self) -> None: ...
    def set_features(self, tenant: str, kind: ItemKind,
                     features: dict[str, dict[str, np.ndarray]]) -> None: ...
    # The outbox: each signal written is queued for every sink in the same transaction
    # (serving/sinks/publisher.py delivers it).
    def outbox_next(self, sink: str, limit: int) -> tuple[str, list[tuple[int, str]]]: ...
    def outbox_ack(self, sink: str, ids: Sequence[int]) -> None: ...
    def outbox_dead_letter(self, sink: str, created_before: float, reason: str) -> int: ...
    def replay_dead_letters(self, sink: str | None = None) -> int: ...
    def outbox_stats(self) -> dict[str, dict[str, float]]: ...
    def on_queued(self, listener: Callable[[], None]) -> None: ...
    # The deep tier's queue (serving/scoring/deep.py): bounded by the engine, leased to workers.
    def deep_backlog(self) -> tuple[int, int]: ...
    def deep_take(self, limit: int, lease_s: float) -> list[DeepJob]: ...
    def deep_current(self, job_id: int, enqueued_at: float) -> bool: ...
    def deep_release(self) -> None: ...
    def close(self) -> None: ...


def encode_features(features: dict[str, np.ndarray]) -> bytes:
    """Feature arrays as one ``.npz`` blob (numeric arrays only: never pickled objects)."""
    buf = io.BytesIO()
    arrays = {k: np.asarray(v) for k, v in features.items()}
    # numpy's stub matches **kwds against savez's own allow_pickle: bool too; every value here is an array
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # stub checks **arrays against allow_pickle
    return buf.getvalue()


def decode_features(blob: bytes | None) -> dict[str, np.ndarray]:
    """The arrays of :func:`encode_features`; refuses pickled content."""
    if not blob:
        return {}
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as exc:
        raise InvalidInput("features", f"stored features are unreadable: {exc}") from None
