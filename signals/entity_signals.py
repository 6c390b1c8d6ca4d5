"""Every derived signal of one listing or review from the facts the indexes found: ONE function
per record kind that the batch job and the HTTP service both call.

The batch job learns a listing's facts from the whole catalogue at once (all-pairs search,
clustering); the service learns them from its store and indexes as listings arrive. Both
hand the facts to :func:`listing_signals` / :func:`review_signals` here, so the order of the
signals, which builder makes which, the price references and what a seller's roll-up
counts cannot differ between the paths. Pure: no I/O, no FAISS, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from signals.derived import (
    BankHit,
    Match,
    bank_match_signal,
    review_bank_similarity_signal,
    review_fake_text_signal,
)
from signals.near_duplicate import listing_near_duplicate_signals, review_near_duplicate_signals
from signals.price_anomaly import PriceReference, price_anomaly_signal
from signals.review_text import ReviewTextVerdict
from signals.schemas import Listing, Review, Signal

CLUSTER_PRICES_EXACT_UP_TO = 50
"""Up to this many members a listing's cluster price reference leaves its own price out;
past it one reference per cluster and currency serves every member (a member's own price
barely moves a big cluster's median), so a giant cluster costs O(size), not O(size^2)."""


@dataclass(frozen=True)
class ImageProblem:
    """An image of a listing that could not be read: which one and why (shown in evidence)."""

    field: str | None
    code: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "code": self.code, "message": self.reason}


@dataclass(frozen=True)
class ListingFacts:
    """What the indexes, the clustering and the banks found for one listing.

    ``matches``: decided near-duplicate partners (any modality, repeats allowed);
    ``cluster_id``/``cluster_size``: the listing's cluster (its earliest member's id;
    size counts the listing, 1 = alone); ``price_references``: the cluster's and the
    category's (see :func:`cluster_price_reference`); ``bank_hits``: fraud and benign
    bank matches; ``image_problems``: images that did not decode.
    """

    listing: Listing
    matches: Sequence[Match]
    cluster_id: str
    cluster_size: int
    price_references: Sequence[PriceReference]
    bank_hits: Sequence[BankHit]
    image_problems: Sequence[ImageProblem] = ()


@dataclass(frozen=True)
class ListingOutcome:
    """A listing's derived signals and what its seller's roll-up folds in."""

    signals: list[Signal]
    near_duplicates: int
    cross_seller: int
    fraud_bank_matches: int
    cluster_id: str | None = field(default=None)
    """The listing's cluster when it has one (size >= 2), else None."""
    cluster_size: int = 1


def listing_signals(facts: ListingFacts, observed_at: datetime) -> ListingOutcome:
    """The derived listing signals, in a fixed order: the five near-duplicate signals,
    ``price.anomaly`` (when a price and a reference exist), ``bank.match``."""
    item = facts.listing
    near = listing_near_duplicate_signals(item, facts.matches, facts.cluster_size, observed_at)
    by_name = {s.name: s for s in near}
    if facts.image_problems:
        # An unreadable image must not hide: name it where image reuse is judged.
        reuse = by_name["image.reused_across_sellers"]
        evidence = {**reuse.evidence, "unreadable_images": [p.to_dict() for p in facts.image_problems]}
        near = [s if s is not reuse else s.model_copy(update={"evidence": evidence}) for s in near]
    out = list(near)
    price = price_anomaly_signal(item, facts.price_references, observed_at)
    if price is not None:
        out.append(price)
    out.append(bank_match_signal(item, facts.bank_hits, observed_at))
    fraud_items = {(h.bank, h.item_id) for h in facts.bank_hits if h.kind == "fraud"}
    return ListingOutcome(
        signals=out,
        near_duplicates=int(by_name["near_duplicate.count"].value or 0),
        cross_seller=int(by_name["near_duplicate.cross_seller_count"].value or 0),
        fraud_bank_matches=len(fraud_items),
        cluster_id=facts.cluster_id if facts.cluster_size >= 2 else None,
        cluster_size=facts.cluster_size,
    )


@dataclass(frozen=True)
class ReviewFacts:
    """What the review index and the banks found for one review: near-duplicate partners,
    bank matches at the threshold, and the review-bank verdict (nearest bank reviews, vote,
    text model scores; None when the review has no text or no review bank exists)."""

    review: Review
    matches: Sequence[Match]
    bank_hits: Sequence[BankHit]
    text_verdict: ReviewTextVerdict | None = None


@dataclass(frozen=True)
class ReviewOutcome:
    signals: list[Signal]
    near_duplicates: int


def review_signals(facts: ReviewFacts, observed_at: datetime) -> ReviewOutcome:
    """``review.near_duplicate_count``, ``review.self_duplicate_count``, ``review.bank_similarity``,
    then ``review.fake_text_score`` when a text model scored the review."""
    near = review_near_duplicate_signals(facts.review, facts.matches, observed_at)
    bank = review_bank_similarity_signal(facts.review, facts.bank_hits, observed_at, facts.text_verdict)
    out = [*near, bank]
    if facts.text_verdict is not None:
        fake = review_fake_text_signal(facts.review, facts.text_verdict, observed_at)
        if fake is not None:
            out.append(fake)
    return ReviewOutcome(out, int(near[0].value or 0))


def cluster_price_reference(
    currency: str, own_row: object, members: Sequence[tuple[object, float | None, str | None]],
) -> PriceReference | None:
    """The cluster price reference of one member: ``members`` are ``(key, price, currency)``
    of every member of its cluster, itself included (``own_row`` is its key).

    Up to :data:`CLUSTER_PRICES_EXACT_UP_TO` members its own price is left out; past it
    the whole cluster's prices are the reference (the same for every member).
    """
    exact = len(members) <= CLUSTER_PRICES_EXACT_UP_TO
    prices = [float(p) for key, p, c in members
              if p is not None and c == currency and not (exact and key == own_row)]
    return PriceReference.of("cluster", currency, prices)


def category_prices_key(listing: Listing) -> tuple[str, str | None, str]:
    """The key a category price reference is kept under: (tenant, category, currency)."""
    return (listing.tenant, listing.category, listing.currency or "")
