"""Content rules: contacts on hand-labelled SMS (shipped rule vs plain regexes), the
labelled cases, SMS spam vs ham flag rates, throughput.

``python -m benchmarks.content_rules [--quick]``. Figures:

- headline ``contact_f1_url`` / ``contact_f1_email`` / ``contact_f1_phone`` (with
  ``contact_precision_*`` and ``contact_recall_*``): ``content.offplatform_contact`` at its
  shipped defaults on the HELD-OUT half of a hand-labelled random sample of the SMS Spam
  Collection (``tests/signals/data/sms_contact_labels.tsv``: line numbers and labels; the
  protocol is in its header). Per message and kind: does the message contain one, did the
  rule find one. ``baseline_*`` are plain regexes (``BASELINE``) scored on the same messages;
  the details carry counts and Wilson 95% intervals, and the development half separately
  (the half looked at while the rules were changed: not an unbiased estimate);
- ``precision``/``recall``: per-kind micro figures over ``tests/signals/data/
  content_cases.jsonl`` (a regression floor written with the rules, not an estimate);
- ``sms_spam_flag_rate``/``sms_ham_flag_rate``: share of the SMS Spam Collection's
  spam and ham messages with at least one contact found (``--quick``: first 1,500);
- ``texts_per_s`` on the SMS messages, and ``long_listing_ms``: one 20,000-character
  number-heavy description.

Uses only the public API (``ContentRulesExtractor``), default config.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED_DATA, finish, median, parse_args, wilson
from signals.config import ContentRulesConfig
from signals.content_rules import ContentRulesExtractor
from signals.schemas import Review

DATA = Path(__file__).resolve().parents[1] / "tests" / "signals" / "data"
CASES = DATA / "content_cases.jsonl"
SMS_LABELS = DATA / "sms_contact_labels.tsv"
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


# ---- contacts on the hand-labelled SMS sample ----------------------------------------

CONTACT_KINDS = ("url", "email", "phone", "shortcode")
HEADLINE_KINDS = ("url", "email", "phone")

# Plain regexes, the baseline a new user would write first: a scheme or "www." or a name
# ending in a common TLD; anything@name.tld; 7 to 15 digits with single separators; five
# digits standing alone.
BASELINE: dict[str, re.Pattern[str]] = {
    "url": re.compile(
        r"(?i)\b(?:https?://|www\.)\S+|\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*"
        r"\.(?:com|net|org|info|biz|co\.uk|org\.uk|uk|us|eu|de|tv|me|io|co|ly|mobi)\b"),
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "phone": re.compile(r"(?<!\d)(?:\+|00)?\d(?:[\s.-]?\d){6,14}(?!\d)"),
    "shortcode": re.compile(r"(?<![\w£$.,/:])\d{5}(?![\w.,/:])"),
}


def sms_rows() -> list[tuple[str, str]]:
    """(class, text) for every line of the SMS Spam Collection, in file order."""
    return [(label, text) for label, text in (line.split("\t", 1) for line in
            SMS.read_text(encoding="utf-8").split("\n") if "\t" in line)]


def draw_sample(rows: list[tuple[str, str]]) -> dict[int, str]:
    """The labelled sample: line number -> half ("dev" or "heldout").

    All spam lines and 500 ham lines (``random.Random(16)``); each stratum shuffled with
    ``random.Random(1616)``, the first half (rounded up) "dev", the rest "heldout".
    """
    spam = [i + 1 for i, (label, _) in enumerate(rows) if label == "spam"]
    ham = [i + 1 for i, (label, _) in enumerate(rows) if label == "ham"]
    half: dict[int, str] = {}
    for stratum in (spam, sorted(random.Random(16).sample(ham, 500))):
        order = list(stratum)
        random.Random(1616).shuffle(order)
        cut = (len(order) + 1) // 2
        half.update({i: "dev" for i in order[:cut]})
        half.update({i: "heldout" for i in order[cut:]})
    return half


def load_labels() -> dict[int, tuple[str, set[str]]]:
    """line -> (half, kinds) from ``sms_contact_labels.tsv``."""
    out: dict[int, tuple[str, set[str]]] = {}
    lines = [ln for ln in SMS_LABELS.read_text(encoding="utf-8").split("\n")
             if ln and not ln.startswith("#")]
    for ln in lines[1:]:  # the first is the column header
        line, _, half, kinds = ln.split("\t")
        out[int(line)] = (half, set() if kinds == "-" else set(kinds.split(",")))
    return out


def rule_kinds(ex: ContentRulesExtractor, i: int, text: str) -> set[str]:
    """Kinds the shipped rule reports, mapped onto the labels' kinds.

    A messaging app's link (``wa.me/...``) is reported as a handle but is a URL as written;
    SMS short codes are reported as phones with ``shortcode`` in their evidence.
    """
    res = ex.extract(_review(i, text))
    if res.error is not None:
        raise RuntimeError(f"content rules failed on line {i}: {res.error.reason}")
    sig = next(s for s in res.signals if s.name == "content.offplatform_contact")
    out = set()
    for m in sig.evidence["matches"]:
        if m["kind"] == "url" or (m["kind"] == "handle" and m.get("link")):
            out.add("url")
        elif m["kind"] == "email":
            out.add("email")
        elif m["kind"] == "phone":
            out.add("shortcode" if m.get("shortcode") else "phone")
    return out


def baseline_kinds(text: str) -> set[str]:
    return {k for k, pat in BASELINE.items() if pat.search(text)}


def _score(pairs: list[tuple[int, set[str], set[str]]]) -> dict[str, dict[str, Any]]:
    """Per kind over (line, labelled, found): counts, precision, recall, F1, intervals."""
    out: dict[str, dict[str, Any]] = {}
    for k in CONTACT_KINDS:
        tp = [i for i, exp, got in pairs if k in exp and k in got]
        fp = [i for i, exp, got in pairs if k not in exp and k in got]
        fn = [i for i, exp, got in pairs if k in exp and k not in got]
        p = len(tp) / (len(tp) + len(fp)) if tp or fp else None
        r = len(tp) / (len(tp) + len(fn)) if tp or fn else None
        f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None
        out[k] = {
            "labelled": len(tp) + len(fn), "tp": len(tp), "fp": len(fp), "fn": len(fn),
            "precision": None if p is None else round(p, 4),
            "precision_ci95": wilson(len(tp), len(tp) + len(fp)),
            "recall": None if r is None else round(r, 4),
            "recall_ci95": wilson(len(tp), len(tp) + len(fn)),
            "f1": None if f1 is None else round(f1, 4),
            "fp_lines": fp, "fn_lines": fn,  # line numbers in the SMS file, never the text
        }
    return out


def sms_contacts(ex: ContentRulesExtractor) -> dict[str, Any]:
    """Shipped rule and baseline, side by side, on each half of the labelled sample."""
    rows = sms_rows()
    labels = load_labels()
    drawn = draw_sample(rows)
    if {i: h for i, (h, _) in labels.items()} != drawn:
        raise RuntimeError("sms_contact_labels.tsv does not match draw_sample(): wrong file?")
    out: dict[str, Any] = {"sample": {
        "messages": len(labels), "spam": sum(rows[i - 1][0] == "spam" for i in labels),
        "ham": sum(rows[i - 1][0] == "ham" for i in labels),
        "design": "all 747 spam + 500 random ham (seed 16), halves by seed 1616"}}
    for half in ("heldout", "dev"):
        ids = sorted(i for i, (h, _) in labels.items() if h == half)
        shipped = [(i, labels[i][1], rule_kinds(ex, i, rows[i - 1][1])) for i in ids]
        base = [(i, labels[i][1], baseline_kinds(rows[i - 1][1])) for i in ids]
        out[half] = {"messages": len(ids), "shipped": _score(shipped), "baseline": _score(base)}
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    ex = ContentRulesExtractor(ContentRulesConfig())
    contacts = sms_contacts(ex)
    lab = labelled_set(ex)
    sm = sms(ex, 1500 if args.quick else None)
    long_ms = long_listing_ms(ex, 5 if args.quick else 20)
    held = contacts["heldout"]
    figures: dict[str, Any] = {"contact_heldout_messages": held["messages"]}
    for system, prefix in (("shipped", "contact"), ("baseline", "baseline")):
        for k in (*HEADLINE_KINDS, "shortcode"):
            sc = held[system][k]
            figures[f"{prefix}_f1_{k}"] = sc["f1"]
            figures[f"{prefix}_precision_{k}"] = sc["precision"]
            figures[f"{prefix}_recall_{k}"] = sc["recall"]
    figures.update({
        "precision": lab["precision"], "recall": lab["recall"], "cases": lab["cases"],
        "sms_spam_flag_rate": sm["spam_flag_rate"], "sms_ham_flag_rate": sm["ham_flag_rate"],
        "sms_spam_flagged": sm["flagged"].get("spam", 0), "sms_spam": sm["messages"].get("spam", 0),
        "sms_ham_flagged": sm["flagged"].get("ham", 0), "sms_ham": sm["messages"].get("ham", 0),
        "texts_per_s": sm["texts_per_s"], "long_listing_ms": long_ms,
    })
    finish("content_rules", figures, quick=args.quick,
           packages=("phonenumbers", "publicsuffixlist", "pydantic", "marketguard"),
           details={"sms_contacts": contacts, "labelled_set": lab, "sms": sm})


if __name__ == "__main__":
    main()
