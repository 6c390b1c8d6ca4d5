"""Behavioural review signals on small constructed histories (signals/review_behaviour.py)."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from signals.catalogue import CATALOGUE
from signals.derived import check_derived_sources
from signals.review_analysis import ReviewRow, analyse_reviews
from signals.review_behaviour import (
    BEHAVIOUR_SOURCES,
    DAY_S,
    LATER_REVIEWER_SUMS,
    REVIEWER_BEHAVIOUR,
    BehaviourFold,
    BurstTracker,
    ProductState,
    ReviewerState,
    SellerState,
    TenantState,
    entropy,
    poisson_surprise,
    product_behaviour_signals,
    review_behaviour_signals,
    reviewer_behaviour_signals,
    seller_behaviour_signals,
    state_from_json,
    state_to_json,
)
from signals.review_graph import REVIEW_GRAPH
from signals.schemas import Review

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def review(rid: str, user: str, product: str, rating: int, day: float, seller: str = "S1",
           created: datetime | None = None, tenant: str = "default") -> Review:
    return Review(review_id=rid, product_id=product, seller_id=seller, reviewer_id=user, rating=rating,
                  created_at=T0 + timedelta(days=day), reviewer_created_at=created, tenant=tenant)


def by_name(signals: list) -> dict:
    return {s.name: s for s in signals}


def test_sources_declare_catalogued_names() -> None:
    check_derived_sources([*BEHAVIOUR_SOURCES, REVIEW_GRAPH])
    for src in (*BEHAVIOUR_SOURCES, REVIEW_GRAPH):
        for name in src.emits:
            assert name in CATALOGUE


def test_poisson_surprise() -> None:
    assert poisson_surprise(0, 1.0) == 0.0
    # P(X >= 1 | 1) = 1 - e^-1
    assert poisson_surprise(1, 1.0) == pytest.approx(-math.log10(1 - math.exp(-1)))
    assert poisson_surprise(10, 0.2) > poisson_surprise(3, 0.2) > poisson_surprise(3, 2.0)


def test_burst_against_own_baseline_and_robust_to_past_bursts() -> None:
    steady = BurstTracker()
    for d in range(60):
        steady.add(d, 0.2)
    quiet_day, _ = steady.add(60, 0.2)
    assert quiet_day < 1.0  # one review on a day of a one-a-day product is nothing
    busy = BurstTracker()
    for d in range(60):
        busy.add(d, 0.2)
    s = 0.0
    for _ in range(12):
        s, late = busy.add(60, 0.2)
        assert not late
    assert s > 5  # twelve in a day against one a day
    assert busy.max_count == 12 and busy.max_day == 60
    # winsorised baseline: the burst day barely raises the bar for the next burst
    for _ in range(12):
        s2, _ = busy.add(61, 0.2)
    assert s2 > 4
    assert busy.rate < 1.5


def test_late_review_is_counted_but_not_a_burst() -> None:
    b = BurstTracker()
    b.add(10, 0.2)
    s, late = b.add(3, 0.2)
    assert late and b.day == 10


def test_review_signals_use_no_look_ahead() -> None:
    fold = BehaviourFold()
    f1 = fold.add(review("R1", "U1", "P1", 5, 0))
    assert f1.reference == "prior" and f1.rank == 1 and f1.reviewer_seq == 1
    f2 = fold.add(review("R2", "U2", "P1", 1, 1))
    assert f2.reference == "product" and f2.reference_mean == 5 and f2.deviation == 4
    assert f2.rank == 2 and f2.days_since_product_first == pytest.approx(1.0)
    # a first review of another product is measured against the tenant's mean so far
    f3 = fold.add(review("R3", "U1", "P2", 3, 2))
    assert f3.reference == "tenant" and f3.reference_mean == 3 and f3.deviation == 0
    assert f3.reviewer_seq == 2
    sig = by_name(review_behaviour_signals(review("R2", "U2", "P1", 1, 1), f2, NOW))
    assert sig["review.rating_deviation"].value == 4 and sig["review.rating_deviation"].score == 1.0
    assert sig["review.extremity"].value is True
    assert sig["review.singleton"].value is True
    assert sig["review.product_rank"].value == 2
    assert 0 < sig["review.early_time_frame"].value < 1
    assert sig["reviewer.account_age_days_at_review"].entity_type == "review"
    assert sig["reviewer.account_age_days_at_review"].evidence["basis"] == "first_seen"


def test_account_age_from_reviewer_created_at() -> None:
    fold = BehaviourFold()
    f = fold.add(review("R1", "U1", "P1", 5, 10, created=T0 + timedelta(days=9, hours=12)))
    assert f.account_age_days == pytest.approx(0.5) and f.account_age_basis == "reviewer_created_at"
    f = fold.add(review("R2", "U2", "P1", 5, 10))
    assert f.account_age_days == 0.0 and f.account_age_basis == "first_seen"  # a one-off account says "new"


def test_reviewer_signals_on_a_constructed_history() -> None:
    fold = BehaviourFold()
    for k, (day, rating) in enumerate([(0, 5), (0, 5), (0, 4), (10, 1), (30, 5)]):
        fold.add(review(f"R{k}", "U1", f"P{k}", rating, day))
    u = fold.reviewers[("default", "U1")]
    s = by_name(reviewer_behaviour_signals("default", "U1", u, NOW))
    assert s["reviewer.review_count"].value == 5
    assert s["reviewer.max_reviews_per_day"].value == 3
    assert s["reviewer.positive_share"].value == pytest.approx(0.8)
    assert s["reviewer.negative_share"].value == pytest.approx(0.2)
    assert s["reviewer.activity_span_days"].value == 30
    assert s["reviewer.velocity"].value == pytest.approx(5 / 31, abs=1e-4)
    assert s["reviewer.rating_entropy"].value == pytest.approx(round(entropy([1, 0, 0, 1, 3]), 4))
    assert s["reviewer.gap_entropy"].evidence["gap_log2_days"][0] == 2  # two same-day gaps
    assert s["reviewer.burst"].value > 0
    # its first review is P0's first review by a first-time account (share 1); the other four
    # are not their account's first, on products nobody else reviewed (share 0)
    assert s["reviewer.co_singleton_share"].value == pytest.approx(0.2)
    assert all(0 <= x.score <= 1 for x in s.values() if x.score is not None)
    assert reviewer_behaviour_signals("default", "U9", ReviewerState(), NOW) == []


def test_rating_deviations_and_gap_entropy_hand_computed() -> None:
    """U1 is third on P1 (two 5s before: deviation 4, weight 3^-1.5), then first on P2 and P3,
    measured against the tenant's mean so far (11/3, then 4); gaps of 4 days and 1 day fall in
    the log2-day bins 3 and 1: one bit."""
    fold = BehaviourFold()
    fold.add(review("A", "UA", "P1", 5, 0))
    fold.add(review("B", "UB", "P1", 5, 1))
    fold.add(review("R1", "U1", "P1", 1, 2))
    fold.add(review("R2", "U1", "P2", 5, 6))
    fold.add(review("R3", "U1", "P3", 3, 7))
    s = by_name(reviewer_behaviour_signals("default", "U1", fold.reviewers[("default", "U1")], NOW))
    w = 3 ** -1.5
    assert s["reviewer.mean_rating_deviation"].value == pytest.approx((4 + 4 / 3 + 1) / 3, abs=1e-4)
    assert s["reviewer.weighted_rating_deviation"].value == pytest.approx(
        (4 * w + 4 / 3 + 1) / (w + 2), abs=1e-4)
    assert s["reviewer.gap_entropy"].value == pytest.approx(1.0)
    assert s["reviewer.gap_entropy"].evidence["gap_log2_days"] == [0, 1, 0, 1] + [0] * 8


def test_product_and_seller_signals() -> None:
    fold = BehaviourFold()
    for k in range(10):
        fold.add(review(f"A{k}", f"old{k}", "P0", 2, k))  # earlier history for the accounts
    for k in range(10):
        fold.add(review(f"R{k}", f"old{k}", "P1", 2, 20 + k * 5, seller="S2"))
    for k in range(8):  # a burst of fresh five-star accounts on one day
        fold.add(review(f"F{k}", f"new{k}", "P1", 5, 80, seller="S2"))
    p = by_name(product_behaviour_signals("default", "P1", fold.products[("default", "P1")], NOW))
    assert p["product.review_count"].value == 18
    assert p["product.review_burst"].value > 5
    assert p["product.review_burst"].evidence["burst_day"] == "2026-03-22"
    recent = 2 + 3 * (1 - 0.9 ** 8)  # EWMA (weight 0.1) of ten 2s then eight 5s
    assert p["product.rating_shift"].value == pytest.approx(recent - 60 / 18, abs=1e-4)
    assert p["product.singleton_share"].value == pytest.approx(8 / 18, abs=1e-4)
    s = seller_behaviour_signals("default", "S2", fold.sellers[("default", "S2")], NOW)
    assert s[0].name == "seller.review_burst" and s[0].value > 3
    assert product_behaviour_signals("default", "P9", ProductState(), NOW) == []


def test_co_singleton_share_is_the_company_an_account_keeps_as_of_each_review() -> None:
    fold = BehaviourFold()
    for k in range(3):  # three established accounts, then their reviews of P1
        fold.add(review(f"A{k}", f"old{k}", f"P-old{k}", 4, 0))
        fold.add(review(f"B{k}", f"old{k}", "P1", 4, 1 + k))
    fold.add(review("F0", "fresh0", "P1", 5, 10))  # P1 now 4 reviews, 1 a first: 0.25
    for k in range(4):  # a campaign of fresh accounts on a new product: 1/1, 2/2, 3/3, 4/4
        fold.add(review(f"C{k}", f"camp{k}", "P2", 5, 20))
    fold.add(review("C9", "camp0", "P1", 5, 21))  # camp0 on P1 too: 5 reviews, 1 first
    value = {uid: by_name(reviewer_behaviour_signals(t, uid, u, NOW))["reviewer.co_singleton_share"].value
             for (t, uid), u in fold.reviewers.items()}
    assert value["old0"] == pytest.approx(0.5)  # P-old0 1/1, then P1 0/1
    assert value["old2"] == pytest.approx((1 + 0) / 2)
    assert value["fresh0"] == pytest.approx(0.25)
    assert value["camp1"] == pytest.approx(1.0)
    assert value["camp0"] == pytest.approx((1.0 + 1 / 5) / 2)  # as of each review: no look-ahead


def test_typical_product_rank_and_age_are_geometric_means_as_of_each_review() -> None:
    """U1 is third on P1 (day 2, P1 two days old), first on P2 (day 6) and second on P3 (day 7,
    P3 three days old): ranks 3, 1, 2 and ages 2, 0, 3 days. Later reviews of those products
    change nothing (no look-ahead)."""
    fold = BehaviourFold()
    fold.add(review("A", "UA", "P1", 5, 0))
    fold.add(review("B", "UB", "P1", 5, 1))
    fold.add(review("R1", "U1", "P1", 4, 2))
    fold.add(review("C", "UC", "P3", 4, 4))
    fold.add(review("R2", "U1", "P2", 5, 6))
    fold.add(review("R3", "U1", "P3", 3, 7))
    for k in range(5):
        fold.add(review(f"L{k}", f"UL{k}", f"P{1 + k % 3}", 5, 9 + k))
    s = by_name(reviewer_behaviour_signals("default", "U1", fold.reviewers[("default", "U1")], NOW))
    assert s["reviewer.typical_product_rank"].value == pytest.approx(6 ** (1 / 3), abs=1e-4)
    assert s["reviewer.typical_product_age_days"].value == pytest.approx((3 * 1 * 4) ** (1 / 3) - 1, abs=1e-4)
    ua = by_name(reviewer_behaviour_signals("default", "UA", fold.reviewers[("default", "UA")], NOW))
    assert ua["reviewer.typical_product_rank"].value == 1.0  # always first
    assert ua["reviewer.typical_product_age_days"].value == 0.0


@pytest.mark.parametrize(("field", "signal"), [
    ("sum_co_singleton", "reviewer.co_singleton_share"),
    ("sum_log_rank", "reviewer.typical_product_rank"),
    ("sum_log_product_age", "reviewer.typical_product_age_days"),
])
def test_a_state_stored_before_a_running_sum_does_not_publish_its_signal(field: str, signal: str) -> None:
    """A state written before the running sum existed has no history for it: the signal is left
    out (not a wrong value) until the periodic recomputation rewrites the state."""
    assert field in LATER_REVIEWER_SUMS
    fold = BehaviourFold()
    fold.add(review("R0", "U1", "P0", 5, 0))
    old = state_to_json(fold.reviewers[("default", "U1")])
    del old[field]
    u = state_from_json(ReviewerState, old)
    again = BehaviourFold()
    again.reviewers[("default", "U1")] = u
    again.add(review("R1", "U1", "P1", 5, 1))
    names = [s.name for s in reviewer_behaviour_signals("default", "U1", u, NOW)]
    assert signal not in names and "reviewer.review_count" in names
    assert len(names) == len(REVIEWER_BEHAVIOUR.emits) - 1
    fresh = state_from_json(ReviewerState, {k: v for k, v in state_to_json(ReviewerState()).items()
                                            if k != field})
    assert getattr(fresh, field) == 0.0  # a new account has no history to miss


def _history(n: int, seed: int) -> list[Review]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        created = T0 - timedelta(days=rng.randint(0, 300)) if rng.random() < 0.5 else None
        out.append(review(f"R{k:03d}", f"U{rng.randint(0, 15)}", f"P{rng.randint(0, 6)}", rng.randint(1, 5),
                          rng.randint(0, 40) + rng.random(), seller=f"S{rng.randint(0, 2)}", created=created))
    return sorted(out, key=lambda r: (r.created_at, r.review_id))


def test_incremental_fold_through_json_equals_batch_fold() -> None:
    """The service folds each review into states it reads from and writes back to its store as
    JSON; the batch job folds all reviews in memory: same facts, same final signals."""
    reviews = _history(120, 1)
    batch = BehaviourFold()
    batch_facts = [batch.add(r) for r in reviews]
    stored: dict[str, str] = {}
    kinds = {"reviewer": ReviewerState, "product": ProductState, "seller": SellerState, "tenant": TenantState}
    incremental_facts = []
    for r in reviews:
        fold = BehaviourFold()
        keys = {"reviewer": ("default", r.reviewer_id), "product": ("default", r.product_id),
                "seller": ("default", r.seller_id)}
        for kind, key in keys.items():
            raw = stored.get(f"{kind}/{key[1]}")
            if raw is not None:
                getattr(fold, kind + "s")[key] = state_from_json(kinds[kind], json.loads(raw))
        if "tenant" in stored:
            fold.tenants["default"] = state_from_json(TenantState, json.loads(stored["tenant"]))
        incremental_facts.append(fold.add(r))
        for kind, key in keys.items():
            stored[f"{kind}/{key[1]}"] = json.dumps(state_to_json(getattr(fold, kind + "s")[key]))
        stored["tenant"] = json.dumps(state_to_json(fold.tenants["default"]))
    assert incremental_facts == batch_facts
    for (t, uid), u in batch.reviewers.items():
        again = state_from_json(ReviewerState, json.loads(stored[f"reviewer/{uid}"]))
        assert [s.to_json_dict() for s in reviewer_behaviour_signals(t, uid, again, NOW)] == \
               [s.to_json_dict() for s in reviewer_behaviour_signals(t, uid, u, NOW)]


def test_analysis_is_independent_of_input_order() -> None:
    reviews = _history(150, 2)
    rows = [ReviewRow.of(r) for r in reviews]
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    a, b = analyse_reviews(rows), analyse_reviews(shuffled)
    sig_a = {(s.entity_type, s.entity_id, s.name): s.to_json_dict() for k in range(len(rows))
             for s in a.review_signals(k, NOW)}
    sig_b = {(s.entity_type, s.entity_id, s.name): s.to_json_dict() for k in range(len(shuffled))
             for s in b.review_signals(k, NOW)}
    assert sig_a == sig_b
    assert ([s.to_json_dict() for s in a.entity_signals(NOW)]
            == [s.to_json_dict() for s in b.entity_signals(NOW)])
    # and the facts are the plain fold's, in time order
    fold = BehaviourFold()
    assert [a.facts[k] for k in range(len(rows))] == [fold.add(r) for r in reviews]


def test_state_json_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError):
        state_from_json(SellerState, {"n": 1, "burst": {}, "nope": 2})


def test_rating_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError):
        BehaviourFold().add_values("default", "U", "P", "S", 7, 0.0, None)


def test_day_boundaries() -> None:
    fold = BehaviourFold()
    fold.add_values("default", "U", "P", "S", 5, 0.5 * DAY_S, None)
    f = fold.add_values("default", "U", "P", "S", 5, 0.9 * DAY_S, None)
    assert f.product_day_count == 2
    f = fold.add_values("default", "U", "P", "S", 5, 1.1 * DAY_S, None)
    assert f.product_day_count == 1
