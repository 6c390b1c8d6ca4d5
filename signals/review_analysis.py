"""A whole set of reviews analysed at once: the behavioural fold, rings and collective scores.

The batch job calls :func:`analyse_reviews` over every review of its run; the service calls
it over every review in its store at each periodic recomputation (``signals.review_graph.recompute_s``).
Same reviews, same labels, same settings: same signals, whichever path (tested).

Reviews are folded in ``(created_at, tenant, review_id)`` order, whatever order they came in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np

from signals.review_behaviour import (
    BehaviourFold,
    ReviewBehaviourFacts,
    burst_score,
    entropy,
    poisson_surprises,
    product_behaviour_signals,
    review_behaviour_signals_of,
    reviewer_behaviour_signals,
    seller_behaviour_signals,
)
from signals.review_graph import (
    DEFAULT_GRAPH,
    GROUP_INDICATORS,
    REVIEW_GRAPH,
    Beliefs,
    GraphSettings,
    RatingBursts,
    Rings,
    collective_scores,
    combine_priors,
    discovery_evidence,
    rating_bursts,
    ring_scores,
)
from signals.schemas import Label, Review, Signal

SPAM_SHARE_AT = 0.5
"""A review counts toward ``seller.review_spam_share`` when its spam score is at least this."""


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """The fields of a review the analysis reads."""

    tenant: str
    review_id: str
    reviewer_id: str
    product_id: str
    seller_id: str
    rating: int
    ts: float
    """``created_at``, seconds since the epoch."""
    created_ts: float | None = None
    """``reviewer_created_at``, seconds since the epoch."""

    @classmethod
    def of(cls, review: Review) -> ReviewRow:
        created = review.reviewer_created_at
        return cls(review.tenant, review.review_id, review.reviewer_id, review.product_id, review.seller_id,
                   review.rating, review.created_at.timestamp(),
                   None if created is None else created.timestamp())

    @classmethod
    def of_stored(cls, record: str) -> ReviewRow:
        """The row of a review record as the service stored it (``Review.model_dump_json`` of a
        review it validated when it took it), read without validating it again."""
        r = json.loads(record)
        created = r.get("reviewer_created_at")
        return cls(r.get("tenant", "default"), r["review_id"], r["reviewer_id"], r["product_id"],
                   r["seller_id"], int(r["rating"]), _aware_ts(r["created_at"]),
                   None if created is None else _aware_ts(created))


def _aware_ts(text: str) -> float:
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"a stored review time without a UTC offset: {text!r}")
    return t.timestamp()


class _Codes:
    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}
        self.keys: list[tuple[str, str]] = []

    def code(self, key: tuple[str, str]) -> int:
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.keys)
            self.keys.append(key)
        return i

    def rank(self) -> np.ndarray:
        """Each code's place in key order: an order that does not depend on the coding."""
        out = np.empty(len(self.keys), dtype=np.int64)
        out[sorted(range(len(self.keys)), key=self.keys.__getitem__)] = np.arange(len(self.keys))
        return out


