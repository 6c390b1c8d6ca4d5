"""Pair features: the bulk computation against a per-pair reference, and what each feature means.

``reference_features`` below is the definition written the plain way, one pair at a
time with Python sets; :func:`pair_feature_matrix` must agree with it exactly, since
the shipped scorer's weights were fitted on these very values.
"""

from __future__ import annotations

import math
import re
import unicodedata

import numpy as np
import pytest

from indexes.pair_features import (
    BASE_FEATURES,
    PairContext,
    PairRecord,
    ParsedRecords,
    content_tokens,
    extract_codes,
    extract_quantities,
    feature_matrix,
    pair_feature_matrix,
)
from signals.errors import InvalidInput


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def _prefix(a: str, b: str) -> float:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n / max(len(a), len(b))


def reference_features(a: PairRecord, b: PairRecord, cosine: float) -> list[float]:
    """The features of one pair, written out directly."""
    def parse(r: PairRecord) -> dict[str, object]:
        title = _norm(r.title)
        text = title + " " + _norm(r.description)
        tokens = re.findall(r"[^\W_]+", title)
        padded = " " + " ".join(tokens) + " "
        grams: dict[str, int] = {}
        for i in range(len(padded) - 2):
            grams[padded[i:i + 3]] = grams.get(padded[i:i + 3], 0) + 1
        return {"tokens": set(tokens), "n": len(tokens), "text": set(re.findall(r"[^\W_]+", text)),
                "grams": grams, "codes": extract_codes(r.title) | extract_codes(r.description),
                "squashed": re.sub(r"[\W_]", "", text), "content": set(content_tokens(tokens)),
                "described": re.search(r"[^\W_]", _norm(r.description)) is not None,
                "numbers": set(re.findall(r"\d+(?:\.\d+)?", title)),
                "q": extract_quantities(r.title), "price": r.price if r.price and r.price > 0 else None}

    p, q = parse(a), parse(b)
    dot = sum(c * q["grams"].get(g, 0) for g, c in p["grams"].items())  # type: ignore[union-attr]
    na = math.sqrt(sum(c * c for c in p["grams"].values()))  # type: ignore[union-attr]
    nb = math.sqrt(sum(c * c for c in q["grams"].values()))  # type: ignore[union-attr]
    ca, cb = p["codes"], q["codes"]

    def inside(codes: set[str], squashed: str) -> float:
        return sum(1 for c in codes if len(c) >= 4 and c in squashed) / len(codes)

    contained = best = 0.0
    if ca and cb:
        contained = max(inside(ca, q["squashed"]), inside(cb, p["squashed"]))  # type: ignore[arg-type]
        best = max(_prefix(x, y) for x in ca for y in cb)  # type: ignore[union-attr]
    elif ca or cb:
        contained = inside(ca, q["squashed"]) if ca else inside(cb, p["squashed"])  # type: ignore[arg-type]
    exact = bool(ca & cb)  # type: ignore[operator]
    units = set(p["q"]) & set(q["q"])  # type: ignore[arg-type]
    common = len(p["tokens"] & q["tokens"])  # type: ignore[operator]
    smaller = min(len(p["tokens"]), len(q["tokens"]))  # type: ignore[arg-type]
    both = p["price"] is not None and q["price"] is not None
    # Rarity in a neighbourhood of just these two records (counted as 10: MIN_NEIGHBOURHOOD).
    ta, tb = p["content"], q["content"]
    same = a == b

    def w(t: str) -> float:
        return math.log(11 / (1 if same else (t in ta) + (t in tb)))  # type: ignore[operator]

    def total(ts: set[str]) -> float:
        return sum(w(t) for t in ts)

    shared = total(ta & tb)  # type: ignore[operator]
    union, smallest = total(ta | tb), min(total(ta), total(tb))  # type: ignore[operator, arg-type]
    return [
        cosine, _jaccard(p["tokens"], q["tokens"]), common / smaller if smaller else 0.0,  # type: ignore[arg-type]
        dot / (na * nb) if na and nb else 0.0, _jaccard(p["text"], q["text"]),  # type: ignore[arg-type]
        min(p["n"], q["n"]) / max(p["n"], q["n"]) if max(p["n"], q["n"]) else 0.0,  # type: ignore[type-var]
        float(exact), contained, best, float(bool(ca and cb) and not exact and contained == 0.0),
        float(bool(ca) != bool(cb)), _jaccard(p["numbers"], q["numbers"]),  # type: ignore[arg-type]
        float(any(p["q"][u] & q["q"][u] for u in units)),  # type: ignore[index]
        float(any(not (p["q"][u] & q["q"][u]) for u in units)),  # type: ignore[index]
        float(both), min(abs(math.log(p["price"] / q["price"])), 5.0) if both else 0.0,  # type: ignore[operator]
        shared / union if union else 0.0, shared / smallest if smallest else 0.0, cosine - 0.4,
        float(bool(p["described"] and q["described"])),
    ]


