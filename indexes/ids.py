"""The private map between the caller's string ids and FAISS's int64 ids, plus id helpers.

FAISS only knows int64 labels; callers only ever see their own string ids. Internal
ids are handed out sequentially and never reused while the map lives, so a stale
FAISS label can never be mistaken for a newer item.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

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


class IdMap:
    """Two-way map between string ids and sequential int64 labels."""

    def __init__(self) -> None:
        self._label: dict[str, int] = {}
        self._id: dict[int, str] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._label)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label

    def label(self, item_id: str) -> int | None:
        """The label of an id, or None when the id is not present."""
        return self._label.get(item_id)

    def assign(self, item_id: str) -> int:
        """A fresh label for a new id (the caller removed any previous one)."""
        if item_id in self._label:
            raise KeyError(item_id)
        lab = self._next
        self._next += 1
        self._label[item_id] = lab
        self._id[lab] = item_id
        return lab

    def drop(self, item_id: str) -> int | None:
        """Forget an id; returns its label, or None when it was absent."""
        lab = self._label.pop(item_id, None)
        if lab is not None:
            del self._id[lab]
        return lab

    def id_of(self, label: int) -> str | None:
        """The string id of a label, or None (a removed or unknown label)."""
        return self._id.get(label)

    def items(self) -> Iterable[tuple[str, int]]:
        """(id, label) pairs."""
        return self._label.items()

    def to_json(self) -> dict[str, object]:
        """A JSON-able form: ids and labels as two parallel lists."""
        ids = list(self._label.keys())
        return {"ids": ids, "labels": [self._label[i] for i in ids], "next": self._next}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> IdMap:
        """Rebuild from :meth:`to_json`."""
        m = cls()
        ids = data["ids"]
        labels = data["labels"]
        assert isinstance(ids, list) and isinstance(labels, list)
        for i, lab in zip(ids, labels, strict=True):
            m._label[str(i)] = int(lab)
            m._id[int(lab)] = str(i)
        nxt = data["next"]
        assert isinstance(nxt, int)
        m._next = nxt
        return m
