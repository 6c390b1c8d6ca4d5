"""The review benchmark's pieces: the farm simulator and the per-review join."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

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


def test_seeded_yelp_protocol_keeps_scored_and_training_labels_out_of_the_seeds(monkeypatch) -> None:
    from benchmarks import reviews

    rows, fake = simulate(SMALL)
    y = np.array([r["reviewer_id"] in fake for r in rows], dtype=np.int8)
    index = {r["review_id"]: i for i, r in enumerate(rows)}
    calls: list[dict[int, str]] = []
    real = reviews.analysed_signals

    def spy(records, labels=(), *, reviews=False):  # type: ignore[no-untyped-def]
        assert all(lab.entity_type == "review" for lab in labels)
        calls.append({index[lab.entity_id]: lab.label for lab in labels})
        return real(records, labels, reviews=reviews)

    fitted: list[tuple[np.ndarray, set[int], set[int]]] = []
    real_fit = reviews._fit_predict

    def fit_spy(x, yy, train, test, groups):  # type: ignore[no-untyped-def]
        fitted.append((x, set(np.flatnonzero(train).tolist()), set(np.flatnonzero(test).tolist())))
        return real_fit(x, yy, train, test, groups)

    monkeypatch.setattr(reviews, "analysed_signals", spy)
    monkeypatch.setattr(reviews, "_fit_predict", fit_spy)
    baseline = np.random.default_rng(0).normal(size=(len(rows), 3))
    out = reviews.yelp_seeded(rows, y, baseline)
    # one unseeded analysis, then one a rotation; four models a rotation (signals seeded and not,
    # baseline seeded and not), all on the same training and scored rows
    assert len(calls) == 6 and not calls[0] and len(fitted) == 20
    assert out["scored_reviews"] == len(rows)
    reviewer = [r["reviewer_id"] for r in rows]
    scored: list[int] = []
    for k, seeded in enumerate(calls[1:]):
        assert seeded and all(label == ("fraud" if y[i] else "legit") for i, label in seeded.items())
        arms = fitted[4 * k: 4 * k + 4]
        train, test = arms[0][1], arms[0][2]
        assert all(a[1] == train and a[2] == test for a in arms)
        assert not set(seeded) & train and not set(seeded) & test and not train & test
        assert set(seeded) | train | test == set(range(len(rows)))
        # the baseline's seed features: the reviewer's seeded reviews and their filtered share
        x = arms[2][0]
        for i in range(0, len(rows), 37):
            mine = [j for j in seeded if reviewer[j] == reviewer[i]]
            assert x[i, -1] == len(mine)
            if mine:
                assert x[i, -2] == np.mean([y[j] for j in mine])
        np.testing.assert_array_equal(arms[3][0], baseline)
        scored += sorted(test)
        # whole products: a product's reviews are all seeds, all training or all scored
        for role in (set(seeded), train, test):
            products = {rows[i]["product_id"] for i in role}
            assert all(rows[i]["product_id"] not in products for i in set(range(len(rows))) - role)
    assert sorted(scored) == list(range(len(rows)))
    with pytest.raises(ValueError, match="rotations"):
        reviews.yelp_seeded(rows, y, baseline, rotations=6)


def test_analysed_signals_give_each_reviews_own_signals_on_request() -> None:
    from benchmarks.reviews import analysed_signals

    rows, _ = simulate(SMALL)
    entity_only = analysed_signals(rows)
    with_reviews = analysed_signals(rows, reviews=True)
    assert not any(etype == "review" for etype, _ in entity_only)
    assert len(with_reviews[("review", "review.spam_score")]) == len(rows)
    key = ("reviewer", "reviewer.spam_score")
    assert with_reviews[key] == entity_only[key]


def test_validation_split_holds_out_whole_training_products_only() -> None:
    from benchmarks.reviews import validation_split

    groups = np.repeat(np.arange(50), 4)
    train = groups % 5 != 0
    fit, held = validation_split(train, groups)
    assert not (fit & held).any() and ((fit | held) == train).all()
    held_products = set(groups[held].tolist())
    assert len(held_products) == 4  # a tenth of the 40 training products
    assert not set(groups[fit].tolist()) & held_products
    # index arrays (GroupKFold's) give the same split as a mask
    fit2, held2 = validation_split(np.flatnonzero(train), groups)
    assert (fit2 == fit).all() and (held2 == held).all()
    with pytest.raises(ValueError, match="two training products"):
        validation_split(groups == 3, groups)


def test_fit_predict_stops_on_held_training_products_and_never_sees_scored_rows(monkeypatch) -> None:
    """Each size of the boosted model is fitted on the training rows less a tenth of the training
    products, stopped on that tenth and judged there; the scored rows reach none of it, only the
    chosen model's prediction (column 0 carries each row's index)."""
    import sklearn.ensemble
    import sklearn.metrics

    from benchmarks import reviews

    gb = sklearn.ensemble.HistGradientBoostingClassifier
    fits: list[tuple[set[int], set[int] | None]] = []
    predicted: list[set[int]] = []
    judged: list[int] = []
    real_fit, real_predict, real_loss = gb.fit, gb.predict_proba, sklearn.metrics.log_loss

    def fit(self, x, y, sample_weight=None, **kw):  # type: ignore[no-untyped-def]
        val = kw.get("X_val")
        fits.append((set(x[:, 0].astype(int)), None if val is None else set(val[:, 0].astype(int))))
        return real_fit(self, x, y, sample_weight, **kw)

    def predict_proba(self, x):  # type: ignore[no-untyped-def]
        predicted.append(set(x[:, 0].astype(int)))
        return real_predict(self, x)

    def log_loss(y_true, y_pred, **kw):  # type: ignore[no-untyped-def]
        judged.append(len(y_true))
        return real_loss(y_true, y_pred, **kw)

    monkeypatch.setattr(gb, "fit", fit)
    monkeypatch.setattr(gb, "predict_proba", predict_proba)
    monkeypatch.setattr(sklearn.metrics, "log_loss", log_loss)
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 10)
    y = (rng.random(len(groups)) < 0.3).astype(int)
    x = np.column_stack([np.arange(len(groups)), y + rng.normal(size=len(groups))])
    test = groups % 5 == 0
    train = ~test
    out = reviews._fit_predict(x, y, train, test, groups, default=True).scores
    assert set(out) == {"boosted", "linear", "boosted_default"}
    assert all(len(v) == test.sum() for v in out.values())
    scored = set(np.flatnonzero(test).tolist())
    training = set(np.flatnonzero(train).tolist())
    sized = [(f, v) for f, v in fits if v is not None]
    assert len(sized) == len(reviews.BOOSTED_SIZES) == 2
    for fit_rows, val_rows in sized:
        assert fit_rows == sized[0][0] and val_rows == sized[0][1]
        assert not (fit_rows | val_rows) & scored and not fit_rows & val_rows
        assert fit_rows | val_rows == training
    held = sized[0][1]
    assert held is not None and len({int(groups[i]) for i in held}) == 5  # a tenth of 48 products
    assert [f for f, v in fits if v is None] == [training]  # the defaults' model
    # each size judged on the held rows alone, then the chosen one and the defaults' score
    assert predicted == [held, held, scored, scored] and judged == [len(held), len(held)]


def test_fit_predict_fills_missing_values_without_the_scored_rows() -> None:
    """A scored row's missing value is filled from the training rows: changing the other scored
    rows' values does not move its score."""
    from benchmarks.reviews import _fit_predict

    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(60), 10)
    y = (rng.random(len(groups)) < 0.3).astype(int)
    x = np.column_stack([y + rng.normal(size=len(groups)), rng.normal(size=len(groups))])
    test = groups % 5 == 0
    gap = np.flatnonzero(test)[:20]
    x[gap, 0] = np.nan
    moved = x.copy()
    others = np.flatnonzero(test)[20:]
    moved[others, 0] += 50.0
    a = _fit_predict(x, y, ~test, test, groups).scores
    b = _fit_predict(moved, y, ~test, test, groups).scores
    for kind in ("boosted", "linear"):
        np.testing.assert_array_equal(a[kind][:20], b[kind][:20])


