"""The service's write path: a scored item searched, decided, stored, indexed, its partners updated.

:class:`CatalogueEngine` owns one shard's store and indexes (every tenant's) and is the
one writer of both. It is plain Python, no Ray: the catalogue deployment wraps it, the
tests and the in-process benchmark call it directly. Extraction has already happened
(the ingress ran the extractor registry); the engine gets each record with its features.

For a listing, in order:

1. re-posted ids first lose their old index entries and edges (roll-ups never count twice);
2. the tenant's indexes are searched and :mod:`indexes.near_duplicates` decides, the
   batch job's rule (text candidates decided by the pair scorer plus the copy rule;
   PDQ with variants and the quality gate; SSCD cosine); banks are matched;
3. the listing's edges are stored both ways, so an older listing learns of its copy;
4. its cluster (connected near-duplicate edges, walked up to ``cluster_walk_limit``)
   is found; every member of a changed cluster, and every old partner that lost an
   edge, gets its signals rebuilt from the store by :func:`signals.entity_signals.listing_signals`,
   the function the batch job calls; the sellers touched get their roll-ups refolded
   from their stored listings' facts;
5. all of it commits in ONE store transaction; only then is the index change logged
   (:class:`~indexes.persistence.DurableIndex`). A crash between the two is repaired at
   start-up by :meth:`CatalogueEngine.reconcile` (the store is authoritative).

Reviews follow the same steps with the review index, ``review.near_duplicate_count``
(other reviewers only), ``review.bank_similarity`` and the product roll-up;
``review_behaviour`` is the seam where the behavioural review signals plug in (with their state
committed in the review's transaction); rings and collective scores are recomputed in full by
:meth:`CatalogueEngine.recompute_reviews` on a timer (:mod:`serving.scoring.review_behaviour`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexes.banks import BankItem, BankStore, ReviewBankJudge
from indexes.config import IndexesConfig, Modality
from indexes.near_duplicates import (
    ImageNearDuplicates,
    TextNearDuplicates,
    pdq_near_duplicates,
    region_entries,
)
from indexes.pair_features import PAIR_TEXT_CHARS, PairRecord, ParsedRecords
from indexes.pdq import PdqIndex
from indexes.review_templates import ReviewTemplateRule
from indexes.vector import VectorIndex
from serving.scoring.indexes import (
    AnyIndex,
    ShardClient,
    ShardedTenantIndex,
    TenantIndexes,
    held_ids,
    missing_ids,
)
from serving.scoring.review_behaviour import recompute_reviews
from serving.store.base import DeepJob, Edge, ItemKind, SignalStore, StoredItem, WriteBatch
from signals.derived import LISTING_NEAR_DUPLICATE, BankHit, Match
from signals.entity_signals import (
    ImageProblem,
    ListingFacts,
    ReviewFacts,
    cluster_price_reference,
    listing_signals,
    review_signals,
)
from signals.errors import InvalidInput
from signals.extractor import ItemError
from signals.near_duplicate import listing_near_duplicate_signals
from signals.price_anomaly import PriceReference
from signals.review_graph import GraphSettings
from signals.review_text import ReviewTextVerdict
from signals.rollups import ProductStats, SellerStats, product_rollup_signals, seller_rollup_signals
from signals.schemas import EntityType, Label, Listing, Review, Signal

log = logging.getLogger(__name__)

PDQ_FEATURES = ("image_pdq", "image_pdq_flip", "image_pdq_trimmed")
SSCD_FEATURES = ("image_sscd", "image_sscd_distilled")


@dataclass
class Extracted:
    """A validated record with what the extractor registry produced for it."""

    record: Listing | Review
    signals: list[Signal]
    features: dict[str, np.ndarray]
    errors: list[ItemError] = field(default_factory=list)
    deep_images: list[bytes] = field(default_factory=list)
    """The bytes of the item's readable images, for the deep tier (empty: no deep work)."""


@dataclass(frozen=True)
class DeepQueue:
    """The deep tier as the engine sees it: which signals a queued job will bring, and the bound."""

    pending: tuple[str, ...]
    max_jobs: int = 1000
    max_bytes: int = 256 << 20
    sources: tuple[str, ...] = ("image_ocr", "image_nsfw")
    """The deep extractors: a re-post whose photos will not be read withdraws their old values."""


