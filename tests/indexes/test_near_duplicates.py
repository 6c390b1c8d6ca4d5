"""The near-duplicate decision per modality: candidates, the pair-scorer and copy rules, PDQ variants.

No embedding model: vectors are small hand-made unit vectors in an exact ``VectorIndex``
whose cosines to the query ``E0`` are chosen (mostly exact in float32, so boundaries
can be tested as boundaries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from indexes.config import NearDuplicateConfig, VectorIndexConfig
from indexes.near_duplicates import (
    Neighbour,
    TextNearDuplicates,
    canonical_pairs,
    load_pair_scorer,
    pdq_near_duplicates,
    vector_near_duplicates,
)
from indexes.pair_features import BACKGROUND_FLOOR, PairContext, PairRecord, ParsedRecords, feature_matrix
from indexes.pair_scorer import DEFAULT_MODEL_PATH, PairScorer
from indexes.pdq import PdqIndex
from indexes.vector import Hit, VectorIndex
from signals.errors import InvalidInput
from tests.indexes.conftest import flip_bits

DIM = 4
E0 = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)


def at(cosine: float) -> np.ndarray:
    """A unit vector whose cosine to ``E0`` is ``cosine`` (exact when it is a float32)."""
    return np.array([cosine, np.sqrt(1.0 - cosine * cosine), 0.0, 0.0], dtype=np.float32)


def vector_index(items: dict[str, np.ndarray]) -> VectorIndex:
    idx = VectorIndex(VectorIndexConfig(dim=DIM, quantization="none"))
    idx.add(list(items), np.stack(list(items.values())))
    return idx


@pytest.fixture(scope="module")
def scorer() -> PairScorer:
    loaded = load_pair_scorer("default")
    assert loaded is not None
    return loaded


def records(by_id: dict[str, PairRecord]) -> Callable[[list[str]], ParsedRecords]:
    return lambda ids: ParsedRecords.parse([by_id[i] for i in ids])


def parsed(*records: PairRecord) -> ParsedRecords:
    return ParsedRecords.parse(records)


def never_called(ids: list[str]) -> ParsedRecords:
    raise AssertionError(f"parsed_of called with {ids!r}")


def ids_of(rows: Sequence[Sequence[Hit | Neighbour]]) -> list[list[str]]:
    return [[x.id for x in row] for row in rows]


# ------------------------------------------------------------------ canonical_pairs
def test_canonical_pairs_orders_dedupes_and_sorts() -> None:
    a = np.array([3, 1, 2, 2, 5, 3, 0])
    b = np.array([1, 3, 2, 4, 0, 1, 5])
    s = np.array([0.5, 0.9, 1.0, 0.7, 0.6, 0.8, 0.4])
    p = canonical_pairs(a, b, s)
    # (1,3) seen three times keeps 0.9; (2,2) is a self pair; (0,5) twice keeps 0.6.
    assert p.a.tolist() == [0, 1, 2] and p.b.tolist() == [5, 3, 4]
    np.testing.assert_array_equal(p.score, np.array([0.6, 0.9, 0.7], dtype=np.float32))
    assert (p.a.dtype, p.b.dtype, p.score.dtype) == (np.int64, np.int64, np.float32)


def test_canonical_pairs_in_int32_rows_gives_the_same_pairs() -> None:
    rng = np.random.default_rng(0)
    a, b, s = rng.integers(0, 50, 400), rng.integers(0, 50, 400), rng.random(400)
    wide, narrow = canonical_pairs(a, b, s), canonical_pairs(a, b, s, rows=np.int32)
    assert narrow.a.dtype == narrow.b.dtype == np.int32
    assert wide.a.tolist() == narrow.a.tolist() and wide.b.tolist() == narrow.b.tolist()
    np.testing.assert_array_equal(wide.score, narrow.score)


@pytest.mark.parametrize(("a", "b"), [([], []), ([4, 7], [4, 7])], ids=["empty", "only-self-pairs"])
def test_canonical_pairs_empty(a: list[int], b: list[int]) -> None:
    p = canonical_pairs(np.array(a), np.array(b), np.ones(len(a)))
    assert len(p.a) == len(p.b) == len(p.score) == 0
    assert (p.a.dtype, p.b.dtype, p.score.dtype) == (np.int64, np.int64, np.float32)


# ------------------------------------------------------------ TextNearDuplicates.candidates
# Cosines to E0, all exact in float32: boundaries are real boundaries.
LADDER = {"own": at(1.0), "c990": at(0.99), "c875": at(0.875), "c750": at(0.75), "c625": at(0.625),
          "c500": at(0.5), "c375": at(0.375), "far": np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)}


def test_candidates_floor_is_the_candidate_floor_with_a_scorer(scorer: PairScorer) -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(text_candidate_floor=0.5), 0.75, scorer)
    got = nd.candidates(vector_index(LADDER), E0, ["own"])
    assert ids_of(got) == [["c990", "c875", "c750", "c625", "c500"]]  # 0.5 itself is in


def test_candidates_floor_is_the_cosine_threshold_without_a_scorer() -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(text_candidate_floor=0.5), 0.75, None)
    got = nd.candidates(vector_index(LADDER), E0, ["own"])
    assert ids_of(got) == [["c990", "c875", "c750"]]  # 0.75 itself is in


def test_candidates_keep_at_most_text_k_best_first(scorer: PairScorer) -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(text_k=2, text_candidate_floor=0.5), 0.75, scorer)
    idx = vector_index(LADDER)
    got = nd.candidates(idx, np.vstack([E0, E0]), ["own", None])
    # Own id excluded (and not counted against text_k); with no own id the item itself is a hit.
    assert ids_of(got) == [["c990", "c875"], ["own", "c990"]]
    wide = TextNearDuplicates(NearDuplicateConfig(text_k=50, text_candidate_floor=-1.0), 0.75, scorer)
    hits = wide.candidates(idx, E0, ["own"])[0]
    assert len(hits) == len(LADDER) - 1
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_default_candidates_reach_50_neighbours_down_to_cosine_0_4(scorer: PairScorer) -> None:
    # The defaults were picked on the listing-pair valid splits: WDC's matching offers often sit
    # past the 20th neighbour (many variants of one product line) and below cosine 0.5.
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.9, scorer)
    assert (nd.config.text_k, nd.config.text_candidate_floor) == (50, 0.4)
    crowd = {f"n{i:02d}": at(0.7 - i / 512) for i in range(60)}  # 0.7 down to 0.585
    got = nd.candidates(vector_index({"own": at(1.0), **crowd}), E0, ["own"])[0]
    assert [h.id for h in got] == sorted(crowd)[:50]
    few = nd.candidates(vector_index(LADDER), E0, ["own"])[0]
    assert [h.id for h in few] == ["c990", "c875", "c750", "c625", "c500"]  # 0.375 is below 0.4


def test_candidates_refuse_mismatched_exclude() -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.75, None)
    with pytest.raises(InvalidInput) as err:
        nd.candidates(vector_index(LADDER), np.vstack([E0, E0]), ["own"])
    assert err.value.field == "exclude"


# ---------------------------------------------------------------- TextNearDuplicates.decide
def test_decide_without_a_scorer_is_the_cosine_threshold() -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.75, None)
    cands = [[Hit("a", 0.8), Hit("b", 0.75), Hit("c", 0.7)], [], [Hit("d", 0.74)]]
    got = nd.decide(None, cands, never_called)
    assert got == [[Neighbour("a", 0.8), Neighbour("b", 0.75)], [], []]  # score: the cosine


def test_decide_with_a_scorer_needs_the_queries(scorer: PairScorer) -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.75, scorer)
    with pytest.raises(InvalidInput) as err:
        nd.decide(None, [[Hit("a", 0.8)]], never_called)
    assert err.value.field == "queries"


def test_decide_refuses_parsed_records_of_another_length(scorer: PairScorer) -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.75, scorer)
    with pytest.raises(InvalidInput) as err:
        nd.decide(parsed(ORIGINAL), [[Hit("a", 0.8), Hit("b", 0.7)]], lambda ids: parsed(BAIT))
    assert err.value.field == "parsed_of"


def test_decide_with_no_candidates_reads_no_records(scorer: PairScorer) -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.75, scorer)
    assert nd.decide(parsed(PairRecord("q1"), PairRecord("q2")), [[], []], never_called) == [[], []]


def test_decide_refuses_mismatched_candidates(scorer: PairScorer) -> None:
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.75, scorer)
    with pytest.raises(InvalidInput) as err:
        nd.decide(parsed(PairRecord("q")), [[], []], never_called)
    assert err.value.field == "candidates"


def test_scorer_tells_model_numbers_apart_and_keeps_a_reworded_copy(scorer: PairScorer) -> None:
    by_id = {
        "tv55": PairRecord("Samsung UE55AU7100 55 inch TV", price=499.0),
        "tv43": PairRecord("Samsung UE43AU7100 43 inch TV", price=349.0),
        "tv55-copy": PairRecord("Samsung UE55AU7100 55 inch Smart TV", price=489.0),
    }
    # The embedding puts the other model even closer than the copy: cosine alone would merge it.
    idx = vector_index({"tv55": at(1.0), "tv43": at(0.9375), "tv55-copy": at(0.90625)})
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.9, scorer)
    cands = nd.candidates(idx, E0, ["tv55"])
    assert ids_of(cands) == [["tv43", "tv55-copy"]]
    got = nd.decide(parsed(by_id["tv55"]), cands, records(by_id))
    assert ids_of(got) == [["tv55-copy"]]
    # Below the copy cosine: the scorer's decision score, in the query's neighbourhood (both candidates).
    features = feature_matrix([(by_id["tv55"], by_id["tv43"]), (by_id["tv55"], by_id["tv55-copy"])],
                              [0.9375, 0.90625],
                              PairContext(np.zeros(2, dtype=np.int64), np.full(2, BACKGROUND_FLOOR)))
    expected = scorer.decision_scores(features, NearDuplicateConfig().text_copy_title_similarity)[1]
    assert got[0][0].score == pytest.approx(expected, abs=1e-6)
    by_cosine = TextNearDuplicates(NearDuplicateConfig(), 0.9, None)
    assert by_cosine.decide(None, cands, never_called) == [
        [Neighbour("tv43", 0.9375), Neighbour("tv55-copy", 0.90625)]]


# A bait-priced repost: the very same text, a price to lure a buyer off the platform.
ORIGINAL = PairRecord("iPhone 13 128GB blue unlocked", "Excellent condition, comes with box and charger",
                      260.0)
BAIT = PairRecord(ORIGINAL.title, ORIGINAL.description, 45.0)


def test_a_bait_priced_repost_is_a_copy_whatever_the_price(scorer: PairScorer) -> None:
    # "Same product" weighs the price; "a copy" is asked of the text alone, so the bait price
    # cannot hide a repost.
    x = feature_matrix([(ORIGINAL, BAIT)], [0.95])
    copy_only = scorer.score_features(x, price_blind=True)[0]
    assert copy_only >= scorer.threshold
    assert scorer.decision_scores(x, 0.9)[0] == pytest.approx(max(copy_only, scorer.score_features(x)[0]))
    by_id = {"orig": ORIGINAL, "bait": BAIT, "far": PairRecord("Vintage leather sofa", price=260.0)}
    idx = vector_index({"orig": at(1.0), "bait": at(1.0), "far": at(0.5)})
    config = NearDuplicateConfig()
    assert config.text_copy_cosine is not None and config.text_copy_cosine <= 1.0
    nd = TextNearDuplicates(config, 0.9, scorer)
    cands = nd.candidates(idx, E0, ["orig"])
    assert ids_of(cands) == [["bait", "far"]]
    # A copy's score is the larger of the decision score and the cosine.
    assert nd.decide(parsed(ORIGINAL), cands, records(by_id)) == [[Neighbour("bait", 1.0)]]
    # Either copy rule alone still finds it.
    for update in ({"text_copy_cosine": None}, {"text_copy_title_similarity": None}):
        one = TextNearDuplicates(config.model_copy(update=update), 0.9, scorer)
        assert ids_of(one.decide(parsed(ORIGINAL), cands, records(by_id))) == [["bait"]]


def test_copy_cosine_is_inclusive(scorer: PairScorer) -> None:
    # Texts with nothing in common that the scorer rejects: only the copy cosine can pair them.
    other = PairRecord("Vintage leather sofa three seater", price=900.0)
    assert scorer.decide([(ORIGINAL, other)], [0.875]).tolist() == [False]
    cands = [[Hit("other", 0.875)]]
    by_id = {"other": other}
    at_rule = TextNearDuplicates(NearDuplicateConfig(text_copy_cosine=0.875), 0.9, scorer)
    assert at_rule.decide(parsed(ORIGINAL), cands, records(by_id)) == [[Neighbour("other", 0.875)]]
    above = TextNearDuplicates(NearDuplicateConfig(text_copy_cosine=0.90625), 0.9, scorer)
    assert above.decide(parsed(ORIGINAL), cands, records(by_id)) == [[]]


def _self_cosine_above_one() -> tuple[VectorIndex, np.ndarray]:
    """An index holding one vector whose float32 inner product with itself rounds above 1."""
    for k in range(1, 200):
        v = np.array([[1.0, float(k), 3.0, 7.0]])
        v = (v / np.linalg.norm(v)).astype(np.float32)
        idx = vector_index({"x": v[0]})
        if idx.search(v, 1)[0][0].score > 1.0:
            return idx, v
    raise AssertionError("no vector with a float32 self-similarity above 1 found")


@pytest.mark.parametrize("with_scorer", [False, True], ids=["no-scorer", "copy-rule"])
def test_text_scores_are_at_most_one(scorer: PairScorer, with_scorer: bool) -> None:
    idx, v = _self_cosine_above_one()
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.9, scorer if with_scorer else None)
    cands = nd.candidates(idx, v, [None])
    got = nd.decide(parsed(ORIGINAL), cands, records({"x": ORIGINAL}))
    assert [n.id for n in got[0]] == ["x"]
    assert got[0][0].score <= 1.0


# ------------------------------------------------------------------ vector_near_duplicates
def test_vector_threshold_is_inclusive_and_own_id_excluded() -> None:
    idx = vector_index({"own": at(1.0), "a": at(0.875), "b": at(0.75), "c": at(0.625)})
    got = vector_near_duplicates(idx, np.vstack([E0, E0]), 0.75, ["own", None])
    assert got == [[Neighbour("a", 0.875), Neighbour("b", 0.75)],
                   [Neighbour("own", 1.0), Neighbour("a", 0.875), Neighbour("b", 0.75)]]


def test_vector_scores_are_clipped_at_one() -> None:
    idx, v = _self_cosine_above_one()
    assert idx.range_search(v, 0.99)[0][0].score > 1.0  # the index itself reports > 1
    assert vector_near_duplicates(idx, v, 0.99, [None]) == [[Neighbour("x", 1.0)]]


# ------------------------------------------------------------------ pdq_near_duplicates
def pdq_index(items: dict[str, np.ndarray]) -> PdqIndex:
    idx = PdqIndex()
    idx.add(list(items), np.stack(list(items.values())))
    return idx


def random_hash(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 32, dtype=np.uint8)


def test_pdq_matches_through_the_mirror_variant() -> None:
    rng = np.random.default_rng(1)
    plain, mirror = random_hash(rng), random_hash(rng)
    idx = pdq_index({"stored": flip_bits(mirror, 5, rng)})
    assert idx.range_search(plain[None], 31) == [[]]  # the hash alone finds nothing
    got = pdq_near_duplicates(idx, [plain[None], mirror[None]], 31, [None])
    assert got == [[Neighbour("stored", 1.0 - 5 / 256)]]
    assert pdq_near_duplicates(idx, [plain[None]], 31, [None]) == [[]]


def test_pdq_closest_variant_wins_whatever_the_order() -> None:
    rng = np.random.default_rng(2)
    stored = random_hash(rng)
    idx = pdq_index({"s": stored})
    plain, mirror = flip_bits(stored, 10, rng)[None], flip_bits(stored, 3, rng)[None]
    want = [[Neighbour("s", 1.0 - 3 / 256)]]
    assert pdq_near_duplicates(idx, [plain, mirror], 31, [None]) == want
    assert pdq_near_duplicates(idx, [mirror, plain], 31, [None]) == want


def test_pdq_threshold_is_inclusive_and_own_id_excluded() -> None:
    rng = np.random.default_rng(3)
    q = random_hash(rng)
    idx = pdq_index({"own": q.copy(), "edge": flip_bits(q, 31, rng), "out": flip_bits(q, 32, rng)})
    got = pdq_near_duplicates(idx, [np.vstack([q, q])], 31, ["own", None])
    assert got == [[Neighbour("edge", 1.0 - 31 / 256)],
                   [Neighbour("own", 1.0), Neighbour("edge", 1.0 - 31 / 256)]]
    assert pdq_near_duplicates(idx, [q[None]], 30, ["own"]) == [[]]


def test_pdq_results_by_score_then_id() -> None:
    rng = np.random.default_rng(4)
    q = random_hash(rng)
    idx = pdq_index({"b": flip_bits(q, 2, rng), "a": flip_bits(q, 2, rng), "c": flip_bits(q, 1, rng),
                     "d": flip_bits(q, 20, rng)})
    got = pdq_near_duplicates(idx, [q[None]], 31, [None])[0]
    assert [(n.id, n.score) for n in got] == [("c", 1 - 1 / 256), ("a", 1 - 2 / 256), ("b", 1 - 2 / 256),
                                              ("d", 1 - 20 / 256)]


def test_pdq_refuses_variants_of_another_length() -> None:
    rng = np.random.default_rng(5)
    q = np.stack([random_hash(rng), random_hash(rng)])
    idx = pdq_index({"x": q[0]})
    with pytest.raises(InvalidInput) as err:
        pdq_near_duplicates(idx, [q, q[:1]], 31, [None, None])
    assert err.value.field == "variants"


# -------------------------------------------------------------------- load_pair_scorer
def test_load_pair_scorer_settings(tmp_path: Path) -> None:
    assert load_pair_scorer("none") is None
    default = load_pair_scorer("default")
    assert isinstance(default, PairScorer)
    assert default.threshold == PairScorer.load(DEFAULT_MODEL_PATH).threshold
    missing = tmp_path / "nope.json"
    with pytest.raises(InvalidInput) as err:
        load_pair_scorer(str(missing))
    assert err.value.code == "not_found"
    assert err.value.field == "indexes.near_duplicates.pair_scorer"
    assert str(missing) in err.value.reason


def test_text_threshold_is_inclusive_of_its_float32_value_like_range_search() -> None:
    """listing_text (scorer none) and review_text agree at the threshold's edge."""
    idx = VectorIndex(VectorIndexConfig(dim=4, quantization="none"))
    idx.add(["a", "b"], np.array([[1, 0, 0, 0], [0.9, np.sqrt(0.19), 0, 0]], np.float32))
    q = np.array([[1, 0, 0, 0]], np.float32)
    assert [n.id for n in vector_near_duplicates(idx, q, 0.9, ["a"])[0]] == ["b"]
    nd = TextNearDuplicates(NearDuplicateConfig(), 0.9, None)
    cands = nd.candidates(idx, q, ["a"])
    assert [h.id for h in cands[0]] == ["b"]
    found = nd.decide(parsed(PairRecord("q")), cands, lambda ids: parsed(*[PairRecord("x")] * len(ids)))
    assert [n.id for n in found[0]] == ["b"]


def test_every_modality_keeps_at_most_limit_neighbours_best_first() -> None:
    """A stock photo or a review template shared by many items: bounded pairs per item."""
    idx = VectorIndex(VectorIndexConfig(dim=4, quantization="none"))
    base = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    vecs = []
    for i in range(30):
        v = base + np.array([0, 0.001 * i, 0, 0], np.float32)
        vecs.append(v / np.linalg.norm(v))
    idx.add([f"r{i:02d}" for i in range(30)], np.stack(vecs))
    got = vector_near_duplicates(idx, np.stack(vecs[:1]), 0.9, ["r00"], limit=5)[0]
    assert [n.id for n in got] == ["r01", "r02", "r03", "r04", "r05"]
    pdq = PdqIndex()
    h = np.zeros((30, 32), np.uint8)
    for i in range(30):
        h[i, i // 8] = 1 << (i % 8)  # i-th item: one bit set, 2 bits from any other item
    pdq.add([f"p{i:02d}" for i in range(30)], h)
    got_pdq = pdq_near_duplicates(pdq, [h[:1]], 31, ["p00"], limit=4)[0]
    assert len(got_pdq) == 4 and [n.id for n in got_pdq] == ["p01", "p02", "p03", "p04"]
