"""The report's arithmetic: a signal's effect against outcome labels, by threshold. Pure numpy.

A signal is judged on the labelled entities of its entity type: each has a value (``nan`` where
the signal is absent: it never flags that entity) and a label (fraud or legit). At threshold
``t`` the signal flags every entity whose value is ``>= t``; the thresholds are the distinct
values seen, so tied values are always flagged together. Per threshold:

* ``precision`` = TP / flagged, ``recall`` = TP / fraud, ``fpr`` = FP / legit,
  ``coverage`` = flagged / labelled, ``lift`` = precision / base rate (fraud / labelled);
  a ratio with a zero denominator is ``nan`` (shown as "n/a"), never 0 or 1;
* money: the amount at stake of each entity (a label's ``loss_amount`` or the listing's price),
  summed per currency over the fraud caught (loss prevented) and the honest entities held back;
* parties: the distinct honest sellers or buyers behind the false positives (an honest seller
  with two flagged listings counts once), against all honest ones labelled.

Nothing here reads files or knows about stores: :mod:`serving.report.inputs` builds the arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

Z95 = 1.96
MIN_RELIABLE = 30
"""Below this many entities behind a ratio, the report says the figure is unreliable."""
MAX_CI_WIDTH = 0.2
"""A 95 % interval wider than this makes a figure unreliable too."""


def wilson(k: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score 95% interval of a proportion k/n (None when n is 0)."""
    if n == 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def reliability_note(k: int, n: int, what: str) -> str | None:
    """A plain sentence when ``k / n`` rests on too few labels to trust, else None."""
    if n == 0:
        return f"{what}: no labelled entities to judge it on"
    ci = wilson(k, n)
    assert ci is not None  # n > 0
    if n < MIN_RELIABLE or ci[1] - ci[0] > MAX_CI_WIDTH:
        return (f"{what} {k}/{n} rests on few labels: the true value lies anywhere in "
                f"{ci[0]:.2f}-{ci[1]:.2f} (95 % interval)")
    return None


def _ratio(num: np.ndarray, den: np.ndarray | int) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den_a = np.broadcast_to(np.asarray(den, dtype=np.float64), num.shape)
    out = np.full(num.shape, np.nan)
    np.divide(num, den_a, out=out, where=den_a > 0)
    return out


@dataclass(frozen=True)
class Curve:
    """A signal's figures at each threshold, thresholds in descending order (row 0 flags fewest)."""

    thresholds: np.ndarray
    flagged: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int
    present: int
    """Labelled entities that carry the signal at all."""
    money_caught: dict[str, np.ndarray] = field(default_factory=dict)
    """Currency -> fraud value flagged at each threshold (capital loss prevented)."""
    money_held: dict[str, np.ndarray] = field(default_factory=dict)
    """Currency -> honest value flagged (held back) at each threshold."""
    money_fraud_total: dict[str, float] = field(default_factory=dict)
    money_legit_total: dict[str, float] = field(default_factory=dict)
    parties_affected: np.ndarray | None = None
    """Distinct honest sellers or buyers behind the false positives at each threshold."""
    parties_total: int = 0
    """Distinct honest sellers or buyers among the legit-labelled entities."""

    @property
    def labelled(self) -> int:
        return self.positives + self.negatives

    @property
    def base_rate(self) -> float:
        return self.positives / self.labelled if self.labelled else math.nan

    @property
    def precision(self) -> np.ndarray:
        return _ratio(self.tp, self.flagged)

    @property
    def recall(self) -> np.ndarray:
        return _ratio(self.tp, self.positives)

    @property
    def fpr(self) -> np.ndarray:
        return _ratio(self.fp, self.negatives)

    @property
    def coverage(self) -> np.ndarray:
        return _ratio(self.flagged, self.labelled)

    @property
    def lift(self) -> np.ndarray:
        base = self.base_rate
        if not base or math.isnan(base):
            return np.full(len(self.thresholds), np.nan)
        return self.precision / base

    @property
    def parties_share(self) -> np.ndarray | None:
        if self.parties_affected is None:
            return None
        return _ratio(self.parties_affected, self.parties_total)

    def at_target_precision(self, target: float) -> int | None:
        """The row of the lowest threshold (most recall) whose precision reaches ``target``."""
        ok = np.flatnonzero(np.nan_to_num(self.precision, nan=-1.0) >= target)
        return int(ok[-1]) if len(ok) else None

    def at_coverage(self, coverage: float) -> int | None:
        """The row whose coverage is closest to ``coverage`` without exceeding it (None: none does)."""
        ok = np.flatnonzero(np.nan_to_num(self.coverage, nan=np.inf) <= coverage + 1e-12)
        return int(ok[-1]) if len(ok) else None

    def rows(self, limit: int) -> list[int]:
        """At most ``limit`` row numbers spread over the curve (first and last always kept)."""
        n = len(self.thresholds)
        if n <= limit:
            return list(range(n))
        return sorted({int(round(x)) for x in np.linspace(0, n - 1, limit)})


