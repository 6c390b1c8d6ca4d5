"""The FastAPI app: routers per resource, the error handlers, keys, limits and metrics.

:func:`create_app` takes a :class:`~serving.api.backend.Backend`; the Serve ingress passes
itself, a test or the in-process benchmark passes a :class:`~serving.api.backend.LocalBackend`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi

from serving.api.auth import KeyRing, RateLimiter
from serving.api.backend import Backend
from serving.api.errors import install_error_handlers
from serving.api.limits import LimitsMiddleware
from serving.api.metrics import ApiMetrics
from serving.config import ServiceConfig
from signals.schemas import Label, Listing, Review

DESCRIPTION = """Signals for marketplace trust and safety: near-duplicate scam listings, stolen photos,
off-platform contact details, templated reviews. Every answer is evidence-carrying signals per
entity (listing, seller, review, reviewer, product); the decision stays with your risk layer.

Errors: `{"error": {"code", "message", "field"}}` with 400/413/415/422 for bad input, 401/403 for
keys and tenants, 429 past a tenant's rate, 503 with `Retry-After` while not ready or at capacity."""


@dataclass
class ApiState:
    """What every route needs, reached through ``request.app.state.api``."""

    backend: Backend
    config: ServiceConfig
    keys: KeyRing
    limiter: RateLimiter
    metrics: ApiMetrics


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def create_app(backend: Backend, config: ServiceConfig) -> FastAPI:
    from serving.api.routes import banks, entities, health, labels, listings, reviews

    app = FastAPI(title="MarketGuard", version="1", description=DESCRIPTION,
                  openapi_tags=[{"name": n} for n in ("listings", "reviews", "entities", "banks", "labels",
                                                      "operations")])
    metrics = ApiMetrics()
    app.state.api = ApiState(backend, config, KeyRing(config.api_keys), RateLimiter(config.rate_limit),
                             metrics)
    install_error_handlers(app)
    for module in (listings, reviews, entities, banks, labels, health):
        app.include_router(module.router)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.latency.labels(request.method, path, str(response.status_code)).observe(
            time.perf_counter() - start)
        if response.status_code >= 400:
            metrics.errors.labels(str(response.status_code)).inc()
        return response

    def openapi() -> dict[str, Any]:
        # The routes read their JSON bodies themselves; the record schemas they document by
        # reference are added here, once.
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes, tags=app.openapi_tags)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (Listing, Review, Label):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body.pop("$defs", {}))
                schemas[model.__name__] = body
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the spec
    app.add_middleware(LimitsMiddleware, max_body_bytes=config.max_body_bytes,
                       max_in_flight=config.ingress.max_in_flight,
                       on_shed=lambda path: metrics.shed.labels(path).inc())
    return app
