"""The near-duplicate decision, per modality: one rule for the batch job and the HTTP path.

An index finds neighbours; this module decides which neighbours are near-duplicates,
so that the catalogue-wide batch job and the per-request service call the very same
rule and never disagree on what a "near-duplicate" is:

* ``listing_text``: the ``text_k`` nearest listings by embedding cosine (at or above
  ``text_candidate_floor``) are candidates: the listing's neighbourhood. They are scored
  together by the :class:`~indexes.pair_scorer.PairScorer` (features in
  :mod:`indexes.pair_features`, some read from the neighbourhood: word rarity, how far a
  candidate stands out of it, so how many neighbours a listing keeps adapts to how dense its
  neighbourhood is). Two questions are kept apart
  (:meth:`~indexes.pair_scorer.PairScorer.decision_scores`): is the text a **copy** (the
  text's evidence alone, prices ignored: a scam repost keeps the text and baits with the
  price), and is it the **same product** (prices included: what clustering and
  ``price.anomaly`` need). The pair's score is the larger; a pair at or above
  ``text_copy_cosine`` is a copy whatever the scorer says (score: at least the cosine).
  With ``pair_scorer: none`` the decision is the cosine against ``thresholds.listing_text``
  and the score is the cosine.
* ``review_text`` and ``image_sscd``: cosine at or above the modality's threshold;
  the score is the cosine.
* Every modality keeps at most ``max_neighbours`` (100) per item, best first, so a stock
  photo or a review template shared by 100k items costs 100 pairs an item, not 100k.
* ``image_pdq``: Hamming distance within ``thresholds.image_pdq`` of the image's hash or,
  with ``pdq_variants``, of its mirrored or frame-trimmed hash; hashes below
  ``pdq_min_quality`` (flat, featureless images that collide with each other) neither
  query nor get stored. The score is ``1 - distance / 256``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from indexes.clustering import Pairs
from indexes.config import IndexesConfig, NearDuplicateConfig
from indexes.pair_features import PairContext, ParsedRecords, background_cosine, pair_feature_matrix
from indexes.pair_scorer import DEFAULT_MODEL_PATH, PairScorer
from indexes.pdq import PdqHit
from indexes.vector import Hit
from signals.errors import InvalidInput

_SCORE_CHUNK = 8192  # candidate pairs featurised at a time


class VectorSearch(Protocol):
    """What the rules need of a vector index: a :class:`~indexes.vector.VectorIndex`, or one
    split over shards whose answers are merged."""

    def search(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]: ...


class HashSearch(Protocol):
    """What the PDQ rule needs of a hash index (a :class:`~indexes.pdq.PdqIndex`, or a split one)."""

    def range_search(self, hashes: np.ndarray, threshold: int | None = None) -> list[list[PdqHit]]: ...


# A decided near-duplicate: the other item's id and the pair's score in [0, 1] (the
# shape of an index hit, whose score is a raw cosine).
Neighbour = Hit


def load_pair_scorer(setting: str) -> PairScorer | None:
    """The scorer a ``near_duplicates.pair_scorer`` setting names (None for ``none``)."""
    if setting == "none":
        return None
    path = DEFAULT_MODEL_PATH if setting == "default" else Path(setting)
    if not path.is_file():
        raise InvalidInput("indexes.near_duplicates.pair_scorer", f"no pair scorer file at {str(path)!r}",
                           "not_found")
    return PairScorer.load(path)


class TextNearDuplicates:
    """Listing text near-duplicates: embedding candidates, pair-scorer decision."""

    def __init__(self, config: NearDuplicateConfig, cosine_threshold: float,
                 scorer: PairScorer | None) -> None:
        self.config = config
        self.cosine_threshold = float(cosine_threshold)
        self.scorer = scorer

    @classmethod
    def from_config(cls, config: IndexesConfig) -> TextNearDuplicates:
        nd = config.near_duplicates
        return cls(nd, config.thresholds.listing_text, load_pair_scorer(nd.pair_scorer))

    def candidates(self, index: VectorSearch, vectors: np.ndarray,
                   exclude: Sequence[str | None]) -> list[list[Hit]]:
        """Each query's neighbours worth deciding on (its own id excluded), best first."""
        if len(exclude) != len(vectors):
            raise InvalidInput("exclude", f"{len(exclude)} ids for {len(vectors)} queries")
        floor = _f32(self.config.text_candidate_floor if self.scorer is not None else self.cosine_threshold)
        found = index.search(vectors, self.config.text_k + 1)
        return [[h for h in hits if h.score >= floor and h.id != own][: self.config.text_k]
                for hits, own in zip(found, exclude, strict=True)]

    def decide(self, queries: ParsedRecords | None, candidates: Sequence[Sequence[Hit]],
               parsed_of: Callable[[list[str]], ParsedRecords]) -> list[list[Neighbour]]:
        """The candidates that are near-duplicates of each query, with the pair's score.

        ``queries``: the queries' parsed records (:meth:`ParsedRecords.parse`), one per
        candidate list; only the scorer reads them (``None`` will do without one).
        ``parsed_of(ids)``: the parsed records of candidate ids, one row per id, in order.
        """
        scoring: tuple[PairScorer, ParsedRecords] | None = None
        if self.scorer is not None:
            if queries is None:
                raise InvalidInput("queries", "the pair scorer needs the queries' parsed records")
            scoring = (self.scorer, queries)
        if queries is not None and len(queries) != len(candidates):
            raise InvalidInput("candidates", f"{len(candidates)} candidate lists for {len(queries)} queries")
        out: list[list[Neighbour]] = [[] for _ in candidates]
        flat = [(qi, h) for qi, hits in enumerate(candidates) for h in hits]
        if not flat:
            return out
        cosines = np.array([h.score for _, h in flat], dtype=np.float64)
        if scoring is None:
            scores, keep = cosines, cosines >= _f32(self.cosine_threshold)
        else:
            scores = self._scores(scoring[0], scoring[1], candidates, cosines, parsed_of,
                                  self.config.text_copy_title_similarity)
            keep = scores >= scoring[0].threshold
            copy = self.config.text_copy_cosine
            if copy is not None:
                copies = cosines >= _f32(copy)
                keep = keep | copies
                scores = np.where(copies, np.maximum(scores, cosines), scores)
        for (qi, h), s, k in zip(flat, scores.tolist(), keep.tolist(), strict=True):
            if k:
                out[qi].append(Neighbour(h.id, min(1.0, float(s))))
        return out

    @staticmethod
    def _scores(scorer: PairScorer, queries: ParsedRecords, candidates: Sequence[Sequence[Hit]],
                cosines: np.ndarray, parsed_of: Callable[[list[str]], ParsedRecords],
                copy_title_similarity: float | None) -> np.ndarray:
        """Each candidate pair's score, in ``candidates`` order
        (:meth:`~indexes.pair_scorer.PairScorer.decision_scores`: copy or same product).

        A query's candidates are its neighbourhood (:class:`~indexes.pair_features.PairContext`):
        they are scored together, never split across chunks.
        """
        scores = np.empty(len(cosines), dtype=np.float64)
        starts = np.concatenate([[0], np.cumsum([len(c) for c in candidates])]).astype(np.int64)
        q = 0
        while q < len(candidates):
            # Whole queries, about _SCORE_CHUNK pairs: one chunk's candidate records at a time.
            end = q + 1
            while end < len(candidates) and starts[end + 1] - starts[q] <= _SCORE_CHUNK:
                end += 1
            lo, hi = int(starts[q]), int(starts[end])
            asked = [i for i in range(q, end) if candidates[i]]
            if hi > lo:
                ids = [h.id for i in asked for h in candidates[i]]
                others = parsed_of(ids)
                if len(others) != len(ids):
                    raise InvalidInput("parsed_of", f"{len(others)} parsed records for {len(ids)} ids")
                which = np.repeat(np.arange(len(asked)), [len(candidates[i]) for i in asked])
                background = np.array([background_cosine([h.score for h in candidates[i]]) for i in asked])
                both = ParsedRecords.concat([queries.take(np.asarray(asked, dtype=np.int64)), others])
                features = pair_feature_matrix(both, which, len(asked) + np.arange(len(ids)),
                                               cosines[lo:hi], PairContext(which, background[which]))
                scores[lo:hi] = scorer.decision_scores(features, copy_title_similarity)
            q = end
        return scores


