"""The report's arithmetic on hand-computed cases: ties, no positives, all positives, absent values,
money and honest parties, the operating threshold, Wilson intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.report.metrics import at_threshold, best_f1, curve, reliability_note, wilson

nan = math.nan


def close(a: object, b: list[float]) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True)


def test_ties_flag_together_and_absent_values_never_flag() -> None:
    # values 3, 2, 2, 1 and one entity without the signal; labels F F L L F
    c = curve([3, 2, 2, 1, nan], [True, True, False, False, True])
    assert (c.positives, c.negatives, c.present, c.labelled) == (3, 2, 4, 5)
    close(c.thresholds, [3, 2, 1])  # descending; the tie at 2 is one threshold
    close(c.flagged, [1, 3, 4])
    close(c.tp, [1, 2, 2])
    close(c.fp, [0, 1, 2])
    close(c.precision, [1, 2 / 3, 1 / 2])
    close(c.recall, [1 / 3, 2 / 3, 2 / 3])  # the absent fraud is never caught
    close(c.fpr, [0, 1 / 2, 1])
    close(c.coverage, [1 / 5, 3 / 5, 4 / 5])
    close(c.lift, [1 / 0.6, (2 / 3) / 0.6, 0.5 / 0.6])
    assert c.at_target_precision(0.6) == 1  # the lowest threshold still at >= 0.6: t = 2
    assert c.at_target_precision(1.0) == 0
    assert c.at_target_precision(0.4) == 2
    assert c.at_coverage(0.6) == 1 and c.at_coverage(0.5) == 0 and c.at_coverage(0.1) is None


def test_no_positives_leaves_recall_and_lift_undefined() -> None:
    c = curve([1, 0], [False, False])
    close(c.precision, [0, 0])
    close(c.recall, [nan, nan])
    close(c.lift, [nan, nan])
    close(c.fpr, [1 / 2, 1])
    assert c.at_target_precision(0.5) is None
    assert best_f1(c) is None


def test_all_positives_leaves_the_false_positive_rate_undefined() -> None:
    c = curve([1, 0, 1], [True, True, True])
    close(c.thresholds, [1, 0])
    close(c.precision, [1, 1])
    close(c.recall, [2 / 3, 1])
    close(c.fpr, [nan, nan])
    close(c.lift, [1, 1])
    assert c.at_target_precision(0.9) == 1


def test_a_signal_on_no_labelled_entity() -> None:
    c = curve([nan, nan], [True, False])
    assert len(c.thresholds) == 0 and c.present == 0
    assert c.at_target_precision(0.5) is None and best_f1(c) is None


def test_booleans_are_one_threshold_at_true() -> None:
    c = curve([1.0, 0.0, 1.0, 0.0], [True, False, False, True])
    close(c.thresholds, [1, 0])
    close(c.precision, [1 / 2, 1 / 2])
    close(c.recall, [1 / 2, 1])


def test_money_per_currency_and_distinct_honest_parties() -> None:
    c = curve([3, 2, 2, 1, nan], [True, True, False, False, True],
              amounts=[100, 50, 30, 20, 10], currencies=["GBP", "GBP", "GBP", "EUR", "GBP"],
              parties=["s1", "s2", "s3", "s3", "s4"])
    assert c.money_fraud_total == {"GBP": 160.0, "EUR": 0.0}
    assert c.money_legit_total == {"GBP": 30.0, "EUR": 20.0}
    close(c.money_caught["GBP"], [100, 150, 150])
    close(c.money_held["GBP"], [0, 30, 30])
    close(c.money_held["EUR"], [0, 0, 20])
    # one honest seller (s3) behind both false positives: counted once, from t = 2
    assert c.parties_total == 1
    close(c.parties_affected, [0, 1, 1])
    close(c.parties_share, [0, 1, 1])


def test_unknown_amounts_are_left_out() -> None:
    c = curve([1, 1], [True, False], amounts=[nan, 5], currencies=[None, "GBP"])
    assert c.money_fraud_total == {"GBP": 0.0} and c.money_legit_total == {"GBP": 5.0}
    close(c.money_held["GBP"], [5])


def test_at_threshold_and_best_f1() -> None:
    p = at_threshold([3, 2, 2, 1, nan], [True, True, False, False, True], 2)
    assert (p.flagged, p.tp, p.fp, p.positives, p.negatives) == (3, 2, 1, 3, 2)
    assert p.precision == pytest.approx(2 / 3) and p.recall == pytest.approx(2 / 3)
    assert math.isnan(at_threshold([0], [False], 1).precision)
    # F1 per row: 2*1/(1+3)=0.5, 2*2/(3+3)=0.667, 2*2/(4+3)=0.571 -> row 1
    assert best_f1(curve([3, 2, 2, 1, nan], [True, True, False, False, True])) == 1


def test_rows_keep_both_ends() -> None:
    c = curve(np.arange(100.0), np.arange(100) % 2 == 0)
    rows = c.rows(10)
    assert rows[0] == 0 and rows[-1] == 99 and len(rows) == 10
    assert curve([1, 2], [True, False]).rows(10) == [0, 1]


def test_wilson_and_reliability_notes() -> None:
    assert wilson(0, 0) is None
    lo, hi = wilson(5, 10) or [0, 0]
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    with pytest.raises(ValueError):
        wilson(3, 2)
    assert reliability_note(5, 10, "precision") is not None  # ten labels: say so
    assert reliability_note(900, 1000, "precision") is None
    assert "no labelled" in (reliability_note(0, 0, "recall") or "")


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError):
        curve([1, 2], [True])
