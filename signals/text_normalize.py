"""Undo the disguises people put on contact details before content rules match them.

:func:`normalize` turns raw listing or review text into a lower-case *view* in which
an obfuscated contact looks like a plain one, and keeps, for every character of the
view, the span of the ORIGINAL text it came from, so evidence always points into
what the seller actually wrote. It also counts the disguises it undid
(``NormalizedText.techniques``), which is what ``content.obfuscation`` scores.

Passes, in order (each keeps the offset map):

1. characters: NFKC (full-width, mathematical and circled letters), diacritics
   stripped, zero-width / bidi / tag characters and combining marks dropped, a
   curated map of Cyrillic, Greek and small-capital look-alikes to Latin, native
   decimal digits to ASCII, case folded;
2. spaced-out letters: ``w h a t s a p p``, ``g.m.a.i.l``, ``0 8 0 3 ...`` collapsed;
3. digits written as words (English, Spanish, Portuguese, French, German, Italian,
   Indonesian, Chinese numerals) and leet digits (``O8O3``) inside long digit runs.

Leetspeak in *letters* (``wh4tsapp``, ``v1agra``) is not rewritten here, because
``1`` may stand for ``i`` or ``l``: :func:`leet_pattern` builds patterns whose
letters accept their leet stand-ins instead.

Plain ASCII text takes a fast path (no per-character Python loop in pass 1).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

# Techniques reported by the normaliser (content_rules adds its own on top).
INVISIBLE = "invisible_chars"
HOMOGLYPH = "homoglyphs"
STYLIZED = "stylized_letters"
COMBINING = "combining_marks"
SPACED = "spaced_letters"
NUMBER_WORDS = "digits_as_words"
LEET_DIGITS = "leet_digits"

# Zero-width, bidi controls, soft hyphen, word joiners, tag characters, fillers.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0x1D173, 0x1D17A), (0xE0000, 0xE007F),
)
# Code points whose NFKC form is a plain letter or digit used as a disguise (full-width,
# mathematical alphanumerics, circled/parenthesised/squared letters). Superscripts and
# fractions are left out on purpose: "m²" and "½" are ordinary in listings.
_STYLIZED_RANGES = (
    (0xFF01, 0xFF5E), (0x1D400, 0x1D7FF), (0x2460, 0x24FF), (0x1F100, 0x1F1FF),
)

# Look-alikes that NFKC leaves alone. Curated (not exhaustive): the letters that
# actually show up in spoofed brand and app names.
_CONFUSABLES: dict[str, str] = {
    # Cyrillic (lower case; input is case-folded first).
    "а": "a", "в": "b", "е": "e", "ё": "e", "з": "3", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s",
    "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ѡ": "w",
    "ɡ": "g", "ӏ": "l", "ո": "n", "ս": "u", "ց": "g", "օ": "o", "п": "n", "г": "r",
    # Greek.
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j",
    "ζ": "z", "μ": "u",
    # Latin look-alikes and small capitals.
    "ı": "i", "ɑ": "a", "ɩ": "i", "ʟ": "l", "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d",
    "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ᴋ": "k", "ᴍ": "m",
    "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v",
    "ᴡ": "w", "ʏ": "y", "ᴢ": "z", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "ß": "ss",
    "æ": "ae", "œ": "oe", "þ": "p",
    # Punctuation people use instead of "." and "@" and "-".
    "。": ".", "｡": ".", "․": ".", "·": ".", "‧": ".", "﹒": ".", "＠": "@", "﹫": "@",
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-",
    "’": "'", "‘": "'", "ʼ": "'",
}
_SMALL_CAPS = set("ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ")
_PUNCT_CONFUSABLES = set("。｡․·‧﹒＠﹫‐‑‒–—―−’‘ʼ")

# Kinds of a character's mapping (pass 1).
_K_PLAIN, _K_INVISIBLE, _K_CONFUSABLE, _K_STYLIZED, _K_COMBINING = 0, 1, 2, 3, 4


def _in_ranges(cp: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


@lru_cache(maxsize=65536)
def _map_char(ch: str) -> tuple[str, int]:
    """What one non-ASCII character becomes in the view, and what kind of mapping it was."""
    cp = ord(ch)
    if _in_ranges(cp, _INVISIBLE_RANGES) or unicodedata.category(ch) == "Cf":
        return "", _K_INVISIBLE
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return "", _K_COMBINING
    kind = _K_STYLIZED if _in_ranges(cp, _STYLIZED_RANGES) else _K_PLAIN
    out = unicodedata.normalize("NFKC", ch).casefold()
    # Strip diacritics from Latin/Greek/Cyrillic only: NFD would break Hangul syllables.
    if out and ord(out[0]) < 0x0530:
        out = "".join(c for c in unicodedata.normalize("NFD", out) if not unicodedata.combining(c))
    mapped = "".join(_CONFUSABLES.get(c, c) for c in out)
    if mapped != out and kind == _K_PLAIN:
        kind = _K_STYLIZED if ch in _SMALL_CAPS else (
            _K_PLAIN if ch in _PUNCT_CONFUSABLES else _K_CONFUSABLE)
    out = mapped
    if len(out) == 1 and not out.isascii():
        dec = unicodedata.decimal(out, None)
        if dec is not None:  # Arabic-Indic, Devanagari... digits are native, not a disguise
            out = str(dec)
    return out, kind


@dataclass
class NormalizedText:
    """A normalised view of ``original`` with a per-character map back into it.

    ``starts[i]``/``ends[i]`` give the original span that view character ``i`` came
    from. ``techniques`` counts the disguises undone; ``technique_spans`` keeps a few
    original spans per technique as evidence.
    """

    original: str
    text: str
    starts: list[int]
    ends: list[int]
    techniques: dict[str, int] = field(default_factory=dict)
    technique_spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of view span ``[start, end)``."""
        if end <= start:
            pos = self.starts[start] if start < len(self.starts) else len(self.original)
            return pos, pos
        return self.starts[start], self.ends[end - 1]

    def original_slice(self, start: int, end: int) -> str:
        s, e = self.span(start, end)
        return self.original[s:e]

    def add_technique(self, name: str, span: tuple[int, int], count: int = 1) -> None:
        self.techniques[name] = self.techniques.get(name, 0) + count
        spans = self.technique_spans.setdefault(name, [])
        if len(spans) < 5:  # a few examples are evidence enough
            spans.append(span)


