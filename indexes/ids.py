"""The private map between the caller's string ids and FAISS's int64 labels, plus id helpers.

FAISS only knows int64 labels; callers only ever see their own string ids. Labels are
handed out sequentially and never reused while a map lives, so a stale label can never
be mistaken for a newer item (a new map, e.g. after compaction, starts again at 0).

Memory is the point of this module: a ``dict[str, int]`` plus ``dict[int, str]`` costs
~190 bytes an id (two Python objects per entry and two hash tables), which alone broke
the memory goals at millions of items. :class:`IdMap` holds no Python object per id:

* ``_buf``: every id's UTF-8 bytes back to back in one growing ``uint8`` array;
* ``_off``: ``int64[next + 1]``; label ``l``'s bytes are ``_buf[_off[l]:_off[l + 1]]``;
* ``_alive``: ``bool[next]``, False once a label is dropped;
* ``_slots``: an open-addressing (linear probing) hash table, one ``int64`` a slot:
  ``fingerprint << 40 | label``, ``-1`` empty, ``-2`` a tombstone. The slot comes from the
  low bits of a 64-bit hash of the id's bytes and the 23-bit fingerprint from its top
  bits, so a probe rejects almost every other id without touching ``_buf``; a fingerprint
  match is then confirmed by comparing the stored bytes, so two ids whose hashes collide
  (in the slot, the fingerprint or all 64 bits) are still told apart.

For 12-byte ids that is 12 + 8 + 1 + 8 / load (load kept between 0.375 and 0.75) =
32-43 bytes an id. Growth doubles (amortised O(1)); a drop leaves a tombstone that the
next rehash clears, and the dropped id's bytes are reclaimed by :meth:`IdMap.vacuum` once
they are over half the buffer. The table is not saved: :meth:`IdMap.load` rebuilds it
from the ids (as fast as assigning them: 0.7-1.4M ids/s measured), so the on-disk form
does not depend on the hash.

Hashing is vectorised (ids zero-padded to rows of uint64 words, mixed with the splitmix64
finaliser, one numpy pass a word) rather than ``hashlib.blake2b`` per id, which costs a
Python call per id. Measured on 1M 8-byte ids both take ~0.5 s (encoding dominates),
but this one hands back the padded words that the byte comparison needs anyway, and a
test can inject a tiny hash to force collisions. The table never leaves the process,
so the hash only has to be deterministic here; :func:`stable_hash64` (blake2b) still
places ids on shards, where every process must agree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from indexes.atomic import write_file_atomic
from signals.errors import InvalidInput

# The record schemas' id rule (signals.schemas.ID_PATTERN), plus '/', so that bank items
# may carry namespaced ids such as "hma/123".
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]{0,127}$")


def check_ids(ids: Sequence[str], field: str = "ids") -> list[str]:
    """Validate a batch of ids: well-formed strings and no duplicates within the batch."""
    if isinstance(ids, str):
        raise InvalidInput(field, "expected a list of ids, got one string")
    out = list(ids)
    seen: set[str] = set()
    for i, item in enumerate(out):
        if not isinstance(item, str) or not _ID_RE.match(item):
            raise InvalidInput(
                f"{field}[{i}]", f"{item!r} is not an id (1-128 of letters, digits, . _ : @ / -)"
            )
        if item in seen:
            raise InvalidInput(f"{field}[{i}]", f"duplicate id {item!r} in the batch")
        seen.add(item)
    return out


def stable_hash64(item_id: str) -> int:
    """A 64-bit hash of an id that is the same in every process and on every machine.

    Python's ``hash()`` is salted per process, so it must never place data.
    """
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "big")


# ---------------------------------------------------------------------- hashing
Hasher = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(words uint64[n, w], lengths int64[n]) -> uint64[n]``: a hash of each padded id."""

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 that spreads every input bit."""
    h = (h ^ (h >> _S30)) * _C1
    h = (h ^ (h >> _S27)) * _C2
    return h ^ (h >> _S31)


def word_hash(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The default :data:`Hasher`: the length, then each 8-byte word, mixed in turn.

    A :data:`Hasher` must not depend on the zero padding past an id's length.
    """
    h = _mix(lengths.astype(np.uint64) * _C0)
    for j in range(words.shape[1]):
        # Only an id's own words: the padding width depends on the batch's longest id.
        h = np.where(lengths > 8 * j, _mix(h ^ words[:, j]), h)
    return h


