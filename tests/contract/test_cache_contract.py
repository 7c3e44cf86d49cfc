"""The product cache port (cache/port.py), against the in-process cache and Redis: a write
only lands when it is newer, tombstones hide older versions, entries expire after the TTL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.cache.port import CachedProduct, ProductCache
from orderstack.cache.redis import RedisProductCache

START = datetime(2025, 9, 20, 10, 30, tzinfo=UTC)
TTL_SECONDS = 60


@pytest.fixture(params=["in-process", "redis"])
def redis_url(request: pytest.FixtureRequest) -> str | None:
    """The adapter under test: None for the in-process cache, else the sandbox's Redis."""
    if request.param == "in-process":
        return None
    return str(request.getfixturevalue("sandbox").redis_url)


async def open_cache(redis_url: str | None, ttl_seconds: int = TTL_SECONDS) -> ProductCache:
    """An empty cache: each test starts from nothing."""
    if redis_url is None:
        return InProcessProductCache(ttl_seconds=ttl_seconds)
    raw = aioredis.from_url(redis_url)
    await raw.flushdb()
    await raw.aclose()
    return RedisProductCache(redis_url, ttl_seconds=ttl_seconds)


@pytest.fixture
async def cache(redis_url: str | None) -> AsyncIterator[ProductCache]:
    cache = await open_cache(redis_url)
    yield cache
    await cache.close()


def entry(
    version: int, qty: int = 5, *, product_id: int = 1, deleted: bool = False
) -> CachedProduct:
    return CachedProduct(
        id=product_id,
        version=version,
        name="Phone",
        price=Decimal("9.99"),
        qty=qty,
        created_at=START,
        updated_at=START,
        deleted=deleted,
    )


async def cached(cache: ProductCache, product_id: int = 1) -> CachedProduct | None:
    [found] = await cache.get_many([product_id])
    return found


async def test_a_miss_is_none(cache: ProductCache) -> None:
    assert await cached(cache) is None


async def test_put_then_get_returns_the_entry_exactly(cache: ProductCache) -> None:
    await cache.put(entry(1))

    assert await cached(cache) == entry(1)


async def test_a_newer_version_replaces_the_entry(cache: ProductCache) -> None:
    await cache.put(entry(1, qty=5))

    await cache.put(entry(2, qty=4))

    assert await cached(cache) == entry(2, qty=4)


async def test_an_older_version_never_overwrites_a_newer_one(cache: ProductCache) -> None:
    await cache.put(entry(3, qty=2))

    await cache.put(entry(2, qty=3))  # a reader that loaded the row earlier
    await cache.put(entry(1, qty=5))

    assert await cached(cache) == entry(3, qty=2)


async def test_the_same_version_keeps_the_first_write(cache: ProductCache) -> None:
    await cache.put(entry(2, qty=4))

    await cache.put(entry(2, qty=99))

    assert await cached(cache) == entry(2, qty=4)


async def test_a_tombstone_hides_older_versions_from_late_writers(cache: ProductCache) -> None:
    await cache.put(entry(7, qty=1))
    await cache.put(CachedProduct(id=1, version=8, deleted=True))

    await cache.put(entry(7, qty=1))

    assert await cached(cache) == CachedProduct(id=1, version=8, deleted=True)


async def test_entries_are_kept_per_product(cache: ProductCache) -> None:
    await cache.put(entry(9))

    await cache.put(CachedProduct(id=2, version=1, name="Other"))

    assert await cached(cache) == entry(9)
    assert await cached(cache, 2) == CachedProduct(id=2, version=1, name="Other")


async def test_several_entries_in_one_put_each_keep_the_newer_version(
    cache: ProductCache,
) -> None:
    await cache.put(entry(5, qty=3, product_id=42))

    await cache.put(
        entry(4, qty=9, product_id=42),  # older than what is cached: ignored
        entry(1, qty=7, product_id=43),
        entry(2, qty=8, product_id=44),
    )

    found = await cache.get_many([42, 43, 44])
    assert [(c.version, c.qty) for c in found if c is not None] == [(5, 3), (1, 7), (2, 8)]


async def test_one_id_twice_in_one_put_keeps_the_newer_whatever_the_order(
    cache: ProductCache,
) -> None:
    await cache.put(entry(3, qty=1, product_id=50), entry(2, qty=2, product_id=50))
    await cache.put(entry(6, qty=6, product_id=51), entry(7, qty=7, product_id=51))
    await cache.put(CachedProduct(id=52, version=4, deleted=True), entry(3, product_id=52))

    found = await cache.get_many([50, 51, 52])
    assert [(c.version, c.qty, c.deleted) for c in found if c is not None] == [
        (3, 1, False),
        (7, 7, False),
        (4, 0, True),
    ]


async def test_several_lookups_answer_each_id_in_order(cache: ProductCache) -> None:
    await cache.put(entry(2, qty=5, product_id=42))
    await cache.put(CachedProduct(id=43, version=3, deleted=True))

    found = await cache.get_many([43, 7, 42, 43])

    assert found == [
        CachedProduct(id=43, version=3, deleted=True),
        None,
        entry(2, qty=5, product_id=42),
        CachedProduct(id=43, version=3, deleted=True),
    ]
    assert await cache.get_many([]) == []


async def test_an_entry_expires_after_the_ttl_and_then_no_longer_blocks_a_write(
    redis_url: str | None,
) -> None:
    cache = await open_cache(redis_url, ttl_seconds=1)
    try:
        await cache.put(entry(5, product_id=77))
        assert await cached(cache, 77) == entry(5, product_id=77)

        await asyncio.sleep(1.2)
        assert await cached(cache, 77) is None

        await cache.put(entry(2, product_id=77))
        assert await cached(cache, 77) == entry(2, product_id=77)
    finally:
        await cache.close()


async def test_a_reachable_cache_is_up(cache: ProductCache) -> None:
    assert await cache.is_up()
