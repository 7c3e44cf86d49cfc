"""The cache speaks for one product database, and heals when its server comes back older.

On the fakes (tests/unit/fakes.py): a product database whose epoch a test renews as a reset
would, and a cache that can be snapshotted, restarted from the snapshot (a new server id)
and taken down. The rules under test: cache/port.py (epochs, the marker),
products/caching.py (the product service stamps and reads its epoch),
products/cache_repair.py (a changed server or a lost marker means a full repair, during
which no entry is trusted), orders/catalog.py (the order service trusts only the epoch its
product service names).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from orderstack.cache.port import EPOCH_HEADER, CachedProduct, CacheMarker, KnownEpoch
from orderstack.orders.catalog import HttpProductCatalog
from orderstack.products.cache_repair import CacheRepair, CacheUnreachable
from orderstack.products.caching import cache_entry
from orderstack.products.domain import Product, ProductNotFound
from orderstack.products.service import ProductService
from tests.unit.fakes import (
    START,
    Clock,
    FakeProductDatabase,
    FakeProductRepository,
    RestartableCache,
)

OLD, NEW = "0" * 32, "f" * 32  # two databases' epochs
TTL = timedelta(seconds=300)


@pytest.fixture
def cache() -> RestartableCache:
    return RestartableCache()


@pytest.fixture
def db() -> FakeProductDatabase:
    return FakeProductDatabase(FakeProductRepository(epoch=NEW))


@pytest.fixture
def service(db: FakeProductDatabase, cache: RestartableCache, clock: Clock) -> ProductService:
    return ProductService(db.unit_of_work, cache, clock)


def repair_of(
    db: FakeProductDatabase, cache: RestartableCache, service: ProductService, clock: Clock
) -> CacheRepair:
    return CacheRepair(
        db.products.changed_since, cache, service.epoch, ttl=TTL, interval=5, clock=clock
    )


def old_database_entry(product_id: int = 1) -> CachedProduct:
    """What a database that was reset left in the cache: its product, of a higher version
    than any row of the new one."""
    return CachedProduct(
        id=product_id, version=40, name="Old name", price=Decimal(1), qty=999, epoch=OLD
    )


# -- the product service's reads and writes ------------------------------------------------


async def test_the_product_service_stamps_its_entries_with_its_database_epoch(
    service: ProductService, cache: RestartableCache
) -> None:
    product = await service.create_product("Lamp", Decimal(20), 10)

    [entry] = await cache.get_many([product.id], NEW)
    assert entry is not None and entry.epoch == NEW and entry.qty == 10


async def test_another_databases_entry_is_never_served_even_with_a_higher_version(
    service: ProductService, cache: RestartableCache
) -> None:
    product = await service.create_product("Lamp", Decimal(20), 10)
    await cache.put(old_database_entry(product.id))  # the old database's write lands after

    assert await service.cached_product(product.id) is None  # the hot path declines
    served = await service.get_product(product.id)  # the route reads the row

    assert (served.name, served.qty, served.version) == ("Lamp", 10, 1)
    [entry] = await cache.get_many([product.id], NEW)
    assert entry is not None and (entry.name, entry.version) == ("Lamp", 1)


async def test_another_databases_product_is_not_found_here(
    service: ProductService, cache: RestartableCache
) -> None:
    await cache.put(old_database_entry(77))  # no product 77 in this database

    with pytest.raises(ProductNotFound):
        await service.get_product(77)


async def test_a_reset_database_is_noticed_by_the_next_repair_pass(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    product = await service.create_product("Lamp", Decimal(20), 10)
    repair = repair_of(db, cache, service, clock)
    await repair.run_once()
    assert (await cache.marker()) == CacheMarker(NEW, str(await cache.server_id()))

    # A reset under the running service: a fresh epoch, another product 1 (written long
    # enough ago that no repair window reads it: only the epoch tells the entries apart).
    reset = "1" * 32
    db.products.database_epoch = reset
    long_ago = START - timedelta(days=1)
    db.products.rows = {
        product.id: Product(product.id, "Desk", Decimal(90), 3, long_ago, long_ago, 1)
    }
    clock.advance(5)
    await repair.run_once()

    marker = await cache.marker()
    assert marker is not None and marker.epoch == reset
    assert await service.cached_product(product.id) is None  # Lamp's entry: a miss now
    assert (await service.get_product(product.id)).name == "Desk"
    [entry] = await cache.get_many([product.id], reset)
    assert entry is not None and (entry.name, entry.epoch) == ("Desk", reset)


# -- the order service's catalog ------------------------------------------------------------


class ProductServiceStub:
    """The product service of one database: 200 with its epoch for known products."""

    def __init__(self, epoch: str, known: set[int]) -> None:
        self.epoch, self.known = epoch, known
        self.asked = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked += 1
        product_id = int(request.url.path.rsplit("/", 1)[1])
        if product_id not in self.known:
            return httpx.Response(404, json={"statusCode": 404})
        return httpx.Response(200, json={"id": product_id}, headers={EPOCH_HEADER: self.epoch})


@pytest.fixture
async def catalog(
    cache: RestartableCache,
) -> AsyncIterator[tuple[HttpProductCatalog, ProductServiceStub]]:
    stub = ProductServiceStub(NEW, known={1})
    catalog = HttpProductCatalog(
        cache, ["http://products:3000"], transport=httpx.MockTransport(stub)
    )
    yield catalog, stub
    await catalog.close()


async def test_the_catalog_trusts_no_entry_before_its_product_service_named_the_epoch(
    catalog: tuple[HttpProductCatalog, ProductServiceStub], cache: RestartableCache
) -> None:
    http_catalog, stub = catalog
    await cache.put(old_database_entry(2))  # product 2: only in the old database

    assert await http_catalog.product_exists(2) is False
    assert stub.asked == 1


async def test_the_catalog_never_takes_the_marker_for_its_epoch(
    catalog: tuple[HttpProductCatalog, ProductServiceStub], cache: RestartableCache
) -> None:
    """Two databases' services sharing one cache by mistake: the other one's marker and
    entries are there; the catalog asks its own product service instead."""
    http_catalog, stub = catalog
    server = await cache.server_id()
    assert server is not None
    await cache.set_marker(CacheMarker(OLD, server))
    await cache.put(old_database_entry(2))

    assert await http_catalog.product_exists(1) is True  # learns NEW from the answer
    assert await http_catalog.product_exists(2) is False  # OLD's product 2 is not ours
    assert http_catalog.epoch == NEW
    assert stub.asked == 2


async def test_the_catalog_uses_entries_of_the_epoch_its_product_service_named(
    catalog: tuple[HttpProductCatalog, ProductServiceStub], cache: RestartableCache
) -> None:
    http_catalog, stub = catalog
    assert await http_catalog.product_exists(1) is True  # learns NEW
    await cache.put(CachedProduct(id=5, version=1, name="x", epoch=NEW))

    assert await http_catalog.product_exists(5) is True
    assert stub.asked == 1  # product 5 came from the cache


async def test_the_catalog_beside_the_product_service_uses_its_epoch(
    cache: RestartableCache,
) -> None:
    known = KnownEpoch(NEW)
    stub = ProductServiceStub(NEW, known=set())
    http_catalog = HttpProductCatalog(
        cache, ["http://products:3000"], transport=httpx.MockTransport(stub), known_epoch=known
    )
    try:
        await cache.put(CachedProduct(id=5, version=1, name="x", epoch=NEW))
        await cache.put(old_database_entry(6))

        assert await http_catalog.product_exists(5) is True
        assert await http_catalog.product_exists(6) is False
        assert stub.asked == 1  # only for 6
    finally:
        await http_catalog.close()


# -- restarts: a full repair, no entry trusted meanwhile -------------------------------------


async def _catalogue(service: ProductService, count: int) -> list[int]:
    return [(await service.create_product(f"P{i}", Decimal(5), 100)).id for i in range(count)]


async def test_a_restart_from_an_older_snapshot_is_repaired_in_full(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    ids = await _catalogue(service, 1200)  # more than two pages
    repair = repair_of(db, cache, service, clock)
    await repair.run_once()
    snapshot = cache.snapshot()  # SAVE
    clock.advance(3600)  # long past the repair's slow window
    for product_id in ids:
        await service.adjust_stock(product_id, -1, "sold")
    clock.advance(3600)
    cache.restart(snapshot)  # every entry back at qty 100
    assert await service.cached_product(ids[0]) is not None  # stale until the next pass

    await repair.run_once()

    assert repair.full_repairs == 2  # the first pass (no marker yet) and this one
    found = await cache.get_many(ids, NEW)
    assert [e.qty if e else None for e in found] == [99] * len(ids)
    server = await cache.server_id()
    assert server is not None
    assert cache.markers[-2:] == [
        CacheMarker(NEW, server, repairing=True),
        CacheMarker(NEW, server),
    ]


async def test_no_entry_is_trusted_while_the_full_repair_runs(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    [product_id] = await _catalogue(service, 1)
    seen: list[CachedProduct | None] = []

    async def changed(since, after_id, limit):  # type: ignore[no-untyped-def]
        if since is None:  # the full repair's scan: what a reader gets meanwhile
            seen.extend(await cache.get_many([product_id], NEW))
        return await db.products.changed_since(since, after_id, limit)

    repair = CacheRepair(changed, cache, service.epoch, ttl=TTL, interval=5, clock=clock)
    await repair.run_once()

    assert seen == [None]
    assert await service.cached_product(product_id) is not None  # trusted again after


async def test_a_full_repair_adds_no_entry_it_did_not_find(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    ids = await _catalogue(service, 3)
    clock.advance(3600)  # out of every window: only a full repair reads them
    cache.restart(({}, None))  # a new, empty cache server

    await repair_of(db, cache, service, clock).run_once()

    assert await cache.get_many(ids, NEW) == [None, None, None]


async def test_the_same_server_and_marker_mean_no_full_repair(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    await _catalogue(service, 2)
    repair = repair_of(db, cache, service, clock)

    for _ in range(3):
        await repair.run_once()
        clock.advance(5)

    assert repair.full_repairs == 1  # the first one: the cache had no marker


async def test_another_databases_marker_on_the_same_server_is_taken_over_without_a_full_repair(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    repair = repair_of(db, cache, service, clock)
    await repair.run_once()
    server = await cache.server_id()
    assert server is not None
    await cache.set_marker(CacheMarker(OLD, server))  # the other environment's pass

    await repair.run_once()

    assert await cache.marker() == CacheMarker(NEW, server)
    assert repair.full_repairs == 1


async def test_another_databases_marker_on_a_server_not_checked_yet_means_a_full_repair(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    """The cache restarts from an older snapshot and another database's service sharing it
    publishes its marker on the new server before this one's next pass (the chaos run's
    cache restart then database reset): taking the marker over would leave this
    database's restored entries unchecked."""
    ids = await _catalogue(service, 3)
    repair = repair_of(db, cache, service, clock)
    await repair.run_once()
    snapshot = cache.snapshot()
    clock.advance(3600)  # long past the repair's slow window
    for product_id in ids:
        await service.adjust_stock(product_id, -1, "sold")
    clock.advance(3600)
    cache.restart(snapshot)  # every entry back at qty 100
    server = await cache.server_id()
    assert server is not None
    await cache.set_marker(CacheMarker(OLD, server))  # the other database's pass came first

    await repair.run_once()

    assert repair.full_repairs == 2
    found = await cache.get_many(ids, NEW)
    assert [e.qty if e else None for e in found] == [99] * len(ids)
    assert await cache.marker() == CacheMarker(NEW, server)


async def test_a_repair_cut_short_is_done_again_by_the_next_pass(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    [product_id] = await _catalogue(service, 1)
    server = await cache.server_id()
    assert server is not None
    await cache.set_marker(CacheMarker(NEW, server, repairing=True))  # a replica died in it
    await cache.put(cache_entry(db.products.rows[product_id]))

    repair = repair_of(db, cache, service, clock)
    await repair.run_once()

    assert repair.full_repairs == 1
    assert await cache.marker() == CacheMarker(NEW, server)


async def test_an_unreachable_cache_fails_the_pass_and_keeps_its_window(
    db: FakeProductDatabase, service: ProductService, cache: RestartableCache, clock: Clock
) -> None:
    repair = repair_of(db, cache, service, clock)
    await repair.run_once()
    clock.advance(5)
    before = repair.window()  # where the next pass reads from
    repair._since = before  # (window() moved it on: put it back)
    cache.down = True

    with pytest.raises(CacheUnreachable):
        await repair.run_once()

    cache.down = False
    clock.advance(5)
    assert repair.window() <= before
