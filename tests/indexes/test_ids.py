"""The compact id map: against a plain dict reference, forced hash collisions, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexes.ids import IdMap
from signals.errors import InvalidInput


def zero_hash(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every id collides: same slot, same fingerprint, same 64 bits."""
    return np.zeros(len(lengths), dtype=np.uint64)


def tiny_hash(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Three hash values in all: long collision chains that interleave."""
    return (words[:, 0] % np.uint64(3)) * np.uint64(0x9E3779B97F4A7C15)


class Reference:
    """What IdMap must behave like: two dicts and a counter."""

    def __init__(self) -> None:
        self.label: dict[str, int] = {}
        self.id: dict[int, str] = {}
        self.next = 0

    def assign(self, ids: list[str]) -> list[int]:
        out = []
        for i in ids:
            self.label[i] = self.next
            self.id[self.next] = i
            out.append(self.next)
            self.next += 1
        return out

    def drop(self, ids: list[str]) -> list[int]:
        out = []
        for i in ids:
            lab = self.label.pop(i, None)
            if lab is not None:
                del self.id[lab]
            out.append(-1 if lab is None else lab)
        return out


def check_same(m: IdMap, ref: Reference, universe: list[str]) -> None:
    assert len(m) == len(ref.label)
    assert m.next_label == ref.next
    assert m.labels_of(universe).tolist() == [ref.label.get(i, -1) for i in universe]
    assert m.ids_of(np.arange(-1, ref.next + 2)) == [ref.id.get(lab) for lab in range(-1, ref.next + 2)]
    assert m.ids() == [ref.id[lab] for lab in sorted(ref.id)]
    assert m.items() == sorted(ref.label.items(), key=lambda kv: kv[1])
    assert m.alive_labels().tolist() == sorted(ref.id)
    assert set(m) == set(ref.label)
    for i in universe[:50]:
        assert (i in m) == (i in ref.label)
        assert m.label(i) == ref.label.get(i)


@pytest.mark.parametrize("hasher", [None, tiny_hash, zero_hash], ids=["default", "tiny", "zero"])
def test_random_operations_match_a_dict(hasher: object) -> None:
    rng = np.random.default_rng(0)
    size = 3000 if hasher is None else 120  # a zero hash makes every lookup a full scan
    universe = [f"item-{k}" + "x" * int(rng.integers(0, 30)) for k in range(size)]
    m = IdMap() if hasher is None else IdMap(hasher)  # type: ignore[arg-type]
    ref = Reference()
    for step in range(40):
        absent = [i for i in universe if i not in ref.label]
        present = [i for i in universe if i in ref.label]
        add = [absent[k] for k in rng.permutation(len(absent))[: int(rng.integers(0, size // 10))]]
        assert m.assign_batch(add).tolist() == ref.assign(add)
        drop = [universe[k] for k in rng.integers(0, size, int(rng.integers(0, size // 15)))]
        drop += present[:2] * 2  # an id listed twice is dropped once
        assert m.drop_batch(drop).tolist() == ref.drop(drop)
        if step % 10 == 9:
            m.vacuum()
        check_same(m, ref, universe)


def test_labels_are_never_reused() -> None:
    m = IdMap()
    assert m.assign("a") == 0 and m.assign("b") == 1
    assert m.drop("a") == 0 and m.drop("a") is None
    assert m.assign("a") == 2  # re-added: a new label, the old one stays dead
    assert m.id_of(0) is None and m.id_of(2) == "a" and m.label("a") == 2


def test_assign_of_a_present_or_repeated_id_changes_nothing() -> None:
    m = IdMap()
    m.assign_batch(["a", "b"])
    with pytest.raises(KeyError):
        m.assign_batch(["c", "b"])
    with pytest.raises(KeyError):
        m.assign_batch(["d", "d"])
    assert len(m) == 2 and m.next_label == 2 and "c" not in m and "d" not in m


def test_forced_collision_is_resolved_by_the_stored_bytes() -> None:
    m = IdMap(zero_hash)
    m.assign_batch(["alpha", "beta", "alphabet", "al"])
    assert m.labels_of(["al", "alphabet", "beta", "alpha", "alp", "gamma"]).tolist() == [3, 2, 1, 0, -1, -1]
    assert m.drop("beta") == 1  # a tombstone mid-chain: later entries stay reachable
    assert m.labels_of(["alphabet", "al", "beta"]).tolist() == [2, 3, -1]
    assert m.assign("beta") == 4 and m.label("beta") == 4


def test_hash_ignores_the_padding_of_a_batch() -> None:
    m = IdMap()
    m.assign("id1")
    # Alone, "id1" is one word; next to a 40-byte id it is padded to five.
    assert m.labels_of(["id1", "a" * 40]).tolist() == [0, -1]
    assert m.drop_batch(["b" * 100, "id1"]).tolist() == [-1, 0]


def test_unicode_ids() -> None:
    ids = ["café", "東京-7", "plain", "emoji-🙂", "ü" * 60]
    m = IdMap()
    m.assign_batch(ids)
    assert m.ids() == ids
    assert m.labels_of(list(reversed(ids))).tolist() == [4, 3, 2, 1, 0]
    assert m.ids_of([3, 0]) == ["emoji-🙂", "café"]
    assert m.id_of(1) == "東京-7" and "cafe" not in m


def test_save_load_round_trip(tmp_path: Path) -> None:
    m = IdMap()
    m.assign_batch([f"L{i:07d}" for i in range(5000)] + ["naïve"])
    m.drop_batch([f"L{i:07d}" for i in range(0, 5000, 3)])
    m.save(tmp_path / "ids.npz")
    assert not (tmp_path / "ids.npz.tmp").exists()
    back = IdMap.load(tmp_path / "ids.npz")
    assert back.items() == m.items() and len(back) == len(m)
    assert back.next_label == m.next_label and back.id_of(0) is None
    assert back.label("naïve") == 5000
    assert back.assign("new") == 5001  # labels go on where they stopped
    with np.load(tmp_path / "ids.npz", allow_pickle=False) as z:  # no object arrays
        assert all(z[k].dtype != object for k in z.files)


def test_load_rejects_inconsistent_files(tmp_path: Path) -> None:
    m = IdMap()
    m.assign_batch(["a", "b"])
    m.save(tmp_path / "ids.npz")
    with np.load(tmp_path / "ids.npz") as z:
        parts = {k: z[k] for k in z.files}
    parts["offsets"] = parts["offsets"][::-1].copy()
    np.savez(tmp_path / "bad.npz", **parts)
    with pytest.raises(InvalidInput):
        IdMap.load(tmp_path / "bad.npz")


def test_take_renumbers_and_vacuum_gives_bytes_back() -> None:
    m = IdMap()
    ids = [f"id-{i:06d}" for i in range(10_000)]
    m.assign_batch(ids)
    m.drop_batch(ids[:9000])
    used = m._nbytes  # noqa: SLF001 - the point of the test
    m.vacuum()
    assert m._nbytes == used - 9000 * 9  # noqa: SLF001
    assert m.ids() == ids[9000:] and m.label(ids[9500]) == 9500
    t = m.take(m.alive_labels()[::-1])
    assert t.ids() == ids[9000:][::-1] and t.label(ids[9999]) == 0 and t.next_label == 1000


def test_memory_per_id_is_small() -> None:
    n = 100_000
    m = IdMap()
    m.assign_batch([f"L{i:011d}" for i in range(n)])  # 12-byte ids
    # 12 bytes + 8 offset + 1 flag + 8 / load; a dict pair costs ~190.
    assert m.memory_bytes() / n <= 45
