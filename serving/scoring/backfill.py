"""``marketguard serve --from-batch RUN_DIR``: start the service from a finished batch run.

A catalogue scored in batch is matchable from the first request: the run's index snapshots
(``RUN_DIR/indexes/<tenant>/<modality>/``, stamped with the model that made them) are copied
into the data dir, and the service's store gets what its write path needs and the snapshots
do not hold: every record (the pair scorer reads a candidate's title and description) with
its features (so the indexes can be reconciled and rebuilt from the store), the
near-duplicate edges (``pairs.parquet``), each item's facts (cluster, bank hits, counts:
what partner updates and roll-ups fold) and every signal (``signals.jsonl``), latest and
history. Records are imported in the run's row order, so the earliest member of a cluster
is its id on both paths.

Only into a data dir whose store holds no items yet; importing the same run again is a no-op
(the store remembers the run's manifest), another run is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from indexes.config import Modality
from serving.batch.catalogue import Catalogue, load_catalogue
from serving.scoring.engine import PDQ_FEATURES, product_tallies, product_tally_key, tally_json
from serving.scoring.indexes import MODEL_STAMP
from serving.store.base import Edge, ItemKind, StoredItem, WriteBatch
from serving.store.sql import SqlSignalStore
from serving.store.sqlite import SqliteSignalStore
from signals.errors import InvalidInput
from signals.schemas import Signal

_CHUNK = 1000
META_KEY = "from_batch"
STARTED_KEY = "from_batch_started"


def _manifest(run_dir: Path) -> tuple[dict[str, Any], str]:
    path = run_dir / "manifest.json"
    if not path.is_file() or not (run_dir / "signals.jsonl").is_file():
        raise InvalidInput("--from-batch", f"{str(run_dir)!r} holds no finished batch run (manifest.json "
                                           "and signals.jsonl are written at its end)", "not_found")
    raw = path.read_bytes()
    manifest = json.loads(raw)
    if not isinstance(manifest, dict):
        raise InvalidInput("--from-batch", f"{path} is not a batch manifest")
    return manifest, hashlib.sha256(raw).hexdigest()


def check_stamps(run_dir: Path, models: dict[Modality, str]) -> list[tuple[str, Modality, Path]]:
    """The run's index snapshots, each checked to be made by the configured model."""
    out: list[tuple[str, Modality, Path]] = []
    root = run_dir / "indexes"
    for tenant_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for mdir in sorted(p for p in tenant_dir.iterdir() if p.is_dir()):
            modality: Modality = mdir.name  # type: ignore[assignment]  # checked against models below
            if modality not in models or not (mdir / "CURRENT").exists():
                continue
            stamp = mdir / MODEL_STAMP
            made_by = json.loads(stamp.read_text(encoding="utf-8")).get("model") if stamp.exists() else None
            if made_by != models[modality]:
                raise InvalidInput("--from-batch", f"the run's {modality} index of tenant "
                                                   f"{tenant_dir.name!r} was built by model {made_by!r}, but "
                                                   f"the configured model is {models[modality]!r}: run the "
                                                   "batch job again with this config")
            out.append((tenant_dir.name, modality, mdir))
    return out


def import_batch_run(run_dir: Path, root: Path, models: dict[Modality, str],
                     split: Callable[[str], bool] = lambda tenant: False,
                     open_store: Callable[[], SqlSignalStore] | None = None) -> dict[str, int]:
    """Copy the run's snapshots into ``root/indexes`` and its records, edges, facts and signals
    into the store (``open_store()``; default ``root/store.sqlite3``). Returns what was imported.

    ``split(tenant)``: whether the tenant's indexes are split over index shards; its snapshots
    are not copied (one index cannot be a shard's partition): the service's start-up
    reconciliation fills the shards from the imported store.
    """
    run_dir = Path(run_dir)
    manifest, digest = _manifest(run_dir)
    kind: ItemKind = "listing" if manifest.get("kind") == "listings" else "review"
    store = open_store() if open_store is not None else SqliteSignalStore(root / "store.sqlite3")
    if store.get_meta(STARTED_KEY) == digest and store.get_meta(META_KEY) is None:
        # An import of this run that died part-way: nothing else was written since (a data dir
        # with a started import refuses other writes only by this rule), so start it afresh.
        store.clear()
        shutil.rmtree(root / "indexes", ignore_errors=True)
    try:
        done = store.get_meta(META_KEY)
        if done == digest:
            return {"items": 0, "edges": 0, "signals": 0, "indexes": 0}
        if done is not None or store.counts() or store.get_meta(STARTED_KEY) is not None:
            raise InvalidInput("--from-batch", f"the data dir {str(root)!r} already holds items; start "
                                               "from a batch run only into a new data dir")
        snapshots = check_stamps(run_dir, models)
        store.set_meta(STARTED_KEY, digest)
        cat = load_catalogue(run_dir / "work" / "catalogue", kind)
        facts = _facts(run_dir, kind)
        items = _import_items(store, cat, kind, facts)
        if kind == "review":  # each product's review tally, which the service's writes then move
            for tenant in store.tenants():
                tallies = product_tallies(store, tenant)
                store.write(WriteBatch(tenant, "review", meta={
                    product_tally_key(tenant, p): tally_json(stats) for p, stats in tallies.items()}))
        edges = _import_edges(store, run_dir / "pairs.parquet", kind)
        signals = _import_signals(store, run_dir / "signals.jsonl", kind)
        snapshots = [(t, m, src) for t, m, src in snapshots if not split(t)]
        for tenant, modality, src in snapshots:
            dst = root / "indexes" / tenant / modality
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("LOCK"))
        store.set_meta(META_KEY, digest)
        return {"items": items, "edges": edges, "signals": signals, "indexes": len(snapshots)}
    finally:
        store.close()


