"""Shared fixtures of the serving tests: one local Ray for the whole session, a models cache, the
session's service, a redis-server and a webhook receiver.

Ray starts once per test session (seconds on two cores), with more logical CPUs than
cores so the batch job's extractor actors never starve its read tasks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.serving.servers import open_store, postgres, receiver, redis_server, start_receiver  # noqa: F401

MODELS_DIR = Path(__file__).resolve().parents[2] / "var" / "models"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """A local Ray shared by the session; yields its address for subprocess drivers."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh state folder whose models/ is the session-wide export cache."""
    d = tmp_path / "state"
    d.mkdir()
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    os.symlink(MODELS_DIR, d / "models")
    return d


KEYS = {"acme": "acme-key-0123456789abcdef", "globex": "globex-key-0123456789abcdef"}


@dataclass
class Service:
    """The session's running service: its base URL, config and the API keys of two tenants."""

    base: str
    config: Any
    keys: dict[str, str]
    hook: Any  # the webhook receiver the service publishes to (tests.serving.servers.Receiver)

    def headers(self, tenant: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[tenant]}


def wait_ready(base: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the test service at {base} was not ready in {timeout_s:.0f} s")


def postgres_service(sqlite_app: Service, server: Any, data_dir: Path) -> Iterator[Service]:
    """The session's service again as a second app beside it (route prefix ``/pg``), its store on
    PostgreSQL: the same keys, index shards and webhook, its own data dir for the indexes."""
    from ray import serve

    from serving.deployments.app import build_app
    from tests.serving.servers import pg_schema

    data_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(MODELS_DIR, data_dir / "models")
    store = {"backend": "postgres", "url": server.url, "pg_schema": pg_schema()}
    config = sqlite_app.config.model_copy(update={"data_dir": data_dir, "store": type(
        sqlite_app.config.store).model_validate(store)})
    name = "marketguard-pg"
    serve.run(build_app(config), name=name, route_prefix="/pg", blocking=False)
    base = sqlite_app.base + "/pg"
    wait_ready(base)
    try:
        yield Service(base, config, sqlite_app.keys, sqlite_app.hook)
    finally:
        serve.delete(name)


@pytest.fixture(scope="session")
def serve_app(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """ONE real Ray Serve instance for every HTTP test of the session (keys for two tenants)."""
    import socket

    from ray import serve

    from serving.config import load_config
    from serving.deployments.app import APP_NAME, build_app

    d = tmp_path_factory.mktemp("serve") / "state"
    d.mkdir()
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    os.symlink(MODELS_DIR, d / "models")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = ",".join(f"{t}:{k}" for t, k in KEYS.items())
    config = load_config(data_dir=d, env={"MARKETGUARD_API_KEYS": keys})
    # globex's indexes are split over two index shards (acme's stay in its catalogue shard)
    split = config.service.index_shards.model_validate({"count": 2, "tenants": ["globex"], "num_cpus": 0.1})
    # every signal is published to a signed webhook in this process
    hook, stop_hook = start_receiver()
    sinks = config.sinks.model_validate({"webhooks": [{"url": hook.url, "secrets": ["test-secret"]}],
                                         "poll_interval_s": 0.02})
    config = config.model_copy(update={"sinks": sinks, "service": config.service.model_copy(
        update={"port": port, "index_shards": split})})
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base)
    try:
        yield Service(base, config, KEYS, hook)
    finally:
        serve.shutdown()
        stop_hook()
