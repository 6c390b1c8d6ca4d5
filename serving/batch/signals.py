"""Stage 5 of the batch job: clusters, then every record's signals, written in input order.

The pairs of all modalities are clustered with the index issue's union-find and its
giant-cluster guard (:func:`indexes.clustering.cluster_pairs`). Each record then gets
its extractor signals (from stage 1) and the derived ones, built by the same
builders the HTTP service uses (:mod:`signals.near_duplicate`, :mod:`signals.price_anomaly`,
:mod:`signals.derived`, :mod:`signals.rollups`): near-duplicate counts, cross-seller
and image reuse, cluster size, price anomaly against the cluster and the category,
bank matches, and the per-seller (listings) or per-product (reviews) roll-ups.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from indexes.atomic import write_file_atomic
from indexes.banks import BankStore, ReviewBankJudge
from indexes.clustering import ClusterResult, Pairs, cluster_pairs
from indexes.config import IndexesConfig, Modality
from serving.batch.catalogue import Catalogue
from serving.batch.extract import rewrite_observed_at
from signals.derived import BankHit, Match
from signals.entity_signals import (
    CLUSTER_PRICES_EXACT_UP_TO,
    ListingFacts,
    ReviewFacts,
    category_prices_key,
    cluster_price_reference,
    listing_signals,
    review_signals,
)
from signals.errors import InvalidInput
from signals.price_anomaly import PriceReference
from signals.review_analysis import ReviewAnalysis, ReviewRow, analyse_reviews
from signals.review_graph import GraphSettings
from signals.review_text import ReviewTextVerdict
from signals.rollups import ProductStats, SellerStats, product_rollup_signals, seller_rollup_signals
from signals.schemas import Label, Listing, Review, Signal, parse_record

_CHUNK = 4096


@dataclass
class Clusters:
    """Cluster of every record: the id of its earliest member, and its size."""

    result: ClusterResult
    root: np.ndarray   # (n,) the smallest row of each row's cluster
    size: np.ndarray   # (n,) members of each row's cluster

    def member_rows(self) -> np.ndarray:
        """Rows in clusters of two or more, grouped by cluster (by root), rows ascending
        within each: one array, 8 bytes a member; a cluster's members are a slice of it."""
        rows = np.flatnonzero(self.size >= 2)
        return rows[np.argsort(self.root[rows], kind="stable")]


def make_clusters(cat: Catalogue, pairs: dict[Modality, Pairs], config: IndexesConfig) -> Clusters:
    """Cluster the union of every modality's pairs (strongest links first, guarded)."""
    if len(pairs) == 1:
        allp = next(iter(pairs.values()))
    elif pairs:
        allp = Pairs(np.concatenate([p.a for p in pairs.values()]),
                     np.concatenate([p.b for p in pairs.values()]),
                     np.concatenate([p.score for p in pairs.values()]))
    else:
        z = np.zeros(0, dtype=np.int64)
        allp = Pairs(z, z, np.zeros(0, dtype=np.float32))
    result = cluster_pairs(cat.n, allp, config.clustering, vectors=cat.text)
    root = result.labels_as_min_row()
    counts = np.bincount(root, minlength=cat.n) if cat.n else np.zeros(0, dtype=np.int64)
    return Clusters(result, root, counts[root] if cat.n else counts)


