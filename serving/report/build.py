"""The report's figures from its inputs: every signal's curve, operating point, breakdowns, shadow pairs.

The result is plain data (:meth:`Report.to_json`), written as ``report.json`` beside the HTML
page, so every figure on the page can be checked and re-used without scraping it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from serving.report.inputs import Key, ReportInputs, SignalValues, party_of
from serving.report.metrics import Curve, at_threshold, best_f1, curve, reliability_note, wilson
from signals.catalogue import CATALOGUE

MIN_GROUP = 5
"""A tenant or category is broken out when it has at least this many labelled entities."""
MAX_ROWS = 40
"""Threshold rows shown per signal (spread over the curve; the JSON has them all)."""

PARTIES: dict[str, Literal["sellers", "buyers"]] = {"listing": "sellers", "seller": "sellers",
                                                    "review": "buyers", "reviewer": "buyers"}


@dataclass
class SignalFigures:
    """Everything the report says about one signal (one name from one source)."""

    values: SignalValues
    curve: Curve
    keys: list[Key]
    y: np.ndarray
    v: np.ndarray
    operating: int | None
    operating_rule: str
    sign: float = 1.0
    """-1 where low values are the risky ones (account age): the curve runs on -value, flags value <= t."""
    by_tenant: list[dict[str, Any]] = field(default_factory=list)
    by_category: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.values.entity_type}:{self.values.name}@{self.values.source}"

    @property
    def description(self) -> str:
        spec = CATALOGUE.get(self.values.name)
        text = spec.description if spec is not None else "(not in the signal catalogue)"
        if self.values.rolled_from:
            text += (f"; rolled up: a {self.values.entity_type}'s value is the highest among its "
                     f"{self.values.rolled_from}s' values")
        return text

    @property
    def parties(self) -> str | None:
        return PARTIES.get(self.values.entity_type)


@dataclass
class Report:
    inputs: ReportInputs
    target_precision: float
    signals: list[SignalFigures]
    shadow: list[dict[str, Any]]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def labels_summary(self) -> dict[str, Any]:
        by_type: dict[str, dict[str, int]] = defaultdict(lambda: {"fraud": 0, "legit": 0, "implied": 0})
        for (_, etype, _), j in self.inputs.judged.items():
            by_type[etype]["fraud" if j.is_fraud else "legit"] += 1
            by_type[etype]["implied"] += j.via != "label"
        return {"read": self.inputs.labels_read, "superseded": self.inputs.labels_superseded,
                "by_entity_type": dict(sorted(by_type.items()))}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "marketguard.report/v1",
            "generated_at": _iso(self.generated_at),
            "origin": self.inputs.origin,
            "since": _iso(self.inputs.since), "until": _iso(self.inputs.until),
            "target_precision": self.target_precision,
            "labels": self.labels_summary(),
            "signals": [signal_json(s, self.target_precision) for s in self.signals],
            "shadow": self.shadow,
        }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _num(x: float | np.floating[Any] | None, digits: int = 4) -> float | None:
    """A JSON-safe number: nan (an undefined ratio) as null."""
    if x is None or (isinstance(x, float | np.floating) and math.isnan(float(x))):
        return None
    return round(float(x), digits)


def row_json(f: SignalFigures, r: int) -> dict[str, Any]:
    """One threshold row: counts, ratios with 95 % intervals, money and parties."""
    c = f.curve
    tp, fp, flagged = int(c.tp[r]), int(c.fp[r]), int(c.flagged[r])
    row: dict[str, Any] = {
        "threshold": _num(f.sign * c.thresholds[r], 6), "flagged": flagged, "tp": tp, "fp": fp,
        "precision": _num(c.precision[r]), "precision_ci95": wilson(tp, flagged),
        "recall": _num(c.recall[r]), "recall_ci95": wilson(tp, c.positives),
        "fpr": _num(c.fpr[r]), "coverage": _num(c.coverage[r]), "lift": _num(c.lift[r], 3),
        "money_caught": {k: round(float(v[r]), 2) for k, v in c.money_caught.items()},
        "money_held": {k: round(float(v[r]), 2) for k, v in c.money_held.items()},
    }
    if c.parties_affected is not None:
        share = c.parties_share
        row["honest_parties_affected"] = int(c.parties_affected[r])
        row["honest_parties_share"] = _num(share[r]) if share is not None else None
    return row


def signal_json(f: SignalFigures, target: float) -> dict[str, Any]:
    c = f.curve
    return {
        "id": f.id, "entity_type": f.values.entity_type, "name": f.values.name, "source": f.values.source,
        "shadow": f.values.shadow, "description": f.description, "parties": f.parties,
        "flags_when": "value <= threshold" if f.sign < 0 else "value >= threshold",
        "rolled_up_from": f.values.rolled_from,
        "labelled": c.labelled, "fraud": c.positives, "legit": c.negatives, "present": c.present,
        "base_rate": _num(c.base_rate), "non_numeric_values": f.values.non_numeric,
        "money_fraud_total": {k: round(v, 2) for k, v in c.money_fraud_total.items()},
        "money_legit_total": {k: round(v, 2) for k, v in c.money_legit_total.items()},
        "honest_parties_total": c.parties_total if c.parties_affected is not None else None,
        "target_precision": target,
        "operating_rule": f.operating_rule,
        "operating": row_json(f, f.operating) if f.operating is not None else None,
        "thresholds": [row_json(f, r) for r in range(len(c.thresholds))],
        "by_tenant": f.by_tenant, "by_category": f.by_category, "notes": f.notes,
    }


def _figures(sv: SignalValues, inputs: ReportInputs, target: float) -> SignalFigures:
    keys = sorted(k for k, j in inputs.judged.items() if k[1] == sv.entity_type)
    v = np.array([sv.values.get(k, math.nan) for k in keys], dtype=np.float64)
    y = np.array([inputs.judged[k].is_fraud for k in keys], dtype=bool)
    amounts = [inputs.judged[k].amount for k in keys]
    spec = CATALOGUE.get(sv.name)
    # The catalogue's signals are risk-oriented with 0 for "nothing found" (never a flag), except ages
    # in days, where the young account is the risky one; a name outside the catalogue is taken as is.
    sign, floor = (-1.0, None) if spec is not None and spec.value_kind == "days" else \
        (1.0, 0.0 if spec is not None else None)
    c = curve(sign * v, y, amounts=[math.nan if a is None else a for a in amounts],
              currencies=[inputs.judged[k].currency for k in keys],
              parties=[party_of(k, inputs.facts) for k in keys] if sv.entity_type in PARTIES else None,
              floor=floor)
    op = c.at_target_precision(target)
    rule = f"lowest threshold reaching precision {target:g}"
    if op is None:
        op = best_f1(c)
        rule = f"precision {target:g} not reached: threshold of the best F1" if op is not None else \
            "no threshold catches any fraud"
    f = SignalFigures(sv, c, keys, y, sign * v, op, rule, sign)
    f.notes = _notes(f)
    if op is not None:
        t = float(c.thresholds[op])  # on the curve's scale (sign * value), as f.v
        f.by_tenant = _breakdown(f, t, lambda k: k[0])
        if sv.entity_type == "listing":
            f.by_category = _breakdown(f, t, lambda k: (inputs.facts[k].group if k in inputs.facts else None))
    return f


def _notes(f: SignalFigures) -> list[str]:
    c = f.curve
    notes = []
    if c.positives == 0:
        notes.append("no fraud labels for this entity type: recall and lift are undefined")
    if c.negatives == 0:
        notes.append("no legit labels for this entity type: false-positive rate is undefined")
    if c.present < c.labelled:
        notes.append(f"{c.labelled - c.present} of {c.labelled} labelled entities do not carry this signal: "
                     "counted as not flagged")
    if f.values.non_numeric:
        notes.append(f"{f.values.non_numeric} non-numeric values left out")
    if f.operating is not None:
        r = f.operating
        for k, n, what in ((int(c.tp[r]), int(c.flagged[r]), "precision"),
                           (int(c.tp[r]), c.positives, "recall")):
            note = reliability_note(k, n, f"{what} at the operating threshold")
            if note:
                notes.append(note)
    return notes


def _breakdown(f: SignalFigures, threshold: float,
               group_of: Callable[[Key], str | None]) -> list[dict[str, Any]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(f.keys):
        g = group_of(k)
        if g:
            groups[g].append(i)
    out = []
    for g, idx in sorted(groups.items()):
        if len(idx) < MIN_GROUP:
            continue
        p = at_threshold(f.v[idx], f.y[idx], threshold)
        out.append({"group": g, "labelled": len(idx), "fraud": p.positives, "legit": p.negatives,
                    "flagged": p.flagged, "tp": p.tp, "fp": p.fp,
                    "precision": _num(p.precision), "precision_ci95": wilson(p.tp, p.flagged),
                    "recall": _num(p.recall), "recall_ci95": wilson(p.tp, p.positives),
                    "note": reliability_note(p.tp, p.flagged, "precision")})
    return out


def compare_shadow(live: SignalFigures, shadow: SignalFigures, points: int = 6) -> dict[str, Any]:
    """Shadow beside live on the same labelled entities, at the same coverage: at the live signal's
    operating point and a few more of its thresholds, the shadow's threshold with the closest coverage
    not above it; then at the shadow's own operating point, the live threshold matched the same way
    (so a candidate is judged even where the live signal never flags)."""
    lc, sc = live.curve, shadow.curve

    def point(cov: float, lr: int | None, sr: int | None, matched_on: str) -> dict[str, Any]:
        out: dict[str, Any] = {"coverage": _num(cov), "matched_on": matched_on}
        for side, c, r in (("live", lc, lr), ("shadow", sc, sr)):
            out[f"{side}_threshold"] = _num(c.thresholds[r], 6) if r is not None else None
            out[f"{side}_coverage"] = _num(c.coverage[r]) if r is not None else None
            out[f"{side}_precision"] = _num(c.precision[r]) if r is not None else None
            out[f"{side}_recall"] = _num(c.recall[r]) if r is not None else None
            out[f"{side}_tp"] = int(c.tp[r]) if r is not None else 0
            out[f"{side}_flagged"] = int(c.flagged[r]) if r is not None else 0
        return out

    rows = [live.operating] if live.operating is not None else []
    rows += [r for r in lc.rows(points) if r not in rows]
    out = []
    for r in rows:
        cov = float(lc.coverage[r])
        out.append(point(cov, r, sc.at_coverage(cov),
                         "live operating threshold" if r == live.operating else "live threshold"))
    if shadow.operating is not None:
        cov = float(sc.coverage[shadow.operating])
        out.append(point(cov, lc.at_coverage(cov), shadow.operating, "shadow operating threshold"))
    return {"entity_type": live.values.entity_type, "name": live.values.name, "live": live.id,
            "shadow": shadow.id, "labelled": lc.labelled, "fraud": lc.positives, "points": out}


def build_report(inputs: ReportInputs, target_precision: float = 0.9) -> Report:
    if not 0 < target_precision <= 1:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    figures = [_figures(sv, inputs, target_precision)
               for _, sv in sorted(inputs.signals.items(), key=lambda kv: (kv[1].shadow, kv[0]))]
    shadow = []
    for f in figures:
        if f.values.shadow:
            match = live_for(f, [g for g in figures if not g.values.shadow])
            if match is not None:
                shadow.append(compare_shadow(match, f))
    return Report(inputs, target_precision, figures, shadow)


def live_for(shadow: SignalFigures, live: list[SignalFigures]) -> SignalFigures | None:
    """The live signal a shadow one stands beside: same entity type and name, and the extractor whose
    candidate it is (source ``<extractor>_<label>@v`` beside ``<extractor>@v``); the only live one of
    that name otherwise."""
    same = [g for g in live if (g.values.entity_type, g.values.name) ==
            (shadow.values.entity_type, shadow.values.name)]
    extractor = shadow.values.source.split("@", 1)[0]
    by_source = [g for g in same if extractor.startswith(g.values.source.split("@", 1)[0] + "_")]
    if by_source:
        return max(by_source, key=lambda g: len(g.values.source))
    return same[0] if len(same) == 1 else None
