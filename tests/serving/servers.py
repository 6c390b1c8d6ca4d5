"""Real servers for the tests: a redis-server on a free loopback port (stoppable, for outages) and a
webhook receiver; their fixtures are registered in tests/serving/conftest.py."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
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


class PostgresServer:
    """PostgreSQL from Debian's package on 127.0.0.1:``port``, a throw-away data directory, trust auth.

    ``initdb`` refuses root: as root, the server runs as the package's ``postgres`` user.
    """

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        pg_ctl = str(bins[-1]) if bins else shutil.which("pg_ctl")
        if pg_ctl is None:
            raise RuntimeError("PostgreSQL is missing: `make test` installs it (Debian package postgresql)")
        self.bin = Path(pg_ctl).parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mg-pg-"))  # under /tmp: reachable by the server's user
        self.data = self.root / "data"
        self.user: dict[str, int] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self.user = {"user": pw.pw_uid, "group": pw.pw_gid}
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://marketguard@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str | Path) -> None:
        subprocess.run([str(a) for a in args], check=True, capture_output=True,
                       user=self.user.get("user"), group=self.user.get("group"))

    def start(self) -> None:
        if not self.data.exists():
            self._run(self.bin / "initdb", "-D", str(self.data), "-U", "marketguard", "--auth=trust",
                      "-E", "UTF8")
        self._run(self.bin / "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}", "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(self.bin / "pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session; each test takes a schema of its own (:func:`pg_schema`)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


def pg_schema() -> str:
    """A fresh schema name: tests on one server never see each other's rows."""
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """Opens the test's store, on SQLite and again on PostgreSQL (the same store each call:
    reopening it is a restart)."""
    if request.param == "sqlite":
        from serving.store.sqlite import SqliteSignalStore

        return lambda **kw: SqliteSignalStore(tmp_path / "s.sqlite3", **kw)
    from serving.store.postgres import PostgresSignalStore

    server: PostgresServer = request.getfixturevalue("postgres")
    schema = pg_schema()
    return lambda **kw: PostgresSignalStore(server.url, schema, **kw)
