"""The product cache port (cache/port.py), against the in-process cache and Redis: a write
only lands when it is newer, tombstones hide older versions, entries expire after the TTL;
versions compare only within one database's epoch, a reader never gets an entry of another
epoch, and the marker decides whether entries are trusted at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.cache.port import CachedProduct, CacheMarker, ProductCache
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
    version: int, qty: int = 5, *, product_id: int = 1, deleted: bool = False, epoch: str = ""
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
        epoch=epoch,
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


# -- epochs: the cache speaks for one database at a time -------------------------------

OLD, NEW = "a" * 32, "b" * 32  # two product databases' epochs


async def test_an_entry_of_another_epoch_is_a_miss(cache: ProductCache) -> None:
    await cache.put(entry(7, qty=1, epoch=OLD))

    assert await cache.get_many([1], NEW) == [None]
    assert await cache.get_many([1]) == [None]  # unstamped readers neither
    assert await cache.get_many([1], OLD) == [entry(7, qty=1, epoch=OLD)]


async def test_a_write_replaces_an_entry_of_another_epoch_whatever_its_version(
    cache: ProductCache,
) -> None:
    """A fresh database starts at version 1: the old database's version 7 must not keep it
    out, and must never be served for it."""
    await cache.put(entry(7, qty=1, epoch=OLD))

    await cache.put(entry(1, qty=50, epoch=NEW))

    assert await cache.get_many([1], NEW) == [entry(1, qty=50, epoch=NEW)]
    assert await cache.get_many([1], OLD) == [None]


async def test_versions_compare_within_an_epoch_only(cache: ProductCache) -> None:
    await cache.put(entry(1, qty=50, epoch=NEW))
    await cache.put(entry(9, qty=1, epoch=OLD))  # the other database writes back: it wins
    await cache.put(entry(3, qty=40, epoch=NEW))  # and is replaced in turn

    await cache.put(entry(2, qty=45, epoch=NEW))  # older than the NEW entry: kept out

    assert await cache.get_many([1], NEW) == [entry(3, qty=40, epoch=NEW)]


async def test_a_tombstone_of_another_epoch_hides_nothing(cache: ProductCache) -> None:
    await cache.put(CachedProduct(id=1, version=8, deleted=True, epoch=OLD))

    await cache.put(entry(1, epoch=NEW))

    assert await cache.get_many([1], NEW) == [entry(1, epoch=NEW)]


async def test_one_lookup_answers_each_id_by_its_own_epoch(cache: ProductCache) -> None:
    await cache.put(entry(2, product_id=10, epoch=NEW), entry(5, product_id=11, epoch=OLD))

    assert await cache.get_many([10, 11, 12], NEW) == [
        entry(2, product_id=10, epoch=NEW),
        None,
        None,
    ]


async def test_the_marker_of_another_epoch_or_a_repair_trusts_no_entry(
    cache: ProductCache,
) -> None:
    await cache.put(entry(3, epoch=NEW))
    server = await cache.server_id()
    assert server is not None

    assert await cache.get_many([1], NEW) == [entry(3, epoch=NEW)]  # no marker: the epoch decides
    await cache.set_marker(CacheMarker(OLD, server))
    assert await cache.get_many([1], NEW) == [None]
    assert await cache.get_many([1], OLD) == [None]  # the marker never vouches for an entry
    await cache.set_marker(CacheMarker(NEW, server, repairing=True))
    assert await cache.get_many([1], NEW) == [None]
    await cache.set_marker(CacheMarker(NEW, server))
    assert await cache.get_many([1], NEW) == [entry(3, epoch=NEW)]
    assert await cache.marker() == CacheMarker(NEW, server)


async def test_replace_only_corrects_cached_entries_and_adds_none(cache: ProductCache) -> None:
    await cache.put(entry(1, qty=9, product_id=20, epoch=NEW), entry(4, product_id=21, epoch=OLD))

    await cache.put(
        entry(2, qty=8, product_id=20, epoch=NEW),
        entry(1, qty=7, product_id=21, epoch=NEW),
        entry(1, qty=6, product_id=22, epoch=NEW),
        replace_only=True,
    )

    assert await cache.get_many([20, 21, 22], NEW) == [
        entry(2, qty=8, product_id=20, epoch=NEW),
        entry(1, qty=7, product_id=21, epoch=NEW),
        None,
    ]


async def test_the_server_id_is_stable_while_the_server_runs(cache: ProductCache) -> None:
    first = await cache.server_id()

    assert first and await cache.server_id() == first
    assert await cache.marker() is None  # an empty cache has none
