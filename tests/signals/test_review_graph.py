"""Rings and collective scores on small constructed graphs (signals/review_graph.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from signals.review_analysis import ReviewRow, analyse_reviews
from signals.review_graph import (
    GraphSettings,
    collective_scores,
    combine_priors,
    ecdf_suspicion,
    ring_scores,
)
from signals.schemas import Label

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def ring_graph() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Reviewers 0-4: a ring reviewing products 0, 1, 2 within a day each; reviewers 5-24:
    organic, each reviewing two popular products (10, 11) weeks apart; 25: reviews the
    ring's products months later."""
    rows: list[tuple[int, int, int]] = []
    for p, day in ((0, 100), (1, 130), (2, 160)):
        rows += [(u, p, day + (u % 2)) for u in range(5)]
    for u in range(5, 25):
        rows += [(u, 10, 7 * u), (u, 11, 7 * u + 30 + u)]
    rows += [(25, 0, 300), (25, 1, 330), (25, 2, 360)]
    r, p, d = (np.array(x) for x in zip(*rows, strict=True))
    return r, p, d, 26


def test_a_ring_scores_and_organic_accounts_do_not() -> None:
    r, p, d, n = ring_graph()
    rings = ring_scores(r, p, d, n)
    assert (rings.score[:5] > 0.5).all()
    assert (rings.partners[:5] == 4).all() and (rings.max_shared[:5] == 3).all()
    assert (rings.score[5:] == 0).all()  # same products, but weeks apart or only one in common
    assert rings.top_partner[0] in {1, 2, 3, 4}
    assert rings.top_partner[25] == -1


def test_ring_scores_do_not_depend_on_reviewer_numbering() -> None:
    r, p, d, n = ring_graph()
    perm = np.random.default_rng(0).permutation(n)
    again = ring_scores(perm[r], p, d, n)
    base = ring_scores(r, p, d, n)
    np.testing.assert_allclose(again.score[perm], base.score)


def test_huge_product_pairs_are_bounded() -> None:
    """1,000 reviews of one product on one day: each pairs with at most ring_max_neighbours."""
    n = 1000
    r = np.arange(n)
    p = np.zeros(n, dtype=np.int64)
    d = np.zeros(n, dtype=np.int64)
    rings = ring_scores(r, p, d, n, GraphSettings(ring_max_neighbours=5))
    assert (rings.score == 0).all()  # one product in common is not a ring
    # two products, the same 1,000 accounts: pairs only with the 5 nearest either side
    rings = ring_scores(np.concatenate([r, r]), np.concatenate([p, p + 1]), np.concatenate([d, d]), n,
                        GraphSettings(ring_max_neighbours=5))
    assert rings.partners.max() <= 10


def test_ecdf_and_priors() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(ecdf_suspicion(x, True), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(ecdf_suspicion(x, False), [1.0, 0.75, 0.5, 0.25])
    prior = combine_priors([(x, True), (x, True)], 4, 0.01)
    assert np.all(np.diff(prior) > 0) and prior[-1] == pytest.approx(0.99)


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
    r, p, d, _ = ring_graph()
    return [ReviewRow("default", f"R{k}", f"U{u}", f"P{q}", f"S{q % 3}", 5 if u < 5 else 3 + (k % 3),
                      day * 86400.0 + k) for k, (u, q, day) in enumerate(zip(r, p, d, strict=True))]


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
