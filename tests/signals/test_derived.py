"""The index-derived signal builders: near-duplicates, banks, price anomaly, roll-ups.

Every rule of signals.derived, signals.near_duplicate, signals.price_anomaly and
signals.rollups, plus the contract every emitted Signal keeps: its name is in the
catalogue with this entity type, it round-trips through its wire form, and the same
input gives byte-identical output.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from signals.catalogue import CATALOGUE
from signals.derived import (
    BANK_MATCH,
    BENIGN_DISCOUNT,
    DERIVED_SOURCES,
    LISTING_NEAR_DUPLICATE,
    MAX_EVIDENCE_MATCHES,
    BankHit,
    DerivedSource,
    Match,
    bank_match_signal,
    check_derived_sources,
    review_bank_similarity_signal,
    review_fake_text_signal,
)
from signals.near_duplicate import (
    best_matches,
    listing_near_duplicate_signals,
    review_near_duplicate_signals,
)
from signals.price_anomaly import (
    PriceReference,
    anomaly_score,
    price_anomaly_signal,
    robust_z,
)
from signals.review_text import ReviewTextVerdict
from signals.rollups import (
    ProductStats,
    SellerStats,
    product_rollup_signals,
    seller_rollup_signals,
)
from signals.schemas import Listing, Review, Signal
from signals.vocabulary import IMAGE_MODALITIES

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
LISTING_NAMES = ["near_duplicate.count", "near_duplicate.cross_seller_count",
                 "near_duplicate.max_similarity", "near_duplicate.cluster_size",
                 "image.reused_across_sellers"]


def make_listing(**over: Any) -> Listing:
    data: dict[str, Any] = {"listing_id": "L1", "seller_id": "S1", "title": "Road bike",
                            "price": 100.0, "currency": "EUR", "tenant": "acme"}
    data.update(over)
    return Listing.model_validate(data)


def make_review(**over: Any) -> Review:
    data: dict[str, Any] = {"review_id": "R1", "product_id": "P1", "seller_id": "S1",
                            "reviewer_id": "U1", "rating": 5, "text": "Great!",
                            "created_at": "2026-11-20T10:00:00Z", "tenant": "acme"}
    data.update(over)
    return Review.model_validate(data)


def check(sig: Signal, source: DerivedSource | None = None) -> Signal:
    """The contract of every emitted signal."""
    spec = CATALOGUE[sig.name]
    assert sig.entity_type in spec.entity_types
    assert sig.score is None or 0.0 <= sig.score <= 1.0
    assert Signal.model_validate(sig.to_json_dict()) == sig
    json.dumps(sig.to_json_dict())  # evidence is plain JSON
    if source is not None:
        assert sig.source == source.source and sig.name in source.emits
    return sig


def by_name(signals: list[Signal]) -> dict[str, Signal]:
    for s in signals:
        check(s)
    return {s.name: s for s in signals}


def wire(signals: list[Signal | None]) -> str:
    return "\n".join(json.dumps(s.to_json_dict() if s else None) for s in signals)


# ---- declarations ---------------------------------------------------------------------


def test_every_declared_name_is_in_the_catalogue() -> None:
    check_derived_sources()
    for src in DERIVED_SOURCES:
        for name in src.emits:
            assert name in CATALOGUE


def test_check_rejects_unknown_names_and_duplicate_sources() -> None:
    with pytest.raises(ValueError, match="not in the catalogue"):
        check_derived_sources([DerivedSource("x", 1, ("near_duplicate.nope",))])
    with pytest.raises(ValueError, match="declared twice"):
        check_derived_sources([BANK_MATCH, BANK_MATCH])


def test_source_refuses_undeclared_name() -> None:
    with pytest.raises(ValueError, match="does not declare"):
        BANK_MATCH.signal(tenant="acme", entity_type="listing", entity_id="L1", name="image.nsfw",
                          value=1, score=0.5, evidence={}, observed_at=NOW)


def test_match_and_hit_validate() -> None:
    with pytest.raises(ValueError, match="modality"):
        Match("L2", "audio", 0.9, "S2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        Match("L2", "listing_text", math.nan, "S2")
    with pytest.raises(ValueError, match="kind"):
        BankHit("b", "maybe", "X", "image_pdq", 3, 0.99)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        BankHit("b", "fraud", "X", "image_pdq", math.inf, 0.99)
    assert IMAGE_MODALITIES == ("image_pdq", "image_sscd")


# ---- listing near-duplicates ------------------------------------------------------------


def test_zero_matches_emit_all_five_clean_signals() -> None:
    sigs = listing_near_duplicate_signals(make_listing(), [], 1, NOW)
    assert [s.name for s in sigs] == LISTING_NAMES
    for s in sigs:
        check(s, LISTING_NEAR_DUPLICATE)
        assert s.value == 0 or (s.name == "near_duplicate.cluster_size" and s.value == 1)
        assert s.score == 0.0
        assert s.entity_type == "listing" and s.entity_id == "L1" and s.tenant == "acme"
        assert s.observed_at == NOW
    got = by_name(sigs)
    assert got["near_duplicate.max_similarity"].value == 0.0
    assert got["near_duplicate.count"].evidence == {"matches": [], "total": 0}


def test_signals_never_share_evidence_objects() -> None:
    sigs = listing_near_duplicate_signals(make_listing(), [Match("L2", "image_pdq", 0.9, "S2")], 2, NOW)
    count, _, max_sim, _, _ = sigs
    assert count.evidence == max_sim.evidence
    assert count.evidence["matches"] is not max_sim.evidence["matches"]


def test_partner_matched_by_two_modalities_counts_once() -> None:
    matches = [Match("L2", "listing_text", 0.91, "S2"), Match("L2", "image_pdq", 0.97, "S2"),
               Match("L2", "image_sscd", 0.88, "S2"), Match("L3", "listing_text", 0.85, "S1")]
    got = by_name(listing_near_duplicate_signals(make_listing(), matches, 3, NOW))
    assert got["near_duplicate.count"].value == 2
    assert got["near_duplicate.cross_seller_count"].value == 1
    assert got["image.reused_across_sellers"].value == 1
    assert got["near_duplicate.max_similarity"].value == pytest.approx(0.97)
    assert got["near_duplicate.max_similarity"].score == pytest.approx(0.97)
    # Evidence keeps one entry per (partner, modality).
    ev = got["near_duplicate.count"].evidence
    assert [(m["id"], m["modality"]) for m in ev["matches"]] == [
        ("L2", "image_pdq"), ("L2", "listing_text"), ("L2", "image_sscd"), ("L3", "listing_text")]
    assert ev["total"] == 4


def test_repeated_pair_keeps_best_similarity() -> None:
    matches = [Match("L2", "image_pdq", 0.80, "S2"), Match("L2", "image_pdq", 0.95, "S2")]
    ms = best_matches(matches, "L1")
    assert ms == [Match("L2", "image_pdq", 0.95, "S2")]


def test_own_id_never_counts() -> None:
    matches = [Match("L1", "image_pdq", 1.0, "S9"), Match("L1", "listing_text", 1.0, "S1")]
    got = by_name(listing_near_duplicate_signals(make_listing(), matches, 1, NOW))
    assert got["near_duplicate.count"].value == 0
    assert got["near_duplicate.cross_seller_count"].value == 0
    assert got["near_duplicate.max_similarity"].value == 0.0
    assert got["near_duplicate.count"].evidence["matches"] == []


def test_unknown_owner_is_not_cross_seller() -> None:
    matches = [Match("L2", "image_sscd", 0.9, None), Match("L3", "image_pdq", 0.9, "S1")]
    got = by_name(listing_near_duplicate_signals(make_listing(), matches, 1, NOW))
    assert got["near_duplicate.count"].value == 2
    assert got["near_duplicate.cross_seller_count"].value == 0
    assert got["image.reused_across_sellers"].value == 0
    assert got["near_duplicate.count"].evidence["matches"][0]["seller_id"] is None


def test_owner_known_from_any_match_of_the_partner() -> None:
    matches = [Match("L2", "listing_text", 0.9, None), Match("L2", "image_pdq", 0.8, "S2")]
    got = by_name(listing_near_duplicate_signals(make_listing(), matches, 1, NOW))
    assert got["near_duplicate.cross_seller_count"].value == 1
    assert all(m["seller_id"] == "S2" for m in got["near_duplicate.count"].evidence["matches"])


def test_image_reuse_needs_an_image_modality_and_another_seller() -> None:
    matches = [Match("L2", "listing_text", 0.99, "S2"),   # text only, other seller
               Match("L3", "image_pdq", 0.95, "S1"),      # image, same seller
               Match("L4", "image_sscd", 0.90, "S4"),     # counts
               Match("L5", "image_pdq", 0.92, "S5")]      # counts
    got = by_name(listing_near_duplicate_signals(make_listing(), matches, 5, NOW))
    reuse = got["image.reused_across_sellers"]
    assert reuse.value == 2
    assert [m["id"] for m in reuse.evidence["matches"]] == ["L5", "L4"]
    assert got["near_duplicate.cross_seller_count"].value == 3
    assert [m["id"] for m in got["near_duplicate.cross_seller_count"].evidence["matches"]] == [
        "L2", "L5", "L4"]


def test_cross_seller_scores_above_plain_count() -> None:
    cross = [Match(f"L{i}", "listing_text", 0.9, f"S{i}") for i in range(2, 5)]
    same = [Match(f"L{i}", "listing_text", 0.9, "S1") for i in range(2, 5)]
    a = by_name(listing_near_duplicate_signals(make_listing(), cross, 1, NOW))
    b = by_name(listing_near_duplicate_signals(make_listing(), same, 1, NOW))
    assert a["near_duplicate.count"].score == b["near_duplicate.count"].score
    assert a["near_duplicate.cross_seller_count"].score > a["near_duplicate.count"].score > 0
    assert b["near_duplicate.cross_seller_count"].score == 0.0
    assert a["near_duplicate.count"].score == pytest.approx(1 - math.exp(-3 / 5))
    assert a["near_duplicate.cross_seller_count"].score == pytest.approx(1 - math.exp(-3 / 2))


def test_cluster_size_score_rises_with_size() -> None:
    scores = [by_name(listing_near_duplicate_signals(make_listing(), [], n, NOW))[
        "near_duplicate.cluster_size"] for n in (1, 2, 5, 50)]
    assert [s.value for s in scores] == [1, 2, 5, 50]
    assert scores[0].score == 0.0
    assert all(a.score < b.score for a, b in zip(scores, scores[1:], strict=False))  # type: ignore[operator]
    with pytest.raises(ValueError, match="cluster_size"):
        listing_near_duplicate_signals(make_listing(), [], 0, NOW)


def test_evidence_order_and_truncation() -> None:
    matches = [Match(f"L{i:02d}", "listing_text", 0.5 + i / 100, f"S{i}") for i in range(30)]
    matches += [Match("Lb", "image_pdq", 0.99, "S2"), Match("La", "image_sscd", 0.99, "S2"),
                Match("La", "image_pdq", 0.99, "S2")]
    sig = by_name(listing_near_duplicate_signals(make_listing(), list(reversed(matches)), 1, NOW))[
        "near_duplicate.count"]
    ev = sig.evidence["matches"]
    assert len(ev) == MAX_EVIDENCE_MATCHES and sig.evidence["total"] == 33
    # similarity desc, then id, then modality
    assert [(m["id"], m["modality"]) for m in ev[:3]] == [
        ("La", "image_pdq"), ("La", "image_sscd"), ("Lb", "image_pdq")]
    assert ev[3]["id"] == "L29" and ev[-1]["id"] == "L13"
    assert set(ev[0]) == {"id", "modality", "similarity", "seller_id"}
    assert sig.value == 32


def test_similarity_outside_unit_range_is_clipped() -> None:
    matches = [Match("L2", "listing_text", 1.0000002, "S2")]
    got = by_name(listing_near_duplicate_signals(make_listing(), matches, 2, NOW))
    assert got["near_duplicate.max_similarity"].value == 1.0
    assert got["near_duplicate.max_similarity"].score == 1.0


def test_listing_signals_are_deterministic_whatever_the_input_order() -> None:
    matches = [Match("L2", "listing_text", 0.9, "S2"), Match("L3", "image_pdq", 0.9, "S3"),
               Match("L2", "image_pdq", 0.9, None), Match("L4", "image_sscd", 0.7, "S1")]
    a = listing_near_duplicate_signals(make_listing(), matches, 4, NOW)
    b = listing_near_duplicate_signals(make_listing(), list(reversed(matches)), 4, NOW)
    assert wire(list(a)) == wire(list(b))


# ---- review near-duplicates ---------------------------------------------------------------


def test_review_same_reviewer_and_unknown_owner_ignored() -> None:
    matches = [Match("R2", "review_text", 0.95, "U1"),    # same reviewer repeating
               Match("R3", "review_text", 0.93, None),    # unknown
               Match("R4", "review_text", 0.90, "U4"),
               Match("R5", "review_text", 0.80, "U5"),
               Match("R5", "review_text", 0.85, "U5"),
               Match("R1", "review_text", 1.0, "U9")]     # itself
    sig, own = (check(s) for s in review_near_duplicate_signals(make_review(), matches, NOW))
    assert sig.name == "review.near_duplicate_count" and sig.source == "review_near_duplicate@2"
    assert own.name == "review.self_duplicate_count" and own.value == 1  # the re-post is its own signal
    assert own.evidence["matches"] == [{"id": "R2", "modality": "review_text", "similarity": 0.95,
                                        "reviewer_id": "U1"}]
    assert sig.entity_type == "review" and sig.entity_id == "R1" and sig.tenant == "acme"
    assert sig.value == 2
    assert sig.score == pytest.approx(1 - math.exp(-2 / 2))
    assert sig.evidence["matches"] == [
        {"id": "R4", "modality": "review_text", "similarity": 0.9, "reviewer_id": "U4"},
        {"id": "R5", "modality": "review_text", "similarity": 0.85, "reviewer_id": "U5"}]


def test_review_zero_matches() -> None:
    for sig in review_near_duplicate_signals(make_review(), [], NOW):
        check(sig)
        assert sig.value == 0 and sig.score == 0.0 and sig.evidence == {"matches": [], "total": 0}


# ---- banks -------------------------------------------------------------------------------


def hit(bank: str, kind: str, item: str, sim: float, modality: str = "image_pdq",
        distance: float | None = None) -> BankHit:
    d = (1 - sim) * 256 if distance is None else distance
    return BankHit(bank, kind, item, modality, d, sim)  # type: ignore[arg-type]


def test_bank_zero_hits() -> None:
    for item in (make_listing(), make_review()):
        sig = check(bank_match_signal(item, [], NOW), BANK_MATCH)
        assert sig.value == 0 and sig.score == 0.0 and sig.evidence["matches"] == []
    assert bank_match_signal(make_listing(), [], NOW).entity_type == "listing"
    assert bank_match_signal(make_review(), [], NOW).entity_type == "review"
    assert bank_match_signal(make_review(), [], NOW).entity_id == "R1"


def test_bank_counts_distinct_fraud_items_and_scores_best() -> None:
    hits = [hit("scams", "fraud", "X1", 0.95, "image_pdq"),
            hit("scams", "fraud", "X1", 0.90, "image_sscd", 0.1),   # same item, other modality
            hit("scams", "fraud", "X1", 0.80, "image_pdq"),         # same item again, farther
            hit("scams", "fraud", "X2", 0.85),
            hit("stock", "benign", "G1", 0.70)]
    sig = check(bank_match_signal(make_listing(), hits, NOW))
    assert sig.value == 2
    assert sig.score == pytest.approx(0.95)
    assert sig.evidence["benign_discount"] is False
    ev = sig.evidence["matches"]
    assert [(m["bank"], m["id"], m["modality"]) for m in ev] == [
        ("scams", "X1", "image_pdq"), ("scams", "X1", "image_sscd"), ("scams", "X2", "image_pdq"),
        ("stock", "G1", "image_pdq")]
    assert set(ev[0]) == {"bank", "kind", "id", "modality", "distance", "similarity"}
    assert ev[0]["distance"] == pytest.approx(0.05 * 256, abs=1e-3)
    assert ev[-1]["kind"] == "benign"


def test_benign_match_at_least_as_close_discounts() -> None:
    fraud = hit("scams", "fraud", "X1", 0.90)
    closer = check(bank_match_signal(make_listing(), [fraud, hit("stock", "benign", "G1", 0.95)], NOW))
    equal = check(bank_match_signal(make_listing(), [fraud, hit("stock", "benign", "G1", 0.90)], NOW))
    farther = check(bank_match_signal(make_listing(), [fraud, hit("stock", "benign", "G1", 0.89)], NOW))
    assert closer.score == pytest.approx(0.90 * BENIGN_DISCOUNT)
    assert equal.score == pytest.approx(0.90 * BENIGN_DISCOUNT)
    assert farther.score == pytest.approx(0.90)
    assert closer.value == equal.value == farther.value == 1
    assert closer.evidence["benign_discount"] is True


def test_benign_hits_alone_score_zero() -> None:
    sig = check(bank_match_signal(make_listing(), [hit("stock", "benign", "G1", 0.99)], NOW))
    assert sig.value == 0 and sig.score == 0.0 and len(sig.evidence["matches"]) == 1


def test_bank_evidence_truncated_and_deterministic() -> None:
    hits = [hit("scams", "fraud", f"X{i:02d}", 0.5 + i / 100) for i in range(25)]
    a = check(bank_match_signal(make_listing(), hits, NOW))
    b = check(bank_match_signal(make_listing(), list(reversed(hits)), NOW))
    assert a.value == 25 and len(a.evidence["matches"]) == MAX_EVIDENCE_MATCHES
    assert a.evidence["total"] == 25 and a.evidence["matches"][0]["id"] == "X24"
    assert wire([a]) == wire([b])


def test_review_bank_similarity() -> None:
    r = make_review()
    none = check(review_bank_similarity_signal(r, [], NOW))
    assert none.name == "review.bank_similarity" and none.source == "review_bank@2"
    assert none.value == 0.0 and none.score == 0.0 and none.entity_type == "review"
    hits = [hit("fake_reviews", "fraud", "F1", 0.92, "review_text", 0.08),
            hit("fake_reviews", "fraud", "F2", 0.85, "review_text", 0.15)]
    sig = check(review_bank_similarity_signal(r, hits, NOW))
    assert sig.value == pytest.approx(0.92) and sig.score == pytest.approx(0.92)
    assert [m["id"] for m in sig.evidence["matches"]] == ["F1", "F2"]
    disc = check(review_bank_similarity_signal(
        r, [*hits, hit("real_reviews", "benign", "G1", 0.97, "review_text", 0.03)], NOW))
    assert disc.value == pytest.approx(0.92)  # the fact is kept; only the score is discounted
    assert disc.score == pytest.approx(0.92 * BENIGN_DISCOUNT)


# ---- price anomaly --------------------------------------------------------------------------


def test_price_reference_of() -> None:
    assert PriceReference.of("category", "EUR", [100.0, 120.0]) is None
    assert PriceReference.of("category", "EUR", [100.0, 120.0, 0.0, -5.0, math.nan]) is None
    ref = PriceReference.of("cluster", "EUR", [100.0, 200.0, 50.0])
    assert ref is not None
    assert (ref.group, ref.currency, ref.n, ref.median) == ("cluster", "EUR", 3, 100.0)
    assert ref.mad_log == pytest.approx(math.log(2))
    flat = PriceReference.of("cluster", "EUR", [10.0] * 5)
    assert flat is not None and flat.mad_log == 0.0
    with pytest.raises(ValueError, match="median"):
        PriceReference("cluster", "EUR", 3, 0.0, 0.1)
    with pytest.raises(ValueError, match="group"):
        PriceReference("brand", "EUR", 3, 10.0, 0.1)  # type: ignore[arg-type]


def test_price_far_below_median_scores_high() -> None:
    ref = PriceReference("category", "EUR", 40, 400.0, 0.1)
    sig = price_anomaly_signal(make_listing(price=100.0), [ref], NOW)
    assert sig is not None
    check(sig)
    assert sig.name == "price.anomaly" and sig.source == "price_anomaly@1"
    assert sig.value == pytest.approx(0.75)
    z = (math.log(400) - math.log(100)) / (1.4826 * 0.1 + 0.1)
    assert sig.evidence == {"reference": {"group": "category", "currency": "EUR", "median": 400.0,
                                          "n": 40, "mad_log": 0.1},
                            "price": 100.0, "z": round(z, 4)}
    assert sig.score == pytest.approx(1 / (1 + math.exp(-2 * (z - 2.5))))
    assert sig.score > 0.99


def test_price_at_or_above_median_scores_zero() -> None:
    ref = PriceReference("category", "EUR", 10, 100.0, 0.3)
    at = price_anomaly_signal(make_listing(price=100.0), [ref], NOW)
    above = price_anomaly_signal(make_listing(price=900.0), [ref], NOW)
    assert at is not None and above is not None
    assert at.value == 0.0 and at.score == 0.0
    assert above.value == 0.0 and above.score == 0.0 and above.evidence["z"] < 0


def test_price_logistic_shape_and_monotone_z() -> None:
    assert anomaly_score(0.0) == 0.0 and anomaly_score(-3) == 0.0
    assert anomaly_score(1e-9) < 0.01
    assert anomaly_score(2.5) == pytest.approx(0.5)
    assert anomaly_score(5.0) > 0.99 and anomaly_score(1e6) == pytest.approx(1.0)
    ref = PriceReference("cluster", "EUR", 10, 100.0, 0.25)
    prices = [150.0, 100.0, 90.0, 70.0, 50.0, 30.0, 10.0, 1.0]
    zs = [robust_z(p, ref) for p in prices]
    assert all(a < b for a, b in zip(zs, zs[1:], strict=False))
    scores = []
    for p in prices:
        sig = price_anomaly_signal(make_listing(price=p), [ref], NOW)
        assert sig is not None
        scores.append(sig.score)
    assert all(a <= b for a, b in zip(scores, scores[1:], strict=False))
    assert scores[0] == 0.0 and scores[-1] > 0.99


def test_identical_prices_do_not_make_a_small_discount_extreme() -> None:
    ref = PriceReference.of("cluster", "EUR", [100.0] * 6)
    assert ref is not None
    small = price_anomaly_signal(make_listing(price=97.0), [ref], NOW)
    bait = price_anomaly_signal(make_listing(price=30.0), [ref], NOW)
    assert small is not None and bait is not None
    assert small.score is not None and small.score < 0.05
    assert bait.score is not None and bait.score > 0.99


def test_price_reference_must_share_currency_and_have_three_prices() -> None:
    usd = PriceReference("cluster", "USD", 50, 400.0, 0.2)
    thin = PriceReference("category", "EUR", 2, 400.0, 0.2)
    listing = make_listing(price=100.0)
    assert price_anomaly_signal(listing, [usd, thin], NOW) is None
    assert price_anomaly_signal(listing, [], NOW) is None
    eur = PriceReference("category", "EUR", 3, 200.0, 0.2)
    sig = price_anomaly_signal(listing, [usd, thin, eur], NOW)
    assert sig is not None and sig.evidence["reference"]["median"] == 200.0


def test_price_cluster_reference_preferred_over_category() -> None:
    cat = PriceReference("category", "EUR", 500, 1000.0, 0.5)
    clu = PriceReference("cluster", "EUR", 4, 120.0, 0.1)
    sig = price_anomaly_signal(make_listing(price=100.0), [cat, clu], NOW)
    assert sig is not None and sig.evidence["reference"]["group"] == "cluster"
    assert sig.value == pytest.approx(1 - 100 / 120)
    # A cluster reference too thin to use falls back to the category.
    thin = PriceReference("cluster", "EUR", 2, 120.0, 0.1)
    sig = price_anomaly_signal(make_listing(price=100.0), [thin, cat], NOW)
    assert sig is not None and sig.evidence["reference"]["group"] == "category"
    # Within a group, the larger sample wins.
    big = PriceReference("cluster", "EUR", 9, 300.0, 0.1)
    sig = price_anomaly_signal(make_listing(price=100.0), [clu, big, cat], NOW)
    assert sig is not None and sig.evidence["reference"]["n"] == 9


def test_price_needs_a_positive_price() -> None:
    ref = PriceReference("category", "EUR", 10, 100.0, 0.3)
    assert price_anomaly_signal(make_listing(price=None, currency=None), [ref], NOW) is None
    assert price_anomaly_signal(make_listing(price=0.0), [ref], NOW) is None


# ---- roll-ups ----------------------------------------------------------------------------


def test_seller_rollup_math() -> None:
    stats = SellerStats(tenant="acme", seller_id="S1")
    stats.add_listing(near_duplicates=3, cluster_id="C2", cluster_size=4, bank_matches=1)
    stats.add_listing(near_duplicates=1, cluster_id="C1", cluster_size=2, bank_matches=0)
    stats.add_listing(near_duplicates=2, cluster_id="C2", cluster_size=4, bank_matches=2)
    stats.add_listing(near_duplicates=0, cluster_id="C9", cluster_size=1, bank_matches=0)
    stats.add_listing(near_duplicates=0, cluster_id=None, cluster_size=1, bank_matches=0)
    assert (stats.listings, stats.duplicated_listings, stats.bank_matches) == (5, 3, 2)
    assert stats.cluster_ids == {"C1", "C2"}
    got = by_name(seller_rollup_signals(stats, NOW))
    assert list(got) == ["seller.duplicate_listing_ratio", "seller.cluster_count",
                         "seller.bank_match_count"]
    for s in got.values():
        assert s.entity_type == "seller" and s.entity_id == "S1" and s.tenant == "acme"
        assert s.source == "seller_rollup@1"
        assert s.evidence == {"listings": 5, "duplicated_listings": 3, "bank_matched_listings": 2,
                              "cluster_count": 2, "cluster_ids": ["C1", "C2"]}
    ratio = got["seller.duplicate_listing_ratio"]
    assert ratio.value == pytest.approx(0.6) and ratio.score == pytest.approx(3 / 7)
    assert got["seller.cluster_count"].value == 2
    assert got["seller.cluster_count"].score == pytest.approx(1 - math.exp(-2 / 3))
    assert got["seller.bank_match_count"].value == 2
    assert got["seller.bank_match_count"].score == pytest.approx(1 - math.exp(-2))


def test_seller_ratio_score_shrinks_small_sellers() -> None:
    def score(n: int) -> float:
        s = SellerStats(tenant="acme", seller_id="S1")
        for _ in range(n):
            s.add_listing(near_duplicates=1, cluster_id=None, cluster_size=1, bank_matches=0)
        sig = seller_rollup_signals(s, NOW)[0]
        assert sig.value == 1.0
        assert sig.score is not None
        return sig.score

    assert score(1) < score(5) < score(40) < 1.0
    assert score(1) == pytest.approx(1 / 3)


def test_seller_rollup_edge_cases() -> None:
    empty = SellerStats(tenant="acme", seller_id="S1")
    assert seller_rollup_signals(empty, NOW) == []
    clean = SellerStats(tenant="acme", seller_id="S1")
    clean.add_listing(near_duplicates=0, cluster_id=None, cluster_size=1, bank_matches=0)
    assert all(s.value == 0 and s.score == 0.0 for s in by_name(seller_rollup_signals(clean, NOW)).values())
    many = SellerStats(tenant="acme", seller_id="S1")
    for i in range(15, 0, -1):
        many.add_listing(near_duplicates=1, cluster_id=f"C{i:02d}", cluster_size=2, bank_matches=0)
    ev = seller_rollup_signals(many, NOW)[0].evidence
    assert ev["cluster_count"] == 15 and ev["cluster_ids"] == [f"C{i:02d}" for i in range(1, 11)]
    with pytest.raises(ValueError, match="near_duplicates"):
        many.add_listing(near_duplicates=-1, cluster_id=None, cluster_size=1, bank_matches=0)


def test_seller_merge_equals_one_pass() -> None:
    facts = [(2, "C1", 3, 0), (0, None, 1, 1), (1, "C2", 2, 0), (4, "C1", 3, 3)]
    one = SellerStats(tenant="acme", seller_id="S1")
    a = SellerStats(tenant="acme", seller_id="S1")
    b = SellerStats(tenant="acme", seller_id="S1")
    for i, (nd, cid, size, bm) in enumerate(facts):
        kw = {"near_duplicates": nd, "cluster_id": cid, "cluster_size": size, "bank_matches": bm}
        one.add_listing(**kw)  # type: ignore[arg-type]
        (a if i % 2 else b).add_listing(**kw)  # type: ignore[arg-type]
    a.merge(b)
    assert a == one
    assert wire(list(seller_rollup_signals(a, NOW))) == wire(list(seller_rollup_signals(one, NOW)))
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(SellerStats(tenant="acme", seller_id="S2"))


def test_product_rollup_math() -> None:
    stats = ProductStats(tenant="acme", product_id="P1")
    assert product_rollup_signals(stats, NOW) == []
    for nd in (0, 2, 1, 0, 0, 5, 0, 0):
        stats.add_review(near_duplicates=nd)
    (sig,) = product_rollup_signals(stats, NOW)
    check(sig)
    assert sig.name == "product.templated_review_share" and sig.source == "product_rollup@1"
    assert sig.entity_type == "product" and sig.entity_id == "P1" and sig.tenant == "acme"
    assert sig.value == pytest.approx(3 / 8) and sig.score == pytest.approx(3 / 10)
    assert sig.evidence == {"reviews": 8, "templated_reviews": 3}
    other = ProductStats(tenant="acme", product_id="P1")
    other.add_review(near_duplicates=1)
    stats.merge(other)
    assert (stats.reviews, stats.templated_reviews) == (9, 4)
    with pytest.raises(ValueError, match="near_duplicates"):
        stats.add_review(near_duplicates=-2)


# ---- every builder, together ----------------------------------------------------------------


def test_every_builder_emits_catalogue_names_and_is_deterministic() -> None:
    listing, review = make_listing(), make_review()
    matches = [Match("L2", "image_pdq", 0.97, "S2"), Match("L3", "listing_text", 0.9, None)]
    hits = [hit("scams", "fraud", "X1", 0.9), hit("stock", "benign", "G1", 0.95)]
    refs = [PriceReference("category", "EUR", 10, 300.0, 0.3)]
    seller = SellerStats(tenant="acme", seller_id="S1")
    seller.add_listing(near_duplicates=2, cluster_id="C1", cluster_size=3, bank_matches=1)
    product = ProductStats(tenant="acme", product_id="P1")
    product.add_review(near_duplicates=1)
    verdict = ReviewTextVerdict((("fakes", "fraud", "F1", 0.8),), 1.0, 0.7, 0.9, "fp")

    def run() -> list[Signal | None]:
        return [
            *listing_near_duplicate_signals(listing, matches, 3, NOW),
            price_anomaly_signal(listing, refs, NOW),
            bank_match_signal(listing, hits, NOW),
            bank_match_signal(review, hits, NOW),
            *review_near_duplicate_signals(review, [Match("R2", "review_text", 0.9, "U2")], NOW),
            review_bank_similarity_signal(review, hits, NOW),
            review_fake_text_signal(review, verdict, NOW),
            *seller_rollup_signals(seller, NOW),
            *product_rollup_signals(product, NOW),
        ]

    first = run()
    emitted = {s.name for s in first if s is not None}
    declared = {n for src in DERIVED_SOURCES for n in src.emits}
    assert emitted == declared
    sources = {src.source: src for src in DERIVED_SOURCES}
    for s in first:
        assert s is not None
        check(s, sources[s.source])
    assert wire(first) == wire(run())
