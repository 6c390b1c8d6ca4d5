"""Shadow against live through the service's own write path: a candidate content-rules config runs
beside the live one (``shadow:``), both are stored, and the report compares them on the same labels."""

from __future__ import annotations

from pathlib import Path

from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.report.build import build_report
from serving.report.inputs import from_stores
from serving.scoring.extraction import FastExtraction
from signals.schemas import Label, Listing


def test_a_candidate_rule_is_judged_beside_the_live_one(data_dir: Path) -> None:
    cfg = MarketGuardConfig.model_validate({
        "data_dir": str(data_dir),
        "signals": {"images": {k: {"enabled": False} for k in ("pdq", "sscd", "local", "ocr", "nsfw")}},
        # live: no prohibited terms; the candidate adds "replica"
        "shadow": {"label": "trial", "content_rules": {"prohibited_terms": {"*": ["replica"]}}}})
    ex = FastExtraction.build(cfg.signals, data_dir, shadow=cfg.shadow)
    engine = open_engine(cfg, *ex.models())
    titles = {"F1": "Rolex Submariner replica watch", "F2": "Replica designer handbag, looks real",
              "F3": "Cheap perfume gift set", "G1": "Vintage oak dining table",
              "G2": "Children's bicycle 16 inch", "G3": "Canon EOS R6 camera body"}
    listings = [Listing(listing_id=i, seller_id=f"s{i}", title=t, price=10.0, currency="GBP")
                for i, t in titles.items()]
    engine.score_listings(ex.extract("listing", listings))
    for i in titles:
        engine.add_label(Label(entity_type="listing", entity_id=i, label="fraud" if i[0] == "F" else "legit"))
    report = build_report(from_stores([engine.store], "test store"), 0.9)
    engine.close()
    ids = {f.id for f in report.signals}
    assert "listing:content.prohibited_terms@content_rules@2" in ids
    assert "listing:content.prohibited_terms@content_rules_trial@2" in ids
    cmp = next(c for c in report.shadow if c["name"] == "content.prohibited_terms")
    assert cmp["live"].endswith("@content_rules@2") and cmp["shadow"].endswith("@content_rules_trial@2")
    assert (cmp["labelled"], cmp["fraud"]) == (6, 3)
    # the live rule never flags; the candidate catches F1 and F2 and nothing honest
    best = next(p for p in cmp["points"] if p["matched_on"] == "shadow operating threshold")
    assert (best["shadow_tp"], best["shadow_flagged"], best["shadow_recall"]) == (2, 2, round(2 / 3, 4))
    assert best["live_tp"] == 0 and best["live_threshold"] is None
