"""The rate limiter and tenant resolution, without a server."""

from __future__ import annotations

import pytest

from serving.api.auth import Caller, RateLimiter
from serving.api.errors import ApiError
from serving.config import RateLimitConfig
from signals.errors import InvalidInput


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_costs_one_token_an_item_and_a_429_spends_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimitConfig(requests_per_second=10, burst=20), clock=clock)
    limiter.take_all({"acme": 15})
    with pytest.raises(ApiError) as err:
        limiter.take_all({"globex": 5, "acme": 10})  # acme has 5 left: refused, globex not charged
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "1"
    limiter.take_all({"globex": 20})  # globex's bucket is still full
    clock.now = 1.0
    limiter.take("acme", 15)  # refilled 10/s
    clock.now = 10.0
    limiter.take_all({"acme": 256})  # over the burst: waits for a full bucket, never refused for ever


def test_query_tenants_are_validated_before_use() -> None:
    with pytest.raises(InvalidInput) as err:
        Caller(None).resolve("../../tmp/evil")
    assert err.value.field == "tenant"
    assert Caller(None).resolve(None) == "default"
    with pytest.raises(ApiError):
        Caller("acme").resolve("globex")
