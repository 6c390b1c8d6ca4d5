"""Near-duplicate (entity-resolution) quality on the public listing-pair benchmarks.

``python -m benchmarks.er_pairs [--quick]``

Data: ``../shared/data/listing_pairs/`` (DeepMatcher/Magellan Abt-Buy, Amazon-Google,
Walmart-Amazon and WDC Products, as packaged by megagonlabs/ditto). Each line is a
labelled pair of records; the ``train`` and ``valid`` splits are the only labels any
threshold or weight is fitted on. The ``test`` split is read for evaluation only.

What it measures, per dataset and as the mean over the four:

(a) the baseline: plain MiniLM cosine (``text_minilm``, onnx int8) with one threshold
    tuned on ``valid`` for best F1;
(b) the pair scorer of :mod:`indexes.pair_scorer`: the shipped artifact
    (``indexes/models/pair_scorer.json``, fitted on the union of every dataset's
    ``train`` with its threshold picked on the union of ``valid``), its threshold
    re-picked on each dataset's ``valid`` (a tenant's own labels), and a per-dataset
    fit (weights on that dataset's ``train``, threshold on its ``valid``);
(c) candidate recall: each dataset's test records as one catalogue, embedded and
    searched top-k with :class:`indexes.vector.VectorIndex` (exact), the share of the
    labelled matching pairs that top-k retrieval puts in front of the scorer.

Evaluation is the Ditto benchmark's: the labelled test pairs are the candidates and a
pair counts as predicted positive when the scorer (or cosine) says so.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED_DATA, finish
from indexes.pair_features import PairRecord, feature_matrix
from indexes.pair_scorer import DEFAULT_MODEL_PATH, PairScorer, best_f1_threshold

DATA = SHARED_DATA / "listing_pairs"
DATASETS: dict[str, dict[str, Path]] = {
    "Abt-Buy": {s: DATA / "er_magellan" / f"Abt-Buy_{s}.txt" for s in ("train", "valid", "test")},
    "Amazon-Google": {s: DATA / "er_magellan" / f"Amazon-Google_{s}.txt"
                      for s in ("train", "valid", "test")},
    "Walmart-Amazon": {s: DATA / "er_magellan" / f"Walmart-Amazon_{s}.txt"
                       for s in ("train", "valid", "test")},
    "WDC": {"train": DATA / "wdc" / "all_train.txt.small",
            "valid": DATA / "wdc" / "all_valid.txt.small",
            "test": DATA / "wdc" / "all_test.txt"},
}
DITTO_F1 = {"Abt-Buy": 0.893, "Amazon-Google": 0.756, "Walmart-Amazon": 0.868}
CACHE_DIR = Path("var/bench-cache")
TOP_K = (10, 20)

# Attribute names that carry the product's name, its free text, its price. Every other
# text attribute (brand, manufacturer, modelno, category) joins the description when the
# title does not already say it: generic, no dataset is named here.
_TITLE_ATTRS = ("title", "name")
_DESCRIPTION_ATTRS = ("description",)
_PRICE_ATTRS = ("price",)
_COL = re.compile(r"COL (\S+) VAL ?")


@dataclass(frozen=True, slots=True)
class LabelledPair:
    left: PairRecord
    right: PairRecord
    label: int


def parse_record(serialised: str) -> PairRecord:
    """``COL attr VAL value ...`` to a listing-like record (title, description, price)."""
    parts = _COL.split(serialised.strip())
    attrs: dict[str, str] = {}
    for name, value in zip(parts[1::2], parts[2::2], strict=True):
        attrs[name.lower()] = " ".join(value.split())
    title = " ".join(attrs[a] for a in _TITLE_ATTRS if attrs.get(a))
    extras = [v for k, v in attrs.items()
              if v and k not in _TITLE_ATTRS + _DESCRIPTION_ATTRS + _PRICE_ATTRS
              and v.lower() not in title.lower()]
    description = " ".join([*extras, *(attrs[a] for a in _DESCRIPTION_ATTRS if attrs.get(a))])
    price: float | None = None
    for a in _PRICE_ATTRS:
        try:
            value = float(attrs.get(a, "").replace("$", "").replace(",", ""))
        except ValueError:
            continue
        if np.isfinite(value) and value > 0:
            price = value
    return PairRecord(title=title or description[:200], description=description, price=price)


def load_pairs(path: Path) -> list[LabelledPair]:
    """One labelled pair a line; lines split on ``\\n`` only (see the data README)."""
    out: list[LabelledPair] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        left, right, label = line.rsplit("\t", 2)
        out.append(LabelledPair(parse_record(left), parse_record(right), int(label.strip())))
    return out


class CachedEmbedder:
    """``TextEmbedder`` behind an in-memory and an on-disk cache.

    The disk cache is two ``.npy`` files (no pickle) under ``var/bench-cache/<model>``:
    the blake2b hashes of the texts and their vectors, so a rerun, or ``--quick`` after
    a full run, embeds nothing it has embedded before.
    """

    def __init__(self, cache_dir: Path = CACHE_DIR) -> None:
        from signals.text_embedding import TextEmbedder

        self.embedder = TextEmbedder("onnx", quantization="int8", threads=2)
        self.model_id = self.embedder.model_id
        self.dir = cache_dir / re.sub(r"[^A-Za-z0-9.@-]+", "_", self.model_id)
        self._memo: dict[str, np.ndarray] = {}
        self.embedded = 0  # texts actually run through the model in this process
        self.seconds = 0.0
        keys, vecs = self.dir / "keys.npy", self.dir / "vectors.npy"
        if keys.is_file() and vecs.is_file():
            k = np.load(keys, allow_pickle=False)
            v = np.load(vecs, allow_pickle=False)
            if len(k) == len(v):
                self._memo = dict(zip(k.tolist(), v, strict=True))

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        todo = sorted({(k, t) for k, t in zip(keys, texts, strict=True) if k not in self._memo})
        if todo:
            t0 = time.perf_counter()
            vecs = self.embedder.embed([t for _, t in todo])
            self.seconds += time.perf_counter() - t0
            self.embedded += len(todo)
            for (k, _), v in zip(todo, vecs, strict=True):
                self._memo[k] = v
            self._save()
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([self._memo[k] for k in keys])

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        keys = list(self._memo)
        for name, arr in (("vectors", np.stack([self._memo[k] for k in keys])),
                          ("keys", np.array(keys, dtype="<U32"))):
            tmp = self.dir / f"{name}.tmp.npy"
            np.save(tmp, arr, allow_pickle=False)
            tmp.replace(self.dir / f"{name}.npy")


def embed_text(record: PairRecord) -> str:
    """The text embedded for candidate search and the cosine feature: what the service and
    the batch job embed for a listing (``Listing.text``: the title, then the description).

    The shipped scorer is fitted on these cosines, so its weights match what it is given
    in production. (A title-only cosine separates better on its own, best valid F1 0.37 vs
    0.25 on Walmart-Amazon, but the scorer's token and code features recover that.)
    """
    return f"{record.title}\n{record.description}" if record.description else record.title


def pair_cosines(pairs: Sequence[LabelledPair], emb: CachedEmbedder) -> np.ndarray:
    a = emb.embed([embed_text(p.left) for p in pairs])
    b = emb.embed([embed_text(p.right) for p in pairs])
    return np.einsum("ij,ij->i", a, b).astype(np.float64)


def prf(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


def candidate_recall(pairs: Sequence[LabelledPair], emb: CachedEmbedder,
                     ks: Iterable[int] = TOP_K) -> dict[str, float]:
    """Share of the positive test pairs that top-k search over the test catalogue retrieves.

    The catalogue is every distinct test record (both sides); a pair counts as retrieved
    when either record has the other among its k nearest neighbours (itself excluded).
    """
    from indexes.config import VectorIndexConfig
    from indexes.vector import VectorIndex

    texts = sorted({embed_text(r) for p in pairs for r in (p.left, p.right)})
    ids = {t: f"r{i}" for i, t in enumerate(texts)}
    vecs = emb.embed(texts)
    index = VectorIndex(VectorIndexConfig(dim=vecs.shape[1], exact_max=max(20_000, len(texts))))
    index.add(list(ids.values()), vecs)
    kmax = max(ks)
    hits = index.search(vecs, k=kmax + 1)
    neighbours: dict[str, list[str]] = {}
    for t, row in zip(texts, hits, strict=True):
        neighbours[ids[t]] = [h.id for h in row if h.id != ids[t]][:kmax]
    positives = [(ids[embed_text(p.left)], ids[embed_text(p.right)]) for p in pairs if p.label == 1]
    out: dict[str, float] = {"catalogue": len(texts)}
    for k in ks:
        found = sum(1 for a, b in positives if a == b or b in neighbours[a][:k] or a in neighbours[b][:k])
        out[f"recall@{k}"] = round(found / max(len(positives), 1), 4)
    return out


# --------------------------------------------------------------------------- the run
@dataclass(slots=True)
class Split:
    pairs: list[LabelledPair]
    cosines: np.ndarray
    features: np.ndarray
    labels: np.ndarray


def _subsample(pairs: list[LabelledPair], n: int, seed: int = 0) -> list[LabelledPair]:
    """At most ``n`` pairs, positives and negatives in their original shares."""
    if len(pairs) <= n:
        return pairs
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(pairs), n, replace=False))
    return [pairs[i] for i in idx]


def _split(pairs: list[LabelledPair], emb: CachedEmbedder, timing: dict[str, float]) -> Split:
    t0 = time.perf_counter()
    cos = pair_cosines(pairs, emb)
    t1 = time.perf_counter()
    feats = feature_matrix([(p.left, p.right) for p in pairs], cos)
    timing["features_s"] = timing.get("features_s", 0.0) + time.perf_counter() - t1
    timing["features_pairs"] = timing.get("features_pairs", 0.0) + len(pairs)
    timing["cosine_s"] = timing.get("cosine_s", 0.0) + t1 - t0
    return Split(pairs, cos, feats, np.array([p.label for p in pairs], dtype=np.int64))


def _test_prf(scores: np.ndarray, threshold: float, y: np.ndarray) -> dict[str, float]:
    return {**prf(scores >= threshold, y), "threshold": round(float(threshold), 4)}


def fit_default(data: dict[str, dict[str, Split]]) -> PairScorer:
    """The shipped generic scorer: weights on every dataset's train, threshold on every valid."""
    names = list(data)
    return PairScorer.fit(
        np.vstack([data[n]["train"].features for n in names]),
        np.concatenate([data[n]["train"].labels for n in names]),
        np.vstack([data[n]["valid"].features for n in names]),
        np.concatenate([data[n]["valid"].labels for n in names]),
        description=("weights fitted on the train splits of " + ", ".join(names)
                     + " (../shared/data/listing_pairs, megagonlabs/ditto packaging); threshold "
                       "picked for best F1 on their valid splits; test splits never read; "
                       "cosine = text_minilm (onnx int8) of title + description, as the service "
                       "embeds a listing"),
    )


def main() -> None:
    import argparse
    import sys

    # benchmarks.common.parse_args plus --write-model (refreshes the shipped artifact).
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="subsample, under a minute; loads the shipped scorer; no results file")
    parser.add_argument("--write-model", action="store_true",
                        help=f"save the scorer fitted on train/valid to {DEFAULT_MODEL_PATH}")
    args = parser.parse_args()
    if args.quick and args.write_model:
        sys.exit("--write-model needs a full run")
    t_start = time.perf_counter()
    emb = CachedEmbedder()
    timing: dict[str, float] = {}
    data: dict[str, dict[str, Split]] = {}
    for name, paths in DATASETS.items():
        data[name] = {}
        for split, path in paths.items():
            pairs = load_pairs(path)
            if args.quick:
                pairs = _subsample(pairs, 400 if split == "test" else 600)
            data[name][split] = _split(pairs, emb, timing)
    timing["embed_s"] = round(emb.seconds, 1)
    timing["embedded_texts"] = emb.embedded

    t0 = time.perf_counter()
    if args.quick:
        shipped, shipped_source = PairScorer.load(DEFAULT_MODEL_PATH), f"loaded {DEFAULT_MODEL_PATH.name}"
    else:
        shipped = fit_default({n: {s: d for s, d in v.items() if s != "test"} for n, v in data.items()})
        shipped_source = "fitted in this run on train (weights) + valid (threshold)"
        if args.write_model:
            shipped.save(DEFAULT_MODEL_PATH)
            shipped_source += f"; written to indexes/models/{DEFAULT_MODEL_PATH.name}"
    timing["fit_default_s"] = round(time.perf_counter() - t0, 2)

    per: dict[str, dict[str, object]] = {}
    t_score = 0.0
    for name, d in data.items():
        tr, va, te = d["train"], d["valid"], d["test"]
        cos_choice = best_f1_threshold(va.cosines, va.labels)
        ts = time.perf_counter()
        shipped_scores = shipped.score_features(te.features)
        t_score += time.perf_counter() - ts
        tenant_thr = shipped.with_threshold(va.features, va.labels)
        own = PairScorer.fit(tr.features, tr.labels, va.features, va.labels)
        row: dict[str, object] = {
            "test_pairs": len(te.pairs), "test_positives": int(te.labels.sum()),
            "cosine_baseline": _test_prf(te.cosines, cos_choice.threshold, te.labels),
            "scorer_fitted_on_dataset": _test_prf(own.score_features(te.features), own.threshold,
                                                  te.labels),
            "scorer_shipped": _test_prf(shipped_scores, shipped.threshold, te.labels),
            "scorer_shipped_dataset_threshold": _test_prf(shipped_scores, tenant_thr.threshold,
                                                          te.labels),
            "ditto_f1": DITTO_F1.get(name),
        }
        row["candidates"] = candidate_recall(te.pairs, emb)
        per[name] = row
    timing["score_pairs_per_s"] = round(sum(len(d["test"].pairs) for d in data.values())
                                        / max(t_score, 1e-9))

    def mean(key: str) -> float:
        return round(float(np.mean([r[key]["f1"] for r in per.values()])), 4)  # type: ignore[index]

    figures = {
        "er_f1": mean("scorer_fitted_on_dataset"),
        "er_f1_shipped": mean("scorer_shipped"),
        "er_f1_shipped_dataset_threshold": mean("scorer_shipped_dataset_threshold"),
        "er_f1_cosine_baseline": mean("cosine_baseline"),
        "er_f1_by_dataset": {n: r["scorer_fitted_on_dataset"]["f1"] for n, r in per.items()},  # type: ignore[index]
        "er_candidate_recall_at_10": round(float(np.mean(
            [r["candidates"]["recall@10"] for r in per.values()])), 4),  # type: ignore[index]
        "quick": args.quick,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    for name, r in per.items():
        print(f"{name:15s} cosine F1 {r['cosine_baseline']['f1']:.3f}  "  # type: ignore[index]
              f"scorer(own fit) {r['scorer_fitted_on_dataset']['f1']:.3f}  "  # type: ignore[index]
              f"shipped {r['scorer_shipped']['f1']:.3f}  "  # type: ignore[index]
              f"shipped+ds-thr {r['scorer_shipped_dataset_threshold']['f1']:.3f}  "  # type: ignore[index]
              f"ditto {r['ditto_f1']}  cand R@10 {r['candidates']['recall@10']:.3f}")  # type: ignore[index]
    details = {"datasets": per, "shipped_scorer": shipped_source, "timing": timing,
               "embedding_model": emb.model_id, "top_k": list(TOP_K),
               "shipped_threshold": shipped.threshold, "shipped_meta": shipped.meta,
               "data": "../shared/data/listing_pairs (DeepMatcher/Magellan and WDC Products via "
                       "megagonlabs/ditto, Apache-2.0)"}
    finish("er_pairs", figures, quick=args.quick,
           packages=("numpy", "onnxruntime", "faiss-cpu", "tokenizers"), details=details)


if __name__ == "__main__":
    main()
