"""Sharding: one logical index split into N shards by a stable hash of the id.

``shard_of`` uses blake2b (never Python's salted ``hash()``), so every process and every
node agrees where an id lives. A query fans out to every shard and the per-shard answers are
merged here: top-k by (similarity desc, id) and range results by (distance, id). That is the
answer one index holding everything gives, since each shard returns its own exact top-k and
the global top-k lies inside their union (up to the order of exact ties at the k-th place).
The service splits a large tenant's indexes this way over its ``index-shard`` deployments
(``serving/scoring/index_shards.py``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from indexes.ids import stable_hash64
from indexes.pdq import PdqHit
from indexes.vector import Hit


def shard_of(item_id: str, shards: int) -> int:
    """The shard of an id: stable across processes, machines and Python versions."""
    return stable_hash64(item_id) % shards


def merge_top_k(parts: Sequence[list[list[Hit]]], k: int) -> list[list[Hit]]:
    """Each query's ``k`` best hits over every shard's answer (shards answer the same queries)."""
    if not parts:
        return []
    return [heapq.nsmallest(k, (h for part in parts for h in part[qi]), key=lambda h: (-h.score, h.id))
            for qi in range(len(parts[0]))]


def merge_within(parts: Sequence[list[list[PdqHit]]]) -> list[list[PdqHit]]:
    """Each query's hits within a distance over every shard's answer, nearest first."""
    if not parts:
        return []
    return [sorted((h for part in parts for h in part[qi]), key=lambda h: (h.distance, h.id))
            for qi in range(len(parts[0]))]
