"""Listing-text catalogues for the text benchmarks: neighbourhoods, contextual pair features,
and the shipped decision run over every record (catalogue mode).

A catalogue is a list of records with their embeddings. Each record's neighbourhood is
what the service and the batch job give the pair scorer: its ``text_k`` nearest records
at cosine >= ``text_candidate_floor`` (:class:`indexes.near_duplicates.TextNearDuplicates`
``.candidates``). Labelled pairs are featurised inside the neighbourhood of the query
side (:class:`indexes.pair_features.PairContext`), the way the decision sees them, so a
scorer fitted on them is fitted on what it will be shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexes.config import NearDuplicateConfig, VectorIndexConfig
from indexes.near_duplicates import TextNearDuplicates
from indexes.pair_features import (
    PairContext,
    PairRecord,
    ParsedRecords,
    background_cosine,
    pair_feature_matrix,
)
from indexes.vector import Hit, VectorIndex


@dataclass(slots=True)
class TextCatalogue:
    records: list[PairRecord]
    vectors: np.ndarray
    index: VectorIndex
    candidates: list[list[Hit]]  # per row: its neighbourhood (ids are row numbers as strings)
    parsed: ParsedRecords

    @classmethod
    def build(cls, records: Sequence[PairRecord], vectors: np.ndarray,
              config: NearDuplicateConfig | None = None) -> TextCatalogue:
        cfg = config or NearDuplicateConfig()
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        index = VectorIndex(VectorIndexConfig(dim=vecs.shape[1], exact_max=max(20_000, len(vecs))))
        ids = [str(i) for i in range(len(vecs))]
        index.add(ids, vecs)
        rule = TextNearDuplicates(cfg, cfg.text_candidate_floor, None)  # candidates above the floor
        cands = rule.candidates(index, vecs, ids)
        return cls(list(records), vecs, index, cands, ParsedRecords.parse(list(records)))

    def cosine(self, a: int, b: int) -> float:
        return float(self.vectors[a] @ self.vectors[b])

    def features(self, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        """Features of (query row, other row) pairs, each inside the query's neighbourhood:
        the query's candidates plus the other side, as :meth:`TextNearDuplicates.decide` sees them."""
        if not pairs:
            return pair_feature_matrix(self.parsed, np.zeros(0, np.int64), np.zeros(0, np.int64), [])
        wanted: dict[int, set[int]] = {}
        for q, c in pairs:
            wanted.setdefault(q, set()).add(c)
        ia: list[int] = []
        ib: list[int] = []
        group: list[int] = []
        bg: list[float] = []
        where: dict[tuple[int, int], int] = {}
        for q, extra in wanted.items():
            hits = self.candidates[q]
            back = background_cosine([h.score for h in hits])
            others = [int(h.id) for h in hits] + sorted(extra - {int(h.id) for h in hits})
            for c in others:
                where[(q, c)] = len(ia)
                ia.append(q)
                ib.append(c)
                group.append(q)
                bg.append(back)
        a, b = np.asarray(ia, np.int64), np.asarray(ib, np.int64)
        cos = np.einsum("ij,ij->i", self.vectors[a], self.vectors[b]).astype(np.float64)
        feats = pair_feature_matrix(self.parsed, a, b, cos,
                                    PairContext(np.asarray(group, np.int64), np.asarray(bg)))
        return feats[[where[p] for p in pairs]]

    def symmetric_features(self, pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Features of each pair from either side's neighbourhood (the batch job keeps a pair
        found from either side, at the better score)."""
        return self.features(pairs), self.features([(b, a) for a, b in pairs])

    def run(self, rule: TextNearDuplicates) -> dict[tuple[int, int], float]:
        """Every pair the decision emits over the whole catalogue: ``(lo, hi) -> score``."""
        queries = self.parsed if rule.scorer is not None else None
        found = rule.decide(queries, self.candidates,
                            lambda ids: self.parsed.take(np.array([int(i) for i in ids], dtype=np.int64)))
        out: dict[tuple[int, int], float] = {}
        for q, hits in enumerate(found):
            for h in hits:
                key = (min(q, int(h.id)), max(q, int(h.id)))
                out[key] = max(out.get(key, 0.0), h.score)
        return out

    def cosine_pairs(self, threshold: float) -> dict[tuple[int, int], float]:
        """The plain baseline over the catalogue: every candidate pair at cosine >= threshold."""
        out: dict[tuple[int, int], float] = {}
        for q, hits in enumerate(self.candidates):
            for h in hits:
                if h.score >= threshold:
                    out[(min(q, int(h.id)), max(q, int(h.id)))] = h.score
        return out


def listing_f1(pairs: set[tuple[int, int]] | dict[tuple[int, int], float],
               groups: Sequence[str]) -> dict[str, float]:
    """Pair precision and recall, and the mean per-listing F1, of predicted pairs against groups.

    Per listing, the predicted set is its partners in ``pairs`` and the true set the other
    listings of its group, each with the listing itself added (the convention of the
    marketplace product-matching benchmarks: a listing with no partner, predicted none,
    scores 1).
    """
    n = len(groups)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    predicted: list[set[int]] = [{i} for i in range(n)]
    for a, b in pairs:
        predicted[a].add(b)
        predicted[b].add(a)
    f1 = [2 * len(predicted[i] & set(members[groups[i]])) / (len(predicted[i]) + len(members[groups[i]]))
          for i in range(n)]
    tp = sum(1 for a, b in pairs if groups[a] == groups[b])
    positives = sum(len(m) * (len(m) - 1) // 2 for m in members.values())
    return {"listing_f1": round(float(np.mean(f1)), 4),
            "pair_precision": round(tp / max(len(pairs), 1), 4),
            "pair_recall": round(tp / max(positives, 1), 4),
            "pairs": len(pairs), "true_pairs": positives}
