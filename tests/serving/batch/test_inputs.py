"""Batch input planning and reading: discovery, deterministic units, row normalisation."""

from __future__ import annotations

import csv
import json
import math
import pickle
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.batch.inputs import (
    RawRow,
    Unit,
    discover_inputs,
    fingerprint,
    plan_units,
    read_unit,
    resolve_image_paths,
)
from signals.errors import InvalidInput
from signals.schemas import Listing, parse_record

LISTING = {"listing_id": "L1", "seller_id": "S1", "title": "Phone", "price": "12.50", "currency": "EUR",
           "created_at": "2026-01-02T03:04:05Z"}


def read_all(path: Path, **plan: int) -> list[RawRow]:
    return [row for unit in plan_units(discover_inputs(path), **plan) for row in read_unit(unit)]


def payload(rows: list[RawRow]) -> list[tuple[str, Any, Any]]:
    """What a row says, without its unit and position (which change with the plan)."""
    return [(r.where, r.data, r.error) for r in rows]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], **kw: Any) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, **kw)
        w.writerow(header)
        w.writerows(rows)
    return path


# --- discovery -------------------------------------------------------------------------------------


def test_discover_single_file(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "a.ndjson", [{"a": 1}])
    assert discover_inputs(f) == [f]


def test_discover_nested_folder_sorted_and_skips_hidden_and_underscore(tmp_path: Path) -> None:
    for rel in ["b/2.csv", "b/10.parquet", "a.jsonl", "c/d/e.json", "z.pq", "notes.md",
                ".hidden.jsonl", "_SUCCESS", "_part.csv", ".git/x.jsonl", "_temporary/y.jsonl"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    found = [p.relative_to(tmp_path).as_posix() for p in discover_inputs(tmp_path)]
    assert found == ["a.jsonl", "b/10.parquet", "b/2.csv", "c/d/e.json", "z.pq"]


@pytest.mark.parametrize("case", ["missing", "suffix", "empty", "only_unknown"])
def test_discover_errors(tmp_path: Path, case: str) -> None:
    target = {"missing": tmp_path / "nope", "suffix": tmp_path / "x.txt",
              "empty": tmp_path / "empty", "only_unknown": tmp_path / "docs"}[case]
    if case == "suffix":
        target.write_text("{}")
    elif case == "empty":
        target.mkdir()
    elif case == "only_unknown":
        target.mkdir()
        (target / "readme.md").write_text("hi")
        (target / ".x.jsonl").write_text("{}")
    with pytest.raises(InvalidInput) as err:
        discover_inputs(target)
    assert err.value.field == "input"
    assert str(target) in err.value.reason


def test_fingerprint(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "a.jsonl", [{"a": 1}])
    [fp] = fingerprint([f])
    assert fp == {"path": str(f.resolve()), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}


# --- planning ----------------------------------------------------------------------------------------


def make_catalogue(root: Path) -> Path:
    root.mkdir()
    write_jsonl(root / "a.jsonl", [{"listing_id": f"L{i}", "title": "t" * (i % 7)} for i in range(40)])
    write_csv(root / "b.csv", ["listing_id", "title"],
              [[f"C{i}", f'multi\nline, "quoted" {i}' if i % 3 == 0 else f"plain {i}"] for i in range(40)])
    table = pa.table({"listing_id": [f"P{i}" for i in range(23)], "price": [float(i) for i in range(23)]})
    pq.write_table(table, root / "c.parquet", row_group_size=5)
    (root / "empty.jsonl").write_bytes(b"")
    return root


def test_plan_is_deterministic_and_covers_every_row_once(tmp_path: Path) -> None:
    root = make_catalogue(tmp_path / "cat")
    whole = read_all(root, target_bytes=1 << 30, target_rows=1 << 30)
    assert len(whole) == 40 + 40 + 23
    assert all(r.error is None for r in whole)
    for target in [1, 7, 50, 333]:
        sizes = {"target_bytes": target, "target_rows": max(1, target // 10)}
        plan = plan_units(discover_inputs(root), **sizes)
        assert plan == plan_units(discover_inputs(root), **sizes)
        assert [u.index for u in plan] == list(range(len(plan)))
        assert len({u.key for u in plan}) == len(plan)
        rows = [r for u in plan for r in read_unit(u)]
        assert payload(rows) == payload(whole)
        for u in plan:  # units of one file are contiguous and every unit holds a row
            assert u.start < u.stop
            assert read_unit(u)
        assert pickle.loads(pickle.dumps(plan)) == plan
    assert {u.path for u in plan} == {str((root / n).resolve()) for n in ["a.jsonl", "b.csv", "c.parquet"]}


def test_text_units_are_contiguous_and_end_at_newlines(tmp_path: Path) -> None:
    root = make_catalogue(tmp_path / "cat")
    for name in ["a.jsonl", "b.csv"]:
        path = root / name
        data = path.read_bytes()
        units = plan_units([path], target_bytes=64)
        assert len(units) > 3
        assert units[-1].stop == len(data)
        for prev, nxt in zip(units, units[1:], strict=False):
            assert prev.stop == nxt.start and data[prev.stop - 1: prev.stop] == b"\n"
            assert nxt.first_row > prev.first_row


def test_parquet_units_cross_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"listing_id": [f"P{i}" for i in range(11)]}), path, row_group_size=3)
    units = plan_units([path], target_rows=4)
    assert [(u.start, u.stop, u.first_row) for u in units] == [(0, 4, 1), (4, 8, 5), (8, 11, 9)]
    rows = read_unit(units[1])
    assert [r.data for r in rows] == [{"listing_id": f"P{i}"} for i in range(4, 8)]
    assert [r.where for r in rows] == [f"x.parquet row {i}" for i in range(5, 9)]
    assert [r.row for r in rows] == [0, 1, 2, 3]


