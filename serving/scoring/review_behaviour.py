"""The service's behavioural review signals and its periodic graph recomputation.

:class:`StoredReviewBehaviour` is the engine's ``review_behaviour`` seam: for each new review it
reads the states of the review's reviewer, product, seller and tenant from the store's key-value
table, folds the review into them with :class:`signals.review_behaviour.BehaviourFold` (the batch
job's fold), and hands back the signals and the new states, which the engine commits in the
review's own write transaction. A review posted in time order gets exactly the batch job's
signals (tested).

What the per-review path does not do, and the periodic recomputation does:

- a re-posted review id is not folded again (its first version's behaviour stays counted);
  a deleted review is not taken out of the states;
- a review older than its entities' latest day is counted, but cannot reopen a closed day's
  burst (its evidence says ``late``);
- collective scores (``*.spam_score``) and ``reviewer.burst_participation`` need the whole
  graph; ``reviewer.ring_score`` is updated for the new review's reviewer only (its
  co-reviewers' scores wait for the recomputation).

:func:`recompute_reviews` (the engine's ``recompute_reviews``, every ``review_graph.recompute_s``)
runs :func:`signals.review_analysis.analyse_reviews`, the batch job's analysis, over every
review the store holds, with the tenant's labels as seeds, and rewrites every state and every
behavioural and graph signal: after it, the service's signals equal a batch run's over the same
reviews (tested).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from serving.store.base import SignalStore
from signals.config import ReviewGraphConfig
from signals.review_analysis import ReviewRow, analyse_reviews, neighbourhood_rings
from signals.review_behaviour import (
    AnyState,
    BehaviourFold,
    ProductState,
    ReviewerState,
    SellerState,
    TenantState,
    product_behaviour_signals,
    review_behaviour_signals,
    reviewer_behaviour_signals,
    seller_behaviour_signals,
    state_from_json,
    state_to_json,
)
from signals.review_graph import GraphSettings
from signals.schemas import EntityType, Review, Signal

STATE_PREFIX = "review_state\x1f"
LABELLED: tuple[EntityType, ...] = ("review", "reviewer", "product")


def state_key(tenant: str, kind: str, entity_id: str) -> str:
    return f"{STATE_PREFIX}{tenant}\x1f{kind}\x1f{entity_id}"


def _dump(state: AnyState) -> str:
    return json.dumps(state_to_json(state), sort_keys=True)


class StoredReviewBehaviour:
    """The ``review_behaviour`` seam over the store's key-value table (see the module doc).

    Besides the fold, the reviewer's ``reviewer.ring_score`` is updated from its neighbourhood:
    every stored review of the products it reviewed (of a product with more, the last
    ``max_product_reviews`` stored: ``signals.review_graph.ring_product_reviews``, read through
    an index with a ``LIMIT``, so a product's size bounds neither the reads, the memory nor the
    parsing), its own review count and those products' review counts and rating sums from their
    states.
    """

    def __init__(self, settings: GraphSettings | None = None,
                 max_product_reviews: int = ReviewGraphConfig().ring_product_reviews) -> None:
        self.settings = settings or GraphSettings()
        self.max_product_reviews = max_product_reviews

    def signals(self, review: Review, store: SignalStore,
                observed_at: datetime) -> tuple[list[Signal], dict[str, str]]:
        t = review.tenant
        if store.get_item(t, "review", review.review_id) is not None:
            return [], {}  # a re-post: folded once (the periodic recomputation sees the new version)
        fold = BehaviourFold()
        keys: dict[str, tuple[str, str, type[AnyState], dict[Any, Any]]] = {
            "reviewer": (review.reviewer_id, state_key(t, "reviewer", review.reviewer_id), ReviewerState,
                         fold.reviewers),
            "product": (review.product_id, state_key(t, "product", review.product_id), ProductState,
                        fold.products),
            "seller": (review.seller_id, state_key(t, "seller", review.seller_id), SellerState, fold.sellers),
        }
        for entity_id, key, kind, states in keys.values():
            raw = store.get_meta(key)
            if raw is not None:
                states[(t, entity_id)] = state_from_json(kind, json.loads(raw))
        tenant_key = state_key(t, "tenant", t)
        raw = store.get_meta(tenant_key)
        if raw is not None:
            fold.tenants[t] = state_from_json(TenantState, json.loads(raw))
        facts = fold.add(review)
        u = fold.reviewers[(t, review.reviewer_id)]
        p = fold.products[(t, review.product_id)]
        s = fold.sellers[(t, review.seller_id)]
        out = [*review_behaviour_signals(review, facts, observed_at),
               *reviewer_behaviour_signals(t, review.reviewer_id, u, observed_at),
               *product_behaviour_signals(t, review.product_id, p, observed_at),
               *seller_behaviour_signals(t, review.seller_id, s, observed_at)]
        meta = {keys["reviewer"][1]: _dump(u), keys["product"][1]: _dump(p), keys["seller"][1]: _dump(s),
                tenant_key: _dump(fold.tenants[t])}
        out.append(self._ring(review, store, u.n, p, observed_at))
        return out, meta

    def _ring(self, review: Review, store: SignalStore, own_count: int, product: ProductState,
              observed_at: datetime) -> Signal:
        t = review.tenant
        products = {it.group for it in store.items_of_owner(t, "review", review.reviewer_id)
                    if it.group is not None} | {review.product_id}
        rows = [ReviewRow.of(review)]
        # each product's review count and rating sum from its state (the slice may hold fewer)
        totals = {review.product_id: (product.n, product.sum_rating)}
        for pid in sorted(products):
            stored = store.group_records(t, "review", pid, limit=self.max_product_reviews)
            items = [ReviewRow.of_stored(record) for item_id, record in stored if item_id != review.review_id]
            rows += sorted(items, key=lambda r: (r.ts, r.review_id))
            raw = store.get_meta(state_key(t, "product", pid)) if pid != review.product_id else None
            if raw is not None:
                state = state_from_json(ProductState, json.loads(raw))
                totals[pid] = (state.n, state.sum_rating)
        return neighbourhood_rings(rows, own_count, t, review.reviewer_id, self.settings, observed_at, totals)


def recompute_reviews(store: SignalStore, tenant: str, settings: GraphSettings,
                      observed_at: datetime) -> tuple[Iterator[Signal], dict[str, str]]:
    """Every behavioural and graph signal of the tenant's stored reviews, and every state, from
    the batch job's analysis over all of them (the tenant's labels seeding the collective scores)."""
    rows = [ReviewRow.of(Review.model_validate_json(it.record))
            for it in store.iter_items(tenant, "review", with_features=False)]
    analysis = analyse_reviews(rows, store.tenant_labels(tenant, LABELLED), settings)
    fold = analysis.fold
    meta: dict[str, str] = {}
    for (t, uid), u in fold.reviewers.items():
        meta[state_key(t, "reviewer", uid)] = _dump(u)
    for (t, pid), p in fold.products.items():
        meta[state_key(t, "product", pid)] = _dump(p)
    for (t, sid), s in fold.sellers.items():
        meta[state_key(t, "seller", sid)] = _dump(s)
    for t, g in fold.tenants.items():
        meta[state_key(t, "tenant", t)] = _dump(g)

    def signals() -> Iterator[Signal]:
        for row in range(len(rows)):
            yield from analysis.review_signals(row, observed_at)
        yield from analysis.entity_signals(observed_at)

    return signals(), meta
