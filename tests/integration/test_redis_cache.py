"""What only the Redis product cache does: the key and its TTL, and an outage that is a miss.
The port's contract, shared with the in-process cache, is tests/contract/test_cache_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from harness.sandbox import Sandbox
from orderstack.cache.port import CachedProduct, cache_key
from orderstack.cache.redis import RedisProductCache, _decoded

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


def _of(epoch: str, version: int, qty: int) -> CachedProduct:
    return CachedProduct(
        id=42, version=version, name="Lamp", price=Decimal("19.99"), qty=qty, epoch=epoch
    )


async def test_an_entry_is_read_as_redis_holds_it_now_not_as_decoded_before(
    cache: RedisProductCache, sandbox: Sandbox
) -> None:
    """Entries are kept decoded by their bytes (a hot product's are the same read after
    read): an entry written since is decoded afresh, one of another epoch stays a miss,
    corrupt bytes stay a miss."""
    await cache.put(_of("e1", version=1, qty=9))
    [first] = await cache.get_many([42], "e1")
    [again] = await cache.get_many([42], "e1")
    assert first is not None and first.qty == 9
    assert again is first  # the same bytes: decoded once
    assert await cache.get_many([42], "e2") == [None]  # decoded, but of another epoch

    await cache.put(_of("e1", version=2, qty=3))  # another writer's newer entry
    [now] = await cache.get_many([42], "e1")
    assert now is not None and (now.version, now.qty) == (2, 3)

    raw = aioredis.from_url(sandbox.redis_url)
    try:
        await raw.set(cache_key(42), b'{"id": 42, "version": "not a number"')
    finally:
        await raw.aclose()
    assert await cache.get_many([42], "e1") == [None]


async def test_at_most_so_many_entries_are_kept_decoded(cache: RedisProductCache) -> None:
    kept = _decoded.cache_info().maxsize
    assert kept is not None
    many = [
        CachedProduct(id=i, version=1, name="Lamp", price=Decimal(1), qty=i, epoch="e1")
        for i in range(1, kept + 101)
    ]
    await cache.put(*many)
    read = await cache.get_many([p.id for p in many], "e1")
    assert [entry.qty if entry else None for entry in read] == [p.qty for p in many]
    assert _decoded.cache_info().currsize <= kept
