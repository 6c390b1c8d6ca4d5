"""URL images are fetched once, asynchronously, before extraction; the decoder reads the results."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from serving.image_fetch import ImageUrlFetcher
from serving.scoring.prefetch import PrefetchedUrls
from signals.errors import InvalidInput
from signals.schemas import Listing


class FakeFetcher:
    def __init__(self) -> None:
        self.async_calls: list[list[str]] = []
        self.sync_calls: list[str] = []

    async def fetch_many(self, urls: Sequence[str],
                         max_bytes: int | None = None) -> list[bytes | InvalidInput]:
        self.async_calls.append(list(urls))
        return [InvalidInput("url", "HTTP 404", "not_found") if "missing" in u else u.encode() for u in urls]

    def __call__(self, url: str, max_bytes: int) -> bytes:
        self.sync_calls.append(url)
        return b"sync:" + url.encode()


def listing(lid: str, *urls: str) -> Listing:
    return Listing(listing_id=lid, seller_id="s", title="t", images=[{"url": u} for u in urls])  # type: ignore[misc]  # dicts validate into ImageRef


def test_prefetched_bytes_and_errors_are_what_the_decoder_reads() -> None:
    fake = FakeFetcher()
    pre = PrefetchedUrls(cast(ImageUrlFetcher, fake))
    records: list[Any] = [listing("A", "https://img.test/a.jpg", "https://img.test/missing.jpg"),
                          listing("B", "https://img.test/a.jpg")]
    urls = asyncio.run(pre.fetch(records, 1 << 20))
    assert fake.async_calls == [["https://img.test/a.jpg", "https://img.test/missing.jpg"]]  # each URL once
    assert pre("https://img.test/a.jpg", 1 << 20) == b"https://img.test/a.jpg"
    with pytest.raises(InvalidInput, match="404"):
        pre("https://img.test/missing.jpg", 1 << 20)
    assert fake.sync_calls == []
    pre.forget(urls)
    assert pre("https://img.test/a.jpg", 1 << 20) == b"sync:https://img.test/a.jpg"  # not prefetched: sync


def test_concurrent_requests_keep_a_shared_url_until_both_forget() -> None:
    fake = FakeFetcher()
    pre = PrefetchedUrls(cast(ImageUrlFetcher, fake))
    first = asyncio.run(pre.fetch([listing("A", "https://img.test/x.jpg")], 100))
    second = asyncio.run(pre.fetch([listing("B", "https://img.test/x.jpg")], 100))
    pre.forget(first)
    assert pre("https://img.test/x.jpg", 100) == b"https://img.test/x.jpg"
    pre.forget(second)
    assert pre("https://img.test/x.jpg", 100).startswith(b"sync:")
