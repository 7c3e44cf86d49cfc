"""A cache write lost between commit and cache (a kill -9, a Redis blip) is healed.

The product row changes in MariaDB while ``product:{id}`` in Redis keeps the old figure, as
after a crash right after the commit; the repair puts the row back, version-checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.cache.port import CachedProduct
from orderstack.cache.redis import RedisProductCache
from orderstack.products.cache_repair import CacheRepair
from orderstack.products.repository import ProductUnitOfWork, SqlProductRepository, products
from orderstack.products.service import ProductService
from orderstack.storage.types import utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
async def cache(sandbox: Sandbox) -> AsyncIterator[RedisProductCache]:
    cache = RedisProductCache(sandbox.redis_url, ttl_seconds=300)
    yield cache
    await cache.close()


def _repair(engine: AsyncEngine, cache: RedisProductCache, service: ProductService) -> CacheRepair:
    async def changed(since, after_id, limit):  # type: ignore[no-untyped-def]
        async with engine.connect() as conn:
            return await SqlProductRepository(conn).changed_since(since, after_id, limit)

    return CacheRepair(changed, cache, service.epoch, ttl=timedelta(seconds=300), interval=1)


async def _lose_the_cache_write(engine: AsyncEngine, product_id: int, **values: object) -> None:
    """What a process killed right after its commit leaves: the row changed, the cache not."""
    async with engine.begin() as conn:
        await conn.execute(
            products.update()
            .where(products.c.id == product_id)
            .values(**values, version=products.c.version + 1, updated_at=utcnow())
        )


async def test_a_lost_stock_write_is_put_back(
    engine: AsyncEngine, cache: RedisProductCache
) -> None:
    service = ProductService(lambda: ProductUnitOfWork(engine, None), cache)
    product = await service.create_product("Lamp", Decimal(20), 10)
    await _lose_the_cache_write(engine, product.id, qty=3)
    epoch = await service.epoch.current()
    [stale] = await cache.get_many([product.id], epoch)

    repaired = await _repair(engine, cache, service).repair(utcnow() - timedelta(minutes=5))
    [entry] = await cache.get_many([product.id], epoch)
    served = await service.get_product(product.id)

    assert stale is not None and stale.qty == 10
    assert repaired >= 1
    assert entry is not None and (entry.qty, entry.version) == (3, product.version + 1)
    assert served.qty == 3


async def test_a_lost_tombstone_is_put_back(engine: AsyncEngine, cache: RedisProductCache) -> None:
    """Without it, the order service would keep accepting orders for a deleted product."""
    service = ProductService(lambda: ProductUnitOfWork(engine, None), cache)
    product = await service.create_product("Gone", Decimal(5), 1)
    await _lose_the_cache_write(engine, product.id, deleted_at=utcnow())

    await _repair(engine, cache, service).repair(utcnow() - timedelta(minutes=5))
    epoch = await service.epoch.current()
    [entry] = await cache.get_many([product.id], epoch)

    assert entry == CachedProduct(
        id=product.id, version=product.version + 1, deleted=True, epoch=epoch
    )


async def test_the_repair_never_moves_an_entry_back(
    engine: AsyncEngine, cache: RedisProductCache
) -> None:
    service = ProductService(lambda: ProductUnitOfWork(engine, None), cache)
    product = await service.create_product("Race", Decimal(5), 7)
    epoch = await service.epoch.current()
    newer = CachedProduct(
        id=product.id, version=product.version + 5, name="Race", qty=1, epoch=epoch
    )
    await cache.put(newer)  # a change the repair's read predates

    await _repair(engine, cache, service).repair(utcnow() - timedelta(minutes=5))
    [entry] = await cache.get_many([product.id], epoch)

    assert entry is not None and entry.version == newer.version


async def test_rows_older_than_the_window_are_left_alone(
    engine: AsyncEngine, cache: RedisProductCache
) -> None:
    async with engine.connect() as conn:
        page = await SqlProductRepository(conn).changed_since(
            utcnow() + timedelta(minutes=1), 0, 10
        )
    assert page == []
