"""``marketguard extract``: signals as JSON lines; bad input named, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.cli import EXIT_ITEM_ERRORS, EXIT_OK, EXIT_USAGE, main

DEMO = Path(__file__).resolve().parents[2] / "serving" / "demo"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(list(args))
    cap = capsys.readouterr()
    lines = [json.loads(ln) for ln in cap.out.splitlines() if ln.strip()]
    return code, lines, cap.err


def write(tmp_path: Path, name: str, content: Any) -> Path:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return p


SCAM = {"listing_id": "L1", "seller_id": "S1", "title": "iPhone 14 Pro sealed",
        "description": "Message me on WhatsApp +44 7700 900123, cheap!", "price": 150,
        "currency": "GBP"}


def test_extract_listing_prints_signals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "l.json", SCAM)
    code, lines, err = run(capsys, "extract", "listing", str(f), "--data-dir", str(tmp_path))
    assert code == EXIT_OK, err
    by_name = {s["name"]: s for s in lines}
    contact = by_name["content.offplatform_contact"]
    assert contact["schema"] == "marketguard.signal/v1" and contact["entity_id"] == "L1"
    assert contact["value"] >= 1 and contact["score"] > 0.5
    kinds = {m["kind"] for m in contact["evidence"]["matches"]}
    assert {"phone", "handle"} <= kinds
    assert {"content.obfuscation", "content.prohibited_terms"} <= by_name.keys()


def test_extract_review(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "r.json", {"review_id": "R1", "product_id": "P1", "seller_id": "S1",
                                   "reviewer_id": "U1", "rating": 5,
                                   "text": "Great seller, email me at bob at gmail dot com",
                                   "created_at": "2026-11-24T10:00:00Z"})
    code, lines, _ = run(capsys, "extract", "review", str(f), "--data-dir", str(tmp_path))
    assert code == EXIT_OK
    contact = next(s for s in lines if s["name"] == "content.offplatform_contact")
    assert contact["entity_type"] == "review" and contact["value"] >= 1


def test_clean_listing_does_not_fire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "l.json", {"listing_id": "L2", "seller_id": "S1",
                                   "title": "Samsung 55 inch 4K UHD TV UE55AU7100",
                                   "description": "1920x1080, SKU 8847-2231-09, bought 12/03/2024",
                                   "price": 320, "currency": "GBP"})
    code, lines, _ = run(capsys, "extract", "listing", str(f), "--data-dir", str(tmp_path))
    assert code == EXIT_OK
    contact = next(s for s in lines if s["name"] == "content.offplatform_contact")
    assert contact["value"] == 0


def test_demo_catalogue_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "extract", "listing", str(DEMO / "listings.jsonl"),
                           "--data-dir", str(tmp_path))
    assert code == EXIT_OK, err
    flagged = {s["entity_id"] for s in lines
               if s["name"] == "content.offplatform_contact" and s["value"]}
    assert {"demo-L2", "demo-L3", "demo-L6", "demo-L8"} <= flagged
    assert not flagged & {"demo-L1", "demo-L4", "demo-L5", "demo-L9", "demo-L10"}


def test_json_array_and_one_bad_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = dict(SCAM, listing_id="L 2")
    f = write(tmp_path, "l.json", [SCAM, bad])
    code, lines, err = run(capsys, "extract", "listing", str(f), "--data-dir", str(tmp_path))
    assert code == EXIT_ITEM_ERRORS
    assert "(item 1)" in err and "listing_id" in err
    assert {s["entity_id"] for s in lines} == {"L1"}  # the good record still came out


@pytest.mark.parametrize(("content", "needle"), [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ('{"listing_id": "L1"}\n{broken', "line 2 is not valid JSON"),
    ("\udcff", "not UTF-8"),
])
def test_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          content: str | None, needle: str) -> None:
    f = tmp_path / "in.json"
    if content == "\udcff":
        f.write_bytes(b"\xff\xfe\x00bad")
    elif content is not None:
        f.write_text(content)
    code, lines, err = run(capsys, "extract", "listing", str(f))
    assert code == EXIT_USAGE and lines == []
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize(("record", "field"), [
    ({"seller_id": "S1", "title": "x"}, "listing_id"),
    (dict(SCAM, price=-1), "price"),
    (dict(SCAM, images=[{"data_b64": "%%%"}]), "images[0].data_b64"),
    (dict(SCAM, tenant="Not Valid"), "tenant"),
    (["a list", "of strings"], "JSON object"),
])
def test_schema_violations_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          record: Any, field: str) -> None:
    f = write(tmp_path, "l.json", record)
    code, lines, err = run(capsys, "extract", "listing", str(f))
    assert code == EXIT_ITEM_ERRORS and lines == []
    assert field in err


def test_bad_config_names_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, "c.yaml", "signals:\n  text_embedding:\n    threads: 0\n")
    f = write(tmp_path, "l.json", SCAM)
    code, _, err = run(capsys, "extract", "listing", str(f), "--config", str(cfg))
    assert code == EXIT_USAGE and "config.signals.text_embedding.threads" in err


def test_console_script_never_prints_a_traceback(tmp_path: Path) -> None:
    f = write(tmp_path, "l.json", {"listing_id": "L1"})
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "extract", "listing", str(f)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_ITEM_ERRORS
    assert "seller_id" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "extract", "shop", str(f)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_USAGE and "invalid choice" in proc.stderr


def test_demo_image_contact_found_by_ocr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "extract", "listing", str(DEMO / "listings.jsonl"),
                           "--data-dir", str(tmp_path))
    assert code == EXIT_OK, err
    ocr = {s["entity_id"]: s for s in lines
           if s["name"] == "content.offplatform_contact" and s["source"].startswith("image_ocr@")}
    phones = [m["normalized"] for m in ocr["demo-L2"]["evidence"]["matches"] if m["kind"] == "phone"]
    assert phones == ["+447700900461"]
    assert ocr["demo-L1"]["value"] == 0  # the same photo without the banner


def test_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    """``marketguard extract ... | head -1`` must not end in a BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "extract", "listing", str(DEMO / "listings.jsonl"),
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first signal is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_OK
    assert "Traceback" not in err and "BrokenPipe" not in err
