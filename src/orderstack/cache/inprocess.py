"""In-process adapter of the product cache (embedded default and unit tests).

It lives and dies with its process, so it never restarts from an old snapshot: its server
id is made once, at construction, and never changes. Epochs and the marker follow the same
rules as in Redis (cache/port.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from orderstack.cache.port import CachedProduct, CacheMarker, trusted


class InProcessProductCache:
    def __init__(self, ttl_seconds: float = 300) -> None:
        self._ttl = ttl_seconds
        self._entries: dict[int, tuple[float, CachedProduct]] = {}
        self._marker: CacheMarker | None = None
        self._server = uuid.uuid4().hex

    def _live(self, product_id: int) -> CachedProduct | None:
        entry = self._entries.get(product_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def get_many(
        self, product_ids: Sequence[int], epoch: str = ""
    ) -> list[CachedProduct | None]:
        if not trusted(self._marker, epoch):
            return [None] * len(product_ids)
        found = [self._live(product_id) for product_id in product_ids]
        return [entry if entry is not None and entry.epoch == epoch else None for entry in found]

    async def put(self, *products: CachedProduct, replace_only: bool = False) -> None:
        for product in products:
            current = self._live(product.id)
            if current is None and replace_only:
                continue
            if (
                current is None
                or current.epoch != product.epoch
                or current.version < product.version
            ):
                self._entries[product.id] = (time.monotonic() + self._ttl, product)

    async def server_id(self) -> str | None:
        return self._server

    async def marker(self) -> CacheMarker | None:
        return self._marker

    async def set_marker(self, marker: CacheMarker) -> None:
        self._marker = marker

    async def is_up(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()
