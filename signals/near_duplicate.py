"""Near-duplicate signals of listings and reviews, from the partners the indexes found.

Pure builders (see :mod:`signals.derived`); the batch job and the service both call them.

Listings (source ``listing_near_duplicate@1``), all five ALWAYS emitted, zeros included,
so a consumer sees a listing go back to clean:

- ``near_duplicate.count``: distinct other listings matched; score ``1 - exp(-n / 5)``.
- ``near_duplicate.cross_seller_count``: those listed by a known, other seller;
  score ``1 - exp(-n / 2)``.
- ``near_duplicate.max_similarity``: the best similarity, any modality (0.0 when none);
  score = the value.
- ``near_duplicate.cluster_size``: size of the listing's cluster, itself included (1 =
  alone); score ``1 - exp(-(size - 1) / 5)``.
- ``image.reused_across_sellers``: other-seller listings matched through an image
  modality (PDQ or SSCD); score ``1 - exp(-n / 2)``.

Duplicates by the same seller are common and mostly harmless (relisting, variants), so a
plain count saturates slowly; the same content under other sellers, and above all the
same photos, is the classic stolen-listing scam, so those saturate fast (one other seller
already scores 0.39, three 0.78).

Counting rules: a partner matched through several modalities (text and image) counts
once; the item's own id never counts; a partner whose owner is unknown (``None``) is
never counted as another seller's / reviewer's. When matches disagree on a partner's
owner, the smallest known owner id is used, so the result does not depend on order.

Evidence (``{"matches": [...], "total": n}``) lists the matches behind each value: one
entry per (partner, modality) at its best similarity, ordered by similarity descending,
then id, then modality; at most 20 (``total`` counts them all). ``near_duplicate.cluster_size``
comes from clustering, not from the matches, and has empty evidence.

Reviews (source ``review_near_duplicate@2``): ``review.near_duplicate_count`` counts
distinct other reviews by another (known) reviewer, near-identical or templated (the pairs
:mod:`indexes.review_templates` decides); a reviewer repeating themselves is a separate
signal, ``review.self_duplicate_count`` (a re-post, not a farm). Score ``1 - exp(-n / 2)``
for both. Version 2: the template decision and the self-duplicate signal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from signals.derived import (
    LISTING_NEAR_DUPLICATE,
    MAX_EVIDENCE_MATCHES,
    REVIEW_NEAR_DUPLICATE,
    Match,
    rounded,
    saturate,
    unit,
)
from signals.schemas import Listing, Review, Signal
from signals.vocabulary import IMAGE_MODALITIES, Modality

COUNT_SCALE = 5.0
"""``near_duplicate.count`` score: ``1 - exp(-count / COUNT_SCALE)``."""
CROSS_OWNER_SCALE = 2.0
"""Score scale of the cross-seller, image-reuse and review counts."""
CLUSTER_SCALE = 5.0
"""``near_duplicate.cluster_size`` score: ``1 - exp(-(size - 1) / CLUSTER_SCALE)``."""


def best_matches(matches: Sequence[Match], own_id: str) -> list[Match]:
    """One match per (partner, modality) at its best, owners resolved, in evidence order.

    Drops the item's own id; resolves each partner's owner to the smallest known owner
    among its matches; clips similarities into 0..1; orders by similarity descending,
    then id, then modality.
    """
    best: dict[tuple[str, Modality], float] = {}
    owners: dict[str, str] = {}
    for m in matches:
        if m.other_id == own_id:
            continue
        key = (m.other_id, m.modality)
        sim = unit(m.similarity)
        if key not in best or sim > best[key]:
            best[key] = sim
        if m.other_owner is not None:
            prev = owners.get(m.other_id)
            owners[m.other_id] = m.other_owner if prev is None else min(prev, m.other_owner)
    out = [Match(other_id, modality, sim, owners.get(other_id))
           for (other_id, modality), sim in best.items()]
    out.sort(key=lambda m: (-m.similarity, m.other_id, m.modality))
    return out


def _other_owner(owner: str | None, own: str) -> bool:
    # Unknown is not "other": only a known, different owner counts.
    return owner is not None and owner != own


def _evidence(matches: Sequence[Match], owner_key: Literal["seller_id", "reviewer_id"],
              keep: Callable[[Match], bool] | None = None) -> dict[str, Any]:
    kept = [m for m in matches if keep is None or keep(m)]
    return {
        "matches": [{"id": m.other_id, "modality": m.modality, "similarity": rounded(m.similarity),
                     owner_key: m.other_owner} for m in kept[:MAX_EVIDENCE_MATCHES]],
        "total": len(kept),
    }


def listing_near_duplicate_signals(listing: Listing, matches: Sequence[Match], cluster_size: int,
                                   observed_at: datetime) -> list[Signal]:
    """The five near-duplicate signals of a listing (see the module docstring), always emitted.

    ``matches`` are the partners the indexes found, any modality, in any order and with
    repeats; ``cluster_size`` is the size of the listing's near-duplicate cluster,
    counting the listing itself (>= 1).
    """
    if cluster_size < 1:
        raise ValueError(f"cluster_size counts the listing itself, so must be >= 1, not {cluster_size}")
    seller = listing.seller_id
    ms = best_matches(matches, listing.listing_id)

    def cross(m: Match) -> bool:
        return _other_owner(m.other_owner, seller)

    def image_cross(m: Match) -> bool:
        return m.modality in IMAGE_MODALITIES and cross(m)

    count = len({m.other_id for m in ms})
    cross_count = len({m.other_id for m in ms if cross(m)})
    image_count = len({m.other_id for m in ms if image_cross(m)})
    max_sim = ms[0].similarity if ms else 0.0
    all_evidence = _evidence(ms, "seller_id")

    def make(name: str, value: int | float, score: float, evidence: dict[str, Any]) -> Signal:
        return LISTING_NEAR_DUPLICATE.signal(
            tenant=listing.tenant, entity_type="listing", entity_id=listing.listing_id, name=name,
            value=value, score=score, evidence=evidence, observed_at=observed_at)

    return [
        make("near_duplicate.count", count, saturate(count, COUNT_SCALE), all_evidence),
        make("near_duplicate.cross_seller_count", cross_count, saturate(cross_count, CROSS_OWNER_SCALE),
             _evidence(ms, "seller_id", cross)),
        make("near_duplicate.max_similarity", max_sim, max_sim, all_evidence),
        make("near_duplicate.cluster_size", cluster_size, saturate(cluster_size - 1, CLUSTER_SCALE), {}),
        make("image.reused_across_sellers", image_count, saturate(image_count, CROSS_OWNER_SCALE),
             _evidence(ms, "seller_id", image_cross)),
    ]


def review_near_duplicate_signals(review: Review, matches: Sequence[Match], observed_at: datetime
                                  ) -> list[Signal]:
    """``review.near_duplicate_count`` (distinct other reviews by another known reviewer) and
    ``review.self_duplicate_count`` (by the same reviewer: a re-post), both always emitted.

    Evidence: the counted matches, as for listings, with ``reviewer_id`` for the owner.
    """
    reviewer = review.reviewer_id
    ms = best_matches(matches, review.review_id)

    def counted(m: Match) -> bool:
        return _other_owner(m.other_owner, reviewer)

    def own(m: Match) -> bool:
        return m.other_owner == reviewer

    count = len({m.other_id for m in ms if counted(m)})
    self_count = len({m.other_id for m in ms if own(m)})

    def make(name: str, value: int, keep: Callable[[Match], bool]) -> Signal:
        return REVIEW_NEAR_DUPLICATE.signal(
            tenant=review.tenant, entity_type="review", entity_id=review.review_id, name=name, value=value,
            score=saturate(value, CROSS_OWNER_SCALE), evidence=_evidence(ms, "reviewer_id", keep),
            observed_at=observed_at)

    return [make("review.near_duplicate_count", count, counted),
            make("review.self_duplicate_count", self_count, own)]
