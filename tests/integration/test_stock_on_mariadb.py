"""The stock take, the inbox and the migrations against the real MariaDB."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.envelope import Event
from orderstack.products.domain import ReserveStock
from orderstack.products.repository import ProductUnitOfWork, outbox, products
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


async def test_migrations_go_down_one_step_and_up_again(engine: AsyncEngine) -> None:
    async def tables() -> set[str]:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))

    assert {"orders", "orders_outbox", "orders_inbox"} <= await tables()
    await migrate.downgrade(engine, "orders", 1)
    remaining = await tables()
    assert "orders" not in remaining and "products" in remaining  # only its own tables
    await migrate.upgrade(engine, "orders")
    assert "orders" in await tables()