WORDS = ("samsung", "sony", "galaxy", "tv", "led", "ultra", "black", "case", "pro", "kit", "new", "inch",
         "madu", "murah", "мёд", "纯天然蜂蜜", "น้ำผึ้งป่า", "kg")
SPECS = ("32gb", "64 GB", "55 inch", '15.6"', "1080p", "2.5 in", "600w", "600 W", "12mp", "3 pack",
         "16gb 32gb", "5 in 5.0in", "1 Kg", "0.5 mm")
CODES = ("UE55AU7100", "ue-55au7100", "UE43AU7100", "KDL-40 EX500", "kdl40ex500", "mb13-pnk-see-v2",
         "SX530", "sx530hs", "4821", "48210", "A1", "x-1.5")


def random_record(rng: np.random.Generator) -> PairRecord:
    parts = [str(rng.choice(WORDS)) for _ in range(int(rng.integers(0, 6)))]
    parts += [str(rng.choice(SPECS)) for _ in range(int(rng.integers(0, 3)))]
    parts += [str(rng.choice(CODES)) for _ in range(int(rng.integers(0, 3)))]
    rng.shuffle(parts)
    title = " ".join(parts)
    if rng.random() < 0.1:
        title = "Ｓａｍｓｕｎｇ ＵＥ５５ " + title  # full-width: NFKC folds it
    description = " ".join(str(rng.choice(WORDS + CODES)) for _ in range(int(rng.integers(0, 8))))
    price = [None, 0.0, float(rng.integers(1, 2000)), float(rng.uniform(1, 10))][int(rng.integers(4))]
    return PairRecord(title, description, price)


def test_bulk_features_equal_the_reference_exactly() -> None:
    rng = np.random.default_rng(11)
    recs = [random_record(rng) for _ in range(300)] + [PairRecord(""), PairRecord("", "only a description 5")]
    ia = rng.integers(0, len(recs), 3000)
    ib = rng.integers(0, len(recs), 3000)
    ia[:len(recs)], ib[:len(recs)] = np.arange(len(recs)), np.arange(len(recs))  # each with itself
    cos = rng.uniform(-1, 1, len(ia))
    got = pair_feature_matrix(ParsedRecords.parse(recs), ia, ib, cos)
    want = np.array([reference_features(recs[a], recs[b], c) for a, b, c in zip(ia, ib, cos, strict=True)])
    for j, name in enumerate(BASE_FEATURES):
        np.testing.assert_allclose(got[:, j], want[:, j], rtol=0, atol=1e-12, err_msg=name)
    # Every feature varies in this sample: a feature stuck at one value would pass vacuously.
    assert all(len(np.unique(want[:, j])) > 1 for j in range(len(BASE_FEATURES)))
    swapped = pair_feature_matrix(ParsedRecords.parse(recs), ib, ia, cos)
    np.testing.assert_array_equal(swapped, got)  # symmetric in the two sides


