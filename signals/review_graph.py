"""Graph signals over the reviewer-review-product graph: collusion rings and collective scores.

Pure numpy over integer-coded edge arrays (one row per review): the batch job computes them
over the whole run, the service over its store at each periodic recomputation; the same
arrays in the same order give the same scores.

Rings (``reviewer.ring_score``): two accounts *co-review* a product when both review it
within :attr:`GraphSettings.ring_window_days` of each other. For memory on products with
huge review counts, each review is paired only with the ``ring_max_neighbours`` reviews of
the same product just before it in ``(day, input order)`` order (deterministic; a review
pairs with at most that many partners, so pairs are O(reviews)). A pair of accounts that
co-reviewed ``c >= 2`` distinct products is a frequent co-review pair (the 2-itemsets of
frequent-itemset mining). Its *group* is every account that was there each time the pair met:
that reviewed each of the pair's ``c`` products within the window of both the pair's reviews of
it, at their first meeting there, looked for among the ``ring_max_neighbours`` reviews either
side of the pair's (the closure of the pair over its meetings: an itemset of up to
``3 * ring_max_neighbours + 1`` accounts whose support is the pair's). The group is scored by
GSRank's group indicators (Mukherjee, Liu and Glance, WWW 2012; :data:`GROUP_INDICATORS`):
rating deviation from the rest of its products' reviews, share of the reviews in the meetings'
windows, size, support; their mean is the group's spamicity. GSRank's time window is the
group's definition here, not a score; its early time frame and content similarities are not
used (the first lowered the ring's AP on the farm simulator's tuning seed and on YelpZip; text
is :mod:`signals.review_text`'s). A member's score from a group is the spamicity times
``sqrt(min(1, c / n))``, ``n`` its review count (heavy reviewers meet people by chance: on
YelpZip, accounts in frequent pairs are mostly elite reviewers at the same events); its ring
score is the best over its own pairs' groups, ties broken by a coding-free rank.

Rating bursts (``review.rating_burst``, ``reviewer.rating_burst``, ``product.rating_burst``):
a product's reviews within ``ring_window_days`` of a review, and how improbable their star
mix is against the product's own mix outside that window, shrunk toward the tenant's
(:func:`rating_bursts`). A farm's campaign is a few days of one extreme rating from many
accounts: the accounts need not share
a second product (rings cannot see a single-target campaign), and their other reviews
(camouflage) do not hide the burst, since a reviewer's value is its worst review's.

Collective scores (``review.spam_score``, ``reviewer.spam_score``, ``product.spam_score``):
SpEagle (Rayana and Akoglu, KDD 2015). Node priors are unsupervised: each behavioural
feature becomes a suspiciousness in 0..1 by its empirical CDF over the node type within its
tenant (in the direction the literature found suspicious), combined as ``1 - sqrt(mean((1 - s)^2))``;
then the node's rating burst joins as a probability (``1 - q``, ``q`` its Benjamini-Hochberg
q-value among its tenant's tests, when it is a discovery at :data:`DISCOVERY_FDR`:
:func:`discovery_evidence` and :func:`signals.review_analysis.burst_tests`) in a noisy-or:
one more rank in the mean would be outvoted by the profile features, whose literature directions camouflaged
accounts invert (more reviews, longer spans, higher entropy than a fresh fake's);
a pairwise Markov random field with homophilous compatibilities (flip probabilities
``eps_reviewer`` and ``eps_product`` of :class:`GraphSettings`) ties each review to its
reviewer and its product, and loopy belief propagation (vectorised over the edge arrays, in log-odds,
damped) gives each node's belief. Labels, when given, replace the prior of their node
with ``label_prior`` (SpEagle+).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc, expit

from signals.derived import DerivedSource


@dataclass(frozen=True)
class GraphSettings:
    ring_window_days: int = 3
    """Two reviews of a product this many days apart or less are a co-review."""
    ring_max_neighbours: int = 10
    """A review is paired with at most this many earlier reviews of its product, and a group is
    looked for among this many reviews either side of its pair's (bounds on memory and time)."""
    eps_reviewer: float = 0.1
    """P(review state differs from its reviewer's state) in the compatibility matrix."""
    eps_product: float = 0.3
    """The same between a review and its product (weaker: honest products get fake reviews too)."""
    iterations: int = 10
    damping: float = 0.5
    label_prior: float = 0.99
    """A labelled node's prior: 0.99 fraud, 0.01 legit."""
    prior_clip: float = 0.01


