"""VectorIndex against brute-force numpy: top-k, range, removes, updates, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexes.config import VectorIndexConfig
from indexes.vector import VectorIndex
from signals.errors import InvalidInput
from tests.indexes.conftest import clustered_vectors, random_vectors, unit


def brute_topk(x: np.ndarray, ids: list[str], q: np.ndarray, k: int) -> list[list[str]]:
    sims = q @ x.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order]


def brute_range(x: np.ndarray, ids: list[str], q: np.ndarray, t: float) -> list[set[str]]:
    sims = q @ x.T
    return [{ids[j] for j in np.flatnonzero(row >= t)} for row in sims]


def make(structure: str, quant: str = "none") -> VectorIndex:
    if structure == "flat":
        return VectorIndex(VectorIndexConfig(dim=32, exact_max=10_000, quantization=quant))
    # IVF searching every cell is exact up to quantisation.
    return VectorIndex(VectorIndexConfig(dim=32, exact_max=500, quantization=quant, nlist=16, nprobe=16))


@pytest.mark.parametrize("structure", ["flat", "ivf"])
def test_topk_and_range_match_brute_force(data: np.ndarray, structure: str) -> None:
    ids = [f"id{i}" for i in range(len(data))]
    idx = make(structure)
    idx.add(ids[:400], data[:400])  # the IVF migration happens inside a later add
    idx.add(ids[400:], data[400:])
    assert idx.structure == structure
    q = unit(data[:50] + 0.05 * np.random.default_rng(3).standard_normal((50, 32)))
    got = [[h.id for h in row] for row in idx.search(q, 10)]
    want = brute_topk(data, ids, q, 10)
    agree = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert agree >= 0.99
    ranged = idx.range_search(q, 0.5)
    assert [{h.id for h in row} for row in ranged] == brute_range(data, ids, q, 0.5)
    for row in ranged:
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)


@pytest.mark.parametrize("structure", ["flat", "ivf"])
def test_removes_and_updates_match_brute_force(structure: str) -> None:
    x = clustered_vectors(2000, 32, seed=5)
    ids = [f"id{i}" for i in range(len(x))]
    idx = make(structure)
    idx.add(ids, x)
    rng = np.random.default_rng(6)
    gone = [ids[i] for i in rng.choice(len(x), 300, replace=False)]
    assert idx.remove(gone + ["never-added"]) == 300
    upd = [i for i in rng.choice(len(x), 200, replace=False) if ids[i] not in gone]
    newv = random_vectors(len(upd), 32, seed=7)
    idx.update([ids[i] for i in upd], newv)
    x2 = x.copy()
    x2[upd] = newv
    live = [i for i in range(len(x)) if ids[i] not in set(gone)]
    assert len(idx) == len(live)
    ref, ref_ids = x2[live], [ids[i] for i in live]
    q = np.vstack([newv[:20], x[live[:20]]])
    got = [[h.id for h in row] for row in idx.search(q, 5)]
    assert got == brute_topk(ref, ref_ids, q, 5)
    assert [{h.id for h in r} for r in idx.range_search(q, 0.6)] == brute_range(ref, ref_ids, q, 0.6)
    assert not set(gone) & {h.id for row in idx.search(x, 3) for h in row}


def test_sq8_recall_is_high_and_memory_small() -> None:
    x = clustered_vectors(3000, 64, seed=8)
    ids = [f"id{i}" for i in range(len(x))]
    idx = VectorIndex(VectorIndexConfig(dim=64, exact_max=500, quantization="sq8", nlist=16, nprobe=16))
    idx.build(ids, x)
    q = x[:100]
    got = [[h.id for h in row] for row in idx.search(q, 10)]
    want = brute_topk(x, ids, q, 10)
    assert np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)]) >= 0.9
    assert idx.memory_bytes() / len(x) < 64 * 4 / 2  # well under fp32


@pytest.mark.parametrize("structure", ["flat", "ivf"])
def test_new_item_found_by_next_query(structure: str) -> None:
    idx = make(structure, "sq8")
    idx.add([f"id{i}" for i in range(1000)], random_vectors(1000, 32, seed=9))
    v = random_vectors(1, 32, seed=10)
    idx.add(["brand-new"], v)
    assert idx.search(v, 1)[0][0].id == "brand-new"
    assert "brand-new" in {h.id for h in idx.range_search(v, 0.95)[0]}


@pytest.mark.parametrize("structure", ["flat", "ivf"])
@pytest.mark.parametrize("quant", ["none", "sq8", "fp16"])
def test_save_load_round_trip(tmp_path, structure: str, quant: str) -> None:
    x = clustered_vectors(1500, 32, seed=11)
    ids = [f"id{i}" for i in range(len(x))]
    idx = make(structure, quant)
    idx.add(ids, x)
    idx.remove(ids[:100])
    idx.save(tmp_path / "ix")
    back = VectorIndex.load(tmp_path / "ix")
    assert len(back) == len(idx) == 1400 and back.structure == idx.structure
    q = x[100:130]
    assert back.search(q, 7) == idx.search(q, 7)
    assert back.range_search(q, 0.7) == idx.range_search(q, 0.7)
    back.add(["after-load"], x[:1])  # still mutable after load (labels do not collide)
    assert back.search(x[:1], 1)[0][0].id == "after-load"
    assert not list((tmp_path / "ix").glob("*.tmp"))


def test_save_and_load_stream_the_index_through_the_file(tmp_path, monkeypatch) -> None:
    """No whole in-memory copy of the index on either side: at 1M x 384 SQ8 the copies
    made by serialize_index (and bytes of it) added ~0.77 GB to a save's peak and ~0.75 GB
    to a load's (measured)."""
    import faiss

    x = clustered_vectors(1500, 32, seed=11)
    idx = make("ivf", "sq8")
    idx.add([f"id{i}" for i in range(len(x))], x)
    expected = idx.search(x[:5], 3)

    def forbidden(*_: object) -> None:
        raise AssertionError("the index was copied into memory")

    monkeypatch.setattr(faiss, "serialize_index", forbidden)
    monkeypatch.setattr(faiss, "deserialize_index", forbidden)
    idx.save(tmp_path / "ix")
    assert VectorIndex.load(tmp_path / "ix").search(x[:5], 3) == expected