def test_empty_files_give_no_unit(tmp_path: Path) -> None:
    paths = [tmp_path / n for n in ["a.jsonl", "b.csv", "c.parquet"]]
    for p in paths:
        p.write_bytes(b"")
    (tmp_path / "h.csv").write_text("listing_id,title\n")
    pq.write_table(pa.table({"a": pa.array([], pa.string())}), tmp_path / "d.parquet")
    assert plan_units(discover_inputs(tmp_path)) == []


# --- JSONL -------------------------------------------------------------------------------------------


def test_jsonl_bad_lines_are_error_rows_with_their_line_numbers(tmp_path: Path) -> None:
    lines = [json.dumps({"n": f"{i:02d}"}) for i in range(1, 11)]  # 12 bytes each with "\n"
    lines[6] = '{"n": "07"]'  # line 7: broken JSON (same length as the others)
    lines[7] = '["n", "08"]'  # line 8: not an object
    path = tmp_path / "listings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    units = plan_units([path], target_bytes=2 * (len(lines[0]) + 1))
    assert [u.first_row for u in units] == [1, 3, 5, 7, 9]
    rows = read_unit(units[3])
    assert [(r.unit, r.row, r.where, r.data) for r in rows] == [
        (3, 0, "listings.jsonl line 7", None), (3, 1, "listings.jsonl line 8", None)]
    assert rows[0].error is not None and rows[0].error.startswith("not valid JSON")
    assert rows[1].error == "a record must be a JSON object, not list"


def test_jsonl_blank_lines_u2028_bom_and_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    u2028 = json.dumps({"t": "one\u2028two\u2029three"}, ensure_ascii=False)
    text = '\ufeff{"a": 1}\n\n   \n' + u2028 + "\r\n"
    path.write_bytes(text.encode("utf-8") + b'{"a": "\xff"}\n{"a": 3}')  # last line has no newline
    rows = read_all(path, target_bytes=1)
    assert [(r.row, r.where) for r in rows] == [(0, "x.json line 1"), (0, "x.json line 4"),
                                                (0, "x.json line 5"), (0, "x.json line 6")]
    assert rows[0].data == {"a": 1}
    assert rows[1].data == {"t": "one\u2028two\u2029three"}
    assert rows[2].data is None and rows[2].error is not None and "UTF-8" in rows[2].error
    assert rows[3].data == {"a": 3}


def test_line_over_max_row_bytes(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"a": "x" * 100}, {"a": 2}, {"a": "y" * 100}])
    [unit] = plan_units([path])
    rows = read_unit(unit, max_row_bytes=50)
    assert [(r.where, r.data, r.error) for r in rows] == [
        ("x.jsonl line 1", None, "line over 50 bytes"), ("x.jsonl line 2", {"a": 2}, None),
        ("x.jsonl line 3", None, "line over 50 bytes")]
    exact = len(json.dumps({"a": "x" * 100}))
    assert read_unit(unit, max_row_bytes=exact)[0].data == {"a": "x" * 100}


