"""The pair scorer: fitting, JSON round trip, validation, the shipped artifact.

Synthetic pairs only: no test reads any split of the public listing-pair data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexes.pair_features import PairRecord, ParsedRecords, feature_matrix
from indexes.pair_scorer import DEFAULT_MODEL_PATH, PairScorer, best_f1_threshold
from signals.errors import InvalidInput


# ------------------------------------------------------------------------ fitting
def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Same product: same model code, high cosine; different: another code, cosine overlaps."""
    rng = np.random.default_rng(seed)
    pairs, cos, y = [], [], []
    for i in range(n):
        model = f"x{rng.integers(100, 999)}{chr(97 + i % 26)}"
        brand = ["acme", "zenith", "orbit"][i % 3]
        a = PairRecord(f"{brand} blender {model} 600w", price=float(rng.integers(20, 200)))
        if i % 2:
            b = PairRecord(f"{brand} {model.upper()} kitchen blender 600 w", price=a.price)
            c, label = rng.uniform(0.7, 0.95), 1
        else:
            other = f"x{rng.integers(100, 999)}{chr(98 + i % 24)}"
            b = PairRecord(f"{brand} blender {other} 900w", price=(a.price or 1) * 2.5)
            c, label = rng.uniform(0.7, 0.95), 0
        pairs.append((a, b))
        cos.append(c)
        y.append(label)
    return feature_matrix(pairs, cos), np.array(y)


def test_fit_recovers_the_separation_and_round_trips() -> None:
    x_train, y_train = _synthetic(240, seed=1)
    x_valid, y_valid = _synthetic(120, seed=2)
    x_test, y_test = _synthetic(120, seed=3)
    scorer = PairScorer.fit(x_train, y_train, x_valid, y_valid, description="synthetic")
    scores = scorer.score_features(x_test)
    pred = scores >= scorer.threshold
    assert (pred == (y_test == 1)).mean() >= 0.95
    # Cosine alone cannot separate these pairs (same range for both classes).
    assert best_f1_threshold(x_test[:, 0], y_test).f1 < 0.8

    doc = json.loads(json.dumps(scorer.to_json()))
    again = PairScorer.from_json(doc)
    np.testing.assert_array_equal(again.score_features(x_test), scores)
    assert again.threshold == scorer.threshold
    assert again.meta["description"] == "synthetic"


def test_save_load_and_target_precision(tmp_path) -> None:
    x, y = _synthetic(200, seed=4)
    scorer = PairScorer.fit(x, y, x, y, target_precision=0.99)
    assert scorer.meta["threshold_rule"]["rule"] == "target_precision"
    path = tmp_path / "m" / "scorer.json"
    scorer.save(path)
    assert not path.with_name("scorer.json.tmp").exists()
    np.testing.assert_array_equal(PairScorer.load(path).score_features(x), scorer.score_features(x))


@pytest.mark.parametrize(("field", "value"), [
    ("weights", "nope"), ("weights", [1.0, 2.0]), ("threshold", 1.5), ("threshold", None),
    ("format", "marketguard.pair_scorer/0"), ("feature_names", ["cosine"]), ("scale", None),
])
def test_refuses_malformed_artifact_naming_the_field(field: str, value: object) -> None:
    x, y = _synthetic(80, seed=5)
    doc = PairScorer.fit(x, y, x, y).to_json()
    doc[field] = value
    with pytest.raises(InvalidInput) as err:
        PairScorer.from_json(doc)
    assert err.value.field == field


def test_unreadable_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInput, match="cannot read pair scorer"):
        PairScorer.load(bad)


# ---------------------------------------------------------------- shipped artifact
def test_shipped_artifact_decides_a_known_pair_each_way() -> None:
    scorer = PairScorer.load(DEFAULT_MODEL_PATH)
    assert 0.0 < scorer.threshold < 1.0
    assert "test splits never read" in scorer.meta["description"]
    anchor = PairRecord("Samsung UN46D6000 46 inch 1080p LED HDTV", price=1299.0)
    same = PairRecord("samsung 46in un46d6000 series 6 led tv", price=1249.99)
    other = PairRecord("Samsung UN55D6000 55 inch 1080p LED HDTV", price=1899.0)
    # Same embedding cosine for both: only what distinguishes products may decide.
    scores = scorer.score([(anchor, same), (anchor, other)], [0.85, 0.85])
    assert scores[0] >= scorer.threshold > scores[1]
    decided = scorer.decide([(anchor, same), (anchor, other)], [0.85, 0.85])
    assert decided.tolist() == [True, False]


def test_scoring_parsed_records_equals_scoring_the_records() -> None:
    scorer = PairScorer.load(DEFAULT_MODEL_PATH)
    recs = [PairRecord("Samsung UN46D6000 46 inch 1080p LED HDTV", price=1299.0),
            PairRecord("samsung 46in un46d6000 series 6 led tv", price=1249.99),
            PairRecord("Samsung UN55D6000 55 inch 1080p LED HDTV", price=1899.0)]
    pairs, cos = [(recs[0], recs[1]), (recs[0], recs[2]), (recs[2], recs[1])], [0.85, 0.8, 0.7]
    np.testing.assert_array_equal(
        scorer.score_parsed(ParsedRecords.parse(recs), np.array([0, 0, 2]), np.array([1, 2, 1]), cos),
        scorer.score(pairs, cos))
