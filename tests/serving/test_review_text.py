"""Review text in the service and the batch job: templates, re-posts, empty texts, the review banks
(``marketguard bank import|export``), and batch and service giving the same review text signals."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from serving.bank_command import export_bank, import_bank
from serving.batch.job import BatchRequest, run_batch
from serving.cli import main
from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.scoring.engine import CatalogueEngine
from serving.scoring.extraction import FastExtraction
from signals.errors import InvalidInput
from signals.schemas import Review
from tests.indexes.test_review_templates import EDITED, HONEST, TEMPLATE

pytestmark = pytest.mark.slow

COMPARED = ("review.near_duplicate_count", "review.self_duplicate_count", "review.bank_similarity",
            "review.fake_text_score", "product.templated_review_share")
FAKES = [
    "Absolutely amazing hotel, the best stay of my life! My husband and I loved every minute, luxury!",
    "Best hotel ever!!! Perfect service, perfect rooms, my wife and I will definitely come back again!",
    "I was blown away by the luxury of this amazing hotel. My family loved it. Highly recommend to everyone!",
    "Wonderful experience from start to finish! The staff made my husband and me feel like royalty!",
    "My stay was simply perfect. The most luxurious rooms I have ever seen, I will definitely return!",
    "Incredible hotel, amazing staff and the best location in Chicago. My kids loved it so much!",
]
GENUINE = [
    "Room on the 12th floor was small but clean. Street noise at night, bring earplugs. Desk staff fine.",
    "Parking cost 45 dollars a night, which nobody mentioned at booking. Breakfast was average, eggs cold.",
    "Elevator was slow in the mornings. Checkout took 20 minutes. The bed was comfortable though.",
    "Good value for a weekend rate. The bathroom fan was broken and the shower pressure was weak.",
    "Location is two blocks from the train. Room faced an air shaft. Wifi worked, coffee in lobby ok.",
    "Stayed three nights for a conference. Carpet stained, housekeeping skipped a day, price was fair.",
]
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def text_only(data_dir: Path) -> MarketGuardConfig:
    return MarketGuardConfig.model_validate({
        "data_dir": str(data_dir),
        "signals": {"images": {"pdq": {"enabled": False}, "sscd": {"enabled": False},
                               "local": {"enabled": False}, "ocr": {"enabled": False},
                               "nsfw": {"enabled": False}}},
        "batch": {"unit_rows": 5, "query_block": 4}})


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def seed_banks(cfg: MarketGuardConfig, tmp: Path) -> dict[str, Any]:
    """Fraud and benign review banks in the data dir, through the bank command."""
    fakes = write_jsonl(tmp / "fakes.jsonl", [{"review_id": f"F{i}", "text": t} for i, t in enumerate(FAKES)])
    genuine = write_jsonl(tmp / "genuine.jsonl", [{"review_id": f"G{i}", "text": t, "reason": "verified stay"}
                                                  for i, t in enumerate(GENUINE)])
    assert import_bank(cfg, "fake-reviews", fakes)["review_text_model"] is None  # one kind: no model yet
    return import_bank(cfg, "genuine-reviews", genuine, "benign")


def reviews() -> list[dict[str, Any]]:
    def r(rid: str, user: str, text: str, product: str = "P1") -> dict[str, Any]:
        return {"review_id": rid, "product_id": product, "seller_id": "S1", "reviewer_id": user, "rating": 5,
                "text": text, "created_at": "2026-11-01T10:00:00Z"}

    return [r("R1", "U1", TEMPLATE), r("R2", "U2", EDITED),
            r("R3", "U1", TEMPLATE),  # U1 re-posts its own review
            r("R4", "U3", "Great product, fast shipping!"), r("R5", "U4", "Great product, fast shipping!"),
            r("R6", "U5", ""),  # empty: never indexed nor compared
            r("R7", "U6", "   ", "P2"),
            r("R8", "U7", HONEST),
            r("R9", "U8", FAKES[0].replace("Chicago", "town"), "P2")]


def service_signals(engine: CatalogueEngine, ex: FastExtraction
                    ) -> dict[tuple[str, str, str], dict[str, Any]]:
    rows = reviews()
    for row in rows:  # one at a time, as requests arrive
        got = engine.score_reviews(ex.extract("review", [Review.model_validate(row)]))
        assert got[0].error is None, got[0].error
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for etype, eid in [("review", r["review_id"]) for r in rows] + [("product", "P1"), ("product", "P2")]:
        found = engine.entity_signals("default", etype, eid, False)  # type: ignore[arg-type]
        assert found is not None
        out.update({(etype, eid, s["name"]): s for s in found["signals"] if s["name"] in COMPARED})
    return out


def test_service_review_text_signals_with_banks(data_dir: Path, tmp_path: Path) -> None:
    cfg = text_only(data_dir)
    summary = seed_banks(cfg, tmp_path)
    assert summary["review_text_model"]["fraud"] == 6 and summary["review_text_model"]["benign"] == 6
    ex = FastExtraction.build(cfg.signals, data_dir)
    models, dims = ex.models()
    engine = open_engine(cfg, models, dims)
    try:
        got = service_signals(engine, ex)
        with pytest.raises(InvalidInput, match="another writer"):  # the service holds its banks
            import_bank(cfg, "more", tmp_path / "fakes.jsonl")
        idx = engine.indexes.get("default", "review_text")
        assert idx is not None and "R1" in idx.index and "R6" not in idx.index and "R7" not in idx.index
    finally:
        engine.close()

    def v(rid: str, name: str) -> Any:
        return got[("review", rid, name)]["value"]

    assert v("R1", "review.near_duplicate_count") == 1  # R2 (U2's edited copy); R3 is U1's own
    assert v("R1", "review.self_duplicate_count") == 1
    assert v("R2", "review.near_duplicate_count") == 2 and v("R2", "review.self_duplicate_count") == 0
    assert v("R3", "review.self_duplicate_count") == 1
    for rid in ("R4", "R5", "R6", "R7", "R8"):  # common praise, empty texts, an honest review
        assert v(rid, "review.near_duplicate_count") == 0, rid
    assert got[("product", "P1", "product.templated_review_share")]["value"] == pytest.approx(3 / 7)
    bank = got[("review", "R9", "review.bank_similarity")]
    assert bank["evidence"]["calibrated"] and bank["evidence"]["neighbours"][0]["id"] == "F0"
    assert bank["value"] > 0.9  # a copy of a bank fake, at the contract's threshold
    fake = got[("review", "R9", "review.fake_text_score")]
    assert fake["score"] > got[("review", "R8", "review.fake_text_score")]["score"]
    assert fake["evidence"]["model"] == summary["review_text_model"]["fingerprint"]
    assert ("review", "R6", "review.fake_text_score") not in got  # no text, nothing scored
    assert got[("review", "R6", "review.bank_similarity")]["score"] == 0.0


def test_batch_and_service_give_the_same_review_text_signals(data_dir: Path, tmp_path: Path,
                                                            ray_session: str) -> None:
    cfg = text_only(data_dir)
    seed_banks(cfg, tmp_path)
    inp = write_jsonl(tmp_path / "reviews.jsonl", reviews())
    out = tmp_path / "run"
    run_batch(BatchRequest("reviews", inp, out, address=ray_session, progress="off"), cfg)
    import pyarrow.parquet as pq

    paired = set(pq.read_table(out / "pairs.parquet").column("a").to_pylist()
                 + pq.read_table(out / "pairs.parquet").column("b").to_pylist())
    assert "R1" in paired and not paired & {"R4", "R5", "R6", "R7"}  # praise and empty texts: never paired
    batch = {(s["entity_type"], s["entity_id"], s["name"]): s
             for s in map(json.loads, (out / "signals.jsonl").read_text(encoding="utf-8").splitlines())
             if s["name"] in COMPARED}
    ex = FastExtraction.build(cfg.signals, data_dir)
    models, dims = ex.models()
    engine = open_engine(cfg, models, dims)  # the same data dir: the same global banks
    try:
        service = service_signals(engine, ex)
    finally:
        engine.close()

    def comparable(s: dict[str, Any]) -> Any:
        ev = s.get("evidence") or {}
        return (round(float(s["value"]), 3), None if s["score"] is None else round(s["score"], 3),
                sorted(m["id"] for m in ev.get("matches", [])), [n["id"] for n in ev.get("neighbours", [])])

    assert set(batch) == set(service)
    differences = [(k, comparable(batch[k]), comparable(service[k])) for k in sorted(batch)
                   if comparable(batch[k]) != comparable(service[k])]
    assert not differences, differences
    assert batch[("review", "R2", "review.near_duplicate_count")]["value"] == 2  # not vacuously equal
    assert ("review", "R9", "review.fake_text_score") in batch
    # the service started from this run (--from-batch) holds each product's review tally, which
    # its writes then move: the batch's counts
    from serving.scoring.backfill import import_batch_run
    from serving.scoring.engine import product_tally_key
    from serving.store.sqlite import SqliteSignalStore

    fresh = tmp_path / "from-batch"
    fresh.mkdir()
    import_batch_run(out, fresh, models)
    store = SqliteSignalStore(fresh / "store.sqlite3")
    try:
        shares = {k[1]: s["evidence"] for k, s in batch.items() if k[2] == "product.templated_review_share"}
        assert shares and any(e["templated_reviews"] for e in shares.values())
        for product, evidence in shares.items():
            assert json.loads(store.get_meta(product_tally_key("default", product)) or "{}") == evidence
    finally:
        store.close()


def test_bank_command_round_trips_every_kind(data_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = text_only(data_dir)
    seed_banks(cfg, tmp_path)
    exported = export_bank(cfg, "genuine-reviews", tmp_path / "genuine-export.jsonl")
    assert exported == {"bank": "genuine-reviews", "modality": "review_text", "kind": "benign", "exported": 6,
                        "file": str(tmp_path / "genuine-export.jsonl")}
    lines = [json.loads(x) for x in (tmp_path / "genuine-export.jsonl").read_text().splitlines()]
    assert lines[0]["text"] in GENUINE and lines[0]["reason"] == "verified stay"
    assert len(lines[0]["vector"]) == 384
    # an export names its kind on every line: imported into a new bank, it stays benign
    again = import_bank(cfg, "genuine-copy", tmp_path / "genuine-export.jsonl")
    assert again["added"] == 6 and again["modality"] == "review_text" and again["kind"] == "benign"
    with pytest.raises(InvalidInput, match="line 1.kind"):
        import_bank(cfg, "odd", write_jsonl(tmp_path / "odd.jsonl",
                                            [{"review_id": "Z", "text": "t", "kind": "meh"}]))
    with pytest.raises(InvalidInput, match="'fraud' item in 'benign' bank"):
        import_bank(cfg, "genuine-reviews", write_jsonl(tmp_path / "x.jsonl", [
            {"review_id": "X", "text": "a text", "kind": "fraud"}]))
    # a --kind that is not the existing bank's is refused, nothing added: genuine reviews must
    # never land in a fraud bank (and export --kind checks the same)
    genuine_more = write_jsonl(tmp_path / "g.jsonl", [{"review_id": "G9", "text": "lovely stay, kind staff"}])
    with pytest.raises(InvalidInput, match="'fake-reviews' is a fraud bank, not benign"):
        import_bank(cfg, "fake-reviews", genuine_more, "benign")
    assert export_bank(cfg, "fake-reviews", tmp_path / "f.jsonl", "fraud")["exported"] == len(FAKES)
    with pytest.raises(InvalidInput, match="--kind"):
        export_bank(cfg, "genuine-reviews", tmp_path / "f.jsonl", "fraud")
    assert main(["bank", "export", "genuine-reviews", str(tmp_path / "g2.jsonl"), "--kind", "benign",
                 "--data-dir", str(data_dir)]) == 0
    assert main(["bank", "import", "genuine-reviews", str(genuine_more), "--kind", "fraud",
                 "--data-dir", str(data_dir)]) == 2
    assert "--kind" in capsys.readouterr().err
    assert main(["bank", "import", "genuine-reviews", str(genuine_more), "--data-dir", str(data_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "benign"  # the bank's own kind
    assert export_bank(cfg, "genuine-reviews", tmp_path / "g3.jsonl")["exported"] == len(GENUINE) + 1
    # listings, and PDQ through the ThreatExchange/HMA CSV, by the console command
    listings = write_jsonl(tmp_path / "scams.jsonl",
                           [{"listing_id": "L1", "title": "iPhone 14 sealed, WhatsApp me"}])
    assert main(["bank", "import", "scams", str(listings), "--data-dir", str(data_dir)]) == 0
    hma = tmp_path / "hashes.csv"
    hma.write_text("acecf3355e3125c8e24e2f30e0d4ec4f8482b878b3c34cdbdf063278db275992,H1,"
                   "2020-07-31T18:47:52+0000,sample\n", encoding="utf-8")
    assert main(["bank", "import", "photos", str(hma), "--data-dir", str(data_dir)]) == 0
    assert main(["bank", "export", "photos", str(tmp_path / "out.csv"), "--data-dir", str(data_dir)]) == 0
    assert (tmp_path / "out.csv").read_text().startswith("acecf3355e3125c8")
    assert main(["bank", "export", "nope", str(tmp_path / "n.jsonl"), "--data-dir", str(data_dir)]) == 2


def test_a_tenants_review_banks_over_http_fit_its_own_model(data_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from serving.api.app import create_app
    from serving.api.backend import LocalBackend

    cfg = text_only(data_dir)
    ex = FastExtraction.build(cfg.signals, data_dir)
    models, dims = ex.models()
    engine = open_engine(cfg, models, dims)
    client = TestClient(create_app(LocalBackend(ex, engine), cfg.service))
    try:
        for bank, kind, texts in (("fakes", "fraud", FAKES), ("real", "benign", GENUINE)):
            items = [{"review_id": f"{bank}-{i}", "text": t} for i, t in enumerate(texts)]
            r = client.post(f"/v1/banks/{bank}/items",
                            json={"modality": "review_text", "kind": kind, "items": items})
            assert r.status_code == 200, r.text
        row = {**reviews()[0], "review_id": "H1", "text": FAKES[1]}
        got = {s["name"]: s for s in client.post("/v1/reviews", json=row).json()["signals"]}
        assert got["review.bank_similarity"]["evidence"]["calibrated"]
        assert got["review.bank_similarity"]["evidence"]["neighbours"][0]["id"] == "fakes-1"
        assert got["review.fake_text_score"]["evidence"]["model"] is not None
        # another tenant has no review banks: the v1 score, no text score
        other = client.post("/v1/reviews", json={**row, "review_id": "H2", "tenant": "globex"}).json()
        names = {s["name"] for s in other["signals"]}
        assert "review.bank_similarity" in names and "review.fake_text_score" not in names
    finally:
        client.close()
        engine.close()
