"""The pending-order sweeper's backoff per order on the real databases (MariaDB and
PostgreSQL; SQLite for the migration): each resend records its count and when the next is
due, and an order is not resent before then. Migration orders_0007 goes down and up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.orders.repository import OrderUnitOfWork, orders
from orderstack.orders.service import OrderService
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from tests.integration.test_orders_migrations_on_sqlite import columns_and_indexes, current_revision
from tests.unit.fakes import Clock, FakeCatalog

FIRST, CAP = 30.0, 100.0
PRODUCT = 31337


async def _row(engine: AsyncEngine, order_id: int) -> sa.Row[Any]:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(orders.c.resends, orders.c.resend_at, orders.c.updated_at).where(
                    orders.c.id == order_id
                )
            )
        ).one()


async def test_each_resend_is_recorded_and_the_next_waits_longer(engine: AsyncEngine) -> None:
    clock = Clock()
    service = OrderService(
        lambda: OrderUnitOfWork(engine, None), FakeCatalog(known={PRODUCT}), clock
    )
    order, _ = await service.create_order(PRODUCT, Decimal(5))
    assert (await _row(engine, order.id)).resends == 0

    async def sweep() -> int:
        return await service.resend_stale_pending(FIRST, 1000, max_wait=CAP)

    clock.advance(FIRST + 1)
    assert await sweep() >= 1  # a sandbox may hold other tests' pending orders
    first = await _row(engine, order.id)
    resent_at = clock()
    assert first.resends == 1
    assert resent_at + timedelta(seconds=FIRST) <= first.resend_at
    assert first.resend_at <= resent_at + timedelta(seconds=2 * FIRST)

    clock.advance((first.resend_at - clock()).total_seconds() - 1)  # a second before due
    await sweep()
    assert (await _row(engine, order.id)).resends == 1

    clock.advance(1)
    await sweep()
    second = await _row(engine, order.id)
    assert second.resends == 2
    assert clock() + timedelta(seconds=CAP / 2) <= second.resend_at  # 60-100 s: capped
    assert second.resend_at <= clock() + timedelta(seconds=CAP)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"))
    await migrate.upgrade(engine, "orders")
    yield engine
    await engine.dispose()


async def _orders_0007_goes_down_and_up_keeping_the_orders(engine: AsyncEngine) -> None:
    service = OrderService(lambda: OrderUnitOfWork(engine, None), FakeCatalog(known={PRODUCT}))
    order, _ = await service.create_order(PRODUCT, Decimal(7))
    columns, indexes = await columns_and_indexes(engine)
    assert {"resends", "resend_at"} <= columns and "ix_orders_status_resend_at" in indexes

    while await current_revision(engine) != "orders_0006":  # later revisions first
        await migrate.downgrade(engine, "orders", 1)
    columns, indexes = await columns_and_indexes(engine)
    assert not {"resends", "resend_at"} & columns
    assert "ix_orders_status_resend_at" not in indexes

    await migrate.upgrade(engine, "orders")
    await migrate.upgrade(engine, "orders")  # at head: nothing to do
    assert (await _row(engine, order.id)).resends == 0
    # Down past orders_0008 drops agreed_total (the schema before it has no price check):
    # all else of the order is kept.
    assert await service.get_order(order.id) == replace(order, agreed_total=None)


async def test_orders_0007_goes_down_and_up_on_the_server(engine: AsyncEngine) -> None:
    await _orders_0007_goes_down_and_up_keeping_the_orders(engine)


async def test_orders_0007_goes_down_and_up_on_sqlite(sqlite: AsyncEngine) -> None:
    await _orders_0007_goes_down_and_up_keeping_the_orders(sqlite)
