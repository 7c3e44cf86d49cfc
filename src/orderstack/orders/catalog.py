"""Product lookup for the order service: the shared cache first, then the product service.

The order service never writes into ``product:{id}``: on a miss it asks the product
service, whose read-through fills the cache with a versioned entry.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Protocol

import httpx
import structlog

from orderstack.batching import Batcher
from orderstack.cache.port import CachedProduct, ProductCache
from orderstack.orders.domain import CatalogUnavailable

log = structlog.get_logger(__name__)


class ProductCatalog(Protocol):
    async def product_exists(self, product_id: int) -> bool:
        """True / False from the cache or the product service; raises CatalogUnavailable."""

    async def warm(self, product_ids: Sequence[int]) -> tuple[list[int], list[int]]: ...

    async def is_up(self) -> bool: ...

    async def close(self) -> None: ...


class HttpProductCatalog:
    """Asks the product service over HTTP with a per-attempt timeout and bounded retries.

    ``base_urls`` may name several product-service replicas: lookups are spread over them
    and a retry goes to the next one.
    """

    def __init__(
        self,
        cache: ProductCache,
        base_urls: list[str],
        *,
        timeout: float = 1.0,
        retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._cache = cache
        # Concurrent orders' lookups share one cache round trip.
        self._lookups: Batcher[int, CachedProduct | None] = Batcher(cache.get_many, writers=2)
        self._urls = base_urls
        self._next = itertools.cycle(range(len(base_urls)))
        self._retries = retries
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 0.5)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
            transport=transport,
        )

    async def product_exists(self, product_id: int) -> bool:
        cached = await self._lookups.submit(product_id)
        if cached is not None:
            return not cached.deleted
        last_error = "no attempt"
        for attempt in range(self._retries + 1):
            url = f"{self._urls[next(self._next)]}/products/{product_id}"
            try:
                response = await self._client.get(url)
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            else:
                if response.status_code == 200:
                    return True
                if response.status_code == 404:
                    return False
                last_error = f"HTTP {response.status_code}"
                if response.status_code < 500:
                    break  # our request is wrong: retrying will not help
            if attempt < self._retries:
                await asyncio.sleep(0.05 * 2**attempt)
        log.warning("product service unavailable", product_id=product_id, error=last_error)
        raise CatalogUnavailable(last_error)

    async def warm(self, product_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Make sure each product is cached (the product service's read-through caches it);
        returns (cached, not_found). Raises CatalogUnavailable."""
        cached: list[int] = []
        not_found: list[int] = []
        for product_id in dict.fromkeys(product_ids):
            (cached if await self.product_exists(product_id) else not_found).append(product_id)
        return cached, not_found

    async def is_up(self) -> bool:
        for base in self._urls:
            try:
                await self._client.get(f"{base}/health")
                return True  # it answered: reachable, whatever its own dependencies say
            except httpx.HTTPError:
                continue
        return False

    async def close(self) -> None:
        await self._client.aclose()