# A view edit: replace view[start:end] by pieces, each piece a string and the view span it
# came from (so each output character keeps a precise original span).
_Piece = tuple[str, int, int]
_Edit = tuple[int, int, list[_Piece]]


def _apply_edits(nt: NormalizedText, edits: list[_Edit]) -> None:
    """Rewrite the view in place with non-overlapping, sorted edits; linear in the text."""
    if not edits:
        return
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    prev = 0
    for s, e, pieces in edits:
        parts.append(nt.text[prev:s])
        starts.extend(nt.starts[prev:s])
        ends.extend(nt.ends[prev:s])
        for text, ps, pe in pieces:
            o_s, o_e = nt.starts[ps], nt.ends[pe - 1]
            parts.append(text)
            starts.extend([o_s] * len(text))
            ends.extend([o_e] * len(text))
        prev = e
    parts.append(nt.text[prev:])
    starts.extend(nt.starts[prev:])
    ends.extend(nt.ends[prev:])
    nt.text = "".join(parts)
    nt.starts = starts
    nt.ends = ends


# ---- pass 1: characters -------------------------------------------------------------

def _char_pass(text: str) -> NormalizedText:
    if text.isascii():
        n = len(text)
        return NormalizedText(text, text.lower(), list(range(n)), list(range(1, n + 1)))
    nt = NormalizedText(text, "", [], [])
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch.isascii():
            parts.append(ch.lower())
            starts.append(i)
            ends.append(i + 1)
            continue
        out, kind = _map_char(ch)
        if kind == _K_INVISIBLE:
            # Only between letters or digits is it a disguise (ZWJ in emoji, VS16 are not).
            if (i > 0 and text[i - 1].isalnum()) or (i + 1 < n and text[i + 1].isalnum()):
                nt.add_technique(INVISIBLE, (i, i + 1))
        elif kind == _K_COMBINING:
            if i > 0 and text[i - 1].isascii() and text[i - 1].isalpha():
                nt.add_technique(COMBINING, (i - 1, i + 1))
        elif kind == _K_CONFUSABLE:
            # A look-alike next to a Latin letter is spoofing; inside Cyrillic or Greek
            # words it is just the language.
            if _latin_neighbour(text, i):
                nt.add_technique(HOMOGLYPH, (i, i + 1))
        elif kind == _K_STYLIZED:
            nt.add_technique(STYLIZED, (i, i + 1))
        if out:
            parts.append(out)
            starts.extend([i] * len(out))
            ends.extend([i + 1] * len(out))
    nt.text = "".join(parts)
    nt.starts = starts
    nt.ends = ends
    return nt


