"""The events MarketGuard publishes: one per signal written, one per entity whose signals are withdrawn.

Shape (``marketguard.event/v1``, JSON)::

    {"schema": "marketguard.event/v1", "event_id": "<32 hex>", "type": "signal",
     "tenant": "acme", "entity_type": "listing", "entity_id": "L1", "seq": 7,
     "signal": {... the signal record, marketguard.signal/v1 ...}}

    {"schema": "marketguard.event/v1", "event_id": "...", "type": "retract",
     "tenant": "acme", "entity_type": "listing", "entity_id": "L1", "seq": 8, "observed_at": "..."}

``event_id`` is unique and the same on every delivery of the event (de-duplicate on it);
``seq`` orders the entity's events, across all its signals: strictly increasing per entity and
at least its observation time in microseconds since the epoch (so a batch run's published
events and the service's later ones order by time). A consumer keeps, per entity and signal,
the value with the highest ``seq`` (delivery is at-least-once, in order per sink, but a replayed
dead letter arrives after newer events). A ``retract`` (the item was deleted, or a seller lost
its last listing) withdraws every value of the entity with a lower ``seq``; one that names
``sources`` (a re-posted listing whose new photos will not be read: its old photos' OCR and
NSFW values go) only the values of those extractors.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

SCHEMA = "marketguard.event/v1"


def signal_event(signal: dict[str, Any], seq: int) -> dict[str, Any]:
    """The event of one signal record (its wire form) and its entity's sequence number."""
    return {"schema": SCHEMA, "event_id": uuid.uuid4().hex, "type": "signal", "tenant": signal["tenant"],
            "entity_type": signal["entity_type"], "entity_id": signal["entity_id"], "seq": seq,
            "signal": signal}


def retract_event(tenant: str, entity_type: str, entity_id: str, seq: int, observed_at: str,
                  sources: Sequence[str] = ()) -> dict[str, Any]:
    """The event that withdraws an entity's signals (its history stays in the store): all of them,
    or only those of the extractors named in ``sources`` (``image_ocr``: the old photos' OCR when a
    re-posted listing's new photos will not be read)."""
    event = {"schema": SCHEMA, "event_id": uuid.uuid4().hex, "type": "retract", "tenant": tenant,
             "entity_type": entity_type, "entity_id": entity_id, "seq": seq, "observed_at": observed_at}
    if sources:
        event["sources"] = list(sources)
    return event


def signal_field(signal: dict[str, Any]) -> str:
    """Where the latest value of a signal lives in an entity's hash: ``name@source``."""
    return f"{signal['name']}@{signal['source']}"


def webhook_sink_name(url: str) -> str:
    """A webhook's sink name: stable while its URL is (config order does not matter)."""
    return "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:12]
