"""The batch job (``marketguard batch``): throughput, peak memory, near-duplicate quality.

``python -m benchmarks.batch [--quick]``

(1) Throughput, listings per second on this machine, for a text-only catalogue
    (content rules + MiniLM text embedding; images off) and a text+image catalogue
    (the same plus PDQ and SSCD-distilled; OCR and NSFW off). Each is measured
    against the raw extractor throughput of the same run: the very
    ``signals.registry.build_registry(config.signals, data_dir)`` run in this
    process over the same records in batches of ``batch.batch_size``, timing only
    ``extract_batch`` after a warm-up. The job's figures are rows / its extract stage
    (read + validate + extractors on Ray Data, actor start-up and model loading
    included) and rows / its whole wall time (extract, catalogue, indexes, pairs,
    outputs). ``throughput_ratio`` is the text-only extract stage over raw (the
    goal: >= 0.8); ``end_to_end_ratio`` the text-only whole job over raw.
(2) Peak memory of the job on a synthetic catalogue of 1M rows (full run only) and of
    100k rows, to show memory against catalogue size: content rules + text embedding,
    no images, listings with a title and no description but the contact lines (a third
    of the tokens to embed), the default near-duplicate rule (50 text candidates a
    listing decided by the shipped pair scorer). Each run is its own driver process
    connected to this process's Ray, sampled from ``/proc``: the driver's VmHWM and
    RssAnon (also per stage), the Ray workers' and daemons' RssAnon, the index bytes
    on disk, and each stage's time (the index and all-pairs stage as rows a second).
(3) Near-duplicate quality on ``../shared/data/listing_pairs/`` (Abt-Buy,
    Amazon-Google, Walmart-Amazon from DeepMatcher/Magellan and WDC Products, as
    packaged by megagonlabs/ditto): each dataset's ``test`` records become a
    listings catalogue; a pair scorer is fitted on that dataset's ``train`` (weights)
    and ``valid`` (threshold) only, each labelled pair featurised in its records'
    neighbourhoods in its split, with cosines computed the way the job computes them
    (the embedding of title + description), saved as JSON and named by
    ``indexes.near_duplicates.pair_scorer``; the job runs with images off and its
    ``listing_text`` pairs are scored against the labelled test pairs. A predicted
    pair counts only if it is a labelled test pair; recall is over all labelled
    matches (a labelled pair whose two sides are the same record is skipped).
    Candidate recall (labelled matches the job's candidate generation puts
    in front of the scorer) and plain-cosine F1 (threshold tuned on ``valid``) are
    reported for context. The ``test`` split is never used to fit anything.

The synthetic catalogues mix real product titles (``listing_pairs``) with composed
ones, descriptions from templates, reposted near-duplicates and some off-platform
contact details; images are resized/cropped JPEG copies of ``images/photos/``,
several listings sharing each. ``--quick`` (under a minute): 400 text rows, 60
text+image rows, no memory runs, one ER dataset (Abt-Buy) on a subsample.

``--parts throughput,memory,er`` runs only the named parts (the whole run takes about
three hours on 2 cores, the 1M memory run most of it); the results file then keeps the
other parts' figures from the previous run, and ``details.parts`` records the date
and machine of each part's figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, SHARED_DATA, finish, listing_titles, machine, median

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "var" / "models"
PHOTOS = SHARED_DATA / "images" / "photos"
PACKAGES = ("ray", "pyarrow", "numpy", "onnxruntime", "faiss-cpu", "tokenizers", "pillow")
PARTS = ("throughput", "memory", "er")
RAY_CPUS = 2  # this machine's cores: one extractor actor (2 ONNX threads), read tasks beside it

log = logging.getLogger("benchmarks.batch")


# ============================================================== synthetic catalogue
_BRANDS = ("Samsung", "Sony", "LG", "Apple", "Canon", "Nikon", "Bosch", "Philips", "Logitech", "HP",
           "Dell", "Lenovo", "Asus", "Acer", "Panasonic", "JBL", "Bose", "Nike", "Adidas", "Dyson",
           "Makita", "DeWalt", "Garmin", "Anker", "SanDisk", "Kingston", "Seagate", "Corsair",
           "Razer", "Xiaomi", "Huawei", "Braun", "Tefal", "Lego", "Hasbro", "Puma", "Casio", "Seiko")
_PRODUCTS = (  # (category, noun, spec formats)
    ("phones", "Smartphone", ("{gb}GB", "{gb}GB {colour}", "5G {gb}GB")),
    ("computers", "Laptop", ('{inch}" {gb}GB SSD', "{ram}GB RAM {gb}GB SSD", 'Core i{cpu} {inch}"')),
    ("computers", "Monitor", ('{inch}" {res}', '{inch} inch {hz}Hz', "{res} IPS")),
    ("audio", "Wireless Headphones", ("Noise Cancelling", "Over-Ear {colour}", "Bluetooth 5.{v}")),
    ("audio", "Bluetooth Speaker", ("{w}W", "Waterproof {w}W {colour}", "Portable")),
    ("cameras", "Digital Camera", ("{mp}MP", "{mp}MP {zoom}x Zoom", "Mirrorless Body")),
    ("storage", "microSD Card", ("{gb}GB Class 10", "{gb}GB UHS-I", "{gb}GB A2 V30")),
    ("storage", "External Hard Drive", ("{tb}TB USB 3.0", "{tb}TB Portable", "{tb}TB {colour}")),
    ("home", "Vacuum Cleaner", ("Cordless {w}W", "Bagless {colour}", "Robot")),
    ("tools", "Cordless Drill", ("{v8}V", "{v8}V Brushless", "{v8}V with 2 Batteries")),
    ("kitchen", "Coffee Machine", ("{bar} Bar", "Espresso {colour}", "{l}L Filter")),
    ("shoes", "Running Shoes", ("Size {size} {colour}", "Men's Size {size}", "Women's {colour}")),
    ("watches", "Smartwatch", ("{mm}mm GPS", "{mm}mm {colour}", "GPS + Cellular")),
    ("toys", "Building Set", ("{pcs} Pieces", "Age {age}+", "{pcs} pcs Starter Kit")),
)
_COLOURS = ("Black", "White", "Silver", "Blue", "Red", "Graphite", "Rose Gold", "Green", "Grey")
_CONDITIONS = ("brand new, sealed in box", "like new, used twice", "used, good condition",
               "refurbished with 12 months warranty", "open box, all accessories included",
               "used, light scratches on the back")
_SHIPPING = ("Ships within {d} business days from {city}.", "Free tracked delivery; collection in {city} "
             "also possible.", "Dispatched from our {city} warehouse within {d} days.",
             "Local pickup in {city} or courier at cost.")
_CITIES = ("Leeds", "Manchester", "Berlin", "Lyon", "Madrid", "Chicago", "Austin", "Toronto", "Milan")
_EXTRAS = ("Original packaging and receipt included.", "Comes with charger and manual.",
           "Smoke-free, pet-free home.", "Price is firm, no trades.", "Invoice available on request.",
           "Genuine product, bought from an authorised retailer.", "Battery holds charge well.",
           "Please check the photos for the exact condition.", "Bundle discounts available.")
_CONTACTS = ("For a faster deal WhatsApp me on +44 7700 900{n:03d}.",
             "Email me at deals{n}@gmail.com, cheaper outside the platform.",
             "Call or text 0{n:03d} 555 0134 to arrange.", "Message me on telegram @seller_{n}.")


def _clean_title(t: str) -> str:
    """A real title from listing_pairs without the WDC quoting (``"..."@en``)."""
    t = re.sub(r'"@[a-zA-Z-]+', " ", t).replace('"', " ")
    return " ".join(t.split())[:200]


def _spec(fmt: str, rng: np.random.Generator) -> str:
    return fmt.format(
        gb=int(rng.choice([16, 32, 64, 128, 256, 512])), colour=rng.choice(_COLOURS),
        inch=int(rng.choice([13, 14, 15, 17, 24, 27, 32])), ram=int(rng.choice([8, 16, 32])),
        cpu=int(rng.choice([3, 5, 7, 9])), res=rng.choice(["Full HD", "4K UHD", "QHD"]),
        hz=int(rng.choice([60, 75, 144, 165])), v=int(rng.integers(0, 4)),
        w=int(rng.choice([10, 20, 40, 150, 400, 900])), mp=int(rng.choice([12, 20, 24, 45])),
        zoom=int(rng.choice([3, 5, 10, 30])), tb=int(rng.choice([1, 2, 4, 5])),
        v8=int(rng.choice([12, 18, 20])), bar=int(rng.choice([9, 15, 19])),
        l=float(rng.choice([1.2, 1.5, 1.8])), size=float(rng.choice([7, 8.5, 9, 10, 11.5])),
        mm=int(rng.choice([40, 42, 44, 46])), pcs=int(rng.choice([250, 500, 1200, 3000])),
        age=int(rng.choice([4, 6, 9, 12])))


def _model_code(rng: np.random.Generator) -> str:
    letters = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTVWXZ"), int(rng.integers(1, 4))))
    sep = rng.choice(["", "-", " "], p=[0.6, 0.3, 0.1])
    return f"{letters}{sep}{int(rng.integers(10, 99999))}{rng.choice(['', 'X', 'B', 'W', 'Pro'])}"


def synthetic_listings(n: int, seed: int = 0, images: Sequence[Path] = (),
                       real_titles: Sequence[str] = (), short: bool = False) -> Iterator[dict[str, Any]]:
    """``n`` listing records: about a third real titles, the rest composed; ~8% reposts.

    With ``images``, each listing names 1-3 of them by path, so several listings share
    each image (a marketplace's re-used and stolen photos). ``short``: no description
    but the off-platform contact lines (the memory runs: a third of the tokens to embed).
    """
    rng = np.random.default_rng(seed)
    recent: list[tuple[str, str, float]] = []
    sellers = max(2, n // 25)
    for i in range(n):
        category = None
        if recent and rng.random() < 0.08:  # a repost: same item, small edits, maybe another seller
            title, category, price = recent[int(rng.integers(len(recent)))]
            title = rng.choice([title, title.upper(), f"{title} - NEW", f"** {title} **",
                                title.replace(" ", "  ", 1), f"{title} (free shipping)"])
            price = round(price * float(rng.uniform(0.85, 1.1)), 2)
        elif real_titles and rng.random() < 0.35:
            title = _clean_title(real_titles[int(rng.integers(len(real_titles)))])
            price = round(float(rng.lognormal(4.0, 1.1)), 2)
        else:
            category, noun, specs = _PRODUCTS[int(rng.integers(len(_PRODUCTS)))]
            brand = _BRANDS[int(rng.integers(len(_BRANDS)))]
            title = f"{brand} {_model_code(rng)} {_spec(rng.choice(specs), rng)} {noun}"
            price = round(float(rng.lognormal(4.5, 1.0)), 2)
        title = title or "Unnamed item"
        recent.append((title, category or "other", price))
        if len(recent) > 2000:
            recent.pop(0)
        parts = [f"{_CONDITIONS[int(rng.integers(len(_CONDITIONS)))].capitalize()}."]
        parts.append(_SHIPPING[int(rng.integers(len(_SHIPPING)))].format(
            d=int(rng.integers(1, 5)), city=_CITIES[int(rng.integers(len(_CITIES)))]))
        if short:
            parts = []
        else:
            parts += list(rng.choice(_EXTRAS, int(rng.integers(0, 3)), replace=False))
        if rng.random() < 0.03:
            parts.append(_CONTACTS[int(rng.integers(len(_CONTACTS)))].format(n=int(rng.integers(1000))))
        rec: dict[str, Any] = {
            "listing_id": f"L{i:07d}", "seller_id": f"S{int(rng.integers(sellers)):06d}",
            "title": title, "description": " ".join(parts), "price": price,
            "currency": "USD", "category": category or "other",
        }
        if images:
            k = int(rng.integers(1, 4))
            rec["images"] = [{"path": str(images[int(j)])} for j in rng.choice(len(images), k, replace=False)]
        yield rec


def write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` listing-photo-like JPEGs: random crops of ``images/photos/``, 640-1000 px."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im = im.crop((x, y, x + cw, y + ch))
            side = int(rng.integers(640, 1000))
            scale = side / max(im.size)
            im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))))
            path = folder / f"img{i:05d}.jpg"
            im.save(path, quality=int(rng.integers(75, 92)))
        out.append(path)
    return out


# ============================================================== configs
def make_config(data_dir: Path, *, images: bool = False, scorer: str | None = None,
                batch_size: int | None = None, near_duplicates: dict[str, Any] | None = None,
                pairs_on: str = "cluster") -> Any:
    """The job's config: content rules + text embedding, and PDQ + SSCD-distilled if ``images``.

    OCR and NSFW (the deep image tier) stay off in every configuration here.
    """
    from serving.config import MarketGuardConfig

    cfg = MarketGuardConfig(data_dir=data_dir)
    im = cfg.signals.images
    im.pdq.enabled = images
    im.sscd.enabled = images
    im.sscd.model = "sscd_distilled"
    im.ocr.enabled = False
    im.nsfw.enabled = False
    if scorer is not None:
        cfg.indexes.near_duplicates.pair_scorer = scorer
    if batch_size is not None:
        cfg.batch.batch_size = batch_size
    cfg.batch.pairs_on = pairs_on  # type: ignore[assignment]  # validated below
    for key, value in (near_duplicates or {}).items():
        setattr(cfg.indexes.near_duplicates, key, value)
    return MarketGuardConfig.model_validate(cfg.model_dump())


def state_dir(tmp: Path) -> Path:
    """A fresh data_dir whose models/ is the project's export cache (no banks)."""
    d = tmp / "state"
    d.mkdir(parents=True, exist_ok=True)
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    if not (d / "models").exists():
        os.symlink(MODELS_DIR, d / "models")
    return d


# ============================================================== raw vs job throughput
def read_records(path: Path) -> list[Any]:
    from signals.schemas import Listing, parse_record

    with open(path, encoding="utf-8") as f:
        return [parse_record(Listing, json.loads(line)) for line in f if line.strip()]


def raw_throughput(config: Any, records: list[Any], repeats: int) -> dict[str, Any]:
    """The registry in this process: rows/s of ``extract_batch`` alone, median of ``repeats``."""
    from signals.registry import build_registry

    sig = config.signals.model_copy(deep=True)
    sig.images.decode.allow_paths = True  # as the batch job's actors do
    registry = build_registry(sig, config.data_dir)
    bs = config.batch.batch_size
    batches = [records[i:i + bs] for i in range(0, len(records), bs)]
    registry.extract_batch("listing", batches[0])  # warm-up: model loads, first decode
    rates = []
    for _ in range(repeats):
        spent = 0.0
        for b in batches:
            t = time.perf_counter()
            registry.extract_batch("listing", b)
            spent += time.perf_counter() - t
        rates.append(len(records) / spent)
    del registry
    return {"rows_s": round(median(rates), 1), "rounds": [round(r, 1) for r in rates]}


def run_job(config: Any, input_path: Path, out: Path,
            address: str | None = None) -> tuple[dict[str, Any], float]:
    from serving.batch.job import BatchRequest, run_batch

    t = time.perf_counter()
    summary = run_batch(BatchRequest("listings", input_path, out, address=address, progress="off"), config)
    return summary, time.perf_counter() - t


def steady_rate(out: Path) -> float | None:
    """Rows/s between the first and the last unit part written (start-up excluded)."""
    parts = sorted((out / "work" / "units").glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(parts) < 3:
        return None
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(p).num_rows for p in parts[1:])
    span = parts[-1].stat().st_mtime - parts[0].stat().st_mtime
    return round(rows / span, 1) if span > 0 else None


def throughput(name: str, config: Any, input_path: Path, tmp: Path, rows: int, rounds: int) -> dict[str, Any]:
    """Raw registry vs the job over the same file, round-robin (raw, job, raw, job, ...).

    The box may be shared: the ratios are medians of per-round ratios, each round's two
    measurements having seen about the same load.
    """
    records = read_records(input_path)
    raws, jobs = [], []
    for r in range(rounds):
        raws.append(raw_throughput(config, records, 1)["rows_s"])
        out = tmp / f"{name}-job{r}"
        timeline = CpuTimeline(os.getpid())
        timeline.start()
        t_job = time.monotonic()
        summary, wall = run_job(config, input_path, out)
        timeline.stop()
        cpu = timeline.window(*pairs_outputs_window(t_job, summary["timings"], wall))
        extract_s = float(summary["timings"]["extract_s"])
        jobs.append({"extract_rows_s": round(rows / extract_s, 1), "end_to_end_rows_s": round(rows / wall, 1),
                     "steady_extract_rows_s": steady_rate(out), "wall_s": round(wall, 2),
                     "pairs_outputs_cpu": cpu,
                     "timings": summary["timings"], "pairs": summary["pairs"],
                     "accepted": summary["accepted"], "rejected": summary["rejected"],
                     "images": summary.get("images", 0)})
        shutil.rmtree(out, ignore_errors=True)
    return {"rows": rows, "rounds": rounds, "batch_size": config.batch.batch_size,
            "raw_rows_s": round(median(raws), 1), "raw_rounds": raws,
            "job_extract_rows_s": round(median([j["extract_rows_s"] for j in jobs]), 1),
            "job_end_to_end_rows_s": round(median([j["end_to_end_rows_s"] for j in jobs]), 1),
            "extract_ratio": round(median([j["extract_rows_s"] / r
                                           for j, r in zip(jobs, raws, strict=True)]), 3),
            "end_to_end_ratio": round(median([j["end_to_end_rows_s"] / r
                                              for j, r in zip(jobs, raws, strict=True)]), 3),
            "driver_cpu_share": _median_share(jobs),
            "pairs_on": config.batch.pairs_on,
            "jobs": jobs}


def _median_share(jobs: list[dict[str, Any]]) -> float | None:
    shares = [j["pairs_outputs_cpu"]["driver_cpu_share"] for j in jobs
              if j["pairs_outputs_cpu"]["driver_cpu_share"] is not None]
    return round(median(shares), 4) if shares else None


# ============================================================== peak memory
def _status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of a process, in kB (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


class ProcessSampler:
    """Samples the memory of this process's descendants (the Ray daemons and workers) from /proc.

    ``exclude`` (a driver started as a subprocess) is reported by itself, not with Ray's.
    Peaks: the sum of the Ray workers' RssAnon, the largest single worker's RssAnon and
    RSS, and the sum of the other daemons' (raylet, GCS, agents) RssAnon.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.exclude: set[int] = set()
        self.peak = {"workers_anon_kb": 0, "worker_max_anon_kb": 0, "worker_max_rss_kb": 0,
                     "daemons_anon_kb": 0, "workers": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        kids = _children()
        todo, seen = list(kids.get(os.getpid(), [])), []
        while todo:
            pid = todo.pop()
            if pid in self.exclude:
                continue
            seen.append(pid)
            todo.extend(kids.get(pid, []))
        workers_anon = daemons_anon = n = 0
        for pid in seen:
            st = _status(pid)
            if not st:
                continue
            if _comm(pid).startswith("ray::"):
                n += 1
                workers_anon += st.get("RssAnon", 0)
                self.peak["worker_max_anon_kb"] = max(self.peak["worker_max_anon_kb"], st.get("RssAnon", 0))
                self.peak["worker_max_rss_kb"] = max(self.peak["worker_max_rss_kb"], st.get("VmRSS", 0))
            else:
                daemons_anon += st.get("RssAnon", 0)
        self.peak["workers_anon_kb"] = max(self.peak["workers_anon_kb"], workers_anon)
        self.peak["daemons_anon_kb"] = max(self.peak["daemons_anon_kb"], daemons_anon)
        self.peak["workers"] = max(self.peak["workers"], n)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


class SelfSampler(threading.Thread):
    """Peak RssAnon and VmRSS of this process, sampled (VmHWM gives the exact RSS peak)."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_anon_kb = self.peak_rss_kb = 0
        self.series: list[tuple[float, int]] = []  # (monotonic time, RssAnon kB)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            st = _status()
            self.peak_anon_kb = max(self.peak_anon_kb, st.get("RssAnon", 0))
            self.peak_rss_kb = max(self.peak_rss_kb, st.get("VmRSS", 0))
            self.series.append((time.monotonic(), st.get("RssAnon", 0)))
            self._stop_event.wait(self.interval)

    def peak_between(self, start: float, end: float) -> float:
        """Peak RssAnon (MB) sampled in [start, end] (monotonic time)."""
        return round(max((kb for t, kb in self.series if start <= t <= end), default=0) / 1024, 1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


class CpuTimeline(threading.Thread):
    """CPU seconds of the job's driver and of this process's Ray (its descendants), sampled.

    ``driver``: the job's driver process (this one, or a child driver). Every other
    descendant of this process is a Ray worker (``ray::...``) or a Ray daemon (raylet, GCS,
    agents). :meth:`window` gives each kind's CPU between two ``time.monotonic()`` moments:
    a process's CPU at a moment is its last sample at or before it (0 before it was first
    seen), so CPU spent after a process's last sample (one that died) is missed. When the
    driver is this process, the sampler thread's own CPU counts as the driver's (against it).
    """

    def __init__(self, driver: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.driver, self.interval = driver, interval
        self.kinds: dict[int, str] = {driver: "driver"}
        self.samples: list[tuple[float, dict[int, float]]] = []
        self._stop_event = threading.Event()

    def sample(self) -> None:
        kids = _children()
        todo, pids = list(kids.get(os.getpid(), [])), [self.driver]
        while todo:
            pid = todo.pop()
            if pid != self.driver:
                pids.append(pid)
            todo.extend(kids.get(pid, []))
        now: dict[int, float] = {}
        for pid in pids:
            cpu = _cpu_s(pid)
            if cpu is None:
                continue
            now[pid] = cpu
            if pid != self.driver and self.kinds.get(pid) != "worker":  # a worker starts unnamed
                self.kinds[pid] = "worker" if _comm(pid).startswith("ray::") else "daemon"
        self.samples.append((time.monotonic(), now))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()

    def _at(self, t: float) -> dict[int, float]:
        seen: dict[int, float] = {}
        for when, cpus in self.samples:
            if when > t:
                break
            seen.update(cpus)
        return seen

    def window(self, start: float, end: float) -> dict[str, Any]:
        """CPU seconds of the driver, the Ray workers and the daemons in [start, end], and the
        driver's share of their sum."""
        a, b = self._at(start), self._at(end)
        spent = {"driver": 0.0, "worker": 0.0, "daemon": 0.0}
        for pid, cpu in b.items():
            spent[self.kinds[pid]] += cpu - a.get(pid, 0.0)
        total = sum(spent.values())
        return {"driver_cpu_s": round(spent["driver"], 2), "workers_cpu_s": round(spent["worker"], 2),
                "daemons_cpu_s": round(spent["daemon"], 2), "seconds": round(end - start, 2),
                "driver_cpu_share": round(spent["driver"] / total, 4) if total > 0 else None}


def pairs_outputs_window(t_job: float, timings: dict[str, float], wall: float) -> tuple[float, float]:
    """The pairs and outputs stages' span in ``time.monotonic()`` time: from the end of the
    catalogue stage to the end of the job."""
    return t_job + float(timings["extract_s"]) + float(timings["catalogue_s"]), t_job + wall


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def memory_input(rows: int, path: Path) -> float:
    """The memory runs' catalogue, written by the parent: the driver process measured holds
    the job alone, not the title pool or the generator's garbage (which grew with rows)."""
    titles = listing_titles(10**6, pattern="*.txt*")
    t0 = time.perf_counter()
    write_jsonl(path, synthetic_listings(rows, seed=7, real_titles=titles, short=True))
    return time.perf_counter() - t0


def memory_child(rows: int, address: str, tmp: Path, pairs_on: str = "cluster") -> dict[str, Any]:
    """One memory run over ``tmp/catalogue.jsonl``, in its own driver process connected to the
    parent's Ray."""
    path = tmp / "catalogue.jsonl"
    config = make_config(state_dir(tmp), pairs_on=pairs_on)
    before = _status()
    sampler = SelfSampler()
    sampler.start()
    t_job = time.monotonic()
    summary, wall = run_job(config, path, tmp / "out", address=address)
    sampler.stop()
    after = _status()
    out = tmp / "out"
    stages, t = {}, t_job
    for key, seconds in summary["timings"].items():  # in stage order
        stages[key.removesuffix("_s")] = sampler.peak_between(t, t + float(seconds))
        t += float(seconds)
    return {
        "rows": rows, "pairs_on": pairs_on, "input_bytes": path.stat().st_size,
        "pairs_outputs_window": pairs_outputs_window(t_job, summary["timings"], wall),
        "wall_s": round(wall, 1), "rows_s": round(rows / wall, 1),
        "extract_rows_s": round(rows / float(summary["timings"]["extract_s"]), 1),
        "pairs_rows_s": round(rows / float(summary["timings"]["pairs_s"]), 1),
        "timings": summary["timings"], "pairs": summary["pairs"], "clusters": summary["clusters"],
        "driver_rss_before_mb": round(before.get("VmRSS", 0) / 1024, 1),
        "driver_peak_rss_mb": round(after.get("VmHWM", 0) / 1024, 1),
        "driver_peak_anon_mb": round(sampler.peak_anon_kb / 1024, 1),
        "driver_peak_anon_mb_by_stage": stages,
        "steady_extract_rows_s": steady_rate(out),
        "index_bytes": _du(out / "indexes"),
        "work_bytes": _du(out / "work"),
        "output_bytes": sum((out / n).stat().st_size for n in ("signals.jsonl", "pairs.parquet",
                                                                "clusters.parquet") if (out / n).exists()),
    }


def memory_run(rows: int, address: str, pairs_on: str = "cluster") -> dict[str, Any]:
    """A memory run in a child driver; this process samples Ray's processes (memory, and the
    CPU of the driver and of Ray's processes) meanwhile."""
    tmp = Path(tempfile.mkdtemp(prefix=f"mg-batch-mem-{rows}-", dir="/tmp"))
    try:
        generate_s = memory_input(rows, tmp / "catalogue.jsonl")
        with ProcessSampler() as ps:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.batch", "--memory-child", str(rows),
                 "--address", address, "--tmp", str(tmp), "--pairs-on", pairs_on],
                cwd=ROOT, stdout=subprocess.PIPE, text=True)
            ps.exclude.add(proc.pid)
            timeline = CpuTimeline(proc.pid, interval=1.0)
            timeline.start()
            stdout, _ = proc.communicate()
            timeline.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"memory run of {rows} rows failed (exit {proc.returncode})")
        result = json.loads(stdout.strip().splitlines()[-1])
        result.update({k.replace("_kb", "_mb"): round(v / 1024, 1) if k.endswith("_kb") else v
                       for k, v in ps.peak.items()})
        result["pairs_outputs_cpu"] = timeline.window(*result.pop("pairs_outputs_window"))
        result["generate_s"] = round(generate_s, 1)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ============================================================== near-duplicate quality
def _listing_of(rec: Any, listing_id: str, seller: str) -> dict[str, Any]:
    """A test record as a listing; titles over the schema's 300 characters are cut there."""
    title = (rec.title or rec.description[:200] or "untitled").strip()[:300]
    out: dict[str, Any] = {"listing_id": listing_id, "seller_id": seller, "title": title,
                           "description": rec.description}
    if rec.price is not None:
        out.update(price=rec.price, currency="USD")
    return out


def _job_view(rec: Any) -> tuple[Any, str]:
    """What the job sees of a record: its PairRecord (as ``serving.batch.pairs`` builds it)
    and the text its embedding is of (``Listing.text``)."""
    from indexes.pair_features import PAIR_TEXT_CHARS, PairRecord
    from signals.schemas import Listing, parse_record

    listing = parse_record(Listing, _listing_of(rec, "x", "x"))
    return (PairRecord(listing.title, listing.description[:PAIR_TEXT_CHARS], listing.price), listing.text)


def _contextual(pairs: Sequence[Any], emb: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled pairs featurised as the job's decision sees them: the split's job-view records
    as one catalogue, each pair in both its records' neighbourhoods (features, features from
    the other side, labels); self pairs dropped."""
    from benchmarks.text_catalogue import TextCatalogue

    views: dict[Any, tuple[Any, str]] = {}
    for p in pairs:
        for r in (p.left, p.right):
            if r not in views:
                views[r] = _job_view(r)
    records = list(views)
    pos = {r: i for i, r in enumerate(records)}
    cat = TextCatalogue.build([views[r][0] for r in records], emb.embed([views[r][1] for r in records]))
    kept = [p for p in pairs if pos[p.left] != pos[p.right]]
    fa, fb = cat.symmetric_features([(pos[p.left], pos[p.right]) for p in kept])
    return fa, fb, np.array([p.label for p in kept], dtype=np.int64)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "tp": tp, "fp": fp, "fn": fn}


def _score_against(predicted: set[tuple[str, str]], truth: dict[tuple[str, str], int]) -> dict[str, float]:
    """P/R/F1 of predicted id pairs over the labelled ones (unlabelled predictions ignored)."""
    tp = sum(1 for k, y in truth.items() if y == 1 and k in predicted)
    fp = sum(1 for k, y in truth.items() if y == 0 and k in predicted)
    fn = sum(1 for y in truth.values() if y == 1) - tp
    return _prf(tp, fp, fn)


def _pair_set(ids: Sequence[str], hits: Sequence[Sequence[Any]]) -> set[tuple[str, str]]:
    """Unordered id pairs of each query and its hits."""
    return {(min(q, h.id), max(q, h.id)) for q, row in zip(ids, hits, strict=True) for h in row}


def er_dataset(name: str, paths: dict[str, Path], tmp: Path, emb: Any, quick: bool,
               near_duplicates: dict[str, Any] | None = None) -> dict[str, Any]:
    """One dataset: test records as a catalogue; scorer fitted on train + valid; the job's pairs."""
    import pyarrow.parquet as pq

    from benchmarks.er_pairs import _subsample, decision, load_pairs
    from benchmarks.text_catalogue import TextCatalogue
    from indexes.near_duplicates import TextNearDuplicates
    from indexes.pair_scorer import PairScorer, best_f1_threshold
    from indexes.vector import VectorIndex
    from serving.batch.catalogue import load_catalogue

    t0 = time.perf_counter()
    splits = {s: load_pairs(p) for s, p in paths.items()}
    if quick:
        splits = {s: _subsample(v, 500 if s == "test" else 800) for s, v in splits.items()}
    folder = tmp / name
    folder.mkdir(parents=True)

    # The test split's distinct records as a catalogue, one seller per side (shop).
    ids: dict[Any, str] = {}
    rows = []
    for p in splits["test"]:
        for rec, side in ((p.left, "left"), (p.right, "right")):
            if rec not in ids:
                ids[rec] = f"r{len(ids):05d}"
                rows.append(_listing_of(rec, ids[rec], side))
    write_jsonl(folder / "catalogue.jsonl", iter(rows))
    truth: dict[tuple[str, str], int] = {}
    self_pairs = 0
    for p in splits["test"]:
        a, b = sorted((ids[p.left], ids[p.right]))
        if a == b:
            self_pairs += 1
            continue
        truth[(a, b)] = max(truth.get((a, b), 0), p.label)

    # The scorer: weights on train, threshold on valid; cosines of the job's texts.
    tr_fa, tr_fb, tr_y = _contextual(splits["train"], emb)
    va_fa, va_fb, va_y = _contextual(splits["valid"], emb)
    va_cos = va_fa[:, 0]
    fitted = PairScorer.fit(np.vstack([tr_fa, tr_fb]), np.concatenate([tr_y, tr_y]), va_fa, va_y,
                            description=f"{name}: weights on train, threshold on valid (benchmarks.batch)")
    scorer = PairScorer(weights=fitted.weights, bias=fitted.bias, mean=fitted.mean, scale=fitted.scale,
                        threshold=best_f1_threshold(decision(fitted, va_fa, va_fb), va_y).threshold,
                        meta=fitted.meta)
    scorer_path = folder / "pair_scorer.json"
    scorer.save(scorer_path)
    cos_thr = best_f1_threshold(va_cos, va_y).threshold
    fit_s = time.perf_counter() - t0

    config = make_config(state_dir(folder), scorer=str(scorer_path), near_duplicates=near_duplicates)
    summary, wall = run_job(config, folder / "catalogue.jsonl", folder / "out")
    table = pq.read_table(folder / "out" / "pairs.parquet").to_pylist()
    predicted = {tuple(sorted((r["a"], r["b"]))) for r in table if r["modality"] == "listing_text"}
    job = _score_against(predicted, truth)  # type: ignore[arg-type]

    # Context, from the job's own catalogue vectors and the same candidate rule.
    cat = load_catalogue(folder / "out" / "work" / "catalogue", "listing")
    assert cat.text is not None
    vecs = np.asarray(cat.text)
    cat_ids = cat.meta.column("entity_id").to_pylist()
    index = VectorIndex(config.indexes.vector.model_copy(update={"dim": vecs.shape[1]}))
    index.add(cat_ids, vecs)
    rule = TextNearDuplicates.from_config(config.indexes)
    cands = rule.candidates(index, vecs, cat_ids)
    cand_pairs = _pair_set(cat_ids, cands)
    positives = [k for k, y in truth.items() if y == 1]
    cand_recall = sum(1 for k in positives if k in cand_pairs) / max(len(positives), 1)
    # What the previous default rule (20 neighbours at cosine >= 0.5) would have found.
    narrow = TextNearDuplicates(config.indexes.near_duplicates.model_copy(
        update={"text_k": 20, "text_candidate_floor": 0.5}), cos_thr, rule.scorer)
    narrow_pairs = _pair_set(cat_ids, narrow.candidates(index, vecs, cat_ids))
    cos_rule = TextNearDuplicates(config.indexes.near_duplicates, cos_thr, None)
    cos_found = cos_rule.candidates(index, vecs, cat_ids)
    cos_pairs = _pair_set(cat_ids, cos_found)
    # The scorer on the labelled test pairs themselves (Ditto's protocol), job cosines.
    row_of = {i: k for k, i in enumerate(cat_ids)}
    te_keys = list(truth)
    te_cos = np.array([float(vecs[row_of[a]] @ vecs[row_of[b]]) if a in row_of and b in row_of else 0.0
                       for a, b in te_keys])
    by_id = {v: k for k, v in ids.items()}
    job_cat = TextCatalogue.build([_job_view(by_id[i])[0] for i in cat_ids], vecs)
    te_rows = [(row_of[a], row_of[b]) for a, b in te_keys]
    te_fa, te_fb = job_cat.symmetric_features(te_rows)
    te_y = np.array([truth[k] for k in te_keys])
    te_pred = decision(scorer, te_fa, te_fb) >= scorer.threshold
    labelled = _prf(int((te_pred & (te_y == 1)).sum()), int((te_pred & (te_y == 0)).sum()),
                    int((~te_pred & (te_y == 1)).sum()))
    in_narrow = np.array([k in narrow_pairs for k in te_keys])
    narrow_pred = te_pred & in_narrow
    narrow_prf = _prf(int((narrow_pred & (te_y == 1)).sum()), int((narrow_pred & (te_y == 0)).sum()),
                      int((~narrow_pred & (te_y == 1)).sum()))
    cos_pred = te_cos >= cos_thr
    cos_labelled = _prf(int((cos_pred & (te_y == 1)).sum()), int((cos_pred & (te_y == 0)).sum()),
                        int((~cos_pred & (te_y == 1)).sum()))
    return {
        "catalogue": len(rows), "accepted": summary["accepted"], "rejected": summary["rejected"],
        "test_pairs": len(splits["test"]), "test_matches": sum(p.label for p in splits["test"]),
        "self_pairs_skipped": self_pairs, "job_pairs": len(predicted),
        "job": job,
        "candidate_recall": round(cand_recall, 4),
        "candidate_pairs": len(cand_pairs),
        "candidate_rule": {"text_k": config.indexes.near_duplicates.text_k,
                           "text_candidate_floor": config.indexes.near_duplicates.text_candidate_floor},
        "k20_floor05": {"candidate_recall": round(sum(1 for k in positives if k in narrow_pairs)
                                                  / max(len(positives), 1), 4),
                        "candidate_pairs": len(narrow_pairs), **narrow_prf},
        "scorer_on_labelled_test_pairs": labelled,
        "cosine_baseline_job": {**_score_against(cos_pairs, truth), "threshold": round(cos_thr, 4)},  # type: ignore[arg-type]
        "cosine_baseline_labelled_pairs": cos_labelled,
        "scorer_threshold": round(scorer.threshold, 4),
        "scorer_valid": scorer.meta.get("threshold_rule"),
        "train_pairs": len(splits["train"]), "valid_pairs": len(splits["valid"]),
        "fit_s": round(fit_s, 1), "job_wall_s": round(wall, 1),
    }


# ============================================================== the run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small run, under a minute; does not write benchmarks/results/")
    parser.add_argument("--memory-rows", default="100000,1000000",
                        help="catalogue sizes of the peak-memory runs (comma-separated; the 1M run "
                             "takes about an hour on 2 cores)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="which parts to run (comma-separated, of: %(default)s); a full run "
                             "of some parts keeps the others' figures from the results file")
    parser.add_argument("--rounds", type=int, default=None,
                        help="raw-vs-job rounds of the throughput part (default: 3, --quick 1)")
    parser.add_argument("--pairs-on", default="cluster", choices=("cluster", "driver"),
                        help="where the job's pairs and outputs stages run (batch.pairs_on)")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.address, args.tmp, args.pairs_on)))
        return
    import ray

    from benchmarks.er_pairs import DATASETS, DITTO_F1, CachedEmbedder

    quick = args.quick
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not parts or parts - set(PARTS):
        parser.error(f"--parts: expected some of {','.join(PARTS)}, got {args.parts!r}")
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    address = ray.get_runtime_context().gcs_address
    tmp = Path(tempfile.mkdtemp(prefix="mg-batch-", dir="/tmp"))
    details: dict[str, Any] = {"ray_cpus": RAY_CPUS, "load_avg_at_start": load_start}
    text: dict[str, Any] = {}
    image: dict[str, Any] = {}
    mem: dict[int, dict[str, Any]] = {}
    er: dict[str, dict[str, Any]] = {}
    try:
        titles = listing_titles(10**6, pattern="*.txt*")
        text_rows, image_rows = (400, 60) if quick else (20_000, 2_000)
        rounds = args.rounds or (1 if quick else 3)

        if "throughput" in parts:  # (1)
            text_path = tmp / "text.jsonl"
            write_jsonl(text_path, synthetic_listings(text_rows, seed=1, real_titles=titles))
            text = throughput("text", make_config(state_dir(tmp), pairs_on=args.pairs_on), text_path, tmp,
                              text_rows, rounds)
            images = make_images(tmp / "photos", max(16, image_rows // 5))
            image_path = tmp / "images.jsonl"
            write_jsonl(image_path, synthetic_listings(image_rows, seed=2, images=images,
                                                       real_titles=titles))
            image = throughput("text_image", make_config(state_dir(tmp), images=True, pairs_on=args.pairs_on),
                               image_path, tmp, image_rows, rounds)
            details["throughput"] = {
                "text_only": text, "text_image": image, "image_files": len(images),
                "configs": {"text_only": "content rules + text embedding (MiniLM onnx int8); PDQ, "
                                         "SSCD, OCR, NSFW off",
                            "text_image": "content rules + text embedding + PDQ + SSCD distilled; "
                                          "OCR and NSFW off"}}

        if "memory" in parts and not quick:  # (2)
            for n in (int(x) for x in args.memory_rows.split(",") if x.strip()):
                mem[n] = memory_run(n, address, args.pairs_on)
                print(f"memory {n:,} rows: {json.dumps(mem[n])}", flush=True)
            details["memory"] = {str(k): v for k, v in mem.items()}

        if "er" in parts:  # (3)
            emb = CachedEmbedder()
            datasets = {"Abt-Buy": DATASETS["Abt-Buy"]} if quick else DATASETS
            for name, paths in datasets.items():
                er[name] = er_dataset(name, paths, tmp, emb, quick)
                er[name]["ditto_f1"] = DITTO_F1.get(name)
                print(f"{name:15s} job F1 {er[name]['job']['f1']:.3f} (P {er[name]['job']['precision']:.3f} "
                      f"R {er[name]['job']['recall']:.3f})  candidate recall "
                      f"{er[name]['candidate_recall']:.3f}  scorer on labelled pairs "
                      f"{er[name]['scorer_on_labelled_test_pairs']['f1']:.3f}  cosine (job) "
                      f"{er[name]['cosine_baseline_job']['f1']:.3f}", flush=True)
            details["er"] = er
            details["embedding_model"] = emb.model_id
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    figures = {**throughput_figures(text, image), **memory_figures(mem), **er_figures(er),
               "quick": quick, "seconds": round(time.perf_counter() - t_start, 1)}
    details["load_avg_at_end"] = os.getloadavg()
    details["data"] = ("synthetic listings (titles partly from ../shared/data/listing_pairs), photos from "
                       "../shared/data/images/photos; ER: ../shared/data/listing_pairs (DeepMatcher/Magellan "
                       "and WDC Products via megagonlabs/ditto, Apache-2.0)")
    run = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine()}
    details["parts"] = {part: run for part in sorted(parts)}
    if not quick and parts != set(PARTS):
        figures, details = keep_other_parts(figures, details, parts, RESULTS_DIR / "batch.json")
    if "peak_anon_mb_1m" not in figures:  # a headline of the issue: say that it was not measured
        figures["peak_anon_mb_1m"] = None
        details["peak_anon_mb_1m"] = ("not measured in this run: the 1M-row memory run takes about 100 "
                                      "minutes on 2 cores (--memory-rows 1000000)")
    details["pairs_on"] = args.pairs_on
    finish("batch", figures, quick=quick, packages=PACKAGES, details=details)


def throughput_figures(text: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of part (1); empty when it did not run."""
    if not text:
        return {}
    return {
        "throughput_text_rows_s": text["job_extract_rows_s"],
        "throughput_text_end_to_end_rows_s": text["job_end_to_end_rows_s"],
        "throughput_image_rows_s": image["job_extract_rows_s"],
        "throughput_image_end_to_end_rows_s": image["job_end_to_end_rows_s"],
        "raw_text_rows_s": text["raw_rows_s"],
        "raw_image_rows_s": image["raw_rows_s"],
        "throughput_ratio": text["extract_ratio"],
        "throughput_ratio_image": image["extract_ratio"],
        "end_to_end_ratio": text["end_to_end_ratio"],
        "end_to_end_ratio_image": image["end_to_end_ratio"],
        "driver_cpu_share": text["driver_cpu_share"],
        "driver_cpu_share_image": image["driver_cpu_share"],
    }


def memory_figures(mem: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of part (2), suffixed by catalogue size (``_100k``, ``_1m``)."""
    out: dict[str, Any] = {}
    for n, m in mem.items():
        tag = f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"
        out[f"peak_memory_mb_{tag}"] = m["driver_peak_rss_mb"]
        out[f"peak_anon_mb_{tag}"] = m["driver_peak_anon_mb"]
        out[f"workers_peak_anon_mb_{tag}"] = m["workers_anon_mb"]
        out[f"index_mb_{tag}"] = round(m["index_bytes"] / 2**20, 1)
        out[f"rows_s_{tag}"] = m["rows_s"]
        out[f"pairs_rows_s_{tag}"] = m["pairs_rows_s"]
        out[f"driver_cpu_share_{tag}"] = m["pairs_outputs_cpu"]["driver_cpu_share"]
    return out


def er_figures(er: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of part (3): means over the datasets."""
    if not er:
        return {}

    def mean(key: str, sub: str = "f1") -> float:
        return round(float(np.mean([r[key][sub] for r in er.values()])), 4)

    return {
        "er_f1": mean("job"),
        "er_precision": mean("job", "precision"),
        "er_recall": mean("job", "recall"),
        "er_f1_by_dataset": {n: r["job"]["f1"] for n, r in er.items()},
        "er_candidate_recall": round(float(np.mean([r["candidate_recall"] for r in er.values()])), 4),
        "er_f1_scorer_on_labelled_pairs": mean("scorer_on_labelled_test_pairs"),
        "er_f1_cosine_baseline": mean("cosine_baseline_job"),
    }


_MEMORY_FIGURE = re.compile(r"_\d+[km]$")


def part_of(figure: str) -> str | None:
    """Which part a headline figure belongs to (None for the run's own ``quick``, ``seconds``)."""
    if figure in ("quick", "seconds"):
        return None
    if figure.startswith("er_"):
        return "er"
    return "memory" if _MEMORY_FIGURE.search(figure) else "throughput"


def keep_other_parts(figures: dict[str, Any], details: dict[str, Any], parts: set[str],
                     previous_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures and details of the parts not run now, carried over from the previous results.

    Each part keeps the date and machine it was measured on in ``details.parts``;
    a previous file without that record gets its own date and machine for its parts.
    """
    if not previous_path.exists():
        return figures, details
    previous = json.loads(previous_path.read_text())
    old_details = previous.get("details", {})
    old_runs = old_details.get("parts") or {
        part: {"date": previous.get("date"), "machine": previous.get("machine")} for part in PARTS}
    merged = {k: v for k, v in previous.get("figures", {}).items()
              if part_of(k) is not None and part_of(k) not in parts}
    merged.update(figures)
    kept = {**details, "parts": dict(details["parts"])}
    for part in set(PARTS) - parts:
        if part in old_runs:
            kept["parts"][part] = old_runs[part]
        if part in old_details:
            kept[part] = old_details[part]
        if part == "er" and "embedding_model" in old_details:
            kept["embedding_model"] = old_details["embedding_model"]
    kept["parts"] = dict(sorted(kept["parts"].items()))
    return merged, kept


if __name__ == "__main__":
    main()