def _latin_neighbour(text: str, i: int) -> bool:
    return any(0 <= j < len(text) and text[j].isascii() and text[j].isalpha()
               for j in (i - 1, i + 1))


# ---- pass 2: spaced-out letters -----------------------------------------------------

_SEP_CHARS = r" \t.\-_*•|/+~'"
# Three or more single letters/digits, each standing alone between separators.
_SPACED_RUN = re.compile(
    rf"(?<![^\W_])[^\W_](?:[{_SEP_CHARS}]{{1,3}}[^\W_](?![^\W_])){{2,}}")
_ALNUM = re.compile(r"[^\W_]")
_SEP_RUN = re.compile(rf"[{_SEP_CHARS}]+")


def _spaced_pass(nt: NormalizedText) -> None:
    edits: list[_Edit] = []
    for m in _SPACED_RUN.finditer(nt.text):
        chars = [(c.start() + m.start(), c.group()) for c in _ALNUM.finditer(m.group())]
        letters = sum(1 for _, c in chars if not c.isdigit())
        if letters == 0 and len(chars) < 7:
            continue  # "1 2 3" and "2 x 4" stay as they are; only phone-long digit runs merge
        seps = [s.group() for s in _SEP_RUN.finditer(m.group())]
        dominant = max(set(seps), key=seps.count)
        pieces: list[_Piece] = []
        for k, (pos, c) in enumerate(chars):
            if k > 0 and seps[k - 1] != dominant and "." in seps[k - 1] and "." not in dominant:
                # "g m a i l . c o m": the odd separator out is a real dot.
                pieces.append((".", pos - 1, pos))
            pieces.append((c, pos, pos + 1))
        edits.append((m.start(), m.end(), pieces))
        if letters >= 4 or len(chars) >= 7:
            nt.add_technique(SPACED, nt.span(m.start(), m.end()))
    _apply_edits(nt, edits)


# ---- pass 3: digits as words, leet digits -------------------------------------------

_WORD_DIGITS: dict[str, str] = {}
for _digit, _words in enumerate((
    "zero oh o cero nol kosong null zéro",  # "o"/"oh" only ever count inside long digit runs
    "one uno una um uma un une eins satu",
    "two dos dois duas deux zwei zwo due dua",
    "three tres três trois drei tre tiga",
    "four cuatro quatro quatre vier quattro empat",
    "five cinco cinq funf fünf cinque lima",
    "six seis sechs sei enam meia",  # "meia" (meia-dúzia) is 6 when Brazilians read numbers
    "seven siete sete sept sieben sette tujuh",
    "eight ocho oito huit acht otto delapan",
    "nine nueve nove neuf neun sembilan",
)):
    for _w in _words.split():
        _WORD_DIGITS[unicodedata.normalize("NFD", _w).encode("ascii", "ignore").decode()] = str(
            _digit)
for _digit, _chars in enumerate(("零〇", "一幺", "二两", "三", "四", "五", "六", "七", "八", "九")):
    for _c in _chars:
        _WORD_DIGITS[_c] = str(_digit)
_REPEATERS = {"double": 2, "triple": 3}

_WORD_ALT = "|".join(sorted((re.escape(w) for w in (*_WORD_DIGITS, *_REPEATERS)),
                            key=len, reverse=True))
# Atomic groups and possessive separators keep this linear on long digit strings.
# A run may only start where no letter, digit or "|" precedes it: "|" is a leet "1", and
# without it in the look-behind every position of a long "||||..." would be a start,
# each scanning to the end (quadratic: 2 s for 20,000 pipes).
_NUM_TOKEN = rf"(?>[oil|]*+\d[\doil|]*+|(?:{_WORD_ALT})(?![a-z]))"
_NUM_RUN = re.compile(
    rf"(?<![a-z0-9|])(?:(?:\+|plus)[\s\-]*+)?{_NUM_TOKEN}(?:[\s,\-./()]*+{_NUM_TOKEN})+(?![a-z0-9])")
