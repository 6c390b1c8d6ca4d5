"""Clustering: blockwise pairs vs brute force, union-find components, the giant-cluster guard."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from indexes.clustering import (
    ClusterAssigner,
    ClusterResult,
    Pairs,
    UnionFind,
    cluster,
    cluster_pairs,
    iter_pair_blocks,
    near_duplicate_pairs,
)
from indexes.config import ClusteringConfig
from signals.errors import InvalidInput
from tests.indexes.conftest import clustered_vectors, unit

NO_GUARD = ClusteringConfig(threshold=0.5, guard_size=10**6, guard_threshold=1.0)


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


def pairs_of(rows: list[tuple[int, int, float]]) -> Pairs:
    a, b, score = zip(*rows, strict=True) if rows else ((), (), ())
    return Pairs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(score, dtype=np.float32))


def partition(labels: np.ndarray) -> list[list[int]]:
    """Clusters as sorted lists of rows, independent of which row is the root."""
    groups: dict[int, list[int]] = {}
    for row, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(row)
    return sorted(groups.values())


def test_cluster_pairs_components_duplicates_reversed_and_self_pairs() -> None:
    rows = [(0, 1, 0.9), (2, 1, 0.8), (1, 2, 0.8), (4, 3, 0.95), (4, 3, 0.6), (5, 5, 0.99), (6, 6, 0.5)]
    res = cluster_pairs(8, pairs_of(rows), NO_GUARD)
    assert partition(res.labels) == [[0, 1, 2], [3, 4], [5], [6], [7]]
    assert res.pairs == len(rows) and res.merges == 3 and res.blocked == 0
    assert res.sizes == {int(res.labels[0]): 3, int(res.labels[3]): 2, 5: 1, 6: 1, 7: 1}
    assert res.max_size == 3
    assert set(res.labels.tolist()) <= set(range(8))  # a label is a member row


def test_cluster_pairs_empty_inputs() -> None:
    assert cluster_pairs(0, pairs_of([])).labels.tolist() == []
    res = cluster_pairs(3, pairs_of([]))
    assert res.labels.tolist() == [0, 1, 2] and res.max_size == 1 and res.merges == 0


def test_cluster_pairs_is_deterministic_under_shuffling_and_swapping() -> None:
    rng = np.random.default_rng(5)
    n, m = 400, 1500
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    score = rng.choice(np.float32([0.5, 0.7, 0.9, 0.99]), m)  # many ties
    strong = score >= 0.99
    cfg = ClusteringConfig(threshold=0.5, guard_size=8, guard_threshold=0.99)
    vectors = clustered_vectors(n, 16, seed=6, per=20, spread=0.6)
    want = cluster_pairs(n, Pairs(a, b, score), cfg, vectors=vectors, strong=strong)
    assert want.blocked > 0
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(m)
        swap = np.random.default_rng(seed + 10).random(m) < 0.5
        a2, b2 = np.where(swap, b, a)[perm], np.where(swap, a, b)[perm]
        got = cluster_pairs(n, Pairs(a2, b2, score[perm]), cfg, vectors=vectors, strong=strong[perm])
        assert np.array_equal(got.labels, want.labels)
        assert (got.merges, got.blocked) == (want.merges, want.blocked)


def chain_pairs(n: int, score: float = 0.95) -> Pairs:
    return pairs_of([(i, i + 1, score) for i in range(n - 1)])


def test_cluster_pairs_guard_with_strong_flags() -> None:
    n, cfg = 100, ClusteringConfig(threshold=0.5, guard_size=10, guard_threshold=0.99)
    p = chain_pairs(n)  # every score 0.95 < guard_threshold: weak by score
    assert cluster_pairs(n, p).max_size == 50  # defaults: guard_size 50, 0.95 < guard_threshold 0.97
    weak = cluster_pairs(n, p, cfg)
    assert weak.max_size == 10 and weak.blocked > 0  # no vectors: a guarded merge is refused
    strong = cluster_pairs(n, p, cfg, strong=np.ones(n - 1, dtype=bool))
    assert strong.max_size == n and strong.blocked == 0
    # the flags overrule the score both ways: a 0.999 link flagged weak stays weak
    p_high = chain_pairs(n, 0.999)
    assert cluster_pairs(n, p_high, cfg).max_size == n
    assert cluster_pairs(n, p_high, cfg, strong=np.zeros(n - 1, dtype=bool)).max_size == 10


def test_cluster_pairs_guard_with_vectors() -> None:
    x = chain()  # 200 points along a half circle, neighbours ~0.9999 similar
    p = chain_pairs(len(x), 0.95)
    cfg = ClusteringConfig(threshold=0.99, guard_size=20, guard_threshold=0.9999)
    on = cluster_pairs(len(x), p, cfg, vectors=x)
    assert 20 <= on.max_size < 60 and on.blocked > 0  # centroids let a tight run grow past 20
    tight = unit(np.ones((200, 16)) + 1e-3 * np.random.default_rng(0).standard_normal((200, 16)))
    assert cluster_pairs(200, p, cfg, vectors=tight).max_size == 200  # close centroids merge


def test_cluster_equals_cluster_pairs_over_near_duplicate_pairs() -> None:
    for seed in range(3):
        x = clustered_vectors(800, 16, seed=seed, per=60, spread=0.7)
        for cfg in (
            ClusteringConfig(threshold=0.75, guard_size=10, guard_threshold=0.9),
            ClusteringConfig(threshold=0.8, guard_size=10**6, guard_threshold=1.0),
        ):
            direct = cluster(x, cfg)
            pairs = near_duplicate_pairs(x, cfg.threshold)
            via = cluster_pairs(len(x), pairs, cfg, vectors=x)
            assert np.array_equal(direct.labels, via.labels)
            assert (direct.merges, direct.blocked) == (via.merges, via.blocked)


def test_cluster_pairs_reads_memmap_vectors(tmp_path: Path) -> None:
    x = chain()
    mm = np.memmap(tmp_path / "v.f32", dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.memmap(tmp_path / "v.f32", dtype=np.float32, mode="r", shape=x.shape)
    p = chain_pairs(len(x), 0.95)
    cfg = ClusteringConfig(threshold=0.99, guard_size=20, guard_threshold=0.9999)
    want = cluster_pairs(len(x), p, cfg, vectors=x)
    got = cluster_pairs(len(x), p, cfg, vectors=ro)
    assert np.array_equal(got.labels, want.labels) and got.blocked == want.blocked > 0


def test_labels_as_min_row() -> None:
    res = ClusterResult(np.array([7, 3, 7, 3, 9, 7, 6, 9, 8, 9]), pairs=0, merges=0)
    assert res.labels_as_min_row().tolist() == [0, 1, 0, 1, 4, 0, 6, 4, 8, 4]
    assert ClusterResult(np.zeros(0, dtype=np.int64), 0, 0).labels_as_min_row().tolist() == []
    # canonical whatever the union order: shuffled pairs give different roots, same min rows
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 300, 400), rng.integers(0, 300, 400)
    score = np.ones(400, dtype=np.float32)
    r1 = cluster_pairs(300, Pairs(a, b, score), NO_GUARD)
    r2 = cluster_pairs(300, Pairs(b, a, score), NO_GUARD)
    mins = r1.labels_as_min_row()
    assert np.array_equal(mins, r2.labels_as_min_row())
    for group in partition(r1.labels):
        assert set(mins[group].tolist()) == {min(group)}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pairs": Pairs(np.array([0, 1]), np.array([1]), np.array([0.9]))}, "pairs"),
        ({"pairs": Pairs(np.array([0]), np.array([5]), np.array([0.9]))}, "pairs.b"),
        ({"pairs": Pairs(np.array([-1]), np.array([2]), np.array([0.9]))}, "pairs.a"),
        ({"pairs": Pairs(np.array([0.0]), np.array([2]), np.array([0.9]))}, "pairs.a"),
        ({"pairs": Pairs(np.array([0]), np.array([2]), np.array([np.nan]))}, "pairs.score"),
        ({"strong": np.array([True, False])}, "strong"),
        ({"strong": np.array([1])}, "strong"),
        ({"vectors": np.ones((4, 3), dtype=np.float32)}, "vectors"),
        ({"vectors": np.ones(5, dtype=np.float32)}, "vectors"),
        ({"n": -1}, "n"),
    ],
)
def test_cluster_pairs_rejects_bad_input(kwargs: dict, field: str) -> None:
    args: dict = {"n": 5, "pairs": Pairs(np.array([0]), np.array([2]), np.array([0.9]))} | kwargs
    n, pairs = args.pop("n"), args.pop("pairs")
    with pytest.raises(InvalidInput) as err:
        cluster_pairs(n, pairs, **args)
    assert err.value.field == field


def test_union_find_growable_buffer_matches_array_source() -> None:
    x = clustered_vectors(100, 8, seed=3)
    fixed, grown = UnionFind(vectors=x), UnionFind(0, 8)
    for v in x:
        grown.add(v)
    assert len(grown) == len(fixed) == 100 and grown.dim == fixed.dim == 8
    for a, b in [(0, 1), (2, 3), (1, 3), (50, 99), (3, 99)]:
        assert fixed.union(a, b) == grown.union(a, b)
    r = fixed.find(0)
    assert fixed.set_size(0) == grown.set_size(0) == 6
    assert np.array_equal(fixed.centroid(r), grown.centroid(r))
    assert np.array_equal(fixed.roots(), grown.roots())
    assert grown.parent.dtype == np.int64 and fixed.parent.dtype == np.int32
    assert UnionFind(3).centroid(0) is None  # no vectors: no centroid
    with pytest.raises(InvalidInput):
        fixed.add(x[0])


def test_union_find_over_an_array_allocates_no_per_row_objects() -> None:
    x = np.ones((200_000, 8), dtype=np.float32)
    tracemalloc.start()
    try:
        uf = UnionFind(vectors=x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, peak  # int32 parent and size: ~1.6 MB; a list per row would be >10 MB
    assert uf.union(0, 199_999) == 0 and uf.set_size(199_999) == 2


@pytest.mark.parametrize("grown", [False, True])
def test_union_find_sums_only_big_sets_and_sums_small_ones_from_their_members(grown: bool) -> None:
    x = clustered_vectors(60, 8, seed=5)
    if grown:
        uf = UnionFind(0, 8, sums_from=4)
        for v in x:
            uf.add(v)
    else:
        uf = UnionFind(vectors=x, sums_from=4)
    rng = np.random.default_rng(0)
    for _ in range(40):
        uf.union(int(rng.integers(60)), int(rng.integers(60)))
    roots = uf.roots()
    for r in np.unique(roots).tolist():
        members = np.flatnonzero(roots == r)
        assert sorted(uf.members(r)) == members.tolist()  # the member cycles follow every merge
        assert uf.set_size(r) == len(members)
        mean = x[members].astype(np.float64).sum(axis=0)
        assert np.allclose(uf.centroid(r), mean / np.linalg.norm(mean))
        assert (r in uf._sums) == (len(members) >= 4)  # small sets keep no sum
    with pytest.raises(InvalidInput):
        UnionFind(3, sums_from=1)


def test_cluster_pairs_keeps_no_vector_sum_for_small_clusters() -> None:
    """A million-row catalogue has ~10^5 small clusters: a 384-d float64 sum each was ~3 KB
    a cluster (hundreds of MB); only clusters of guard_size or more may hold one now."""
    n = 40_000
    x = np.zeros((n, 384), dtype=np.float32)
    x[:, 0] = 1.0
    a = np.arange(0, n, 2)
    pairs = Pairs(a, a + 1, np.full(len(a), 0.9, dtype=np.float32))  # 20,000 clusters of two
    tracemalloc.start()
    try:
        result = cluster_pairs(n, pairs, ClusteringConfig(guard_size=50), vectors=x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.merges == n // 2
    assert peak < 20 * 2**20, peak  # the sums alone would be 20,000 x 3 KB = 61 MB


def test_cluster_pairs_orders_unsigned_integer_scores_like_floats() -> None:
    """Strongest first: a negated uint8 score wraps (-0 stays 0), which would apply the 0 link first."""
    x = np.zeros((4, 2), dtype=np.float32)
    x[:, 0] = 1.0
    pairs = Pairs(np.array([0, 1, 2]), np.array([1, 2, 3]), np.array([0, 200, 90], dtype=np.uint8))
    cfg = ClusteringConfig(guard_size=2, guard_threshold=1.0, threshold=0.5)
    weak = np.zeros(3, dtype=bool)  # no link is strong: the guard refuses every merge after the first
    as_uint = cluster_pairs(4, pairs, cfg, strong=weak)
    as_float = cluster_pairs(4, Pairs(pairs.a, pairs.b, pairs.score.astype(np.float32)), cfg, strong=weak)
    assert as_uint.merges == as_float.merges == 1  # only the strongest link (1-2) merges unguarded
    assert as_uint.labels_as_min_row().tolist() == as_float.labels_as_min_row().tolist() == [0, 1, 1, 3]
