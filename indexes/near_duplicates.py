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
* ``review_text``: :class:`~indexes.review_templates.ReviewTemplateRule`: the nearest reviews
  at or above its candidate floor (:func:`vector_near_duplicates`), decided on the texts'
  shared material (copies with small edits, templates, long paraphrases; never short common
  praise); the score is the cosine.
* ``image_sscd``: :class:`ImageNearDuplicates`. Each image is indexed and queried with
  its whole (frame-trimmed) SSCD vector and its region vectors (``image_sscd_regions``:
  the four quarter tiles and the centre), so a crop, or the photo as one tile of a
  collage, finds its original from either side. The ``image_k`` best images at or above
  ``image_candidate_floor`` are candidates, and each is verified geometrically on the
  stored local features (``image_local``, :func:`indexes.image_verify.verify_pair`):
  a copy shares pixels that one transform maps onto each other, another product shot
  alike does not. See :class:`ImageNearDuplicates` for the score.
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
from indexes.config import IndexesConfig, NearDuplicateConfig, ThresholdsConfig
from indexes.image_verify import Verification, verify_pair
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


REGION_SEPARATOR = "@"
"""Index ids of region vectors: ``<image id>@<region>`` (the whole image is ``<image id>``). An
image id is ``<record id>/<position>``, so the separator is looked for after its last ``/``
(a record id may hold an ``@`` itself)."""


def region_entries(image_id: str, whole: np.ndarray, regions: np.ndarray | None
                   ) -> list[tuple[str, np.ndarray]]:
    """The ``image_sscd`` index entries of one image: its whole vector, then its regions'."""
    out = [(image_id, np.asarray(whole, dtype=np.float32))]
    if regions is not None:
        out += [(f"{image_id}{REGION_SEPARATOR}{r}", np.asarray(v, dtype=np.float32))
                for r, v in enumerate(regions, start=1)]
    return out


def image_of_entry(entry_id: str) -> str:
    """The image id of an ``image_sscd`` index entry (a region's id names its image)."""
    head, slash, tail = entry_id.rpartition("/")
    return f"{head}{slash}{tail.split(REGION_SEPARATOR, 1)[0]}"


