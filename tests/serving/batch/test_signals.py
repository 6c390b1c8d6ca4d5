"""The outputs stage's in-memory structures: the partner lists and freeing memory between stages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from indexes.clustering import ClusterResult, Pairs
from serving.batch.memory_release import _malloc_trim, release_free_memory
from serving.batch.signals import Adjacency, ClusterPrices, Clusters


def _pairs(a: list[int], b: list[int], s: list[float]) -> Pairs:
    return Pairs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(s, dtype=np.float32))


def test_adjacency_lists_every_partner_both_ways_in_modality_then_pair_order() -> None:
    pairs = {"listing_text": _pairs([0, 0, 2], [1, 3, 3], [0.9, 0.8, 0.7]),
             "image_pdq": _pairs([1, 0], [3, 1], [0.95, 0.99])}
    adj = Adjacency(5, pairs)
    expected: dict[int, list[tuple[int, str, float]]] = {r: [] for r in range(5)}
    for name, p in pairs.items():  # both directions, modalities in order, then pair order
        for x, y in ((p.a, p.b), (p.b, p.a)):
            for u, v, s in zip(x.tolist(), y.tolist(), p.score.tolist(), strict=True):
                expected[u].append((v, name, s))
    for row in range(5):
        dst, mods, scores = adj.of(row)
        got = [(int(d), m, float(s)) for d, m, s in zip(dst, mods, scores, strict=True)]
        assert sorted(got, key=lambda t: (t[1] != "listing_text", t[0])) == \
            sorted(expected[row], key=lambda t: (t[1] != "listing_text", t[0]))
        assert [m for _, m, _ in got] == [m for _, m, _ in expected[row]]  # modality order kept
    assert adj.of(4)[0].size == 0 and adj.of(4)[1] == []
    assert adj.dst.dtype == np.int32 and adj.score.dtype == np.float32  # int32 rows: half the memory


def test_adjacency_without_pairs() -> None:
    adj = Adjacency(3, {})
    assert [adj.of(r)[0].size for r in range(3)] == [0, 0, 0]
    assert Adjacency(0, {}).starts.tolist() == [0]


def _anon_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon"))


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc's malloc_trim only")
def test_release_free_memory_hands_freed_heap_pages_back() -> None:
    """Many small freed arrays with a few survivors pin the glibc heap; trimming returns the rest."""
    blocks = [np.ones(512, dtype=np.float64) for _ in range(60_000)]  # 4 KB each: heap, not mmap
    keep = blocks[::500]
    del blocks
    before = _anon_kb()
    release_free_memory()
    after = _anon_kb()
    assert before - after > 100 * 1024, (before, after)  # ~240 MB freed; most of it handed back
    assert len(keep) == 120


def test_cluster_prices_leave_the_member_out_in_small_clusters_and_share_one_in_big() -> None:
    prices = pa.chunked_array([pa.array([10.0, 20.0, 30.0, None, 40.0, 50.0] + [100.0] * 60)])
    currencies = pa.chunked_array([pa.array(["USD", "USD", "USD", "USD", "EUR", "USD"] + ["USD"] * 60)])
    refs = ClusterPrices(prices, currencies)
    small = np.arange(6)  # row 3 has no price, row 4 another currency: neither counts
    ref = refs.get(0, 0, "USD", small)
    assert ref is not None and ref.n == 3 and ref.median == pytest.approx(30.0)  # 20, 30, 50: not its own 10
    big = np.arange(6, 66)
    first = refs.get(6, 6, "USD", big)
    assert first is not None and first.n == 60 and first.median == pytest.approx(100.0)
    assert refs.get(6, 65, "USD", big) is first  # computed once per cluster


def test_cluster_member_rows_are_grouped_by_cluster_rows_ascending_singletons_left_out() -> None:
    root = np.array([0, 1, 0, 3, 1, 5, 0, 3])  # clusters {0,2,6}, {1,4}, {3,7}; 5 alone
    clusters = Clusters(ClusterResult(root, 0, 0), root, np.bincount(root, minlength=8)[root])
    rows = clusters.member_rows()
    assert rows.tolist() == [0, 2, 6, 1, 4, 3, 7]
    lo, hi = np.searchsorted(root[rows], (1, 2))
    assert rows[lo:hi].tolist() == [1, 4]  # one cluster's members: a slice
