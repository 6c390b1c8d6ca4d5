"""Snapshot + log persistence: replay, torn tails, compaction, and SIGKILL crash tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexes.config import PdqIndexConfig, VectorIndexConfig
from indexes.pdq import PdqIndex
from indexes.persistence import CorruptLog, DurableIndex, encode_record, read_records, write_snapshot
from indexes.vector import VectorIndex
from signals.errors import InvalidInput
from tests.indexes.crash_writer import hash_for, open_store, vector_for

ROOT = Path(__file__).resolve().parents[2]


def vecs(ids: list[str]) -> np.ndarray:
    return np.stack([vector_for(i) for i in ids])


def test_replay_restores_state_and_metadata(tmp_path: Path) -> None:
    s = open_store(tmp_path, "vector")
    ids = [f"it-{i}" for i in range(50)]
    s.add(ids, vecs(ids), [{"n": i} for i in range(50)])
    s.remove(ids[:10])
    s.add(ids[:5], vecs(ids[:5]))  # re-added without metadata
    s.close()
    back = open_store(tmp_path, "vector")
    assert len(back.index) == 45 and back.replayed >= 1
    assert back.meta["it-20"] == {"n": 20} and "it-0" not in back.meta
    assert back.index.search(vecs(["it-30"]), 1)[0][0].id == "it-30"
    back.close()


def test_torn_and_corrupt_tails_are_cut(tmp_path: Path) -> None:
    s = open_store(tmp_path, "vector")
    s.add(["it-1"], vecs(["it-1"]))
    s.close()
    log = tmp_path / "log-0.bin"
    good = log.stat().st_size
    rec = encode_record({"op": "add", "ids": ["it-2"]}, vecs(["it-2"]))
    with open(log, "ab") as f:
        f.write(rec[: len(rec) // 2])  # a write cut short by a crash
    back = open_store(tmp_path, "vector")
    assert len(back.index) == 1 and log.stat().st_size == good
    back.add(["it-3"], vecs(["it-3"]))  # appends after the last good record
    back.close()
    data = bytearray(log.read_bytes())
    data[-5] ^= 0xFF  # flip a payload byte of the last record: checksum fails
    log.write_bytes(bytes(data))
    records, _ = read_records(log)
    assert [r[0]["ids"] for r in records] == [["it-1"]]
    again = open_store(tmp_path, "vector")
    assert len(again.index) == 1
    again.close()


def test_compaction_switches_generation(tmp_path: Path) -> None:
    s = open_store(tmp_path, "pdq")
    ids = [f"it-{i}" for i in range(1000)]  # 20 kB log limit: compacts along the way
    for k in range(0, 1000, 20):
        s.add(ids[k : k + 20], np.stack([hash_for(i) for i in ids[k : k + 20]]))
    assert s.generation >= 1
    s.remove(ids[:7])
    s.compact()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["CURRENT", "LOCK", f"log-{s.generation}.bin", f"snap-{s.generation}"]
    s.close()
    back = open_store(tmp_path, "pdq")
    assert len(back.index) == 993 and back.replayed == 0
    back.close()


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    s = open_store(tmp_path, "vector")
    with pytest.raises(InvalidInput):
        open_store(tmp_path, "vector")
    s.close()
    open_store(tmp_path, "vector").close()


def test_invalid_add_is_not_logged(tmp_path: Path) -> None:
    s = open_store(tmp_path, "vector")
    with pytest.raises(InvalidInput):
        s.add(["ok-1"], np.ones((1, 16), dtype=np.float32))  # not unit length
    assert (tmp_path / "log-0.bin").stat().st_size == 0
    s.close()


def _run_writer(
    directory: Path, start: int, kind: str, seconds: float
) -> tuple[set[str], set[str], set[str]]:
    """Start a writer, SIGKILL it after ``seconds``; return acked adds, acked and pending removes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.indexes.crash_writer", str(directory), str(start), kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGKILL)
    out = proc.stdout.read()
    proc.wait()
    added, removed, pending = set(), set(), set()
    for line in out.splitlines():
        if line.startswith("A "):
            added.add(line[2:])
        elif line.startswith("r "):
            pending.add(line[2:])
        elif line.startswith("R "):
            removed.add(line[2:])
    return added, removed, pending - removed


