"""Delivers the store's outbox to the sinks: at least once, in order per sink, with backoff.

Every signal the store commits is queued for each configured sink in the same transaction
(:meth:`~serving.store.sqlite.SqliteSignalStore.write`), so an acknowledged signal is never
lost: the outbox survives SIGKILL and restarts. One thread a sink takes the oldest queued
events (a delivery keeps its id and events until acknowledged), hands them to the sink and
deletes them only once the sink took them. A sink that fails waits, exponentially longer
with jitter, up to ``sinks.max_backoff_s``, while the other sinks go on; an outage loses
nothing, and only once a sink has been failing for longer than ``sinks.dead_letter_after_s``
(24 h) do its events older than that move to the dead letters, which ``marketguard sinks
replay`` queues again.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from serving.config import SinksConfig
from serving.store.base import StoreUnavailable

log = logging.getLogger(__name__)

_FIRST_BACKOFF_S = 0.1
STORE_RETRY_S = 1.0
"""How often a publisher looks again while the store itself is unavailable."""


class Sink(Protocol):
    name: str

    def deliver(self, delivery_id: str, events: list[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


class Outbox(Protocol):
    """What the publisher needs of the store."""

    def outbox_next(self, sink: str, limit: int) -> tuple[str, list[tuple[int, str]]]: ...
    def outbox_ack(self, sink: str, ids: Sequence[int]) -> None: ...
    def outbox_dead_letter(self, sink: str, created_before: float, reason: str) -> int: ...
    def outbox_stats(self) -> dict[str, dict[str, float]]: ...
    def on_queued(self, listener: Callable[[], None]) -> None: ...


def build_sinks(config: SinksConfig) -> list[Sink]:
    """The sinks ``config`` names (Redis first, then each webhook)."""
    from serving.sinks.redis_sink import RedisSink
    from serving.sinks.webhook import WebhookSink

    sinks: list[Sink] = [RedisSink(config.redis)] if config.redis is not None else []
    sinks += [WebhookSink(w) for w in config.webhooks]
    return sinks


def sink_names(config: SinksConfig, *, shadow_only: bool = False) -> list[str]:
    """The outbox names of the configured sinks (without connecting to them); ``shadow_only``: of
    those that take shadow signals."""
    from serving.sinks.events import webhook_sink_name

    names = ["redis"] if config.redis is not None and (config.redis.shadow or not shadow_only) else []
    return names + [webhook_sink_name(w.url) for w in config.webhooks if w.shadow or not shadow_only]


def backoff_s(attempt: int, cap: float, rand: Callable[[], float] = random.random) -> float:
    """The wait after the ``attempt``-th failure in a row: exponential, capped, with jitter."""
    return min(cap, _FIRST_BACKOFF_S * 2 ** min(attempt, 30)) * (0.5 + 0.5 * rand())


class Publisher:
    """One delivery thread a sink over one store's outbox."""

    def __init__(self, outbox: Outbox, sinks: Sequence[Sink], config: SinksConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.outbox = outbox
        self.sinks = list(sinks)
        self.config = config
        self.clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.delivered: dict[str, int] = {s.name: 0 for s in self.sinks}
        self.failures: dict[str, int] = {s.name: 0 for s in self.sinks}
        self.dead_lettered: dict[str, int] = {s.name: 0 for s in self.sinks}
        # Woken by the store after a commit that queued events; polling covers other writers
        # (``marketguard sinks replay``, another process).
        self._wake = {s.name: threading.Event() for s in self.sinks}
        outbox.on_queued(self._notify)

    def _notify(self) -> None:
        for event in self._wake.values():
            event.set()

    def start(self) -> None:
        for sink in self.sinks:
            t = threading.Thread(target=self._run, args=(sink,), name=f"publish-{sink.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._notify()
        for t in self._threads:
            t.join(timeout_s)
        for sink in self.sinks:
            sink.close()

    def deliver_once(self, sink: Sink) -> int:
        """One delivery to ``sink``: how many events it took (0: nothing queued). Raises on failure."""
        delivery, rows = self.outbox.outbox_next(sink.name, self.config.batch_size)
        if not rows:
            return 0
        sink.deliver(delivery, [json.loads(body) for _, body in rows])
        self.outbox.outbox_ack(sink.name, [i for i, _ in rows])
        with self._lock:
            self.delivered[sink.name] += len(rows)
        return len(rows)

    def _run(self, sink: Sink) -> None:
        failed = 0
        failing_since: float | None = None
        while not self._stop.is_set():
            try:
                wake = self._wake[sink.name]
                wake.clear()  # before looking: a commit after this look wakes the wait below
                if self.deliver_once(sink) == 0:
                    wake.wait(self.config.poll_interval_s)
                failed, failing_since = 0, None
            except StoreUnavailable as exc:
                # The store's database is down (a PostgreSQL restart), not the sink: its events stay
                # queued and the sink's failure clock does not run.
                log.warning("sink %s: the store is unavailable (%s); retrying", sink.name, exc)
                self._stop.wait(min(self.config.max_backoff_s, STORE_RETRY_S))
            except Exception as exc:  # noqa: BLE001 - any failure of a sink is retried, never fatal
                failed += 1
                now = self.clock()
                failing_since = now if failing_since is None else failing_since
                reason = f"{type(exc).__name__}: {exc}"[:500]
                with self._lock:
                    self.failures[sink.name] += 1
                if now - failing_since > self.config.dead_letter_after_s:
                    # Failing for longer than that, whatever the events' age (a backlog after a
                    # long stop is not an outage): only then do its old events give way.
                    self._dead_letter(sink, now - self.config.dead_letter_after_s, reason)
                wait = backoff_s(failed, self.config.max_backoff_s)
                log.warning("sink %s: delivery failed (%s), attempt %d, next in %.2f s", sink.name, reason,
                            failed, wait)
                self._stop.wait(wait)

    def _dead_letter(self, sink: Sink, created_before: float, reason: str) -> None:
        try:
            dead = self.outbox.outbox_dead_letter(sink.name, created_before, reason)
        except Exception:  # noqa: BLE001 - the store may be closing; tried again next round
            return
        if dead:
            with self._lock:
                self.dead_lettered[sink.name] += dead
            log.error("sink %s: %d events older than %.0f s dead-lettered (%s)", sink.name, dead,
                      self.config.dead_letter_after_s, reason)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per sink: queued events, lag (age of the oldest, s), dead letters, and this process's
        delivered / failed / dead-lettered counts."""
        out = self.outbox.outbox_stats()
        with self._lock:
            for name in self.delivered:
                row = out.setdefault(name, {"queued": 0.0, "lag_s": 0.0, "dead_letters": 0.0})
                row.update(delivered_total=float(self.delivered[name]),
                           failures_total=float(self.failures[name]),
                           dead_lettered_total=float(self.dead_lettered[name]))
        return out