# --- CSV ---------------------------------------------------------------------------------------------


def test_csv_quoted_newlines_commas_and_escaped_quotes_split_into_many_units(tmp_path: Path) -> None:
    tricky = ['a "quoted" word', "comma, inside", "two\nlines", "crlf\r\nin field", '""', "line\u2028sep",
              '"\n"\n', "plain"]
    body = [[f"{i:03d}", tricky[i % len(tricky)], str(i)] for i in range(30)]
    path = write_csv(tmp_path / "x.csv", ["listing_id", "title", "n"], body)  # "\r\n" line endings
    expected = [{"listing_id": f"{i:03d}", "title": tricky[i % len(tricky)], "n": str(i)} for i in range(30)]
    for target in [1, 5, 17, 64, 1 << 20]:
        units = plan_units([path], target_bytes=target)
        rows = [r for u in units for r in read_unit(u)]
        assert [r.data for r in rows] == expected, target
        assert [r.where for r in rows] == [f"x.csv row {i}" for i in range(1, 31)]
    assert len(plan_units([path], target_bytes=1)) == 30


def test_random_text_splits_match_the_whole_read(tmp_path: Path) -> None:
    # Stray and escaped quotes, CR, blank lines: however a file is cut, the rows are the same.
    rng = random.Random(7)
    pieces = [b'"', b'""', b"\n", b"\r", b",", b"a", b"{}", b" "]
    for trial in range(60):
        body = b"h1,h2\n" + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 120)))
        for fmt in ["csv", "jsonl"]:
            path = tmp_path / f"f{trial}.{fmt}"
            path.write_bytes(body)
            whole = payload(read_all(path, target_bytes=1 << 30))
            for target in [1, 3, 16]:
                assert payload(read_all(path, target_bytes=target)) == whole


def test_csv_header_strings_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes('\ufeff"listing_id","title, full",price\n007,"a",\n008,,1e3\n\n'.encode())
    units = plan_units([path], target_bytes=1)
    assert units[0].start == path.read_bytes().index(b"\n") + 1  # the header is no row
    rows = [r for u in units for r in read_unit(u)]
    assert [r.data for r in rows] == [{"listing_id": "007", "title, full": "a"},
                                      {"listing_id": "008", "price": "1e3"}]
    assert [r.where for r in rows] == ["x.csv row 1", "x.csv row 2"]


def test_csv_field_count_mismatch_and_duplicate_header(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n1,2,3\n1\n")
    rows = read_all(path)
    assert [r.error for r in rows] == [None, "row has 3 fields, the header has 2",
                                       "row has 1 fields, the header has 2"]
    dup = tmp_path / "dup.csv"
    dup.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(InvalidInput, match="repeats column"):
        plan_units([dup])


def test_csv_images_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", ["listing_id", "images", "image_paths"], [
        ["1", '[{"path": "a.jpg"}, {"url": "https://x.test/b.jpg"}]', ""],
        ["2", "", "img/a.jpg| /abs/b.png |"],
        ["3", "[not json", ""],
        ["4", '[{"path": "a.jpg"}]', "b.jpg"],
        ["5", "", ""],
    ])
    rows = read_all(path)
    base = str(tmp_path.resolve())
    assert rows[0].data == {"listing_id": "1",
                            "images": [{"path": f"{base}/a.jpg"}, {"url": "https://x.test/b.jpg"}]}
    assert rows[1].data == {"listing_id": "2",
                            "images": [{"path": f"{base}/img/a.jpg"}, {"path": "/abs/b.png"}]}
    assert rows[2].data is None and rows[2].error is not None and rows[2].error.startswith("images:")
    assert rows[3].data is None and rows[3].error == "give either images or image_paths, not both"
    assert rows[4].data == {"listing_id": "5"}