@pytest.mark.parametrize("kind", ["vector", "pdq"])
def test_sigkill_loses_nothing_acknowledged(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(7 if kind == "vector" else 8)
    added: set[str] = set()
    removed: set[str] = set()
    in_flight: set[str] = set()  # a remove the kill interrupted: present or absent are both right
    start = 0
    for _ in range(4):
        a, r, p = _run_writer(tmp_path, start, kind, float(rng.uniform(0.2, 1.0)))
        assert len(p) <= 1
        added |= a
        removed |= r
        in_flight |= p
        start += 100_000  # fresh ids for the next writer
        store = open_store(tmp_path, kind)  # must load: nothing corrupt
        try:
            live = added - removed - in_flight
            missing = [i for i in live if i not in store.index]
            assert not missing, f"acknowledged ids lost: {missing[:5]}"
            assert not [i for i in removed if i in store.index], "acknowledged removes undone"
            sample = sorted(live)[:: max(1, len(live) // 20)]
            if kind == "vector":
                hits = store.index.search(vecs(sample), 1)
                assert [h[0].id for h in hits] == sample
            else:
                hits = store.index.range_search(np.stack([hash_for(i) for i in sample]), 0)
                assert [h[0].id for h in hits] == sample
            assert all(store.meta[i]["n"] == int(i.split("-")[1]) for i in sample)
        finally:
            store.close()
    assert len(added) > 30  # the writers really ran


# ------------------------------------------------ failed mutations never reach disk
def _hashes(ids: list[str]) -> np.ndarray:
    return np.stack([hash_for(i) for i in ids])


def test_add_failing_inside_apply_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(tmp_path, "pdq")
    s.add(["it-1", "it-2"], _hashes(["it-1", "it-2"]), [{"n": 1}, {"n": 2}])
    log = tmp_path / "log-0.bin"
    before = log.read_bytes()

    def boom(ids: list[str], data: object) -> None:
        raise RuntimeError("apply failed")

    monkeypatch.setattr(s.index, "add", boom)
    with pytest.raises(RuntimeError, match="apply failed"):
        s.add(["it-3"], _hashes(["it-3"]), [{"n": 3}])
    assert log.read_bytes() == before  # truncated back and fsynced
    assert "it-3" not in s.index and "it-3" not in s.meta
    s.add(["it-4"], _hashes(["it-4"]), [{"n": 4}])  # the store keeps working
    s.close()
    back = open_store(tmp_path, "pdq")
    assert sorted(back.index.ids()) == ["it-1", "it-2", "it-4"]
    assert sorted(back.meta) == ["it-1", "it-2", "it-4"]
    back.close()


def test_spaced_hex_is_refused_before_logging(tmp_path: Path) -> None:
    s = open_store(tmp_path, "pdq")
    s.add(["it-1"], _hashes(["it-1"]))
    log = tmp_path / "log-0.bin"
    size = log.stat().st_size
    spaced = "00" * 30 + "  " + "00"  # 64 characters; bytes.fromhex would give 31 bytes
    assert len(spaced) == 64
    with pytest.raises(InvalidInput) as e:
        s.add(["it-2"], [spaced])
    assert e.value.field == "hashes[0]"
    assert log.stat().st_size == size
    s.close()
    back = open_store(tmp_path, "pdq")
    assert back.index.ids() == ["it-1"]
    back.close()


def test_remove_counts_repeated_ids_once(tmp_path: Path) -> None:
    s = open_store(tmp_path, "vector")
    s.add(["it-1", "it-2"], vecs(["it-1", "it-2"]))
    assert s.remove(["it-1", "it-1"]) == 1
    assert s.remove(["it-1", "it-1"]) == 0
    records, _ = read_records(tmp_path / "log-0.bin")
    assert records[-1][0] == {"op": "remove", "ids": ["it-1"]}
    s.close()


# ------------------------------------------- torn tail vs. corruption in the middle
def _three_records(tmp_path: Path) -> tuple[Path, list[int]]:
    """A vector log of three add records; returns it and the record start offsets."""
    s = open_store(tmp_path, "vector")
    log = tmp_path / "log-0.bin"
    starts = []
    for i in (1, 2, 3):
        starts.append(log.stat().st_size)
        s.add([f"it-{i}"], vecs([f"it-{i}"]))
    s.close()
    return log, starts


def test_corrupt_middle_record_refuses_to_open(tmp_path: Path) -> None:
    log, starts = _three_records(tmp_path)
    data = bytearray(log.read_bytes())
    data[starts[2] - 3] ^= 0xFF  # a payload byte of the middle record
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptLog) as e:
        open_store(tmp_path, "vector")
    assert e.value.offset == starts[1] and e.value.path == log
    assert f"offset {starts[1]}" in str(e.value) and str(log) in str(e.value)
    assert log.read_bytes() == bytes(data)  # nothing was cut
    with pytest.raises(CorruptLog):  # and the failed open released the writer lock
        open_store(tmp_path, "vector")


def test_corrupt_middle_length_refuses_to_open(tmp_path: Path) -> None:
    log, starts = _three_records(tmp_path)
    data = bytearray(log.read_bytes())
    data[starts[1] + 4 : starts[1] + 8] = (10**6).to_bytes(4, "little")  # runs past EOF
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptLog) as e:
        open_store(tmp_path, "vector")
    assert e.value.offset == starts[1] and e.value.next_valid == starts[2]


def test_half_written_last_record_is_cut(tmp_path: Path) -> None:
    log, starts = _three_records(tmp_path)
    size = log.stat().st_size
    with open(log, "r+b") as f:
        f.truncate(starts[2] + (size - starts[2]) // 2)
    back = open_store(tmp_path, "vector")
    assert sorted(back.index.ids()) == ["it-1", "it-2"]
    assert log.stat().st_size == starts[2]
    back.close()


# ----------------------------------------------------- bulk create: one snapshot, no log
# The same index settings open_store() uses, so open_store() can reopen what create() wrote.
_VECTOR = VectorIndexConfig(dim=16, exact_max=300, quantization="none", nlist=8, nprobe=8)
_PDQ = PdqIndexConfig(exact_max=200, tail_min=20, tail_fraction=0.05)


def _create(directory: Path, kind: str, ids: list[str]) -> DurableIndex:  # type: ignore[type-arg]
    """write_snapshot(), then the store opened on it (as the service opens a batch job's)."""
    items = ((i, {"n": int(i.split("-")[1])}) for i in ids)  # streamed, never a dict
    if kind == "pdq":
        pdq = PdqIndex(_PDQ)
        pdq.add(ids, _hashes(ids))
        write_snapshot(directory, pdq, items)
    else:
        vec = VectorIndex(_VECTOR)
        vec.build(ids, vecs(ids))
        write_snapshot(directory, vec, items)
    return open_store(directory, kind)


def _find(store: DurableIndex, kind: str, ids: list[str]) -> list[str]:  # type: ignore[type-arg]
    if kind == "vector":
        return [h[0].id for h in store.index.search(vecs(ids), 1)]
    return [h[0].id for h in store.index.range_search(_hashes(ids), 0)]


@pytest.mark.parametrize("kind", ["vector", "pdq"])
def test_create_writes_one_snapshot_that_opens(tmp_path: Path, kind: str) -> None:
    directory = tmp_path / "new" / "store"  # missing parents are fine
    ids = [f"it-{i}" for i in range(400)]  # past exact_max: the vector index trains its IVF
    made = _create(directory, kind, ids)
    assert made.generation == 1 and len(made.index) == 400
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["CURRENT", "LOCK", "log-1.bin", "snap-1"]  # no log-0, no snap-*.tmp
    assert (directory / "log-1.bin").stat().st_size == 0
    made.close()
    back = open_store(directory, kind)
    assert back.generation == 1 and back.replayed == 0
    assert len(back.index) == 400 and back.meta == {i: {"n": int(i.split("-")[1])} for i in ids}
    sample = ids[::37]
    assert _find(back, kind, sample) == sample
    back.close()


@pytest.mark.parametrize("kind", ["vector", "pdq"])
def test_created_store_replays_later_mutations(tmp_path: Path, kind: str) -> None:
    ids = [f"it-{i}" for i in range(100)]
    made = _create(tmp_path, kind, ids)
    extra = ["it-500", "it-501"]
    data = vecs(extra) if kind == "vector" else _hashes(extra)
    made.add(extra, data, [{"n": 500}, {"n": 501}])
    assert made.remove(["it-3"]) == 1
    made.close()
    back = open_store(tmp_path, kind)  # snap-1 plus two log records
    assert back.generation == 1 and back.replayed == 2
    assert len(back.index) == 101 and "it-3" not in back.index and "it-3" not in back.meta
    assert back.meta["it-501"] == {"n": 501} and back.meta["it-7"] == {"n": 7}
    assert _find(back, kind, ["it-500", "it-7"]) == ["it-500", "it-7"]
    back.close()


def test_create_into_an_existing_empty_directory(tmp_path: Path) -> None:
    made = _create(tmp_path, "vector", ["it-1", "it-2"])
    made.close()
    back = open_store(tmp_path, "vector")
    assert sorted(back.index.ids()) == ["it-1", "it-2"]
    back.close()


def test_create_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("someone else's")
    with pytest.raises(InvalidInput) as e:
        _create(tmp_path, "vector", ["it-1"])
    assert e.value.field == "directory" and str(tmp_path) in e.value.reason
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written, no LOCK
    existing = tmp_path / "store"
    open_store(existing, "vector").close()  # an existing (empty) store is not empty either
    with pytest.raises(InvalidInput):
        _create(existing, "vector", ["it-1"])


def test_read_index_sees_snapshot_and_log_without_locking(tmp_path: Path) -> None:
    from indexes.persistence import read_index

    d = tmp_path / "idx"
    store = DurableIndex(d, PdqIndex, PdqIndex.load)
    h = np.zeros((3, 32), np.uint8)
    h[1, 0], h[2, 1] = 1, 2
    store.add(["a", "b"], h[:2], [{"k": 1}, {"k": 2}])
    store.compact()
    store.add(["c"], h[2:])
    store.remove(["a"])
    index = read_index(d, PdqIndex, PdqIndex.load)  # while the writer still holds its lock
    assert sorted(index.ids()) == ["b", "c"]
    store.close()


def test_readers_share_a_directory_write_nothing_and_keep_writers_out(tmp_path: Path) -> None:
    s = open_store(tmp_path, "vector")
    s.add(["it-1", "it-2"], vecs(["it-1", "it-2"]), [{"n": 1}, {"n": 2}])
    s.close()
    log = tmp_path / "log-0.bin"
    rec = encode_record({"op": "add", "ids": ["it-3"]}, vecs(["it-3"]))
    with open(log, "ab") as f:
        f.write(rec[: len(rec) // 2])  # a torn tail: a writer would cut it, a reader leaves it
    torn = log.read_bytes()
    vcfg = VectorIndexConfig(dim=16, exact_max=300, quantization="none", nlist=8, nprobe=8)
    readers = [DurableIndex(tmp_path, lambda: VectorIndex(vcfg), lambda p: VectorIndex.load(p, vcfg),
                            read_only=True) for _ in range(2)]
    assert [len(r.index) for r in readers] == [2, 2] and readers[1].meta["it-2"] == {"n": 2}
    with pytest.raises(InvalidInput, match="read-only"):
        readers[0].add(["it-4"], vecs(["it-4"]))
    with pytest.raises(InvalidInput, match="read-only"):
        readers[0].compact()
    with pytest.raises(InvalidInput, match="another writer"):
        open_store(tmp_path, "vector")
    for r in readers:
        r.close()
    assert log.read_bytes() == torn and sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "LOCK",
                                                                                        "log-0.bin"]
    writer = open_store(tmp_path, "vector")  # the last reader gone: a writer opens
    with pytest.raises(InvalidInput, match="another writer"):  # and keeps readers out
        DurableIndex(tmp_path, lambda: VectorIndex(vcfg), lambda p: VectorIndex.load(p, vcfg), read_only=True)
    writer.close()


def test_a_reader_of_a_directory_never_written_sees_it_empty(tmp_path: Path) -> None:
    r = DurableIndex(tmp_path / "new", PdqIndex, PdqIndex.load, read_only=True)
    assert len(r.index) == 0 and not (tmp_path / "new").exists()  # a reader creates nothing
    with pytest.raises(InvalidInput, match="read-only"):
        r.remove(["x"])  # refused even when nothing would change
    with pytest.raises(InvalidInput, match="read-only"):
        r.add([], np.zeros((0, 32), np.uint8))
    r.close()


def test_a_lock_that_fails_otherwise_propagates_and_leaks_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import indexes.persistence as persistence

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "no locks available")

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(persistence.fcntl, "flock", no_locks)
    with pytest.raises(OSError, match="no locks"):
        DurableIndex(tmp_path, PdqIndex, PdqIndex.load)
    assert len(os.listdir("/proc/self/fd")) == before
