"""The signal catalogue: every stable signal name, the entity it describes and what it means.

Names are stable keys that downstream rules and models depend on. An extractor may
emit only names listed here; the registry checks that at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from signals.schemas import EntityType

ValueKind = Literal["count", "ratio", "bool", "float", "days", "label"]


@dataclass(frozen=True)
class SignalSpec:
    """What one signal name means: its entity type, its value's kind, a one-line description."""

    name: str
    entity_types: tuple[EntityType, ...]
    value_kind: ValueKind
    description: str


_SPECS: tuple[SignalSpec, ...] = (
    # Listing: near-duplicates and banks (indexes/ and serving/ compute these).
    SignalSpec("near_duplicate.count", ("listing",), "count", "near-duplicate listings found"),
    SignalSpec("near_duplicate.cross_seller_count", ("listing",), "count",
               "near-duplicates listed by other sellers"),
    SignalSpec("near_duplicate.max_similarity", ("listing",), "float",
               "highest similarity to another listing, any modality"),
    SignalSpec("near_duplicate.cluster_size", ("listing",), "count",
               "size of the near-duplicate cluster the listing belongs to"),
    SignalSpec("bank.match", ("listing", "review"), "count",
               "matches in banks of known items (which bank, which item, distance)"),
    SignalSpec("image.reused_across_sellers", ("listing",), "count",
               "images of this listing seen in other sellers' listings"),
    # Listing (and review) content rules: signals/content_rules.py.
    SignalSpec("content.offplatform_contact", ("listing", "review"), "count",
               "phone numbers, emails, URLs or messaging handles that pull buyers off the platform"),
    SignalSpec("content.obfuscation", ("listing", "review"), "float",
               "text disguised to evade filters (homoglyphs, zero-width, spacing, leetspeak)"),
    SignalSpec("content.prohibited_terms", ("listing", "review"), "count",
               "terms from the tenant's prohibited list"),
    SignalSpec("price.anomaly", ("listing",), "float",
               "price far below its near-duplicate cluster's or category's prices"),
    SignalSpec("image.nsfw", ("listing",), "float", "nudity detected in an image"),
    # Seller roll-ups.
    SignalSpec("seller.duplicate_listing_ratio", ("seller",), "ratio",
               "share of the seller's listings that are near-duplicates of others"),
    SignalSpec("seller.bank_match_count", ("seller",), "count",
               "the seller's listings matching fraud banks"),
    SignalSpec("seller.cluster_count", ("seller",), "count",
               "near-duplicate clusters the seller's listings belong to"),
    SignalSpec("seller.review_burst", ("seller",), "float",
               "burst of reviews on the seller's products: Poisson surprise (-log10 p) of its busiest day "
               "against its own winsorised EWMA baseline"),
    SignalSpec("seller.review_spam_share", ("seller",), "ratio",
               "share of the reviews of the seller's products with review.spam_score >= 0.5"),
    # Review.
    SignalSpec("review.near_duplicate_count", ("review",), "count",
               "same or templated text by other reviewers"),
    SignalSpec("review.bank_similarity", ("review",), "float",
               "similarity to banks of known fake reviews (value: best fraud-bank similarity; score: "
               "the calibrated kNN vote of the nearest fraud and benign bank reviews)"),
    SignalSpec("review.self_duplicate_count", ("review",), "count",
               "same or templated text by the same reviewer (a re-post)"),
    SignalSpec("review.fake_text_score", ("review",), "float",
               "probability the text is fake: the bank vote with n-gram and style statistics "
               "learned from the review banks"),
    SignalSpec("review.rating_deviation", ("review",), "float",
               "distance of the rating from the product's consensus (its mean before this review)"),
    # Review behaviour (signals/review_behaviour.py): as of the review's created_at, no look-ahead.
    SignalSpec("review.extremity", ("review",), "bool", "the rating is 1 or 5 stars"),
    SignalSpec("review.early_time_frame", ("review",), "float",
               "1 at the product's first review, falling linearly to 0 seven months later"),
    SignalSpec("review.singleton", ("review",), "bool", "the reviewer's first review when it was written"),
    SignalSpec("review.product_rank", ("review",), "count", "rank among the product's reviews (1 = first)"),
    SignalSpec("review.days_since_product_first", ("review",), "days",
               "days between the product's first review and this one"),
    SignalSpec("review.product_burst", ("review",), "float",
               "burst of the product's reviews on the review's day so far (Poisson surprise, -log10 p)"),
    # Collective scores, rating bursts and rings (signals/review_graph.py).
    SignalSpec("review.rating_burst", ("review",), "float",
               "a 1 or 5 star review inside a run of that rating on its product: surprise (-log10 p, "
               "binomial) of the other reviews' star mix within review_graph.ring_window_days either "
               "side, against the product's mix outside that window shrunk toward the tenant's"),
    SignalSpec("review.spam_score", ("review",), "float",
               "belief that the review is fake: loopy belief propagation over the review graph (SpEagle)"),
    # Reviewer.
    SignalSpec("reviewer.velocity", ("reviewer",), "float", "reviews per day of its activity span (+1 day)"),
    SignalSpec("reviewer.burst", ("reviewer",), "float",
               "reviews bunched in one day against the reviewer's own baseline (Poisson surprise, -log10 p)"),
    SignalSpec("reviewer.ring_score", ("reviewer",), "float",
               "co-review collusion: the strongest group the account met with on several products within "
               "days, by GSRank's group indicators (rating deviation, size ratio, size, support), "
               "discounted by sqrt(shared products / the account's reviews), 0..1"),
    SignalSpec("reviewer.account_age_days_at_review", ("review", "reviewer"), "days",
               "age of the account when it wrote the review (the reviewer: at its latest review); from "
               "reviewer_created_at, else from the account's first review seen"),
    SignalSpec("reviewer.review_count", ("reviewer",), "count", "reviews written"),
    SignalSpec("reviewer.max_reviews_per_day", ("reviewer",), "count", "most reviews written in one day"),
    SignalSpec("reviewer.positive_share", ("reviewer",), "ratio", "share of 4 and 5 star ratings"),
    SignalSpec("reviewer.negative_share", ("reviewer",), "ratio", "share of 1 and 2 star ratings"),
    SignalSpec("reviewer.mean_rating_deviation", ("reviewer",), "float",
               "mean distance of its ratings from the products' consensus at the time"),
    SignalSpec("reviewer.weighted_rating_deviation", ("reviewer",), "float",
               "the same, weighted toward early reviews (rank^-1.5)"),
    SignalSpec("reviewer.activity_span_days", ("reviewer",), "days", "days between first and latest review"),
    SignalSpec("reviewer.rating_entropy", ("reviewer",), "float", "entropy (bits) of its star ratings"),
    SignalSpec("reviewer.gap_entropy", ("reviewer",), "float",
               "entropy (bits) of the log2-binned gaps between its reviews"),
    SignalSpec("reviewer.co_singleton_share", ("reviewer",), "ratio",
               "the company it keeps: mean, over its reviews, of the share of the product's reviews so far "
               "that were their account's first (fake accounts review the products other fresh accounts do)"),
    SignalSpec("reviewer.typical_product_rank", ("reviewer",), "float",
               "geometric mean, over its reviews, of the review's rank among the product's reviews when "
               "written (1 = the product's first): how early in products' histories the account reviews"),
    SignalSpec("reviewer.typical_product_age_days", ("reviewer",), "days",
               "geometric mean, over its reviews, of 1 + the days since the product's first review when "
               "written, less 1: how new the products it reviews were"),
    SignalSpec("reviewer.burst_participation", ("reviewer",), "float",
               "the worst burst (Poisson surprise, -log10 p, of the whole day) of a product the reviewer "
               "reviewed on that day"),
    SignalSpec("reviewer.rating_burst", ("reviewer",), "float",
               "the worst review.rating_burst among the reviewer's reviews (a campaign's accounts share one "
               "even when they share no second product and write camouflage reviews)"),
    SignalSpec("reviewer.spam_score", ("reviewer",), "float",
               "belief that the account writes fake reviews (collective scoring)"),
    # Product.
    SignalSpec("product.review_burst", ("product",), "float",
               "burst of reviews on the product: Poisson surprise (-log10 p) of its busiest day against its "
               "own winsorised EWMA baseline"),
    SignalSpec("product.templated_review_share", ("product",), "ratio",
               "share of the product's reviews that are templated"),
    SignalSpec("product.rating_shift", ("product",), "float",
               "recent shift of the mean rating: EWMA of the latest ratings minus the all-time mean"),
    SignalSpec("product.review_count", ("product",), "count", "reviews of the product"),
    SignalSpec("product.singleton_share", ("product",), "ratio",
               "share of the product's reviews that were their reviewer's first"),
    SignalSpec("product.rating_burst", ("product",), "float",
               "the worst review.rating_burst among the product's reviews"),
    SignalSpec("product.spam_score", ("product",), "float",
               "belief that the product is a target of fake reviews (collective scoring)"),
)

CATALOGUE: dict[str, SignalSpec] = {spec.name: spec for spec in _SPECS}
