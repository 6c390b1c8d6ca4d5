"""Each tenant's indexes, opened on first use, stamped with the model that made them.

Layout (the batch job's snapshot layout, so ``--from-batch`` can start from one):
``<root>/<tenant>/<modality>/`` is a :class:`~indexes.persistence.DurableIndex` with a
``model.json`` naming the model and version whose vectors it holds; opening it with
another model is refused with a message naming both (``marketguard reindex`` rebuilds).

A tenant split over index shards (``service.index_shards``) gets a :class:`ShardedTenantIndex`
instead: the same surface, its entries spread over the shards by a hash of their id
(:mod:`serving.scoring.index_shards`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexes.atomic import write_json_atomic
from indexes.config import IndexesConfig, Modality
from indexes.pdq import PdqHit, PdqIndex
from indexes.persistence import DurableIndex
from indexes.sharding import merge_top_k, merge_within, shard_of
from indexes.vector import Hit, VectorIndex
from signals.errors import InvalidInput

MODEL_STAMP = "model.json"
LocalIndex = DurableIndex[VectorIndex] | DurableIndex[PdqIndex]


def write_model_stamp(directory: Path, modality: Modality, model_id: str) -> None:
    """Record which model made the vectors of the index in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / MODEL_STAMP, {"modality": modality, "model": model_id})


def check_model_stamp(directory: Path, modality: Modality, model_id: str) -> None:
    """Refuse an index made by another model (a missing stamp is written: a new index)."""
    path = directory / MODEL_STAMP
    if not path.exists():
        write_model_stamp(directory, modality, model_id)
        return
    made_by = json.loads(path.read_text(encoding="utf-8")).get("model")
    if made_by != model_id:
        raise InvalidInput(
            "indexes", f"the {modality} index at {str(directory)!r} was built by model {made_by!r}, but the "
                       f"configured model is {model_id!r}; run `marketguard reindex` to rebuild it",
            "invalid")


def tenant_is_split(tenant: str, tenants: Sequence[str]) -> bool:
    """Whether ``tenant`` is split over the index shards (``tenants`` from config; ``*``: all)."""
    return "*" in tenants or tenant in tenants


class ShardCall(Protocol):
    """A call in flight (a Serve ``DeploymentResponse`` has this shape)."""

    def result(self) -> Any: ...


class ShardClient(Protocol):
    """Reaches one index shard: ``call(method, *args)`` starts ``IndexShardCore.<method>(*args)``."""

    def call(self, method: str, *args: Any) -> ShardCall: ...