def test_compact_retrains_and_keeps_results() -> None:
    x = clustered_vectors(3000, 32, seed=12)
    ids = [f"id{i}" for i in range(len(x))]
    idx = VectorIndex(VectorIndexConfig(dim=32, exact_max=500, quantization="none", nprobe=10_000))
    idx.add(ids[:600], x[:600])
    assert not idx.compact()  # has not grown yet
    idx.add(ids[600:], x[600:])
    before = idx.search(x[:20], 5)
    assert idx.compact()
    assert idx.search(x[:20], 5) == before


def test_bad_input_names_the_field() -> None:
    idx = VectorIndex(VectorIndexConfig(dim=8))
    v = np.eye(8, dtype=np.float32)
    with pytest.raises(InvalidInput) as e:
        idx.add(["a", "b"], v[:1])
    assert e.value.field == "vectors"
    with pytest.raises(InvalidInput) as e:
        idx.add(["a"], 2 * v[:1])
    assert e.value.field == "vectors[0]" and "norm 2.0" in e.value.reason
    with pytest.raises(InvalidInput) as e:
        idx.add(["a", "a"], v[:2])
    assert e.value.field == "ids[1]"
    with pytest.raises(InvalidInput):
        idx.add(["bad id"], v[:1])
    bad = v[:1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInput):
        idx.add(["a"], bad)
    with pytest.raises(InvalidInput) as e:
        idx.search(np.ones((1, 4), dtype=np.float32))
    assert e.value.field == "queries"
    with pytest.raises(InvalidInput):
        idx.search(v[:1], k=0)
    with pytest.raises(InvalidInput):
        idx.range_search(v[:1], 1.5)
    assert len(idx) == 0  # nothing half-added


def test_empty_index_answers_empty() -> None:
    idx = VectorIndex(VectorIndexConfig(dim=8))
    q = np.eye(8, dtype=np.float32)[:2]
    assert idx.search(q, 3) == [[], []]
    assert idx.range_search(q, 0.5) == [[], []]


def test_compact_renumbers_labels_and_keeps_results(tmp_path) -> None:
    x = clustered_vectors(1500, 32, seed=11)
    ids = [f"c{i}" for i in range(len(x))]
    idx = make("ivf")
    idx.add(ids, x)
    idx.remove(ids[::3])
    idx.update(ids[1:30:3], x[2:31:3])  # re-added: fresh labels, old ones dead
    q = x[:40]
    before = [[h.id for h in row] for row in idx.search(q, 5)]
    assert idx.compact(force=True)
    assert idx._ids.next_label == len(idx) == 1000  # noqa: SLF001 - dead labels are gone
    assert [[h.id for h in row] for row in idx.search(q, 5)] == before
    idx.save(tmp_path / "ix")
    back = VectorIndex.load(tmp_path / "ix")
    assert [[h.id for h in row] for row in back.search(q, 5)] == before
    back.remove(["c1"])
    assert "c1" not in back and all(h.id != "c1" for h in back.search(x[1:2], 5)[0])


def test_bulk_load_from_a_sample_gets_the_cells_of_its_final_size(tmp_path) -> None:
    """Trained on a sample, then filled: the cells are sized for the whole load, not the sample.

    Sized for the sample, a 4x larger load leaves each cell 4x too full and every
    search scans 4x as much (the batch job builds its indexes this way).
    """
    cfg = VectorIndexConfig(dim=8, exact_max=1_000, quantization="none")
    x = random_vectors(40_000, 8, seed=21)
    ids = [f"id{i}" for i in range(len(x))]
    sample_sized = VectorIndex(cfg)
    sample_sized.build(ids, x)
    assert sample_sized._index.nlist == 4 * 200  # noqa: SLF001 - 4 sqrt(40k)
    load_sized = VectorIndex(cfg)
    load_sized.build(ids, x, expected_size=160_000)
    # 4 sqrt(160k) = 1600 cells, capped by 39 training points a cell: 40k // 39.
    assert load_sized._index.nlist == 40_000 // 39  # noqa: SLF001
    # Compaction re-trains once the index outgrows the size it was trained for: the load's.
    load_sized.save(tmp_path / "snap")
    assert json.loads((tmp_path / "snap" / "meta.json").read_text())["trained_for"] == 160_000
    with pytest.raises(InvalidInput) as err:
        VectorIndex(cfg).build(ids[:10], x[:10], expected_size=5)
    assert err.value.field == "expected_size"
