"""Errors that cross the catalogue's Ray boundary reach the client in the contract's shape."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError

from serving.api.errors import STORE_RETRY_AFTER_S, install_error_handlers
from serving.store.base import StoreUnavailable
from serving.store.postgres import WriterFenced


def test_store_unavailable_from_a_replica_is_a_503_with_retry_after() -> None:
    """The catalogue replica's StoreUnavailable arrives wrapped by Ray (a RayTaskError that is also
    an instance of its cause); the client gets 503 and Retry-After, never a 500."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/down")
    def down() -> None:
        cause = StoreUnavailable("PostgreSQL unreachable")
        raise RayTaskError("score", "traceback", cause).as_instanceof_cause()

    @app.get("/fenced")
    def fenced() -> None:
        raise WriterFenced("another writer holds the store schema 'x'")

    client = TestClient(app, raise_server_exceptions=False)
    for path in ("/down", "/fenced"):
        res = client.get(path)
        assert res.status_code == 503, path
        assert res.headers["Retry-After"] == str(STORE_RETRY_AFTER_S)
        assert res.json()["error"]["code"] == "unavailable"
