"""Near-duplicate clustering: blockwise all-pairs search, union-find, incremental assignment.

* :func:`near_duplicate_pairs` finds every pair above a similarity threshold by
  range-searching the catalogue in blocks of ``block_size`` queries against an
  exact inner-product index, so memory is bounded by one block's results (never an
  N x N matrix).
* :func:`cluster_pairs` clusters rows 0..n-1 from pairs found elsewhere (text pairs
  from a pair scorer, PDQ or SSCD image pairs, any mix), strongest first (Kruskal
  order), with a union-find whose memory is numpy arrays only: a few bytes a row,
  vectors read lazily from an array or memmap. :func:`cluster` is
  :func:`near_duplicate_pairs` followed by :func:`cluster_pairs`.
* Giant-cluster guard: single linkage chains A~B~C~... into one blob through weak
  links. Once either side of a merge has ``guard_size`` members, the merge needs the
  link to be strong (``>= guard_threshold``, or the caller's per-pair flag) **or**
  the two clusters' centroids to be similar (``>= threshold``): a chain's far end
  drifts away from its centroid and stops there, while a genuinely tight group
  still merges.
* :class:`ClusterAssigner` assigns new items one at a time against an index of the
  items seen so far, applying the same guard.
"""

from __future__ import annotations

import math
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
        bounds = lims.astype(np.int64)
        counts = bounds[1:] - bounds[:-1]
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
    """Disjoint sets with path halving, union by size, and per-set vector sums.

    Vectors come from one of two sources, never a Python object per element:

    * ``vectors``: an N x d array (``np.ndarray`` or ``np.memmap``) of unit rows,
      read lazily one row at a time, only when a centroid is needed; the set count
      is fixed at N.
    * ``add(vector)``: rows appended to a float32 buffer that doubles when full
      (:class:`ClusterAssigner` grows its sets this way).

    ``parent``, ``size`` and ``next`` (each set's members as a circular list) are
    numpy int arrays (int32 when N is known and fits, int64 when growable); the hot
    loops index them through memoryviews, which give plain Python ints at list
    speed. A float64 vector sum is kept only for the roots of sets with at least
    ``sums_from`` members (the clustering guard's size: only those sets are asked
    for centroids often); a smaller set's centroid is summed from its members when
    asked. So the sums cost at most ``N / sums_from`` vectors, however many small
    clusters there are (a sum for every multi-member set was ~3 KB a cluster at
    384 dimensions: hundreds of MB over a million-row catalogue).
    """

    def __init__(self, n: int = 0, dim: int = 0, *, vectors: np.ndarray | None = None,
                 sums_from: int = 2) -> None:
        if vectors is not None:
            if getattr(vectors, "ndim", None) != 2:
                raise InvalidInput("vectors", f"expected a 2-d array, got shape {np.shape(vectors)}")
            if n not in (0, len(vectors)):
                raise InvalidInput("vectors", f"{len(vectors)} rows for n={n}")
            n, dim = len(vectors), int(vectors.shape[1])
        if n < 0:
            raise InvalidInput("n", f"n must be >= 0, got {n!r}")
        self.dim = dim
        self._n = n
        self._src = vectors
        self._growable = vectors is None
        dtype = np.int64 if self._growable or n >= 2**31 else np.int32
        if sums_from < 2:
            raise InvalidInput("sums_from", f"sums_from must be >= 2, got {sums_from!r}")
        self._parent = np.arange(n, dtype=dtype)
        self._size = np.ones(n, dtype=dtype)
        self._next = np.arange(n, dtype=dtype)  # circular member lists
        self._buf: np.ndarray | None = None  # float32 rows appended by add()
        self._has = np.zeros(n if self._growable else 0, dtype=bool)  # buffer row is set
        self._sums_from = sums_from
        self._sums: dict[int, np.ndarray] = {}  # roots of sets with >= sums_from members
        self._views()

    def _views(self) -> None:
        # ``.data`` is the array's memoryview (typed as one: numpy's stubs give ndarray no
        # buffer protocol below Python 3.12).
        self._p = self._parent.data
        self._s = self._size.data
        self._nx = self._next.data

    def __len__(self) -> int:
        return self._n

    @property
    def parent(self) -> np.ndarray:
        """Parent pointers (a read-only view; roots point to themselves)."""
        v = self._parent[: self._n]
        v.flags.writeable = False
        return v

    @property
    def size(self) -> np.ndarray:
        """Set sizes, meaningful at roots (a read-only view)."""
        v = self._size[: self._n]
        v.flags.writeable = False
        return v

    def set_size(self, i: int) -> int:
        """How many members i's set has."""
        return self._s[self.find(i)]

    def add(self, vector: np.ndarray | None = None) -> int:
        """A new singleton set, optionally with its vector; returns its element number."""
        if not self._growable:
            raise InvalidInput("vector", "this UnionFind reads a fixed vectors array; add() is not allowed")
        i = self._n
        if i == len(self._parent):
            self._grow(max(16, 2 * i))
        if vector is not None:
            v = np.asarray(vector, dtype=np.float32).reshape(-1)
            if self._buf is None:
                self.dim = self.dim or len(v)
                self._buf = np.zeros((len(self._parent), self.dim), dtype=np.float32)
            if len(v) != self.dim:
                raise InvalidInput("vector", f"expected {self.dim} dimensions, got {len(v)}")
            self._buf[i] = v
            self._has[i] = True
        self._p[i] = i
        self._s[i] = 1
        self._nx[i] = i
        self._n = i + 1
        return i

    def _grow(self, cap: int) -> None:
        for view in (self._p, self._s, self._nx):
            view.release()
        n = self._n
        parent, size, nxt = (np.empty(cap, dtype=self._parent.dtype) for _ in range(3))
        parent[:n], size[:n], nxt[:n] = self._parent[:n], self._size[:n], self._next[:n]
        has = np.zeros(cap, dtype=bool)
        has[:n] = self._has[:n]
        self._parent, self._size, self._next, self._has = parent, size, nxt, has
        if self._buf is not None:
            buf = np.zeros((cap, self.dim), dtype=np.float32)
            buf[:n] = self._buf[:n]
            self._buf = buf
        self._views()

    def find(self, i: int) -> int:
        """The root of i's set."""
        p = self._p
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def roots(self) -> np.ndarray:
        """Every element's root, resolved with numpy pointer jumping (no per-element calls)."""
        r = self._parent[: self._n].astype(np.int64)
        while True:
            nxt = r[r]
            if np.array_equal(nxt, r):
                return r
            r = nxt

    def members(self, i: int) -> list[int]:
        """Every element of i's set (walks its member list: O(set size))."""
        nx, out, j = self._nx, [i], self._nx[i]
        while j != i:
            out.append(j)
            j = nx[j]
        return out

    def _sum(self, root: int) -> np.ndarray | None:
        """The float64 vector sum of a set: cached at big roots, else summed from its members."""
        s = self._sums.get(root)
        if s is not None:
            return s
        if self._src is None and self._buf is None:
            return None
        rows = self.members(root) if self._s[root] > 1 else [root]
        if self._src is not None:
            rows.sort()  # memmap reads in file order
            return np.asarray(self._src[rows], dtype=np.float64).sum(axis=0)
        if self._buf is None or not self._has[rows].all():
            return None
        return self._buf[rows].astype(np.float64).sum(axis=0)

    def centroid(self, root: int) -> np.ndarray | None:
        """The unit mean direction of a set (None without vectors)."""
        s = self._sum(root)
        if s is None:
            return None
        norm = math.sqrt(float(s @ s))  # what np.linalg.norm computes for a 1-d vector, minus overhead
        return s / norm if norm > 0 else s

    def union(self, a: int, b: int) -> int:
        """Merge the sets of a and b; returns the new root."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        size = self._s
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        if size[ra] + size[rb] >= self._sums_from:
            va, vb = self._sum(ra), self._sum(rb)
            if va is not None and vb is not None:
                self._sums[ra] = va + vb
        self._sums.pop(rb, None)
        nx = self._nx
        nx[ra], nx[rb] = nx[rb], nx[ra]  # splice the two member cycles into one
        self._p[rb] = ra
        size[ra] += size[rb]
        return ra


def _guard_allows(uf: UnionFind, ra: int, rb: int, strong: bool, cfg: ClusteringConfig) -> bool:
    """May roots ra and rb merge? Small sets always; guarded ones on a strong link or close centroids."""
    size = uf._s
    if strong or max(size[ra], size[rb]) < cfg.guard_size:
        return True
    ca, cb = uf.centroid(ra), uf.centroid(rb)
    if ca is None or cb is None:
        return False
    return float(np.dot(ca, cb)) >= cfg.threshold


@dataclass
class ClusterResult:
    """Cluster labels (a representative row per cluster) and what the guard did.

    ``labels[i]`` is the root row of row i's cluster; which member is the root depends
    on the merge order, so use :meth:`labels_as_min_row` for a canonical label.
    """

    labels: np.ndarray
    pairs: int
    merges: int
    blocked: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[int, int]:
        """Members per cluster label, singletons included.

        Built on demand (one dict entry per cluster, so avoid it at millions of rows;
        :meth:`cluster_sizes` is the numpy equivalent).
        """
        roots, counts = self.cluster_sizes()
        return dict(zip(roots.tolist(), counts.tolist(), strict=True))

    def cluster_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, member counts) of every cluster, labels ascending."""
        return np.unique(self.labels, return_counts=True)

    @property
    def max_size(self) -> int:
        """The largest cluster."""
        return int(self.cluster_sizes()[1].max()) if len(self.labels) else 0

    def labels_as_min_row(self) -> np.ndarray:
        """A canonical label per row: the smallest row number in its cluster.

        Independent of the union order (two runs that find the same clusters give the
        same labels). Vectorised: one stable sort by label, O(n log n).
        """
        labels = np.asarray(self.labels)
        n = len(labels)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(labels, kind="stable")  # rows ascending within each cluster
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        counts = np.diff(np.r_[starts, n])
        out = np.empty(n, dtype=np.int64)
        out[order] = np.repeat(order[starts], counts)  # the first row of a group is its min
        return out