@dataclass
class Scored:
    """The answer for one record: its signals after the write, or its error."""

    entity_id: str
    signals: list[dict[str, Any]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    error: InvalidInput | None = None


class ReviewBehaviour(Protocol):
    """The seam for behavioural review signals (velocity, bursts): called with each review being
    written and the store (before the review's commit), returns extra signals for any entity and
    key-value state to commit with the review (:mod:`serving.scoring.review_behaviour`)."""

    def signals(self, review: Review, store: SignalStore,
                observed_at: datetime) -> tuple[list[Signal], dict[str, str]]: ...


@dataclass(frozen=True)
class EngineLimits:
    """Bounds on the work one write may cause (giant clusters of stock photos)."""

    cluster_walk_limit: int = 2000
    """Cluster members walked; a bigger cluster reports this size (documented in docs/serving.md)."""
    partner_update_limit: int = 200
    """Cluster members whose signals are rebuilt on a change; past it, direct partners only."""
    category_prices: int = 5000
    """Most recent prices of a category read for its price reference."""


def pair_record(listing: Listing) -> PairRecord:
    return PairRecord(listing.title, (listing.description or "")[:PAIR_TEXT_CHARS], listing.price)


def text_feature(features: dict[str, np.ndarray]) -> np.ndarray | None:
    for name, vec in features.items():
        if name.startswith("text_"):
            return np.asarray(vec, dtype=np.float32).reshape(-1)
    return None


def _sscd_feature(features: dict[str, np.ndarray]) -> np.ndarray | None:
    for name in SSCD_FEATURES:
        if name in features and len(features[name]):
            return np.asarray(features[name], dtype=np.float32)
    return None


def image_features(features: dict[str, np.ndarray], n_images: int) -> dict[str, np.ndarray]:
    """The per-image features the image rule keeps beside SSCD: ``image_sscd_regions`` (from
    whichever SSCD model made them) and ``image_local``, when they cover every image."""
    out: dict[str, np.ndarray] = {}
    for name in SSCD_FEATURES:
        regions = features.get(f"{name}_regions")
        if regions is not None and len(regions) == n_images:
            out["image_sscd_regions"] = np.asarray(regions, dtype=np.float32)
            break
    local = features.get("image_local")
    if local is not None and len(local) == n_images:
        out["image_local"] = np.asarray(local, dtype=np.uint8)
    return out


def image_problems(errors: Sequence[ItemError]) -> list[ImageProblem]:
    """The per-image errors among an item's extractor errors, one per image field."""
    seen: dict[str | None, ImageProblem] = {}
    for e in errors:
        if e.field is not None and e.field.startswith("images[") and e.field not in seen:
            seen[e.field] = ImageProblem(e.field, str(e.code), e.reason)
    return list(seen.values())


@dataclass(frozen=True)
class NearDuplicateRules:
    """The listing near-duplicate decision of one config: the text rule, the image rule and the
    settings they read (the live one, or a shadow candidate's)."""

    config: IndexesConfig
    text: TextNearDuplicates
    image: ImageNearDuplicates

    @classmethod
    def from_config(cls, config: IndexesConfig) -> NearDuplicateRules:
        return cls(config, TextNearDuplicates.from_config(config), ImageNearDuplicates.from_config(config))


@dataclass(frozen=True)
class ShadowNearDuplicates:
    """A candidate near-duplicate rule run beside the live one (config ``shadow.thresholds`` /
    ``shadow.near_duplicates``). Each listing is judged against the catalogue as it stands when the
    listing is scored, and only its own count signals are kept (``near_duplicate.count``,
    ``.cross_seller_count``, ``.max_similarity``, ``image.reused_across_sellers``), under the
    source ``listing_near_duplicate_<label>@<version>`` with ``"shadow": true``: the candidate's
    edges are never stored, so they never move the live partners, clusters or roll-ups."""

    rules: NearDuplicateRules
    label: str


SHADOW_NEAR_DUPLICATE_EXCLUDED = frozenset({"near_duplicate.cluster_size"})
"""Live-only near-duplicate signals: a cluster needs the candidate's edges of every listing."""


PRODUCT_TALLY_PREFIX = "product_review_tally\x1f"


def product_tally_key(tenant: str, product: str) -> str:
    """The store's meta key of a product's review tally (``product.templated_review_share``'s
    counts, kept with every review write that changes them)."""
    return f"{PRODUCT_TALLY_PREFIX}{tenant}\x1f{product}"


def tally_json(stats: ProductStats) -> str:
    """A tally as the meta table keeps it."""
    return json.dumps({"reviews": stats.reviews, "templated_reviews": stats.templated_reviews},
                      sort_keys=True)


def product_tallies(store: SignalStore, tenant: str) -> dict[str, ProductStats]:
    """Every product's tally counted from the tenant's stored reviews (the periodic repair, and
    a batch import's start)."""
    out: dict[str, ProductStats] = {}
    for it in store.iter_items(tenant, "review", with_features=False):
        if it.group is not None:
            stats = out.setdefault(it.group, ProductStats(tenant, it.group))
            stats.add_review(near_duplicates=int(it.facts.get("near_duplicates", 0)))
    return out


class CatalogueEngine:
    """One shard's store and indexes, and the one implementation of the service's write path."""

    def __init__(self, store: SignalStore, index_root: Path, banks_root: Path, config: IndexesConfig,
                 models: dict[Modality, str], dims: dict[Modality, int], *,
                 global_banks: dict[str, list[str]] | None = None, limits: EngineLimits | None = None,
                 review_behaviour: Sequence[ReviewBehaviour] = (), auto_bank: tuple[str, str] | None = None,
                 index_shards: Sequence[ShardClient] = (), split_tenants: Sequence[str] = ("*",),
                 deep: DeepQueue | None = None, shadow: ShadowNearDuplicates | None = None,
                 review_graph: GraphSettings | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.config = config
        self.indexes = TenantIndexes(index_root, config, models, dims, shards=index_shards,
                                     split_tenants=split_tenants)
        self.rules = NearDuplicateRules.from_config(config)
        self.shadow = shadow
        self.banks_root = Path(banks_root)
        # <banks_root>/ holds the global banks (what `marketguard bank import` and the batch job
        # use), <banks_root>/../tenant-banks/<tenant>/ each tenant's own.
        self.models = models
        self.global_banks = BankStore(self.banks_root, config.banks, config.thresholds)
        self.global_banks.check_models(models)
        self._tenant_banks: dict[str, BankStore] = {}
        self.global_bank_access = global_banks if global_banks is not None else {"*": ["*"]}
        self.limits = limits or EngineLimits()
        self._indexed: list[tuple[str, ItemKind, str]] = []  # marks to clear with the next commit
        self.review_behaviour = list(review_behaviour)
        self.review_rule = ReviewTemplateRule.from_config(config)  # review text near-duplicates
        self.review_graph = review_graph or GraphSettings()
        self.clock = clock
        self.deep = deep
        self.deep_skipped = 0  # jobs not queued because the queue was full (a metric)
        self.auto_bank = auto_bank
        """(fraud bank prefix, benign bank prefix) when labels feed the banks (config labels.auto_bank)."""

    def _index_of(self, tenant: str, modality: Modality) -> AnyIndex:
        """The tenant's index of ``modality``, opened or created (``get`` with ``create`` on)."""
        idx = self.indexes.get(tenant, modality)
        if idx is None:
            raise RuntimeError(f"tenant {tenant!r} has no {modality} index although one was to be created")
        return idx

    def _vectors(self, tenant: str, modality: Modality, *, create: bool = True
                 ) -> VectorIndex | ShardedTenantIndex | None:
        """The search surface of the tenant's vector index of ``modality``."""
        idx = self.indexes.get(tenant, modality, create=create)
        if idx is None:
            return None
        if isinstance(idx.index, PdqIndex):
            raise TypeError(f"the {modality} index is not a vector index")
        return idx.index

    def _hashes(self, tenant: str) -> PdqIndex | ShardedTenantIndex | None:
        """The search surface of the tenant's PDQ index, if it has one."""
        idx = self.indexes.get(tenant, "image_pdq", create=False)
        if idx is None:
            return None
        if isinstance(idx.index, VectorIndex):
            raise TypeError("the image_pdq index is not a hash index")
        return idx.index

    # ------------------------------------------------------------------ banks
    def tenant_banks(self, tenant: str) -> BankStore:
        if tenant not in self._tenant_banks:
            store = BankStore(self.banks_root.parent / "tenant-banks" / tenant, self.config.banks,
                              self.config.thresholds)
            store.check_models(self.models)
            self._tenant_banks[tenant] = store
        return self._tenant_banks[tenant]

    def _global_allowed(self, tenant: str, bank: str) -> bool:
        names = self.global_bank_access.get(tenant, self.global_bank_access.get("*", []))
        return "*" in names or bank in names

    def match_banks(self, tenant: str, modality: Modality, queries: np.ndarray) -> list[list[BankHit]]:
        """Hits of each query in the tenant's own banks and the global banks it enables."""
        out: list[list[BankHit]] = [[] for _ in range(len(queries))]
        if not len(queries):
            return out
        for store, check in ((self.tenant_banks(tenant), None), (self.global_banks, tenant)):
            if not any(store.get(b).info.modality == modality for b in store.names()):
                continue
            for row, hits in zip(out, store.match(modality, queries), strict=True):
                row.extend(h for h in hits if check is None or self._global_allowed(check, h.bank))
        return out

    def review_judge(self, tenant: str) -> ReviewBankJudge:
        """The review-bank verdicts a tenant gets: its own banks (and text model) first, then the
        global banks it may use (the global text model was fitted on every enabled global bank)."""
        return ReviewBankJudge([(self.tenant_banks(tenant), None),
                                (self.global_banks, lambda bank: self._global_allowed(tenant, bank))])

    def bank_add(self, tenant: str, bank: str, modality: Modality, kind: str,
                 items: list[BankItem]) -> int:
        store = self.tenant_banks(tenant)
        # kind is validated at the API (fraud | benign)
        store.create(bank, modality, kind, self.models.get(modality))  # type: ignore[arg-type]
        return store.add_items(bank, items)

    def bank_remove(self, tenant: str, bank: str, item_id: str) -> int:
        return self.tenant_banks(tenant).remove_items(bank, [item_id])

    def bank_modality(self, tenant: str, bank: str) -> Modality | None:
        store = self.tenant_banks(tenant)
        return store.get(bank).info.modality if bank in store.names() else None

    # --------------------------------------------------------------- listings
    def score_listings(self, items: Sequence[Extracted]) -> list[Scored]:
        """Write each listing in order (a later one can match an earlier one of the batch)."""
        return [self._guarded(self._score_listing, it) for it in items]

    def score_reviews(self, items: Sequence[Extracted]) -> list[Scored]:
        return [self._guarded(self._score_review, it) for it in items]

    def _guarded(self, fn: Callable[[Extracted], Scored], item: Extracted) -> Scored:
        try:
            return fn(item)
        except InvalidInput as exc:
            return Scored(item.record.entity_id, error=exc)

    def _score_listing(self, item: Extracted) -> Scored:
        listing = item.record
        if not isinstance(listing, Listing):
            raise InvalidInput(None, "not a listing")
        t, lid = listing.tenant, listing.listing_id
        now = self.clock()
        old = self.store.get_item(t, "listing", lid)
        text = text_feature(item.features)
        sscd = _sscd_feature(item.features)
        pdq = [np.asarray(item.features[f], dtype=np.uint8) for f in PDQ_FEATURES] \
            if all(f in item.features for f in PDQ_FEATURES) and len(item.features["image_pdq"]) else None
        quality = np.asarray(item.features.get("image_pdq_quality", np.zeros(0)), dtype=np.float32)
        features: dict[str, np.ndarray] = {}
        if text is not None:
            features["text"] = text
        if pdq is not None:
            for name, arr in zip(PDQ_FEATURES, pdq, strict=True):
                features[name] = arr
            features["image_pdq_quality"] = quality
        if sscd is not None:
            features["image_sscd"] = sscd
            features.update(image_features(item.features, len(sscd)))

        # 1-2. search and decide (the item's own entries excluded, so a re-post never matches itself)
        edges = self._listing_edges(self.rules, listing, text, pdq, quality, features, old)
        hits = self._listing_bank_hits(t, text, pdq, quality, sscd)
        problems = image_problems(item.errors)

        # 3. the new item and its edges (the previous partners keep theirs only if found again)
        stored = StoredItem(t, "listing", lid, listing.seller_id, listing.category, listing.price,
                            listing.currency, listing.model_dump_json(exclude={"images"}), features,
                            facts={"bank_hits": [_hit_dict(h) for h in hits],
                                   "image_problems": [p.to_dict() for p in problems]})
        old_partners = {e.b for e in self.store.edges_of(t, "listing", [lid])[lid]} if old else set()
        best = _best_edges(edges)
        partners = {e.b for e in best}
        batch = WriteBatch(t, "listing", upsert=[stored], edges={lid: best})
        # 4. who changes: the item, its cluster, and old partners that lost it
        pending_edges = {lid: best}
        touched = partners | old_partners
        signals, facts, emptied = self._rebuild_listings(t, lid, stored, touched, pending_edges, now)
        if old is not None and old.owner != listing.seller_id:
            # re-posted under another seller: the previous seller's roll-up no longer counts it
            rollup = self._seller_rollup(t, old.owner, facts, lid, None, now)
            signals += rollup
            emptied += [] if rollup else [old.owner]
        batch.signals = list(item.signals) + signals
        if self.shadow is not None:
            batch.signals += self._shadow_near_duplicates(self.shadow, listing, text, pdq, quality, features,
                                                          old, now)
        batch.retract = [("seller", s) for s in emptied]
        pending = self._queue_deep(item, stored, batch, reposted=old is not None)
        batch.facts = facts
        if lid in facts:
            stored.facts.update(facts.pop(lid))
            batch.facts = facts
        # 5. commit, then log the index change
        self._commit_then_index(batch, stored, old)
        own = [s.to_json_dict() for s in batch.signals
               if s.entity_type == "listing" and s.entity_id == lid and not s.shadow]  # shadow: stored only
        return Scored(lid, own, pending)

    def _queue_deep(self, item: Extracted, stored: StoredItem, batch: WriteBatch,
                    reposted: bool = False) -> list[str]:
        """Queue the item's deep work with its own commit, unless the queue is full: then the work is
        skipped (a metric, and ``deep_skipped`` in the item's facts). Returns the pending signals.
        A re-post whose photos will not be read withdraws its old photos' deep values."""
        if self.deep is None:
            return []
        if item.deep_images:
            job = DeepJob(stored.tenant, stored.kind, stored.item_id, stored.record, list(item.deep_images),
                          enqueued_at=self.clock().timestamp())
            jobs, size = self.store.deep_backlog()
            if jobs < self.deep.max_jobs and size + job.size <= self.deep.max_bytes:
                batch.deep = [job]
                return list(self.deep.pending)
            self.deep_skipped += 1
            stored.facts["deep_skipped"] = {"signals": list(self.deep.pending), "reason": "deep queue full"}
        if reposted:
            batch.withdraw = {stored.item_id: list(self.deep.sources)}
        return []

    # -------------------------------------------------------------- deep tier
    def deep_backlog(self) -> tuple[int, int]:
        return self.store.deep_backlog()

    def deep_take(self, limit: int, lease_s: float) -> list[DeepJob]:
        """Queued deep work for a worker (leased; taken again if the worker dies)."""
        return self.store.deep_take(limit, lease_s)

    def deep_done(self, job: DeepJob, signals: Sequence[Signal]) -> bool:
        """Store (and publish) what the deep tier found for ``job``, and drop the job, in one commit.
        False, and nothing written, when the item was re-posted or deleted since the job was taken."""
        if not self.store.deep_current(job.id, job.enqueued_at):
            return False
        self.store.write(WriteBatch(job.tenant, job.kind, signals=list(signals),
                                    deep_done=[(job.id, job.enqueued_at)]))
        return True

    def _parsed(self, tenant: str, ids: list[str]) -> ParsedRecords:
        found = self.store.get_items(tenant, "listing", ids)
        records = []
        for i in ids:
            it = found.get(i)
            if it is None:  # indexed but gone from the store: reconciled at start-up
                records.append(PairRecord(""))
            else:
                records.append(pair_record(Listing.model_validate_json(it.record)))
        return ParsedRecords.parse(records)

    def _listing_edges(self, rules: NearDuplicateRules, listing: Listing, text: np.ndarray | None,
                       pdq: list[np.ndarray] | None, quality: np.ndarray, features: dict[str, np.ndarray],
                       old: StoredItem | None) -> list[Edge]:
        """The listing's near-duplicate partners under ``rules``, text then images."""
        t, lid = listing.tenant, listing.listing_id
        edges: list[Edge] = []
        if text is not None:
            index = self._vectors(t, "listing_text")
            if index is None:
                raise RuntimeError(f"tenant {t!r} has no listing_text index although one was to be created")
            cands = rules.text.candidates(index, text[None, :], [lid])
            decided = rules.text.decide(ParsedRecords.parse([pair_record(listing)]), cands,
                                        lambda ids: self._parsed(t, ids))
            edges += [Edge(lid, h.id, "listing_text", h.score) for h in decided[0]]
        return edges + self._image_edges(rules, t, lid, pdq, quality, features, old)

    def _shadow_near_duplicates(self, shadow: ShadowNearDuplicates, listing: Listing, text: np.ndarray | None,
                                pdq: list[np.ndarray] | None, quality: np.ndarray,
                                features: dict[str, np.ndarray], old: StoredItem | None,
                                now: datetime) -> list[Signal]:
        """The candidate rule's count signals of the listing being scored (see ShadowNearDuplicates)."""
        edges = _best_edges(self._listing_edges(shadow.rules, listing, text, pdq, quality, features, old))
        owners = self.store.get_items(listing.tenant, "listing", sorted({e.b for e in edges}))
        matches = [Match(e.b, e.modality, e.score, owners[e.b].owner)  # type: ignore[arg-type]  # Modality values
                   for e in edges if e.b in owners]
        source = f"{LISTING_NEAR_DUPLICATE.name}_{shadow.label}@{LISTING_NEAR_DUPLICATE.version}"
        return [s.model_copy(update={"source": source, "shadow": True})
                for s in listing_near_duplicate_signals(listing, matches, 1, now)
                if s.name not in SHADOW_NEAR_DUPLICATE_EXCLUDED]

    def _image_edges(self, rules: NearDuplicateRules, t: str, lid: str, pdq: list[np.ndarray] | None,
                     quality: np.ndarray, features: dict[str, np.ndarray],
                     old: StoredItem | None) -> list[Edge]:
        """Image partners, at most ``max_neighbours`` other listings' images per query image. A
        re-posted listing's own old images are still indexed (they go after the commit): they
        are asked for on top of the limit and dropped, so they never crowd out real partners."""
        nd = rules.config.near_duplicates
        out: list[Edge] = []
        if pdq is not None:
            good = np.flatnonzero(quality >= nd.pdq_min_quality)
            hashes = self._hashes(t)
            if len(good) and hashes is not None and len(hashes):
                own = len(old.features.get("image_pdq", ())) if old is not None else 0
                variants = [v[good] for v in (pdq if nd.pdq_variants else pdq[:1])]
                found = pdq_near_duplicates(hashes, variants, rules.config.thresholds.image_pdq,
                                            [None] * len(good), nd.max_neighbours + own)
                out += self._image_hits(lid, "image_pdq", found, nd.max_neighbours)
        sscd = features.get("image_sscd")
        if sscd is not None:
            vectors = self._vectors(t, "image_sscd", create=False)
            if vectors is not None and len(vectors):
                own = len(old.features.get("image_sscd", ())) if old is not None else 0
                regions = features.get("image_sscd_regions") if nd.image_regions else None
                queries = [sscd[k:k + 1] if regions is None else np.concatenate([sscd[k:k + 1], regions[k]])
                           for k in range(len(sscd))]
                ids = [f"{lid}/{k}" for k in range(len(sscd))]
                local = features.get("image_local")
                blocks = [None if local is None else local[k] for k in range(len(sscd))]
                cands = rules.image.candidates(vectors, queries, ids, extra=own)
                found = rules.image.decide(ids, blocks, cands,
                                               lambda image_ids: self._local_features(t, image_ids))
                out += self._image_hits(lid, "image_sscd", found, nd.max_neighbours)
        return out

    def _local_features(self, tenant: str, image_ids: list[str]) -> list[np.ndarray | None]:
        """The stored ``image_local`` blocks of image ids (``<listing>/<k>``), None where missing."""
        split = [i.rsplit("/", 1) for i in image_ids]
        items = self.store.get_items(tenant, "listing", sorted({p[0] for p in split}), with_features=True)
        out: list[np.ndarray | None] = []
        for rid, k in split:
            it = items.get(rid)
            local = it.features.get("image_local") if it is not None else None
            out.append(local[int(k)] if local is not None and int(k) < len(local) else None)
        return out

    @staticmethod
    def _image_hits(lid: str, modality: str, found: list[list[Any]], limit: int) -> list[Edge]:
        """Image hits as edges to their listings (an image's index id is ``<listing id>/<k>``)."""
        out = []
        for hits in found:
            kept = 0
            for h in hits:
                other = h.id.rsplit("/", 1)[0]
                if other != lid and kept < limit:
                    out.append(Edge(lid, other, modality, float(h.score)))
                    kept += 1
        return out

    def _listing_bank_hits(self, t: str, text: np.ndarray | None, pdq: list[np.ndarray] | None,
                           quality: np.ndarray, sscd: np.ndarray | None) -> list[BankHit]:
        hits: list[BankHit] = []
        if text is not None:
            hits += self.match_banks(t, "listing_text", text[None, :])[0]
        if pdq is not None:
            good = np.flatnonzero(quality >= self.config.near_duplicates.pdq_min_quality)
            for row in self.match_banks(t, "image_pdq", pdq[0][good]):
                hits += row
        if sscd is not None:
            for row in self.match_banks(t, "image_sscd", sscd):
                hits += row
        return hits

    def _commit_then_index(self, batch: WriteBatch, item: StoredItem, old: StoredItem | None) -> None:
        """Commit (marking the item's indexing as pending, clearing the last completed mark),
        then log its index entries."""
        batch.index_pending = [item.item_id]
        batch.index_done = self._indexed
        self.store.write(batch)
        self._indexed = []
        self._index_item(item, old)
        self._indexed = [(item.tenant, item.kind, item.item_id)]

    def _index_item(self, item: StoredItem, old: StoredItem | None) -> None:
        """Log the item's index entries (after its store commit), its previous ones removed first."""
        if old is not None:
            self._unindex(old)
        by_modality: dict[Modality, list[tuple[str, np.ndarray, dict[str, Any]]]] = {}
        for modality, item_id, vec, meta in self._index_entries(item):
            by_modality.setdefault(modality, []).append((item_id, vec, meta))
        waits = []  # a split tenant's modalities are written to their shards at once
        for modality, rows in by_modality.items():
            idx = self._index_of(item.tenant, modality)
            ids, data, metas = [r[0] for r in rows], np.stack([r[1] for r in rows]), [r[2] for r in rows]
            if isinstance(idx, ShardedTenantIndex):
                waits.append(idx.start_add(ids, data, metas))
            else:
                idx.add(ids, data, metas)
        for wait in waits:
            wait()

    def _unindex(self, old: StoredItem) -> None:
        """Remove a stored item's index entries (ids from its stored features)."""
        ids: dict[Modality, list[str]] = {}
        for modality, item_id, _, _ in self._index_entries(old):
            ids.setdefault(modality, []).append(item_id)
        waits = []
        for modality, item_ids in ids.items():
            idx = self.indexes.get(old.tenant, modality, create=False)
            if isinstance(idx, ShardedTenantIndex):
                waits.append(idx.start_remove(item_ids))
            elif idx is not None:
                idx.remove(item_ids)
        for wait in waits:
            wait()

    def _cluster(self, t: str, start: str, pending: dict[str, list[Edge]]) -> list[str]:
        """The members of ``start``'s cluster: its edges as stored, ``pending``'s items' edges
        replaced by the pending ones (from both sides)."""
        seen = {start}
        todo = deque([start])
        while todo and len(seen) < self.limits.cluster_walk_limit:
            batch = [todo.popleft() for _ in range(min(len(todo), 256))]
            stored = self.store.edges_of(t, "listing", [b for b in batch if b not in pending])
            for node in batch:
                out = pending[node] if node in pending else [
                    e for e in stored.get(node, []) if e.b not in pending]
                back = [Edge(node, src, e.modality, e.score) for src, es in pending.items()
                        if node not in pending for e in es if e.b == node]
                for e in [*out, *back]:
                    if e.b not in seen and len(seen) < self.limits.cluster_walk_limit:
                        seen.add(e.b)
                        todo.append(e.b)
        return sorted(seen)

    def _rebuild_listings(self, t: str, lid: str, new_item: StoredItem | None, extra: set[str],
                          pending: dict[str, list[Edge]], now: datetime
                          ) -> tuple[list[Signal], dict[str, dict[str, Any]], list[str]]:
        """Signals and facts of ``lid`` (unless deleted: ``new_item`` None), the members of its
        cluster and of ``extra``'s clusters, and the roll-ups of every seller touched."""
        clusters: list[list[str]] = []
        done: set[str] = set()
        for start in ([lid] if new_item is not None else []) + sorted(extra - {lid}):
            if start in done:
                continue
            members = self._cluster(t, start, pending)
            done.update(members)
            clusters.append(members)
        affected: dict[str, list[str]] = {}
        for members in clusters:
            limit = self.limits.partner_update_limit
            chosen = members if len(members) <= limit else sorted(({lid} | extra) & set(members))
            for m in chosen:
                affected[m] = members
        items = self.store.get_items(t, "listing", [m for ms in clusters for m in ms])
        if new_item is not None:
            items[lid] = new_item
        else:
            items.pop(lid, None)
        edge_lists = self.store.edges_of(t, "listing", [a for a in affected if a not in pending])
        edge_lists.update({k: v for k, v in pending.items() if k in affected})
        for k in list(edge_lists):
            if k != lid:  # the others see the item's new edges (none once deleted) from their side
                edge_lists[k] = [x for x in edge_lists[k] if x.b != lid] + [
                    Edge(k, lid, e.modality, e.score) for e in pending.get(lid, []) if e.b == k]
        signals: list[Signal] = []
        facts: dict[str, dict[str, Any]] = {}
        sellers: set[str] = set()
        category_refs: dict[tuple[str | None, str], PriceReference | None] = {}
        for m, members in sorted(affected.items()):
            it = items.get(m)
            if it is None:
                continue
            listing = Listing.model_validate_json(it.record)
            live = [x for x in members if x in items]
            root = min(live, key=lambda x: (items[x].seq or 1 << 62, x))
            # Edge.modality is a plain str (a store column); the engine only writes Modality values there.
            matches = [Match(e.b, e.modality, e.score,  # type: ignore[arg-type]  # see the line above
                             items[e.b].owner if e.b in items else None)
                       for e in edge_lists.get(m, []) if e.b in items]
            refs: list[PriceReference] = []
            if len(live) >= 2 and listing.currency:
                ref = cluster_price_reference(listing.currency, m,
                                              [(x, items[x].price, items[x].currency) for x in live])
                if ref is not None:
                    refs.append(ref)
            if listing.currency:
                key = (listing.category, listing.currency)
                if key not in category_refs:
                    category_refs[key] = PriceReference.of(
                        "category", listing.currency, self.store.group_prices(
                            t, listing.category, listing.currency, self.limits.category_prices)
                        + ([listing.price] if m == lid and listing.price and new_item is not None
                           and self.store.get_item(t, "listing", lid) is None else []))
                category_ref = category_refs[key]
                if category_ref is not None:
                    refs.append(category_ref)
            hits = [BankHit(**h) for h in it.facts.get("bank_hits", [])]
            problems = [ImageProblem(p["field"], p["code"], p["message"])
                        for p in it.facts.get("image_problems", [])]
            outcome = listing_signals(ListingFacts(listing, matches, root, len(live), refs, hits, problems),
                                      now)
            signals += outcome.signals
            facts[m] = {**it.facts, "near_duplicates": outcome.near_duplicates,
                        "cluster_id": outcome.cluster_id, "cluster_size": outcome.cluster_size,
                        "fraud_bank_matches": outcome.fraud_bank_matches}
            sellers.add(it.owner)
        if new_item is None:
            old = self.store.get_item(t, "listing", lid)
            if old is not None:
                sellers.add(old.owner)
        emptied: list[str] = []  # sellers left with no listing: their roll-ups are withdrawn
        for seller in sorted(sellers):
            own_item = new_item if new_item is not None and new_item.owner == seller else None
            rollup = self._seller_rollup(t, seller, facts, lid if new_item is None else None, own_item, now)
            signals += rollup
            if not rollup:
                emptied.append(seller)
        return signals, facts, emptied

    def _seller_rollup(self, t: str, seller: str, facts: dict[str, dict[str, Any]], deleted: str | None,
                       new_item: StoredItem | None, now: datetime) -> list[Signal]:
        stats = SellerStats(t, seller)
        listed = {it.item_id: it for it in self.store.items_of_owner(t, "listing", seller)}
        if new_item is not None:
            listed[new_item.item_id] = new_item
        for item_id, it in sorted(listed.items(), key=lambda kv: (kv[1].seq or 1 << 62, kv[0])):
            if item_id == deleted:
                continue
            f = facts.get(item_id, it.facts)
            stats.add_listing(near_duplicates=int(f.get("near_duplicates", 0)),
                              cluster_id=f.get("cluster_id"),
                              cluster_size=int(f.get("cluster_size", 1)),
                              bank_matches=int(f.get("fraud_bank_matches", 0)))
        return seller_rollup_signals(stats, now)

    # ---------------------------------------------------------------- reviews
    def _score_review(self, item: Extracted) -> Scored:
        review = item.record
        if not isinstance(review, Review):
            raise InvalidInput(None, "not a review")
        t, rid = review.tenant, review.review_id
        now = self.clock()
        old = self.store.get_item(t, "review", rid)
        text = text_feature(item.features)
        edges: list[Edge] = []
        hits: list[BankHit] = []
        verdict_facts: dict[str, Any] = {}
        if text is not None:
            judge = self.review_judge(t)
            if judge.active:
                verdict_facts["text_verdict"] = judge.verdicts(text[None, :], [review.text])[0].to_dict()
            vectors = self._vectors(t, "review_text")
            if vectors is not None and len(vectors):
                cands = self.review_rule.candidates(vectors, text[None, :], [rid])
                found = self.review_rule.decide([review.text], cands, lambda ids: self._review_texts(t, ids))
                edges = [Edge(rid, h.id, "review_text", h.score) for h in found[0]]
            hits = self.match_banks(t, "review_text", text[None, :])[0]
        stored = StoredItem(t, "review", rid, review.reviewer_id, review.product_id, None, None,
                            review.model_dump_json(), {"text": text} if text is not None else {},
                            facts={"bank_hits": [_hit_dict(h) for h in hits], **verdict_facts})
        old_partners = {e.b for e in self.store.edges_of(t, "review", [rid])[rid]} if old else set()
        best = _best_edges(edges)
        old_group = old.group if old is not None else None
        touched = {e.b for e in best} | old_partners
        signals, facts, tallies = self._rebuild_reviews(t, rid, stored, touched, best, now, old_group)
        if rid in facts:
            stored.facts.update(facts.pop(rid))
        state: dict[str, str] = dict(tallies)
        for behaviour in self.review_behaviour:
            extra, written = behaviour.signals(review, self.store, now)
            signals += extra
            state.update(written)
        batch = WriteBatch(t, "review", upsert=[stored], edges={rid: best}, facts=facts,
                           signals=list(item.signals) + signals, meta=state)
        self._commit_then_index(batch, stored, old)
        own = [s.to_json_dict() for s in batch.signals
               if s.entity_type == "review" and s.entity_id == rid and not s.shadow]
        return Scored(rid, own)

    def _review_texts(self, t: str, ids: list[str]) -> list[str]:
        """The texts of stored reviews (empty for one gone meanwhile: never a near-duplicate)."""
        items = self.store.get_items(t, "review", ids)
        return [Review.model_validate_json(items[i].record).text if i in items else "" for i in ids]

    def _rebuild_reviews(self, t: str, rid: str, new_item: StoredItem | None, partners: set[str],
                         new_edges: list[Edge], now: datetime, old_product: str | None
                         ) -> tuple[list[Signal], dict[str, dict[str, Any]], dict[str, str]]:
        """The text signals of review ``rid`` (``new_item``; None: deleted) and of its partners,
        and their products' roll-ups. Returns the signals, the reviews' new facts and the
        products' tallies to store with them."""
        targets = sorted(partners | ({rid} if new_item is not None else set()))
        stored = self.store.get_items(t, "review", sorted({*targets, rid}))
        items = {k: v for k, v in stored.items() if k in targets}
        if new_item is not None:
            items[rid] = new_item
        else:
            items.pop(rid, None)
        edge_lists = self.store.edges_of(t, "review", [x for x in targets if x != rid])
        edge_lists[rid] = list(new_edges)
        for k in list(edge_lists):
            if k == rid:
                continue
            edge_lists[k] = [x for x in edge_lists[k] if x.b != rid]
            if new_item is not None:
                edge_lists[k] += [Edge(k, rid, e.modality, e.score) for e in new_edges if e.b == k]
        partner_ids = {e.b for es in edge_lists.values() for e in es} - {rid}
        owners = self.store.get_items(t, "review", sorted(partner_ids))
        if new_item is not None:
            owners[rid] = new_item
        signals: list[Signal] = []
        facts: dict[str, dict[str, Any]] = {}
        products: set[str] = set()
        for r in targets:
            it = items.get(r)
            if it is None:
                continue
            review = Review.model_validate_json(it.record)
            matches = [Match(e.b, "review_text", e.score, owners[e.b].owner if e.b in owners else None)
                       for e in edge_lists.get(r, []) if e.b in owners]
            hits = [BankHit(**h) for h in it.facts.get("bank_hits", [])]
            raw_verdict = it.facts.get("text_verdict")
            verdict = ReviewTextVerdict.from_dict(raw_verdict) if isinstance(raw_verdict, dict) else None
            outcome = review_signals(ReviewFacts(review, matches, hits, verdict), now)
            signals += outcome.signals
            facts[r] = {**it.facts, "near_duplicates": outcome.near_duplicates}
            if it.group is not None:
                products.add(it.group)
        if old_product is not None:
            products.add(old_product)
        # each product's tally moved by what this write changes: the reviews here as stored and
        # as they will be (O(partners), however many reviews the product has)
        delta: dict[str, list[int]] = {}
        for r in sorted({*targets, rid}):
            was, now_item = stored.get(r), items.get(r)
            if was is not None and was.group is not None:
                d = delta.setdefault(was.group, [0, 0])
                d[0] -= 1
                d[1] -= int(int(was.facts.get("near_duplicates", 0)) >= 1)
            if now_item is not None and now_item.group is not None:
                d = delta.setdefault(now_item.group, [0, 0])
                d[0] += 1
                d[1] += int(int(facts.get(r, now_item.facts).get("near_duplicates", 0)) >= 1)
        tallies: dict[str, str] = {}
        for product in sorted(products):
            change = delta.get(product, [0, 0])
            raw = self.store.get_meta(product_tally_key(t, product))
            tally = json.loads(raw) if raw is not None else None
            moved = (None if tally is None
                     else (tally["reviews"] + change[0], tally["templated_reviews"] + change[1]))
            if moved is not None and 0 <= moved[1] <= moved[0]:
                stats = ProductStats(t, product, *moved)
            else:  # no tally yet (a store from before tallies, a backfill): count the stored reviews once
                stats = ProductStats(t, product)
                listed = {x.item_id: x for x in self.store.items_of_group(t, "review", product)}
                if new_item is not None and new_item.group == product:
                    listed[rid] = new_item
                if new_item is None or new_item.group != product:
                    listed.pop(rid, None)
                for x_id, x in sorted(listed.items()):
                    f = facts.get(x_id, x.facts)
                    stats.add_review(near_duplicates=int(f.get("near_duplicates", 0)))
            tallies[product_tally_key(t, product)] = tally_json(stats)
            signals += product_rollup_signals(stats, now)
        return signals, facts, tallies

    # ---------------------------------------------------------------- deletes
    def delete(self, tenant: str, kind: ItemKind, item_id: str) -> bool:
        """Take an item down: out of the indexes and the store, partners and roll-ups updated,
        its signal history kept under a tombstone. False when it is not there."""
        old = self.store.get_item(tenant, kind, item_id)
        if old is None:
            return False
        now = self.clock()
        partners = {e.b for e in self.store.edges_of(tenant, kind, [item_id])[item_id]}
        entity: EntityType = "listing" if kind == "listing" else "review"
        if kind == "listing":
            pending: dict[str, list[Edge]] = {item_id: []}
            signals, facts, emptied = self._rebuild_listings(tenant, item_id, None, partners, pending, now)
            tallies: dict[str, str] = {}
        else:
            signals, facts, tallies = self._rebuild_reviews(tenant, item_id, None, partners, [], now,
                                                            old.group)
            emptied = []
        facts.pop(item_id, None)
        retract: list[tuple[EntityType, str]] = [(entity, item_id), *(("seller", s) for s in emptied)]
        self.store.write(WriteBatch(tenant, kind, delete=[item_id], facts=facts, signals=signals,
                                    retract=retract, meta=tallies))
        self._unindex(old)
        return True

    def expire(self, before: datetime, limit: int = 1000) -> int:
        """Delete content last written before ``before`` (the retention setting); returns how many."""
        n = 0
        for tenant, kind, item_id in self.store.expired(before, limit):
            n += int(self.delete(tenant, kind, item_id))
        return n

    # ------------------------------------------------------------------ reads
    def entity_signals(self, tenant: str, entity_type: EntityType, entity_id: str, history: bool,
                       limit: int = 1000) -> dict[str, Any] | None:
        latest = self.store.latest(tenant, entity_type, entity_id)
        gone = self.store.tombstone(tenant, entity_type, entity_id)
        if not latest and gone is None:
            return None
        out: dict[str, Any] = {"tenant": tenant, "entity_type": entity_type, "entity_id": entity_id,
                               "signals": latest}
        if gone is not None:
            out["deleted_at"] = gone.isoformat().replace("+00:00", "Z")
        if history:
            out["history"] = self.store.history(tenant, entity_type, entity_id, limit)
        return out

    def add_label(self, label: Label) -> int:
        """Store the label; with ``auto_bank`` a confirmed listing or review joins its tenant's banks."""
        label_id = self.store.add_label(label)
        if self.auto_bank is not None:
            self._bank_labelled(label, *self.auto_bank)
        return label_id

    def _bank_labelled(self, label: Label, fraud_prefix: str, benign_prefix: str) -> None:
        """A fraud listing's (review's) stored text vector and photo hashes go into the tenant's
        ``<fraud_prefix>-listings`` / ``-reviews`` / ``-images`` banks, a legit one's into the benign
        banks, so it is matched from then on; a later label moves it (later labels win). An item the
        store no longer holds (deleted) has nothing to bank."""
        if label.entity_type not in ("listing", "review"):
            return
        kind: ItemKind = "listing" if label.entity_type == "listing" else "review"
        item = self.store.get_item(label.tenant, kind, label.entity_id)
        if item is None:
            return
        fraud = label.label == "fraud"
        reason, by = label.reason or "", label.labelled_by or ""
        wanted: dict[str, tuple[Modality, list[BankItem]]] = {}
        text = item.features.get("text")
        if text is not None:
            modality: Modality = "listing_text" if kind == "listing" else "review_text"
            vector = [float(x) for x in np.ravel(text)]
            # A review's text goes with it: the review banks' text model learns from it.
            words = Review.model_validate_json(item.record).text if kind == "review" else None
            wanted[f"{kind}s"] = (modality, [BankItem(id=item.item_id, vector=vector, source="label",
                                                      reason=reason, added_by=by, text=words or None)])
        hashes = item.features.get("image_pdq")
        if kind == "listing" and hashes is not None and len(hashes):
            wanted["images"] = ("image_pdq", [
                BankItem(id=f"{item.item_id}/{k}", pdq=bytes(h).hex(), source="label", reason=reason,
                         added_by=by) for k, h in enumerate(np.asarray(hashes, dtype=np.uint8))])
        store = self.tenant_banks(label.tenant)
        drop, add = (benign_prefix, fraud_prefix) if fraud else (fraud_prefix, benign_prefix)
        for suffix, (modality, items) in wanted.items():
            old = f"{drop}-{suffix}"
            if old in store.names():
                store.remove_items(old, [it.id for it in items])
            self.bank_add(label.tenant, f"{add}-{suffix}", modality, "fraud" if fraud else "benign", items)

    def recompute_reviews(self, chunk: int = 5000) -> int:
        """Rings, collective scores and behavioural states of every tenant's reviews recomputed in
        full from the store (a timer, every ``review_graph.recompute_s``); returns the signals
        written. Committed ``chunk`` signals a transaction, the states with the last one."""
        written = 0
        for tenant in self.store.tenants():
            now = self.clock()
            signals, state = recompute_reviews(self.store, tenant, self.review_graph, now)
            # the products' review tallies counted again: one that went wrong (a write by a release
            # without tallies, a restored store) is repaired here, and its share published again
            for product, stats in product_tallies(self.store, tenant).items():
                key, counted = product_tally_key(tenant, product), tally_json(stats)
                if self.store.get_meta(key) != counted:
                    state[key] = counted
                    signals = itertools.chain(signals, product_rollup_signals(stats, now))
            pending: list[Signal] = []
            for s in signals:
                pending.append(s)
                if len(pending) >= chunk:
                    self.store.write(WriteBatch(tenant, "review", signals=pending))
                    written += len(pending)
                    pending = []
            self.store.write(WriteBatch(tenant, "review", signals=pending, meta=state))
            written += len(pending)
        return written

    # --------------------------------------------------------- start-up repair
    def repair(self) -> dict[str, int]:
        """Between writes (a timer): re-index what a failed index call left out, and reconcile in
        full when an index shard restarted (its partition may be empty)."""
        if self.indexes.shards_restarted():
            log.warning("an index shard restarted: reconciling its partitions with the store")
            return self.reconcile()
        repaired = 0
        for tenant, kind, item_id in self.store.pending_index():
            item = self.store.get_item(tenant, kind, item_id)
            if item is not None:  # committed: its entries are logged again (idempotent)
                self._index_item(item, item)
                repaired += 1
        self.store.clear_pending_index()
        self._indexed = []
        return {"added": repaired, "removed": 0}

    def reconcile(self) -> dict[str, int]:
        """Make the indexes agree with the store (authoritative): add what the store has and an
        index lacks (a crash after the commit), drop what an index has and the store does not
        (a crash before it). Returns how many entries were added and removed.

        The store is read a page at a time: memory holds the expected ids (not their vectors)
        and one page of missing entries. An engine that cannot reconcile (an index made by
        another model) will not serve: its bank folders are released, so a `marketguard bank`
        or `reindex` in the same process can open them.
        """
        try:
            return self._reconcile()
        except BaseException:
            self.global_banks.close()
            for banks in self._tenant_banks.values():
                banks.close()
            raise

    def _reconcile(self) -> dict[str, int]:
        added = removed = 0
        for tenant, kind, item_id in self.store.pending_index():
            # Committed, and maybe died before its index entries were logged: a re-post keeps
            # its ids, so drop whatever the index holds for it; the pass below re-adds it.
            stale = self.store.get_item(tenant, kind, item_id)
            if stale is not None:
                self._unindex(stale)
        wanted: dict[tuple[str, Modality], set[str]] = {}
        unchecked: dict[tuple[str, Modality], list[tuple[str, np.ndarray, dict[str, Any]]]] = {}

        def flush(key: tuple[str, Modality]) -> None:
            # One membership check for a page of entries (one call a shard for a split tenant).
            nonlocal added
            rows = unchecked.pop(key, [])
            if not rows:
                return
            idx = self._index_of(*key)
            missing = set(missing_ids(idx, [r[0] for r in rows]))
            rows = [r for r in rows if r[0] in missing]
            if rows:
                idx.add([r[0] for r in rows], np.stack([r[1] for r in rows]), [r[2] for r in rows])
                added += len(rows)

        for it in self.store.iter_items():
            for modality, item_id, vec, meta in self._index_entries(it):
                key = (it.tenant, modality)
                wanted.setdefault(key, set()).add(item_id)
                unchecked.setdefault(key, []).append((item_id, vec, meta))
                if len(unchecked[key]) >= 1000:
                    flush(key)
        for key in list(unchecked):
            flush(key)
        keys: set[tuple[str, Modality]] = set(wanted) | {(t, m) for t in self.indexes.tenants()
                                                         for m in ("listing_text", "review_text", "image_pdq",
                                                                   "image_sscd")}
        for t, m in sorted(keys):
            stored_idx = self.indexes.get(t, m, create=False)
            if stored_idx is None:
                continue
            if isinstance(stored_idx, ShardedTenantIndex):
                removed += stored_idx.drop_misplaced()  # the shard count changed since they were added
            extra = sorted(held_ids(stored_idx) - wanted.get((t, m), set()))
            if extra:
                removed += stored_idx.remove(extra)
        self.store.clear_pending_index()
        if added or removed:
            log.warning("reconciled the indexes with the store: %d entries added, %d removed", added, removed)
        return {"added": added, "removed": removed}

    def _index_entries(self, it: StoredItem) -> list[tuple[Modality, str, np.ndarray, dict[str, Any]]]:
        """What the indexes hold for a stored item: (modality, index id, vector or hash, metadata)."""
        f = it.features
        if it.kind == "review":
            return [("review_text", it.item_id, f["text"], {"owner": it.owner, "product_id": it.group})] \
                if "text" in f else []
        out: list[tuple[Modality, str, np.ndarray, dict[str, Any]]] = []
        if "text" in f:
            meta_text = {"owner": it.owner, "price": it.price, "currency": it.currency, "category": it.group}
            out.append(("listing_text", it.item_id, f["text"], meta_text))
        meta = {"owner": it.owner, "record_id": it.item_id}
        if "image_pdq" in f:
            q = f.get("image_pdq_quality", np.zeros(len(f["image_pdq"])))
            for k in np.flatnonzero(q >= self.config.near_duplicates.pdq_min_quality).tolist():
                out.append(("image_pdq", f"{it.item_id}/{k}", f["image_pdq"][k], meta))
        if "image_sscd" in f:
            regions = f.get("image_sscd_regions") if self.config.near_duplicates.image_regions else None
            for k, vec in enumerate(f["image_sscd"]):
                out += [("image_sscd", entry_id, v, meta) for entry_id, v in
                        region_entries(f"{it.item_id}/{k}", vec, None if regions is None else regions[k])]
        return out

    def index_sizes(self) -> dict[tuple[str, str], int]:
        return self.indexes.sizes()

    def compact(self) -> None:
        """Re-train grown IVFs and snapshot grown logs of the local indexes (index shards do their own)."""
        self.indexes.compact()

    def close(self) -> None:
        self.indexes.close()
        self.global_banks.close()
        for b in self._tenant_banks.values():
            b.close()
        self.store.close()


def _best_edges(edges: Sequence[Edge]) -> list[Edge]:
    """One edge per (partner, modality) at its best score, in a stable order."""
    best: dict[tuple[str, str], Edge] = {}
    for e in edges:
        k = (e.b, e.modality)
        if k not in best or e.score > best[k].score:
            best[k] = e
    return sorted(best.values(), key=lambda e: (e.b, e.modality))


def _hit_dict(h: BankHit) -> dict[str, Any]:
    return {"bank": h.bank, "kind": h.kind, "item_id": h.item_id, "modality": h.modality,
            "distance": float(h.distance), "similarity": float(h.similarity)}
