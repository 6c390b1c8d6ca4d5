"""Signals derived from index lookups: the facts they are built from, and the bank-match signals.

The near-duplicate, bank-match, price and roll-up signals are computed from facts that
the FAISS indexes find (``indexes/`` and ``serving/`` do the lookups). These pure
builders turn those facts into Signal records, and they are the ONE implementation of
each such signal: the batch Ray job and the HTTP service both call them, so a listing
gets the same signals whichever path scored it. No I/O, no FAISS, no Ray; the same input
gives byte-identical output, evidence order included (the batch job's resume test
compares its outputs byte for byte).

- :mod:`signals.derived` (this module): :class:`Match`, :class:`BankHit`, the
  :class:`DerivedSource` declarations, :func:`bank_match_signal` (``bank.match``) and
  :func:`review_bank_similarity_signal` (``review.bank_similarity``).
- :mod:`signals.vocabulary`: the shared words, :data:`~signals.vocabulary.Modality` and
  :data:`~signals.vocabulary.BankKind`.
- :mod:`signals.near_duplicate`: ``near_duplicate.*``, ``image.reused_across_sellers``,
  ``review.near_duplicate_count``.
- :mod:`signals.price_anomaly`: ``price.anomaly``.
- :mod:`signals.rollups`: ``seller.*`` and ``product.templated_review_share``.

Bank scoring (``bank.match`` and ``review.bank_similarity``)::

    best_fraud  = max similarity over fraud-bank hits (0.0 when none)
    best_benign = max similarity over benign-bank hits (0.0 when none)
    score       = best_fraud * (BENIGN_DISCOUNT if a benign hit exists and
                                best_benign >= best_fraud else 1)

A known-good item that matches at least as closely as the known-bad one suggests the
content is a common, legitimate look-alike (a stock product photo, a stock phrase), so the
fraud match is worth a quarter as much; it is not zeroed, because scammers copy good
listings too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from signals.catalogue import CATALOGUE
from signals.review_text import ReviewTextVerdict
from signals.schemas import EntityType, Listing, Review, Signal, SignalValue
from signals.vocabulary import BANK_KINDS, MODALITIES, BankKind, Modality

MAX_EVIDENCE_MATCHES = 20
"""At most this many matches are listed in a signal's evidence (the best ones)."""
EVIDENCE_DECIMALS = 4
"""Similarities and distances in evidence are rounded to this many decimals."""
BENIGN_DISCOUNT = 0.25
"""Factor on a fraud-bank score when a benign bank matches at least as closely."""


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")


def _check_finite(name: str, value: float) -> None:
    # NaN would make sorting (and so the evidence order) depend on input order.
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")


@dataclass(frozen=True, slots=True)
class Match:
    """A near-duplicate partner found for an item.

    ``similarity`` is 0..1: ``1 - bits / 256`` for PDQ, the pair scorer's probability or
    the cosine for text and SSCD (values outside 0..1 are clipped where used).
    ``other_owner`` is the seller_id of the other listing, or the reviewer_id of the other
    review; ``None`` when unknown (never counted as a different owner).
    """

    other_id: str
    modality: Modality
    similarity: float
    other_owner: str | None = None

    def __post_init__(self) -> None:
        _check_modality(self.modality)
        _check_finite("similarity", self.similarity)


@dataclass(frozen=True, slots=True)
class BankHit:
    """A bank item matched by an item: which bank (and its kind), which item, how far.

    ``distance`` is ``1 - cosine`` for vectors and Hamming bits for PDQ, so it is only
    comparable within one modality; ``similarity`` (0..1) is comparable across them.
    """

    bank: str
    kind: BankKind
    item_id: str
    modality: Modality
    distance: float
    similarity: float

    def __post_init__(self) -> None:
        if self.kind not in BANK_KINDS:
            raise ValueError(f"kind must be one of {BANK_KINDS}, not {self.kind!r}")
        _check_modality(self.modality)
        _check_finite("distance", self.distance)
        _check_finite("similarity", self.similarity)


