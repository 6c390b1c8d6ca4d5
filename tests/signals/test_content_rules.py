"""Content rules: the shared extractor contract, the labelled set, spans, signals, terms."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from signals.config import ContentRulesConfig
from signals.content_rules import ContentRules, ContentRulesExtractor
from signals.schemas import Listing, Review
from tests.signals.extractor_contract import ExtractorContract

CASES = Path(__file__).parent / "data" / "content_cases.jsonl"
KINDS = ("phone", "email", "url", "handle")
# Floors set just below the figures measured on 2026-11-24 (precision 1.000, recall 1.000
# on the set's 243 cases; the set was written alongside the rules, so these are
# regression floors, not an unbiased estimate: see the README for SMS figures).
PRECISION_FLOOR = 0.97
RECALL_FLOOR = 0.95


def _listing(i: str, title: str, description: str = "", tenant: str = "default") -> Listing:
    return Listing(listing_id=i, seller_id="S1", title=title, description=description,
                   tenant=tenant)


def _review(i: str, text: str) -> Review:
    return Review(review_id=i, product_id="P1", seller_id="S1", reviewer_id="R1", rating=5,
                  text=text, created_at=datetime(2026, 11, 24, tzinfo=UTC))


class TestContentRulesContract(ExtractorContract):
    def make_extractor(self) -> ContentRulesExtractor:
        return ContentRulesExtractor(ContentRulesConfig(prohibited_terms={"*": ["replica"]}))

    def good_items(self) -> list[Listing | Review]:
        return [
            _listing("L1", "iPhone 13 Pro Max 256GB", "Battery 89%, SKU 8847-2231-09"),
            _listing("L2", "Rolex replica", "whatsapp me +234 803 123 4567"),
            _review("R1", "Great seller, email me at bob[at]gmail[dot]com"),
            _listing("L3", "Sofa", "w h a t s a p p zero eight zero three one two three four"),
        ]


@pytest.fixture(scope="module")
def rules() -> ContentRules:
    return ContentRules(ContentRulesConfig())


def _cases() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line]


def evaluate(rules: ContentRules, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-kind micro precision and recall over the labelled set (also used by the benchmark)."""
    tp = fp = fn = 0
    per_kind = {k: [0, 0, 0] for k in KINDS}
    wrong = []
    for c in cases:
        got = {f.kind for f in rules.scan(c["text"], "text", "default").contacts}
        exp = set(c["expected"])
        for k in KINDS:
            per_kind[k][0] += k in got and k in exp
            per_kind[k][1] += k in got and k not in exp
            per_kind[k][2] += k in exp and k not in got
        tp, fp, fn = tp + len(got & exp), fp + len(got - exp), fn + len(exp - got)
        if got != exp:
            wrong.append((c["id"], c["text"], sorted(exp), sorted(got)))
    return {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn),
            "per_kind": per_kind, "wrong": wrong}


def test_labelled_set_is_big_and_varied() -> None:
    cases = _cases()
    assert len(cases) >= 150
    assert len({c["id"] for c in cases}) == len(cases)
    clean = [c for c in cases if not c["expected"]]
    assert len(clean) >= 60
    for k in KINDS:
        assert sum(k in c["expected"] for c in cases) >= 15, k
    assert len({c["lang"].split("-")[0] for c in cases}) >= 8


def test_precision_and_recall_on_labelled_set(rules: ContentRules) -> None:
    res = evaluate(rules, _cases())
    print(f"\ncontent rules on {len(_cases())} cases: precision {res['precision']:.3f} "
          f"recall {res['recall']:.3f}; per kind (tp, fp, fn) {res['per_kind']}")
    for w in res["wrong"]:
        print("  mismatch", w)
    assert res["precision"] >= PRECISION_FLOOR
    assert res["recall"] >= RECALL_FLOOR


