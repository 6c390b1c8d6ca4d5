"""Review text against the labelled review banks: a calibrated kNN vote and a learned text score.

Two signals come from the enabled ``review_text`` banks (``fraud``: known fake reviews,
``benign``: known genuine ones):

- ``review.bank_similarity``: the kNN vote. The ``k`` nearest bank reviews by embedding
  cosine (:func:`knn_vote`): the similarity-weighted share of fraud among them, turned into a
  probability by a Platt fit on the banks' own leave-one-out votes (each bank review voted on
  by the others), made when the banks change.
- ``review.fake_text_score``: that vote combined with cheap text statistics learned from the
  banks' contents at the same time, never from data shipped in the code:

  * a logistic regression over hashed word unigrams and bigrams (sublinear tf-idf, the idf
    from the bank texts, 2^18 buckets): this is what learns the banks' vocabulary, in effect
    the n-gram classifier of Ott et al. 2011 trained on whatever the banks hold;
  * a few stylometric rates (length, first person, exclamation and question marks,
    superlatives, digits, capitals, mean word length, type-token ratio);
  * a small combiner (logistic regression) over the n-gram model's out-of-fold logit, the
    calibrated vote's logit and the standardised rates, fitted on the bank items
    (stacking: no bank item scores itself).

What it learns is what separates the two banks' texts, whatever that is (for the op_spam
corpus: the MTurk writers' first person, superlatives and generic hotel vocabulary). It
is only as good as the banks are representative: a bank of lab-written fakes teaches the
style of lab-written fakes. See docs/reviews-text.md.

The model is plain arrays and numbers, saved as JSON plus an ``.npz`` (no pickle) by
:mod:`indexes.banks`; this module is pure (numpy and scipy only; no I/O, no FAISS, no Ray).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse as sp

HASH_BITS = 18
HASH_DIM = 1 << HASH_BITS
KNN_K = 10
"""Bank reviews that vote (the ``k`` nearest over every enabled review bank)."""
NGRAM_C = 10.0
"""Inverse L2 strength of the n-gram regression: chosen in a prototype on op_spam (5 folds
of another seed than benchmarks.review_text's, scikit-learn's tf-idf; C of 10, 30 and 100 all
within a point), so the benchmark's op_spam figure is not fully independent of it."""
COMBINER_C = 1.0
STACK_FOLDS = 5
MIN_PER_KIND = 5
"""A model is fitted only when the enabled banks hold at least this many texts of each kind."""
LOO_SAMPLE = 5000
"""At most this many bank items are voted on leave-one-out for the calibration (a sample
beyond it, seeded: the fit stays O(sample x bank))."""

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")
_WORD = re.compile(r"[A-Za-z]+")
_FIRST_PERSON = frozenset(["i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves",
                           "i'm", "i've", "i'd", "i'll", "we're", "we've"])
_SUPERLATIVE = re.compile(r"(?:est|most|best|worst|amazing|perfect|awesome|excellent|terrible|horrible|"
                          r"fantastic|incredible|wonderful|awful)$")
STYLE_NAMES = ("log_words", "first_person", "exclaim", "question", "superlative", "digits", "capitals",
               "mean_word_len", "type_token")


def _bucket(token: str) -> int:
    return zlib.crc32(token.encode("utf-8")) & (HASH_DIM - 1)


def hashed_counts(texts: Sequence[str]) -> sp.csr_matrix:
    """Counts of hashed word unigrams and bigrams, one row a text (lowercased; ``!`` and ``?``
    are tokens). crc32 buckets: stable across processes and versions."""
    indptr = [0]
    indices: list[int] = []
    data: list[float] = []
    for text in texts:
        toks = _TOKEN.findall(text.lower())
        row: dict[int, float] = {}
        for j, t in enumerate(toks):
            b = _bucket(t)
            row[b] = row.get(b, 0.0) + 1.0
            if j:
                b2 = _bucket(toks[j - 1] + " " + t)
                row[b2] = row.get(b2, 0.0) + 1.0
        indices.extend(row)
        data.extend(row.values())
        indptr.append(len(indices))
    m = sp.csr_matrix((np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int64),
                       np.asarray(indptr, dtype=np.int64)), shape=(len(texts), HASH_DIM))
    m.sort_indices()
    return m


