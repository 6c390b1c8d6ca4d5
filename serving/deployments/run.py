"""Running the service in the foreground (``marketguard serve``): a local Ray, Serve on the
configured host and port, the application graph, the demo seed, a clean stop on Ctrl-C.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from serving.config import MarketGuardConfig
from signals.errors import InvalidInput

log = logging.getLogger("marketguard.serve")
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_bind(config: MarketGuardConfig) -> None:
    """Local mode (no API keys) listens on loopback only."""
    if not config.service.api_keys and config.service.host not in LOOPBACK:
        raise InvalidInput("service.host", f"without API keys the service listens on loopback only, not "
                                           f"{config.service.host!r}: configure service.api_keys or "
                                           "MARKETGUARD_API_KEYS to listen elsewhere")


def start_from_batch(config: MarketGuardConfig, run_dir: Path) -> dict[str, int]:
    """Import a finished batch run into the (new) data dir: snapshots, records, edges, signals."""
    from serving.deployments.catalogue import open_store
    from serving.scoring.backfill import import_batch_run
    from serving.scoring.extraction import FastExtraction
    from serving.scoring.indexes import tenant_is_split

    if config.service.catalogue.shards != 1:
        raise InvalidInput("--from-batch", "starting from a batch run needs service.catalogue.shards: 1")
    models, _ = FastExtraction.build(config.signals, config.data_dir).models()
    split = config.service.index_shards
    counts = import_batch_run(run_dir, config.data_dir, models,
                              lambda t: split.count > 1 and tenant_is_split(t, split.tenants),
                              lambda: open_store(config, with_sinks=False))
    log.warning("started from batch run %s: %s", run_dir, counts)
    return counts


def _store_state(config: MarketGuardConfig) -> bool:
    """Whether the store is new (nothing written yet); refuses a store whose ``--from-batch``
    import died part-way (serving it would mix a half import with new writes, which the next
    import would wipe)."""
    from serving.deployments.catalogue import open_store
    from serving.scoring.backfill import META_KEY, STARTED_KEY

    shards = config.service.catalogue.shards
    new = True
    for shard in range(shards):
        store = open_store(config, shard, shards, with_sinks=False)
        try:
            if store.get_meta(STARTED_KEY) is not None and store.get_meta(META_KEY) is None:
                raise InvalidInput("--from-batch", "the store holds a --from-batch import that did not "
                                                   "finish: run `serve --from-batch RUN_DIR` again")
            new = new and not store.counts() and store.get_meta("seq") is None
        finally:
            store.close()
    return new


def serve_forever(config: MarketGuardConfig, *, demo: bool = False, from_batch: Path | None = None,
                  ready_timeout_s: float = 600.0) -> int:
    """Start Ray and Serve, deploy, seed the demo when asked, and block until SIGINT/SIGTERM."""
    import ray
    from ray import serve

    from serving.deployments.app import APP_NAME, build_app

    check_bind(config)
    svc = config.service
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if from_batch is not None:
        start_from_batch(config, from_batch)  # restarts an import that died part-way
        fresh = False
    else:
        fresh = _store_state(config)
    if not svc.api_keys:
        log.warning("local mode: no API keys configured; listening on %s only, tenant from the request",
                    svc.host)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # address="local": always a new cluster of our own (a killed one leaves files that would
    # make a plain ray.init() try to join it).
    ray.init(address="local", num_cpus=svc.ray_num_cpus, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    try:
        serve.start(http_options={"host": svc.host, "port": svc.port},
                    logging_config={"enable_access_log": False})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
        base = f"http://{'127.0.0.1' if svc.host in ('0.0.0.0', '::') else svc.host}:{svc.port}"
        _wait_ready(base, ready_timeout_s, stop)
        if demo and fresh:
            seeded = seed_demo(base)
            log.warning("demo catalogue seeded: %d listings, %d reviews, bank demo-scams", *seeded)
        print(f"MarketGuard is serving on {base}  (API docs: {base}/docs; Ctrl-C stops it)", flush=True)
        while not stop.wait(1.0):
            pass
        log.warning("stopping")
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0


def _wait_ready(base: str, timeout_s: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    if not stop.is_set():
        raise RuntimeError(f"the service was not ready within {timeout_s:.0f} s")


def _post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def demo_listings() -> list[dict[str, Any]]:
    """The bundled demo listings with their photos inlined as base64 (the HTTP form)."""
    out = []
    for line in (DEMO_DIR / "listings.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        rec["images"] = [{"data_b64": base64.b64encode((DEMO_DIR / im["path"]).read_bytes()).decode()}
                         for im in rec.get("images", [])]
        out.append(rec)
    return out


def seed_demo(base: str) -> tuple[int, int]:
    """Post the demo bank, then the demo listings (one at a time: copies find their originals)
    and reviews, through the service's own API."""
    bank = [json.loads(x)
            for x in (DEMO_DIR / "bank-scams.jsonl").read_text(encoding="utf-8").splitlines() if x]
    _post(base, "/v1/banks/demo-scams/items", {"modality": "listing_text", "kind": "fraud", "items": bank})
    listings = demo_listings()
    for rec in listings:
        _post(base, "/v1/listings", rec)
    reviews = [json.loads(x)
               for x in (DEMO_DIR / "reviews.jsonl").read_text(encoding="utf-8").splitlines() if x]
    _post(base, "/v1/reviews", {"items": reviews})
    return len(listings), len(reviews)
