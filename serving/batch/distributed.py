"""Stages 3 to 5 of the batch job as Ray tasks (``batch.pairs_on: cluster``, the default).

The driver plans and collects; every step below is a Ray task that any node runs,
reading the catalogue, the index snapshots and the pair files from ``DIR`` (storage
every node mounts) and writing its result there atomically, so a killed job re-run
skips what is done. The outputs are byte for byte those of the single-driver path
(``batch.pairs_on: driver``, :mod:`serving.batch.job`), which stays as the reference.

1. **indexes**: a task per tenant and modality builds its snapshot; beside them, a task
   per row range (the ``P`` ranges of step 3) parses its records for the pair scorer
   (``work/pair_records/<r>-of-<P>.arrow``).
2. **pairs**: query blocks (``batch.query_block``), one a task until there are many
   (:func:`search_task_blocks`); each task opens the snapshot once and writes each
   block's file, ``work/pairs/<t>/<m>/<block>.parquet``, exactly as the driver path does.
   Memory a task: the index, the view's ids, one block.
3. **shuffle**: the catalogue's rows are cut into ``P`` ranges
   (``batch.partitions``). Each group of block files is split by the range of each pair's
   smaller row (``lo``) and of its larger (``hi``) (``work/shuffle/``); then each range's
   pieces are canonicalised (each pair once, its best score, sorted) into
   ``work/canon/<t>/<m>/lo-<r>.parquet`` and ``hi-<r>.parquet``: together, the
   ``lo`` files in range order are the driver path's pair list, range by range.
4. **clusters**: the guarded union-find (:func:`indexes.clustering.cluster_pairs`)
   applies pairs strongest first, and a merge only ever looks at the two sets it
   joins, so it decides within each connected component of the pair graph exactly
   as it does over the whole graph (the components' pairs keep their relative order).
   Components come from each range's pairs (a star per local component) merged in one
   task (rows in pairs, not pairs); each range's pairs are then bucketed by component,
   and a task per bucket clusters its components; one task assembles each row's
   cluster (``work/clusters/``: root, size, members) and writes ``clusters.parquet``.
5. **signals**: a task per row range builds its records' partners (its ``lo`` and
   ``hi`` pairs) and writes their signals (``work/signals/<r>.jsonl``) with the roll-ups'
   partial stats; one task merges the stats (per seller or product), writes
   ``signals.jsonl`` (the parts in order, then the roll-ups) and the sellers' summary.
   ``pairs.parquet`` is streamed from the ``lo`` files by one task meanwhile, bank
   matches and category price references come from one task each.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexes.atomic import read_json, write_file_atomic, write_json_atomic
from indexes.clustering import Pairs, cluster_pairs
from indexes.config import ClusteringConfig, Modality
from indexes.near_duplicates import ImageNearDuplicates, TextNearDuplicates, canonical_pairs
from serving.batch.catalogue import Catalogue, load_catalogue
from serving.batch.extract import Kind, write_parquet_atomic
from serving.batch.pairs import (
    PAIR_SCHEMA,
    ModalityView,
    block_path,
    build_index,
    index_dir,
    modalities,
    open_index,
    parse_part,
    parsed_records,
    search_blocks,
    tenants,
    write_block,
)
from serving.batch.progress import Progress
from serving.config import MarketGuardConfig, configure_process
from signals.rollups import ProductStats, SellerStats

log = logging.getLogger(__name__)

ROWS_PER_PARTITION = 50_000
MAX_AUTO_PARTITIONS = 256
MIN_PARTITION_ROWS = 1000


def partitions(config: MarketGuardConfig, n: int, slots: float, out: Path) -> int:
    """How many row ranges (and cluster buckets) the run's pairs are cut into: the setting, or
    one per ``ROWS_PER_PARTITION`` records but at least two per task slot of the cluster
    (``slots``), at most ``MAX_AUTO_PARTITIONS``, and no range under ``MIN_PARTITION_ROWS``.
    The count chosen is kept in ``work/partitions.json``: a resumed run on another cluster
    cuts its pairs the same way as the files already written."""
    wanted = config.batch.partitions
    if wanted is not None:
        return wanted
    path = _work(out, "partitions.json")
    if path.exists():
        saved = read_json(path)
        if isinstance(saved, dict) and isinstance(saved.get("partitions"), int):
            return int(saved["partitions"])
    parts = max(-(-n // ROWS_PER_PARTITION), int(2 * slots))
    parts = max(1, min(MAX_AUTO_PARTITIONS, parts, n // MIN_PARTITION_ROWS))
    write_json_atomic(path, {"partitions": parts})
    return parts


SEARCH_TASKS_PER_SLOT = 16


def search_task_blocks(pending: int, slots: float) -> int:
    """Query blocks a search task takes: one, until there are more than
    :data:`SEARCH_TASKS_PER_SLOT` blocks a task slot of the cluster (``slots``).

    Tasks of one block keep the slots busy to the end (the last wave is one block long);
    each task opens the snapshot and the view's ids again, which is worth grouping only
    once blocks are many. With 4 tasks a slot, 10 blocks on 2 slots went as 5 tasks of 2,
    in 3 waves: 6 block-times where 5 suffice.
    """
    return max(1, -(-pending // max(1, int(SEARCH_TASKS_PER_SLOT * slots))))


def _span(n: int, parts: int) -> int:
    return max(1, -(-n // parts))


# ------------------------------------------------------------------ the driver's side
class _Tasks:
    """Ray tasks of this module, with the job's CPUs a task; results collected as they finish."""

    def __init__(self, config: MarketGuardConfig, out: Path, kind: Kind) -> None:
        import ray

        self.ray = ray
        self.cpus = config.batch.task_cpus
        self.ctx = (str(out), kind, config.model_dump_json())
        self._remote: dict[Callable[..., Any], Any] = {}

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn).options(num_cpus=self.cpus)
        return self._remote[fn].remote(*self.ctx, *args)

    def wait_all(self, refs: list[Any], on_done: Callable[[Any], None] | None = None) -> list[Any]:
        """Every result, in submission order; ``on_done`` called as each finishes."""
        pending = list(refs)
        while pending:  # batches of what is ready: one wait a task would cost O(tasks^2)
            done, pending = self.ray.wait(pending, num_returns=min(len(pending), 256), timeout=1.0)
            if on_done is not None:
                for result in self.ray.get(done):
                    on_done(result)
        return list(self.ray.get(refs))


