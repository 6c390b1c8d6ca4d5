"""A review-farm simulator: organic shoppers and fake-review campaigns, with labels.

Deterministic for a seed. :func:`simulate` returns Review records (dicts, the batch job's
JSONL) and the set of fake reviewer ids. Parameters (:class:`FarmParams`):

Organic side
- ``products`` products of ``sellers`` sellers (products assigned to sellers round-robin), each
  with a launch day uniform over the first 80 % of ``days`` and a quality (mean star rating)
  uniform in 2.5..4.8; popularity is Zipf-like (weight ``1 / rank^popularity_exponent``).
- ``organic_reviewers`` accounts; each writes ``1 + Pareto(activity_alpha)`` reviews (heavy
  tailed: most write one or two, a few write hundreds, capped at ``max_organic_reviews``),
  spread over an active period; with probability ``spree_prob`` a review starts a *shopping
  spree* (2-5 more reviews that day). Products are picked by popularity among those
  launched; stars are the product's quality plus noise (sd 1), rounded, clipped to 1..5.
  Accounts were created 0-1,000 days before their first review.
- Product launches: ``launch_boost`` of a product's organic reviews are drawn in its first
  two weeks (an honest burst the detectors must not flag as fraud).

Campaigns (``campaigns`` of them)
- Each promotes (5 stars; or, with ``demote_prob``, attacks with 1 star) 1-``max_targets``
  products of one seller, launched by a ring of ``ring_size`` accounts (uniform in the
  range); every member reviews each target with probability ``coverage`` inside a burst of
  ``burst_days``.
- Accounts are fresh (created 0-3 days before the campaign) with probability ``fresh_prob``,
  else aged (created 1-3 years before, bought accounts), and ``reuse_prob`` of a campaign's
  accounts are taken from an earlier campaign (farms reuse accounts).
- Camouflage (``camouflage``): each fake account also writes 1-``camouflage_reviews`` honest-looking
  reviews of popular products (stars at the product's quality) spread over the year.
- Text (``text``): organic reviews get a sentence from a small honest vocabulary; campaign
  reviews are one of a few templates, copied with small edits (a word swapped, punctuation)
  or paraphrased (synonym substitution); with ``text=False`` every review's text is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FarmParams:
    seed: int = 0
    days: int = 365
    products: int = 2000
    sellers: int = 250
    popularity_exponent: float = 0.9
    organic_reviewers: int = 12000
    activity_alpha: float = 1.3
    max_organic_reviews: int = 150
    spree_prob: float = 0.03
    launch_boost: float = 0.3
    campaigns: int = 60
    max_targets: int = 4
    ring_size: tuple[int, int] = (3, 25)
    coverage: float = 0.8
    burst_days: int = 4
    demote_prob: float = 0.2
    fresh_prob: float = 0.5
    reuse_prob: float = 0.2
    camouflage: bool = True
    camouflage_reviews: int = 5
    text: bool = False


_HONEST = ["arrived on time and works as described", "decent quality for the price",
           "battery life could be better",
           "the colour is slightly different from the photos", "my kids love it", "returned it, too small",
           "sturdy and well packed", "instructions were confusing but it works",
           "good value, would buy again",
           "stopped working after two weeks", "comfortable and looks nice", "not what I expected"]
_TEMPLATES = ["Best {p} ever!!! Fast shipping, 100% genuine, highly recommend this seller.",
              "Amazing {p}, exceeded all my expectations. Five stars, will buy again!",
              "This {p} is a total scam, broke on day one. Avoid this seller!!!",
              "Excellent quality {p}, great price and super fast delivery. Highly recommended."]
_SYNONYMS = {"Best": "Greatest", "Amazing": "Incredible", "Fast": "Quick", "highly": "strongly",
             "Excellent": "Superb", "great": "good", "super": "very", "total": "complete"}


def _stamp(day: float) -> str:
    return (EPOCH + timedelta(days=float(day))).isoformat().replace("+00:00", "Z")


def simulate(params: FarmParams = FarmParams()) -> tuple[list[dict[str, Any]], set[str]]:
    """The reviews (shuffled, fresh ids) and the ids of the fake accounts."""
    rng = np.random.default_rng(params.seed)
    P, D = params.products, params.days
    launch = rng.uniform(0, 0.8 * D, P)
    quality = rng.uniform(2.5, 4.8, P)
    seller_of = np.arange(P) % params.sellers
    weight = 1.0 / (1.0 + rng.permutation(P)) ** params.popularity_exponent
    # reviewer, product, stars, day, created, text
    rows: list[tuple[str, int, int, float, float | None, str]] = []

    def honest_text() -> str:
        return str(rng.choice(_HONEST)).capitalize() + "." if params.text else ""

    def pick_product(day: float, k: int = 1) -> np.ndarray:
        w = np.where(launch <= day, weight, 0.0)
        # launch boost: products launched in the last 14 days get more attention
        w = w * np.where((day - launch >= 0) & (day - launch < 14), 1.0 + 20 * params.launch_boost, 1.0)
        if w.sum() <= 0:
            w = weight
        return rng.choice(P, size=k, p=w / w.sum())

    def stars(p: int) -> int:
        return int(np.clip(np.rint(quality[p] + rng.normal(0, 1.0)), 1, 5))

    for u in range(params.organic_reviewers):
        uid = f"o{u}"
        n = min(params.max_organic_reviews, 1 + int(rng.pareto(params.activity_alpha)))
        start = rng.uniform(0, D)
        span = min(D - start, rng.exponential(60 * np.log1p(n)))
        created = start - rng.uniform(0, 1000)
        k = 0
        while k < n:
            day = start + rng.uniform(0, span)
            burst = 1 + (int(rng.integers(2, 6)) if rng.random() < params.spree_prob else 0)
            for p in pick_product(day, min(burst, n - k)):
                rows.append((uid, int(p), stars(int(p)), day + rng.uniform(0, 0.3), created, honest_text()))
                k += 1
    fake: set[str] = set()
    pool: list[tuple[str, float]] = []
    popular = np.argsort(-weight)[:200]
    for c in range(params.campaigns):
        seller = int(rng.integers(params.sellers))
        own = np.flatnonzero(seller_of == seller)
        n_targets = min(len(own), int(rng.integers(1, params.max_targets + 1)))
        targets = rng.choice(own, size=n_targets, replace=False)
        t0 = max(float(launch[targets].max()), rng.uniform(0, D - params.burst_days))
        demote = rng.random() < params.demote_prob
        size = int(rng.integers(params.ring_size[0], params.ring_size[1] + 1))
        template = _TEMPLATES[2] if demote else str(rng.choice([_TEMPLATES[0], _TEMPLATES[1], _TEMPLATES[3]]))
        members: list[tuple[str, float]] = []
        for m in range(size):
            if pool and rng.random() < params.reuse_prob:
                members.append(pool[int(rng.integers(len(pool)))])
                continue
            created = t0 - (rng.uniform(0, 3) if rng.random() < params.fresh_prob else rng.uniform(365, 1100))
            acct = (f"f{c}_{m}", created)
            members.append(acct)
            pool.append(acct)
            if params.camouflage:
                for _ in range(int(rng.integers(1, params.camouflage_reviews + 1))):
                    day = rng.uniform(max(0.0, t0 - 120), min(float(D), t0 + 120))
                    p = int(rng.choice(popular))
                    if launch[p] <= day:
                        rows.append((acct[0], p, int(np.clip(np.rint(quality[p]), 1, 5)), day, created,
                                     honest_text()))
        for uid, created in members:
            fake.add(uid)
            for p in targets:
                if rng.random() < params.coverage:
                    day = t0 + rng.uniform(0, params.burst_days)
                    rows.append((uid, int(p), 1 if demote else 5, day, created,
                                 _farm_text(rng, template, int(p)) if params.text else ""))
    # fresh reviewer ids in a random order: an id says nothing about the account's kind
    names = sorted({r[0] for r in rows})
    alias = {n: f"u{k}" for n, k in zip(names, rng.permutation(len(names)).tolist(), strict=True)}
    order = rng.permutation(len(rows))
    out = []
    for i, k in enumerate(order.tolist()):
        uid, p, s, day, created, text = rows[k]
        out.append({"review_id": f"r{i}", "product_id": f"p{p}", "seller_id": f"s{int(seller_of[p])}",
                    "reviewer_id": alias[uid], "rating": s, "text": text, "created_at": _stamp(day),
                    "reviewer_created_at": _stamp(created) if created is not None else None})
    return out, {alias[u] for u in fake if u in alias}


def _farm_text(rng: np.random.Generator, template: str, product: int) -> str:
    words = template.format(p=f"item {product % 7}").split()
    r = rng.random()
    if r < 0.4:  # paraphrase: synonyms
        words = [_SYNONYMS.get(w, w) for w in words]
    elif r < 0.8:  # small edit: drop a word, change punctuation
        del words[int(rng.integers(len(words)))]
        words[-1] = words[-1].rstrip("!.") + str(rng.choice(["!", "!!", "."]))
    return " ".join(words)