DEFAULT_GRAPH = GraphSettings()

REVIEW_GRAPH = DerivedSource("review_graph", 3, (
    "reviewer.ring_score", "reviewer.burst_participation", "review.rating_burst", "reviewer.rating_burst",
    "product.rating_burst", "review.spam_score", "reviewer.spam_score", "product.spam_score",
    "seller.review_spam_share"))


GROUP_INDICATORS = ("rating_deviation", "size_ratio", "size", "support")
"""GSRank's group indicators that :func:`ring_scores` computes, in the columns of :attr:`Rings.indicators`."""
GROUP_SIZE_MIDPOINT = 3.0
"""Group size indicator ``1 / (1 + exp(-(members - GROUP_SIZE_MIDPOINT)))`` (GSRank's)."""
GROUP_SUPPORT_SCALE = 2.0
"""Group support indicator ``1 - exp(-(products - 1) / GROUP_SUPPORT_SCALE)``."""


@dataclass(frozen=True)
class Rings:
    """Per reviewer, its strongest co-review group (:func:`ring_scores`); zeros and -1 when none."""

    score: np.ndarray          # (n_reviewers,) 0..1
    partners: np.ndarray       # accounts it co-reviewed >= 2 products with (its frequent pairs)
    max_shared: np.ndarray     # most products co-reviewed with one account
    top_partner: np.ndarray    # the other end of the pair whose group scored best, -1 when none
    group_size: np.ndarray     # members of that group, the reviewer included
    group_products: np.ndarray  # products that pair co-reviewed, the group with it each time
    indicators: np.ndarray     # (n_reviewers, len(GROUP_INDICATORS)) that group's indicators