def _group_desc(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values in descending order and, for each entity, the row of its value."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq[::-1], (len(uniq) - 1 - inverse)


def _cumulative(rows: np.ndarray, n_rows: int, weights: np.ndarray | None = None) -> np.ndarray:
    """For each row r: the sum of ``weights`` (or the count) of entities whose row is <= r."""
    per_row = np.bincount(rows, weights=weights, minlength=n_rows)
    return np.cumsum(per_row)


def curve(values: Sequence[float] | np.ndarray, is_fraud: Sequence[bool] | np.ndarray, *,
          amounts: Sequence[float] | np.ndarray | None = None,
          currencies: Sequence[str | None] | None = None,
          parties: Sequence[str | None] | None = None, floor: float | None = None) -> Curve:
    """The signal's curve over labelled entities.

    ``values``: one per labelled entity, ``nan`` where the signal is absent; ``is_fraud``: the
    label of each. ``amounts``/``currencies``: the money at stake per entity (``nan`` / None where
    unknown); ``parties``: the seller or buyer behind each entity (None where none), for the
    honest parties a false positive affects. ``floor``: values at or below it never flag (0 for the
    catalogue's signals, where 0 means "nothing found"); they still count as present.
    """
    v = np.asarray(values, dtype=np.float64)
    y = np.asarray(is_fraud, dtype=bool)
    if v.shape != y.shape or v.ndim != 1:
        raise ValueError(f"values and labels must be 1-d of one length, got {v.shape} and {y.shape}")
    has_value = ~np.isnan(v)
    present = has_value & (v > floor) if floor is not None else has_value
    thresholds, row_of = _group_desc(v[present])
    n_rows = len(thresholds)
    rows = row_of.astype(np.int64)
    yp = y[present]
    tp = _cumulative(rows[yp], n_rows).astype(np.int64)
    fp = _cumulative(rows[~yp], n_rows).astype(np.int64)
    caught: dict[str, np.ndarray] = {}
    held: dict[str, np.ndarray] = {}
    fraud_total: dict[str, float] = {}
    legit_total: dict[str, float] = {}
    if amounts is not None:
        a = np.asarray(amounts, dtype=np.float64)
        cur = np.asarray([c or "" for c in (currencies or [None] * len(a))], dtype=object)
        if a.shape != v.shape or cur.shape != v.shape:
            raise ValueError("amounts and currencies must have one entry per labelled entity")
        known = ~np.isnan(a)
        for c in sorted({str(x) for x in cur[known]}):
            mine = known & (cur == c)
            fraud_total[c] = float(a[mine & y].sum())
            legit_total[c] = float(a[mine & ~y].sum())
            sel = mine[present]
            ap = a[present]
            caught[c] = _cumulative(rows[sel & yp], n_rows, ap[sel & yp])
            held[c] = _cumulative(rows[sel & ~yp], n_rows, ap[sel & ~yp])
    affected: np.ndarray | None = None
    parties_total = 0
    if parties is not None:
        p = np.asarray([x or "" for x in parties], dtype=object)
        if p.shape != v.shape:
            raise ValueError("parties must have one entry per labelled entity")
        honest = (p != "") & ~y
        parties_total = len(set(p[honest]))
        # an honest party is affected from the first threshold that flags any of its entities
        first_row: dict[str, int] = {}
        pp, hp = p[present], honest[present]
        for party, r in zip(pp[hp], rows[hp], strict=True):
            first_row[party] = min(first_row.get(party, n_rows), int(r))
        affected = _cumulative(np.asarray(list(first_row.values()), dtype=np.int64), n_rows).astype(np.int64)
    return Curve(thresholds=thresholds, flagged=tp + fp, tp=tp, fp=fp, positives=int(y.sum()),
                 negatives=int((~y).sum()), present=int(has_value.sum()), money_caught=caught,
                 money_held=held, money_fraud_total=fraud_total, money_legit_total=legit_total,
                 parties_affected=affected, parties_total=parties_total)


@dataclass(frozen=True)
class Point:
    """A signal's figures at one threshold over a set of labelled entities."""

    threshold: float
    flagged: int
    tp: int
    positives: int
    negatives: int

    @property
    def fp(self) -> int:
        return self.flagged - self.tp

    @property
    def precision(self) -> float:
        return self.tp / self.flagged if self.flagged else math.nan

    @property
    def recall(self) -> float:
        return self.tp / self.positives if self.positives else math.nan


def at_threshold(values: Sequence[float] | np.ndarray, is_fraud: Sequence[bool] | np.ndarray,
                 threshold: float) -> Point:
    """The figures when the signal flags values ``>= threshold`` (absent values never flag)."""
    v = np.asarray(values, dtype=np.float64)
    y = np.asarray(is_fraud, dtype=bool)
    flagged = np.nan_to_num(v, nan=-np.inf) >= threshold
    return Point(float(threshold), int(flagged.sum()), int((flagged & y).sum()), int(y.sum()),
                 int((~y).sum()))


def best_f1(c: Curve) -> int | None:
    """The row with the highest F1 (the lowest threshold among equals); None without positives."""
    if not c.positives or not len(c.thresholds):
        return None
    f1 = _ratio(2 * c.tp, c.flagged + c.positives)
    if np.nanmax(f1) <= 0:
        return None
    return int(np.flatnonzero(f1 == np.nanmax(f1))[-1])
