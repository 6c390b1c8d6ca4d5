"""Unit tests for the obfuscation-undoing normaliser and its offset map."""

from __future__ import annotations

import pytest

from signals.text_normalize import (
    COMBINING,
    HOMOGLYPH,
    INVISIBLE,
    LEET_DIGITS,
    NUMBER_WORDS,
    SPACED,
    STYLIZED,
    leet_pattern,
    normalize,
    normalize_term,
)


@pytest.mark.parametrize(
    ("text", "view", "technique"),
    [
        ("wh\u200bats\u200dapp", "whatsapp", INVISIBLE),
        ("wh\u202eatsapp", "whatsapp", INVISIBLE),
        ("whаtsаpp", "whatsapp", HOMOGLYPH),  # Cyrillic а
        ("τelegram", "telegram", HOMOGLYPH),  # Greek tau
        ("ｗｈａｔｓａｐｐ", "whatsapp", STYLIZED),
        ("𝐰𝐡𝐚𝐭𝐬𝐚𝐩𝐩", "whatsapp", STYLIZED),
        ("ᴡʜᴀᴛsᴀᴘᴘ", "whatsapp", STYLIZED),
        ("w̶h̶a̶t̶s̶", "whats", COMBINING),
        ("w h a t s a p p", "whatsapp", SPACED),
        ("g.m.a.i.l", "gmail", SPACED),
        ("w-h-a-t-s-a-p-p", "whatsapp", SPACED),
        ("zero eight zero three one two three four", "08031234", NUMBER_WORDS),
        ("null eins sieben eins eins zwei drei", "0171123", NUMBER_WORDS),
        ("nove nove oito sete seis cinco quatro", "9987654", NUMBER_WORDS),
        ("nol delapan satu dua tiga empat lima", "0812345", NUMBER_WORDS),
        ("一三八一二三四五六七八", "13812345678", NUMBER_WORDS),
        ("double five two one four three six", "5521436", NUMBER_WORDS),
        ("O8O3-l23-4567", "08031234567", LEET_DIGITS),
    ],
)
def test_disguise_is_undone_and_counted(text: str, view: str, technique: str) -> None:
    nt = normalize(text)
    assert nt.text == view
    assert nt.techniques.get(technique, 0) >= 1, nt.techniques


def test_spaced_letters_keep_a_real_dot() -> None:
    assert normalize("j o h n @ g m a i l . c o m").text == "john @ gmail.com"


@pytest.mark.parametrize(
    "text",
    ["Samsung 55 inch 4K UHD", "iPhone 13 Pro Max 256GB", "Sizes 6 7 8 9 10", "1 2 3 go",
     "S M L XL", "Price $1,299.99", "Größe 42, Maße 120 x 60 cm", "Продаю телефон", "m² ½ ™",
     "👨\u200d👩\u200d👧 family pack ❤\ufe0f"],
)
def test_ordinary_text_is_not_called_disguised(text: str) -> None:
    assert normalize(text).techniques == {}


def test_short_digit_runs_and_number_words_are_left_alone() -> None:
    # Fewer than 7 digits: "two bedrooms" and "1 2 3" are not phone numbers.
    assert normalize("two bedrooms, one bath").text == "two bedrooms, one bath"
    assert normalize("1 2 3 4").text == "1 2 3 4"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("call me: zero eight zero three one two three four five six seven", "08031234567"),
        ("ｊｏｈｎ＠ｇｍａｉｌ．ｃｏｍ", "john@gmail.com"),
        ("x wh\u200bats\u200bapp y", "whatsapp"),
        ("hi w h a t s a p p there", "whatsapp"),
        ("ok ß whаtsapp", "whatsapp"),
    ],
)
def test_offset_map_points_into_the_original(text: str, needle: str) -> None:
    nt = normalize(text)
    i = nt.text.index(needle)
    s, e = nt.span(i, i + len(needle))
    original = text[s:e]
    # The original span starts and ends on the disguised needle, not on its neighbours.
    assert normalize(original).text == needle
    assert len(nt.starts) == len(nt.ends) == len(nt.text)
    assert all(0 <= a < b <= len(text) for a, b in zip(nt.starts, nt.ends, strict=True))


def test_leet_pattern_matches_stand_ins() -> None:
    import re

    pat = re.compile(leet_pattern("viagra"))
    for s in ("viagra", "v1agra", "vi@gra", "v!agr4", "vi.agra", "v*agra"):
        assert pat.fullmatch(s), s
    assert not pat.fullmatch("vitamin")


def test_normalize_term_strips_accents_and_case() -> None:
    assert normalize_term("Cocaína ") == "cocaina"
    assert normalize_term("Fake  ID") == "fake id"


def test_long_text_is_linear() -> None:
    import time

    text = ("Brand new TV 55 inch, SKU 8847-2231-09, price $1,299.99. " * 400)[:20000]
    t0 = time.perf_counter()
    nt = normalize(text)
    assert time.perf_counter() - t0 < 0.5
    assert nt.text == text.lower()
