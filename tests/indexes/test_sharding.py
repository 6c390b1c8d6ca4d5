"""Sharding: a stable id hash, and the same answers as one index."""

from __future__ import annotations

import numpy as np

from indexes.config import PdqIndexConfig, VectorIndexConfig
from indexes.pdq import PdqIndex
from indexes.sharding import ShardedIndex, shard_of
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
    many = ShardedIndex(4, lambda _: VectorIndex(cfg))
    one.add(ids, x)
    many.add(ids, x)
    one.remove(ids[:100])
    many.remove(ids[:100])
    assert len(many) == len(one) == 1900 and "id5" not in many and "id500" in many
    assert {len(s) for s in many.shards} != {len(one)}
    q = x[100:160]
    assert many.search(q, 10) == one.search(q, 10)
    assert many.range_search(q, 0.8) == one.range_search(q, 0.8)


def test_pdq_shards_equal_one_index() -> None:
    rng = np.random.default_rng(2)
    h = rng.integers(0, 256, (1500, 32), dtype=np.uint8)
    ids = [f"h{i}" for i in range(len(h))]
    one = PdqIndex(PdqIndexConfig())
    many = ShardedIndex(3, lambda _: PdqIndex(PdqIndexConfig()))
    one.add(ids, h)
    many.add(ids, h)
    q = np.stack([flip_bits(h[i], 10 + i % 25, rng) for i in range(40)])
    assert many.range_search(q) == one.range_search(q)