def ring_scores(reviewer: np.ndarray, product: np.ndarray, day: np.ndarray, rating: np.ndarray,
                n_reviewers: int, settings: GraphSettings = DEFAULT_GRAPH, *,
                review_counts: np.ndarray | None = None,
                product_totals: tuple[np.ndarray, np.ndarray] | None = None,
                rank: np.ndarray | None = None, focus: int | None = None, levels: int = 5) -> Rings:
    """Co-review groups and each reviewer's ring score from one row per review (rows in a fixed
    order: the batch job's ``(created_at, review_id)``; ties in day are broken by that order).

    A reviewer's score depends only on the reviews of the products it reviewed, its own review
    count and those products' review counts and rating sums, so the service's update from that
    neighbourhood gives it its full-graph value when it passes:

    - ``review_counts``: each reviewer's review count (default: counted from the rows); only
      the scored reviewers' counts are read;
    - ``product_totals``: each product's review count and rating sum (default: from the rows);
    - ``rank``: each reviewer's place in an order that does not depend on the coding (its id),
      which breaks ties between equally strong partners (default: the codes);
    - ``focus``: the one reviewer to score; the others' scores are left at 0.
    """
    reviewer = np.asarray(reviewer, dtype=np.int64)
    product = np.asarray(product, dtype=np.int64)
    day = np.asarray(day, dtype=np.int64)
    rating = np.asarray(rating, dtype=np.int64)
    n = len(reviewer)
    if not (len(product) == len(day) == len(rating) == n):
        raise ValueError("reviewer, product, day and rating must have one row per review")
    out = Rings(np.zeros(n_reviewers), np.zeros(n_reviewers, dtype=np.int64),
                np.zeros(n_reviewers, dtype=np.int64), np.full(n_reviewers, -1, dtype=np.int64),
                np.zeros(n_reviewers, dtype=np.int64), np.zeros(n_reviewers, dtype=np.int64),
                np.zeros((n_reviewers, len(GROUP_INDICATORS))))
    if n < 2:
        return out
    if reviewer.min() < 0 or reviewer.max() >= n_reviewers or product.min() < 0:
        raise ValueError(f"reviewer codes must be 0..{n_reviewers - 1} and product codes >= 0")
    if rating.min() < 1 or rating.max() > levels:
        raise ValueError(f"ratings must be 1..{levels}, got {int(rating.min())}..{int(rating.max())}")
    order = np.lexsort((np.arange(n), day, product))
    r, p, d, s = reviewer[order], product[order], day[order], rating[order]
    # one int64 axis, sorted, on which each product's reviews are a stretch ``span`` days from the next's
    w, near = settings.ring_window_days, settings.ring_max_neighbours
    d0 = int(d.min())
    span = int(d.max()) - d0 + 2 * w + 2
    if (int(p.max()) + 1) * span >= 2**62:
        raise ValueError(f"reviews span {span} days over {int(p.max()) + 1} products: too wide to index")
    pos = p * span + (d - d0 + w + 1)
    # co-reviews: each review with the ring_max_neighbours reviews of its product just before it,
    # kept as the two rows (earlier, later)
    rows = np.int32 if n < 2**31 else np.int64
    pairs_j: list[np.ndarray] = []
    pairs_i: list[np.ndarray] = []
    for k in range(1, min(near, n - 1) + 1):
        i = np.arange(k, n, dtype=rows)
        j = i - k
        ok = (p[i] == p[j]) & (d[i] - d[j] <= w) & (r[i] != r[j])
        pairs_j.append(j[ok])
        pairs_i.append(i[ok])
    ej, ei = np.concatenate(pairs_j), np.concatenate(pairs_i)
    if not len(ej):
        return out
    # frequent pairs: co-reviews of >= 2 distinct products (each (pair, product) counted once,
    # at its first meeting in (day, order) order)
    key = np.minimum(r[ej], r[ei]) * n_reviewers + np.maximum(r[ej], r[ei])
    o = np.lexsort((ei, ej, p[ej], key))
    key, ej, ei = key[o], ej[o], ei[o]
    del o
    keep = np.r_[True, (key[1:] != key[:-1]) | (p[ej][1:] != p[ej][:-1])]
    key, ej, ei = key[keep], ej[keep], ei[keep]
    pair, start, shared = np.unique(key, return_index=True, return_counts=True)
    del key
    frequent = shared >= 2
    fa, fb = pair[frequent] // n_reviewers, pair[frequent] % n_reviewers
    if focus is not None:
        frequent[frequent] = (fa == focus) | (fb == focus)
        fa, fb = pair[frequent] // n_reviewers, pair[frequent] % n_reviewers
    if not frequent.any():
        return out
    ends = np.concatenate([fa, fb])
    np.add.at(out.partners, ends, 1)
    np.maximum.at(out.max_shared, ends, np.concatenate([shared[frequent]] * 2))
    # the frequent pairs' meetings, each pair's a run
    met = np.repeat(frequent, shared)
    met_j, met_i = ej[met].astype(np.int64), ei[met].astype(np.int64)
    run = np.r_[0, np.cumsum(shared[frequent])]
    # each meeting's window: the product's reviews within ring_window_days of both the pair's;
    lo = np.searchsorted(pos, pos[met_i] - w, side="left")
    hi = np.searchsorted(pos, pos[met_j] + w, side="right")
    # ...of which, for a bounded cost on busy days, the ring_max_neighbours either side of the pair
    first = np.maximum(lo, met_j - near)
    last = np.minimum(hi, met_i + near + 1)
    totals = (np.bincount(p), np.bincount(p, weights=s)) if product_totals is None else product_totals
    n_prod, sum_prod = (np.asarray(x, dtype=np.float64) for x in totals)
    count = (np.bincount(reviewer, minlength=n_reviewers) if review_counts is None
             else np.maximum(np.asarray(review_counts, dtype=np.int64), 1))
    place = np.arange(n_reviewers) if rank is None else np.asarray(rank)
    r_list, s_list = r.tolist(), s.tolist()
    for x, (a, b) in enumerate(zip(fa.tolist(), fb.tolist(), strict=True)):
        # the group: every account that was there each time the pair met
        meetings = [(int(p[met_j[k]]), int(first[k]), int(last[k]), int(hi[k] - lo[k]))
                    for k in range(run[x], run[x + 1])]
        group = set(r_list[meetings[0][1]:meetings[0][2]])
        for _, f0, f1, _ in meetings[1:]:
            group.intersection_update(r_list[f0:f1])
        ind = _group_indicators(group, meetings, r_list, s_list, n_prod, sum_prod, levels)
        spam = sum(ind) / len(ind)
        for end, other in ((a, b), (b, a)):
            if focus is not None and end != focus:
                continue
            value = spam * math.sqrt(min(1.0, len(meetings) / count[end]))
            top = out.top_partner[end]
            if value > out.score[end] or (value == out.score[end] and top >= 0 and place[other] < place[top]):
                out.score[end] = value
                out.top_partner[end] = other
                out.group_size[end] = len(group)
                out.group_products[end] = len(meetings)
                out.indicators[end] = ind
    return out


