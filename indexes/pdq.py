"""The PDQ binary index: 256-bit hashes (32 bytes), Hamming range search, string ids.

Structure (measured against FAISS's binary indexes in ``benchmarks/index.py``):

* rows live in one growable ``uint8[n, 32]`` array; a row's number is its private label;
* small indexes are scanned linearly (exact, popcount on four uint64 words a row);
* large ones add a **multi-index hash**: 16 tables, one per 16-bit chunk of the hash,
  each a counting-sorted ``int32`` row list plus 65,537 bucket offsets. If two hashes
  are within distance ``T``, some chunk differs in at most ``T // 16`` bits
  (pigeonhole), so probing each table's bucket and its neighbours within ``T // 16``
  bit flips finds every match: the result stays **exact** (17 probes a table at HMA's
  ``T = 31``). Cost: 32 + 16 x 4 = 96 bytes a hash, against >= 160 for FAISS's
  ``IndexBinaryMultiHash`` (int64 ids in hash maps) or ~160+ for ``IndexBinaryHNSW``.
* rows added after the last build sit in a tail that is scanned linearly, so an add
  is matchable the moment it returns; the tables are rebuilt once the tail passes
  ``max(tail_min, tail_fraction * n)`` rows.
* removal sets a tombstone; a rebuild drops dead rows once they pass
  ``compact_dead_fraction``.
* ids live in the compact :class:`~indexes.ids.IdMap` (~30-40 bytes an id, no Python
  object per id); a row's number is its id-map label, and the map's alive flags are
  the tombstones, so there is one source of truth. Compaction renumbers both together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexes.atomic import fsync_dir, read_snapshot_meta, write_bytes_atomic, write_json_atomic
from indexes.config import PdqIndexConfig
from indexes.ids import IdMap, check_ids
from signals.errors import InvalidInput
from signals.pdq_hash import PDQ_BYTES, hamming, pdq_from_hex

_FORMAT = "marketguard.pdq_index/2"  # /2: ids in ids.npz (compact IdMap), rows incl. dead
_TABLES = 16  # 16 chunks of 16 bits
_BUCKETS = 1 << 16


@dataclass(frozen=True, slots=True)
class PdqHit:
    """One match: the caller's id and the Hamming distance (0-256) to the query."""

    id: str
    distance: int


def _flip_masks(max_flips: int) -> np.ndarray:
    """All 16-bit masks with at most ``max_flips`` bits set."""
    all_keys = np.arange(_BUCKETS, dtype=np.uint16)
    return all_keys[np.bitwise_count(all_keys) <= max_flips]


