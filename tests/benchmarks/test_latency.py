"""``benchmarks.latency``: the pure helpers (percentiles, ratios, parsing, payloads); no timing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.latency import (
    CATEGORIES,
    ListingText,
    Plan,
    clean_text,
    closed_loop_throughput,
    collage_jpeg,
    histogram_totals,
    latency_summary,
    listing_body,
    names_listing,
    overhead_ratio,
    parse_args,
    parse_side,
    plan_for,
    pooled,
    rate,
    ratio,
    reencode_jpeg,
    signal_value,
    split,
    steady_latencies,
)
from signals.schemas import Listing, parse_record


def test_latency_summary_interpolates_like_numpy() -> None:
    ms = [float(x) for x in range(1, 101)]  # 1..100
    s = latency_summary(ms)
    assert s["n"] == 100 and s["p50"] == 50.5 and s["p95"] == 95.05 and s["p99"] == 99.01
    assert s["mean"] == 50.5 and s["max"] == 100.0
    assert latency_summary([7.0]) == {"n": 1, "p50": 7.0, "p95": 7.0, "p99": 7.0, "mean": 7.0, "max": 7.0}
    assert latency_summary([])["p50"] is None and latency_summary([])["n"] == 0


def test_rates_and_ratios_refuse_empty_or_zero_denominators() -> None:
    assert rate(30, 10.0) == 3.0
    assert rate(0, 10.0) is None and rate(5, 0.0) is None
    assert ratio(3.0, 4.0) == 0.75 and ratio(None, 4.0) is None and ratio(3.0, 0.0) is None
    # HTTP p50 over (echo p50 + in-process p50): 150 / (20 + 100)
    assert overhead_ratio(150.0, 20.0, 100.0) == 1.25
    assert overhead_ratio(150.0, None, 100.0) is None and overhead_ratio(None, 20.0, 100.0) is None


def test_pooled_steps_add_answers_and_seconds_not_rates() -> None:
    a = {"requests": 3, "errors": 1, "statuses": {"200": 2, "503": 1}, "seconds": 2.0, "ok_ms": [10.0, 30.0],
         "error_samples": ["503: busy"], "with_near_duplicates": 1}
    b = {"requests": 2, "errors": 0, "statuses": {"200": 2}, "seconds": 1.0, "ok_ms": [20.0, 40.0],
         "counted": 1, "ran_out_of_payloads": True}
    p = pooled([a, b])
    assert p["requests"] == 5 and p["ok"] == 4 and p["errors"] == 1
    assert p["statuses"] == {"200": 4, "503": 1} and p["error_samples"] == ["503: busy"]
    assert p["counted"] == 3 and p["window_rps"] == 1.0  # answers in the windows / their seconds
    assert p["latency_ms"]["p50"] == 25.0 and p["with_near_duplicates"] == 1 and p["ran_out_of_payloads"]


def test_split_keeps_order_and_balances() -> None:
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split([1, 2], 4) == [[1], [2], [], []]
    assert sum(split(list(range(100)), 4), []) == list(range(100))
    with pytest.raises(ValueError):
        split([1], 0)


def test_histogram_totals_add_the_matching_series_only() -> None:
    text = "\n".join([
        "# HELP marketguard_request_seconds request latency by route and status",
        'marketguard_request_seconds_bucket{method="POST",route="/v1/listings",status="200",le="0.5"} 3.0',
        'marketguard_request_seconds_sum{method="POST",route="/v1/listings",status="200"} 1.5',
        'marketguard_request_seconds_count{method="POST",route="/v1/listings",status="200"} 10.0',
        'marketguard_request_seconds_sum{method="POST",route="/v1/listings",status="422"} 0.5',
        'marketguard_request_seconds_count{method="POST",route="/v1/listings",status="422"} 2.0',
        'marketguard_request_seconds_sum{method="GET",route="/readyz",status="200"} 9.0',
        'marketguard_request_seconds_count{method="GET",route="/readyz",status="200"} 90.0',
    ])
    post = {"method": "POST", "route": "/v1/listings"}
    assert histogram_totals(text, "marketguard_request_seconds", post) == (2.0, 12.0)
    assert histogram_totals(text, "marketguard_request_seconds", {"route": "/nowhere"}) == (0.0, 0.0)


def test_names_listing_looks_in_evidence_matches() -> None:
    signals = [
        {"name": "near_duplicate.count", "value": 1,
         "evidence": {"matches": [{"id": "fresh-001", "modality": "image_sscd", "similarity": 0.99}]}},
        {"name": "content.offplatform_contact", "value": 0, "evidence": {}},
    ]
    assert names_listing(signals, "fresh-001")
    assert not names_listing(signals, "fresh-002")
    assert not names_listing([{"name": "x", "evidence": None}], "fresh-001")
    assert signal_value(signals, "near_duplicate.count") == 1 and signal_value(signals, "nope") is None


def test_parse_side_reads_magellan_and_wdc_records() -> None:
    abt = ("COL name VAL sony pink cyber-shot dscw120p COL description VAL 7.2 megapixel 4x zoom "
           "COL price VAL 104.95 ")
    rec = parse_side(abt)
    assert rec == ListingText("sony pink cyber-shot dscw120p", "7.2 megapixel 4x zoom", 104.95)
    walmart = ("COL title VAL sony 16gb sd card COL category VAL usb drives COL brand VAL sony "
               "COL modelno VAL sf16n4 COL price VAL 0.0 ")
    rec = parse_side(walmart)
    assert rec is not None and rec.price is None  # 0.0 is "no price"
    assert rec.description == "Brand: sony. Model: sf16n4"
    wdc = 'COL title VAL  "GoPro - HERO5 Black 4K Action Camera"@en-US'
    assert parse_side(wdc) == ListingText("GoPro - HERO5 Black 4K Action Camera", "", None)
    assert parse_side("COL title VAL  ") is None
    assert clean_text('" Nike Mens Shoes "@en "x"@de') == "Nike Mens Shoes x"


def test_listing_body_is_a_valid_listing_and_deterministic() -> None:
    text = ListingText("Garmin Forerunner 245 GPS running watch", "", None)
    a = listing_body("lat-00001", "seller-3", text, seed=5)
    assert a == listing_body("lat-00001", "seller-3", text, seed=5)
    assert a["description"] and a["price"] > 0 and a["currency"] == "USD" and a["category"] in CATEGORIES
    assert listing_body("lat-00001", "seller-3", ListingText("t", "d" * 50, 9.5), seed=5)["price"] == 9.5
    rec = parse_record(Listing, {**a, "images": [{"data_b64": "aGVsbG8="}]})
    assert rec.listing_id == "lat-00001" and rec.seller_id == "seller-3"


def _photos(tmp_path: Path) -> list[Path]:
    out = []
    rng = np.random.default_rng(0)
    for i in range(5):
        p = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (40 + i, 60, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def test_collage_is_a_square_jpeg_decided_by_its_seed(tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    a = collage_jpeg(1, "$9.99", photos, side=64)
    assert a == collage_jpeg(1, "$9.99", photos, side=64)
    assert a != collage_jpeg(2, "$9.99", photos, side=64)
    with Image.open(io.BytesIO(a)) as im:
        assert im.format == "JPEG" and im.size == (64, 64)
    again = reencode_jpeg(a, 70)
    assert again != a
    with Image.open(io.BytesIO(again)) as im:
        assert im.size == (64, 64)


def test_plan_slices_never_overlap_and_quick_is_smaller() -> None:
    for quick in (True, False):
        plan = plan_for(quick)
        ranges = sorted(plan.slices().values(), key=lambda r: r.start)
        assert ranges[0].start == 0
        assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:], strict=False))
        assert plan.payloads == ranges[-1].stop
        assert len(plan.level_max) == len(plan.levels) and 1 in plan.levels and 16 in plan.levels
    quick, full = plan_for(True), plan_for(False)
    assert quick.prefill == 10_000 and full.prefill == 100_000
    assert quick.level_s < full.level_s
    assert isinstance(full, Plan) and json.dumps(full.slices(), default=str)


def test_arguments() -> None:
    args = parse_args([])
    assert not args.quick and args.port == 0 and not args.keep and args.details is None
    args = parse_args(["--quick", "--port", "8123", "--keep", "--details", "/tmp/x.json"])
    assert args.quick and args.port == 8123 and args.keep and args.details == Path("/tmp/x.json")
    with pytest.raises(SystemExit):
        parse_args(["--port", "70000"])


def test_closed_loop_throughput_leaves_out_the_ramp() -> None:
    # Two clients; the pipeline answers its first (batched) pair at 2.0 s, then one answer
    # every 0.5 s: the steady requests each take 1.0 s, so 2 clients / 1.0 s = 2 a second.
    requests = [(0.0, 2.0), (0.0, 2.0), (2.0, 1.0), (2.0, 1.0), (3.0, 1.0), (3.0, 1.0)]
    assert closed_loop_throughput(requests, 2) == 2.0
    assert closed_loop_throughput(requests[:3], 2) is None  # one steady request for two clients
    assert closed_loop_throughput([], 1) is None
    # one client, no queue: 1 / mean latency
    assert closed_loop_throughput([(0.0, 0.25), (0.25, 0.25), (0.5, 0.25)], 1) == 4.0


def test_steady_latencies_cut_the_ramp_and_the_drain() -> None:
    # first answer at 1.0; the clients stop at 10.0; median latency 1.0: sent in [1.0, 9.0]
    requests = [(0.0, 1.0), (0.0, 1.5), (1.0, 1.0), (5.0, 1.2), (9.0, 1.0), (9.5, 0.4)]
    assert steady_latencies(requests, stop=10.0) == [1.0, 1.2, 1.0]
    assert steady_latencies(requests) == [1.0, 1.2, 1.0, 0.4]
    assert steady_latencies([]) == []
    assert closed_loop_throughput(requests, 1, stop=10.0) == round(1 / (3.2 / 3), 3)