def test_feature_matrix_parses_each_record_once_and_agrees() -> None:
    rng = np.random.default_rng(12)
    recs = [random_record(rng) for _ in range(40)]
    pairs = [(recs[i], recs[j]) for i, j in rng.integers(0, 40, (200, 2))]
    cos = rng.uniform(0, 1, 200)
    want = np.array([reference_features(a, b, c) for (a, b), c in zip(pairs, cos, strict=True)])
    np.testing.assert_allclose(feature_matrix(pairs, cos), want, rtol=0, atol=1e-12)


def feat(a: str, b: str, cosine: float = 0.9, **kw: float | None) -> dict[str, float]:
    x = feature_matrix([(PairRecord(a, price=kw.get("pa")), PairRecord(b, price=kw.get("pb")))], [cosine])
    return dict(zip(BASE_FEATURES, x[0].tolist(), strict=True))


def test_codes_are_normalised_and_quantities_are_not_codes() -> None:
    assert extract_codes("Sony KDL-40 EX500 tv") == {"kdl40", "ex500"}
    assert extract_codes("LG LDS4821WW dishwasher") == {"lds4821ww"}
    assert extract_codes("mb13-pnk-see-v2 case") == {"mb13pnkseev2"}
    assert extract_codes("32GB microSD 1080p 2.5 inch") == set()
    assert extract_quantities('32GB card, 15.6" screen') == {"gb": frozenset({32.0}),
                                                             "in": frozenset({15.6})}


def test_identical_model_numbers_agree_and_different_ones_conflict() -> None:
    same = feat("Canon PowerShot SX530 HS camera black", "canon sx-530 powershot digital camera")
    other = feat("Canon PowerShot SX530 HS camera black", "Canon PowerShot SX610 HS camera black")
    assert same["code_exact"] == 1.0 and same["code_conflict"] == 0.0
    # Partial: one side's code inside the other's longer code is containment, not conflict.
    partial = feat("Canon PowerShot SX530 HS camera", "canon sx530hs powershot")
    assert partial["code_contained"] == 1.0 and partial["code_conflict"] == 0.0
    assert other["code_exact"] == 0.0 and other["code_conflict"] == 1.0
    # A code split by a space or dash on one side is still found in the other's text.
    split = feat("Denon DVD-2930CI player", "denon dvd 2930ci dvd player")
    assert split["code_exact"] == 1.0 or split["code_contained"] == 1.0


def test_capacity_conflict() -> None:
    f = feat("SanDisk Ultra microSDHC 32GB class 10", "SanDisk Ultra microSDHC 64GB class 10")
    assert f["unit_conflict"] == 1.0 and f["unit_agree"] == 0.0
    g = feat("SanDisk Ultra microSDHC 32GB class 10", "sandisk ultra 32 gb micro sdhc card")
    assert g["unit_agree"] == 1.0 and g["unit_conflict"] == 0.0
    # One unit agrees, another conflicts: both flags.
    h = feat("Monitor 27 inch 144hz", "monitor 27in 60hz")
    assert h["unit_agree"] == 1.0 and h["unit_conflict"] == 1.0


def test_price() -> None:
    f = feat("a b c", "a b d", pa=100.0, pb=50.0)
    assert f["price_both"] == 1.0 and f["price_log_ratio"] == pytest.approx(np.log(2))
    assert feat("a b c", "a b d", pa=100.0)["price_both"] == 0.0
    assert feat("a b c", "a b d", pa=0.0, pb=5.0)["price_both"] == 0.0  # a zero price is no price
    assert feat("a", "b", pa=1e6, pb=1.0)["price_log_ratio"] == 5.0  # capped