def test_obfuscation_flags_match_labels(rules: ContentRules) -> None:
    ex = ContentRulesExtractor(ContentRulesConfig())
    agree = 0
    cases = [c for c in _cases() if c["expected"]]
    for i, c in enumerate(cases):
        sig = {s.name: s for s in ex.extract(_review(f"R{i}", c["text"])).signals}
        flagged = sig["content.obfuscation"].value >= 0.3
        agree += flagged == c["obfuscated"]
    assert agree / len(cases) >= 0.9, agree / len(cases)


# ---- evidence spans point into the original field ------------------------------------

@pytest.mark.parametrize(
    ("text", "kind", "original"),
    [
        ("Hi! wh\u200bats\u200bapp me", "handle", "wh\u200bats\u200bapp"),
        ("call ｚｅｒｏ eight zero three one two three four five six seven now", "phone",
         "ｚｅｒｏ eight zero three one two three four five six seven"),
        ("mail: jоhn[at]gmаil[dot]com.", "email", "jоhn[at]gmаil[dot]com"),
        ("pics: bit ly/abc123 ok", "url", "bit ly/abc123"),
        ("Ring 020 7946 0958 after 6", "phone", "020 7946 0958"),
        ("tg: @scam_seller.", "handle", "tg: @scam_seller"),
    ],
)
def test_evidence_span_is_the_original_text(rules: ContentRules, text: str, kind: str,
                                            original: str) -> None:
    found = [f for f in rules.scan(text, "description", "default").contacts if f.kind == kind]
    assert found, rules.scan(text, "description", "default")
    f = found[0]
    assert text[f.start:f.end] == original == f.matched
    assert f.field == "description"


def test_evidence_names_the_field_of_a_listing() -> None:
    ex = ContentRulesExtractor(ContentRulesConfig())
    item = _listing("L9", "Sofa, call 020 7946 0958", "or email anna@gmail.com")
    contact = {s.name: s for s in ex.extract(item).signals}["content.offplatform_contact"]
    ev = contact.evidence["matches"]
    assert {(c["kind"], c["field"]) for c in ev} == {("phone", "title"), ("email", "description")}
    for c in ev:
        text = item.title if c["field"] == "title" else item.description
        assert text[c["start"]:c["end"]] == c["matched"]
    assert contact.value == 2 and contact.evidence["kinds"] == {"phone": 1, "email": 1}
    assert ev[0]["normalized"] == "+442079460958"


# ---- the three signals ----------------------------------------------------------------

def test_all_three_signals_for_a_clean_item() -> None:
    ex = ContentRulesExtractor(ContentRulesConfig())
    sig = {s.name: s for s in ex.extract(_listing("L1", "Samsung 55 inch 4K UHD TV",
                                                  "Model UN55TU7000, $1,299.99")).signals}
    assert set(sig) == set(ContentRulesExtractor.emits)
    assert sig["content.offplatform_contact"].value == 0
    assert sig["content.offplatform_contact"].score == 0.0
    assert sig["content.obfuscation"].value == 0.0
    assert sig["content.prohibited_terms"].value == 0


def test_scores_rise_with_risk() -> None:
    ex = ContentRulesExtractor(ContentRulesConfig())

    def score(text: str, name: str) -> float:
        sig = {s.name: s for s in ex.extract(_review("R1", text)).signals}
        return sig[name].score or 0.0

    plain = score("whatsapp me", "content.offplatform_contact")
    more = score("whatsapp me on +234 803 123 4567 or bob@gmail.com", "content.offplatform_contact")
    assert 0 < plain < more <= 1
    light = score("wh\u200batsapp me", "content.obfuscation")
    heavy = score("wh\u200bаtsаpp me z e r o eight zero three one two three four five six",
                  "content.obfuscation")
    assert 0 < light < heavy <= 1


def test_obfuscation_evidence_lists_techniques() -> None:
    ex = ContentRulesExtractor(ContentRulesConfig())
    sig = {s.name: s for s in ex.extract(_review("R1", "wh4tsapp: zero eight zero three one "
                                                       "two three four five six seven")).signals}
    techs = sig["content.obfuscation"].evidence["techniques"]
    assert {"leetspeak", "digits_as_words"} <= set(techs)
    assert techs["digits_as_words"]["on_contact_or_term"] is True