def _group_indicators(members: set[int], meetings: list[tuple[int, int, int, int]], r: list[int],
                      s: list[int], n_prod: np.ndarray, sum_prod: np.ndarray, levels: int) -> list[float]:
    """GSRank's group indicators (Mukherjee, Liu and Glance, WWW 2012) of one group, each in
    0..1 (:data:`GROUP_INDICATORS`), over its meetings: ``(product, first, last, window)``, the
    rows ``first:last`` of ``r, s`` (reviewer, rating, sorted by product and day) that are the
    product's reviews near the meeting, of ``window`` reviews in its window.

    Rating deviation: the members' reviews there against every other review of the product
    (the product's totals less those); a product with no other review adds none. Size ratio:
    the members' reviews there over the window's reviews (a member's second review of the
    product in the window counts twice)."""
    dev = ratio = 0.0
    for q, first, last, window in meetings:
        stars = [s[k] for k in range(first, last) if r[k] in members]
        others = float(n_prod[q]) - len(stars)
        if others > 0:  # rating deviation: the group's mean against the product's other reviews
            rest = (float(sum_prod[q]) - sum(stars)) / others
            dev = max(dev, abs(sum(stars) / len(stars) - rest) / (levels - 1))
        ratio += len(stars) / float(window)  # size ratio: the group's share of the window's reviews
    size = 1.0 / (1.0 + math.exp(-(len(members) - GROUP_SIZE_MIDPOINT)))
    support = 1.0 - math.exp(-(len(meetings) - 1) / GROUP_SUPPORT_SCALE)
    return [dev, ratio / len(meetings), size, support]


@dataclass(frozen=True)
class RatingBursts:
    """Per review, the star mix of its product's reviews around it (:func:`rating_bursts`)."""

    surprise: np.ndarray  # -log10 P(X >= same - 1), X ~ Binomial(window - 1, share); 0 between the ends
    window: np.ndarray    # reviews of the product within the window either side (the review included)
    same: np.ndarray      # of those, with the review's rating
    share: np.ndarray     # the product's share of that rating outside the window, shrunk toward the tenant's
    tested: np.ndarray    # an extreme rating with another review in its window: a test, p = 1 when none agree


PRIOR_REVIEWS = 5.0
"""Pseudo-reviews of the tenant's own star mix in a product's expected share of a rating."""


