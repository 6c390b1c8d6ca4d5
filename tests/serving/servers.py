"""Real servers for the tests: a redis-server on a free loopback port (stoppable, for outages) and a
webhook receiver; their fixtures are registered in tests/serving/conftest.py."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` with its own directory; ``stop()`` / ``start()`` for outages."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start in 20 s") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=20)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is missing: `make test` installs it (Debian package redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Receiver:
    """A webhook endpoint: what it got, and what it answers next."""

    url: str
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to give first, then 200
    statuses: list[int] = field(default_factory=list)  # what each request in ``got`` was answered

    def events(self) -> list[dict[str, Any]]:
        """The events of every request received, taken or not."""
        return [e for _, body in self.got for e in json.loads(body)["events"]]

    def accepted(self) -> list[dict[str, Any]]:
        """The events of the requests answered 2xx."""
        return [e for (_, body), status in zip(self.got, self.statuses, strict=True) if status < 300
                for e in json.loads(body)["events"]]


def start_receiver() -> tuple[Receiver, Callable[[], None]]:
    """A webhook receiver on a free loopback port, in a thread; returns it and its stop."""
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}/hook")
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                status = rec.answers.pop(0) if rec.answers else 200
                rec.got.append(({k: v for k, v in self.headers.items()}, body))
                rec.statuses.append(status)
            self.send_response(status)
            if status in (301, 302, 307):
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop() -> None:
        srv.shutdown()
        srv.server_close()
    return rec, stop


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec, stop = start_receiver()
    try:
        yield rec
    finally:
        stop()
