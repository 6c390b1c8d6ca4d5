"""Rings and collective scores on small constructed graphs (signals/review_graph.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from scipy.stats import binom

from signals.review_analysis import ReviewRow, analyse_reviews, burst_tests, neighbourhood_rings
from signals.review_graph import (
    DEFAULT_GRAPH,
    GROUP_INDICATORS,
    GraphSettings,
    RatingBursts,
    collective_scores,
    combine_priors,
    discovery_evidence,
    ecdf_suspicion,
    rating_bursts,
    ring_scores,
)
from signals.schemas import Label

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def ring_graph() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Reviewers 0-4: a ring 5-starring products 0, 1, 2 within a day each; reviewers 5-24:
    organic, each reviewing two popular products (10, 11) weeks apart; 25: 2-stars the ring's
    products months later. Columns: reviewer, product, day, rating."""
    rows: list[tuple[int, int, int, int]] = []
    for p, day in ((0, 100), (1, 130), (2, 160)):
        rows += [(u, p, day + (u % 2), 5) for u in range(5)]
    for u in range(5, 25):
        rows += [(u, 10, 7 * u, 3 + u % 2), (u, 11, 7 * u + 30 + u, 4)]
    rows += [(25, 0, 300, 2), (25, 1, 330, 2), (25, 2, 360, 2)]
    r, p, d, s = (np.array(x) for x in zip(*rows, strict=True))
    return r, p, d, s, 26


def test_a_ring_scores_and_organic_accounts_do_not() -> None:
    r, p, d, s, n = ring_graph()
    rings = ring_scores(r, p, d, s, n)
    assert (rings.score[:5] > 0.5).all()
    assert (rings.partners[:5] == 4).all() and (rings.max_shared[:5] == 3).all()
    assert (rings.group_size[:5] == 5).all() and (rings.group_products[:5] == 3).all()
    assert (rings.score[5:] == 0).all()  # same products, but weeks apart or only one in common
    assert (rings.group_size[5:] == 0).all() and (rings.indicators[5:] == 0).all()
    assert rings.top_partner[0] == 1  # every partner's group is the same: the lowest number
    assert rings.top_partner[25] == -1


def test_ring_scores_do_not_depend_on_reviewer_numbering() -> None:
    r, p, d, s, n = ring_graph()
    perm = np.random.default_rng(0).permutation(n)
    again = ring_scores(perm[r], p, d, s, n)
    base = ring_scores(r, p, d, s, n)
    np.testing.assert_allclose(again.score[perm], base.score)
    np.testing.assert_array_equal(again.group_size[perm], base.group_size)
    np.testing.assert_allclose(again.indicators[perm], base.indicators)


def test_a_group_is_every_account_at_each_of_its_pairs_meetings() -> None:
    """Accounts 0, 1, 2 meet on products 0 (days 10, 10, 12) and 1 (days 50, 51, 51); account 3
    is at the first meeting only, account 4 at both but the second 10 days late, account 5 at
    the second only (day 52): none of them is in the group. Product 0 has two later 2-star
    reviews. GSRank's indicators by hand (window 3 days: the meeting's window is every review
    within 3 days of both the pair's):

    - rating deviation, the group's mean against the rest of the product's reviews, over 4, the
      most: product 0, (5 - 2.75) / 4 (its rest: 2, 5, 2, 2 stars);
    - size ratio, the group's share of the reviews in the window, averaged: (3/5 + 3/4) / 2
      (accounts 3 and 4 are in the first window, 5 in the second);
    - size ``1 / (1 + exp(-(3 - 3)))``; support ``1 - exp(-(2 - 1) / 2)``."""
    rows = [(0, 0, 10, 5), (1, 0, 10, 5), (2, 0, 12, 5), (3, 0, 11, 2), (4, 0, 9, 5),
            (0, 1, 50, 5), (1, 1, 51, 5), (2, 1, 51, 4), (4, 1, 61, 5), (5, 1, 52, 3),
            (6, 0, 100, 2), (7, 0, 200, 2)]
    r, p, d, s = (np.array(x) for x in zip(*rows, strict=True))
    rings = ring_scores(r, p, d, s, 8)
    assert list(rings.group_size[:3]) == [3, 3, 3] and list(rings.group_products[:3]) == [2, 2, 2]
    expected = [(5 - 2.75) / 4, (3 / 5 + 3 / 4) / 2, 0.5, 1 - np.exp(-0.5)]
    for u in range(3):
        np.testing.assert_allclose(rings.indicators[u], expected)
        assert rings.score[u] == pytest.approx(np.mean(expected))  # every review is in the group's products
    assert list(rings.top_partner[:3]) == [1, 0, 0]
    assert (rings.score[3:] == 0).all() and (rings.group_size[3:] == 0).all()
    # a heavy account in the same group: its 2 products are a small part of its 50 reviews
    heavy = rows + [(2, 100 + k, 1000 + 40 * k, 4) for k in range(48)]
    r, p, d, s = (np.array(x) for x in zip(*heavy, strict=True))
    rings = ring_scores(r, p, d, s, 8)
    assert rings.score[2] == pytest.approx(np.mean(expected) * np.sqrt(2 / 50))
    assert rings.score[0] == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError, match="one row per review"):
        ring_scores(r, p, d, s[:-1], 8)