class ImageNearDuplicates:
    """Image copies: SSCD candidates over regions, decided by geometric verification.

    Candidates: the query image's whole and region vectors each search the index
    (which holds every image's whole and region vectors); an image's similarity is the
    best cosine between any of its entries and any of the query's, and the ``image_k``
    best images at or above ``image_candidate_floor`` are candidates. Region-to-region
    search is what makes the candidate relation hold both ways (a collage found from
    its original and the original from the collage): the service searches from whichever
    of two images arrives later, the batch job from both, and they find the same pairs
    (up to the ``image_k`` cut, which can differ by direction).

    Decision: a candidate whose best cosine is at or above ``image_accept_cosine`` (off
    by default: ``benchmarks/images.py`` found nothing to gain) is a copy; any other is
    verified on both
    images' ``image_local`` features, and is a copy with at least ``image_min_inliers``
    geometric inliers that are at least ``image_min_density`` of the keypoints where the
    two images overlap (and spread over ``image_min_spread`` of them). Without local
    features on either side (a store from before them) the old rule applies: cosine at
    or above ``thresholds.image_sscd``. The verification runs with the pair in id order,
    so a pair gets the same answer from either side.

    Score: the cosine, raised for a verified pair to ``1 - image_min_inliers / (2 *
    inliers)`` when that is higher (0.5 at the minimum, 0.9 at five times it), so that
    a verified crop (cosine perhaps 0.4) does not read as a weak match.
    """

    def __init__(self, config: NearDuplicateConfig, thresholds: ThresholdsConfig) -> None:
        self.config = config
        self.fallback_threshold = float(thresholds.image_sscd)

    @classmethod
    def from_config(cls, config: IndexesConfig) -> ImageNearDuplicates:
        return cls(config.near_duplicates, config.thresholds)

    def candidates(self, index: VectorSearch, queries: Sequence[np.ndarray],
                   exclude: Sequence[str | None], extra: int = 0) -> list[list[Hit]]:
        """Each query image's candidate images (image ids, best cosine), best first.

        ``queries[i]``: the ``(1 + regions, dim)`` vectors of query image ``i`` (whole
        first); ``exclude[i]``: its own image id (its entries never count). ``extra``
        more candidates are kept (a caller that drops some, such as a re-posted listing's
        own old images, still gets ``image_k`` others).
        """
        if len(exclude) != len(queries):
            raise InvalidInput("exclude", f"{len(exclude)} ids for {len(queries)} queries")
        nd = self.config
        floor = _f32(nd.image_candidate_floor)
        k = nd.image_k + extra
        if not queries:
            return []
        sizes = [len(q) for q in queries]
        flat = np.concatenate([np.asarray(q, dtype=np.float32).reshape(-1, q.shape[-1]) for q in queries])
        # Each image has 1 + regions entries: ask for enough to still see k distinct images.
        per_image = 1 + (max(sizes) - 1 if nd.image_regions else 0)
        found = index.search(flat, (k + 1) * per_image)
        out: list[list[Hit]] = []
        pos = 0
        for size, own in zip(sizes, exclude, strict=True):
            best: dict[str, float] = {}
            for hits in found[pos:pos + size]:
                for h in hits:
                    img = image_of_entry(h.id)
                    if img != own and h.score >= floor and h.score > best.get(img, -2.0):
                        best[img] = h.score
            pos += size
            ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            out.append([Hit(i, float(min(1.0, s))) for i, s in ranked])
        return out

    def decide(self, query_ids: Sequence[str], query_local: Sequence[np.ndarray | None],
               candidates: Sequence[Sequence[Hit]],
               local_of: Callable[[list[str]], Sequence[np.ndarray | None]]) -> list[list[Neighbour]]:
        """The candidates that are copies of each query image, with the pair's score.

        ``query_local[i]``: query image ``i``'s ``image_local`` block (None without one);
        ``local_of(ids)``: the blocks of candidate image ids, in order (None where missing).
        """
        if not (len(query_ids) == len(query_local) == len(candidates)):
            raise InvalidInput("candidates", f"{len(candidates)} candidate lists, {len(query_ids)} ids "
                                             f"and {len(query_local)} local features")
        nd = self.config
        need = sorted({h.id for hits in candidates for h in hits})
        blocks = dict(zip(need, local_of(need), strict=True)) if need else {}
        out: list[list[Neighbour]] = []
        for qid, qloc, hits in zip(query_ids, query_local, candidates, strict=True):
            kept: list[Neighbour] = []
            for h in hits:
                score = self.pair_score(qid, qloc, h.id, blocks.get(h.id), h.score)
                if score is not None:
                    kept.append(Neighbour(h.id, score))
            kept.sort(key=lambda n: (-n.score, n.id))
            out.append(kept[:nd.max_neighbours])
        return out

    def accepts(self, v: Verification) -> bool:
        """Whether a geometric verification shows a copy, under this rule's thresholds."""
        nd = self.config
        return v.accepted(nd.image_min_inliers, nd.image_min_spread, nd.image_min_density)

    def pair_score(self, a_id: str, a_local: np.ndarray | None, b_id: str, b_local: np.ndarray | None,
                   cosine: float) -> float | None:
        """The decision on one pair: its score if the two images are copies, else None."""
        nd = self.config
        if nd.image_accept_cosine is not None and cosine >= _f32(nd.image_accept_cosine):
            return min(1.0, cosine)
        if a_local is None or b_local is None or not nd.image_verify:
            return min(1.0, cosine) if cosine >= _f32(self.fallback_threshold) else None
        first, second = (a_local, b_local) if a_id <= b_id else (b_local, a_local)
        v = verify_pair(first, second)
        if not self.accepts(v):
            return None
        return float(min(1.0, max(cosine, 1.0 - nd.image_min_inliers / (2.0 * v.inliers))))


def _f32(threshold: float) -> float:
    """A threshold as the float32 the index compares (``range_search`` is inclusive of it)."""
    return float(np.float32(threshold))


def vector_near_duplicates(index: VectorSearch, vectors: np.ndarray, threshold: float,
                           exclude: Sequence[str | None], limit: int = 100) -> list[list[Neighbour]]:
    """The (at most ``limit``) stored vectors at cosine >= threshold (review-text candidates).

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
