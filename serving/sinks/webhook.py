"""Signed webhooks: each delivery is one ``POST`` of a JSON batch of events to a configured URL.

Body: ``{"delivery_id": "...", "event_ids": [...], "events": [...]}`` (events in the shape of
:mod:`serving.sinks.events`). Headers:

* ``MarketGuard-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]``: HMAC-SHA256 of
  ``"<t>." + body`` under each active secret (``sinks.webhooks[].secrets``), so a receiver that
  knows either the old or the new secret accepts it while keys rotate;
* ``Idempotency-Key: <delivery_id>``: the same on every retry of the delivery.

Contact values in evidence are masked by default (``redact``, :mod:`serving.sinks.redaction`).
A receiver verifies the signature over the raw body and rejects stale timestamps
(:func:`verify_signature`; the README has it in ten lines). Any answer but a 2xx, or none in
``timeout_s``, is a failure: the delivery is retried with backoff. Redirects are not followed,
and events go only to the URLs named in config.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

import httpx

from serving.config import WebhookSinkConfig
from serving.sinks.events import webhook_sink_name
from serving.sinks.redaction import redact_event

SIGNATURE_HEADER = "MarketGuard-Signature"


def sign(body: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """The signature header's value for ``body`` at ``timestamp``, one ``v1`` per secret."""
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"] + [
        "v1=" + hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join(parts)


def verify_signature(body: bytes, header: str, secrets: Sequence[str], tolerance_s: float = 300.0,
                     now: float | None = None) -> bool:
    """What a receiver does: a ``v1`` matches one of its secrets, and ``t`` is recent."""
    items = [p.strip().split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in items if k == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    t = int(stamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    signed = f"{t}.".encode() + body
    wanted = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return any(hmac.compare_digest(v, w) for k, v in items if k == "v1" for w in wanted)


class WebhookError(RuntimeError):
    """The receiver did not take the delivery (status or transport error)."""


class WebhookSink:
    """Delivers events to one configured URL; raises :class:`WebhookError` unless it answers 2xx."""

    def __init__(self, config: WebhookSinkConfig) -> None:
        self.config = config
        self.name = webhook_sink_name(config.url)
        self.client = httpx.Client(timeout=config.timeout_s, follow_redirects=False)

    def deliver(self, delivery_id: str, events: list[dict[str, Any]]) -> None:
        events = [redact_event(e, self.config.redact, self.config.redact_key) for e in events]
        body = json.dumps({"delivery_id": delivery_id, "event_ids": [e["event_id"] for e in events],
                           "events": events}, sort_keys=True, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": delivery_id,
                   SIGNATURE_HEADER: sign(body, self.config.secrets, int(time.time()))}
        try:
            r = self.client.post(self.config.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise WebhookError(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= r.status_code < 300:
            raise WebhookError(f"HTTP {r.status_code}")

    def close(self) -> None:
        self.client.close()
