"""The stock take, the inbox and the migrations against the real MariaDB."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

import orderstack.orders as orders_pkg
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.envelope import Event
from orderstack.products.domain import ReserveStock
from orderstack.products.repository import (
    ProductUnitOfWork,
    outbox,
    products,
    stock_reservations,
)
from orderstack.products.service import ProductService
from orderstack.storage import migrate

pytestmark = pytest.mark.integration


def _service(engine: AsyncEngine) -> ProductService:
    return ProductService(lambda: ProductUnitOfWork(engine, None), InProcessProductCache())


async def test_concurrent_reservations_never_oversell(engine: AsyncEngine) -> None:
    service = _service(engine)
    product = await service.create_product("Contended", Decimal("10.00"), 30)

    async def reserve(order_id: int) -> None:
        async with ProductUnitOfWork(engine, None) as uow:
            await service.reserve_stock(uow, [ReserveStock(order_id, product.id)])
            await uow.commit()

    await asyncio.gather(*(reserve(10_000 + i) for i in range(120)))

    async with engine.connect() as conn:
        qty = await conn.scalar(sa.select(products.c.qty).where(products.c.id == product.id))
        answers = dict(
            (
                await conn.execute(
                    sa.select(outbox.c.event_type, sa.func.count())
                    .where(outbox.c.event_type.like("order.qty_%"))
                    .group_by(outbox.c.event_type)
                )
            ).all()
        )
    assert qty == 0
    assert answers.get("order.qty_confirmed") == 30
    assert answers.get("order.qty_failed") == 90


async def test_concurrent_batches_over_several_products_never_oversell_and_cache_the_row(
    engine: AsyncEngine,
) -> None:
    """Batches of many orders over several products, from concurrent transactions (as two
    replicas' consumers): each product gives exactly its stock, nothing deadlocks, and the
    cache holds what the database holds after the last take."""
    cache = InProcessProductCache()
    service = ProductService(lambda: ProductUnitOfWork(engine, None), cache)
    stock = {
        (await service.create_product(f"Multi {i}", Decimal(1), qty)).id: qty
        for i, qty in enumerate((5, 12, 30))
    }
    requests = [
        ReserveStock(50_000 + i, product_id)
        for i, product_id in enumerate(sorted(stock) * 20)  # 20 orders per product
    ]
    random.Random(3).shuffle(requests)

    async def reserve(batch: list[ReserveStock]) -> None:
        async with ProductUnitOfWork(engine, None) as uow:
            await service.reserve_stock(uow, batch)
            await uow.commit()

    await asyncio.gather(*(reserve(requests[i : i + 6]) for i in range(0, len(requests), 6)))

    async with engine.connect() as conn:
        rows = {
            r.id: r
            for r in await conn.execute(
                sa.select(
                    products.c.id, products.c.qty, products.c.version, products.c.updated_at
                ).where(products.c.id.in_(list(stock)))
            )
        }
        confirmed = dict(
            (
                await conn.execute(
                    sa.select(stock_reservations.c.product_id, sa.func.count())
                    .where(stock_reservations.c.outcome == "confirmed")
                    .group_by(stock_reservations.c.product_id)
                )
            ).all()
        )
    for product_id, qty in stock.items():
        assert rows[product_id].qty == max(qty - 20, 0)
        assert confirmed[product_id] == min(qty, 20)
        [entry] = await cache.get_many([product_id], await service.epoch.current())
        assert entry is not None
        assert (entry.qty, entry.version, entry.updated_at) == (
            rows[product_id].qty,
            rows[product_id].version,
            rows[product_id].updated_at,
        )


async def test_database_refuses_negative_stock(engine: AsyncEngine) -> None:
    product = await _service(engine).create_product("Guarded", Decimal("1.00"), 0)
    async with engine.begin() as conn:
        with pytest.raises(sa.exc.DBAPIError):
            await conn.execute(products.update().where(products.c.id == product.id).values(qty=-1))


async def test_same_event_claimed_twice_at_once_is_applied_once(engine: AsyncEngine) -> None:
    service = _service(engine)
    product = await service.create_product("Once", Decimal("5.00"), 10)
    event = Event("order.created", {"orderId": 77, "productId": product.id})

    async def deliver() -> str:
        try:
            async with ProductUnitOfWork(engine, None) as uow:
                fresh = await uow.inbox.claim([event])
                if fresh:
                    await service.reserve_stock(uow, [ReserveStock(77, product.id)])
                await uow.commit()
            return "applied" if fresh else "skipped"
        except IntegrityError:
            return "conflict"  # the consumer retries this; the retry sees the id

    outcomes = await asyncio.gather(deliver(), deliver(), deliver())
    assert outcomes.count("applied") == 1
    assert (await service.get_product(product.id)).qty == 9


async def test_migrations_go_all_the_way_down_and_up_again(engine: AsyncEngine) -> None:
    async def tables() -> set[str]:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))

    assert {"orders", "orders_outbox", "orders_inbox"} <= await tables()
    revisions = len(list((Path(orders_pkg.__file__).parent / "migrations").glob("0*.py")))
    await migrate.downgrade(engine, "orders", revisions)
    remaining = await tables()
    assert "orders" not in remaining and "products" in remaining  # only its own tables
    await migrate.upgrade(engine, "orders")
    assert "orders" in await tables()