def rating_bursts(product: np.ndarray, ts: np.ndarray, rating: np.ndarray, window_s: int,
                  tenant: np.ndarray | None = None, levels: int = 5) -> RatingBursts:
    """Per review of an extreme rating (1 or ``levels`` stars): how improbable the star mix of
    its product's reviews around it is; surprise 0 for the ratings between.

    ``window`` reviews of the product lie within ``window_s`` seconds either side of the review
    (times in whole seconds, edges included), ``same`` of them with the review's own rating.
    The product's ``share`` of that rating among its reviews *outside* that window, shrunk
    toward the tenant's star mix over all its reviews by :data:`PRIOR_REVIEWS` pseudo-reviews
    (a new product with no history of its own expects the tenant's usual mix, not a uniform
    one), is what an honest stretch would show. The review itself is the condition, not the
    evidence: the surprise is ``-log10 P(X >= same - 1)`` for ``X ~ Binomial(window - 1, share)``,
    the *other* reviews of the window. A campaign is many reviews of one extreme rating in a few
    days: a star mix its product never shows otherwise, however popular the product (a launch
    or a sale brings more reviews, not reviews of one rating). Whole-run view: the window looks
    both ways, and every review of a burst gets the burst's surprise.

    ``tenant``: a code per review (default: one tenant); ``product`` codes must not be shared
    between tenants.
    """
    product = np.asarray(product, dtype=np.int64)
    rating = np.asarray(rating, dtype=np.int64)
    n = len(product)
    ten = np.zeros(n, dtype=np.int64) if tenant is None else np.asarray(tenant, dtype=np.int64)
    if not (len(rating) == len(ts) == len(ten) == n):
        raise ValueError("product, ts, rating and tenant must have one row per review")
    if not n:
        z = np.zeros(0)
        return RatingBursts(z, z.astype(np.int64), z.astype(np.int64), z, z.astype(bool))
    if rating.min() < 1 or rating.max() > levels:
        raise ValueError(f"ratings must be 1..{levels}, got {int(rating.min())}..{int(rating.max())}")
    sec = np.floor(np.asarray(ts, dtype=np.float64)).astype(np.int64)
    w = int(window_s)
    span = int(sec.max()) - int(sec.min()) + 2 * w + 2
    _, pkey = np.unique(product, return_inverse=True)
    same_key = pkey * levels + (rating - 1)
    if (int(same_key.max()) + 1) * span >= 2**62:
        raise ValueError(f"reviews span {span} s over {int(pkey.max()) + 1} products: too wide to index")
    offset = sec - int(sec.min()) + w + 1

    def around(key: np.ndarray) -> np.ndarray:
        # one int64 axis on which each key's reviews are a stretch ``span`` from the next key's
        at = key * span + offset
        pos = np.sort(at)
        return (np.searchsorted(pos, at + w, side="right") - np.searchsorted(pos, at - w, side="left"))

    same = around(same_key).astype(np.int64)
    window = around(pkey).astype(np.int64)
    mix_key = ten * levels + (rating - 1)
    mix = np.bincount(mix_key)[mix_key] / np.bincount(ten)[ten]  # the tenant's share of the rating
    share = ((np.bincount(same_key)[same_key] - same + PRIOR_REVIEWS * mix)
             / (np.bincount(pkey)[pkey] - window + PRIOR_REVIEWS))
    others = same - 1
    # P(Binomial(window - 1, share) >= others) = I_share(others, window - others), for others >= 1
    p = betainc(np.maximum(others, 1).astype(np.float64), (window - others).astype(np.float64), share)
    extreme = (rating == 1) | (rating == levels)
    surprise = np.where(extreme & (others >= 1), -np.log10(np.maximum(p, 1e-300)), 0.0) + 0.0
    return RatingBursts(surprise, window, same, share, extreme & (window >= 2))