def _tfidf(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    m = counts.copy()
    m.data = (1.0 + np.log(m.data)) * idf[m.indices]
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).reshape(-1))
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ m)


def style_features(texts: Sequence[str]) -> np.ndarray:
    """The stylometric rates of each text, in :data:`STYLE_NAMES` order (per word where a rate)."""
    out = np.zeros((len(texts), len(STYLE_NAMES)), dtype=np.float64)
    for i, text in enumerate(texts):
        words = _WORD.findall(text)
        n = max(len(words), 1)
        lower = [w.lower() for w in words]
        letters = sum(len(w) for w in words)
        out[i] = (
            math.log1p(len(words)),
            sum(w in _FIRST_PERSON for w in lower) / n,
            text.count("!") / n,
            text.count("?") / n,
            sum(bool(_SUPERLATIVE.search(w)) for w in lower if len(w) > 3) / n,
            sum(c.isdigit() for c in text) / max(len(text), 1),
            sum(c.isupper() for c in text) / max(letters, 1),
            letters / n,
            len(set(lower)) / n,
        )
    return out


def _fit_logistic(x: sp.csr_matrix | np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (Newton-CG); returns weights and intercept.

    Sparse inputs are fitted on their used columns only (an unused column's weight is 0
    under L2), so the cost follows the data, not the 2^18 hash space."""
    if sp.issparse(x):
        full = x.shape[1]
        used = np.unique(sp.csr_matrix(x).indices)
        w_used, b = _fit_logistic_dense_or_sparse(sp.csr_matrix(x)[:, used], y, c)
        w = np.zeros(full)
        w[used] = w_used
        return w, b
    return _fit_logistic_dense_or_sparse(x, y, c)


def _fit_logistic_dense_or_sparse(x: sp.csr_matrix | np.ndarray, y: np.ndarray, c: float
                                  ) -> tuple[np.ndarray, float]:
    n, d = x.shape
    sign = 2.0 * y - 1.0
    xt = sp.csr_matrix(x.T) if sp.issparse(x) else x.T  # one transpose, not one a gradient

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:d], params[d]
        z = np.asarray(x @ w).reshape(-1) + b
        m = sign * z
        # log(1 + exp(-m)), stable
        value = float(np.sum(np.logaddexp(0.0, -m))) + 0.5 * float(w @ w) / c
        g = -sign * _sigmoid(-m)
        grad_w = np.asarray(xt @ g).reshape(-1) + w / c
        return value, np.concatenate([grad_w, [float(g.sum())]])

    def hessp(params: np.ndarray, v: np.ndarray) -> np.ndarray:
        z = np.asarray(x @ params[:d]).reshape(-1) + params[d]
        s = _sigmoid(z)
        q = s * (1.0 - s) * (np.asarray(x @ v[:d]).reshape(-1) + v[d])
        return np.concatenate([np.asarray(xt @ q).reshape(-1) + v[:d] / c, [float(q.sum())]])

    # Newton-CG with Hessian-vector products: ~10 iterations where L-BFGS took ~50 and 10x the
    # time on 2^16 used columns (measured on op_spam's 1,280 training reviews: 1.8 s vs 22 s).
    res = scipy.optimize.minimize(loss, np.zeros(d + 1), jac=True, hessp=hessp, method="Newton-CG",
                                  options={"maxiter": 100})
    return res.x[:d].astype(np.float64), float(res.x[d])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(q / (1 - q))


def knn_vote(similarities: Sequence[float], is_fraud: Sequence[bool], k: int = KNN_K) -> float:
    """The similarity-weighted share of fraud among the ``k`` most similar bank items
    (negative similarities weigh 0); 0.5 with no neighbour or no weight."""
    order = np.argsort(-np.asarray(similarities, dtype=np.float64), kind="stable")[:k]
    w = np.clip(np.asarray(similarities, dtype=np.float64)[order], 0.0, None)
    f = np.asarray(is_fraud, dtype=np.float64)[order]
    total = float(w.sum())
    return 0.5 if total <= 0 else float((w * f).sum() / total)


def loo_votes(vectors: np.ndarray, is_fraud: np.ndarray, rows: np.ndarray, k: int = KNN_K,
              block: int = 512) -> np.ndarray:
    """The vote of each item in ``rows`` by the other items' ``k`` nearest (leave-one-out)."""
    v = np.asarray(vectors, dtype=np.float32)
    out = np.empty(len(rows), dtype=np.float64)
    kk = min(k + 1, len(v))
    for start in range(0, len(rows), block):
        q = rows[start:start + block]
        sims = v[q] @ v.T
        sims[np.arange(len(q)), q] = -np.inf  # not itself
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        for i in range(len(q)):
            cand = [int(j) for j in top[i] if np.isfinite(sims[i, j])]
            out[start + i] = knn_vote(sims[i, cand].tolist(), is_fraud[cand].tolist(), k)
    return out


@dataclass(frozen=True)
class ReviewTextModel:
    """What was learned from the review banks: the vote's calibration, the n-gram model,
    the combiner. Plain numbers and arrays (:meth:`to_json` plus :meth:`arrays`)."""

    fingerprint: str
    """Which bank contents it was fitted on (:mod:`indexes.banks` refits when they change)."""
    n_fraud: int
    n_benign: int
    k: int
    platt: tuple[float, float]
    """``P(fraud | vote) = sigmoid(a * vote + b)``."""
    idf: np.ndarray
    ngram_w: np.ndarray
    ngram_b: float
    style_mean: np.ndarray
    style_std: np.ndarray
    combiner_w: np.ndarray
    """Over ``[n-gram logit, calibrated vote logit, standardised style rates...]``."""
    combiner_b: float
    calibration: dict[str, Any]
    """The fit's own report: the vote's and the text score's reliability on the bank items
    (out-of-fold), for docs and benchmarks."""

    # ------------------------------------------------------------------ scoring
    def vote_probability(self, vote: float) -> float:
        """The calibrated probability that a review with this kNN vote is fake."""
        a, b = self.platt
        return float(_sigmoid(np.asarray(a * vote + b)))

    def ngram_logits(self, texts: Sequence[str]) -> np.ndarray:
        x = _tfidf(hashed_counts(texts), self.idf)
        return np.asarray(x @ self.ngram_w).reshape(-1) + self.ngram_b

    def fake_probability(self, texts: Sequence[str], votes: Sequence[float]) -> np.ndarray:
        """``review.fake_text_score`` of each text given its kNN vote."""
        ngram = self.ngram_logits(texts)
        vote_p = np.asarray([self.vote_probability(v) for v in votes], dtype=np.float64)
        z = self._combined(ngram, vote_p, style_features(texts))
        return np.asarray(_sigmoid(z))

    def _combined(self, ngram_logit: np.ndarray, vote_p: np.ndarray, style: np.ndarray) -> np.ndarray:
        feats = np.column_stack([ngram_logit, _logit(vote_p), (style - self.style_mean) / self.style_std])
        return np.asarray(feats @ self.combiner_w + self.combiner_b)

    # -------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        """The scalar part (the arrays go to :meth:`arrays`)."""
        return {"format": "marketguard.review_text_model/1", "fingerprint": self.fingerprint,
                "n_fraud": self.n_fraud, "n_benign": self.n_benign, "k": self.k,
                "hash_bits": HASH_BITS, "platt": list(self.platt), "ngram_b": self.ngram_b,
                "style_names": list(STYLE_NAMES), "style_mean": self.style_mean.tolist(),
                "style_std": self.style_std.tolist(), "combiner_w": self.combiner_w.tolist(),
                "combiner_b": self.combiner_b, "calibration": self.calibration}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"idf": self.idf.astype(np.float32), "ngram_w": self.ngram_w.astype(np.float32),
                "fingerprint": np.asarray(self.fingerprint)}

    @classmethod
    def from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> ReviewTextModel:
        """Rebuild from :meth:`to_json` and :meth:`arrays`; ValueError names what does not fit."""
        if meta.get("format") != "marketguard.review_text_model/1":
            raise ValueError(f"not a review text model: format {meta.get('format')!r}")
        if meta.get("hash_bits") != HASH_BITS or list(meta.get("style_names", [])) != list(STYLE_NAMES):
            raise ValueError("review text model made with other features: refit it")
        if str(arrays.get("fingerprint", "")) != str(meta.get("fingerprint")):
            raise ValueError("review text model arrays from another fit than its JSON")
        idf, w = np.asarray(arrays["idf"], np.float64), np.asarray(arrays["ngram_w"], np.float64)
        if idf.shape != (HASH_DIM,) or w.shape != (HASH_DIM,):
            raise ValueError(f"review text model arrays of shape {idf.shape}, {w.shape}, not ({HASH_DIM},)")
        return cls(str(meta["fingerprint"]), int(meta["n_fraud"]), int(meta["n_benign"]), int(meta["k"]),
                   (float(meta["platt"][0]), float(meta["platt"][1])), idf, w, float(meta["ngram_b"]),
                   np.asarray(meta["style_mean"], np.float64), np.asarray(meta["style_std"], np.float64),
                   np.asarray(meta["combiner_w"], np.float64), float(meta["combiner_b"]),
                   dict(meta.get("calibration", {})))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability table (equal-width bins) and expected calibration error of probabilities."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        mean_p, rate = float(p[m].mean()), float(y[m].mean())
        ece += m.sum() / len(p) * abs(mean_p - rate)
        table.append({"bin": [round(float(edges[b]), 2), round(float(edges[b + 1]), 2)], "n": int(m.sum()),
                      "mean_score": round(mean_p, 4), "fraud_rate": round(rate, 4)})
    return {"ece": round(float(ece), 4), "table": table}


