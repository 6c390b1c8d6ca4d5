"""The report's inputs and figures: label history, roll-up labels, time windows, shadow beside live on
the same labels, the page and its JSON."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from serving.report.build import build_report, compare_shadow
from serving.report.inputs import (
    Facts,
    collect_signals,
    from_files,
    judge,
    label_record,
    latest_labels,
    parse_time,
    read_labels_file,
)
from serving.report.render import render
from signals.errors import InvalidInput
from tests.serving.report.helpers import label, scam_run, wire, write_jsonl


def test_later_labels_win_and_earlier_ones_are_counted() -> None:
    recs = [label_record(label("A", "fraud", labelled_at="2026-11-02T00:00:00Z"), 1),
            label_record(label("A", "legit", labelled_at="2026-11-01T00:00:00Z"), 2),  # older, read later
            label_record(label("B", "fraud"), 3), label_record(label("B", "legit"), 4)]  # undated: file order
    latest, read, superseded = latest_labels(recs)
    assert latest[("default", "listing", "A")].label == "fraud"
    assert latest[("default", "listing", "B")].label == "legit"
    assert (read, superseded) == (4, 2)


def test_a_label_without_date_counts_as_received() -> None:
    dated = label_record(label("A", "fraud", labelled_at="2026-11-02T00:00:00Z"), 1)
    received_later = label_record(label("A", "legit"), 2, received_at="2026-11-03T00:00:00+00:00")
    assert latest_labels([dated, received_later])[0][("default", "listing", "A")].label == "legit"


def test_listing_labels_judge_their_sellers_unless_a_seller_has_its_own() -> None:
    given = [("L1", "legit"), ("L2", "fraud"), ("L3", "legit"), ("L4", "fraud")]
    latest, _, _ = latest_labels([label_record(label(e, lab), i) for i, (e, lab) in enumerate(given)]
                                 + [label_record(label("S3", "legit", etype="seller"), 9)])
    facts = {("default", "listing", "L1"): Facts("S1", None), ("default", "listing", "L2"): Facts("S1", None),
             ("default", "listing", "L3"): Facts("S2", None), ("default", "listing", "L4"): Facts("S3", None)}
    judged = judge(latest, facts)
    s1, s2, s3 = (judged[("default", "seller", s)] for s in ("S1", "S2", "S3"))
    assert s1.is_fraud and s1.via == "listing"
    assert not s2.is_fraud
    assert s3.via == "label" and not s3.is_fraud  # its own label wins over its fraud listing


def test_review_labels_judge_reviewer_and_product() -> None:
    latest, _, _ = latest_labels([label_record(label("R1", "fraud", etype="review"), 1)])
    judged = judge(latest, {("default", "review", "R1"): Facts("U1", "P1")})
    assert judged[("default", "reviewer", "U1")].is_fraud and judged[("default", "product", "P1")].is_fraud


def test_money_is_the_labels_loss_else_the_listing_price() -> None:
    latest, _, _ = latest_labels([label_record(label("L1", "fraud", loss_amount=900, currency="EUR"), 1),
                                  label_record(label("L2", "fraud"), 2)])
    judged = judge(latest, {("default", "listing", "L1"): Facts("S", None, 10.0, "GBP"),
                            ("default", "listing", "L2"): Facts("S", None, 20.0, "GBP")})
    l1, l2 = judged[("default", "listing", "L1")], judged[("default", "listing", "L2")]
    assert (l1.amount, l1.currency) == (900, "EUR")
    assert (l2.amount, l2.currency) == (20, "GBP")


def test_signals_of_unlabelled_entities_are_ignored_and_windows_select_by_observed_at() -> None:
    judged = judge(latest_labels([label_record(label("A", "fraud"), 1)])[0], {})
    wires = [wire("A", "near_duplicate.count", 1, at="2026-11-01T00:00:00Z"),
             wire("A", "near_duplicate.count", 7, at="2026-11-05T00:00:00Z"),
             wire("Z", "near_duplicate.count", 9),  # no label
             wire("A", "image.reused_across_sellers", True),
             wire("A", "bank.match", "text", source="bank_match@1")]
    got = collect_signals(wires, judged, None, None)
    key = ("default", "listing", "A")
    assert got[("listing", "near_duplicate.count", "listing_near_duplicate@1")].values == {key: 7.0}
    assert got[("listing", "image.reused_across_sellers", "listing_near_duplicate@1")].values == {key: 1.0}
    text = got[("listing", "bank.match", "bank_match@1")]
    assert text.non_numeric == 1 and math.isnan(text.values[key])
    before = collect_signals(wires, judged, None, parse_time("2026-11-02", "--until"))
    assert before[("listing", "near_duplicate.count", "listing_near_duplicate@1")].values == {key: 1.0}
    after = collect_signals(wires, judged, parse_time("2026-11-05T00:00:00Z", "--since"), None)
    assert after[("listing", "near_duplicate.count", "listing_near_duplicate@1")].values == {key: 7.0}
    assert parse_time("2026-11-02", "x") == datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(InvalidInput):
        parse_time("yesterday", "--since")


def test_a_bad_label_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(label("A", "fraud")) + "\n\n" + json.dumps(label("B", "maybe")) + "\n")
    with pytest.raises(InvalidInput, match="line 3"):
        read_labels_file(path)


def test_report_figures_from_a_run(tmp_path: Path) -> None:
    signals, labels = scam_run(tmp_path / "run")
    inputs = from_files(signals, write_jsonl(tmp_path / "labels.jsonl", labels))
    report = build_report(inputs, target_precision=0.9)
    by = {f.id: f for f in report.signals}
    nd = by["listing:near_duplicate.count@listing_near_duplicate@1"]
    # values 5 3 0 3 | 3 0 0 0 0 0 (four scams first): thresholds 5, 3 (0 never flags)
    assert list(nd.curve.thresholds) == [5, 3]
    assert list(nd.curve.tp) == [1, 3] and list(nd.curve.fp) == [0, 1]
    assert nd.operating == 0  # precision 3/4 at t=3 misses 0.9
    assert nd.curve.money_caught["GBP"][1] == pytest.approx(100 + 101 + 103)
    assert nd.curve.parties_total == 2 and list(nd.curve.parties_affected) == [0, 1]  # shop0 (L4)
    # seller roll-ups judged by their listings' labels: burners fraud, shops legit
    sc = by["seller:seller.cluster_count@seller_rollup@1"]
    assert (sc.curve.positives, sc.curve.negatives) == (4, 2)
    assert list(sc.curve.tp) == [4] and list(sc.curve.fp) == [0]
    # listing signals rolled up to the labelled sellers: a seller's value is its listings' highest;
    # burners 5 3 0 3 (fraud), shop0 max(3, 0, 0) = 3, shop1 0 (legit)
    up = by["seller:near_duplicate.count@listing_near_duplicate@1"]
    assert up.values.rolled_from == "listing" and "highest among its listings" in up.description
    assert list(up.curve.thresholds) == [5, 3] and list(up.curve.tp) == [1, 3] and list(up.curve.fp) == [0, 1]
    assert up.curve.parties_total == 2 and list(up.curve.parties_affected) == [0, 1]
    data = report.to_json()
    assert data["labels"]["by_entity_type"]["seller"] == {"fraud": 4, "legit": 2, "implied": 6}
    cats = {g["group"]: g for g in next(s for s in data["signals"] if s["id"] == nd.id)["by_category"]}
    assert cats["audio"]["labelled"] == 5 and cats["phones"]["labelled"] == 5


def test_shadow_is_compared_with_live_on_the_same_labels(tmp_path: Path) -> None:
    signals, labels = scam_run(tmp_path / "run")
    report = build_report(from_files(signals, write_jsonl(tmp_path / "labels.jsonl", labels)), 0.9)
    assert len(report.shadow) == 2  # on the listings, and rolled up to their sellers
    cmp = next(c for c in report.shadow if c["entity_type"] == "listing")
    assert cmp["live"] == "listing:content.offplatform_contact@content_rules@2"
    assert cmp["shadow"] == "listing:content.offplatform_contact@content_rules_candidate@2"
    # live flags L0 L1 (fraud) and L5 (legit): coverage 3/10, precision 2/3, recall 2/4;
    # the candidate flags L0 L1 L2, all fraud: at the same coverage precision 1, recall 3/4
    point = cmp["points"][0]
    assert point["coverage"] == pytest.approx(0.3)
    assert (point["live_precision"], point["live_recall"]) == (pytest.approx(2 / 3, abs=1e-4), 0.5)
    assert (point["shadow_precision"], point["shadow_recall"]) == (1.0, 0.75)
    assert point["shadow_coverage"] == pytest.approx(0.3)


def test_shadow_never_gets_more_coverage_than_live() -> None:
    from serving.report.build import _figures
    from serving.report.inputs import ReportInputs, SignalValues

    judged = judge(latest_labels([label_record(label(f"L{i}", "fraud" if i < 2 else "legit"), i)
                                  for i in range(4)])[0], {})
    keys = sorted(judged)

    def sv(vals: list[float], shadow: bool) -> SignalValues:
        return SignalValues("listing", "price.anomaly", "price_anomaly@1", shadow,
                            dict(zip(keys, vals, strict=True)))

    inputs = ReportInputs("t", judged, {}, {})
    live = _figures(sv([0.9, 0.0, 0.0, 0.0], False), inputs, 0.9)  # flags 1 of 4
    cand = _figures(sv([0.5, 0.5, 0.5, 0.0], True), inputs, 0.9)  # flags 3 of 4 at its only threshold
    points = compare_shadow(live, cand)["points"]
    assert points[0]["matched_on"] == "live operating threshold"
    assert points[0]["coverage"] == 0.25
    assert points[0]["shadow_threshold"] is None and points[0]["shadow_tp"] == 0
    # and at the candidate's own operating point (3 of 4 flagged), the live signal at most as wide
    assert points[-1]["matched_on"] == "shadow operating threshold"
    assert (points[-1]["shadow_coverage"], points[-1]["live_coverage"]) == (0.75, 0.25)


def test_account_age_flags_the_young(tmp_path: Path) -> None:
    judged = judge(latest_labels([label_record(label(f"U{i}", "fraud" if i < 2 else "legit",
                                                     etype="reviewer"), i) for i in range(4)])[0], {})
    wires = [wire(f"U{i}", "reviewer.account_age_days_at_review", d, etype="reviewer",
                  source="review_behaviour@1") for i, d in enumerate([1, 3, 300, 900])]
    from serving.report.inputs import ReportInputs

    inputs = ReportInputs("t", judged, {}, collect_signals(wires, judged, None, None))
    f = build_report(inputs, 0.9).signals[0]
    data = build_report(inputs, 0.9).to_json()["signals"][0]
    assert data["flags_when"] == "value <= threshold"
    assert data["operating"]["threshold"] == 3 and data["operating"]["recall"] == 1.0
    assert f.curve.parties_total == 2


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    signals, labels = scam_run(tmp_path / "run")
    report = build_report(from_files(signals, write_jsonl(tmp_path / "labels.jsonl", labels)), 0.9)
    page = render(report, tmp_path / "out")
    text = page.read_text()
    assert "<table class=sortable id=signals>" in text
    assert text.count("data:image/png;base64,") == 2 * len(report.signals) + len(report.shadow)
    assert "http://" not in text and "https://" not in text  # nothing fetched from anywhere
    assert "connects buyers" not in text and "phone numbers, emails" in text  # the catalogue's meaning
    assert "rests on few labels" in text  # ten labels: the page says so
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["schema"] == "marketguard.report/v1" and len(data["signals"]) == len(report.signals)
    plots = list((tmp_path / "out" / "plots").glob("*.png"))
    assert len(plots) == 2 * len(report.signals) + len(report.shadow)


def test_a_shadow_signal_stands_beside_the_extractor_it_is_a_candidate_of() -> None:
    from serving.report.build import _figures, live_for
    from serving.report.inputs import ReportInputs, SignalValues

    judged = judge(latest_labels([label_record(label("L1", "fraud"), 1)])[0], {})
    inputs = ReportInputs("t", judged, {}, {})

    def fig(source: str, shadow: bool = False) -> object:
        return _figures(SignalValues("listing", "near_duplicate.count", source, shadow,
                                     {("default", "listing", "L1"): 1.0}), inputs, 0.9)

    live = [fig("listing_near_duplicate@1"), fig("listing@1"), fig("bank_match@1")]
    got = live_for(fig("listing_near_duplicate_trial@1", True), live)  # type: ignore[arg-type]
    assert got is live[0]  # the longest extractor name it extends, not "listing"
    assert live_for(fig("other_candidate@1", True), live) is None  # type: ignore[arg-type]  # ambiguous