def test_csv_row_over_max_row_bytes_in_quoted_field(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", ["a", "b"], [["1", "x\n" * 40], ["2", "ok"]])
    [unit] = plan_units([path])
    rows = read_unit(unit, max_row_bytes=30)
    assert [(r.where, r.data, r.error) for r in rows] == [
        ("x.csv row 1", None, "row over 30 bytes"), ("x.csv row 2", {"a": "2", "b": "ok"}, None)]


# --- Parquet -----------------------------------------------------------------------------------------


def test_parquet_images_structs_nan_and_timestamps(tmp_path: Path) -> None:
    image = pa.struct([("path", pa.string()), ("url", pa.string())])
    table = pa.table({
        "listing_id": ["P1", "P2", "P3"],
        "price": [1.5, math.nan, None],
        "images": pa.array([[{"path": "a.jpg", "url": None}], None, [{"path": None, "url": "https://x.test/c"}]],
                           pa.list_(image)),
        "created_at": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * 3, pa.timestamp("us", tz="UTC")),
        "naive": pa.array([datetime(2026, 1, 1)] * 3, pa.timestamp("us")),
        "count": pa.array([1, None, 3], pa.int64()),
    })
    pq.write_table(table, tmp_path / "x.parquet")
    rows = read_all(tmp_path / "x.parquet")
    assert [r.error for r in rows] == [None, None, None]
    a, b, c = (r.data or {} for r in rows)
    assert a["images"] == [{"path": str(tmp_path.resolve() / "a.jpg")}]
    assert a["price"] == 1.5 and type(a["count"]) is int
    assert a["created_at"] == datetime(2026, 1, 1, tzinfo=UTC) and a["created_at"].tzinfo is not None
    assert a["naive"] == datetime(2026, 1, 1)
    assert "price" not in b and "images" not in b and "count" not in b
    assert "price" not in c and c["images"] == [{"url": "https://x.test/c"}]


def test_parquet_images_json_string(tmp_path: Path) -> None:
    pq.write_table(pa.table({"listing_id": ["P1", "P2"], "images": ['[{"path": "/abs/a.jpg"}]', "{oops"]}),
                   tmp_path / "x.parquet")
    rows = read_all(tmp_path / "x.parquet")
    assert rows[0].data == {"listing_id": "P1", "images": [{"path": "/abs/a.jpg"}]}
    assert rows[1].data is None and rows[1].where == "x.parquet row 2"
    assert rows[1].error is not None and rows[1].error.startswith("images:")


def test_not_a_parquet_file(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        plan_units([tmp_path / "x.parquet"])


# --- all formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_listing_validates_from_each_format(tmp_path: Path, fmt: str) -> None:
    record = {**LISTING, "listing_id": "007", "images": [{"path": "img/a.jpg"}]}
    path = tmp_path / f"x.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, [record])
    elif fmt == "csv":
        write_csv(path, [*LISTING, "description", "image_paths"],
                  [[*record.values()][:-1] + ["", "img/a.jpg"]])
    else:
        pq.write_table(pa.Table.from_pylist([{**record, "price": 12.5, "description": None}]), path)
    [row] = read_all(path)
    assert row.error is None
    listing = parse_record(Listing, row.data)
    assert (listing.listing_id, listing.price, listing.currency) == ("007", 12.5, "EUR")
    assert listing.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert listing.images[0].path == str(tmp_path.resolve() / "img" / "a.jpg")


def test_resolve_image_paths() -> None:
    others = [{"path": "/abs/b.jpg"}, {"url": "https://x.test"}, "junk"]
    raw: dict[str, Any] = {"images": [{"path": "a.jpg"}, *others]}
    resolve_image_paths(raw, Path("/data/in"))
    assert raw["images"] == [{"path": "/data/in/a.jpg"}, *others]
    untouched: dict[str, Any] = {"images": "not a list"}
    resolve_image_paths(untouched, Path("/data"))
    assert untouched == {"images": "not a list"}


def test_unit_key() -> None:
    assert Unit(7, "/x.jsonl", "jsonl", 0, 10, 1).key == "000007"


def test_a_bare_quote_in_an_unquoted_field_is_reported_never_dropped(tmp_path: Path) -> None:
    """RFC 4180: a field with a quote must be quoted. A bare inch mark glues lines together;
    the glued record is rejected with the reason, and no row silently disappears."""
    p = tmp_path / "l.csv"
    p.write_text('listing_id,seller_id,title\nL1,S1,TV 55" screen\nL2,S2,phone\nL3,S3,7" tablet\nL4,S4,ok\n')
    rows = [r for u in plan_units([p]) for r in read_unit(u)]
    good = [r.data["listing_id"] for r in rows if r.data]
    bad = [r for r in rows if r.error]
    assert good == ["L4"]
    assert len(bad) == 1 and "spans 3 CSV rows" in (bad[0].error or "") and "RFC 4180" in (bad[0].error or "")
