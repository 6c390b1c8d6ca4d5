"""The pair scorer: are two listings the same product? Decided from what tells products apart.

Embedding cosine finds candidates well but blurs exactly what separates two products
of one line: model numbers, sizes, capacities, prices. :class:`PairScorer` takes a
candidate pair (two listing-like records plus their embedding cosine, as a
:class:`~indexes.vector.VectorIndex` search returns it) and scores it with a small
logistic regression over generic features (:data:`BASE_FEATURES`):

- ``cosine``: the text-embedding cosine (``text_minilm`` by default);
- token Jaccard and containment of the titles, character-3-gram cosine of the titles,
  token Jaccard of the whole texts, length ratio;
- identifiers: alphanumeric codes with digits (``LDS4821WW``, ``mb13-pnk-see-v2``),
  normalised (case, dashes, dots, slashes, spaces); exact agreement, a code of one
  side found inside the other's squashed text, the closest pair of codes, and a
  conflict flag when both sides carry codes and none agree;
- numbers: Jaccard of the numbers, and quantities with a unit (``32gb`` vs ``64gb``):
  agreement and conflict;
- price: log ratio when both prices exist.

The logistic regression sees these features, hinge (piecewise-linear) terms of the
similarities and all pairwise products, standardised. Weights, standardisation,
feature names, threshold and a description of the training data are one JSON
document (never pickle), written atomically. The decision threshold is data: picked on
held-out labelled pairs for best F1 or for a target precision
(:func:`indexes.thresholds.pick_threshold`), and re-pickable on a tenant's own labels
(:meth:`PairScorer.with_threshold`). Nothing here knows any dataset or shop.

The shipped default, ``indexes/models/pair_scorer.json``, is fitted by
``python -m benchmarks.er_pairs --refit`` on the union of the public listing-pair
benchmarks' ``train`` splits with its threshold picked on their ``valid`` splits.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexes.atomic import read_json, write_json_atomic
from indexes.thresholds import pick_threshold
from signals.errors import InvalidInput

FORMAT = "marketguard.pair_scorer/1"
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "pair_scorer.json"

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
)
# Similarities in [0, 1] that get hinge terms max(0, x - knot): a piecewise-linear
# response without binning the data by hand.
HINGE_FEATURES: tuple[str, ...] = ("cosine", "title_token_jaccard", "title_char3_cosine",
                                   "code_best_similarity")
HINGE_KNOTS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9)

_TOKEN = re.compile(r"[0-9a-z]+")
# A code candidate: runs of letters/digits joined by - . / (kept together, then squashed).
_CODE_SPAN = re.compile(r"[0-9a-z]+(?:[-./][0-9a-z]+)*")
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


class ListingLike(Protocol):
    """What the scorer reads of a listing: ``signals.schemas.Listing`` satisfies it."""

    @property
    def title(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def price(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class PairRecord:
    """The parts of a listing the scorer reads (hashable, so its parse is memoised)."""

    title: str
    description: str = ""
    price: float | None = None

    @classmethod
    def of(cls, item: ListingLike) -> PairRecord:
        return cls(item.title, item.description or "", item.price)


# ----------------------------------------------------------------------- features
@dataclass(frozen=True, slots=True)
class _Parsed:
    title_tokens: frozenset[str]
    text_tokens: frozenset[str]
    title_len: int
    char3: Counter[str] = field(compare=False)
    char3_norm: float
    codes: frozenset[str]
    squashed: str
    numbers: frozenset[str]
    quantities: dict[str, frozenset[float]] = field(compare=False)
    price: float | None


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def extract_codes(text: str) -> set[str]:
    """Identifier-like codes: letters+digits (>= 3 chars) or digit runs of >= 4, squashed.

    ``"LDS-4821 WW"`` gives ``lds4821``; ``"mb13-pnk-see-v2"`` gives ``mb13pnkseev2``.
    Quantities (``32gb``, ``1080p``) are numbers with a unit, not identifiers.
    """
    out: set[str] = set()
    for span in _CODE_SPAN.findall(_normalise(text)):
        code = re.sub(r"[-./]", "", span)
        if not any(c.isdigit() for c in code):
            continue
        has_alpha = any(c.isalpha() for c in code)
        if has_alpha and _QUANTITY.fullmatch(span):
            continue
        if (has_alpha and len(code) >= 3) or (not has_alpha and len(code) >= 4 and "." not in span):
            out.add(code)
    return out


def extract_quantities(text: str) -> dict[str, frozenset[float]]:
    """Numbers with a unit, by normalised unit: ``"32GB microSD"`` -> ``{"gb": {32.0}}``."""
    found: dict[str, set[float]] = {}
    for value, unit in _QUANTITY.findall(_normalise(text)):
        found.setdefault(_UNITS[unit], set()).add(float(value))
    return {u: frozenset(v) for u, v in found.items()}


# Single pairs (pair_features) reuse recent parses; feature_matrix parses each distinct
# record of its call once. A parse holds token sets and trigram counts (~10 KB for a
# long description), so the cache is kept small: memory stays bounded by one call.
@lru_cache(maxsize=4096)
def _parse_cached(record: PairRecord) -> _Parsed:
    return _parse(record)


def _parse(record: PairRecord) -> _Parsed:
    title = _normalise(record.title)
    text = title + " " + _normalise(record.description)
    title_tokens = _TOKEN.findall(title)
    squashed_title = " " + " ".join(title_tokens) + " "
    char3 = Counter(squashed_title[i:i + 3] for i in range(max(len(squashed_title) - 2, 0)))
    return _Parsed(
        title_tokens=frozenset(title_tokens),
        text_tokens=frozenset(_TOKEN.findall(text)),
        title_len=len(title_tokens),
        char3=char3,
        char3_norm=math.sqrt(sum(c * c for c in char3.values())),
        codes=frozenset(extract_codes(record.title) | extract_codes(record.description)),
        squashed=re.sub(r"[^0-9a-z]", "", text),
        numbers=frozenset(_NUMBER.findall(title)),
        quantities=extract_quantities(title),
        price=record.price if record.price is not None and record.price > 0 else None,
    )


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _code_similarity(a: str, b: str) -> float:
    """Shared prefix over the longer code: ``lds4821ww`` vs ``lds4821wh`` -> 0.78."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n / max(len(a), len(b))


