"""ASGI middleware for what every request must respect: the body size and the replica's capacity.

A body over ``max_body_bytes`` is a 413 (from ``Content-Length`` before a byte is read,
or once a streamed body passes the limit); past ``max_in_flight`` requests at once the
replica answers 503 with ``Retry-After`` instead of queueing without bound.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.api.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


def _app_path(scope: Scope) -> str:
    """The request's path within the app: behind a route prefix (``root_path``, e.g. a Serve app
    at ``/pg``) the scope's path still starts with the prefix."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root):] if root and path.startswith(root) else path


class LimitsMiddleware:
    """Body-size cap and in-flight cap for ``/v1/`` routes (health and metrics are never shed)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_in_flight: int,
                 on_shed: Callable[[str], None] | None = None) -> None:
        self.app, self.max_body, self.max_in_flight = app, max_body_bytes, max_in_flight
        self.in_flight = 0
        self.on_shed = on_shed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _app_path(scope).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413,
                             error_body("too_large", f"the body is over {self.max_body} bytes", None),
                             {"Connection": "close"})
            return
        if self.in_flight >= self.max_in_flight:
            if self.on_shed is not None:
                self.on_shed(_app_path(scope))
            await _send_json(send, 503,
                             error_body("overloaded", "the service is at capacity; retry later", None),
                             {"Retry-After": "1"})
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413,
                                 error_body("too_large", f"the body is over {self.max_body} bytes", None),
                                 {"Connection": "close"})
        finally:
            self.in_flight -= 1
