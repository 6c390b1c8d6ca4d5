"""The pair scorer: are two listings the same product? Decided from what tells products apart.

Embedding cosine finds candidates well but blurs exactly what separates two products
of one line: model numbers, sizes, capacities, prices. :class:`PairScorer` takes
candidate pairs (two listing-like records plus their embedding cosine, as a
:class:`~indexes.vector.VectorIndex` search returns it) and scores them with a small
logistic regression over the generic features of :mod:`indexes.pair_features`
(:data:`~indexes.pair_features.BASE_FEATURES`: the cosine, token and trigram overlaps,
identifier codes, numbers and quantities with units, prices).

The logistic regression sees these features, hinge (piecewise-linear) terms of the
similarities and all pairwise products, standardised. Weights, standardisation,
feature names, threshold and a description of the training data are one JSON
document (never pickle), written atomically. The decision threshold is data: picked on
held-out labelled pairs for best F1 or for a target precision
(:func:`indexes.thresholds.pick_threshold`), and re-pickable on a tenant's own labels
(:meth:`PairScorer.with_threshold`). Nothing here knows any dataset or shop.

The shipped default, ``indexes/models/pair_scorer.json``, is fitted by
``python -m benchmarks.er_pairs --write-model`` on the public listing-pair benchmarks'
``train`` splits and a share of a generated multilingual title set's ``train`` split, each
pair featurised in its neighbourhood, with its threshold picked on the benchmarks' ``valid``
splits (docs/indexes.md says what was measured to choose).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexes.atomic import read_json, write_json_atomic
from indexes.pair_features import (
    BASE_FEATURES,
    PRICE_FEATURES,
    PairContext,
    PairRecord,
    ParsedRecords,
    feature_matrix,
    pair_feature_matrix,
)
from indexes.thresholds import pick_threshold
from signals.errors import InvalidInput

FORMAT = "marketguard.pair_scorer/1"
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "pair_scorer.json"

# Similarities in [0, 1] that get hinge terms max(0, x - knot): a piecewise-linear
# response without binning the data by hand.
HINGE_FEATURES: tuple[str, ...] = ("cosine", "title_token_jaccard", "title_char3_cosine",
                                   "code_best_similarity", "rare_token_jaccard", "rare_token_containment",
                                   "cosine_over_background")
HINGE_KNOTS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9)


def expanded_names() -> list[str]:
    """Names of the model's inputs: base features, hinge terms, pairwise products."""
    names = list(BASE_FEATURES)
    names += [f"{f}>{k}" for f in HINGE_FEATURES for k in HINGE_KNOTS]
    n = len(BASE_FEATURES)
    names += [f"{BASE_FEATURES[i]}*{BASE_FEATURES[j]}" for i in range(n) for j in range(i + 1, n)]
    return names


def _expand(x: np.ndarray) -> np.ndarray:
    cols = [x]
    for name in HINGE_FEATURES:
        v = x[:, BASE_FEATURES.index(name)][:, None]
        cols.append(np.maximum(0.0, v - np.asarray(HINGE_KNOTS)[None, :]))
    i, j = np.triu_indices(x.shape[1], k=1)
    cols.append(x[:, i] * x[:, j])
    return np.hstack(cols)


# ------------------------------------------------------------------- thresholds
@dataclass(frozen=True, slots=True)
class F1Choice:
    threshold: float
    precision: float
    recall: float
    f1: float


