"""Review text signals on real labelled data: ``review.bank_similarity`` and ``review.fake_text_score``
on op_spam, the banks holding the training folds.

Data: ``../shared/data/reviews/op_spam_v1.4.csv`` (Ott et al. 2011 and 2013, Deceptive Opinion
Spam Corpus v1.4, CC BY-NC-SA 3.0): 1,600 hotel reviews, 800 deceptive (written to order on
Mechanical Turk) and 800 truthful (TripAdvisor and the web), half positive, half negative.

Protocol: 5 folds stratified by label and polarity (seed 2026). For each fold, a fresh
:class:`~indexes.banks.BankStore` gets a ``fraud`` review bank of the training fold's
deceptive reviews and a ``benign`` one of its truthful reviews (the texts embedded by the
shipped text embedder, all-MiniLM-L6-v2 ONNX int8 at 128 tokens); the bank fits its text
model as it does after ``marketguard bank import`` (:meth:`~indexes.banks.BankStore.review_text_model`);
every test review is then scored by the service's and the batch job's code path
(:class:`~indexes.banks.ReviewBankJudge`, :func:`signals.entity_signals.review_signals`).
A review is called fake when a signal's score is >= 0.5 (the shipped scores are
probabilities: no threshold is tuned here). Reported: accuracy and AUC of each signal's
score, and the reliability (10 equal-width bins) and expected calibration error of each
score on the pooled test folds.

Published references: n-gram SVM 0.898 accuracy (Ott et al. 2011); humans about 0.60; a
plain MiniLM kNN about 0.71 (the issue's figure).

``--quick``: 400 reviews (100 of each label and polarity), 2 folds.
:func:`op_spam_figures` is what ``benchmarks.reviews`` calls.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import SHARED_DATA, finish, parse_args
from indexes.banks import BankItem, BankStore, ReviewBankJudge
from indexes.config import BanksConfig, ThresholdsConfig
from signals.config import TextEmbeddingConfig
from signals.entity_signals import ReviewFacts, review_signals
from signals.review_text import reliability
from signals.schemas import Review
from signals.text_embedding import build_text_embedder

OP_SPAM = SHARED_DATA / "reviews" / "op_spam_v1.4.csv"
CACHE = Path(__file__).resolve().parents[1] / "var" / "bench-cache"
SEED = 2026
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half), by ranks."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos, neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg)) if pos and neg else float("nan")


def _embed(texts: list[str]) -> np.ndarray:
    """The shipped text embedder's vectors, cached by the texts and the settings."""
    cfg = TextEmbeddingConfig()
    key = hashlib.sha256(("\n\x00".join(texts) + cfg.model_dump_json()).encode()).hexdigest()[:16]
    path = CACHE / f"op_spam-{key}.npy"
    if path.exists():
        return np.load(path)
    vecs = build_text_embedder(cfg, CACHE.parent / "models").embed(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return np.asarray(vecs)


def _folds(df: pd.DataFrame, k: int) -> np.ndarray:
    """A fold per row, stratified by label and polarity."""
    rng = np.random.default_rng(SEED)
    out = np.zeros(len(df), dtype=int)
    for _, idx in df.groupby(["deceptive", "polarity"]).indices.items():
        perm = rng.permutation(idx)
        out[perm] = np.arange(len(perm)) % k
    return out


def op_spam_figures(quick: bool) -> dict[str, Any]:
    """Accuracy, AUC and calibration of ``review.bank_similarity`` and ``review.fake_text_score``."""
    df = pd.read_csv(OP_SPAM)
    if quick:
        df = df.groupby(["deceptive", "polarity"]).head(100).reset_index(drop=True)
    k = 2 if quick else 5
    texts = df["text"].astype(str).tolist()
    fraud = (df["deceptive"] == "deceptive").to_numpy()
    t0 = time.perf_counter()
    vecs = _embed(texts)
    embed_s = time.perf_counter() - t0
    folds = _folds(df, k)
    bank_score = np.zeros(len(df))
    fake_score = np.zeros(len(df))
    fit_s: list[float] = []
    fold_acc = []
    for f in range(k):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        with tempfile.TemporaryDirectory() as tmp:
            store = BankStore(Path(tmp), BanksConfig(text_dim=vecs.shape[1]), ThresholdsConfig())
            try:
                for name, kind, rows in (("op-fraud", "fraud", train[fraud[train]]),
                                         ("op-benign", "benign", train[~fraud[train]])):
                    store.create(name, "review_text", kind)  # type: ignore[arg-type]  # a literal above
                    store.add_items(name, [BankItem(id=f"op{i}", vector=vecs[i].tolist(), text=texts[i])
                                           for i in rows])
                t1 = time.perf_counter()
                model = store.review_text_model()
                fit_s.append(time.perf_counter() - t1)
                if model is None:
                    raise RuntimeError("no review text model was fitted")
                judge = ReviewBankJudge([(store, None)])
                verdicts = judge.verdicts(vecs[test], [texts[i] for i in test])
                hits = store.match("review_text", vecs[test])
                for j, i in enumerate(test):
                    review = Review(review_id=f"q{i}", product_id=str(df["hotel"][i]), seller_id="s",
                                    reviewer_id=f"u{i}", rating=3, text=texts[i], created_at=NOW)
                    got = {s.name: s for s in review_signals(ReviewFacts(review, [], hits[j], verdicts[j]),
                                                             NOW).signals}
                    bank_score[i] = got["review.bank_similarity"].score or 0.0
                    fake_score[i] = got["review.fake_text_score"].score or 0.0
            finally:
                store.close()
        fold_acc.append(float(((fake_score[test] >= 0.5) == fraud[test]).mean()))

    def summary(scores: np.ndarray) -> dict[str, Any]:
        return {"accuracy": round(float(((scores >= 0.5) == fraud).mean()), 4),
                "auc": round(auc(scores, fraud), 4), "calibration": reliability(scores, fraud)}

    bank, fake = summary(bank_score), summary(fake_score)
    return {
        "op_spam_accuracy": fake["accuracy"],
        "op_spam_auc": fake["auc"],
        "op_spam_fake_text_ece": fake["calibration"]["ece"],
        "op_spam_bank_similarity_accuracy": bank["accuracy"],
        "op_spam_bank_similarity_auc": bank["auc"],
        "op_spam_bank_similarity_ece": bank["calibration"]["ece"],
        "details": {
            "reviews": len(df), "folds": k, "seed": SEED, "fold_accuracy": [round(a, 4) for a in fold_acc],
            "fake_text_score": fake, "bank_similarity": bank,
            "embed_s": round(embed_s, 1), "model_fit_s": [round(s, 1) for s in fit_s],
            "references": {"ngram_svm_ott_2011": 0.898, "humans": 0.6, "minilm_knn": 0.71},
        },
    }


# ---- templated campaigns against organic reviews (a constructed set) -------------------------

_PRAISE = ["great product", "love it", "works as described", "fast shipping", "would buy again",
           "highly recommend", "good value for money", "arrived on time", "five stars",
           "exactly what I needed", "very happy with this purchase", "great quality", "does the job",
           "my kids love it", "easy to use", "nice packaging", "as pictured", "seller was helpful"]
_SYNONYMS = {"great": "excellent", "amazing": "incredible", "stay": "visit", "room": "suite", "staff": "team",
             "hotel": "place", "comfortable": "cosy", "clean": "spotless", "beautiful": "lovely",
             "friendly": "welcoming", "recommend": "suggest", "perfect": "ideal", "definitely": "certainly",
             "location": "spot", "service": "hospitality", "nice": "pleasant", "very": "really",
             "wonderful": "fantastic", "helpful": "attentive", "best": "finest", "love": "adore"}


def _edit(text: str, rng: np.random.Generator, how: str) -> str:
    words = text.split()
    if how == "copy":
        return text
    if how == "small":  # a word or two changed or dropped, a typo
        for _ in range(2):
            i = int(rng.integers(len(words)))
            words[i] = words[i][:-1] if len(words[i]) > 3 and rng.random() < 0.5 else "really"
        return " ".join(words)
    # paraphrase: synonyms wherever known, a sentence dropped, the sentences shuffled
    out = [_SYNONYMS.get(w.lower().strip(".,!"), w) for w in words]
    sentences = [x.strip() for x in " ".join(out).split(".") if x.strip()]
    if len(sentences) > 2:
        sentences.pop(int(rng.integers(len(sentences))))
    rng.shuffle(sentences)  # type: ignore[arg-type]  # a list shuffles in place
    return ". ".join(sentences) + "."


def template_figures(quick: bool) -> dict[str, Any]:
    """Pairs the shipped review rule (:class:`~indexes.review_templates.ReviewTemplateRule`) and
    plain cosine >= ``thresholds.review_text`` call near-duplicates, on campaigns (one template,
    copies with small edits and paraphrases, by different accounts) mixed with organic reviews:
    short generic praise (the trap) and op_spam's truthful reviews (long, honest, same topics)."""
    from indexes.config import IndexesConfig
    from indexes.review_templates import ReviewTemplateRule, TextShingles

    rng = np.random.default_rng(SEED)
    df = pd.read_csv(OP_SPAM)
    deceptive = df[df["deceptive"] == "deceptive"]["text"].astype(str).tolist()
    truthful = df[df["deceptive"] == "truthful"]["text"].astype(str).tolist()
    n_campaigns, copies, organic = (8, 6, 80) if quick else (30, 8, 300)
    texts: list[str] = []
    group: list[int] = []  # campaign id, -1 organic
    for c in range(n_campaigns):
        sentences = [x.strip() for x in deceptive[c * 7].split(".") if x.strip()]
        template = ". ".join(sentences[:4]) + "."
        for j in range(copies):
            texts.append(_edit(template, rng, ("copy", "small", "paraphrase")[j % 3]))
            group.append(c)
    for _ in range(organic):  # short generic praise, 2 to 4 phrases
        picks = rng.choice(len(_PRAISE), size=int(rng.integers(2, 5)), replace=False)
        texts.append(", ".join(_PRAISE[i] for i in picks).capitalize() + "!")
        group.append(-1)
    for t in truthful[:organic]:
        texts.append(t)
        group.append(-1)
    vecs = _embed(texts)
    g = np.asarray(group)
    sims = vecs @ vecs.T
    iu = np.triu_indices(len(texts), 1)
    same = (g[iu[0]] == g[iu[1]]) & (g[iu[0]] >= 0)
    rule = ReviewTemplateRule.from_config(IndexesConfig())
    shingles = [TextShingles.of(t) for t in texts]
    cos = sims[iu]
    cand = cos >= rule.candidate_floor
    decided = np.zeros(len(cos), dtype=bool)
    for p in np.flatnonzero(cand):
        decided[p] = rule.is_near_duplicate(shingles[iu[0][p]], shingles[iu[1][p]], float(cos[p]))
    plain = cos >= IndexesConfig().thresholds.review_text

    def pr(pred: np.ndarray) -> dict[str, Any]:
        tp, fp = int((pred & same).sum()), int((pred & ~same).sum())
        return {"pairs": int(pred.sum()), "precision": round(tp / max(tp + fp, 1), 4),
                "recall": round(tp / max(int(same.sum()), 1), 4), "false_pairs": fp}

    return {"campaigns": n_campaigns, "copies_each": copies, "organic_short": organic,
            "organic_long": organic, "campaign_pairs": int(same.sum()), "rule": pr(decided),
            "plain_cosine": pr(plain)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    figures = op_spam_figures(args.quick)
    details = figures.pop("details")
    templates = template_figures(args.quick)
    details["templates"] = templates
    figures["template_pair_precision"] = templates["rule"]["precision"]
    figures["template_pair_recall"] = templates["rule"]["recall"]
    finish("review_text", figures, quick=args.quick, details=details,
           packages=("numpy", "scipy", "onnxruntime", "faiss-cpu"))


if __name__ == "__main__":
    main()
