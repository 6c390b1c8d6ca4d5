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
    SignalSpec("seller.review_burst", ("seller",), "float", "burst of reviews on the seller's products"),
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
               "distance of the rating from the product's consensus"),
    # Reviewer.
    SignalSpec("reviewer.velocity", ("reviewer",), "float", "reviews per day"),
    SignalSpec("reviewer.burst", ("reviewer",), "float", "reviews bunched in a short window"),
    SignalSpec("reviewer.ring_score", ("reviewer",), "float",
               "co-review collusion with other accounts"),
    SignalSpec("reviewer.account_age_days_at_review", ("reviewer",), "days",
               "age of the account when it wrote the review"),
    # Product.
    SignalSpec("product.review_burst", ("product",), "float", "burst of reviews on the product"),
    SignalSpec("product.templated_review_share", ("product",), "ratio",
               "share of the product's reviews that are templated"),
    SignalSpec("product.rating_shift", ("product",), "float", "recent shift of the mean rating"),
)

CATALOGUE: dict[str, SignalSpec] = {spec.name: spec for spec in _SPECS}
