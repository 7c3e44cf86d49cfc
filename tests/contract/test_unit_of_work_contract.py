"""The unit of work (messaging/uow.py, here the order service's), against SQLite (the embedded
default, a temporary file), MariaDB and PostgreSQL: the change, its outbox rows and its inbox
records commit together or not at all; the inbox lets each event in once (also when two
transactions claim the same event at once); what runs after commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.messaging.envelope import Event
from orderstack.orders.domain import NewOrder, OrderLine
from orderstack.orders.repository import OrderUnitOfWork, inbox, orders, outbox
from orderstack.storage.engine import create_engine
from orderstack.storage.errors import is_transient
from orderstack.storage.types import utcnow
from tests.conftest import upgrade_to_head


@pytest.fixture(params=["sqlite", "mariadb", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    name = "postgresql_sandbox" if request.param == "postgresql" else "sandbox"
    sandbox: Sandbox = request.getfixturevalue(name)
    return sandbox.engine_url.render_as_string(hide_password=False)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_url(database_url))
    await upgrade_to_head(engine, "orders")  # alembic once per database, not per test
    yield engine
    await engine.dispose()


def events(count: int) -> list[Event]:
    return [Event("order.created", {"orderId": i, "productId": 1}) for i in range(count)]


async def stored(engine: AsyncEngine, column: sa.Column[str], ids: list[str]) -> list[str]:
    async with engine.connect() as conn:
        found = await conn.execute(sa.select(column).where(column.in_(ids)))
        return sorted(found.scalars())


async def order_exists(engine: AsyncEngine, order_id: int) -> bool:
    async with engine.connect() as conn:
        return await conn.scalar(sa.select(sa.func.count()).where(orders.c.id == order_id)) == 1


async def test_a_commit_keeps_the_change_its_outbox_rows_and_its_inbox_records(
    engine: AsyncEngine,
) -> None:
    written, seen = events(2), events(2)
    async with OrderUnitOfWork(engine, None) as uow:
        [order] = await uow.orders.add_many(
            [NewOrder((OrderLine(1, 1),), Decimal("2.50"))], utcnow()
        )
        await uow.outbox.add(written)
        await uow.inbox.claim(seen)
        await uow.commit()

    assert await order_exists(engine, order.id)
    assert await stored(engine, outbox.c.event_id, [e.id for e in written]) == sorted(
        e.id for e in written
    )
    assert await stored(engine, inbox.c.event_id, [e.id for e in seen]) == sorted(
        e.id for e in seen
    )


async def test_leaving_without_commit_keeps_nothing(engine: AsyncEngine) -> None:
    written, seen = events(1), events(1)
    async with OrderUnitOfWork(engine, None) as uow:
        [order] = await uow.orders.add_many(
            [NewOrder((OrderLine(1, 1),), Decimal("2.50"))], utcnow()
        )
        await uow.outbox.add(written)
        await uow.inbox.claim(seen)

    assert not await order_exists(engine, order.id)
    assert await stored(engine, outbox.c.event_id, [written[0].id]) == []
    assert await stored(engine, inbox.c.event_id, [seen[0].id]) == []


async def test_an_error_inside_keeps_nothing_and_reaches_the_caller(engine: AsyncEngine) -> None:
    written = events(1)

    with pytest.raises(LookupError):
        async with OrderUnitOfWork(engine, None) as uow:
            await uow.outbox.add(written)
            raise LookupError("the use case gave up")

    assert await stored(engine, outbox.c.event_id, [written[0].id]) == []


async def test_the_inbox_lets_each_event_in_once_in_order(engine: AsyncEngine) -> None:
    first, second, third = events(3)
    async with OrderUnitOfWork(engine, None) as uow:
        fresh = await uow.inbox.claim([first, second, first])
        await uow.commit()
    async with OrderUnitOfWork(engine, None) as uow:
        again = await uow.inbox.claim([second, third, first])
        await uow.commit()

    assert [e.id for e in fresh] == [first.id, second.id]
    assert [e.id for e in again] == [third.id]


async def test_two_transactions_claiming_one_event_at_once_let_it_in_once(
    engine: AsyncEngine,
) -> None:
    """Two consumers (replicas) claim the same event while neither has committed: the
    second waits for the first (a row lock on the servers, the one connection on SQLite);
    once the first commits it fails on the primary key (the servers) or sees the record
    (SQLite), and its retry claims nothing. The event is applied once."""
    [event] = events(1)

    async def claim_alone() -> list[Event] | IntegrityError:
        try:
            async with OrderUnitOfWork(engine, None) as uow:
                fresh = await uow.inbox.claim([event])
                await uow.commit()
                return fresh
        except IntegrityError as exc:
            return exc

    async with OrderUnitOfWork(engine, None) as first:
        won = await first.inbox.claim([event])
        second = asyncio.create_task(claim_alone())
        await asyncio.sleep(0.3)
        assert not second.done()  # waiting for the first transaction
        await first.commit()
    lost = await second
    retried = await claim_alone()

    assert [e.id for e in won] == [event.id]
    assert lost == [] or (isinstance(lost, IntegrityError) and not is_transient(lost))
    assert retried == []
    assert await stored(engine, inbox.c.event_id, [event.id]) == [event.id]


async def test_a_claim_rolled_back_lets_the_event_in_again(engine: AsyncEngine) -> None:
    [event] = events(1)
    async with OrderUnitOfWork(engine, None) as uow:
        await uow.inbox.claim([event])  # the effect failed: no commit

    async with OrderUnitOfWork(engine, None) as uow:
        fresh = await uow.inbox.claim([event])
        await uow.commit()

    assert [e.id for e in fresh] == [event.id]


async def test_after_commit_steps_run_after_the_commit_in_order_and_their_failures_stay_there(
    engine: AsyncEngine,
) -> None:
    ran: list[str] = []

    async with OrderUnitOfWork(engine, None) as uow:

        async def committed() -> None:
            ran.append(f"committed={not uow.conn.in_transaction()}")

        async def failing() -> None:
            ran.append("failing")
            raise ConnectionError("cache gone")

        await uow.outbox.add(events(1))
        uow.after_commit(committed)
        uow.after_commit(failing)
        uow.after_commit(committed)
        await uow.commit()  # does not raise: the transaction is durable already

    assert ran == ["committed=True", "failing", "committed=True"]


async def test_after_commit_steps_do_not_run_without_a_commit(engine: AsyncEngine) -> None:
    ran: list[str] = []

    async def step() -> None:
        ran.append("ran")

    async with OrderUnitOfWork(engine, None) as uow:
        uow.after_commit(step)

    assert ran == []


async def test_the_relay_is_woken_after_a_commit_that_wrote_events_only(
    engine: AsyncEngine,
) -> None:
    wakes: list[int] = []

    async with OrderUnitOfWork(engine, lambda: wakes.append(1)) as uow:
        await uow.inbox.claim(events(1))
        await uow.commit()
    quiet = len(wakes)
    async with OrderUnitOfWork(engine, lambda: wakes.append(1)) as uow:
        await uow.outbox.add(events(2))
        await uow.commit()
    async with OrderUnitOfWork(engine, lambda: wakes.append(1)) as uow:
        await uow.outbox.add(events(1))  # rolled back: nothing to relay

    assert (quiet, len(wakes)) == (0, 1)