def ecdf_suspicion(x: np.ndarray, high_is_suspicious: bool, group: np.ndarray | None = None) -> np.ndarray:
    """Each value's empirical CDF among its node type (ties averaged: scipy's ``rankdata``
    ``average``, over the count), flipped when low is suspicious; with ``group`` (one label a
    value: the tenant), among its own group's values only."""
    x = np.asarray(x, dtype=np.float64)
    if group is not None and np.shape(group) != x.shape:
        raise ValueError(f"group has shape {np.shape(group)}, the values {x.shape}")
    if not len(x):
        return x
    # one pass for every group (a run may hold thousands of small tenants): sort by group, then
    # value; a value's rank is the mean position of its ties, counted from its group's start
    n = len(x)
    order = np.lexsort((x,)) if group is None else np.lexsort((x, group))
    v = x[order]
    new_group = np.zeros(n, dtype=bool)
    new_group[0] = True
    if group is not None:
        g = np.asarray(group)[order]
        new_group[1:] = g[1:] != g[:-1]
    new_tie = new_group | np.r_[True, v[1:] != v[:-1]]
    group_first = np.flatnonzero(new_group)
    group_of = np.cumsum(new_group) - 1
    size = (np.r_[group_first[1:], n] - group_first)[group_of]
    tie_first = np.flatnonzero(new_tie)
    tie_of = np.cumsum(new_tie) - 1
    tie_last = np.r_[tie_first[1:], n] - 1
    rank = (tie_first[tie_of] + tie_last[tie_of]) / 2.0 - group_first[group_of] + 1.0
    s = rank / size
    out = np.empty_like(x)
    out[order] = s if high_is_suspicious else 1.0 - s + 1.0 / size
    return out


DISCOVERY_FDR = 0.1
"""The false discovery rate at which a rating burst counts as a discovery (:func:`discovery_evidence`)."""


def discovery_evidence(surprise: np.ndarray, group: np.ndarray, tests: Sequence[np.ndarray],
                       fdr: float = DISCOVERY_FDR) -> np.ndarray:
    """``1 - q`` for each ``-log10 p`` surprise that is a discovery at false discovery rate
    ``fdr`` among its group's tests, 0 otherwise.

    ``q`` is the Benjamini-Hochberg q-value of ``p`` among ``tests[group]`` (the ``-log10 p``
    surprises of every hypothesis the group's run tested, the ones chance explains, ``p = 1``,
    included): ``min(1, min over j >= r of m * p_(j) / j)`` with ``m`` tests, ``p_(j)`` the
    ``j``-th smallest, ``r`` the rank of ``p`` among them and ``p`` itself at rank ``r``. The level
    keeps a weak burst from borrowing significance from a big campaign's many small ``p``: BH
    alone would give a window of ``p = 0.2`` a ``q`` near 0.4 in a tenant whose tests are half a
    campaign's. A group with no tests gives ``q = p``.
    """
    surprise = np.asarray(surprise, dtype=np.float64)
    group = np.asarray(group, dtype=np.int64)
    if len(group) != len(surprise):
        raise ValueError("surprise and group must have one value per node")
    if not 0.0 < fdr <= 1.0:
        raise ValueError(f"fdr must be in (0, 1], got {fdr}")
    if len(group) and (group.min() < 0 or group.max() >= len(tests)):
        raise ValueError(f"groups must be 0..{len(tests) - 1}")
    q = np.ones(len(surprise))
    order = np.argsort(group, kind="stable")  # each group's nodes a slice: one pass, however many groups
    bounds = np.searchsorted(group[order], np.arange(len(tests) + 1))
    for g, t in enumerate(tests):
        sel = order[bounds[g]:bounds[g + 1]]
        if not len(sel):
            continue
        p = np.power(10.0, -surprise[sel])
        pt = np.sort(np.power(10.0, -np.asarray(t, dtype=np.float64)))
        m = len(pt)
        if not m:
            q[sel] = p
            continue
        bh = m * pt / np.arange(1, m + 1)
        later = np.append(np.minimum.accumulate(bh[::-1])[::-1], np.inf)  # later[k]: min over j > k
        rank = np.maximum(np.searchsorted(pt, p, side="right"), 1)
        q[sel] = np.minimum(m * p / rank, later[rank])
    q = np.minimum(q, 1.0)
    return np.where(q <= fdr, 1.0 - q, 0.0)


