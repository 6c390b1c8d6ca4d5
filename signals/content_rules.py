"""Content rules: off-platform contact details, obfuscation, and prohibited terms.

:class:`ContentRules` scans one text field; :class:`ContentRulesExtractor` runs it over
listings (title, description) and reviews (text) and emits, for every item, the three
catalogue signals, with value 0 when nothing is found so the decision layer knows the
check ran:

- ``content.offplatform_contact``: distinct phone numbers, emails, URLs and
  messaging-app handles; evidence names each one's kind and its span in the ORIGINAL
  field text.
- ``content.obfuscation``: how disguised the text is (0..1), with the techniques found.
- ``content.prohibited_terms``: distinct terms from the tenant's list (plus ``"*"``).

Everything matches on the normalised view of :mod:`signals.text_normalize`. Precision
matters as much as recall, so numbers must look like phones in context (see
``_phones``), and app names need a handle, a number or a contact cue next to them unless
they are disguised. A link with a scheme or "www." is always a URL (IP hosts included);
a bare host needs a suffix on the Public Suffix List bundled in ``publicsuffixlist`` (never
fetched) and must not read as two sentences joined by a period (``_bare_host_ok``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any, ClassVar, Literal

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher
from publicsuffixlist import PublicSuffixList

from signals.config import ContentRulesConfig
from signals.extractor import Extractor, ItemResult
from signals.schemas import Listing, Review
from signals.text_normalize import (
    COMBINING,
    HOMOGLYPH,
    INVISIBLE,
    LEET_DIGITS,
    NUMBER_WORDS,
    SPACED,
    STYLIZED,
    NormalizedText,
    leet_pattern,
    normalize,
    normalize_term,
)

ContactKind = Literal["phone", "email", "url", "handle"]


def _words(text: str) -> frozenset[str]:
    """A set from a whitespace-separated word list (long lists read better this way)."""
    return frozenset(text.split())


# Techniques found while matching (on top of the normaliser's).
LEETSPEAK = "leetspeak"
SPELLED_SYMBOLS = "spelled_symbols"  # "at", "dot", "[at]", "(dot)"
SPLIT_NAME = "split_name"  # "whats app", "tele gram", "w/app"
VARIANT_SPELLING = "variant_spelling"  # "watsap", "wasap"

# Weight of each technique in content.obfuscation (combined as 1 - prod(1 - w)).
TECHNIQUE_WEIGHTS: dict[str, float] = {
    INVISIBLE: 0.6, HOMOGLYPH: 0.6, STYLIZED: 0.35, COMBINING: 0.4, SPACED: 0.35,
    NUMBER_WORDS: 0.5, LEET_DIGITS: 0.4, LEETSPEAK: 0.45, SPELLED_SYMBOLS: 0.45,
    SPLIT_NAME: 0.2, VARIANT_SPELLING: 0.2,
}
# A few stray stylised letters or combining marks are decoration, not disguise.
_MIN_COUNT = {STYLIZED: 2, COMBINING: 3}

# ---- domains --------------------------------------------------------------------------

# Hosts are judged with the Public Suffix List bundled in the ``publicsuffixlist`` wheel
# (MPL-2.0; the list's date is the package version's suffix): nothing is fetched. A bare
# "name.tld" counts when its suffix is on the list, unless it reads as words (see
# ``ContentRules._bare_host_ok``).
#
# TLDs that are also short words or file extensions ("condition.no scratches", "readme.md",
# "ok.so", "tell me pa"): a bare mention needs a path, a scheme, "www" or a second-level
# label (co.in) to count.
_WEAK_TLDS = _words("""
in it is at to me us my no be so do go am co id tv im ai md pl sh fm as la pa hm mo ma pm ps
ms st cd cu mt re tc gd nu hr km cm mm py rs zip mov by ad ye
""")
# TLDs of three letters or more that are words ("tomorrow.call me", "Quiz.Win a prize") are
# found by looking them up in the common-word list; these few are domains first.
_DOMAIN_FIRST_TLDS = _words("com net org edu gov mil int info biz")
_SECOND_LEVEL = _words("co com org net gov ac edu or ne")
_SHORTENERS = _words("""
bit.ly bitly.com tinyurl.com goo.gl t.co ow.ly is.gd buff.ly rebrand.ly cutt.ly shorturl.at
rb.gy tiny.cc lnkd.in s.id bit.do v.gd t.ly shorte.st adf.ly linktr.ee wa.link linkin.bio
bio.link tiny.one qr.ae u.to
""")
# Link forms of messaging apps: reported as handles of that app.
_MESSAGING_DOMAINS: dict[str, str] = {
    "wa.me": "whatsapp", "whatsapp.com": "whatsapp", "wa.link": "whatsapp",
    "t.me": "telegram", "telegram.me": "telegram", "telegram.org": "telegram",
    "m.me": "messenger", "messenger.com": "messenger", "line.me": "line",
    "u.wechat.com": "wechat", "weixin.qq.com": "wechat", "snapchat.com": "snapchat",
    "instagram.com": "instagram", "instagr.am": "instagram", "kik.me": "kik",
    "viber.com": "viber", "signal.me": "signal", "discord.gg": "discord",
    "discord.com": "discord", "zalo.me": "zalo", "open.kakao.com": "kakaotalk",
}
_EMAIL_PROVIDERS = _words("""
gmail googlemail yahoo ymail hotmail outlook live msn icloud me proton protonmail aol gmx web
yandex mail qq 163 126 rediffmail zoho tutanota orange free laposte wanadoo sfr libero uol
bol terra t-online freenet naver daum
""")
# Providers whose bare name after a spelled "at" is an address ("rahul at gmail"); "me",
# "live", "web", "mail" are left out: "laughing at me" is not an email.
_BARE_PROVIDERS = _words(
    "gmail googlemail yahoo ymail hotmail outlook icloud protonmail aol gmx yandex rediffmail")

# "polka dot com...": a spelled dot after these words is not a domain.
_STOPWORDS = _words("polka a the my our your this that no one some any")

_LABEL = r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?"
_DOT_WORDS = r"(?:dot|punto|ponto|point|punkt|titik)"
_DOT = rf"(?:\.|\s*[\[\(\{{<]\s*(?:{_DOT_WORDS}|\.)\s*[\]\)\}}>]\s*|\s+{_DOT_WORDS}\s+)"
# Inside an email domain a spaced dot ("outlook . com") is safe to accept.
_EDOT = rf"(?:\s?\.\s?|\s*[\[\(\{{<]\s*(?:{_DOT_WORDS}|\.)\s*[\]\)\}}>]\s*|\s+{_DOT_WORDS}\s+)"
_AT = r"(?:\s?@\s?|\s*[\[\(\{<]\s*(?:at|arroba|arobase)\s*[\]\)\}>]\s*|\s+(?:at|arroba|arobase)\s+)"
_SPELLED = re.compile(rf"[\[\(\{{<]|\s(?:at|arroba|arobase|{_DOT_WORDS})\s")

_EMAIL = re.compile(
    rf"(?<![a-z0-9._%+\-])(?P<local>[a-z0-9][a-z0-9._%+\-]{{0,63}})(?P<at>{_AT})"
    rf"(?P<domain>(?:{_LABEL}{_EDOT}){{0,4}}{_LABEL})(?![a-z0-9\-])")
# Schemes that name a host: a URL with one of these (or "www.") is always a URL, whatever
# its host (an IP address, a TLD not on the list, "localhost"). Defanged spellings too.
_SCHEMES = r"(?:https?|hxxps?|h\*\*ps?|ftps?|sftp|wss?|rtsps?|ssh|telnet|git|svn|smb|nntp|irc|ldaps?|rsync)"
_EXPLICIT_URL = re.compile(
    rf"(?<![a-z0-9@.\-_])(?:(?P<scheme>{_SCHEMES}\s?(?::\s?//|//|:/)\s?)"
    r"(?P<user>[a-z0-9._~%!$&'*+,;=\-]{1,64}(?::[^\s@/]{0,64})?@)?"
    rf"(?P<www>www{_DOT})?|(?P<www2>www{_DOT}))"
    rf"(?P<host>\[[0-9a-f:.]{{2,45}}\]|(?:{_LABEL}{_DOT}){{0,8}}{_LABEL})"
    r"(?P<port>:\d{1,5}(?!\d))?(?P<path>[/?#][^\s<>\"']*)?")
# "http://careers. bloomberg.com": a space after a dot inside a host, seen in pasted links.
_HOST_CONTINUED = re.compile(
    rf"\.\s(?P<host>(?:{_LABEL}\.){{1,8}}{_LABEL})(?![a-z0-9\-])(?P<path>[/?#][^\s<>\"']*)?")
_URL = re.compile(
    rf"(?<![a-z0-9@.\-_])(?P<host>(?:{_LABEL}{_DOT}){{1,5}}(?:[a-z]{{2,24}}|xn--[a-z0-9\-]{{1,59}}))"
    r"(?![a-z0-9\-])(?P<path>(?::\d{2,5})?/[^\s<>\"'()]*)?")
# "45.12.33.9:8080/login": an IPv4 address with a port or a path is a link without a scheme.
_BARE_IP_URL = re.compile(
    r"(?<![\w.:/\-])(?P<host>\d{1,3}(?:\.\d{1,3}){3})(?P<port>:\d{1,5})?"
    r"(?P<path>/[^\s<>\"']*)?(?![\w.:])")
# Words right before a bare host that present it as a place to go ("visit", "at", "log onto").
_URL_CUE = re.compile(
    r"(?<![a-z])(?:visit|go\s*(?:to|2)|goto|log\s*on\s*to|log\s*onto|logon|login|see|at|on|via|"
    r"from|site|website|web|page|link|click|browse|check\s+out|url|order|buy|shop|available)"
    r"\s*[:\-]?\s*$")
# "bit ly/xyz": a shortener with a space for the dot.
_SPACED_SHORTENER = re.compile(
    r"(?<![a-z0-9])(?P<host>bit|cutt|ow|buff|rebrand|tinyurl)\s+(?P<tld>ly|com)"
    r"(?P<path>\s*/\s*[a-z0-9_\-]+)?(?![a-z0-9])")
_HANDLE = re.compile(r"(?<![a-z0-9._%+\-@])@(?P<name>[a-z_][a-z0-9_.]{2,29})(?<!\.)(?![a-z0-9_@])")
_SEPARATORS = re.compile(r"[\s.\-_*/'~]")

# ---- messaging apps -------------------------------------------------------------------

_APP_SEP = r"[\s.\-_*/']{0,2}"


@dataclass(frozen=True)
class AppSpec:
    """A messaging app: spellings, and whether its bare name is also an ordinary word."""

    app: str
    canonical: tuple[str, ...]  # plain spellings (no variant-spelling technique)
    variants: tuple[str, ...] = ()  # evasive spellings; "~" marks an optional separator
    ambiguous: bool = False  # "line", "signal", "snap": counts only with a handle or a cue
    cjk: tuple[str, ...] = ()  # matched without word boundaries


APPS: tuple[AppSpec, ...] = (
    AppSpec("whatsapp", ("whats~app",),
            ("whats~ap", "what~app", "wats~app", "wats~ap", "watts~app", "wasap", "wassap",
             "guasap", "whatapp", "whtsapp", "whtsap", "w/app", "w/ap", "w.app", "zapzap",
             "watsapp", "whatsaap", "wazap")),
    AppSpec("telegram", ("tele~gram",), ("telegrm", "telegramm", "tlgrm", "telgram")),
    AppSpec("wechat", ("we~chat", "weixin"), (), cjk=("微信", "威信", "薇信", "v信", "徽信", "加v")),
    AppSpec("viber", ("viber",)),
    AppSpec("kik", ("kik",), ("kik~messenger",)),
    AppSpec("snapchat", ("snap~chat",), ("snapchap", "snapcht")),
    AppSpec("instagram", ("insta~gram",), ("instagrm", "insta~g")),
    AppSpec("messenger", ("fb~messenger", "facebook~messenger"), ()),
    AppSpec("skype", ("skype",)),
    AppSpec("discord", ("discord",)),
    AppSpec("zalo", ("zalo",)),
    AppSpec("kakaotalk", ("kakao~talk",), ()),
    AppSpec("threema", ("threema",)),
    AppSpec("wickr", ("wickr",)),
    AppSpec("line", ("line",), ("line~id", "line~app"), ambiguous=True, cjk=("ライン", "ไลน์")),
    AppSpec("signal", ("signal",), (), ambiguous=True),
    AppSpec("instagram", ("insta", "ig"), (), ambiguous=True),
    AppSpec("snapchat", ("snap", "sc"), (), ambiguous=True),
    AppSpec("messenger", ("messenger",), (), ambiguous=True),
    AppSpec("telegram", ("tg", "tgm"), (), ambiguous=True),
    AppSpec("whatsapp", ("wa", "zap", "whats", "wpp", "wsp"), (), ambiguous=True),
    AppSpec("wechat", ("wx", "vx"), (), ambiguous=True),
)

# Verbs and phrases of getting in touch, in the languages of the test set (accents are
# stripped by the normaliser). App names are NOT cues for other app names: "WhatsApp,
# Instagram work fine" on a phone listing is a feature list, not a contact.
_CONTACT_CUE = (
    r"(?<![a-z])(?:call|calls|text|texts|txt|msg|message|messages|dm|pm|inbox|contact|reach|"
    r"ping|hmu|hit\s+me|add\s+me|find\s+me|follow\s+me|talk\s+to\s+me|chat\s+with\s+me|"
    r"ring\s+me|me\s+on|us\s+on|only\s+on|on\s+my|my|via|thru|through|whatsapp\s+me|"
    r"llama|llamame|llamanos|escribeme|escribenos|contactame|contactanos|mandame|hablame|"
    r"por|al|mi|ligue|liga|ligar|me\s+chama|chama|fala\s+comigo|manda|contato|contate|meu|"
    r"pelo|no|appelez|appelle|ecrivez|ecris|contactez|joindre|sur|mon|par|schreib|schreiben|"
    r"schreibt|melde|meld|ruf|anrufen|kontakt|kontaktiere|uber|per|auf|hubungi|kontak|"
    r"hubungin|langsung|aja|ke)(?![a-z])|联系|加我|加")
_CONTACT_CUE_RE = re.compile(_CONTACT_CUE)
# Stricter cue for ambiguous names ("line", "signal", "snap"): right before the name.
_STRICT_CUE_RE = re.compile(
    r"(?:(?:add|message|msg|dm|text|txt|contact|find|reach|hit|follow|ping|hmu|call|chat\s+with)"
    r"\s+(?:me|us)(?:\s+up)?\s+(?:on|at|via|in|thru)\s+(?:my\s+)?|(?:me|us)\s+(?:on|via)\s+|"
    r"(?:chama|fala|manda|me\s+chama)\s+(?:no|pelo)\s+|(?:pelo|meu|no)\s+|my\s+|mi\s+|"
    r"(?:hubungi|kontak)\s+(?:via|lewat|di)?\s*)$")
# An identifier right after an app name: "whatsapp: +234...", "tg @name", "line id: abc".
_APP_ID_RE = re.compile(
    r"\s*(?:(?:id|handle|username|user|name|no|number|nr)\s*)?(?:[:=\-]|is)?\s*"
    r"(?:(?P<at>@[a-z0-9_.]{3,32}(?<!\.))|(?P<num>\+?\d[\d\s\-.()]{6,}\d)|"
    r"(?<=[:=])\s*(?P<word>[a-z0-9_.]{3,32}(?<!\.)))")

# Words that, right before a number, make it a product code rather than a phone.
_PRODUCT_CONTEXT = re.compile(
    r"(?<![a-z])(?:sku|lot|ref|reference|model|mod|part|p/?n|mpn|serial|s/?n|isbn(?:-?1[03])?|"
    r"issn|upc|ean|gtin|asin|item|order|invoice|receipt|tracking|track|awb|imei|vin|batch|"
    r"art|article|catalog|cat|reg|patent|barcode|style|version|firmware|build|code|edition|"
    r"seq|case|ticket|account|acct|iban|swift|zip|postcode|pin|otp|artikelnummer|artikelnr|"
    r"bestellnummer|modellnummer|seriennummer|referencia|codigo|numero\s+de\s+serie|"
    r"stock\s+code|product\s+code|cat\.?\s*no|dhl|ups|usps|fedex|tnt|dpd|gls|hermes|"
    r"royal\s+mail|parcelforce|correos|sedex|jne|j&t|sf\s+express)\.?\s*(?:no\.?|nr\.?|"
    r"number|num)?\s*[#:.\-]?\s*$")
# Cues for numbers: contact verbs and phone words, but not bare prepositions ("ship via
# DHL 1234567890", "on my", "al"), which vouch for an app name but not for a number.
_PHONE_CUE_RE = re.compile(
    r"(?<![a-z])(?:call|calls|text|texts|txt|msg|message|dm|pm|inbox|contact|reach|ping|hmu|"
    r"hit\s+me|ring\s+me|me\s+on|us\s+on|llama|llamame|llamanos|escribeme|contactame|mandame|"
    r"hablame|ligue|liga|ligar|me\s+chama|chama|fala\s+comigo|contato|contate|appelez|appelle|"
    r"contactez|joindre|schreib|melde|meld|ruf|anrufen|kontakt|hubungi|kontak|hubungin)(?![a-z])"
    r"|(?<![a-z])(?:phone|ph|tel|tele|telp|tlf|telefon|telefone|telefono|"
    r"mob|mobile|cell|celular|cel|handy|portable|hp|wa|whatsapp|whats|zap|telegram|viber|"
    r"signal|sms|number|num|no|nr|numero|nomor|ring|dial)(?![a-z])|电话|手机|微信|联系|加我")
_UNIT_AFTER = re.compile(
    r"\s*(?:mm|cm|m|km|in|inch|inches|\"|ft|gb|tb|mb|kb|mah|wh|w|kw|v|hz|khz|mhz|ghz|kg|g|"
    r"lb|lbs|oz|ml|l|pcs|pc|px|mp|rpm|psi|btu|%|k|mi|miles|sq|yards|yd)(?![a-z])")
# "(?<![a-z])": "offers. 0800..." and "Corp. 0800..." do not end in "Rs." or "Rp.".
_CURRENCY_BEFORE = re.compile(
    r"(?:[$€£¥₹₦]|(?<![a-z])(?:rs\.?|usd|eur|gbp|inr|ngn|r\$|kes|idr|rp\.?))\s*$")
_DATE_LIKE = re.compile(
    r"^(?:\d{1,4}[./\-]\d{1,2}[./\-]\d{1,4}|(?:19|20)\d\d\s*[-/]\s*(?:19|20)\d\d|"
    r"\d{1,3}(?:\.\d{1,3}){3}|(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))$")
# "txt WIN to 87121": premium SMS short codes are a phone contact too (kind "phone").
# Also "TXT: SHOP to 80878", "Txting GRAVEL to 69888", "text GO to: 69988", "to No: 83355";
# four-digit codes ("txt NOKIA to 8007") only after "to" ("call me at 1230" is a time).
_SHORTCODE = re.compile(
    r"(?<![a-z])(?:txt|text|txting|texting|sms|send|reply|rply|call|ring|dial):?"
    r"(?:\s+[^\s\d]\S*){0,4}?\s+"
    r"(?:(?:on|at|number:?)\s+(?P<code>\d{5,6})|to\s*(?:no\s*)?:?\s*(?P<code4>\d{4,6}))(?![\d])")
_PHONE_RUN = re.compile(r"(?<![\d+])(?:\+|00)?\(?\d[\d \t\-./()]*\d\)?")
_DIGIT = re.compile(r"\d")
_GLUED_HEAD = re.compile(r"\d{1,4}[ \t]+(?=\d)")


@dataclass(frozen=True)
class Finding:
    """One off-platform contact found in one field."""

    kind: ContactKind
    field: str
    start: int  # span in the ORIGINAL field text
    end: int
    matched: str  # the original text of the span
    normalized: str  # canonical form: E.164, lower-case email/host, "whatsapp:@name"
    weight: float  # how strongly it alone means off-platform contact (0..1)
    techniques: tuple[str, ...] = ()
    # dataclass_field: the name ``field`` is this class's attribute above.
    detail: dict[str, Any] = dataclass_field(default_factory=dict)

    def to_evidence(self) -> dict[str, Any]:
        return {"kind": self.kind, "field": self.field, "start": self.start, "end": self.end,
                "matched": self.matched, "normalized": self.normalized,
                **({"techniques": list(self.techniques)} if self.techniques else {}),
                **self.detail}


@dataclass(frozen=True)
class TermHit:
    """One occurrence of a prohibited term."""

    term: str
    field: str
    start: int
    end: int
    matched: str
    techniques: tuple[str, ...] = ()


@dataclass
class FieldScan:
    """Everything found in one field of one item."""

    field: str
    contacts: list[Finding]
    terms: list[TermHit]
    techniques: dict[str, int]
    technique_spans: dict[str, list[tuple[int, int]]]
    # Original spans of contacts and terms: a disguise on one of them weighs fully.
    target_spans: list[tuple[int, int]]


def _app_regex(spellings: Sequence[str]) -> str:
    alts = []
    for sp in spellings:
        alts.append(_APP_SEP.join(leet_pattern(part) for part in sp.split("~")))
    return "|".join(sorted(alts, key=len, reverse=True))


def _compile_apps(extra: Sequence[str]) -> tuple[re.Pattern[str], list[AppSpec],
                                                 list[re.Pattern[str]]]:
    """One alternation for every app (one pass over the text, not one per app).

    Group ``a{i}v`` is spec ``i``'s evasive spellings, ``a{i}c`` its plain ones, ``a{i}j``
    its CJK names. Specs are in priority order: at one position the first that matches
    wins, so "instagram" is read before the ambiguous "insta".
    """
    specs = list(APPS) + [AppSpec(normalize_term(n).replace(" ", ""), (normalize_term(n),))
                          for n in extra if normalize_term(n)]
    words: list[str] = []
    cjk: list[str] = []
    plains: list[re.Pattern[str]] = []
    for i, spec in enumerate(specs):
        if spec.variants:
            words.append(f"(?P<a{i}v>{_app_regex(spec.variants)})")
        words.append(f"(?P<a{i}c>{_app_regex(spec.canonical)})")
        if spec.cjk:
            cjk.append(f"(?P<a{i}j>{'|'.join(re.escape(c) for c in spec.cjk)})")
        plains.append(re.compile(
            rf"^(?:{'|'.join(re.escape(c.replace('~', '')) for c in spec.canonical)})$"))
    pat = rf"(?<![a-z0-9])(?:{'|'.join(words)})(?![a-z0-9])"
    if cjk:
        pat += "|" + "|".join(cjk)
    return re.compile(pat), specs, plains


def _rescanning(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """Like ``finditer``, but a match the caller rejects does not swallow the text after it.

    "email me at john@gmail.com" first matches "me at john"; the next search starts one
    character later, not after "john". Callers skip matches starting inside one they
    accepted. Lookbehinds stop the search from restarting mid-word, so this stays linear.
    """
    pos = 0
    while pos <= len(text):
        m = pattern.search(text, pos)
        if m is None:
            return
        yield m
        pos = m.start() + 1


def _domain_ok(host: str, allowed: Sequence[str]) -> bool:
    """Whether ``host`` is one of ``allowed`` or a subdomain of one."""
    return any(host == d or host.endswith("." + d) for d in allowed)


def _clean_host(raw: str) -> str:
    """"example dot com", "example(dot)com" -> "example.com"."""
    return re.sub(_EDOT, ".", raw)


@lru_cache(maxsize=1)
def _suffix_list() -> PublicSuffixList:
    """The full Public Suffix List (ICANN and private sections) shipped in the wheel.

    ``accept_unknown=False``: a TLD that is not on the list is not a suffix, so
    "tomorrow.xyzzy" is no host. Loaded once (~0.1 s), on first use.
    """
    return PublicSuffixList(accept_unknown=False)


@lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    """Common words (``content_words.txt``): a name before a word-TLD that is one of them
    reads as the end of a sentence, not a domain ("shop.now", "tomorrow.call")."""
    text = resources.files("signals").joinpath("content_words.txt").read_text(encoding="utf-8")
    return frozenset(w for w in text.split("\n") if w and not w.startswith("#"))


def is_word_tld(tld: str) -> bool:
    """A TLD that is also a word or an extension: weak (``no``, ``so``, ``md``) or one of
    three letters or more found in the common-word list (``call``, ``now``, ``win``)."""
    return tld in _WEAK_TLDS or (
        len(tld) >= 3 and tld not in _DOMAIN_FIRST_TLDS and tld in common_words())


def registrable(host: str) -> tuple[str, str] | None:
    """``(public suffix, registrable domain)`` of ``host`` by the Public Suffix List, or None
    when its suffix is not on the list or the host is itself a suffix ("co.uk")."""
    psl = _suffix_list()
    suffix = psl.publicsuffix(host, accept_unknown=False)
    domain = psl.privatesuffix(host, accept_unknown=False) if suffix else None
    return (suffix, domain) if suffix and domain else None


def _trim_host(labels: list[str]) -> list[str]:
    """Cut junk glued after a host's suffix: "ldew.com1win150ppm" -> "ldew.com".

    Drops trailing labels until the rest ends in a listed suffix, or keeps the longest
    listed TLD at the start of a last label run into digits. Unchanged when nothing fits:
    a scheme URL may name "localhost" or an intranet host.
    """
    for n in range(len(labels), 1, -1):
        if registrable(".".join(labels[:n])):
            return labels[:n]
        last = labels[n - 1]
        for k in range(min(len(last) - 1, 24) if n == len(labels) else 0, 1, -1):
            if last[:k].isalpha() and not last[k].isalpha() and registrable(
                    ".".join([*labels[:n - 1], last[:k]])):
                return [*labels[:n - 1], last[:k]]
    return labels


def _ip_host(host: str) -> bool:
    """An IPv4 address or a bracketed IPv6 address."""
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


class ContentRules:
    """The compiled rules for one config: scan a field, get contacts, terms, techniques."""

    def __init__(self, config: ContentRulesConfig) -> None:
        for region in config.region_hints:
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"unknown phone region hint {region!r} in content_rules.region_hints")
        self.config = config
        self.regions: tuple[str, ...] = tuple(config.region_hints)
        self._apps = _compile_apps(config.extra_messaging_apps)
        self._brand_domains = frozenset(d.lower() for d in config.brand_domains)
        self._term_cache: dict[str, tuple[re.Pattern[str], dict[str, str]] | None] = {}
        self._window = config.contact_window_chars

    # ---- public -----------------------------------------------------------------------

    def scan(self, text: str, field_name: str, tenant: str) -> FieldScan:
        """Contacts, prohibited terms and disguise techniques in one field's text."""
        nt = normalize(text)
        view = nt.text
        contacts: list[Finding] = []
        mask = list(view)  # spans already claimed are blanked so kinds never double count
        allowed = self._allowed(tenant)
        contacts += self._explicit_urls(nt, view, mask, field_name, allowed)
        contacts += self._emails(nt, "".join(mask), mask, field_name, allowed)
        contacts += self._bare_urls(nt, "".join(mask), mask, field_name, allowed)
        contacts += self._apps_found(nt, "".join(mask), mask, field_name)
        contacts += self._phones(nt, "".join(mask), mask, field_name)
        contacts += self._handles(nt, "".join(mask), mask, field_name)
        terms = self._terms(nt, view, field_name, tenant)
        techniques = dict(nt.techniques)
        spans = {k: list(v) for k, v in nt.technique_spans.items()}
        for f in contacts:
            for t in f.techniques:
                if t not in nt.techniques:  # match-level techniques
                    techniques[t] = techniques.get(t, 0) + 1
                    spans.setdefault(t, []).append((f.start, f.end))
        for h in terms:
            for t in h.techniques:
                techniques[t] = techniques.get(t, 0) + 1
                spans.setdefault(t, []).append((h.start, h.end))
        targets = [(f.start, f.end) for f in contacts] + [(h.start, h.end) for h in terms]
        contacts.sort(key=lambda f: f.start)
        return FieldScan(field_name, contacts, terms, techniques, spans, targets)

    # ---- helpers ----------------------------------------------------------------------

    def _allowed(self, tenant: str) -> list[str]:
        doms = self.config.allowed_domains
        return [d.lower() for d in (*doms.get("*", ()), *doms.get(tenant, ()))]

    @staticmethod
    def _claim(mask: list[str], start: int, end: int) -> None:
        mask[start:end] = " " * (end - start)

    @staticmethod
    def _techniques_in(nt: NormalizedText, start: int, end: int) -> list[str]:
        """Normaliser techniques whose example spans overlap original ``[start, end)``."""
        return [t for t, spans in nt.technique_spans.items()
                if any(s < end and start < e for s, e in spans)]

    def _finding(self, nt: NormalizedText, kind: ContactKind, field_name: str, vs: int, ve: int,
                 normalized: str, weight: float, extra: Sequence[str] = (),
                 detail: dict[str, Any] | None = None) -> Finding:
        s, e = nt.span(vs, ve)
        techs = tuple(dict.fromkeys([*self._techniques_in(nt, s, e), *extra]))
        return Finding(kind, field_name, s, e, nt.original[s:e], normalized, weight, techs,
                       detail or {})

    def _emails(self, nt: NormalizedText, view: str, mask: list[str], field_name: str,
                allowed: Sequence[str]) -> list[Finding]:
        out = []
        taken = 0
        for m in _rescanning(_EMAIL, view):
            if m.start() < taken:
                continue
            at, domain_raw, local = m.group("at"), m.group("domain"), m.group("local")
            domain = _clean_host(domain_raw)
            labels = domain.split(".")
            if at.startswith(" ") and at.strip() == "@" and not at.endswith(" "):
                continue  # "instagram @vintage.finds": a handle after a word, not an email
            spelled_at = "@" not in at
            provider = labels[0] in _EMAIL_PROVIDERS
            has_tld = len(labels) >= 2 and registrable(domain) is not None
            if not (has_tld or (len(labels) == 1 and labels[0] in _BARE_PROVIDERS)):
                continue
            if spelled_at and not at.strip().startswith(("[", "(", "{", "<")) and not (
                    provider or re.search(r"[\d_.]", local)):
                # "available at shop.com" is a URL mention, not an email.
                continue
            if len(labels) == 1:
                domain = f"{domain}.com" if domain not in ("qq", "163", "126") else f"{domain}.com"
            if _domain_ok(domain, allowed):
                continue
            extra = [SPELLED_SYMBOLS] if spelled_at or _SPELLED.search(domain_raw) else []
            out.append(self._finding(nt, "email", field_name, m.start(), m.end(),
                                     f"{local}@{domain}", 0.9, extra))
            self._claim(mask, m.start(), m.end())
            taken = m.end()
        return out

    def _link_finding(self, nt: NormalizedText, field_name: str, start: int, end: int,
                      host: str, path: str, extra: Sequence[str],
                      detail: dict[str, Any]) -> Finding:
        """A link found: a messaging app's link is a handle of that app, the rest are URLs."""
        full = host + path
        app = next((a for d, a in _MESSAGING_DOMAINS.items() if _domain_ok(host, [d])), None)
        if app:
            handle = path.strip("/").split("/")[0].split("?")[0]
            norm = f"{app}:{handle}" if handle else app
            return self._finding(nt, "handle", field_name, start, end, norm, 0.9, extra,
                                 {"app": app, "link": full})
        shortener = host in _SHORTENERS
        ip = _ip_host(host)
        weight = 0.85 if (shortener or ip) else 0.6  # a bare IP or a shortener hides the site
        return self._finding(nt, "url", field_name, start, end, full, weight, extra,
                             {**({"shortener": True} if shortener else {}),
                              **({"ip_host": True} if ip else {}), **detail})

    def _explicit_urls(self, nt: NormalizedText, view: str, mask: list[str], field_name: str,
                       allowed: Sequence[str]) -> list[Finding]:
        """Links with a scheme or "www.": always URLs, the host unjudged (IPs included)."""
        out = []
        taken = 0
        for m in _rescanning(_EXPLICIT_URL, view):
            if m.start() < taken:
                continue
            host_raw = m.group("host")
            labels = _clean_host(host_raw).split(".")
            if not m.group("scheme") and len(labels) < 2:
                continue  # "www.com" alone, or "www" in a sentence
            end = m.end()
            path = m.group("path") or ""
            port = m.group("port") or ""
            if m.group("scheme") and len(labels) == 1 and not (path or port) and (
                    cont := _HOST_CONTINUED.match(view, m.end("host"))):
                labels += cont.group("host").split(".")  # "http://careers. bloomberg.com"
                path, end = cont.group("path") or "", cont.end()
            if not _ip_host(".".join(labels)) and not host_raw.startswith("["):
                kept = _trim_host(labels)
                if kept != labels:
                    # Junk glued after the suffix ("www.ldew.com1win150ppm"): the link ends
                    # at the suffix; what follows is not its path.
                    host_end = re.compile(rf"(?:{_LABEL}{_DOT}){{{len(kept) - 1}}}").match(
                        view, m.start("host"))
                    end = (host_end.end() if host_end else m.start("host")) + len(kept[-1])
                    labels, path, port = kept, "", ""
            host = ".".join(labels)
            s_o, e_o = nt.span(m.start(), end)
            om = _EXPLICIT_URL.fullmatch(nt.original[s_o:e_o].lower())
            if om and _ip_host(om.group("host")):
                # The view collapses "0.1/a" like spaced letters ("g.m.a.i.l"): an IP
                # address is read from what was written.
                host, port, path = om.group("host"), om.group("port") or "", om.group("path") or ""
            stripped = path.rstrip(".,;:!?)")
            end -= len(path) - len(stripped)
            if _domain_ok(host, allowed):
                taken = end
                continue
            extra = [SPELLED_SYMBOLS] if _SPELLED.search(view[m.start():end]) else []
            detail = {"scheme": re.sub(r"[\s:/]", "", m.group("scheme"))} if m.group("scheme") else {}
            out.append(self._link_finding(nt, field_name, m.start(), end, host + port, stripped,
                                          extra, detail))
            self._claim(mask, m.start(), end)
            taken = end
        return out

    def _bare_host_ok(self, nt: NormalizedText, view: str, m: re.Match[str], host: str) -> bool:
        """Whether a bare "name.tld" (no scheme, "www" or path) is a host, not words.

        The suffix must be on the Public Suffix List (``registrable``). Text joined by a
        missing space after a period ("Quiz.Win a prize", "tomorrow.call me", "ok.so")
        reads as a host only when the TLD is not a word and, if it is one, the name looks
        like a domain: not a common word, and a digit or hyphen in it, a subdomain, or a
        cue before it ("visit", "at", "log onto").
        """
        found = registrable(host)
        if found is None:
            return False
        suffix = found[0]
        labels = host.split(".")
        suffix_labels = suffix.split(".")
        tld = labels[-1]
        names = labels[:-len(suffix_labels)]
        name = names[-1]
        if all(n.isdigit() for n in names):
            # "80488.biz" is a site; "10.5.in", "4.50.biz" are numbers.
            return len(names) == 1 and len(name) >= 3 and not is_word_tld(tld)
        if tld in _WEAK_TLDS:
            return len(suffix_labels) >= 2 and suffix_labels[0] in _SECOND_LEVEL
        if not is_word_tld(tld) or len(suffix_labels) >= 2:
            return True
        # A word TLD: "Sorry.Win", "later.CALL" are two sentences.
        s, e = nt.span(m.start("host"), m.end("host"))
        original = nt.original[s:e]
        dot = original.rfind(".")
        after = original[dot + 1:] if dot > 0 else ""
        before = original[dot - 1] if dot > 0 else ""
        if after[:1].isupper() and (after[1:].islower() or (after.isupper() and before.islower())):
            return False
        if name in common_words():
            return False
        return bool(re.search(r"[\d\-]", name) or len(names) >= 2
                    or _URL_CUE.search(view[max(0, m.start() - 30):m.start()]))

    def _bare_urls(self, nt: NormalizedText, view: str, mask: list[str], field_name: str,
                   allowed: Sequence[str]) -> list[Finding]:
        """Hosts without a scheme: judged by their suffix and by how they read."""
        out = []
        taken = 0
        for m in _rescanning(_URL, view):
            if m.start() < taken:
                continue
            host_raw = m.group("host")
            host = _clean_host(host_raw)
            labels = host.split(".")
            path = m.group("path") or ""
            app = any(_domain_ok(host, [d]) for d in _MESSAGING_DOMAINS)
            if not (app or host in _SHORTENERS):
                if registrable(host) is None:
                    continue
                if len(path) <= 1:
                    if not self._bare_host_ok(nt, view, m, host):
                        continue
                    if host in self._brand_domains:
                        continue  # "Amazon.com gift card": a brand name in ordinary use
                    if _SPELLED.search(host_raw) and labels[-2] in _STOPWORDS:
                        continue  # "polka dot com..."
            if _domain_ok(host, allowed):
                continue
            stripped = path.rstrip(".,;:!?")
            end = m.end() - (len(path) - len(stripped))
            extra = [SPELLED_SYMBOLS] if _SPELLED.search(m.group()) else []
            out.append(self._link_finding(nt, field_name, m.start(), end, host, stripped, extra, {}))
            self._claim(mask, m.start(), end)
            taken = end
        for m in _BARE_IP_URL.finditer(view):
            host, port, path = m.group("host"), m.group("port") or "", m.group("path") or ""
            if not _ip_host(host) or not (port or re.search(r"[a-z]", path)):
                continue  # a bare address, a version ("1.2.3.4") or "1.2.3.4/5" is no link
            stripped = path.rstrip(".,;:!?)")
            end = m.end() - (len(path) - len(stripped))
            out.append(self._link_finding(nt, field_name, m.start(), end, host + port, stripped,
                                          [], {}))
            self._claim(mask, m.start(), end)
        for m in _SPACED_SHORTENER.finditer(view):
            if not view[m.start():m.end()].strip() or mask[m.start()] == " ":
                continue
            host = f"{m.group('host')}.{m.group('tld')}"
            if host not in _SHORTENERS:
                continue
            path = re.sub(r"\s", "", m.group("path") or "")
            out.append(self._finding(nt, "url", field_name, m.start(), m.end(), host + path, 0.85,
                                     [SPELLED_SYMBOLS], {"shortener": True}))
            self._claim(mask, m.start(), m.end())
        return out

    def _apps_found(self, nt: NormalizedText, view: str, mask: list[str],
                    field_name: str) -> list[Finding]:
        out = []
        pat, specs, plains = self._apps
        for m in pat.finditer(view):
            if any(c == " " and v != " " for c, v in zip(mask[m.start():m.end()],
                                                        view[m.start():m.end()], strict=True)):
                continue  # part of an email or a link already found
            group = m.lastgroup or ""
            spec = specs[int(group[1:-1])]
            matched_view = m.group()
            techs: list[str] = []
            if group.endswith("v"):
                techs.append(VARIANT_SPELLING)
            if not group.endswith("j"):
                squeezed = _SEPARATORS.sub("", matched_view)
                if "/" in matched_view:
                    if VARIANT_SPELLING not in techs:
                        techs.append(VARIANT_SPELLING)
                elif squeezed != matched_view:
                    techs.append(SPLIT_NAME)
                if (not techs and not plains[int(group[1:-1])].match(squeezed)) or re.search(
                        r"[0-9@$|!]", squeezed):
                    techs.append(LEETSPEAK)
            s, e = nt.span(m.start(), m.end())
            norm_techs = self._techniques_in(nt, s, e)
            ident = _APP_ID_RE.match(view, m.end())
            ident_val: str | None = None
            end = m.end()
            if ident and (ident.group("at") or ident.group("word")):
                ident_val = ident.group("at") or ident.group("word")
                end = ident.end()
            else:
                ident = None  # a number after the name is reported by the phone matcher
            before = view[max(0, m.start() - self._window):m.start()]
            number_after = re.match(r"\s*[:=\-]?\s*\+?\d[\d\s\-.()]{6,}\d", view[m.end():]) or (
                re.search(r"\d[\d\s\-.()]{6,}\d\s*[,;:/\-]?\s*(?:or\s+)?$", before))
            if spec.ambiguous:
                explicit_id = ident is not None and (
                    (ident_val or "").startswith("@") or bool(re.match(r"\s*(?:id\s*)?[:=]",
                                                                      view[m.end():])))
                ok = (explicit_id or bool(re.match(r"\s*[:=\-]?\s*\+?\d[\d\s\-.()]{6,}\d",
                                                    view[m.end():]))
                      or bool(_STRICT_CUE_RE.search(before[-25:])))
                if spec.app == "whatsapp" and matched_view == "zap" and not (
                        explicit_id or re.search(r"(?:no|pelo|meu|chama\s+no)\s+$", before)):
                    ok = False
            else:
                after = view[m.end():m.end() + 20]
                cue = bool(_CONTACT_CUE_RE.search(before)) or bool(
                    re.match(r"\s*(?:me|us|only|now|anytime|asap)\b", after))
                ok = bool(ident or number_after or cue or techs or norm_techs)
            if not ok:
                continue
            norm = f"{spec.app}:{ident_val}" if ident_val else spec.app
            weight = 0.85 if (ident_val or number_after) else 0.6
            out.append(self._finding(nt, "handle", field_name, m.start(), end, norm, weight,
                                     techs, {"app": spec.app}))
            self._claim(mask, m.start(), end)
        return out

    def _handles(self, nt: NormalizedText, view: str, mask: list[str],
                 field_name: str) -> list[Finding]:
        out = []
        for m in _HANDLE.finditer(view):
            out.append(self._finding(nt, "handle", field_name, m.start(), m.end(),
                                     f"@{m.group('name')}", 0.5, (), {"app": None}))
            self._claim(mask, m.start(), m.end())
        return out

    def _phones(self, nt: NormalizedText, view: str, mask: list[str],
                field_name: str) -> list[Finding]:
        out: list[Finding] = []
        seen: set[str] = set()
        for m in _PHONE_RUN.finditer(view):
            run = m.group()
            s, e = m.start(), m.end()
            head = _GLUED_HEAD.match(run) if s > 0 and view[s - 1].isalpha() else None
            if head and len(_DIGIT.findall(run[head.end():])) >= 7:
                # "MobileUpd8 08001950382": the "8" belongs to the word, not the number.
                s += head.end()
                run = run[head.end():]
            digits = len(_DIGIT.findall(run))
            if digits < 7 or digits > 32:
                continue
            # Context is read from the unmasked text: an app name claimed as a handle
            # ("WhatsApp +44 ...") is still the cue that vouches for the number after it.
            before = nt.text[max(0, s - self._window):s]
            after = nt.text[e:e + 20]
            intl = run.startswith(("+", "00"))
            s_o, e_o = nt.span(s, e)
            disguised = bool(re.search(r"[a-z\u3000-\u9fff]", nt.original[s_o:e_o].lower()))
            cue = disguised or bool(_PHONE_CUE_RE.search(before)) or bool(
                re.match(r"\s*(?:call|text|sms|whatsapp|wa|me|now|anytime)\b", after))
            if not disguised:
                if _PRODUCT_CONTEXT.search(before) or _CURRENCY_BEFORE.search(before):
                    continue
                if _UNIT_AFTER.match(after) or _DATE_LIKE.match(run.strip("()")):
                    continue
                if s > 0 and view[s - 1].isalpha():
                    word = re.search(r"[a-z]+$", view[max(0, s - 30):s])
                    w = word.group() if word else ""
                    if not (_PHONE_CUE_RE.fullmatch(w) or (
                            digits >= 10 and run.startswith("0")
                            and not _PRODUCT_CONTEXT.search(w))):
                        continue  # glued to a word: a model or part number ("A1B2345678")
                if e < len(view) and view[e].isalpha() and not (digits >= 10 and (
                        intl or run.startswith("0"))):
                    continue
                if not cue and not intl and digits < 10:
                    continue  # short national numbers only count next to "call", "tel"...
            # A "+44..." right after "call"/"whatsapp" is a phone even when the range is new
            # or reserved (metadata lags); without a cue it must be valid, and grouped like
            # the region's own format when it has neither cue nor country code.
            leniency = (Leniency.POSSIBLE if (cue and intl) else
                        Leniency.VALID if (cue or intl) else Leniency.EXACT_GROUPING)
            found = self._match_phone(run, leniency)
            for ms, me, region, num in found:
                e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
                if e164 in seen:
                    continue
                seen.add(e164)
                # The number's own country, not the hint region it was parsed under
                # ("+44 ..." parses under any hint but is British).
                country = phonenumbers.region_code_for_number(num) or region
                out.append(self._finding(nt, "phone", field_name, s + ms, s + me, e164, 0.9, (),
                                         {"region": country}))
            if found:
                self._claim(mask, s, e)
        for m in _SHORTCODE.finditer(view):
            group = "code" if m.group("code") else "code4"
            cs, ce = m.span(group)
            code = m.group(group)
            if mask[cs] == " " or f"shortcode:{code}" in seen:
                continue
            seen.add(f"shortcode:{code}")
            out.append(self._finding(nt, "phone", field_name, cs, ce, f"shortcode:{code}", 0.5, (),
                                     {"shortcode": True}))
        return out

    def _match_phone(self, run: str, leniency: int) -> list[tuple[int, int, str, Any]]:
        """Phone numbers in a digit run, read in the hint region that explains most of it.

        Every hint region is tried: "0803 123 4567" is valid in India and Nigeria alike,
        and "11 98765-4321" only in full as Brazilian; the region covering the most
        characters wins, ties going to the earlier hint.
        """
        best: list[tuple[int, int, str, Any]] = []
        best_cover = 0
        for region in self.regions:
            try:
                found = [(pm.start, pm.end, region, pm.number)
                         for pm in PhoneNumberMatcher(run, region, leniency=leniency, max_tries=20)]
            except Exception:  # noqa: BLE001 - the library raises on pathological input
                found = []
            cover = sum(e - s for s, e, _, _ in found)
            if cover > best_cover:
                best, best_cover = found, cover
            if run.startswith("+") and found:
                break  # an explicit country code reads the same from every region
        return best

    def _term_regex(self, tenant: str) -> tuple[re.Pattern[str], dict[str, str]] | None:
        if tenant in self._term_cache:
            return self._term_cache[tenant]
        terms = [*self.config.prohibited_terms.get("*", ()),
                 *self.config.prohibited_terms.get(tenant, ())]
        by_norm: dict[str, str] = {}
        for t in terms:
            n = normalize_term(t)
            if n:
                by_norm.setdefault(n, t)
        compiled: tuple[re.Pattern[str], dict[str, str]] | None = None
        if by_norm:
            alts = []
            for i, n in enumerate(sorted(by_norm, key=len, reverse=True)):
                left = r"(?<![a-z0-9])" if n[0].isascii() and n[0].isalnum() else ""
                right = r"(?![a-z0-9])" if n[-1].isascii() and n[-1].isalnum() else ""
                alts.append(f"(?P<t{i}>{left}{leet_pattern(n)}{right})")
            keys = {f"t{i}": n for i, n in enumerate(sorted(by_norm, key=len, reverse=True))}
            compiled = (re.compile("|".join(alts)), {k: by_norm[v] for k, v in keys.items()})
        if len(self._term_cache) < 10_000:  # tenants are few; never grow without bound
            self._term_cache[tenant] = compiled
        return compiled

    def _terms(self, nt: NormalizedText, view: str, field_name: str, tenant: str) -> list[TermHit]:
        compiled = self._term_regex(tenant)
        if compiled is None:
            return []
        pat, names = compiled
        out = []
        for m in pat.finditer(view):
            matched = m.group()
            letters = sum(c.isalpha() for c in matched)
            if letters < max(1, len(_SEPARATORS.sub("", matched)) // 2):
                continue  # mostly digits: "105" is not "ios"
            key = m.lastgroup or ""
            term = names[key]
            s, e = nt.span(m.start(), m.end())
            techs = self._techniques_in(nt, s, e)
            canon = normalize_term(term)
            if _SEPARATORS.sub("", matched) != canon.replace(" ", ""):
                techs.append(LEETSPEAK)
            out.append(TermHit(term, field_name, s, e, nt.original[s:e], tuple(techs)))
        return out



def contact_score(findings: Sequence[Finding]) -> float:
    """Risk that the text takes buyers off the platform: 1 - prod(1 - weight)."""
    p = 1.0
    for f in findings:
        p *= 1.0 - f.weight
    return round(1.0 - p, 4)


def obfuscation_score(techniques: dict[str, int], on_target: set[str]) -> float:
    """How disguised the text is, from the techniques found; full weight on a contact/term."""
    p = 1.0
    for t, n in techniques.items():
        if n < _MIN_COUNT.get(t, 1):
            continue
        w = TECHNIQUE_WEIGHTS.get(t, 0.3)
        # A disguise that hides nothing found may be a copy-paste artefact: half weight.
        p *= 1.0 - (w if t in on_target else w * 0.5)
    return round(1.0 - p, 4)


def terms_score(n_terms: int) -> float:
    return 0.0 if n_terms == 0 else round(1.0 - 0.2 * 0.5 ** (n_terms - 1), 4)


_MAX_EVIDENCE = 20


# ItemT is Listing or Review, one per subclass; this extractor reads both kinds.
class ContentRulesExtractor(Extractor[Listing | Review]):  # type: ignore[type-var]  # see the line above
    """Off-platform contact, obfuscation and prohibited terms for listings and reviews."""

    name: ClassVar[str] = "content_rules"
    version: ClassVar[int] = 2  # 2: contacts judged by the public suffix list (issue 16)
    accepts: ClassVar[tuple[Literal["listing", "review"], ...]] = ("listing", "review")
    emits: ClassVar[tuple[str, ...]] = (
        "content.offplatform_contact", "content.obfuscation", "content.prohibited_terms")

    def __init__(self, config: ContentRulesConfig | None = None) -> None:
        self.rules = ContentRules(config or ContentRulesConfig())

    def scan_item(self, item: Listing | Review) -> list[FieldScan]:
        """Scan every text field of an item (listing: title, description; review: text)."""
        if isinstance(item, Listing):
            fields = [("title", item.title), ("description", item.description)]
        else:
            fields = [("text", item.text)]
        return [self.rules.scan(text, name, item.tenant) for name, text in fields if text]

    def _extract_batch(self, items: Sequence[Listing | Review],
                       observed_at: datetime) -> list[ItemResult]:
        return [self._one(item, observed_at) for item in items]

    def _one(self, item: Listing | Review, observed_at: datetime) -> ItemResult:
        scans = self.scan_item(item)
        contacts = [f for sc in scans for f in sc.contacts]
        distinct: dict[tuple[str, str], Finding] = {}
        for f in contacts:
            distinct.setdefault((f.kind, f.normalized), f)
        kinds: dict[str, int] = {}
        for kind, _ in distinct:
            kinds[kind] = kinds.get(kind, 0) + 1
        contact_ev: dict[str, Any] = {
            "kinds": kinds,
            "matches": [f.to_evidence() for f in contacts[:_MAX_EVIDENCE]],
        }
        if len(contacts) > _MAX_EVIDENCE:
            contact_ev["truncated"] = len(contacts)

        techniques: dict[str, int] = {}
        on_target: set[str] = set()
        tech_ev: dict[str, dict[str, Any]] = {}
        for sc in scans:
            for t, n in sc.techniques.items():
                techniques[t] = techniques.get(t, 0) + n
                ev = tech_ev.setdefault(t, {"count": 0, "spans": []})
                ev["count"] += n
                for s, e in sc.technique_spans.get(t, []):
                    if any(s < te and ts < e for ts, te in sc.target_spans):
                        on_target.add(t)
                    if len(ev["spans"]) < 5:
                        ev["spans"].append({"field": sc.field, "start": s, "end": e})
        obf = obfuscation_score(techniques, on_target)
        for t, ev in tech_ev.items():
            ev["on_contact_or_term"] = t in on_target

        hits = [h for sc in scans for h in sc.terms]
        terms = sorted({h.term for h in hits})
        term_ev: dict[str, Any] = {
            "terms": terms,
            "matches": [{"term": h.term, "field": h.field, "start": h.start, "end": h.end,
                         "matched": h.matched} for h in hits[:_MAX_EVIDENCE]],
        }
        signals = [
            self.signal(item, "content.offplatform_contact", len(distinct), observed_at,
                        score=contact_score(list(distinct.values())), evidence=contact_ev),
            self.signal(item, "content.obfuscation", obf, observed_at, score=obf,
                        evidence={"techniques": tech_ev}),
            self.signal(item, "content.prohibited_terms", len(terms), observed_at,
                        score=terms_score(len(terms)), evidence=term_ev),
        ]
        return ItemResult(item.entity_id, signals=signals)
