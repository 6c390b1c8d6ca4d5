"""pick_threshold: the loosest threshold meeting a target precision on labelled pairs."""

from __future__ import annotations

import numpy as np
import pytest

from indexes.config import ThresholdsConfig
from indexes.thresholds import pick_threshold
from signals.errors import InvalidInput


def test_similarity_threshold() -> None:
    scores = [0.99, 0.97, 0.95, 0.93, 0.91, 0.90, 0.85, 0.80]
    labels = [1, 1, 1, 0, 1, 1, 0, 0]
    c = pick_threshold(scores, labels, 0.8)
    assert c.achieved and c.threshold == 0.90
    assert c.precision == pytest.approx(5 / 6) and c.recall == 1.0 and c.matched == 6
    strict = pick_threshold(scores, labels, 1.0)
    assert strict.threshold == 0.95 and strict.recall == pytest.approx(3 / 5)


def test_distance_threshold_for_pdq() -> None:
    dists = [0, 4, 10, 20, 30, 31, 40, 60]
    labels = [1, 1, 1, 1, 0, 1, 0, 0]
    c = pick_threshold(dists, labels, 0.8, higher_is_closer=False)
    assert c.threshold == 31 and c.precision == pytest.approx(5 / 6)


def test_ties_are_never_split() -> None:
    c = pick_threshold([0.9, 0.9, 0.8], [1, 0, 1], 0.9)
    assert not c.achieved  # 0.9 takes both tied pairs: precision 0.5
    assert c.threshold == 0.9


def test_matches_brute_force_on_random_pairs() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(0.8 + 0.1 * y, 0.05), 3)
    c = pick_threshold(s, y, 0.9)
    best = None
    for t in np.unique(s):
        m = s >= t
        if y[m].mean() >= 0.9 and (best is None or t < best):
            best = t
    assert c.threshold == best


def test_rejects_bad_input() -> None:
    with pytest.raises(InvalidInput):
        pick_threshold([0.5], [1, 0], 0.9)
    with pytest.raises(InvalidInput):
        pick_threshold([0.5], [2], 0.9)
    with pytest.raises(InvalidInput) as e:
        pick_threshold([0.5], [1], 1.5)
    assert "1.5" in e.value.reason


def test_config_defaults_per_modality() -> None:
    t = ThresholdsConfig()
    assert t.for_modality("image_pdq") == 31
    assert 0 < t.for_modality("listing_text") <= 1
