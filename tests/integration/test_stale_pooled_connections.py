"""The server drops every pooled connection of a service (KILL on MariaDB,
``pg_terminate_backend`` on PostgreSQL: a restart, a failover, an idle timeout look the
same); the next reads and the next cancel are answered, not refused with a 503. Each runs
its transaction once more on a fresh connection (storage/retry.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.orders.domain import OrderStatus
from orderstack.orders.repository import OrderUnitOfWork
from orderstack.orders.service import OrderService
from orderstack.storage.engine import create_engine
from tests.unit.fakes import FakeCatalog

POOL = 3


@pytest.fixture
async def service_engine(sandbox: Sandbox, engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The service's own pool (``engine``, migrated, is the killer's)."""
    own = create_engine(sandbox.engine_url, pool_size=POOL)
    yield own
    await own.dispose()


async def _fill_the_pool(engine: AsyncEngine) -> list[int]:
    """Open POOL connections at once and return them to the pool; their server-side ids."""
    own_id = (
        "SELECT pg_backend_pid()"
        if engine.dialect.name == "postgresql"
        else "SELECT CONNECTION_ID()"
    )
    release, all_open = asyncio.Event(), asyncio.Event()
    ids: list[int] = []

    async def hold() -> None:
        async with engine.connect() as conn:
            ids.append(int(await conn.scalar(sa.text(own_id))))
            if len(ids) == POOL:
                all_open.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(POOL)]
    async with asyncio.timeout(10):
        await all_open.wait()
    release.set()
    await asyncio.gather(*holders)
    return ids


async def _kill(killer: AsyncEngine, ids: list[int]) -> None:
    async with killer.connect() as conn:
        for server_id in ids:
            if killer.dialect.name == "postgresql":
                await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": server_id})
            else:
                await conn.execute(sa.text(f"KILL CONNECTION {server_id}"))
        await conn.commit()
    await asyncio.sleep(0.2)  # the server closes the sockets


async def test_reads_and_a_cancel_after_the_server_dropped_the_pool_are_answered(
    engine: AsyncEngine, service_engine: AsyncEngine
) -> None:
    service = OrderService(lambda: OrderUnitOfWork(service_engine, None), FakeCatalog(known={7}))
    order, _ = await service.create_order(7, Decimal(12))
    keep, _ = await service.create_order(7, Decimal(13))

    await _kill(engine, await _fill_the_pool(service_engine))
    assert await service.get_order(order.id) == order

    await _kill(engine, await _fill_the_pool(service_engine))
    page = await service.list_orders(product_id=7, limit=10)
    assert [o.id for o in page.orders] == [order.id, keep.id]

    await _kill(engine, await _fill_the_pool(service_engine))
    cancelled, now = await service.cancel_order(order.id)
    assert (cancelled.status, now) == (OrderStatus.CANCELLED, True)
    assert (await service.get_order(keep.id)).status is OrderStatus.PENDING
