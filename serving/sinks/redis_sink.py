"""The Redis sink: a stream per tenant (every event) and a hash per entity (the latest values).

Keys (``<p>`` is ``sinks.redis.key_prefix``, default ``marketguard``; the ``{tenant}`` hash tag
keeps a tenant's keys in one Redis Cluster slot):

* ``<p>:{<tenant>}:events``: a stream, one entry per event (fields ``event_id`` and ``event``, the
  event's JSON), bounded to about ``sinks.redis.stream_maxlen`` entries (``XADD MAXLEN ~``).
* ``<p>:{<tenant>}:<entity_type>:<entity_id>``: a hash, one field per ``name@source`` holding
  the signal's JSON, and ``name@source#seq`` its event's sequence number. A value is written
  only over an older one (a replayed dead letter never overwrites a newer value), and a
  ``retract`` event removes every value older than itself (``#retracted`` keeps its ``seq``), or,
  naming ``sources``, only the older values of those extractors.

Each event is applied by one Lua script (atomic per event); a delivery's events go in one
pipeline, one round trip.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from serving.config import RedisSinkConfig
from serving.sinks.events import signal_field
from serving.sinks.redaction import redact_event

# KEYS: the tenant's stream, the entity's hash. ARGV: event id, event JSON, seq, field ("" for
# a retract), signal JSON, stream bound, then (a retract of some sources only) each source.
_APPLY = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', 'event_id', ARGV[1], 'event', ARGV[2])
local seq = tonumber(ARGV[3])
if ARGV[4] == '' then
  local all = redis.call('HGETALL', KEYS[2])
  for j = 1, #all, 2 do
    local f = all[j]
    if string.sub(f, -4) == '#seq' and tonumber(all[j + 1]) < seq then
      local base = string.sub(f, 1, -5)
      local hit = #ARGV == 6
      for a = 7, #ARGV do
        if string.find(base, '@' .. ARGV[a] .. '@', 1, true) then hit = true end
      end
      if hit then redis.call('HDEL', KEYS[2], f, base) end
    end
  end
  if #ARGV == 6 then
    local was = tonumber(redis.call('HGET', KEYS[2], '#retracted') or '0')
    if seq > was then redis.call('HSET', KEYS[2], '#retracted', seq) end
  end
  return 1
end
local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[4] .. '#seq') or '0')
local gone = tonumber(redis.call('HGET', KEYS[2], '#retracted') or '0')
if seq > cur and seq > gone then
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5], ARGV[4] .. '#seq', seq)
  return 1
end
return 0
"""


def stream_key(prefix: str, tenant: str) -> str:
    return f"{prefix}:{{{tenant}}}:events"


def entity_key(prefix: str, tenant: str, entity_type: str, entity_id: str) -> str:
    return f"{prefix}:{{{tenant}}}:{entity_type}:{entity_id}"


class RedisSink:
    """Delivers events to Redis; raises on any failure (the publisher retries the delivery)."""

    name = "redis"

    def __init__(self, config: RedisSinkConfig) -> None:
        self.config = config
        self.client = redis.Redis.from_url(config.url, socket_timeout=config.timeout_s,
                                           socket_connect_timeout=config.timeout_s)
        self.apply = self.client.register_script(_APPLY)

    def deliver(self, delivery_id: str, events: list[dict[str, Any]]) -> None:
        p = self.config.key_prefix
        pipe = self.client.pipeline(transaction=False)
        for ev in (redact_event(e, self.config.redact, self.config.redact_key) for e in events):
            signal = ev.get("signal")
            field = signal_field(signal) if signal is not None else ""
            self.apply(keys=[stream_key(p, ev["tenant"]), entity_key(p, ev["tenant"], ev["entity_type"],
                                                                      ev["entity_id"])],
                       args=[ev["event_id"], json.dumps(ev, sort_keys=True, ensure_ascii=False), ev["seq"],
                             field, json.dumps(signal, sort_keys=True, ensure_ascii=False) if signal else "",
                             self.config.stream_maxlen, *ev.get("sources", [])],
                       client=pipe)
        pipe.execute()

    def close(self) -> None:
        self.client.close()
