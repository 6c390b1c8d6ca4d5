"""The review benchmark's pieces: the farm simulator and the per-review join."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from benchmarks.review_farm import FarmParams, simulate
from benchmarks.reviews import joined
from signals.schemas import Review, parse_record

SMALL = FarmParams(organic_reviewers=300, products=80, sellers=20, campaigns=4, ring_size=(3, 6))


def test_farm_is_deterministic_valid_and_labelled() -> None:
    rows, fake = simulate(SMALL)
    again, fake_again = simulate(SMALL)
    assert rows == again and fake == fake_again
    for r in rows[:200]:
        parse_record(Review, r)
    reviewers = {r["reviewer_id"] for r in rows}
    assert fake and fake < reviewers
    # ids say nothing about the kind of account: one numbering for all
    assert all(u.startswith("u") for u in reviewers)
    assert [r["review_id"] for r in rows] == [f"r{i}" for i in range(len(rows))]


def test_farm_parameters_change_what_they_say() -> None:
    rows, _ = simulate(replace(SMALL, camouflage=False))
    with_camo, _ = simulate(SMALL)
    assert len(with_camo) > len(rows)
    text_rows, _ = simulate(replace(SMALL, text=True))
    assert all(r["text"] for r in text_rows) and not any(r["text"] for r in rows)


def test_join_takes_each_entitys_signals_and_drops_constant_ones() -> None:
    records = [{"review_id": "r0", "reviewer_id": "u1", "product_id": "p1", "seller_id": "s1"},
               {"review_id": "r1", "reviewer_id": "u2", "product_id": "p1", "seller_id": "s1"}]
    signals = {("review", "review.extremity"): {"r0": 1.0, "r1": 0.0},
               ("reviewer", "reviewer.review_count"): {"u1": 3.0, "u2": 1.0},
               ("product", "product.review_count"): {"p1": 2.0}}
    names, x = joined(records, signals)
    assert names == ["review:review.extremity", "reviewer:reviewer.review_count"]
    np.testing.assert_array_equal(x, [[1.0, 3.0], [0.0, 1.0]])
