"""Thresholds are data: pick a match threshold from labelled pairs for a target precision.

Given ``(score, label)`` pairs (label 1 = a true duplicate / fraud match), the helper
returns the loosest threshold whose precision on those pairs still meets the target,
so recall is as high as the precision budget allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from signals.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    """The chosen threshold and what it achieves on the labelled pairs."""

    threshold: float
    precision: float
    recall: float
    matched: int  # pairs at or past the threshold
    achieved: bool  # False: no threshold meets the target; the strictest one is returned


def pick_threshold(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    target_precision: float,
    higher_is_closer: bool = True,
    min_matched: int = 1,
) -> ThresholdChoice:
    """The loosest threshold with precision >= ``target_precision`` on labelled pairs.

    ``higher_is_closer``: True for similarities (match when score >= t), False for
    distances such as PDQ Hamming bits (match when score <= t).
    """
    if not 0.0 < target_precision <= 1.0:
        raise InvalidInput("target_precision", f"must be in (0, 1], got {target_precision!r}")
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or s.shape != y.shape:
        raise InvalidInput("labels", f"{s.shape} scores but {y.shape} labels")
    if not len(s):
        raise InvalidInput("scores", "no labelled pairs")
    if not np.isin(y, (0, 1)).all():
        raise InvalidInput("labels", "labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise InvalidInput("scores", "NaN or infinite score")
    key = -s if higher_is_closer else s  # ascending key = closest first
    order = np.argsort(key, kind="stable")
    ks, ys = key[order], y[order].astype(np.int64)
    tp = np.cumsum(ys)
    n = np.arange(1, len(ys) + 1)
    # Only cut between distinct scores: a threshold takes every pair with an equal score.
    last = np.r_[ks[1:] != ks[:-1], True]
    prec = tp / n
    pos = max(int(ys.sum()), 1)
    ok = last & (prec >= target_precision) & (n >= min_matched)
    if ok.any():
        i = int(np.flatnonzero(ok)[-1])
        achieved = True
    else:
        i = int(np.flatnonzero(last)[0])
        achieved = False
    thr = float(-ks[i] if higher_is_closer else ks[i])
    return ThresholdChoice(thr, float(prec[i]), float(tp[i] / pos), int(n[i]), achieved)
