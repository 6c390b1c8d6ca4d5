"""PdqIndex against a brute-force Hamming scan: exact and multi-index modes, removes, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import pdq as pdq_mod
from indexes.config import PdqIndexConfig
from indexes.pdq import PdqIndex
from signals.errors import InvalidInput
from signals.pdq_hash import hamming, pdq_from_hex, pdq_to_hex
from tests.indexes.conftest import flip_bits


def brute(hashes: np.ndarray, ids: list[str], q: np.ndarray, t: int) -> list[tuple[int, str]]:
    d = hamming(hashes, q)
    return sorted((int(d[j]), ids[j]) for j in np.flatnonzero(d <= t))


def queries(hashes: np.ndarray, rng: np.random.Generator, n: int = 40) -> np.ndarray:
    src = rng.choice(len(hashes), n, replace=False)
    q = np.stack([flip_bits(hashes[s], int(rng.integers(0, 48)), rng) for s in src])
    q[-5:] = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    return q


CONFIGS = {
    "exact": PdqIndexConfig(exact_max=1_000_000),
    "mih": PdqIndexConfig(exact_max=100, tail_min=50, tail_fraction=0.01),
}


@pytest.mark.parametrize("mode", ["exact", "mih"])
@pytest.mark.parametrize("threshold", [0, 31, 40])
def test_range_matches_brute_force(mode: str, threshold: int) -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (400, 32), dtype=np.uint8)
    # clustered: near-duplicate families around each base hash
    family = [np.stack([flip_bits(b, int(rng.integers(1, 40)), rng) for b in base]) for _ in range(4)]
    h = np.vstack([base, *family])
    ids = [f"h{i}" for i in range(len(h))]
    idx = PdqIndex(CONFIGS[mode])
    idx.add(ids[:1500], h[:1500])
    idx.add(ids[1500:], h[1500:])  # part of it stays in the linear tail
    if mode == "mih":
        assert idx._built > 0  # noqa: SLF001 - the tables are in use
    q = queries(h, rng)
    got = idx.range_search(q, threshold)
    for qi in range(len(q)):
        assert [(x.distance, x.id) for x in got[qi]] == brute(h, ids, q[qi], threshold)


@pytest.mark.parametrize("mode", ["exact", "mih"])
def test_removes_updates_and_compaction(mode: str) -> None:
    rng = np.random.default_rng(2)
    h = rng.integers(0, 256, (2000, 32), dtype=np.uint8)
    ids = [f"h{i}" for i in range(len(h))]
    idx = PdqIndex(CONFIGS[mode])
    idx.add(ids, h)
    gone = set(rng.choice(ids, 500, replace=False).tolist())  # > 10%: triggers compaction
    assert idx.remove(sorted(gone) + ["nope"]) == 500
    upd = [i for i in range(0, 2000, 7) if ids[i] not in gone]
    newh = rng.integers(0, 256, (len(upd), 32), dtype=np.uint8)
    idx.update([ids[i] for i in upd], newh)
    h2 = h.copy()
    h2[upd] = newh
    live = [i for i in range(2000) if ids[i] not in gone]
    assert len(idx) == len(live)
    q = np.vstack([queries(h2[live], rng, 20), h[upd[:5]]])  # old hashes of updated ids
    for qi, row in enumerate(idx.range_search(q)):
        assert [(x.distance, x.id) for x in row] == brute(h2[live], [ids[i] for i in live], q[qi], 31)


def test_new_hash_is_found_by_next_query() -> None:
    idx = PdqIndex(CONFIGS["mih"])
    rng = np.random.default_rng(3)
    idx.add([f"h{i}" for i in range(3000)], rng.integers(0, 256, (3000, 32), dtype=np.uint8))
    fresh = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    idx.add(["fresh"], fresh)
    assert idx.range_search(fresh)[0][0].id == "fresh"


@pytest.mark.parametrize("mode", ["exact", "mih"])
def test_save_load_round_trip(tmp_path, mode: str) -> None:
    rng = np.random.default_rng(4)
    h = rng.integers(0, 256, (1200, 32), dtype=np.uint8)
    ids = [f"h{i}" for i in range(len(h))]
    idx = PdqIndex(CONFIGS[mode])
    idx.add(ids, h)
    idx.remove(ids[:50])
    idx.save(tmp_path / "p")
    back = PdqIndex.load(tmp_path / "p", CONFIGS[mode])
    q = queries(h, rng)
    assert back.range_search(q) == idx.range_search(q)
    assert len(back) == 1150 and "h0" not in back and "h60" in back
    back.add(["more"], h[:1])
    assert {x.id for x in back.range_search(h[:1], 0)[0]} == {"more"}


def test_empty_round_trip(tmp_path) -> None:
    PdqIndex().save(tmp_path / "e")
    back = PdqIndex.load(tmp_path / "e")
    assert len(back) == 0 and back.range_search(["00" * 32]) == [[]]


def test_hex_parsing_and_bad_input() -> None:
    h = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
    assert pdq_to_hex(pdq_from_hex(h)) == h
    idx = PdqIndex()
    idx.add(["x"], [h])
    assert idx.range_search([h])[0][0].distance == 0
    with pytest.raises(InvalidInput) as e:
        idx.add(["y"], ["zz" * 32])
    assert e.value.field == "hashes[0]"
    with pytest.raises(InvalidInput):
        idx.add(["y"], ["ab"])
    with pytest.raises(InvalidInput):
        idx.add(["y"], np.zeros((1, 16), dtype=np.uint8))
    with pytest.raises(InvalidInput) as e:
        idx.range_search([h], 300)
    assert e.value.field == "threshold"


def test_hex_must_be_exactly_64_hex_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    spaced = "00" * 30 + "  " + "00"  # bytes.fromhex skips the spaces: 31 bytes
    for bad in (spaced, " " + "0" * 63, "0" * 63 + "\n", "0x" + "0" * 62):
        with pytest.raises(InvalidInput) as e:
            pdq_from_hex(bad, "item.pdq")
        assert e.value.field == "item.pdq"
    with pytest.raises(InvalidInput) as e:
        PdqIndex().prepare(["y"], [spaced])
    assert e.value.field == "hashes[0]"
    # Whatever the parser returns, the stacked batch's shape is checked too.
    monkeypatch.setattr(pdq_mod, "pdq_from_hex", lambda v, f: np.zeros(31, dtype=np.uint8))
    with pytest.raises(InvalidInput) as e:
        PdqIndex().prepare(["y"], ["00" * 32])
    assert e.value.field == "hashes"