def _check_pairs(n: int, pairs: Pairs, strong: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    a, b, score = (np.asarray(v).reshape(-1) for v in (pairs.a, pairs.b, pairs.score))
    for name, v in (("pairs.a", a), ("pairs.b", b)):
        if len(v) and v.dtype.kind not in "iu":
            raise InvalidInput(name, f"row numbers must be integers, got dtype {v.dtype}")
    if not len(a) == len(b) == len(score):
        raise InvalidInput("pairs", f"lengths differ: a={len(a)}, b={len(b)}, score={len(score)}")
    for name, v in (("pairs.a", a), ("pairs.b", b)):
        if len(v) and (int(v.min()) < 0 or int(v.max()) >= n):
            raise InvalidInput(name, f"row numbers must be in [0, {n}), got {int(v.min())}..{int(v.max())}")
    if len(score) and score.dtype.kind not in "iuf":
        raise InvalidInput("pairs.score", f"scores must be numbers, got dtype {score.dtype}")
    if len(score) and not np.isfinite(score).all():
        raise InvalidInput("pairs.score", "scores must be finite (no NaN or inf)")
    if strong is not None:
        strong = np.asarray(strong).reshape(-1)
        if len(strong) != len(a):
            raise InvalidInput("strong", f"{len(strong)} flags for {len(a)} pairs")
        if len(strong) and strong.dtype != bool:
            raise InvalidInput("strong", f"expected booleans, got dtype {strong.dtype}")
    row = np.int32 if n < 2**31 else np.int64  # half the sort's memory at millions of pairs
    return a.astype(row, copy=False), b.astype(row, copy=False), score, strong


def cluster_pairs(
    n: int,
    pairs: Pairs,
    config: ClusteringConfig | None = None,
    *,
    vectors: np.ndarray | None = None,
    strong: np.ndarray | None = None,
) -> ClusterResult:
    """Cluster rows 0..n-1 from a list of pairs: union-find, strongest first, guarded.

    ``pairs`` holds row numbers in [0, n) in either order, duplicates allowed; self
    pairs (a == b) are ignored. They are applied in a deterministic order: score
    descending, then (min row, max row), then strong links first, so shuffling the
    input or swapping a and b does not change the result.

    Guard: once either side has ``guard_size`` members, a merge needs a strong link,
    ``strong[i]`` when given (pairs from several modalities have scores on different
    scales, so the caller decides), else ``score >= guard_threshold``; or the two
    clusters' centroids, from ``vectors`` (an N x d array or memmap of unit rows, read
    row by row), to have cosine >= ``threshold``. Without ``vectors`` such a merge is
    refused.

    Memory: numpy arrays only: 12 bytes a row for the union-find (int32 parent, size
    and member list), a float64 vector sum per cluster of ``guard_size`` or more
    members when ``vectors`` is given (smaller ones are summed when asked), the
    sorted pairs (int32 rows below 2^31 rows), and int64 labels resolved with numpy
    pointer jumping; pairs are walked in chunks so the Python lists stay bounded.
    """
    cfg = config or ClusteringConfig()
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise InvalidInput("n", f"n must be an integer >= 0, got {n!r}")
    n = int(n)
    a, b, score, flags = _check_pairs(n, pairs, strong)
    n_pairs = len(a)
    if vectors is not None:
        if getattr(vectors, "ndim", None) != 2 or len(vectors) != n:
            raise InvalidInput("vectors", f"expected an array of {n} rows, got shape {np.shape(vectors)}")
        uf = UnionFind(vectors=vectors, sums_from=cfg.guard_size)
    else:
        uf = UnionFind(n)
    if flags is None:
        flags = score >= cfg.guard_threshold
    keep = a != b
    lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    score, flags = score[keep], flags[keep]
    del a, b, keep  # the row copies: at millions of pairs, each one is tens of MB
    # lexsort's last key is the primary one: score desc, then (lo, hi), then strong first.
    # Negating in the scores' own float type keeps their order exactly (integers: float64,
    # so unsigned ones cannot wrap).
    order = np.lexsort((~flags, hi, lo, -(score if score.dtype.kind == "f" else score.astype(np.float64))))
    del score
    lo, hi, flags = lo[order], hi[order], flags[order]
    del order
    merges = blocked = 0
    chunk = 1 << 16  # bounded Python lists, whatever the number of pairs
    for start in range(0, len(lo), chunk):
        end = start + chunk
        for x, y, s in zip(
            lo[start:end].tolist(), hi[start:end].tolist(), flags[start:end].tolist(), strict=True
        ):
            rx, ry = uf.find(x), uf.find(y)
            if rx == ry:
                continue
            if _guard_allows(uf, rx, ry, s, cfg):
                uf.union(rx, ry)
                merges += 1
            else:
                blocked += 1
    return ClusterResult(uf.roots(), n_pairs, merges, blocked)


def cluster(vectors: np.ndarray, config: ClusteringConfig | None = None) -> ClusterResult:
    """Connected components of the near-duplicate graph, strongest links first, guarded."""
    cfg = config or ClusteringConfig()
    x = _unit_rows(vectors)
    pairs = near_duplicate_pairs(x, cfg.threshold, cfg.block_size)
    return cluster_pairs(len(x), pairs, cfg, vectors=x)


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
        self._uf = UnionFind(0, dim, sums_from=self.config.guard_size)
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
        return self._uf.set_size(self._elem[item_id])

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
            e = self._uf.add(v)
            self._elem[item_id] = e
            self._ids.append(item_id)
            for h in hits:  # strongest first
                ra, rb = self._uf.find(e), self._uf.find(self._elem[h.id])
                if ra == rb:
                    continue
                if _guard_allows(self._uf, ra, rb, h.score >= cfg.guard_threshold, cfg):
                    self._uf.union(ra, rb)
                else:
                    self.blocked += 1
            self.index.add([item_id], v[None, :])
        return [self.cluster_of(i) for i in ids]
