"""Image URLs fetched before extraction, concurrently and without blocking the event loop.

The ingress awaits :meth:`PrefetchedUrls.fetch` (the async allow-listed fetcher's
``fetch_many``) for every URL image of a request, then runs the extractors; their decoder
reads the prefetched bytes (or the fetch's error, which then names the image) through
:meth:`PrefetchedUrls.__call__`, the registry's sync ``fetch_url``. A URL not prefetched
(the batch job, the CLI) is fetched synchronously by the same fetcher.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from serving.image_fetch import ImageUrlFetcher
from signals.errors import InvalidInput
from signals.schemas import Listing, Review


class PrefetchedUrls:
    """The registry's ``fetch_url``, answered from prefetched results where it can."""

    def __init__(self, fetcher: ImageUrlFetcher) -> None:
        self.fetcher = fetcher
        self._done: dict[str, tuple[int, bytes | InvalidInput]] = {}
        self._lock = threading.Lock()

    async def fetch(self, records: Sequence[Listing | Review], max_bytes: int) -> list[str]:
        """Fetch every URL image of ``records`` (each URL once); returns the URLs, to :meth:`forget`."""
        urls = list(dict.fromkeys(im.url for r in records if isinstance(r, Listing)
                                  for im in r.images if im.url is not None))
        if not urls:
            return []
        results = await self.fetcher.fetch_many(urls, max_bytes)
        with self._lock:
            for url, result in zip(urls, results, strict=True):
                users, _ = self._done.get(url, (0, b""))
                self._done[url] = (users + 1, result)
        return urls

    def forget(self, urls: Sequence[str]) -> None:
        with self._lock:
            for url in urls:
                users, result = self._done.get(url, (1, b""))
                if users <= 1:
                    self._done.pop(url, None)
                else:
                    self._done[url] = (users - 1, result)

    def __call__(self, url: str, max_bytes: int) -> bytes:
        with self._lock:
            found = self._done.get(url)
        if found is None:
            return self.fetcher(url, max_bytes)
        result = found[1]
        if isinstance(result, InvalidInput):
            raise result
        return result
