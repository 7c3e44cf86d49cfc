"""The versioned product cache against the real Redis, and its behaviour when Redis is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from orderstack.cache.port import CachedProduct, cache_key
from orderstack.cache.redis import RedisProductCache
from orderstack.harness.sandbox import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture
async def cache(sandbox: Sandbox) -> AsyncIterator[RedisProductCache]:
    raw = aioredis.from_url(sandbox.redis_url)
    await raw.flushdb()  # each test starts from an empty cache
    await raw.aclose()
    cache = RedisProductCache(sandbox.redis_url, ttl_seconds=60)
    yield cache
    await cache.close()


def _product(version: int, qty: int) -> CachedProduct:
    return CachedProduct(id=42, version=version, name="Lamp", price=Decimal("19.99"), qty=qty)


async def test_older_version_never_overwrites_a_newer_one(cache: RedisProductCache) -> None:
    await cache.put(_product(version=5, qty=3))
    await cache.put(_product(version=4, qty=4))  # a reader that loaded the row earlier
    cached = (await cache.get_many([42]))[0]
    assert cached is not None and (cached.version, cached.qty) == (5, 3)
    await cache.put(_product(version=6, qty=2))
    cached = (await cache.get_many([42]))[0]
    assert cached is not None and (cached.version, cached.qty) == (6, 2)


async def test_several_entries_in_one_round_trip_each_keep_the_newer_version(
    cache: RedisProductCache,
) -> None:
    await cache.put(_product(version=5, qty=3))

    await cache.put(
        _product(version=4, qty=9),  # older than what is cached: ignored
        CachedProduct(id=43, version=1, name="Desk", price=Decimal(1), qty=7),
        CachedProduct(id=44, version=2, name="Chair", price=Decimal(2), qty=8),
    )

    found = [(await cache.get_many([i]))[0] for i in (42, 43, 44)]
    assert [(c.version, c.qty) for c in found if c is not None] == [(5, 3), (1, 7), (2, 8)]


async def test_tombstone_hides_the_product_from_late_readers(cache: RedisProductCache) -> None:
    await cache.put(_product(version=7, qty=1))
    await cache.put(CachedProduct(id=42, version=8, deleted=True))
    await cache.put(_product(version=7, qty=1))
    cached = (await cache.get_many([42]))[0]
    assert cached is not None and cached.deleted


async def test_entry_lives_under_product_id_with_a_ttl(
    cache: RedisProductCache, sandbox: Sandbox
) -> None:
    await cache.put(_product(version=1, qty=9))
    raw = aioredis.from_url(sandbox.redis_url)
    try:
        assert await raw.ttl(cache_key(42)) > 0
        assert b'"qty":9' in await raw.get(cache_key(42))
    finally:
        await raw.aclose()


async def test_unreachable_redis_is_a_miss_not_an_error() -> None:
    cache = RedisProductCache("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        await cache.put(_product(version=1, qty=1))
        assert (await cache.get_many([42]))[0] is None
        assert await cache.get_many([42, 43]) == [None, None]
        assert not await cache.is_up()
    finally:
        await cache.close()


async def test_several_lookups_in_one_round_trip_answer_each_id_in_order(
    cache: RedisProductCache,
) -> None:
    await cache.put(_product(version=2, qty=5))
    await cache.put(CachedProduct(id=43, version=3, deleted=True))

    found = await cache.get_many([43, 7, 42])

    assert found[0] is not None and found[0].deleted
    assert found[1] is None
    assert found[2] is not None and found[2].qty == 5
