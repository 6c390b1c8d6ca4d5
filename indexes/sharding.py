"""Sharding: one logical index split into N shards by a stable hash of the id.

``shard_of`` uses blake2b (never Python's salted ``hash()``), so every process and
every node agrees where an id lives. Queries fan out to every shard and the
per-shard results are merged: top-k by (similarity desc, id) and range results by
concatenation, which gives the same answer as one index holding everything (each
shard returns its own exact top-k, and the global top-k is inside their union).
The serving layer puts each shard in its own Ray actor; here they are in-process.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

from indexes.ids import stable_hash64
from indexes.pdq import PdqHit, PdqIndex
from indexes.vector import Hit, VectorIndex
from signals.errors import InvalidInput

S = TypeVar("S", VectorIndex, PdqIndex)


def shard_of(item_id: str, shards: int) -> int:
    """The shard of an id: stable across processes, machines and Python versions."""
    return stable_hash64(item_id) % shards


class ShardedIndex(Generic[S]):
    """N shards of a VectorIndex or PdqIndex behind one add/remove/search surface."""

    def __init__(self, shards: int, make_shard: Callable[[int], S]) -> None:
        if not isinstance(shards, int) or shards < 1:
            raise InvalidInput("shards", f"shards must be an int >= 1, got {shards!r}")
        self.shards: list[S] = [make_shard(i) for i in range(shards)]

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and item_id in self.shards[shard_of(item_id, len(self.shards))]

    def _split(self, ids: Sequence[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for pos, i in enumerate(ids):
            groups.setdefault(shard_of(i, len(self.shards)), []).append(pos)
        return groups

    def add(self, ids: list[str], data: np.ndarray | list[str]) -> None:
        """Route each item to its shard (validated as a whole batch first)."""
        first = self.shards[0]
        if isinstance(first, PdqIndex):
            ids, arr = first.prepare(ids, data)  # hashes as an array or hex strings
        else:
            ids, arr = first.prepare(ids, np.asarray(data))  # strings fail its dtype check
        for s, pos in self._split(ids).items():
            self.shards[s].add([ids[p] for p in pos], arr[pos])

    def remove(self, ids: list[str]) -> int:
        """Remove ids from their shards; returns how many were present."""
        return sum(self.shards[s].remove([ids[p] for p in pos]) for s, pos in self._split(ids).items())

    def _vector_shards(self) -> list[VectorIndex]:
        out: list[VectorIndex] = []
        for s in self.shards:
            if not isinstance(s, VectorIndex):
                raise InvalidInput("search", "top-k search needs vector shards; PDQ shards: range_search")
            out.append(s)
        return out

    def _pdq_shards(self) -> list[PdqIndex]:
        out: list[PdqIndex] = []
        for s in self.shards:
            if isinstance(s, PdqIndex):
                out.append(s)
        return out

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k over all shards (vector shards only)."""
        per_shard = [s.search(queries, k) for s in self._vector_shards()]
        out = []
        for qi in range(len(per_shard[0])):
            merged = heapq.nsmallest(
                k, (h for res in per_shard for h in res[qi]), key=lambda h: (-h.score, h.id)
            )
            out.append(merged)
        return out

    def range_search(
        self, queries: np.ndarray | list[str], threshold: float | int | None = None
    ) -> list[list[Hit]] | list[list[PdqHit]]:
        """Everything within the threshold, over all shards, best first."""
        pdq_shards = self._pdq_shards()
        if pdq_shards:
            t = None if threshold is None else int(threshold)
            parts_p = [s.range_search(queries, t) for s in pdq_shards]
            return [
                sorted((h for res in parts_p for h in res[qi]), key=lambda h: (h.distance, h.id))
                for qi in range(len(parts_p[0]))
            ]
        if threshold is None:
            raise InvalidInput("threshold", "a vector range search needs a similarity threshold")
        parts_v = [s.range_search(np.asarray(queries), float(threshold)) for s in self._vector_shards()]
        return [
            sorted((h for res in parts_v for h in res[qi]), key=lambda h: (-h.score, h.id))
            for qi in range(len(parts_v[0]))
        ]
