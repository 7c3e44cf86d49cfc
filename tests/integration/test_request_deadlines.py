"""The global read lock of ``FLUSH TABLES WITH READ LOCK`` (a backup tool's, say) on the real
MariaDB: it holds every write and every COMMIT of the whole server, past the statement bound
(``max_statement_time`` does not count a metadata-lock wait), for as long as it lasts. The
session's ``lock_wait_timeout`` (storage/engine.py) bounds both waits: a transient error,
nothing committed, the order intake's callers answered, and the readiness probe says the
database takes no write. Each lock is held a few seconds only: it stalls every database of
the server (tests/e2e/test_database_stall.py holds a table lock under real load instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from harness.sandbox import Sandbox
from orderstack.orders.repository import OrderUnitOfWork, orders
from orderstack.orders.service import OrderService
from orderstack.storage.engine import Timeouts, create_engine, probe_writes
from orderstack.storage.errors import is_transient, server_code
from orderstack.storage.types import utcnow
from tests.conftest import upgrade_to_head
from tests.unit.fakes import FakeCatalog

pytestmark = [pytest.mark.integration, pytest.mark.databases("mariadb")]

BOUND = 1  # seconds: the lock-wait bound under test
HELD = 4.0  # seconds the global read lock is held at most (it stalls the whole server)


@pytest.fixture
async def bounded(sandbox: Sandbox) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sandbox.engine_url, pool_size=4, timeouts=Timeouts(lock_wait=BOUND))
    await upgrade_to_head(engine, "orders")
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def global_read_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """FLUSH TABLES WITH READ LOCK on a connection of its own, released after HELD at the
    latest, whatever the test does meanwhile."""
    async with engine.connect() as holder:
        await holder.execute(sa.text("FLUSH TABLES WITH READ LOCK"))
        try:
            async with asyncio.timeout(HELD):
                yield
        finally:
            await holder.execute(sa.text("UNLOCK TABLES"))


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(sa.select(sa.func.count()).select_from(orders))).scalar_one()
        )


async def test_a_commit_held_by_a_global_read_lock_ends_within_the_bound(
    bounded: AsyncEngine,
) -> None:
    before = await _count(bounded)
    conn: AsyncConnection = await bounded.connect()
    try:
        await conn.begin()
        await conn.execute(
            sa.insert(orders).values(
                product_id=1,
                total_price=Decimal(1),
                status="pending",
                quantity=1,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        async with global_read_lock(bounded):
            started = time.monotonic()
            with pytest.raises(DBAPIError) as caught:
                await conn.commit()
            waited = time.monotonic() - started
    finally:
        await conn.close()

    assert server_code(caught.value.orig) == 1205  # lock wait timeout: the server said no
    assert is_transient(caught.value)
    assert waited < BOUND + 2
    assert await _count(bounded) == before  # nothing of it was kept


async def test_orders_taken_during_a_global_read_lock_are_answered_within_the_bound(
    bounded: AsyncEngine,
) -> None:
    def unit_of_work() -> OrderUnitOfWork:
        return OrderUnitOfWork(bounded, lambda: None)

    service = OrderService(unit_of_work, FakeCatalog({1}))
    before = await _count(bounded)
    async with global_read_lock(bounded):
        started = time.monotonic()
        results = await asyncio.gather(
            *(service.create_order(1, Decimal(1)) for _ in range(20)), return_exceptions=True
        )
        waited = time.monotonic() - started
        probe_started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017, PT011 - whichever bound ends it first
            async with asyncio.timeout(BOUND + 1):
                await probe_writes(bounded, orders)
        probed = time.monotonic() - probe_started

    assert waited < BOUND + 2, f"the intake waited {waited:.1f}s for a {HELD}s lock"
    assert all(isinstance(r, Exception) and is_transient(r) for r in results), results
    assert probed < BOUND + 1.5  # readiness: a database that takes no write is down
    assert await _count(bounded) == before
    await probe_writes(bounded, orders)  # and up again once the lock is gone
    order, created = await service.create_order(1, Decimal(1))
    assert created and await _count(bounded) == before + 1
