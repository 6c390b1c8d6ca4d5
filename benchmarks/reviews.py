"""Fake-review signals against real labels (YelpZip) and a simulated review farm.

``python -m benchmarks.reviews [--quick] [--yelp-rows N]``

YelpZip (``../shared/data/reviews/yelp_zip/metadata.gz``: 608,598 reviews with Yelp's filter
as labels, no text): the file lists each product's recommended reviews before its filtered
ones, so the rows are shuffled (seed 0) and given fresh ids before anything sees them: reviews
``r0``... in the shuffled order, reviewers ``u0``... and products ``p0``... in order of first
appearance there (the file's own numbers follow its order). Sellers are synthetic
(``s{product // 5}``: five consecutive fresh product numbers a seller);
``created_at`` is the review's date at 00:00 UTC; there is no ``reviewer_created_at``.
``marketguard batch reviews`` runs over them (the real CLI, in a subprocess: its wall time
and peak RSS are measured); its ``signals.jsonl`` is joined per review (the review's own
signals, its reviewer's, its product's and its seller's) and each signal's AUC against the
filter is reported (``auc``: the value as is, filtered = positive; ``auc_best`` the better
of the two directions), then a HistGradientBoostingClassifier (:data:`BOOSTED_MODEL` at
one of the :data:`BOOSTED_SIZES`, 63 or 255 leaves, chosen in each fold on a tenth of its
training products and stopped early on them; scikit-learn's defaults beside it as
``boosted_default``) and a LogisticRegression over all the joined signals, 5 folds grouped by
product (no product in both training and test); a missing value is its column's median over
the training rows (0 where it has none).
The issue's baselines are computed from the raw file beside them: the reviewer's review
count alone, and 14 simple behavioural features (with look-ahead: final counts).

Seeded (SpEagle+, :func:`yelp_seeded`): what Yelp's verdicts on some products' reviews are
worth once they seed the propagation, as ``--labels`` and ``POST /v1/labels`` do. Over the same
five product folds, rotation ``k`` seeds the analysis (the job's, in process) with folds
``k+1`` and ``k+2``'s labels, trains the two models on folds ``k+3`` and ``k+4`` and scores
fold ``k``, so no label *of* a review a model learns from or is scored on reaches a signal;
the baseline gets the same seeds as two plain features (the reviewer's seeded reviews and the
filtered share of them), and both are run without seeds under the same protocol too (two
training folds, not four). ``yelp_zip_auc_seeded`` and ``yelp_zip_auc_seeded_baseline``.

Farm (:mod:`benchmarks.review_farm`): the job over a simulated catalogue; average precision
of every reviewer signal against the fake accounts (either direction: what the signal
carries), of ``reviewer.spam_score`` (the shipped unsupervised combination: ``farm_reviewer_ap``)
and of a gradient-boosted model learned on the farm's labels out of fold, over all reviewer
signals and over the behavioural ones only (``farm_reviewer_ap_learned``), with ablations
(camouflage off, small rings, fresh-only and aged-only accounts). Parameters were explored on
seed 1 (the rating bursts and their place in the priors, 2026-12-01: seeds 1 and 2); the
figures are seed 0. The farm's reviews have no text here (the text
signals come from the review_text work): the APs are of the behavioural and graph signals.
``--quick``: 3,000 YelpZip reviews through the job (whole reviewer histories: reviewers in a
random order until the count is reached) and a small farm through the job's analysis in process.

``op_spam_accuracy``: ``review.fake_text_score`` on op_spam, 5-fold cross-validation with the
banks holding the training folds (:func:`benchmarks.review_text.op_spam_figures`, the same
function ``benchmarks.review_text`` reports with the template figures).
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.common import SHARED_DATA, finish, parse_args
from benchmarks.review_farm import FarmParams, simulate
from benchmarks.review_text import op_spam_figures

if TYPE_CHECKING:
    from signals.schemas import Label

YELP = SHARED_DATA / "reviews" / "yelp_zip" / "metadata.gz"
ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "var" / "models"


def yelp_rows(limit: int | None, seed: int = 0) -> tuple[list[dict[str, Any]], np.ndarray, list[list[str]]]:
    """Shuffled YelpZip as Review dicts with fresh ids, the labels (1 = filtered) and the raw rows."""
    with gzip.open(YELP, "rt") as f:
        raw = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    rng = np.random.default_rng(seed)
    raw = [raw[i] for i in rng.permutation(len(raw)).tolist()]
    if limit is not None and limit < len(raw):
        # whole reviewer histories (the filter judges accounts): reviewers in a random order
        # until ``limit`` reviews; products keep only the sampled reviewers' reviews
        users = list(dict.fromkeys(r[0] for r in raw))
        keep: set[str] = set()
        count: dict[str, int] = {}
        for r in raw:
            count[r[0]] = count.get(r[0], 0) + 1
        total = 0
        for u in users:
            if total >= limit:
                break
            keep.add(u)
            total += count[u]
        raw = [r for r in raw if r[0] in keep]
    # fresh reviewer and product numbers too, in order of first appearance in the shuffled rows:
    # the file's own numbers follow its order (filtered reviews are listed last)
    reviewer = fresh_numbers(r[0] for r in raw)
    product = fresh_numbers(r[1] for r in raw)
    records = [{"review_id": f"r{i}", "product_id": f"p{product[p]}", "seller_id": f"s{product[p] // 5}",
                "reviewer_id": f"u{reviewer[u]}", "rating": int(float(r)), "created_at": f"{d}T00:00:00Z"}
               for i, (u, p, r, _, d) in enumerate(raw)]
    labels = np.array([1 if row[3] == "-1" else 0 for row in raw], dtype=np.int8)
    return records, labels, raw


def fresh_numbers(keys: Iterable[str]) -> dict[str, int]:
    """0, 1, 2, ... for each distinct key, in the order the keys first appear."""
    out: dict[str, int] = {}
    for key in keys:
        out.setdefault(key, len(out))
    return out


def run_job(records: list[dict[str, Any]], work: Path) -> tuple[Path, float, float]:
    """``marketguard batch reviews`` over ``records``; (out dir, wall seconds, peak RSS MiB of the driver)."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / "reviews.jsonl"
    with src.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    state = work / "state"
    state.mkdir(exist_ok=True)
    if MODELS_DIR.exists() and not (state / "models").exists():
        os.symlink(MODELS_DIR, state / "models")
    out = work / "out"
    cmd = [sys.executable, "-m", "serving.cli", "batch", "reviews", "--input", str(src), "--out", str(out),
           "--data-dir", str(state), "--progress", "off", "--restart"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out, wall, peak


def read_signals(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(entity_type, name) -> {entity_id: numeric value} from a signals.jsonl."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    with path.open() as f:
        for line in f:
            s = json.loads(line)
            v = s["value"]
            if isinstance(v, bool):
                v = float(v)
            if not isinstance(v, int | float):
                continue
            out.setdefault((s["entity_type"], s["name"]), {})[s["entity_id"]] = float(v)
    return out


def joined(records: list[dict[str, Any]], signals: dict[tuple[str, str], dict[str, float]]
           ) -> tuple[list[str], np.ndarray]:
    """One row per review: its own signals, its reviewer's, its product's, its seller's."""
    key_of = {"review": "review_id", "reviewer": "reviewer_id", "product": "product_id",
              "seller": "seller_id"}
    names: list[str] = []
    cols: list[np.ndarray] = []
    for (etype, name), values in sorted(signals.items()):
        if etype not in key_of:
            continue
        k = key_of[etype]
        col = np.array([values.get(r[k], np.nan) for r in records], dtype=np.float64)
        if np.all(np.isnan(col)) or np.nanstd(col) == 0:
            continue
        names.append(f"{etype}:{name}")
        cols.append(col)
    return names, np.stack(cols, axis=1)


def auc(y: np.ndarray, x: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    x = np.where(np.isnan(x), np.nanmedian(x), x)
    return float(roc_auc_score(y, x))


def grouped_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """Pooled out-of-fold AUC of boosting and logistic regression, 5 folds grouped by product
    (``boosted_default``: scikit-learn's default boosting, 100 rounds of 31 leaves, beside;
    ``boosted_leaves``: the size each fold's held-out training products chose), and the boosted
    model's pooled out-of-fold probabilities."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    pooled = {kind: np.zeros(len(y)) for kind in ("boosted", "linear", "boosted_default")}
    leaves = []
    with one_thread():
        for train, test in GroupKFold(n_splits=5).split(x, y, groups):
            fitted = _fit_predict(x, y, train, test, groups, default=True)
            leaves.append(fitted.leaves)
            for kind, v in fitted.scores.items():
                pooled[kind][test] = v
    return ({**{kind: round(float(roc_auc_score(y, v)), 4) for kind, v in pooled.items()},
             "boosted_leaves": leaves}, pooled["boosted"])


def weighted_auc(y: np.ndarray, order: np.ndarray, ties: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC with row weights (ties count a half), in O(n): ``order`` sorts the scores
    ascending and ``ties[k]`` numbers the distinct score of the ``k``-th sorted row (0, 1, ...).
    scikit-learn's ``roc_auc_score(sample_weight=...)`` gives the same (tested) but sorts 600k
    scores again for each of the bootstrap's thousands of calls."""
    w = weights[order]
    pos = np.bincount(ties, weights=w * y[order])
    neg = np.bincount(ties, weights=w * (1 - y[order]))
    below = np.cumsum(neg) - neg
    total = pos.sum() * neg.sum()
    if total == 0:
        raise ValueError("AUC needs weight on both classes")
    return float((pos * (below + neg / 2)).sum() / total)


def product_bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], groups: np.ndarray,
                      rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    """95 % percentile intervals of each score's AUC, and of the first score's AUC minus each
    other's, from resampling whole products with replacement (a product's reviews are not
    independent draws; every score sees the same resamples, so the differences are paired)."""
    _, product = np.unique(groups, return_inverse=True)
    n = int(product.max()) + 1
    prepared = {}
    for name, s in scores.items():
        order = np.argsort(s, kind="stable")
        ties = np.concatenate([[0], np.cumsum(np.diff(s[order]) != 0)])
        prepared[name] = (order, ties)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in scores}
    for _ in range(rounds):
        weights = np.bincount(rng.integers(0, n, size=n), minlength=n)[product].astype(float)
        for name, (order, ties) in prepared.items():
            draws[name].append(weighted_auc(y, order, ties, weights))
    first = next(iter(scores))
    out: dict[str, Any] = {"rounds": rounds, "resampled": "products"}
    for name, values in draws.items():
        out[name] = [round(float(q), 4) for q in np.percentile(values, [2.5, 97.5])]
        if name != first:
            diff = np.array(draws[first]) - np.array(values)
            out[f"{first}_minus_{name}"] = [round(float(q), 4) for q in np.percentile(diff, [2.5, 97.5])]
    return out


def one_thread() -> Any:
    """One OpenMP / BLAS thread for the models (libraries already loaded): on a shared 2-core
    box HistGradientBoosting's threads spin at barriers against other processes (a 12k-row
    fit took over 20 minutes)."""
    import sklearn.ensemble  # noqa: F401  # loads the OpenMP runtime the limit must see
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


BOOSTED_MODEL: dict[str, Any] = {"learning_rate": 0.1, "max_iter": 3000, "early_stopping": True,
                                 "n_iter_no_change": 50}
"""The boosted model over YelpZip's 600k rows: trees are added until the loss on a held-out
tenth of the training products (:data:`VALIDATION_PRODUCTS`) has not improved for 50 rounds,
at one of the :data:`BOOSTED_SIZES`. scikit-learn's defaults (100 rounds of 31 leaves) underfit
half a million rows. Every arm, the baselines included, gets the same procedure."""
BOOSTED_SIZES: tuple[dict[str, int], ...] = ({"max_leaf_nodes": 63, "min_samples_leaf": 20},
                                             {"max_leaf_nodes": 255, "min_samples_leaf": 40})
"""The tree sizes tried in each fit: the one with the lower log loss on that fit's own held-out
training products is kept (nested: no scored row takes part in the choice)."""
VALIDATION_PRODUCTS = 0.1


@dataclass(frozen=True)
class Fitted:
    """What :func:`_fit_predict` gives: each model's probabilities for the scored rows, and the
    size (leaves) of the boosted model that its held-out products chose."""

    scores: dict[str, np.ndarray]
    leaves: int


def _fit_predict(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, groups: np.ndarray,
                 *, default: bool = False) -> Fitted:
    """Probabilities for ``x[test]`` of the models fitted on ``x[train]`` (a missing value: its
    column's median over the training rows): ``boosted`` (:data:`BOOSTED_MODEL` at each of the
    :data:`BOOSTED_SIZES`, fitted on the training rows less a tenth of the training products and
    stopped on that tenth; the size with the lower log loss there is kept), ``linear`` and, with
    ``default``, ``boosted_default`` (scikit-learn's defaults on the training rows: up to 100
    rounds of 31 leaves, which above 10,000 rows stop early on a random tenth of them)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = fill_missing(x, train)
    fit, held = validation_split(train, groups)
    best: tuple[float, int, Any] | None = None
    for size in BOOSTED_SIZES:
        gb = HistGradientBoostingClassifier(random_state=0, **BOOSTED_MODEL, **size).fit(
            x[fit], y[fit], X_val=x[held], y_val=y[held])
        loss = float(log_loss(y[held], gb.predict_proba(x[held])[:, 1], labels=[0, 1]))
        if best is None or loss < best[0]:
            best = (loss, size["max_leaf_nodes"], gb)
    if best is None:
        raise ValueError("BOOSTED_SIZES is empty")
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
    scores = {"boosted": best[2].predict_proba(x[test])[:, 1], "linear": lr.predict_proba(x[test])[:, 1]}
    if default:
        scores["boosted_default"] = HistGradientBoostingClassifier(random_state=0).fit(
            x[train], y[train]).predict_proba(x[test])[:, 1]
    return Fitted(scores, best[1])


def fill_missing(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``x`` with each missing value replaced by its column's median over the ``train`` rows (0
    where a column has no training value): the scored rows' values do not reach the fill."""
    rows = x[train]
    has = ~np.isnan(rows).all(axis=0)
    fill = np.zeros(x.shape[1])
    fill[has] = np.nanmedian(rows[:, has], axis=0)
    return np.where(np.isnan(x), fill, x)


def validation_split(train: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training rows as ``(fit, held)`` masks: ``held`` is every row of a random tenth of the
    training products (seed 0; at least one product), ``fit`` the rest."""
    rows = np.zeros(len(groups), dtype=bool)
    rows[train] = True
    products = np.unique(groups[rows])
    if len(products) < 2:
        raise ValueError("a validation split needs at least two training products")
    rng = np.random.default_rng(0)
    chosen = rng.choice(products, size=max(1, round(len(products) * VALIDATION_PRODUCTS)), replace=False)
    held = rows & np.isin(groups, chosen)
    return rows & ~held, held


def baselines(feats: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """The issue's baselines over :func:`baseline_features` (final counts, i.e. with look-ahead),
    and the boosted model's pooled out-of-fold probabilities."""
    cv, boosted = grouped_cv(feats, y, groups)
    return ({"reviewer_count_auc": round(1 - auc(y, feats[:, 0]), 4), "features": feats.shape[1],
             "boosted": cv["boosted"], "linear": cv["linear"], "boosted_default": cv["boosted_default"],
             "boosted_leaves": cv["boosted_leaves"]}, boosted)


def baseline_features(raw: list[list[str]]) -> np.ndarray:
    """The baselines' 14 features, one row per raw row (the reviewer's review count first)."""
    from datetime import date

    u = np.array([int(r[0]) for r in raw])
    p = np.array([int(r[1]) for r in raw])
    stars = np.array([float(r[2]) for r in raw])
    day = np.array([date.fromisoformat(r[4]).toordinal() for r in raw])
    n_u = np.bincount(u)[u].astype(float)
    pmean = (np.bincount(p, weights=stars) / np.maximum(np.bincount(p), 1))[p]
    dev = np.abs(stars - pmean)
    ucount = np.bincount(u)
    pos = (np.bincount(u, weights=(stars >= 4).astype(float)) / np.maximum(ucount, 1))[u]
    neg = (np.bincount(u, weights=(stars <= 2).astype(float)) / np.maximum(ucount, 1))[u]
    mdev = (np.bincount(u, weights=dev) / np.maximum(ucount, 1))[u]
    first_u = np.full(u.max() + 1, 1 << 30)
    last_u = np.zeros(u.max() + 1, dtype=np.int64)
    np.minimum.at(first_u, u, day)
    np.maximum.at(last_u, u, day)
    span = (last_u - first_u)[u]
    _, inv_ud, cnt_ud = np.unique(u.astype(np.int64) * 10**6 + day, return_inverse=True, return_counts=True)
    maxday = np.zeros(u.max() + 1)
    np.maximum.at(maxday, u, cnt_ud[inv_ud])
    first_p = np.full(p.max() + 1, 1 << 30)
    np.minimum.at(first_p, p, day)
    since = day - first_p[p]
    psize = np.bincount(p)[p]
    _, inv_pd, cnt_pd = np.unique(p.astype(np.int64) * 10**6 + day, return_inverse=True, return_counts=True)
    order = np.lexsort((np.arange(len(p)), day, p))
    rank = np.empty(len(p))
    starts = np.searchsorted(p[order], p[order], side="left")
    rank[order] = np.arange(len(p)) - starts + 1
    feats = np.stack([n_u, pos, neg, mdev, span, maxday[u], dev, (stars == 1) | (stars == 5), since, stars,
                      psize, cnt_pd[inv_pd], day, rank], axis=1).astype(float)
    return feats


def yelp(limit: int | None, tmp: Path) -> dict[str, Any]:
    records, y, raw = yelp_rows(limit)
    out, wall, peak = run_job(records, tmp / "yelp")
    summary = json.loads((out / "summary.json").read_text())
    signals = read_signals(out / "signals.jsonl")
    names, x = joined(records, signals)
    per_signal = {}
    for k, name in enumerate(names):
        a = auc(y, x[:, k])
        per_signal[name] = {"auc": round(a, 4), "auc_best": round(max(a, 1 - a), 4)}
    groups = np.array([int(r["product_id"][1:]) for r in records])
    cv, boosted = grouped_cv(x, y, groups)
    baseline = baseline_features(raw)
    base, base_boosted = baselines(baseline, y, groups)
    # how far the pooled figures could move with other products: the signals', the baseline's,
    # and the signals' lead over the baseline
    cv["ci95"] = product_bootstrap(y, {"signals": boosted, "baseline": base_boosted}, groups)
    return {"reviews": len(records), "filtered": int(y.sum()), "job_wall_s": round(wall, 1),
            "job_peak_rss_mib_driver": round(peak, 1), "job_timings": summary.get("timings"),
            "signals_joined": len(names), "auc_per_signal": per_signal, "grouped_cv": cv,
            "baselines": base, "seeded": yelp_seeded(records, y, baseline)}


def _ap(y: np.ndarray, x: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, np.where(np.isnan(x), np.nanmin(x), x)))


REVIEWER_COMBINED = ("reviewer.spam_score",)


def analysed_signals(records: list[dict[str, Any]], labels: Sequence[Label] = (), *,
                     reviews: bool = False) -> dict[tuple[str, str], dict[str, float]]:
    """What the job's review analysis gives, without the job (as :func:`read_signals` reads it):
    the entity signals, and each review's own with ``reviews``; ``labels`` seed the
    propagation as ``marketguard batch reviews --labels`` does."""
    from datetime import UTC, datetime

    from signals.review_analysis import ReviewRow, analyse_reviews
    from signals.schemas import Review

    analysis = analyse_reviews([ReviewRow.of(Review.model_validate(r)) for r in records], labels)
    now = datetime.now(UTC)
    out: dict[tuple[str, str], dict[str, float]] = {}
    found = analysis.entity_signals(now)
    if reviews:
        found = chain(found, (s for i in range(len(records)) for s in analysis.review_signals(i, now)))
    for s in found:
        if isinstance(s.value, int | float):
            out.setdefault((s.entity_type, s.name), {})[s.entity_id] = float(s.value)
    return out


SPAM_SCORES = ("review:review.spam_score", "reviewer:reviewer.spam_score", "product:product.spam_score")


def yelp_seeded(records: list[dict[str, Any]], y: np.ndarray, baseline: np.ndarray,
                rotations: int = 5) -> dict[str, Any]:
    """SpEagle+ on YelpZip: Yelp's verdicts on some products' reviews seed the propagation.

    The products are split in 5 folds by product (the folds of :func:`grouped_cv`). Rotation
    ``k`` seeds the analysis with the labels of folds ``k+1`` and ``k+2`` (review labels, as
    ``--labels`` takes them), trains the models on folds ``k+3`` and ``k+4`` and scores fold
    ``k``: no label *of* a review a model learns from or is scored on reaches any signal. The
    baseline gets the same seeds as two plain features (the share of the reviewer's seeded
    reviews that were filtered, and their count). Beside them, the same rotations without
    seeds (``unseeded_*``, ``baseline_unseeded_*``): the gain of the seeds is the difference
    under one protocol (two training folds, not the four of :func:`grouped_cv`).
    """
    from sklearn.model_selection import GroupKFold

    from signals.schemas import Label

    if not 1 <= rotations <= 5:
        raise ValueError(f"rotations must be 1..5, not {rotations}")
    t0 = time.perf_counter()
    groups = np.array([int(r["product_id"][1:]) for r in records])
    reviewer = np.unique([r["reviewer_id"] for r in records], return_inverse=True)[1]
    fold = np.empty(len(y), dtype=np.int64)
    for k, (_, test) in enumerate(GroupKFold(n_splits=5).split(baseline, y, groups)):
        fold[test] = k
    scored = np.zeros(len(y), dtype=bool)
    arms = ("", "unseeded_", "baseline_", "baseline_unseeded_")
    out = {arm + kind: np.zeros(len(y)) for arm in arms for kind in ("boosted", "linear")}
    leaves: dict[str, list[int]] = {arm + "boosted": [] for arm in arms}
    singles = {name: np.zeros(len(y)) for name in SPAM_SCORES}
    joined_counts: set[int] = set()
    unseeded_names, unseeded = joined(records, analysed_signals(records, reviews=True))
    for k in range(rotations):
        seeds = np.isin(fold, [(k + 1) % 5, (k + 2) % 5])
        train = np.isin(fold, [(k + 3) % 5, (k + 4) % 5])
        test = fold == k
        labels = [Label(entity_type="review", entity_id=records[i]["review_id"],
                        label="fraud" if y[i] else "legit") for i in np.flatnonzero(seeds)]
        names, x = joined(records, analysed_signals(records, labels, reviews=True))
        joined_counts.add(len(names))
        for name in SPAM_SCORES:
            singles[name][test] = x[test, names.index(name)]
        seeded_n = np.bincount(reviewer, weights=seeds.astype(float))[reviewer]
        seeded_filtered = np.bincount(reviewer, weights=(seeds & (y == 1)).astype(float))[reviewer]
        share = np.where(seeded_n > 0, seeded_filtered / np.maximum(seeded_n, 1), np.nan)
        features = {"": x, "unseeded_": unseeded, "baseline_": np.column_stack([baseline, share, seeded_n]),
                    "baseline_unseeded_": baseline}
        with one_thread():
            for arm in arms:
                fitted = _fit_predict(features[arm], y, train, test, groups)
                leaves[arm + "boosted"].append(fitted.leaves)
                for kind, v in fitted.scores.items():
                    out[arm + kind][test] = v
        scored |= test
        print(json.dumps({"yelp_seeded_rotation": k, "elapsed_s": round(time.perf_counter() - t0, 1)}),
              file=sys.stderr, flush=True)
    return {"protocol": "seeds: the review labels of 2 product folds; models trained on 2 other folds; "
                        f"scored on the fifth; {rotations} rotations, pooled",
            "rotations": rotations, "wall_s": round(time.perf_counter() - t0, 1),
            "scored_reviews": int(scored.sum()), "signals_joined": sorted(joined_counts),
            "signals_joined_unseeded": len(unseeded_names),
            **{name: round(auc(y[scored], v[scored]), 4) for name, v in out.items()},
            "boosted_leaves": leaves,
            "spam_score_auc": {name: round(auc(y[scored], v[scored]), 4) for name, v in singles.items()}}


def farm(params: FarmParams, tmp: Path, name: str, *, in_process: bool = False) -> dict[str, Any]:
    """Reviewer APs on one simulated catalogue; ``in_process``: the batch job's analysis called
    directly (the ``--quick`` run: no Ray start-up), not the job."""
    records, fake = simulate(params)
    t = time.perf_counter()
    if in_process:
        signals = analysed_signals(records)
        wall = time.perf_counter() - t
    else:
        out, wall, _ = run_job(records, tmp / f"farm-{name}")
        signals = read_signals(out / "signals.jsonl")
    ids = sorted({r["reviewer_id"] for r in records})
    y = np.array([i in fake for i in ids], dtype=np.int8)
    aps: dict[str, float] = {}
    for (etype, sname), values in sorted(signals.items()):
        if etype != "reviewer":
            continue
        x = np.array([values.get(i, np.nan) for i in ids])
        aps[sname] = round(max(_ap(y, x), _ap(y, -x)), 4)  # either direction: what the signal carries
    names = sorted(n for (etype, n) in signals if etype == "reviewer")
    x = np.array([[signals[("reviewer", n)].get(i, np.nan) for n in names] for i in ids])
    behaviour_only = [k for k, n in enumerate(names) if n not in GRAPH_SIGNALS]
    combined = {k: aps.get(k) for k in REVIEWER_COMBINED}
    combined["learned_all_reviewer_signals"] = learned_ap(x, y)
    combined["learned_behaviour_only"] = learned_ap(x[:, behaviour_only], y)
    return {"reviews": len(records), "reviewers": len(ids), "fake_reviewers": int(y.sum()),
            "base_rate": round(float(y.mean()), 4), "job_wall_s": round(wall, 1), "ap": aps,
            "best_single": max(aps, key=lambda k: aps[k]), "combined": combined}


GRAPH_SIGNALS = ("reviewer.ring_score", "reviewer.burst_participation", "reviewer.rating_burst",
                 "reviewer.spam_score")


def learned_ap(x: np.ndarray, y: np.ndarray) -> float:
    """AP of a HistGradientBoostingClassifier over the reviewer signals, out of fold (5
    stratified folds, seed 0): what a risk model trained on some labelled accounts would get
    from these signals. The farm's labels train it; no signal was fitted on them."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    with one_thread():
        p = cross_val_predict(HistGradientBoostingClassifier(random_state=0), x, y, cv=folds,
                              method="predict_proba")[:, 1]
    return round(_ap(y, p), 4)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    limit_env = os.environ.get("YELP_ROWS")
    limit = 3000 if args.quick else (int(limit_env) if limit_env else None)
    with TemporaryDirectory(prefix="reviews-bench-") as d:
        tmp = Path(d)
        figures: dict[str, Any] = {"op_spam": op_spam_figures(args.quick)}
        print(json.dumps({"op_spam_accuracy": figures["op_spam"]["op_spam_accuracy"]}), file=sys.stderr,
              flush=True)
        figures["yelp_zip"] = yelp(limit, tmp)
        # a long run's progress, in case it is stopped before the end
        print(json.dumps({"yelp_zip": figures["yelp_zip"]}), file=sys.stderr, flush=True)
        base = FarmParams(seed=0)
        if args.quick:
            base = replace(base, organic_reviewers=3000, products=500, sellers=80, campaigns=15)
            runs = {"camouflage": base}
        else:
            runs = {"camouflage": base, "no_camouflage": replace(base, camouflage=False),
                    "small_rings": replace(base, ring_size=(2, 4)),
                    "fresh_accounts": replace(base, fresh_prob=1.0),
                    "aged_accounts": replace(base, fresh_prob=0.0)}
        figures["farm"] = {}
        for name, p in runs.items():
            figures["farm"][name] = farm(p, tmp, name, in_process=args.quick)
            print(json.dumps({"farm": {name: figures["farm"][name]}}), file=sys.stderr, flush=True)
    y = figures["yelp_zip"]
    main_farm = figures["farm"]["camouflage"]
    figures.update({
        "yelp_zip_auc": y["grouped_cv"]["boosted"],
        "yelp_zip_auc_linear": y["grouped_cv"]["linear"],
        # Yelp's verdicts on two of the five product folds seed the propagation (SpEagle+)
        "yelp_zip_auc_seeded": y["seeded"]["boosted"],
        "yelp_zip_auc_seeded_baseline": y["seeded"]["baseline_boosted"],
        "op_spam_accuracy": figures["op_spam"]["op_spam_accuracy"],
        # the shipped, unsupervised combination; then a model learned on the farm's labels (out of fold)
        "farm_reviewer_ap": main_farm["combined"]["reviewer.spam_score"],
        "farm_reviewer_ap_learned": main_farm["combined"]["learned_all_reviewer_signals"],
        "farm_reviewer_ap_best_single": main_farm["ap"][main_farm["best_single"]],
    })
    finish("reviews", figures, quick=args.quick, packages=("numpy", "scipy", "scikit-learn", "ray"))


if __name__ == "__main__":
    main()