_NUM_TOKEN_RE = re.compile(_NUM_TOKEN)
_HAS_LETTER = re.compile(r"[^\W\d_]|\|")
_LEET_DIGIT = {"o": "0", "i": "1", "l": "1", "|": "1"}


def _number_pass(nt: NormalizedText) -> None:
    edits: list[_Edit] = []
    text = nt.text
    for m in _NUM_RUN.finditer(text):
        if not _HAS_LETTER.search(m.group()):
            continue  # plain digits and separators: nothing to rewrite (the common case)
        pieces: list[_Piece] = []
        words = leet = 0
        repeat = 1
        body_start = m.start()
        if text.startswith("+", m.start()) or text.startswith("plus", m.start()):
            plus_len = 1 if text[m.start()] == "+" else 4
            pieces.append(("+", m.start(), m.start() + plus_len))
            body_start = m.start() + plus_len
        for t in _NUM_TOKEN_RE.finditer(text, body_start, m.end()):
            tok = t.group()
            if tok in _REPEATERS:
                repeat = _REPEATERS[tok]
                words += 1
                continue
            if tok in _WORD_DIGITS:
                pieces.append((_WORD_DIGITS[tok] * repeat, t.start(), t.end()))
                words += 1
            else:
                for k, c in enumerate(tok):
                    if c in _LEET_DIGIT:
                        leet += 1
                        c = _LEET_DIGIT[c]
                    pieces.append((c * (repeat if k == 0 else 1), t.start() + k, t.start() + k + 1))
            repeat = 1
        digits = sum(len(p[0]) for p in pieces if p[0] != "+")
        if digits < 7 or not (words or leet):
            continue  # an ordinary number, or too short to be a phone: leave it alone
        if leet and not words and (digits < 10 or (digits - leet) * 2 < leet * 3):
            continue  # "i7-12700h" is a CPU: leet digits only count in phone-long runs
        edits.append((m.start(), m.end(), pieces))
        span = nt.span(m.start(), m.end())
        if words:
            nt.add_technique(NUMBER_WORDS, span, words)
        if leet:
            nt.add_technique(LEET_DIGITS, span, leet)
    _apply_edits(nt, edits)


def normalize(text: str) -> NormalizedText:
    """The normalised, lower-case view of ``text`` with its offset map and techniques."""
    nt = _char_pass(text)
    _spaced_pass(nt)
    _number_pass(nt)
    return nt


# ---- leet-tolerant patterns for words -----------------------------------------------

_LEET_CLASS: dict[str, str] = {
    "a": "a4@", "b": "b8", "e": "e3", "g": "g9", "i": "i1l!|", "l": "l1i|", "o": "o0",
    "s": "s5$z", "t": "t7+", "z": "z2",
}
_VOWELS = set("aeiou")


def leet_pattern(term: str, inner_sep: str = r"[.\-_*'~]?") -> str:
    """A regex for ``term`` (already normalised) whose letters accept leet stand-ins.

    Between letters an optional single punctuation mark is allowed (``v.i.a.g.r.a``
    is collapsed earlier, ``vi.agra`` is caught here); a ``*`` may also stand for a
    vowel (``c*caine``). Spaces in the term match any run of spaces or separators.
    """
    out: list[str] = []
    prev_alnum = False
    for ch in term:
        if ch.isspace():
            out.append(r"[\s\-_.]+")
            prev_alnum = False
            continue
        cls = _LEET_CLASS.get(ch, ch)
        if ch in _VOWELS:
            cls += "*"
        piece = f"[{re.escape(cls)}]" if len(cls) > 1 else re.escape(ch)
        if prev_alnum and ch.isalnum() and ch.isascii():
            out.append(inner_sep)
        out.append(piece)
        prev_alnum = ch.isalnum() and ch.isascii()
    return "".join(out)


def normalize_term(term: str) -> str:
    """A configured term in the same form as the view (so "cocaína" matches "cocaina")."""
    return " ".join(normalize(term).text.split())