def _pad_words(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int = 0) -> np.ndarray:
    """Each item's bytes zero-padded into a row of ``uint64`` words: ``[n, width]``."""
    n = len(lengths)
    if not width:
        width = max(1, (int(lengths.max()) + 7) // 8) if n else 1
    cols = np.arange(width * 8)
    if not len(buf):
        return np.zeros((n, width), dtype=np.uint64)
    # One 2-D gather (clipped at the buffer's end), then zero what lies past each id.
    idx = np.minimum(starts[:, None] + cols[None, :], len(buf) - 1)
    mat = buf[idx]
    mat[cols[None, :] >= lengths[:, None]] = 0
    return mat.view(np.uint64)


def _encode(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of a batch of ids back to back, and each id's length in bytes."""
    joined = "".join(ids)  # TypeError for a non-str
    data = joined.encode("utf-8")
    if len(data) == len(joined):  # all ASCII: byte lengths are str lengths
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    else:
        parts = [s.encode("utf-8") for s in ids]
        data = b"".join(parts)
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    return np.frombuffer(data, dtype=np.uint8), lengths


_EMPTY = -1
_TOMB = -2
_LABEL_BITS = 40
_LABEL_MASK = (1 << _LABEL_BITS) - 1
_FP_SHIFT = np.uint64(64 - 23)  # 23 fingerprint bits + 40 label bits: slots stay >= 0
_MAX_LOAD = 0.75  # linear probing stays short (~2.5 probes a hit) below this
_CHUNK = 1 << 16  # ids hashed / probed per numpy pass: bounds the temporaries
_FORMAT = 1


class IdMap:
    """Two-way map between string ids and sequential int64 labels, with no object per id.

    Batch methods (:meth:`assign_batch`, :meth:`labels_of`, :meth:`drop_batch`,
    :meth:`ids_of`) do the work in numpy; the single-item ones wrap them.
    """

    def __init__(self, hasher: Hasher = word_hash) -> None:
        self._hasher = hasher
        self._buf = np.empty(0, dtype=np.uint8)
        self._nbytes = 0
        self._off = np.zeros(1, dtype=np.int64)
        self._alive = np.zeros(0, dtype=bool)
        self._next = 0
        self._live = 0
        self._dead_bytes = 0
        self._slots = np.full(16, _EMPTY, dtype=np.int64)
        self._used = 0  # slots that are not empty: live entries plus tombstones

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self._live

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.label(item_id) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    @property
    def next_label(self) -> int:
        """The label the next new id gets (= labels handed out so far)."""
        return self._next

    @property
    def alive_mask(self) -> np.ndarray:
        """Read-only ``bool[next_label]``: whether each label is still mapped."""
        view = self._alive[: self._next].view()
        view.flags.writeable = False
        return view

    def alive_labels(self) -> np.ndarray:
        """Labels still mapped, ascending."""
        return np.flatnonzero(self._alive[: self._next]).astype(np.int64)

    def ids(self) -> list[str]:
        """All ids, in label order."""
        return self.mapped_ids(self.alive_labels())

    def items(self) -> list[tuple[str, int]]:
        """(id, label) pairs, in label order."""
        labels = self.alive_labels()
        return list(zip(self.mapped_ids(labels), labels.tolist(), strict=True))

    def memory_bytes(self) -> int:
        """Bytes allocated by the map's arrays."""
        return int(self._buf.nbytes + self._off.nbytes + self._alive.nbytes + self._slots.nbytes)

    # ------------------------------------------------------------ single items
    def label(self, item_id: str) -> int | None:
        """The label of an id, or None when the id is not present."""
        lab = int(self.labels_of([item_id])[0])
        return None if lab < 0 else lab

    def assign(self, item_id: str) -> int:
        """A fresh label for a new id; KeyError if the id is present."""
        return int(self.assign_batch([item_id])[0])

    def drop(self, item_id: str) -> int | None:
        """Forget an id; returns its label, or None when it was absent."""
        lab = int(self.drop_batch([item_id])[0])
        return None if lab < 0 else lab

    def id_of(self, label: int) -> str | None:
        """The string id of a label, or None (a dropped or unknown label)."""
        if not 0 <= label < self._next or not self._alive[label]:
            return None
        return self._buf[self._off[label] : self._off[label + 1]].tobytes().decode("utf-8")

    # ----------------------------------------------------------------- batches
    def labels_of(self, ids: Sequence[str]) -> np.ndarray:
        """``int64`` label of each id, ``-1`` where absent."""
        data, lengths = _encode(ids)
        starts = np.cumsum(lengths) - lengths
        out = np.empty(len(lengths), dtype=np.int64)
        for s in range(0, len(lengths), _CHUNK):
            e = min(len(lengths), s + _CHUNK)
            words = _pad_words(data, starts[s:e], lengths[s:e])
            h = self._hasher(words, lengths[s:e])
            out[s:e] = self._probe(words, lengths[s:e], h)[0]
        return out

    def assign_batch(self, ids: Sequence[str]) -> np.ndarray:
        """Fresh sequential labels for new ids; KeyError (and no change) if any is present."""
        n = len(ids)
        if not n:
            return np.zeros(0, dtype=np.int64)
        if len(set(ids)) != n:
            seen: set[str] = set()
            for i in ids:
                if i in seen:
                    raise KeyError(i)
                seen.add(i)
        if self._next + n > _LABEL_MASK:
            raise OverflowError(f"an IdMap holds at most {_LABEL_MASK} labels")
        data, lengths = _encode(ids)
        starts = np.cumsum(lengths) - lengths
        hashes = np.empty(n, dtype=np.uint64)
        for s in range(0, n, _CHUNK):  # check everything before changing anything
            e = min(n, s + _CHUNK)
            words = _pad_words(data, starts[s:e], lengths[s:e])
            hashes[s:e] = self._hasher(words, lengths[s:e])
            found = self._probe(words, lengths[s:e], hashes[s:e])[0]
            if (found >= 0).any():
                raise KeyError(ids[s + int(np.argmax(found >= 0))])
        labels = np.arange(self._next, self._next + n, dtype=np.int64)
        self._append(data, lengths)
        if self._used + n > _MAX_LOAD * len(self._slots):
            self._rehash(extra=n)
        self._insert(hashes, labels)
        return labels

    def drop_batch(self, ids: Sequence[str]) -> np.ndarray:
        """Forget ids; ``int64`` label of each, ``-1`` where absent (or repeated)."""
        data, lengths = _encode(ids)
        starts = np.cumsum(lengths) - lengths
        labels = np.empty(len(lengths), dtype=np.int64)
        slots = np.empty(len(lengths), dtype=np.int64)
        for s in range(0, len(lengths), _CHUNK):
            e = min(len(lengths), s + _CHUNK)
            words = _pad_words(data, starts[s:e], lengths[s:e])
            labels[s:e], slots[s:e] = self._probe(words, lengths[s:e], self._hasher(words, lengths[s:e]))
        hit = np.flatnonzero(labels >= 0)
        _, first = np.unique(labels[hit], return_index=True)
        repeated = np.setdiff1d(hit, hit[first], assume_unique=True)
        labels[repeated] = -1  # an id listed twice is dropped once
        keep = hit[first]
        if keep.size:
            self._slots[slots[keep]] = _TOMB
            self._alive[labels[keep]] = False
            self._live -= int(keep.size)
            self._dead_bytes += int(lengths[keep].sum())
            if self._dead_bytes > max(1 << 20, self._nbytes // 2):
                self.vacuum()
        return labels

    def ids_of(self, labels: Sequence[int] | np.ndarray) -> list[str | None]:
        """The id of each label (``None`` for a dropped, unknown or negative label)."""
        labs = np.asarray(labels, dtype=np.int64).ravel()
        ok = self._mapped(labs)
        parts = self._decode(labs[ok])
        if ok.all():
            return list[str | None](parts)
        out: list[str | None] = [None] * len(labs)
        for pos, item in zip(np.flatnonzero(ok).tolist(), parts, strict=True):
            out[pos] = item
        return out

    def mapped_ids(self, labels: Sequence[int] | np.ndarray) -> list[str]:
        """The id of each label, every one of which must be mapped (KeyError naming the first
        that is not): for labels that come from this map or from an index kept in step with it."""
        labs = np.asarray(labels, dtype=np.int64).ravel()
        ok = self._mapped(labs)
        if not ok.all():
            raise KeyError(int(labs[np.argmin(ok)]))
        return self._decode(labs)

    def _mapped(self, labs: np.ndarray) -> np.ndarray:
        ok = (labs >= 0) & (labs < self._next)
        ok[ok] = self._alive[labs[ok]]
        return ok

    def _decode(self, good: np.ndarray) -> list[str]:
        a, b = self._off[good], self._off[good + 1]
        lengths = b - a
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        src = np.repeat(a - (ends - lengths), lengths) + np.arange(total)
        raw = self._buf[src].tobytes()
        text = raw.decode("utf-8")
        bounds = [0, *ends.tolist()]
        if len(text) == len(raw):  # ASCII: byte offsets are str offsets
            return [text[bounds[k] : bounds[k + 1]] for k in range(len(good))]
        return [raw[bounds[k] : bounds[k + 1]].decode("utf-8") for k in range(len(good))]

    def take(self, labels: np.ndarray) -> IdMap:
        """A new map holding the ids of ``labels`` (alive), relabelled ``0..len-1`` in that order."""
        labs = np.asarray(labels, dtype=np.int64)
        if labs.size and not self._alive[labs].all():
            raise KeyError("take() of a dropped label")
        lengths = self._off[labs + 1] - self._off[labs]
        ends = np.cumsum(lengths)
        src = np.repeat(self._off[labs] - (ends - lengths), lengths) + np.arange(int(lengths.sum()))
        out = IdMap(self._hasher)
        out._append(self._buf[src], lengths)
        out._rehash(extra=0)
        return out

    def vacuum(self) -> None:
        """Give back the bytes of dropped ids (their labels stay, as empty, dropped ids)."""
        n = self._next
        lengths = np.where(self._alive[:n], np.diff(self._off[: n + 1]), 0)
        ends = np.cumsum(lengths)
        src = np.repeat(self._off[:n] - (ends - lengths), lengths) + np.arange(int(ends[-1]) if n else 0)
        self._buf = self._buf[src]
        self._nbytes = len(self._buf)
        self._off[1 : n + 1] = ends  # in place: _off keeps the capacity _alive has
        self._dead_bytes = 0

    # --------------------------------------------------------------- internals
    def _append(self, data: np.ndarray, lengths: np.ndarray) -> None:
        """Store new ids' bytes and offsets as labels ``next..next+n-1`` (no table update)."""
        n, nb = len(lengths), int(lengths.sum())
        if self._next + n > len(self._alive):
            cap = max(self._next + n, 2 * len(self._alive), 1024)
            # np.empty: pages of the doubling slack are not resident until written.
            off = np.empty(cap + 1, dtype=np.int64)
            off[: self._next + 1] = self._off[: self._next + 1]
            alive = np.empty(cap, dtype=bool)
            alive[: self._next] = self._alive[: self._next]
            self._off, self._alive = off, alive
        if self._nbytes + nb > len(self._buf):
            buf = np.empty(max(self._nbytes + nb, 2 * len(self._buf), 16 * 1024), dtype=np.uint8)
            buf[: self._nbytes] = self._buf[: self._nbytes]
            self._buf = buf
        self._buf[self._nbytes : self._nbytes + nb] = data
        self._off[self._next + 1 : self._next + n + 1] = self._nbytes + np.cumsum(lengths)
        self._alive[self._next : self._next + n] = True
        self._next += n
        self._nbytes += nb
        self._live += n

    def _probe(self, words: np.ndarray, lengths: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label, slot) of each id, ``-1`` where absent. Linear probing, all ids at once."""
        n = len(lengths)
        mask = len(self._slots) - 1
        pos = (h & np.uint64(mask)).astype(np.int64)
        fp = (h >> _FP_SHIFT).astype(np.int64)
        labels = np.full(n, -1, dtype=np.int64)
        slots = np.full(n, -1, dtype=np.int64)
        active = np.arange(n)
        while active.size:
            p = pos[active]
            s = self._slots[p]
            done = s == _EMPTY
            cand = np.flatnonzero((s >= 0) & ((s >> _LABEL_BITS) == fp[active]))
            if cand.size:
                who = active[cand]
                labs = s[cand] & _LABEL_MASK
                eq = self._equal(labs, words[who], lengths[who])
                labels[who[eq]] = labs[eq]
                slots[who[eq]] = p[cand[eq]]
                done[cand[eq]] = True
            active = active[~done]
            pos[active] = (pos[active] + 1) & mask
        return labels, slots

    def _equal(self, labels: np.ndarray, words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Whether the stored id of each label has exactly these (padded) bytes."""
        starts = self._off[labels]
        same = (self._off[labels + 1] - starts) == lengths
        out = np.zeros(len(labels), dtype=bool)
        if same.any():
            stored = _pad_words(self._buf, starts[same], lengths[same], words.shape[1])
            out[same] = (stored == words[same]).all(axis=1)
        return out

    def _insert(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        """Put absent, distinct ids in the table (the caller made room)."""
        mask = len(self._slots) - 1
        pos = (hashes & np.uint64(mask)).astype(np.int64)
        packed = ((hashes >> _FP_SHIFT).astype(np.int64) << _LABEL_BITS) | labels
        active = np.arange(len(labels))
        while active.size:
            p = pos[active]
            free = np.flatnonzero(self._slots[p] < 0)  # empty or tombstone
            # Several ids may want the same free slot this round: the first takes it.
            target, first = np.unique(p[free], return_index=True)
            winners = free[first]
            self._used += int((self._slots[target] == _EMPTY).sum())
            self._slots[target] = packed[active[winners]]
            placed = np.zeros(active.size, dtype=bool)
            placed[winners] = True
            active = active[~placed]
            pos[active] = (pos[active] + 1) & mask

    def _rehash(self, extra: int) -> None:
        """A fresh table for the live ids (the last ``extra`` labels are left to the caller)."""
        need = self._live  # includes any ids just appended
        cap = 16
        while need > _MAX_LOAD * cap:
            cap *= 2
        self._slots = np.full(cap, _EMPTY, dtype=np.int64)
        self._used = 0
        labels = self.alive_labels()
        if extra:  # the ids being assigned were appended already; the caller inserts them
            labels = labels[labels < self._next - extra]
        for s in range(0, len(labels), _CHUNK):
            labs = labels[s : s + _CHUNK]
            starts = self._off[labs]
            lengths = self._off[labs + 1] - starts
            self._insert(self._hasher(_pad_words(self._buf, starts, lengths), lengths), labs)

    # ------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Write the ids (bytes, offsets, alive flags) to ``path`` as ``.npz``, atomically; no pickle."""

        def write(f: BinaryIO) -> None:
            np.savez(
                f,
                header=np.array([_FORMAT, self._next], dtype=np.int64),
                offsets=self._off[: self._next + 1],
                alive=self._alive[: self._next],
                data=self._buf[: self._nbytes],
            )

        write_file_atomic(Path(path), write)

    @classmethod
    def load(cls, path: Path, hasher: Hasher = word_hash) -> IdMap:
        """Read what :meth:`save` wrote and rebuild the hash table."""
        with np.load(Path(path), allow_pickle=False) as z:
            header, off, alive, data = z["header"], z["offsets"], z["alive"], z["data"]
        field = Path(path).name
        if header.shape != (2,) or int(header[0]) != _FORMAT:
            raise InvalidInput(field, f"unknown id map format {header.tolist()!r}")
        n = int(header[1])
        if off.shape != (n + 1,) or alive.shape != (n,) or off.dtype != np.int64 or alive.dtype != bool:
            raise InvalidInput(field, f"{n} labels but offsets {off.shape}, alive {alive.shape}")
        if off[0] != 0 or off[-1] != len(data) or (np.diff(off) < 0).any():
            raise InvalidInput(field, "offsets are not a partition of the id bytes")
        m = cls(hasher)
        m._buf, m._off, m._alive = data.astype(np.uint8, copy=False), off, alive
        m._nbytes, m._next = len(data), n
        m._live = int(alive.sum())
        m._dead_bytes = int(np.diff(off)[~alive].sum())
        m._rehash(extra=0)
        return m
