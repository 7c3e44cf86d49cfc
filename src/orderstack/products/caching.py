"""A product as ``product:{id}`` holds it, and back; and the cache as one product database
sees it: its entries stamped with the database's epoch, other databases' entries missed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from orderstack.cache.port import CachedProduct, KnownEpoch, ProductCache
from orderstack.products.domain import Product


def cache_entry(product: Product) -> CachedProduct:
    return CachedProduct(
        id=product.id,
        version=product.version,
        name=product.name,
        price=product.price,
        qty=product.qty,
        created_at=product.created_at,
        updated_at=product.updated_at,
    )


def tombstone(product_id: int, version: int) -> CachedProduct:
    """What a deleted product leaves in the cache: a newer version, marked deleted."""
    return CachedProduct(id=product_id, version=version, deleted=True)


def product_from(entry: CachedProduct) -> Product | None:
    """The product an entry describes; None for a tombstone or an incomplete entry."""
    if entry.deleted or entry.created_at is None or entry.updated_at is None:
        return None
    return Product(
        id=entry.id,
        name=entry.name,
        price=entry.price,
        qty=entry.qty,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        version=entry.version,
    )


class DatabaseEpoch:
    """The epoch of the product database this process serves (``products_epoch``), read
    once when first needed, then again by each cache repair pass (``reread``), so a
    database replaced under a running process is noticed within one repair interval.
    ``known``, when given, is told every value read (the order service in the same
    process reads it there)."""

    def __init__(self, read: Callable[[], Awaitable[str]], known: KnownEpoch | None = None):
        self._read = read
        self._known = known or KnownEpoch()
        self._lock = asyncio.Lock()

    @property
    def value(self) -> str | None:
        """The epoch last read; None before the first read."""
        return self._known.value

    async def current(self) -> str:
        """The epoch last read, reading it first if it never was (one query, once)."""
        if self._known.value is None:
            async with self._lock:
                if self._known.value is None:
                    self._known.value = await self._read()
        return self._known.value

    async def reread(self) -> str:
        self._known.value = await self._read()
        return self._known.value

    def learn(self, epoch: str) -> None:
        """Take ``epoch`` as read (by a unit of work of the caller's)."""
        self._known.value = epoch


class EpochCache:
    """The product cache as the product service uses it: every entry it writes is stamped
    with its database's epoch, and it reads only entries of that epoch (another
    database's are misses, cache/port.py)."""

    def __init__(self, cache: ProductCache, epoch: DatabaseEpoch) -> None:
        self._cache, self._epoch = cache, epoch

    async def get_many(self, product_ids: Sequence[int]) -> list[CachedProduct | None]:
        return await self._cache.get_many(product_ids, await self._epoch.current())

    async def put(self, *entries: CachedProduct) -> None:
        epoch = await self._epoch.current()
        await self._cache.put(*(replace(entry, epoch=epoch) for entry in entries))
