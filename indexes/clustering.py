"""Near-duplicate clustering: blockwise all-pairs search, union-find, incremental assignment.

* :func:`near_duplicate_pairs` finds every pair above a similarity threshold by
  range-searching the catalogue in blocks of ``block_size`` queries against an
  exact inner-product index, so memory is bounded by one block's results (never an
  N x N matrix).
* :func:`cluster` unions the pairs strongest first (Kruskal order) with a union-find.
* Giant-cluster guard: single linkage chains A~B~C~... into one blob through weak
  links. Once either side of a merge has ``guard_size`` members, the merge needs the
  link to be strong (``>= guard_threshold``) **or** the two clusters' centroids to be
  similar (``>= threshold``): a chain's far end drifts away from its centroid and
  stops there, while a genuinely tight group still merges.
* :class:`ClusterAssigner` assigns new items one at a time against an index of the
  items seen so far, applying the same guard.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import faiss
import numpy as np

from indexes.config import ClusteringConfig, VectorIndexConfig
from indexes.ids import check_ids
from indexes.vector import VectorIndex
from signals.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Pairs:
    """Near-duplicate pairs as parallel arrays of row numbers (a < b) and similarities."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise InvalidInput("vectors", f"expected a 2-d array, got shape {arr.shape}")
    return arr


def iter_pair_blocks(vectors: np.ndarray, threshold: float, block_size: int = 4096) -> Iterator[Pairs]:
    """Pairs with similarity >= threshold, one block of query rows at a time."""
    x = _unit_rows(vectors)
    if block_size < 1:
        raise InvalidInput("block_size", f"block_size must be >= 1, got {block_size!r}")
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
    for start in range(0, len(x), block_size):
        lims, sims, labels = index.range_search(x[start : start + block_size], radius)
        counts = np.diff(lims.astype(np.int64))
        rows = np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts)
        keep = labels > rows  # each unordered pair once, no self pairs
        yield Pairs(rows[keep], labels[keep], sims[keep])


def near_duplicate_pairs(vectors: np.ndarray, threshold: float, block_size: int = 4096) -> Pairs:
    """All near-duplicate pairs (the concatenation of :func:`iter_pair_blocks`)."""
    blocks = list(iter_pair_blocks(vectors, threshold, block_size))
    if not blocks:
        z = np.zeros(0, dtype=np.int64)
        return Pairs(z, z, np.zeros(0, dtype=np.float32))
    return Pairs(
        np.concatenate([p.a for p in blocks]),
        np.concatenate([p.b for p in blocks]),
        np.concatenate([p.score for p in blocks]),
    )


class UnionFind:
    """Disjoint sets with path halving, union by size, and per-set vector sums."""

    def __init__(self, n: int = 0, dim: int = 0) -> None:
        self.parent: list[int] = list(range(n))
        self.size: list[int] = [1] * n
        self.dim = dim
        self._sums: dict[int, np.ndarray] = {}  # roots of sets with >1 member
        self._vec: list[np.ndarray | None] = [None] * n

    def add(self, vector: np.ndarray | None = None) -> int:
        """A new singleton set; returns its element number."""
        self.parent.append(len(self.parent))
        self.size.append(1)
        self._vec.append(vector)
        return len(self.parent) - 1

    def set_vector(self, i: int, vector: np.ndarray) -> None:
        """Attach a singleton's vector (used for centroids)."""
        self._vec[i] = vector

    def find(self, i: int) -> int:
        """The root of i's set."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def centroid(self, root: int) -> np.ndarray | None:
        """The unit mean direction of a set (None without vectors)."""
        s = self._sums.get(root)
        if s is None:
            s = self._vec[root]
        if s is None:
            return None
        norm = float(np.linalg.norm(s))
        return s / norm if norm > 0 else s

    def union(self, a: int, b: int) -> int:
        """Merge the sets of a and b; returns the new root."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        sa = self._sums.pop(ra, None)
        sb = self._sums.pop(rb, None)
        va = sa if sa is not None else self._vec[ra]
        vb = sb if sb is not None else self._vec[rb]
        if va is not None and vb is not None:
            self._sums[ra] = np.asarray(va, dtype=np.float64) + vb
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra


