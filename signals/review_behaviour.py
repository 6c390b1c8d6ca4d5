"""Behavioural review signals: per-entity running state folded one review at a time.

One implementation, two callers: the batch job folds every review of a run in
``(created_at, review_id)`` order; the service folds each review as it is written, the
states kept durably in its store (JSON per entity, written in the review's transaction).
A fold is O(1) amortised per review: counts, a rating histogram, a log-scale histogram
of time gaps, the current day's count and a burst baseline. Nothing grows with the
entity's history.

No look-ahead: a review's own signals (``review.*``) are computed from the states as
they were when it was written (its product's mean rating *before* it, its rank, the
counts of its day so far). Reviewer-, product- and seller-level signals are the entity's
latest state.

Bursts (``reviewer.burst``, ``product.review_burst``, ``seller.review_burst``, and the
per-review ``review.product_burst``): each entity's daily review counts are compared
with its OWN baseline, an exponentially weighted mean of its past daily counts (zero
days included, half-life :data:`BURST_HALF_LIFE_DAYS`), in which each day's count is
winsorised at ``WINSOR_K * baseline + WINSOR_ADD`` before it is folded in, so a past
burst does not raise the bar for the next one (a robust baseline). The day's count ``c``
against baseline ``lam`` is scored by the Poisson upper tail, ``surprise =
-log10 P(X >= c | lam)``. Why Poisson and not a z-score: review counts are small
integers, mostly 0 and 1, where a Gaussian z-score of a 3-review day is meaningless
and a median/MAD of mostly-zero days is 0; the Poisson tail says how unlikely the day
is at the entity's own rate, is defined from the first review on (the baseline starts
at a prior rate) and needs two floats of state. Score ``1 - exp(-surprise / 3)``.

Accounts with one or two reviews: ``review.singleton`` (the reviewer's first review),
``reviewer.review_count``, ``reviewer.account_age_days_at_review`` (from
``reviewer_created_at`` when the record has it, else days since the account was first
seen: 0 for a first review), the extremity and deviation of the rating and the burst of
the product at the time all speak about an account with a single review, and so does the
company it keeps: ``reviewer.co_singleton_share``, the mean over its reviews of the share of
the product's reviews up to that one that were their account's first (campaigns' fresh
accounts review the same products; on YelpZip about +0.003 AUC to the boosted model, see
docs/reviews.md), and its habit of reviewing early in products' histories:
``reviewer.typical_product_rank`` and ``reviewer.typical_product_age_days``, geometric means
over its reviews of the rank and of 1 + the product's age in days when written (less 1).

Out-of-order arrival (the service only: a review older than its entity's latest day)
is folded into the counts and histograms, and into the burst tracker's current day
(it cannot reopen a closed day); its evidence says ``"late": true``. The batch job never
sees it (it sorts). See docs/reviews.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy.special import gammainc

from signals.derived import DerivedSource
from signals.schemas import Review, Signal

DAY_S = 86400.0
BURST_HALF_LIFE_DAYS = 28.0
"""Half-life of the burst baseline, in days."""
WINSOR_K = 3.0
WINSOR_ADD = 2.0
"""A day's count enters the baseline at most as ``WINSOR_K * baseline + WINSOR_ADD``."""
PRIOR_DAILY_RATE = {"reviewer": 0.05, "product": 0.2, "seller": 0.5}
"""The baseline a new entity starts from (reviews a day)."""
BURST_SCALE = 3.0
"""Burst score ``1 - exp(-surprise / BURST_SCALE)``: p = 0.001 scores 0.63."""
EARLY_DAYS = 210.0
"""Early time frame (Rayana and Akoglu): 1 at the product's first review, falling to 0 after 7 months."""
GAP_BINS = 12
"""Time gaps between a reviewer's reviews, binned by log2 of days: same day, 1, 2-3, 4-7, ... days."""
SHIFT_ALPHA = 0.1
"""Weight of the newest rating in a product's recent mean (``product.rating_shift``)."""
SHIFT_MIN_REVIEWS = 5
RATING_PRIOR_MEAN = 3.5
"""The rating a deviation is measured against when neither the product nor the tenant has any."""