def test_bad_input_is_refused_naming_the_field() -> None:
    parsed = ParsedRecords.parse([PairRecord("a"), PairRecord("b")])
    with pytest.raises(InvalidInput) as err:
        feature_matrix([(PairRecord("a"), PairRecord("b"))], [0.1, 0.2])
    assert err.value.field == "cosines"
    with pytest.raises(InvalidInput) as err:
        pair_feature_matrix(parsed, np.array([0]), np.array([1]), [float("nan")])
    assert err.value.field == "cosines"
    with pytest.raises(InvalidInput) as err:
        pair_feature_matrix(parsed, np.array([0]), np.array([2]), [0.5])
    assert err.value.field == "pairs"


def test_parsed_records_take_concat_and_empty() -> None:
    recs = ParsedRecords.parse([PairRecord("sony kdl40ex500"), PairRecord("samsung ue55au7100", price=5.0)])
    both = ParsedRecords.concat([recs, recs.take([1, 0])])
    assert len(both) == 4
    x = pair_feature_matrix(both, np.array([0, 1]), np.array([3, 2]), [1.0, 1.0])
    assert x[:, BASE_FEATURES.index("code_exact")].tolist() == [1.0, 1.0]
    assert len(ParsedRecords.parse([])) == 0
    assert pair_feature_matrix(recs, np.zeros(0, int), np.zeros(0, int), []).shape == (0, len(BASE_FEATURES))


def test_content_tokens_leave_out_sizes_and_units_and_split_unspaced_scripts() -> None:
    assert content_tokens(["beras", "pandan", "1", "kg", "500ml", "0.5", "mm", "x", "30s"]) == \
        ["beras", "pandan", "30s"]
    thai = content_tokens(["น้ำผึ้งป่า"])
    assert "น้ำผึ้งป่า" in thai and "ป่" in thai  # the run and its character bigrams
    assert content_tokens(["蜂蜜"]) == ["蜂蜜"]
    assert content_tokens(["мёд", "1кг"]) == ["мёд", "1кг"]  # a unit the list does not know stays


def test_a_word_every_neighbour_has_weighs_less_than_a_rare_one() -> None:
    # Query 0 shares a word with 1 and with 2: "kaos" is in every record, "velaro" only in 0 and 2.
    recs = [PairRecord("kaos velaro hitam"), PairRecord("kaos rumaki putih"), PairRecord("velaro kaos merah")]
    recs += [PairRecord(f"kaos polos {w}") for w in ("alpha", "beta", "gamma", "delta", "omega")]
    parsed = ParsedRecords.parse(recs)
    ia, ib = np.zeros(7, dtype=np.int64), np.arange(1, 8)
    ctx = PairContext(np.zeros(7, dtype=np.int64), np.full(7, 0.6))
    x = pair_feature_matrix(parsed, ia, ib, np.full(7, 0.8), ctx)
    rare = x[:, BASE_FEATURES.index("rare_token_jaccard")]
    assert rare[1] > 2 * rare[0] > 0  # "velaro" (rare) outweighs "kaos" (everywhere)
    assert x[0, BASE_FEATURES.index("cosine_over_background")] == pytest.approx(0.2)
    # The same pairs each alone: nothing says "kaos" is common, so the gap narrows.
    alone = pair_feature_matrix(parsed, ia, ib, np.full(7, 0.8))[:, BASE_FEATURES.index("rare_token_jaccard")]
    assert rare[1] / rare[0] > alone[1] / alone[0] > 1


def test_a_shared_size_is_no_shared_word() -> None:
    f = feat("Beras Pandan Wangi 1 Kg", "Gula Pasir Putih 1 Kg")
    assert f["unit_agree"] == 1.0 and f["rare_token_jaccard"] == 0.0 and f["rare_token_containment"] == 0.0


def test_context_of_the_wrong_length_is_refused() -> None:
    parsed = ParsedRecords.parse([PairRecord("a"), PairRecord("b")])
    with pytest.raises(InvalidInput) as err:
        pair_feature_matrix(parsed, np.array([0]), np.array([1]), [0.5],
                            PairContext(np.zeros(2, int), np.zeros(2)))
    assert err.value.field == "context"


