"""Seller and product roll-ups of per-item derived facts. Pure builders (see :mod:`signals.derived`).

A caller (the batch job over a whole catalogue, or the service over its store) folds
each item's facts into a :class:`SellerStats` / :class:`ProductStats` with ``add_listing``
/ ``add_review`` (``merge`` combines partial stats, as Ray's aggregations need) and then
builds the signals.

Seller (source ``seller_rollup@1``, entity ``seller``):

- ``seller.duplicate_listing_ratio``: value = duplicated / listings (raw, 0..1);
  score = ``duplicated / (listings + 2)``, the ratio shrunk toward 0 with two
  pseudo-listings, so 1 duplicated listing out of 1 scores 0.33 and 40 out of 40 scores
  0.95: a seller with few listings has not shown a pattern yet.
- ``seller.cluster_count``: distinct clusters (size >= 2) holding the seller's listings;
  score ``1 - exp(-n / 3)``.
- ``seller.bank_match_count``: the seller's listings with a fraud-bank match; score
  ``1 - exp(-n)``: one known-bad listing already scores 0.63.

All three carry the same evidence: the counts and up to 10 cluster ids, sorted.

Product (source ``product_rollup@1``, entity ``product``):

- ``product.templated_review_share``: value = templated / reviews, where a review is
  templated when it has a near-duplicate by another reviewer; score shrunk as the
  seller ratio, ``templated / (reviews + 2)``.

Nothing is emitted for stats with no listings / reviews.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from signals.derived import PRODUCT_ROLLUP, SELLER_ROLLUP, saturate
from signals.schemas import Signal

PSEUDO_COUNT = 2.0
"""Ratio scores are ``hits / (total + PSEUDO_COUNT)``."""
CLUSTER_COUNT_SCALE = 3.0
BANK_MATCH_SCALE = 1.0
MAX_EVIDENCE_CLUSTERS = 10


def _check_count(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")


def shrunk_ratio(hits: int, total: int) -> float:
    """``hits / (total + PSEUDO_COUNT)``: a ratio pulled toward 0 while ``total`` is small."""
    return hits / (total + PSEUDO_COUNT)


@dataclass
class SellerStats:
    """What a seller's listings showed, accumulated one listing at a time."""

    tenant: str
    seller_id: str
    listings: int = 0
    """Listings seen."""
    duplicated_listings: int = 0
    """Listings with ``near_duplicate.count >= 1``."""
    cluster_ids: set[str] = field(default_factory=set)
    """Clusters of size >= 2 that the seller's listings are in."""
    bank_matches: int = 0
    """Listings with at least one fraud-bank match."""

    def add_listing(self, *, near_duplicates: int, cluster_id: str | None, cluster_size: int,
                    bank_matches: int) -> None:
        """Fold in one listing: its near-duplicate count, its cluster and its fraud-bank matches."""
        _check_count("near_duplicates", near_duplicates)
        _check_count("bank_matches", bank_matches)
        self.listings += 1
        if near_duplicates >= 1:
            self.duplicated_listings += 1
        if cluster_id is not None and cluster_size >= 2:
            self.cluster_ids.add(cluster_id)
        if bank_matches >= 1:
            self.bank_matches += 1

    def merge(self, other: SellerStats) -> None:
        """Add another partial tally of the same seller (from another block of listings)."""
        if (other.tenant, other.seller_id) != (self.tenant, self.seller_id):
            raise ValueError(f"cannot merge seller {other.tenant}/{other.seller_id} "
                             f"into {self.tenant}/{self.seller_id}")
        self.listings += other.listings
        self.duplicated_listings += other.duplicated_listings
        self.cluster_ids |= other.cluster_ids
        self.bank_matches += other.bank_matches


def seller_rollup_signals(stats: SellerStats, observed_at: datetime) -> list[Signal]:
    """The three seller roll-ups (see the module docstring); ``[]`` when no listings were seen."""
    if stats.listings == 0:
        return []
    ratio = stats.duplicated_listings / stats.listings
    clusters = len(stats.cluster_ids)
    evidence: dict[str, Any] = {
        "listings": stats.listings,
        "duplicated_listings": stats.duplicated_listings,
        "bank_matched_listings": stats.bank_matches,
        "cluster_count": clusters,
        "cluster_ids": sorted(stats.cluster_ids)[:MAX_EVIDENCE_CLUSTERS],
    }

    def make(name: str, value: int | float, score: float) -> Signal:
        return SELLER_ROLLUP.signal(
            tenant=stats.tenant, entity_type="seller", entity_id=stats.seller_id, name=name,
            value=value, score=score, evidence=evidence, observed_at=observed_at)

    return [
        make("seller.duplicate_listing_ratio", ratio,
             shrunk_ratio(stats.duplicated_listings, stats.listings)),
        make("seller.cluster_count", clusters, saturate(clusters, CLUSTER_COUNT_SCALE)),
        make("seller.bank_match_count", stats.bank_matches, saturate(stats.bank_matches, BANK_MATCH_SCALE)),
    ]


@dataclass
class ProductStats:
    """What a product's reviews showed, accumulated one review at a time."""

    tenant: str
    product_id: str
    reviews: int = 0
    """Reviews seen."""
    templated_reviews: int = 0
    """Reviews with a near-duplicate by another reviewer (``review.near_duplicate_count >= 1``)."""

    def add_review(self, *, near_duplicates: int) -> None:
        """Fold in one review, given its ``review.near_duplicate_count``."""
        _check_count("near_duplicates", near_duplicates)
        self.reviews += 1
        if near_duplicates >= 1:
            self.templated_reviews += 1

    def merge(self, other: ProductStats) -> None:
        """Add another partial tally of the same product."""
        if (other.tenant, other.product_id) != (self.tenant, self.product_id):
            raise ValueError(f"cannot merge product {other.tenant}/{other.product_id} "
                             f"into {self.tenant}/{self.product_id}")
        self.reviews += other.reviews
        self.templated_reviews += other.templated_reviews


def product_rollup_signals(stats: ProductStats, observed_at: datetime) -> list[Signal]:
    """``product.templated_review_share``; ``[]`` when no reviews were seen."""
    if stats.reviews == 0:
        return []
    return [PRODUCT_ROLLUP.signal(
        tenant=stats.tenant, entity_type="product", entity_id=stats.product_id,
        name="product.templated_review_share", value=stats.templated_reviews / stats.reviews,
        score=shrunk_ratio(stats.templated_reviews, stats.reviews),
        evidence={"reviews": stats.reviews, "templated_reviews": stats.templated_reviews},
        observed_at=observed_at)]