@pytest.mark.parametrize("flip", [False, True])
def test_fit_predict_keeps_the_size_its_held_products_prefer(monkeypatch, flip: bool) -> None:
    """Of two sizes, one that cannot split (a leaf needs more rows than there are) and one that
    can, the held-out products choose the one that learns, whichever comes first."""
    from benchmarks import reviews

    stump = {"max_leaf_nodes": 2, "min_samples_leaf": 10**6}
    grown = {"max_leaf_nodes": 7, "min_samples_leaf": 5}
    monkeypatch.setattr(reviews, "BOOSTED_SIZES", (grown, stump) if flip else (stump, grown))
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(80), 10)
    y = (rng.random(len(groups)) < 0.4).astype(int)
    x = np.column_stack([y + rng.normal(scale=0.5, size=len(groups)), rng.normal(size=len(groups))])
    test = groups % 5 == 0
    fitted = reviews._fit_predict(x, y, ~test, test, groups)
    assert fitted.leaves == 7
    assert roc_auc_score(y[test], fitted.scores["boosted"]) > 0.8


def test_missing_values_are_filled_from_the_training_rows_only() -> None:
    from benchmarks.reviews import fill_missing

    x = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan], [100.0, 7.0], [np.nan, 9.0]])
    train = np.array([True, True, True, False, False])
    filled = fill_missing(x, train)
    # column 0: the training rows' median (2), not all rows' (3); column 1: no training value, 0
    np.testing.assert_array_equal(filled, [[1, 0], [3, 0], [2, 0], [100, 7], [2, 9]])


