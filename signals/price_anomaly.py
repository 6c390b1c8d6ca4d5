"""``price.anomaly``: a listing priced far BELOW its near-duplicates' or its category's prices.

Bait listings (a phone at a third of its price, to pull the buyer into paying off the
platform) are priced far below market; a price far above is odd but not a scam signal, so
only the downside scores. Pure builder (see :mod:`signals.derived`).

The reference is robust statistics of a group's prices in one currency
(:class:`PriceReference`): the median and the median absolute deviation of
``log(price)``. The rule, exactly:

1. No signal (``None``) unless the listing has a price > 0 and at least one reference in
   its currency with ``n >= 3``. Currencies are never converted.
2. Among those, a ``"cluster"`` reference (its near-duplicates: the same item) is
   preferred over a ``"category"`` one; within a group, the largest ``n`` wins (the first
   given on a tie).
3. ``z = (log(median) - log(price)) / (1.4826 * mad_log + EPS)``, ``EPS = 0.1``:
   the robust z-score of the log price below the median (1.4826 makes the MAD a standard
   deviation for normal data). ``EPS`` keeps a group of identical prices (``mad_log = 0``)
   from making a 1% discount look infinitely unusual: it is about a 10% price difference.
4. ``value = max(0, 1 - price / median)``: how far below the median, as a fraction.
5. ``score = 0`` when ``z <= 0`` (at or above the median), else
   ``1 / (1 + exp(-2 * (z - 2.5)))``: 0.007 just below the median, 0.5 at ``z = 2.5``,
   0.993 at ``z = 5``. Monotone in ``z``.

Evidence: ``{"reference": {"group", "currency", "median", "n", "mad_log"}, "price", "z"}``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from signals.derived import PRICE_ANOMALY, rounded
from signals.schemas import Listing, Signal

PriceGroup = Literal["cluster", "category"]

MIN_PRICES = 3
"""A reference needs at least this many prices to be used."""
MAD_TO_SIGMA = 1.4826
EPS = 0.1
"""Added to the log-price scale (see the module docstring)."""
LOGISTIC_CENTRE = 2.5
LOGISTIC_SLOPE = 2.0


@dataclass(frozen=True, slots=True)
class PriceReference:
    """Robust price statistics of a reference group (a near-duplicate cluster, or a category).

    One currency per reference.

    ``n`` counts the prices in the group (the listing's own excluded where the caller
    can); ``mad_log`` is the median absolute deviation of ``log(price)`` around
    ``log(median)``.
    """

    group: PriceGroup
    currency: str
    n: int
    median: float
    mad_log: float

    def __post_init__(self) -> None:
        if self.group not in ("cluster", "category"):
            raise ValueError(f"group must be 'cluster' or 'category', not {self.group!r}")
        if self.n < 0:
            raise ValueError(f"n must be >= 0, not {self.n}")
        if not (math.isfinite(self.median) and self.median > 0):
            raise ValueError(f"median must be a finite price > 0, not {self.median!r}")
        if not (math.isfinite(self.mad_log) and self.mad_log >= 0):
            raise ValueError(f"mad_log must be a finite number >= 0, not {self.mad_log!r}")

    @classmethod
    def of(cls, group: PriceGroup, currency: str, prices: Sequence[float]) -> PriceReference | None:
        """The reference of a group's prices; ``None`` with fewer than 3 positive, finite prices.

        Zero, negative and non-finite prices are ignored (a free item says nothing about
        the market price).
        """
        usable = sorted(float(p) for p in prices if math.isfinite(p) and p > 0)
        if len(usable) < MIN_PRICES:
            return None
        median = statistics.median(usable)
        log_median = math.log(median)
        mad_log = statistics.median(abs(math.log(p) - log_median) for p in usable)
        return cls(group, currency, len(usable), median, mad_log)


def robust_z(price: float, reference: PriceReference) -> float:
    """How many robust standard deviations ``log(price)`` lies BELOW ``log(median)``."""
    scale = MAD_TO_SIGMA * reference.mad_log + EPS
    return (math.log(reference.median) - math.log(price)) / scale


def anomaly_score(z: float) -> float:
    """0 at or above the median (``z <= 0``), else a logistic: 0.5 at z = 2.5, ~1 beyond 5."""
    if z <= 0:
        return 0.0
    return 1.0 / (1.0 + math.exp(-LOGISTIC_SLOPE * (z - LOGISTIC_CENTRE)))


def choose_reference(currency: str, references: Sequence[PriceReference]) -> PriceReference | None:
    """The reference to judge a price in ``currency`` by (rules 1-2 of the module docstring)."""
    usable = [r for r in references if r.currency == currency and r.n >= MIN_PRICES]
    for group in ("cluster", "category"):
        in_group = [r for r in usable if r.group == group]
        if in_group:
            # max() keeps the first of equals, so ties go to the first given.
            return max(in_group, key=lambda r: r.n)
    return None


def price_anomaly_signal(listing: Listing, references: Sequence[PriceReference],
                         observed_at: datetime) -> Signal | None:
    """``price.anomaly`` of a listing, or ``None`` without a price or a usable reference."""
    price = listing.price
    if price is None or price <= 0 or listing.currency is None:
        return None
    ref = choose_reference(listing.currency, references)
    if ref is None:
        return None
    z = robust_z(price, ref)
    value = max(0.0, 1.0 - price / ref.median)
    evidence = {
        "reference": {"group": ref.group, "currency": ref.currency, "median": ref.median, "n": ref.n,
                      "mad_log": rounded(ref.mad_log)},
        "price": price,
        "z": rounded(z),
    }
    return PRICE_ANOMALY.signal(
        tenant=listing.tenant, entity_type="listing", entity_id=listing.listing_id,
        name="price.anomaly", value=value, score=anomaly_score(z), evidence=evidence,
        observed_at=observed_at)
