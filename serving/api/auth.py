"""API keys and tenants, and the per-tenant rate limit.

With keys configured the key decides the tenant, and a body or query naming another
tenant is a 403. Without keys the service is in local mode (loopback only, enforced by
the CLI): the tenant is the record's ``tenant`` or ``?tenant=``, default ``default``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fastapi import Request

from serving.api.errors import ApiError
from serving.config import ApiKey, RateLimitConfig
from signals.errors import InvalidInput
from signals.schemas import TENANT_PATTERN

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Caller:
    """Who is calling: ``tenant`` fixed by an API key, or None in local mode."""

    tenant: str | None

    def resolve(self, requested: str | None, field: str = "tenant") -> str:
        """The tenant a request acts for; 403 when a key's caller names another one."""
        if requested is not None and not re.fullmatch(TENANT_PATTERN, requested):
            raise InvalidInput(field, "must be 1-63 characters of lower-case letters, digits, _ and -, "
                                      "starting with a letter or digit")
        if self.tenant is None:
            return requested or DEFAULT_TENANT
        if requested is not None and requested != self.tenant:
            raise ApiError(403, "forbidden", f"this API key does not own tenant {requested!r}", field)
        return self.tenant


class KeyRing:
    """Configured keys, compared by SHA-256 in constant time."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys: list[tuple[bytes, str]] = []
        for k in keys:
            digest = hashlib.sha256(k.key.encode()).hexdigest() if k.key else k.key_sha256
            if digest is None:
                raise ValueError(f"API key for tenant {k.tenant!r} has neither key nor key_sha256")
            self._keys.append((bytes.fromhex(digest), k.tenant))

    @property
    def local_mode(self) -> bool:
        return not self._keys

    def caller(self, request: Request) -> Caller:
        if self.local_mode:
            return Caller(None)
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise ApiError(401, "unauthorized", "an API key is required (X-API-Key or Authorization: Bearer)",
                           headers={"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(given.encode()).digest()
        tenant = None
        for known, owner in self._keys:  # every key compared: the time does not tell which matched
            if hmac.compare_digest(known, digest):
                tenant = owner
        if tenant is None:
            raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return Caller(tenant)


class RateLimiter:
    """A token bucket per tenant, in this replica's memory (so the limit is per replica)."""

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float] | None = None) -> None:
        self.rate, self.burst = config.requests_per_second, float(config.burst)
        self._clock = clock or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, tenant: str, cost: float = 1.0) -> None:
        """Spend ``cost`` tokens of the tenant's bucket or raise a 429 with ``Retry-After``."""
        self.take_all({tenant: cost})

    def take_all(self, costs: Mapping[str, float]) -> None:
        """Spend each tenant's cost, all or nothing: a 429 leaves every bucket as it was.

        A cost over the burst is charged as the burst (a full bucket is always enough), so a
        large batch waits for a full bucket rather than being refused for ever.
        """
        now = self._clock()
        with self._lock:
            refilled = {}
            for t in costs:
                tokens, last = self._buckets.get(t, (self.burst, now))
                refilled[t] = min(self.burst, tokens + (now - last) * self.rate)
            for tenant, cost in costs.items():
                need = min(float(cost), self.burst)
                if refilled[tenant] < need:
                    wait = max(1, math.ceil((need - refilled[tenant]) / self.rate))
                    raise ApiError(429, "rate_limited", f"tenant {tenant!r} is over its rate limit",
                                   headers={"Retry-After": str(wait)})
            for tenant, cost in costs.items():
                self._buckets[tenant] = (refilled[tenant] - min(float(cost), self.burst), now)