def test_a_meetings_window_is_every_review_within_the_window_of_both_ends() -> None:
    """Accounts 0 and 1 review products 0 and 1 on day 20. On product 0, accounts 2 and 3 are
    at the window's edges (days 17, 23), 4 and 5 a day beyond (16, 24); on product 1 all four
    are there on day 20. The pair's group: 0-3, at both meetings."""
    rows = [(0, 0, 20), (1, 0, 20), (2, 0, 17), (3, 0, 23), (4, 0, 16), (5, 0, 24),
            *[(u, 1, 20) for u in range(6)]]
    r, p, d = (np.array(x) for x in zip(*rows, strict=True))
    rings = ring_scores(r, p, d, np.full(len(r), 4), 6)
    assert rings.group_size[1] == 4  # account 1's best group: its pair with 0 (no bigger one exists)
    assert rings.indicators[1, GROUP_INDICATORS.index("size_ratio")] == pytest.approx((4 / 4 + 4 / 6) / 2)


@pytest.mark.parametrize("seed", range(8))
def test_a_reviewers_ring_from_its_neighbourhood_is_its_full_graph_ring(seed: int) -> None:
    """The service's per-review update: the reviews of the products one reviewer reviewed, its
    own count and those products' totals give it the ring score and evidence of the whole graph,
    ties between equally strong partners included (a ring's pairs all share one group); and so
    do only the products' latest reviews, the older ones outside every meeting's window left
    out (the service's slice), when the products' totals come from their states."""
    rng = np.random.default_rng(seed)
    rows: list[ReviewRow] = []
    for k in range(300):
        u, q = int(rng.integers(0, 40)), int(rng.integers(0, 15))
        rows.append(ReviewRow("t", f"R{k}", f"U{u}", f"P{q}", "S", int(rng.integers(1, 6)),
                              float(rng.integers(0, 30)) * 86400.0 + k))
    for q in range(4):  # a ring of six on four products
        rows += [ReviewRow("t", f"G{q}-{m}", f"X{m}", f"P{q}", "S", 5, (100.0 + 20 * q + m % 2) * 86400.0)
                 for m in range(6)]
    full = analyse_reviews(rows)
    totals: dict[str, tuple[int, float]] = {}
    for row in rows:
        n0, s0 = totals.get(row.product_id, (0, 0.0))
        totals[row.product_id] = (n0 + 1, s0 + row.rating)
    grouped = 0
    for _, uid in full.reviewers.keys:
        mine = {row.product_id for row in rows if row.reviewer_id == uid}
        near = [row for row in rows if row.product_id in mine]
        own = sum(row.reviewer_id == uid for row in rows)
        want = full.ring_signal("t", uid, NOW)
        got = neighbourhood_rings(near, own, "t", uid, DEFAULT_GRAPH, NOW)
        assert (got.value, got.evidence) == (want.value, want.evidence), uid
        # the ring's products, sliced to the reviews from day 95 on: the totals make up for it
        sliced = [row for row in near
                  if not (row.product_id in {"P0", "P1", "P2", "P3"} and row.ts < 95 * 86400)]
        if uid.startswith("X"):
            got = neighbourhood_rings(sliced, own, "t", uid, DEFAULT_GRAPH, NOW, totals)
            assert (got.value, got.evidence) == (want.value, want.evidence), uid
            assert want.evidence["group_indicators"]["rating_deviation"] > 0
        if want.evidence["group_size"]:
            grouped += 1
            # the own count is the service's (its state's), not the slice's: more reviews, less coupled
            diluted = neighbourhood_rings(near, 100 * own, "t", uid, DEFAULT_GRAPH, NOW)
            assert diluted.score < want.score
    assert grouped >= 6  # the ring, and chance meetings among the random reviews


