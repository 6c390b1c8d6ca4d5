"""Near-duplicate (entity-resolution) quality on the public listing-pair benchmarks.

``python -m benchmarks.er_pairs [--quick] [--write-model] [--write-audit FILE]``

Data: ``../shared/data/listing_pairs/`` (DeepMatcher/Magellan Abt-Buy, Amazon-Google,
Walmart-Amazon and WDC Products, as packaged by megagonlabs/ditto). Each line is a
labelled pair of records; the ``train`` and ``valid`` splits are the only labels any
threshold or weight is fitted on. The ``test`` split is read for evaluation only.

What it measures (headline: the shipped decision at its shipped threshold):

(a) ``er_f1_shipped``: the shipped listing-text decision (``indexes/models/pair_scorer.json``
    and ``NearDuplicateConfig``'s copy questions) on the labelled test pairs, the Ditto
    protocol (the labelled pairs are the candidates), each pair featurised in both its
    records' neighbourhoods in the test catalogue and the better score kept, as the batch
    job keeps it; mean over the four datasets. Beside it: plain MiniLM cosine with a cut
    tuned on ``valid`` (``er_f1_cosine_baseline``) and a scorer fitted on each dataset's own
    ``train``/``valid`` (``er_f1``, a tenant's own labels);
(b) catalogue mode (``er_catalogue_precision``): the decision run over every test record
    (``candidates`` then ``decide``, the batch job's calls) and every emitted pair judged:
    labelled pairs by their label, the unlabelled ones estimated from a hand audit of a
    uniform sample (``benchmarks/data/er_catalogue_audit.tsv``); against the plain cosine
    cut where it reaches the same labelled recall;
(c) the generated multilingual marketplace-title set (``benchmarks/multilingual_titles.py``):
    mean per-listing F1 and pair precision/recall of the decision over its whole test
    catalogue, against the cosine cut best on its valid split; bait-priced reposts found.

``--write-model`` refits the shipped scorer (weights on the ER ``train`` splits and a share
of the multilingual ``train`` split, threshold on the ER ``valid`` splits) and saves it;
``--quick`` loads it and subsamples (no results file, no audit figure).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import multilingual_titles
from benchmarks.common import SHARED_DATA, finish
from benchmarks.text_catalogue import TextCatalogue, listing_f1
from indexes.config import NearDuplicateConfig
from indexes.near_duplicates import TextNearDuplicates
from indexes.pair_features import PairRecord
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


def prf(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


# --------------------------------------------------------------------------- the run
AUDIT_PATH = Path(__file__).resolve().parent / "data" / "er_catalogue_audit.tsv"
AUDIT_PER_RULE = 15  # unlabelled emitted pairs drawn for the hand audit, per dataset and rule
# The share of the multilingual train split's candidate pairs the shipped scorer's weights see,
# chosen on valid (see docs/indexes.md): the most multilingual valid F1 while the ER valid
# mean F1 stays within 0.015 of an ER-only fit's.
ML_TRAIN_SHARE = 0.15


@dataclass(slots=True)
class Split:
    """One labelled split as a catalogue: its records, their neighbourhoods, its labelled pairs."""

    catalogue: TextCatalogue
    pairs: list[tuple[int, int]]       # labelled pairs as catalogue rows (self pairs dropped)
    labels: np.ndarray
    cosines: np.ndarray
    features: np.ndarray               # from the left side's neighbourhood
    features_rev: np.ndarray           # from the right side's
    self_pairs: int = 0


def _subsample(pairs: list[LabelledPair], n: int, seed: int = 0) -> list[LabelledPair]:
    """At most ``n`` pairs, positives and negatives in their original shares."""
    if len(pairs) <= n:
        return pairs
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(pairs), n, replace=False))
    return [pairs[i] for i in idx]


def er_split(pairs: list[LabelledPair], emb: CachedEmbedder) -> Split:
    """The split's distinct records as a catalogue, its labelled pairs featurised in it."""
    rows: dict[PairRecord, int] = {}
    for p in pairs:
        rows.setdefault(p.left, len(rows))
        rows.setdefault(p.right, len(rows))
    records = list(rows)
    cat = TextCatalogue.build(records, emb.embed([embed_text(r) for r in records]))
    keyed: dict[tuple[int, int], int] = {}
    self_pairs = 0
    for p in pairs:
        a, b = rows[p.left], rows[p.right]
        if a == b:
            self_pairs += 1
            continue
        keyed[(a, b)] = max(keyed.get((a, b), 0), p.label)
    idx = list(keyed)
    fa, fb = cat.symmetric_features(idx)
    return Split(cat, idx, np.array([keyed[k] for k in idx], dtype=np.int64), fa[:, 0].copy(), fa, fb,
                 self_pairs)