def pair_features(a: PairRecord, b: PairRecord, cosine: float) -> np.ndarray:
    """The :data:`BASE_FEATURES` of one pair (symmetric in ``a`` and ``b``)."""
    return _features(_parse_cached(a), _parse_cached(b), cosine)


def _features(pa: _Parsed, pb: _Parsed, cosine: float) -> np.ndarray:
    common = len(pa.title_tokens & pb.title_tokens)
    smaller = min(len(pa.title_tokens), len(pb.title_tokens))
    dot = sum(c * pb.char3.get(g, 0) for g, c in pa.char3.items())
    char3 = dot / (pa.char3_norm * pb.char3_norm) if pa.char3_norm and pb.char3_norm else 0.0

    ca, cb = pa.codes, pb.codes
    code_exact = float(bool(ca & cb))
    contained = 0.0
    best = 0.0
    if ca and cb:
        # A code of one side spelled out (or split) inside the other side's text.
        in_b = sum(1 for c in ca if len(c) >= 4 and c in pb.squashed) / len(ca)
        in_a = sum(1 for c in cb if len(c) >= 4 and c in pa.squashed) / len(cb)
        contained = max(in_a, in_b)
        best = max(_code_similarity(x, y) for x in ca for y in cb)
    elif ca or cb:
        codes, other = (ca, pb.squashed) if ca else (cb, pa.squashed)
        contained = sum(1 for c in codes if len(c) >= 4 and c in other) / len(codes)
    conflict = float(bool(ca and cb) and not code_exact and contained == 0.0)
    one_side = float(bool(ca) != bool(cb))

    units = set(pa.quantities) & set(pb.quantities)
    unit_agree = float(any(pa.quantities[u] & pb.quantities[u] for u in units))
    unit_conflict = float(any(not (pa.quantities[u] & pb.quantities[u]) for u in units))

    if pa.price is not None and pb.price is not None:
        price_both, price_log = 1.0, min(abs(math.log(pa.price / pb.price)), 5.0)
    else:
        price_both, price_log = 0.0, 0.0
    length = (min(pa.title_len, pb.title_len) / max(pa.title_len, pb.title_len)
              if max(pa.title_len, pb.title_len) else 0.0)
    return np.array([
        float(cosine),
        _jaccard(pa.title_tokens, pb.title_tokens),
        common / smaller if smaller else 0.0,
        char3,
        _jaccard(pa.text_tokens, pb.text_tokens),
        length,
        code_exact,
        contained,
        best,
        conflict,
        one_side,
        _jaccard(pa.numbers, pb.numbers),
        unit_agree,
        unit_conflict,
        price_both,
        price_log,
    ], dtype=np.float64)


def feature_matrix(pairs: Sequence[tuple[PairRecord, PairRecord]],
                   cosines: Sequence[float] | np.ndarray) -> np.ndarray:
    """``len(pairs) x len(BASE_FEATURES)`` base features."""
    cos = np.asarray(cosines, dtype=np.float64).reshape(-1)
    if len(cos) != len(pairs):
        raise InvalidInput("cosines", f"{len(cos)} cosines for {len(pairs)} pairs")
    if not np.isfinite(cos).all():
        raise InvalidInput("cosines", "NaN or infinite cosine")
    if not len(pairs):
        return np.zeros((0, len(BASE_FEATURES)))
    parsed: dict[PairRecord, _Parsed] = {}
    for a, b in pairs:
        for rec in (a, b):
            if rec not in parsed:
                parsed[rec] = _parse(rec)
    return np.stack([_features(parsed[a], parsed[b], c) for (a, b), c in zip(pairs, cos, strict=True)])


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
    def score_features(self, base: np.ndarray) -> np.ndarray:
        """Probabilities of ``n x len(BASE_FEATURES)`` base features."""
        z = (_expand(np.atleast_2d(base)) - self.mean) / self.scale
        return _sigmoid(z @ self.weights + self.bias)

    def score(self, pairs: Sequence[tuple[PairRecord, PairRecord]],
              cosines: Sequence[float] | np.ndarray) -> np.ndarray:
        """Same-product probability of each pair, given each pair's embedding cosine."""
        return self.score_features(feature_matrix(pairs, cosines))

    def decide(self, pairs: Sequence[tuple[PairRecord, PairRecord]],
               cosines: Sequence[float] | np.ndarray) -> np.ndarray:
        """Boolean same-product decision of each pair (score >= threshold)."""
        return self.score(pairs, cosines) >= self.threshold

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