def best_f1_threshold(scores: Sequence[float] | np.ndarray,
                      labels: Sequence[int] | np.ndarray) -> F1Choice:
    """The threshold (match when score >= t) with the best F1 on labelled pairs."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if s.ndim != 1 or s.shape != y.shape or not len(s):
        raise InvalidInput("labels", f"{s.shape} scores but {y.shape} labels")
    if not y.any():
        raise InvalidInput("labels", "no positive pair to pick an F1 threshold on")
    order = np.argsort(-s, kind="stable")
    ss, ys = s[order], y[order]
    tp = np.cumsum(ys)
    n = np.arange(1, len(ys) + 1)
    last = np.r_[ss[1:] != ss[:-1], True]  # cut only between distinct scores
    precision, recall = tp / n, tp / ys.sum()
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    # Midway to the next lower score, so a score equal to the cut still matches.
    thr = float(ss[i] if i + 1 == len(ss) else (ss[i] + ss[i + 1]) / 2)
    return F1Choice(thr, float(precision[i]), float(recall[i]), float(f1[i]))


# ----------------------------------------------------------------------- the model
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (IRLS); bias not penalised."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = _sigmoid(xb @ w)
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return w[:-1], float(w[-1])


class PairScorer:
    """Logistic regression over pair features; a score in [0, 1] and a fitted threshold."""

    def __init__(self, *, weights: np.ndarray, bias: float, mean: np.ndarray, scale: np.ndarray,
                 threshold: float, meta: dict[str, Any] | None = None) -> None:
        d = len(expanded_names())
        for name, arr in (("weights", weights), ("mean", mean), ("scale", scale)):
            if np.shape(arr) != (d,):
                raise InvalidInput(name, f"expected {d} values, got shape {np.shape(arr)}")
            if not np.isfinite(arr).all():
                raise InvalidInput(name, "NaN or infinite value")
        if not (isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0):
            raise InvalidInput("threshold", f"a probability threshold is in [0, 1], got {threshold!r}")
        if not math.isfinite(bias):
            raise InvalidInput("bias", f"not finite: {bias!r}")
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = float(bias)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        if (self.scale <= 0).any():
            raise InvalidInput("scale", "standardisation scales must be > 0")
        self.threshold = float(threshold)
        self.meta: dict[str, Any] = dict(meta or {})

    # ---- scoring ------------------------------------------------------------------
    def score_features(self, base: np.ndarray, *, price_blind: bool = False) -> np.ndarray:
        """Probabilities of ``n x len(BASE_FEATURES)`` base features.

        ``price_blind``: score as if neither side had a price (the text's evidence alone):
        what decides whether a listing's text is a copy, whatever price it baits with.
        """
        x = np.array(np.atleast_2d(base), dtype=np.float64)
        if price_blind:
            x[:, [BASE_FEATURES.index(f) for f in PRICE_FEATURES]] = 0.0
        z = (_expand(x) - self.mean) / self.scale
        return _sigmoid(z @ self.weights + self.bias)

    def score(self, pairs: Sequence[tuple[PairRecord, PairRecord]],
              cosines: Sequence[float] | np.ndarray, context: PairContext | None = None, *,
              price_blind: bool = False) -> np.ndarray:
        """Same-product probability of each pair, given each pair's embedding cosine."""
        return self.score_features(feature_matrix(pairs, cosines, context), price_blind=price_blind)

    def score_parsed(self, records: ParsedRecords, ia: np.ndarray, ib: np.ndarray,
                     cosines: Sequence[float] | np.ndarray, context: PairContext | None = None, *,
                     price_blind: bool = False) -> np.ndarray:
        """Same-product probability of the pairs ``(records[ia[i]], records[ib[i]])``."""
        return self.score_features(pair_feature_matrix(records, ia, ib, cosines, context),
                                   price_blind=price_blind)

    def decision_scores(self, base: np.ndarray, copy_title_similarity: float | None) -> np.ndarray:
        """The score a near-duplicate decision compares with :attr:`threshold`.

        Two questions, kept apart: is the listing's text a **copy** (judged on the text's
        evidence alone, prices blanked, for pairs whose titles' character-3-gram cosine is
        at least ``copy_title_similarity``: a scam repost keeps the text and baits with the
        price), and are the two the **same product** (every feature, prices included: two
        shops' offers of one product differ in wording, and a price far apart says they are
        different products). The score is the larger of the two; ``None`` turns the copy
        question off.
        """
        x = np.atleast_2d(base)
        product = self.score_features(x)
        if copy_title_similarity is None:
            return product
        near = x[:, BASE_FEATURES.index("title_char3_cosine")] >= copy_title_similarity
        if not near.any():
            return product
        copy = np.zeros(len(x))
        copy[near] = self.score_features(x[near], price_blind=True)
        return np.maximum(product, copy)

    def decide(self, pairs: Sequence[tuple[PairRecord, PairRecord]],
               cosines: Sequence[float] | np.ndarray, context: PairContext | None = None) -> np.ndarray:
        """Boolean same-product decision of each pair (score >= threshold)."""
        return self.score(pairs, cosines, context) >= self.threshold

    # ---- fitting ------------------------------------------------------------------
    @classmethod
    def fit(cls, train_features: np.ndarray, train_labels: Sequence[int] | np.ndarray,
            valid_features: np.ndarray, valid_labels: Sequence[int] | np.ndarray, *,
            l2: float = 1.0, target_precision: float | None = None,
            description: str = "") -> PairScorer:
        """Weights on ``train``, the threshold on ``valid`` (best F1, or a target precision).

        Features come from :func:`feature_matrix`; labels are 1 (same product) / 0.
        """
        x = np.asarray(train_features, dtype=np.float64)
        y = np.asarray(train_labels, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(BASE_FEATURES) or len(x) != len(y):
            raise InvalidInput("train_features", f"expected (n, {len(BASE_FEATURES)}) features "
                               f"with n labels, got {x.shape} and {y.shape}")
        if not (np.isin(y, (0, 1)).all() and 0 < y.sum() < len(y)):
            raise InvalidInput("train_labels", "labels must be 0/1 with both classes present")
        ex = _expand(x)
        mean = ex.mean(axis=0)
        scale = ex.std(axis=0)
        scale[scale < 1e-9] = 1.0
        w, b = _fit_logistic((ex - mean) / scale, y, l2)
        scorer = cls(weights=w, bias=b, mean=mean, scale=scale, threshold=0.5, meta={
            "description": description,
            "fitted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "l2": l2,
            "train_pairs": int(len(y)),
            "train_positives": int(y.sum()),
        })
        return scorer.with_threshold(valid_features, valid_labels, target_precision=target_precision)

    def with_threshold(self, features: np.ndarray, labels: Sequence[int] | np.ndarray, *,
                       target_precision: float | None = None) -> PairScorer:
        """A copy whose threshold is re-picked on these labelled pairs (e.g. a tenant's)."""
        scores = self.score_features(np.asarray(features, dtype=np.float64))
        y = np.asarray(labels)
        meta = dict(self.meta)
        if target_precision is None:
            choice = best_f1_threshold(scores, y)
            thr = choice.threshold
            meta["threshold_rule"] = {"rule": "best_f1", "pairs": int(len(y)), "f1": round(choice.f1, 4),
                                      "precision": round(choice.precision, 4),
                                      "recall": round(choice.recall, 4)}
        else:
            pc = pick_threshold(scores, y, target_precision)
            thr = pc.threshold
            meta["threshold_rule"] = {"rule": "target_precision", "target": target_precision,
                                      "achieved": pc.achieved, "pairs": int(len(y)),
                                      "precision": round(pc.precision, 4), "recall": round(pc.recall, 4)}
        return PairScorer(weights=self.weights, bias=self.bias, mean=self.mean, scale=self.scale,
                          threshold=min(max(thr, 0.0), 1.0), meta=meta)

    # ---- persistence ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": "logistic_regression",
            "base_features": list(BASE_FEATURES),
            "hinge": {"features": list(HINGE_FEATURES), "knots": list(HINGE_KNOTS)},
            "feature_names": expanded_names(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "threshold": self.threshold,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, obj: Any) -> PairScorer:
        """Validate and load a :meth:`to_json` document; errors name the offending field."""
        if not isinstance(obj, dict):
            raise InvalidInput("pair_scorer", f"expected a JSON object, got {type(obj).__name__}")
        if obj.get("format") != FORMAT:
            raise InvalidInput("format", f"expected {FORMAT!r}, got {obj.get('format')!r}")
        checks = (("base_features", list(BASE_FEATURES)), ("feature_names", expanded_names()),
                  ("hinge", {"features": list(HINGE_FEATURES), "knots": list(HINGE_KNOTS)}))
        for name, expected in checks:
            if obj.get(name) != expected:
                raise InvalidInput(name, "does not match this code's features "
                                   "(fitted by another version; refit the scorer)")
        arrays = {}
        for name in ("weights", "mean", "scale"):
            value = obj.get(name)
            if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
                raise InvalidInput(name, "missing or not a list of numbers")
            arrays[name] = np.asarray(value, dtype=np.float64)
        for name in ("bias", "threshold"):
            if isinstance(obj.get(name), bool) or not isinstance(obj.get(name), int | float):
                raise InvalidInput(name, f"missing or not a number: {obj.get(name)!r}")
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise InvalidInput("meta", "not an object")
        return cls(weights=arrays["weights"], bias=float(obj["bias"]), mean=arrays["mean"],
                   scale=arrays["scale"], threshold=float(obj["threshold"]), meta=meta)

    def save(self, path: Path) -> None:
        """Write the JSON document atomically (tmp, fsync, ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path = DEFAULT_MODEL_PATH) -> PairScorer:
        """Load a saved scorer; the default is the shipped, generic one."""
        try:
            obj = read_json(Path(path))
        except (OSError, ValueError) as exc:
            raise InvalidInput("path", f"cannot read pair scorer {str(path)!r}: {exc}") from exc
        return cls.from_json(obj)