def run_pairs_and_outputs(cat: Catalogue, config: MarketGuardConfig, out: Path, progress: Progress,
                          observed_at: datetime, timings: dict[str, float],
                          labels: Path | None = None) -> dict[str, Any]:
    """Stages 3 to 5 on the connected Ray cluster; returns the summary's parts and sets
    ``timings["pairs_s"]`` (indexes and all pairs, as the driver path counts it). ``labels``
    (reviews): the run's seed labels, copied into the work folder that every node reads."""
    t0 = time.monotonic()
    tasks = _Tasks(config, out, cat.kind)
    analysis_ref = None
    if cat.kind == "review":  # the whole-graph analysis beside the pairs; the ranges wait for it
        if labels is not None:
            copy = _work(out, "labels.jsonl")
            copy.parent.mkdir(parents=True, exist_ok=True)

            def write(f: Any) -> None:
                with labels.open("rb") as src:
                    shutil.copyfileobj(src, f)

            write_file_atomic(copy, write)
        analysis_ref = tasks.submit(_review_analysis_task, labels is not None, observed_at.isoformat())
    keys: list[tuple[str, Modality]] = tasks.ray.get(tasks.submit(_plan_task))
    icfg = config.indexes
    scored = (cat.kind == "listing" and any(m == "listing_text" for _, m in keys)
              and icfg.near_duplicates.pair_scorer != "none")
    cpus = max(1.0, float(tasks.ray.cluster_resources().get("CPU", 1)))
    parts = partitions(config, cat.n, cpus / tasks.cpus, out)
    stage = progress.stage("indexes", len(keys), "indexes")
    refs = [tasks.submit(_index_task, t, m) for t, m in keys]
    # the parse in row ranges, as tasks beside the index builds: one task took ~2 s of 20k rows
    # while the other slots idled
    parse_refs = [tasks.submit(_parse_task, r, parts) for r in range(parts)] if scored else []
    sizes = tasks.wait_all(refs, lambda _: stage.update(1))
    tasks.wait_all(parse_refs)
    stage.close()

    # pairs: the pending blocks of each (tenant, modality), in contiguous groups
    block = config.batch.query_block
    pairs_dir = out / "work" / "pairs"
    blocks = {(t, m): -(-n // block) for (t, m), n in zip(keys, sizes, strict=True)}
    total = sum(blocks.values())
    todo = {k: [b for b in range(nb) if not block_path(pairs_dir, *k, b).exists()]
            for k, nb in blocks.items()}
    pending = sum(len(v) for v in todo.values())
    stage = progress.stage("pairs", total, "blocks", done=total - pending)
    per_task = search_task_blocks(pending, cpus / tasks.cpus)
    refs = [tasks.submit(_search_task, t, m, bs[i:i + per_task], parts)
            for (t, m), bs in todo.items() for i in range(0, len(bs), per_task)]
    tasks.wait_all(refs, lambda r: stage.update(r[0], r[1]))
    stage.close()
    timings["pairs_s"] = time.monotonic() - t0

    # shuffle: block files -> each range's canonical pairs
    span = _span(cat.n, parts)
    groups = {k: _groups(nb, parts) for k, nb in blocks.items()}
    refs = [tasks.submit(_split_task, t, m, g, blocks_of, span)
            for (t, m), gs in groups.items() for g, blocks_of in enumerate(gs)]
    tasks.wait_all(refs)
    refs = [tasks.submit(_canon_task, t, m, r, len(groups[(t, m)])) for t, m in keys for r in range(parts)]
    counts = tasks.wait_all(refs)
    pair_counts: dict[str, int] = dict.fromkeys((m for _, m in keys), 0)
    for (_, m, _), c in zip([(t, m, r) for t, m in keys for r in range(parts)], counts, strict=True):
        pair_counts[m] += c
    progress.note(f"pairs: {sum(pair_counts.values()):,} in {parts} ranges")

    # side tasks: pairs.parquet, bank matches, category price references
    pairs_ref = tasks.submit(_pairs_parquet_task, keys, parts)
    banks_ref = tasks.submit(_banks_task)
    refs_ref = tasks.submit(_category_refs_task)

    # clusters: components, buckets, union-find per bucket, assembly
    tasks.wait_all([tasks.submit(_star_task, keys, r) for r in range(parts)])
    tasks.ray.get(tasks.submit(_components_task, parts))
    tasks.wait_all([tasks.submit(_bucket_task, keys, r, parts) for r in range(parts)])
    tasks.wait_all([tasks.submit(_cluster_task, b, parts) for b in range(parts)])
    clusters = tasks.ray.get(tasks.submit(_assemble_task, parts))
    progress.note(f"clusters: {clusters['clusters']:,}")

    # signals: a task per row range, then the merge
    stage = progress.stage("signals", parts, "ranges")
    refs = [tasks.submit(_signals_task, keys, r, span, observed_at.isoformat(), banks_ref, refs_ref,
                         analysis_ref) for r in range(parts)]
    tasks.wait_all(refs, lambda _: stage.update(1))
    stage.close()
    merged = tasks.ray.get(tasks.submit(_merge_signals_task, parts, observed_at.isoformat()))
    tasks.ray.get(pairs_ref)
    return {"pairs": pair_counts, "clusters": clusters, **merged}


def _groups(blocks: int, parts: int) -> list[list[int]]:
    """A (tenant, modality)'s blocks in at most ``parts`` contiguous groups (a split task each)."""
    per = max(1, -(-blocks // parts))
    return [list(range(s, min(blocks, s + per))) for s in range(0, blocks, per)]


# ------------------------------------------------------------------ task helpers
def _open(out: str, kind: Kind, config_json: str) -> tuple[Path, Catalogue, MarketGuardConfig]:
    config = MarketGuardConfig.model_validate_json(config_json)
    configure_process(config)
    root = Path(out)
    return root, load_catalogue(root / "work" / "catalogue", kind), config


def _view(cat: Catalogue, config: MarketGuardConfig, tenant: str, m: Modality) -> ModalityView:
    return ModalityView(cat, m, tenants(cat)[tenant], config.indexes)


def _read(path: Path) -> Pairs:
    """A pair file (int64 rows), or no pairs when it does not exist."""
    if not path.exists():
        z = np.zeros(0, dtype=np.int64)
        return Pairs(z, z, np.zeros(0, dtype=np.float32))
    t = pq.read_table(path, schema=PAIR_SCHEMA)
    return Pairs(t.column("a").to_numpy(), t.column("b").to_numpy(), t.column("score").to_numpy())


def _concat(parts: Sequence[Pairs]) -> Pairs:
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        return Pairs(z, z, np.zeros(0, dtype=np.float32))
    return Pairs(np.concatenate([p.a for p in parts]), np.concatenate([p.b for p in parts]),
                 np.concatenate([p.score for p in parts]))


def _work(out: Path, *names: str) -> Path:
    return out.joinpath("work", *names)


def _canon_path(out: Path, tenant: str, m: str, side: str, r: int) -> Path:
    return _work(out, "canon", tenant, m, f"{side}-{r:05d}.parquet")


def _save_npy(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as one ``.npz`` file, atomically (read back with ``allow_pickle=False``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    def write(f: Any) -> None:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs as allow_pickle

    write_file_atomic(path, write)


def _load_npy(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------ 1. indexes
def _plan_task(out: str, kind: Kind, config_json: str) -> list[tuple[str, Modality]]:
    """(tenant, modality) of every index, in the order the driver path builds them."""
    _, cat, _ = _open(out, kind, config_json)
    return [(t, m) for t in tenants(cat) for m in modalities(cat)]


def _index_task(out: str, kind: Kind, config_json: str, tenant: str, m: Modality) -> int:
    """One tenant's modality snapshot (skipped when there); returns the view's item count."""
    from serving.scoring.extraction import FastExtraction
    from serving.scoring.indexes import write_model_stamp

    root, cat, config = _open(out, kind, config_json)
    view = _view(cat, config, tenant, m)
    directory = index_dir(root / "indexes", tenant, m)
    if not (directory / "CURRENT").exists():
        build_index(view, config.indexes, directory)
        if (directory / "CURRENT").exists():
            models, _ = FastExtraction.build(config.signals, config.data_dir).models()
            write_model_stamp(directory, m, models[m])
    return len(view)


def _parse_task(out: str, kind: Kind, config_json: str, part: int, parts: int) -> None:
    root, cat, _ = _open(out, kind, config_json)
    parse_part(cat, _work(root, "pair_records"), part, parts)


# ------------------------------------------------------------------ 2. pairs
def _search_task(out: str, kind: Kind, config_json: str, tenant: str, m: Modality,
                 wanted: list[int], parse_parts: int) -> tuple[int, int]:
    """The blocks ``wanted`` of one tenant's modality, each written as it is done;
    returns (blocks, queries) searched. ``parse_parts``: the ranges the records were parsed in."""
    root, cat, config = _open(out, kind, config_json)
    icfg = config.indexes
    pairs_dir = _work(root, "pairs")
    todo = {b for b in wanted if not block_path(pairs_dir, tenant, m, b).exists()}
    if not todo:
        return len(wanted), 0
    view = _view(cat, config, tenant, m)
    text_rule = TextNearDuplicates.from_config(icfg) if m == "listing_text" else None
    parsed = None
    if text_rule is not None and text_rule.scorer is not None:
        parsed = parsed_records(cat, _work(root, "pair_records"), parse_parts)
    index = open_index(view, icfg, index_dir(root / "indexes", tenant, m))
    queries = 0
    for b, q, found in search_blocks(view, icfg, index, text_rule, parsed, config.batch.query_block,
                                     lambda b: b in todo, ImageNearDuplicates.from_config(icfg)):
        write_block(block_path(pairs_dir, tenant, m, b), found)
        queries += q
    return len(wanted), queries


# ------------------------------------------------------------------ 3. shuffle
def _split_task(out: str, kind: Kind, config_json: str, tenant: str, m: str, group: int,
                blocks_of: list[int], span: int) -> None:
    """A group of block files, split by the range of each pair's ``lo`` and ``hi`` rows."""
    root = Path(out)
    folder = _work(root, "shuffle", tenant, m, f"{group:05d}")
    if (folder / "DONE").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    p = _concat([_read(block_path(_work(root, "pairs"), tenant, m, b))  # type: ignore[arg-type]  # m: a Modality
                 for b in blocks_of])
    for side, rows in (("lo", p.a), ("hi", p.b)):  # a block's pairs have a < b
        which = rows // span
        for r in np.unique(which).tolist():
            keep = which == r
            write_block(folder / f"{side}-{r:05d}.parquet", Pairs(p.a[keep], p.b[keep], p.score[keep]))
    write_json_atomic(folder / "DONE", {"blocks": blocks_of})


def _canon_task(out: str, kind: Kind, config_json: str, tenant: str, m: str, r: int, groups: int) -> int:
    """Range ``r``'s pairs of one tenant's modality, each once (best score), sorted by rows;
    returns how many have their ``lo`` row in the range."""
    root = Path(out)
    lo_path = _canon_path(root, tenant, m, "lo", r)
    for side in ("hi", "lo"):  # lo last: its presence means both are there
        path = _canon_path(root, tenant, m, side, r)
        if side == "hi" and lo_path.exists():
            continue
        if path.exists():
            continue
        pieces = [_read(_work(root, "shuffle", tenant, m, f"{g:05d}", f"{side}-{r:05d}.parquet"))
                  for g in range(groups)]
        p = _concat(pieces)
        canon = canonical_pairs(p.a, p.b, p.score)
        write_block(path, canon)
    return int(pq.read_metadata(lo_path).num_rows)


# ------------------------------------------------------------------ 4. clusters
def _range_pairs(root: Path, keys: list[tuple[str, Modality]], side: str, r: int) -> dict[Modality, Pairs]:
    """Range ``r``'s canonical pairs of each modality (tenants in order), modalities in run order."""
    by: dict[Modality, list[Pairs]] = {}
    for t, m in keys:
        by.setdefault(m, []).append(_read(_canon_path(root, t, m, side, r)))
    return {m: _concat(ps) for m, ps in by.items()}


def _star_task(out: str, kind: Kind, config_json: str, keys: list[tuple[str, Modality]], r: int) -> None:
    """Range ``r``'s pairs as stars: each row in them linked to the smallest row of its
    component within the range's pairs (as many links as rows, however many pairs)."""
    root = Path(out)
    path = _work(root, "components", f"star-{r:05d}.npz")
    if path.exists():
        return
    p = _concat(list(_range_pairs(root, keys, "lo", r).values()))
    nodes, smallest = components(p.a, p.b)
    _save_npy(path, {"rows": nodes, "to": smallest})


def _components_task(out: str, kind: Kind, config_json: str, parts: int) -> None:
    """Every row's component (its smallest row; a row in no pair is its own), from the stars."""
    root = Path(out)
    path = _work(root, "components", "labels.npz")
    if path.exists():
        return
    stars = [_load_npy(_work(root, "components", f"star-{r:05d}.npz")) for r in range(parts)]
    a = np.concatenate([s["rows"] for s in stars]) if stars else np.zeros(0, dtype=np.int64)
    b = np.concatenate([s["to"] for s in stars]) if stars else np.zeros(0, dtype=np.int64)
    del stars
    nodes, smallest = components(a, b)
    _save_npy(path, {"rows": nodes, "component": smallest})


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows linked by the edges ``a``-``b``, sorted; the smallest row of each one's component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([a, b]))
    if not len(nodes):
        return nodes, nodes
    la, lb = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    _, labels = connected_components(coo_matrix((np.ones(len(la), dtype=np.int8), (la, lb)),
                                                shape=(len(nodes), len(nodes))), directed=False)
    first = np.full(int(labels.max()) + 1, len(nodes), dtype=np.int64)
    np.minimum.at(first, labels, np.arange(len(nodes)))
    return nodes, nodes[first[labels]]


def _component_of(root: Path) -> Callable[[np.ndarray], np.ndarray]:
    z = _load_npy(_work(root, "components", "labels.npz"))
    rows, comp = z["rows"], z["component"]
    return lambda x: comp[np.searchsorted(rows, x)]


def _bucket_task(out: str, kind: Kind, config_json: str, keys: list[tuple[str, Modality]], r: int,
                 parts: int) -> None:
    """Range ``r``'s pairs of every modality, bucketed by their component (a bucket holds
    whole components)."""
    root = Path(out)
    folder = _work(root, "buckets", f"from-{r:05d}")
    if (folder / "DONE").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    p = _concat(list(_range_pairs(root, keys, "lo", r).values()))
    bucket = _component_of(root)(p.a) % parts
    for k in np.unique(bucket).tolist():
        keep = bucket == k
        write_block(folder / f"{k:05d}.parquet", Pairs(p.a[keep], p.b[keep], p.score[keep]))
    write_json_atomic(folder / "DONE", {})


def _cluster_task(out: str, kind: Kind, config_json: str, k: int, parts: int) -> None:
    """Bucket ``k``'s components clustered exactly as :func:`indexes.clustering.cluster_pairs`
    clusters the whole catalogue (rows renumbered in order; their vectors read once)."""
    root, cat, config = _open(out, kind, config_json)
    path = _work(root, "clusters", f"bucket-{k:05d}.npz")
    if path.exists():
        return
    p = _concat([_read(_work(root, "buckets", f"from-{r:05d}", f"{k:05d}.parquet")) for r in range(parts)])
    rows, roots, blocked = cluster_rows(p, config.indexes.clustering, cat.text)
    _save_npy(path, {"rows": rows, "root": roots, "blocked": np.array([blocked], dtype=np.int64)})


def cluster_rows(pairs: Pairs, config: ClusteringConfig, vectors: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """(the rows in ``pairs``, each one's cluster as its smallest row, merges the guard blocked):
    :func:`~indexes.clustering.cluster_pairs` over those rows only, renumbered in order (so the
    pairs' order, and every guard decision, is the whole catalogue's), their vectors read once.
    ``pairs`` must hold whole connected components for the answer to be the whole run's."""
    rows = np.unique(np.concatenate([pairs.a, pairs.b]))
    local = Pairs(np.searchsorted(rows, pairs.a), np.searchsorted(rows, pairs.b), pairs.score)
    own = np.asarray(vectors[rows]) if vectors is not None and len(rows) else None
    result = cluster_pairs(len(rows), local, config, vectors=own)
    return rows, rows[result.labels_as_min_row()], int(result.blocked)


def _assemble_task(out: str, kind: Kind, config_json: str, parts: int) -> dict[str, Any]:
    """Every row's cluster (root, size, the members in root order) into ``work/clusters/``,
    ``clusters.parquet``, and the clusters' summary."""
    from serving.batch.job import cluster_summary

    root_dir, cat, config = _open(out, kind, config_json)
    folder = _work(root_dir, "clusters")
    done = folder / "DONE"
    if not done.exists():
        root = np.arange(cat.n, dtype=np.int64)
        blocked = 0
        for k in range(parts):
            z = _load_npy(folder / f"bucket-{k:05d}.npz")
            root[z["rows"]] = z["root"]
            blocked += int(z["blocked"][0])
        counts = np.bincount(root, minlength=cat.n) if cat.n else np.zeros(0, dtype=np.int64)
        size = counts[root] if cat.n else counts
        rows = np.flatnonzero(size >= 2)
        members = rows[np.argsort(root[rows], kind="stable")]
        for name, arr in (("root", root), ("size", size), ("members", members)):
            _write_i64(folder / f"{name}.i64", arr)
        write_json_atomic(done, {"blocked": blocked})
    blocked = int(read_json(done)["blocked"])  # type: ignore[index]  # written just above
    root, size, members = cluster_arrays(root_dir, cat.n)
    ids, tenant_col = cat.meta.column("entity_id"), cat.meta.column("tenant")
    order = np.asarray(members)
    write_parquet_atomic(root_dir / "clusters.parquet", pa.table({
        "entity_id": ids.take(pa.array(order, pa.int64())),
        "cluster_id": ids.take(pa.array(root[order], pa.int64())),
        "cluster_size": pa.array(size[order], pa.int64()),
        "tenant": tenant_col.take(pa.array(order, pa.int64())),
    }))
    return cluster_summary(cat, np.asarray(root), blocked, config.batch.top)


def _write_i64(path: Path, arr: np.ndarray) -> None:
    def write(f: Any) -> None:
        f.write(arr.astype("<i8").tobytes())

    write_file_atomic(path, write)


def cluster_arrays(out: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(root, size, members) of ``work/clusters/``, memory-mapped."""
    folder = _work(out, "clusters")

    def mm(name: str) -> np.ndarray:
        path = folder / f"{name}.i64"
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.memmap(path, dtype="<i8", mode="r")

    root, size, members = mm("root"), mm("size"), mm("members")
    if len(root) != n or len(size) != n:
        raise RuntimeError(f"{folder} holds clusters of {len(root)} rows, not {n}: remove it to rebuild")
    return root, size, members


# ------------------------------------------------------------------ 5. outputs
def _pairs_parquet_task(out: str, kind: Kind, config_json: str, keys: list[tuple[str, Modality]],
                        parts: int) -> None:
    """``pairs.parquet`` from the ``lo`` files: per modality, tenant by tenant, range by range."""
    from serving.batch.job import write_pair_stream

    root, cat, _ = _open(out, kind, config_json)
    mods = list(dict.fromkeys(m for _, m in keys))

    def stream(m: Modality) -> Iterator[Pairs]:
        for t, mm in keys:
            if mm == m:
                for r in range(parts):
                    yield _read(_canon_path(root, t, m, "lo", r))

    write_pair_stream(root / "pairs.parquet", cat.meta.select(["entity_id", "tenant"]),
                      {m: stream(m) for m in mods})


def _banks_task(out: str, kind: Kind, config_json: str) -> Any:
    from serving.batch.signals import bank_hits

    _, cat, config = _open(out, kind, config_json)
    return bank_hits(cat, config.data_dir, config.indexes)


def _category_refs_task(out: str, kind: Kind, config_json: str) -> Any:
    from serving.batch.signals import price_references

    _, cat, _ = _open(out, kind, config_json)
    return price_references(cat) if cat.kind == "listing" else {}


def _analysis_path(out: Path, name: str) -> Path:
    return _work(out, "review_analysis", name)


def _review_analysis_task(out: str, kind: Kind, config_json: str, labelled: bool, observed_at: str) -> None:
    """The reviews' behaviour, rings and collective scores over the whole run (one task: the
    graph is global), written for the range tasks: ``rows.arrow`` (per row, its review signals
    as a JSON array, in row order) and ``entities.jsonl`` (the reviewer, product and seller
    signals, written last: the task's completion mark)."""
    from serving.batch.signals import read_labels, review_analysis, review_extras

    root, cat, config = _open(out, kind, config_json)
    entities = _analysis_path(root, "entities.jsonl")
    if entities.exists():
        return
    when = datetime.fromisoformat(observed_at)
    labels = read_labels(_work(root, "labels.jsonl")) if labelled else []
    analysis = review_analysis(cat, labels, config.signals.review_graph.graph_settings())
    extras = review_extras(analysis, when)
    schema = pa.schema([("signals", pa.large_string())])
    entities.parent.mkdir(parents=True, exist_ok=True)

    def write_rows(f: Any) -> None:
        with pa.ipc.new_file(f, schema) as writer:
            for start in range(0, cat.n, 4096):
                rows = [json.dumps(extras(row), ensure_ascii=False)
                        for row in range(start, min(cat.n, start + 4096))]
                writer.write_batch(pa.record_batch([pa.array(rows, pa.large_string())], schema=schema))

    def write_entities(f: Any) -> None:
        for s in analysis.entity_signals(when):
            f.write((json.dumps(s.to_json_dict(), ensure_ascii=False) + "\n").encode("utf-8"))

    write_file_atomic(_analysis_path(root, "rows.arrow"), write_rows)
    write_file_atomic(entities, write_entities)


def _signals_path(out: Path, r: int, suffix: str) -> Path:
    return _work(out, "signals", f"{r:05d}.{suffix}")


def _signals_task(out: str, kind: Kind, config_json: str, keys: list[tuple[str, Modality]], r: int,
                  span: int, observed_at: str, banks: Any, category_refs: Any, analysed: None) -> None:
    """The signals of range ``r``'s records (``work/signals/<r>.jsonl``) and the roll-ups'
    partial stats of its sellers or products (``<r>.json``, written last). ``analysed``: the
    review analysis task's result (reviews; Ray starts this task once it is done)."""
    from indexes.banks import ReviewBankJudge
    from serving.batch.signals import (
        Adjacency,
        SignalTally,
        iter_record_signals,
        open_review_judge,
        write_jsonl,
    )

    root, cat, config = _open(out, kind, config_json)
    stats_path = _signals_path(root, r, "json")
    if stats_path.exists():
        return
    start, end = min(cat.n, r * span), min(cat.n, (r + 1) * span)
    lo, hi = _range_pairs(root, keys, "lo", r), _range_pairs(root, keys, "hi", r)
    adj = Adjacency.of_rows(start, end, cat.n, {m: (lo[m], hi[m]) for m in lo})
    del lo, hi
    root_arr, size, members = cluster_arrays(root, cat.n)
    tally = SignalTally()
    products: dict[tuple[str, str], ProductStats] = {}
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    when = datetime.fromisoformat(observed_at)
    extras = _analysed_rows(root, cat.n, start, end) if cat.kind == "review" else None
    review_banks = open_review_judge(cat, config.data_dir, config.indexes)
    try:
        judge = ReviewBankJudge([(review_banks, None)]) if review_banks is not None else None
        write_jsonl(_signals_path(root, r, "jsonl"),
                    iter_record_signals(cat, start, end, root_arr, size, members, adj, banks, category_refs,
                                        when, tally, products, judge, extras), tally)
    finally:
        if review_banks is not None:
            review_banks.close()
    write_json_atomic(stats_path, {
        "signals": tally.signals, "bank_rows": sum(1 for row in banks if start <= row < end),
        "sellers": [[s.tenant, s.seller_id, s.listings, s.duplicated_listings, sorted(s.cluster_ids),
                     s.bank_matches, tally.cross_seller[k]] for k, s in tally.by_owner.items()],
        "products": [[p.tenant, p.product_id, p.reviews, p.templated_reviews] for p in products.values()],
    })


def _analysed_rows(root: Path, n: int, start: int, end: int) -> Callable[[int], list[dict[str, Any]]]:
    """Rows ``start..end-1`` of the review analysis' ``rows.arrow``, as ``review_extras``."""
    path = _analysis_path(root, "rows.arrow")
    with pa.memory_map(str(path)) as source:
        column = pa.ipc.open_file(source).read_all().column("signals")
        if len(column) != n:
            raise RuntimeError(f"{path} holds {len(column)} rows, the catalogue {n}")
        texts = column.slice(start, end - start).to_pylist()

    def extras(row: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(texts[row - start])
        return found

    return extras


def _merge_signals_task(out: str, kind: Kind, config_json: str, parts: int,
                        observed_at: str) -> dict[str, Any]:
    """The partial stats merged, ``signals.jsonl`` written: the ranges' parts, then the roll-ups."""
    from serving.batch.job import top_sellers
    from serving.batch.signals import SignalTally, iter_rollups

    root, _, config = _open(out, kind, config_json)
    tally = SignalTally()
    products: dict[tuple[str, str], ProductStats] = {}
    records = bank_rows = 0
    for r in range(parts):
        part = read_json(_signals_path(root, r, "json"))
        if not isinstance(part, dict):
            raise RuntimeError(f"{_signals_path(root, r, 'json')} does not hold a JSON object")
        records += int(part["signals"])
        bank_rows += int(part["bank_rows"])
        for tenant, seller, listings, dup, clusters, bank, cross in part["sellers"]:
            s = SellerStats(tenant, seller, listings, dup, set(clusters), bank)
            key = (tenant, seller)
            if key in tally.by_owner:
                tally.by_owner[key].merge(s)
            else:
                tally.by_owner[key] = s
            tally.cross_seller[key] += cross
        for tenant, product, reviews, templated in part["products"]:
            p = ProductStats(tenant, product, reviews, templated)
            if (tenant, product) in products:
                products[(tenant, product)].merge(p)
            else:
                products[(tenant, product)] = p
    rollups = 0

    def write(f: Any) -> None:
        nonlocal rollups
        for r in range(parts):
            with open(_signals_path(root, r, "jsonl"), "rb") as part_file:
                shutil.copyfileobj(part_file, f, 1 << 20)
        for row in iter_rollups(tally, products, datetime.fromisoformat(observed_at)):
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            rollups += 1
        entities = _analysis_path(root, "entities.jsonl")
        if entities.exists():  # reviews: the reviewer, product and seller signals last
            with open(entities, "rb") as part_file:
                for line in part_file:
                    f.write(line)
                    rollups += 1

    write_file_atomic(root / "signals.jsonl", write)
    return {"signals": records + rollups, "top_sellers": top_sellers(tally, config.batch.top),
            "bank_rows": bank_rows}