class Adjacency:
    """Each record's near-duplicate partners over all modalities (CSR arrays, both directions).

    Rows are int32 (below 2^31 rows), about 18 bytes a pair, and the arrays are built one
    column at a time from a single sort order. At ~4M pairs over 1M rows (2026-11-29):
    +192 MB at peak, 76 MB kept; with int64 rows and every column sorted at once it was
    +355 MB and 105 MB.
    """

    def __init__(self, n: int, pairs: dict[Modality, Pairs]) -> None:
        self._build(n, 0, list(pairs), [(x, y, m, p.score) for m, p in enumerate(pairs.values())
                                         for x, y in ((p.a, p.b), (p.b, p.a))], n)

    @classmethod
    def of_rows(cls, start: int, end: int, n: int,
                sides: dict[Modality, tuple[Pairs, Pairs]]) -> Adjacency:
        """The partners of rows ``start..end-1`` only, from each modality's pairs whose ``a``
        is in the range and those whose ``b`` is (both in the order of the whole catalogue's
        pairs): the same lists, partner for partner, as the whole catalogue's adjacency."""
        self = cls.__new__(cls)
        self._build(end - start, start, list(sides),
                    [(x - start, y, m, p.score) for m, (lo, hi) in enumerate(sides.values())
                     for x, y, p in ((lo.a, lo.b, lo), (hi.b, hi.a, hi))], n)
        return self

    def _build(self, n: int, offset: int, names: list[Modality],
               sides: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]], rows_total: int) -> None:
        self.names, self.offset = names, offset
        row = np.int32 if rows_total < 2**31 else np.int64
        counts = np.zeros(n, dtype=np.int64)
        for x, _, _, _ in sides:
            counts += np.bincount(x, minlength=n)
        self.starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])
        del counts
        if not sides:
            self.dst, self.mod = np.zeros(0, dtype=row), np.zeros(0, dtype=np.int8)
            self.score = np.zeros(0, dtype=np.float32)
            return
        # Stable: a row's partners keep the modalities' order, then each modality's pair order.
        order = np.argsort(np.concatenate([x.astype(row, copy=False) for x, _, _, _ in sides]), kind="stable")
        self.dst = np.concatenate([y.astype(row, copy=False) for _, y, _, _ in sides])[order]
        self.mod = np.concatenate([np.full(len(x), m, dtype=np.int8) for x, _, m, _ in sides])[order]
        self.score = np.concatenate([sc.astype(np.float32, copy=False) for _, _, _, sc in sides])[order]

    def of(self, row: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        lo, hi = int(self.starts[row - self.offset]), int(self.starts[row - self.offset + 1])
        return self.dst[lo:hi], [self.names[m] for m in self.mod[lo:hi]], self.score[lo:hi]


@dataclass
class SignalTally:
    """What the summary reports about the derived signals."""

    signals: int = 0
    by_owner: dict[tuple[str, str], SellerStats] = field(default_factory=dict)
    cross_seller: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))


def bank_hits(cat: Catalogue, data_dir: Path, config: IndexesConfig) -> dict[int, list[BankHit]]:
    """Fraud and benign bank matches of each record (only rows with a match are keys)."""
    root = data_dir / "banks"
    if not root.is_dir():
        return {}
    store = BankStore(root, config.banks, config.thresholds, read_only=True)
    try:
        modalities = {store.get(b).info.modality for b in store.names()}
        out: dict[int, list[BankHit]] = defaultdict(list)
        text_modality: Modality = "listing_text" if cat.kind == "listing" else "review_text"
        if text_modality in modalities and cat.text is not None:
            _match(store, text_modality, cat.text, np.arange(cat.n), out)
        if cat.kind == "listing" and len(cat.image_rows):
            if "image_pdq" in modalities and cat.pdq is not None and cat.pdq_quality is not None:
                # Flat, featureless images collide with each other: the near-duplicate quality gate.
                good = np.flatnonzero(cat.pdq_quality[:] >= config.near_duplicates.pdq_min_quality)
                _match(store, "image_pdq", cat.pdq[0][good], np.asarray(cat.image_rows)[good], out)
            if "image_sscd" in modalities and cat.sscd is not None:
                _match(store, "image_sscd", cat.sscd, np.asarray(cat.image_rows), out)
        return dict(out)
    finally:
        store.close()