REVIEW_BEHAVIOUR = DerivedSource("review_behaviour", 1, (
    "review.rating_deviation", "review.extremity", "review.early_time_frame", "review.singleton",
    "review.product_rank", "review.days_since_product_first", "review.product_burst",
    "reviewer.account_age_days_at_review"))
REVIEWER_BEHAVIOUR = DerivedSource("reviewer_behaviour", 1, (
    "reviewer.review_count", "reviewer.max_reviews_per_day", "reviewer.positive_share",
    "reviewer.negative_share", "reviewer.mean_rating_deviation", "reviewer.weighted_rating_deviation",
    "reviewer.activity_span_days", "reviewer.rating_entropy", "reviewer.gap_entropy", "reviewer.velocity",
    "reviewer.burst", "reviewer.account_age_days_at_review", "reviewer.co_singleton_share",
    "reviewer.typical_product_rank", "reviewer.typical_product_age_days"))
PRODUCT_BEHAVIOUR = DerivedSource("product_behaviour", 1, (
    "product.review_count", "product.review_burst", "product.rating_shift", "product.singleton_share"))
SELLER_BEHAVIOUR = DerivedSource("seller_behaviour", 1, ("seller.review_burst",))
BEHAVIOUR_SOURCES = (REVIEW_BEHAVIOUR, REVIEWER_BEHAVIOUR, PRODUCT_BEHAVIOUR, SELLER_BEHAVIOUR)


def epoch_s(t: datetime) -> float:
    return t.astimezone(UTC).timestamp()


def day_of(ts: float) -> int:
    return math.floor(ts / DAY_S)