def test_a_stored_review_record_reads_back_as_its_row() -> None:
    """The service's ring update reads stored records without validating them again."""
    from datetime import timedelta, timezone

    from signals.schemas import Review

    reviews = [Review(review_id="R1", product_id="P1", seller_id="S1", reviewer_id="U1", rating=4,
                      created_at=NOW),
               Review(review_id="R2", product_id="P2", seller_id="S2", reviewer_id="U2", rating=1,
                      tenant="acme",
                      created_at=datetime(2026, 5, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5))),
                      reviewer_created_at=datetime(2025, 1, 2, tzinfo=UTC))]
    for r in reviews:
        assert ReviewRow.of_stored(r.model_dump_json()) == ReviewRow.of(r)
    naive = reviews[0].model_dump_json().replace('"2026-06-01T00:00:00Z"', '"2026-06-01T00:00:00"')
    with pytest.raises(ValueError, match="UTC offset"):
        ReviewRow.of_stored(naive)


def test_a_pairs_group_is_from_its_first_meeting_on_each_product() -> None:
    """Accounts 0 and 1 meet on product 0 on days 10 (account 2 there too) and 40, and on
    product 1 on day 70: the first product-0 meeting counts, where they were 2 of 3 reviews."""
    rows = [(0, 0, 10), (1, 0, 10), (2, 0, 11), (0, 0, 40), (1, 0, 40), (0, 1, 70), (1, 1, 70)]
    r, p, d = (np.array(x) for x in zip(*rows, strict=True))
    rings = ring_scores(r, p, d, np.full(len(r), 3), 3)
    assert list(rings.group_size) == [2, 2, 0] and rings.group_products[0] == 2
    assert rings.indicators[0, GROUP_INDICATORS.index("size_ratio")] == pytest.approx((2 / 3 + 2 / 2) / 2)


def test_a_co_review_is_within_the_window_edges_included() -> None:
    r, p, d = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), np.array([10, 13, 50, 53])
    assert list(ring_scores(r, p, d, np.full(4, 5), 2).partners) == [1, 1]
    assert list(ring_scores(r, p, d + np.array([0, 1, 0, 1]), np.full(4, 5), 2).partners) == [0, 0]


def test_ring_scores_refuse_bad_codes_and_ratings() -> None:
    r, p, d = np.array([0, 4, 0, 4]), np.array([0, 0, 1, 1]), np.array([1, 1, 5, 5])
    with pytest.raises(ValueError, match="reviewer codes"):
        ring_scores(r, p, d, np.full(4, 5), 3)
    with pytest.raises(ValueError, match="ratings must be 1..5"):
        ring_scores(r, p, d, np.array([5, 9, 5, 5]), 5)
    with pytest.raises(ValueError, match="product codes"):
        ring_scores(r, -p, d, np.full(4, 5), 5)


def test_huge_product_pairs_are_bounded() -> None:
    """1,000 reviews of one product on one day: each pairs with at most ring_max_neighbours."""
    n = 1000
    r = np.arange(n)
    p = np.zeros(n, dtype=np.int64)
    d = np.zeros(n, dtype=np.int64)
    s = np.full(n, 5)
    rings = ring_scores(r, p, d, s, n, GraphSettings(ring_max_neighbours=5))
    assert (rings.score == 0).all()  # one product in common is not a ring
    # two products, the same 1,000 accounts: pairs only with the 5 nearest either side
    rings = ring_scores(np.concatenate([r, r]), np.concatenate([p, p + 1]), np.concatenate([d, d]),
                        np.concatenate([s, s]), n, GraphSettings(ring_max_neighbours=5))
    assert rings.partners.max() <= 10
    # a group is sought among the 5 reviews either side of its pair's meeting: at most 3 * 5 + 1
    # accounts, however many reviewed the product that day. Account 500's strongest pair is with
    # 495 (or 505): rows 490-505 on both products; account 0's with 5: rows 0-10.
    assert rings.group_size.max() == 16 and rings.group_size[500] == 16 and rings.group_size[0] == 11
    # its share of the window: 16 of the day's 1,000 reviews, on both products
    assert rings.indicators[500, GROUP_INDICATORS.index("size_ratio")] == pytest.approx(16 / 1000)


