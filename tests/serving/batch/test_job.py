"""``marketguard batch``: formats, rejected rows, outputs, resumability, the service's objects, clusters.

One local Ray serves the whole module (``ray_session``); the kill and two-node tests
run the job in a subprocess driver, as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from indexes.near_duplicates import TextNearDuplicates
from indexes.pair_features import PARSED_SCHEMA, PairRecord, ParsedRecords
from indexes.persistence import DurableIndex
from indexes.vector import VectorIndex
from serving.batch.job import BatchRequest, run_batch
from serving.config import MarketGuardConfig
from signals.errors import InvalidInput
from signals.registry import build_registry
from signals.schemas import Listing, Review, parse_record

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "serving" / "demo"

pytestmark = pytest.mark.slow


def config(data_dir: Path, *, images: bool = True, **batch: Any) -> MarketGuardConfig:
    """Fast settings: PDQ, distilled SSCD and local features (OCR and NSFW off), small units."""
    return MarketGuardConfig.model_validate({
        "data_dir": str(data_dir),
        "signals": {"images": {"pdq": {"enabled": images}, "sscd": {"enabled": images},
                               "local": {"enabled": images}, "ocr": {"enabled": False},
                               "nsfw": {"enabled": False}}},
        "batch": {"unit_bytes": 2048, "unit_rows": 7, "query_block": 16, **batch},
    })


def catalogue_rows() -> list[dict[str, Any]]:
    """A scam campaign (one listing copied across sellers, a bait price, a reused photo),
    honest listings, and two invalid rows."""
    rows: list[dict[str, Any]] = []
    campaign = "Sony WH-1000XM5 wireless noise cancelling headphones black, sealed box"
    for i in range(6):
        rows.append({"listing_id": f"SC{i}", "seller_id": f"burner{i}", "title": campaign,
                     "description": "Brand new, message me on WhatsApp for a quick sale",
                     "price": 45.0 if i == 0 else 260.0 + i, "currency": "GBP", "category": "audio",
                     "images": [{"path": "phone.jpg"}] if i < 3 else []})
    honest = ["Vintage oak dining table with four chairs", "Children's bicycle 16 inch red",
              "Canon EOS R6 mirrorless camera body only", "Garden hose reel 30m with fittings",
              "IKEA Billy bookcase white 80x28x202 cm", "Samsung 55 inch QLED TV QE55Q60B",
              "Le Creuset cast iron casserole 24cm volcanic", "Trek Marlin 7 mountain bike 2022 large",
              "Nintendo Switch OLED white with two games", "Dyson V11 cordless vacuum cleaner",
              "Handmade ceramic mugs set of four", "Lego Star Wars Millennium Falcon 75257",
              "Apple MacBook Air M2 13 inch 256GB midnight", "Brompton folding bike M6L racing green"]
    for i, title in enumerate(honest):
        rows.append({"listing_id": f"H{i}", "seller_id": f"shop{i % 4}", "title": title,
                     "description": f"Good condition, collection only. Item {i}.", "price": 50.0 + 10 * i,
                     "currency": "GBP", "category": "home",
                     "images": [{"path": "table.png"}] if i == 0 else []})
    # Marketplace titles: an Indonesian title and another seller's copy with a word changed (a pair),
    # two unrelated products that share only "1 Kg" with it (no pair), a bait-priced repost of a
    # title without a description (a pair).
    market = [("M0", "tk0", "Madu Hutan Asli Lumora 1 Kg Murah", 120_000.0),
              ("M1", "tk1", "Madu Hutan Murni Lumora 1 Kg Murah", 125_000.0),
              ("M2", "tk2", "Beras Pandan Wangi Zentika 1 Kg", 80_000.0),
              ("M3", "tk3", "Gula Pasir Putih Kiraso 1 Kg", 18_000.0),
              ("M4", "tk4", "Sepatu Lari Pria Velaro Hitam 42 Original", 350_000.0),
              ("M5", "tk5", "Sepatu Lari Pria Velaro Hitam 42 Original", 35_000.0)]
    for lid, seller, title, price in market:
        rows.append({"listing_id": lid, "seller_id": seller, "title": title, "description": "",
                     "price": price, "currency": "IDR", "category": "market"})
    rows.append({"listing_id": "bad id!", "seller_id": "S1", "title": "x"})
    rows.append({"listing_id": "NOPRICE", "seller_id": "S1", "title": "Thing", "price": "cheap"})
    return rows


def _drawing(path: Path) -> None:
    """An image of its own (shapes on a gradient), unlike the phone photo."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(7)
    im = Image.fromarray(np.linspace(0, 255, 320 * 240 * 3).reshape(240, 320, 3).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.integers(0, 280), rng.integers(0, 200)
        draw.rectangle((x, y, x + 40, y + 30), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    im.save(path)


def write_catalogue(folder: Path, fmt: str = "jsonl", rows: list[dict[str, Any]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO / "phone.jpg", folder / "phone.jpg")
    _drawing(folder / "table.png")
    rows = catalogue_rows() if rows is None else rows
    path = folder / f"listings.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n", encoding="utf-8")
    elif fmt == "csv":
        flat = [{**{k: v for k, v in r.items() if k != "images"},
                 "image_paths": "|".join(i["path"] for i in r.get("images", []))} for r in rows]
        pd.DataFrame(flat).astype(str).replace({"nan": ""}).to_csv(path, index=False)
    else:
        # Parquet columns have one type: the CSV/JSONL row with price "cheap" gets an
        # infinite price here, which validation rejects just the same.
        flat = [{**r, "price": r["price"] if isinstance(r.get("price"), float) else float("inf")}
                for r in rows]
        pq.write_table(pa.Table.from_pylist(flat), path)
    return path


def run(tmp_path: Path, data_dir: Path, inp: Path, name: str = "out",
        **kw: Any) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / name
    cfg = kw.pop("cfg", None) or config(data_dir)
    summary = run_batch(BatchRequest("listings", inp, out, progress="off", **kw), cfg)
    return out, summary


def signals_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "signals.jsonl").read_text(encoding="utf-8").splitlines()]