def test_weighted_auc_is_sklearns_with_weights_and_ties() -> None:
    from benchmarks.reviews import weighted_auc

    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.3).astype(int)
    s = np.round(y * 0.5 + rng.random(500), 1)  # many ties
    w = rng.integers(0, 4, size=500).astype(float)
    order = np.argsort(s, kind="stable")
    ties = np.concatenate([[0], np.cumsum(np.diff(s[order]) != 0)])
    assert weighted_auc(y, order, ties, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w))
    assert weighted_auc(y, order, ties, np.ones(500)) == pytest.approx(roc_auc_score(y, s))
    with pytest.raises(ValueError, match="both classes"):
        weighted_auc(y, order, ties, w * (y == 1))


def test_product_bootstrap_resamples_whole_products_and_pairs_the_scores() -> None:
    from benchmarks.reviews import product_bootstrap

    rng = np.random.default_rng(4)
    # 40 products of 50 reviews, each product all filtered or all not, one noisy score a product:
    # the rows of a product are one draw, so the interval is as wide as 40 draws allow
    groups = np.repeat(np.arange(40), 50)
    y = np.repeat(np.arange(40) % 2, 50)
    s = np.repeat(y[::50] + rng.normal(scale=1.0, size=40), 50)
    other = s + rng.normal(scale=0.01, size=len(s))
    out = product_bootstrap(y, {"signals": s, "baseline": other}, groups, rounds=300)
    lo, hi = out["signals"]
    assert lo <= roc_auc_score(y, s) <= hi
    assert hi - lo > 0.15  # resampling rows as if independent gives about 0.03 here
    # the same resamples for both: a near-identical score's difference stays near 0
    d_lo, d_hi = out["signals_minus_baseline"]
    assert -0.02 < d_lo <= d_hi < 0.02
    assert product_bootstrap(y, {"signals": s}, groups, rounds=300)["signals"] == out["signals"]


def test_yelp_rows_renumber_reviews_reviewers_and_products(tmp_path, monkeypatch) -> None:
    """Fresh ids for everything: the file's numbers follow its order (filtered reviews last)."""
    import gzip

    from benchmarks import reviews

    lines = [f"{900 + k % 7}\t{500 + k % 3}\t{1 + k % 5}.0\t{'-1' if k >= 15 else '1'}\t2014-0{1 + k % 9}-01"
             for k in range(20)]
    path = tmp_path / "metadata.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    monkeypatch.setattr(reviews, "YELP", path)
    records, y, raw = reviews.yelp_rows(None)
    assert [r["review_id"] for r in records] == [f"r{i}" for i in range(20)]
    # the same raw account or product is the same fresh one; first appearances count 0, 1, ...
    for key, col, prefix in (("reviewer_id", 0, "u"), ("product_id", 1, "p")):
        pairs = {(row[col], rec[key]) for row, rec in zip(raw, records, strict=True)}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
        order = list(dict.fromkeys(rec[key] for rec in records))
        assert order == [f"{prefix}{i}" for i in range(len(order))]
    assert all(r["seller_id"] == f"s{int(r['product_id'][1:]) // 5}" for r in records)
    assert list(y) == [1 if row[3] == "-1" else 0 for row in raw] and sum(y) == 5
    assert [row[0] for row in raw] != [f"{900 + k % 7}" for k in range(20)]  # shuffled


def test_fresh_numbers_count_in_order_of_first_appearance() -> None:
    from benchmarks.reviews import fresh_numbers

    assert fresh_numbers(["b", "a", "b", "c", "a"]) == {"b": 0, "a": 1, "c": 2}