def poisson_surprises(counts: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """:func:`poisson_surprise` of arrays."""
    c = np.asarray(counts, dtype=np.float64)
    p = gammainc(np.maximum(c, 1.0), np.maximum(np.asarray(rates, dtype=np.float64), 1e-9))
    return np.where(c > 0, -np.log10(np.maximum(p, 1e-300)), 0.0)


def poisson_surprise(count: int, rate: float) -> float:
    """``-log10 P(X >= count)`` for ``X ~ Poisson(rate)``; 0 for ``count <= 0``."""
    if count <= 0:
        return 0.0
    p = float(gammainc(count, max(rate, 1e-9)))  # P(X >= k) = regularised lower gamma P(k, rate)
    return -math.log10(max(p, 1e-300))


def burst_score(surprise: float) -> float:
    return 1.0 - math.exp(-surprise / BURST_SCALE)


def entropy(counts: Sequence[int]) -> float:
    """Shannon entropy (bits) of a histogram; 0 for an empty one."""
    n = sum(counts)
    if n <= 0:
        return 0.0
    return -sum((c / n) * math.log2(c / n) for c in counts if c > 0) + 0.0


@dataclass
class BurstTracker:
    """Daily counts against a winsorised exponentially weighted baseline (see the module doc)."""

    day: int | None = None
    """The day being counted (the latest day seen)."""
    count: int = 0
    """Reviews on ``day``."""
    rate: float = 0.0
    """Baseline reviews a day, from the days before ``day``."""
    max_surprise: float = 0.0
    max_day: int | None = None
    max_count: int = 0
    """The most reviews on any one day."""

    def add(self, day: int, prior_rate: float) -> tuple[float, bool]:
        """Count one review on ``day``; returns the day's surprise so far and whether it was late."""
        late = False
        if self.day is None:
            self.day, self.count, self.rate = day, 0, prior_rate
        elif day > self.day:
            a = 0.5 ** (1.0 / BURST_HALF_LIFE_DAYS)
            capped = min(float(self.count), WINSOR_K * self.rate + WINSOR_ADD)
            self.rate = a * self.rate + (1.0 - a) * capped
            self.rate *= a ** (day - self.day - 1)  # the zero days in between
            self.day, self.count = day, 0
        elif day < self.day:
            late = True
        self.count += 1
        self.max_count = max(self.max_count, self.count)
        s = poisson_surprise(self.count, self.rate)
        if s > self.max_surprise:
            self.max_surprise, self.max_day = s, self.day
        return s, late


@dataclass
class ReviewerState:
    n: int = 0
    ratings: list[int] = field(default_factory=lambda: [0] * 5)
    first_ts: float | None = None
    last_ts: float | None = None
    created_ts: float | None = None
    """``reviewer_created_at`` of the latest record that had one."""
    sum_dev: float = 0.0
    sum_wdev: float = 0.0
    sum_w: float = 0.0
    gaps: list[int] = field(default_factory=lambda: [0] * GAP_BINS)
    burst: BurstTracker = field(default_factory=BurstTracker)
    last_age_days: float = 0.0
    sum_co_singleton: float | None = 0.0
    """Sum over its reviews of the product's share of first reviews just after the review;
    ``None`` in a state stored before this field existed (until a recomputation rebuilds it)."""
    sum_log_rank: float | None = 0.0
    """Sum over its reviews of ``log(rank)``, the review's rank among the product's reviews when
    written (1 = the first); ``None`` in a state stored before this field existed."""
    sum_log_product_age: float | None = 0.0
    """Sum over its reviews of ``log(1 + days since the product's first review)`` when written;
    ``None`` in a state stored before this field existed."""


@dataclass
class ProductState:
    n: int = 0
    sum_rating: float = 0.0
    recent_mean: float = 0.0
    first_ts: float | None = None
    singletons: int = 0
    """Reviews that were their reviewer's first."""
    burst: BurstTracker = field(default_factory=BurstTracker)


@dataclass
class SellerState:
    n: int = 0
    burst: BurstTracker = field(default_factory=BurstTracker)


@dataclass
class TenantState:
    n: int = 0
    sum_rating: float = 0.0


AnyState = ReviewerState | ProductState | SellerState | TenantState
LATER_REVIEWER_SUMS = ("sum_co_singleton", "sum_log_rank", "sum_log_product_age")
"""Running sums added to :class:`ReviewerState` after states were first stored: a stored state
without one has no history for it (``None``), and its signal is left out until a
recomputation rewrites the state."""


def state_to_json(state: AnyState) -> dict[str, Any]:
    return asdict(state)


def state_from_json(kind: type[AnyState], data: dict[str, Any]) -> Any:
    """A state from its JSON form (unknown keys refused: a state of another version is rebuilt)."""
    d = dict(data)
    if kind is ReviewerState and d.get("n", 0) > 0:
        for name in LATER_REVIEWER_SUMS:
            d.setdefault(name, None)  # a state older than the field: its history is unknown
    if "burst" in d:
        d["burst"] = BurstTracker(**d["burst"])
    return kind(**d)


@dataclass(frozen=True, slots=True)
class ReviewBehaviourFacts:
    """A review's behavioural facts as of its ``created_at`` (what its ``review.*`` signals show)."""

    rating: int
    deviation: float
    """``|rating - mean|``, the product's mean before this review (the tenant's for a first review)."""
    reference_mean: float
    reference: str
    """``"product"`` or ``"tenant"`` (or ``"prior"``): what the deviation was measured against."""
    rank: int
    """1 = the product's first review."""
    days_since_product_first: float
    reviewer_seq: int
    """1 = the reviewer's first review."""
    account_age_days: float
    account_age_basis: str
    """``"reviewer_created_at"`` or ``"first_seen"``."""
    product_day_count: int
    product_burst: float
    product_rate: float
    """The product's baseline reviews a day when the review was written."""
    late: bool = False

    @property
    def extreme(self) -> bool:
        return self.rating in (1, 5)

    @property
    def early_time_frame(self) -> float:
        return max(0.0, 1.0 - self.days_since_product_first / EARLY_DAYS)


class BehaviourFold:
    """The states of every entity a run (or a store) has seen, and the one fold of a review.

    The service keeps only the states of the entities a review touches in memory (read from
    and written back to its store); the batch job keeps them all (a few hundred bytes an
    entity).
    """

    def __init__(self) -> None:
        self.reviewers: dict[tuple[str, str], ReviewerState] = {}
        self.products: dict[tuple[str, str], ProductState] = {}
        self.sellers: dict[tuple[str, str], SellerState] = {}
        self.tenants: dict[str, TenantState] = {}

    def add(self, review: Review) -> ReviewBehaviourFacts:
        t = review.tenant
        return self.add_values(t, review.reviewer_id, review.product_id, review.seller_id, review.rating,
                               epoch_s(review.created_at),
                               None if review.reviewer_created_at is None
                               else epoch_s(review.reviewer_created_at))

    def add_values(self, tenant: str, reviewer: str, product: str, seller: str, rating: int, ts: float,
                   created_ts: float | None) -> ReviewBehaviourFacts:
        """Fold one review (given as plain values) into its entities' states."""
        if not 1 <= rating <= 5:
            raise ValueError(f"rating must be 1..5, not {rating}")
        u = self.reviewers.setdefault((tenant, reviewer), ReviewerState())
        p = self.products.setdefault((tenant, product), ProductState())
        s = self.sellers.setdefault((tenant, seller), SellerState())
        g = self.tenants.setdefault(tenant, TenantState())
        day = day_of(ts)

        # the product's and the tenant's consensus before this review
        if p.n:
            ref_mean, ref = p.sum_rating / p.n, "product"
        elif g.n:
            ref_mean, ref = g.sum_rating / g.n, "tenant"
        else:
            ref_mean, ref = RATING_PRIOR_MEAN, "prior"
        deviation = abs(rating - ref_mean)
        rank = p.n + 1
        if p.first_ts is None or ts < p.first_ts:
            p.first_ts = ts
        since_first = max(0.0, (ts - p.first_ts) / DAY_S)

        # reviewer
        first_of_reviewer = u.n == 0
        if u.last_ts is not None:
            gap_days = abs(ts - u.last_ts) / DAY_S
            u.gaps[min(GAP_BINS - 1, 0 if gap_days < 1 else 1 + int(math.log2(gap_days)))] += 1
        u.n += 1
        u.ratings[rating - 1] += 1
        u.first_ts = ts if u.first_ts is None else min(u.first_ts, ts)
        u.last_ts = ts if u.last_ts is None else max(u.last_ts, ts)
        if created_ts is not None:
            u.created_ts = created_ts
        w = 1.0 / rank ** 1.5
        u.sum_dev += deviation
        u.sum_wdev += w * deviation
        u.sum_w += w
        if u.created_ts is not None:
            age, basis = max(0.0, (ts - u.created_ts) / DAY_S), "reviewer_created_at"
        else:
            age, basis = max(0.0, (ts - u.first_ts) / DAY_S), "first_seen"
        u.last_age_days = age
        _, late_u = u.burst.add(day, PRIOR_DAILY_RATE["reviewer"])

        # product, seller, tenant
        p.n += 1
        p.sum_rating += rating
        p.recent_mean = (float(rating) if p.n == 1
                         else (1 - SHIFT_ALPHA) * p.recent_mean + SHIFT_ALPHA * rating)
        p.singletons += int(first_of_reviewer)
        if u.sum_co_singleton is not None:
            u.sum_co_singleton += p.singletons / p.n
        if u.sum_log_rank is not None:
            u.sum_log_rank += math.log(rank)
        if u.sum_log_product_age is not None:
            u.sum_log_product_age += math.log1p(since_first)
        p_surprise, late_p = p.burst.add(day, PRIOR_DAILY_RATE["product"])
        s.n += 1
        s.burst.add(day, PRIOR_DAILY_RATE["seller"])
        g.n += 1
        g.sum_rating += rating
        return ReviewBehaviourFacts(
            rating=rating, deviation=deviation, reference_mean=ref_mean, reference=ref, rank=rank,
            days_since_product_first=since_first, reviewer_seq=u.n, account_age_days=age,
            account_age_basis=basis, product_day_count=p.burst.count if not late_p else 1,
            product_burst=p_surprise if not late_p else 0.0, product_rate=p.burst.rate, late=late_u or late_p)


def _r(x: float) -> float:
    return round(float(x), 4)


def review_behaviour_signals(review: Review, facts: ReviewBehaviourFacts,
                             observed_at: datetime) -> list[Signal]:
    """The ``review.*`` behavioural signals of one review (and its account age at the time)."""
    return review_behaviour_signals_of(review.tenant, review.review_id, facts, observed_at)


def review_behaviour_signals_of(tenant: str, review_id: str, f: ReviewBehaviourFacts,
                                observed_at: datetime) -> list[Signal]:
    late = {"late": True} if f.late else {}

    def make(name: str, value: bool | int | float, score: float | None, evidence: dict[str, Any]) -> Signal:
        return REVIEW_BEHAVIOUR.signal(tenant=tenant, entity_type="review", entity_id=review_id, name=name,
                                       value=value, score=score, evidence={**evidence, **late},
                                       observed_at=observed_at)

    return [
        make("review.rating_deviation", _r(f.deviation), f.deviation / 4.0,
             {"rating": f.rating, "reference_mean": _r(f.reference_mean), "reference": f.reference,
              "reviews_before": f.rank - 1}),
        make("review.extremity", f.extreme, 1.0 if f.extreme else 0.0, {"rating": f.rating}),
        make("review.early_time_frame", _r(f.early_time_frame), f.early_time_frame,
             {"days_since_product_first": _r(f.days_since_product_first)}),
        make("review.singleton", f.reviewer_seq == 1, 1.0 if f.reviewer_seq == 1 else 0.0,
             {"reviewer_review_index": f.reviewer_seq}),
        make("review.product_rank", f.rank, None,
             {"days_since_product_first": _r(f.days_since_product_first)}),
        make("review.days_since_product_first", _r(f.days_since_product_first), None, {"rank": f.rank}),
        make("review.product_burst", _r(f.product_burst), burst_score(f.product_burst),
             {"product_reviews_that_day": f.product_day_count}),
        make("reviewer.account_age_days_at_review", _r(f.account_age_days),
             math.exp(-f.account_age_days / 30.0), {"basis": f.account_age_basis}),
    ]


def reviewer_behaviour_signals(tenant: str, reviewer_id: str, u: ReviewerState,
                               observed_at: datetime) -> list[Signal]:
    """The reviewer's behavioural signals from its latest state; ``[]`` before any review."""
    if u.n == 0 or u.first_ts is None or u.last_ts is None:
        return []
    n = u.n
    span = (u.last_ts - u.first_ts) / DAY_S
    pos = (u.ratings[3] + u.ratings[4]) / n
    neg = (u.ratings[0] + u.ratings[1]) / n
    mean_dev = u.sum_dev / n
    wdev = u.sum_wdev / u.sum_w if u.sum_w else 0.0
    velocity = n / (span + 1.0)
    ev: dict[str, Any] = {"reviews": n}

    def make(name: str, value: int | float, score: float | None,
             extra: dict[str, Any] | None = None) -> Signal:
        return REVIEWER_BEHAVIOUR.signal(tenant=tenant, entity_type="reviewer", entity_id=reviewer_id,
                                         name=name, value=value, score=score,
                                         evidence={**ev, **(extra or {})}, observed_at=observed_at)

    out = [
        make("reviewer.review_count", n, 1.0 / n),
        make("reviewer.max_reviews_per_day", u.burst.max_count,
             1.0 - math.exp(-(u.burst.max_count - 1) / 2.0)),
        make("reviewer.positive_share", _r(pos), None),
        make("reviewer.negative_share", _r(neg), None),
        make("reviewer.mean_rating_deviation", _r(mean_dev), mean_dev / 4.0),
        make("reviewer.weighted_rating_deviation", _r(wdev), wdev / 4.0),
        make("reviewer.activity_span_days", _r(span), math.exp(-span / 30.0)),
        make("reviewer.rating_entropy", _r(entropy(u.ratings)), None, {"ratings": list(u.ratings)}),
        make("reviewer.gap_entropy", _r(entropy(u.gaps)), None, {"gap_log2_days": list(u.gaps)}),
        make("reviewer.velocity", _r(velocity), 1.0 - math.exp(-velocity / 2.0), {"span_days": _r(span)}),
        make("reviewer.burst", _r(u.burst.max_surprise), burst_score(u.burst.max_surprise),
             {"max_reviews_per_day": u.burst.max_count, "baseline_per_day": _r(u.burst.rate)}),
        make("reviewer.account_age_days_at_review", _r(u.last_age_days), math.exp(-u.last_age_days / 30.0),
             {"basis": "reviewer_created_at" if u.created_ts is not None else "first_seen"}),
    ]
    # sums a state stored before they existed lacks (None): left out until a recomputation
    if u.sum_co_singleton is not None:
        out.append(make("reviewer.co_singleton_share", _r(u.sum_co_singleton / n), u.sum_co_singleton / n))
    if u.sum_log_rank is not None:
        out.append(make("reviewer.typical_product_rank", _r(math.exp(u.sum_log_rank / n)), None))
    if u.sum_log_product_age is not None:
        out.append(make("reviewer.typical_product_age_days", _r(math.expm1(u.sum_log_product_age / n)), None))
    return out


def _burst_evidence(b: BurstTracker) -> dict[str, Any]:
    return {"max_reviews_per_day": b.max_count, "burst_day": _day_iso(b.max_day),
            "baseline_per_day": _r(b.rate), "latest_day": _day_iso(b.day), "latest_day_count": b.count}


def _day_iso(day: int | None) -> str | None:
    return None if day is None else datetime.fromtimestamp(day * DAY_S, UTC).date().isoformat()


def product_behaviour_signals(tenant: str, product_id: str, p: ProductState,
                              observed_at: datetime) -> list[Signal]:
    """The product's behavioural signals from its latest state; ``[]`` before any review."""
    if p.n == 0:
        return []
    mean = p.sum_rating / p.n
    shift = p.recent_mean - mean if p.n >= SHIFT_MIN_REVIEWS else 0.0

    def make(name: str, value: int | float, score: float | None, evidence: dict[str, Any]) -> Signal:
        return PRODUCT_BEHAVIOUR.signal(tenant=tenant, entity_type="product", entity_id=product_id, name=name,
                                        value=value, score=score, evidence={"reviews": p.n, **evidence},
                                        observed_at=observed_at)

    return [
        make("product.review_count", p.n, None, {}),
        make("product.review_burst", _r(p.burst.max_surprise), burst_score(p.burst.max_surprise),
             _burst_evidence(p.burst)),
        make("product.rating_shift", _r(shift), min(1.0, abs(shift) / 2.0),
             {"mean_rating": _r(mean), "recent_mean_rating": _r(p.recent_mean)}),
        make("product.singleton_share", _r(p.singletons / p.n), p.singletons / (p.n + 2.0),
             {"singleton_reviews": p.singletons}),
    ]


def seller_behaviour_signals(tenant: str, seller_id: str, s: SellerState,
                             observed_at: datetime) -> list[Signal]:
    """``seller.review_burst`` over the reviews of all the seller's products; ``[]`` before any."""
    if s.n == 0:
        return []
    return [SELLER_BEHAVIOUR.signal(
        tenant=tenant, entity_type="seller", entity_id=seller_id, name="seller.review_burst",
        value=_r(s.burst.max_surprise), score=burst_score(s.burst.max_surprise),
        evidence={"reviews": s.n, **_burst_evidence(s.burst)}, observed_at=observed_at)]