def rounded(x: Any) -> Any:
    """Floats to 3 decimals, all the way down."""
    if isinstance(x, float):
        return round(x, 3)
    if isinstance(x, list):
        return [rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    return x


def without_time(sigs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if k != "observed_at"} for s in sigs]


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory: pytest.TempPathFactory,
              ray_session: str) -> tuple[Path, dict[str, Any], Path]:
    tmp = tmp_path_factory.mktemp("batch")
    state = tmp / "state"
    state.mkdir()
    os.symlink(ROOT / "var" / "models", state / "models")
    (ROOT / "var" / "models").mkdir(parents=True, exist_ok=True)
    inp = write_catalogue(tmp / "in")
    out, summary = run(tmp, state, inp)
    return out, summary, state


# --------------------------------------------------------------------------- outputs
def test_outputs_are_readable_and_as_the_contract_says(jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    out, summary, _ = jsonl_run
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert list(pairs.columns)[:4] == ["a", "b", "modality", "score"]
    assert set(pairs["modality"]) <= {"listing_text", "image_pdq", "image_sscd"}
    keys = [(m, *sorted((a, b))) for a, b, m in zip(pairs.a, pairs.b, pairs.modality, strict=True)]
    assert len(keys) == len(set(keys)), "each unordered pair once per modality"
    assert (pairs.a != pairs.b).all() and pairs.score.between(0, 1).all()
    clusters = pq.read_table(out / "clusters.parquet").to_pandas()
    assert list(clusters.columns)[:3] == ["entity_id", "cluster_id", "cluster_size"]
    # The campaign: six copies of one listing across six burner sellers form one cluster.
    campaign = clusters[clusters.entity_id.str.startswith("SC")]
    assert len(campaign) == 6 and campaign.cluster_id.nunique() == 1 and (campaign.cluster_size == 6).all()
    assert not clusters.entity_id.str.startswith("H").any() or clusters.cluster_size.max() <= 6
    sigs = signals_of(out)
    assert all(s["schema"] == "marketguard.signal/v1" for s in sigs)
    by = {(s["entity_id"], s["name"], s["source"]): s for s in sigs}
    assert by[("SC1", "near_duplicate.cross_seller_count", "listing_near_duplicate@1")]["value"] == 5
    assert by[("SC1", "image.reused_across_sellers", "listing_near_duplicate@1")]["value"] == 2
    assert by[("SC0", "price.anomaly", "price_anomaly@1")]["score"] > 0.9  # 45 vs ~263: bait price
    assert by[("SC3", "price.anomaly", "price_anomaly@1")]["score"] < 0.1
    assert by[("H3", "near_duplicate.count", "listing_near_duplicate@1")]["value"] == 0
    text_pairs = {tuple(sorted((a, b))) for a, b, m in zip(pairs.a, pairs.b, pairs.modality, strict=True)
                  if m == "listing_text" and a.startswith("M")}
    assert text_pairs == {("M0", "M1"), ("M4", "M5")}  # copies pair, a shared "1 Kg" does not
    assert by[("burner0", "seller.cluster_count", "seller_rollup@1")]["value"] == 1
    assert by[("burner0", "seller.duplicate_listing_ratio", "seller_rollup@1")]["value"] == 1.0
    assert summary["accepted"] == 26 and summary["rejected"] == 3 and summary["rows"] == 29
    assert summary["top_clusters"][0]["size"] == 6 and summary["top_clusters"][0]["owners"] == 6
    assert summary["pairs"]["listing_text"] >= 15


def test_rejected_rows_name_the_reason(jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    out, _, _ = jsonl_run
    rejected = [json.loads(ln) for ln in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["where"] for r in rejected] == ["listings.jsonl line 27", "listings.jsonl line 28",
                                              "listings.jsonl line 29"]
    assert rejected[0]["error"]["field"] == "listing_id"
    assert rejected[1]["error"]["field"] == "price"
    assert rejected[2]["error"]["code"] == "unreadable"


def test_extractor_signals_are_the_services(jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    """The job runs the registry the service builds: same extractor signals, no second implementation."""
    out, _, state = jsonl_run
    cfg = config(state)
    signals_cfg = cfg.signals.model_copy(deep=True)
    signals_cfg.images.decode.allow_paths = True
    registry = build_registry(signals_cfg, cfg.data_dir)
    folder = out.parent / "in"
    records = []
    for r in catalogue_rows()[:26]:
        r = json.loads(json.dumps(r))
        for img in r.get("images", []):
            img["path"] = str(folder / img["path"])
        records.append(parse_record(Listing, r))
    expected = [s.to_json_dict() for res in registry.extract_batch("listing", records, signals_only=True)
                for s in res.signals]
    extractor_sources = {s["source"] for s in expected}
    got = [s for s in signals_of(out) if s["source"] in extractor_sources]
    assert without_time(got) == without_time(expected)


def test_pairs_are_what_the_service_would_decide(jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    out, _, state = jsonl_run
    cfg = config(state)
    durable: DurableIndex[VectorIndex] = DurableIndex(
        out / "indexes" / "default" / "listing_text", lambda: VectorIndex(), VectorIndex.load)
    try:
        index = durable.index
        assert len(index) == 26 and durable.meta["SC1"]["owner"] == "burner1"
        rule = TextNearDuplicates.from_config(cfg.indexes)
        records = {r["listing_id"]: r for r in catalogue_rows()[:26]}

        def parsed(ids: list[str]) -> ParsedRecords:
            return ParsedRecords.parse([PairRecord(records[i]["title"], records[i]["description"],
                                                   records[i]["price"]) for i in ids])

        ids = sorted(records)
        vecs = index.get_vectors(ids)
        found = rule.decide(parsed(ids), rule.candidates(index, vecs, ids), parsed)
        expected = {tuple(sorted((i, n.id))) for i, ns in zip(ids, found, strict=True) for n in ns}
    finally:
        durable.close()
    pairs = pd.read_parquet(out / "pairs.parquet")
    text = pairs[pairs.modality == "listing_text"]
    assert {tuple(sorted((a, b))) for a, b in zip(text.a, text.b, strict=True)} == expected


def test_each_record_is_parsed_once_for_the_pair_scorer(jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    """The pairs stage reads one parse a record from work/pair_records/, row for row."""
    out, _, _ = jsonl_run
    from serving.batch.catalogue import load_catalogue

    cat = load_catalogue(out / "work" / "catalogue", "listing")
    files = sorted((out / "work" / "pair_records").glob("*.arrow"))
    assert files
    stored = ParsedRecords.concat([ParsedRecords(ipc.open_file(pa.memory_map(str(f))).read_all())
                                   for f in files])
    again = ParsedRecords.parse([PairRecord(t or "", d or "", p)
                                 for t, d, p in cat.iter_rows(["title", "text", "price"])])
    assert len(stored) == cat.n
    assert stored.table.combine_chunks().equals(again.table.combine_chunks())


def test_records_parsed_in_ranges_are_the_records_parsed_whole(
        jsonl_run: tuple[Path, dict[str, Any], Path], tmp_path: Path) -> None:
    """The cluster path parses row ranges as parallel tasks: any cut gives the same rows, and
    cuts never mix (a part's file names its count)."""
    out, _, _ = jsonl_run
    from serving.batch.catalogue import load_catalogue
    from serving.batch.pairs import parse_part, parsed_part_path, parsed_records

    cat = load_catalogue(out / "work" / "catalogue", "listing")
    whole = parsed_records(cat, tmp_path / "whole").table.combine_chunks()
    for parts in (2, 3, cat.n + 2):  # more parts than rows: the last ones are empty
        for part in reversed(range(parts)):  # in any order, as tasks finish
            parse_part(cat, tmp_path / "cut", part, parts)
        assert parsed_part_path(tmp_path / "cut", parts - 1, parts).exists()
        assert parsed_records(cat, tmp_path / "cut", parts).table.combine_chunks().equals(whole)
    assert list(cat.iter_rows(["title"], start=2, end=4)) == list(cat.iter_rows(["title"]))[2:4]
    with pytest.raises(ValueError, match="not in 0..2"):
        parse_part(cat, tmp_path / "cut", 3, 3)
    # a part that lost its rows (a file from elsewhere) is refused, not read as the catalogue
    empty = tmp_path / "stale"
    parse_part(cat, empty, 0, 2)
    with ipc.new_file(str(parsed_part_path(empty, 1, 2)), PARSED_SCHEMA):
        pass
    with pytest.raises(InvalidInput, match="parsed records for"):
        parsed_records(cat, empty, 2)


def test_snapshots_load_in_the_service_layout(jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    out, _, _ = jsonl_run
    from indexes.pdq import PdqIndex

    pdq: DurableIndex[PdqIndex] = DurableIndex(out / "indexes" / "default" / "image_pdq", PdqIndex,
                                               PdqIndex.load)
    try:
        assert sorted(pdq.meta) == ["H0/0", "SC0/0", "SC1/0", "SC2/0"]
        assert pdq.meta["SC2/0"] == {"owner": "burner2", "record_id": "SC2"}
    finally:
        pdq.close()


def test_rerun_of_a_complete_run_does_nothing(jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    out, summary, state = jsonl_run
    before = (out / "signals.jsonl").stat().st_mtime_ns
    again = run_batch(BatchRequest("listings", out.parent / "in" / "listings.jsonl", out, progress="off"),
                      config(state))
    assert again == json.loads((out / "summary.json").read_text())
    assert (out / "signals.jsonl").stat().st_mtime_ns == before


def test_changed_input_is_refused_then_restart(tmp_path: Path, data_dir: Path, ray_session: str) -> None:
    rows = catalogue_rows()[:8]
    inp = write_catalogue(tmp_path / "in", rows=rows)
    out, _ = run(tmp_path, data_dir, inp, cfg=config(data_dir, images=False))
    write_catalogue(tmp_path / "in", rows=rows[:5])
    with pytest.raises(InvalidInput) as err:
        run(tmp_path, data_dir, inp, cfg=config(data_dir, images=False))
    assert err.value.field == "--out" and "files" in err.value.reason
    _, summary = run(tmp_path, data_dir, inp, cfg=config(data_dir, images=False), restart=True)
    assert summary["accepted"] == 5


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_formats_give_the_same_results(tmp_path: Path, data_dir: Path, fmt: str,
                                       jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    ref_out, _, _ = jsonl_run
    inp = write_catalogue(tmp_path / "in", fmt)
    out, summary = run(tmp_path, data_dir, inp)
    assert summary["accepted"] == 26
    # Units differ by format (bytes vs rows), so batches differ, and int8 text vectors move
    # in the 4th decimal with their batch-mates: scores are compared to 3 decimals.
    got, ref = pd.read_parquet(out / "pairs.parquet"), pd.read_parquet(ref_out / "pairs.parquet")
    assert got.drop(columns="score").equals(ref.drop(columns="score"))
    assert np.allclose(got.score, ref.score, atol=1e-3)
    assert pd.read_parquet(out / "clusters.parquet").equals(pd.read_parquet(ref_out / "clusters.parquet"))
    # Evidence lists ties by similarity, and those ties move with the 4th decimal too.
    def values(sigs: list[dict[str, Any]]) -> list[Any]:
        return [rounded([s["entity_id"], s["name"], s["source"], s["value"], s["score"]]) for s in sigs]

    assert values(signals_of(out)) == values(signals_of(ref_out))


def test_a_folder_of_mixed_files(tmp_path: Path, data_dir: Path, ray_session: str) -> None:
    rows = catalogue_rows()[:26]
    folder = tmp_path / "in"
    write_catalogue(folder / "a", "jsonl", rows[:7])
    write_catalogue(folder / "b", "csv", rows[7:14])
    write_catalogue(folder / "b" / "c", "parquet", rows[14:])
    (folder / "_SUCCESS").write_text("")
    out, summary = run(tmp_path, data_dir, folder)
    assert summary["accepted"] == 26 and summary["rejected"] == 1  # the JSONL's bad last line
    ids = [s["entity_id"] for s in signals_of(out) if s["name"] == "near_duplicate.count"]
    assert ids == [r["listing_id"] for r in rows[:7] + rows[14:] + rows[7:14]]  # a/, b/c/, b/ sorted paths


def test_duplicate_ids_are_rejected_once_seen(tmp_path: Path, data_dir: Path, ray_session: str) -> None:
    rows = catalogue_rows()[:4] + [dict(catalogue_rows()[1], title="another")]
    inp = write_catalogue(tmp_path / "in", rows=rows)
    out, summary = run(tmp_path, data_dir, inp, cfg=config(data_dir, images=False))
    rejected = [json.loads(ln) for ln in (out / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["entity_id"] == "SC1" and rejected[0]["error"]["code"] == "duplicate"
    assert "line 2" in rejected[0]["error"]["message"]


def test_reviews(tmp_path: Path, data_dir: Path, ray_session: str) -> None:
    template = "Amazing product, fast delivery, five stars, would buy again from this seller!"
    rows = [{"review_id": f"R{i}", "product_id": "P1", "seller_id": "S1", "reviewer_id": f"U{i}",
             "rating": 5, "text": template, "created_at": "2026-11-20T10:00:00Z"} for i in range(4)]
    rows.append({"review_id": "R9", "product_id": "P1", "seller_id": "S1", "reviewer_id": "U9", "rating": 2,
                 "text": "The strap broke after two weeks and support never answered.",
                 "created_at": "2026-11-21T10:00:00Z"})
    inp = tmp_path / "reviews.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    summary = run_batch(BatchRequest("reviews", inp, out, progress="off"), config(data_dir))
    assert summary["pairs"] == {"review_text": 6} and summary["clusters"] == 1
    by = {(s["entity_id"], s["name"]): s for s in signals_of(out)}
    assert by[("R0", "review.near_duplicate_count")]["value"] == 3
    assert by[("R9", "review.near_duplicate_count")]["value"] == 0
    assert by[("P1", "product.templated_review_share")]["value"] == pytest.approx(0.8)
    assert Review.model_validate(rows[0])
    # behaviour, rings and collective scores (docs/reviews.md): a burst of four five-star
    # first reviews, then a two-star one the next day
    assert by[("R9", "review.rating_deviation")]["value"] == 3
    assert by[("R3", "review.product_burst")]["evidence"]["product_reviews_that_day"] == 4
    assert by[("U9", "reviewer.review_count")]["value"] == 1
    assert by[("P1", "product.review_count")]["value"] == 5
    assert by[("P1", "product.review_burst")]["value"] > 1
    assert by[("S1", "seller.review_burst")]["value"] > 0
    for rid in ("R0", "R9"):
        assert 0 <= by[(rid, "review.spam_score")]["score"] <= 1
    assert ("U0", "reviewer.ring_score") in by and ("P1", "product.spam_score") in by


# --------------------------------------------------------------------------- resumability
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "serving.cli", "batch", "listings", *args]


def _same_outputs(a: Path, b: Path) -> None:
    for name in ("pairs.parquet", "clusters.parquet"):
        assert pd.read_parquet(a / name).equals(pd.read_parquet(b / name)), name
    assert (a / "rejected.jsonl").read_bytes() == (b / "rejected.jsonl").read_bytes()
    assert without_time(signals_of(a)) == without_time(signals_of(b))


def test_killed_job_resumes_without_redoing_units(tmp_path: Path, data_dir: Path, ray_session: str) -> None:
    rows = [dict(r, listing_id=f"{r['listing_id']}x{k}") for k in range(3) for r in catalogue_rows()[:26]]
    inp = write_catalogue(tmp_path / "in", rows=rows)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(config(data_dir, images=False, unit_bytes=1024).model_dump_json())
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_cli("--input", str(inp), "--out", str(out), "--address", ray_session,
                                 "--config", str(cfg_file), "--progress", "lines"),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    units = out / "work" / "units"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(units.glob("*.parquet"))) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in units.glob("*.parquet")}
    assert done_before and not (out / "summary.json").exists()
    total_units = len(json.loads((out / "manifest.json").read_text())["files"]) and \
        json.loads((out / "manifest.json").read_text())["units"]
    assert len(done_before) < total_units, "the kill came too late to test anything"

    resumed = subprocess.run(_cli("--input", str(inp), "--out", str(out), "--address", ray_session,
                                  "--config", str(cfg_file), "--progress", "lines"),
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "done before (resumed)" in resumed.stderr
    for name, mtime in done_before.items():  # finished units were not redone
        assert (units / name).stat().st_mtime_ns == mtime
    fresh = tmp_path / "fresh"
    run_batch(BatchRequest("listings", inp, fresh, progress="off"), config(data_dir, images=False,
                                                                            unit_bytes=1024))
    _same_outputs(out, fresh)


def test_each_later_stage_resumes_from_its_checkpoints(tmp_path: Path, data_dir: Path,
                                                       jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    """As if killed after some pair blocks: catalogue, some blocks, the outputs gone."""
    ref, _, _ = jsonl_run
    out = tmp_path / "partial"
    shutil.copytree(ref, out, symlinks=True)
    for name in ("summary.json", "signals.jsonl", "pairs.parquet", "clusters.parquet"):
        (out / name).unlink()
    blocks = sorted((out / "work" / "pairs").rglob("*.parquet"))
    for b in blocks[::2]:
        b.unlink()
    shutil.rmtree(out / "work" / "catalogue")
    shutil.rmtree(out / "indexes" / "default" / "image_sscd")
    inp = ref.parent / "in" / "listings.jsonl"
    run_batch(BatchRequest("listings", inp, out, progress="off"), config(data_dir))
    _same_outputs(out, ref)
    assert (out / "signals.jsonl").read_bytes() == (ref / "signals.jsonl").read_bytes()  # same observed_at


def test_two_node_cluster_gives_the_same_results(tmp_path: Path, data_dir: Path,
                                                 jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    from ray.cluster_utils import Cluster

    ref, _, _ = jsonl_run
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)
    try:
        cfg_file = tmp_path / "config.json"
        cfg_file.write_text(config(data_dir).model_dump_json())
        out = tmp_path / "cluster"
        inp = ref.parent / "in" / "listings.jsonl"
        res = subprocess.run(_cli("--input", str(inp), "--out", str(out), "--address", cluster.address,
                                  "--config", str(cfg_file), "--progress", "off"),
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        _same_outputs(out, ref)
    finally:
        cluster.shutdown()


def test_progress_lines_in_logs(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from serving.batch.progress import Progress

    buf = io.StringIO()
    stage = Progress(buf, "auto", interval=0.0).stage("extract", 4, done=1)
    stage.update(1, rows=100)
    stage.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("extract: 2/4 units (50%), 100 rows") and "ETA" in lines[0]
    assert "1 done before (resumed)" in lines[0]


def test_vectors_and_clusters_stay_memory_mapped(jsonl_run: tuple[Path, dict[str, Any], Path]) -> None:
    from serving.batch.catalogue import load_catalogue

    out, _, _ = jsonl_run
    cat = load_catalogue(out / "work" / "catalogue", "listing")
    assert isinstance(cat.text, np.memmap) and cat.text.shape == (26, 384)
    assert isinstance(cat.sscd, np.memmap) and cat.sscd.shape[0] == 4


def test_images_from_allow_listed_urls(tmp_path: Path, data_dir: Path, ray_session: str) -> None:
    """A listing's image by URL (allow-listed host) matches the same photo given by path."""
    import http.server
    import threading

    photo = (DEMO / "phone.jpg").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/phone.jpg"
        rows = [{"listing_id": "U1", "seller_id": "A", "title": "Phone", "images": [{"url": url}]},
                {"listing_id": "U2", "seller_id": "B", "title": "Bicycle", "images": [{"path": "phone.jpg"}]},
                {"listing_id": "U3", "seller_id": "C", "title": "Lamp",
                 "images": [{"url": "http://203.0.113.9/x.jpg"}]}]
        inp = write_catalogue(tmp_path / "in", rows=rows)
        cfg = config(data_dir)
        cfg.signals.images.decode.url_allow_hosts = ["127.0.0.1"]
        cfg.signals.images.decode.url_allow_http = True
        out, summary = run(tmp_path, data_dir, inp, cfg=cfg)
    finally:
        server.shutdown()
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert {("U1", "U2", "image_pdq"), ("U1", "U2", "image_sscd")} <= set(
        zip(pairs.a, pairs.b, pairs.modality, strict=True))
    assert summary["images"] == 2  # U3's host is not allow-listed: no image features
    assert summary["records_with_errors"] == 1
    errors = [json.loads(ln) for ln in (out / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["entity_id"] == "U3" and errors[0]["where"] == "listings.jsonl line 3"
    assert {e["field"] for e in errors[0]["errors"]} == {"images[0].url"}
    by = {(s["entity_id"], s["name"]): s for s in signals_of(out)}
    assert by[("U1", "image.reused_across_sellers")]["value"] == 1


def test_no_second_implementation_of_a_signal() -> None:
    """The batch modules build no Signal and define no extractor: they call signals/ and indexes/."""
    import ast

    for path in sorted((ROOT / "serving").glob("batch_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "Signal", f"{path.name} builds a Signal itself"
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                assert not bases & {"Extractor", "ImageExtractor"}, f"{path.name} defines an extractor"
    source = (ROOT / "serving" / "batch" / "extract.py").read_text()
    assert "build_registry(" in source  # the service's registry, not a list of its own


@pytest.mark.parametrize(("cpus", "actor_cpus", "wanted", "units", "expected"), [
    (2, 1.0, None, 100, (2, 1.0)),      # a 2-core laptop: two actors, one a core
    (1, 1.0, None, 100, (1, 1.0)),
    (3, 2.0, None, 100, (1, 2.0)),      # whole actors only: a 1.5-CPU share may fit no node
    (2, 1.0, 3, 100, (3, 0.6666)),      # shares rounded down to Ray's grain, so that they fit
    (2, 2.0, None, 100, (1, 2.0)),
    (2, 1.0, None, 1, (1, 2.0)),        # one unit on 2 CPUs: its actor takes both (node_cpus 2)
    (100, 1.0, None, 3, (3, 16.0)),     # a few units on many nodes: at most a node each
    (16, 1.0, None, 3, (3, 5.3333)),    # never more actors than units; they share the free CPUs
    (16, 1.0, 2, 3, (2, 1.0)),          # an explicit count keeps actor_cpus
    (4, 1.0, 8, 100, (8, 0.5)),         # an explicit count is kept, each asks for a share
    (0.5, 1.0, None, 100, (1, 0.5)),
])
def test_actor_pool_fits_the_cpus(cpus: float, actor_cpus: float, wanted: int | None,
                                  units: int, expected: tuple[int, float]) -> None:
    from serving.batch.extract import actor_pool, read_tasks_at_once

    actors, each = actor_pool(cpus, actor_cpus, wanted, units, node_cpus=16 if cpus >= 16 else cpus)
    assert (actors, each) == expected
    assert actors * each <= cpus
    # the read tasks reserve no CPU (nothing to strand between actors); their number is capped
    assert read_tasks_at_once(2) == 2 and read_tasks_at_once(160) == 10


def test_the_extractor_actor_builds_its_registry_with_its_threads(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from serving.batch import extract
    from serving.config import MarketGuardConfig

    seen = []
    monkeypatch.setattr(extract, "configure_process", lambda config: None)
    monkeypatch.setattr("signals.registry.build_registry",
                        lambda signals, data_dir, **kw: seen.append(signals) or _NoExtractors())
    extract.ExtractActor(MarketGuardConfig(data_dir=tmp_path).model_dump_json(), "listing", str(tmp_path), 1)
    (sig,) = seen
    assert sig.text_embedding.threads == sig.images.sscd.threads == sig.images.ocr.threads == 1
    assert sig.images.nsfw.threads == 1


class _NoExtractors:
    def for_kind(self, kind: str) -> list[object]:
        return []


def test_each_actor_runs_its_models_on_the_cpus_it_reserves() -> None:
    """Actors share a node's cores: one model thread an actor CPU (rounded, at least one),
    unless batch.actor_threads says otherwise; every model's threads follow."""
    from serving.batch.extract import actor_threads, with_threads
    from serving.config import MarketGuardConfig

    cfg = MarketGuardConfig()
    assert [actor_threads(cfg, c) for c in (0.3, 0.875, 1.0, 1.99, 4.0)] == [1, 1, 1, 2, 4]
    cfg.batch.actor_threads = 3
    assert actor_threads(cfg, 0.875) == 3
    sig = with_threads(cfg.signals, 1)
    assert sig.text_embedding.threads == sig.images.sscd.threads == sig.images.ocr.threads == 1
    assert sig.images.nsfw.threads == 1
    assert cfg.signals.text_embedding.threads == 2  # the service's own are untouched


def test_pairs_parquet_is_written_a_chunk_of_pairs_at_a_time(tmp_path: Path, monkeypatch) -> None:
    from indexes.clustering import Pairs
    from serving.batch import job as batch_job

    monkeypatch.setattr(batch_job, "_PAIRS_CHUNK", 3)
    meta = pa.Table.from_batches([  # two record batches, as the catalogue's Arrow file has
        pa.record_batch({"entity_id": ["L0", "L1", "L2"], "tenant": ["t1", "t1", "t2"]}),
        pa.record_batch({"entity_id": ["L3", "L4"], "tenant": ["t2", "t2"]})])
    text = Pairs(np.array([0, 0, 1, 2, 3, 0, 1]), np.array([1, 2, 2, 3, 4, 4, 3]),
                 np.arange(7, dtype=np.float32) / 10)
    sscd = Pairs(np.array([3]), np.array([4]), np.array([0.9], dtype=np.float32))
    path = tmp_path / "pairs.parquet"
    batch_job.write_pairs_parquet(path, meta, {"listing_text": text, "image_sscd": sscd})
    f = pq.ParquetFile(path)
    assert f.metadata.num_row_groups == 4  # 3 + 3 + 1 text pairs, 1 sscd pair
    got = pd.read_parquet(path)
    names = ["L0", "L1", "L2", "L3", "L4"]
    want = [(names[a], names[b], "listing_text", ["t1", "t1", "t2", "t2", "t2"][a]) for a, b in
            zip(text.a, text.b, strict=True)] + [("L3", "L4", "image_sscd", "t2")]
    assert list(got[["a", "b", "modality", "tenant"]].itertuples(index=False, name=None)) == want
    assert got["score"].tolist() == pytest.approx([*(np.arange(7) / 10), 0.9])
    assert not list(tmp_path.glob("*.tmp"))

    batch_job.write_pairs_parquet(path, meta, {})  # no pairs: the schema, no rows
    empty = pq.read_table(path)
    assert empty.num_rows == 0 and empty.schema == batch_job.PAIRS_SCHEMA


def test_a_run_with_labels_is_not_resumed_without_them(tmp_path: Path, data_dir: Path) -> None:
    from serving.batch.job import _claim, _manifest

    inp = tmp_path / "reviews.jsonl"
    inp.write_text("{}\n")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("{}\n")
    cfg = config(data_dir, images=False)
    with_labels = _manifest(BatchRequest("reviews", inp, tmp_path / "a", labels=labels), cfg, [inp], 1)
    without = _manifest(BatchRequest("reviews", inp, tmp_path / "a"), cfg, [inp], 1)
    for first, then in ((with_labels, without), (without, with_labels)):
        out = tmp_path / f"out-{first['labels'] is None}"
        out.mkdir()
        _claim(out, first, False)
        with pytest.raises(InvalidInput, match="labels"):
            _claim(out, then, False)
    old = tmp_path / "old"  # a manifest from before the key: a run without labels
    old.mkdir()
    _claim(old, {k: v for k, v in without.items() if k != "labels"}, False)
    _claim(old, without, False)