@dataclass(slots=True)
class TitleSplit:
    """A multilingual title split as a catalogue, every candidate pair labelled by its group."""

    titles: multilingual_titles.TitleSet
    catalogue: TextCatalogue
    pairs: list[tuple[int, int]]
    labels: np.ndarray
    features: np.ndarray
    features_rev: np.ndarray

    @property
    def groups(self) -> list[str]:
        return [x.product_id for x in self.titles.listings]


def title_split(split: multilingual_titles.Split, emb: CachedEmbedder,
                products: int | None = None) -> TitleSplit:
    titles = multilingual_titles.make(split, products)
    records = [PairRecord(x.title, "", x.price) for x in titles.listings]
    cat = TextCatalogue.build(records, emb.embed([embed_text(r) for r in records]))
    groups = [x.product_id for x in titles.listings]
    idx = sorted({(min(q, int(h.id)), max(q, int(h.id)))
                  for q, hits in enumerate(cat.candidates) for h in hits})
    fa, fb = cat.symmetric_features(idx)
    return TitleSplit(titles, cat, idx, np.array([int(groups[a] == groups[b]) for a, b in idx]), fa, fb)


def decision(scorer: PairScorer, fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """A pair's score as the shipped rule gives it: found from either side, the better score."""
    copy = NearDuplicateConfig().text_copy_title_similarity
    return np.maximum(scorer.decision_scores(fa, copy), scorer.decision_scores(fb, copy))


def _test_prf(scores: np.ndarray, threshold: float, y: np.ndarray) -> dict[str, float]:
    return {**prf(scores >= threshold, y), "threshold": round(float(threshold), 4)}


def fit_default(er: dict[str, dict[str, Split]], ml_train: TitleSplit) -> PairScorer:
    """The shipped generic scorer.

    Weights: every ER dataset's train pairs (from both sides' neighbourhoods) and a
    :data:`ML_TRAIN_SHARE` sample of the multilingual train split's candidate pairs.
    Threshold: best F1 of the shipped decision (:func:`decision`) on the pooled ER valid pairs.
    """
    names = list(er)
    rng = np.random.default_rng(0)
    take = rng.random(len(ml_train.labels)) < ML_TRAIN_SHARE
    x = np.vstack([f for n in names for f in (er[n]["train"].features, er[n]["train"].features_rev)]
                  + [ml_train.features[take], ml_train.features_rev[take]])
    y = np.concatenate([er[n]["train"].labels for n in names for _ in (0, 1)]
                       + [ml_train.labels[take], ml_train.labels[take]])
    xv = np.vstack([er[n]["valid"].features for n in names])
    yv = np.concatenate([er[n]["valid"].labels for n in names])
    fitted = PairScorer.fit(x, y, xv, yv, description=(
        "weights fitted on the train splits of " + ", ".join(names) + " (../shared/data/listing_pairs, "
        "megagonlabs/ditto packaging), each labelled pair from both sides' neighbourhoods in its split's "
        f"catalogue, and {ML_TRAIN_SHARE:.0%} of the candidate pairs of the generated multilingual title "
        "train split (benchmarks/multilingual_titles.py); threshold: best F1 of the shipped decision "
        "(copy or same product, found from either side) on the pooled ER valid splits; test splits never "
        "read; cosine = text_minilm (onnx int8) of title + description, as the service embeds a listing"))
    scores = np.concatenate([decision(fitted, er[n]["valid"].features, er[n]["valid"].features_rev)
                             for n in names])
    choice = best_f1_threshold(scores, yv)
    meta = dict(fitted.meta)
    meta["threshold_rule"] = {"rule": "best_f1 of the decision score", "pairs": int(len(yv)),
                              "f1": round(choice.f1, 4), "precision": round(choice.precision, 4),
                              "recall": round(choice.recall, 4)}
    meta["ml_train_pairs"] = int(take.sum())
    return PairScorer(weights=fitted.weights, bias=fitted.bias, mean=fitted.mean, scale=fitted.scale,
                      threshold=choice.threshold, meta=meta)


# ------------------------------------------------------------------- catalogue mode
def _pair_key(dataset: str, a: PairRecord, b: PairRecord) -> str:
    x, y = sorted((embed_text(a), embed_text(b)))
    return hashlib.blake2b(f"{dataset}\x1f{x}\x1f{y}".encode(), digest_size=8).hexdigest()


def load_audit(path: Path = AUDIT_PATH) -> dict[str, str]:
    """Hand labels of sampled unlabelled pairs: key -> ``1`` (same product), ``0`` or ``?``."""
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").split("\n")[1:]:
        if line.strip():
            key, label = line.split("\t")[:2]
            out[key] = label
    return out


def catalogue_precision(name: str, te: Split, emitted: set[tuple[int, int]],
                        truth: dict[tuple[int, int], int], audit: dict[str, str],
                        unaudited: dict[str, tuple[str, str, str]] | None) -> dict[str, object]:
    """Precision over every emitted pair: labelled ones by their label, the rest estimated
    from the hand-labelled audit sample: the :data:`AUDIT_PER_RULE` unlabelled pairs with the
    smallest keys (a blake2b hash of the two texts: a uniform draw, stable across runs).

    ``unaudited``: collects the sampled pairs the audit file lacks; ``None``: no audit for
    this rule (labelled precision only).
    """
    recs = te.catalogue.records
    lab = [k for k in emitted if k in truth]
    tp = sum(truth[k] for k in lab)
    positives = sum(1 for (a, b), y in truth.items() if y and a < b)  # truth holds both orientations
    unl = [k for k in emitted if k not in truth]
    sample = {k: _pair_key(name, recs[k[0]], recs[k[1]]) for k in unl} if unaudited is not None else {}
    sample = dict(sorted(sample.items(), key=lambda kv: kv[1])[:AUDIT_PER_RULE])
    judged = [audit[h] for h in sample.values() if audit.get(h) in ("0", "1")]
    for k, h in sample.items():
        if h not in audit and unaudited is not None:
            unaudited[h] = (name, recs[k[0]].title, recs[k[1]].title)
    cannot = sum(1 for h in sample.values() if audit.get(h) == "?")
    p_unl = sum(1 for j in judged if j == "1") / len(judged) if judged else float("nan")
    est = (tp + (p_unl * len(unl) if unl else 0.0)) / max(len(emitted), 1)
    return {"pairs": len(emitted), "labelled": len(lab), "labelled_tp": tp,
            "labelled_precision": round(tp / max(len(lab), 1), 4), "recall": round(tp / max(positives, 1), 4),
            "unlabelled": len(unl), "audit_sample": len(sample), "audit_judged": len(judged),
            "audit_cannot_judge": cannot, "audit_unaudited": len(sample) - len(judged) - cannot,
            "audit_precision": round(p_unl, 4) if judged else None,
            "precision": round(est, 4) if (judged or not unl) else None}


def er_catalogue(name: str, te: Split, rule: TextNearDuplicates, cos_threshold: float,
                 audit: dict[str, str], unaudited: dict[str, tuple[str, str, str]]) -> dict[str, object]:
    """The shipped decision over every test record, against a plain cosine at the same recall."""
    truth = {k: int(y) for k, y in zip(te.pairs, te.labels.tolist(), strict=True)}
    truth.update({(b, a): y for (a, b), y in list(truth.items())})
    emitted = set(te.catalogue.run(rule))
    shipped = catalogue_precision(name, te, emitted, truth, audit, unaudited)
    # The plain cosine over the same candidates, cut where it first reaches the same labelled recall.
    cos_pairs = te.catalogue.cosine_pairs(-1.0)
    pos = sorted((s for k, s in cos_pairs.items() if truth.get(k) == 1), reverse=True)
    need = sum(1 for k in emitted if truth.get(k) == 1)
    cut = pos[need - 1] if 0 < need <= len(pos) else -1.0
    same_recall = catalogue_precision(name, te, {k for k, s in cos_pairs.items() if s >= cut}, truth, audit,
                                      unaudited)
    valid_cut = catalogue_precision(name, te, {k for k, s in cos_pairs.items() if s >= cos_threshold}, truth,
                                    audit, None)
    positives = sum(te.labels)
    return {"shipped": shipped, "cosine_same_recall": {**same_recall, "threshold": round(cut, 4)},
            "cosine_valid_threshold": {**valid_cut, "threshold": round(cos_threshold, 4)},
            "labelled_positives": int(positives)}


# ------------------------------------------------------------------- multilingual titles
def multilingual(scorer: PairScorer, valid: TitleSplit, test: TitleSplit) -> dict[str, object]:
    """The shipped decision over the generated multilingual catalogue (test split), against the
    plain cosine whose threshold is the best on the valid split."""
    rule = TextNearDuplicates(NearDuplicateConfig(), 0.9, scorer)
    shipped = test.catalogue.run(rule)
    cuts = np.round(np.arange(0.5, 0.99, 0.01), 2)
    best = max(cuts, key=lambda t: listing_f1(valid.catalogue.cosine_pairs(float(t)),
                                              valid.groups)["listing_f1"])
    cos = test.catalogue.cosine_pairs(float(best))
    groups = test.groups
    by_lang: dict[str, dict[str, float]] = {}
    for lang in multilingual_titles.LANGS:
        rows = [i for i, x in enumerate(test.titles.listings) if x.lang == lang]
        keep = set(rows)
        sub = {(rows.index(a), rows.index(b)) for a, b in shipped if a in keep and b in keep}
        by_lang[lang] = {"listings": len(rows),
                         "listing_f1": listing_f1(sub, [groups[i] for i in rows])["listing_f1"]}
    row = {x.listing_id: i for i, x in enumerate(test.titles.listings)}
    bait = [(min(row[a], row[b]), max(row[a], row[b])) for a, b in test.titles.bait_pairs]
    return {"shipped": listing_f1(shipped, groups),
            "cosine_baseline": {**listing_f1(cos, groups), "threshold": float(best)},
            "by_language_shipped": by_lang,
            "bait_priced_copies_found": f"{sum(1 for k in bait if k in shipped)}/{len(bait)}",
            "listings": len(groups), "products": len(set(groups)),
            "made_by": "benchmarks/multilingual_titles.py (generated; valid and test splits, "
                       "seeds 16001/16002)"}


def main() -> None:
    import argparse
    import sys

    # benchmarks.common.parse_args plus --write-model (refreshes the shipped artifact).
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="subsample, under a minute; loads the shipped scorer; no results file")
    parser.add_argument("--write-model", action="store_true",
                        help=f"save the scorer fitted on train/valid to {DEFAULT_MODEL_PATH}")
    parser.add_argument("--write-audit", type=Path,
                        help="write the audit sample's pairs still unlabelled to this TSV, to label by hand")
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
            if args.quick and split == "train":
                continue
            pairs = load_pairs(path)
            if args.quick:
                pairs = _subsample(pairs, 400 if split == "test" else 600)
            data[name][split] = er_split(pairs, emb)
    products = 150 if args.quick else None
    ml_splits: tuple[multilingual_titles.Split, ...] = (
        ("valid", "test") if args.quick else ("train", "valid", "test"))
    ml = {s: title_split(s, emb, products) for s in ml_splits}
    timing["embed_s"] = round(emb.seconds, 1)
    timing["embedded_texts"] = emb.embedded
    timing["load_s"] = round(time.perf_counter() - t_start, 1)

    t0 = time.perf_counter()
    if args.quick:
        shipped, shipped_source = PairScorer.load(DEFAULT_MODEL_PATH), f"loaded {DEFAULT_MODEL_PATH.name}"
    else:
        shipped = fit_default({n: {s: d for s, d in v.items() if s != "test"} for n, v in data.items()},
                              ml["train"])
        shipped_source = "fitted in this run on train (weights) + valid (threshold)"
        if args.write_model:
            shipped.save(DEFAULT_MODEL_PATH)
            shipped_source += f"; written to indexes/models/{DEFAULT_MODEL_PATH.name}"
    timing["fit_default_s"] = round(time.perf_counter() - t0, 2)
    rule = TextNearDuplicates(NearDuplicateConfig(), 0.9, shipped)
    audit = load_audit()
    unaudited: dict[str, tuple[str, str, str]] = {}

    per: dict[str, dict[str, object]] = {}
    for name, d in data.items():
        va, te = d["valid"], d["test"]
        cos_choice = best_f1_threshold(va.cosines, va.labels)
        shipped_scores = decision(shipped, te.features, te.features_rev)
        row: dict[str, object] = {
            "test_pairs": len(te.pairs) + te.self_pairs, "test_positives": int(te.labels.sum()),
            "self_pairs_skipped": te.self_pairs,
            "cosine_baseline": _test_prf(te.cosines, cos_choice.threshold, te.labels),
            "scorer_shipped": _test_prf(shipped_scores, shipped.threshold, te.labels),
            "ditto_f1": DITTO_F1.get(name),
        }
        if not args.quick:
            tr = d["train"]
            own = PairScorer.fit(np.vstack([tr.features, tr.features_rev]),
                                 np.concatenate([tr.labels, tr.labels]),
                                 va.features, va.labels)
            own_thr = best_f1_threshold(decision(own, va.features, va.features_rev), va.labels).threshold
            row["scorer_fitted_on_dataset"] = _test_prf(decision(own, te.features, te.features_rev), own_thr,
                                                        te.labels)
        row["catalogue"] = er_catalogue(name, te, rule, cos_choice.threshold, audit, unaudited)
        per[name] = row
    ml_figures = multilingual(shipped, ml["valid"], ml["test"])
    if args.write_audit:
        args.write_audit.write_text("key\tlabel\tdataset\tleft\tright\n" + "".join(
            f"{k}\t\t{d}\t{a}\t{b}\n".replace("\r", " ") for k, (d, a, b) in sorted(unaudited.items())),
            encoding="utf-8")

    def mean(key: str) -> float:
        return round(float(np.mean([r[key]["f1"] for r in per.values()])), 4)  # type: ignore[index]

    def cat_mean(which: str, key: str) -> float | None:
        vals = [r["catalogue"][which][key] for r in per.values()]  # type: ignore[index]
        return None if any(v is None for v in vals) else round(float(np.mean(vals)), 4)

    figures = {
        "er_f1_shipped": mean("scorer_shipped"),
        "er_f1_cosine_baseline": mean("cosine_baseline"),
        "er_f1_by_dataset_shipped": {n: r["scorer_shipped"]["f1"] for n, r in per.items()},  # type: ignore[index]
        "er_catalogue_precision": cat_mean("shipped", "precision"),
        "er_catalogue_recall": cat_mean("shipped", "recall"),
        "er_catalogue_precision_cosine_same_recall": cat_mean("cosine_same_recall", "precision"),
        "ml_listing_f1_shipped": ml_figures["shipped"]["listing_f1"],  # type: ignore[index]
        "ml_listing_f1_cosine_baseline": ml_figures["cosine_baseline"]["listing_f1"],  # type: ignore[index]
        "ml_pair_precision_shipped": ml_figures["shipped"]["pair_precision"],  # type: ignore[index]
        "ml_pair_recall_shipped": ml_figures["shipped"]["pair_recall"],  # type: ignore[index]
        "ml_bait_copies_found": ml_figures["bait_priced_copies_found"],
        "quick": args.quick,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if not args.quick:
        figures["er_f1"] = mean("scorer_fitted_on_dataset")
    for name, r in per.items():
        c = r["catalogue"]
        print(f"{name:15s} cosine F1 {r['cosine_baseline']['f1']:.3f}  "  # type: ignore[index]
              f"shipped {r['scorer_shipped']['f1']:.3f}  "  # type: ignore[index]
              f"catalogue P {c['shipped']['precision']} R {c['shipped']['recall']} "  # type: ignore[index]
              f"({c['shipped']['unlabelled']} unlabelled)  "  # type: ignore[index]
              f"cosine@same recall P {c['cosine_same_recall']['precision']}")  # type: ignore[index]
    print(f"multilingual   shipped {ml_figures['shipped']}  cosine {ml_figures['cosine_baseline']}")
    details = {"datasets": per, "multilingual_titles": ml_figures, "shipped_scorer": shipped_source,
               "timing": timing, "embedding_model": emb.model_id,
               "shipped_threshold": shipped.threshold, "shipped_meta": shipped.meta,
               "audit": {"file": "benchmarks/data/er_catalogue_audit.tsv", "per_rule": AUDIT_PER_RULE,
                         "how": "unlabelled pairs emitted in catalogue mode (by the shipped rule or the "
                                "cosine baselines) whose blake2b key falls in the sample were labelled by "
                                "hand: 1 same product, 0 not, ? cannot tell from the records"},
               "data": "../shared/data/listing_pairs (DeepMatcher/Magellan and WDC Products via "
                       "megagonlabs/ditto, Apache-2.0); multilingual titles generated by "
                       "benchmarks/multilingual_titles.py"}
    finish("er_pairs", figures, quick=args.quick,
           packages=("numpy", "onnxruntime", "faiss-cpu", "tokenizers"), details=details)


if __name__ == "__main__":
    main()
