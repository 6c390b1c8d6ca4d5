"""Clustering: blockwise pairs vs brute force, union-find components, the giant-cluster guard."""

from __future__ import annotations

import numpy as np
import pytest

from indexes.clustering import ClusterAssigner, UnionFind, cluster, iter_pair_blocks, near_duplicate_pairs
from indexes.config import ClusteringConfig
from tests.indexes.conftest import clustered_vectors, unit


def brute_pairs(x: np.ndarray, t: float) -> set[tuple[int, int]]:
    s = x @ x.T
    a, b = np.nonzero(np.triu(s >= t, k=1))
    return set(zip(a.tolist(), b.tolist(), strict=True))


@pytest.mark.parametrize("block", [1, 37, 10_000])
def test_pairs_match_brute_force_for_any_block_size(block: int) -> None:
    x = clustered_vectors(600, 24, seed=1, per=10, spread=0.5)
    p = near_duplicate_pairs(x, 0.8, block)
    assert set(zip(p.a.tolist(), p.b.tolist(), strict=True)) == brute_pairs(x, 0.8)
    assert all(len(b.a) <= block * len(x) for b in iter_pair_blocks(x, 0.8, block))


def test_components_match_brute_force_union() -> None:
    x = clustered_vectors(500, 24, seed=2, per=10, spread=0.4)
    res = cluster(x, ClusteringConfig(threshold=0.8, guard_size=10**6, guard_threshold=1.0))
    uf = UnionFind(len(x))
    for a, b in brute_pairs(x, 0.8):
        uf.union(a, b)
    want = [uf.find(i) for i in range(len(x))]
    for i in range(len(x)):
        for j in range(i + 1, min(len(x), i + 30)):
            assert (res.labels[i] == res.labels[j]) == (want[i] == want[j])


def chain(n: int = 200, d: int = 16) -> np.ndarray:
    a, b = np.zeros(d), np.zeros(d)
    a[0], b[1] = 1, 1
    return unit(np.stack([np.cos(t) * a + np.sin(t) * b for t in np.linspace(0, np.pi, n)]))


def test_guard_stops_a_chain_but_keeps_tight_groups() -> None:
    x = chain()
    off = cluster(x, ClusteringConfig(threshold=0.99, guard_size=10**6, guard_threshold=1.0))
    on = cluster(x, ClusteringConfig(threshold=0.99, guard_size=20, guard_threshold=0.9999))
    assert off.max_size == 200  # single linkage chains end to end
    assert on.max_size < 60 and on.blocked > 0
    tight = clustered_vectors(300, 24, seed=3, per=100, spread=0.05)  # 3 tight groups of ~100
    t = cluster(tight, ClusteringConfig(threshold=0.9, guard_size=20, guard_threshold=0.99))
    assert sorted(t.sizes.values(), reverse=True)[0] >= 80


def test_incremental_assignment_agrees_with_batch() -> None:
    x = clustered_vectors(300, 24, seed=4, per=30, spread=0.3)
    cfg = ClusteringConfig(threshold=0.85, guard_size=10**6, guard_threshold=1.0)
    batch = cluster(x, cfg)
    inc = ClusterAssigner(24, cfg)
    ids = [f"i{k}" for k in range(len(x))]
    inc.assign(ids[:150], x[:150])
    inc.assign(ids[150:], x[150:])
    for i in range(0, 300, 7):
        for j in range(0, 300, 11):
            same_batch = batch.labels[i] == batch.labels[j]
            assert same_batch == (inc.cluster_of(ids[i]) == inc.cluster_of(ids[j]))


def test_incremental_guard_on_chain() -> None:
    cfg = ClusteringConfig(threshold=0.99, guard_size=20, guard_threshold=0.9999)
    inc = ClusterAssigner(16, cfg)
    x = chain()
    inc.assign([f"c{k}" for k in range(len(x))], x)
    assert inc.cluster_size("c0") < 60 and inc.blocked > 0