class ShardedTenantIndex:
    """One tenant's index of one modality, split over the index shards: the engine's view of it.

    It is its own search surface (``.index`` is itself): ``search`` / ``range_search`` fan out
    and merge. Sizes are counted here from what the shards answer to each write, so ``len()``
    costs no call (this catalogue shard is the tenant's only writer).
    """

    def __init__(self, tenant: str, modality: Modality, clients: Sequence[ShardClient]) -> None:
        if not clients:
            raise ValueError("a split tenant needs at least one index shard")
        self.tenant = tenant
        self.modality = modality
        self.clients = list(clients)
        self.meta: dict[str, dict[str, Any]] = {}  # kept by the shards; image hit ids name their record
        self._sizes = [int(n) for n in self._all("size")]

    @property
    def index(self) -> ShardedTenantIndex:
        return self

    def _all(self, method: str, *args: Any) -> list[Any]:
        calls = [c.call(method, self.tenant, self.modality, *args) for c in self.clients]
        return [c.result() for c in calls]  # started together, awaited together

    def _split(self, ids: Sequence[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for pos, i in enumerate(ids):
            groups.setdefault(shard_of(i, len(self.clients)), []).append(pos)
        return groups

    def __len__(self) -> int:
        return sum(self._sizes)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        return merge_top_k(self._all("search", np.asarray(queries, dtype=np.float32), int(k)), k)

    def range_search(self, hashes: np.ndarray, threshold: int | None = None) -> list[list[PdqHit]]:
        return merge_within(self._all("range_search", np.asarray(hashes), threshold))

    def add(self, ids: list[str], data: np.ndarray, meta: list[dict[str, Any]] | None = None) -> None:
        self.start_add(ids, data, meta)()

    def start_add(self, ids: list[str], data: np.ndarray,
                  meta: list[dict[str, Any]] | None = None) -> Callable[[], int]:
        """Send each entry to its shard; the returned call waits for every shard's durable ack."""
        arr = np.asarray(data)
        calls = [(s, self.clients[s].call("add", self.tenant, self.modality, [ids[p] for p in pos], arr[pos],
                                          None if meta is None else [meta[p] for p in pos]))
                 for s, pos in self._split(ids).items()]

        def wait() -> int:
            for s, call in calls:
                self._sizes[s] = int(call.result())
            return len(ids)
        return wait

    def remove(self, ids: list[str]) -> int:
        return self.start_remove(ids)()

    def start_remove(self, ids: list[str]) -> Callable[[], int]:
        """Remove entries from their shards; the returned call waits and says how many were there."""
        calls = [(s, self.clients[s].call("remove", self.tenant, self.modality, [ids[p] for p in pos]))
                 for s, pos in self._split(ids).items()]

        def wait() -> int:
            removed = 0
            for s, call in calls:
                n, self._sizes[s] = call.result()
                removed += int(n)
            return removed
        return wait

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids that are not in the shard they belong to."""
        calls = [self.clients[s].call("missing", self.tenant, self.modality, [ids[p] for p in pos])
                 for s, pos in self._split(ids).items()]
        gone = {i for c in calls for i in c.result()}
        return [i for i in ids if i in gone]

    def ids(self) -> list[str]:
        return sorted({i for part in self._all("ids") for i in part})

    def drop_misplaced(self) -> int:
        """Remove entries held by a shard they no longer hash to (after the shard count changed)."""
        calls = [c.call("drop_misplaced", self.tenant, self.modality, s, len(self.clients))
                 for s, c in enumerate(self.clients)]
        dropped = sum(int(c.result()) for c in calls)
        if dropped:
            self._sizes = [int(n) for n in self._all("size")]
        return dropped

    def close(self) -> None:
        """Nothing to release here: the shards own their files."""


AnyIndex = LocalIndex | ShardedTenantIndex


def missing_ids(idx: AnyIndex, ids: Sequence[str]) -> list[str]:
    """The ``ids`` that ``idx`` does not hold (one call a shard for a split index)."""
    if isinstance(idx, ShardedTenantIndex):
        return idx.missing(ids)
    return [i for i in ids if i not in idx.index]


def held_ids(idx: AnyIndex) -> set[str]:
    """Every id ``idx`` holds."""
    if isinstance(idx, ShardedTenantIndex):
        return set(idx.ids())
    return set(idx.meta) | set(idx.index.ids())


class TenantIndexes:
    """The listing-text, review-text, PDQ and SSCD indexes of every tenant under ``root``.

    ``shards``: clients of the index shards; a tenant named by ``split_tenants`` (``*``: all)
    is split over them when there are two or more.
    """

    def __init__(self, root: Path, config: IndexesConfig, models: dict[Modality, str],
                 dims: dict[Modality, int], *, shards: Sequence[ShardClient] = (),
                 split_tenants: Sequence[str] = ("*",)) -> None:
        self.root = Path(root)
        self.config = config
        self.models = models
        self.dims = dims
        self.shards = list(shards)
        self.split_tenants = list(split_tenants)
        self._open: dict[tuple[str, Modality], LocalIndex] = {}
        self._split: dict[tuple[str, Modality], ShardedTenantIndex] = {}
        self._boots: list[str] | None = None
        self.lock_wait_s = 60.0

    def shards_restarted(self) -> bool:
        """Whether an index shard restarted since the last look (its partition may be empty: on
        another node, or its volume lost); the first look only records them. Forgets the split
        indexes' cached sizes when one did."""
        if len(self.shards) < 2:
            return False
        calls = [c.call("boot_id") for c in self.shards]
        boots = [str(c.result()) for c in calls]
        changed = self._boots is not None and boots != self._boots
        self._boots = boots
        if changed:
            self._split.clear()
        return changed

    def is_split(self, tenant: str) -> bool:
        return len(self.shards) > 1 and tenant_is_split(tenant, self.split_tenants)

    def get(self, tenant: str, modality: Modality, *, create: bool = True) -> AnyIndex | None:
        """The tenant's index of ``modality``; ``None`` when it does not exist and ``create`` is off."""
        key = (tenant, modality)
        if self.is_split(tenant):
            if key not in self._split:
                self._split[key] = ShardedTenantIndex(tenant, modality, self.shards)
            return self._split[key]
        if key in self._open:
            return self._open[key]
        directory = self.root / tenant / modality
        if not create and not (directory / "CURRENT").exists():
            return None
        check_model_stamp(directory, modality, self.models[modality])
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                idx = self._open_durable(directory, modality)
                break
            except InvalidInput as exc:
                # A killed predecessor's replica may hold the lock for a few seconds more, until
                # it notices its raylet is gone: wait for it rather than fail the start.
                if "another writer" not in exc.reason or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._open[key] = idx
        return idx

    def _open_durable(self, directory: Path, modality: Modality) -> LocalIndex:
        if modality == "image_pdq":
            pdq_cfg = self.config.pdq
            return DurableIndex(directory, lambda: PdqIndex(pdq_cfg), lambda p: PdqIndex.load(p, pdq_cfg),
                                self.config.persistence)
        vcfg = self.config.vector.model_copy(update={"dim": self.dims[modality]})
        return DurableIndex(directory, lambda: VectorIndex(vcfg), lambda p: VectorIndex.load(p, vcfg),
                            self.config.persistence)

    def tenants(self) -> list[str]:
        """Tenants with a local index on disk or an index open."""
        on_disk = {p.name for p in self.root.iterdir() if p.is_dir()} if self.root.is_dir() else set()
        return sorted(on_disk | {t for t, _ in self._open} | {t for t, _ in self._split})

    def opened(self) -> Iterator[tuple[str, Modality, LocalIndex]]:
        """The open local indexes (index shards snapshot their own)."""
        for (t, m), idx in list(self._open.items()):
            yield t, m, idx

    def sizes(self) -> dict[tuple[str, str], int]:
        """Items per (tenant, modality) of the open indexes."""
        # a snapshot of the dicts: the writer thread may open an index while a scrape reads
        out: dict[tuple[str, str], int] = {(t, m): len(idx.index) for (t, m), idx in list(self._open.items())}
        out.update({(t, m): len(idx) for (t, m), idx in list(self._split.items())})
        return out

    def meta(self, tenant: str, modality: Modality, item_id: str) -> dict[str, Any] | None:
        idx = self.get(tenant, modality, create=False)
        return None if idx is None else idx.meta.get(item_id)

    def compact(self) -> None:
        """Re-train vector indexes that outgrew their IVF training (``vector.retrain_growth``), then
        snapshot every open local index whose log grew (a timer calls it, between writes)."""
        for _, _, idx in self.opened():
            index = idx.index
            retrained = isinstance(index, VectorIndex) and index.compact()
            if retrained or idx.log_bytes:
                idx.compact()

    def close(self) -> None:
        for idx in self._open.values():
            idx.close()
        self._open.clear()
        self._split.clear()