class PdqIndex:
    """Exact Hamming range search over PDQ hashes keyed by string ids."""

    def __init__(self, config: PdqIndexConfig | None = None) -> None:
        self.config = config or PdqIndexConfig()
        self._hashes = np.zeros((1024, PDQ_BYTES), dtype=np.uint8)
        self._n = 0  # rows used (alive or dead) == self._ids.next_label
        self._ids = IdMap()  # label == row
        self._built = 0  # rows [0, _built) are in the tables
        self._order: np.ndarray | None = None  # int32[16, _built]
        self._starts: np.ndarray | None = None  # int64[16, 65537]
        self._masks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def ids(self) -> list[str]:
        """All ids currently in the index."""
        return self._ids.ids()

    # -------------------------------------------------------------- validation
    def prepare(self, ids: list[str], hashes: np.ndarray | list[str]) -> tuple[list[str], np.ndarray]:
        """Validate an add batch: ids plus uint8[n, 32] hashes or 64-hex strings."""
        ids = check_ids(ids)
        arr = self._check_hashes(hashes, "hashes")
        if arr.shape[0] != len(ids):
            raise InvalidInput("hashes", f"{arr.shape[0]} hashes for {len(ids)} ids")
        return ids, arr

    def _check_hashes(self, hashes: np.ndarray | list[str], field: str) -> np.ndarray:
        if isinstance(hashes, list | tuple) and (not hashes or isinstance(hashes[0], str)):
            if not hashes:
                return np.zeros((0, PDQ_BYTES), dtype=np.uint8)
            arr = np.stack([pdq_from_hex(h, f"{field}[{i}]") for i, h in enumerate(hashes)])
        else:
            arr = np.asarray(hashes)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != PDQ_BYTES:
            raise InvalidInput(
                field, f"expected uint8 shape (n, {PDQ_BYTES}), got {arr.dtype} {tuple(arr.shape)}"
            )
        return np.ascontiguousarray(arr)

    # --------------------------------------------------------------- mutations
    def add(self, ids: list[str], hashes: np.ndarray | list[str]) -> None:
        """Add (or replace) hashes; each is matchable when this returns."""
        ids, arr = self.prepare(ids, hashes)
        if not ids:
            return
        self.remove(ids)
        need = self._n + len(ids)
        if need > len(self._hashes):
            cap = max(need, 2 * len(self._hashes))
            grown = np.empty((cap, PDQ_BYTES), dtype=np.uint8)
            grown[: self._n] = self._hashes[: self._n]
            self._hashes = grown
        rows = self._ids.assign_batch(ids)
        if rows[0] != self._n or self._ids.next_label != need:
            raise RuntimeError(f"PDQ rows ({self._n}) and id-map labels ({rows[0]}) diverged")
        self._hashes[self._n : need] = arr
        self._n = need
        self._maybe_rebuild()

    def update(self, ids: list[str], hashes: np.ndarray | list[str]) -> None:
        """Replace the hashes of ids (same as :meth:`add`)."""
        self.add(ids, hashes)

    def remove(self, ids: list[str]) -> int:
        """Tombstone ids; unknown ids are ignored. Returns how many were removed."""
        count = int((self._ids.drop_batch(list(ids)) >= 0).sum())
        if count:
            self._maybe_rebuild()
        return count

    def get_hashes(self, ids: list[str]) -> np.ndarray:
        """The stored hashes of ids, uint8[n, 32]."""
        rows = self._ids.labels_of(list(ids))
        if (rows < 0).any():
            k = int(np.argmax(rows < 0))
            raise InvalidInput(f"ids[{k}]", f"unknown id {ids[k]!r}", "not_found")
        return self._hashes[rows].copy()

    def _maybe_rebuild(self) -> None:
        live = len(self._ids)
        dead = self._n - live
        if self._n and dead > self.config.compact_dead_fraction * self._n:
            self.compact()
            return
        tail = self._n - self._built
        if live > self.config.exact_max and tail > max(
            self.config.tail_min, self.config.tail_fraction * self._n
        ):
            self._build_tables()

    def compact(self) -> None:
        """Drop tombstoned rows and rebuild the tables (if the index is large)."""
        keep = self._ids.alive_labels()
        self._hashes = np.ascontiguousarray(self._hashes[keep])
        self._ids = self._ids.take(keep)
        self._n = len(keep)
        self._built, self._order, self._starts = 0, None, None
        if self._n > self.config.exact_max:
            self._build_tables()

    def _build_tables(self) -> None:
        n = self._n
        if len(self._hashes) > n + n // 8:
            # Give back the doubling slack: at 10M rows it would be ~40% of the memory.
            self._hashes = self._hashes[: n + n // 16].copy()
        keys = self._hashes[:n].view(np.uint16)  # [n, 16]
        order = np.empty((_TABLES, n), dtype=np.int32)
        starts = np.empty((_TABLES, _BUCKETS + 1), dtype=np.int64)
        for t in range(_TABLES):
            col = keys[:, t]
            order[t] = np.argsort(col, kind="stable").astype(np.int32)
            starts[t, 0] = 0
            np.cumsum(np.bincount(col, minlength=_BUCKETS), out=starts[t, 1:])
        self._order, self._starts, self._built = order, starts, n

    # ------------------------------------------------------------------ search
    def range_search(
        self, hashes: np.ndarray | list[str], threshold: int | None = None
    ) -> list[list[PdqHit]]:
        """Every stored hash within ``threshold`` bits of each query, nearest first."""
        t = self.config.threshold if threshold is None else threshold
        if not isinstance(t, int | np.integer) or not 0 <= t <= 256:
            raise InvalidInput("threshold", f"a Hamming threshold is an int in [0, 256], got {t!r}")
        q = self._check_hashes(hashes, "queries")
        return [self._query(row, int(t)) for row in q]

    def _query(self, q: np.ndarray, t: int) -> list[PdqHit]:
        parts_rows: list[np.ndarray] = []
        parts_dist: list[np.ndarray] = []
        alive = self._ids.alive_mask
        if self._built and self._order is not None and self._starts is not None:
            flips = t // _TABLES
            # Past 3 flips a table probes thousands of buckets: scanning is cheaper.
            full = flips >= 4
            cand = (np.arange(self._built, dtype=np.int64) if full
                    else self._candidates(q, flips, self._order, self._starts))
            d = hamming(self._hashes[cand], q)
            ok = (d <= t) & alive[cand]
            # A row can come from several tables; dedupe the few matches, not the candidates.
            rows_ok, first = np.unique(cand[ok], return_index=True)
            parts_rows.append(rows_ok)
            parts_dist.append(d[ok][first])
        if self._n > self._built:
            tail = np.arange(self._built, self._n, dtype=np.int64)
            d = hamming(self._hashes[self._built : self._n], q)
            ok = (d <= t) & alive[self._built : self._n]
            parts_rows.append(tail[ok])
            parts_dist.append(d[ok])
        if not parts_rows:
            return []
        rows = np.concatenate(parts_rows)
        dist = np.concatenate(parts_dist)
        names = self._ids.mapped_ids(rows)  # alive rows only
        hits = [PdqHit(i, dd) for i, dd in zip(names, dist.tolist(), strict=True)]
        hits.sort(key=lambda h: (h.distance, h.id))
        return hits

    def _candidates(self, q: np.ndarray, flips: int, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Rows with a 16-bit chunk at most ``flips`` bits from the query's same chunk,
        from the tables ``order`` and ``starts`` that :meth:`_build_tables` made."""
        masks = self._masks.get(flips)
        if masks is None:
            masks = self._masks[flips] = _flip_masks(flips)
        keys = q.view(np.uint16)  # [16]
        probes = (keys[:, None] ^ masks[None, :]).astype(np.int64)  # [16, P]
        tables = np.arange(_TABLES)[:, None]
        lo = starts[tables, probes].ravel()
        hi = starts[tables, probes + 1].ravel()
        lengths = hi - lo
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        # Flat positions into order.ravel(): each bucket's range, offset by its table.
        base = lo + np.repeat(np.arange(_TABLES, dtype=np.int64) * self._built, masks.size)
        ends = np.cumsum(lengths)
        pos = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
        pos += np.repeat(base, lengths)
        return order.ravel()[pos].astype(np.int64)

    def memory_bytes(self) -> int:
        """Bytes of hashes and tables (allocated; the id map is extra: :meth:`id_map_bytes`)."""
        total = self._hashes.nbytes
        if self._order is not None and self._starts is not None:
            total += self._order.nbytes + self._starts.nbytes
        return int(total)

    def id_map_bytes(self) -> int:
        """Bytes allocated by the string-id map (including its alive flags, the tombstones)."""
        return self._ids.memory_bytes()

    # ------------------------------------------------------------- persistence
    def save(self, directory: Path) -> None:
        """Write ``hashes.bin`` (raw rows, removed ones included), ``ids.npz`` and ``meta.json``.

        Each file is written atomically. Removed rows stay until :meth:`compact` (which
        runs by itself past ``compact_dead_fraction``), so rows and id labels stay aligned.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(directory / "hashes.bin", self._hashes[: self._n].tobytes())
        self._ids.save(directory / "ids.npz")
        meta = {"format": _FORMAT, "config": self.config.model_dump(), "rows": self._n}
        write_json_atomic(directory / "meta.json", meta)
        fsync_dir(directory)

    @classmethod
    def load(cls, directory: Path, config: PdqIndexConfig | None = None) -> PdqIndex:
        """Read what :meth:`save` wrote and rebuild the tables."""
        directory = Path(directory)
        meta: dict[str, Any] = read_snapshot_meta(directory, _FORMAT)
        self = cls(config or PdqIndexConfig.model_validate(meta["config"]))
        raw = np.frombuffer((directory / "hashes.bin").read_bytes(), dtype=np.uint8)
        ids = IdMap.load(directory / "ids.npz")
        n = ids.next_label
        if raw.size != n * PDQ_BYTES or meta.get("rows") != n:
            raise InvalidInput("hashes.bin", f"{raw.size} bytes for {n} rows of ids.npz")
        if n:
            self._hashes = raw.reshape(n, PDQ_BYTES).copy()
        self._ids, self._n = ids, n
        if len(ids) > self.config.exact_max:
            self._build_tables()
        return self
