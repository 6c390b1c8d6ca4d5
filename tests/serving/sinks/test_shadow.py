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