@dataclass
class ReviewAnalysis:
    """Everything :func:`analyse_reviews` found; signals are built from it on demand."""

    rows: Sequence[ReviewRow]
    facts: list[ReviewBehaviourFacts]   # per input row
    fold: BehaviourFold
    reviewers: _Codes
    products: _Codes
    sellers: _Codes
    review_reviewer: np.ndarray
    review_product: np.ndarray
    review_seller: np.ndarray
    rings: Rings
    participation: np.ndarray
    """Per reviewer: the worst burst (Poisson surprise) of a product-day it reviewed in."""
    bursts: RatingBursts
    """Per input row: the star mix of its product's reviews around it."""
    reviewer_burst_row: np.ndarray
    """Per reviewer: the input row of its worst rating burst (-1: none)."""
    product_burst_row: np.ndarray
    """Per product: the same."""
    beliefs: Beliefs

    def review_signals(self, row: int, observed_at: datetime) -> list[Signal]:
        """Row ``row``'s behavioural signals, then ``review.rating_burst`` and ``review.spam_score``."""
        r = self.rows[row]
        out = review_behaviour_signals_of(r.tenant, r.review_id, self.facts[row], observed_at)
        out.append(self._burst_signal(r.tenant, "review", r.review_id, "review.rating_burst", row,
                                      observed_at))
        p = float(self.beliefs.review[row])
        out.append(REVIEW_GRAPH.signal(
            tenant=r.tenant, entity_type="review", entity_id=r.review_id, name="review.spam_score",
            value=round(p, 4), score=p, evidence={"prior": round(float(self.beliefs.review_prior[row]), 4)},
            observed_at=observed_at))
        return out

    def _burst_signal(self, tenant: str, entity_type: Literal["review", "reviewer", "product"],
                      entity_id: str, name: str, row: int, observed_at: datetime) -> Signal:
        """A ``*.rating_burst`` signal: row ``row``'s burst (none when ``row`` is -1)."""
        b = self.bursts
        surprise = float(b.surprise[row]) if row >= 0 else 0.0
        evidence: dict[str, object] = {}
        if surprise > 0:
            evidence = {"window_reviews": int(b.window[row]), "same_rating": int(b.same[row]),
                        "rating": self.rows[row].rating, "expected_share": round(float(b.share[row]), 4)}
            if entity_type != "review":
                evidence |= {"review_id": self.rows[row].review_id, "product_id": self.rows[row].product_id}
        return REVIEW_GRAPH.signal(
            tenant=tenant, entity_type=entity_type, entity_id=entity_id, name=name, value=round(surprise, 4),
            score=burst_score(surprise), evidence=evidence, observed_at=observed_at)

    def ring_signal(self, tenant: str, reviewer_id: str, observed_at: datetime) -> Signal:
        """``reviewer.ring_score`` of one reviewer."""
        i = self.reviewers.index[(tenant, reviewer_id)]
        return ring_signal(tenant, reviewer_id, self.rings, i, self.reviewers.keys, observed_at)

    def entity_signals(self, observed_at: datetime) -> Iterator[Signal]:
        """Every reviewer's, then product's, then seller's signals, in sorted key order."""
        b, rings = self.beliefs, self.rings
        for key in sorted(self.reviewers.index):
            i = self.reviewers.index[key]
            t, uid = key
            yield from reviewer_behaviour_signals(t, uid, self.fold.reviewers[key], observed_at)
            yield ring_signal(t, uid, rings, i, self.reviewers.keys, observed_at)
            part = float(self.participation[i])
            yield REVIEW_GRAPH.signal(
                tenant=t, entity_type="reviewer", entity_id=uid, name="reviewer.burst_participation",
                value=round(part, 4), score=burst_score(part), evidence={}, observed_at=observed_at)
            yield self._burst_signal(t, "reviewer", uid, "reviewer.rating_burst",
                                     int(self.reviewer_burst_row[i]), observed_at)
            yield REVIEW_GRAPH.signal(
                tenant=t, entity_type="reviewer", entity_id=uid, name="reviewer.spam_score",
                value=round(float(b.reviewer[i]), 4), score=float(b.reviewer[i]),
                evidence={"prior": round(float(b.reviewer_prior[i]), 4)}, observed_at=observed_at)
        for key in sorted(self.products.index):
            i = self.products.index[key]
            t, pid = key
            yield from product_behaviour_signals(t, pid, self.fold.products[key], observed_at)
            yield self._burst_signal(t, "product", pid, "product.rating_burst",
                                     int(self.product_burst_row[i]), observed_at)
            yield REVIEW_GRAPH.signal(
                tenant=t, entity_type="product", entity_id=pid, name="product.spam_score",
                value=round(float(b.product[i]), 4), score=float(b.product[i]),
                evidence={"prior": round(float(b.product_prior[i]), 4)}, observed_at=observed_at)
        n_sellers = len(self.sellers.keys)
        reviews = np.bincount(self.review_seller, minlength=n_sellers)
        spam = np.bincount(self.review_seller, weights=(b.review >= SPAM_SHARE_AT).astype(np.float64),
                           minlength=n_sellers)
        for key in sorted(self.sellers.index):
            i = self.sellers.index[key]
            t, sid = key
            yield from seller_behaviour_signals(t, sid, self.fold.sellers[key], observed_at)
            n, hits = int(reviews[i]), int(spam[i])
            yield REVIEW_GRAPH.signal(
                tenant=t, entity_type="seller", entity_id=sid, name="seller.review_spam_share",
                value=round(hits / n, 4) if n else 0.0, score=hits / (n + 2.0),
                evidence={"reviews": n, "spam_reviews": hits}, observed_at=observed_at)


