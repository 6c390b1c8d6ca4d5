"""What one review write costs the service, by the size of what it touches.

``python -m benchmarks.review_writes [--quick]``

In process, no Serve: the catalogue engine on a fresh SQLite data dir (``models/`` links to
``./var/models``), text-only configuration, reviews without text (the text path, embedding and
near-duplicate search, is :mod:`benchmarks.latency`'s and :mod:`benchmarks.review_text`'s; here
it would hide what grows). Each measured write is ``engine.score_reviews(extract([review]))``:
the behavioural fold with its states, the reviewer's ring update from its neighbourhood (every
stored review of the products it reviewed, at most ``ring_product_reviews`` of each), the
product's ``product.templated_review_share`` recount and the one store transaction.

Scenarios, each after its own prefill through the same write path, then ``WRITES`` measured
writes (median and 95th percentile):

- ``small``: a new account reviews a product with 10 reviews;
- ``big_product``: a new account reviews a product with ``BIG`` reviews (3,000 in a full run:
  more than the ring slice of 2,000, so the slice's bound shows; 500 with ``--quick``);
- ``heavy_reviewer``: an account that has reviewed ``HEAVY`` products of 10 reviews each
  reviews one more; its ring update reads all of them. The products' other reviewers come from
  a pool of 30 accounts reviewing on the same days, so the account is in dozens of frequent
  co-review pairs and the group search runs for each.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import finish, parse_args
from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.scoring.engine import CatalogueEngine
from serving.scoring.extraction import FastExtraction
from signals.schemas import Review

ROOT = Path(__file__).resolve().parents[1]
MODELS_CACHE = ROOT / "var" / "models"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WRITES = 40


def _config(data_dir: Path) -> MarketGuardConfig:
    off = {"enabled": False}
    return MarketGuardConfig.model_validate({
        "data_dir": str(data_dir),
        "signals": {"images": {"pdq": off, "sscd": off, "local": off, "ocr": off, "nsfw": off}}})


class Writer:
    def __init__(self, data_dir: Path) -> None:
        cfg = _config(data_dir)
        self.extraction = FastExtraction.build(cfg.signals, data_dir)
        models, dims = self.extraction.models()
        self.engine: CatalogueEngine = open_engine(cfg, models, dims)
        self.n = 0

    def review(self, product: str, reviewer: str, day: float) -> Review:
        self.n += 1
        return Review(review_id=f"R{self.n:07d}", product_id=product, seller_id="S0", reviewer_id=reviewer,
                      rating=1 + self.n % 5, text="", created_at=T0 + timedelta(days=day))

    def write(self, review: Review) -> float:
        t = time.perf_counter()
        scored = self.engine.score_reviews(self.extraction.extract("review", [review]))
        took = time.perf_counter() - t
        if scored[0].error is not None:
            raise RuntimeError(f"write of {review.review_id} failed: {scored[0].error}")
        return took


def _spread(n: int, days: float) -> Iterator[float]:
    return (days * k / max(n, 1) for k in range(n))


def measure(writer: Writer, prefill: list[Review], make: Callable[[int], Review],
            writes: int) -> dict[str, Any]:
    t = time.perf_counter()
    for r in prefill:
        writer.write(r)
    took = sorted(writer.write(make(k)) * 1000.0 for k in range(writes))
    return {"prefill_reviews": len(prefill), "prefill_s": round(time.perf_counter() - t, 1),
            "writes": writes, "p50_ms": round(statistics.median(took), 1),
            "p95_ms": round(took[int(0.95 * (len(took) - 1))], 1)}


def run(data_dir: Path, big: int, heavy: int, writes: int = WRITES) -> dict[str, Any]:
    """The three scenarios on a fresh engine in ``data_dir`` (its ``models/`` in place)."""
    w = Writer(data_dir)
    try:
        out: dict[str, Any] = {"big_product_reviews": big, "heavy_reviewer_products": heavy}
        out["small"] = measure(
            w, [w.review(f"SMALL{k // 10}", f"U{k}", day) for k, day in enumerate(_spread(10 * writes, 300))],
            lambda k: w.review(f"SMALL{k}", f"NEWS{k}", 301.0), writes)
        out["big_product"] = measure(
            w, [w.review("BIG", f"B{k}", day) for k, day in enumerate(_spread(big, 300))],
            lambda k: w.review("BIG", f"NEWB{k}", 301.0), writes)
        prefill = []
        for p, day in enumerate(_spread(heavy, 300)):
            prefill += [w.review(f"H{p}", f"HU{(p + k) % 30}", day + k / 10) for k in range(9)]
            prefill.append(w.review(f"H{p}", "HEAVY", day + 1))
        out["heavy_reviewer"] = measure(w, prefill, lambda k: w.review(f"HNEW{k}", "HEAVY", 301.0 + k / 100),
                                        writes)
        found = w.engine.entity_signals("default", "reviewer", "HEAVY", False) or {"signals": []}
        ring = next(x for x in found["signals"] if x["name"] == "reviewer.ring_score")
        out["heavy_reviewer"]["ring_partners"] = ring["evidence"]["partners"]
    finally:
        w.engine.close()
    for name in ("small", "big_product", "heavy_reviewer"):
        out[f"p50_ms_{name}"] = out[name]["p50_ms"]
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    big, heavy = (500, 40) if args.quick else (3000, 300)
    with tempfile.TemporaryDirectory(prefix="marketguard-review-writes-") as d:
        data_dir = Path(d)
        (data_dir / "models").symlink_to(MODELS_CACHE)
        figures = {"quick": args.quick, **run(data_dir, big, heavy)}
    finish("review_writes", figures, quick=args.quick, packages=("numpy", "onnxruntime"))


if __name__ == "__main__":
    main()