def _guard_allows(uf: UnionFind, ra: int, rb: int, score: float, cfg: ClusteringConfig) -> bool:
    if max(uf.size[ra], uf.size[rb]) < cfg.guard_size or score >= cfg.guard_threshold:
        return True
    ca, cb = uf.centroid(ra), uf.centroid(rb)
    if ca is None or cb is None:
        return False
    return float(np.dot(ca, cb)) >= cfg.threshold


@dataclass
class ClusterResult:
    """Cluster labels (a representative row per cluster) and what the guard did."""

    labels: np.ndarray
    sizes: dict[int, int]
    pairs: int
    merges: int
    blocked: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def max_size(self) -> int:
        """The largest cluster."""
        return max(self.sizes.values()) if self.sizes else 0


def cluster(vectors: np.ndarray, config: ClusteringConfig | None = None) -> ClusterResult:
    """Connected components of the near-duplicate graph, strongest links first, guarded."""
    cfg = config or ClusteringConfig()
    x = _unit_rows(vectors)
    pairs = near_duplicate_pairs(x, cfg.threshold, cfg.block_size)
    uf = UnionFind(len(x), x.shape[1])
    for i in range(len(x)):
        uf.set_vector(i, x[i].astype(np.float64))
    order = np.argsort(-pairs.score, kind="stable")
    merges = blocked = 0
    for a, b, s in zip(
        pairs.a[order].tolist(), pairs.b[order].tolist(), pairs.score[order].tolist(), strict=True
    ):
        ra, rb = uf.find(a), uf.find(b)
        if ra == rb:
            continue
        if _guard_allows(uf, ra, rb, s, cfg):
            uf.union(ra, rb)
            merges += 1
        else:
            blocked += 1
    labels = np.fromiter((uf.find(i) for i in range(len(x))), dtype=np.int64, count=len(x))
    roots, counts = np.unique(labels, return_counts=True)
    sizes = dict(zip(roots.tolist(), counts.tolist(), strict=True))
    return ClusterResult(labels, sizes, len(pairs.a), merges, blocked)


class ClusterAssigner:
    """Incremental clustering: each new item joins (and may merge) existing clusters.

    Cluster ids are the id of a member chosen as representative; they change only
    when two clusters merge (the larger one's id wins).
    """

    def __init__(
        self, dim: int, config: ClusteringConfig | None = None, index: VectorIndex | None = None
    ) -> None:
        self.config = config or ClusteringConfig()
        self.index = index or VectorIndex(VectorIndexConfig(dim=dim, quantization="none"))
        self._uf = UnionFind(0, dim)
        self._elem: dict[str, int] = {}
        self._ids: list[str] = []
        self.blocked = 0

    def __len__(self) -> int:
        return len(self._ids)

    def cluster_of(self, item_id: str) -> str:
        """The cluster id of an item already assigned."""
        e = self._elem.get(item_id)
        if e is None:
            raise InvalidInput("id", f"unknown id {item_id!r}", "not_found")
        return self._ids[self._uf.find(e)]

    def cluster_size(self, item_id: str) -> int:
        """How many items share this item's cluster."""
        return self._uf.size[self._uf.find(self._elem[item_id])]

    def assign(self, ids: list[str], vectors: np.ndarray) -> list[str]:
        """Assign a batch, in order; returns each item's cluster id after the batch."""
        ids = check_ids(ids)
        for i in ids:
            if i in self._elem:
                raise InvalidInput("ids", f"{i!r} is already clustered")
        x = _unit_rows(vectors)
        if len(x) != len(ids):
            raise InvalidInput("vectors", f"{len(x)} vectors for {len(ids)} ids")
        cfg = self.config
        for item_id, v in zip(ids, x, strict=True):
            hits = self.index.range_search(v[None, :], cfg.threshold)[0]
            e = self._uf.add(v.astype(np.float64))
            self._elem[item_id] = e
            self._ids.append(item_id)
            for h in hits:  # strongest first
                ra, rb = self._uf.find(e), self._uf.find(self._elem[h.id])
                if ra == rb:
                    continue
                if _guard_allows(self._uf, ra, rb, h.score, cfg):
                    self._uf.union(ra, rb)
                else:
                    self.blocked += 1
            self.index.add([item_id], v[None, :])
        return [self.cluster_of(i) for i in ids]