@dataclass(frozen=True, slots=True)
class DerivedSource:
    """One builder's declaration: ``source = name@version`` and the signal names it emits.

    Bump ``version`` whenever the meaning of an emitted value or score changes.
    """

    name: str
    version: int
    emits: tuple[str, ...]

    @property
    def source(self) -> str:
        return f"{self.name}@{self.version}"

    def signal(
        self,
        *,
        tenant: str,
        entity_type: EntityType,
        entity_id: str,
        name: str,
        value: SignalValue,
        score: float | None,
        evidence: dict[str, Any],
        observed_at: datetime,
    ) -> Signal:
        """A Signal record from this source; ``score`` is clipped into 0..1.

        ``evidence`` is deep-copied, so signals built from one evidence dict never share
        mutable lists (a consumer editing one must not change another).
        """
        if name not in self.emits:
            raise ValueError(f"{self.source} does not declare signal {name!r} in emits")
        return Signal(
            tenant=tenant,
            entity_type=entity_type,
            entity_id=entity_id,
            name=name,
            value=value,
            score=None if score is None else unit(score),
            evidence=copy.deepcopy(evidence),
            source=self.source,
            observed_at=observed_at,
        )


LISTING_NEAR_DUPLICATE = DerivedSource("listing_near_duplicate", 1, (
    "near_duplicate.count", "near_duplicate.cross_seller_count", "near_duplicate.max_similarity",
    "near_duplicate.cluster_size", "image.reused_across_sellers"))
REVIEW_NEAR_DUPLICATE = DerivedSource("review_near_duplicate", 2, (
    "review.near_duplicate_count", "review.self_duplicate_count"))
BANK_MATCH = DerivedSource("bank_match", 1, ("bank.match",))
REVIEW_BANK = DerivedSource("review_bank", 2, ("review.bank_similarity",))
REVIEW_TEXT = DerivedSource("review_text", 1, ("review.fake_text_score",))
PRICE_ANOMALY = DerivedSource("price_anomaly", 1, ("price.anomaly",))
SELLER_ROLLUP = DerivedSource("seller_rollup", 1, (
    "seller.duplicate_listing_ratio", "seller.cluster_count", "seller.bank_match_count"))
PRODUCT_ROLLUP = DerivedSource("product_rollup", 1, ("product.templated_review_share",))

DERIVED_SOURCES: tuple[DerivedSource, ...] = (
    LISTING_NEAR_DUPLICATE, REVIEW_NEAR_DUPLICATE, BANK_MATCH, REVIEW_BANK, REVIEW_TEXT, PRICE_ANOMALY,
    SELLER_ROLLUP, PRODUCT_ROLLUP,
)


def check_derived_sources(sources: Sequence[DerivedSource] = DERIVED_SOURCES) -> None:
    """The start-up check: unique sources, every emitted name in the catalogue."""
    seen: set[str] = set()
    for src in sources:
        if src.source in seen:
            raise ValueError(f"derived source {src.source!r} is declared twice")
        seen.add(src.source)
        for name in src.emits:
            if name not in CATALOGUE:
                raise ValueError(f"{src.source} emits {name!r}, not in the catalogue")


# ---- small shared helpers -------------------------------------------------------------


def unit(x: float) -> float:
    """``x`` clipped into 0..1, as a float."""
    return float(min(1.0, max(0.0, x)))


def saturate(n: float, scale: float) -> float:
    """``1 - exp(-n / scale)``: 0 at 0, 0.63 at ``scale``, 0.95 at ``3 * scale``."""
    return 0.0 if n <= 0 else 1.0 - math.exp(-n / scale)


def rounded(x: float) -> float:
    """A number as evidence shows it."""
    return round(float(x), EVIDENCE_DECIMALS)


def entity_of(item: Listing | Review) -> EntityType:
    """The entity type a record describes."""
    return "listing" if isinstance(item, Listing) else "review"


# ---- bank signals -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BankSummary:
    fraud_items: int
    best_fraud: float
    best_benign: float
    discounted: bool
    score: float
    evidence: dict[str, Any]


def _summarise_bank_hits(hits: Sequence[BankHit]) -> _BankSummary:
    # One entry per (bank, item, modality): an item whose two images both hit the same
    # bank image is one match, shown at its closest.
    best: dict[tuple[str, str, str], BankHit] = {}
    for h in hits:
        key = (h.bank, h.item_id, h.modality)
        cur = best.get(key)
        if cur is None or (h.similarity, -h.distance) > (cur.similarity, -cur.distance):
            best[key] = h
    ordered = sorted(best.values(),
                     key=lambda h: (-h.similarity, h.distance, h.bank, h.item_id, h.modality, h.kind))
    fraud = [h for h in ordered if h.kind == "fraud"]
    benign = [h for h in ordered if h.kind == "benign"]
    best_fraud = unit(fraud[0].similarity) if fraud else 0.0
    best_benign = unit(benign[0].similarity) if benign else 0.0
    discounted = bool(fraud and benign and best_benign >= best_fraud)
    score = best_fraud * (BENIGN_DISCOUNT if discounted else 1.0)
    evidence: dict[str, Any] = {
        "matches": [
            {"bank": h.bank, "kind": h.kind, "id": h.item_id, "modality": h.modality,
             "distance": rounded(h.distance), "similarity": rounded(unit(h.similarity))}
            for h in ordered[:MAX_EVIDENCE_MATCHES]
        ],
        "total": len(ordered),
        "best_fraud_similarity": rounded(best_fraud),
        "best_benign_similarity": rounded(best_benign),
        "benign_discount": discounted,
    }
    # Distinct fraud items: the same bank item matched through two modalities counts once.
    fraud_items = len({(h.bank, h.item_id) for h in fraud})
    return _BankSummary(fraud_items, best_fraud, best_benign, discounted, score, evidence)