def _f32(threshold: float) -> float:
    """A threshold as the float32 the index compares (``range_search`` is inclusive of it)."""
    return float(np.float32(threshold))


def vector_near_duplicates(index: VectorSearch, vectors: np.ndarray, threshold: float,
                           exclude: Sequence[str | None], limit: int = 100) -> list[list[Neighbour]]:
    """``review_text`` / ``image_sscd``: the (at most ``limit``) stored vectors at cosine >= threshold.

    A k-nearest search rather than a range search: a template shared by 100k reviews
    must cost ``limit`` neighbours per query, not 100k.
    """
    thr = _f32(threshold)
    found = index.search(vectors, limit + 1)
    return [[Neighbour(h.id, float(min(1.0, h.score))) for h in hits
             if h.id != own and h.score >= thr][:limit]
            for hits, own in zip(found, exclude, strict=True)]


def pdq_near_duplicates(index: HashSearch, variants: Sequence[np.ndarray], threshold: int,
                        exclude: Sequence[str | None], limit: int = 100) -> list[list[Neighbour]]:
    """``image_pdq``: the (at most ``limit``) closest stored hashes within ``threshold`` bits of
    any variant of each query.

    ``variants`` are ``(n, 32)`` packed-hash arrays of the same n images (the hash
    itself first, then e.g. its mirror and frame-trimmed hashes); the closest wins.
    """
    n = len(exclude)
    for hashes in variants:
        if len(hashes) != n:
            raise InvalidInput("variants", f"{len(hashes)} hashes for {n} queries")
    best: list[dict[str, int]] = [{} for _ in exclude]
    if not n or not variants:
        return [[] for _ in exclude]
    # One search for every variant of every query (one fan-out when the index is split).
    found = index.range_search(np.concatenate([np.asarray(v) for v in variants]), threshold)
    for row, hits in enumerate(found):
        qi = row % n
        seen = best[qi]
        for h in hits:
            if h.id != exclude[qi] and h.distance < seen.get(h.id, 257):
                seen[h.id] = h.distance
    return [sorted((Neighbour(i, 1.0 - d / 256.0) for i, d in seen.items()),
                   key=lambda nb: (-nb.score, nb.id))[:limit]
            for seen in best]


def canonical_pairs(a: np.ndarray, b: np.ndarray, score: np.ndarray,
                    rows: type[np.signedinteger] = np.int64) -> Pairs:
    """Each unordered pair once (a < b, self pairs dropped), keeping its highest score, sorted.

    ``rows``: the row numbers' dtype; ``np.int32`` halves the sort's memory at millions
    of pairs (a batch job's read-back), for row numbers below 2^31.
    """
    a = np.asarray(a, dtype=rows)
    b = np.asarray(b, dtype=rows)
    s = np.asarray(score, dtype=np.float32)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    del a, b
    keep = lo != hi
    lo, hi, s = lo[keep], hi[keep], s[keep]
    del keep
    if not len(lo):
        z = np.zeros(0, dtype=rows)
        return Pairs(z, z, np.zeros(0, dtype=np.float32))
    order = np.lexsort((-s, hi, lo))  # by (lo, hi), best score first within a pair
    lo, hi, s = lo[order], hi[order], s[order]
    del order
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return Pairs(lo[first], hi[first], s[first])
