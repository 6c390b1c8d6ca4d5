"""The review-text near-duplicate decision: embedding candidates, then the texts' own evidence.

A review farm posts one text many times, lightly edited (copy-paste with a word changed, a
name swapped) or paraphrased from a template. Embedding cosine alone cannot tell that from
honest reviewers writing the same short praise: "Great product, fast shipping!" and "Great
product and fast shipping" sit at cosine ~0.95 and share most of their characters, yet
thousands of honest buyers write them. What a template has and common praise has not is
LENGTH of shared material: a run of words too long to be a coincidence. So a candidate
pair (cosine >= ``candidate_floor`` on the ``k`` nearest) is a near-duplicate when:

- **copy** (small edits): both texts have at least ``min_words`` words and the shorter one's
  character 5-grams are at least ``min_char_containment`` contained in the other's; or
- **template** (shared phrasing): the two texts share at least ``min_shared_runs`` word
  4-grams (a shared run of ``min_shared_runs + 3`` words or several shorter ones); or
- **paraphrase**: cosine >= ``paraphrase_cosine`` and both texts have at least
  ``paraphrase_min_words`` words (a long text rephrased word by word keeps its meaning;
  two honest long reviews rarely sit that close).

Short texts below ``min_words`` words are never near-duplicates of anything, even when
identical: on their own they are indistinguishable from common praise (a farm of identical
one-liners shows in the behavioural signals instead). The rule is symmetric, so the batch
job (which keeps a pair found from either side) and the service (a new review against the
older ones) decide alike. The pair's score is the cosine. Measured on a constructed set in
``benchmarks.review_text`` (templated campaigns against organic short and long reviews).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from indexes.config import IndexesConfig
from indexes.near_duplicates import Neighbour, VectorSearch, vector_near_duplicates
from indexes.vector import Hit
from signals.errors import InvalidInput

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class ReviewTemplateRule:
    """Settings of the decision (see the module docstring); defaults are the shipped ones."""

    candidate_floor: float = 0.60
    k: int = 30
    min_words: int = 10
    min_char_jaccard: float = 0.7
    min_shared_runs: int = 8
    paraphrase_cosine: float = 0.92
    paraphrase_min_words: int = 15

    def __post_init__(self) -> None:
        if not -1 <= self.candidate_floor <= 1 or not -1 <= self.paraphrase_cosine <= 1:
            raise ValueError(f"cosines must be in -1..1: candidate_floor={self.candidate_floor!r}, "
                             f"paraphrase_cosine={self.paraphrase_cosine!r}")
        if self.k < 1 or self.min_words < 1 or self.min_shared_runs < 1:
            raise ValueError("k, min_words and min_shared_runs must be >= 1: "
                             f"{self.k!r}, {self.min_words!r}, {self.min_shared_runs!r}")

    @classmethod
    def from_config(cls, config: IndexesConfig) -> ReviewTemplateRule:
        """The shipped rule: ``thresholds.review_text`` is the paraphrase cosine, at most
        ``near_duplicates.max_neighbours`` candidates a review."""
        return cls(k=min(cls.k, config.near_duplicates.max_neighbours),
                   paraphrase_cosine=config.thresholds.review_text,
                   candidate_floor=min(cls.candidate_floor, config.thresholds.review_text))

    def candidates(self, index: VectorSearch, vectors: np.ndarray,
                   exclude: Sequence[str | None]) -> list[list[Hit]]:
        """Each query's ``k`` nearest at cosine >= ``candidate_floor`` (its own id excluded),
        best first (:func:`~indexes.near_duplicates.vector_near_duplicates`)."""
        if len(exclude) != len(vectors):
            raise InvalidInput("exclude", f"{len(exclude)} ids for {len(vectors)} queries")
        return vector_near_duplicates(index, vectors, self.candidate_floor, exclude, self.k)

    def decide(self, query_texts: Sequence[str], candidates: Sequence[Sequence[Hit]],
               texts_of: Callable[[list[str]], list[str]]) -> list[list[Neighbour]]:
        """The candidates that are near-duplicates of each query; ``texts_of(ids)`` gives the
        candidates' texts, one per id, in order."""
        if len(query_texts) != len(candidates):
            raise InvalidInput("candidates", f"{len(candidates)} lists for {len(query_texts)} queries")
        ids = sorted({h.id for hits in candidates for h in hits})
        other = dict(zip(ids, texts_of(ids), strict=True)) if ids else {}
        shingles: dict[str, TextShingles] = {}

        def of(key: str, text: str) -> TextShingles:
            if key not in shingles:
                shingles[key] = TextShingles.of(text)
            return shingles[key]

        out = []
        for qi, (text, hits) in enumerate(zip(query_texts, candidates, strict=True)):
            q = of(f"\x00q{qi}", text)
            out.append([Neighbour(h.id, float(min(1.0, h.score))) for h in hits
                        if self.is_near_duplicate(q, of(h.id, other[h.id]), float(h.score))])
        return out

    def is_near_duplicate(self, a: TextShingles, b: TextShingles, cosine: float) -> bool:
        """The decision for one candidate pair (symmetric in ``a`` and ``b``)."""
        if min(a.words, b.words) < self.min_words:
            return False
        if len(a.runs & b.runs) >= self.min_shared_runs:
            return True
        union = len(a.chars | b.chars)
        if union and len(a.chars & b.chars) / union >= self.min_char_jaccard:
            return True
        return cosine >= self.paraphrase_cosine and min(a.words, b.words) >= self.paraphrase_min_words


@dataclass(frozen=True)
class TextShingles:
    """A text's word count, word 4-grams and character 5-grams (of the lowercased words)."""

    words: int
    runs: frozenset[str]
    chars: frozenset[str]

    @classmethod
    def of(cls, text: str) -> TextShingles:
        words = _WORD.findall(text.lower())
        joined = " ".join(words)
        return cls(len(words),
                   frozenset(" ".join(words[i:i + 4]) for i in range(len(words) - 3)),
                   frozenset(joined[i:i + 5] for i in range(len(joined) - 4)))