def _match(store: BankStore, modality: Modality, data: np.ndarray, rows: np.ndarray,
           out: dict[int, list[BankHit]]) -> None:
    for start in range(0, len(data), _CHUNK):
        chunk = np.asarray(data[start:start + _CHUNK])
        if modality != "image_pdq":
            keep = np.einsum("ij,ij->i", chunk, chunk) > 0.5  # rows without a vector are zeros
        else:
            keep = np.ones(len(chunk), dtype=bool)
        idx = np.flatnonzero(keep)
        if not len(idx):
            continue
        for i, hits in zip(idx.tolist(), store.match(modality, chunk[idx]), strict=True):
            out[int(rows[start + i])].extend(hits)


def price_references(cat: Catalogue) -> dict[tuple[str, str | None, str], PriceReference]:
    """Category references: robust price statistics per (tenant, category, currency)."""
    groups: dict[tuple[str, str | None, str], list[float]] = defaultdict(list)
    for t, g, p, c in cat.iter_rows(("tenant", "group", "price", "currency")):
        if p is not None and c is not None and p > 0:
            groups[(t, g, c)].append(float(p))
    refs = {}
    for key, prices in groups.items():
        ref = PriceReference.of("category", key[2], prices)
        if ref is not None:
            refs[key] = ref
    return refs


class ClusterPrices:
    """Cluster price references of members (:func:`signals.entity_signals.cluster_price_reference`),
    the one shared by every member of a big cluster computed once per cluster and currency."""

    def __init__(self, prices: Any, currencies: Any) -> None:
        self._prices, self._currencies = prices, currencies
        self._big: dict[tuple[int, str], PriceReference | None] = {}

    def get(self, root: int, row: int, currency: str, members: np.ndarray) -> PriceReference | None:
        """The reference for ``row``, a member of the cluster ``root`` (its rows: ``members``)."""
        big = len(members) > CLUSTER_PRICES_EXACT_UP_TO
        if big and (root, currency) in self._big:
            return self._big[(root, currency)]
        rows = members.tolist()
        ref = cluster_price_reference(currency, row, [
            (r, self._prices[r].as_py(), self._currencies[r].as_py()) for r in rows])
        if big:
            self._big[(root, currency)] = ref
        return ref


def open_review_judge(cat: Catalogue, data_dir: Path, config: IndexesConfig) -> BankStore | None:
    """The global bank store when this is a review run and it has an enabled review bank
    (the caller closes it), else None."""
    root = data_dir / "banks"
    if cat.kind != "review" or cat.text is None or not root.is_dir():
        return None
    store = BankStore(root, config.banks, config.thresholds, read_only=True)
    if not ReviewBankJudge([(store, None)]).active:
        store.close()
        return None
    return store


def _block_verdicts(cat: Catalogue, judge: ReviewBankJudge | None, block: int, chunk_start: int,
                    reviews: list[Review]) -> dict[int, ReviewTextVerdict]:
    """:func:`_chunk_verdicts` of the whole ``_CHUNK``-row block at ``block`` when ``reviews``
    (rows ``chunk_start..``) are only part of it: the rows outside are parsed for it."""
    if judge is None or cat.text is None:
        return {}
    block_end = min(cat.n, block + _CHUNK)
    if chunk_start == block and chunk_start + len(reviews) == block_end:
        return _chunk_verdicts(cat, judge, block, reviews)
    every = [Review.model_validate_json(r)
             for r in cat.meta.slice(block, block_end - block).column("record").to_pylist()]
    return _chunk_verdicts(cat, judge, block, every)


def _chunk_verdicts(cat: Catalogue, judge: ReviewBankJudge | None, start: int,
                    reviews: list[Review]) -> dict[int, ReviewTextVerdict]:
    """The review-bank verdicts of a chunk's reviews that have a text vector (blank texts have
    none: never compared), by row."""
    if judge is None or cat.text is None or not reviews:
        return {}
    vecs = np.asarray(cat.text[start:start + len(reviews)])
    has = np.flatnonzero(np.einsum("ij,ij->i", vecs, vecs) > 0.5)
    if not len(has):
        return {}
    found = judge.verdicts(vecs[has], [reviews[int(i)].text for i in has])
    return {start + int(i): v for i, v in zip(has, found, strict=True)}


