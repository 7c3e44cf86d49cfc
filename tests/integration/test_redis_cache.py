"""What only the Redis product cache does: the key and its TTL, and an outage that is a miss.
The port's contract, shared with the in-process cache, is tests/contract/test_cache_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from harness.sandbox import Sandbox
from orderstack.cache.port import CachedProduct, cache_key
from orderstack.cache.redis import RedisProductCache

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
