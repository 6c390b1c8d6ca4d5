"""Shadow signals: a candidate config runs beside the live one; its signals are stored with their own
source and ``shadow: true``, never answered to the caller, and reach only the sinks that take them."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.api.backend import LocalBackend
from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.scoring.extraction import FastExtraction
from serving.sinks.publisher import sink_names
from tests.serving.scoring.test_engine import text_only


def test_a_candidate_rule_runs_in_shadow(data_dir: Path) -> None:
    cfg = text_only(data_dir).model_copy(update={"sinks": MarketGuardConfig.model_validate({"sinks": {
        "webhooks": [{"url": "http://127.0.0.1:9/decisions", "secrets": ["k"]},
                     {"url": "http://127.0.0.1:9/analytics", "secrets": ["k"], "shadow": True}]}}).sinks,
        "shadow": MarketGuardConfig.model_validate({"shadow": {"label": "trial", "content_rules": {
            "prohibited_terms": {"*": ["replica"]}}}}).shadow})
    decisions, analytics = sink_names(cfg.sinks)
    assert sink_names(cfg.sinks, shadow_only=True) == [analytics]
    extraction = FastExtraction.build(cfg.signals, data_dir, shadow=cfg.shadow)
    engine = open_engine(cfg, *extraction.models())
    client = TestClient(create_app(LocalBackend(extraction, engine), cfg.service))
    r = client.post("/v1/listings", json={"listing_id": "L1", "seller_id": "s", "price": 20,
                                          "title": "Replica watch, boxed", "currency": "USD"})
    assert r.status_code == 200
    answered = r.json()["signals"]
    assert not any(s["shadow"] for s in answered)  # the caller decides on live signals only
    live = next(s for s in answered if s["name"] == "content.prohibited_terms")
    assert live["value"] == 0 and live["source"].startswith("content_rules@")
    stored = client.get("/v1/entities/listing/L1/signals").json()["signals"]
    trial = next(s for s in stored if s["name"] == "content.prohibited_terms" and s["shadow"])
    assert trial["value"] == 1 and trial["source"].startswith("content_rules_trial@")
    queued = {}
    for sink in (decisions, analytics):
        _, rows = engine.store.outbox_next(sink, 1000)
        queued[sink] = [json.loads(b)["signal"] for _, b in rows]
    assert not any(s["shadow"] for s in queued[decisions])  # a decision sink never sees them
    assert any(s["shadow"] and s["source"] == trial["source"] for s in queued[analytics])
    assert len(queued[analytics]) == len(queued[decisions]) + 3  # the candidate's three signals too
    engine.close()


def test_a_candidate_near_duplicate_threshold_runs_in_shadow(data_dir: Path) -> None:
    """A stricter candidate rule (no pair scorer, cosine >= 0.999) beside the live one: the live
    signals pair a lightly edited copy, the candidate's do not, both stored under the same names; the
    candidate's edges are never stored, so the first listing's live signals are untouched by it."""
    from serving.scoring.engine import NearDuplicateRules

    cfg = text_only(data_dir).model_copy(update={"shadow": MarketGuardConfig.model_validate({"shadow": {
        "label": "strict", "thresholds": {"listing_text": 0.999},
        "near_duplicates": {"pair_scorer": "none", "text_copy_cosine": None}}}).shadow})
    extraction = FastExtraction.build(cfg.signals, data_dir)
    engine = open_engine(cfg, *extraction.models())
    assert engine.shadow is not None and isinstance(engine.shadow.rules, NearDuplicateRules)
    assert engine.shadow.rules.config.thresholds.listing_text == 0.999
    assert engine.shadow.rules.config.thresholds.image_sscd == cfg.indexes.thresholds.image_sscd  # unchanged
    client = TestClient(create_app(LocalBackend(extraction, engine), cfg.service))
    title = "Sony WH-1000XM4 wireless noise cancelling headphones, black, boxed"
    for lid, seller, text in (("L1", "s1", title), ("L2", "s2", title + " - quick sale")):
        r = client.post("/v1/listings", json={"listing_id": lid, "seller_id": seller, "price": 200,
                                              "title": text, "currency": "USD"})
        assert r.status_code == 200
        assert not any(s["shadow"] for s in r.json()["signals"])
    stored = client.get("/v1/entities/listing/L2/signals").json()["signals"]

    def value(name: str, shadow: bool) -> object:
        return next(s["value"] for s in stored if s["name"] == name and s["shadow"] is shadow)

    assert value("near_duplicate.cross_seller_count", False) == 1
    assert value("near_duplicate.cross_seller_count", True) == 0
    assert value("near_duplicate.max_similarity", True) == 0.0
    shadow_sources = {s["source"] for s in stored if s["shadow"]}
    assert shadow_sources == {"listing_near_duplicate_strict@1"}
    assert not any(s["name"] == "near_duplicate.cluster_size" and s["shadow"] for s in stored)
    first = client.get("/v1/entities/listing/L1/signals").json()["signals"]
    assert next(s["value"] for s in first if s["name"] == "near_duplicate.cross_seller_count"
                and not s["shadow"]) == 1
    engine.close()


def test_a_bad_candidate_setting_fails_at_load_time() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="listing_txt"):
        MarketGuardConfig.model_validate({"shadow": {"thresholds": {"listing_txt": 0.9}}})
    with pytest.raises(pydantic.ValidationError):
        MarketGuardConfig.model_validate({"shadow": {"thresholds": {"listing_text": 7}}})