# ---- precision details --------------------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    ["55 inch 4K UHD", "iPhone 13 Pro Max 256GB", "SKU 8847-2231-09", "Lot #20231115",
     "1920x1080", "$1,299.99", "12/25/2024", "ref 116610LN", "size 10.5", "2x 500ml",
     "IMEI 356938035643809", "ISBN 978-0-13-468599-1", "Amazon Echo", "Amazon.com gift card",
     "condition.no scratches", "WhatsApp and Instagram work fine on this phone"],
)
def test_ordinary_listing_text_does_not_fire(rules: ContentRules, text: str) -> None:
    assert rules.scan(text, "title", "default").contacts == []


def test_brand_domain_with_a_path_is_still_a_url(rules: ContentRules) -> None:
    found = rules.scan("cheaper at amazon.com/dp/B08N5WRWNW", "title", "default").contacts
    assert [f.kind for f in found] == ["url"]


def test_allowed_domains_per_tenant() -> None:
    cfg = ContentRulesConfig(allowed_domains={"acme": ["acme-market.com"]})
    r = ContentRules(cfg)
    text = "see https://help.acme-market.com/returns or mail support@acme-market.com"
    assert r.scan(text, "description", "acme").contacts == []
    assert {f.kind for f in r.scan(text, "description", "other").contacts} == {"url", "email"}


def test_extra_messaging_app_from_config() -> None:
    r = ContentRules(ContentRulesConfig(extra_messaging_apps=["Botim"]))
    assert [f.detail["app"] for f in r.scan("add me on botim", "t", "default").contacts] == [
        "botim"]
    assert ContentRules(ContentRulesConfig()).scan("add me on botim", "t", "default").contacts == []


def test_bad_region_hint_is_refused() -> None:
    with pytest.raises(ValueError, match="XX"):
        ContentRules(ContentRulesConfig(region_hints=["US", "XX"]))


def test_phone_region_is_the_best_fit(rules: ContentRules) -> None:
    found = rules.scan("me chama no zap 11 98765-4321", "t", "default").contacts
    assert [f.normalized for f in found if f.kind == "phone"] == ["+5511987654321"]


# ---- prohibited terms ---------------------------------------------------------------------

def test_prohibited_terms_per_tenant_and_obfuscated() -> None:
    cfg = ContentRulesConfig(prohibited_terms={"*": ["replica", "fake id"],
                                               "pharma": ["viagra", "cocaína"]})
    ex = ContentRulesExtractor(cfg)
    text = "R3PL1CA bags, v.i.a.g.r.a, c0caina, f@ke  id, replicas, antireplica"
    for tenant, expected in (("default", ["fake id", "replica"]),
                             ("pharma", ["cocaína", "fake id", "replica", "viagra"])):
        sig = {s.name: s for s in ex.extract(_listing("L1", text, tenant=tenant)).signals}
        terms = sig["content.prohibited_terms"]
        assert terms.evidence["terms"] == expected
        assert terms.value == len(expected) and terms.score and terms.score >= 0.8
        for m in terms.evidence["matches"]:
            assert text[m["start"]:m["end"]] == m["matched"]
        # Word boundaries: "replicas" and "antireplica" are not the term "replica".
        assert not any(m["matched"] in ("replicas", "antireplica")
                       for m in terms.evidence["matches"])


def test_terms_do_not_match_digits_only(rules: ContentRules) -> None:
    r = ContentRules(ContentRulesConfig(prohibited_terms={"*": ["ios", "gun"]}))
    assert r.scan("model 105, 6un", "t", "default").terms == []
    assert [h.term for h in r.scan("1OS hack, g u n", "t", "default").terms] == ["ios", "gun"]