def test_ecdf_and_priors() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(ecdf_suspicion(x, True), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(ecdf_suspicion(x, False), [1.0, 0.75, 0.5, 0.25])
    prior = combine_priors([(x, True), (x, True)], 4, 0.01)
    assert np.all(np.diff(prior) > 0) and prior[-1] == pytest.approx(0.99)
    # per group: each tenant's values ranked among its own, in any row order
    group = np.array(["b", "a", "b", "a"])
    np.testing.assert_allclose(ecdf_suspicion(x, True, group), [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(ecdf_suspicion(x, False, group), [1.0, 1.0, 0.5, 0.5])
    assert len(ecdf_suspicion(np.array([]), True, np.array([]))) == 0
    with pytest.raises(ValueError, match="shape"):
        ecdf_suspicion(x, True, group[:3])


def test_grouped_ecdf_is_each_groups_own_and_one_group_is_the_plain_ecdf() -> None:
    """Against scipy's average ranks: within each group, and one group (or none) the plain ECDF,
    bit for bit what the single-tenant runs got before tenants were told apart."""
    from scipy.stats import rankdata

    def plain(x: np.ndarray, high: bool) -> np.ndarray:
        s = rankdata(x, method="average") / len(x)
        return s if high else 1.0 - s + 1.0 / len(x)

    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 300))
        x = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # ties
        group = rng.integers(0, int(rng.integers(1, 6)), size=n).astype(str)
        for high in (True, False):
            expected = np.empty(n)
            for g in np.unique(group):
                expected[group == g] = plain(x[group == g], high)
            np.testing.assert_array_equal(ecdf_suspicion(x, high, group), expected)
            np.testing.assert_array_equal(ecdf_suspicion(x, high, np.zeros(n)), plain(x, high))
            np.testing.assert_array_equal(ecdf_suspicion(x, high), plain(x, high))


def test_belief_propagation_spreads_suspicion_along_edges() -> None:
    # reviewer 0 writes reviews 0-3 (three very suspicious), reviewer 1 writes review 4;
    # every review is of product 0 or 1
    reviewer = np.array([0, 0, 0, 0, 1])
    product = np.array([0, 0, 1, 1, 1])
    review_prior = np.array([0.9, 0.9, 0.9, 0.5, 0.5])
    b = collective_scores(reviewer, product, review_prior, np.full(2, 0.5), np.full(2, 0.5))
    assert b.reviewer[0] > 0.8 > 0.5 >= b.reviewer[1] - 1e-9 or b.reviewer[0] > b.reviewer[1]
    assert b.review[3] > b.review[4]  # same prior, but written by the suspicious account
    assert np.all((b.review > 0) & (b.review < 1))


def test_labels_seed_the_propagation() -> None:
    reviewer = np.array([0, 0, 1])
    product = np.array([0, 1, 1])
    flat = np.full(3, 0.5)
    plain = collective_scores(reviewer, product, flat, np.full(2, 0.5), np.full(2, 0.5))
    seeded = collective_scores(reviewer, product, flat, np.full(2, 0.5), np.full(2, 0.5),
                               labels={"reviewer": {0: True}})
    assert seeded.review[0] > plain.review[0] + 0.3
    assert seeded.reviewer_prior[0] == pytest.approx(0.99)
    with pytest.raises(ValueError):
        collective_scores(reviewer, product, flat, np.full(2, 0.5), np.full(2, 0.5),
                          labels={"seller": {0: True}})


def _rows() -> list[ReviewRow]:
    r, p, d, s, _ = ring_graph()
    return [ReviewRow("default", f"R{k}", f"U{u}", f"P{q}", f"S{q % 3}", int(stars), day * 86400.0 + k)
            for k, (u, q, day, stars) in enumerate(zip(r, p, d, s, strict=True))]


def test_analysis_signals_rings_and_labels() -> None:
    a = analyse_reviews(_rows())
    sig = {(s.entity_id, s.name): s for s in a.entity_signals(NOW)}
    assert sig[("U0", "reviewer.ring_score")].value > 0.5
    assert sig[("U0", "reviewer.ring_score")].evidence["partners"] == 4
    assert sig[("U7", "reviewer.ring_score")].value == 0
    assert sig[("U0", "reviewer.spam_score")].value > sig[("U7", "reviewer.spam_score")].value
    assert ("P0", "product.spam_score") in sig and ("S0", "seller.review_spam_share") in sig
    review = {s.name: s for s in a.review_signals(0, NOW)}
    assert "review.spam_score" in review and 0 <= review["review.spam_score"].score <= 1
    # a legit label on the ring leader pulls its score down (SpEagle+)
    b = analyse_reviews(_rows(), [Label(entity_type="reviewer", entity_id="U0", label="legit")])
    sig_b = {(s.entity_id, s.name): s for s in b.entity_signals(NOW)}
    assert sig_b[("U0", "reviewer.spam_score")].value < sig[("U0", "reviewer.spam_score")].value


def test_rating_bursts_hand_computed() -> None:
    """Product 0: ten reviews months apart (two of 5 stars, eight of 3), then five 5-star
    reviews within a day; product 1: a lone 5-star review. The tenant: 8 of 16 reviews 5 stars."""
    day = 86400.0
    product = [0] * 15 + [1]
    ts = [k * 30 * day for k in range(10)] + [400 * day + k * 3600 for k in range(5)] + [0.0]
    rating = [5, 5] + [3] * 8 + [5] * 5 + [5]
    b = rating_bursts(np.array(product), np.array(ts), np.array(rating), 3 * 86400)
    # the burst: 5 of 5 reviews in the window have 5 stars; outside it 2 of 10 do, shrunk by 5
    # pseudo-reviews toward the tenant's 5-star share 0.5: (2 + 2.5) / (10 + 5); each review
    # is tested on the 4 others
    assert (b.window[10:15] == 5).all() and (b.same[10:15] == 5).all()
    np.testing.assert_allclose(b.share[10:15], 0.3)
    np.testing.assert_allclose(b.surprise[10:15], -np.log10(0.3 ** 4))
    assert (b.surprise[2:10] == 0).all()  # 3 stars: not an extreme rating
    assert b.surprise[0] == 0 and b.window[0] == 1  # alone in its window
    assert b.surprise[15] == 0  # a lone review of another product
    # tests: the extreme ratings with another review in their window, agreeing or not
    assert b.tested.tolist() == [False] * 10 + [True] * 5 + [False]


def test_rating_burst_with_other_ratings_in_the_window_is_the_binomial_tail() -> None:
    """Product 0 over a year: 20 reviews, 4 of them 5 stars; then, within a day, 4 of 5 stars
    and 2 of 4 stars. Each 5-star review of the day: 3 more 5-star among the 5 others."""
    day = 86400.0
    ts = [k * 15 * day for k in range(20)] + [500 * day + k * 600 for k in range(6)]
    rating = [5 if k % 5 == 0 else 3 for k in range(20)] + [5, 4, 5, 5, 4, 5]
    b = rating_bursts(np.zeros(26, dtype=np.int64), np.array(ts), np.array(rating), 3 * 86400)
    mix = 8 / 26  # the tenant's 5-star share
    share = (4 + 5 * mix) / (20 + 5)
    five = [20, 22, 23, 25]
    np.testing.assert_allclose(b.share[five], share)
    np.testing.assert_allclose(b.surprise[five], -np.log10(binom.sf(2, 5, share)))
    assert (b.surprise[[21, 24]] == 0).all()  # 4 stars


def test_a_new_products_burst_expects_the_tenants_own_mix() -> None:
    """A new product's first week: three 5-star reviews and nothing else of its own; the tenant
    gives 5 stars to 60 % of its reviews, so three in a row are no surprise."""
    day = 86400.0
    old = [(1, k * day, 5 if k % 5 < 3 else 4) for k in range(100)]  # another product, 60 % 5 stars
    new = [(0, 200 * day + k * 3600, 5) for k in range(3)]
    p, t, r = (np.array(x) for x in zip(*(old + new), strict=True))
    b = rating_bursts(p, t, r, 3 * 86400)
    mix = 63 / 103
    np.testing.assert_allclose(b.share[100:], mix)  # no history of its own: the tenant's mix
    np.testing.assert_allclose(b.surprise[100:], -np.log10(mix ** 2))
    assert b.surprise[100:].max() < 0.5


def test_rating_bursts_refuse_ratings_off_the_scale() -> None:
    for bad in (0, 6):
        with pytest.raises(ValueError, match="ratings must be 1..5"):
            rating_bursts(np.zeros(2, dtype=np.int64), np.zeros(2), np.array([5, bad]), 86400)
    with pytest.raises(ValueError, match="one row per review"):
        rating_bursts(np.zeros(2, dtype=np.int64), np.zeros(3), np.array([5, 5]), 86400)


def test_burst_tests_count_each_burst_once_at_its_slots_largest_surprise() -> None:
    """Two bursts of one product months apart, each of several reviews, are two tests, each
    with the largest surprise of its slot; a window where no other review agreed is a test
    with p = 1; the other tenant's burst is its own tenant's test; untested reviews are none."""
    day = 86400.0
    tenant = np.array([0] * 9 + [1] * 2)
    product = np.array([0] * 9 + [1] * 2)
    rating = np.array([5] * 11)
    ts = np.array([0, 3600, 7200, 100 * day, 100 * day + 60, 100 * day + 120, 200 * day, 302 * day,
                   302 * day + 60, 0, 60.0])
    surprise = np.array([2.0, 2.5, 2.0, 1.5, 1.0, 1.5, 0.0, 0.0, 0.0, 0.7, 0.7])
    tested = np.array([True] * 6 + [False] + [True] * 4)  # review 6: alone in its window
    bursts = RatingBursts(surprise, np.full(11, 3), np.full(11, 3), np.full(11, 0.5), tested)
    tests = burst_tests(tenant, product, rating, ts, bursts, 3 * 86400, 3)
    assert [sorted(t.tolist()) for t in tests] == [[0.0, 1.5, 2.5], [0.7], []]


def _bh_q(p: np.ndarray) -> np.ndarray:
    """The textbook BH q-values of a family of p-values, written out."""
    m = len(p)
    order = np.argsort(p)
    q = np.empty(m)
    for i, k in enumerate(order):
        q[k] = min(1.0, min(m * p[order[j]] / (j + 1) for j in range(i, m)))
    return q


def test_discovery_evidence_is_one_minus_the_bh_q_value_of_the_discoveries() -> None:
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(size=40), 10.0 ** -rng.uniform(2, 6, size=10), [1.0, 1.0]])
    s = -np.log10(p)
    q = _bh_q(p)
    for fdr in (0.05, 0.1, 1.0):
        e = discovery_evidence(s, np.zeros(len(s), dtype=np.int64), [s], fdr)
        np.testing.assert_allclose(e, np.where(q <= fdr, 1 - q, 0.0), atol=1e-12)
    # a value that is not itself among the tests takes its rank among them, at its own p
    for k in range(len(s)):
        x = s[k] + 0.01
        px = 10 ** -x
        ps = np.sort(p)
        r = max(1, int((ps <= px).sum()))
        brute = min([1.0, len(ps) * px / r] + [len(ps) * ps[j - 1] / j for j in range(r + 1, len(ps) + 1)])
        e = discovery_evidence(np.array([x]), np.zeros(1, dtype=np.int64), [s], 1.0)
        assert e[0] == pytest.approx(1 - brute, abs=1e-12)
    # groups are separate families; a group without tests keeps its p
    e = discovery_evidence(np.array([3.0, 3.0]), np.array([0, 1]), [np.full(1000, 3.0) * 0, np.array([])])
    assert e[0] == 0.0  # 1,000 tests at p = 1 make p = 0.001 at rank 1 q = 1
    assert e[1] == pytest.approx(1 - 1e-3)


