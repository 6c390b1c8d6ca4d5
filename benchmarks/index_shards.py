"""What splitting a tenant over index shards costs a request: the same service, two tenants, side by side.

``python -m benchmarks.index_shards [--quick]``

One Ray Serve instance of the real application (``build_app``), local mode, with
``service.index_shards: {count: 2, tenants: [split]}``: tenant ``split`` has its listing text,
PDQ and SSCD indexes spread over two ``index-shard`` deployments, tenant ``whole`` keeps them
in its catalogue shard. Both are pre-filled with the same listings (real titles from the
listing-pair sets, a third of them with a photo), then one client posts copies of pre-filled
listings (each from a new seller) to the two tenants in turn, so every measured request
searches, decides, stores, indexes and updates its original's signals. Reported: p50 / p95 of
each tenant and their ratio, measured in the same run, and whether every copy found its
original in both tenants. On one machine the shards' hop is a local one; across nodes add the
network's round trip to each fan-out.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import finish, listing_titles, parse_args
from benchmarks.latency import _free_port, _serve_start, _wait_ready, latency_summary
from tests.serving.api.helpers import photo_b64

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "var" / "models"
TENANTS = ("whole", "split")


def _listing(i: int, titles: list[str], seller: str, listing_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"listing_id": listing_id, "seller_id": seller, "title": titles[i % len(titles)],
                            "description": f"Item {i}, collection or post", "price": float(10 + i % 300),
                            "currency": "GBP", "category": f"c{i % 12}"}
    if i % 3 == 0:
        body["images"] = [{"data_b64": photo_b64(10_000 + i)}]
    return body


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0])
    prefill, measured = (150, 40) if args.quick else (1200, 200)
    titles = listing_titles(prefill)
    import ray
    from ray import serve

    from serving.config import MarketGuardConfig
    from serving.deployments.app import APP_NAME, build_app

    with tempfile.TemporaryDirectory(prefix="mg-index-shards-") as tmp:
        data_dir = Path(tmp) / "state"
        data_dir.mkdir()
        MODELS.mkdir(parents=True, exist_ok=True)
        os.symlink(MODELS, data_dir / "models")
        port = _free_port()
        config = MarketGuardConfig.model_validate({"data_dir": str(data_dir), "service": {
            "port": port, "index_shards": {"count": 2, "tenants": ["split"], "num_cpus": 0.1}}})
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            _serve_start(serve, port)
            serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
            _wait_ready(port, 300)
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=120) as http:
                t0 = time.perf_counter()
                for tenant in TENANTS:
                    for start in range(0, prefill, 64):
                        items = [{**_listing(i, titles, f"seller-{i}", f"P{i}"), "tenant": tenant}
                                 for i in range(start, min(prefill, start + 64))]
                        r = http.post("/v1/listings", json={"items": items})
                        r.raise_for_status()
                prefill_s = time.perf_counter() - t0
                ms: dict[str, list[float]] = {t: [] for t in TENANTS}
                found: dict[str, int] = dict.fromkeys(TENANTS, 0)
                rng = np.random.default_rng(3)
                for k in range(measured):
                    i = int(rng.integers(prefill))
                    order = TENANTS if k % 2 == 0 else TENANTS[::-1]  # cancels drift between the two
                    for tenant in order:
                        body = {**_listing(i, titles, f"copier-{k}", f"C{k}"), "tenant": tenant}
                        t1 = time.perf_counter()
                        r = http.post("/v1/listings", json=body)
                        ms[tenant].append((time.perf_counter() - t1) * 1000)
                        r.raise_for_status()
                        matches = {m["id"] for s in r.json()["signals"] if s["name"] == "near_duplicate.count"
                                   for m in s["evidence"].get("matches", [])}
                        found[tenant] += f"P{i}" in matches
        finally:
            serve.shutdown()
            ray.shutdown()
    whole, split = latency_summary(ms["whole"]), latency_summary(ms["split"])
    figures = {
        "p50_ms_whole": whole["p50"], "p50_ms_split": split["p50"],
        "p95_ms_whole": whole["p95"], "p95_ms_split": split["p95"],
        "split_ratio_p50": round(float(split["p50"] or 0) / float(whole["p50"] or 1), 3),
        "split_extra_ms_p50": round(float(split["p50"] or 0) - float(whole["p50"] or 0), 2),
        "copies_found_whole": round(found["whole"] / measured, 4),
        "copies_found_split": round(found["split"] / measured, 4),
        "prefill_per_tenant": prefill, "measured_per_tenant": measured, "index_shards": 2,
        "prefill_s": round(prefill_s, 1), "quick": args.quick,
    }
    finish("index_shards", figures, quick=args.quick, packages=("ray", "faiss-cpu", "onnxruntime"),
           details={"whole": whole, "split": split, "image_share": "1 in 3 listings has an 400x300 JPEG"})


if __name__ == "__main__":
    main()