def fit_review_text_model(texts: Sequence[str], is_fraud: Sequence[bool], vectors: np.ndarray,
                          fingerprint: str, seed: int = 0) -> ReviewTextModel | None:
    """Fit the vote calibration, the n-gram model and the combiner on bank items.

    ``vectors``: the items' embeddings (unit rows), in the order of ``texts``. None when
    either kind has fewer than :data:`MIN_PER_KIND` items (nothing to learn from).
    """
    y = np.asarray(is_fraud, dtype=np.float64)
    n_fraud, n = int(y.sum()), len(y)
    if len(texts) != n or len(vectors) != n:
        raise ValueError(f"{len(texts)} texts, {n} labels and {len(vectors)} vectors: one each")
    if n_fraud < MIN_PER_KIND or n - n_fraud < MIN_PER_KIND:
        return None
    rng = np.random.default_rng(seed)
    # 1. the vote, calibrated on leave-one-out votes (a sample beyond LOO_SAMPLE)
    rows = np.arange(n) if n <= LOO_SAMPLE else np.sort(rng.choice(n, LOO_SAMPLE, replace=False))
    votes = loo_votes(vectors, y.astype(bool), rows)
    aw, ab = _fit_logistic(votes[:, None], y[rows], c=100.0)
    platt = (float(aw[0]), ab)
    vote_p = np.asarray(_sigmoid(platt[0] * votes + platt[1]))
    # 2. the n-gram model, out of fold for the combiner, then on everything
    counts = hashed_counts(texts)
    df = np.bincount(counts.indices, minlength=HASH_DIM).astype(np.float64)
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    x = _tfidf(counts, idf)
    folds = rng.permutation(n) % STACK_FOLDS
    oof = np.zeros(n)
    for f in range(STACK_FOLDS):
        tr, te = folds != f, folds == f
        w, b = _fit_logistic(x[tr], y[tr], NGRAM_C)
        oof[te] = np.asarray(x[te] @ w).reshape(-1) + b
    ngram_w, ngram_b = _fit_logistic(x, y, NGRAM_C)
    # 3. the combiner over the sampled rows (where a LOO vote exists)
    style = style_features(texts)
    mean, std = style.mean(axis=0), style.std(axis=0)
    std[std < 1e-9] = 1.0
    feats = np.column_stack([oof[rows], _logit(vote_p), (style[rows] - mean) / std])
    cw, cb = _fit_logistic(feats, y[rows], COMBINER_C)
    combined = np.asarray(_sigmoid(feats @ cw + cb))
    calibration = {
        "items": n, "voted_items": len(rows),
        "vote": reliability(vote_p, y[rows]),
        "ngram_oof": reliability(np.asarray(_sigmoid(oof)), y),
        "fake_text_in_sample": reliability(combined, y[rows]),
    }
    return ReviewTextModel(fingerprint, n_fraud, n - n_fraud, KNN_K, platt, idf, ngram_w, ngram_b, mean, std,
                           cw, cb, calibration)