@pytest.mark.parametrize("at_a_time", [1 << 20, 5])
def test_codes_longer_than_the_compared_width_still_equal_the_reference(
        at_a_time: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # ...also when the code comparisons are laid out a few at a time (5: pairs split across slices)
    monkeypatch.setattr("indexes.pair_features._CODE_PAIRS_AT_A_TIME", at_a_time)
    # Codes are compared as a 32-character matrix, and pairs agreeing on all of it are finished in
    # Python: prefixes of 31, 32, 33 and 59 characters, codes of unequal length, several a side.
    stem = "ab12" * 15  # 60 characters
    titles = [stem, stem[:59] + "z", stem[:33] + "q", stem[:32] + "q9", stem[:31] + "w9", stem[:40],
              f"{stem[:20]} kdl40ex500 {stem[:36]}x", "kdl40ex5000 sx530", "no code at all"]
    recs = [PairRecord(t, d) for t in titles for d in ("", f"fits {stem[:45]} and KDL-40 EX500")]
    ia, ib = np.triu_indices(len(recs))
    cos = np.full(len(ia), 0.7)
    got = pair_feature_matrix(ParsedRecords.parse(recs), ia, ib, cos)
    want = np.array([reference_features(recs[a], recs[b], c) for a, b, c in zip(ia, ib, cos, strict=True)])
    for name in ("code_exact", "code_contained", "code_best_similarity", "code_conflict",
                 "code_one_side_only"):
        j = BASE_FEATURES.index(name)
        np.testing.assert_allclose(got[:, j], want[:, j], rtol=0, atol=1e-12, err_msg=name)
    best = got[:, BASE_FEATURES.index("code_best_similarity")]
    assert len(np.unique(best)) > 6  # the prefixes above give many distinct similarities
    # Pairs whose codes are all on one side (one direction has nothing to look up).
    one_sided = [(PairRecord("plain words"), PairRecord("fits SX530 and KDL-40 EX500")),
                 (PairRecord("SX530 case"), PairRecord("a case"))]
    for a, b in one_sided:  # one pair a call: a whole call with nothing on one side
        np.testing.assert_allclose(feature_matrix([(a, b)], [0.8])[0], reference_features(a, b, 0.8),
                                   rtol=0, atol=1e-12)  # the prefixes above give many distinct similarities


def test_rarity_in_shared_neighbourhoods_equals_its_definition() -> None:
    # Pairs in groups (a query and its candidates): a token's weight is log((N + 1) / df) over
    # the group's distinct records, N at least 10; written out here one group at a time.
    rng = np.random.default_rng(13)
    recs = [random_record(rng) for _ in range(120)]
    parsed = ParsedRecords.parse(recs)
    groups = np.repeat(np.arange(40), rng.integers(1, 25, 40))
    ia = np.array([int(q) * 3 for q in groups], dtype=np.int64)  # one query a group
    ib = rng.integers(0, len(recs), len(groups))
    ctx = PairContext(groups, np.full(len(ia), 0.4))
    got = pair_feature_matrix(parsed, ia, ib, np.full(len(ia), 0.5), ctx)
    content = [set(content_tokens(re.findall(r"[^\W_]+", _norm(r.title)))) for r in recs]
    for k in range(len(ia)):
        members = {int(r) for i in np.flatnonzero(groups == groups[k]) for r in (ia[i], ib[i])}
        size = max(len(members), 10)

        def w(token: str, members: set[int] = members, size: int = size) -> float:
            return math.log((size + 1) / sum(token in content[r] for r in members))

        ta, tb = content[ia[k]], content[ib[k]]
        shared, union = sum(map(w, ta & tb)), sum(map(w, ta | tb))
        smallest = min(sum(map(w, ta)), sum(map(w, tb)))
        assert got[k, BASE_FEATURES.index("rare_token_jaccard")] == pytest.approx(
            shared / union if union else 0.0, abs=1e-12)
        assert got[k, BASE_FEATURES.index("rare_token_containment")] == pytest.approx(
            shared / smallest if smallest else 0.0, abs=1e-12)
