"""Pair features: what tells two listings of one product line apart, computed in bulk.

Each record is parsed once (:meth:`ParsedRecords.parse`) into Arrow columns: the
title's and the whole text's distinct tokens, the title's character trigrams with
their counts, identifier codes, numbers, quantities with a unit, the text squashed
to letters and digits, and the price. A catalogue's parse is a file read through a
memory map (``serving.batch.pairs``); a request parses its one listing.

:func:`pair_feature_matrix` then computes :data:`BASE_FEATURES` for many pairs of
parsed rows at once: every set overlap (tokens, trigrams, numbers, codes,
quantities) is a row-wise sparse product over the pairs, in C, so a pair costs
microseconds and a record is never parsed again for each of its candidates. The
identifier comparisons are laid out as arrays too (every pair of codes compared as a
character matrix); only the test of a code inside the other side's text is a Python
``in``, one per code of the pairs that carry codes.

The features (names in :data:`BASE_FEATURES`):

- ``cosine``: the text-embedding cosine of the pair, given by the caller;
- token Jaccard and containment of the titles, character-3-gram cosine of the titles,
  token Jaccard of the whole texts, length ratio of the titles in tokens;
- identifiers: alphanumeric codes with digits (``LDS4821WW``, ``mb13-pnk-see-v2``),
  normalised (case, dashes, dots, slashes); exact agreement, a code of one side
  found inside the other's squashed text, the closest pair of codes (shared prefix),
  a conflict flag when both sides carry codes and none agree, one side only;
- numbers: Jaccard of the title's numbers, and quantities with a unit (``32gb`` vs
  ``64gb``): agreement (a unit with a shared value) and conflict (a shared unit with
  no shared value);
- price: whether both sides have one, and the absolute log ratio (capped at 5);
- the neighbourhood (:class:`PairContext`: the query and its candidates): the title's
  content words (words of any script, numbers, sizes and units left out) weighted by their
  rarity among the neighbourhood's records, as a weighted Jaccard and containment, and the
  cosine over the neighbourhood's background (its :data:`BACKGROUND_RANK`-th candidate);
- whether both records have a description (title-only pairs are weighed apart).

Tokens are words of every script (``[^\\W_]+`` after NFKC and lower-casing).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

from indexes.arrow_rows import take_rows
from signals.errors import InvalidInput

BASE_FEATURES: tuple[str, ...] = (
    "cosine",
    "title_token_jaccard",
    "title_token_containment",
    "title_char3_cosine",
    "text_token_jaccard",
    "length_ratio",
    "code_exact",
    "code_contained",
    "code_best_similarity",
    "code_conflict",
    "code_one_side_only",
    "number_jaccard",
    "unit_agree",
    "unit_conflict",
    "price_both",
    "price_log_ratio",
    "rare_token_jaccard",
    "rare_token_containment",
    "cosine_over_background",
    "both_described",
)
# The features that read a price: a copy is judged without them (``indexes.near_duplicates``).
PRICE_FEATURES: tuple[str, ...] = ("price_both", "price_log_ratio")
_COLUMN = {name: i for i, name in enumerate(BASE_FEATURES)}

# Words of any script (letters and digits of every alphabet; ``_`` is not a letter).
_TOKEN = re.compile(r"[^\W_]+")
# A code candidate: runs of letters/digits joined by - . / (kept together, then squashed).
_CODE_SPAN = re.compile(r"[0-9a-z]+(?:[-./][0-9a-z]+)*")
_DIGIT = re.compile(r"[0-9]")
_NOT_ALNUM = re.compile(r"[\W_]+")
_CODE_SEPARATORS = str.maketrans("", "", "-./")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Quantities with a unit: generic product vocabulary (storage, frequency, power, size, weight).
_UNITS = {
    "tb": "tb", "gb": "gb", "mb": "mb", "kb": "kb", "ghz": "ghz", "mhz": "mhz", "hz": "hz",
    "mp": "mp", "megapixel": "mp", "mah": "mah", "w": "w", "watt": "w", "watts": "w", "v": "v",
    "volt": "v", "mm": "mm", "cm": "cm", "m": "m", "in": "in", "inch": "in", "inches": "in",
    '"': "in", "'": "in", "ft": "ft", "oz": "oz", "lb": "lb", "lbs": "lb", "kg": "kg", "g": "g",
    "ml": "ml", "l": "l", "rpm": "rpm", "x": "x", "p": "p", "pack": "pack", "pk": "pack",
    "gbps": "gbps", "mbps": "mbps", "ms": "ms", "db": "db", "k": "k", "cell": "cell",
}
_QUANTITY = re.compile(
    r"(\d+(?:\.\d+)?)\s*(" + "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
    + r")(?![0-9a-z])"
)
# Codes shorter than this are too common to count as "found inside the other's text".
_MIN_CONTAINED = 4
# Scripts written without spaces between words (CJK, kana, Hangul, Thai, Lao, Khmer, Myanmar):
# a run of them is one "token" to the regex, so their character bigrams stand in for words.
_UNSPACED = re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_NUMERIC = re.compile(r"[\d.,]+")
# The neighbourhood features: the background of a query's neighbourhood is the cosine of its
# BACKGROUND_RANK-th candidate (the floor below which nothing is a candidate, when it has fewer);
# token rarity is counted among the query and its candidates, as if there were at least
# MIN_NEIGHBOURHOOD of them (a sparse neighbourhood says little about what is common).
BACKGROUND_RANK = 5
BACKGROUND_FLOOR = 0.4
MIN_NEIGHBOURHOOD = 10


def content_tokens(title_tokens: Sequence[str]) -> list[str]:
    """The title's words that can tell one product from another, in any language.

    Numbers, sizes and units (``1``, ``0.5``, ``kg``, ``500ml``) are left out: a shared
    "1 Kg" or "0.5 mm" is what unrelated listings have in common, never evidence on its
    own (sizes are compared by the quantity features, where a conflict counts). Words of
    unspaced scripts also give their character bigrams, so two Thai or Chinese titles
    that share a phrase share tokens.
    """
    out: dict[str, None] = {}
    for tok in title_tokens:
        if _NUMERIC.fullmatch(tok) or tok in _UNITS or _QUANTITY.fullmatch(tok):
            continue
        if len(tok) >= 2 or _UNSPACED.match(tok):
            out.setdefault(tok, None)
        if len(tok) > 2 and _UNSPACED.search(tok):
            for i in range(len(tok) - 1):
                out.setdefault(tok[i:i + 2], None)
    return list(out)


class ListingLike(Protocol):
    """What the parse reads of a listing: ``signals.schemas.Listing`` satisfies it."""

    @property
    def title(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def price(self) -> float | None: ...


PAIR_TEXT_CHARS = 2000
"""Of a description, what the pair scorer reads (its start): the batch job and the service cut alike."""


@dataclass(frozen=True, slots=True)
class PairRecord:
    """The parts of a listing the pair features read."""

    title: str
    description: str = ""
    price: float | None = None

    @classmethod
    def of(cls, item: ListingLike) -> PairRecord:
        return cls(item.title, item.description or "", item.price)


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _codes(normalised: str) -> set[str]:
    out: set[str] = set()
    for span in _CODE_SPAN.findall(normalised):
        if not _DIGIT.search(span):
            continue
        code = span.translate(_CODE_SEPARATORS)
        has_alpha = not code.isdigit()
        if has_alpha and _QUANTITY.fullmatch(span):
            continue
        if (has_alpha and len(code) >= 3) or (not has_alpha and len(code) >= 4 and "." not in span):
            out.add(code)
    return out


def extract_codes(text: str) -> set[str]:
    """Identifier-like codes: letters+digits (>= 3 chars) or digit runs of >= 4, squashed.

    ``"LDS-4821 WW"`` gives ``lds4821``; ``"mb13-pnk-see-v2"`` gives ``mb13pnkseev2``.
    Quantities (``32gb``, ``1080p``) are numbers with a unit, not identifiers.
    """
    return _codes(_normalise(text))


def _quantities(normalised: str) -> dict[str, set[float]]:
    found: dict[str, set[float]] = {}
    for value, unit in _QUANTITY.findall(normalised):
        found.setdefault(_UNITS[unit], set()).add(float(value))
    return found


def extract_quantities(text: str) -> dict[str, frozenset[float]]:
    """Numbers with a unit, by normalised unit: ``"32GB microSD"`` -> ``{"gb": {32.0}}``."""
    return {u: frozenset(v) for u, v in _quantities(_normalise(text)).items()}


PARSED_SCHEMA = pa.schema([
    ("title_tokens", pa.list_(pa.string())),   # distinct
    ("title_len", pa.int32()),                 # tokens of the title, repeats counted
    ("text_tokens", pa.list_(pa.string())),    # distinct, title and description
    ("char3", pa.list_(pa.string())),          # distinct trigrams of " title tokens "
    ("char3_counts", pa.list_(pa.int32())),
    ("char3_norm", pa.float64()),
    ("codes", pa.list_(pa.string())),          # distinct, squashed
    ("squashed", pa.string()),                 # the whole text, letters and digits only
    ("numbers", pa.list_(pa.string())),        # distinct numbers of the title
    ("quantities", pa.list_(pa.string())),     # distinct "unit=value" of the title
    ("units", pa.list_(pa.string())),          # distinct units of those
    ("price", pa.float64()),                   # null when missing or <= 0
    ("content", pa.list_(pa.string())),        # distinct content tokens of the title
    ("described", pa.bool_()),                 # has a description with a word in it
])


def _parse_one(record: PairRecord) -> tuple[object, ...]:
    title = _normalise(record.title)
    description = _normalise(record.description)
    text = title + " " + description
    title_tokens = _TOKEN.findall(title)
    squashed_title = " " + " ".join(title_tokens) + " "
    char3 = Counter([squashed_title[i:i + 3] for i in range(max(len(squashed_title) - 2, 0))])
    quantities = _quantities(title)
    price = record.price
    return (
        list(dict.fromkeys(title_tokens)),
        len(title_tokens),
        list(dict.fromkeys(_TOKEN.findall(text))),
        list(char3),
        list(char3.values()),
        math.sqrt(sum(c * c for c in char3.values())),
        sorted(_codes(text)),
        _NOT_ALNUM.sub("", text),
        list(dict.fromkeys(_NUMBER.findall(title))),
        [f"{u}={v!r}" for u, vs in quantities.items() for v in sorted(vs)],
        list(quantities),
        price if price is not None and price > 0 and math.isfinite(price) else None,
        content_tokens(title_tokens),
        _TOKEN.search(description) is not None,
    )


class ParsedRecords:
    """Records parsed for the pair features: one row a record, :data:`PARSED_SCHEMA` columns."""

    def __init__(self, table: pa.Table) -> None:
        if not table.schema.equals(PARSED_SCHEMA):
            raise InvalidInput("parsed", f"expected the schema {PARSED_SCHEMA}, got {table.schema}")
        self.table = table

    @classmethod
    def parse(cls, records: Sequence[PairRecord]) -> ParsedRecords:
        """Parse records (~50 us a listing with a short description on a 2-core Xeon).

        A parse makes a dozen small acyclic lists a record; with a large heap alive the
        collections they trigger were measured at 76 us a record against 48 us with the
        collector paused. Pausing it is process-wide, so it is the caller's choice, not made
        here: the batch job may wrap its bulk parse in :func:`indexes.runtime.gc_paused`.
        """
        rows = [_parse_one(r) for r in records]
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[] for _ in PARSED_SCHEMA]
        return cls(pa.table([pa.array(list(c), type=f.type) for c, f in zip(columns, PARSED_SCHEMA,
                                                                            strict=True)],
                            schema=PARSED_SCHEMA))

    @classmethod
    def concat(cls, parts: Sequence[ParsedRecords]) -> ParsedRecords:
        """The rows of ``parts`` one after the other (no copy)."""
        return cls(pa.concat_tables([p.table for p in parts]))

    def __len__(self) -> int:
        return self.table.num_rows

    def take(self, rows: np.ndarray | Sequence[int]) -> ParsedRecords:
        """The records at ``rows`` (repeats allowed), in that order."""
        return ParsedRecords(take_rows(self.table, rows))


# ----------------------------------------------------------------------- features
def _list_column(table: pa.Table, name: str) -> pa.ListArray:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _sets(table: pa.Table, name: str, weights: str | None = None) -> tuple[sparse.csr_matrix, pa.Array]:
    """A list column as a records x distinct-values matrix (1s, or the ``weights`` column),
    and the distinct values (the matrix's columns)."""
    col = _list_column(table, name)
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(pc.list_flatten(col))
    ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    vocab = max(len(encoded.dictionary), 1)
    data = (pc.list_flatten(_list_column(table, weights)).to_numpy(zero_copy_only=False).astype(np.float64)
            if weights else np.ones(len(ids), dtype=np.float64))
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    m = sparse.csr_matrix((data, ids, indptr), shape=(len(lengths), vocab))
    m.sort_indices()
    return m, encoded.dictionary


def _overlap(m: sparse.csr_matrix, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Row-wise dot products of rows ``ia`` and ``ib`` (shared values, or weighted)."""
    return np.asarray(m[ia].multiply(m[ib]).sum(axis=1), dtype=np.float64).ravel()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


# Codes (ASCII: ``_CODE_SPAN``) are compared on their first _PREFIX_WIDTH characters as a byte
# matrix; the rare pair that agrees on all of them (both longer) is finished in Python.
_PREFIX_WIDTH = 32
# Code comparisons laid out at a time (~100 bytes each in the temporaries): a chunk of pairs
# whose records carry dozens of codes each would otherwise take gigabytes.
_CODE_PAIRS_AT_A_TIME = 1 << 20


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For consecutive groups of ``counts`` elements: each element's group and place in it."""
    group = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    return group, np.arange(len(group), dtype=np.int64) - starts[group]


def _prefix_matrix(codes: list[str]) -> np.ndarray:
    """The codes' first :data:`_PREFIX_WIDTH` characters, a row of bytes each (zero-padded)."""
    width = _PREFIX_WIDTH
    chars = np.array([c[:width].encode("ascii") for c in codes], dtype=f"S{width}").view(np.uint8)
    return chars.reshape(len(codes), width)


def _shared_prefix(codes: list[str], chars: np.ndarray, lens: np.ndarray, x: np.ndarray,
                   y: np.ndarray) -> np.ndarray:
    """Characters the codes ``codes[x[i]]`` and ``codes[y[i]]`` share from the start
    (``chars``: their :func:`_prefix_matrix`, ``lens``: their lengths)."""
    width = _PREFIX_WIDTH
    out = np.empty(len(x), dtype=np.int64)
    step = 1 << 18  # two 8 MB gathers and their comparison at a time
    for s in range(0, len(x), step):
        xs, ys = x[s:s + step], y[s:s + step]
        agree = np.logical_and.accumulate(chars[xs] == chars[ys], axis=1).sum(axis=1)
        out[s:s + step] = np.minimum(agree, np.minimum(lens[xs], lens[ys]))
    for i in np.flatnonzero(out == width).tolist():  # both longer than the matrix: count on
        a, b = codes[x[i]], codes[y[i]]
        n = width
        while n < len(a) and n < len(b) and a[n] == b[n]:
            n += 1
        out[i] = n
    return out


def _code_features(t: pa.Table, ia: np.ndarray, ib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``code_contained`` and ``code_best_similarity`` of the pairs ``(ia[i], ib[i])``.

    Contained: the share of one side's codes (those of at least :data:`_MIN_CONTAINED`
    characters count as findable) that occur in the other side's squashed text, the larger of
    the two directions when both sides carry codes. Best similarity: over every pair of codes,
    the shared prefix over the longer code (``lds4821ww`` vs ``lds4821wh`` -> 0.78). Pairs
    without codes get 0. Every (code, text) and (code, code) comparison is laid out as arrays,
    so the only per-comparison Python is the substring test.
    """
    col = _list_column(t, "codes")
    offsets = col.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    codes: list[str] = pc.list_flatten(col).to_pylist()
    squashed: list[str] = t.column("squashed").to_pylist()
    lens = np.fromiter((len(c) for c in codes), dtype=np.int64, count=len(codes))
    counts = np.diff(offsets)
    na, nb = counts[ia], counts[ib]

    def contained(src: np.ndarray, dst: np.ndarray, n_src: np.ndarray) -> np.ndarray:
        pair, j = _expand(n_src)
        code = offsets[src[pair]] + j
        test = np.flatnonzero(lens[code] >= _MIN_CONTAINED)
        hit = np.zeros(len(pair), dtype=np.float64)
        hit[test] = [codes[c] in squashed[d] for c, d in zip(code[test].tolist(), dst[pair[test]].tolist(),
                                                              strict=True)]
        found = np.bincount(pair, weights=hit, minlength=len(src)).astype(np.float64)  # int64 when empty
        return _ratio(found, n_src.astype(np.float64))

    from_a, from_b = contained(ia, ib, na), contained(ib, ia, nb)
    both = (na > 0) & (nb > 0)
    found = np.where(both, np.maximum(from_a, from_b), np.where(na > 0, from_a, from_b))
    best = np.zeros(len(ia), dtype=np.float64)
    both_rows = np.flatnonzero(both)
    chars = _prefix_matrix(codes) if len(both_rows) else np.zeros((0, _PREFIX_WIDTH), dtype=np.uint8)
    ends = np.cumsum(na[both_rows] * nb[both_rows])
    start = 0
    while start < len(both_rows):  # slices of at most _CODE_PAIRS_AT_A_TIME comparisons (or one pair)
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _CODE_PAIRS_AT_A_TIME, side="right")))
        rows = both_rows[start:stop]
        ka, kb = na[rows], nb[rows]
        combos = ka * kb
        pair, j = _expand(combos)
        x = offsets[ia[rows][pair]] + j // kb[pair]
        y = offsets[ib[rows][pair]] + j % kb[pair]
        similarity = _shared_prefix(codes, chars, lens, x, y) / np.maximum(lens[x], lens[y])
        best[rows] = np.maximum.reduceat(similarity, np.cumsum(combos) - combos)
        start = stop
    return found, best


@dataclass(frozen=True, slots=True)
class PairContext:
    """Where each pair was found: the neighbourhood of the query that found it.

    ``group[i]``: pair i's neighbourhood (the pairs of one query and its candidates share
    one); token rarity is counted among the records of a group. ``background[i]``: the
    cosine of that query's :data:`BACKGROUND_RANK`-th candidate (:func:`background_cosine`),
    how dense its neighbourhood is. Without a context each pair is its own neighbourhood
    on the :data:`BACKGROUND_FLOOR` background.
    """

    group: np.ndarray
    background: np.ndarray

    @classmethod
    def isolated(cls, n: int) -> PairContext:
        return cls(np.arange(n, dtype=np.int64), np.full(n, BACKGROUND_FLOOR, dtype=np.float64))


def background_cosine(cosines: Sequence[float]) -> float:
    """A neighbourhood's background: the :data:`BACKGROUND_RANK`-th best of its candidates'
    cosines (best first), or :data:`BACKGROUND_FLOOR` when it has fewer."""
    if len(cosines) >= BACKGROUND_RANK:
        return max(float(cosines[BACKGROUND_RANK - 1]), BACKGROUND_FLOOR)
    return BACKGROUND_FLOOR


def _rarity(t: pa.Table, ia: np.ndarray, ib: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rarity-weighted Jaccard and containment of the pairs' title content tokens.

    A token's weight is ``log((N + 1) / df)``, ``df`` the records of the pair's neighbourhood
    (the query and its candidates) that hold it and ``N`` their number (at least
    :data:`MIN_NEIGHBOURHOOD`): a word every neighbour has ("kaos", "murah", "original")
    weighs little, a brand or a rare word shared by two titles weighs much, and a rare word
    only one side has counts against the pair.
    """
    n = len(ia)
    m, _ = _sets(t, "content")
    m.data[:] = 1.0
    _, g = np.unique(group, return_inverse=True)
    rows = np.concatenate([ia, ib])
    member = sparse.csr_matrix((np.ones(2 * n), (np.concatenate([g, g]), rows)),
                               shape=(int(g.max()) + 1, m.shape[0]))
    member.data[:] = 1.0  # a record in two pairs of one group counts once
    df = (member @ m).tocsr()
    df.sort_indices()
    size = np.maximum(np.asarray(member.sum(axis=1)).ravel(), MIN_NEIGHBOURHOOD)
    weight = np.log((np.repeat(size, np.diff(df.indptr)) + 1.0) / df.data)
    # Each (group, token) weight is looked up by its key in df's sorted entries: expanding df to
    # a row per pair (df[g]) copied a whole neighbourhood's vocabulary for every pair (~6x slower).
    vocab = np.int64(m.shape[1])
    keys = np.repeat(np.arange(df.shape[0], dtype=np.int64), np.diff(df.indptr)) * vocab + df.indices
    a, b = m[ia], m[ib]
    shared = a.multiply(b).tocsr()
    union = (a + b).tocsr()

    def weighted(x: sparse.csr_matrix) -> np.ndarray:
        x.sort_indices()
        row = np.repeat(np.arange(n, dtype=np.int64), np.diff(x.indptr))
        # every token of a pair's record is in its group's df: the lookup always lands on it
        w = weight[np.searchsorted(keys, g[row] * vocab + x.indices)]
        return np.bincount(row, weights=w, minlength=n).astype(np.float64)  # int64 when x is empty

    sw, uw, aw, bw = weighted(shared), weighted(union), weighted(a), weighted(b)
    return _ratio(sw, uw), _ratio(sw, np.minimum(aw, bw))


def pair_feature_matrix(records: ParsedRecords, ia: np.ndarray, ib: np.ndarray,
                        cosines: Sequence[float] | np.ndarray,
                        context: PairContext | None = None) -> np.ndarray:
    """``len(ia) x len(BASE_FEATURES)`` features of the pairs ``(records[ia[i]], records[ib[i]])``.

    Symmetric in the two sides but for the neighbourhood (``context``). ``cosines`` are the
    pairs' text-embedding cosines.
    """
    ia = np.asarray(ia, dtype=np.int64).reshape(-1)
    ib = np.asarray(ib, dtype=np.int64).reshape(-1)
    cos = np.asarray(cosines, dtype=np.float64).reshape(-1)
    n = len(ia)
    if len(ib) != n or len(cos) != n:
        raise InvalidInput("cosines", f"{len(cos)} cosines for {n} pairs ({len(ib)} right sides)")
    if not np.isfinite(cos).all():
        raise InvalidInput("cosines", "NaN or infinite cosine")
    out = np.zeros((n, len(BASE_FEATURES)), dtype=np.float64)
    if not n:
        return out
    if (ia.min(initial=0) < 0 or ib.min(initial=0) < 0
            or max(ia.max(initial=0), ib.max(initial=0)) >= len(records)):
        raise InvalidInput("pairs", f"a row outside the {len(records)} parsed records")
    ctx = context if context is not None else PairContext.isolated(n)
    group = np.asarray(ctx.group, dtype=np.int64).reshape(-1)
    background = np.asarray(ctx.background, dtype=np.float64).reshape(-1)
    if len(group) != n or len(background) != n:
        raise InvalidInput("context", f"{len(group)} groups and {len(background)} backgrounds for {n} pairs")
    # Only the records the pairs use take part (a chunk of a memory-mapped catalogue).
    used, inverse = np.unique(np.concatenate([ia, ib]), return_inverse=True)
    t = records.table if len(used) == len(records) else take_rows(records.table, used)
    ia, ib = inverse[:n], inverse[n:]

    def col(name: str) -> np.ndarray:
        return np.asarray(t.column(name).to_numpy(), dtype=np.float64)

    f = _COLUMN
    out[:, f["cosine"]] = cos

    title, _ = _sets(t, "title_tokens")
    sizes = np.diff(title.indptr).astype(np.float64)
    common = _overlap(title, ia, ib)
    out[:, f["title_token_jaccard"]] = _ratio(common, sizes[ia] + sizes[ib] - common)
    out[:, f["title_token_containment"]] = _ratio(common, np.minimum(sizes[ia], sizes[ib]))

    norm = col("char3_norm")
    dot = _overlap(_sets(t, "char3", weights="char3_counts")[0], ia, ib)
    out[:, f["title_char3_cosine"]] = _ratio(dot, norm[ia] * norm[ib])

    text, _ = _sets(t, "text_tokens")
    tsz = np.diff(text.indptr).astype(np.float64)
    shared = _overlap(text, ia, ib)
    out[:, f["text_token_jaccard"]] = _ratio(shared, tsz[ia] + tsz[ib] - shared)

    tlen = col("title_len")
    out[:, f["length_ratio"]] = _ratio(np.minimum(tlen[ia], tlen[ib]), np.maximum(tlen[ia], tlen[ib]))

    numbers, _ = _sets(t, "numbers")
    nsz = np.diff(numbers.indptr).astype(np.float64)
    nshared = _overlap(numbers, ia, ib)
    out[:, f["number_jaccard"]] = _ratio(nshared, nsz[ia] + nsz[ib] - nshared)

    # Quantities: agreement is a shared (unit, value); conflict, a shared unit none of whose
    # values agree, i.e. more shared units than units among the shared (unit, value)s.
    quant, q_values = _sets(t, "quantities")
    shared_q = quant[ia].multiply(quant[ib]).tocsr()
    out[:, f["unit_agree"]] = (shared_q.getnnz(axis=1) > 0).astype(np.float64)
    common_units = _overlap(_sets(t, "units")[0], ia, ib)
    if shared_q.nnz:
        unit_names = pc.list_element(pc.split_pattern(q_values, "=", max_splits=1), 0)
        unit_ids = pc.dictionary_encode(unit_names).indices.to_numpy(zero_copy_only=False)
        to_unit = sparse.csr_matrix((np.ones(len(unit_ids)), (np.arange(len(unit_ids)), unit_ids)),
                                    shape=(quant.shape[1], int(unit_ids.max()) + 1))
        units_agreeing = (shared_q @ to_unit).getnnz(axis=1).astype(np.float64)
    else:
        units_agreeing = np.zeros(n)
    out[:, f["unit_conflict"]] = (common_units > units_agreeing).astype(np.float64)

    codes, _ = _sets(t, "codes")
    csz = np.diff(codes.indptr)
    exact = _overlap(codes, ia, ib) > 0
    out[:, f["code_exact"]] = exact
    out[:, f["code_one_side_only"]] = (csz[ia] > 0) != (csz[ib] > 0)
    todo = np.flatnonzero((csz[ia] > 0) | (csz[ib] > 0))
    if len(todo):
        contained, best = _code_features(t, ia[todo], ib[todo])
        out[todo, f["code_contained"]] = contained
        out[todo, f["code_best_similarity"]] = best
        both = (csz[ia[todo]] > 0) & (csz[ib[todo]] > 0)
        out[todo, f["code_conflict"]] = both & ~exact[todo] & (contained == 0.0)

    price = np.asarray(t.column("price").to_numpy(zero_copy_only=False), dtype=np.float64)
    pa_, pb_ = price[ia], price[ib]
    both_prices = np.isfinite(pa_) & np.isfinite(pb_)
    out[:, f["price_both"]] = both_prices
    with np.errstate(divide="ignore", invalid="ignore"):
        # log a - log b rather than log(a / b): the same value whichever side is first.
        log_ratio = np.minimum(np.abs(np.log(pa_) - np.log(pb_)), 5.0)
    out[:, f["price_log_ratio"]] = np.where(both_prices, log_ratio, 0.0)

    out[:, f["rare_token_jaccard"]], out[:, f["rare_token_containment"]] = _rarity(t, ia, ib, group)
    out[:, f["cosine_over_background"]] = cos - background
    described = np.asarray(t.column("described").to_numpy(zero_copy_only=False), dtype=bool)
    out[:, f["both_described"]] = described[ia] & described[ib]
    return out


def feature_matrix(pairs: Sequence[tuple[PairRecord, PairRecord]],
                   cosines: Sequence[float] | np.ndarray, context: PairContext | None = None) -> np.ndarray:
    """``len(pairs) x len(BASE_FEATURES)`` features of record pairs (each record parsed once)."""
    cos = np.asarray(cosines, dtype=np.float64).reshape(-1)
    if len(cos) != len(pairs):
        raise InvalidInput("cosines", f"{len(cos)} cosines for {len(pairs)} pairs")
    position: dict[PairRecord, int] = {}
    for a, b in pairs:
        position.setdefault(a, len(position))
        position.setdefault(b, len(position))
    parsed = ParsedRecords.parse(list(position))
    ia = np.array([position[a] for a, _ in pairs], dtype=np.int64)
    ib = np.array([position[b] for _, b in pairs], dtype=np.int64)
    return pair_feature_matrix(parsed, ia, ib, cos, context)