def bank_match_signal(item: Listing | Review, hits: Sequence[BankHit], observed_at: datetime) -> Signal:
    """``bank.match`` for a listing or a review; always emitted (0 hits: value 0, score 0.0).

    value: distinct fraud-bank items matched (by ``(bank, item_id)``).
    score: the best fraud similarity, times :data:`BENIGN_DISCOUNT` when a benign bank
    matches at least as closely. Evidence: every hit (fraud and benign), closest first
    (similarity descending, then distance, bank, id, modality), at most
    :data:`MAX_EVIDENCE_MATCHES`, with ``total`` and the discount inputs.
    """
    s = _summarise_bank_hits(hits)
    return BANK_MATCH.signal(
        tenant=item.tenant, entity_type=entity_of(item), entity_id=item.entity_id,
        name="bank.match", value=s.fraud_items, score=s.score, evidence=s.evidence,
        observed_at=observed_at)


def review_bank_similarity_signal(review: Review, hits: Sequence[BankHit], observed_at: datetime,
                                  verdict: ReviewTextVerdict | None = None) -> Signal:
    """``review.bank_similarity``; always emitted.

    value: the best similarity to a fraud-bank review at or above the match threshold
    (0.0 when none), undiscounted, as in ``review_bank@1``.
    score: with a fitted review text model (fraud and benign review banks,
    :mod:`signals.review_text`), the calibrated kNN vote: the probability that the review is
    fake given the similarity-weighted fraud share of its ``k`` nearest bank reviews; without
    one, the similarity with the benign discount of :func:`bank_match_signal`.
    Evidence: as ``bank.match`` (the threshold matches), plus ``neighbours`` (the nearest bank
    reviews, either kind, closest first), ``vote`` and ``calibrated``.
    """
    s = _summarise_bank_hits(hits)
    evidence = dict(s.evidence)
    score = s.score
    if verdict is not None:
        evidence["neighbours"] = [{"bank": b, "kind": k, "id": i, "similarity": rounded(unit(sim))}
                                  for b, k, i, sim in verdict.neighbours[:MAX_EVIDENCE_MATCHES]]
        evidence["vote"] = rounded(verdict.vote)
        evidence["calibrated"] = verdict.vote_probability is not None
        if verdict.vote_probability is not None:
            score = verdict.vote_probability
    return REVIEW_BANK.signal(
        tenant=review.tenant, entity_type="review", entity_id=review.review_id,
        name="review.bank_similarity", value=s.best_fraud, score=score, evidence=evidence,
        observed_at=observed_at)


def review_fake_text_signal(review: Review, verdict: ReviewTextVerdict,
                            observed_at: datetime) -> Signal | None:
    """``review.fake_text_score``: the text model's probability that the review is fake (value
    and score), or None when there is no model or no text (nothing was scored).

    Evidence: the calibrated vote it combined, the model's fingerprint (which bank contents
    it was fitted on) and the nearest bank reviews (at most 5).
    """
    if verdict.fake_probability is None:
        return None
    p = unit(verdict.fake_probability)
    vote_p = verdict.vote_probability
    evidence = {"vote_probability": None if vote_p is None else rounded(vote_p), "model": verdict.model,
                "neighbours": [{"bank": b, "kind": k, "id": i, "similarity": rounded(unit(sim))}
                               for b, k, i, sim in verdict.neighbours[:5]]}
    return REVIEW_TEXT.signal(
        tenant=review.tenant, entity_type="review", entity_id=review.review_id,
        name="review.fake_text_score", value=rounded(p), score=p, evidence=evidence,
        observed_at=observed_at)
