"""In-process adapter of the product cache (embedded default and unit tests)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from orderstack.cache.port import CachedProduct


class InProcessProductCache:
    def __init__(self, ttl_seconds: float = 300) -> None:
        self._ttl = ttl_seconds
        self._entries: dict[int, tuple[float, CachedProduct]] = {}

    def _live(self, product_id: int) -> CachedProduct | None:
        entry = self._entries.get(product_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def get_many(self, product_ids: Sequence[int]) -> list[CachedProduct | None]:
        return [self._live(product_id) for product_id in product_ids]

    async def put(self, *products: CachedProduct) -> None:
        for product in products:
            current = self._live(product.id)
            if current is None or current.version < product.version:
                self._entries[product.id] = (time.monotonic() + self._ttl, product)

    async def is_up(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()