def test_a_weak_window_borrows_no_significance_from_a_campaign() -> None:
    """A tenant whose tests are half a campaign's (p = 1e-8) and half chance's (p = 1): BH alone
    would call a window of p = 0.2 a discovery at q = 0.4; at the level it gets nothing."""
    tests = np.concatenate([np.full(50, 8.0), np.zeros(49), [-np.log10(0.2)]])
    weak = np.array([-np.log10(0.2)])
    g = np.zeros(1, dtype=np.int64)
    assert discovery_evidence(weak, g, [tests], 1.0)[0] == pytest.approx(1 - 0.2 * 100 / 51)
    assert discovery_evidence(weak, g, [tests])[0] == 0.0
    assert discovery_evidence(np.array([8.0]), g, [tests])[0] == pytest.approx(1 - 2e-8)


def test_discovery_evidence_refuses_bad_groups_and_levels() -> None:
    with pytest.raises(ValueError, match="groups must be"):
        discovery_evidence(np.array([1.0]), np.array([-1]), [np.array([1.0])])
    with pytest.raises(ValueError, match="groups must be"):
        discovery_evidence(np.array([1.0]), np.array([1]), [np.array([1.0])])
    with pytest.raises(ValueError, match="fdr"):
        discovery_evidence(np.array([1.0]), np.array([0]), [np.array([1.0])], 0.0)
    with pytest.raises(ValueError, match="one value per node"):
        discovery_evidence(np.array([1.0, 2.0]), np.array([0]), [np.array([1.0])])