def test_twenty_thousand_characters_take_milliseconds() -> None:
    import time

    r = ContentRules(ContentRulesConfig(prohibited_terms={"*": ["replica"]}))
    text = ("Brand new 55 inch TV, model UN55TU7000, SKU 8847-2231-09, $1,299.99. "
            "Dimensions 1230 x 710 mm. Великолепное состояние. ") * 150
    text = text[:20000]
    r.scan(text, "description", "default")
    t0 = time.perf_counter()
    for _ in range(3):
        r.scan(text, "description", "default")
    assert (time.perf_counter() - t0) / 3 < 0.1  # measured ~20 ms on 2 cores


def test_phone_region_is_the_numbers_own_country(rules: ContentRules) -> None:
    found = rules.scan("whatsapp me +44 7400 123456 or +91 98765 43210", "t", "default").contacts
    assert {(f.normalized, f.detail.get("region")) for f in found if f.kind == "phone"} == {
        ("+447400123456", "GB"), ("+919876543210", "IN")}


def test_app_name_right_before_a_number_vouches_for_it(rules: ContentRules) -> None:
    # "WhatsApp" is claimed as a handle, and must still count as the number's contact cue
    # (a reserved-range number is only a phone with a cue and a country code).
    found = rules.scan("WhatsApp +44 7700 900461", "t", "default").contacts
    assert sorted(f.kind for f in found) == ["handle", "phone"]


@pytest.mark.parametrize("text", ["|" * 40_000, "i|o" * 13_333, "|oil" * 10_000, "1 " * 20_000,
                                  "." * 40_000, "at " * 13_333, "@" * 40_000, "wa " * 13_333,
                                  "+" * 40_000, "一" * 40_000, "a@b." * 10_000, "dot " * 10_000])
def test_adversarial_text_stays_linear(rules: ContentRules, text: str) -> None:
    """Attacker-chosen text must not trigger regex backtracking (a security bound, not a
    speed figure: the quadratic bug took ~8 s on 40,000 pipes, linear scans take ~0.05 s)."""
    start = time.perf_counter()
    rules.scan(text, "description", "default")
    assert time.perf_counter() - start < 1.5


# ---- URLs: schemes, IP hosts, the Public Suffix List, sentences joined by a period ------

@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        # A scheme (or "www.") makes a URL whatever the host: IPs, unlisted names, digits.
        ("login at http://192.168.10.4:8080/admin now", "192.168.10.4:8080/admin"),
        ("open http://192.168.0.1/a now", "192.168.0.1/a"),
        ("pay at https://[2001:db8::1]:8443/pay", "[2001:db8::1]:8443/pay"),
        ("see http://localhost:3000/x", "localhost:3000/x"),
        ("ftp://files.example.internal/a.zip", "files.example.internal/a.zip"),
        ("hxxp://evil[.]example[.]com/login", "evil.example.com/login"),
        ("ssh://git@github.com/x/y", "github.com/x/y"),
        ("HTTP://WWW.URAWINNER.COM THERE IS A SURPRISE", "urawinner.com"),
        ("visit www.07781482378.com", "07781482378.com"),
        ("http://careers. bloomberg.com", "careers.bloomberg.com"),
        # Without a scheme, an IPv4 address with a port or a path is a link too.
        ("visit 45.12.33.9:8080/pay now", "45.12.33.9:8080/pay"),
    ],
)
def test_a_scheme_or_www_is_always_a_url(rules: ContentRules, text: str, normalized: str) -> None:
    found = rules.scan(text, "description", "default").contacts
    assert [(f.kind, f.normalized) for f in found] == [("url", normalized)]
    assert text[found[0].start:found[0].end] == found[0].matched


def test_ip_hosts_weigh_like_shorteners(rules: ContentRules) -> None:
    [f] = rules.scan("claim at http://45.12.33.9/claim", "t", "default").contacts
    assert f.detail["ip_host"] is True and f.weight == 0.85
    assert f.detail["scheme"] == "http"