def review_analysis(cat: Catalogue, labels: Sequence[Label], settings: GraphSettings) -> ReviewAnalysis:
    """The behavioural fold, rings and collective scores over every review of the run."""
    rows: list[ReviewRow] = []
    for (record,) in cat.iter_rows(("record",)):
        d = json.loads(record)
        rows.append(ReviewRow(
            d.get("tenant", "default"), d["review_id"], d["reviewer_id"], d["product_id"], d["seller_id"],
            int(d["rating"]), _ts(d["created_at"]),
            _ts(d["reviewer_created_at"]) if d.get("reviewer_created_at") else None))
    return analyse_reviews(rows, labels, settings)


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def read_labels(path: Path) -> list[Label]:
    """Labels from a JSONL file (``--labels``), each validated; a bad line names its number."""
    out: list[Label] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(parse_record(Label, json.loads(line)))
            except (InvalidInput, json.JSONDecodeError) as exc:
                raise InvalidInput("--labels", f"{path} line {n}: {exc}") from None
    return out


def iter_signals(cat: Catalogue, clusters: Clusters, adj: Adjacency, banks: dict[int, list[BankHit]],
                 observed_at: datetime, tally: SignalTally,
                 judge: ReviewBankJudge | None = None,
                 reviews: ReviewAnalysis | None = None) -> Iterator[dict[str, Any]]:
    """Every signal of the run as wire dicts: per record in input order, then the roll-ups.
    ``judge``: the review banks' verdicts (reviews only; None without review banks);
    ``reviews``: the run's review analysis (each review's behavioural and collective signals
    after its derived ones; its reviewer, product and seller signals after the roll-ups)."""
    listing = cat.kind == "listing"
    products: dict[tuple[str, str], ProductStats] = {}
    members = clusters.member_rows() if listing else np.zeros(0, dtype=np.int64)
    extras = None if reviews is None else review_extras(reviews, observed_at)
    yield from iter_record_signals(cat, 0, cat.n, clusters.root, clusters.size, members, adj, banks,
                                   price_references(cat) if listing else {}, observed_at, tally, products,
                                   judge, extras)
    yield from iter_rollups(tally, products, observed_at)
    if reviews is not None:
        for s in reviews.entity_signals(observed_at):
            yield s.to_json_dict()


def review_extras(reviews: ReviewAnalysis, observed_at: datetime) -> Callable[[int], list[dict[str, Any]]]:
    """A review row's behavioural and collective signals as wire dicts (``review_extras`` of
    :func:`iter_record_signals`)."""
    return lambda row: [s.to_json_dict() for s in reviews.review_signals(row, observed_at)]