def test_a_busy_window_of_the_usual_star_mix_is_no_rating_burst() -> None:
    """A launch: 40 reviews in two days, 5 and 4 stars alternating as the product's later reviews
    do; the window has many reviews but the mix of every quiet month since."""
    day = 86400.0
    ts = [k * 0.05 * day for k in range(40)] + [(10 + 10 * k) * day for k in range(40)]
    rating = [5 if k % 2 else 4 for k in range(80)]
    b = rating_bursts(np.zeros(80, dtype=np.int64), np.array(ts), np.array(rating), 3 * 86400)
    assert b.window[:40].min() == 40
    assert b.surprise.max() < 1.0


def test_burst_evidence_in_the_priors() -> None:
    s = np.array([0.0, 2.0, 3.0, 5.0])
    e = discovery_evidence(s, np.zeros(4, dtype=np.int64), [np.concatenate([s, np.zeros(996)])])
    # among 1,000 tests: 1e-5 at rank 1 is q = 0.01; 1e-3 at rank 2 is q = 0.5
    np.testing.assert_allclose(e, [0.0, 0.0, 0.0, 0.99])
    x = np.array([1.0, 2.0, 3.0, 4.0])
    plain = combine_priors([(x, True)], 4, 0.01)
    raised = combine_priors([(x, True)], 4, 0.01, [e])
    np.testing.assert_allclose(raised[:3], plain[:3])
    assert raised[3] == pytest.approx(0.99)  # noisy-or, clipped
    assert combine_priors([(x, False)], 4, 0.01, [np.array([0, 0, 0, 1.0])])[3] == pytest.approx(0.99)


