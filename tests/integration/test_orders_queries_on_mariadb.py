"""Listing orders on the real MariaDB: the query indexes of orders_0004, filters, and a
cursor walk that returns every order once, in id order, while orders keep arriving."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.orders.domain import NewOrder, Order, OrderLine, OrderStatus
from orderstack.orders.repository import OrderUnitOfWork, orders
from orderstack.orders.service import OrderService
from orderstack.storage import migrate
from orderstack.storage.types import utcnow
from tests.unit.fakes import FakeCatalog

pytestmark = pytest.mark.integration

QUERY_INDEXES = {"ix_orders_status_id", "ix_orders_product_id_status_id"}


async def _indexes(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda c: {str(ix["name"]) for ix in sa.inspect(c).get_indexes("orders")}
        )


async def _revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(sa.text("SELECT version_num FROM alembic_version_orders"))


async def test_orders_0004_adds_and_removes_the_query_indexes(engine: AsyncEngine) -> None:
    assert await _indexes(engine) >= QUERY_INDEXES
    while await _revision(engine) != "orders_0003":
        await migrate.downgrade(engine, "orders", 1)
    indexes = await _indexes(engine)
    assert not QUERY_INDEXES & indexes
    assert {"ix_orders_product_id_id", "ix_orders_status_updated_at"} <= indexes

    await migrate.upgrade(engine, "orders")
    assert await _indexes(engine) >= QUERY_INDEXES
    head = await _revision(engine)
    await migrate.upgrade(engine, "orders")  # at head: nothing to do
    assert await _revision(engine) == head


# -- listing -----------------------------------------------------------------------------

_products = itertools.count(9_000_001)


def product() -> int:
    """A product id no other test of the module orders."""
    return next(_products)


def service(engine: AsyncEngine) -> OrderService:
    return OrderService(lambda: OrderUnitOfWork(engine, None), FakeCatalog())


async def store(engine: AsyncEngine, product_ids: list[int]) -> list[Order]:
    async with OrderUnitOfWork(engine, None) as uow:
        stored = await uow.orders.add_many(
            [NewOrder((OrderLine(p, 1),), Decimal(1)) for p in product_ids], utcnow()
        )
        await uow.commit()
    return stored


async def move(engine: AsyncEngine, ids: list[int], status: OrderStatus) -> None:
    async with OrderUnitOfWork(engine, None) as uow:
        await uow.orders.move_many(ids, status, {OrderStatus.PENDING}, utcnow())
        await uow.commit()


async def max_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(orders.c.id), 0))))


async def walk(
    svc: OrderService,
    *,
    status: OrderStatus | None = None,
    product_id: int | None = None,
    after: int = 0,
    limit: int,
) -> list[int]:
    seen: list[int] = []
    while True:
        page = await svc.list_orders(status=status, product_id=product_id, after=after, limit=limit)
        seen += [o.id for o in page.orders]
        if page.next_after is None:
            return seen
        assert page.orders and page.next_after == page.orders[-1].id
        after = page.next_after


async def test_filters_and_their_combination(engine: AsyncEngine) -> None:
    p, q = product(), product()
    start = await max_id(engine)
    placed = await store(engine, [p, q, p, q, p, p])
    ids = [o.id for o in placed]
    await move(engine, [ids[0], ids[1], ids[5]], OrderStatus.CONFIRMED)
    await move(engine, [ids[2]], OrderStatus.FAILED)
    svc = service(engine)

    assert await walk(svc, product_id=p, limit=2) == [ids[0], ids[2], ids[4], ids[5]]
    assert await walk(svc, product_id=q, limit=100) == [ids[1], ids[3]]
    assert await walk(svc, status=OrderStatus.CONFIRMED, after=start, limit=1) == [
        ids[0],
        ids[1],
        ids[5],
    ]
    assert await walk(svc, status=OrderStatus.CONFIRMED, product_id=p, limit=1) == [
        ids[0],
        ids[5],
    ]
    assert await walk(svc, status=OrderStatus.PENDING, product_id=p, limit=5) == [ids[4]]
    assert await walk(svc, status=OrderStatus.CANCELLED, product_id=p, limit=5) == []
    assert await walk(svc, after=start, limit=4) == ids
    assert await walk(svc, product_id=p, after=ids[4], limit=4) == [ids[5]]


async def test_a_cursor_walk_during_concurrent_inserts_returns_each_order_once_in_order(
    engine: AsyncEngine,
) -> None:
    """Every order there before the walk is returned, once, in id order; orders committed
    during the walk never make one appear twice (the cursor only moves up the ids)."""
    p = product()
    before = [o.id for o in await store(engine, [p] * 300)]
    svc = service(engine)
    walking = True

    async def keep_ordering() -> list[int]:
        added: list[int] = []
        while walking:
            added += [o.id for o in await store(engine, [p] * 5)]
            await asyncio.sleep(0)
        return added

    writers = [asyncio.create_task(keep_ordering()) for _ in range(3)]
    try:
        seen = []
        after = 0
        while True:
            page = await svc.list_orders(product_id=p, after=after, limit=7)
            seen += [o.id for o in page.orders]
            if page.next_after is None or len(seen) > 5_000:
                break
            after = page.next_after
            if after >= before[-1]:
                walking = False  # past the orders that were there: let the walk end
            await asyncio.sleep(0.001)  # let the writers commit between pages
    finally:
        walking = False
        added = [i for batch in await asyncio.gather(*writers) for i in batch]

    assert added, "no order was placed during the walk"
    assert len(seen) < 5_000, "the walk did not end"
    assert len(seen) == len(set(seen)), "an order came twice"
    assert seen == sorted(seen)
    assert set(before) <= set(seen)
    assert set(seen) <= set(before) | set(added)