def _signal_lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _facts(run_dir: Path, kind: ItemKind) -> dict[tuple[str, str], dict[str, Any]]:
    """Each item's facts, read back from the run's signals and clusters."""
    facts: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for s in _signal_lines(run_dir / "signals.jsonl"):
        if s["entity_type"] != kind:
            continue
        f = facts[(s["tenant"], s["entity_id"])]
        name = s["name"]
        if name in ("near_duplicate.count", "review.near_duplicate_count"):
            f["near_duplicates"] = int(s["value"])
        elif name == "near_duplicate.cluster_size":
            f["cluster_size"] = int(s["value"])
        elif name in ("bank.match", "review.bank_similarity"):
            hits = [{"bank": m["bank"], "kind": m["kind"], "item_id": m["id"], "modality": m["modality"],
                     "distance": float(m["distance"]), "similarity": float(m["similarity"])}
                    for m in (s.get("evidence") or {}).get("matches", [])]
            f["bank_hits"] = hits
            if name == "bank.match":
                f["fraud_bank_matches"] = int(s["value"])
    clusters = run_dir / "clusters.parquet"
    if kind == "listing" and clusters.exists():
        t = pq.read_table(clusters, columns=["entity_id", "cluster_id", "tenant"])
        for eid, cid, tenant in zip(*(t.column(c).to_pylist() for c in ("entity_id", "cluster_id", "tenant")),
                                    strict=True):
            facts[(tenant, eid)]["cluster_id"] = cid
    return facts


def _import_items(store: SqlSignalStore, cat: Catalogue, kind: ItemKind,
                  facts: dict[tuple[str, str], dict[str, Any]]) -> int:
    order = np.argsort(cat.image_rows, kind="stable") if len(cat.image_rows) else np.zeros(0, dtype=np.int64)
    sorted_rows = np.asarray(cat.image_rows)[order] if len(order) else np.zeros(0, dtype=np.int64)
    cols = ("tenant", "entity_id", "owner", "group", "price", "currency", "record")
    n = 0
    by_tenant: dict[str, list[StoredItem]] = defaultdict(list)
    for start in range(0, cat.n, _CHUNK):
        part = cat.meta.slice(start, _CHUNK)
        values = zip(*(part.column(c).to_pylist() for c in cols), strict=True)
        for offset, (tenant, eid, owner, group, price, currency, record) in enumerate(values):
            row = start + offset
            features: dict[str, np.ndarray] = {}
            if cat.text is not None:
                vec = np.asarray(cat.text[row], dtype=np.float32)
                if float(vec @ vec) > 0.5:  # rows without a text vector are zeros
                    features["text"] = vec
            lo, hi = np.searchsorted(sorted_rows, (row, row + 1))
            images = np.sort(order[lo:hi]) if hi > lo else None
            if images is not None and cat.pdq is not None and cat.pdq_quality is not None:
                for name, arr in zip(PDQ_FEATURES, cat.pdq, strict=True):
                    features[name] = np.asarray(arr[images])
                features["image_pdq_quality"] = np.asarray(cat.pdq_quality[images], dtype=np.float32)
            if images is not None and cat.sscd is not None:
                features["image_sscd"] = np.asarray(cat.sscd[images], dtype=np.float32)
                if cat.sscd_regions is not None:
                    features["image_sscd_regions"] = np.asarray(cat.sscd_regions[images], dtype=np.float32)
                if cat.local is not None:
                    features["image_local"] = np.asarray(cat.local[images], dtype=np.uint8)
            f = facts.get((tenant, eid), {})
            f.setdefault("bank_hits", [])
            f.setdefault("image_problems", [])
            by_tenant[tenant].append(StoredItem(tenant, kind, eid, owner or "", group,
                                                price if kind == "listing" else None,
                                                currency if kind == "listing" else None, record, features, f))
        for tenant, stored in by_tenant.items():
            store.write(WriteBatch(tenant, kind, upsert=stored))
            n += len(stored)
        by_tenant.clear()
    return n


def _import_edges(store: SqlSignalStore, path: Path, kind: ItemKind) -> int:
    if not path.exists():
        return 0
    n = 0
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=50_000):
        cols = [batch.column(c).to_pylist() for c in ("a", "b", "modality", "score", "tenant")]
        by_tenant: dict[str, list[Edge]] = defaultdict(list)
        for a, b, m, s, t in zip(*cols, strict=True):
            by_tenant[t].append(Edge(a, b, m, float(s)))
        for tenant, edges in by_tenant.items():
            store.add_edges(tenant, kind, edges)
            n += len(edges)
    return n


def _import_signals(store: SqlSignalStore, path: Path, kind: ItemKind) -> int:
    n = 0
    chunk: list[Signal] = []
    for s in _signal_lines(path):
        chunk.append(Signal.model_validate(s))
        if len(chunk) >= 5000:
            store.write(WriteBatch(chunk[0].tenant, kind, signals=chunk))
            n += len(chunk)
            chunk = []
    if chunk:
        store.write(WriteBatch(chunk[0].tenant, kind, signals=chunk))
        n += len(chunk)
    return n