def combine_priors(features: Sequence[tuple[np.ndarray, bool]], n: int, clip: float,
                   evidence: Sequence[np.ndarray] = (), group: np.ndarray | None = None) -> np.ndarray:
    """SpEagle's prior ``1 - sqrt(mean((1 - s_k)^2))`` over the features' suspiciousness ``s_k``
    (ranks within each ``group``, the tenant, when given), then a noisy-or with each
    ``evidence`` probability ``e_j``: ``1 - (1 - prior) * prod(1 - e_j)``."""
    if features:
        acc = np.zeros(n)
        for x, high in features:
            acc += (1.0 - ecdf_suspicion(x, high, group)) ** 2
        prior = 1.0 - np.sqrt(acc / len(features))
    else:
        prior = np.full(n, 0.5)
    for e in evidence:
        prior = 1.0 - (1.0 - prior) * (1.0 - np.asarray(e, dtype=np.float64))
    return np.clip(prior, clip, 1.0 - clip)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _message(x: np.ndarray, eps: float) -> np.ndarray:
    """The log-odds message through a symmetric compatibility with flip probability ``eps``."""
    le, l1 = math.log(eps), math.log1p(-eps)
    return np.logaddexp(l1 + x, le) - np.logaddexp(le + x, l1)


@dataclass(frozen=True)
class Beliefs:
    review: np.ndarray    # P(fake) per review
    reviewer: np.ndarray  # P(fraud) per reviewer
    product: np.ndarray   # P(targeted) per product
    review_prior: np.ndarray
    reviewer_prior: np.ndarray
    product_prior: np.ndarray


def collective_scores(reviewer: np.ndarray, product: np.ndarray, review_prior: np.ndarray,
                      reviewer_prior: np.ndarray, product_prior: np.ndarray,
                      labels: Mapping[str, Mapping[int, bool]] | None = None,
                      settings: GraphSettings = DEFAULT_GRAPH) -> Beliefs:
    """Loopy belief propagation over the review graph (each review: one reviewer, one product).

    ``labels``: ``{"review"|"reviewer"|"product": {node index: is_fraud}}``; a labelled
    node's prior becomes ``label_prior`` (or ``1 - label_prior``).
    """
    reviewer = np.asarray(reviewer, dtype=np.int64)
    product = np.asarray(product, dtype=np.int64)
    priors = {"review": np.array(review_prior, dtype=np.float64),
              "reviewer": np.array(reviewer_prior, dtype=np.float64),
              "product": np.array(product_prior, dtype=np.float64)}
    for kind, marks in (labels or {}).items():
        if kind not in priors:
            raise ValueError(f"labels are for review, reviewer or product nodes, not {kind!r}")
        for node, fraud in marks.items():
            priors[kind][node] = settings.label_prior if fraud else 1.0 - settings.label_prior
    h_r, h_u, h_p = (_logit(np.clip(priors[k], 1e-6, 1 - 1e-6)) for k in ("review", "reviewer", "product"))
    n_u, n_p = len(h_u), len(h_p)
    m_ru = np.zeros(len(reviewer))
    m_rp = np.zeros(len(reviewer))
    m_ur = np.zeros(len(reviewer))
    m_pr = np.zeros(len(reviewer))
    a = settings.damping
    for _ in range(settings.iterations):
        l_u = h_u + np.bincount(reviewer, weights=m_ru, minlength=n_u)
        l_p = h_p + np.bincount(product, weights=m_rp, minlength=n_p)
        new_ur = _message(l_u[reviewer] - m_ru, settings.eps_reviewer)
        new_pr = _message(l_p[product] - m_rp, settings.eps_product)
        new_ru = _message(h_r + m_pr, settings.eps_reviewer)
        new_rp = _message(h_r + m_ur, settings.eps_product)
        m_ur = a * m_ur + (1 - a) * new_ur
        m_pr = a * m_pr + (1 - a) * new_pr
        m_ru = a * m_ru + (1 - a) * new_ru
        m_rp = a * m_rp + (1 - a) * new_rp
    l_u = h_u + np.bincount(reviewer, weights=m_ru, minlength=n_u)
    l_p = h_p + np.bincount(product, weights=m_rp, minlength=n_p)
    l_r = h_r + m_ur + m_pr

    return Beliefs(expit(l_r), expit(l_u), expit(l_p),
                   priors["review"], priors["reviewer"], priors["product"])
