"""The set of record keys a batch job has accepted, at ~24 bytes a key.

The catalogue stage rejects a record whose ``(tenant, id)`` it has already seen. A
Python dict of those keys (a tuple of two strings and the first occurrence's
location string) held ~350 bytes a record: 350 MB of the driver over a 1M-row
catalogue, growing with it. :class:`SeenIds` keeps a 128-bit blake2b digest of each
key and a 64-bit tag of its first occurrence in an open-addressing table of numpy
arrays (load factor at most 0.7), so a million keys cost ~50 MB and no Python object
a key. Two different keys share a digest with probability ~n^2 / 2^129 (10^-27 at a
million keys).
"""

from __future__ import annotations

import hashlib

import numpy as np

_EMPTY = -1
_MAX_LOAD = 0.7


def key_digest(tenant: str, entity_id: str) -> tuple[int, int]:
    """The two 64-bit halves of a key's blake2b-128 digest (stable across processes).

    The tenant is length-prefixed, so no two (tenant, id) pairs encode alike.
    """
    d = hashlib.blake2b(f"{len(tenant)}:{tenant}{entity_id}".encode(), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


class SeenIds:
    """``(tenant, id)`` keys with a non-negative int tag for each (where it was first seen)."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        cap = 1 << max(4, (max(1, capacity) - 1).bit_length())
        self._alloc(cap)
        self._used = 0

    def _alloc(self, cap: int) -> None:
        self._a = np.zeros(cap, dtype=np.uint64)
        self._b = np.zeros(cap, dtype=np.uint64)
        self._tag = np.full(cap, _EMPTY, dtype=np.int64)
        # ndarray.data: a fresh memoryview of the array's buffer, like memoryview(arr) (numpy's stubs
        # declare ndarray's buffer protocol only for Python >= 3.12)
        self._va, self._vb, self._vt = self._a.data, self._b.data, self._tag.data
        self._mask = cap - 1

    def __len__(self) -> int:
        return self._used

    @property
    def nbytes(self) -> int:
        """Bytes the table holds."""
        return self._a.nbytes + self._b.nbytes + self._tag.nbytes

    def add(self, tenant: str, entity_id: str, tag: int) -> int | None:
        """Record a key first seen at ``tag``; if it was already there, its first tag instead."""
        if tag < 0:
            raise ValueError(f"tags are non-negative, got {tag}")
        a, b = key_digest(tenant, entity_id)
        va, vb, vt, mask = self._va, self._vb, self._vt, self._mask
        i = a & mask
        while vt[i] != _EMPTY:
            if va[i] == a and vb[i] == b:
                return int(vt[i])
            i = (i + 1) & mask
        va[i], vb[i], vt[i] = a, b, tag
        self._used += 1
        if self._used > _MAX_LOAD * (mask + 1):
            self._grow()
        return None

    def _grow(self) -> None:
        full = np.flatnonzero(self._tag != _EMPTY)
        a, b, tag = self._a[full], self._b[full], self._tag[full]
        for view in (self._va, self._vb, self._vt):
            view.release()
        self._alloc(2 * (self._mask + 1))
        va, vb, vt, mask = self._va, self._vb, self._vt, self._mask
        for x, y, t in zip(a.tolist(), b.tolist(), tag.tolist(), strict=True):
            i = x & mask
            while vt[i] != _EMPTY:
                i = (i + 1) & mask
            va[i], vb[i], vt[i] = x, y, t
