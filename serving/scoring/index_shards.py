"""Index shards inside a large tenant: one tenant's indexes split over N shards by a hash of the id.

A catalogue shard owns whole tenants (``crc32(tenant) % shards``); a tenant too big for one
process has its indexes split further, by ``indexes.sharding.shard_of(item id)``, over the
``index-shard`` deployments, which Ray places on any node. The tenant's catalogue shard stays
its one writer and its one decider: it sends each index entry to the shard of its id and fans
every search out to all shards, merging their answers (top-k by score then id; range results
by distance then id). Each shard answers with its own exact top-k, so the merge is what one
index holding everything answers (up to the order of exact ties at the k-th place, and each
shard's own IVF past ``vector.exact_max``).

* :class:`IndexShardCore`: one shard's partition of every split tenant's indexes (durable,
  stamped with their model, under ``<data_dir>/index-shards/shard-<j>/<tenant>/<modality>/``).
  The ``index-shard`` deployment wraps one; ``marketguard reindex`` and ``--from-batch`` open
  them in-process.
* :class:`ShardedTenantIndex`: what the engine sees instead of a local durable index.
* :class:`ShardClient`: how the engine reaches a shard (a Serve handle, or the core in-process).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes.config import IndexesConfig, Modality
from indexes.pdq import PdqHit, PdqIndex
from indexes.persistence import DurableIndex
from indexes.sharding import shard_of
from indexes.vector import Hit, VectorIndex
from serving.scoring.indexes import ShardCall, ShardClient, TenantIndexes

INDEX_SHARDS_DIR = "index-shards"


def index_shard_dir(data_dir: Path, shard: int) -> Path:
    """Where index shard ``shard`` keeps its partitions of every split tenant."""
    return Path(data_dir) / INDEX_SHARDS_DIR / f"shard-{shard}"


class IndexShardCore:
    """One index shard: its partition of each split tenant's listing, review, PDQ and SSCD indexes."""

    def __init__(self, root: Path, config: IndexesConfig, models: dict[Modality, str],
                 dims: dict[Modality, int]) -> None:
        self.indexes = TenantIndexes(root, config, models, dims)
        self.boot = uuid.uuid4().hex  # a restarted shard (maybe on another node, its disk empty) says so

    def boot_id(self) -> str:
        return self.boot

    def _durable(self, tenant: str, modality: Modality,
                 create: bool = False) -> DurableIndex[VectorIndex] | DurableIndex[PdqIndex] | None:
        idx = self.indexes.get(tenant, modality, create=create)
        if idx is not None and not isinstance(idx, DurableIndex):
            raise TypeError("an index shard holds local indexes only")
        return idx

    def search(self, tenant: str, modality: Modality, queries: np.ndarray, k: int) -> list[list[Hit]]:
        idx = self._durable(tenant, modality)
        if idx is None or not isinstance(idx.index, VectorIndex):
            return [[] for _ in range(len(queries))]
        return idx.index.search(queries, k)

    def range_search(self, tenant: str, modality: Modality, hashes: np.ndarray,
                     threshold: int | None) -> list[list[PdqHit]]:
        idx = self._durable(tenant, modality)
        if idx is None or not isinstance(idx.index, PdqIndex):
            return [[] for _ in range(len(hashes))]
        return idx.index.range_search(hashes, threshold)

    def add(self, tenant: str, modality: Modality, ids: list[str], data: np.ndarray,
            meta: list[dict[str, Any]] | None) -> int:
        """Add (or replace) entries; durable when this returns. Returns the partition's size."""
        idx = self._durable(tenant, modality, create=True)
        if idx is None:
            raise RuntimeError(f"no {modality} index for tenant {tenant!r} although one was to be created")
        idx.add(ids, data, meta)
        return len(idx.index)

    def remove(self, tenant: str, modality: Modality, ids: list[str]) -> tuple[int, int]:
        """Remove entries; returns (how many were present, the partition's size)."""
        idx = self._durable(tenant, modality)
        if idx is None:
            return 0, 0
        return idx.remove(ids), len(idx.index)

    def missing(self, tenant: str, modality: Modality, ids: list[str]) -> list[str]:
        idx = self._durable(tenant, modality)
        return list(ids) if idx is None else [i for i in ids if i not in idx.index]

    def ids(self, tenant: str, modality: Modality) -> list[str]:
        idx = self._durable(tenant, modality)
        return [] if idx is None else sorted(set(idx.meta) | set(idx.index.ids()))

    def size(self, tenant: str, modality: Modality) -> int:
        idx = self._durable(tenant, modality)
        return 0 if idx is None else len(idx.index)

    def drop_misplaced(self, tenant: str, modality: Modality, shard: int, shards: int) -> int:
        """Remove the entries that belong to another shard (left behind by a change of shard count)."""
        idx = self._durable(tenant, modality)
        if idx is None:
            return 0
        wrong = [i for i in set(idx.meta) | set(idx.index.ids()) if shard_of(i, shards) != shard]
        return idx.remove(wrong) if wrong else 0

    def sizes(self) -> dict[tuple[str, str], int]:
        return self.indexes.sizes()

    def compact(self) -> None:
        """Re-train grown IVFs and snapshot grown logs (a timer calls it, off the request path)."""
        self.indexes.compact()

    def close(self) -> None:
        self.indexes.close()


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class LocalShardClient:
    """An index shard in this process (``marketguard reindex``, ``--from-batch``, tests)."""

    def __init__(self, core: IndexShardCore) -> None:
        self.core = core

    def call(self, method: str, *args: Any) -> ShardCall:
        return _Done(getattr(self.core, method)(*args))


class _Timed:
    def __init__(self, response: Any, timeout_s: float) -> None:
        self.response, self.timeout_s = response, timeout_s

    def result(self) -> Any:
        return self.response.result(timeout_s=self.timeout_s)


class HandleShardClient:
    """An ``index-shard`` Serve deployment, called from the catalogue's writer thread (not its loop).

    A call that does not answer in ``timeout_s`` raises (the request fails; its item, committed,
    is re-indexed by the next maintenance round from its pending mark): a hung shard never holds
    the writer for ever."""

    def __init__(self, handle: Any, timeout_s: float = 60.0) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    def call(self, method: str, *args: Any) -> ShardCall:
        return _Timed(getattr(self.handle, method).remote(*args), self.timeout_s)


def local_shard_clients(data_dir: Path, count: int, config: IndexesConfig, models: dict[Modality, str],
                        dims: dict[Modality, int]) -> list[LocalShardClient]:
    """In-process clients over the index shards' directories (for offline tools; the service is stopped)."""
    return [LocalShardClient(IndexShardCore(index_shard_dir(data_dir, j), config, models, dims))
            for j in range(count)] if count > 1 else []


def close_local_clients(clients: Sequence[ShardClient]) -> None:
    for c in clients:
        if isinstance(c, LocalShardClient):
            c.core.close()
