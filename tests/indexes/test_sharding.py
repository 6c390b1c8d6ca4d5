"""Sharding: a stable id hash, and merged shard answers equal to one index's."""

from __future__ import annotations

import numpy as np

from indexes.config import PdqIndexConfig, VectorIndexConfig
from indexes.pdq import PdqIndex
from indexes.sharding import merge_top_k, merge_within, shard_of
from indexes.vector import VectorIndex
from tests.indexes.conftest import clustered_vectors, flip_bits


def test_shard_of_is_stable_and_spread() -> None:
    assert shard_of("listing-123", 8) == shard_of("listing-123", 8)
    assert shard_of("L1", 1_000_003) == 335_565  # pinned: must never change across releases
    counts = np.bincount([shard_of(f"id{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 800


def test_vector_shards_equal_one_index() -> None:
    x = clustered_vectors(2000, 24, seed=1)
    ids = [f"id{i}" for i in range(len(x))]
    cfg = VectorIndexConfig(dim=24, quantization="none")
    one = VectorIndex(cfg)
    one.add(ids, x)
    shards = [VectorIndex(cfg) for _ in range(4)]
    for s, shard in enumerate(shards):
        mine = [i for i, name in enumerate(ids) if shard_of(name, 4) == s]
        shard.add([ids[i] for i in mine], x[mine])
    assert len({len(s) for s in shards}) > 1 and sum(len(s) for s in shards) == len(one)
    q = x[100:160]
    assert merge_top_k([s.search(q, 10) for s in shards], 10) == one.search(q, 10)
    assert merge_top_k([], 10) == []


def test_pdq_shards_equal_one_index() -> None:
    rng = np.random.default_rng(2)
    h = rng.integers(0, 256, (1500, 32), dtype=np.uint8)
    ids = [f"h{i}" for i in range(len(h))]
    one = PdqIndex(PdqIndexConfig())
    one.add(ids, h)
    shards = [PdqIndex(PdqIndexConfig()) for _ in range(3)]
    for s, shard in enumerate(shards):
        mine = [i for i, name in enumerate(ids) if shard_of(name, 3) == s]
        shard.add([ids[i] for i in mine], h[mine])
    q = np.stack([flip_bits(h[i], 10 + i % 25, rng) for i in range(40)])
    merged = merge_within([s.range_search(q) for s in shards])
    assert merged == one.range_search(q) and sum(map(len, merged)) >= 30  # flips past 31 bits miss