def test_a_single_target_campaign_with_camouflage() -> None:
    """Twelve accounts 5-star one quiet product within a day; each also writes honest-looking
    reviews of busy products. They share no second product (no ring), yet their
    reviewer.rating_burst is the campaign's, and their spam score is above every organic one."""
    rng = np.random.default_rng(3)
    day = 86400.0
    rows: list[ReviewRow] = []
    for k in range(600):  # organic: 60 accounts, 20 products, ratings 2-5 over a year
        u, q = int(rng.integers(60)), int(rng.integers(20))
        rows.append(ReviewRow("default", f"O{k}", f"U{u}", f"P{q}", "S1", int(rng.integers(2, 6)),
                              float(rng.uniform(0, 365)) * day))
    for m in range(12):
        rows.append(ReviewRow("default", f"F{m}", f"X{m}", "P99", "S9", 5, 200 * day + m * 3600.0))
        for c in range(3):  # camouflage, never within days of another campaign account's
            rows.append(ReviewRow("default", f"C{m}_{c}", f"X{m}", f"P{(m + c) % 20}", "S1", 4,
                                  (100 + 20 * m + 5 * c) * day))
    for k in range(4):  # the product's honest reviews, months away
        rows.append(ReviewRow("default", f"H{k}", f"U{k}", "P99", "S9", 3 + k % 2, (20 + 40 * k) * day))
    a = analyse_reviews(rows)
    sig = {(s.entity_id, s.name): s for s in a.entity_signals(NOW)}
    campaign = [sig[(f"X{m}", "reviewer.rating_burst")] for m in range(12)]
    organic = [sig[(f"U{u}", "reviewer.rating_burst")].value for u in range(60)
               if (f"U{u}", "reviewer.rating_burst") in sig]
    assert min(s.value for s in campaign) > 5 > max(organic)
    assert campaign[0].evidence["product_id"] == "P99" and campaign[0].evidence["same_rating"] == 12
    assert sig[("P99", "product.rating_burst")].value == campaign[0].value
    # no two campaign accounts share a second product: no ring between them
    organic_ids = {None, *(f"U{u}" for u in range(60))}
    assert all(sig[(f"X{m}", "reviewer.ring_score")].evidence["top_partner"] in organic_ids
               for m in range(12))
    spam = [sig[(f"X{m}", "reviewer.spam_score")].value for m in range(12)]
    honest = [sig[(f"U{u}", "reviewer.spam_score")].value for u in range(60)
              if (f"U{u}", "reviewer.spam_score") in sig]
    assert min(spam) > max(honest)
    rows_f0 = next(i for i, r in enumerate(rows) if r.review_id == "F0")
    review = {s.name: s for s in a.review_signals(rows_f0, NOW)}
    assert review["review.rating_burst"].value == campaign[0].value
    assert review["review.rating_burst"].evidence["window_reviews"] == 12


