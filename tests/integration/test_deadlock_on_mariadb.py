"""A real deadlock on MariaDB is a transient failure, and the consumer retries its batch
until it commits, once. A Galera certification conflict reaches the client as the same
error (1213, "Deadlock found... try restarting transaction"), and a MySQL InnoDB Cluster
conflict as 1213 or a lost connection: this is the path they take (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.envelope import Event, encode
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.storage.errors import is_transient, server_code

pytestmark = [pytest.mark.integration, pytest.mark.databases("mariadb")]


@pytest.fixture
async def rows(engine: AsyncEngine) -> str:
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE IF EXISTS deadlock_probe"))
        await conn.execute(sa.text("CREATE TABLE deadlock_probe (id INT PRIMARY KEY, n INT)"))
        await conn.execute(
            sa.text("INSERT INTO deadlock_probe (id, n) VALUES (:id, 0)"),
            [{"id": i} for i in range(60)],
        )
    return "deadlock_probe"


async def _lock(conn: AsyncConnection, row: int) -> None:
    await conn.execute(sa.text("UPDATE deadlock_probe SET n = n + 1 WHERE id = :id"), {"id": row})


async def test_a_real_deadlock_is_transient(engine: AsyncEngine, rows: str) -> None:
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await second.begin()
        await _lock(first, 1)
        await _lock(second, 2)
        waiting = asyncio.create_task(_lock(first, 2))  # waits for second
        await asyncio.sleep(0.3)
        outcomes = await asyncio.gather(waiting, _lock(second, 1), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], DBAPIError)
        assert server_code(errors[0].orig) == 1213
        assert is_transient(errors[0])
        await first.rollback()
        await second.rollback()


class _Inbox:
    async def claim(self, events: Sequence[Event]) -> list[Event]:
        return list(events)


class _Uow:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn, self.inbox = conn, _Inbox()

    async def commit(self) -> None:
        await self.conn.commit()


class _Delivery:
    def __init__(self, event: Event) -> None:
        self.body, self.message_id, self.routing_key = encode(event), event.id, event.name
        self.headers: dict[str, Any] | None = None
        self.acked = self.dead = False

    async def ack(self) -> None:
        self.acked = True

    async def dead_letter(self, reason: str) -> None:
        self.dead = True


async def test_the_consumer_retries_a_deadlocked_batch_and_applies_it_once(
    engine: AsyncEngine, rows: str
) -> None:
    """The consumer's transaction takes row 1 then row 2; a heavier one takes row 2 then
    row 1 in between, so the server picks the consumer's as the deadlock victim."""
    attempts = 0
    locked_first, rival_waits = asyncio.Event(), asyncio.Event()

    class Handler:
        def validate(self, event: Event) -> Event:
            return event

        async def apply(self, uow: _Uow, commands: Sequence[Event]) -> None:
            nonlocal attempts
            attempts += 1
            await _lock(uow.conn, 1)
            if attempts == 1:
                locked_first.set()
                await rival_waits.wait()
            await _lock(uow.conn, 2)

    @asynccontextmanager
    async def uow_factory() -> AsyncIterator[_Uow]:
        async with engine.connect() as conn:
            await conn.begin()
            yield _Uow(conn)

    async def rival() -> None:
        async with engine.connect() as conn:
            await conn.begin()
            for row in range(2, 60):  # many rows changed: the server spares this one
                await _lock(conn, row)
            await locked_first.wait()
            waiting = asyncio.create_task(_lock(conn, 1))
            await asyncio.sleep(0.3)  # it waits on the consumer's lock now
            rival_waits.set()
            await waiting
            await conn.commit()

    consumer = EventConsumer(InProcessBus(None), PRODUCT_SERVICE_QUEUE, uow_factory, Handler())
    delivery = _Delivery(Event("order.created", {"orderId": 1, "productId": 1}))
    await asyncio.wait_for(asyncio.gather(consumer.process([delivery]), rival()), 30)

    assert attempts == 2  # the deadlock, then the retry that committed
    assert delivery.acked and not delivery.dead
    assert consumer.settled[("order.created", "applied")] == 1
    async with engine.connect() as conn:
        counts = dict((await conn.execute(sa.text("SELECT id, n FROM deadlock_probe"))).all())
    assert counts[1] == 2 and counts[2] == 2  # the rival's change and the consumer's, once
