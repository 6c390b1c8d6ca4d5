"""``marketguard batch --publish``: a finished batch run's signals sent to the configured sinks.

The run's ``signals.jsonl`` is queued, a chunk at a time, into an outbox of its own
(``RUN_DIR/publish/outbox.sqlite3``; each chunk and the count of lines queued so far commit
together), and the publisher delivers it exactly as the service delivers its own (at least once,
in order, backing off while a sink is down). Killed part-way, the next ``--publish`` of the same
run queues from where it stopped and delivers what was left; once everything was delivered the
run is marked published and publishing it again sends nothing. A run redone from scratch (a new
``manifest.json``) is published afresh. Events a sink refused for ``sinks.dead_letter_after_s``
are dead letters: ``marketguard sinks replay --run RUN_DIR`` queues them again and the next
``--publish`` delivers them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

from serving.config import MarketGuardConfig
from serving.sinks.publisher import Publisher, build_sinks, sink_names
from serving.store.sqlite import SqliteSignalStore
from signals.errors import InvalidInput

log = logging.getLogger(__name__)

CHUNK = 5_000
OUTBOX = Path("publish") / "outbox.sqlite3"


def _digest(run_dir: Path) -> str:
    manifest = run_dir / "manifest.json"
    if not manifest.is_file() or not (run_dir / "signals.jsonl").is_file():
        raise InvalidInput("--publish", f"{str(run_dir)!r} is not a finished batch run (no manifest.json or "
                                        "signals.jsonl)", "not_found")
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def publish_run(run_dir: Path, config: MarketGuardConfig, deadline_s: float | None = None) -> dict[str, Any]:
    """Queue and deliver the run's signals; returns counts. ``deadline_s``: give up waiting for the
    sinks after this long (``TimeoutError``; what was not delivered stays queued for the next try)."""
    run_dir = Path(run_dir)
    names = sink_names(config.sinks)
    if not names:
        raise InvalidInput("--publish", "no sinks are configured (sinks.redis, sinks.webhooks)", "missing")
    digest = _digest(run_dir)
    store = SqliteSignalStore(run_dir / OUTBOX, sinks=names)
    try:
        if store.get_meta("published") == digest:
            return {"queued": 0, "delivered": 0, "already_published": True}
        if store.get_meta("run") not in (None, digest):  # the run was redone: start afresh
            store.close()
            for suffix in ("", "-wal", "-shm"):
                (run_dir / f"{OUTBOX}{suffix}").unlink(missing_ok=True)
            store = SqliteSignalStore(run_dir / OUTBOX, sinks=names)
        queued = _queue(store, run_dir / "signals.jsonl", digest)
        publisher = Publisher(store, build_sinks(config.sinks), config.sinks)
        publisher.start()
        try:
            started, last_log = time.monotonic(), 0.0
            while True:
                stats = store.outbox_stats()
                left = sum(int(stats.get(n, {}).get("queued", 0)) for n in names)
                if not left:
                    break
                if deadline_s is not None and time.monotonic() - started > deadline_s:
                    raise TimeoutError(f"{left} events not delivered in {deadline_s:.0f} s; they stay "
                                       "queued: run --publish again")
                if time.monotonic() - last_log > 10:
                    log.info("publishing %s: %d events left (%s)", run_dir, left,
                             ", ".join(f"{n}: {int(stats[n]['queued'])}" for n in names if n in stats))
                    last_log = time.monotonic()
                time.sleep(0.2)
        finally:
            publisher.stop()
        delivered = {n: publisher.delivered.get(n, 0) for n in names}
        dead = {n: int(row["dead_letters"]) for n, row in store.outbox_stats().items() if row["dead_letters"]}
        store.set_meta("published", digest)
        return {"queued": queued, "delivered": delivered, "dead_letters": dead, "already_published": False}
    finally:
        store.close()


def _queue(store: SqliteSignalStore, path: Path, digest: str) -> int:
    """Queue the lines not queued yet (the count of lines done commits with each chunk)."""
    done = int(store.get_meta("lines_queued") or 0)
    if store.get_meta("run") is None:
        store.set_meta("run", digest)
    queued = 0
    with path.open(encoding="utf-8") as f:
        lines = itertools.islice(f, done, None)
        while True:
            chunk = list(itertools.islice(lines, CHUNK))
            if not chunk:
                return queued
            wires = [json.loads(line) for line in chunk if line.strip()]
            done += len(chunk)
            store.queue_signals(wires, {"lines_queued": str(done)})
            queued += len(wires)
