"""The catalogue stage's duplicate-id check: a compact key set, and the fold's rejections."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.batch.catalogue import build_catalogue
from serving.batch.extract import PART_SCHEMA, part_path
from serving.batch.inputs import Unit
from serving.batch.seen_ids import SeenIds


def test_seen_ids_finds_each_repeat_with_its_first_tag_across_growth() -> None:
    seen = SeenIds(capacity=16)
    for i in range(5_000):
        assert seen.add("t1", f"L{i}", i) is None
    assert len(seen) == 5_000 and seen.nbytes >= 5_000 / 0.7 * 24  # grew, load <= 0.7
    for i in range(0, 5_000, 7):
        assert seen.add("t1", f"L{i}", 99_999) == i  # the first tag, not the new one
    assert seen.add("t2", "L1", 7) is None  # another tenant's L1 is another key
    assert seen.add("t1", "L1\x00", 8) is None and seen.add("t1\x00L1", "\x00", 9) is None
    assert seen.add("t", "1L1", 10) is None  # a separator-free encoding would make this "t1L1"
    assert len(seen) == 5_004
    with pytest.raises(ValueError):
        seen.add("t1", "new", -1)


def test_seen_ids_allocates_no_python_object_a_key() -> None:
    """A dict of (tenant, id) -> where strings was ~350 bytes a key; the table is ~24-70."""
    seen = SeenIds()
    tracemalloc.start()
    try:
        for i in range(100_000):
            seen.add("default", f"L{i:07d}", i)
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert current < 8 * 2**20, current  # 2^18 slots x 24 bytes = 6.3 MB; a dict: >30 MB


def _part(unit: int, rows: list[tuple[str, str]], where_prefix: str) -> pa.Table:
    """A unit's extracted part with text-only accepted listings (tenant, id)."""
    vec = np.ones(4, dtype=np.float32) / 2
    cols: dict[str, list] = {n: [] for n in PART_SCHEMA.names}
    for r, (tenant, entity_id) in enumerate(rows):
        rec = {"listing_id": entity_id, "tenant": tenant, "seller_id": "S", "title": f"t {entity_id}"}
        values = {"unit": unit, "row": r, "unit_rows": len(rows), "where": f"{where_prefix} line {r + 1}",
                  "entity_id": entity_id, "record": json.dumps(rec), "signals": "[]", "text": vec.tobytes(),
                  "text_feature": "text_minilm", "images": 0}
        for k in PART_SCHEMA.names:
            cols[k].append(values.get(k))
    return pa.table(cols, schema=PART_SCHEMA)


@pytest.mark.parametrize("read_rows", [2048, 1])
def test_fold_rejects_repeats_in_the_same_and_in_earlier_units_naming_the_first(
        tmp_path: Path, read_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serving.batch.extract.PART_READ_ROWS", read_rows)  # 1: a part read row by row
    parts = tmp_path / "work" / "units"
    parts.mkdir(parents=True)
    units_rows = [[("default", "A"), ("default", "B"), ("other", "A")],
                  [("default", "C"), ("default", "B"), ("default", "C"), ("other", "A")]]
    units = []
    for u, rows in enumerate(units_rows):
        pq.write_table(_part(u, rows, f"u{u}.jsonl"), part_path(parts, u))
        units.append(Unit(u, f"u{u}.jsonl", "jsonl", 0, 1, 1))
    cat = build_catalogue(tmp_path / "work", units, "listing", tmp_path / "rejected.jsonl")
    assert cat.n == 4 and cat.rejected == 3
    assert cat.meta.column("entity_id").to_pylist() == ["A", "B", "A", "C"]
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [(r["entity_id"], r["where"], r["error"]["code"]) for r in rejected] == [
        ("B", "u1.jsonl line 2", "duplicate"), ("C", "u1.jsonl line 3", "duplicate"),
        ("A", "u1.jsonl line 4", "duplicate")]
    assert [r["error"]["message"] for r in rejected] == [
        "id already seen in tenant 'default' at u0.jsonl line 2",  # an earlier unit, read back
        "id already seen in tenant 'default' at u1.jsonl line 1",  # the same unit
        "id already seen in tenant 'other' at u0.jsonl line 3"]