def test_junk_glued_after_a_www_host_is_cut_at_the_suffix(rules: ContentRules) -> None:
    text = "TnCs www.Ldew.com1win150ppmx3age16"
    [f] = rules.scan(text, "t", "default").contacts
    assert (f.kind, f.normalized, f.matched) == ("url", "ldew.com", "www.Ldew.com")


@pytest.mark.parametrize("text", ["server 10.0.0.1 is down", "version 1.2.3.4 released",
                                  "ratio 1.2.3.4/5", "www is down"])
def test_bare_ip_without_port_or_path_is_not_a_url(rules: ContentRules, text: str) -> None:
    assert rules.scan(text, "t", "default").contacts == []


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        # TLDs a hand-kept list did not have: the full Public Suffix List does.
        ("T&C at mysite.museum", "mysite.museum"),
        ("see her: www.SMS.ac/u/nat27081980", "sms.ac/u/nat27081980"),
        ("For T&C's visit 80488.biz", "80488.biz"),
        ("pics on foo.blogspot.com", "foo.blogspot.com"),
        ("новый сайт example.xn--p1ai", "example.xn--p1ai"),
        ("cheap at bestdeals.kiwi", "bestdeals.kiwi"),
    ],
)
def test_hosts_use_the_public_suffix_list(rules: ContentRules, text: str, normalized: str) -> None:
    found = rules.scan(text, "t", "default").contacts
    assert [(f.kind, f.normalized) for f in found] == [("url", normalized)]


def test_email_domains_use_the_public_suffix_list(rules: ContentRules) -> None:
    assert [f.normalized for f in rules.scan("mail bob@example.museum", "t", "d").contacts] == [
        "bob@example.museum"]
    assert rules.scan("mail bob@example.notatld", "t", "d").contacts == []


@pytest.mark.parametrize("text", ["see tomorrow.xyzzy", "suffix co.uk only", "price 4.50.biz"])
def test_unlisted_suffixes_are_not_hosts(rules: ContentRules, text: str) -> None:
    assert rules.scan(text, "t", "default").contacts == []


def test_the_suffix_list_is_bundled_and_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from publicsuffixlist import PublicSuffixList

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the public suffix list must not be fetched")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    psl = PublicSuffixList(accept_unknown=False)
    assert psl.publicsuffix("shop.example.co.uk") == "co.uk"
    assert psl.publicsuffix("a.xyzzy", accept_unknown=False) is None


@pytest.mark.parametrize(
    "text",
    [
        "meet tomorrow.Call me", "meet tomorrow.call me", "e.g this", "i.e that", "ok.so what",
        "Sorry.No way", "Moby Pub Quiz.Win a £100 prize", "Ryder unsold.now gibbs",
        "later.CALL ME", "ZOUK FROM PARIS.FREE ROSES", "You go. I.ll stay", "if she.s drinkin",
        "see you at the shop.now", "Great work.Love it", "wat.Now", "tell me.pa",
        "sharing a happy news.By the grace of God", "Take care c u soon.xxx",
    ],
)
def test_sentences_joined_by_a_period_are_not_hosts(rules: ContentRules, text: str) -> None:
    assert rules.scan(text, "t", "default").contacts == []


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        # Word TLDs with a name that looks like a domain: a digit or hyphen, a cue, a subdomain.
        ("Check gr8prizes.win", "gr8prizes.win"),
        ("luxury at best-deals.online", "best-deals.online"),
        ("order at cheapbags.shop today", "cheapbags.shop"),
        ("deals on shop.cheapbags.online", "shop.cheapbags.online"),
        # TLDs that are not words need no more than the list; capitals do not matter.
        ("TnCs Ldew.Com", "ldew.com"), ("go to PocketBabe.co.uk", "pocketbabe.co.uk"),
        ("sent via WAY2SMS.COM", "way2sms.com"), ("example.co.in", "example.co.in"),
    ],
)
def test_hosts_that_look_like_domains_still_count(rules: ContentRules, text: str,
                                                  normalized: str) -> None:
    found = rules.scan(text, "t", "default").contacts
    assert [(f.kind, f.normalized) for f in found] == [("url", normalized)]