def iter_record_signals(cat: Catalogue, start: int, end: int, root: np.ndarray, size: np.ndarray,
                        members: np.ndarray, adj: Adjacency, banks: dict[int, list[BankHit]],
                        category_refs: dict[tuple[str, str | None, str], PriceReference],
                        observed_at: datetime, tally: SignalTally,
                        products: dict[tuple[str, str], ProductStats],
                        judge: ReviewBankJudge | None = None,
                        review_extras: Callable[[int], list[dict[str, Any]]] | None = None,
                        ) -> Iterator[dict[str, Any]]:
    """The signals of records ``start..end-1``, in input order, folding each into ``tally`` and
    ``products`` (the roll-ups' partial stats). ``root``, ``size``: every row's cluster;
    ``members``: :meth:`Clusters.member_rows`; ``category_refs``: :func:`price_references`;
    ``judge``: the review banks' verdicts (reviews only; None without review banks);
    ``review_extras``: a review row's behavioural and collective signals (wire dicts), written
    after its derived ones (:func:`review_extras`)."""
    listing = cat.kind == "listing"
    ids, owners = cat.meta.column("entity_id"), cat.meta.column("owner")
    prices, currencies = cat.meta.column("price"), cat.meta.column("currency")
    in_clusters = members if listing else np.zeros(0, dtype=np.int64)
    member_roots = root[in_clusters]  # a cluster's members: one searchsorted slice
    cluster_refs = ClusterPrices(prices, currencies)
    # Chunks on whole multiples of _CHUNK rows, so a range of rows (the cluster path's tasks)
    # asks the review banks for the very batches the whole run asks (a kNN search's float
    # results may depend on its batch: the signals stay byte-identical).
    for block in range(start - start % _CHUNK, end, _CHUNK):
        chunk_start, chunk_end = max(start, block), min(end, block + _CHUNK)
        chunk = cat.meta.slice(chunk_start, chunk_end - chunk_start)
        records = chunk.column("record").to_pylist()
        parsed = [] if listing else [Review.model_validate_json(r) for r in records]
        verdicts = {} if listing else _block_verdicts(cat, judge, block, chunk_start, parsed)
        for offset, (record, extracted) in enumerate(zip(records, chunk.column("signals").to_pylist(),
                                                         strict=True)):
            row = chunk_start + offset
            yield from rewrite_observed_at(extracted, observed_at)
            dst, mods, scores = adj.of(row)
            # mods come from the pairs' modality column (str); every value there is a Modality
            matches = [Match(ids[d].as_py(), m, float(s), owners[d].as_py())  # type: ignore[arg-type]  # above
                       for d, m, s in zip(dst.tolist(), mods, scores.tolist(), strict=True)]
            hits = banks.get(row, [])
            derived: list[Signal]
            if listing:
                item = Listing.model_validate_json(record)
                row_size = int(size[row])
                row_root = int(root[row])
                refs = []
                if row_size >= 2 and item.currency:
                    lo, hi = np.searchsorted(member_roots, (row_root, row_root + 1))
                    ref = cluster_refs.get(row_root, row, item.currency, in_clusters[lo:hi])
                    if ref is not None:
                        refs.append(ref)
                cref = category_refs.get(category_prices_key(item))
                if cref is not None:
                    refs.append(cref)
                outcome = listing_signals(ListingFacts(item, matches, ids[row_root].as_py(), row_size, refs,
                                                       hits), observed_at)
                derived = outcome.signals
                key = (item.tenant, item.seller_id)
                stats = tally.by_owner.setdefault(key, SellerStats(item.tenant, item.seller_id))
                stats.add_listing(near_duplicates=outcome.near_duplicates, cluster_id=outcome.cluster_id,
                                  cluster_size=row_size, bank_matches=outcome.fraud_bank_matches)
                tally.cross_seller[key] += outcome.cross_seller
            else:
                review = parsed[offset]
                routcome = review_signals(ReviewFacts(review, matches, hits, verdicts.get(row)), observed_at)
                derived = routcome.signals
                pkey = (review.tenant, review.product_id)
                pstats = products.setdefault(pkey, ProductStats(review.tenant, review.product_id))
                pstats.add_review(near_duplicates=routcome.near_duplicates)
            for s in derived:
                yield s.to_json_dict()
            if review_extras is not None and not listing:
                yield from review_extras(row)


def iter_rollups(tally: SignalTally, products: dict[tuple[str, str], ProductStats],
                 observed_at: datetime) -> Iterator[dict[str, Any]]:
    """The per-seller, then per-product roll-ups, in key order (after every record's signals)."""
    for key in sorted(tally.by_owner):
        for s in seller_rollup_signals(tally.by_owner[key], observed_at):
            yield s.to_json_dict()
    for pkey in sorted(products):
        for s in product_rollup_signals(products[pkey], observed_at):
            yield s.to_json_dict()


def write_jsonl(path: Path, rows: Iterator[dict[str, Any]], tally: SignalTally) -> None:
    """JSON lines to ``path`` atomically (tmp, fsync, rename), streamed row by row."""

    def write(f: BinaryIO) -> None:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            tally.signals += 1

    write_file_atomic(path, write)
