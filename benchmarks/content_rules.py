"""Content rules: precision/recall on the labelled set, SMS spam vs ham flag rates, throughput.

``python -m benchmarks.content_rules [--quick]``. Figures:

- ``precision``/``recall``: per-kind micro figures of ``content.offplatform_contact``
  over ``tests/signals/data/content_cases.jsonl`` (a case's predicted kinds vs its
  expected kinds; clean cases expect none);
- ``sms_spam_flag_rate``/``sms_ham_flag_rate``: share of the SMS Spam Collection's
  spam and ham messages with at least one contact found (``--quick``: first 1,500);
- ``texts_per_s`` on the SMS messages, and ``long_listing_ms``: one 20,000-character
  number-heavy description.

Uses only the public API (``ContentRulesExtractor``), default config.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED_DATA, finish, median, parse_args
from signals.config import ContentRulesConfig
from signals.content_rules import ContentRulesExtractor
from signals.schemas import Review

CASES = Path(__file__).resolve().parents[1] / "tests" / "signals" / "data" / "content_cases.jsonl"
SMS = SHARED_DATA / "scam_text" / "SMSSpamCollection"
KINDS = ("phone", "email", "url", "handle")
_AT = datetime(2026, 11, 24, tzinfo=UTC)


def _review(i: int, text: str) -> Review:
    return Review(review_id=f"R{i}", product_id="P", seller_id="S", reviewer_id="U", rating=3,
                  text=text, created_at=_AT)


def _kinds(ex: ContentRulesExtractor, item: Review) -> set[str]:
    res = ex.extract(item)
    if res.error is not None:
        raise RuntimeError(f"content rules failed on {item.entity_id}: {res.error.reason}")
    sig = next(s for s in res.signals if s.name == "content.offplatform_contact")
    return {c["kind"] for c in sig.evidence["matches"]}


def labelled_set(ex: ContentRulesExtractor) -> dict[str, Any]:
    cases = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line]
    tp = fp = fn = 0
    per_kind = {k: {"tp": 0, "fp": 0, "fn": 0} for k in KINDS}
    for i, c in enumerate(cases):
        got, exp = _kinds(ex, _review(i, c["text"])), set(c["expected"])
        tp, fp, fn = tp + len(got & exp), fp + len(got - exp), fn + len(exp - got)
        for k in KINDS:
            per_kind[k]["tp"] += k in got and k in exp
            per_kind[k]["fp"] += k in got and k not in exp
            per_kind[k]["fn"] += k in exp and k not in got
    return {"cases": len(cases), "positive_cases": sum(1 for c in cases if c["expected"]),
            "precision": round(tp / max(1, tp + fp), 4), "recall": round(tp / max(1, tp + fn), 4),
            "per_kind": per_kind}


def sms(ex: ContentRulesExtractor, limit: int | None) -> dict[str, Any]:
    rows = [line.rstrip("\n").split("\t", 1)
            for line in SMS.read_text(encoding="utf-8").splitlines() if "\t" in line]
    rows = rows[:limit] if limit else rows
    total: Counter[str] = Counter()
    flagged: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    t0 = time.perf_counter()
    for i, (label, text) in enumerate(rows):
        total[label] += 1
        got = _kinds(ex, _review(i, text))
        if got:
            flagged[label] += 1
            kinds.update(f"{label}.{k}" for k in got)
    elapsed = time.perf_counter() - t0
    return {
        "messages": dict(total), "flagged": dict(flagged), "kinds": dict(sorted(kinds.items())),
        "spam_flag_rate": round(flagged["spam"] / max(1, total["spam"]), 4),
        "ham_flag_rate": round(flagged["ham"] / max(1, total["ham"]), 4),
        "texts_per_s": round(len(rows) / elapsed, 1),
    }


def long_listing_ms(ex: ContentRulesExtractor, reps: int) -> float:
    text = ("Brand new 55 inch TV, model UN55TU7000, SKU 8847-2231-09, $1,299.99, ships "
            "12/25/2024. Dimensions 1230 x 710 x 60 mm, 4K UHD 3840x2160. ") * 200
    item = _review(0, text[:20000])
    ex.extract(item)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ex.extract(item)
        times.append((time.perf_counter() - t0) * 1000)
    return round(median(times), 2)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    ex = ContentRulesExtractor(ContentRulesConfig())
    lab = labelled_set(ex)
    sm = sms(ex, 1500 if args.quick else None)
    long_ms = long_listing_ms(ex, 5 if args.quick else 20)
    figures = {
        "precision": lab["precision"], "recall": lab["recall"], "cases": lab["cases"],
        "sms_spam_flag_rate": sm["spam_flag_rate"], "sms_ham_flag_rate": sm["ham_flag_rate"],
        "sms_spam_flagged": sm["flagged"].get("spam", 0), "sms_spam": sm["messages"].get("spam", 0),
        "sms_ham_flagged": sm["flagged"].get("ham", 0), "sms_ham": sm["messages"].get("ham", 0),
        "texts_per_s": sm["texts_per_s"], "long_listing_ms": long_ms,
    }
    finish("content_rules", figures, quick=args.quick,
           packages=("phonenumbers", "pydantic", "marketguard"),
           details={"labelled_set": lab, "sms": sm})


if __name__ == "__main__":
    main()
