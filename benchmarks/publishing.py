"""Publishing throughput and delay: the store's outbox to a real Redis and a local signed webhook.

``python -m benchmarks.publishing [--quick]``

In process, the service's own parts: a :class:`~serving.store.sqlite.SqliteSignalStore` with
both sinks configured (its writes queue each signal's event in the same transaction), and a
:class:`~serving.sinks.publisher.Publisher` delivering to a ``redis-server`` this benchmark
starts on a free loopback port and to a webhook receiver in a thread that checks every
signature.

* Throughput: a backlog of N signal events (written 64 a transaction) is drained; events per
  second delivered to each sink, from the first delivery to the last, with the shipped
  ``batch_size`` (256).
* Delay: then one signal at a time, 50 a second, and the time from its store commit (the
  moment the service would answer 2xx) to its arrival: at Redis (a blocking ``XREAD``
  consumer) and at the webhook. p50 / p99 per sink.

The deep tier's slowdown of the synchronous path (``deep_tier_slowdown``) is measured by
``benchmarks.latency``, against the running service.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from benchmarks.common import finish, parse_args
from serving.config import RedisSinkConfig, SinksConfig, WebhookSinkConfig
from serving.sinks.events import webhook_sink_name
from serving.sinks.publisher import Publisher
from serving.sinks.redis_sink import RedisSink, stream_key
from serving.sinks.webhook import SIGNATURE_HEADER, WebhookSink, verify_signature
from serving.store.base import WriteBatch
from serving.store.sqlite import SqliteSignalStore
from signals.schemas import Signal

SECRET = "bench-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal(i: int) -> Signal:
    return Signal(entity_type="listing", entity_id=f"L{i}", name="near_duplicate.count", value=i % 7,
                  score=0.5, source="index@1",
                  evidence={"matches": [{"id": f"L{i + 1}", "similarity": 0.97}]})


class Hook:
    """A webhook receiver: arrival time per event id; counts bad signatures."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.bad = 0
        self.lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                now = time.perf_counter()
                ok = verify_signature(body, self.headers.get(SIGNATURE_HEADER, ""), [SECRET])
                with hook.lock:
                    if ok:
                        for e in json.loads(body)["events"]:
                            hook.arrived.setdefault(e["entity_id"], now)
                    else:
                        hook.bad += 1
                self.send_response(200 if ok else 401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _redis_consumer(port: int, stream: str, arrived: dict[str, float], stop: threading.Event) -> None:
    client = redis.Redis(port=port, decode_responses=True)
    last = "0-0"
    while not stop.is_set():
        for _, entries in client.xread({stream: last}, block=200, count=1000) or []:
            now = time.perf_counter()
            for entry_id, fields in entries:
                last = entry_id
                arrived.setdefault(json.loads(fields["event"])["entity_id"], now)
    client.close()


def _wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0])
    backlog, singles = (2_000, 100) if args.quick else (20_000, 500)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing (Debian package redis-server; make test installs it)")
    with tempfile.TemporaryDirectory(prefix="mg-publishing-") as tmp:
        rport = _free_port()
        server = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", tmp],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hook = Hook()
        redis_arrived: dict[str, float] = {}
        stop = threading.Event()
        try:
            _wait(lambda: _ping(rport), 20, "redis-server")
            stream = stream_key("marketguard", "default")
            consumer = threading.Thread(target=_redis_consumer, daemon=True,
                                        args=(rport, stream, redis_arrived, stop))
            consumer.start()
            wh = WebhookSinkConfig(url=hook.url, secrets=[SECRET])
            config = SinksConfig(redis=RedisSinkConfig(url=f"redis://127.0.0.1:{rport}/0"), webhooks=[wh])
            names = ["redis", webhook_sink_name(hook.url)]
            store = SqliteSignalStore(Path(tmp) / "store.sqlite3", sinks=names)
            for start in range(0, backlog, 64):
                store.write(WriteBatch("default", "listing",
                                       signals=[_signal(i) for i in range(start, min(backlog, start + 64))]))
            assert config.redis is not None
            pub = Publisher(store, [RedisSink(config.redis), WebhookSink(wh)], config)
            t0 = time.perf_counter()
            pub.start()
            _wait(lambda: len(redis_arrived) >= backlog and len(hook.arrived) >= backlog, 600, "the backlog")
            redis_s = max(redis_arrived.values()) - t0
            webhook_s = max(hook.arrived.values()) - t0
            committed: dict[str, float] = {}
            for k in range(singles):
                i = backlog + k
                store.write(WriteBatch("default", "listing", signals=[_signal(i)]))
                committed[f"L{i}"] = time.perf_counter()
                time.sleep(0.02)
            _wait(lambda: all(e in redis_arrived and e in hook.arrived for e in committed), 120,
                  "the singles")
            pub.stop()
            store.close()
        finally:
            stop.set()
            hook.server.shutdown()
            server.kill()
            server.wait(timeout=20)
    delay_r = [(redis_arrived[e] - t) * 1000 for e, t in committed.items()]
    delay_w = [(hook.arrived[e] - t) * 1000 for e, t in committed.items()]
    p = np.percentile
    figures = {
        "redis_events_s": round(backlog / redis_s, 1), "webhook_events_s": round(backlog / webhook_s, 1),
        "delivery_p50_ms_redis": round(float(p(delay_r, 50)), 2),
        "delivery_p99_ms_redis": round(float(p(delay_r, 99)), 2),
        "delivery_p50_ms_webhook": round(float(p(delay_w, 50)), 2),
        "delivery_p99_ms_webhook": round(float(p(delay_w, 99)), 2),
        "delivery_p99_ms": round(float(max(p(delay_r, 99), p(delay_w, 99))), 2),
        "bad_signatures": hook.bad, "backlog_events": backlog, "single_events": singles,
        "batch_size": config.batch_size, "quick": args.quick,
    }
    finish("publishing", figures, quick=args.quick, packages=("redis", "httpx"),
           details={"redis_server": subprocess.run(["redis-server", "--version"], capture_output=True,
                                                   text=True).stdout.strip()})


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.ConnectionError:
        return False


if __name__ == "__main__":
    main()
