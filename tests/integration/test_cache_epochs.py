"""The cache speaks for one database, on the real servers (MariaDB and PostgreSQL, Redis).

A fresh product database (``migrate down`` to base and up again: a new epoch) behind a
Redis database that still holds the old one's entries; two product databases writing into
one Redis database at once (two environments pointed at it by mistake); and a Redis of the
test's own restarted from an older snapshot (harness/cache_restart.py: never the shared
server). The product service runs in process (its lifespan: migrations, the cache repair);
the order service's catalog asks it over ASGI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.cache_restart import product_service, stale_seconds
from harness.sandbox import Sandbox
from orderstack import products
from orderstack.cache.port import cache_key
from orderstack.cache.redis import RedisProductCache
from orderstack.orders.catalog import HttpProductCatalog
from orderstack.products.repository import SqlProductRepository
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine

pytestmark = pytest.mark.integration

# ``migrate down`` this many steps reaches base (every revision of the product service).
PRODUCT_REVISIONS = len(list((Path(products.__file__).parent / "migrations").glob("[0-9]*.py")))


@pytest.fixture
async def flushed(sandbox: Sandbox) -> AsyncIterator[str]:
    """The sandbox's Redis database, empty at the start of the test."""
    raw = aioredis.from_url(sandbox.redis_url)
    await raw.flushdb()
    await raw.aclose()
    yield sandbox.redis_url


@pytest.fixture(scope="module")
def other_sandbox(make_sandbox: Callable[..., Sandbox], database: str) -> Sandbox:
    """A second environment's database on the same server (its Redis is not used)."""
    return make_sandbox("it", database)


def catalog_of(http: httpx.AsyncClient, redis_url: str) -> HttpProductCatalog:
    """An order service's catalog (its own process: it knows no epoch) on this product
    service and this Redis."""
    return HttpProductCatalog(
        RedisProductCache(redis_url), ["http://products"], transport=http._transport
    )


async def test_a_fresh_database_never_gets_the_old_ones_products(
    sandbox: Sandbox, engine: AsyncEngine, flushed: str
) -> None:
    async with product_service(sandbox.database_url, flushed) as http:
        old = (await http.post("/products", json={"name": "Old", "price": 1, "qty": 999})).json()
        for _ in range(3):  # a version the fresh database's product will not have soon
            await http.post(
                f"/products/{old['id']}/stock-adjustments", json={"delta": 1, "reason": "in"}
            )
        assert (await http.get(f"/products/{old['id']}")).json()["qty"] == 1002
    # The reset: every product table dropped and made again (a new epoch, ids from 1).
    before = await _epoch(engine)
    await migrate.downgrade(engine, "products", PRODUCT_REVISIONS)
    await migrate.upgrade(engine, "products")
    assert await _epoch(engine) != before
    raw = aioredis.from_url(flushed)
    try:
        assert b'"name":"Old"' in await raw.get(cache_key(old["id"]))  # still in Redis

        async with product_service(sandbox.database_url, flushed) as http:
            catalog = catalog_of(http, flushed)
            try:
                assert (await http.get(f"/products/{old['id']}")).status_code == 404
                assert await catalog.product_exists(old["id"]) is False

                new = await http.post("/products", json={"name": "New", "price": 2, "qty": 5})
                product_id = new.json()["id"]
                for _ in range(3):  # the hot path (a hit) and the route alike
                    answer = (await http.get(f"/products/{product_id}")).json()
                    assert (answer["name"], answer["qty"]) == ("New", 5)
                assert await catalog.product_exists(product_id) is True
                # The key is the seed's: `redis-cli GET product:1` shows the fresh row.
                assert b'"name":"New"' in await raw.get(cache_key(product_id))
            finally:
                await catalog.close()
    finally:
        await raw.aclose()


async def test_two_databases_sharing_one_redis_never_answer_each_others_products(
    sandbox: Sandbox, engine: AsyncEngine, flushed: str, other_sandbox: Sandbox
) -> None:
    """Two environments' product services on one Redis database by mistake, their repairs
    taking the marker from each other every 0.1 s: each answers its own rows only, and
    each order service's catalog its own products (a miss, then its product service)."""
    fast = {"CACHE_REPAIR_INTERVAL_SECONDS": 0.1}
    async with (
        product_service(sandbox.database_url, flushed, **fast) as here,
        product_service(other_sandbox.database_url, flushed, **fast) as there,
    ):
        ours = (await here.post("/products", json={"name": "Ours", "price": 1, "qty": 1})).json()
        theirs: dict[int, str] = {}  # up to one id past ours: the same id, and one only theirs
        while max(theirs, default=0) <= ours["id"]:
            name = f"Theirs {len(theirs)}"
            created = await there.post("/products", json={"name": name, "price": 1, "qty": 2})
            theirs[created.json()["id"]] = name
        only_theirs = max(theirs)
        catalogs = catalog_of(here, flushed), catalog_of(there, flushed)
        try:
            for _ in range(30):
                assert (await here.get(f"/products/{ours['id']}")).json()["name"] == "Ours"
                same_id = (await there.get(f"/products/{ours['id']}")).json()["name"]
                assert same_id == theirs[ours["id"]]
                assert (await here.get(f"/products/{only_theirs}")).status_code == 404
                assert await catalogs[0].product_exists(only_theirs) is False
                assert await catalogs[1].product_exists(only_theirs) is True
                await asyncio.sleep(0.02)
        finally:
            for catalog in catalogs:
                await catalog.close()


async def test_a_redis_restarted_from_an_older_snapshot_is_healed_within_one_interval(
    sandbox: Sandbox, engine: AsyncEngine
) -> None:
    """Stock changed after the snapshot, long enough ago that no repair window reads it
    again; Redis (the test's own) restarted from the snapshot. Every answer shows its row
    again within one repair interval."""
    interval = 1.0
    seconds = await stale_seconds(
        sandbox.database_url, 60, watch=30, CACHE_REPAIR_INTERVAL_SECONDS=interval
    )

    assert seconds <= interval + 1.0  # small slack: the pass, the reads


async def _epoch(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return await SqlProductRepository(conn).epoch()


async def test_the_epoch_migration_on_sqlite_makes_a_fresh_epoch_each_time(
    tmp_path: Path,
) -> None:
    """The embedded default's database: up makes an epoch, down to base drops it, up again
    makes another."""
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'products.db'}"))
    try:
        await migrate.upgrade(engine, "products")
        first = await _epoch(engine)
        await migrate.downgrade(engine, "products", PRODUCT_REVISIONS)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        assert "products_epoch" not in tables and "products" not in tables
        await migrate.upgrade(engine, "products")
        second = await _epoch(engine)
    finally:
        await engine.dispose()

    assert len(first) == len(second) == 32 and first != second
