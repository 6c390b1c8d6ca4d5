"""``marketguard labels import`` and ``marketguard report`` end to end: from the live store (with a time
window), and from a batch run over a generated catalogue with planted scams."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.cli import main
from serving.store.base import StoredItem, WriteBatch
from serving.store.sqlite import SqliteSignalStore
from signals.schemas import Signal
from tests.serving.report.helpers import label, write_jsonl


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return rc, json.loads(lines[-1]) if lines else None, err


def test_labels_import_refuses_a_file_with_bad_lines_whole(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(label("L1", "fraud")) + "\n{oops\n"
                   + json.dumps(label("L2", "fraud", loss_amount=5)) + "\n")  # a loss needs its currency
    rc, _, err = _cli(capsys, "labels", "import", str(bad), "--data-dir", str(tmp_path / "d"))
    assert rc == 1
    assert "line 2: not valid JSON" in err and "line 3: currency" in err and "nothing imported" in err
    store = SqliteSignalStore(tmp_path / "d" / "store.sqlite3")
    assert list(store.all_labels()) == []
    store.close()


def test_report_input_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = write_jsonl(tmp_path / "l.jsonl", [label("L1", "fraud")])
    for args, expected in (
            (["--signals", str(tmp_path / "nope.jsonl")], "--labels"),
            (["--signals", str(tmp_path / "nope.jsonl"), "--labels", str(labels)], "no such file"),
            (["--since", "last week"], "--since"),
            (["--target-precision", "1.5"], "--target-precision")):
        rc, _, err = _cli(capsys, "report", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "d"),
                          *args)
        assert rc == 2 and expected in err and "Traceback" not in err, (args, err)


def _listing(iid: str, seller: str, price: float) -> StoredItem:
    return StoredItem("default", "listing", iid, seller, "phones", price, "GBP", "{}",
                      {"text": np.ones(4, dtype=np.float32)})


def _signal(iid: str, value: int, at: str) -> Signal:
    return Signal(entity_type="listing", entity_id=iid, name="near_duplicate.count", value=value,
                  source="listing_near_duplicate@1", observed_at=datetime.fromisoformat(at))


def test_report_from_the_store_and_over_a_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d"
    store = SqliteSignalStore(data / "store.sqlite3")
    # before the change (Nov 1) the rule flags L1 (fraud) and L3 (legit); after it (Nov 10) only L1 and L2
    old = {"L1": 2, "L2": 0, "L3": 2, "L4": 0}
    new = {"L1": 2, "L2": 3, "L3": 0, "L4": 0}
    items = (("L1", "S1", 100.0), ("L2", "S2", 50.0), ("L3", "S3", 80.0), ("L4", "S3", 20.0))
    for iid, seller, price in items:
        store.write(WriteBatch("default", "listing", upsert=[_listing(iid, seller, price)],
                               signals=[_signal(iid, old[iid], "2026-11-01T00:00:00+00:00")]))
    for iid, v in new.items():
        store.write(WriteBatch("default", "listing", signals=[_signal(iid, v, "2026-11-10T00:00:00+00:00")]))
    # L5, flagged on Nov 10 and taken down since: its signals before the take-down still count
    store.write(WriteBatch("default", "listing", upsert=[_listing("L5", "S5", 500.0)],
                           signals=[_signal("L5", 4, "2026-11-10T00:00:00+00:00")]))
    store.write(WriteBatch("default", "listing", delete=["L5"], retract=[("listing", "L5")]))
    store.close()
    labels = write_jsonl(tmp_path / "l.jsonl", [label("L1", "fraud"),
                                                label("L2", "legit", labelled_at="2026-11-02T00:00:00Z"),
                                                label("L2", "fraud", labelled_at="2026-11-20T00:00:00Z"),
                                                label("L3", "legit"), label("L4", "legit"),
                                                label("L5", "fraud")])
    rc, got, _ = _cli(capsys, "labels", "import", str(labels), "--data-dir", str(data))
    assert (rc, got) == (0, {"imported": 6})

    def figures(out: str, *window: str) -> dict[str, Any]:
        rc, got, err = _cli(capsys, "report", "--data-dir", str(data), "--out", str(tmp_path / out), *window)
        assert rc == 0, err
        assert got["labels"] == 6 and Path(got["html"]).exists()
        rep = json.loads((tmp_path / out / "report.json").read_text())
        sig = next(s for s in rep["signals"] if s["name"] == "near_duplicate.count")
        assert (sig["fraud"], sig["legit"]) == (3, 2)  # L2's later label wins
        return sig

    latest = figures("now")["operating"]  # the store's latest values (L5's last): after the change
    assert (latest["tp"], latest["fp"], latest["recall"]) == (3, 0, 1.0)
    assert latest["money_caught"] == {"GBP": 150.0}  # L5's price went with its record
    before = figures("before", "--until", "2026-11-05")["thresholds"]
    assert [(r["threshold"], r["tp"], r["fp"]) for r in before] == [(2, 1, 1)]  # L5 not yet listed
    assert before[0]["honest_parties_affected"] == 1 and before[0]["money_held"] == {"GBP": 80.0}
    after = figures("after", "--since", "2026-11-05")["operating"]
    assert after == latest


@pytest.mark.slow
def test_report_on_a_batch_run_over_a_catalogue_with_planted_scams(
        tmp_path: Path, ray_session: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.serving.batch.test_job import ROOT, config, run, write_catalogue

    state = tmp_path / "state"
    state.mkdir()
    os.symlink(ROOT / "var" / "models", state / "models")
    out, _ = run(tmp_path, state, write_catalogue(tmp_path / "in"), cfg=config(state, images=False))
    # the scam campaign SC0-SC5 (one text copied across burner sellers), honest H*, and the
    # bait-priced repost M5 of M4
    labels = [label(f"SC{i}", "fraud") for i in range(6)] + [label(f"H{i}", "legit") for i in range(14)]
    labels += [label("M4", "legit"), label("M5", "fraud", loss_amount=35000, currency="IDR")]
    rc, got, err = _cli(capsys, "report", "--signals", str(out), "--labels",  # the run folder will do
                        str(write_jsonl(tmp_path / "labels.jsonl", labels)), "--out", str(tmp_path / "rep"))
    assert rc == 0, err
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    by = {s["id"]: s for s in rep["signals"]}
    cross = by["listing:near_duplicate.cross_seller_count@listing_near_duplicate@1"]
    assert (cross["fraud"], cross["legit"]) == (7, 15)
    op = cross["operating"]
    assert op["precision"] == 1.0 and op["tp"] >= 6  # the campaign, copied across sellers, is caught
    assert op["money_caught"]["GBP"] > 0
    # seller roll-ups judged through their listings: six burners fraud
    sellers = by["seller:seller.duplicate_listing_ratio@seller_rollup@1"]
    assert sellers["fraud"] == 7 and sellers["operating"]["tp"] >= 6
    assert rep["labels"]["by_entity_type"]["seller"]["implied"] > 0
    page = Path(got["html"]).read_text()
    assert "near_duplicate.cross_seller_count" in page
    assert page.count("data:image/png") >= 2 * len(rep["signals"])
    assert datetime.fromisoformat(rep["generated_at"].replace("Z", "+00:00")) <= datetime.now(UTC)