def _campaign_rows(tenant: str, seed: int) -> list[ReviewRow]:
    rng = np.random.default_rng(seed)
    day = 86400.0
    rows = [ReviewRow(tenant, f"O{k}", f"U{int(rng.integers(30))}", f"P{int(rng.integers(8))}", "S1",
                      int(rng.integers(1, 6)), float(rng.uniform(0, 200)) * day) for k in range(300)]
    rows += [ReviewRow(tenant, f"F{m}", f"X{m}", "P99", "S1", 5, 120 * day + m * 600.0) for m in range(8)]
    return rows


def test_rating_bursts_of_a_tenant_do_not_depend_on_other_tenants_or_on_order() -> None:
    """Tenants "a" and "b" share product ids; a's rating bursts (values and evidence) are the
    same analysed alone, beside b, and with the rows shuffled."""
    a_rows, b_rows = _campaign_rows("a", 1), _campaign_rows("b", 2)
    names = ("reviewer.rating_burst", "product.rating_burst")

    def bursts(rows: list[ReviewRow]) -> dict[tuple[str, str, str], tuple[object, object]]:
        got = {(s.tenant, s.entity_id, s.name): (s.value, s.evidence)
               for s in analyse_reviews(rows).entity_signals(NOW) if s.name in names}
        return {k: v for k, v in got.items() if k[0] == "a"}

    alone = bursts(a_rows)
    assert alone[("a", "P99", "product.rating_burst")][0] > 3  # the campaign
    both = a_rows + b_rows
    shuffled = [both[i] for i in np.random.default_rng(0).permutation(len(both))]
    assert bursts(both) == alone
    assert bursts(shuffled) == alone


def test_every_signal_of_a_tenant_is_the_same_alone_and_beside_another() -> None:
    """The batch job analyses every tenant of a run together and the service one tenant at a time
    (its periodic recomputation): neither a review's signals nor an entity's may depend on another
    tenant's reviews, the collective scores' priors (ranks among the tenant's own) included."""
    a_rows, b_rows = _campaign_rows("a", 1), _campaign_rows("b", 2)
    # b: another population (more, harsher reviews) that would move a's ranks if they were shared
    b_rows += [ReviewRow("b", f"B{k}", f"V{k % 50}", f"P{k % 5}", "S2", 1, float(k) * 3600.0)
               for k in range(400)]

    def signals(rows: list[ReviewRow]) -> dict[tuple[str, str, str], object]:
        a = analyse_reviews(rows)
        found = list(a.entity_signals(NOW))
        found += [s for i in range(len(rows)) for s in a.review_signals(i, NOW)]
        return {(s.entity_type, s.entity_id, s.name): (s.value, s.evidence)
                for s in found if s.tenant == "a"}

    alone = signals(a_rows)
    assert ("review", "F0", "review.spam_score") in alone
    assert ("reviewer", "X0", "reviewer.spam_score") in alone
    assert signals(b_rows + a_rows) == alone
