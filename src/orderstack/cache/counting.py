"""A product cache that counts its hits and misses (plain ints, read by ``/metrics``).

Each service wraps the cache it is given, so that two services sharing one cache in one
process (the embedded default) each count their own lookups.
"""

from __future__ import annotations

from collections.abc import Sequence

from orderstack.cache.port import CachedProduct, CacheMarker, ProductCache


class CountingProductCache:
    """Delegates to ``cache``; ``hits`` and ``misses`` count the ids looked up. A tombstone
    is a hit (the cache answered); a cache that is down answers misses."""

    def __init__(self, cache: ProductCache) -> None:
        self.inner = cache
        self.hits = 0
        self.misses = 0

    async def get_many(
        self, product_ids: Sequence[int], epoch: str = ""
    ) -> list[CachedProduct | None]:
        found = await self.inner.get_many(product_ids, epoch)
        missed = found.count(None)
        self.misses += missed
        self.hits += len(found) - missed
        return found

    async def put(self, *products: CachedProduct, replace_only: bool = False) -> None:
        await self.inner.put(*products, replace_only=replace_only)

    async def server_id(self) -> str | None:
        return await self.inner.server_id()

    async def marker(self) -> CacheMarker | None:
        return await self.inner.marker()

    async def set_marker(self, marker: CacheMarker) -> None:
        await self.inner.set_marker(marker)

    async def is_up(self) -> bool:
        return await self.inner.is_up()

    async def close(self) -> None:
        await self.inner.close()