@dataclass(frozen=True)
class ReviewTextVerdict:
    """What the banks said of one review text: its nearest bank items, their vote, and the
    model's scores (None without a model). Stored with the review, so partner updates
    rebuild the same signals without the banks."""

    neighbours: tuple[tuple[str, str, str, float], ...]
    """``(bank, kind, item_id, similarity)`` of the nearest bank items, closest first."""
    vote: float
    vote_probability: float | None
    fake_probability: float | None
    model: str | None
    """The model's fingerprint (which bank contents), or None."""

    def to_dict(self) -> dict[str, Any]:
        return {"neighbours": [list(n) for n in self.neighbours], "vote": self.vote,
                "vote_probability": self.vote_probability, "fake_probability": self.fake_probability,
                "model": self.model}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReviewTextVerdict:
        return cls(tuple((str(b), str(k), str(i), float(s)) for b, k, i, s in raw.get("neighbours", [])),
                   float(raw.get("vote", 0.5)),
                   None if raw.get("vote_probability") is None else float(raw["vote_probability"]),
                   None if raw.get("fake_probability") is None else float(raw["fake_probability"]),
                   raw.get("model"))


def review_text_verdicts(texts: Sequence[str], neighbours: Sequence[Sequence[tuple[str, str, str, float]]],
                         model: ReviewTextModel | None, k: int = KNN_K) -> list[ReviewTextVerdict]:
    """The verdict of each text from its nearest bank items (any order) and the model.

    An empty (blank) text gets no vote and no score: nothing was compared.
    """
    if len(texts) != len(neighbours):
        raise ValueError(f"{len(texts)} texts and {len(neighbours)} neighbour lists: one each")
    out: list[ReviewTextVerdict] = []
    votes: list[float] = []
    for nb in neighbours:
        near = tuple(sorted(((str(b), str(kd), str(i), float(s)) for b, kd, i, s in nb),
                            key=lambda t: (-t[3], t[0], t[2]))[:k])
        vote = knn_vote([t[3] for t in near], [t[1] == "fraud" for t in near], k)
        votes.append(vote)
        out.append(ReviewTextVerdict(near, vote, None, None, None))
    if model is None:
        return out
    scored = [i for i, t in enumerate(texts) if t.strip() and out[i].neighbours]
    if not scored:
        return out
    fake = model.fake_probability([texts[i] for i in scored], [votes[i] for i in scored])
    for j, i in enumerate(scored):
        v = out[i]
        out[i] = ReviewTextVerdict(v.neighbours, v.vote, model.vote_probability(v.vote), float(fake[j]),
                                   model.fingerprint)
    return out