def test_word_tlds_come_from_the_word_list() -> None:
    from signals.content_rules import common_words, is_word_tld

    assert {"call", "now", "win", "shop", "free"} <= {t for t in ("call", "now", "win", "shop",
                                                                 "free") if is_word_tld(t)}
    assert not any(is_word_tld(t) for t in ("com", "net", "org", "uk", "xyz", "ly"))
    assert is_word_tld("no") and is_word_tld("so")  # two-letter words are listed by hand
    assert len(common_words()) > 20_000 and "tomorrow" in common_words()


# ---- phones and short codes found on the SMS collection's development half ---------------

@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Call MobileUpd8 08001950382 or Call2OptOut/674", "+448001950382"),  # "8" is the word's
        ("the very latest offers. 08000839402 or call2optout", "+448000839402"),  # not "Rs."
        ("Acme Corp. 0800 169 6031", "+448001696031"),  # "Corp." is not "Rp." (rupiah)
        ("just txt NOKIA to 8007 Get txting", "shortcode:8007"),
        ("TXT: SHOP to 80878. T's&C's", "shortcode:80878"),
        ("Txting GRAVEL to 69888!", "shortcode:69888"),
        ("text GO to: 69988 If u get nothing", "shortcode:69988"),
        ("Txt word: START to No: 81151 & get", "shortcode:81151"),
    ],
)
def test_phone_forms_seen_in_sms(rules: ContentRules, text: str, normalized: str) -> None:
    assert [f.normalized for f in rules.scan(text, "t", "default").contacts] == [normalized]


@pytest.mark.parametrize("text", ["call me at 1230", "Model X200 555 1234 in stock"])
def test_short_numbers_stay_out(rules: ContentRules, text: str) -> None:
    assert rules.scan(text, "t", "default").contacts == []


# ---- the hand-labelled SMS sample (benchmarks/content_rules.py scores its held-out half) --

def test_sms_labels_are_line_numbers_in_two_halves() -> None:
    from benchmarks.content_rules import load_labels

    labels = load_labels()
    assert len(labels) == 1247
    halves = Counter(h for h, _ in labels.values())
    assert halves == {"dev": 624, "heldout": 623}
    assert all(1 <= i <= 5574 for i in labels)
    assert set().union(*(k for _, k in labels.values())) == {"url", "email", "phone", "shortcode"}


def test_sms_labels_match_the_seeded_draw_and_the_dev_half_holds() -> None:
    from benchmarks.content_rules import SMS, _score, draw_sample, load_labels, rule_kinds, sms_rows

    if not SMS.exists():
        pytest.skip(f"{SMS} not present")
    rows = sms_rows()
    labels = load_labels()
    assert {i: h for i, (h, _) in labels.items()} == draw_sample(rows)
    # A regression floor on the development half only (the held-out half is the
    # benchmark's headline and is never used to pick rules).
    ex = ContentRulesExtractor(ContentRulesConfig())
    dev = [(i, k, rule_kinds(ex, i, rows[i - 1][1])) for i, (h, k) in labels.items() if h == "dev"]
    scores = _score(dev)
    assert scores["url"]["f1"] >= 0.97 and scores["phone"]["f1"] >= 0.98, scores
    assert scores["url"]["fp"] == 0


def test_wilson_interval() -> None:
    from benchmarks.content_rules import wilson

    assert wilson(0, 0) is None
    lo, hi = wilson(70, 70) or [0.0, 0.0]
    assert 0.94 < lo < 0.95 and hi == 1.0
    lo, hi = wilson(5, 10) or [0.0, 0.0]
    assert abs(lo - 0.2366) < 1e-3 and abs(hi - 0.7634) < 1e-3
