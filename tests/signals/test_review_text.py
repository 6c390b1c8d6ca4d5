"""The review text model: hashed n-grams, the kNN vote and its calibration, the fit, the verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from signals.review_text import (
    HASH_DIM,
    MIN_PER_KIND,
    ReviewTextModel,
    ReviewTextVerdict,
    fit_review_text_model,
    hashed_counts,
    knn_vote,
    loo_votes,
    reliability,
    review_text_verdicts,
    style_features,
)

FAKE_WORDS = ["amazing", "best", "luxury", "perfect", "husband", "definitely", "wonderful", "incredible"]
REAL_WORDS = ["room", "floor", "street", "desk", "parking", "elevator", "checkout", "breakfast"]


def corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts whose vocabulary (and vectors) lean by class, with shared filler: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    base = rng.normal(size=(2, 16))
    vecs = []
    for i in range(n):
        fake = i % 2 == 0
        own = FAKE_WORDS if fake else REAL_WORDS
        other = REAL_WORDS if fake else FAKE_WORDS
        words = [str(w) for w in rng.choice(own, 6)] + [str(w) for w in rng.choice(other, 2)]
        words += ["the", "hotel"]
        rng.shuffle(words)
        texts.append(" ".join(words) + ("!" if fake else "."))
        labels.append(fake)
        v = base[int(fake)] + rng.normal(scale=1.5, size=16)
        vecs.append(v / np.linalg.norm(v))
    return texts, np.asarray(labels), np.asarray(vecs, dtype=np.float32)


def test_hashed_counts_are_stable_and_count_bigrams() -> None:
    m = hashed_counts(["Great room great", ""])
    assert m.shape == (2, HASH_DIM)
    assert m[0].sum() == 3 + 2  # three words, two bigrams
    assert m[1].nnz == 0
    assert (hashed_counts(["Great room great"]) != m[0]).nnz == 0  # crc32: the same in every process


def test_knn_vote_weights_by_similarity() -> None:
    assert knn_vote([], []) == 0.5
    assert knn_vote([0.9, 0.1], [True, False]) == pytest.approx(0.9)
    assert knn_vote([0.9, -0.5], [True, False]) == 1.0  # a negative similarity weighs nothing
    assert knn_vote([0.9, 0.8, 0.7], [False, True, True], k=1) == 0.0


def test_loo_votes_leave_each_item_out() -> None:
    v = np.eye(3, dtype=np.float32)
    v[1] = v[0]  # item 1 is a copy of item 0
    votes = loo_votes(v, np.array([True, False, True]), np.arange(3), k=1)
    assert votes[0] == 0.0 and votes[1] == 1.0  # each sees the other, never itself


def test_style_features_rates() -> None:
    f = style_features(["I love my room!!", ""])
    assert f.shape == (2, 9)
    assert f[0, 1] == pytest.approx(2 / 4)  # first person: I, my
    assert f[0, 2] == pytest.approx(2 / 4)  # two exclamation marks a word
    assert np.all(np.isfinite(f[1]))


def test_no_model_without_both_kinds() -> None:
    texts, labels, vecs = corpus(40)
    assert fit_review_text_model(texts, np.ones(40, bool), vecs, "fp") is None
    few = np.zeros(40, bool)
    few[: MIN_PER_KIND - 1] = True
    assert fit_review_text_model(texts, few, vecs, "fp") is None
    with pytest.raises(ValueError, match="one each"):
        fit_review_text_model(texts[:-1], labels, vecs, "fp")


def test_model_learns_the_banks_and_round_trips() -> None:
    texts, labels, vecs = corpus(200)
    model = fit_review_text_model(texts, labels, vecs, "fp-1")
    assert model is not None and (model.n_fraud, model.n_benign) == (100, 100)
    assert model.platt[0] > 0  # more fraud neighbours, more likely fake
    test_texts, test_labels, test_vecs = corpus(100, seed=1)
    votes = [knn_vote((vecs @ q).tolist(), labels.tolist()) for q in test_vecs]
    p = model.fake_probability(test_texts, votes)
    assert ((p >= 0.5) == test_labels).mean() >= 0.9
    assert 0 <= model.calibration["vote"]["ece"] <= 1
    again = ReviewTextModel.from_parts(model.to_json(), model.arrays())
    np.testing.assert_allclose(again.fake_probability(test_texts, votes), p, rtol=1e-5)
    with pytest.raises(ValueError, match="another fit"):
        ReviewTextModel.from_parts({**model.to_json(), "fingerprint": "other"}, model.arrays())


def test_verdicts_need_a_model_for_scores() -> None:
    texts, labels, vecs = corpus(60)
    model = fit_review_text_model(texts, labels, vecs, "fp")
    near = [("fakes", "fraud", "F1", 0.9), ("real", "benign", "G1", 0.3)]
    bare = review_text_verdicts(["a text"], [near], None)[0]
    assert bare.vote == pytest.approx(0.75) and bare.fake_probability is None and bare.model is None
    scored = review_text_verdicts(["amazing best luxury", "   "], [near, near], model)
    assert scored[0].fake_probability is not None and scored[0].model == "fp"
    assert scored[1].fake_probability is None  # a blank text is never scored
    assert scored[0].neighbours[0][2] == "F1"
    assert ReviewTextVerdict.from_dict(scored[0].to_dict()) == scored[0]


def test_reliability_table_and_ece() -> None:
    r = reliability(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 0, 1, 1]))
    assert r["ece"] == pytest.approx(0.1)
    assert [b["n"] for b in r["table"]] == [2, 2]