def ring_signal(tenant: str, reviewer_id: str, rings: Rings, i: int, keys: Sequence[tuple[str, str]],
                observed_at: datetime) -> Signal:
    top = int(rings.top_partner[i])
    return REVIEW_GRAPH.signal(
        tenant=tenant, entity_type="reviewer", entity_id=reviewer_id, name="reviewer.ring_score",
        value=round(float(rings.score[i]), 4), score=float(rings.score[i]),
        evidence={"partners": int(rings.partners[i]), "max_shared_products": int(rings.max_shared[i]),
                  "top_partner": keys[top][1] if top >= 0 else None,
                  "group_size": int(rings.group_size[i]), "group_products": int(rings.group_products[i]),
                  "group_indicators": {k: round(float(v), 4)
                                       for k, v in zip(GROUP_INDICATORS, rings.indicators[i], strict=True)}},
        observed_at=observed_at)


def neighbourhood_rings(rows: Sequence[ReviewRow], own_count: int, tenant: str, reviewer_id: str,
                        settings: GraphSettings, observed_at: datetime,
                        product_totals: Mapping[str, tuple[int, float]] | None = None) -> Signal:
    """``reviewer.ring_score`` of one reviewer from the reviews of the products it reviewed
    (``rows``), its own review count and those products' review counts and rating sums
    (``product_totals``, by product id; default: counted from ``rows``): what the full graph
    gives it when ``rows`` hold every review of those products in the windows of its meetings
    (the service's per-review update)."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i].ts, rows[i].tenant, rows[i].review_id))
    codes = _Codes()
    products = _Codes()
    ru = np.array([codes.code((rows[i].tenant, rows[i].reviewer_id)) for i in order], dtype=np.int64)
    rp = np.array([products.code((rows[i].tenant, rows[i].product_id)) for i in order], dtype=np.int64)
    day = np.array([math.floor(rows[i].ts / 86400.0) for i in order], dtype=np.int64)
    stars = np.array([rows[i].rating for i in order], dtype=np.int64)
    own = codes.index[(tenant, reviewer_id)]
    n = np.zeros(len(codes.keys), dtype=np.int64)
    n[own] = own_count
    totals = (np.bincount(rp, minlength=len(products.keys)).astype(np.float64),
              np.bincount(rp, weights=stars, minlength=len(products.keys)))
    for k, (_, pid) in enumerate(products.keys):
        if product_totals is not None and pid in product_totals:
            totals[0][k], totals[1][k] = product_totals[pid]
    rings = ring_scores(ru, rp, day, stars, len(codes.keys), settings, review_counts=n, product_totals=totals,
                        rank=codes.rank(), focus=own)
    return ring_signal(tenant, reviewer_id, rings, own, codes.keys, observed_at)


def analyse_reviews(rows: Sequence[ReviewRow], labels: Sequence[Label] = (),
                    settings: GraphSettings = DEFAULT_GRAPH) -> ReviewAnalysis:
    """Fold ``rows`` in time order, then rings and loopy belief propagation over all of them.

    ``labels``: review, reviewer and product labels seed the propagation (others are ignored).
    """
    n = len(rows)
    order = sorted(range(n), key=lambda i: (rows[i].ts, rows[i].tenant, rows[i].review_id))
    fold = BehaviourFold()
    facts: list[ReviewBehaviourFacts | None] = [None] * n
    for i in order:
        r = rows[i]
        facts[i] = fold.add_values(r.tenant, r.reviewer_id, r.product_id, r.seller_id, r.rating, r.ts,
                                   r.created_ts)
    done: list[ReviewBehaviourFacts] = [f for f in facts if f is not None]
    reviewers, products, sellers = _Codes(), _Codes(), _Codes()
    ru = np.empty(n, dtype=np.int64)
    rp = np.empty(n, dtype=np.int64)
    rs = np.empty(n, dtype=np.int64)
    day = np.empty(n, dtype=np.int64)
    for k, i in enumerate(order):  # codes in fold order: independent of the input's order
        r = rows[i]
        ru[k] = reviewers.code((r.tenant, r.reviewer_id))
        rp[k] = products.code((r.tenant, r.product_id))
        rs[k] = sellers.code((r.tenant, r.seller_id))
        day[k] = math.floor(r.ts / 86400.0)
    rating = np.array([rows[i].rating for i in order], dtype=np.int64)
    rings = ring_scores(ru, rp, day, rating, len(reviewers.keys), settings, rank=reviewers.rank())
    # Burst context (whole-run view, for the collective scores): each review's product-day count at
    # the END of its day against the product's baseline then; a reviewer's is its worst review's.
    sorted_facts0 = [done[i] for i in order]
    pd_key = rp * (int(day.max()) - int(day.min()) + 1 if n else 1) + (day - (int(day.min()) if n else 0))
    _, inverse, pd_count = np.unique(pd_key, return_inverse=True, return_counts=True)
    context = poisson_surprises(pd_count[inverse], np.array([x.product_rate for x in sorted_facts0]))
    participation = np.zeros(len(reviewers.keys))
    np.maximum.at(participation, ru, context)
    # Rating bursts (whole-run view): a product's reviews of one extreme rating bunched in the window.
    tenants = _Codes()
    rt = np.array([tenants.code((rows[i].tenant, "")) for i in order], dtype=np.int64)
    window_s = settings.ring_window_days * 86400
    ts = np.array([rows[i].ts for i in order])
    bursts = rating_bursts(rp, ts, rating, window_s, rt)
    rating_burst = bursts.surprise
    reviewer_rating_burst, reviewer_burst_row = _worst(ru, rating_burst, len(reviewers.keys))
    product_rating_burst, product_burst_row = _worst(rp, rating_burst, len(products.keys))

    f = sorted_facts0
    review_features = [
        (np.array([x.deviation for x in f]), True),
        (np.array([float(x.extreme) for x in f]), True),
        (np.array([float(x.reviewer_seq == 1) for x in f]), True),
        (np.array([x.early_time_frame for x in f]), True),
        (context, True),
        (np.array([x.account_age_days for x in f]), False),
    ]
    u_states = [fold.reviewers[k] for k in reviewers.keys]
    spans = np.array([(u.last_ts or 0.0) - (u.first_ts or 0.0) for u in u_states]) / 86400.0
    counts = np.array([u.n for u in u_states], dtype=np.float64)
    reviewer_features = [
        (counts, False),
        (np.array([u.burst.max_count for u in u_states], dtype=np.float64), True),
        (np.array([(u.ratings[3] + u.ratings[4]) / u.n for u in u_states]), True),
        (np.array([(u.ratings[0] + u.ratings[1]) / u.n for u in u_states]), True),
        (np.array([u.sum_dev / u.n for u in u_states]), True),
        (np.array([u.sum_wdev / u.sum_w if u.sum_w else 0.0 for u in u_states]), True),
        (spans, False),
        (np.array([entropy(u.ratings) for u in u_states]), False),
        (np.array([burst_score(u.burst.max_surprise) for u in u_states]), True),
        (rings.score, True),
        (participation, True),
    ]
    p_states = [fold.products[k] for k in products.keys]
    product_features = [
        (np.array([p.burst.max_surprise for p in p_states]), True),
        (np.array([p.singletons / p.n for p in p_states]), True),
        (np.array([abs(p.recent_mean - p.sum_rating / p.n) for p in p_states]), True),
    ]
    # The coordination evidence joins the priors as a probability, not one more rank among the
    # features: a burst that is a discovery among its tenant's tests.
    tests = burst_tests(rt, rp, rating, ts, bursts, window_s, len(tenants.keys))
    u_tenant = np.zeros(len(reviewers.keys), dtype=np.int64)
    u_tenant[ru] = rt
    p_tenant = np.zeros(len(products.keys), dtype=np.int64)
    p_tenant[rp] = rt
    # ranks among the tenant's own entities: one tenant's reviews never move another's scores
    h_r = combine_priors(review_features, n, settings.prior_clip,
                         [discovery_evidence(rating_burst, rt, tests)], rt)
    h_u = combine_priors(reviewer_features, len(u_states), settings.prior_clip,
                         [discovery_evidence(reviewer_rating_burst, u_tenant, tests)], u_tenant)
    h_p = combine_priors(product_features, len(p_states), settings.prior_clip,
                         [discovery_evidence(product_rating_burst, p_tenant, tests)], p_tenant)
    seeds = _label_seeds(labels, [rows[i] for i in order], reviewers, products)
    sorted_beliefs = collective_scores(ru, rp, h_r, h_u, h_p, seeds, settings)
    # back to input-row order
    inv = np.empty(n, dtype=np.int64)
    inv[np.asarray(order, dtype=np.int64)] = np.arange(n)
    beliefs = Beliefs(sorted_beliefs.review[inv], sorted_beliefs.reviewer, sorted_beliefs.product,
                      sorted_beliefs.review_prior[inv], sorted_beliefs.reviewer_prior,
                      sorted_beliefs.product_prior)
    order_arr = np.asarray(order, dtype=np.int64)
    in_rows = RatingBursts(bursts.surprise[inv], bursts.window[inv], bursts.same[inv], bursts.share[inv],
                           bursts.tested[inv])
    return ReviewAnalysis(rows, done, fold, reviewers, products, sellers, ru[inv], rp[inv], rs[inv], rings,
                          participation, in_rows, _input_rows(reviewer_burst_row, order_arr),
                          _input_rows(product_burst_row, order_arr), beliefs)


def burst_tests(tenant: np.ndarray, product: np.ndarray, rating: np.ndarray, ts: np.ndarray,
                bursts: RatingBursts, window_s: int, n_tenants: int) -> list[np.ndarray]:
    """Per tenant, the ``-log10 p`` surprises of the rating-burst hypotheses its run tested, for
    :func:`signals.review_graph.discovery_evidence`: each product, rating and disjoint
    window-wide time slot holding a tested review (an extreme rating with another review in its
    window, whether or not any agreed), once, with the slot's largest surprise (the windows
    centred on the reviews of one burst overlap and test the same thing; a product's bursts
    months apart are separate tests). Untested reviews (middle ratings, lone reviews) are no
    hypotheses: counting them would only make the bar higher for nothing."""
    hit = np.flatnonzero(bursts.tested)
    slot = np.floor(np.asarray(ts, dtype=np.float64)[hit] / (2 * window_s + 1)).astype(np.int64)
    keys = np.stack([tenant[hit], product[hit], rating[hit], slot])
    uniq, inverse = np.unique(keys, axis=1, return_inverse=True)
    best = np.zeros(uniq.shape[1])
    np.maximum.at(best, inverse.ravel(), bursts.surprise[hit])
    bounds = np.searchsorted(uniq[0], np.arange(n_tenants + 1))  # unique's columns sort by tenant first
    return [best[bounds[t]:bounds[t + 1]] for t in range(n_tenants)]


def _worst(group: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the largest positive value and the (first) row that has it; 0 and -1 for none."""
    best = np.zeros(n_groups)
    row = np.full(n_groups, -1, dtype=np.int64)
    hit = np.flatnonzero(values > 0)
    if len(hit):
        o = hit[np.lexsort((hit, -values[hit], group[hit]))]
        first = np.ones(len(o), dtype=bool)
        first[1:] = group[o][1:] != group[o][:-1]
        best[group[o[first]]] = values[o[first]]
        row[group[o[first]]] = o[first]
    return best, row


def _input_rows(sorted_rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rows in fold order (-1: none) as input rows."""
    return np.where(sorted_rows >= 0, order[np.maximum(sorted_rows, 0)], -1)


def _label_seeds(labels: Sequence[Label], rows: Sequence[ReviewRow], reviewers: _Codes,
                 products: _Codes) -> dict[str, dict[int, bool]]:
    seeds: dict[str, dict[int, bool]] = {"review": {}, "reviewer": {}, "product": {}}
    if not labels:
        return seeds
    review_index = {(r.tenant, r.review_id): k for k, r in enumerate(rows)}
    for lab in labels:
        key = (lab.tenant, lab.entity_id)
        fraud = lab.label == "fraud"
        if lab.entity_type == "review" and key in review_index:
            seeds["review"][review_index[key]] = fraud
        elif lab.entity_type == "reviewer" and key in reviewers.index:
            seeds["reviewer"][reviewers.index[key]] = fraud
        elif lab.entity_type == "product" and key in products.index:
            seeds["product"][products.index[key]] = fraud
    return seeds

